//! Integer kernels: one function per op, on NHWC int8 tensors stored as bytes.
//!
//! Every kernel computes exactly the arithmetic of [`crate::quant`]; the plain i64
//! [`reference`](mod@reference) implementations (host only) are what the property tests compare them with.
//! All slice lengths are checked by [`crate::Model::parse`] before a kernel is ever called,
//! and the portable kernels use only bounds-checked indexing, so malformed input can at
//! worst produce a wrong answer in a unit test, never undefined behaviour.
//!
//! [`dense`] and [`conv2d`] dispatch at compile time: x86-64 builds with AVX2 enabled (the
//! workspace's host builds) run a `vpmaddwd` kernel module (`avx2.rs`, audited in its
//! header: vector loads after explicit length checks), thumbv7em builds (Cortex-M4/M7) run
//! [`dsp`] (`SMLAD` / `SXTB16` as single-instruction `asm!`, audited in its header),
//! everything else runs [`portable`]. The host-only batch product [`dense_batch`] also has an
//! AVX-VNNI kernel (`avx2/vnni.rs`, audited in its header), chosen at run time when the CPU
//! reports `avxvnni`. All produce identical bytes; the tests check each
//! against [`reference`](mod@reference) (the DSP loops on the host with the instructions
//! emulated, the real instructions in the Cortex-M4 parity test).

use crate::quant;

/// The window geometry, at its path in this module.
pub use crate::geometry::Window;

#[cfg(any(test, feature = "std"))]
pub mod reference;

/// Per-output-channel requantization data: bias, multiplier, shift.
pub trait ChannelParams {
    /// Bias of channel `c` (int32 at scale `s_in * s_w[c]`).
    fn bias(&self, c: usize) -> i32;
    /// Requantization multiplier of channel `c` (positive).
    fn multiplier(&self, c: usize) -> i32;
    /// Requantization shift of channel `c` (in [-31, 30]).
    fn shift(&self, c: usize) -> i32;
}

impl ChannelParams for crate::format::Layer<'_> {
    #[inline]
    fn bias(&self, c: usize) -> i32 {
        crate::format::Layer::bias(self, c)
    }
    #[inline]
    fn multiplier(&self, c: usize) -> i32 {
        crate::format::Layer::multiplier(self, c)
    }
    #[inline]
    fn shift(&self, c: usize) -> i32 {
        crate::format::Layer::shift(self, c)
    }
}

impl Window {
    /// Gathers the receptive field of output pixel `(oy, ox)` into `patch` as `(x - zp)`, in
    /// the weights' `[kh][kw][ic]` order, and returns whether the window is whole. For a
    /// window cut by padding, `patch[..clear]` is zeroed first, so padding taps (whose value
    /// is the zero point) contribute nothing.
    #[inline(always)]
    fn gather(&self, input: &[u8], zp: i16, (oy, ox): (usize, usize), patch: &mut [i16], clear: usize) -> bool {
        let ic = self.input.c;
        let (kh, kw) = self.kernel;
        let (ky0, ky1, iy0) = self.rows(oy);
        let (kx0, kx1, ix0) = self.cols(ox);
        let whole = ky1 - ky0 == kh && kx1 - kx0 == kw;
        if !whole {
            patch.iter_mut().take(clear).for_each(|v| *v = 0);
        }
        for ky in ky0..ky1 {
            let iy = (iy0 + ky as isize) as usize;
            let ix = (ix0 + kx0 as isize) as usize;
            let xi = (iy * self.input.w + ix) * ic;
            let pi = (ky * kw + kx0) * ic;
            let span = (kx1 - kx0) * ic;
            if let (Some(src), Some(dst)) = (input.get(xi..xi + span), patch.get_mut(pi..pi + span)) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s as i8 as i16 - zp;
                }
            }
        }
        whole
    }
}

/// Where a weighted op writes: int8 activations (with zero point and clamp) or int32 logits.
#[derive(Debug)]
pub enum Output<'o> {
    /// Int8 activations, stored as bytes.
    Act {
        /// Destination, one byte per output element.
        buf: &'o mut [u8],
        /// Output zero point.
        zero_point: i8,
        /// Lower clamp (fused activation).
        min: i8,
        /// Upper clamp (fused activation).
        max: i8,
    },
    /// Int32 logits.
    Logits(&'o mut [i32]),
}

impl Output<'_> {
    /// The `len` outputs from `start` (empty if out of range), as an output of their own.
    #[cfg(any(test, feature = "std"))]
    fn part(&mut self, start: usize, len: usize) -> Output<'_> {
        match self {
            Output::Act { buf, zero_point, min, max } => Output::Act {
                buf: buf.get_mut(start..start + len).unwrap_or(&mut []),
                zero_point: *zero_point,
                min: *min,
                max: *max,
            },
            Output::Logits(buf) => Output::Logits(buf.get_mut(start..start + len).unwrap_or(&mut [])),
        }
    }

    #[inline(always)]
    fn store<P: ChannelParams>(&mut self, idx: usize, acc: i32, c: usize, p: &P) {
        self.store_with(idx, acc, p.multiplier(c), p.shift(c));
    }

    #[inline(always)]
    fn store_with(&mut self, idx: usize, acc: i32, m: i32, shift: i32) {
        match self {
            Output::Act { buf, zero_point, min, max } => {
                if let Some(slot) = buf.get_mut(idx) {
                    *slot = quant::requantize(acc, m, shift, *zero_point, *min, *max) as u8;
                }
            }
            Output::Logits(buf) => {
                if let Some(slot) = buf.get_mut(idx) {
                    *slot = quant::requantize_logit(acc, m, shift);
                }
            }
        }
    }
}

/// A weighted layer as the kernels take it: its int8 weight bytes, the zero point of the
/// input they multiply (`x - zp`, so a padded tap contributes nothing), and its per-channel
/// bias and requantization parameters.
#[derive(Debug)]
pub struct Weights<'a, P> {
    /// Weight bytes (`i8` as `u8`) in the layer's layout.
    pub bytes: &'a [u8],
    /// Zero point of the layer's input.
    pub input_zero_point: i8,
    /// Per-channel bias, multiplier and shift.
    pub params: &'a P,
}

impl<'a, P> Weights<'a, P> {
    /// Bundles a layer's weights, input zero point and channel parameters.
    pub fn new(bytes: &'a [u8], input_zero_point: i8, params: &'a P) -> Self {
        Weights { bytes, input_zero_point, params }
    }
}

/// Output channels whose parameters [`conv2d`] keeps on the stack at a time.
const CHANNEL_BLOCK: usize = 32;

/// Largest `kh * kw * in_c` gathered on the stack by [`conv2d`] (1 KiB of i16); larger
/// kernels take the row-by-row path, which needs no scratch at all.
pub const CONV_PATCH_MAX: usize = 512;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2;
/// The Cortex-M4/M7 DSP kernels: run on thumbv7em builds; on the host (tests and the
/// `testing` feature only) with the instructions emulated, so the same loops are tested
/// against the reference.
#[cfg(any(iocane_arm_dsp, test, feature = "testing"))]
pub mod dsp;
pub mod portable;

/// Fully connected layer: `out[o] = requant(b[o] + Σ_i w[o][i] (x[i] - zp))`, weights `[out][in]`.
///
/// Runs the AVX2 kernel on x86-64 builds with AVX2 enabled, the DSP-extension kernel on
/// thumbv7em (Cortex-M4/M7), [`portable::dense`] elsewhere; all give identical results.
pub fn dense<P: ChannelParams>(input: &[u8], layer: &Weights<'_, P>, mut out: Output<'_>) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        avx2::dense(input, layer, &mut out);
    }
    #[cfg(iocane_arm_dsp)]
    dsp::dense(input, layer, &mut out);
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx2"), iocane_arm_dsp)))]
    portable::dense(input, layer, &mut out);
}

/// [`dense`] on `n` inputs stored one after another in `input` (`n * in` values), writing
/// output `o` of input `i` at index `i * out + o` of `out`: one int8 matrix product that
/// reads each weight row once for several inputs. Identical, input for input, to [`dense`].
///
/// Runs, on x86-64 builds with AVX2 enabled, the AVX-VNNI kernel (`vpdpbusd`) when the CPU
/// has it (detected at run time) and the AVX2 kernel otherwise; [`dense`] per input
/// elsewhere.
#[cfg(any(test, feature = "std"))]
pub fn dense_batch<P: ChannelParams>(input: &[u8], n: usize, layer: &Weights<'_, P>, out: &mut Output<'_>) {
    if n == 0 {
        return;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    avx2::dense_batch(input, n, layer, out);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        let k = input.len() / n;
        let rows = layer.bytes.len().checked_div(k).unwrap_or(0);
        for (i, x) in input.chunks_exact(k.max(1)).take(n).enumerate() {
            dense(x, layer, out.part(i * rows, rows));
        }
    }
}

/// 2-D convolution with zero padding (padding taps contribute nothing), weights `[oc][kh][kw][ic]`.
///
/// Runs the AVX2 kernel on x86-64 builds with AVX2 enabled and the DSP-extension kernel on
/// thumbv7em (both for `kh * kw * in_c <=` [`CONV_PATCH_MAX`]), [`portable::conv2d`]
/// otherwise; all give identical results.
pub fn conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, mut out: Output<'_>) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if avx2::conv2d(win, input, layer, &mut out) {
        return;
    }
    #[cfg(iocane_arm_dsp)]
    if dsp::conv2d(win, input, layer, &mut out) {
        return;
    }
    portable::conv2d(win, input, layer, &mut out);
}

/// [`conv2d`] on `n` images stored one after another in `input` (`n * win.input.len()`
/// values), image `i`'s output at `i * win.output.len()` of `out`. Identical, image for
/// image, to [`conv2d`].
///
/// On x86-64 builds with AVX2 enabled and a CPU with AVX-VNNI (detected at run time), one
/// `vpdpbusd` matrix product over every output pixel of the batch; [`conv2d`] per image
/// otherwise.
#[cfg(any(test, feature = "std"))]
pub fn conv2d_batch<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if avx2::vnni::conv2d_batch(win, input, n, layer, out) {
        return;
    }
    let (len_in, len_out) = (win.input.len(), win.output.len());
    for (i, x) in input.chunks_exact(len_in.max(1)).take(n).enumerate() {
        conv2d(win, x, layer, out.part(i * len_out, len_out));
    }
}

/// Depthwise 2-D convolution (channel multiplier 1), weights `[kh][kw][c]`, zero padding.
///
/// Runs the AVX2 kernel on x86-64 builds with AVX2 enabled, the DSP-extension kernel on
/// thumbv7em (Cortex-M4/M7), [`portable::depthwise_conv2d`] elsewhere; all give identical
/// results.
pub fn depthwise_conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, mut out: Output<'_>) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        avx2::depthwise_conv2d(win, input, layer, &mut out);
    }
    #[cfg(iocane_arm_dsp)]
    dsp::depthwise_conv2d(win, input, layer, &mut out);
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx2"), iocane_arm_dsp)))]
    portable::depthwise_conv2d(win, input, layer, &mut out);
}

/// Max pooling without padding (no requantization: output shares the input's scale).
pub fn max_pool2d(win: &Window, input: &[u8], out: &mut [u8]) {
    pool(win, input, out, i8::MIN as i32, |m, v| m.max(v), |m, _| m as i8)
}

/// Average pooling without padding: `average(Σ window, kh*kw)`, rounded half up.
pub fn avg_pool2d(win: &Window, input: &[u8], out: &mut [u8]) {
    pool(win, input, out, 0, |s, v| s + v, quant::average)
}

/// A pooling window folded per channel (`fold` from `init` over the window's values), then
/// finished (`finish(acc, kh * kw)`); channels are the inner loop, in blocks of
/// [`CHANNEL_BLOCK`] accumulators.
#[inline(always)]
fn pool(
    win: &Window,
    input: &[u8],
    out: &mut [u8],
    init: i32,
    fold: impl Fn(i32, i32) -> i32,
    finish: impl Fn(i32, i32) -> i8,
) {
    let c_n = win.input.c;
    let (kh, kw) = win.kernel;
    let count = (kh * kw) as i32;
    let mut acc = [0i32; CHANNEL_BLOCK];
    for c0 in (0..c_n).step_by(CHANNEL_BLOCK) {
        let cn = CHANNEL_BLOCK.min(c_n - c0);
        let acc = &mut acc[..cn];
        for oy in 0..win.output.h {
            for ox in 0..win.output.w {
                acc.fill(init);
                let (iy0, ix0) = (oy * win.stride.0, ox * win.stride.1);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let xi = ((iy0 + ky) * win.input.w + ix0 + kx) * c_n + c0;
                        if let Some(x) = input.get(xi..xi + cn) {
                            for (a, &x) in acc.iter_mut().zip(x) {
                                *a = fold(*a, x as i8 as i32);
                            }
                        }
                    }
                }
                let oi = (oy * win.output.w + ox) * c_n + c0;
                if let Some(o) = out.get_mut(oi..oi + cn) {
                    for (o, &a) in o.iter_mut().zip(acc.iter()) {
                        *o = finish(a, count) as u8;
                    }
                }
            }
        }
    }
}

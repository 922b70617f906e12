//! AVX-VNNI versions of the batch kernels [`super::dense_batch`] and
//! [`super::super::conv2d_batch`], chosen at run time: x86-64 host builds (AVX2 at compile
//! time, feature `std` or tests) whose CPU reports `avxvnni` (Intel Alder Lake and later, AMD
//! Zen 4 and later). Everything else, including a CPU with AVX-512 VNNI but not the
//! VEX-encoded AVX-VNNI (Ice Lake, Cascade Lake), takes the AVX2 kernels of the parent module
//! (convolutions image by image); no_std builds never compile this module. Both kernels are
//! one matrix product, [`Packed::run`]: a dense layer's rows times its inputs, or a
//! convolution's output channels times its output pixels' receptive fields (read in place
//! from a padded copy of the images, see [`conv2d_batch`]).
//!
//! # The arithmetic, and why it is exact
//! `vpdpbusd acc, a, b` multiplies the four unsigned bytes of each 32-bit lane of `a` by the
//! four signed bytes of the same lane of `b` and adds the four products to the i32 lane of
//! `acc`, with no saturation (the `s` form, `vpdpbusds`, saturates; it is not used). Each
//! product is at most `255 * 128` in magnitude and the sum of four at most `130,560`, so the
//! four-product sum is exact and its addition to the lane wraps modulo `2^32`, like the
//! portable kernels' `wrapping_add` chains.
//!
//! The activations are int8, not u8, so they go on the unsigned side shifted: the byte
//! `x ^ 0x80` is `x + 128` as a u8 (in [0, 255]), and for every output row
//!
//! `Σ w (x - zp) = Σ w (x + 128) - (128 + zp) Σ w`,
//!
//! an identity of integers, hence also of i32 arithmetic modulo `2^32`. The correction
//! `(128 + zp) Σ w` is computed once per row and call by the same instruction, with the
//! unsigned operand the byte `128 + zp` (in [0, 255], since `zp` is an i8) broadcast to every
//! lane: `vpdpbusd` over the row's weights gives `Σ (128 + zp) w` exactly (mod `2^32`).
//! Each accumulator starts at minus that value, then adds the `vpdpbusd` sums of the shifted
//! activations; the result is `Σ w (x - zp)` mod `2^32`, the same i32 as the portable dot
//! product's wrapping sum of exact products (and the validator proves neither overflows).
//! Zero padding of a row (weights of 0) adds nothing to either sum. The weights could have
//! gone on the unsigned side instead (`w + 128`), but then the signed side would need
//! `x - zp`, which does not fit in an i8.
//!
//! Padding taps of a convolution read the shifted zero point (see [`conv2d_batch`]), and
//! the bytes a kernel row's last quad reads past the row meet zero weights.
//!
//! The sums are requantized by the parent module's [`store8`] (the rule of
//! [`crate::quant::requantize`], tested there). The property tests `dense_batch_matches_portable`
//! and `conv_batch_matches_portable` (parent module) run these kernels, the AVX2 kernels and
//! the dispatchers against the portable [`crate::kernels::portable::dense`] and
//! [`crate::kernels::portable::conv2d`] on the same random cases (on a CPU without AVX-VNNI
//! they check the others only; `dense_batch_extremes_match_portable` says so).
//!
//! # Safety audit
//! `unsafe` appears in two forms only:
//! - calls into the `#[target_feature(enable = "avx2,avxvnni")]` kernels, made only after
//!   `is_x86_feature_detected!("avxvnni")` returned true on this CPU (AVX2 itself is
//!   guaranteed by the build, as in the parent module);
//! - unaligned 32-byte loads of the rearranged weights and 4-byte reads of the shifted
//!   activations in [`Packed::block`], each after an explicit check, once per block of
//!   inputs, that the slice it reads reaches as far as the loop bound assumes (see the
//!   `SAFETY` comments); the buffers are built with safe, bounds-checked code.
//!
//! Valgrind (as `.ci/run` uses it) masks AVX-VNNI in the CPUID it reports (see
//! docs/RESULTS.md, session 9), so under valgrind the detection returns false and these
//! kernels do not run; their memory safety rests on the explicit length checks above.
#![allow(unsafe_code)]

use super::{store8, ChannelParams, Output, Requant8, Weights, Window};
use crate::Shape;
use core::arch::x86_64::*;
use std::vec;
use std::vec::Vec;

/// Groups of eight weight rows per register block of [`Packed::run`]: with four inputs,
/// twelve accumulators, three weight vectors and one broadcast, the sixteen ymm registers.
/// Narrower blocks take more inputs (two groups by six, one by eight), so that there are
/// always eight to twelve independent accumulation chains.
const GROUPS: usize = 3;

/// Whether this CPU runs the VNNI kernel (`avxvnni`; cached by the standard library).
#[inline]
pub(in crate::kernels) fn detected() -> bool {
    std::arch::is_x86_feature_detected!("avxvnni")
}

/// [`super::dense_batch`] with `vpdpbusd`, if the CPU has AVX-VNNI: returns `false` (having
/// written nothing) otherwise. Same contract and results as the AVX2 kernel.
///
/// A dense layer of `k` inputs is a 1x1 convolution of a 1x1 image of `k` channels (weights
/// `[rows][k]` either way), so this is [`conv2d_batch`] on that window.
pub(in crate::kernels) fn dense_batch<P: ChannelParams>(
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let k = input.len().checked_div(n).unwrap_or(0);
    let rows = layer.bytes.len().checked_div(k).unwrap_or(0);
    let win = Window {
        input: Shape::new(1, 1, k),
        output: Shape::new(1, 1, rows),
        kernel: (1, 1),
        stride: (1, 1),
        padding: (0, 0, 0, 0),
    };
    conv2d_batch(&win, input, n, layer, out)
}

/// Bytes of padded images [`conv2d_batch`] prepares at a time (a block of images that stays
/// in the L2 cache while every group of weights passes over it).
const IMAGE_BYTES: usize = 1 << 18;

/// [`super::super::conv2d`] on `n` images stored one after another in `input` (image `i`'s
/// output at `i * win.output.len()` of `out`), as one `vpdpbusd` matrix product, if the CPU
/// has AVX-VNNI: returns `false` (having written nothing) otherwise. Same results as
/// [`super::super::conv2d`] on each image.
///
/// A convolution's weights `[oc][kh][kw][ic]` are a dense layer's `[rows][k]` with
/// `k = kh * kw * ic`, and its NHWC output `[pixel][oc]` is the dense layer's `[input][row]`,
/// an output pixel's input row being its receptive field: `kh` runs of `kw * ic` adjacent
/// bytes of the image. So the images are copied once, as `x ^ 0x80` bytes, into padded
/// images whose padding is the byte `zp ^ 0x80` (the shifted zero point: a padding tap
/// contributes `w (zp + 128) - w (128 + zp) = 0` once the row's correction is subtracted,
/// exactly as it contributes nothing to the portable kernel), and [`Packed::run`] reads each
/// pixel's kernel rows straight from them, four bytes at a time.
pub(in crate::kernels) fn conv2d_batch<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    if !detected() {
        return false;
    }
    // SAFETY: the CPU has AVX-VNNI (just detected) and AVX2 (the build requires it).
    unsafe { conv2d_batch_vnni(win, input, n, layer, out) }
}

/// The kernel of [`conv2d_batch`]; returns `false` (having written nothing) when a length is
/// inconsistent or a window leaves the padded image.
#[target_feature(enable = "avx2,avxvnni")]
fn conv2d_batch_vnni<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let (ic, (kh, kw), (sh, sw)) = (win.input.c, win.kernel, win.stride);
    let (pt, pl, pb, pr) = win.padding;
    let (ph, pw) = (win.input.h + pt + pb, win.input.w + pl + pr);
    let (oh, ow) = (win.output.h, win.output.w);
    let (len_in, span) = (win.input.len(), kw * ic);
    if n == 0 || len_in == 0 || input.len() < n * len_in || layer.bytes.len() != kh * span * win.output.c {
        return false;
    }
    // Every window inside the padded image (the validator guarantees it).
    if oh == 0 || ow == 0 || (oh - 1) * sh + kh > ph || (ow - 1) * sw + kw > pw {
        return false;
    }
    let Some(packed) = Packed::new(layer, kh, span) else { return false };
    let (row_stride, img_len, npix) = (pw * ic, ph * pw * ic, oh * ow);
    let images = (IMAGE_BYTES / img_len.max(1)).clamp(1, n);
    let pad = layer.input_zero_point as u8 ^ 0x80;
    // The block's padded images, with four bytes of slack: the last quad of a kernel row
    // reads up to three bytes past it (they meet zero weights).
    let mut imgs = vec![pad; images * img_len + 4];
    let pixels: Vec<usize> = (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy * sh * pw + ox * sw) * ic)).collect();
    let mut bases = Vec::with_capacity(images * npix);
    for i0 in (0..n).step_by(images) {
        let m = images.min(n - i0);
        for (x, img) in input.chunks_exact(len_in).skip(i0).take(m).zip(imgs.chunks_exact_mut(img_len)) {
            for (y, src) in x.chunks_exact(win.input.w * ic).enumerate() {
                let d0 = (y + pt) * row_stride + pl * ic;
                if let Some(d) = img.get_mut(d0..d0 + src.len()) {
                    for (d, &s) in d.iter_mut().zip(src) {
                        *d = s ^ 0x80;
                    }
                }
            }
        }
        bases.clear();
        bases.extend((0..m).flat_map(|j| pixels.iter().map(move |&p| j * img_len + p)));
        packed.run(&imgs, &bases, row_stride, i0 * npix, out, layer.params);
    }
    true
}

/// A layer's weights rearranged for [`Packed::run`]: groups of eight rows; in each group,
/// for each of the `kh` kernel rows (one for a dense layer), `row_quads` quads of 32 bytes
/// (the kernel row's `span` weights of the eight rows, four by four, as `[row][4]`, zero-padded
/// past `span` and past the last row), so that one 32-byte load holds four consecutive
/// weights of eight rows; with each group's accumulator start (minus the rows' corrections)
/// and requantization constants.
struct Packed {
    /// Rearranged weights, `32 * kh * row_quads` bytes per group of eight rows.
    ws: Vec<u8>,
    /// Per group: the accumulators' starting values, minus the rows' corrections.
    start: Vec<__m256i>,
    /// Per group: the requantization constants.
    q: Vec<Requant8>,
    /// Output rows (channels).
    rows: usize,
    /// Kernel rows per output row (1 for a dense layer).
    kh: usize,
    /// Quads per kernel row: `span` rounded up to a multiple of four, over four.
    row_quads: usize,
}

impl Packed {
    /// Packs the rows of `kh * span` weights of `layer` (`kh` runs of `span`); `None` if
    /// there are none.
    #[target_feature(enable = "avx2,avxvnni")]
    fn new<P: ChannelParams>(layer: &Weights<'_, P>, kh: usize, span: usize) -> Option<Packed> {
        let (weights, k) = (layer.bytes, kh * span);
        let rows = weights.len().checked_div(k).unwrap_or(0);
        if rows == 0 {
            return None;
        }
        let row_quads = span.div_ceil(4);
        let groups = rows.div_ceil(8);
        let group_len = 32 * kh * row_quads;
        let mut ws = vec![0u8; groups * group_len];
        for (r, w) in weights.chunks_exact(k).take(rows).enumerate() {
            let (g, lane) = (r / 8, r % 8);
            let Some(dst) = ws.get_mut(g * group_len..(g + 1) * group_len) else { continue };
            for (dst, w) in dst.chunks_exact_mut(32 * row_quads).zip(w.chunks_exact(span)) {
                for (d, quad) in dst.chunks_exact_mut(32).zip(w.chunks(4)) {
                    let Some(d) = d.get_mut(4 * lane..4 * lane + 4) else { continue };
                    // A whole quad as one 4-byte move (a copy of variable length is a call).
                    match <&[u8; 4]>::try_from(quad) {
                        Ok(q) => d.copy_from_slice(q),
                        Err(_) => d.iter_mut().zip(quad).for_each(|(d, &q)| *d = q),
                    }
                }
            }
        }
        // Minus the correction `(128 + zp) Σ w` of every row, eight rows per vector.
        let c = _mm256_set1_epi8((128 + layer.input_zero_point as i32) as u8 as i8);
        let start = ws
            .chunks_exact(group_len)
            .map(|g| {
                let mut corr = _mm256_setzero_si256();
                for quad in g.chunks_exact(32) {
                    // SAFETY: `quad` has exactly the 32 bytes the load reads.
                    let w = unsafe { _mm256_loadu_si256(quad.as_ptr().cast()) };
                    corr = _mm256_dpbusd_avx_epi32(corr, c, w);
                }
                _mm256_sub_epi32(_mm256_setzero_si256(), corr)
            })
            .collect();
        let q = (0..groups).map(|g| Requant8::new(layer.params, 8 * g, rows)).collect();
        Some(Packed { ws, start, q, rows, kh, row_quads })
    }

    /// The products of the input rows with every weight row, requantized, input row `i`'s
    /// output `c` at `(first + i) * rows + c` of `out`. Input row `i` is read from `src`
    /// (shifted bytes): its kernel row `ky` is the `4 * row_quads` bytes at
    /// `bases[i] + ky * row_stride`. Every block of four input rows by [`GROUPS`] groups keeps
    /// its twelve accumulators in registers: per quad, one broadcast of each input's four
    /// bytes and one `vpdpbusd` per group adds four products to each of the group's eight
    /// row sums. The sums come out in row order for [`store8`], with no horizontal sums. A
    /// partial block of inputs repeats its last input (those results are not stored); a
    /// partial block of groups runs a narrower block.
    #[target_feature(enable = "avx2,avxvnni")]
    fn run<P: ChannelParams>(
        &self,
        src: &[u8],
        bases: &[usize],
        row_stride: usize,
        first: usize,
        out: &mut Output<'_>,
        params: &P,
    ) {
        let groups = self.start.len();
        let a = (src, bases, row_stride, first);
        let mut g0 = 0;
        while g0 + GROUPS <= groups {
            self.block::<GROUPS, 4, P>(a, g0, out, params);
            g0 += GROUPS;
        }
        match groups - g0 {
            2 => self.block::<2, 6, P>(a, g0, out, params),
            1 => self.block::<1, 8, P>(a, g0, out, params),
            _ => {}
        }
    }

    /// Groups `g0..g0 + G` against every block of `I` input rows.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    fn block<const G: usize, const I: usize, P: ChannelParams>(
        &self,
        (src, bases, row_stride, first): (&[u8], &[usize], usize, usize),
        g0: usize,
        out: &mut Output<'_>,
        params: &P,
    ) {
        let (rows, kh, row_quads, n) = (self.rows, self.kh, self.row_quads, bases.len());
        let group_len = 32 * kh * row_quads;
        let wg: [&[u8]; G] =
            core::array::from_fn(|b| self.ws.get((g0 + b) * group_len..(g0 + b + 1) * group_len).unwrap_or(&[]));
        let (Some(start), Some(q)) = (self.start.get(g0..g0 + G), self.q.get(g0..g0 + G)) else { return };
        // The bytes an input row reads from its base on.
        let reach = kh.saturating_sub(1) * row_stride + 4 * row_quads;
        if n == 0 || kh == 0 || src.len() < reach || wg.iter().any(|w| w.len() != group_len) {
            return;
        }
        let limit = src.len() - reach;
        let (sp, wp): (*const u8, [*const u8; G]) = (src.as_ptr(), core::array::from_fn(|b| wg[b].as_ptr()));
        for i0 in (0..n).step_by(I) {
            let base: [usize; I] =
                core::array::from_fn(|a| bases.get((i0 + a).min(n - 1)).copied().unwrap_or(usize::MAX));
            if base.iter().any(|&b| b > limit) {
                continue;
            }
            let mut acc: [[__m256i; G]; I] = [core::array::from_fn(|b| start[b]); I];
            for ky in 0..kh {
                for j in 0..row_quads {
                    let wi = 32 * (ky * row_quads + j);
                    // SAFETY: wi + 32 <= 32 * kh * row_quads == group_len == the slice's
                    // length (checked above), for every group.
                    let wv: [__m256i; G] =
                        core::array::from_fn(|b| unsafe { _mm256_loadu_si256(wp[b].add(wi).cast()) });
                    let xo = ky * row_stride + 4 * j;
                    for (acc, &b) in acc.iter_mut().zip(&base) {
                        // SAFETY: b <= limit, so b + xo + 4 <= b + reach <= src.len()
                        // (checked above).
                        let xv = _mm256_set1_epi32(unsafe { core::ptr::read_unaligned(sp.add(b + xo).cast::<i32>()) });
                        for (a, &w) in acc.iter_mut().zip(&wv) {
                            *a = _mm256_dpbusd_avx_epi32(*a, xv, w);
                        }
                    }
                }
            }
            for (a, acc) in acc.iter().enumerate().take(n - i0) {
                for (b, (&sums, qb)) in acc.iter().zip(q).enumerate() {
                    let c = 8 * (g0 + b);
                    store8(out, (first + i0 + a) * rows + c, 8.min(rows - c), sums, qb, c, params);
                }
            }
        }
    }
}

//! AVX-VNNI version of [`super::dense_batch`], chosen at run time: x86-64 host builds (AVX2
//! at compile time, feature `std` or tests) whose CPU reports `avxvnni` (Intel Alder Lake and
//! later, AMD Zen 4 and later). Everything else, including a CPU with AVX-512 VNNI but not
//! the VEX-encoded AVX-VNNI (Ice Lake, Cascade Lake), takes the AVX2 kernel of the parent
//! module; no_std builds never compile this module.
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
//! The sums are requantized by the parent module's [`store8`] (the rule of
//! [`crate::quant::requantize`], tested there). The property test
//! `dense_batch_matches_portable` runs this kernel, the AVX2 kernel and the dispatcher against
//! the portable [`crate::kernels::portable::dense`] on the same random cases (on a CPU without
//! AVX-VNNI it says so and checks the other two).
//!
//! # Safety audit
//! `unsafe` appears in two forms only:
//! - the call from [`dense_batch`] into the `#[target_feature(enable = "avx2,avxvnni")]`
//!   kernel, made only after `is_x86_feature_detected!("avxvnni")` returned true on this CPU
//!   (AVX2 itself is guaranteed by the build, as in the parent module);
//! - unaligned 32-byte loads of the rearranged weights and 4-byte reads of the shifted
//!   activations, each after an explicit check, once per block, that the slice it reads has
//!   the length the loop bound assumes (see the `SAFETY` comments).
//!
//! Valgrind (as `.ci/run` uses it) does not model AVX-VNNI and masks it in the CPUID it
//! reports, so under valgrind the detection returns false and this kernel does not run; its
//! memory safety rests on the length checks above, which are plain safe Rust.
#![allow(unsafe_code)]

use super::{store8, ChannelParams, Output, Requant8, Weights, Window};
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
pub(in crate::kernels) fn dense_batch<P: ChannelParams>(
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    if !detected() {
        return false;
    }
    // SAFETY: the CPU has AVX-VNNI (just detected) and AVX2 (the build requires it).
    unsafe { dense_batch_vnni(input, n, layer, out) };
    true
}

/// The int8 matrix product of [`super::dense_batch`] with output rows in the vector lanes:
/// each input becomes `x ^ 0x80` bytes, padded with zeros to a multiple of four, and
/// [`Packed::run`] multiplies them with the [`Packed`] weights.
#[target_feature(enable = "avx2,avxvnni")]
fn dense_batch_vnni<P: ChannelParams>(input: &[u8], n: usize, layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let k = input.len().checked_div(n).unwrap_or(0);
    let Some(packed) = Packed::new(layer, k, k) else { return };
    let kp = packed.kp;
    let mut xs = vec![0u8; n * kp];
    for (d, s) in xs.chunks_exact_mut(kp).zip(input.chunks_exact(k)) {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = s ^ 0x80;
        }
    }
    packed.run(&xs, 0, out, layer.params);
}

/// Bytes of im2col rows [`conv2d_batch`] builds at a time (a block of images whose rows stay
/// in the L2 cache while every group of weights passes over them).
const COLS_BYTES: usize = 1 << 18;

/// [`super::super::conv2d`] on `n` images stored one after another in `input` (image `i`'s
/// output at `i * win.output.len()` of `out`), as one `vpdpbusd` matrix product over the
/// images' im2col rows, if the CPU has AVX-VNNI: returns `false` (having written nothing)
/// otherwise. Same results as [`super::super::conv2d`] on each image.
///
/// A convolution's weights `[oc][kh][kw][ic]` are a dense layer's `[rows][k]` with
/// `k = kh * kw * ic`, and its NHWC output `[pixel][oc]` is the dense layer's `[input][row]`:
/// each output pixel's receptive field, gathered as `x ^ 0x80` bytes in the weights' order,
/// is one input row of [`Packed::run`]. A padding tap is the byte `zp ^ 0x80`, the shifted
/// zero point, so it contributes `w (zp + 128) - w (128 + zp) = 0` once the row's correction
/// is subtracted, exactly as a padding tap contributes nothing to the portable kernel.
pub(in crate::kernels) fn conv2d_batch<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    // Fewer than four input channels (a first layer on a grey image): the im2col rows
    // would be mostly copying, and the per-image direct kernel is faster (measured on the
    // presets, docs/RESULTS.md session 9).
    if win.input.c < 4 || !detected() {
        return false;
    }
    // SAFETY: the CPU has AVX-VNNI (just detected) and AVX2 (the build requires it).
    unsafe { conv2d_batch_vnni(win, input, n, layer, out) }
}

/// The kernel of [`conv2d_batch`], for every window (the tests run it on all of them);
/// returns `false` (having written nothing) when a length is inconsistent.
#[target_feature(enable = "avx2,avxvnni")]
pub(in crate::kernels) fn conv2d_batch_vnni<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let (len_in, k) = (win.input.len(), win.kernel.0 * win.kernel.1 * win.input.c);
    if n == 0 || k == 0 || len_in == 0 || input.len() < n * len_in || layer.bytes.len() != k * win.output.c {
        return false;
    }
    let (ic, (kh, kw), (sh, sw)) = (win.input.c, win.kernel, win.stride);
    let (pt, pl, pb, pr) = win.padding;
    let (ph, pw) = (win.input.h + pt + pb, win.input.w + pl + pr);
    let (oh, ow) = (win.output.h, win.output.w);
    // Every window inside the padded image (the validator guarantees it).
    if oh == 0 || ow == 0 || (oh - 1) * sh + kh > ph || (ow - 1) * sw + kw > pw {
        return false;
    }
    if (kh, kw, sh, sw, win.padding) == (1, 1, 1, 1, (0, 0, 0, 0)) {
        // A pointwise convolution: the NHWC input is already the im2col matrix.
        let npix = oh * ow;
        dense_batch_vnni(input.get(..n * npix * ic).unwrap_or(&[]), n * npix, layer, out);
        return true;
    }
    im2col_product(win, input, n, layer, out)
}

/// The piece [`im2col_product`] copies a kernel row in.
const COPY: usize = 16;

/// [`conv2d_batch_vnni`] for a window that is not pointwise: the im2col rows of a block of
/// images, then [`Packed::run`]. Each row is `kh` kernel rows of `span = kw * ic` bytes,
/// each copied in whole [`COPY`]-byte pieces: the last piece of a kernel row writes past it,
/// over the start of the next (copied right after) or, for the last, into the row's tail,
/// which is wide enough (`width`) and meets zero weights. The windows are checked to lie
/// inside the padded image by the caller.
#[target_feature(enable = "avx2,avxvnni")]
fn im2col_product<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    n: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let (ic, (kh, kw), (sh, sw)) = (win.input.c, win.kernel, win.stride);
    let (pt, pl, pb, _) = win.padding;
    let (ph, pw) = (win.input.h + pt + pb, win.input.w + pl + win.padding.3);
    let (oh, ow) = (win.output.h, win.output.w);
    let (k, span) = (kh * kw * ic, kw * ic);
    let pieces = span.div_ceil(COPY);
    let width = (kh - 1) * span + COPY * pieces;
    let Some(packed) = Packed::new(layer, k, width) else { return false };
    let kp = packed.kp;
    let npix = oh * ow;
    let per_image = npix * kp;
    let images = (COLS_BYTES / per_image.max(1)).clamp(1, n);
    let pad = layer.input_zero_point as u8 ^ 0x80;
    // The shifted image with its padding written as the shifted zero point, so that every
    // window is whole, with COPY bytes of slack: a last piece reads at most COPY - 1 bytes
    // past a window's last row, so at most COPY - 1 past the image.
    let row_stride = pw * ic;
    let mut img = vec![pad; ph * row_stride + COPY];
    let bases: Vec<usize> = (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy * sh * pw + ox * sw) * ic)).collect();
    let mut cols = vec![0u8; images * per_image];
    for i0 in (0..n).step_by(images) {
        let m = images.min(n - i0);
        let cols = &mut cols[..m * per_image];
        for (x, dst) in input.chunks_exact(win.input.len()).skip(i0).take(m).zip(cols.chunks_exact_mut(per_image)) {
            for (y, src) in x.chunks_exact(win.input.w * ic).enumerate() {
                let d0 = (y + pt) * row_stride + pl * ic;
                if let Some(d) = img.get_mut(d0..d0 + src.len()) {
                    for (d, &s) in d.iter_mut().zip(src) {
                        *d = s ^ 0x80;
                    }
                }
            }
            for (row, &base) in dst.chunks_exact_mut(kp).zip(&bases) {
                for ky in 0..kh {
                    for c in 0..pieces {
                        let (xi, pi) = (base + ky * row_stride + COPY * c, ky * span + COPY * c);
                        // In bounds by the widths above; checked all the same.
                        if let (Some(d), Some(s)) = (row.get_mut(pi..pi + COPY), img.get(xi..xi + COPY)) {
                            d.copy_from_slice(s);
                        }
                    }
                }
            }
        }
        packed.run(cols, i0 * npix, out, layer.params);
    }
    true
}

/// A layer's weights rearranged for [`Packed::run`]: groups of eight rows, each group as
/// `[quad][row][4]` bytes (32 bytes per quad of inputs, zero-padded past the row's end and
/// past the last row), so that one 32-byte load holds four consecutive weights of eight rows;
/// with each group's accumulator start (minus the rows' corrections) and requantization.
struct Packed {
    /// Rearranged weights, `group_len` bytes per group of eight rows.
    ws: Vec<u8>,
    /// Per group: the accumulators' starting values, minus the rows' corrections.
    start: Vec<__m256i>,
    /// Per group: the requantization constants.
    q: Vec<Requant8>,
    /// Output rows (channels).
    rows: usize,
    /// Inputs per row, rounded up to a multiple of four: the length of an input row.
    kp: usize,
}

impl Packed {
    /// Packs the rows of `k` weights of `layer` for input rows of at least `width >= k`
    /// bytes (rounded up to a multiple of four; the weights past `k` are zero); `None` if
    /// there are no rows.
    #[target_feature(enable = "avx2,avxvnni")]
    fn new<P: ChannelParams>(layer: &Weights<'_, P>, k: usize, width: usize) -> Option<Packed> {
        let weights = layer.bytes;
        let rows = weights.len().checked_div(k).unwrap_or(0);
        if rows == 0 {
            return None;
        }
        let quads = width.max(k).div_ceil(4);
        let groups = rows.div_ceil(8);
        let group_len = 32 * quads;
        let mut ws = vec![0u8; groups * group_len];
        for (r, w) in weights.chunks_exact(k).take(rows).enumerate() {
            let (g, lane) = (r / 8, r % 8);
            let Some(dst) = ws.get_mut(g * group_len..(g + 1) * group_len) else { continue };
            for (d, quad) in dst.chunks_exact_mut(32).zip(w.chunks(4)) {
                if let Some(d) = d.get_mut(4 * lane..4 * lane + quad.len()) {
                    d.copy_from_slice(quad);
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
        Some(Packed { ws, start, q, rows, kp: 4 * quads })
    }

    /// The products of the input rows `xs` (shifted bytes, `kp` each) with every weight row,
    /// requantized, input row `i`'s output `c` at `(first + i) * rows + c` of `out`. Every
    /// block of four input rows by [`GROUPS`] groups keeps its twelve accumulators in
    /// registers: per quad, one broadcast of each input's four bytes and one `vpdpbusd` per
    /// group adds four products to each of the group's eight row sums. The sums come out in
    /// row order for [`store8`], with no horizontal sums. A partial block of inputs repeats
    /// its last input (those results are not stored); a partial block of groups runs a
    /// narrower block.
    #[target_feature(enable = "avx2,avxvnni")]
    fn run<P: ChannelParams>(&self, xs: &[u8], first: usize, out: &mut Output<'_>, params: &P) {
        let groups = self.start.len();
        let mut g0 = 0;
        while g0 + GROUPS <= groups {
            self.block::<GROUPS, 4, P>(xs, g0, first, out, params);
            g0 += GROUPS;
        }
        match groups - g0 {
            2 => self.block::<2, 6, P>(xs, g0, first, out, params),
            1 => self.block::<1, 8, P>(xs, g0, first, out, params),
            _ => {}
        }
    }

    /// Groups `g0..g0 + G` against every block of `I` input rows of `xs`.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    fn block<const G: usize, const I: usize, P: ChannelParams>(
        &self,
        xs: &[u8],
        g0: usize,
        first: usize,
        out: &mut Output<'_>,
        params: &P,
    ) {
        let (rows, kp) = (self.rows, self.kp);
        let (n, group_len) = (xs.len() / kp, 8 * kp);
        let wg: [&[u8]; G] =
            core::array::from_fn(|b| self.ws.get((g0 + b) * group_len..(g0 + b + 1) * group_len).unwrap_or(&[]));
        let (Some(start), Some(q)) = (self.start.get(g0..g0 + G), self.q.get(g0..g0 + G)) else { return };
        if n == 0 || wg.iter().any(|w| w.len() != group_len) {
            return;
        }
        for i0 in (0..n).step_by(I) {
            let xr: [&[u8]; I] = core::array::from_fn(|a| {
                let i = (i0 + a).min(n - 1);
                xs.get(i * kp..(i + 1) * kp).unwrap_or(&[])
            });
            if xr.iter().any(|x| x.len() != kp) {
                continue;
            }
            let mut acc: [[__m256i; G]; I] = [core::array::from_fn(|b| start[b]); I];
            for j in (0..kp).step_by(4) {
                // SAFETY: j < kp, so 8 * j + 32 <= 8 * kp == group_len == w.len() (checked
                // above) for every group's slice.
                let wv: [__m256i; G] =
                    core::array::from_fn(|b| unsafe { _mm256_loadu_si256(wg[b].as_ptr().add(8 * j).cast()) });
                for (acc, x) in acc.iter_mut().zip(xr) {
                    // SAFETY: j + 4 <= kp == x.len() (kp is a multiple of four; checked above).
                    let xv = _mm256_set1_epi32(unsafe { core::ptr::read_unaligned(x.as_ptr().add(j).cast::<i32>()) });
                    for (a, &w) in acc.iter_mut().zip(&wv) {
                        *a = _mm256_dpbusd_avx_epi32(*a, xv, w);
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

//! AVX2 versions of the kernels that carry almost every multiply-accumulate: [`dense`],
//! [`conv2d`] and [`depthwise_conv2d`]. Compiled only for x86-64 builds that enable AVX2 at compile time (the
//! workspace's host builds use `-C target-cpu=x86-64-v3`); every other target, Cortex-M and
//! RISC-V included, runs the portable kernels in [`super::portable`].
//!
//! The arithmetic is the same exact integer arithmetic as the portable kernels:
//! - activations become `(x - zp)` in i16 (range [-255, 255]) and weights are sign-extended
//!   to i16, so `vpmaddwd` forms exact i32 sums of pairs of products (each pair is at most
//!   2 * 128 * 255 in magnitude); the i32 accumulations wrap exactly like the portable
//!   `wrapping_add` chains, and the validator proves they never overflow anyway;
//! - requantization ([`rescale8`], [`pack16`]) computes [`crate::quant::requantize`] for
//!   eight or sixteen channels at once: the exact i64 product `acc * m`, the single
//!   round-half-up right shift by `t = 31 - shift`, the clamp to the activation range, then
//!   the zero point. When every `shift < 0` (`t >= 32`, the usual case) the shift is the
//!   high word of `acc * m + 2^(t-1)` shifted right by `t - 32` in 32 bits (floor of a floor,
//!   as in [`crate::quant::Requantizer`]); otherwise a logical shift of the product offset by
//!   2^62 (exact because `|acc * m| < 2^62`) and a clamp in 64 bits. The clamp and the zero
//!   point are then applied in i16 lanes after a saturating pack (the clamp bounds are within
//!   ±255, so saturation does not change the result). Logit outputs take the scalar
//!   [`Output::store_with`].
//!
//! The property tests run both this path and [`super::portable`] against the i64 reference
//! on the same random cases.
//!
//! [`dense_batch`] first tries the AVX-VNNI kernel of the submodule `vnni` (its own header
//! audits it), which runs only when the CPU reports `avxvnni` at run time.
//!
//! # Safety audit
//! `unsafe` appears in two forms only:
//! - calls from the safe entry points into `#[target_feature(enable = "avx2")]` functions,
//!   sound because this module only exists when `target_feature = "avx2"` is enabled for the
//!   whole build (`cfg` at the `mod` declaration), so every CPU that runs the code has AVX2;
//! - unaligned 8-, 16- and 32-byte loads and stores (`_mm_loadl_epi64`, `_mm_loadu_si128`,
//!   `_mm256_loadu_si256`, `_mm256_loadu2_m128i`, `_mm256_storeu_si256`, `_mm_storeu_si128`)
//!   on slices whose lengths were checked against the loop bound just before (in the direct
//!   kernels, once per call against the furthest read of the scratch image); each load names
//!   the check that keeps it in bounds.
#![allow(unsafe_code)]

use super::{ChannelParams, Output, Weights, Window, CONV_PATCH_MAX};
use core::arch::x86_64::*;

/// The AVX-VNNI batch kernels, chosen at run time when the CPU has AVX-VNNI.
#[cfg(any(test, feature = "std"))]
pub(super) mod vnni;

/// Largest number of i16 weights [`conv2d`] converts onto the stack at a time (8 KiB).
const WEIGHT_SCRATCH: usize = 4096;
/// Output channels [`conv2d`] and [`dense`] handle per block (eight groups of eight).
const CHANNEL_BLOCK: usize = 64;
/// Activations [`dense`] converts to i16 at a time (1 KiB of stack).
const X_CHUNK: usize = 512;

/// Requantization constants of eight consecutive channels, in the lane layout [`rescale8`]
/// uses: the even channels' constants sit in the 64-bit lanes of `*_even`, the odd
/// channels' in `*_odd`.
#[derive(Clone, Copy)]
struct Requant8 {
    /// Biases, one i32 lane per channel.
    bias: __m256i,
    /// Multipliers (the low 32 bits of each 64-bit lane are what `vpmuldq` reads).
    m_even: __m256i,
    m_odd: __m256i,
    /// For `high`: `2^(t-1)`, the rounding constant of the total right shift `t`.
    half_even: __m256i,
    half_odd: __m256i,
    /// For `high`: `t - 32`, one i32 lane per channel.
    t_high: __m256i,
    /// Total right shifts `31 - shift`, in [1, 62].
    t_even: __m256i,
    t_odd: __m256i,
    /// `2^62 + 2^(t-1)`: the offset that makes the product non-negative plus the rounding.
    rnd_even: __m256i,
    rnd_odd: __m256i,
    /// `2^(62-t)`: the offset left after the shift.
    off_even: __m256i,
    off_odd: __m256i,
    /// Every total shift is at least 32 (every `shift < 0`, a real multiplier below 1/2, the
    /// usual case): then the result is the high word of `acc * m + 2^(t-1)` shifted right
    /// by `t - 32` (as in [`crate::quant::Requantizer`]), within `±2^30`.
    high: bool,
}

impl Requant8 {
    /// Constants of channels `c0..c0 + 8`; channels at or past `count` get harmless
    /// placeholders (their results are never stored).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new<P: ChannelParams>(params: &P, c0: usize, count: usize) -> Self {
        let mut bias = [0i32; 8];
        let mut m = [1i32 << 30; 8];
        // Placeholders: m = 2^30, t = 32 (a real multiplier of 1/4, which keeps `high`).
        let mut t = [32i64; 8];
        for (j, ((b, mj), tj)) in bias.iter_mut().zip(&mut m).zip(&mut t).enumerate() {
            let c = c0 + j;
            if c < count {
                *b = params.bias(c);
                *mj = params.multiplier(c);
                // The validator keeps shift in [-31, 30]; clamp anyway so that a bad value can
                // only give a wrong number, never a shift out of range.
                *tj = (31 - params.shift(c)).clamp(1, 62) as i64;
            }
        }
        let v32 = |a: [i32; 8]| _mm256_setr_epi32(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        let v64 = |f: &dyn Fn(usize) -> i64, odd: usize| _mm256_setr_epi64x(f(odd), f(2 + odd), f(4 + odd), f(6 + odd));
        let mm = |j: usize| m[j] as i64;
        let tt = |j: usize| t[j];
        let half = |j: usize| 1i64 << (t[j] - 1);
        let rnd = |j: usize| (1i64 << 62) + (1i64 << (t[j] - 1));
        let off = |j: usize| 1i64 << (62 - t[j]);
        Requant8 {
            bias: v32(bias),
            m_even: v64(&mm, 0),
            m_odd: v64(&mm, 1),
            half_even: v64(&half, 0),
            half_odd: v64(&half, 1),
            t_high: v32(core::array::from_fn(|j| (t[j] - 32).max(0) as i32)),
            t_even: v64(&tt, 0),
            t_odd: v64(&tt, 1),
            rnd_even: v64(&rnd, 0),
            rnd_odd: v64(&rnd, 1),
            off_even: v64(&off, 0),
            off_odd: v64(&off, 1),
            high: t.iter().all(|&tj| tj >= 32),
        }
    }
}

/// `round_half_up(acc * m / 2^t)` clamped to `[lo, hi]`, for the four channels of one
/// parity, as i64 lanes (`acc` holds the channels' accumulators in the low 32 bits).
#[inline]
#[target_feature(enable = "avx2")]
fn rescale4(acc: __m256i, m: __m256i, t: __m256i, rnd: __m256i, off: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
    let prod = _mm256_mul_epi32(acc, m);
    let v = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(prod, rnd), t), off);
    let v = _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v));
    _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi))
}

/// The rescaled value `round_half_up(acc * m / 2^t)` of eight accumulators (bias not yet
/// added), as i32 lanes, before the zero point: exact when `q.high` (within `±2^30`), else
/// clamped to `[min - zp, max - zp]` first (in 64 bits), which the clamp in [`pack16`]
/// leaves unchanged.
#[inline]
#[target_feature(enable = "avx2")]
fn rescale8(sums: __m256i, q: &Requant8, zero_point: i8, min: i8, max: i8) -> __m256i {
    let acc = _mm256_add_epi32(sums, q.bias);
    if q.high {
        // The high words of `acc * m + 2^(t-1)` (exact in i64: |acc * m| < 2^62 and the
        // constant is at most 2^61), shifted right by t - 32: floor of a floor.
        let even = _mm256_add_epi64(_mm256_mul_epi32(acc, q.m_even), q.half_even);
        let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(acc), q.m_odd), q.half_odd);
        let v = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        _mm256_srav_epi32(v, q.t_high)
    } else {
        let lo = _mm256_set1_epi64x(min as i64 - zero_point as i64);
        let hi = _mm256_set1_epi64x(max as i64 - zero_point as i64);
        let even = rescale4(acc, q.m_even, q.t_even, q.rnd_even, q.off_even, lo, hi);
        let odd = rescale4(_mm256_srli_epi64::<32>(acc), q.m_odd, q.t_odd, q.rnd_odd, q.off_odd, lo, hi);
        // Both halves now fit in i32: interleave them back into channel order.
        _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd))
    }
}

/// Sixteen bytes from two vectors of [`rescale8`] values (`a`'s eight channels, then
/// `b`'s): clamped to `[min - zp, max - zp]`, plus the zero point. The saturating pack to
/// i16 does not change the clamp's result (the bounds are within ±255), and the values
/// after the clamp are within `[min, max]`, so the second saturating pack is exact.
#[inline]
#[target_feature(enable = "avx2")]
fn pack16(a: __m256i, b: __m256i, zero_point: i8, min: i8, max: i8) -> __m128i {
    // i16 lanes [a0-3, b0-3 | a4-7, b4-7], reordered to [a0-7 | b0-7].
    let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
    let w = _mm256_max_epi16(w, _mm256_set1_epi16(min as i16 - zero_point as i16));
    let w = _mm256_min_epi16(w, _mm256_set1_epi16(max as i16 - zero_point as i16));
    let w = _mm256_add_epi16(w, _mm256_set1_epi16(zero_point as i16));
    _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w))
}

/// [`crate::quant::requantize`] of eight accumulators (bias not yet added) to eight bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn requant8(sums: __m256i, q: &Requant8, zero_point: i8, min: i8, max: i8) -> [u8; 8] {
    let v = rescale8(sums, q, zero_point, min, max);
    (_mm_cvtsi128_si64(pack16(v, v, zero_point, min, max)) as u64).to_le_bytes()
}

/// [`Requant8`] constants of the `groups` groups of eight channels from `c0` (the block's
/// unused slots repeat the first group and are never read).
#[inline]
#[target_feature(enable = "avx2")]
fn requant_block<P: ChannelParams>(
    params: &P,
    c0: usize,
    groups: usize,
    count: usize,
) -> [Requant8; CHANNEL_BLOCK / 8] {
    let first = Requant8::new(params, c0, count);
    core::array::from_fn(|g| if g > 0 && g < groups { Requant8::new(params, c0 + 8 * g, count) } else { first })
}

/// Horizontal sums of eight 8-lane accumulators, in order: lane `j` is `Σ acc[j]`.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum8(acc: &[__m256i; 8]) -> __m256i {
    let ab = _mm256_hadd_epi32(acc[0], acc[1]);
    let cd = _mm256_hadd_epi32(acc[2], acc[3]);
    let ef = _mm256_hadd_epi32(acc[4], acc[5]);
    let gh = _mm256_hadd_epi32(acc[6], acc[7]);
    // Per 128-bit half: [a, b, c, d] and [e, f, g, h] partial sums.
    let abcd = _mm256_hadd_epi32(ab, cd);
    let efgh = _mm256_hadd_epi32(ef, gh);
    let lo = _mm256_permute2x128_si256::<0x20>(abcd, efgh);
    let hi = _mm256_permute2x128_si256::<0x31>(abcd, efgh);
    _mm256_add_epi32(lo, hi)
}

/// Stores eight accumulators (bias not yet added) of channels `c..c + n` (`n <= 8`) at
/// `buf[idx..idx + n]`, requantized; logits go through the scalar path.
#[inline]
#[target_feature(enable = "avx2")]
fn store8<P: ChannelParams>(out: &mut Output<'_>, idx: usize, n: usize, sums: __m256i, q: &Requant8, c: usize, p: &P) {
    match out {
        Output::Act { buf, zero_point, min, max } => {
            let bytes = requant8(sums, q, *zero_point, *min, *max);
            if n == 8 {
                // Constant length: one 8-byte store.
                if let Some(dst) = buf.get_mut(idx..idx + 8) {
                    dst.copy_from_slice(&bytes);
                }
            } else if let Some(dst) = buf.get_mut(idx..idx + n) {
                for (d, &b) in dst.iter_mut().zip(&bytes) {
                    *d = b;
                }
            }
        }
        Output::Logits(_) => store8_logits(out, idx, n, sums, c, p),
    }
}

/// Stores sixteen accumulators (bias not yet added) of channels `ca..ca + 8` (`a`, constants
/// `qa`) and `cb..cb + 8` (`b`, constants `qb`) at `buf[idx..idx + 16]`, requantized, with
/// one 16-byte store; logits go through the scalar path.
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn store16<P: ChannelParams>(
    out: &mut Output<'_>,
    idx: usize,
    (a, qa, ca): (__m256i, &Requant8, usize),
    (b, qb, cb): (__m256i, &Requant8, usize),
    p: &P,
) {
    match out {
        Output::Act { buf, zero_point, min, max } => {
            let (zp, lo, hi) = (*zero_point, *min, *max);
            let v = pack16(rescale8(a, qa, zp, lo, hi), rescale8(b, qb, zp, lo, hi), zp, lo, hi);
            if let Some(dst) = buf.get_mut(idx..idx + 16) {
                // SAFETY: `dst` has exactly the 16 bytes the store writes.
                unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), v) };
            }
        }
        Output::Logits(_) => {
            store8_logits(out, idx, 8, a, ca, p);
            store8_logits(out, idx + 8, 8, b, cb, p);
        }
    }
}

/// The logit branch of [`store8`], kept out of line (it runs once per model, on the last
/// layer) so that the activation branch stays small enough to inline.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx2")]
fn store8_logits<P: ChannelParams>(out: &mut Output<'_>, idx: usize, n: usize, sums: __m256i, c: usize, p: &P) {
    let mut lanes = [0i32; 8];
    lanes[0] = _mm256_extract_epi32::<0>(sums);
    lanes[1] = _mm256_extract_epi32::<1>(sums);
    lanes[2] = _mm256_extract_epi32::<2>(sums);
    lanes[3] = _mm256_extract_epi32::<3>(sums);
    lanes[4] = _mm256_extract_epi32::<4>(sums);
    lanes[5] = _mm256_extract_epi32::<5>(sums);
    lanes[6] = _mm256_extract_epi32::<6>(sums);
    lanes[7] = _mm256_extract_epi32::<7>(sums);
    for (j, &s) in lanes.iter().enumerate().take(n) {
        out.store_with(idx + j, p.bias(c + j).wrapping_add(s), p.multiplier(c + j), p.shift(c + j));
    }
}

/// Row `r` of a block of `count` rows of length `len`, clamped to the last row, so that a
/// partial group of eight can reuse it (the duplicate results are never stored).
#[inline(always)]
fn row<T>(block: &[T], len: usize, r: usize, count: usize) -> &[T] {
    let r = r.min(count.saturating_sub(1));
    block.get(r * len..(r + 1) * len).unwrap_or(&[])
}

/// AVX2 [`super::depthwise_conv2d`]. Same contract and results as the portable kernel:
/// [`depthwise_direct`] when the padded input fits its scratch and the kernel has at most
/// [`DW_TAPS`] taps, else [`depthwise_avx2`].
pub(super) fn depthwise_conv2d<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) {
    let padded = (win.input.h + win.padding.0 + win.padding.2)
        * (win.input.w + win.padding.1 + win.padding.3)
        * win.input.c.div_ceil(8)
        * 8;
    // SAFETY (all four calls): this module is compiled only when AVX2 is enabled for the
    // whole build.
    let direct = if padded <= 2048 {
        unsafe { depthwise_direct::<2048, P>(win, input, layer, out) }
    } else if padded <= 4096 {
        unsafe { depthwise_direct::<4096, P>(win, input, layer, out) }
    } else if padded <= 8192 {
        unsafe { depthwise_direct::<8192, P>(win, input, layer, out) }
    } else {
        false
    };
    if !direct {
        unsafe { depthwise_avx2(win, input, layer, out) }
    }
}

/// Kernel taps [`depthwise_direct`] handles (a 7x7 kernel has 49).
const DW_TAPS: usize = 64;

/// Writes `(x - zp)` of the int8 bytes `src` into `dst` (as long as `src`), sixteen at a
/// time, then the tail one by one.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_row(src: &[u8], dst: &mut [i16], zpv: __m256i) {
    let n = src.len().min(dst.len());
    let mut k = 0;
    while k + 16 <= n {
        // SAFETY: k + 16 <= n <= src.len(), dst.len().
        unsafe {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(src.as_ptr().add(k).cast()));
            _mm256_storeu_si256(dst.as_mut_ptr().add(k).cast(), _mm256_sub_epi16(x, zpv));
        }
        k += 16;
    }
    let zp = _mm256_extract_epi16::<0>(zpv) as i16;
    for (d, &s) in dst[k..n].iter_mut().zip(&src[k..n]) {
        *d = s as i8 as i16 - zp;
    }
}

/// Depthwise convolution straight from a zero-padded i16 copy of the input, eight channels
/// and two output pixels per pass. The input is converted once to `(x - zp)`, each pixel's
/// channels padded with zeros to a multiple of eight and the padding written as zeros, so
/// every window is whole and every load is eight channels of one pixel. Taps go in pairs:
/// each tap's eight channels of the two pixels are loaded into the two 128-bit halves of a
/// vector, two taps' vectors are interleaved (`vpunpcklwd` / `vpunpckhwd`: channels 0-3 and
/// 4-7) and `vpmaddwd` with the pair's interleaved weights adds
/// `(x_a - zp) w_a + (x_b - zp) w_b` to each channel's i32 lane (an odd last tap pairs
/// with a zero weight); the products are exact (`|(x - zp) w| <= 255 * 128`) and the lanes
/// wrap like the portable `wrapping_add` chain. One 128-bit lane permute per pixel puts the
/// channels back in order for [`store8`]; lanes past the channel count are never stored.
/// `N` is the scratch size in i16 (the caller picks the smallest tier that fits); returns
/// `false` (having written nothing) when the padded image does not fit, the kernel has more
/// than [`DW_TAPS`] taps, or a length is inconsistent.
#[target_feature(enable = "avx2")]
fn depthwise_direct<const N: usize, P: ChannelParams>(
    win: &Window,
    input: &[u8],
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let c_n = win.input.c;
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.stride;
    let (pt, pl, pb, pr) = win.padding;
    let (ph, pw) = (win.input.h + pt + pb, win.input.w + pl + pr);
    let (oh, ow) = (win.output.h, win.output.w);
    let taps = kh * kw;
    // Channels per padded pixel.
    let cs = c_n.div_ceil(8) * 8;
    let img_len = ph * pw * cs;
    if oh == 0 || ow == 0 || taps == 0 || taps > DW_TAPS || c_n == 0 || img_len > N {
        return false;
    }
    // Every window must lie inside the padded image (the validator guarantees it; check
    // anyway, since the unchecked reads below rely on it).
    if (oh - 1) * sh + kh > ph || (ow - 1) * sw + kw > pw || input.len() < win.input.len() || weights.len() < taps * c_n
    {
        return false;
    }
    // The furthest read: eight channels of the last group of the last pixel's last tap.
    let last_base = ((oh - 1) * sh * pw + (ow - 1) * sw) * cs + (cs - 8);
    let max_off = ((kh - 1) * pw + kw - 1) * cs;
    if last_base + max_off + 8 > img_len {
        return false;
    }

    // The padded image: zeros (the zero point) around `(x - zp)`.
    let mut img = [0i16; N];
    let zpv = _mm256_set1_epi16(in_zp as i16);
    let span = win.input.w * c_n;
    for (y, src) in input.chunks_exact(span.max(1)).take(win.input.h).enumerate() {
        if cs == c_n {
            let d0 = ((y + pt) * pw + pl) * cs;
            let Some(dst) = img.get_mut(d0..d0 + span) else { return false };
            widen_row(src, dst, zpv);
        } else {
            for (x, px) in src.chunks_exact(c_n).enumerate() {
                let d0 = ((y + pt) * pw + pl + x) * cs;
                let Some(dst) = img.get_mut(d0..d0 + c_n) else { return false };
                widen_row(px, dst, zpv);
            }
        }
    }
    // Offsets of the taps in the padded image, two per pair; an odd last tap's partner
    // reads tap 0 (its weight is zero).
    let pairs = taps.div_ceil(2);
    let mut off = [0usize; DW_TAPS];
    for (t, o) in off.iter_mut().enumerate().take(taps) {
        *o = ((t / kw) * pw + t % kw) * cs;
    }
    let (off, ip) = (&off[..2 * pairs], img.as_ptr());
    // One pass: the sixteen i16 from `b_lo` (eight channels) and from `b_hi` (eight
    // channels), each at every tap; returns the i32 sums of the low and the high eight
    // channels. When the two are adjacent (`b_hi == b_lo + 8`) each tap is one 32-byte load.
    let pass = |wv: &[__m256i], b_lo: usize, b_hi: usize| {
        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut add = |w: &[__m256i], xa: __m256i, xb: __m256i| {
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(xa, xb), w[0]));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(xa, xb), w[1]));
        };
        if b_hi == b_lo + 8 {
            for (w, o) in wv.chunks_exact(2).zip(off.chunks_exact(2)) {
                // SAFETY: b_lo + 16 == b_hi + 8, and b_hi + o + 8 <= img.len() as below.
                let (xa, xb) = unsafe {
                    (_mm256_loadu_si256(ip.add(b_lo + o[0]).cast()), _mm256_loadu_si256(ip.add(b_lo + o[1]).cast()))
                };
                add(w, xa, xb);
            }
        } else {
            for (w, o) in wv.chunks_exact(2).zip(off.chunks_exact(2)) {
                // SAFETY: as below.
                let (xa, xb) = unsafe {
                    (
                        _mm256_loadu2_m128i(ip.add(b_hi + o[0]).cast(), ip.add(b_lo + o[0]).cast()),
                        _mm256_loadu2_m128i(ip.add(b_hi + o[1]).cast(), ip.add(b_lo + o[1]).cast()),
                    )
                };
                add(w, xa, xb);
            }
        }
        (_mm256_permute2x128_si256::<0x20>(lo, hi), _mm256_permute2x128_si256::<0x31>(lo, hi))
    };
    // (SAFETY of the loads in `pass`, for every call below: b_lo and b_hi are
    // `base(pixel) + c` with c <= cs - 8, so at most last_base, and every offset is at most
    // max_off: each 8-element read ends at most at last_base + max_off + 8 <= img_len <= N
    // == img.len(), checked above.)
    // Image offsets of the output pixels, in order.
    let bases = || (0..oh).flat_map(move |oy| (0..ow).map(move |ox| (oy * sh * pw + ox * sw) * cs));
    // Per pair of taps: the interleaved weights of channels 0-3 and of 4-7 of each half.
    let mut wv = [_mm256_setzero_si256(); DW_TAPS];
    for c0 in (0..cs).step_by(16) {
        // Sixteen channels of one pixel per pass, or, for a last group of eight, the eight
        // channels of two pixels.
        let wide = c0 + 16 <= cs;
        let c_hi = if wide { c0 + 8 } else { c0 };
        let (n_lo, n_hi) = (8.min(c_n - c0), 8.min(c_n - c_hi));
        for (p, w) in wv.chunks_exact_mut(2).enumerate().take(pairs) {
            let mut lanes = [[0i16; 16]; 2];
            for (half, cb) in [(0, c0), (8, c_hi)] {
                for j in 0..8.min(c_n - cb) {
                    let tap = |t: usize| {
                        if t < taps {
                            weights.get(t * c_n + cb + j).map_or(0, |&v| v as i8 as i16)
                        } else {
                            0
                        }
                    };
                    let at = half + 2 * (j % 4);
                    lanes[j / 4][at] = tap(2 * p);
                    lanes[j / 4][at + 1] = tap(2 * p + 1);
                }
            }
            for (v, l) in w.iter_mut().zip(&lanes) {
                // SAFETY: `l` holds sixteen i16, what the 32-byte load reads.
                *v = unsafe { _mm256_loadu_si256(l.as_ptr().cast()) };
            }
        }
        let wv = &wv[..2 * pairs];
        let q_lo = Requant8::new(params, c0, c_n);
        if wide {
            let q_hi = Requant8::new(params, c_hi, c_n);
            for (p, b) in bases().enumerate() {
                let b = b + c0;
                let (lo, hi) = pass(wv, b, b + 8);
                if n_hi == 8 {
                    store16(out, p * c_n + c0, (lo, &q_lo, c0), (hi, &q_hi, c_hi), params);
                } else {
                    store8(out, p * c_n + c0, n_lo, lo, &q_lo, c0, params);
                    store8(out, p * c_n + c_hi, n_hi, hi, &q_hi, c_hi, params);
                }
            }
        } else {
            let mut it = bases();
            let mut p = 0;
            while let Some(b) = it.next() {
                // A last odd pixel is computed twice (the copy is not stored).
                let (b, next) = (b + c0, it.next());
                let (lo, hi) = pass(wv, b, next.map_or(b, |n| n + c0));
                if next.is_some() && c_n == 8 {
                    // Eight channels: the two pixels' outputs are adjacent.
                    store16(out, p * c_n, (lo, &q_lo, c0), (hi, &q_lo, c0), params);
                } else {
                    store8(out, p * c_n + c0, n_lo, lo, &q_lo, c0, params);
                    if next.is_some() {
                        store8(out, (p + 1) * c_n + c0, n_lo, hi, &q_lo, c0, params);
                    }
                }
                p += 2;
            }
        }
    }
    true
}

/// Eight bytes from `src[i..]` sign-extended to i32 lanes; bytes past the end read as 0.
#[inline]
#[target_feature(enable = "avx2")]
fn load8_i32(src: &[u8], i: usize) -> __m256i {
    let mut tmp = [0u8; 8];
    let bytes: &[u8] = match src.get(i..i + 8) {
        Some(b) => b,
        None => {
            if let Some(rest) = src.get(i..) {
                tmp[..rest.len().min(8)].copy_from_slice(&rest[..rest.len().min(8)]);
            }
            &tmp
        }
    };
    // SAFETY: `bytes` has exactly 8 bytes (a checked subslice or the buffer), which is what
    // the 64-bit load reads.
    let v = unsafe { _mm_loadl_epi64(bytes.as_ptr() as *const __m128i) };
    _mm256_cvtepi8_epi32(v)
}

/// Depthwise convolution for what [`depthwise_direct`] does not take (padded images past
/// its largest scratch, kernels of more than [`DW_TAPS`] taps), reading the input in place.
///
/// Eight channels per vector: for each group of eight channels (its [`Requant8`] constants
/// computed once) and each output position, every valid tap adds `(x - zp) * w` in i32
/// lanes (sign-extended bytes, `vpmulld`: `|(x - zp) w| <= 255 * 128`, and the lanes wrap like
/// the portable `wrapping_add` chain), then [`store8`] requantizes the group. A tap whose
/// eight bytes would run past the end of the input or weights (the last group of a channel
/// count that is not a multiple of eight) is copied through a zeroed 8-byte buffer; lanes
/// past the channel count are never stored.
#[target_feature(enable = "avx2")]
fn depthwise_avx2<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, params) = (layer.bytes, layer.params);
    let c_n = win.input.c;
    let kw = win.kernel.1;
    let zp = _mm256_set1_epi32(layer.input_zero_point as i32);
    for c0 in (0..c_n).step_by(8) {
        let n = 8.min(c_n - c0);
        let q = Requant8::new(params, c0, c_n);
        for oy in 0..win.output.h {
            let (ky0, ky1, iy0) = win.rows(oy);
            for ox in 0..win.output.w {
                let (kx0, kx1, ix0) = win.cols(ox);
                let mut acc = _mm256_setzero_si256();
                for ky in ky0..ky1 {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (ix0 + kx as isize) as usize;
                        let x = load8_i32(input, (iy * win.input.w + ix) * c_n + c0);
                        let w = load8_i32(weights, (ky * kw + kx) * c_n + c0);
                        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_sub_epi32(x, zp), w));
                    }
                }
                store8(out, (oy * win.output.w + ox) * c_n + c0, n, acc, &q, c0, params);
            }
        }
    }
}

/// AVX2 [`super::dense`]. Same contract and results as the portable kernel.
pub(super) fn dense<P: ChannelParams>(input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    // SAFETY: this module is compiled only when AVX2 is enabled for the whole build.
    unsafe { dense_avx2(input, layer, out) }
}

#[target_feature(enable = "avx2")]
fn dense_avx2<P: ChannelParams>(input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let n = input.len();
    if n == 0 {
        return;
    }
    let rows = weights.len() / n;
    let zp = in_zp as i16;
    let mut xbuf = [0i16; X_CHUNK];
    let mut acc = [_mm256_setzero_si256(); CHANNEL_BLOCK / 8];
    for r0 in (0..rows).step_by(CHANNEL_BLOCK) {
        let rn = CHANNEL_BLOCK.min(rows - r0);
        let groups = rn.div_ceil(8);
        let block = weights.get(r0 * n..(r0 + rn) * n).unwrap_or(&[]);
        acc.fill(_mm256_setzero_si256());
        for c0 in (0..n).step_by(X_CHUNK) {
            let cn = X_CHUNK.min(n - c0);
            let xs = &mut xbuf[..cn];
            for (d, &s) in xs.iter_mut().zip(input.get(c0..c0 + cn).unwrap_or(&[])) {
                *d = s as i8 as i16 - zp;
            }
            let full = cn & !15;
            for (g, gacc) in acc.iter_mut().enumerate().take(groups) {
                let w: [&[u8]; 8] =
                    core::array::from_fn(|r| row(block, n, g * 8 + r, rn).get(c0..c0 + cn).unwrap_or(&[]));
                if xs.len() < cn || w.iter().any(|r| r.len() < cn) {
                    continue;
                }
                let mut a = [_mm256_setzero_si256(); 8];
                let mut k = 0;
                while k + 16 <= full {
                    // SAFETY: k + 16 <= full <= cn == xs.len().
                    let xv = unsafe { _mm256_loadu_si256(xs.as_ptr().add(k).cast()) };
                    for (aj, wr) in a.iter_mut().zip(w) {
                        // SAFETY: k + 16 <= full <= cn <= wr.len() (checked above).
                        let wv = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(wr.as_ptr().add(k).cast()) });
                        *aj = _mm256_add_epi32(*aj, _mm256_madd_epi16(wv, xv));
                    }
                    k += 16;
                }
                let mut s = hsum8(&a);
                if full < cn {
                    let mut tail = [0i32; 8];
                    for (t, wr) in tail.iter_mut().zip(w) {
                        for (&x, &wv) in xs[full..].iter().zip(&wr[full..]) {
                            *t = t.wrapping_add((wv as i8 as i32) * x as i32);
                        }
                    }
                    let tv = _mm256_setr_epi32(tail[0], tail[1], tail[2], tail[3], tail[4], tail[5], tail[6], tail[7]);
                    s = _mm256_add_epi32(s, tv);
                }
                *gacc = _mm256_add_epi32(*gacc, s);
            }
        }
        for (g, &sums) in acc.iter().enumerate().take(groups) {
            let c = r0 + g * 8;
            let q = Requant8::new(params, c, rows);
            store8(out, c, 8.min(rows - c), sums, &q, c, params);
        }
    }
}

/// Inputs per block of [`dense_batch`] (with [`BATCH_ROWS`], twelve accumulators in
/// registers).
#[cfg(any(test, feature = "std"))]
const BATCH_INPUTS: usize = 3;
/// Weight rows per block of [`dense_batch`].
#[cfg(any(test, feature = "std"))]
const BATCH_ROWS: usize = 4;

/// AVX2 [`super::dense_batch`]: `n` inputs of `k = input.len() / n` values, output `o` of
/// input `i` at `i * rows + o`. Same results as [`dense`] on each input.
///
/// Activations (`x - zp`) and weights are widened to i16 once per call, each row padded with
/// zeros to a multiple of sixteen (zeros add nothing). Then every block of
/// [`BATCH_INPUTS`] inputs by [`BATCH_ROWS`] rows keeps its twelve accumulators in registers
/// and reads each sixteen-value slice of the four rows once for the three inputs: `vpmaddwd`
/// forms exact pairs of products, the i32 lanes wrap like the portable `wrapping_add` chain.
/// A partial block repeats its last input or row (those results are not stored). The sums
/// are then requantized eight outputs of one input at a time by [`store8`], as in [`dense`].
///
/// On a CPU with AVX-VNNI (detected at run time) the submodule `vnni`'s `vpdpbusd` kernel
/// runs instead, with the same results.
#[cfg(any(test, feature = "std"))]
pub(super) fn dense_batch<P: ChannelParams>(input: &[u8], n: usize, layer: &Weights<'_, P>, out: &mut Output<'_>) {
    if vnni::dense_batch(input, n, layer, out) {
        return;
    }
    // SAFETY: this module is compiled only when AVX2 is enabled for the whole build.
    unsafe { dense_batch_avx2(input, n, layer, out) }
}

#[cfg(any(test, feature = "std"))]
#[target_feature(enable = "avx2")]
fn dense_batch_avx2<P: ChannelParams>(input: &[u8], n: usize, layer: &Weights<'_, P>, out: &mut Output<'_>) {
    use std::vec;
    let k = input.len().checked_div(n).unwrap_or(0);
    if k == 0 {
        return;
    }
    let (weights, params) = (layer.bytes, layer.params);
    let rows = weights.len() / k;
    if rows == 0 {
        return;
    }
    let kp = k.div_ceil(16) * 16;
    let zp = layer.input_zero_point as i16;
    let mut xs = vec![0i16; n * kp];
    for (d, s) in xs.chunks_exact_mut(kp).zip(input.chunks_exact(k)) {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = s as i8 as i16 - zp;
        }
    }
    let mut ws = vec![0i16; rows * kp];
    for (d, s) in ws.chunks_exact_mut(kp).zip(weights.chunks_exact(k)) {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = s as i8 as i16;
        }
    }
    fn slice(buf: &[i16], kp: usize, r: usize, count: usize) -> &[i16] {
        let r = r.min(count - 1);
        buf.get(r * kp..(r + 1) * kp).unwrap_or(&[])
    }
    let mut sums = vec![0i32; n * rows];
    for i0 in (0..n).step_by(BATCH_INPUTS) {
        let xr: [&[i16]; BATCH_INPUTS] = core::array::from_fn(|a| slice(&xs, kp, i0 + a, n));
        for r0 in (0..rows).step_by(BATCH_ROWS) {
            let wr: [&[i16]; BATCH_ROWS] = core::array::from_fn(|b| slice(&ws, kp, r0 + b, rows));
            if xr.iter().chain(&wr).any(|v| v.len() != kp) {
                continue;
            }
            let mut acc = [[_mm256_setzero_si256(); BATCH_ROWS]; BATCH_INPUTS];
            let mut j = 0;
            while j < kp {
                // SAFETY: j + 16 <= kp (kp is a multiple of 16) and every slice has kp values
                // (checked above).
                let wv: [__m256i; BATCH_ROWS] =
                    core::array::from_fn(|b| unsafe { _mm256_loadu_si256(wr[b].as_ptr().add(j).cast()) });
                for (acc, x) in acc.iter_mut().zip(xr) {
                    // SAFETY: as above.
                    let xv = unsafe { _mm256_loadu_si256(x.as_ptr().add(j).cast()) };
                    for (a, &w) in acc.iter_mut().zip(&wv) {
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, w));
                    }
                }
                j += 16;
            }
            for (a, acc) in acc.iter().enumerate().take(n - i0) {
                for (b, &v) in acc.iter().enumerate().take(rows - r0) {
                    if let Some(s) = sums.get_mut((i0 + a) * rows + r0 + b) {
                        *s = hsum1(v);
                    }
                }
            }
        }
    }
    // Eight outputs of one input at a time, through the single-image kernels' requantization.
    for c in (0..rows).step_by(8) {
        let (q, count) = (Requant8::new(params, c, rows), 8.min(rows - c));
        for i in 0..n {
            let mut lanes = [0i32; 8];
            if let Some(src) = sums.get(i * rows + c..i * rows + c + count) {
                lanes[..count].copy_from_slice(src);
            }
            let [l0, l1, l2, l3, l4, l5, l6, l7] = lanes;
            let v = _mm256_setr_epi32(l0, l1, l2, l3, l4, l5, l6, l7);
            store8(out, i * rows + c, count, v, &q, c, params);
        }
    }
}

/// The wrapping sum of the eight i32 lanes of `v`.
#[cfg(any(test, feature = "std"))]
#[inline]
#[target_feature(enable = "avx2")]
fn hsum1(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Gathers the receptive field of output pixel `(oy, ox)` into `patch` as `(x - zp)`, in the
/// weights' `[kh][kw][ic]` order. Whole windows take [`gather_whole`]; windows cut by
/// padding (and any the vector path cannot do in bounds) take the scalar path, which first
/// zeroes `patch[..clear]` so that padding taps contribute nothing.
#[inline]
#[target_feature(enable = "avx2")]
fn gather(win: &Window, input: &[u8], zpv: __m256i, oy: usize, ox: usize, patch: &mut [i16], clear: usize) {
    let (kh, kw) = win.kernel;
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    if ky1 - ky0 == kh && kx1 - kx0 == kw && gather_whole(win, input, zpv, iy0, ix0, patch) {
        return;
    }
    win.gather(input, _mm256_extract_epi16::<0>(zpv) as i16, (oy, ox), patch, clear);
}

/// Gathers a receptive field that lies wholly inside the input into `patch` as `(x - zp)`,
/// sixteen elements at a time. A row's last vector spills up to 15 elements into the next
/// row (rewritten right after, rows go in order) or, after the last row, past `kh*kw*ic`,
/// where the zero-padded weights cancel whatever lands there. Returns `false`, having
/// written nothing, when the last vector would read or write out of bounds; the caller
/// then gathers with the scalar path.
#[inline]
#[target_feature(enable = "avx2")]
fn gather_whole(win: &Window, input: &[u8], zpv: __m256i, iy0: isize, ix0: isize, patch: &mut [i16]) -> bool {
    let ic = win.input.c;
    let (kh, kw) = win.kernel;
    let span = kw * ic;
    let vecs = span.div_ceil(16);
    let row_stride = win.input.w * ic;
    let x0 = (iy0 as usize * win.input.w + ix0 as usize) * ic;
    // One check covers every load and store below: the furthest read ends at
    // x0 + (kh - 1) * row_stride + 16 * vecs, the furthest write at (kh - 1) * span + 16 * vecs.
    let read_end = x0 + (kh - 1) * row_stride + 16 * vecs;
    let write_end = (kh - 1) * span + 16 * vecs;
    if iy0 < 0 || ix0 < 0 || kh == 0 || read_end > input.len() || write_end > patch.len() {
        return false;
    }
    let (src, dst) = (input.as_ptr(), patch.as_mut_ptr());
    for ky in 0..kh {
        for v in 0..vecs {
            let (xi, pi) = (x0 + ky * row_stride + 16 * v, ky * span + 16 * v);
            // SAFETY: xi + 16 <= read_end <= input.len() and pi + 16 <= write_end <=
            // patch.len(), checked above.
            unsafe {
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(src.add(xi).cast()));
                _mm256_storeu_si256(dst.add(pi).cast(), _mm256_sub_epi16(x, zpv));
            }
        }
    }
    true
}

/// AVX2 [`super::conv2d`]: [`conv2d_direct`] when the padded input and one group of
/// weights fit its scratch, else [`conv2d_patches`] when `kh * kw * in_c <= CONV_PATCH_MAX`;
/// returns `false` (having written nothing) otherwise, and the portable path runs.
pub(super) fn conv2d<P: ChannelParams>(
    win: &Window,
    input: &[u8],
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let per_oc = per_channel(win);
    if per_oc == 0 {
        return false;
    }
    // SAFETY (all four calls): this module is compiled only when AVX2 is enabled for the
    // whole build.
    let padded =
        (win.input.h + win.padding.0 + win.padding.2) * (win.input.w + win.padding.1 + win.padding.3) * win.input.c;
    let direct = if padded + IMG_SLACK <= 1024 {
        unsafe { conv2d_direct::<1024, 512, P>(win, input, layer, out) }
    } else if padded + IMG_SLACK <= 4096 {
        unsafe { conv2d_direct::<4096, 2048, P>(win, input, layer, out) }
    } else if padded + IMG_SLACK <= 8192 {
        unsafe { conv2d_direct::<8192, WEIGHT_SCRATCH, P>(win, input, layer, out) }
    } else {
        false
    };
    if direct {
        return true;
    }
    if per_oc > CONV_PATCH_MAX {
        return false;
    }
    unsafe { conv2d_patches(win, input, layer, out) };
    true
}

/// Convolution for inputs too large for [`conv2d_direct`]'s scratch image: each output
/// pixel's receptive field is gathered into an i16 patch (zero-padded to a multiple of 16),
/// and eight output channels at a time take `vpmaddwd` dot products with it, reduced by
/// [`hsum8`].
#[target_feature(enable = "avx2")]
fn conv2d_patches<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let (ic, oc) = (win.input.c, win.output.c);
    let (kh, kw) = win.kernel;
    let per_oc = kh * kw * ic;
    // Rows padded with zeros to a multiple of 16 so that every load is a whole vector.
    let kp = per_oc.div_ceil(16) * 16;
    // Channels per block: a multiple of 8 whose i16 weights fit the scratch (>= 8 because
    // kp <= CONV_PATCH_MAX = WEIGHT_SCRATCH / 8).
    let block_max = ((WEIGHT_SCRATCH / kp) / 8 * 8).clamp(8, CHANNEL_BLOCK);
    let zp = in_zp as i16;
    let mut wt = [0i16; WEIGHT_SCRATCH];
    // 16 elements of slack: the vector gather writes whole vectors past the end of a row.
    let mut patch_buf = [0i16; CONV_PATCH_MAX + 16];
    let zpv = _mm256_set1_epi16(zp);
    for c0 in (0..oc).step_by(block_max) {
        let cn = block_max.min(oc - c0);
        let groups = cn.div_ceil(8);
        // Weights of this block as i16 rows of `kp`, zero-padded, in whole groups of eight
        // rows (rows past `cn` are zero).
        let wblock = &mut wt[..groups * 8 * kp];
        wblock.fill(0);
        let src = weights.get(c0 * per_oc..(c0 + cn) * per_oc).unwrap_or(&[]);
        for (dst, s) in wblock.chunks_exact_mut(kp).zip(src.chunks_exact(per_oc)) {
            for (d, &v) in dst.iter_mut().zip(s) {
                *d = v as i8 as i16;
            }
        }
        let wblock = &wt[..groups * 8 * kp];
        let q = requant_block(params, c0, groups, oc);
        for oy in 0..win.output.h {
            for ox in 0..win.output.w {
                gather(win, input, zpv, oy, ox, &mut patch_buf, kp);
                let patch = &patch_buf[..kp];
                let base = (oy * win.output.w + ox) * oc + c0;
                for (g, (rows, qg)) in wblock.chunks_exact(8 * kp).zip(&q).enumerate() {
                    if patch.len() < kp || rows.len() < 8 * kp {
                        continue;
                    }
                    let mut a = [_mm256_setzero_si256(); 8];
                    let mut k = 0;
                    while k + 16 <= kp {
                        // SAFETY: k + 16 <= kp == patch.len().
                        let xv = unsafe { _mm256_loadu_si256(patch.as_ptr().add(k).cast()) };
                        for (r, aj) in a.iter_mut().enumerate() {
                            // SAFETY: r * kp + k + 16 <= 8 * kp <= rows.len() (checked above).
                            let wv = unsafe { _mm256_loadu_si256(rows.as_ptr().add(r * kp + k).cast()) };
                            *aj = _mm256_add_epi32(*aj, _mm256_madd_epi16(wv, xv));
                        }
                        k += 16;
                    }
                    let c = g * 8;
                    store8(out, base + c, 8.min(cn - c), hsum8(&a), qg, c0 + c, params);
                }
            }
        }
    }
}

/// Places the first `pairs` (a multiple of 8) weight pairs of eight channel rows (`rows`:
/// eight rows of `per_oc` int8 weights, row length even) into `dst` as i16 in the
/// `[pair][channel][2]` layout of [`conv2d_direct`], eight pairs at a time: eight 16-byte
/// loads, an 8x8 transpose of 16-bit elements, eight sign extensions.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_pairs(rows: &[u8], per_oc: usize, pairs: usize, dst: &mut [i16]) {
    if rows.len() < 8 * per_oc || 2 * pairs > per_oc || dst.len() < pairs * 16 {
        return;
    }
    for p0 in (0..pairs).step_by(8) {
        // SAFETY: r * per_oc + 2 * p0 + 16 <= r * per_oc + 2 * pairs <= (r + 1) * per_oc
        // <= rows.len() for every row r < 8 (checked above).
        let r: [__m128i; 8] =
            core::array::from_fn(|j| unsafe { _mm_loadu_si128(rows.as_ptr().add(j * per_oc + 2 * p0).cast()) });
        let t0 = _mm_unpacklo_epi16(r[0], r[1]);
        let t1 = _mm_unpackhi_epi16(r[0], r[1]);
        let t2 = _mm_unpacklo_epi16(r[2], r[3]);
        let t3 = _mm_unpackhi_epi16(r[2], r[3]);
        let t4 = _mm_unpacklo_epi16(r[4], r[5]);
        let t5 = _mm_unpackhi_epi16(r[4], r[5]);
        let t6 = _mm_unpacklo_epi16(r[6], r[7]);
        let t7 = _mm_unpackhi_epi16(r[6], r[7]);
        let u = [
            (_mm_unpacklo_epi32(t0, t2), _mm_unpacklo_epi32(t4, t6)),
            (_mm_unpackhi_epi32(t0, t2), _mm_unpackhi_epi32(t4, t6)),
            (_mm_unpacklo_epi32(t1, t3), _mm_unpacklo_epi32(t5, t7)),
            (_mm_unpackhi_epi32(t1, t3), _mm_unpackhi_epi32(t5, t7)),
        ];
        for (k, &(lo, hi)) in u.iter().enumerate() {
            // Pairs p0 + 2k and p0 + 2k + 1, each as eight channels' two weights.
            for (e, v) in [_mm_unpacklo_epi64(lo, hi), _mm_unpackhi_epi64(lo, hi)].into_iter().enumerate() {
                let at = (p0 + 2 * k + e) * 16;
                // SAFETY: at + 16 <= pairs * 16 <= dst.len() (checked above).
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(at).cast(), _mm256_cvtepi8_epi16(v)) };
            }
        }
    }
}

/// Output pixels [`conv2d_direct`] computes together.
const PIXELS: usize = 4;

/// Elements of slack after the padded image: the last tap pair of a row may read one
/// element past the row (its weight is zero).
const IMG_SLACK: usize = 2;

/// Convolution straight from a zero-padded i16 copy of the input, with output channels in
/// the vector lanes. The input is converted once to `(x - zp)` with the padding written as
/// zeros, so every window is whole and needs no gathering. For each group of eight output
/// channels and each block of [`PIXELS`] output pixels it accumulates
/// `vpmaddwd(w[pair][c0..c0 + 8], broadcast(x[pair]))` over the pairs of adjacent taps of
/// each kernel row (a row of odd length `kw * ic` gets a zero weight for the element after
/// it); the eight channel sums come out in lane order for [`requant8`], with no horizontal
/// sums, one weight load serves four pixels, and the four accumulation chains are
/// independent. `N` and `W` are the scratch sizes for the padded image and the weights of
/// a block of channels, in i16 (the caller picks the smallest tier that fits, so that
/// small layers do not zero large buffers); returns `false` (having written nothing) when
/// the image or one group's weights do not fit.
#[target_feature(enable = "avx2")]
fn conv2d_direct<const N: usize, const W: usize, P: ChannelParams>(
    win: &Window,
    input: &[u8],
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) -> bool {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let (ic, oc) = (win.input.c, win.output.c);
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.stride;
    let (pt, pl, pb, pr) = win.padding;
    let (ph, pw) = (win.input.h + pt + pb, win.input.w + pl + pr);
    let (oh, ow) = (win.output.h, win.output.w);
    let img_len = ph * pw * ic;
    if oh == 0 || ow == 0 || kh == 0 || kw == 0 || ic == 0 || img_len + IMG_SLACK > N {
        return false;
    }
    // Every window must lie inside the padded image (the validator guarantees it; check
    // anyway, since the unchecked reads below rely on it).
    if (oh - 1) * sh + kh > ph || (ow - 1) * sw + kw > pw || input.len() < win.input.len() {
        return false;
    }
    let row_pairs = (kw * ic).div_ceil(2);
    let row_stride = pw * ic;
    // Each group of eight channels: [ky][pair][channel][2] i16 weights.
    let group_len = kh * row_pairs * 16;
    if group_len > W {
        return false;
    }
    let groups_max = (W / group_len).clamp(1, CHANNEL_BLOCK / 8);

    // The padded image: zeros (the zero point) around `(x - zp)`.
    let mut img = [0i16; N];
    let zp = in_zp as i16;
    let zpv = _mm256_set1_epi16(zp);
    let span = win.input.w * ic;
    for (y, src) in input.chunks_exact(span.max(1)).take(win.input.h).enumerate() {
        let d0 = ((y + pt) * pw + pl) * ic;
        let Some(dst) = img.get_mut(d0..d0 + span) else { return false };
        widen_row(src, dst, zpv);
    }
    // The furthest read: the last pixel's last row's last pair, ending at
    // last_base + (kh - 1) * row_stride + 2 * row_pairs <= img_len + 1 < N.
    let last_base = ((oh - 1) * sh * pw + (ow - 1) * sw) * ic;
    if last_base + (kh - 1) * row_stride + 2 * row_pairs > img_len + IMG_SLACK {
        return false;
    }

    let mut wt = [0i16; W];
    let npix = oh * ow;
    for c0 in (0..oc).step_by(groups_max * 8) {
        let cn = (groups_max * 8).min(oc - c0);
        let groups = cn.div_ceil(8);
        let wblock = &mut wt[..groups * group_len];
        if c0 > 0 {
            wblock.fill(0);
        }
        // Whole groups of eight channels with even rows take the vector transpose for their
        // first multiple of eight pairs; everything else is placed one pair at a time.
        let per_oc = per_channel(win);
        let fast_pairs = if (kw * ic) % 2 == 0 { (per_oc / 2) / 8 * 8 } else { 0 };
        for g in 0..cn / 8 {
            let rows = weights.get((c0 + 8 * g) * per_oc..(c0 + 8 * g + 8) * per_oc).unwrap_or(&[]);
            let dst = wblock.get_mut(g * group_len..(g + 1) * group_len).unwrap_or(&mut []);
            transpose_pairs(rows, per_oc, fast_pairs, dst);
        }
        for j in 0..cn {
            let (g, lane) = (j / 8, j % 8);
            let skip = if g < cn / 8 { fast_pairs } else { 0 };
            let src = weights.get((c0 + j) * per_oc..(c0 + j + 1) * per_oc).unwrap_or(&[]);
            let dst = wblock.get_mut(g * group_len..(g + 1) * group_len).unwrap_or(&mut []);
            for (ky, (src_row, dst_row)) in
                src.chunks_exact(kw * ic).zip(dst.chunks_exact_mut(row_pairs * 16)).enumerate()
            {
                for (r, (pair, d)) in src_row.chunks(2).zip(dst_row.chunks_exact_mut(16)).enumerate() {
                    if ky * row_pairs + r < skip {
                        continue;
                    }
                    if let (Some(&a), Some(slot)) = (pair.first(), d.get_mut(lane * 2..lane * 2 + 2)) {
                        slot[0] = a as i8 as i16;
                        slot[1] = pair.get(1).map_or(0, |&b| b as i8 as i16);
                    }
                }
            }
        }
        let wblock = &wt[..groups * group_len];
        let q = requant_block(params, c0, groups, oc);
        let (mut oy, mut ox) = (0, 0);
        for p0 in (0..npix).step_by(PIXELS) {
            let pn = PIXELS.min(npix - p0);
            // Offsets of the block's windows in the padded image (a partial block repeats
            // its last pixel; those results are not stored).
            let mut base = [0usize; PIXELS];
            let mut last = 0;
            for (i, b) in base.iter_mut().enumerate() {
                if i < pn {
                    last = (oy * sh * pw + ox * sw) * ic;
                    ox += 1;
                    if ox == ow {
                        (oy, ox) = (oy + 1, 0);
                    }
                }
                *b = last;
            }
            let ip = img.as_ptr();
            // Two groups at a time share the broadcasts: 8 accumulators, 2 weight vectors.
            for g0 in (0..groups).step_by(2) {
                let two = g0 + 1 < groups;
                let wa = wblock.get(g0 * group_len..(g0 + 1) * group_len).unwrap_or(&[]);
                let wb = if two { wblock.get((g0 + 1) * group_len..(g0 + 2) * group_len).unwrap_or(&[]) } else { wa };
                if wa.len() < group_len || wb.len() < group_len {
                    continue;
                }
                let (pa, pb) = (wa.as_ptr(), wb.as_ptr());
                let mut acc_a = [_mm256_setzero_si256(); PIXELS];
                let mut acc_b = [_mm256_setzero_si256(); PIXELS];
                for ky in 0..kh {
                    for j in 0..row_pairs {
                        let wi = (ky * row_pairs + j) * 16;
                        // SAFETY: wi + 16 <= group_len <= wa.len(), wb.len() (checked above).
                        let (w_a, w_b) =
                            unsafe { (_mm256_loadu_si256(pa.add(wi).cast()), _mm256_loadu_si256(pb.add(wi).cast())) };
                        let off = ky * row_stride + 2 * j;
                        for ((a, b), &px) in acc_a.iter_mut().zip(&mut acc_b).zip(&base) {
                            // SAFETY: px <= last_base, so px + off + 2 <= last_base +
                            // (kh - 1) * row_stride + 2 * row_pairs <= img_len + IMG_SLACK
                            // <= N == img.len() (checked above): an unaligned read of two i16.
                            let x =
                                _mm256_set1_epi32(unsafe { core::ptr::read_unaligned(ip.add(px + off).cast::<i32>()) });
                            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(w_a, x));
                            if two {
                                *b = _mm256_add_epi32(*b, _mm256_madd_epi16(w_b, x));
                            }
                        }
                    }
                }
                // A constant trip count (and constant indices once unrolled) keeps the
                // accumulators in registers.
                let (c, (qa, qb)) = (g0 * 8, (&q[g0], &q[(g0 + 1).min(CHANNEL_BLOCK / 8 - 1)]));
                for i in 0..PIXELS {
                    if i >= pn {
                        continue;
                    }
                    let (a, b, idx) = (acc_a[i], acc_b[i], (p0 + i) * oc + c0 + c);
                    if two && c + 16 <= cn {
                        // Two whole groups: their sixteen outputs of a pixel are adjacent.
                        store16(out, idx, (a, qa, c0 + c), (b, qb, c0 + c + 8), params);
                    } else {
                        store8(out, idx, 8.min(cn - c), a, qa, c0 + c, params);
                        if two {
                            store8(out, idx + 8, 8.min(cn - c - 8), b, qb, c0 + c + 8, params);
                        }
                    }
                }
            }
        }
    }
    true
}

/// `kh * kw * in_c`: weights per output channel.
#[inline(always)]
fn per_channel(win: &Window) -> usize {
    win.kernel.0 * win.kernel.1 * win.input.c
}

#[cfg(test)]
mod tests {
    //! Every AVX2 path against the portable kernels, on random shapes that reach each path
    //! (including images too large for the direct kernel's scratch), both output kinds, and
    //! extreme weights, zero points and multipliers.
    use super::*;
    use crate::kernels::portable;
    use crate::testing::ChannelTable as Params;
    use crate::Shape;
    use proptest::prelude::*;

    fn params(n: usize) -> impl Strategy<Value = Params> {
        (
            prop::collection::vec(-(1i32 << 22)..(1 << 22), n),
            prop::collection::vec((1i32 << 30)..i32::MAX, n),
            prop::collection::vec(prop_oneof![-31i32..=30, -14i32..=-4], n),
        )
            .prop_map(|(bias, m, s)| Params { bias, m, s })
    }

    fn window() -> impl Strategy<Value = Window> {
        ((1usize..12, 1usize..12, 1usize..20), (1usize..5, 1usize..5, 1usize..4, 1usize..4), 0usize..3, 1usize..21)
            .prop_filter_map("kernel fits", |((h, w, c), (kh, kw, sh, sw), p, oc)| {
                let (pt, pl) = (p.min(kh - 1), p.min(kw - 1));
                let (pb, pr) = ((p + 1).min(kh - 1), p.min(kw - 1));
                if h + pt + pb < kh || w + pl + pr < kw || kh * kw * c > CONV_PATCH_MAX {
                    return None;
                }
                let input = Shape::new(h, w, c);
                let output = Shape::new((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1, oc);
                Some(Window { input, output, kernel: (kh, kw), stride: (sh, sw), padding: (pt, pl, pb, pr) })
            })
    }

    /// A random convolution: window, input, weights, input zero point, channel parameters,
    /// and the int8 output's (zero point, min, max).
    type Case = (Window, Vec<u8>, Vec<u8>, i8, Params, (i8, i8, i8));

    fn case() -> impl Strategy<Value = Case> {
        window().prop_flat_map(|win| {
            let per_oc = win.kernel.0 * win.kernel.1 * win.input.c;
            (
                Just(win),
                prop::collection::vec(any::<u8>(), win.input.len()),
                prop::collection::vec(any::<u8>(), per_oc * win.output.c),
                any::<i8>(),
                params(win.output.c),
                (any::<i8>(), any::<i8>(), any::<i8>()).prop_map(|(z, a, b)| (z, a.min(b), a.max(b))),
            )
        })
    }

    /// Runs `f` into int8 and logit buffers of `n` outputs.
    fn outputs(n: usize, (zp, lo, hi): (i8, i8, i8), mut f: impl FnMut(&mut Output<'_>)) -> (Vec<u8>, Vec<i32>) {
        let mut act = vec![0xAAu8; n];
        let mut logits = vec![0x5555_5555i32; n];
        f(&mut Output::Act { buf: &mut act, zero_point: zp, min: lo, max: hi });
        f(&mut Output::Logits(&mut logits));
        (act, logits)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn conv_paths_match_portable((win, x, w, zp, p, act) in case()) {
            let n = win.output.len();
            let want = outputs(n, act, |o| portable::conv2d(&win, &x, &Weights::new(&w, zp, &p), o));
            let direct = outputs(n, act, |o| {
                // SAFETY: the tests run on the AVX2 build this module requires.
                assert!(unsafe { conv2d_direct::<8192, WEIGHT_SCRATCH, Params>(&win, &x, &Weights::new(&w, zp, &p), o) });
            });
            prop_assert_eq!(&direct, &want, "direct");
            let patches = outputs(n, act, |o| {
                // SAFETY: as above.
                unsafe { conv2d_patches(&win, &x, &Weights::new(&w, zp, &p), o) }
            });
            prop_assert_eq!(&patches, &want, "patches");
            let dispatched = outputs(n, act, |o| assert!(conv2d(&win, &x, &Weights::new(&w, zp, &p), o)));
            prop_assert_eq!(&dispatched, &want, "dispatch");
        }

        /// The VNNI convolution product against the portable convolution image by image (on a
        /// CPU without AVX-VNNI, the per-image fallback of the dispatcher).
        #[test]
        fn conv_batch_matches_portable(
            ((win, _, w, zp, p, act), n, seed) in (case(), 1usize..6, any::<u64>()),
        ) {
            let (len_in, len_out) = (win.input.len(), win.output.len());
            let mut rng = crate::rng::SplitMix64(seed);
            let x: Vec<u8> = (0..n * len_in).map(|_| rng.next_u64() as u8).collect();
            let layer = Weights::new(&w, zp, &p);
            let want = outputs(n * len_out, act, |out| {
                for (i, xi) in x.chunks_exact(len_in).enumerate() {
                    portable::conv2d(&win, xi, &layer, &mut out.part(i * len_out, len_out));
                }
            });
            if vnni::detected() {
                let got = outputs(n * len_out, act, |out| assert!(vnni::conv2d_batch(&win, &x, n, &layer, out)));
                prop_assert_eq!(&got, &want, "vnni");
            }
            let got = outputs(n * len_out, act, |out| super::super::conv2d_batch(&win, &x, n, &layer, out));
            prop_assert_eq!(&got, &want, "dispatch");
        }

        #[test]
        fn dense_batch_matches_portable(
            (n, k, x, w, p) in (1usize..10, 1usize..300, 1usize..41).prop_flat_map(|(n, k, o)| (
                Just(n),
                Just(k),
                prop::collection::vec(any::<u8>(), n * k),
                prop::collection::vec(any::<u8>(), k * o),
                params(o),
            )),
            zp in any::<i8>(),
            act in (any::<i8>(), any::<i8>(), any::<i8>()).prop_map(|(z, a, b)| (z, a.min(b), a.max(b))),
        ) {
            let o = w.len() / k;
            let want = outputs(n * o, act, |out| {
                for (i, xi) in x.chunks_exact(k).enumerate() {
                    let (act, logits) = outputs(o, act, |one| portable::dense(xi, &Weights::new(&w, zp, &p), one));
                    match out {
                        Output::Act { buf, .. } => buf[i * o..(i + 1) * o].copy_from_slice(&act),
                        Output::Logits(buf) => buf[i * o..(i + 1) * o].copy_from_slice(&logits),
                    }
                }
            });
            let layer = Weights::new(&w, zp, &p);
            // SAFETY: the tests run on the AVX2 build this module requires.
            let avx2 = outputs(n * o, act, |out| unsafe { dense_batch_avx2(&x, n, &layer, out) });
            prop_assert_eq!(&avx2, &want, "avx2");
            if vnni::detected() {
                let vnni = outputs(n * o, act, |out| assert!(vnni::dense_batch(&x, n, &layer, out)));
                prop_assert_eq!(&vnni, &want, "vnni");
            }
            let got = outputs(n * o, act, |out| dense_batch(&x, n, &layer, out));
            prop_assert_eq!(&got, &want, "dispatch");
        }

        #[test]
        fn dense_matches_portable(
            (n, x, w, p) in (1usize..1200, 1usize..40).prop_flat_map(|(n, o)| (
                Just(n),
                prop::collection::vec(any::<u8>(), n),
                prop::collection::vec(any::<u8>(), n * o),
                params(o),
            )),
            zp in any::<i8>(),
            act in (any::<i8>(), any::<i8>(), any::<i8>()).prop_map(|(z, a, b)| (z, a.min(b), a.max(b))),
        ) {
            let o = w.len() / n;
            let want = outputs(o, act, |out| portable::dense(&x, &Weights::new(&w, zp, &p), out));
            let got = outputs(o, act, |out| dense(&x, &Weights::new(&w, zp, &p), out));
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Depthwise: the AVX2 kernel against the portable one, int8 and logit outputs, on
        /// random windows (channel counts around and past multiples of eight, padding,
        /// strides) and requantization parameters.
        #[test]
        fn depthwise_matches_portable(
            (win, x, w, zp, p, act) in window().prop_flat_map(|win| {
                let win = Window { output: Shape { c: win.input.c, ..win.output }, ..win };
                let taps = win.kernel.0 * win.kernel.1;
                (
                    Just(win),
                    prop::collection::vec(any::<u8>(), win.input.len()),
                    prop::collection::vec(any::<u8>(), taps * win.input.c),
                    any::<i8>(),
                    params(win.input.c),
                    (any::<i8>(), any::<i8>(), any::<i8>()).prop_map(|(z, a, b)| (z, a.min(b), a.max(b))),
                )
            }),
        ) {
            let n = win.output.len();
            let want = outputs(n, act, |o| portable::depthwise_conv2d(&win, &x, &Weights::new(&w, zp, &p), o));
            let direct = outputs(n, act, |o| {
                // SAFETY: the tests run on the AVX2 build this module requires.
                assert!(unsafe { depthwise_direct::<8192, Params>(&win, &x, &Weights::new(&w, zp, &p), o) });
            });
            prop_assert_eq!(&direct, &want, "direct");
            let lanes = outputs(n, act, |o| {
                // SAFETY: as above.
                unsafe { depthwise_avx2(&win, &x, &Weights::new(&w, zp, &p), o) }
            });
            prop_assert_eq!(&lanes, &want, "i32 lanes");
            let got = outputs(n, act, |o| depthwise_conv2d(&win, &x, &Weights::new(&w, zp, &p), o));
            prop_assert_eq!(&got, &want, "dispatch");
        }
    }

    /// `requant8` against `quant::requantize` lane by lane on edge accumulators: exact
    /// rounding ties, the i32 extremes, every shift, both multiplier extremes.
    #[test]
    fn requant8_matches_the_scalar_rule_on_ties_and_extremes() {
        let mut accs = vec![0i32, 1, -1, 2, -2, 3, -3, i32::MAX, i32::MIN, i32::MIN + 1, 1 << 30, -(1 << 30)];
        for k in 0..31 {
            for d in [-1i64, 0, 1] {
                for sign in [1i64, -1] {
                    // Odd multiples of 2^k are exact ties for a shift of k + 1 with m = 2^30.
                    let v = sign * ((3i64 << k) + d);
                    if let Ok(v) = i32::try_from(v) {
                        accs.push(v);
                    }
                }
            }
        }
        let mut checked = 0usize;
        for shift in crate::quant::SHIFT_MIN..=crate::quant::SHIFT_MAX {
            for m in [1i32 << 30, (1 << 30) + 1, 1518500250, i32::MAX] {
                for &(zp, lo, hi) in &[(0i8, -128i8, 127i8), (-128, -128, 127), (-5, -5, 127), (10, -20, 40)] {
                    // Odd lanes get another shift of the same sign (so that a group takes the
                    // same path) and another multiplier: the two parities' constants differ.
                    let odd_shift = if shift < 0 { -32 - shift } else { 30 - shift };
                    let lane_s = |j: usize| if j % 2 == 1 { odd_shift } else { shift };
                    let lane_m = |j: usize| if j % 2 == 1 { i32::MAX - (m - (1 << 30)) } else { m };
                    let params =
                        Params { bias: vec![0; 8], m: (0..8).map(lane_m).collect(), s: (0..8).map(lane_s).collect() };
                    for chunk in accs.chunks(8) {
                        let mut lanes = [0i32; 8];
                        lanes[..chunk.len()].copy_from_slice(chunk);
                        // SAFETY: the tests run on the AVX2 build this module requires.
                        let got = unsafe {
                            let q = Requant8::new(&params, 0, 8);
                            let v = _mm256_setr_epi32(
                                lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7],
                            );
                            requant8(v, &q, zp, lo, hi)
                        };
                        for (j, &a) in lanes.iter().enumerate() {
                            let (m, shift) = (lane_m(j), lane_s(j));
                            let want = crate::quant::requantize(a, m, shift, zp, lo, hi);
                            assert_eq!(got[j] as i8, want, "acc {a} m {m} shift {shift} zp {zp} [{lo}, {hi}]");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// The batch kernels on the extremes of every operand (weights -128 and 127, inputs -128
    /// and 127, zero points -128, 0 and 127): the largest four-product sums `vpdpbusd` forms
    /// and the largest corrections, compared as exact logits (`m = 2^30`, `shift = 1`).
    #[test]
    fn dense_batch_extremes_match_portable() {
        if !vnni::detected() {
            eprintln!("note: this CPU has no AVX-VNNI; only the AVX2 batch kernel is checked");
        }
        let (n, k, o) = (5, 67, 17);
        let p = Params { bias: vec![0; o], m: vec![1 << 30; o], s: vec![1; o] };
        for (wv, xv) in [(0x80u8, 0x7Fu8), (0x80, 0x80), (0x7F, 0x80), (0x7F, 0x7F)] {
            for zp in [-128i8, 0, 127] {
                let (x, w) = (vec![xv; n * k], vec![wv; k * o]);
                let layer = Weights::new(&w, zp, &p);
                let mut want = vec![0i32; n * o];
                for (xi, z) in x.chunks_exact(k).zip(want.chunks_exact_mut(o)) {
                    portable::dense(xi, &layer, &mut Output::Logits(z));
                }
                let exact = (wv as i8 as i32) * k as i32 * (xv as i8 as i32 - zp as i32);
                assert_eq!(want[0], exact, "m = 2^30, shift = 1 keeps the sum");
                let mut got = vec![0i32; n * o];
                // SAFETY: the tests run on the AVX2 build this module requires.
                unsafe { dense_batch_avx2(&x, n, &layer, &mut Output::Logits(&mut got)) };
                assert_eq!(got, want, "avx2: w {wv:#x} x {xv:#x} zp {zp}");
                if vnni::detected() {
                    let mut got = vec![0i32; n * o];
                    assert!(vnni::dense_batch(&x, n, &layer, &mut Output::Logits(&mut got)));
                    assert_eq!(got, want, "vnni: w {wv:#x} x {xv:#x} zp {zp}");
                }
            }
        }
    }

    #[test]
    fn large_images_take_the_patch_path_and_match() {
        // 64x64x8 padded is far beyond the direct kernel's largest scratch.
        let input = Shape::new(64, 64, 8);
        let win =
            Window { input, output: Shape::new(32, 32, 12), kernel: (3, 3), stride: (2, 2), padding: (1, 1, 1, 1) };
        let mut r = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r as u8
        };
        let x: Vec<u8> = (0..input.len()).map(|_| next()).collect();
        let w: Vec<u8> = (0..72 * 12).map(|_| next()).collect();
        let p = Params { bias: (0..12).map(|c| c * 1000 - 6000).collect(), m: vec![1 << 30; 12], s: vec![-9; 12] };
        // SAFETY: the tests run on the AVX2 build this module requires.
        assert!(!unsafe {
            conv2d_direct::<8192, WEIGHT_SCRATCH, Params>(
                &win,
                &x,
                &Weights::new(&w, -3, &p),
                &mut Output::Logits(&mut [0; 1]),
            )
        });
        let n = win.output.len();
        let want = outputs(n, (-3, -128, 127), |o| portable::conv2d(&win, &x, &Weights::new(&w, -3, &p), o));
        let got = outputs(n, (-3, -128, 127), |o| assert!(conv2d(&win, &x, &Weights::new(&w, -3, &p), o)));
        assert_eq!(got, want);
    }
}

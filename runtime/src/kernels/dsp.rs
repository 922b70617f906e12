//! Cortex-M4/M7 (thumbv7em) kernels for the DSP extension: [`dense`], [`conv2d`] and
//! [`depthwise_conv2d`] with `SMLAD` (two 16x16 multiply-accumulates per instruction) or
//! `SMLABB` / `SMLATT` (one, for depthwise) on operands unpacked by `SXTB16` / `SXTAB16` (two
//! sign-extended bytes per instruction, the input offset added in the same instruction),
//! several output channels (and, for conv, two output pixels) per pass so each unpacked word
//! is reused, the way CMSIS-NN's kernels work.
//!
//! Compiled for Arm builds of `thumbv7em*` targets (`cfg(iocane_arm_dsp)`, set by the build
//! script; `IOCANE_PORTABLE_KERNELS=1` at build time turns it off) and, with the instructions
//! emulated in plain Rust (`op`), for the host tests, which run the same loops against the
//! i64 reference. The device parity test (`.ci/qemu-parity`, Cortex-M4 under qemu) runs the
//! real instructions against the host's results.
//!
//! The arithmetic is the portable kernels' exactly: `(x - zp)` is in [-255, 255] and a weight
//! in [-127, 127], so each 16-bit lane and each product is exact; `SMLAD` adds two products to
//! the accumulator modulo 2^32, like `wrapping_add` (and the validator proves no i32
//! accumulator overflows). Requantization is `quant`'s: [`crate::quant::Requantizer`] (a channel's
//! constants computed once, equal to `quant::requantize` / `quant::requantize_logit`) in conv
//! and depthwise, `quant::requantize` through [`Output`] in dense, once per output.
//!
//! # Safety audit
//! `unsafe` appears in two places, only in thumbv7em builds, whose every core has the DSP
//! extension:
//! - `op`: single `asm!` instructions (`sxtb16`, `sxtab16`, `smlad`, `smlabb`, `smlatt`)
//!   that read and write registers only: `pure, nomem, nostack, preserves_flags` (`SMLAD` sets
//!   the sticky Q flag on signed overflow, which nothing here reads).
//! - the two inner loops in assembly, `dot_pair_asm` (conv) and `dot3_asm` (dense): `unsafe
//!   fn`s whose `# Safety` sections state exactly which words they read; their one caller
//!   each (`dot_pair`, `dot3`) derives the pointers from slices and the iteration count from
//!   those slices' lengths, and calls them only for a count of at least one. Every register
//!   they write is declared; `dot_pair_asm` reserves 8 bytes of stack and releases them
//!   before it ends. Weight words may be unaligned (`LDR` reads them on Cortex-M4, as the
//!   safe `word` loads compile to); `LDM` / `LDRD` read only the `u32` buffers, which are
//!   aligned. On the host, the same loops in Rust run instead.
#![cfg_attr(iocane_arm_dsp, allow(unsafe_code))]

use super::{ChannelParams, Output, Weights, Window, CHANNEL_BLOCK, CONV_PATCH_MAX};
use crate::quant::Requantizer;

/// The DSP instructions used, one function each: inline assembly on thumbv7em, an exact
/// emulation in Rust elsewhere (host tests).
pub mod op {
    /// `SXTB16 rd, rm`: bytes 0 and 2 of `x`, sign-extended, as the low and high halfwords.
    #[inline(always)]
    pub fn sxtb16(x: u32) -> u32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: u32;
            // SAFETY: register-only instruction of the DSP extension, present on thumbv7em.
            unsafe {
                core::arch::asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            (x as u8 as i8 as i16 as u16 as u32) | ((((x >> 16) as u8 as i8 as i16 as u16) as u32) << 16)
        }
    }

    /// `SXTB16 rd, rm, ROR #8`: bytes 1 and 3 of `x`, sign-extended.
    #[inline(always)]
    pub fn sxtb16_ror8(x: u32) -> u32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: u32;
            // SAFETY: as in `sxtb16`.
            unsafe {
                core::arch::asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            sxtb16(x.rotate_right(8))
        }
    }

    /// `SXTAB16 rd, rn, rm`: `a`'s halfwords plus bytes 0 and 2 of `x`, sign-extended, each
    /// modulo 2^16.
    #[inline(always)]
    pub fn sxtab16(a: u32, x: u32) -> u32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: u32;
            // SAFETY: as in `sxtb16`.
            unsafe {
                core::arch::asm!("sxtab16 {r}, {a}, {x}", r = lateout(reg) r, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            add16(a, sxtb16(x))
        }
    }

    /// `SXTAB16 rd, rn, rm, ROR #8`: `a`'s halfwords plus bytes 1 and 3 of `x`.
    #[inline(always)]
    pub fn sxtab16_ror8(a: u32, x: u32) -> u32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: u32;
            // SAFETY: as in `sxtb16`.
            unsafe {
                core::arch::asm!("sxtab16 {r}, {a}, {x}, ror #8", r = lateout(reg) r, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            add16(a, sxtb16_ror8(x))
        }
    }

    /// `SMLAD rd, rn, rm, ra`: `acc + lo(x) * lo(y) + hi(x) * hi(y)` (signed halfwords),
    /// modulo 2^32.
    #[inline(always)]
    pub fn smlad(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: i32;
            // SAFETY: as in `sxtb16`; SMLAD's Q flag is not part of the flags LLVM tracks.
            unsafe {
                core::arch::asm!("smlad {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x, y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            let lo = (x as u16 as i16 as i32) * (y as u16 as i16 as i32);
            let hi = ((x >> 16) as u16 as i16 as i32) * ((y >> 16) as u16 as i16 as i32);
            acc.wrapping_add(lo).wrapping_add(hi)
        }
    }

    /// `SMLABB rd, rn, rm, ra`: `acc + lo(x) * lo(y)` (signed halfwords), modulo 2^32.
    #[inline(always)]
    pub fn smlabb(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: i32;
            // SAFETY: as in `smlad`.
            unsafe {
                core::arch::asm!("smlabb {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x, y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            acc.wrapping_add((x as u16 as i16 as i32) * (y as u16 as i16 as i32))
        }
    }

    /// `SMLATT rd, rn, rm, ra`: `acc + hi(x) * hi(y)` (signed halfwords), modulo 2^32.
    #[inline(always)]
    pub fn smlatt(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(iocane_arm_dsp)]
        {
            let r: i32;
            // SAFETY: as in `smlad`.
            unsafe {
                core::arch::asm!("smlatt {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x, y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }
        #[cfg(not(iocane_arm_dsp))]
        {
            acc.wrapping_add(((x >> 16) as u16 as i16 as i32) * ((y >> 16) as u16 as i16 as i32))
        }
    }

    #[cfg(not(iocane_arm_dsp))]
    fn add16(a: u32, b: u32) -> u32 {
        (a as u16).wrapping_add(b as u16) as u32 | (((a >> 16) as u16).wrapping_add((b >> 16) as u16) as u32) << 16
    }
}

use op::{smlabb, smlad, smlatt, sxtab16, sxtab16_ror8, sxtb16, sxtb16_ror8};

/// Four bytes as a little-endian word.
#[inline(always)]
fn word(b: &[u8]) -> u32 {
    match <[u8; 4]>::try_from(b) {
        Ok(a) => u32::from_le_bytes(a),
        Err(_) => 0,
    }
}

/// Rows of [`dense`] per pass: each activation word is unpacked once for this many rows.
/// Three keeps every pointer, accumulator and temporary of the inner loop in registers on
/// Cortex-M (four spilled to the stack: 2.0 instructions per MAC against 1.7).
const DENSE_ROWS: usize = 3;

/// Fully connected layer: `out[o] = requant(b[o] + Σ_i w[o][i] (x[i] - zp))`, weights `[out][in]`.
///
/// Not inlined: as a function of its own the inner loop gets every register (inlined into
/// the layer loop, LLVM spilled its pointers to the stack).
#[inline(never)]
pub fn dense<P: ChannelParams>(input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let n = input.len();
    if n == 0 {
        return;
    }
    let zp = in_zp as i32;
    // -zp in both halfwords: SXTAB16 adds it while unpacking, giving (x - zp) pairs.
    let off = ((-zp) as u16 as u32) * 0x0001_0001;
    let body = n & !3;
    let (xb, xt) = (input.get(..body).unwrap_or(&[]), input.get(body..).unwrap_or(&[]));
    // Unpack the activations once for all rows: word 2k = (x[4k] - zp, x[4k+2] - zp), word
    // 2k+1 = (x[4k+1] - zp, x[4k+3] - zp); the inner loop then loads them instead of
    // unpacking per row, and needs no register for the offset. Two buffer sizes, so that a
    // small layer does not pay for clearing 2 KiB.
    if body <= 128 {
        dense_unpacked::<64, P>(xb, xt, off, layer, out);
        return;
    }
    if body <= X_PACK {
        dense_unpacked::<{ X_PACK / 2 }, P>(xb, xt, off, layer, out);
        return;
    }
    let mut groups = weights.chunks_exact(DENSE_ROWS * n);
    let mut o = 0;
    for g in &mut groups {
        // The array pattern has DENSE_ROWS elements: changing one without the other fails to compile.
        let Some([w0, w1, w2]) = split_rows::<DENSE_ROWS>(g, n) else {
            break;
        };
        let mut acc = [params.bias(o), params.bias(o + 1), params.bias(o + 2)];
        let it = xb.chunks_exact(4).zip(w0.chunks_exact(4)).zip(w1.chunks_exact(4)).zip(w2.chunks_exact(4));
        for (((x, a), b), c) in it {
            let xw = word(x);
            let (xe, xo) = (sxtab16(off, xw), sxtab16_ror8(off, xw));
            let (a, b, c) = (word(a), word(b), word(c));
            acc[0] = smlad(xo, sxtb16_ror8(a), smlad(xe, sxtb16(a), acc[0]));
            acc[1] = smlad(xo, sxtb16_ror8(b), smlad(xe, sxtb16(b), acc[1]));
            acc[2] = smlad(xo, sxtb16_ror8(c), smlad(xe, sxtb16(c), acc[2]));
        }
        for (j, wr) in [w0, w1, w2].into_iter().enumerate() {
            let tail = tail_dot(xt, wr.get(body..).unwrap_or(&[]), zp);
            out.store(o + j, acc[j].wrapping_add(tail), o + j, params);
        }
        o += DENSE_ROWS;
    }
    for w in groups.remainder().chunks_exact(n) {
        let mut acc = params.bias(o);
        for (x, a) in xb.chunks_exact(4).zip(w.chunks_exact(4)) {
            let (xw, a) = (word(x), word(a));
            acc = smlad(sxtab16_ror8(off, xw), sxtb16_ror8(a), smlad(sxtab16(off, xw), sxtb16(a), acc));
        }
        out.store(o, acc.wrapping_add(tail_dot(xt, w.get(body..).unwrap_or(&[]), zp)), o, params);
        o += 1;
    }
}

/// Inputs [`dense`] unpacks on the stack at once (2 KiB); longer inputs unpack per row group.
pub const X_PACK: usize = 1024;

/// Unpacks `xb` (a multiple of four inputs, at most `2 * W`) into a `W`-word stack buffer,
/// then runs [`dense_packed`].
#[inline(always)]
fn dense_unpacked<const W: usize, P: ChannelParams>(
    xb: &[u8],
    xt: &[u8],
    off: u32,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) {
    let mut buf = [0u32; W];
    let packed = buf.get_mut(..xb.len() / 2).unwrap_or(&mut []);
    for (q, x) in packed.chunks_exact_mut(2).zip(xb.chunks_exact(4)) {
        let xw = word(x);
        q[0] = sxtab16(off, xw);
        q[1] = sxtab16_ror8(off, xw);
    }
    dense_packed(packed, xt, xb.len(), layer, out);
}

/// [`dense`] on activations already unpacked into `packed` (the first `body` inputs, a
/// multiple of four) plus the raw `tail` (fewer than four).
#[inline(never)]
fn dense_packed<P: ChannelParams>(
    packed: &[u32],
    tail: &[u8],
    body: usize,
    layer: &Weights<'_, P>,
    out: &mut Output<'_>,
) {
    let (weights, zp, params) = (layer.bytes, layer.input_zero_point as i32, layer.params);
    let n = body + tail.len();
    let mut groups = weights.chunks_exact(DENSE_ROWS * n);
    let mut o = 0;
    for g in &mut groups {
        let Some([w0, w1, w2]) = split_rows::<DENSE_ROWS>(g, n) else {
            break;
        };
        let acc = dot3(packed, [w0, w1, w2], [params.bias(o), params.bias(o + 1), params.bias(o + 2)]);
        for (j, wr) in [w0, w1, w2].into_iter().enumerate() {
            let t = if tail.is_empty() { 0 } else { tail_dot(tail, wr.get(body..).unwrap_or(&[]), zp) };
            out.store(o + j, acc[j].wrapping_add(t), o + j, params);
        }
        o += DENSE_ROWS;
    }
    for w in groups.remainder().chunks_exact(n) {
        let acc = dot1(packed, w, params.bias(o));
        out.store(o, acc.wrapping_add(tail_dot(tail, w.get(body..).unwrap_or(&[]), zp)), o, params);
        o += 1;
    }
}

/// `acc[r] + Σ_k packed · w_r` for three weight rows against unpacked words (`packed[2k]`
/// pairs with bytes 0 and 2 of weight word `k`, `packed[2k+1]` with bytes 1 and 3), over
/// `min(packed.len() / 2, w_r.len() / 4)` words: the inner loop of [`dense`]. On thumbv7em
/// the pairs of words go through [`dot3_asm`] (34 instructions per 24 MACs); an odd last
/// word, and every word on other targets, through the same arithmetic in Rust. A function of
/// its own so that its registers do not depend on what the caller keeps live.
#[inline(never)]
fn dot3(packed: &[u32], [w0, w1, w2]: [&[u8]; 3], mut acc: [i32; 3]) -> [i32; 3] {
    let words = (packed.len() / 2).min(w0.len() / 4).min(w1.len() / 4).min(w2.len() / 4);
    #[cfg(iocane_arm_dsp)]
    let done = {
        let pairs = words / 2;
        if pairs > 0 {
            // SAFETY: `packed` holds at least 4 * pairs words and each row at least 8 * pairs
            // bytes, all the loop reads (see `dot3_asm`).
            acc = unsafe { dot3_asm(packed.as_ptr(), [w0.as_ptr(), w1.as_ptr(), w2.as_ptr()], pairs, acc) };
        }
        2 * pairs
    };
    #[cfg(not(iocane_arm_dsp))]
    let done = 0;
    let (r0, r1, r2) = (rest(w0, done, words), rest(w1, done, words), rest(w2, done, words));
    let it = packed.get(2 * done..).unwrap_or(&[]).chunks_exact(2).zip(r0.chunks_exact(4));
    for ((q, a), (b, c)) in it.zip(r1.chunks_exact(4).zip(r2.chunks_exact(4))) {
        let (xe, xo) = (q[0], q[1]);
        let (a, b, c) = (word(a), word(b), word(c));
        acc[0] = smlad(xo, sxtb16_ror8(a), smlad(xe, sxtb16(a), acc[0]));
        acc[1] = smlad(xo, sxtb16_ror8(b), smlad(xe, sxtb16(b), acc[1]));
        acc[2] = smlad(xo, sxtb16_ror8(c), smlad(xe, sxtb16(c), acc[2]));
    }
    acc
}

/// Weight words `from..to` of a row.
#[inline(always)]
fn rest(w: &[u8], from: usize, to: usize) -> &[u8] {
    w.get(4 * from..4 * to).unwrap_or(&[])
}

/// The loop of [`dot3`] in assembly, eight inputs (two weight words per row) per iteration:
/// accumulators r0-r2, the two unpacked input words r3 r4 (one `LDRD`), the weight word and
/// its unpacked halves r5 r12, the input pointer lr, the row pointers r8-r10 and the end r11.
///
/// # Safety
/// `pairs >= 1`; `x` is 4-byte aligned and valid for reading `4 * pairs` words, each row
/// pointer for `8 * pairs` bytes (any alignment: Cortex-M4 `LDR` reads unaligned words).
#[cfg(iocane_arm_dsp)]
#[inline(always)]
unsafe fn dot3_asm(x: *const u32, [w0, w1, w2]: [*const u8; 3], pairs: usize, acc: [i32; 3]) -> [i32; 3] {
    let [mut a0, mut a1, mut a2] = acc;
    let end = (x as usize).wrapping_add(16 * pairs);
    // SAFETY: see the function's contract; every register written is declared.
    unsafe {
        core::arch::asm!(
            "2:",
            "ldrd r3, r4, [lr], #8",
            "ldr r5, [r8], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r0, r3, r5, r0",
            "smlad r0, r4, r12, r0",
            "ldr r5, [r9], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r1, r3, r5, r1",
            "smlad r1, r4, r12, r1",
            "ldr r5, [r10], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r2, r3, r5, r2",
            "smlad r2, r4, r12, r2",
            "ldrd r3, r4, [lr], #8",
            "ldr r5, [r8], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r0, r3, r5, r0",
            "smlad r0, r4, r12, r0",
            "ldr r5, [r9], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r1, r3, r5, r1",
            "smlad r1, r4, r12, r1",
            "ldr r5, [r10], #4",
            "sxtb16 r12, r5, ror #8",
            "sxtb16 r5, r5",
            "smlad r2, r3, r5, r2",
            "smlad r2, r4, r12, r2",
            "cmp lr, r11",
            "bne 2b",
            inout("r0") a0,
            inout("r1") a1,
            inout("r2") a2,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r12") _,
            inout("r8") w0 => _,
            inout("r9") w1 => _,
            inout("r10") w2 => _,
            in("r11") end,
            inout("lr") x => _,
            options(nostack, readonly),
        );
    }
    [a0, a1, a2]
}

/// [`dot3`] for one row.
#[inline(never)]
fn dot1(packed: &[u32], w: &[u8], mut acc: i32) -> i32 {
    for (q, a) in packed.chunks_exact(2).zip(w.chunks_exact(4)) {
        let a = word(a);
        acc = smlad(q[1], sxtb16_ror8(a), smlad(q[0], sxtb16(a), acc));
    }
    acc
}

/// The first `R` rows of `n` bytes of `g` (`None` if `g` is shorter: never, for the groups
/// of `R * n` bytes the kernels pass).
#[inline(always)]
fn split_rows<const R: usize>(g: &[u8], n: usize) -> Option<[&[u8]; R]> {
    let mut rows = g.chunks_exact(n);
    let mut out: [&[u8]; R] = [&[]; R];
    for slot in &mut out {
        *slot = rows.next()?;
    }
    Some(out)
}

/// `Σ w[i] * (x[i] - zp)` over the last `len % 4` elements.
#[inline(always)]
fn tail_dot(x: &[u8], w: &[u8], zp: i32) -> i32 {
    x.iter().zip(w).fold(0i32, |acc, (&x, &w)| acc.wrapping_add((w as i8 as i32) * (x as i8 as i32 - zp)))
}

/// Largest `kh * kw * in_c` whose tap offsets [`conv2d`] tabulates (512 bytes of stack) for
/// the windows whose rows are not whole words (the first layer's single input channel).
const TAPS_MAX: usize = 256;

/// 2-D convolution with zero padding, weights `[oc][kh][kw][ic]`, for `kh * kw * in_c <=`
/// [`CONV_PATCH_MAX`] (returns false otherwise; the caller runs the portable kernel).
///
/// Output pixels are taken two at a time (in raster order, so a pair may span two rows) and
/// their receptive fields are unpacked into one buffer as `(x - zp)` halfword pairs, each
/// group of four taps `p0 p1 p2 p3` as the words `(p0, p2)` and `(p1, p3)` that line up with
/// `SXTB16` and `SXTB16 ROR 8` of four weight bytes, the two pixels' words interleaved:
/// `A(p0,p2) A(p1,p3) B(p0,p2) B(p1,p3)`. `conv_pair` then runs two output channels over
/// both pixels at once, so each weight word is loaded and unpacked once for four
/// accumulators (CMSIS-NN's im2col + 2x2 matrix kernel, in safe Rust). An odd last pixel runs
/// as a pair whose second pixel is not stored.
#[inline(never)]
pub fn conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) -> bool {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let (ic, oc) = (win.input.c, win.output.c);
    let (kh, kw) = win.kernel;
    let per_oc = kh * kw * ic;
    if per_oc > CONV_PATCH_MAX || per_oc == 0 {
        return false;
    }
    let body = per_oc & !3;
    // Two pixels' words: `body` words in all (`body / 2` each).
    let mut packed = [0u32; CONV_PATCH_MAX];
    let packed = packed.get_mut(..body).unwrap_or(&mut []);
    let mut tails = [[0i16; 3]; 2];
    let off = ((-(in_zp as i32)) as u16 as u32) * 0x0001_0001;
    let zp = in_zp as i16;
    // Rows of whole words unpack straight from the input ([`gather_words`]); otherwise a whole
    // window reads its taps through a table of input offsets ([`gather_table`]) and the rest
    // take [`gather_padded`].
    let span4 = (kw * ic) % 4 == 0;
    let mut taps = [0u16; TAPS_MAX];
    let taps = if !span4 && per_oc <= TAPS_MAX && tap_table(win, taps.get_mut(..per_oc).unwrap_or(&mut [])) {
        taps.get(..per_oc).unwrap_or(&[])
    } else {
        &[][..]
    };
    let pixels = win.output.h * win.output.w;
    let words_any = ic % 4 == 0;
    let gather = |slot: usize, p: usize, packed: &mut [u32], tail: &mut [i16; 3]| {
        let (oy, ox) = (p / win.output.w.max(1), p % win.output.w.max(1));
        let origin = whole_origin(win, (oy, ox));
        if words_any || (span4 && origin.is_some()) {
            gather_words(win, input, off, (oy, ox), slot, packed);
        } else if let (Some(origin), false) = (origin, taps.is_empty()) {
            gather_table(input, off, zp, origin, taps, slot, packed, tail);
        } else {
            gather_padded(win, input, zp, (oy, ox), slot, packed, tail);
        }
    };
    // Bias and requantization of up to CHANNEL_BLOCK channels, read from the layer once.
    let mut chan = [(0i32, Requantizer::default()); CHANNEL_BLOCK];
    for c0 in (0..oc).step_by(CHANNEL_BLOCK) {
        let cn = CHANNEL_BLOCK.min(oc - c0);
        for (j, c) in chan.iter_mut().take(cn).enumerate() {
            *c = (params.bias(c0 + j), Requantizer::new(params.multiplier(c0 + j), params.shift(c0 + j)));
        }
        let chan = chan.get(..cn).unwrap_or(&[]);
        let wblock = weights.get(c0 * per_oc..(c0 + cn) * per_oc).unwrap_or(&[]);
        for p in (0..pixels).step_by(2) {
            let [ta, tb] = &mut tails;
            gather(0, p, packed, ta);
            let second = p + 1 < pixels;
            if second {
                gather(1, p + 1, packed, tb);
            }
            let base = [p * oc + c0, (p + 1) * oc + c0];
            let pt = [ta.get(..per_oc - body).unwrap_or(&[]), tb.get(..per_oc - body).unwrap_or(&[])];
            // One monomorphic loop per output kind: no `match` per stored value.
            match out {
                Output::Act { buf, zero_point, min, max } => {
                    let mut sink = ActSink { buf, zero_point: *zero_point, min: *min, max: *max };
                    conv_pair(packed, pt, wblock, per_oc, chan, &mut sink, base, second);
                }
                Output::Logits(buf) => conv_pair(packed, pt, wblock, per_oc, chan, &mut LogitSink(buf), base, second),
            }
        }
    }
    true
}

/// Index of the first input byte of the receptive field of `(oy, ox)` if the window lies
/// wholly inside the input, `None` if padding cuts it.
#[inline(always)]
fn whole_origin(win: &Window, (oy, ox): (usize, usize)) -> Option<usize> {
    let (kh, kw) = win.kernel;
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    if ky1 - ky0 != kh || kx1 - kx0 != kw || iy0 < 0 || ix0 < 0 {
        return None;
    }
    Some((iy0 as usize * win.input.w + ix0 as usize) * win.input.c)
}

/// Fills `taps` (`kh * kw * in_c` entries) with the input offsets, from a whole window's
/// first byte, of its taps: each group of four in the order `p0 p2 p1 p3` of the packed
/// words, the last `len % 4` in natural order. False if an offset does not fit 16 bits.
fn tap_table(win: &Window, taps: &mut [u16]) -> bool {
    let (ic, w) = (win.input.c, win.input.w);
    let (kh, kw) = win.kernel;
    let body = taps.len() & !3;
    let mut k = 0;
    for ky in 0..kh {
        for kx in 0..kw {
            for c in 0..ic {
                let Ok(o) = u16::try_from((ky * w + kx) * ic + c) else {
                    return false;
                };
                // Swap positions 1 and 2 of each whole group of four.
                let slot = if k < body { k ^ ((((k >> 1) ^ k) & 1) * 3) } else { k };
                if let Some(t) = taps.get_mut(slot) {
                    *t = o;
                }
                k += 1;
            }
        }
    }
    true
}

/// The two words of group `g` of pixel `slot` in [`conv2d`]'s interleaved buffer.
#[inline(always)]
fn slot_words(q: &mut [u32], slot: usize) -> Option<&mut [u32]> {
    q.get_mut(2 * slot..2 * slot + 2)
}

/// For a window whose rows, as far as they lie in the input, are whole words (`in_c` a
/// multiple of 4, or `kw * in_c` one for a whole window): unpacks them straight from the
/// input into pixel `slot` of `packed` (`SXTAB16` adds `-zp`); a window cut by padding has
/// its words cleared first, so padding taps contribute nothing.
#[inline(always)]
fn gather_words(win: &Window, input: &[u8], off: u32, (oy, ox): (usize, usize), slot: usize, packed: &mut [u32]) {
    let (ic, (kh, kw)) = (win.input.c, win.kernel);
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    if ky1 - ky0 != kh || kx1 - kx0 != kw {
        for q in packed.chunks_exact_mut(4) {
            if let Some(s) = slot_words(q, slot) {
                s.fill(0);
            }
        }
    }
    let span = (kx1 - kx0) * ic;
    for ky in ky0..ky1 {
        let iy = (iy0 + ky as isize) as usize;
        let xi = (iy * win.input.w + (ix0 + kx0 as isize) as usize) * ic;
        let g0 = (ky * kw + kx0) * ic / 4;
        if let Some(src) = input.get(xi..xi + span) {
            for (x, q) in src.chunks_exact(4).zip(packed.chunks_exact_mut(4).skip(g0)) {
                let xw = word(x);
                if let Some([e, o]) = slot_words(q, slot) {
                    *e = sxtab16(off, xw);
                    *o = sxtab16_ror8(off, xw);
                }
            }
        }
    }
}

/// For a whole window starting at input byte `origin`: reads its taps through `taps` (see
/// [`tap_table`]) into pixel `slot` of `packed` and its `tail`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_table(
    input: &[u8],
    off: u32,
    zp: i16,
    origin: usize,
    taps: &[u16],
    slot: usize,
    packed: &mut [u32],
    tail: &mut [i16; 3],
) {
    let x = input.get(origin..).unwrap_or(&[]);
    let at = |t: u16| x.get(t as usize).copied().unwrap_or(0) as u32;
    let tc = taps.chunks_exact(4);
    let rest = tc.remainder();
    for (q, t) in packed.chunks_exact_mut(4).zip(tc) {
        if let (Some([e, o]), [t0, t2, t1, t3]) = (slot_words(q, slot), t) {
            *e = sxtab16(off, at(*t0) | (at(*t2) << 16));
            *o = sxtab16(off, at(*t1) | (at(*t3) << 16));
        }
    }
    for (d, &t) in tail.iter_mut().zip(rest) {
        *d = at(t) as u8 as i8 as i16 - zp;
    }
}

/// Any window (padding taps are zeros): tap by tap into pixel `slot` of `packed` and its
/// `tail`. For the windows [`gather_words`] and [`gather_table`] do not take.
#[inline(never)]
fn gather_padded(
    win: &Window,
    input: &[u8],
    zp: i16,
    (oy, ox): (usize, usize),
    slot: usize,
    packed: &mut [u32],
    tail: &mut [i16; 3],
) {
    let ic = win.input.c;
    let kw = win.kernel.1;
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    for q in packed.chunks_exact_mut(4) {
        if let Some(s) = slot_words(q, slot) {
            s.fill(0);
        }
    }
    *tail = [0; 3];
    let body = packed.len();
    for ky in ky0..ky1 {
        let iy = (iy0 + ky as isize) as usize;
        for kx in kx0..kx1 {
            let ix = (ix0 + kx as isize) as usize;
            let xi = (iy * win.input.w + ix) * ic;
            let k0 = (ky * kw + kx) * ic;
            for (c, &x) in input.get(xi..xi + ic).unwrap_or(&[]).iter().enumerate() {
                let (k, v) = (k0 + c, x as i8 as i16 - zp);
                if k < body {
                    // Tap r of group g: word 4g + 2 slot + (r & 1), halfword r >> 1.
                    let (g, r) = (k >> 2, k & 3);
                    if let Some(w) = packed.get_mut(4 * g + 2 * slot + (r & 1)) {
                        *w |= (v as u16 as u32) << (16 * (r >> 1));
                    }
                } else if let Some(t) = tail.get_mut(k - body) {
                    *t = v;
                }
            }
        }
    }
}

/// All output channels of one pair of output pixels of [`conv2d`] (`base[0]` and `base[1]`
/// on; the second stored only if `second`): two channels at a time over both pixels, then an
/// odd last channel, each accumulator requantized as soon as it is complete.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn conv_pair<S: Sink>(
    packed: &[u32],
    tails: [&[i16]; 2],
    wblock: &[u8],
    per_oc: usize,
    chan: &[(i32, Requantizer)],
    out: &mut S,
    base: [usize; 2],
    second: bool,
) {
    let body = packed.len();
    let mut rows = wblock.chunks_exact(per_oc).zip(chan);
    let mut j = 0;
    while let (Some((w0, c0)), next) = (rows.next(), rows.next()) {
        let Some((w1, c1)) = next else {
            // Odd last channel: the pair loop with both channels the same row.
            let mut acc = dot_pair(packed, [w0, w0], [c0.0; 4]);
            let wt = w0.get(body..).unwrap_or(&[]);
            acc[0] = acc[0].wrapping_add(patch_tail(tails[0], wt));
            acc[1] = acc[1].wrapping_add(patch_tail(tails[1], wt));
            out.put(base[0] + j, acc[0], &c0.1);
            if second {
                out.put(base[1] + j, acc[1], &c0.1);
            }
            break;
        };
        let mut acc = dot_pair(packed, [w0, w1], [c0.0, c0.0, c1.0, c1.0]);
        if !tails[0].is_empty() {
            let (t0, t1) = (w0.get(body..).unwrap_or(&[]), w1.get(body..).unwrap_or(&[]));
            acc[0] = acc[0].wrapping_add(patch_tail(tails[0], t0));
            acc[1] = acc[1].wrapping_add(patch_tail(tails[1], t0));
            acc[2] = acc[2].wrapping_add(patch_tail(tails[0], t1));
            acc[3] = acc[3].wrapping_add(patch_tail(tails[1], t1));
        }
        out.put(base[0] + j, acc[0], &c0.1);
        out.put(base[0] + j + 1, acc[2], &c1.1);
        if second {
            out.put(base[1] + j, acc[1], &c0.1);
            out.put(base[1] + j + 1, acc[3], &c1.1);
        }
        j += 2;
    }
}

/// Two weight rows against two pixels' interleaved words (see [`conv2d`]): `acc` is
/// `[row 0 pixel A, row 0 pixel B, row 1 pixel A, row 1 pixel B]`, over the whole groups of
/// four taps (`min(packed.len() / 4, w0.len() / 4, w1.len() / 4)` of them). Per four taps:
/// one `LDM` of the four patch words, two weight loads, four `SXTB16` and eight `SMLAD` for
/// 16 MACs. On thumbv7em the loop is [`dot_pair_asm`] (20 instructions per 16 MACs; LLVM's
/// own allocation of the same loop spilled three values and took 28); elsewhere the same
/// arithmetic in Rust with the instructions emulated. Not inlined, so that the loop has every
/// register.
#[inline(never)]
fn dot_pair(packed: &[u32], [w0, w1]: [&[u8]; 2], acc: [i32; 4]) -> [i32; 4] {
    let groups = (packed.len() / 4).min(w0.len() / 4).min(w1.len() / 4);
    #[cfg(iocane_arm_dsp)]
    {
        if groups == 0 {
            return acc;
        }
        // SAFETY: `packed` holds at least 4 * groups words and each row at least 4 * groups
        // bytes, which is all the loop reads (see `dot_pair_asm`).
        unsafe { dot_pair_asm(packed.as_ptr(), w0.as_ptr(), w1.as_ptr(), groups, acc) }
    }
    #[cfg(not(iocane_arm_dsp))]
    {
        let mut acc = acc;
        let it = packed.chunks_exact(4).zip(w0.chunks_exact(4)).zip(w1.chunks_exact(4)).take(groups);
        for ((q, a), b) in it {
            let (a, b) = (word(a), word(b));
            let (ae, ao) = (sxtb16(a), sxtb16_ror8(a));
            let (be, bo) = (sxtb16(b), sxtb16_ror8(b));
            if let [xa, ya, xb, yb] = *q {
                acc[0] = smlad(ya, ao, smlad(xa, ae, acc[0]));
                acc[1] = smlad(yb, ao, smlad(xb, ae, acc[1]));
                acc[2] = smlad(ya, bo, smlad(xa, be, acc[2]));
                acc[3] = smlad(yb, bo, smlad(xb, be, acc[3]));
            }
        }
        acc
    }
}

/// The loop of [`dot_pair`] in assembly, every value in a register of its own: accumulators
/// r0-r3, the four patch words r4 r5 r8 r9 (one `LDM`, registers in ascending order), the
/// weight word and its unpacked halves r10 r12, the patch pointer lr and the row-0 pointer
/// r11. Row 1 is addressed from row 0 (`[r11, d]`), and `d` and the end of the patch sit in
/// 8 bytes of stack the block reserves and releases itself, as twelve registers are all
/// inline assembly may name on Thumb (r6 and r7 belong to LLVM).
///
/// # Safety
/// `groups >= 1`; `x` is 4-byte aligned and valid for reading `4 * groups` words, `w0` and
/// `w1` for `4 * groups` bytes each (any alignment: Cortex-M4 `LDR` reads unaligned words, as
/// the [`word`] loads elsewhere in this module compile to). The block reads only those
/// bytes and writes only its own stack slots.
#[cfg(iocane_arm_dsp)]
#[inline(always)]
unsafe fn dot_pair_asm(x: *const u32, w0: *const u8, w1: *const u8, groups: usize, acc: [i32; 4]) -> [i32; 4] {
    let [mut a0, mut a1, mut a2, mut a3] = acc;
    // Row 1 relative to row 0 after row 0's post-increment; the patch's end.
    let d = (w1 as usize).wrapping_sub(w0 as usize).wrapping_sub(4);
    let end = (x as usize).wrapping_add(16 * groups);
    // SAFETY: see the function's contract; registers are declared (clobbers included) and
    // the stack is restored before the block ends.
    unsafe {
        core::arch::asm!(
            "sub sp, sp, #8",
            "str r10, [sp]",
            "str r12, [sp, #4]",
            "2:",
            "ldm lr!, {{r4, r5, r8, r9}}",
            "ldr r10, [r11], #4",
            "sxtb16 r12, r10, ror #8",
            "sxtb16 r10, r10",
            "smlad r0, r4, r10, r0",
            "smlad r0, r5, r12, r0",
            "smlad r1, r8, r10, r1",
            "smlad r1, r9, r12, r1",
            "ldr r12, [sp]",
            "ldr r10, [r11, r12]",
            "sxtb16 r12, r10, ror #8",
            "sxtb16 r10, r10",
            "smlad r2, r4, r10, r2",
            "smlad r2, r5, r12, r2",
            "smlad r3, r8, r10, r3",
            "smlad r3, r9, r12, r3",
            "ldr r12, [sp, #4]",
            "cmp lr, r12",
            "bne 2b",
            "add sp, sp, #8",
            inout("r0") a0,
            inout("r1") a1,
            inout("r2") a2,
            inout("r3") a3,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            inout("r10") d => _,
            inout("r12") end => _,
            inout("r11") w0 => _,
            inout("lr") x => _,
        );
    }
    [a0, a1, a2, a3]
}

/// Depthwise 2-D convolution (channel multiplier 1), weights `[kh][kw][c]`, zero padding.
///
/// Four neighbouring channels per pass: at each tap one word of input and one of weights
/// (the channels are contiguous in both), unpacked by `SXTAB16` (input, `-zp` added) and
/// `SXTB16` (weights) into even and odd channels, then one `SMLABB` / `SMLATT` per channel
/// (depthwise products do not pair up, so no `SMLAD`); the four accumulators stay in
/// registers over the whole receptive field. Channels past the last group of four take the
/// same arithmetic one at a time. Padding taps are skipped (they contribute nothing).
#[inline(never)]
pub fn depthwise_conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    match out {
        Output::Act { buf, zero_point, min, max } => {
            let mut sink = ActSink { buf, zero_point: *zero_point, min: *min, max: *max };
            depthwise_into(win, input, layer, &mut sink);
        }
        Output::Logits(buf) => depthwise_into(win, input, layer, &mut LogitSink(buf)),
    }
}

/// [`depthwise_conv2d`] for one output kind.
#[inline(always)]
fn depthwise_into<P: ChannelParams, S: Sink>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut S) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let c_n = win.input.c;
    let kw = win.kernel.1;
    let zp = in_zp as i32;
    let off = ((-zp) as u16 as u32) * 0x0001_0001;
    let mut chan = [(0i32, Requantizer::default()); CHANNEL_BLOCK];
    for c0 in (0..c_n).step_by(CHANNEL_BLOCK) {
        let cn = CHANNEL_BLOCK.min(c_n - c0);
        for (j, c) in chan.iter_mut().take(cn).enumerate() {
            *c = (params.bias(c0 + j), Requantizer::new(params.multiplier(c0 + j), params.shift(c0 + j)));
        }
        let chan = chan.get(..cn).unwrap_or(&[]);
        for oy in 0..win.output.h {
            let (ky0, ky1, iy0) = win.rows(oy);
            for ox in 0..win.output.w {
                let (kx0, kx1, ix0) = win.cols(ox);
                let base = (oy * win.output.w + ox) * c_n + c0;
                // Input and weight index of tap (ky, kx0) of channel c0.
                let tap = |ky: usize| {
                    let iy = (iy0 + ky as isize) as usize;
                    (((iy * win.input.w) as isize + ix0 + kx0 as isize) as usize * c_n + c0, (ky * kw + kx0) * c_n + c0)
                };
                let mut groups = chan.chunks_exact(4);
                let mut j = 0;
                for g in &mut groups {
                    let [(b0, r0), (b1, r1), (b2, r2), (b3, r3)] = *g else {
                        break;
                    };
                    let mut acc = [b0, b1, b2, b3];
                    for ky in ky0..ky1 {
                        let (mut xi, mut wi) = tap(ky);
                        for _ in kx0..kx1 {
                            let x = word(input.get(xi + j..xi + j + 4).unwrap_or(&[]));
                            let w = word(weights.get(wi + j..wi + j + 4).unwrap_or(&[]));
                            let (xe, xo, we, wo) = (sxtab16(off, x), sxtab16_ror8(off, x), sxtb16(w), sxtb16_ror8(w));
                            acc[0] = smlabb(xe, we, acc[0]);
                            acc[1] = smlabb(xo, wo, acc[1]);
                            acc[2] = smlatt(xe, we, acc[2]);
                            acc[3] = smlatt(xo, wo, acc[3]);
                            xi += c_n;
                            wi += c_n;
                        }
                    }
                    out.put(base + j, acc[0], &r0);
                    out.put(base + j + 1, acc[1], &r1);
                    out.put(base + j + 2, acc[2], &r2);
                    out.put(base + j + 3, acc[3], &r3);
                    j += 4;
                }
                for &(b, r) in groups.remainder() {
                    let mut acc = b;
                    for ky in ky0..ky1 {
                        let (mut xi, mut wi) = tap(ky);
                        for _ in kx0..kx1 {
                            let (x, w) =
                                (input.get(xi + j).copied().unwrap_or(0), weights.get(wi + j).copied().unwrap_or(0));
                            acc = acc.wrapping_add((w as i8 as i32) * (x as i8 as i32 - zp));
                            xi += c_n;
                            wi += c_n;
                        }
                    }
                    out.put(base + j, acc, &r);
                    j += 1;
                }
            }
        }
    }
}

/// Where [`conv_pair`] writes a requantized value: [`Output`] split by kind.
trait Sink {
    /// Requantizes `acc` with `r` into element `idx`.
    fn put(&mut self, idx: usize, acc: i32, r: &Requantizer);
}

/// [`Output::Act`]'s fields.
struct ActSink<'b> {
    buf: &'b mut [u8],
    zero_point: i8,
    min: i8,
    max: i8,
}

impl Sink for ActSink<'_> {
    #[inline(always)]
    fn put(&mut self, idx: usize, acc: i32, r: &Requantizer) {
        if let Some(slot) = self.buf.get_mut(idx) {
            *slot = r.requantize(acc, self.zero_point, self.min, self.max) as u8;
        }
    }
}

/// [`Output::Logits`]' buffer.
struct LogitSink<'b, 'o>(&'b mut &'o mut [i32]);

impl Sink for LogitSink<'_, '_> {
    #[inline(always)]
    fn put(&mut self, idx: usize, acc: i32, r: &Requantizer) {
        if let Some(slot) = self.0.get_mut(idx) {
            *slot = r.requantize_logit(acc);
        }
    }
}

/// `Σ p[i] * w[i]` over the last `per_oc % 4` patch entries (natural order).
#[inline(always)]
fn patch_tail(p: &[i16], w: &[u8]) -> i32 {
    p.iter().zip(w).fold(0i32, |acc, (&p, &w)| acc.wrapping_add((w as i8 as i32) * (p as i32)))
}

//! Cortex-M4/M7 (thumbv7em) kernels for the DSP extension: [`dense`] and [`conv2d`] with
//! `SMLAD` (two 16x16 multiply-accumulates per instruction) on operands unpacked by
//! `SXTB16` / `SXTAB16` (two sign-extended bytes per instruction, the input offset added in
//! the same instruction), several output channels per pass so each unpacked activation word
//! is reused, the way CMSIS-NN's kernels work.
//!
//! Compiled for Arm builds of `thumbv7em*` targets (`cfg(iocane_arm_dsp)`, set by the build
//! script; `IOCANE_PORTABLE_KERNELS=1` at build time turns it off) and, with the instructions
//! emulated in plain Rust ([`op`]), for the host tests, which run the same loops against the
//! i64 reference. The device parity test (`.ci/qemu-parity`, Cortex-M4 under qemu) runs the
//! real instructions against the host's results.
//!
//! The arithmetic is the portable kernels' exactly: `(x - zp)` is in [-255, 255] and a weight
//! in [-127, 127], so each 16-bit lane and each product is exact; `SMLAD` adds two products to
//! the accumulator modulo 2^32, like `wrapping_add` (and the validator proves no i32
//! accumulator overflows). Requantization is the shared scalar `quant::requantize` /
//! `quant::requantize_logit`, once per output.
//!
//! # Safety audit
//! `unsafe` appears only in [`op`], around single `asm!` instructions (`sxtb16`, `sxtab16`,
//! `smlad`) that read and write registers only: `pure, nomem, nostack, preserves_flags`
//! (`SMLAD` sets the sticky Q flag on signed overflow, which nothing here reads). They exist
//! only in thumbv7em builds, whose every core has the DSP extension.
#![cfg_attr(iocane_arm_dsp, allow(unsafe_code))]

use super::{ChannelParams, Output, Weights, Window, CHANNEL_BLOCK, CONV_PATCH_MAX};

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

    #[cfg(not(iocane_arm_dsp))]
    fn add16(a: u32, b: u32) -> u32 {
        (a as u16).wrapping_add(b as u16) as u32 | (((a >> 16) as u16).wrapping_add((b >> 16) as u16) as u32) << 16
    }
}

use op::{smlad, sxtab16, sxtab16_ror8, sxtb16, sxtb16_ror8};

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
/// pairs with bytes 0 and 2 of weight word `k`, `packed[2k+1]` with bytes 1 and 3): the inner
/// loop of [`dense`] and [`conv2d`], 20 instructions per 12 MACs on Cortex-M4. A function of
/// its own so that its registers do not depend on what the caller keeps live.
#[inline(never)]
fn dot3(packed: &[u32], [w0, w1, w2]: [&[u8]; 3], mut acc: [i32; 3]) -> [i32; 3] {
    let it = packed.chunks_exact(2).zip(w0.chunks_exact(4)).zip(w1.chunks_exact(4)).zip(w2.chunks_exact(4));
    for (((q, a), b), c) in it {
        let (xe, xo) = (q[0], q[1]);
        let (a, b, c) = (word(a), word(b), word(c));
        acc[0] = smlad(xo, sxtb16_ror8(a), smlad(xe, sxtb16(a), acc[0]));
        acc[1] = smlad(xo, sxtb16_ror8(b), smlad(xe, sxtb16(b), acc[1]));
        acc[2] = smlad(xo, sxtb16_ror8(c), smlad(xe, sxtb16(c), acc[2]));
    }
    acc
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

/// Output channels of [`conv2d`] per pass over a gathered patch (three for the same register
/// budget as [`DENSE_ROWS`]).
const CONV_CHANNELS: usize = 3;

/// 2-D convolution with zero padding, weights `[oc][kh][kw][ic]`, for `kh * kw * in_c <=`
/// [`CONV_PATCH_MAX`] (returns false otherwise; the caller runs the portable kernel).
///
/// Each receptive field is gathered once as `(x - zp)` in i16 with every group of four
/// reordered `p0 p2 p1 p3`, so that the words `(p0, p2)` and `(p1, p3)` line up with
/// `SXTB16` and `SXTB16 ROR 8` of four weight bytes; three output channels share each pair
/// of patch loads. Not inlined, for the registers (see [`dense`]).
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
    let mut patch = [0i16; CONV_PATCH_MAX];
    let patch = &mut patch[..per_oc];
    let mut packed = [0u32; CONV_PATCH_MAX / 2];
    let packed = &mut packed[..body / 2];
    // Rows of whole words: a whole window can be unpacked straight from the input, four bytes
    // at a time (`gather_words`).
    let span4 = (kw * ic) % 4 == 0;
    let off = ((-(in_zp as i32)) as u16 as u32) * 0x0001_0001;
    // (bias, multiplier, shift) of up to CHANNEL_BLOCK channels, read from the layer once.
    let mut chan = [[0i32; 3]; CHANNEL_BLOCK];
    for c0 in (0..oc).step_by(CHANNEL_BLOCK) {
        let cn = CHANNEL_BLOCK.min(oc - c0);
        for (j, c) in chan.iter_mut().take(cn).enumerate() {
            *c = [params.bias(c0 + j), params.multiplier(c0 + j), params.shift(c0 + j)];
        }
        let chan = chan.get(..cn).unwrap_or(&[]);
        let wblock = weights.get(c0 * per_oc..(c0 + cn) * per_oc).unwrap_or(&[]);
        for oy in 0..win.output.h {
            for ox in 0..win.output.w {
                let ptail = if span4 && gather_words(win, input, off, (oy, ox), packed) {
                    &[][..]
                } else {
                    win.gather(input, in_zp as i16, (oy, ox), patch, per_oc);
                    // Pack: word 2k = (p[4k], p[4k+2]), word 2k+1 = (p[4k+1], p[4k+3]).
                    for (q, p) in packed.chunks_exact_mut(2).zip(patch.chunks_exact(4)) {
                        q[0] = (p[0] as u16 as u32) | ((p[2] as u16 as u32) << 16);
                        q[1] = (p[1] as u16 as u32) | ((p[3] as u16 as u32) << 16);
                    }
                    patch.get(body..).unwrap_or(&[])
                };
                let base = (oy * win.output.w + ox) * oc + c0;
                // One monomorphic loop per output kind: no `match` per stored value.
                match out {
                    Output::Act { buf, zero_point, min, max } => {
                        let mut sink = ActSink { buf, zero_point: *zero_point, min: *min, max: *max };
                        conv_channels(packed, ptail, wblock, per_oc, chan, &mut sink, base);
                    }
                    Output::Logits(buf) => {
                        conv_channels(packed, ptail, wblock, per_oc, chan, &mut LogitSink(buf), base)
                    }
                }
            }
        }
    }
    true
}

/// For a window inside the image whose rows are whole words (`kw * in_c` a multiple of 4):
/// unpacks the receptive field of `(oy, ox)` straight from the input into `packed` (`SXTAB16`
/// adds `-zp`: the words [`conv2d`]'s pack step would make from the gathered patch) and
/// returns true; returns false, touching nothing, for a window cut by padding.
#[inline(always)]
fn gather_words(win: &Window, input: &[u8], off: u32, (oy, ox): (usize, usize), packed: &mut [u32]) -> bool {
    let (kh, kw) = win.kernel;
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    if ky1 - ky0 != kh || kx1 - kx0 != kw {
        return false;
    }
    let span = kw * win.input.c;
    let mut words = packed.chunks_exact_mut(2);
    for ky in 0..kh {
        let iy = (iy0 + ky as isize) as usize;
        let xi = (iy * win.input.w + ix0 as usize) * win.input.c;
        if let Some(src) = input.get(xi..xi + span) {
            // Source first: when a row ends, `zip` stops before taking another word.
            for (x, q) in src.chunks_exact(4).zip(&mut words) {
                let xw = word(x);
                q[0] = sxtab16(off, xw);
                q[1] = sxtab16_ror8(off, xw);
            }
        }
    }
    true
}

/// All output channels of one output pixel of [`conv2d`] (from `base` on): three at a time
/// through [`dot3`], the rest through [`dot1`], then requantized. Inlined into the pixel
/// loop (its setup is then loop-invariant); the dot products are not (their loops keep
/// every value in registers).
#[inline(always)]
fn conv_channels<S: Sink>(
    packed: &[u32],
    ptail: &[i16],
    wblock: &[u8],
    per_oc: usize,
    chan: &[[i32; 3]],
    out: &mut S,
    base: usize,
) {
    let body = packed.len() * 2;
    let mut groups = wblock.chunks_exact(CONV_CHANNELS * per_oc);
    let mut cgroups = chan.chunks_exact(CONV_CHANNELS);
    let mut idx = base;
    for (g, c) in (&mut groups).zip(&mut cgroups) {
        let Some([w0, w1, w2]) = split_rows::<CONV_CHANNELS>(g, per_oc) else {
            break;
        };
        let (Ok(c), [w0, w1, w2]) = (<&[[i32; 3]; CONV_CHANNELS]>::try_from(c), [w0, w1, w2]) else {
            break;
        };
        let mut acc = dot3(packed, [w0, w1, w2], [c[0][0], c[1][0], c[2][0]]);
        if !ptail.is_empty() {
            for (a, w) in acc.iter_mut().zip([w0, w1, w2]) {
                *a = a.wrapping_add(patch_tail(ptail, w.get(body..).unwrap_or(&[])));
            }
        }
        out.put(idx, acc[0], c[0][1], c[0][2]);
        out.put(idx + 1, acc[1], c[1][1], c[1][2]);
        out.put(idx + 2, acc[2], c[2][1], c[2][2]);
        idx += CONV_CHANNELS;
    }
    for (w, c) in groups.remainder().chunks_exact(per_oc).zip(cgroups.remainder()) {
        let acc = dot1(packed, w, c[0]).wrapping_add(patch_tail(ptail, w.get(body..).unwrap_or(&[])));
        out.put(idx, acc, c[1], c[2]);
        idx += 1;
    }
}

/// Where [`conv_channels`] writes a requantized value: [`Output`] split by kind.
trait Sink {
    /// Requantizes `acc` with `(m, shift)` into element `idx`.
    fn put(&mut self, idx: usize, acc: i32, m: i32, shift: i32);
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
    fn put(&mut self, idx: usize, acc: i32, m: i32, shift: i32) {
        if let Some(slot) = self.buf.get_mut(idx) {
            *slot = crate::quant::requantize(acc, m, shift, self.zero_point, self.min, self.max) as u8;
        }
    }
}

/// [`Output::Logits`]' buffer.
struct LogitSink<'b, 'o>(&'b mut &'o mut [i32]);

impl Sink for LogitSink<'_, '_> {
    #[inline(always)]
    fn put(&mut self, idx: usize, acc: i32, m: i32, shift: i32) {
        if let Some(slot) = self.0.get_mut(idx) {
            *slot = crate::quant::requantize_logit(acc, m, shift);
        }
    }
}

/// `Σ p[i] * w[i]` over the last `per_oc % 4` patch entries (natural order).
#[inline(always)]
fn patch_tail(p: &[i16], w: &[u8]) -> i32 {
    p.iter().zip(w).fold(0i32, |acc, (&p, &w)| acc.wrapping_add((w as i8 as i32) * (p as i32)))
}

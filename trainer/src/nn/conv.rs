//! Direct ("implicit gemm") Conv2d kernels for NHWC / OHWI with a filter count that is a
//! multiple of 8.
//!
//! The input is zero-padded once per chunk (so every window is fully inside the buffer),
//! each output pixel is reduced to a base offset into that buffer and each kernel tap
//! `k = (ky, kx, ci)` to a fixed offset, so `x[pixel, k] = xp[base[pixel] + off[k]]` with no
//! border logic and no im2col matrix. Register-blocked micro-kernels then compute
//! - forward: `MR` pixels x `FB` filters per block, looping over taps;
//! - weight gradients: `KB` taps x `FB` filters per block, looping over pixels;
//! - input gradients: `MR` pixels x `KV` taps of `dy * W` per block, then scatter-added into
//!   the padded input gradient one contiguous `kw * c` row span at a time.
//!
//! Depthwise convolutions with a channel count that is a multiple of 8 use the same padded
//! frame with per-tap offsets and 8-channel vector blocks.
//!
//! All loops have a fixed order that does not depend on threads, so results are
//! deterministic. Multiply-adds are deliberately *not* fused (`a * b + c`; rustc never
//! contracts it), so results do not depend on `target-cpu` build flags either (fusing would
//! gain only ~5% here).

use super::layers::{Aux, Geom, GradsOut, LayerParams, Saved, Scratch};
use super::LayerSpec;

/// `a * b + c`, unfused (see the module docs).
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// Geometry of a Conv2d in the padded frame.
struct Dims {
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    f: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    hp: usize,
    wp: usize,
    k: usize,
}

impl Dims {
    fn new(g: &Geom) -> Dims {
        let (f, kernel, stride, padding) = match g.spec {
            LayerSpec::Conv2d { filters, kernel, stride, padding } => (filters, kernel, stride, padding),
            LayerSpec::DepthwiseConv2d { kernel, stride, padding } => (g.inp[2], kernel, stride, padding),
            _ => unreachable!("conv kernels on a non-conv layer"),
        };
        let [h, w, c] = g.inp;
        let [oh, ow, _] = g.out;
        let depthwise = matches!(g.spec, LayerSpec::DepthwiseConv2d { .. });
        Dims {
            h,
            w,
            c,
            oh,
            ow,
            f,
            kh: kernel[0],
            kw: kernel[1],
            sh: stride[0],
            sw: stride[1],
            pt: padding[0],
            pl: padding[1],
            hp: h + padding[0] + padding[2],
            wp: w + padding[1] + padding[3],
            k: kernel[0] * kernel[1] * if depthwise { 1 } else { c },
        }
    }
    fn padded(&self) -> bool {
        self.hp != self.h || self.wp != self.w
    }
    fn in_len(&self) -> usize {
        self.hp * self.wp * self.c
    }
}

/// Whether the direct kernels handle this layer (a Conv2d with `filters % 8 == 0`).
pub(crate) fn supported(g: &Geom) -> bool {
    matches!(g.spec, LayerSpec::Conv2d { filters, .. } if filters.is_multiple_of(8))
}

/// Whether the depthwise kernels handle this layer (`channels % 8 == 0`).
pub(crate) fn depthwise_supported(g: &Geom) -> bool {
    matches!(g.spec, LayerSpec::DepthwiseConv2d { .. }) && g.inp[2].is_multiple_of(8)
}

/// Filter block width for `f` filters (a multiple of 8).
fn filter_block(f: usize) -> usize {
    if f.is_multiple_of(16) {
        16
    } else {
        8
    }
}

/// Fills `aux.cols` with the padded input (if there is padding), `aux.pix` with the pixel
/// base offsets and `aux.off` with the tap offsets.
fn prepare(d: &Dims, n: usize, x: Option<&[f32]>, aux: &mut Aux) {
    if let (true, Some(x)) = (d.padded(), x) {
        let xp = &mut aux.cols;
        xp.clear();
        xp.resize(n * d.in_len(), 0.0);
        interior_rows(d, n, |u, p, len| xp[p..p + len].copy_from_slice(&x[u..u + len]));
    }
    aux.off.clear();
    let per_tap = d.k / (d.kh * d.kw); // c for Conv2d, 1 for depthwise (channel blocks)
    for ky in 0..d.kh {
        for kx in 0..d.kw {
            for ci in 0..per_tap {
                aux.off.push((ky * d.wp + kx) * d.c + ci);
            }
        }
    }
    aux.pix.clear();
    for i in 0..n {
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                aux.pix.push(i * d.in_len() + (oy * d.sh * d.wp + ox * d.sw) * d.c);
            }
        }
    }
}

/// The state [`backward`] and [`depthwise_backward`] read from `aux` for the input gradient
/// (padded input, pixel and tap offsets), without running the forward pass.
pub(crate) fn prepare_state(g: &Geom, n: usize, x: &[f32], aux: &mut Aux) {
    prepare(&Dims::new(g), n, Some(x), aux);
}

/// The pixel and tap offsets only: all the input gradient of [`backward`] and
/// [`depthwise_backward`] reads from `aux` (it never reads the padded input).
pub(crate) fn prepare_offsets(g: &Geom, n: usize, aux: &mut Aux) {
    prepare(&Dims::new(g), n, None, aux);
}

/// Every `base + off` is inside a buffer of `len` values (checked once so the micro-kernels
/// can index without bounds checks).
fn check_bounds(pix: &[usize], off: &[usize], len: usize) {
    if let (Some(&b), Some(&o)) = (pix.iter().max(), off.iter().max()) {
        assert!(b + o < len, "conv: window out of bounds");
    }
}

/// Forward pass (`y` receives `n * oh * ow * f` values).
pub(crate) fn forward(g: &Geom, p: &LayerParams, n: usize, x: &[f32], y: &mut [f32], aux: &mut Aux) {
    let d = Dims::new(g);
    prepare(&d, n, Some(x), aux);
    // Weights transposed to [K][F].
    let (f, k) = (d.f, d.k);
    aux.wt.resize(k * f, 0.0);
    for o in 0..f {
        for kk in 0..k {
            aux.wt[kk * f + o] = p.weights[o * k + kk];
        }
    }
    let xp: &[f32] = if d.padded() { &aux.cols } else { x };
    check_bounds(&aux.pix, &aux.off, xp.len());
    assert_eq!(y.len(), aux.pix.len() * f);
    match filter_block(f) {
        16 => fwd_impl::<4, 16>(xp, &aux.pix, &aux.off, &aux.wt, f, &p.bias, y),
        _ => fwd_impl::<8, 8>(xp, &aux.pix, &aux.off, &aux.wt, f, &p.bias, y),
    }
}

// Audited unsafe (the crate's only): an unchecked load in the innermost loop. Every index is
// proved in bounds once, before the loop (see the SAFETY comment at the load), and
// `debug_assert!`ed at the load in debug builds.
#[allow(unsafe_code)]
#[inline(always)]
fn fwd_impl<const MR: usize, const FB: usize>(
    xp: &[f32],
    pix: &[usize],
    off: &[usize],
    wt: &[f32],
    f: usize,
    bias: &[f32],
    y: &mut [f32],
) {
    let np = pix.len();
    for fb in (0..f).step_by(FB) {
        let bias_blk: [f32; FB] = bias[fb..fb + FB].try_into().expect("bias block");
        let mut p0 = 0;
        while p0 < np {
            let (bases, cnt) = block::<MR>(pix, p0, 0);
            let mut acc = [bias_blk; MR];
            for (kk, &o) in off.iter().enumerate() {
                let w: &[f32; FB] = wt[kk * f + fb..kk * f + fb + FB].try_into().expect("weight block");
                for j in 0..MR {
                    // SAFETY: `check_bounds` verified `base + off < xp.len()` for all
                    // pixel bases and tap offsets.
                    debug_assert!(bases[j] + o < xp.len());
                    let xv = unsafe { *xp.get_unchecked(bases[j] + o) };
                    for q in 0..FB {
                        acc[j][q] = madd(xv, w[q], acc[j][q]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(cnt) {
                let r = (p0 + j) * f + fb;
                y[r..r + FB].copy_from_slice(a);
            }
            p0 += MR;
        }
    }
}

/// The register block of `B` indices starting at `start` (each plus `shift`), and how many
/// of them are real: past the end the last index repeats, so a kernel can always work on
/// `B` lanes and store only the first `cnt`.
#[inline(always)]
fn block<const B: usize>(idx: &[usize], start: usize, shift: usize) -> ([usize; B], usize) {
    let cnt = (idx.len() - start).min(B);
    let mut out = [0usize; B];
    for (j, o) in out.iter_mut().enumerate() {
        *o = idx[start + j.min(cnt - 1)] + shift;
    }
    (out, cnt)
}

/// Calls `f(unpadded, padded, len)` for every input row of the batch: its start in the
/// unpadded NHWC batch, its start in the zero-padded one, and its length.
fn interior_rows(d: &Dims, n: usize, mut f: impl FnMut(usize, usize, usize)) {
    let row = d.w * d.c;
    for i in 0..n {
        for y in 0..d.h {
            f((i * d.h + y) * row, ((i * d.hp + y + d.pt) * d.wp + d.pl) * d.c, row);
        }
    }
}

/// The bias gradient: the column sums of `dy` (`[pixels][channels]`), overwriting `bias`.
fn bias_grad(dy: &[f32], bias: &mut [f32]) {
    bias.fill(0.0);
    for row in dy.chunks_exact(bias.len()) {
        for (b, &v) in bias.iter_mut().zip(row) {
            *b += v;
        }
    }
}

/// Where a backward pass accumulates the input gradient: a zeroed padded batch in
/// `scratch` when the layer pads, else `dx` itself, zeroed.
fn dx_target<'a>(d: &Dims, n: usize, scratch: &'a mut Vec<f32>, dx: &'a mut [f32]) -> &'a mut [f32] {
    if d.padded() {
        scratch.clear();
        scratch.resize(n * d.in_len(), 0.0);
        scratch
    } else {
        dx.fill(0.0);
        dx
    }
}

/// After [`dx_target`]: copies the padded gradient's interior into `dx` (nothing to do
/// without padding).
fn unpad_dx(d: &Dims, n: usize, scratch: &[f32], dx: &mut [f32]) {
    if d.padded() {
        interior_rows(d, n, |u, p, len| dx[u..u + len].copy_from_slice(&scratch[p..p + len]));
    }
}

/// Backward pass after [`forward`] (which left the padded input and offsets in `aux`).
/// Overwrites the wanted gradients in `out`; `scratch` holds reusable buffers.
pub(crate) fn backward(st: Saved<'_>, dy: &[f32], out: GradsOut<'_>, scratch: &mut Scratch) {
    let (Saved { g, p, n, x, aux }, GradsOut { params: grads, input: dx }) = (st, out);
    let (scratch_a, scratch_b) = (&mut scratch.a, &mut scratch.b);
    let d = Dims::new(g);
    let (f, k) = (d.f, d.k);
    let np = aux.pix.len();
    assert_eq!(np, n * d.oh * d.ow, "conv backward: forward state does not match");
    assert_eq!(dy.len(), np * f);
    let xp: &[f32] = if d.padded() { &aux.cols } else { x };
    if let Some(gr) = grads {
        check_bounds(&aux.pix, &aux.off, xp.len());
        match filter_block(f) {
            16 => dw_impl::<6, 16>(xp, &aux.pix, &aux.off, dy, f, &mut gr.weights),
            _ => dw_impl::<8, 8>(xp, &aux.pix, &aux.off, dy, f, &mut gr.weights),
        }
        bias_grad(dy, &mut gr.bias);
    }
    if let Some(dx) = dx {
        const KV: usize = 16;
        const MR: usize = 4;
        let kp = k.div_ceil(KV) * KV;
        // Weights padded to [F][Kp] in scratch_b, followed by the per-block g buffer.
        scratch_b.clear();
        scratch_b.resize(f * kp + MR * kp, 0.0);
        let (wpad, gbuf) = scratch_b.split_at_mut(f * kp);
        for o in 0..f {
            wpad[o * kp..o * kp + k].copy_from_slice(&p.weights[o * k..(o + 1) * k]);
        }
        let dxp = dx_target(&d, n, scratch_a, dx);
        check_bounds(&aux.pix, &aux.off, dxp.len());
        dx_impl::<MR, KV>(dy, f, wpad, kp, &aux.pix, gbuf, &d, dxp);
        unpad_dx(&d, n, scratch_a, dx);
    }
}

// Audited unsafe (the crate's only): an unchecked load in the innermost loop. Every index is
// proved in bounds once, before the loop (see the SAFETY comment at the load), and
// `debug_assert!`ed at the load in debug builds.
#[allow(unsafe_code)]
#[inline(always)]
fn dw_impl<const KB: usize, const FB: usize>(
    xp: &[f32],
    pix: &[usize],
    off: &[usize],
    dy: &[f32],
    f: usize,
    gw: &mut [f32],
) {
    let k = off.len();
    for fb in (0..f).step_by(FB) {
        let mut k0 = 0;
        while k0 < k {
            let (offs, cnt) = block::<KB>(off, k0, 0);
            let mut acc = [[0.0f32; FB]; KB];
            for (pi, &b) in pix.iter().enumerate() {
                let dv: &[f32; FB] = dy[pi * f + fb..pi * f + fb + FB].try_into().expect("dy block");
                for t in 0..KB {
                    // SAFETY: `check_bounds` verified `base + off < xp.len()`.
                    debug_assert!(b + offs[t] < xp.len());
                    let xv = unsafe { *xp.get_unchecked(b + offs[t]) };
                    for q in 0..FB {
                        acc[t][q] = madd(xv, dv[q], acc[t][q]);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(cnt) {
                for (q, &v) in a.iter().enumerate() {
                    gw[(fb + q) * k + k0 + t] = v;
                }
            }
            k0 += KB;
        }
    }
}

// Audited unsafe (the crate's only): an unchecked load in the innermost loop. Every index is
// proved in bounds once, before the loop (see the SAFETY comment at the load), and
// `debug_assert!`ed at the load in debug builds.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dx_impl<const MR: usize, const KV: usize>(
    dy: &[f32],
    f: usize,
    wpad: &[f32],
    kp: usize,
    pix: &[usize],
    gbuf: &mut [f32],
    d: &Dims,
    dxp: &mut [f32],
) {
    let np = pix.len();
    let span = d.kw * d.c;
    let row_stride = d.wp * d.c;
    let mut p0 = 0;
    while p0 < np {
        let cnt = (np - p0).min(MR);
        let mut rows = [0usize; MR];
        for (j, r) in rows.iter_mut().enumerate() {
            *r = (p0 + j.min(cnt - 1)) * f;
        }
        for k0 in (0..kp).step_by(KV) {
            let mut acc = [[0.0f32; KV]; MR];
            for o in 0..f {
                let w: &[f32; KV] = wpad[o * kp + k0..o * kp + k0 + KV].try_into().expect("weight block");
                for j in 0..MR {
                    // SAFETY: rows[j] + o < (p0 + cnt) * f <= np * f == dy.len()
                    // (asserted by the caller).
                    debug_assert!(rows[j] + o < dy.len());
                    let dv = unsafe { *dy.get_unchecked(rows[j] + o) };
                    for v in 0..KV {
                        acc[j][v] = madd(dv, w[v], acc[j][v]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                gbuf[j * kp + k0..j * kp + k0 + KV].copy_from_slice(a);
            }
        }
        for j in 0..cnt {
            let base = pix[p0 + j];
            for ky in 0..d.kh {
                let dst = base + ky * row_stride;
                let src = j * kp + ky * span;
                for (o, &v) in dxp[dst..dst + span].iter_mut().zip(&gbuf[src..src + span]) {
                    *o += v;
                }
            }
        }
        p0 += MR;
    }
}

/// Depthwise forward (`c % 8 == 0`): 8-channel blocks, `MR` pixels at a time.
pub(crate) fn depthwise_forward(g: &Geom, p: &LayerParams, n: usize, x: &[f32], y: &mut [f32], aux: &mut Aux) {
    const MR: usize = 4;
    let d = Dims::new(g);
    prepare(&d, n, Some(x), aux);
    let xp: &[f32] = if d.padded() { &aux.cols } else { x };
    let c = d.c;
    // Every tap reads 8 channels from `base + off + cb` with `cb + 8 <= c`.
    check_bounds(&aux.pix, &aux.off, xp.len() + 1 - c);
    let (pix, off) = (&aux.pix, &aux.off);
    let np = pix.len();
    assert_eq!(y.len(), np * c);
    for cb in (0..c).step_by(8) {
        let bias: [f32; 8] = p.bias[cb..cb + 8].try_into().expect("bias block");
        let mut p0 = 0;
        while p0 < np {
            let (bases, cnt) = block::<MR>(pix, p0, cb);
            let mut acc = [bias; MR];
            for (t, &o) in off.iter().enumerate() {
                let w: &[f32; 8] = p.weights[t * c + cb..t * c + cb + 8].try_into().expect("weight block");
                for j in 0..MR {
                    let xv: &[f32; 8] = xp[bases[j] + o..bases[j] + o + 8].try_into().expect("input block");
                    for q in 0..8 {
                        acc[j][q] = madd(xv[q], w[q], acc[j][q]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(cnt) {
                let r = (p0 + j) * c + cb;
                y[r..r + 8].copy_from_slice(a);
            }
            p0 += MR;
        }
    }
}

/// Depthwise backward after [`depthwise_forward`]; overwrites the wanted gradients in `out`.
pub(crate) fn depthwise_backward(st: Saved<'_>, dy: &[f32], out: GradsOut<'_>, scratch: &mut Scratch) {
    let (Saved { g, p, n, x, aux }, GradsOut { params: grads, input: dx }) = (st, out);
    let scratch = &mut scratch.a;
    const TB: usize = 4;
    let d = Dims::new(g);
    let c = d.c;
    let (pix, off) = (&aux.pix, &aux.off);
    let np = pix.len();
    assert_eq!(np, n * d.oh * d.ow, "depthwise backward: forward state does not match");
    assert_eq!(dy.len(), np * c);
    let xp: &[f32] = if d.padded() { &aux.cols } else { x };
    if let Some(gr) = grads {
        check_bounds(pix, off, xp.len() + 1 - c);
        let taps = off.len();
        for cb in (0..c).step_by(8) {
            let mut t0 = 0;
            while t0 < taps {
                let (offs, cnt) = block::<TB>(off, t0, cb);
                let mut acc = [[0.0f32; 8]; TB];
                for (pi, &b) in pix.iter().enumerate() {
                    let dv: &[f32; 8] = dy[pi * c + cb..pi * c + cb + 8].try_into().expect("dy block");
                    for t in 0..TB {
                        let xv: &[f32; 8] = xp[b + offs[t]..b + offs[t] + 8].try_into().expect("input block");
                        for q in 0..8 {
                            acc[t][q] = madd(xv[q], dv[q], acc[t][q]);
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate().take(cnt) {
                    gr.weights[(t0 + t) * c + cb..(t0 + t) * c + cb + 8].copy_from_slice(a);
                }
                t0 += TB;
            }
        }
        bias_grad(dy, &mut gr.bias);
    }
    if let Some(dx) = dx {
        let dxp = dx_target(&d, n, scratch, dx);
        check_bounds(pix, off, dxp.len() + 1 - c);
        for (pi, &b) in pix.iter().enumerate() {
            for cb in (0..c).step_by(8) {
                let dv: [f32; 8] = dy[pi * c + cb..pi * c + cb + 8].try_into().expect("dy block");
                for (t, &o) in off.iter().enumerate() {
                    let wv: &[f32; 8] = p.weights[t * c + cb..t * c + cb + 8].try_into().expect("weight block");
                    let at = b + o + cb;
                    let dst: &mut [f32; 8] = (&mut dxp[at..at + 8]).try_into().expect("dx block");
                    let mut v = *dst;
                    for q in 0..8 {
                        v[q] = madd(dv[q], wv[q], v[q]);
                    }
                    *dst = v;
                }
            }
        }
        unpad_dx(&d, n, scratch, dx);
    }
}

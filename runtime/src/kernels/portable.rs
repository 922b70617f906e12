//! The portable kernels: plain safe Rust written for auto-vectorisation. This is the code
//! every target without a dedicated SIMD path runs (Cortex-M and RISC-V included); the
//! dispatching functions in [`super`] pick it unless a faster path applies.

use super::{ChannelParams, Output, Weights, Window, CHANNEL_BLOCK, CONV_PATCH_MAX};

/// `Σ w[i] * (x[i] - zp)` over two equally long byte slices (int8 values).
///
/// The loop is written so that LLVM turns it into widening multiply-adds; the products fit
/// in i16 (|w| <= 127, |x - zp| <= 255) and the sum fits in i32 (checked at parse time).
#[inline(always)]
fn dot(x: &[u8], w: &[u8], zp: i32) -> i32 {
    // (x - zp) is in [-255, 255] and |w| <= 127, so each product fits in i16 and pairs of
    // them in i32: the shape of SSE2 `pmaddwd` / Arm `smlad`. Sixteen lanes let LLVM keep
    // whole vectors of partial sums; the remainder is summed plainly.
    const L: usize = 16;
    let zp = zp as i16;
    let mut lanes = [0i32; L];
    let xc = x.chunks_exact(L);
    let wc = w.chunks_exact(L);
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for i in 0..L {
            let xv = (xs[i] as i8 as i16).wrapping_sub(zp);
            lanes[i] = lanes[i].wrapping_add((ws[i] as i8 as i16 as i32) * (xv as i32));
        }
    }
    let mut acc = lanes.iter().fold(0i32, |a, &b| a.wrapping_add(b));
    for (&a, &b) in xr.iter().zip(wr) {
        acc = acc.wrapping_add((b as i8 as i32) * ((a as i8 as i32) - zp as i32));
    }
    acc
}

/// `Σ p[i] * w[i]` for a gathered patch `p` of `(x - zp)` values in [-255, 255].
#[inline(always)]
fn dot_patch(p: &[i16], w: &[u8]) -> i32 {
    const L: usize = 8;
    let mut lanes = [0i32; L];
    let pc = p.chunks_exact(L);
    let wc = w.chunks_exact(L);
    let (pr, wr) = (pc.remainder(), wc.remainder());
    for (ps, ws) in pc.zip(wc) {
        // Fixed-size views: the compiler sees the lengths and emits one vector multiply-add.
        if let (Ok(ps), Ok(ws)) = (<&[i16; L]>::try_from(ps), <&[u8; L]>::try_from(ws)) {
            for i in 0..L {
                lanes[i] = lanes[i].wrapping_add((ws[i] as i8 as i32) * (ps[i] as i32));
            }
        }
    }
    let mut acc = lanes.iter().fold(0i32, |a, &b| a.wrapping_add(b));
    for (&a, &b) in pr.iter().zip(wr) {
        acc = acc.wrapping_add((b as i8 as i32) * (a as i32));
    }
    acc
}

/// Fully connected layer: `out[o] = requant(b[o] + Σ_i w[o][i] (x[i] - zp))`, weights `[out][in]`.
///
/// Not inlined into the layer loop: its inner loop then keeps its values in registers on
/// register-poor cores (Cortex-M0: about 10 % fewer instructions).
#[inline(never)]
pub fn dense<P: ChannelParams>(input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let n = input.len();
    if n == 0 {
        return;
    }
    for (o, w) in weights.chunks_exact(n).enumerate() {
        let acc = params.bias(o).wrapping_add(dot(input, w, in_zp as i32));
        out.store(o, acc, o, params);
    }
}

/// 2-D convolution with zero padding (padding taps contribute nothing), weights `[oc][kh][kw][ic]`.
pub fn conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let (ic, oc) = (win.input.c, win.output.c);
    let (kh, kw) = win.kernel;
    let per_oc = kh * kw * ic;
    let zp = in_zp as i32;
    if per_oc <= CONV_PATCH_MAX {
        // Gather each receptive field once as (x - zp), zeros for padding (the padded value
        // is the zero point), in the weights' own [kh][kw][ic] order: one dot per channel.
        let mut patch = [0i16; CONV_PATCH_MAX];
        let patch = &mut patch[..per_oc];
        let (mut bias, mut mult, mut shift) = ([0i32; CHANNEL_BLOCK], [0i32; CHANNEL_BLOCK], [0i32; CHANNEL_BLOCK]);
        for c0 in (0..oc).step_by(CHANNEL_BLOCK) {
            let cn = CHANNEL_BLOCK.min(oc - c0);
            for j in 0..cn {
                (bias[j], mult[j], shift[j]) = (params.bias(c0 + j), params.multiplier(c0 + j), params.shift(c0 + j));
            }
            let wblock = weights.get(c0 * per_oc..(c0 + cn) * per_oc).unwrap_or(&[]);
            for oy in 0..win.output.h {
                for ox in 0..win.output.w {
                    win.gather(input, zp as i16, (oy, ox), patch, per_oc);
                    let base = (oy * win.output.w + ox) * oc + c0;
                    for (j, w) in wblock.chunks_exact(per_oc).enumerate() {
                        let acc = bias[j].wrapping_add(dot_patch(patch, w));
                        out.store_with(base + j, acc, mult[j], shift[j]);
                    }
                }
            }
        }
        return;
    }
    for oy in 0..win.output.h {
        let (ky0, ky1, iy0) = win.rows(oy);
        for ox in 0..win.output.w {
            let (kx0, kx1, ix0) = win.cols(ox);
            let span = (kx1 - kx0) * ic;
            let base = (oy * win.output.w + ox) * oc;
            for o in 0..oc {
                let mut acc = params.bias(o);
                for ky in ky0..ky1 {
                    let iy = (iy0 + ky as isize) as usize;
                    let ix = (ix0 + kx0 as isize) as usize;
                    let xi = (iy * win.input.w + ix) * ic;
                    let wi = o * per_oc + (ky * kw + kx0) * ic;
                    if let (Some(x), Some(w)) = (input.get(xi..xi + span), weights.get(wi..wi + span)) {
                        acc = acc.wrapping_add(dot(x, w, zp));
                    }
                }
                out.store(base + o, acc, o, params);
            }
        }
    }
}

/// Depthwise 2-D convolution (channel multiplier 1), weights `[kh][kw][c]`, zero padding.
///
/// Channels are the inner loop (contiguous in NHWC input and in the weights), in blocks of
/// `CHANNEL_BLOCK` accumulators on the stack; the block's biases and requantization
/// parameters are read from the layer once.
pub fn depthwise_conv2d<P: ChannelParams>(win: &Window, input: &[u8], layer: &Weights<'_, P>, out: &mut Output<'_>) {
    let (weights, in_zp, params) = (layer.bytes, layer.input_zero_point, layer.params);
    let c_n = win.input.c;
    let kw = win.kernel.1;
    let zp = in_zp as i32;
    let mut chan = [[0i32; 3]; CHANNEL_BLOCK];
    let mut acc = [0i32; CHANNEL_BLOCK];
    for c0 in (0..c_n).step_by(CHANNEL_BLOCK) {
        let cn = CHANNEL_BLOCK.min(c_n - c0);
        for (j, c) in chan.iter_mut().take(cn).enumerate() {
            *c = [params.bias(c0 + j), params.multiplier(c0 + j), params.shift(c0 + j)];
        }
        let (chan, acc) = (&chan[..cn], &mut acc[..cn]);
        for oy in 0..win.output.h {
            let (ky0, ky1, iy0) = win.rows(oy);
            for ox in 0..win.output.w {
                let (kx0, kx1, ix0) = win.cols(ox);
                for (a, c) in acc.iter_mut().zip(chan) {
                    *a = c[0];
                }
                for ky in ky0..ky1 {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (ix0 + kx as isize) as usize;
                        let xi = (iy * win.input.w + ix) * c_n + c0;
                        let wi = (ky * kw + kx) * c_n + c0;
                        if let (Some(x), Some(w)) = (input.get(xi..xi + cn), weights.get(wi..wi + cn)) {
                            for ((a, &x), &w) in acc.iter_mut().zip(x).zip(w) {
                                *a = a.wrapping_add((w as i8 as i32) * (x as i8 as i32 - zp));
                            }
                        }
                    }
                }
                let base = (oy * win.output.w + ox) * c_n + c0;
                for (j, (&a, c)) in acc.iter().zip(chan).enumerate() {
                    out.store_with(base + j, a, c[1], c[2]);
                }
            }
        }
    }
}

//! Plain reference kernels in i64, written for obviousness, not speed (host only).
//!
//! Each returns the exact accumulators (before requantization) or the pooled values, so
//! tests can check both the accumulation and the requantization against [`crate::quant`].

extern crate std;
use std::vec::Vec;

use super::Window;

/// Accumulators of a Dense layer: `b[o] + Σ_i w[o][i] (x[i] - zp)` in i64.
pub fn dense_acc(input: &[i8], weights: &[i8], bias: &[i32], in_zp: i8) -> Vec<i64> {
    let n = input.len();
    (0..bias.len())
        .map(|o| {
            let mut acc = bias[o] as i64;
            for i in 0..n {
                acc += weights[o * n + i] as i64 * (input[i] as i64 - in_zp as i64);
            }
            acc
        })
        .collect()
}

/// Accumulators of a Conv2d layer (NHWC, weights `[oc][kh][kw][ic]`, zero padding).
pub fn conv2d_acc(win: &Window, input: &[i8], weights: &[i8], bias: &[i32], in_zp: i8) -> Vec<i64> {
    let ic = win.input.c;
    let (oh, ow, oc) = (win.output.h, win.output.w, win.output.c);
    let (kh, kw) = win.kernel;
    let mut out = Vec::with_capacity(oh * ow * oc);
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..oc {
                let mut acc = bias[o] as i64;
                for ky in 0..kh {
                    for kx in 0..kw {
                        // Zero padding: the real value 0 is the zero point, so padding taps add nothing.
                        let Some(src) = win.tap((oy, ox), (ky, kx)) else { continue };
                        for c in 0..ic {
                            let x = input[src + c] as i64;
                            let w = weights[((o * kh + ky) * kw + kx) * ic + c] as i64;
                            acc += w * (x - in_zp as i64);
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

/// Accumulators of a DepthwiseConv2d layer (weights `[kh][kw][c]`).
pub fn depthwise_acc(win: &Window, input: &[i8], weights: &[i8], bias: &[i32], in_zp: i8) -> Vec<i64> {
    let cn = win.input.c;
    let (kh, kw) = win.kernel;
    let mut out = Vec::new();
    for oy in 0..win.output.h {
        for ox in 0..win.output.w {
            for c in 0..cn {
                let mut acc = bias[c] as i64;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let Some(src) = win.tap((oy, ox), (ky, kx)) else { continue };
                        let x = input[src + c] as i64;
                        acc += weights[(ky * kw + kx) * cn + c] as i64 * (x - in_zp as i64);
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

/// Max pooling, no padding.
pub fn max_pool(win: &Window, input: &[i8]) -> Vec<i8> {
    pool(win, input, |v| *v.iter().max().unwrap_or(&0))
}

/// Average pooling, no padding: round half up of the exact mean, via i64 floor division.
pub fn avg_pool(win: &Window, input: &[i8]) -> Vec<i8> {
    pool(win, input, |v| {
        let n = v.len() as i64;
        let s: i64 = v.iter().map(|&x| x as i64).sum();
        // floor(s/n + 1/2) = floor((2s + n) / 2n)
        (2 * s + n).div_euclid(2 * n).clamp(-128, 127) as i8
    })
}

fn pool(win: &Window, input: &[i8], f: impl Fn(&[i8]) -> i8) -> Vec<i8> {
    let (iw, cn) = (win.input.w, win.input.c);
    let mut out = Vec::new();
    for oy in 0..win.output.h {
        for ox in 0..win.output.w {
            for c in 0..cn {
                let mut vals = Vec::new();
                for ky in 0..win.kernel.0 {
                    for kx in 0..win.kernel.1 {
                        vals.push(input[((oy * win.stride.0 + ky) * iw + ox * win.stride.1 + kx) * cn + c]);
                    }
                }
                out.push(f(&vals));
            }
        }
    }
    out
}

/// Requantization in i128, independent of [`crate::quant::rescale`]: round half up of
/// `acc * m / 2^(31 - shift)`, plus zero point, clamped.
pub fn requantize(acc: i64, m: i32, shift: i32, zp: i8, min: i8, max: i8) -> i8 {
    let den = 1i128 << (31 - shift);
    let v = (2 * acc as i128 * m as i128 + den).div_euclid(2 * den) + zp as i128;
    v.clamp(min as i128, max as i128) as i8
}

/// Logit requantization in i128, saturating to i32.
pub fn requantize_logit(acc: i64, m: i32, shift: i32) -> i32 {
    let den = 1i128 << (31 - shift);
    let v = (2 * acc as i128 * m as i128 + den).div_euclid(2 * den);
    v.clamp(i32::MIN as i128, i32::MAX as i128) as i32
}

/// Runs a whole validated model with the reference kernels and the i128 requantization:
/// an implementation independent of [`crate::Model::run`] except for the blob accessors.
pub fn run_model(model: &crate::Model<'_>, pixels: &[u8]) -> Vec<i32> {
    use crate::format::OpKind;
    let mut x: Vec<i8> = pixels.iter().map(|&p| (p as i16 - 128) as i8).collect();
    let mut logits = Vec::new();
    for l in model.layers() {
        let win = crate::window(&l);
        let w: Vec<i8> = l.weights().collect();
        let oc = l.output_shape().c;
        let bias: Vec<i32> = (0..oc).map(|c| l.bias(c)).collect();
        let zp = l.input_zero_point();
        let acc = match l.op() {
            OpKind::Flatten => continue,
            OpKind::MaxPool2d => {
                x = max_pool(&win, &x);
                continue;
            }
            OpKind::AvgPool2d => {
                x = avg_pool(&win, &x);
                continue;
            }
            OpKind::Dense => dense_acc(&x, &w, &bias, zp),
            OpKind::Conv2d => conv2d_acc(&win, &x, &w, &bias, zp),
            OpKind::DepthwiseConv2d => depthwise_acc(&win, &x, &w, &bias, zp),
        };
        if l.outputs_logits() {
            logits = acc
                .iter()
                .enumerate()
                .map(|(i, &a)| requantize_logit(a, l.multiplier(i % oc), l.shift(i % oc)))
                .collect();
        } else {
            let (lo, hi) = l.clamp();
            let ozp = l.output_zero_point();
            x = acc
                .iter()
                .enumerate()
                .map(|(i, &a)| requantize(a, l.multiplier(i % oc), l.shift(i % oc), ozp, lo, hi))
                .collect();
        }
    }
    logits
}

//! Post-training quantization to the runtime's int8 contract, and the trainer's own integer
//! simulation of the result.
//!
//! [`quantize`] walks the float network, fuses each Conv2d / DepthwiseConv2d / Dense with a
//! following ReLU or ReLU6 into one int8 layer, calibrates activation ranges on real images,
//! and produces an [`iocane_runtime::emit::ModelRepr`]: per-channel symmetric int8 weights
//! (`s_w[c] = max|w_c| / 127`, floored for channels with (nearly) no weights so the
//! multiplier and bias stay representable), int32 biases at `s_in * s_w[c]`, per-tensor asymmetric
//! activations, and requantization multipliers from the runtime's own
//! [`quant::quantize_multiplier`]. The final Dense emits int32 logits at one common scale.
//!
//! [`IntSim`] is an independent, batched implementation of the integer forward pass (im2col
//! and i32 matrix products) that calls the runtime's [`quant`] functions for every rounding
//! step; the tests hold it bit-exact against `iocane_runtime::Model::run`.

use iocane_runtime::emit::{LayerRepr, ModelRepr};
use iocane_runtime::{quant, OpKind, Shape};
use thiserror::Error;

use crate::data::Dataset;
use crate::nn::{LayerSpec, Network};
use crate::train::batch;

/// Errors of quantization.
#[derive(Debug, Error, PartialEq)]
pub enum QuantError {
    /// A layer sequence the int8 format cannot express.
    #[error("layer {index} ({layer}): {msg}")]
    Unsupported {
        /// Layer index in the float network.
        index: usize,
        /// The layer.
        layer: String,
        /// Why.
        msg: String,
    },
    /// No calibration images.
    #[error("calibration needs at least one image")]
    NoCalibration,
    /// The calibration images do not fit the network (another image shape).
    #[error("calibration images: {0}")]
    Calibration(#[from] crate::nn::NnError),
    /// A scale or multiplier is out of the representable range.
    #[error("layer {index}: requantization multiplier {value} is not representable")]
    Multiplier {
        /// Layer index in the float network.
        index: usize,
        /// The real multiplier.
        value: f64,
    },
}

/// A fused unit of the float network.
#[derive(Clone, Debug)]
enum Unit {
    /// Weighted layer `index` with an optional activation (0 none, 1 relu, 2 relu6); the
    /// activation output is float layer `out_index`.
    Weighted { index: usize, act: u8, out_index: usize },
    /// Pooling or flatten, float layer `index`.
    Passive { index: usize },
}

fn units(net: &Network) -> Result<Vec<Unit>, QuantError> {
    let layers = net.layers();
    let mut out = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let l = layers[i];
        match l {
            LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } => {
                let act = match layers.get(i + 1) {
                    Some(LayerSpec::Relu) => 1,
                    Some(LayerSpec::Relu6) => 2,
                    _ => 0,
                };
                let out_index = if act > 0 { i + 1 } else { i };
                out.push(Unit::Weighted { index: i, act, out_index });
                i = out_index + 1;
            }
            LayerSpec::MaxPool2d { .. } | LayerSpec::AvgPool2d { .. } | LayerSpec::Flatten => {
                out.push(Unit::Passive { index: i });
                i += 1;
            }
            LayerSpec::Relu | LayerSpec::Relu6 => {
                return Err(QuantError::Unsupported {
                    index: i,
                    layer: l.to_string(),
                    msg: "an activation must directly follow a Conv2d, DepthwiseConv2d or Dense to be fused".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Indices of output channel `c`'s weights: a row for Dense / Conv2d (`[out][...]`), a
/// stride-`oc` column for DepthwiseConv2d (`[kh][kw][c]`).
fn channel_indices(depthwise: bool, len: usize, oc: usize, c: usize) -> Vec<usize> {
    if depthwise {
        (c..len).step_by(oc).collect()
    } else {
        let per = len / oc.max(1);
        (c * per..(c + 1) * per).collect()
    }
}

fn shape3(s: [usize; 3]) -> Shape {
    Shape::new(s[0], s[1], s[2])
}

/// Quantizes `net` with activation ranges calibrated on the first `n` images of `calib`
/// (`n = 0`: all). `labels` and `metadata` are stored in the blob.
pub fn quantize(
    net: &Network,
    calib: &Dataset,
    n: usize,
    labels: Vec<String>,
    metadata: Vec<(String, String)>,
) -> Result<ModelRepr, QuantError> {
    let n = if n == 0 { calib.len() } else { n.min(calib.len()) };
    if n == 0 {
        return Err(QuantError::NoCalibration);
    }
    let units = units(net)?;
    let nl = net.layers().len();
    // Per float layer: min and max over the calibration set.
    let mut lo = vec![f32::INFINITY; nl];
    let mut hi = vec![f32::NEG_INFINITY; nl];
    for start in (0..n).step_by(256) {
        let idx: Vec<usize> = (start..(start + 256).min(n)).collect();
        let (x, _) = batch(calib, &idx);
        for (i, t) in net.try_activations(&x)?.iter().enumerate() {
            for &v in &t.data {
                lo[i] = lo[i].min(v);
                hi[i] = hi[i].max(v);
            }
        }
    }

    let mut layers_out = Vec::new();
    let mut s_in: f64 = 1.0 / 255.0;
    let mut zp_in: i8 = quant::INPUT_ZERO_POINT;
    let last_unit = units.len() - 1;
    for (u_i, u) in units.iter().enumerate() {
        match *u {
            Unit::Passive { index } => {
                let spec = net.layers()[index];
                let input = shape3(net.layer_input_shape(index));
                let l = match spec {
                    LayerSpec::Flatten => LayerRepr::flatten(input, zp_in),
                    LayerSpec::MaxPool2d { kernel, stride } => {
                        LayerRepr::pool(OpKind::MaxPool2d, input, (kernel[0], kernel[1]), (stride[0], stride[1]), zp_in)
                    }
                    LayerSpec::AvgPool2d { kernel, stride } => {
                        LayerRepr::pool(OpKind::AvgPool2d, input, (kernel[0], kernel[1]), (stride[0], stride[1]), zp_in)
                    }
                    _ => unreachable!("passive units are pools and flatten"),
                };
                layers_out.push(l);
            }
            Unit::Weighted { index, act, out_index } => {
                let spec = net.layers()[index];
                let p = net.layer_params(index);
                let input = shape3(net.layer_input_shape(index));
                let output = shape3(net.layer_output_shape(index));
                let oc = output.c;
                let is_last = u_i == last_unit;
                if is_last && (!matches!(spec, LayerSpec::Dense { .. }) || act != 0) {
                    return Err(QuantError::Unsupported {
                        index,
                        layer: spec.to_string(),
                        msg: "the network must end with a Dense layer producing the logits".into(),
                    });
                }
                let (op, kernel, stride, padding) = match spec {
                    LayerSpec::Dense { .. } => (OpKind::Dense, (1, 1), (1, 1), (0, 0, 0, 0)),
                    LayerSpec::Conv2d { kernel, stride, padding, .. } => (
                        OpKind::Conv2d,
                        (kernel[0], kernel[1]),
                        (stride[0], stride[1]),
                        (padding[0], padding[1], padding[2], padding[3]),
                    ),
                    LayerSpec::DepthwiseConv2d { kernel, stride, padding } => (
                        OpKind::DepthwiseConv2d,
                        (kernel[0], kernel[1]),
                        (stride[0], stride[1]),
                        (padding[0], padding[1], padding[2], padding[3]),
                    ),
                    _ => unreachable!(),
                };
                // Output quantization.
                let (s_out, zp_out, clamp) = if is_last {
                    let m = lo[index].abs().max(hi[index].abs()).max(1e-6) as f64;
                    (m / 32767.0, 0i8, (0i8, 0i8))
                } else {
                    let mut a = lo[out_index].min(0.0) as f64;
                    let mut b = hi[out_index].max(0.0) as f64;
                    if act == 2 {
                        b = b.min(6.0);
                    }
                    if act > 0 {
                        a = 0.0;
                    }
                    if b - a < 1e-6 {
                        b = a + 1e-6;
                    }
                    let s = (b - a) / 255.0;
                    let zp = quant::round_half_away(-128.0 - a / s).clamp(-128.0, 127.0) as i8;
                    let clamp = match act {
                        0 => (-128, 127),
                        1 => (zp, 127),
                        _ => (zp, (zp as f64 + quant::round_half_away(6.0 / s)).min(127.0) as i8),
                    };
                    (s, zp, clamp)
                };
                // Channel c's weights: rows for Dense/Conv, a stride-oc column for depthwise.
                let w = &p.weights;
                let chan = |c: usize| channel_indices(op == OpKind::DepthwiseConv2d, w.len(), oc, c);
                let mut s_w = vec![0f32; oc];
                let mut wq = vec![0i8; w.len()];
                for (c, sw) in s_w.iter_mut().enumerate() {
                    let idx = chan(c);
                    let m = idx.iter().map(|&i| w[i].abs()).fold(0f32, f32::max);
                    *sw = (m / 127.0).max(channel_scale_floor(s_in, s_out, p.bias[c]));
                    for &i in &idx {
                        wq[i] = quant::quantize_weight(w[i], *sw);
                    }
                }
                let mut bias = Vec::with_capacity(oc);
                let mut multiplier = Vec::with_capacity(oc);
                let mut shift = Vec::with_capacity(oc);
                for (c, &swc) in s_w.iter().enumerate() {
                    let sb = s_in * swc as f64;
                    let abs_w: i64 = chan(c).iter().map(|&i| (wq[i] as i64).abs()).sum();
                    let limit = (i32::MAX as i64 - 255 * abs_w).max(0) as f64;
                    let b = quant::round_half_away(p.bias[c] as f64 / sb).clamp(-limit, limit);
                    bias.push(b as i32);
                    let real = sb / s_out;
                    let (m, s) =
                        quant::quantize_multiplier(real).ok_or(QuantError::Multiplier { index, value: real })?;
                    multiplier.push(m);
                    shift.push(s);
                }
                layers_out.push(LayerRepr {
                    op,
                    input,
                    output,
                    kernel,
                    stride,
                    padding,
                    in_zero_point: zp_in,
                    out_zero_point: zp_out,
                    clamp,
                    logits: is_last,
                    weights: wq,
                    bias,
                    multiplier,
                    shift,
                    weight_scale: s_w,
                    out_scale: s_out as f32,
                });
                s_in = s_out;
                zp_in = zp_out;
            }
        }
    }
    let [h, w, c] = net.input_shape();
    Ok(ModelRepr { input: Shape::new(h, w, c), classes: net.classes(), labels, metadata, layers: layers_out })
}

/// The trainer's integer simulation of a quantized model: a batched implementation (im2col
/// rows and i32 dot products) independent of the runtime's kernels, sharing only the
/// rounding functions of [`iocane_runtime::quant`].
pub struct IntSim<'a> {
    repr: &'a ModelRepr,
}

impl<'a> IntSim<'a> {
    /// Wraps a quantized model.
    pub fn new(repr: &'a ModelRepr) -> Self {
        IntSim { repr }
    }

    /// Logits of every image in `images` (NHWC bytes, back to back).
    pub fn logits_batch(&self, images: &[u8]) -> Vec<Vec<i32>> {
        let il = self.repr.input.len();
        images.chunks_exact(il).map(|img| self.logits(img)).collect()
    }

    /// Logits of one image.
    pub fn logits(&self, pixels: &[u8]) -> Vec<i32> {
        let mut x: Vec<i32> = pixels.iter().map(|&p| quant::pixel_to_input(p) as i32).collect();
        let mut logits = Vec::new();
        for l in &self.repr.layers {
            let (ih, iw, ic) = (l.input.h, l.input.w, l.input.c);
            let (oh, ow, oc) = (l.output.h, l.output.w, l.output.c);
            match l.op {
                OpKind::Flatten => continue,
                OpKind::MaxPool2d | OpKind::AvgPool2d => {
                    let mut y = Vec::with_capacity(l.output.len());
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for c in 0..ic {
                                let vals = (0..l.kernel.0).flat_map(|ky| {
                                    let x = &x;
                                    (0..l.kernel.1)
                                        .map(move |kx| x[((oy * l.stride.0 + ky) * iw + ox * l.stride.1 + kx) * ic + c])
                                });
                                y.push(if l.op == OpKind::MaxPool2d {
                                    vals.max().unwrap_or(0)
                                } else {
                                    quant::average(vals.sum(), (l.kernel.0 * l.kernel.1) as i32) as i32
                                });
                            }
                        }
                    }
                    x = y;
                    continue;
                }
                _ => {}
            }
            let zp = l.in_zero_point as i32;
            let xz: Vec<i32> = x.iter().map(|&v| v - zp).collect();
            // Receptive-field rows (im2col), zero (= the zero point) where padded.
            let (kh, kw) = l.kernel;
            let mut acc = vec![0i32; l.output.len()];
            match l.op {
                OpKind::Dense => {
                    for (o, a) in acc.iter_mut().enumerate() {
                        let row = &l.weights[o * ic..(o + 1) * ic];
                        *a = l.bias[o] + row.iter().zip(&xz).map(|(&w, &v)| w as i32 * v).sum::<i32>();
                    }
                }
                OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    let depthwise = l.op == OpKind::DepthwiseConv2d;
                    let cols = kh * kw * ic;
                    let mut patch = vec![0i32; cols];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * l.stride.0 + ky) as isize - l.padding.0 as isize;
                                    let ix = (ox * l.stride.1 + kx) as isize - l.padding.1 as isize;
                                    let inside = iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw;
                                    for c in 0..ic {
                                        patch[(ky * kw + kx) * ic + c] =
                                            if inside { xz[((iy as usize) * iw + ix as usize) * ic + c] } else { 0 };
                                    }
                                }
                            }
                            let base = (oy * ow + ox) * oc;
                            for o in 0..oc {
                                let s: i32 = if depthwise {
                                    (0..kh * kw).map(|t| l.weights[t * oc + o] as i32 * patch[t * ic + o]).sum()
                                } else {
                                    l.weights[o * cols..(o + 1) * cols]
                                        .iter()
                                        .zip(&patch)
                                        .map(|(&w, &v)| w as i32 * v)
                                        .sum()
                                };
                                acc[base + o] = l.bias[o] + s;
                            }
                        }
                    }
                }
                _ => unreachable!(),
            }
            if l.logits {
                logits = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| quant::requantize_logit(a, l.multiplier[i % oc], l.shift[i % oc]))
                    .collect();
            } else {
                x = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let c = i % oc;
                        quant::requantize(a, l.multiplier[c], l.shift[c], l.out_zero_point, l.clamp.0, l.clamp.1) as i32
                    })
                    .collect();
            }
        }
        logits
    }
}

/// Smallest per-channel weight scale the exporter uses: the scale is `max|w_c| / 127`
/// unless that is below `max(s_out, |b_c|) / (2^28 s_in)`. Channels (nearly) without
/// weights — IBP training drives unneeded filters to ~0 — would otherwise get a
/// requantization multiplier `s_in s_w / s_out` below the runtime's range (`2^-32`) or an
/// int32 bias `b_c / (s_in s_w)` that saturates; at the floor the multiplier is at least
/// `2^-28` and the bias at most `2^28` in magnitude. Weights below half the floor quantize to
/// 0, which moves the channel's output by at most `K (1 + |b_c| / s_out) 2^-21` output steps
/// (`K` = fan-in). Ordinary channels are orders of magnitude above the floor and unaffected.
fn channel_scale_floor(s_in: f64, s_out: f64, bias: f32) -> f32 {
    const TWO_28: f64 = (1u64 << 28) as f64;
    (s_out.max(bias.abs() as f64) / (TWO_28 * s_in)) as f32
}

/// Weight fake-quantization for quantization-aware training: a copy of `net` whose weights
/// are replaced by their int8 per-channel values times the channel scale (exactly what
/// [`quantize`] will store). Training computes gradients on this copy and applies them to
/// the float weights: the straight-through estimator.
pub fn fake_quant_weights(net: &Network) -> Network {
    let mut q = net.clone();
    let specs: Vec<LayerSpec> = net.layers().to_vec();
    for (i, spec) in specs.iter().enumerate() {
        let depthwise = matches!(spec, LayerSpec::DepthwiseConv2d { .. });
        if !spec.has_params() {
            continue;
        }
        let oc = net.layer_output_shape(i)[2];
        let w = &mut q.params_mut().layers[i].weights;
        for c in 0..oc {
            let idx = channel_indices(depthwise, w.len(), oc, c);
            let m = idx.iter().map(|&j| w[j].abs()).fold(0f32, f32::max);
            let s = if m > 0.0 { m / 127.0 } else { 1e-8 };
            for j in idx {
                w[j] = quant::quantize_weight(w[j], s) as f32 * s;
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ArchSpec;

    #[test]
    fn calibration_with_another_image_shape_is_an_error() {
        // issue 10 item 4: `export --dataset` with another image shape panicked.
        let net = Network::new(ArchSpec::from_compact("flatten,dense3", [4, 4, 1], 3).unwrap(), 1).unwrap();
        let calib = Dataset {
            name: "other".into(),
            height: 3,
            width: 3,
            channels: 1,
            classes: 3,
            labels_text: vec!["a".into(), "b".into(), "c".into()],
            images: vec![0; 18],
            labels: vec![0, 1],
        };
        let e = quantize(&net, &calib, 0, Vec::new(), Vec::new()).unwrap_err();
        assert!(matches!(e, QuantError::Calibration(_)), "{e}");
    }
}

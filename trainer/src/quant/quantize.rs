//! Post-training quantization to the runtime's int8 contract, and QAT's view of it.
//!
//! [`quantize`] walks the float network, fuses each Conv2d / DepthwiseConv2d / Dense with a
//! following ReLU or ReLU6 into one int8 layer, calibrates activation ranges on real images,
//! and produces an [`iocane_runtime::emit::ModelRepr`]: per-channel symmetric int8 weights
//! (`s_w[c] = max|w_c| / 127`, floored for channels with (nearly) no weights so the
//! multiplier and bias stay representable: [`quant::weight_scale`]), int32 biases at `s_in * s_w[c]`, per-tensor asymmetric
//! activations, and requantization multipliers from the runtime's own
//! [`quant::quantize_multiplier`]. The final Dense emits int32 logits at one common scale.
//!
//! [`fake_quant_weights`] is the same weight rule for quantization-aware training. The tests
//! hold the runtime's kernels bit-exact against its plain reference runner
//! (`iocane_runtime::kernels::reference::run_model`) on the models this module produces.

use iocane_runtime::emit::{LayerRepr, ModelRepr};
use iocane_runtime::{quant, OpKind, Shape};
use thiserror::Error;

use crate::data::Dataset;
use crate::nn::{FakeQuant, LayerSpec, Network};
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

fn shape3(s: [usize; 3]) -> Shape {
    Shape::new(s[0], s[1], s[2])
}

/// Activation ranges of a float network: per float layer, the smallest and largest value of
/// its output over calibration images. [`quantize_with`] and [`fake_quant_weights`] derive
/// every activation scale, and through it every weight scale, from these ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl Calibration {
    /// The ranges over the first `n` images of `data` (`n = 0`: all), in batches of 256.
    pub fn new(net: &Network, data: &Dataset, n: usize) -> Result<Calibration, QuantError> {
        let n = if n == 0 { data.len() } else { n.min(data.len()) };
        if n == 0 {
            return Err(QuantError::NoCalibration);
        }
        let nl = net.layers().len();
        let mut cal = Calibration { lo: vec![f32::INFINITY; nl], hi: vec![f32::NEG_INFINITY; nl] };
        for start in (0..n).step_by(256) {
            let idx: Vec<usize> = (start..(start + 256).min(n)).collect();
            let (x, _) = batch(data, &idx);
            for (i, t) in net.try_activations(&x)?.iter().enumerate() {
                for &v in &t.data {
                    cal.lo[i] = cal.lo[i].min(v);
                    cal.hi[i] = cal.hi[i].max(v);
                }
            }
        }
        Ok(cal)
    }

    /// Output quantization `(s_out, zero point, clamp)` of weighted layer `index` whose
    /// (fused) activation output is float layer `out_index`; `act` is 0 none, 1 ReLU, 2 ReLU6.
    /// The last layer emits int32 logits at `max|z| / 32767`.
    fn output(&self, index: usize, out_index: usize, act: u8, is_last: bool) -> (f64, i8, (i8, i8)) {
        let (lo, hi) = (&self.lo, &self.hi);
        if is_last {
            let m = lo[index].abs().max(hi[index].abs()).max(1e-6) as f64;
            return (m / 32767.0, 0i8, (0i8, 0i8));
        }
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
    }
}

/// Per float layer, the weight scale of each output channel (`None` for layers without
/// weights), from the runtime's one rule [`quant::weight_scale`] with the activation scales of
/// `cal`. The exporter ([`quantize_with`]) stores exactly these; quantization-aware training
/// ([`fake_quant_weights`]) trains against exactly these.
pub fn weight_scales(net: &Network, cal: &Calibration) -> Result<Vec<Option<Vec<f32>>>, QuantError> {
    let units = units(net)?;
    let mut out = vec![None; net.layers().len()];
    let mut s_in: f64 = 1.0 / 255.0;
    let last_unit = units.len() - 1;
    for (u_i, u) in units.iter().enumerate() {
        if let Unit::Weighted { index, act, out_index } = *u {
            let (s_out, _, _) = cal.output(index, out_index, act, u_i == last_unit);
            let p = net.layer_params(index);
            let oc = net.layer_output_shape(index)[2];
            let depthwise = matches!(net.layers()[index], LayerSpec::DepthwiseConv2d { .. });
            let scales = (0..oc)
                .map(|c| {
                    let m = quant::channel_taps(depthwise, p.weights.len(), oc, c)
                        .map(|i| p.weights[i].abs())
                        .fold(0f32, f32::max);
                    quant::weight_scale(m, s_in, s_out, p.bias[c])
                })
                .collect();
            out[index] = Some(scales);
            s_in = s_out;
        }
    }
    Ok(out)
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
    quantize_with(net, &Calibration::new(net, calib, n)?, labels, metadata)
}

/// Quantizes `net` with the activation ranges `cal` (see [`quantize`]).
pub fn quantize_with(
    net: &Network,
    cal: &Calibration,
    labels: Vec<String>,
    metadata: Vec<(String, String)>,
) -> Result<ModelRepr, QuantError> {
    let units = units(net)?;
    let scales = weight_scales(net, cal)?;
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
                let (s_out, zp_out, clamp) = cal.output(index, out_index, act, is_last);
                // Channel c's weights: a row for Dense/Conv, a stride-oc column for depthwise.
                let w = &p.weights;
                let chan = |c: usize| quant::channel_taps(op == OpKind::DepthwiseConv2d, w.len(), oc, c);
                let s_w = scales[index].clone().expect("weighted layers have weight scales");
                let mut wq = vec![0i8; w.len()];
                for (c, &sw) in s_w.iter().enumerate() {
                    for i in chan(c) {
                        wq[i] = quant::quantize_weight(w[i], sw);
                    }
                }
                let mut bias = Vec::with_capacity(oc);
                let mut multiplier = Vec::with_capacity(oc);
                let mut shift = Vec::with_capacity(oc);
                for (c, &swc) in s_w.iter().enumerate() {
                    let sb = s_in * swc as f64;
                    let abs_w: u64 = chan(c).map(|i| wq[i].unsigned_abs() as u64).sum();
                    let limit = quant::bias_limit(abs_w) as f64;
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

/// Weight fake-quantization for quantization-aware training: a copy of `net` whose weights
/// are replaced by their int8 per-channel values times the channel scale, with the scales
/// [`quantize_with`] stores for the same activation ranges `cal` ([`weight_scales`], floor of
/// near-dead channels included). Training computes gradients on this copy and applies them to
/// the float weights: the straight-through estimator.
pub fn fake_quant_weights(net: &Network, cal: &Calibration) -> Result<Network, QuantError> {
    let scales = weight_scales(net, cal)?;
    let mut q = net.clone();
    for (i, s_w) in scales.iter().enumerate() {
        let Some(s_w) = s_w else { continue };
        let depthwise = matches!(net.layers()[i], LayerSpec::DepthwiseConv2d { .. });
        let w = &mut q.params_mut().layers[i].weights;
        for (c, &s) in s_w.iter().enumerate() {
            for j in quant::channel_taps(depthwise, w.len(), s_w.len(), c) {
                w[j] = quant::quantize_weight(w[j], s) as f32 * s;
            }
        }
    }
    Ok(q)
}

/// Full fake-quantization for quantization-aware training: [`fake_quant_weights`], biases
/// rounded to their int32 grid `s_in · s_w[c]` (clamped to the accumulator-safe limit, as
/// [`quantize_with`] stores them), and an output [`FakeQuant`] at every point the runtime
/// stores an int8 activation: after each fused Conv / Depthwise / Dense (+ ReLU / ReLU6) unit
/// but the logits, with the scale, zero point and clamp [`quantize_with`] exports for the
/// ranges `cal`, and after average pooling (which rounds its mean on its input's grid). Max
/// pooling and flatten move int8 values unchanged and need none. The input pixels are already
/// on their grid (`byte / 255`).
pub fn fake_quant(net: &Network, cal: &Calibration) -> Result<Network, QuantError> {
    let units = units(net)?;
    let scales = weight_scales(net, cal)?;
    let mut q = fake_quant_weights(net, cal)?;
    let mut act: Vec<Option<FakeQuant>> = vec![None; net.layers().len()];
    let mut s_in: f64 = 1.0 / 255.0;
    let mut zp_in: i8 = quant::INPUT_ZERO_POINT;
    let last_unit = units.len() - 1;
    for (u_i, u) in units.iter().enumerate() {
        match *u {
            Unit::Passive { index } => {
                if matches!(net.layers()[index], LayerSpec::AvgPool2d { .. }) {
                    act[index] =
                        FakeQuant::new(s_in as f32, zp_in as i32, -128, 127).map(FakeQuant::rounding_exact_halves);
                }
            }
            Unit::Weighted { index, act: a, out_index } => {
                let is_last = u_i == last_unit;
                let (s_out, zp_out, clamp) = cal.output(index, out_index, a, is_last);
                let s_w = scales[index].as_ref().expect("weighted layers have weight scales");
                let oc = s_w.len();
                let depthwise = matches!(net.layers()[index], LayerSpec::DepthwiseConv2d { .. });
                let p = &mut q.params_mut().layers[index];
                for (c, &swc) in s_w.iter().enumerate() {
                    let sb = s_in * swc as f64;
                    let abs_w: u64 = quant::channel_taps(depthwise, p.weights.len(), oc, c)
                        .map(|i| quant::quantize_weight(p.weights[i], swc).unsigned_abs() as u64)
                        .sum();
                    let limit = quant::bias_limit(abs_w) as f64;
                    p.bias[c] = (quant::round_half_away(p.bias[c] as f64 / sb).clamp(-limit, limit) * sb) as f32;
                }
                if !is_last {
                    act[out_index] = FakeQuant::new(s_out as f32, zp_out as i32, clamp.0 as i32, clamp.1 as i32);
                    if act[out_index].is_none() {
                        return Err(QuantError::Multiplier { index, value: s_out });
                    }
                }
                s_in = s_out;
                zp_in = zp_out;
            }
        }
    }
    Ok(q.with_activation_quant(act)?)
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

//! The dequantized float twin of an int8 model: a source of straight-through gradients.
//!
//! The twin computes in real units what the int8 model computes in integers, with rounding
//! treated as the identity: weights `w * s_w[c]`, biases `bias * s_in * s_w[c]`, and each
//! weighted layer's clamp range `[act_min, act_max]` mapped to the real interval
//! `((act_min - zp) s_out, (act_max - zp) s_out)` (fused ReLU / ReLU6 plus int8 saturation).
//! The input is `x = p / 255`. Gradients pass through a clamp only strictly inside its range,
//! through max pooling to the first maximal tap, and evenly through average pooling.
//!
//! The layers are the trainer's own ([`iocane_trainer::nn::layers`], the kernels training
//! uses): the twin is the model's dequantized weights fed to them, plus the clamps and the
//! loss, which are the twin's own.
//!
//! The twin is never trusted for a verdict: attacks use it to choose directions and then
//! judge every candidate on the int8 model itself.

use iocane_runtime::format::{Layer, OpKind};
use iocane_runtime::{quant, Model};
use iocane_trainer::nn::ibp;
use iocane_trainer::nn::layers::{self, LayerParams};
use iocane_trainer::nn::{LayerSpec, Tensor};

/// Relative disagreement tolerated between a layer's requantization multiplier and the one
/// its provenance scales imply (`s_in * s_w / s_out`).
pub const SCALE_TOLERANCE: f64 = 1e-3;

/// Why the float twin of a model could not be built from its provenance scales.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TwinError {
    /// A provenance scale is missing (zero), negative or not finite.
    #[error(
        "layer {layer}: {} scale {value} is not finite and positive; the model's provenance scales are \
         missing, so its dequantized float twin cannot be built and it cannot be attacked by gradient \
         from its scales (FloatTwin::from_requantization derives a twin from the multipliers instead)",
        match channel { Some(c) => format!("weight (channel {c})"), None => "output".to_string() }
    )]
    BadScale {
        /// Layer index.
        layer: usize,
        /// Output channel for a weight scale, `None` for the layer's output scale.
        channel: Option<usize>,
        /// The offending value.
        value: f32,
    },
    /// The provenance scales disagree with the requantization multiplier the model runs with.
    #[error(
        "layer {layer} channel {channel}: the provenance scales imply a requantization multiplier of \
         {implied:e} but the model uses {actual:e}; a twin built from these scales would not describe the \
         int8 model (FloatTwin::from_requantization derives a twin from the multipliers instead)"
    )]
    InconsistentScale {
        /// Layer index.
        layer: usize,
        /// Output channel.
        channel: usize,
        /// `s_in * s_w[c] / s_out` from the provenance scales.
        implied: f64,
        /// `multiplier * 2^(shift - 31)` of the model.
        actual: f64,
    },
}

/// The loss whose input gradient the twin computes (attacks ascend it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax cross-entropy of the true label: `logsumexp(z) - z_y`.
    CrossEntropy,
    /// Carlini-Wagner margin: `max_{j != y} z_j - z_y` (positive iff misclassified).
    #[default]
    Margin,
    /// Difference of logits ratio (Croce & Hein 2020), untargeted:
    /// `-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`, with `z_pi1 >= z_pi2 >= ...` the
    /// sorted logits (invariant to shifting and scaling the logits). With fewer than three
    /// classes the missing sorted logits are the smallest one.
    Dlr,
    /// Targeted difference of logits ratio (APGD-T):
    /// `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)` for target class `t`. With fewer
    /// than four classes the missing sorted logits are the smallest one.
    DlrTargeted {
        /// The target class `t`.
        target: usize,
    },
    /// Targeted logit gap `z_t - z_y` (positive iff `t` beats the label): the function whose
    /// linearisation FAB-T projects onto.
    LogitGap {
        /// The target class `t`.
        target: usize,
    },
}

/// Classes by descending logit (ties to the lowest index first).
fn sorted_desc(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx
}

/// The class with the largest logit other than `label` (lowest index among ties).
fn best_other(logits: &[f32], label: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (j, &z) in logits.iter().enumerate() {
        if j != label && best.is_none_or(|b| z > logits[b]) {
            best = Some(j);
        }
    }
    best
}

/// The DLR numerator's two classes `(y, other)`, its denominator's classes with their
/// weights, for the untargeted (`target = None`) or targeted loss.
fn dlr_terms(logits: &[f32], label: usize, target: Option<usize>) -> (usize, usize, [(usize, f32); 3]) {
    let s = sorted_desc(logits);
    let at = |i: usize| s[i.min(s.len() - 1)];
    match target {
        None => {
            let other = best_other(logits, label).unwrap_or(label);
            (other, label, [(at(0), 1.0), (at(2), -1.0), (at(2), 0.0)])
        }
        Some(t) => (t, label, [(at(0), 1.0), (at(2), -0.5), (at(3), -0.5)]),
    }
}

/// Value and d/dz of `(z_a - z_y) / (Σ w_i z_i + 1e-12)`, the DLR losses' common form.
fn dlr(logits: &[f32], (a, y, den): (usize, usize, [(usize, f32); 3])) -> (f32, Vec<f32>) {
    let n = logits[a] - logits[y];
    let d = den.iter().map(|&(i, w)| w * logits[i]).sum::<f32>() + 1e-12;
    let mut g = vec![0.0; logits.len()];
    g[a] += 1.0 / d;
    g[y] -= 1.0 / d;
    for &(i, w) in &den {
        g[i] -= n * w / (d * d);
    }
    (n / d, g)
}

impl Loss {
    /// The loss value for `logits` and true class `label`.
    ///
    /// # Panics
    /// If `label` (or a DLR target) is out of range.
    pub fn value(self, logits: &[f32], label: usize) -> f32 {
        let zy = logits[label];
        match self {
            Loss::CrossEntropy => {
                let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let s: f32 = logits.iter().map(|&z| (z - m).exp()).sum();
                m + s.ln() - zy
            }
            Loss::Margin => {
                let other = logits
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != label)
                    .fold(f32::NEG_INFINITY, |a, (_, &b)| a.max(b));
                other - zy
            }
            Loss::Dlr => dlr(logits, dlr_terms(logits, label, None)).0,
            Loss::DlrTargeted { target } => dlr(logits, dlr_terms(logits, label, Some(target))).0,
            Loss::LogitGap { target } => logits[target] - zy,
        }
    }

    /// The loss value in `f64`. For the cross-entropy it is `ln(1 + Σ_{j != y} e^{z_j - z_y})`,
    /// which stays positive where the `f32` value of a saturated softmax rounds to 0 (the
    /// other losses are the `f32` value).
    ///
    /// # Panics
    /// If `label` (or a DLR target) is out of range.
    pub fn value_f64(self, logits: &[f32], label: usize) -> f64 {
        match self {
            Loss::CrossEntropy => {
                let zy = logits[label] as f64;
                let others: Vec<f64> =
                    logits.iter().enumerate().filter(|&(j, _)| j != label).map(|(_, &z)| z as f64 - zy).collect();
                let m = others.iter().fold(0f64, |a, &b| a.max(b));
                // ln(1 + Σ e^{d}) = m + ln(e^{-m} + Σ e^{d - m}), exact for large and small m.
                if m > 0.0 {
                    m + ((-m).exp() + others.iter().map(|&d| (d - m).exp()).sum::<f64>()).ln()
                } else {
                    others.iter().map(|&d| d.exp()).sum::<f64>().ln_1p()
                }
            }
            _ => self.value(logits, label) as f64,
        }
    }

    /// d loss / d logits up to a positive factor, formed in `f64` and scaled to a largest
    /// entry of 1: the cross-entropy's `p_j` for `j != y` and `-Σ_{j != y} p_j` for `y` keep
    /// their signs where `p_y` rounds to 1 in `f32`.
    fn direction(self, logits: &[f32], label: usize) -> Vec<f32> {
        let g: Vec<f64> = match self {
            Loss::CrossEntropy => {
                let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let e: Vec<f64> = logits.iter().map(|&z| (z as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                let rest: f64 = e.iter().enumerate().filter(|&(j, _)| j != label).map(|(_, &v)| v).sum();
                e.iter().enumerate().map(|(j, &v)| if j == label { -rest / s } else { v / s }).collect()
            }
            _ => self.gradient(logits, label).iter().map(|&v| v as f64).collect(),
        };
        let top = g.iter().fold(0f64, |a, &b| a.max(b.abs()));
        if top > 0.0 && top.is_finite() {
            g.iter().map(|&v| (v / top) as f32).collect()
        } else {
            g.iter().map(|&v| v as f32).collect()
        }
    }

    /// d loss / d logits.
    fn gradient(self, logits: &[f32], label: usize) -> Vec<f32> {
        match self {
            Loss::CrossEntropy => {
                let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f32> = logits.iter().map(|&z| (z - m).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().enumerate().map(|(j, &v)| v / s - if j == label { 1.0 } else { 0.0 }).collect()
            }
            Loss::Margin => {
                let mut g = vec![0.0; logits.len()];
                if let Some(b) = best_other(logits, label) {
                    g[b] = 1.0;
                    g[label] = -1.0;
                }
                g
            }
            Loss::Dlr => dlr(logits, dlr_terms(logits, label, None)).1,
            Loss::DlrTargeted { target } => dlr(logits, dlr_terms(logits, label, Some(target))).1,
            Loss::LogitGap { target } => {
                let mut g = vec![0.0; logits.len()];
                g[target] += 1.0;
                g[label] -= 1.0;
                g
            }
        }
    }
}

/// One layer of the twin: the trainer's layer ([`LayerSpec`] and dequantized
/// [`LayerParams`]) on a fixed input shape, and the clamp of a hidden weighted layer.
#[derive(Clone, Debug)]
struct TwinLayer {
    spec: LayerSpec,
    params: LayerParams,
    /// Input shape `[h, w, c]`.
    input: [usize; 3],
    /// Real clamp range of a hidden weighted layer; `None` for pools, flatten and logits.
    clamp: Option<(f32, f32)>,
}

impl TwinLayer {
    /// The trainer's spec of an int8 layer (same layouts, same geometry).
    fn spec_of(layer: &Layer<'_>) -> LayerSpec {
        let (kh, kw) = layer.kernel();
        let (sh, sw) = layer.stride();
        let (pt, pl, pb, pr) = layer.padding();
        let (kernel, stride, padding) = ([kh, kw], [sh, sw], [pt, pl, pb, pr]);
        match layer.op() {
            OpKind::Dense => LayerSpec::Dense { units: layer.output_shape().c },
            OpKind::Conv2d => LayerSpec::Conv2d { filters: layer.output_shape().c, kernel, stride, padding },
            OpKind::DepthwiseConv2d => LayerSpec::DepthwiseConv2d { kernel, stride, padding },
            OpKind::MaxPool2d => LayerSpec::MaxPool2d { kernel, stride },
            OpKind::AvgPool2d => LayerSpec::AvgPool2d { kernel, stride },
            OpKind::Flatten => LayerSpec::Flatten,
        }
    }

    fn tensor(&self, x: &[f32]) -> Tensor {
        self.tensor_from(x.to_vec())
    }

    /// `x` as this layer's input tensor, without a copy.
    fn tensor_from(&self, x: Vec<f32>) -> Tensor {
        let [h, w, c] = self.input;
        Tensor { shape: [1, h, w, c], data: x }
    }

    /// The layer's output before its clamp.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.forward_tensor(&self.tensor(x))
    }

    /// [`TwinLayer::forward`] of an input already shaped as this layer's tensor.
    fn forward_tensor(&self, x: &Tensor) -> Vec<f32> {
        layers::forward_sample(&self.spec, &self.params, x).expect("the twin's layers match the validated model").data
    }

    /// d loss / d input given the layer input `x` and d loss / d (pre-clamp) output `gy`.
    fn backward(&self, x: &Tensor, gy: Vec<f32>) -> Vec<f32> {
        let out = self.spec.output_shape(self.input).expect("the twin's layers match the validated model");
        let dy = Tensor { shape: [1, out[0], out[1], out[2]], data: gy };
        layers::input_gradient(&self.spec, &self.params, x, &dy)
            .expect("the twin's layers match the validated model")
            .data
    }
}

/// The dequantized float twin of an int8 model (see the module documentation).
#[derive(Clone, Debug)]
pub struct FloatTwin {
    layers: Vec<TwinLayer>,
    input_len: usize,
    classes: usize,
    logit_scale: f32,
}

/// Per weighted layer: the weight scale of each output channel and the output scale.
struct Scales {
    weight: Vec<f32>,
    output: f32,
}

impl FloatTwin {
    /// Builds the twin from the model's provenance scales (`weight_scale_bits`,
    /// `output_scale_bits`), the input scale being 1/255.
    ///
    /// Fails with [`TwinError::BadScale`] if a scale is not finite and positive (the model's
    /// provenance is missing: it cannot be attacked by gradient from its scales), and with
    /// [`TwinError::InconsistentScale`] if `s_in * s_w[c] / s_out` differs from a channel's
    /// requantization multiplier by more than [`SCALE_TOLERANCE`] (relative), in which case
    /// the twin would not describe the int8 model.
    pub fn from_model(model: &Model<'_>) -> Result<FloatTwin, TwinError> {
        let good = |v: f32| v.is_finite() && v > 0.0;
        let mut scales = Vec::new();
        let mut s_in = quant_input_scale();
        for (li, layer) in model.layers().enumerate() {
            if !layer.op().has_weights() {
                scales.push(None);
                continue;
            }
            let oc = layer.output_shape().c;
            let output = f32::from_bits(layer.output_scale_bits());
            if !good(output) {
                return Err(TwinError::BadScale { layer: li, channel: None, value: output });
            }
            let mut weight = Vec::with_capacity(oc);
            for c in 0..oc {
                let s_w = f32::from_bits(layer.weight_scale_bits(c));
                if !good(s_w) {
                    return Err(TwinError::BadScale { layer: li, channel: Some(c), value: s_w });
                }
                let implied = s_in as f64 * s_w as f64 / output as f64;
                let actual = quant::multiplier_to_real(layer.multiplier(c), layer.shift(c));
                if !((actual / implied) - 1.0).abs().le(&SCALE_TOLERANCE) {
                    return Err(TwinError::InconsistentScale { layer: li, channel: c, implied, actual });
                }
                weight.push(s_w);
            }
            scales.push(Some(Scales { weight, output }));
            s_in = output;
        }
        Ok(Self::build(model, &scales))
    }

    /// Builds the twin from the requantization multipliers alone: the int8 model with its
    /// rounding removed, whatever its provenance says. Each layer's output scale is its
    /// provenance scale when that is finite and positive, else 1 (only the logit scale
    /// changes the function, and only by a factor); the weight scales are then
    /// `s_w[c] = M[c] * s_out / s_in`. Never fails on a validated model.
    pub fn from_requantization(model: &Model<'_>) -> FloatTwin {
        let mut scales = Vec::new();
        let mut s_in = quant_input_scale() as f64;
        for layer in model.layers() {
            if !layer.op().has_weights() {
                scales.push(None);
                continue;
            }
            let prov = f32::from_bits(layer.output_scale_bits());
            let output = if prov.is_finite() && prov > 0.0 { prov } else { 1.0 };
            let weight = (0..layer.output_shape().c)
                .map(|c| (quant::multiplier_to_real(layer.multiplier(c), layer.shift(c)) * output as f64 / s_in) as f32)
                .collect();
            scales.push(Some(Scales { weight, output }));
            s_in = output as f64;
        }
        Self::build(model, &scales)
    }

    /// Builds the twin given consistent scales for every weighted layer.
    fn build(model: &Model<'_>, scales: &[Option<Scales>]) -> FloatTwin {
        let mut layers = Vec::new();
        let mut s_in = quant_input_scale();
        let mut logit_scale = 1.0;
        for (layer, sc) in model.layers().zip(scales) {
            let spec = TwinLayer::spec_of(&layer);
            let i = layer.input_shape();
            let input = [i.h, i.w, i.c];
            let Some(sc) = sc else {
                layers.push(TwinLayer { spec, params: LayerParams::default(), input, clamp: None });
                continue;
            };
            let oc = layer.output_shape().c;
            let depthwise = layer.op() == OpKind::DepthwiseConv2d;
            let q: Vec<i8> = layer.weights().collect();
            let mut weights = vec![0f32; q.len()];
            for (c, &s_w) in sc.weight.iter().enumerate() {
                for t in quant::channel_taps(depthwise, q.len(), oc, c) {
                    weights[t] = q[t] as f32 * s_w;
                }
            }
            let bias = (0..oc).map(|c| (layer.bias(c) as f64 * s_in as f64 * sc.weight[c] as f64) as f32).collect();
            let clamp = if layer.outputs_logits() {
                logit_scale = sc.output;
                None
            } else {
                let (amin, amax) = layer.clamp();
                let zp = layer.output_zero_point() as f32;
                Some(((amin as f32 - zp) * sc.output, (amax as f32 - zp) * sc.output))
            };
            layers.push(TwinLayer { spec, params: LayerParams { weights, bias }, input, clamp });
            s_in = sc.output;
        }
        FloatTwin { layers, input_len: model.input_len(), classes: model.num_classes(), logit_scale }
    }

    /// Number of inputs (pixels) the twin takes.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Number of classes (logits).
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Real value of one unit of the int8 model's int32 logits: twin logits are comparable
    /// to `logit_int * logit_scale()`.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The twin's input for raw pixels: `x = p / 255`.
    pub fn input_from_pixels(pixels: &[u8]) -> Vec<f32> {
        pixels.iter().map(|&p| p as f32 / 255.0).collect()
    }

    /// Logits (real units) for input `x` (`x = p / 255`, NHWC).
    ///
    /// # Panics
    /// If `x` does not have [`FloatTwin::input_len`] values.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.input_len, "twin input length");
        let mut cur = x.to_vec();
        for l in &self.layers {
            let mut y = l.forward(&cur);
            if let Some((lo, hi)) = l.clamp {
                y.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
            }
            cur = y;
        }
        cur
    }

    /// Logits and the gradient of `loss` (for true class `label`) with respect to `x`,
    /// straight-through: rounding is the identity, clamps pass gradient only strictly inside
    /// their range.
    ///
    /// # Panics
    /// If `x` does not have [`FloatTwin::input_len`] values or `label` is out of range.
    pub fn input_gradient(&self, x: &[f32], label: usize, loss: Loss) -> (Vec<f32>, Vec<f32>) {
        self.backprop(x, label, |z| loss.gradient(z, label))
    }

    /// Logits and a positive multiple of the gradient of `loss` with respect to `x` (the
    /// same direction and signs as [`FloatTwin::input_gradient`]), computed so that a
    /// saturated softmax does not round it to zero: the logit gradient is formed in `f64`
    /// ([`Loss::direction`]) and scaled to a largest entry of 1 before the backward pass.
    /// Sign-gradient attacks use it.
    ///
    /// # Panics
    /// If `x` does not have [`FloatTwin::input_len`] values or `label` is out of range.
    pub fn input_direction(&self, x: &[f32], label: usize, loss: Loss) -> (Vec<f32>, Vec<f32>) {
        self.backprop(x, label, |z| loss.direction(z, label))
    }

    /// The forward pass with a tape, then the backward pass from the logit gradient `dz`.
    fn backprop(&self, x: &[f32], label: usize, dz: impl Fn(&[f32]) -> Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(x.len(), self.input_len, "twin input length");
        assert!(label < self.classes, "label {label} out of range");
        // Tape: the input tensor of every layer, and the pre-clamp output of each clamped
        // layer (an unclamped layer's output is the next layer's input: no copy).
        let mut inputs: Vec<Tensor> = Vec::with_capacity(self.layers.len());
        let mut pre: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        let mut cur = x.to_vec();
        for l in &self.layers {
            let t = l.tensor_from(cur);
            let y = l.forward_tensor(&t);
            inputs.push(t);
            cur = match l.clamp {
                Some((lo, hi)) => {
                    let c = y.iter().map(|v| v.clamp(lo, hi)).collect();
                    pre.push(y);
                    c
                }
                None => {
                    pre.push(Vec::new());
                    y
                }
            };
        }
        let logits = cur;
        let mut g = dz(&logits);
        for (i, l) in self.layers.iter().enumerate().rev() {
            if let Some((lo, hi)) = l.clamp {
                for (gi, &v) in g.iter_mut().zip(&pre[i]) {
                    if !(v > lo && v < hi) {
                        *gi = 0.0;
                    }
                }
            }
            g = l.backward(&inputs[i], g);
        }
        (logits, g)
    }
}

impl FloatTwin {
    /// Interval bounds (IBP) on the twin, in `f32`, for the pixel box `lo <= p <= hi`:
    /// lower bounds of `z[label] - z[j]` per class (`0` at `label`), the last Dense layer
    /// elided. The trainer's interval rules and kernels ([`iocane_trainer::nn::ibp`]): affine
    /// layers run the layer on the centre and `|W|` on the radius, max pooling and the clamps
    /// on the ends. What a float verifier would say about the float model; not sound for the
    /// int8 model (rounding is ignored) and not rounded outward (float error is ignored).
    ///
    /// # Panics
    /// If `lo` or `hi` does not have [`FloatTwin::input_len`] values or `label` is out of
    /// range.
    pub fn margin_lower_bounds(&self, lo: &[u8], hi: &[u8], label: usize) -> Vec<f32> {
        assert!(lo.len() == self.input_len && hi.len() == self.input_len, "twin input length");
        assert!(label < self.classes, "label {label} out of range");
        let (l0, h0) = (Self::input_from_pixels(lo), Self::input_from_pixels(hi));
        let mut c: Vec<f32> = l0.iter().zip(&h0).map(|(&l, &h)| 0.5 * (l + h)).collect();
        let mut r: Vec<f32> = l0.iter().zip(&h0).map(|(&l, &h)| 0.5 * (h - l)).collect();
        let (last, hidden) = self.layers.split_last().expect("a validated model has layers");
        for l in hidden {
            match l.spec {
                LayerSpec::Flatten => {}
                LayerSpec::MaxPool2d { .. } | LayerSpec::Relu | LayerSpec::Relu6 => {
                    let lo: Vec<f32> = c.iter().zip(&r).map(|(c, r)| c - r).collect();
                    let hi: Vec<f32> = c.iter().zip(&r).map(|(c, r)| c + r).collect();
                    (c, r) = center_radius(&l.forward(&lo), &l.forward(&hi));
                }
                LayerSpec::Dense { .. }
                | LayerSpec::Conv2d { .. }
                | LayerSpec::DepthwiseConv2d { .. }
                | LayerSpec::AvgPool2d { .. } => {
                    let abs = TwinLayer { params: ibp::abs_layer(&l.params), ..l.clone() };
                    (c, r) = (l.forward(&c), abs.forward(&r));
                }
            }
            if let Some((a, b)) = l.clamp {
                let lo: Vec<f32> = c.iter().zip(&r).map(|(c, r)| (c - r).clamp(a, b)).collect();
                let hi: Vec<f32> = c.iter().zip(&r).map(|(c, r)| (c + r).clamp(a, b)).collect();
                (c, r) = center_radius(&lo, &hi);
            }
        }
        let mut m = vec![0.0; self.classes];
        ibp::elided_margins(&last.params, self.classes, 1, &[label], &c, &r, &mut m);
        m
    }
}

/// Centre and radius of the box `lo <= x <= hi`.
fn center_radius(lo: &[f32], hi: &[f32]) -> (Vec<f32>, Vec<f32>) {
    lo.iter().zip(hi).map(|(&l, &h)| (0.5 * (h + l), 0.5 * (h - l))).unzip()
}

fn quant_input_scale() -> f32 {
    1.0 / 255.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use iocane_runtime::emit::ModelRepr;
    use iocane_runtime::rng::SplitMix64;
    use iocane_runtime::testing::{random_cnn_s, random_model, SynthLayer};
    use iocane_runtime::Shape;

    /// A random model whose provenance scales are made consistent with its multipliers:
    /// s_w[c] = M[c] * s_out / s_in, then the multipliers are re-derived from the scales.
    pub(crate) fn consistent(mut repr: ModelRepr) -> ModelRepr {
        let mut s_in = 1.0f64 / 255.0;
        for l in repr.layers.iter_mut().filter(|l| l.op.has_weights()) {
            let s_out = 0.05f32;
            l.out_scale = s_out;
            for c in 0..l.output.c {
                let m = quant::multiplier_to_real(l.multiplier[c], l.shift[c]);
                let s_w = (m * s_out as f64 / s_in) as f32;
                l.weight_scale[c] = s_w;
                let (mm, sh) = quant::quantize_multiplier(s_in * s_w as f64 / s_out as f64).unwrap();
                l.multiplier[c] = mm;
                l.shift[c] = sh;
            }
            s_in = s_out as f64;
        }
        repr
    }

    fn stacks() -> Vec<(Shape, Vec<SynthLayer>)> {
        vec![
            (
                Shape::new(6, 6, 2),
                vec![
                    SynthLayer::Conv { filters: 4, k: 3, s: 1, p: 1, relu: true },
                    SynthLayer::Depthwise { k: 3, s: 2, p: 1, relu: true },
                    SynthLayer::MaxPool { k: 2, s: 1 },
                    SynthLayer::Dense { units: 8, relu: true },
                ],
            ),
            (
                Shape::new(5, 5, 3),
                vec![
                    SynthLayer::AvgPool { k: 2, s: 1 },
                    SynthLayer::Conv { filters: 5, k: 2, s: 2, p: 0, relu: false },
                ],
            ),
            (Shape::new(4, 4, 1), vec![SynthLayer::Flatten, SynthLayer::Dense { units: 12, relu: true }]),
        ]
    }

    #[test]
    fn provenance_twin_matches_the_int8_logits() {
        let mut rng = SplitMix64(3);
        let mut cases: Vec<ModelRepr> =
            stacks().into_iter().enumerate().map(|(i, (s, l))| random_model(s, 5, &l, 40 + i as u64)).collect();
        cases.push(random_cnn_s(8));
        for repr in cases {
            let blob = consistent(repr).emit();
            let model = Model::parse(&blob).unwrap();
            let twin = FloatTwin::from_model(&model).unwrap();
            let req = FloatTwin::from_requantization(&model);
            let mut arena = vec![0u8; model.arena_size()];
            let mut z = vec![0i32; model.num_classes()];
            let (mut worst, mut range) = (0.0f32, 0.0f32);
            for _ in 0..20 {
                let px: Vec<u8> = (0..model.input_len()).map(|_| rng.range(0, 255) as u8).collect();
                model.run(&px, &mut arena, &mut z).unwrap();
                let x = FloatTwin::input_from_pixels(&px);
                let t = twin.forward(&x);
                let r = req.forward(&x);
                for c in 0..z.len() {
                    let zi = z[c] as f32 * twin.logit_scale();
                    worst = worst.max((t[c] - zi).abs());
                    range = range.max(zi.abs());
                    assert!((t[c] - r[c]).abs() <= 1e-3 * (1.0 + r[c].abs()), "{} vs {}", t[c], r[c]);
                }
            }
            // Rounding errors of half a step per layer, amplified by the later layers: a few
            // percent of the logit range at most.
            assert!(worst <= 0.05 * range + 4.0 * twin.logit_scale(), "worst {worst} of range {range}");
        }
    }

    /// The twin's interval margins hold at the corners, at random points and at the clean
    /// image of small balls (f32, so within a relative tolerance), are tight at radius 0 and
    /// shrink as the ball grows.
    #[test]
    fn twin_interval_margins_hold_in_the_ball() {
        let mut rng = SplitMix64(11);
        let mut cases: Vec<ModelRepr> =
            stacks().into_iter().enumerate().map(|(i, (s, l))| random_model(s, 4, &l, 70 + i as u64)).collect();
        cases.push(random_cnn_s(9));
        for repr in cases {
            let blob = consistent(repr).emit();
            let model = Model::parse(&blob).unwrap();
            let twin = FloatTwin::from_model(&model).unwrap();
            let n = model.input_len();
            for _ in 0..6 {
                let px: Vec<u8> = (0..n).map(|_| rng.range(0, 255) as u8).collect();
                let z0 = twin.forward(&FloatTwin::input_from_pixels(&px));
                let label = (0..z0.len()).max_by(|&a, &b| z0[a].total_cmp(&z0[b])).unwrap();
                let m0 = twin.margin_lower_bounds(&px, &px, label);
                for j in 0..z0.len() {
                    let d = z0[label] - z0[j];
                    assert!((m0[j] - d).abs() <= 1e-3 * (1.0 + d.abs()), "radius 0: {} vs {d}", m0[j]);
                }
                let mut prev = m0;
                for k in [2u8, 8, 24] {
                    let (lo, hi) = crate::ibp::linf_ball(&px, k);
                    let m = twin.margin_lower_bounds(&lo, &hi, label);
                    for t in 0..24 {
                        let x: Vec<u8> = (0..n)
                            .map(|i| match (t, rng.next_u64() % 3) {
                                (0, _) | (_, 0) => lo[i],
                                (1, _) | (_, 1) => hi[i],
                                _ => rng.range(lo[i] as i64, hi[i] as i64) as u8,
                            })
                            .collect();
                        let z = twin.forward(&FloatTwin::input_from_pixels(&x));
                        for j in 0..z.len() {
                            let d = z[label] - z[j];
                            assert!(m[j] <= d + 1e-3 * (1.0 + d.abs()), "k {k}: bound {} above {d}", m[j]);
                        }
                    }
                    for j in 0..m.len() {
                        assert!(m[j] <= prev[j] + 1e-3 * (1.0 + prev[j].abs()), "k {k}: the bound grew");
                    }
                    prev = m;
                }
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (mut rng, mut gap_rng) = (SplitMix64(9), SplitMix64(19));
        for (i, (shape, layers)) in stacks().into_iter().enumerate() {
            let blob = consistent(random_model(shape, 4, &layers, 70 + i as u64)).emit();
            let model = Model::parse(&blob).unwrap();
            let twin = FloatTwin::from_model(&model).unwrap();
            for loss in [
                Loss::CrossEntropy,
                Loss::Margin,
                Loss::Dlr,
                Loss::DlrTargeted { target: 3 },
                Loss::LogitGap { target: 3 },
            ] {
                // FAB-T's logit gap draws its cases from a stream of its own, so the other
                // losses keep theirs.
                let rng = if matches!(loss, Loss::LogitGap { .. }) { &mut gap_rng } else { &mut rng };
                for _ in 0..3 {
                    let px: Vec<u8> = (0..model.input_len()).map(|_| rng.range(0, 255) as u8).collect();
                    let x = FloatTwin::input_from_pixels(&px);
                    let label = rng.range(0, 3) as usize;
                    let (logits, g) = twin.input_gradient(&x, label, loss);
                    assert_eq!(logits, twin.forward(&x));
                    let gmax = g.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
                    let h = 1e-3f32;
                    let mut bad = 0;
                    for j in 0..x.len() {
                        let (mut xp, mut xm) = (x.clone(), x.clone());
                        xp[j] += h;
                        xm[j] -= h;
                        let fd =
                            (loss.value(&twin.forward(&xp), label) - loss.value(&twin.forward(&xm), label)) / (2.0 * h);
                        if (fd - g[j]).abs() > 2e-2 * gmax.max(1e-3) {
                            bad += 1;
                        }
                    }
                    // Piecewise linear: only coordinates whose step crosses a kink may differ.
                    assert!(bad * 20 <= x.len(), "{bad} of {} coordinates disagree ({loss:?})", x.len());
                }
            }
        }
    }

    /// Issue 12: the DLR losses are AutoAttack's formulas, invariant to shifting and scaling
    /// the logits, and positive exactly when the sample is misclassified (resp. the target wins).
    #[test]
    fn dlr_losses_follow_the_reference_formulas() {
        let z = [3.0f32, 1.0, 2.0, -1.0, 0.5];
        // Sorted: 3 (0), 2 (2), 1 (1), 0.5 (4), -1 (3).
        assert!((Loss::Dlr.value(&z, 0) - (-(3.0 - 2.0) / (3.0 - 1.0))).abs() < 1e-6);
        assert!((Loss::Dlr.value(&z, 2) - (-(2.0 - 3.0) / (3.0 - 1.0))).abs() < 1e-6);
        let t = Loss::DlrTargeted { target: 1 };
        assert!((t.value(&z, 0) - (-(3.0 - 1.0) / (3.0 - 0.5 * (1.0 + 0.5)))).abs() < 1e-6);
        for loss in [Loss::Dlr, t] {
            let moved: Vec<f32> = z.iter().map(|v| 4.0 * v - 7.0).collect();
            assert!((loss.value(&z, 0) - loss.value(&moved, 0)).abs() < 1e-5, "{loss:?}");
        }
        assert!(Loss::Dlr.value(&z, 0) < 0.0 && Loss::Dlr.value(&z, 1) > 0.0);
    }

    /// Issue 12: where a saturated softmax rounds the `f32` cross-entropy and its gradient to
    /// zero, the `f64` value stays positive and increasing, and the direction keeps its signs;
    /// elsewhere the direction is a positive multiple of the gradient.
    #[test]
    fn cross_entropy_direction_survives_saturation() {
        let ce = Loss::CrossEntropy;
        let sat = [120.0f32, 0.0, 3.0];
        assert_eq!(ce.value(&sat, 0), 0.0);
        assert!(ce.gradient(&sat, 0).iter().all(|&g| g == 0.0));
        let v = ce.value_f64(&sat, 0);
        assert!(v > 0.0 && v < 1e-40, "{v}");
        assert!(ce.value_f64(&[119.0, 0.0, 3.0], 0) > v);
        let d = ce.direction(&sat, 0);
        assert!(d[0] < 0.0 && d[1] > 0.0 && d[2] > 0.0 && d[2] > d[1], "{d:?}");
        let z = [1.0f32, 0.5, -2.0, 0.3];
        for loss in [ce, Loss::Margin, Loss::Dlr, Loss::DlrTargeted { target: 2 }] {
            let (g, d) = (loss.gradient(&z, 1), loss.direction(&z, 1));
            let top = g.iter().fold(0f32, |a, &b| a.max(b.abs()));
            for (a, b) in g.iter().zip(&d) {
                assert!((a / top - b).abs() < 1e-5, "{loss:?}: {g:?} vs {d:?}");
            }
            assert!((loss.value_f64(&z, 1) - loss.value(&z, 1) as f64).abs() < 1e-5);
        }
    }

    #[test]
    fn missing_or_inconsistent_scales_are_reported() {
        // random_model's provenance scales (0.01, 0.05) do not match its multipliers.
        let repr = random_model(Shape::new(4, 4, 1), 3, &[SynthLayer::Dense { units: 4, relu: true }], 1);
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap();
        assert!(matches!(FloatTwin::from_model(&model), Err(TwinError::InconsistentScale { .. })));
        let mut bad = consistent(repr);
        bad.layers[1].weight_scale[2] = f32::NAN;
        let blob = bad.emit();
        let model = Model::parse(&blob).unwrap();
        let err = FloatTwin::from_model(&model).unwrap_err();
        assert!(matches!(err, TwinError::BadScale { layer: 1, channel: Some(2), .. }), "{err:?}");
        assert!(err.to_string().contains("cannot be attacked by gradient"));
        // The requantization twin needs no provenance.
        let t = FloatTwin::from_requantization(&model);
        assert_eq!(t.forward(&[0.5; 16]).len(), 3);
    }
}

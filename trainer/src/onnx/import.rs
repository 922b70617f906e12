//! Import of a float classifier from ONNX: the graph walk, the chain mapper, and the op
//! table (`ops`, one small function per op). See the [module docs](super).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension;

use super::build::{f32_tensor, i64_tensor};
use super::proto::{dtype_name, is_default_domain, node_label, op_label, tensor_f32, tensor_i64, ConstF32, Consts};
use super::verify::verify;
use super::{OnnxError, UnsupportedNodes, SUPPORTED_OPS};
use crate::nn::{ArchSpec, LayerParams, LayerSpec, Network, Params, MAX_ACTIVATION};

pub(super) mod ops;
mod prepass;

pub use prepass::MAX_EXTERNAL_BYTES;

/// Memory layout of an ONNX model's image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputLayout {
    /// `[N, C, H, W]` (PyTorch; what [`export_onnx`](super::export_onnx) writes).
    Nchw,
    /// `[N, H, W, C]` (Keras / TensorFlow).
    Nhwc,
    /// `[N, H, W]`: one channel.
    Hw,
    /// `[N, D]`: the image flattened row-major (`D = h * w * c`, NHWC order).
    Flat,
}

impl InputLayout {
    /// The input tensor shape for a batch of `n` images of shape `[h, w, c]`.
    pub fn shape(self, n: usize, [h, w, c]: [usize; 3]) -> Vec<usize> {
        match self {
            InputLayout::Nchw => vec![n, c, h, w],
            InputLayout::Nhwc => vec![n, h, w, c],
            InputLayout::Hw => vec![n, h, w],
            InputLayout::Flat => vec![n, h * w * c],
        }
    }

    /// Converts one NHWC image (`[h, w, c]`, as in [`Tensor`](crate::nn::Tensor)) into this layout.
    pub fn convert(self, image: &[f32], [h, w, c]: [usize; 3]) -> Vec<f32> {
        match self {
            InputLayout::Nchw => {
                let mut out = vec![0.0; image.len()];
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            out[(ch * h + y) * w + x] = image[(y * w + x) * c + ch];
                        }
                    }
                }
                out
            }
            InputLayout::Nhwc | InputLayout::Hw | InputLayout::Flat => image.to_vec(),
        }
    }
}

/// What a dropped final node did to the logits: the imported [`Network`] always outputs
/// logits, the ONNX file outputs `apply(logits)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutputTransform {
    /// The file outputs the logits.
    #[default]
    Logits,
    /// The file ends with a `Softmax` (probabilities).
    Softmax,
    /// The file ends with a `LogSoftmax`.
    LogSoftmax,
}

impl OutputTransform {
    /// Applies the transform to one sample's logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        if self == OutputTransform::Logits || logits.is_empty() {
            return logits.to_vec();
        }
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&z| ((z - m) as f64).exp()).sum();
        match self {
            OutputTransform::Softmax => logits.iter().map(|&z| (((z - m) as f64).exp() / sum) as f32).collect(),
            _ => {
                let lse = sum.ln();
                logits.iter().map(|&z| ((z - m) as f64 - lse) as f32).collect()
            }
        }
    }
}

/// A per-channel affine map of an image, `x[.., c] -> scale[c] * x[.., c] + shift[c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelAffine {
    /// Multiplier per channel.
    pub scale: Vec<f32>,
    /// Offset per channel (added after the multiplication).
    pub shift: Vec<f32>,
}

impl ChannelAffine {
    /// The identity on `c` channels.
    pub fn identity(c: usize) -> ChannelAffine {
        ChannelAffine { scale: vec![1.0; c], shift: vec![0.0; c] }
    }

    /// `self` followed by `x -> scale * x + shift` (per channel, same length).
    fn then(&self, scale: &[f32], shift: &[f32]) -> ChannelAffine {
        let z = self.scale.iter().zip(&self.shift).zip(scale.iter().zip(shift));
        let (scale, shift) = z.map(|((a, b), (s, t))| (s * a, s * b + t)).unzip();
        ChannelAffine { scale, shift }
    }

    /// Whether it is the identity.
    pub fn is_identity(&self) -> bool {
        self.scale.iter().all(|&s| s == 1.0) && self.shift.iter().all(|&t| t == 0.0)
    }

    /// Applies the map to NHWC data with `scale.len()` channels (the channel is the index
    /// modulo the channel count).
    pub fn apply(&self, data: &[f32]) -> Vec<f32> {
        let c = self.scale.len().max(1);
        data.iter().enumerate().map(|(i, &x)| self.scale[i % c] * x + self.shift[i % c]).collect()
    }
}

impl std::fmt::Display for ChannelAffine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f32]| v.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join(", ");
        write!(f, "x -> x * [{}] + [{}] per channel", list(&self.scale), list(&self.shift))
    }
}

/// Normalisation a model was trained with outside its graph (e.g. torchvision's
/// `Normalize(mean, std)` after `ToTensor()`): the file's input is
/// `(x * scale - mean[c]) / std[c]` where `x` is iocane's input, pixel bytes / 255 in `[0, 1]`.
/// [`import_onnx_with`] folds it into the first layer, so the network takes `x` itself.
#[derive(Clone, Debug, PartialEq)]
pub struct InputNorm {
    /// Multiplier applied first (255 for a model that takes pixel values 0..255).
    pub scale: f32,
    /// Mean per channel (one value for all channels, or one per channel).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (one value, or one per channel; non-zero).
    pub std: Vec<f32>,
}

impl InputNorm {
    /// The map `x -> (x * scale - mean) / std` on `c` channels, or why it is not one.
    pub fn affine(&self, c: usize) -> Result<ChannelAffine, String> {
        let per = |v: &[f32], what: &str| -> Result<Vec<f32>, String> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.to_vec()),
                n => Err(format!("{n} {what} values for an input of {c} channels (give 1 or {c})")),
            }
        };
        let mean = per(&self.mean, "mean")?;
        let std = per(&self.std, "std")?;
        let a = ChannelAffine {
            scale: std.iter().map(|s| self.scale / s).collect(),
            shift: mean.iter().zip(&std).map(|(m, s)| -m / s).collect(),
        };
        if a.scale.iter().chain(&a.shift).any(|v| !v.is_finite()) || a.scale.contains(&0.0) {
            return Err(format!(
                "scale {}, mean {:?}, std {:?} is not an invertible finite map",
                self.scale, self.mean, self.std
            ));
        }
        Ok(a)
    }
}

/// Options of [`import_onnx_with`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportOptions {
    /// Image shape `[h, w, c]` for inputs whose shape is not fully known: flat `[N, D]`
    /// inputs (must satisfy `h * w * c == D`) and symbolic spatial dimensions.
    pub input_shape: Option<[usize; 3]>,
    /// Forces the layout of a 4-D input (`Nchw` or `Nhwc`) instead of detecting it.
    pub input_layout: Option<InputLayout>,
    /// Normalisation applied outside the graph during training, folded into the first layer.
    pub input_norm: Option<InputNorm>,
    /// Directory holding the file's external data (`model.onnx.data`); set by
    /// [`import_onnx_file`] to the model's directory.
    pub external_data_dir: Option<PathBuf>,
    /// Skips the tract-onnx cross-check (faster; the mapping is then unchecked).
    pub skip_verify: bool,
}

/// Result of [`import_onnx_with`]: the network and what was learned about the file.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The float network (NHWC, logits output), usable like a trained one.
    pub network: Network,
    /// Layout of the file's input.
    pub input_layout: InputLayout,
    /// Final transform the file applies to the logits.
    pub output: OutputTransform,
    /// The model's default-domain opset version (0 if not declared).
    pub opset: i64,
    /// `producer_name producer_version` of the file.
    pub producer: String,
    /// Human-readable notes: folded BatchNormalization / bias Add nodes, dropped nodes.
    pub notes: Vec<String>,
    /// Largest absolute difference to tract-onnx over the probe images (`None` if the check
    /// was skipped).
    pub max_abs_diff: Option<f32>,
    /// The input normalisation folded into the network (from [`ImportOptions::input_norm`]
    /// and in-graph `Sub` / `Div` / `Mul` / `Add` by constants on the input), as a map of
    /// iocane's input; `None` if there was none: the network then takes the file's input
    /// values as they are.
    pub input_affine: Option<ChannelAffine>,
    /// The in-graph nodes (`Sub` / `Div` / `Mul` / `Add` by constants on the input) that are
    /// part of [`Imported::input_affine`], as `op `name``.
    pub input_norm_nodes: Vec<String>,
}

/// Imports a float ONNX classifier as a [`Network`] (with default [`ImportOptions`], i.e.
/// with the tract-onnx cross-check). See the [module docs](super) for what is supported.
pub fn import_onnx(bytes: &[u8]) -> Result<Network, OnnxError> {
    import_onnx_with(bytes, &ImportOptions::default()).map(|i| i.network)
}

/// A node with its display label and attribute accessors.
pub(super) struct Node<'a> {
    pb: &'a pb::NodeProto,
    label: String,
}

impl Node<'_> {
    fn op(&self) -> &str {
        &self.pb.op_type
    }

    fn err(&self, msg: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported { op: op_label(self.pb), node: self.label.clone(), msg: msg.into() }
    }

    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.pb.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn float(&self, name: &str) -> Option<f32> {
        self.attr(name).map(|a| a.f)
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attr(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Input `i` if present and non-empty.
    fn input(&self, i: usize) -> Option<&str> {
        self.pb.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// A list attribute of two positive values, or `default`.
    fn pair(&self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], OnnxError> {
        match self.ints(name) {
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(self.err(format!("`{name}` = {v:?}: expected two positive values (2-D only)"))),
            None => default.ok_or_else(|| self.err(format!("missing attribute `{name}`"))),
        }
    }

    fn check_dilations(&self) -> Result<(), OnnxError> {
        match self.ints("dilations") {
            Some(d) if d.iter().any(|&x| x != 1) => {
                Err(self.err(format!("dilations {d:?} are not supported (only 1)")))
            }
            _ => Ok(()),
        }
    }

    /// Explicit padding `[top, left, bottom, right]` from `pads` / `auto_pad`.
    fn pads(&self, input: [usize; 2], kernel: [usize; 2], stride: [usize; 2]) -> Result<[usize; 4], OnnxError> {
        let auto = self.string("auto_pad").unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match self.ints("pads") {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                    Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(p) => Err(self.err(format!("`pads` = {p:?}: expected 4 non-negative values"))),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut begin = [0usize; 2];
                let mut end = [0usize; 2];
                for a in 0..2 {
                    let out = input[a].div_ceil(stride[a]);
                    let total = ((out - 1) * stride[a] + kernel[a]).saturating_sub(input[a]);
                    let small = total / 2;
                    let (b, e) = if auto == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                    begin[a] = b;
                    end[a] = e;
                }
                Ok([begin[0], begin[1], end[0], end[1]])
            }
            other => Err(self.err(format!("auto_pad `{other}` is not supported"))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Import: the chain mapper

/// Element order of a spatial ONNX tensor relative to our NHWC maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Nchw,
    Nhwc,
    /// 3-D `[N, H, W]` (one channel).
    Hw,
}

/// The current ONNX tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cur {
    /// An image-like tensor holding our `[h, w, c]` map in the given order.
    Spatial { h: usize, w: usize, c: usize, order: Order },
    /// A 2-D `[N, len]` tensor (our `[1, 1, len]`).
    Flat { len: usize },
}

pub(super) struct Mapper<'a> {
    consts: &'a Consts<'a>,
    opset: i64,
    batch: usize,
    layers: Vec<LayerSpec>,
    params: Vec<LayerParams>,
    cur: Cur,
    /// `[h, w, c]` of an NCHW map flattened since the last Dense: the next Dense's columns
    /// are in NCHW order and must be permuted to NHWC.
    pending_perm: Option<[usize; 3]>,
    /// Index of the last layer if it has parameters and only pass-through nodes followed it
    /// (so a bias Add or a BatchNormalization can be folded into it).
    foldable: Option<usize>,
    output: OutputTransform,
    notes: Vec<String>,
    /// Input normalisation not yet folded (per image channel), while only layout nodes
    /// have been walked.
    affine: Option<ChannelAffine>,
    /// The input normalisation folded so far (for [`Imported::input_affine`]).
    folded_affine: Option<ChannelAffine>,
    /// Channels of the image input.
    input_c: usize,
    /// The in-graph nodes folded into the input normalisation.
    norm_nodes: Vec<String>,
}

impl Mapper<'_> {
    fn const_tensor(&self, n: &Node, i: usize) -> Result<Option<&pb::TensorProto>, OnnxError> {
        let Some(name) = n.input(i) else { return Ok(None) };
        match self.consts.get(name) {
            Some(t) => Ok(Some(t.as_ref())),
            None => Err(OnnxError::MissingInitializer {
                op: op_label(n.pb),
                node: n.label.clone(),
                input: name.to_string(),
            }),
        }
    }

    /// Constant float input `i` as `(dims, values)`, `None` if absent.
    fn cf32(&self, n: &Node, i: usize) -> Result<Option<ConstF32>, OnnxError> {
        match self.const_tensor(n, i)? {
            None => Ok(None),
            Some(t) => {
                let v = tensor_f32(t).map_err(|e| n.err(format!("input `{}` {e}", t.name)))?;
                Ok(Some((t.dims.clone(), v)))
            }
        }
    }

    fn cf32_req(&self, n: &Node, i: usize, what: &str) -> Result<ConstF32, OnnxError> {
        self.cf32(n, i)?.ok_or_else(|| n.err(format!("missing input {i} ({what})")))
    }

    /// Constant integer input `i`, `None` if absent.
    fn ci64(&self, n: &Node, i: usize) -> Result<Option<Vec<i64>>, OnnxError> {
        match self.const_tensor(n, i)? {
            None => Ok(None),
            Some(t) => tensor_i64(t).map(Some).map_err(|e| n.err(format!("input `{}` {e}", t.name))),
        }
    }

    /// A constant scalar float input (absent: `None`).
    fn scalar(&self, n: &Node, i: usize) -> Result<Option<f32>, OnnxError> {
        match self.cf32(n, i)? {
            None => Ok(None),
            Some((_, v)) if v.len() == 1 => Ok(Some(v[0])),
            Some((d, _)) => Err(n.err(format!("input {i} has dims {d:?}, expected a scalar"))),
        }
    }

    fn shape3(&self) -> [usize; 3] {
        match self.cur {
            Cur::Spatial { h, w, c, .. } => [h, w, c],
            Cur::Flat { len } => [1, 1, len],
        }
    }

    /// The current ONNX tensor's dims (batch first).
    fn dims(&self) -> Vec<usize> {
        let b = self.batch;
        match self.cur {
            Cur::Spatial { h, w, c, order: Order::Nchw } => vec![b, c, h, w],
            Cur::Spatial { h, w, c, order: Order::Nhwc } => vec![b, h, w, c],
            Cur::Spatial { h, w, .. } => vec![b, h, w],
            Cur::Flat { len } => vec![b, len],
        }
    }

    fn nchw(&self, n: &Node) -> Result<[usize; 3], OnnxError> {
        match self.cur {
            Cur::Spatial { h, w, c, order: Order::Nchw } => Ok([h, w, c]),
            _ => Err(n.err(format!(
                "needs a 4-D NCHW tensor but the input has shape {:?}{}",
                self.dims(),
                if matches!(self.cur, Cur::Spatial { order: Order::Nhwc, .. }) { " (NHWC order)" } else { "" }
            ))),
        }
    }

    fn flat(&self, n: &Node) -> Result<usize, OnnxError> {
        match self.cur {
            Cur::Flat { len } => Ok(len),
            _ => Err(n.err(format!("needs a 2-D [N, features] tensor but the input has shape {:?}", self.dims()))),
        }
    }

    /// Appends a layer; spatial layers update the current tensor from the layer's output
    /// shape (validated here so errors name the node).
    fn push(&mut self, n: &Node, l: LayerSpec, mut p: LayerParams) -> Result<(), OnnxError> {
        if l != LayerSpec::Flatten {
            if let Some(a) = self.affine.take() {
                if !self.fold_input_affine(n, &l, &mut p, &a)? {
                    let [_, _, c] = self.shape3();
                    let dw = LayerSpec::DepthwiseConv2d { kernel: [1, 1], stride: [1, 1], padding: [0; 4] };
                    self.push(n, dw, LayerParams { weights: a.scale.clone(), bias: a.shift.clone() })?;
                    self.notes.push(format!(
                        "input normalisation {a}: a 1x1 depthwise layer before {l} (`{}`, {c} channels), which pads \
                         with zeros and so cannot absorb a shift exactly",
                        n.label
                    ));
                }
                self.folded_affine = Some(a);
            }
        }
        let out = l.output_shape(self.shape3()).map_err(|m| n.err(format!("{l}: {m}")))?;
        match l {
            LayerSpec::Dense { units } => self.cur = Cur::Flat { len: units },
            LayerSpec::Conv2d { .. }
            | LayerSpec::DepthwiseConv2d { .. }
            | LayerSpec::MaxPool2d { .. }
            | LayerSpec::AvgPool2d { .. } => {
                self.cur = Cur::Spatial { h: out[0], w: out[1], c: out[2], order: Order::Nchw }
            }
            _ => {}
        }
        self.foldable = l.has_params().then_some(self.layers.len());
        self.layers.push(l);
        self.params.push(p);
        Ok(())
    }

    fn flatten(&mut self, n: &Node) -> Result<(), OnnxError> {
        if let Cur::Spatial { h, w, c, order } = self.cur {
            if order == Order::Nchw && h * w > 1 && c > 1 {
                self.pending_perm = Some([h, w, c]);
            }
            self.push(n, LayerSpec::Flatten, LayerParams::default())?;
            self.cur = Cur::Flat { len: h * w * c };
        }
        Ok(())
    }

    /// `w *= scale[ch]`, `b = b * scale[ch] + shift[ch]` for layer `li`'s output channels.
    fn fold(&mut self, li: usize, scale: &[f32], shift: &[f32]) {
        let p = &mut self.params[li];
        let outs = p.bias.len();
        let per = p.weights.len() / outs.max(1);
        let depthwise = matches!(self.layers[li], LayerSpec::DepthwiseConv2d { .. });
        for (i, w) in p.weights.iter_mut().enumerate() {
            let ch = if depthwise { i % outs } else { i / per };
            *w *= scale[ch];
        }
        for ((b, s), t) in p.bias.iter_mut().zip(scale).zip(shift) {
            *b = *b * s + t;
        }
    }

    /// Folds the pending input normalisation `a` into the layer `l` about to be pushed
    /// with parameters `p`: exact for a Dense and for unpadded convolutions, and for a
    /// scale alone. Returns `false` if it cannot be folded (a shift before a padded
    /// convolution, or a non-parametric layer), `Err` if it can be neither folded nor put in
    /// a layer of its own (a flat tensor).
    fn fold_input_affine(
        &mut self,
        n: &Node,
        l: &LayerSpec,
        p: &mut LayerParams,
        a: &ChannelAffine,
    ) -> Result<bool, OnnxError> {
        let c = a.scale.len();
        let no_shift = a.shift.iter().all(|&t| t == 0.0);
        let per_out = |outs: usize| p.weights.len() / outs.max(1);
        let chan: Box<dyn Fn(usize) -> usize> = match *l {
            LayerSpec::Dense { .. } => Box::new(move |j| j % c),
            LayerSpec::Conv2d { padding, .. } | LayerSpec::DepthwiseConv2d { padding, .. }
                if padding == [0; 4] || no_shift =>
            {
                Box::new(move |i| i % c)
            }
            _ if matches!(self.cur, Cur::Spatial { .. }) => return Ok(false),
            _ => {
                return Err(n.err(format!(
                    "the input normalisation {a} cannot be folded into {l} on a flat tensor (only into a Gemm / MatMul)"
                )))
            }
        };
        let outs = p.bias.len();
        let per = per_out(outs);
        let depthwise = matches!(l, LayerSpec::DepthwiseConv2d { .. });
        for o in 0..outs {
            // Weights of output o: contiguous `per` values (OHWI / dense rows), or every
            // `outs`-th value for a depthwise kernel ([kh][kw][c], c == outs).
            let idx: Vec<usize> = if depthwise {
                (o..p.weights.len()).step_by(outs).collect()
            } else {
                (o * per..(o + 1) * per).collect()
            };
            let mut shift = 0.0f64;
            for i in idx {
                let k = if depthwise { o } else { chan(i - o * per) };
                shift += p.weights[i] as f64 * a.shift[k] as f64;
                p.weights[i] *= a.scale[k];
            }
            p.bias[o] = (p.bias[o] as f64 + shift) as f32;
        }
        self.notes.push(format!("input normalisation {a}: folded into {l} (`{}`)", n.label));
        Ok(true)
    }

    /// The constant `(dims, vals)` of an elementwise op on the not yet normalised input, as
    /// one value per image channel.
    fn input_vector(&self, n: &Node, dims: &[i64], vals: &[f32]) -> Result<Vec<f32>, OnnxError> {
        let c = self.affine.as_ref().map_or(1, |a| a.scale.len());
        if !vals.is_empty() && vals.iter().all(|&v| v == vals[0]) {
            return Ok(vec![vals[0]; c]);
        }
        match self.cur {
            Cur::Spatial { order: Order::Nchw | Order::Nhwc, .. } => self.channel_vector(n, dims, vals),
            _ => Err(n.err(format!(
                "a constant of shape {dims:?} that varies over a tensor of shape {:?}: only scalar or per-channel \
                 normalisation of an image input can be folded",
                self.dims()
            ))),
        }
    }

    /// An elementwise `x -> scale * x + shift` by constants (an `Add`, `Sub`, `Mul` or `Div`
    /// node): folded into the layer before it if there is one right before, else into the
    /// input normalisation while only layout nodes have been walked.
    fn elementwise(&mut self, n: &Node, data_pos: usize, f: impl Fn(f32) -> (f32, f32)) -> Result<(), OnnxError> {
        let (dims, vals) = self.cf32_req(n, 1 - data_pos.min(1), "constant")?;
        let check = |v: &[f32]| -> Result<(), OnnxError> {
            match v.iter().find(|x| !x.is_finite()) {
                Some(x) => Err(n.err(format!("the constant makes a non-finite factor or offset ({x})"))),
                None => Ok(()),
            }
        };
        if let Some(li) = self.foldable {
            let v = self.channel_vector(n, &dims, &vals)?;
            let (scale, shift): (Vec<f32>, Vec<f32>) = v.iter().map(|&v| f(v)).unzip();
            check(&scale)?;
            check(&shift)?;
            self.fold(li, &scale, &shift);
            self.notes.push(format!("folded {} `{}` into layer {li} ({})", n.op(), n.label, self.layers[li]));
            return Ok(());
        }
        if self.affine.is_none() && !self.layers.iter().all(|l| *l == LayerSpec::Flatten) {
            return Err(n.err(
                "elementwise ops by constants are only supported on the model input (normalisation) or right after \
                 a Conv, Gemm or MatMul",
            ));
        }
        let c = self.affine.as_ref().map_or(0, |a| a.scale.len());
        let c = if c == 0 { self.image_channels() } else { c };
        if self.affine.is_none() {
            self.affine = Some(ChannelAffine::identity(c));
        }
        let v = self.input_vector(n, &dims, &vals)?;
        let (scale, shift): (Vec<f32>, Vec<f32>) = v.iter().map(|&v| f(v)).unzip();
        check(&scale)?;
        check(&shift)?;
        let a = self.affine.take().unwrap_or_else(|| ChannelAffine::identity(c)).then(&scale, &shift);
        self.notes.push(format!("{} `{}` on the input: part of the input normalisation", n.op(), n.label));
        self.norm_nodes.push(format!("{} `{}`", n.op(), n.label));
        self.affine = Some(a);
        Ok(())
    }

    /// Channels of the image (before any layer with parameters).
    fn image_channels(&self) -> usize {
        match self.cur {
            Cur::Spatial { c, .. } => c,
            Cur::Flat { .. } => self.input_c,
        }
    }

    fn channels(&self) -> usize {
        match self.cur {
            Cur::Spatial { c, .. } => c,
            Cur::Flat { len } => len,
        }
    }

    fn dense(&mut self, n: &Node, mut weights: Vec<f32>, bias: Vec<f32>, units: usize) -> Result<(), OnnxError> {
        let k = self.flat(n)?;
        if let Some([h, w, c]) = self.pending_perm.take() {
            let onnx = weights.clone();
            for u in 0..units {
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            weights[u * k + (y * w + x) * c + ch] = onnx[u * k + (ch * h + y) * w + x];
                        }
                    }
                }
            }
            self.notes.push(format!(
                "{} `{}`: columns permuted from NCHW to NHWC flatten order ({h}x{w}x{c})",
                n.op(),
                n.label
            ));
        }
        self.push(n, LayerSpec::Dense { units }, LayerParams { weights, bias })
    }

    /// A per-channel vector from a constant broadcast against the current tensor, for a
    /// bias over channel axis 1.
    fn channel_vector(&self, n: &Node, dims: &[i64], vals: &[f32]) -> Result<Vec<f32>, OnnxError> {
        let (tdims, axis) = match self.cur {
            Cur::Spatial { order: Order::Nchw, .. } | Cur::Flat { .. } => (self.dims(), 1),
            Cur::Spatial { order: Order::Nhwc, .. } => (self.dims(), 3),
            _ => return Err(n.err(format!("a per-channel constant on a tensor of shape {:?} (not NCHW)", self.dims()))),
        };
        if vals.is_empty() {
            return Err(n.err(format!("empty constant of shape {dims:?}")));
        }
        let c = tdims[axis];
        let bad = || n.err(format!("constant of shape {dims:?} is not a per-channel vector for shape {tdims:?}"));
        if dims.len() > tdims.len() {
            return Err(bad());
        }
        let off = tdims.len() - dims.len();
        let mut per_channel = false;
        for (a, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            if a + off == axis && d as usize == c {
                per_channel = true;
            } else {
                return Err(bad());
            }
        }
        Ok(if per_channel { vals.to_vec() } else { vec![vals[0]; c] })
    }
    /// Maps node `n`, whose computed input is input `data_pos`, through its entry in the op
    /// table ([`ops::OPS`]).
    fn apply(&mut self, n: &Node, data_pos: usize) -> Result<(), OnnxError> {
        if self.output != OutputTransform::Logits && n.op() != "Identity" {
            return Err(n.err("only Identity may follow the final Softmax / LogSoftmax"));
        }
        let elementwise = matches!(n.op(), "Add" | "Sub" | "Mul" | "Div");
        if elementwise && (n.pb.input.len() != 2 || data_pos > 1) {
            return Err(n.err(format!("expected two inputs, has {}", n.pb.input.len())));
        }
        if data_pos != 0 && !elementwise {
            return Err(n.err(format!("the computed tensor must be input 0, not input {data_pos}")));
        }
        match ops::OPS.iter().find(|(name, _)| *name == n.op()) {
            Some((_, Some(map))) => map(self, n, data_pos),
            _ => Err(n.err("is folded before the walk and cannot be mapped here")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Import: the graph walk

pub(super) struct Input {
    name: String,
    pub(super) dims: Vec<Option<usize>>,
}

pub(super) fn graph_input(graph: &pb::GraphProto, consts: &Consts) -> Result<Input, OnnxError> {
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err(OnnxError::Graph("the graph has no (non-initializer) input".into())),
        more => {
            let names: Vec<&str> = more.iter().map(|i| i.name.as_str()).collect();
            return Err(OnnxError::Graph(format!(
                "the graph has {} inputs {names:?}; expected one image input",
                more.len()
            )));
        }
    };
    let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(OnnxError::Graph(format!("input `{}` is not a tensor", input.name)));
    };
    if t.elem_type != DataType::Float as i32 {
        return Err(OnnxError::Graph(format!(
            "input `{}` has element type {}; only FLOAT inputs are supported",
            input.name,
            dtype_name(t.elem_type)
        )));
    }
    let shape = t.shape.as_ref().ok_or_else(|| OnnxError::Graph(format!("input `{}` has no shape", input.name)))?;
    let dims: Vec<Option<usize>> = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) if v > 0 => Some(usize::try_from(v).unwrap_or(usize::MAX)),
            _ => None,
        })
        .collect();
    // The image (every dim but the batch) is checked against the activation limit before any
    // shape arithmetic, which could overflow on hostile dims.
    let image = dims.iter().skip(1).flatten().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if image.is_none_or(|n| n > MAX_ACTIVATION) {
        return Err(OnnxError::Graph(format!(
            "input `{}` has dims {dims:?}: more than {MAX_ACTIVATION} values per image",
            input.name
        )));
    }
    Ok(Input { name: input.name.clone(), dims })
}

/// Folds `Constant` nodes and `Identity` of constants into `consts`; returns the indices of
/// the folded nodes.
fn fold_constants<'a>(graph: &'a pb::GraphProto, consts: &mut Consts<'a>) -> Result<HashSet<usize>, OnnxError> {
    let mut folded = HashSet::new();
    for (idx, n) in graph.node.iter().enumerate() {
        let node = Node { pb: n, label: node_label(n, idx) };
        let out = n.output.first().filter(|o| !o.is_empty());
        if n.op_type == "Constant" {
            let out = out.ok_or_else(|| node.err("Constant without output"))?;
            let a = n.attribute.first().ok_or_else(|| node.err("Constant without value"))?;
            let t = match a.name.as_str() {
                "value" => a.t.clone().ok_or_else(|| node.err("empty `value`"))?,
                "value_float" => f32_tensor(out, &[], &[a.f]),
                "value_floats" => f32_tensor(out, &[a.floats.len()], &a.floats),
                "value_int" => i64_tensor(out, &[], &[a.i]),
                "value_ints" => i64_tensor(out, &[a.ints.len()], &a.ints),
                other => return Err(node.err(format!("Constant attribute `{other}` is not supported"))),
            };
            consts.insert(out.clone(), Cow::Owned(t));
            folded.insert(idx);
        } else if n.op_type == "Identity" && n.input.first().is_some_and(|i| consts.contains_key(i)) {
            let out = out.ok_or_else(|| node.err("Identity without output"))?;
            let t = consts[&n.input[0]].clone();
            consts.insert(out.clone(), t);
            folded.insert(idx);
        }
    }
    Ok(folded)
}

/// The chain of node indices from the input to the output, each with the position of its
/// computed input.
fn build_chain(
    graph: &pb::GraphProto,
    consts: &Consts,
    folded: &HashSet<usize>,
    input: &str,
    output: &str,
) -> Result<Vec<(usize, usize)>, OnnxError> {
    let mut produced: HashSet<&str> = HashSet::from([input]);
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut data_pos = HashMap::new();
    for (idx, n) in graph.node.iter().enumerate() {
        if folded.contains(&idx) {
            continue;
        }
        let label = node_label(n, idx);
        let mut dynamic = Vec::new();
        for (pos, name) in n.input.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            if consts.contains_key(name) {
                continue;
            }
            if !produced.contains(name.as_str()) {
                return Err(OnnxError::MissingInitializer { op: op_label(n), node: label, input: name.clone() });
            }
            dynamic.push((pos, name.as_str()));
        }
        match dynamic.as_slice() {
            [(pos, name)] => {
                consumers.entry(name).or_default().push(idx);
                data_pos.insert(idx, *pos);
            }
            [] => {
                return Err(OnnxError::Unsupported {
                    op: op_label(n),
                    node: label,
                    msg: "computes only from constants (only Constant and Identity nodes are folded)".into(),
                })
            }
            more => {
                let names: Vec<&str> = more.iter().map(|(_, s)| *s).collect();
                return Err(OnnxError::NotAChain(format!(
                    "node `{label}` ({}) combines the computed tensors {names:?} (branches and residual connections are not supported)",
                    op_label(n)
                )));
            }
        }
        produced.extend(n.output.iter().filter(|o| !o.is_empty()).map(String::as_str));
    }
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = input;
    loop {
        let idx = match consumers.get(cur).map(Vec::as_slice) {
            None | Some([]) => break,
            Some([one]) => *one,
            Some(more) => {
                let names: Vec<String> = more.iter().map(|&i| node_label(&graph.node[i], i)).collect();
                return Err(OnnxError::NotAChain(format!("tensor `{cur}` feeds {} nodes {names:?}", more.len())));
            }
        };
        if cur == output {
            return Err(OnnxError::NotAChain(format!("the graph output `{output}` is also consumed by other nodes")));
        }
        if !seen.insert(idx) {
            return Err(OnnxError::NotAChain("the graph has a cycle".into()));
        }
        let n = &graph.node[idx];
        for extra in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if consumers.contains_key(extra.as_str()) || extra == output {
                return Err(OnnxError::Unsupported {
                    op: op_label(n),
                    node: node_label(n, idx),
                    msg: format!("its extra output `{extra}` is used (only the first output may be)"),
                });
            }
        }
        chain.push((idx, data_pos[&idx]));
        cur = n.output.first().map(String::as_str).unwrap_or("");
    }
    if cur != output {
        return Err(OnnxError::NotAChain(format!(
            "the chain from input `{input}` ends at `{cur}`, not at the graph output `{output}`"
        )));
    }
    if let Some((idx, n)) = graph.node.iter().enumerate().find(|(i, _)| !folded.contains(i) && !seen.contains(i)) {
        return Err(OnnxError::NotAChain(format!(
            "node `{}` ({}) is not on the path from the input to the output",
            node_label(n, idx),
            op_label(n)
        )));
    }
    Ok(chain)
}

/// Picks the layout of a 4-D input from the first structural op of the chain.
fn detect_layout(graph: &pb::GraphProto, chain: &[(usize, usize)], dims: &[Option<usize>]) -> InputLayout {
    let first = chain
        .iter()
        .map(|&(i, _)| &graph.node[i])
        .find(|n| !matches!(n.op_type.as_str(), "Identity" | "Dropout" | "Relu" | "Clip"));
    if let Some(n) = first {
        match n.op_type.as_str() {
            "Transpose" => {
                let perm = n.attribute.iter().find(|a| a.name == "perm").map(|a| a.ints.clone());
                if perm.as_deref() == Some(&[0, 3, 1, 2]) {
                    return InputLayout::Nhwc;
                }
                return InputLayout::Nchw;
            }
            "Flatten" | "Reshape" => {
                let small = |d: Option<usize>| matches!(d, Some(1 | 3 | 4));
                if small(dims[3]) && !small(dims[1]) {
                    return InputLayout::Nhwc;
                }
            }
            _ => {}
        }
    }
    InputLayout::Nchw
}

fn square_guess(d: usize) -> [usize; 3] {
    let s = (d as f64).sqrt().round() as usize;
    if s * s == d {
        [s, s, 1]
    } else {
        [1, 1, d]
    }
}

/// Imports a float ONNX classifier as a [`Network`], with options, returning the network
/// together with the detected input layout, the dropped output transform, notes on what
/// was folded or dropped, and the tract-onnx cross-check result.
///
/// The protobuf is decoded with `tract_onnx::pb::ModelProto` and the node chain mapped to
/// layers (see the [module docs](super)); unless `opts.skip_verify`, the same bytes are then
/// loaded, optimised and run by tract-onnx on three probe images, and the network's outputs
/// (after [`Imported::output`]) must match within [`VERIFY_TOLERANCE`](super::VERIFY_TOLERANCE) relative to the
/// output scale, else [`OnnxError::Mismatch`]. A file tract-onnx cannot load is an
/// [`OnnxError::Tract`].
pub fn import_onnx_with(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, OnnxError> {
    let mut model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let mut notes = Vec::new();
    let rewritten = {
        let graph = model.graph.as_mut().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
        let loaded = prepass::inline_external_data(graph, opts.external_data_dir.as_deref())?;
        if loaded > 0 {
            notes.push(format!("read {loaded} initializers from external data beside the file"));
        }
        let cut = prepass::cut_classifier_tail(graph);
        notes.extend(cut.clone());
        let dropped = prepass::drop_value_info(graph);
        if dropped > 0 {
            notes.push(format!("dropped {dropped} intermediate value_info shapes (re-inferred by tract)"));
        }
        loaded > 0 || cut.is_some() || dropped > 0
    };
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let opset =
        model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(0, |o| o.version);
    if !graph.sparse_initializer.is_empty() {
        return Err(OnnxError::Graph("sparse initializers are not supported".into()));
    }
    // Unsupported ops first, all of them, grouped by op: the most useful error for foreign
    // models.
    let mut unsupported: Vec<UnsupportedNodes> = Vec::new();
    for (idx, n) in graph.node.iter().enumerate() {
        if !is_default_domain(n) || !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
            let op = op_label(n);
            match unsupported.iter_mut().find(|u| u.op == op) {
                Some(u) => u.nodes.push(node_label(n, idx)),
                None => unsupported.push(UnsupportedNodes { op, nodes: vec![node_label(n, idx)] }),
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(OnnxError::UnsupportedOps(unsupported));
    }
    let mut consts: Consts = graph.initializer.iter().map(|t| (t.name.clone(), Cow::Borrowed(t))).collect();
    let mut folded = fold_constants(graph, &mut consts)?;
    let input = graph_input(graph, &consts)?;
    let output = match graph.output.as_slice() {
        [one] => one.name.clone(),
        other => {
            return Err(OnnxError::Graph(format!(
                "the graph has {} outputs; expected one (logits or probabilities)",
                other.len()
            )))
        }
    };
    let batch = input.dims.first().copied().flatten().unwrap_or(1);
    prepass::fold_shape_arithmetic(graph, &mut consts, &mut folded, (&input.name, &input.dims), batch)?;
    let chain = build_chain(graph, &consts, &folded, &input.name, &output)?;

    // Input layout and shape.
    let dims = &input.dims;
    let unknown = |what: &str| {
        OnnxError::Graph(format!(
            "input `{}` has dims {dims:?} with unknown {what}; pass ImportOptions::input_shape",
            input.name
        ))
    };
    let (layout, shape, cur) = match dims.len() {
        2 => {
            let d = match (dims[1], opts.input_shape) {
                (Some(d), _) => d,
                (None, Some(s)) => s.iter().product(),
                (None, None) => return Err(unknown("feature count")),
            };
            let shape = match opts.input_shape {
                Some(s) if s.iter().product::<usize>() == d => s,
                Some(s) => {
                    return Err(OnnxError::Graph(format!(
                        "ImportOptions::input_shape {s:?} does not have the input's {d} features"
                    )))
                }
                None => {
                    let s = square_guess(d);
                    if s[0] == 1 {
                        notes.push(format!(
                            "the {d} input features are not a square image: taken as a 1x1x{d} image \
                             (pass ImportOptions::input_shape / --input-shape H,W,C for an image)"
                        ));
                    }
                    s
                }
            };
            (InputLayout::Flat, shape, Cur::Flat { len: d })
        }
        3 => {
            let [h, w] = match (dims[1], dims[2], opts.input_shape) {
                (Some(h), Some(w), _) => [h, w],
                (_, _, Some([h, w, 1])) => [h, w],
                _ => return Err(unknown("height/width")),
            };
            (InputLayout::Hw, [h, w, 1], Cur::Spatial { h, w, c: 1, order: Order::Hw })
        }
        4 => {
            let layout = match opts.input_layout {
                Some(l @ (InputLayout::Nchw | InputLayout::Nhwc)) => l,
                Some(l) => return Err(OnnxError::Graph(format!("input layout {l:?} given for a 4-D input"))),
                None => detect_layout(graph, &chain, dims),
            };
            let (hd, wd, cd) = match layout {
                InputLayout::Nchw => (dims[2], dims[3], dims[1]),
                _ => (dims[1], dims[2], dims[3]),
            };
            let [h, w, c] = match (hd, wd, cd, opts.input_shape) {
                (Some(h), Some(w), Some(c), _) => [h, w, c],
                (_, _, _, Some(s)) => s,
                _ => return Err(unknown("height/width/channels")),
            };
            let order = if layout == InputLayout::Nchw { Order::Nchw } else { Order::Nhwc };
            (layout, [h, w, c], Cur::Spatial { h, w, c, order })
        }
        r => return Err(OnnxError::Graph(format!("input `{}` has rank {r}; expected 2, 3 or 4", input.name))),
    };

    let mut m = Mapper {
        consts: &consts,
        opset,
        batch,
        layers: Vec::new(),
        params: Vec::new(),
        cur,
        pending_perm: None,
        foldable: None,
        output: OutputTransform::Logits,
        notes,
        affine: None,
        folded_affine: None,
        input_c: shape[2],
        norm_nodes: Vec::new(),
    };
    let cli_affine = match &opts.input_norm {
        Some(norm) => {
            let a = norm.affine(shape[2]).map_err(|e| OnnxError::Graph(format!("ImportOptions::input_norm: {e}")))?;
            m.notes.push(format!("input normalisation {a} given with the import (not in the file)"));
            m.affine = Some(a.clone());
            Some(a)
        }
        None => None,
    };
    if layout == InputLayout::Flat && shape[0] * shape[1] > 1 {
        // Our network takes the image; the file takes it flattened (NHWC order).
        m.layers.push(LayerSpec::Flatten);
        m.params.push(LayerParams::default());
    }
    for &(idx, pos) in &chain {
        let n = Node { pb: &graph.node[idx], label: node_label(&graph.node[idx], idx) };
        m.apply(&n, pos)?;
    }
    let classes = match m.layers.last() {
        Some(LayerSpec::Dense { units }) => *units,
        last => {
            return Err(OnnxError::Graph(format!(
                "the model must end with a Gemm / MatMul producing the logits (optionally followed by Softmax), \
                 but its last layer is {}",
                last.map_or("nothing".to_string(), |l| l.to_string())
            )))
        }
    };
    let spec = ArchSpec::new(shape, classes, m.layers)?;
    let network = Network::from_params(spec, Params { layers: m.params })?;
    let max_abs_diff = if opts.skip_verify {
        None
    } else {
        // tract runs the file as rewritten by the pre-pass.
        let checked: Cow<[u8]> = if rewritten { Cow::Owned(model.encode_to_vec()) } else { Cow::Borrowed(bytes) };
        Some(verify(&checked, &network, layout, batch, m.output, cli_affine.as_ref())?)
    };
    Ok(Imported {
        network,
        input_layout: layout,
        output: m.output,
        opset,
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        notes: m.notes,
        max_abs_diff,
        input_affine: m.folded_affine,
        input_norm_nodes: m.norm_nodes,
    })
}

/// Imports the ONNX file at `path` as [`import_onnx_with`] does, reading external data
/// (`model.onnx.data`) from the file's directory.
pub fn import_onnx_file(path: &Path, opts: &ImportOptions) -> Result<Imported, OnnxError> {
    let io = |e: std::io::Error| OnnxError::Io(format!("{}: {e}", path.display()));
    // A protobuf message is at most 2 GiB: checked before the file is read.
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > i32::MAX as u64 {
        return Err(OnnxError::Decode(format!(
            "{} has {size} bytes, more than a protobuf message can hold",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    let opts = ImportOptions { external_data_dir: dir.map(Path::to_path_buf), ..opts.clone() };
    import_onnx_with(&bytes, &opts)
}

#[cfg(test)]
mod tests {
    use super::super::build::value_info;
    use super::super::{export_onnx, import_onnx_with, ImportOptions};
    use super::*;

    /// A tiny exported model whose graph input is replaced by one with `dims`.
    fn with_input_dims(dims: &[Option<usize>]) -> Vec<u8> {
        let spec = ArchSpec::from_compact("flatten,dense2", [2, 2, 1], 2).unwrap();
        let bytes = export_onnx(&Network::new(spec, 1).unwrap()).unwrap();
        let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
        m.graph.as_mut().unwrap().input[0] = value_info("input", dims, "N");
        m.encode_to_vec()
    }

    #[test]
    fn huge_input_dims_are_an_error_not_an_overflow() {
        let opts = ImportOptions { skip_verify: true, ..ImportOptions::default() };
        let big = 1usize << 33;
        for dims in [
            vec![None, Some(big), Some(big), Some(big)],
            vec![None, Some(i64::MAX as usize)],
            vec![Some(1), Some(1 << 25), Some(1)],
        ] {
            match import_onnx_with(&with_input_dims(&dims), &opts) {
                Err(OnnxError::Graph(msg)) => assert!(msg.contains("values per image"), "{msg}"),
                other => panic!("{dims:?}: {other:?}"),
            }
        }
        // The unmodified shape still imports.
        assert!(import_onnx_with(&with_input_dims(&[None, Some(1), Some(2), Some(2)]), &opts).is_ok());
    }

    /// An elementwise op with the computed tensor at input 2 (hostile graphs) is an error, not
    /// an index underflow.
    #[test]
    fn elementwise_ops_with_three_inputs_are_an_error() {
        use super::super::build::{f32_tensor, node};
        for op in ["Add", "Sub", "Mul", "Div"] {
            let graph = pb::GraphProto {
                node: vec![
                    node(op, "e", &["c", "c", "input"], &["a"], vec![]),
                    node("MatMul", "m", &["a", "w"], &["out"], vec![]),
                ],
                initializer: vec![f32_tensor("c", &[], &[2.0]), f32_tensor("w", &[4, 2], &[0.5; 8])],
                input: vec![value_info("input", &[Some(1), Some(4)], "N")],
                output: vec![value_info("out", &[Some(1), Some(2)], "N")],
                ..Default::default()
            };
            let bytes = pb::ModelProto { graph: Some(graph), ..Default::default() }.encode_to_vec();
            let opts = ImportOptions { skip_verify: true, ..ImportOptions::default() };
            match import_onnx_with(&bytes, &opts) {
                Err(OnnxError::Unsupported { msg, .. }) => assert!(msg.contains("input"), "{op}: {msg}"),
                other => panic!("{op}: {other:?}"),
            }
        }
    }
}

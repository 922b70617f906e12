//! ONNX interchange for float networks.
//!
//! - [`export_onnx`] writes a standard ONNX model (opset 13) of a [`Network`] as PyTorch would
//!   export it: input `"input"` of shape `[N, C, H, W]` (NCHW, float32, `N` symbolic), output
//!   `"logits"` of shape `[N, classes]`.
//! - [`import_onnx`] / [`import_onnx_with`] read a float classifier written by a common
//!   exporter (PyTorch `torch.onnx.export`, Keras through tf2onnx, skl2onnx MLPs) back into a
//!   [`Network`], and check the result against tract-onnx running the same file.
//! - [`tract_forward`] runs an ONNX file through tract-onnx on an NHWC batch.
//!
//! # Export mapping
//! | layer | ONNX |
//! |---|---|
//! | `Conv2d` | `Conv` (weights OHWI -> OIHW, `pads` = `[top, left, bottom, right]`) |
//! | `DepthwiseConv2d` | `Conv` with `group = C`, weights `[kh][kw][c]` -> `[C, 1, kh, kw]` |
//! | `MaxPool2d` / `AvgPool2d` | `MaxPool` / `AveragePool` (`kernel_shape`, `strides`, no padding) |
//! | `Relu` / `Relu6` | `Relu` / `Clip(min = 0, max = 6)` (bounds as initializer inputs) |
//! | `Flatten` | `Flatten(axis = 1)`; the next `Dense`'s weight columns are permuted from NHWC to NCHW order |
//! | `Dense` | `Gemm(transB = 1)` with `B = [out, in]` |
//!
//! A `Flatten` whose next non-activation layer is not a `Dense` gets a `Transpose(perm =
//! [0, 2, 3, 1])` before it instead, and layers that need a 4-D tensor after a flatten get a
//! `Reshape` to `[N, C, 1, 1]`, so every architecture exports.
//!
//! # Import
//! The graph must be a simple chain from the single float input to the single output
//! (constants may come from initializers, `Constant` nodes or `Identity` of a constant).
//! Supported ops ([`SUPPORTED_OPS`]):
//!
//! | ONNX | becomes |
//! |---|---|
//! | `Conv` (group 1, or depthwise `group = C_in = C_out`; `dilations` 1; explicit `pads` or `auto_pad` NOTSET / VALID / SAME_UPPER / SAME_LOWER) | `Conv2d` / `DepthwiseConv2d` |
//! | `Gemm` (`transA = 0`, `transB` 0 or 1, any `alpha` / `beta`) | `Dense` |
//! | `MatMul` with a constant `[in, out]` matrix, optionally followed by `Add` | `Dense` |
//! | `Add` of a constant per-channel (or scalar) bias right after a Conv / Gemm / MatMul | folded into the bias |
//! | `BatchNormalization` right after a Conv / Gemm / MatMul (inference mode) | folded into its weights and bias |
//! | `Relu`; `Clip(0, inf)`; `Clip(0, 6)` (attributes before opset 11, inputs after) | `Relu` / `Relu6` |
//! | `MaxPool`, `AveragePool` (no padding, `ceil_mode` only when it does not change the size) | `MaxPool2d` / `AvgPool2d` |
//! | `GlobalAveragePool`, `GlobalMaxPool` | `AvgPool2d` / `MaxPool2d` over the whole map |
//! | `Flatten(axis = 1)`, `Reshape` to `[N, -1]`, `Squeeze` of 1x1 spatial axes | `Flatten` (Dense columns permuted from NCHW to NHWC order) |
//! | `Transpose` NHWC <-> NCHW (tf2onnx's layout conversions) | nothing (tracked layout) |
//! | `Dropout`, `Identity` | dropped |
//! | final `Softmax` / `LogSoftmax` | dropped (the network outputs logits; see [`OutputTransform`]) |
//!
//! Input layouts ([`InputLayout`]): `[N, C, H, W]` (PyTorch), `[N, H, W, C]` (Keras; recognised
//! by a following `Transpose(perm = [0, 3, 1, 2])`, or by a flatten-first graph whose last dim
//! is 1, 3 or 4 and whose second is not), `[N, H, W]` (one channel) and flat `[N, D]` (the
//! features are taken as the image `[h, w, c]` flattened row-major, which is NHWC order; the
//! image shape comes from [`ImportOptions::input_shape`], else `sqrt(D) x sqrt(D) x 1` when `D`
//! is a square, else `1 x 1 x D`).
//!
//! Anything else is an error naming the op and the node ([`OnnxError::UnsupportedOp`]) or
//! saying what is wrong ([`OnnxError::Unsupported`], [`OnnxError::NotAChain`], ...). Unless
//! [`ImportOptions::skip_verify`] is set, the file is then loaded and run by tract-onnx on
//! three probe images and the imported network's outputs must match it (see
//! [`OnnxError::Mismatch`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use prost::Message;
use thiserror::Error;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

use crate::nn::{ArchSpec, LayerParams, LayerSpec, Network, NnError, Params, Tensor, MAX_ACTIVATION};
use crate::rng::Rng;

/// ONNX opset version written by [`export_onnx`].
pub const EXPORT_OPSET: i64 = 13;

/// ONNX IR version written by [`export_onnx`] (the one that goes with opset 13).
pub const EXPORT_IR_VERSION: i64 = 7;

/// Op types (default ONNX domain) that [`import_onnx`] maps; any other op is an
/// [`OnnxError::UnsupportedOp`].
pub const SUPPORTED_OPS: [&str; 20] = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "BatchNormalization",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Transpose",
    "Dropout",
    "Identity",
    "Softmax",
    "LogSoftmax",
    "Constant",
];

/// Relative tolerance of the tract-onnx cross-check in [`import_onnx_with`]: the largest
/// absolute difference must not exceed `VERIFY_TOLERANCE * max(1, max |tract output|)`.
pub const VERIFY_TOLERANCE: f32 = 1e-4;

/// Errors of ONNX export and import.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OnnxError {
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// A node uses an op the importer does not support.
    #[error("unsupported ONNX op `{op}` in node `{node}` (supported: {})", SUPPORTED_OPS.join(", "))]
    UnsupportedOp {
        /// The op type (prefixed with its domain if not the default one).
        op: String,
        /// The node name (or `#<index> (output `...`)` for unnamed nodes).
        node: String,
    },
    /// A supported op is used in a way the importer cannot map (attributes, shapes, position).
    #[error("node `{node}` ({op}): {msg}")]
    Unsupported {
        /// The op type.
        op: String,
        /// The node name.
        node: String,
        /// What is not supported.
        msg: String,
    },
    /// A weight / shape input is neither an initializer nor a constant.
    #[error("node `{node}` ({op}): input `{input}` is not an initializer or the output of a Constant node")]
    MissingInitializer {
        /// The op type.
        op: String,
        /// The node name.
        node: String,
        /// The name of the missing input.
        input: String,
    },
    /// The graph has branches, merges, or nodes off the input-to-output path.
    #[error("the graph is not a simple chain: {0}")]
    NotAChain(String),
    /// Structural problems: no graph, several inputs or outputs, unknown input shape, bad
    /// tensors.
    #[error("invalid ONNX graph: {0}")]
    Graph(String),
    /// The mapped layers do not form a valid network.
    #[error("the imported layers do not form a valid network: {0}")]
    Arch(#[from] NnError),
    /// tract-onnx could not load or run the file.
    #[error("tract-onnx: {0}")]
    Tract(String),
    /// The imported network's outputs differ from tract-onnx's on the same file.
    #[error(
        "the imported network disagrees with tract-onnx on the file: max |diff| {max_abs_diff:e} > tolerance {tolerance:e}"
    )]
    Mismatch {
        /// Largest absolute difference over the probe images.
        max_abs_diff: f32,
        /// The allowed difference.
        tolerance: f32,
    },
}

// ---------------------------------------------------------------------------------------
// Small protobuf helpers

fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[usize], data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn attr_ints(name: &str, v: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam("N".into()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Export

struct Emitter {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    cur: String,
}

impl Emitter {
    fn init(&mut self, t: pb::TensorProto) -> String {
        let name = t.name.clone();
        self.inits.push(t);
        name
    }

    /// Appends a node consuming the current tensor (plus `extra` inputs); its output becomes
    /// the current tensor.
    fn node(&mut self, op: &str, name: String, extra: Vec<String>, attribute: Vec<pb::AttributeProto>) {
        let out = format!("{name}_out");
        let mut input = vec![std::mem::replace(&mut self.cur, out.clone())];
        input.extend(extra);
        self.nodes.push(pb::NodeProto {
            input,
            output: vec![out],
            name,
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
    }
}

fn window_attrs(kernel: [usize; 2], stride: [usize; 2], padding: Option<[usize; 4]>) -> Vec<pb::AttributeProto> {
    let mut a = vec![attr_ints("kernel_shape", &kernel), attr_ints("strides", &stride)];
    if let Some(p) = padding {
        a.push(attr_ints("pads", &p));
        a.push(attr_ints("dilations", &[1, 1]));
    }
    a
}

/// Whether the first layer after `i` that is not an activation or a Flatten is a Dense.
fn next_is_dense(layers: &[LayerSpec], i: usize) -> bool {
    layers[i + 1..]
        .iter()
        .find(|l| !matches!(l, LayerSpec::Relu | LayerSpec::Relu6 | LayerSpec::Flatten))
        .is_some_and(|l| matches!(l, LayerSpec::Dense { .. }))
}

/// Exports the float network as an ONNX model (opset 13), encoded as protobuf bytes.
///
/// The graph takes `"input"`, float32 `[N, C, H, W]` (NCHW, `N` a symbolic batch dimension;
/// pixels `byte / 255` as for [`Network::forward`]) and produces `"logits"`, `[N, classes]`.
/// Weights are stored as raw little-endian initializers named `<layer>_<index>.weight` /
/// `.bias`; the model's `doc_string` and the metadata entry `iocane.arch` record the
/// architecture. See the [module docs](self) for the op mapping. Running the file (e.g. with
/// tract-onnx or onnxruntime) on the NCHW form of an image gives the same logits as
/// [`Network::forward`] up to float rounding.
pub fn export_onnx(net: &Network) -> Result<Vec<u8>, OnnxError> {
    Ok(export_model(net).encode_to_vec())
}

fn export_model(net: &Network) -> pb::ModelProto {
    let layers = net.layers();
    let [ih, iw, ic] = net.input_shape();
    let mut e = Emitter { nodes: Vec::new(), inits: Vec::new(), cur: "input".into() };
    // Whether the current ONNX tensor is 4-D NCHW (else 2-D [N, len]).
    let mut rank4 = true;
    // NCHW-flattened shape whose order the next Dense's columns must follow.
    let mut pending: Option<[usize; 3]> = None;
    let mut clip_bounds: Option<(String, String)> = None;
    for (i, l) in layers.iter().enumerate() {
        let [h, w, c] = net.layer_input_shape(i);
        let p = net.layer_params(i);
        let needs_rank4 =
            matches!(l, LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } | LayerSpec::MaxPool2d { .. })
                || matches!(l, LayerSpec::AvgPool2d { .. });
        if needs_rank4 && !rank4 {
            // A flat [N, len] tensor is our [1, 1, len] map: reshape it to [N, len, 1, 1].
            let shape = e.init(i64_tensor(&format!("reshape_{i}.shape"), &[4], &[0, c as i64, 1, 1]));
            e.node("Reshape", format!("reshape_{i}"), vec![shape], vec![]);
            rank4 = true;
        }
        match *l {
            LayerSpec::Conv2d { filters, kernel, stride, padding } => {
                let [kh, kw] = kernel;
                let mut wt = vec![0.0f32; p.weights.len()];
                for o in 0..filters {
                    for y in 0..kh {
                        for x in 0..kw {
                            for ci in 0..c {
                                wt[((o * c + ci) * kh + y) * kw + x] = p.weights[((o * kh + y) * kw + x) * c + ci];
                            }
                        }
                    }
                }
                let name = format!("conv_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[filters, c, kh, kw], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[filters], &p.bias));
                let mut attrs = window_attrs(kernel, stride, Some(padding));
                attrs.push(attr_int("group", 1));
                e.node("Conv", name, vec![wn, bn], attrs);
            }
            LayerSpec::DepthwiseConv2d { kernel, stride, padding } => {
                let [kh, kw] = kernel;
                let mut wt = vec![0.0f32; p.weights.len()];
                for ch in 0..c {
                    for y in 0..kh {
                        for x in 0..kw {
                            wt[(ch * kh + y) * kw + x] = p.weights[(y * kw + x) * c + ch];
                        }
                    }
                }
                let name = format!("dwconv_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[c, 1, kh, kw], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[c], &p.bias));
                let mut attrs = window_attrs(kernel, stride, Some(padding));
                attrs.push(attr_int("group", c as i64));
                e.node("Conv", name, vec![wn, bn], attrs);
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                e.node("MaxPool", format!("maxpool_{i}"), vec![], window_attrs(kernel, stride, None))
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                e.node("AveragePool", format!("avgpool_{i}"), vec![], window_attrs(kernel, stride, None))
            }
            LayerSpec::Relu => e.node("Relu", format!("relu_{i}"), vec![], vec![]),
            LayerSpec::Relu6 => {
                let (lo, hi) = clip_bounds
                    .get_or_insert_with(|| {
                        (e.init(f32_tensor("relu6.min", &[], &[0.0])), e.init(f32_tensor("relu6.max", &[], &[6.0])))
                    })
                    .clone();
                e.node("Clip", format!("relu6_{i}"), vec![lo, hi], vec![]);
            }
            LayerSpec::Flatten => {
                if rank4 {
                    if h * w > 1 && c > 1 {
                        if next_is_dense(layers, i) {
                            pending = Some([h, w, c]);
                        } else {
                            let perm = attr_ints("perm", &[0, 2, 3, 1]);
                            e.node("Transpose", format!("to_nhwc_{i}"), vec![], vec![perm]);
                        }
                    }
                    e.node("Flatten", format!("flatten_{i}"), vec![], vec![attr_int("axis", 1)]);
                    rank4 = false;
                }
            }
            LayerSpec::Dense { units } => {
                if rank4 {
                    // Dense on a 1x1xC map without an explicit Flatten.
                    e.node("Flatten", format!("flatten_{i}"), vec![], vec![attr_int("axis", 1)]);
                    rank4 = false;
                }
                let k = h * w * c;
                let wt = match pending.take() {
                    Some([fh, fw, fc]) => {
                        let mut wt = vec![0.0f32; p.weights.len()];
                        for u in 0..units {
                            for ch in 0..fc {
                                for y in 0..fh {
                                    for x in 0..fw {
                                        wt[u * k + (ch * fh + y) * fw + x] = p.weights[u * k + (y * fw + x) * fc + ch];
                                    }
                                }
                            }
                        }
                        wt
                    }
                    None => p.weights.clone(),
                };
                let name = format!("gemm_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[units, k], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[units], &p.bias));
                let attrs = vec![attr_int("transB", 1)];
                e.node("Gemm", name, vec![wn, bn], attrs);
            }
        }
    }
    // Validated networks end with a Dense: its Gemm produces the logits.
    if let Some(last) = e.nodes.last_mut() {
        last.output[0] = "logits".into();
    }
    let spec = net.spec();
    let graph = pb::GraphProto {
        node: e.nodes,
        name: "iocane".into(),
        initializer: e.inits,
        input: vec![value_info("input", &[None, Some(ic), Some(ih), Some(iw)])],
        output: vec![value_info("logits", &[None, Some(spec.classes)])],
        doc_string: String::new(),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: EXPORT_IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: EXPORT_OPSET }],
        producer_name: "iocane".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "iocane float network `{}`: input [N, {ic}, {ih}, {iw}] NCHW float32 pixels byte/255, output logits [N, {}]",
            spec.to_compact(),
            spec.classes
        ),
        graph: Some(graph),
        metadata_props: vec![pb::StringStringEntryProto {
            key: "iocane.arch".into(),
            value: serde_json::to_string(spec).expect("ArchSpec serialises"),
        }],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Import: public types

/// Memory layout of an ONNX model's image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputLayout {
    /// `[N, C, H, W]` (PyTorch; what [`export_onnx`] writes).
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

    /// Converts one NHWC image (`[h, w, c]`, as in [`Tensor`]) into this layout.
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

/// Options of [`import_onnx_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Image shape `[h, w, c]` for inputs whose shape is not fully known: flat `[N, D]`
    /// inputs (must satisfy `h * w * c == D`) and symbolic spatial dimensions.
    pub input_shape: Option<[usize; 3]>,
    /// Forces the layout of a 4-D input (`Nchw` or `Nhwc`) instead of detecting it.
    pub input_layout: Option<InputLayout>,
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
}

/// Imports a float ONNX classifier as a [`Network`] (with default [`ImportOptions`], i.e.
/// with the tract-onnx cross-check). See the [module docs](self) for what is supported.
pub fn import_onnx(bytes: &[u8]) -> Result<Network, OnnxError> {
    import_onnx_with(bytes, &ImportOptions::default()).map(|i| i.network)
}

// ---------------------------------------------------------------------------------------
// Import: tensors and nodes

type Consts<'a> = HashMap<String, Cow<'a, pb::TensorProto>>;

/// A constant float tensor: `(dims, values)`.
type ConstF32 = (Vec<i64>, Vec<f32>);

fn numel(dims: &[i64]) -> Result<usize, String> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)).ok_or_else(|| format!("has invalid dims {dims:?}"))
    })
}

fn check_inline(t: &pb::TensorProto) -> Result<(), String> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err("uses external data (not supported: embed the weights in the model)".into());
    }
    if t.segment.is_some() {
        return Err("is segmented (not supported)".into());
    }
    Ok(())
}

fn dtype_name(t: i32) -> String {
    DataType::try_from(t).map(|d| d.as_str_name().to_string()).unwrap_or_else(|_| format!("#{t}"))
}

fn raw_chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Result<Vec<T>, String> {
    if !raw.len().is_multiple_of(N) {
        return Err(format!("has {} raw bytes, not a multiple of {N}", raw.len()));
    }
    Ok(raw.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect())
}

fn tensor_f32(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    check_inline(t)?;
    let n = numel(&t.dims)?;
    let raw = !t.raw_data.is_empty();
    let v = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if raw => raw_chunks::<4, _>(&t.raw_data, f32::from_le_bytes)?,
        Ok(DataType::Float) => t.float_data.clone(),
        Ok(DataType::Double) if raw => raw_chunks::<8, _>(&t.raw_data, |b| f64::from_le_bytes(b) as f32)?,
        Ok(DataType::Double) => t.double_data.iter().map(|&v| v as f32).collect(),
        _ => return Err(format!("has element type {} (expected FLOAT)", dtype_name(t.data_type))),
    };
    if v.len() != n {
        return Err(format!("holds {} values for dims {:?}", v.len(), t.dims));
    }
    Ok(v)
}

fn tensor_i64(t: &pb::TensorProto) -> Result<Vec<i64>, String> {
    check_inline(t)?;
    let n = numel(&t.dims)?;
    let raw = !t.raw_data.is_empty();
    let v = match DataType::try_from(t.data_type) {
        Ok(DataType::Int64) if raw => raw_chunks::<8, _>(&t.raw_data, i64::from_le_bytes)?,
        Ok(DataType::Int64) => t.int64_data.clone(),
        Ok(DataType::Int32) if raw => raw_chunks::<4, _>(&t.raw_data, |b| i32::from_le_bytes(b) as i64)?,
        Ok(DataType::Int32) => t.int32_data.iter().map(|&v| v as i64).collect(),
        _ => return Err(format!("has element type {} (expected INT64)", dtype_name(t.data_type))),
    };
    if v.len() != n {
        return Err(format!("holds {} values for dims {:?}", v.len(), t.dims));
    }
    Ok(v)
}

fn node_label(n: &pb::NodeProto, idx: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        match n.output.first().filter(|o| !o.is_empty()) {
            Some(o) => format!("#{idx} (output `{o}`)"),
            None => format!("#{idx}"),
        }
    }
}

fn op_label(n: &pb::NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

fn is_default_domain(n: &pb::NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// A node with its display label and attribute accessors.
struct Node<'a> {
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

struct Mapper<'a> {
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
    fn push(&mut self, n: &Node, l: LayerSpec, p: LayerParams) -> Result<(), OnnxError> {
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
        let tdims = match self.cur {
            Cur::Spatial { order: Order::Nchw, .. } | Cur::Flat { .. } => self.dims(),
            _ => return Err(n.err(format!("a per-channel constant on a tensor of shape {:?} (not NCHW)", self.dims()))),
        };
        let c = tdims[1];
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
            if a + off == 1 && d as usize == c {
                per_channel = true;
            } else {
                return Err(bad());
            }
        }
        Ok(if per_channel { vals.to_vec() } else { vec![vals[0]; c] })
    }

    fn apply(&mut self, n: &Node, data_pos: usize) -> Result<(), OnnxError> {
        if self.output != OutputTransform::Logits && n.op() != "Identity" {
            return Err(n.err("only Identity may follow the final Softmax / LogSoftmax"));
        }
        if data_pos != 0 && n.op() != "Add" {
            return Err(n.err(format!("the computed tensor must be input 0, not input {data_pos}")));
        }
        match n.op() {
            "Identity" => {}
            "Dropout" => self.notes.push(format!("dropped Dropout `{}`", n.label)),
            "Relu" => self.push(n, LayerSpec::Relu, LayerParams::default())?,
            "Clip" => self.clip(n)?,
            "Conv" => self.conv(n)?,
            "MaxPool" | "AveragePool" => self.pool(n)?,
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let [h, w, _] = self.nchw(n)?;
                let (kernel, stride) = ([h, w], [h, w]);
                let l = if n.op() == "GlobalMaxPool" {
                    LayerSpec::MaxPool2d { kernel, stride }
                } else {
                    LayerSpec::AvgPool2d { kernel, stride }
                };
                self.push(n, l, LayerParams::default())?;
            }
            "BatchNormalization" => self.batchnorm(n)?,
            "Gemm" => self.gemm(n)?,
            "MatMul" => {
                let len = self.flat(n)?;
                let (bd, bv) = self.cf32_req(n, 1, "B")?;
                if bd.len() != 2 || bd[0] as usize != len {
                    return Err(n.err(format!("B has dims {bd:?}, expected [{len}, units]")));
                }
                let units = bd[1] as usize;
                let mut wt = vec![0.0f32; bv.len()];
                for j in 0..len {
                    for u in 0..units {
                        wt[u * len + j] = bv[j * units + u];
                    }
                }
                self.dense(n, wt, vec![0.0; units], units)?;
            }
            "Add" => {
                let li = self.foldable.ok_or_else(|| {
                    n.err("Add is only supported as a constant bias right after a Conv, Gemm or MatMul")
                })?;
                let (dims, vals) = self.cf32_req(n, 1 - data_pos, "bias")?;
                let v = self.channel_vector(n, &dims, &vals)?;
                self.fold(li, &vec![1.0; v.len()], &v);
                self.notes.push(format!("folded Add `{}` into the bias of layer {li} ({})", n.label, self.layers[li]));
            }
            "Flatten" => {
                let rank = self.dims().len() as i64;
                let axis = n.int("axis", 1);
                if (if axis < 0 { axis + rank } else { axis }) != 1 {
                    return Err(n.err(format!("axis {axis} is not supported (only 1)")));
                }
                self.flatten(n)?;
            }
            "Reshape" => self.reshape(n)?,
            "Squeeze" => {
                let axes = match self.ci64(n, 1)? {
                    Some(a) => Some(a),
                    None => n.ints("axes"),
                };
                let mut axes: Vec<i64> =
                    axes.unwrap_or_default().iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
                axes.sort_unstable();
                match self.cur {
                    Cur::Spatial { h: 1, w: 1, order: Order::Nchw, .. } if axes == [2, 3] => self.flatten(n)?,
                    _ => {
                        return Err(n.err(format!(
                            "only squeezing the 1x1 spatial axes [2, 3] of an NCHW tensor is supported (axes {axes:?}, shape {:?})",
                            self.dims()
                        )))
                    }
                }
            }
            "Transpose" => {
                let rank = self.dims().len();
                let perm = n.ints("perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
                let identity: Vec<i64> = (0..rank as i64).collect();
                match (self.cur, perm.as_slice()) {
                    (_, p) if p == identity.as_slice() => {}
                    (Cur::Spatial { h, w, c, order: Order::Nhwc }, [0, 3, 1, 2]) => {
                        self.cur = Cur::Spatial { h, w, c, order: Order::Nchw }
                    }
                    (Cur::Spatial { h, w, c, order: Order::Nchw }, [0, 2, 3, 1]) => {
                        self.cur = Cur::Spatial { h, w, c, order: Order::Nhwc }
                    }
                    _ => {
                        return Err(n.err(format!(
                            "perm {perm:?} on shape {:?}: only NHWC <-> NCHW conversions are supported",
                            self.dims()
                        )))
                    }
                }
                self.foldable = None;
            }
            "Softmax" | "LogSoftmax" => {
                self.flat(n)?;
                let axis = n.int("axis", if self.opset >= 13 { -1 } else { 1 });
                if axis != 1 && axis != -1 {
                    return Err(n.err(format!("axis {axis} is not supported (only the class axis 1 / -1)")));
                }
                self.output = if n.op() == "Softmax" { OutputTransform::Softmax } else { OutputTransform::LogSoftmax };
                self.notes.push(format!("dropped the final {} `{}` (the network outputs logits)", n.op(), n.label));
            }
            _ => return Err(OnnxError::UnsupportedOp { op: op_label(n.pb), node: n.label.clone() }),
        }
        Ok(())
    }

    fn clip(&mut self, n: &Node) -> Result<(), OnnxError> {
        let (lo, hi) = if n.attr("min").is_some() || n.attr("max").is_some() {
            (n.float("min").unwrap_or(f32::NEG_INFINITY), n.float("max").unwrap_or(f32::INFINITY))
        } else {
            (self.scalar(n, 1)?.unwrap_or(f32::NEG_INFINITY), self.scalar(n, 2)?.unwrap_or(f32::INFINITY))
        };
        let l = if lo == 0.0 && hi >= f32::MAX {
            LayerSpec::Relu
        } else if lo == 0.0 && hi == 6.0 {
            LayerSpec::Relu6
        } else {
            return Err(n.err(format!("Clip(min {lo}, max {hi}) is neither ReLU (0, inf) nor ReLU6 (0, 6)")));
        };
        self.push(n, l, LayerParams::default())
    }

    fn conv(&mut self, n: &Node) -> Result<(), OnnxError> {
        let [h, w, c] = self.nchw(n)?;
        let (wd, wv) = self.cf32_req(n, 1, "W")?;
        if wd.len() != 4 {
            return Err(n.err(format!("weight dims {wd:?}: only 2-D convolutions are supported")));
        }
        let [o, ipg, kh, kw] = [wd[0] as usize, wd[1] as usize, wd[2] as usize, wd[3] as usize];
        n.check_dilations()?;
        if let Some(ks) = n.ints("kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(n.err(format!("kernel_shape {ks:?} does not match the weight dims {wd:?}")));
            }
        }
        let stride = n.pair("strides", Some([1, 1]))?;
        let padding = n.pads([h, w], [kh, kw], stride)?;
        let bias = match self.cf32(n, 2)? {
            None => vec![0.0; o],
            Some((_, b)) if b.len() == o => b,
            Some((d, _)) => return Err(n.err(format!("bias dims {d:?}, expected [{o}]"))),
        };
        let group = n.int("group", 1);
        if group == 1 {
            if ipg != c {
                return Err(n.err(format!("weight dims {wd:?} expect {ipg} input channels, the input has {c}")));
            }
            let mut wt = vec![0.0f32; wv.len()];
            for oc in 0..o {
                for ci in 0..c {
                    for y in 0..kh {
                        for x in 0..kw {
                            wt[((oc * kh + y) * kw + x) * c + ci] = wv[((oc * c + ci) * kh + y) * kw + x];
                        }
                    }
                }
            }
            let l = LayerSpec::Conv2d { filters: o, kernel: [kh, kw], stride, padding };
            self.push(n, l, LayerParams { weights: wt, bias })
        } else if group as usize == c && ipg == 1 && o == c {
            let mut wt = vec![0.0f32; wv.len()];
            for ch in 0..c {
                for y in 0..kh {
                    for x in 0..kw {
                        wt[(y * kw + x) * c + ch] = wv[(ch * kh + y) * kw + x];
                    }
                }
            }
            let l = LayerSpec::DepthwiseConv2d { kernel: [kh, kw], stride, padding };
            self.push(n, l, LayerParams { weights: wt, bias })
        } else {
            Err(n.err(format!(
                "grouped convolution (group {group}, {c} input channels, {o} outputs): only group 1 and depthwise \
                 (group = input channels = output channels) are supported"
            )))
        }
    }

    fn pool(&mut self, n: &Node) -> Result<(), OnnxError> {
        let [h, w, _] = self.nchw(n)?;
        let kernel = n.pair("kernel_shape", None)?;
        let stride = n.pair("strides", Some([1, 1]))?;
        n.check_dilations()?;
        let pads = n.pads([h, w], kernel, stride)?;
        if pads != [0; 4] {
            return Err(n.err(format!("padded pooling (pads {pads:?}) is not supported")));
        }
        if n.int("ceil_mode", 0) != 0
            && !(h.saturating_sub(kernel[0]).is_multiple_of(stride[0])
                && w.saturating_sub(kernel[1]).is_multiple_of(stride[1]))
        {
            return Err(n.err("ceil_mode = 1 changes the output size here (only floor rounding is supported)"));
        }
        let l = if n.op() == "MaxPool" {
            LayerSpec::MaxPool2d { kernel, stride }
        } else {
            LayerSpec::AvgPool2d { kernel, stride }
        };
        self.push(n, l, LayerParams::default())
    }

    fn batchnorm(&mut self, n: &Node) -> Result<(), OnnxError> {
        let li = self.foldable.ok_or_else(|| {
            n.err("BatchNormalization must directly follow a Conv, Gemm or MatMul so it can be folded into it")
        })?;
        if n.int("training_mode", 0) != 0 {
            return Err(n.err("training_mode = 1 is not supported"));
        }
        if n.int("spatial", 1) != 1 {
            return Err(n.err("spatial = 0 is not supported"));
        }
        let c = self.channels();
        let get = |i: usize, what: &str| -> Result<Vec<f32>, OnnxError> {
            let (d, v) = self.cf32_req(n, i, what)?;
            if v.len() != c {
                return Err(n.err(format!("{what} has dims {d:?}, expected [{c}]")));
            }
            Ok(v)
        };
        let gamma = get(1, "scale")?;
        let beta = get(2, "B")?;
        let mean = get(3, "mean")?;
        let var = get(4, "var")?;
        let eps = n.float("epsilon").unwrap_or(1e-5) as f64;
        let scale: Vec<f32> =
            gamma.iter().zip(&var).map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32).collect();
        let shift: Vec<f32> =
            beta.iter().zip(&mean).zip(&scale).map(|((&b, &m), &s)| (b as f64 - m as f64 * s as f64) as f32).collect();
        self.fold(li, &scale, &shift);
        self.notes.push(format!("folded BatchNormalization `{}` into layer {li} ({})", n.label, self.layers[li]));
        Ok(())
    }

    fn gemm(&mut self, n: &Node) -> Result<(), OnnxError> {
        let len = self.flat(n)?;
        if n.int("transA", 0) != 0 {
            return Err(n.err("transA = 1 is not supported"));
        }
        let trans_b = n.int("transB", 0) != 0;
        let alpha = n.float("alpha").unwrap_or(1.0);
        let beta = n.float("beta").unwrap_or(1.0);
        let (bd, bv) = self.cf32_req(n, 1, "B")?;
        if bd.len() != 2 {
            return Err(n.err(format!("B has dims {bd:?}, expected 2-D")));
        }
        let (units, k) = if trans_b { (bd[0] as usize, bd[1] as usize) } else { (bd[1] as usize, bd[0] as usize) };
        if k != len {
            return Err(n.err(format!("B has dims {bd:?} (transB {}) but the input has {len} features", trans_b as u8)));
        }
        let mut wt = vec![0.0f32; units * k];
        for u in 0..units {
            for j in 0..k {
                wt[u * k + j] = alpha * if trans_b { bv[u * k + j] } else { bv[j * units + u] };
            }
        }
        let bias = match self.cf32(n, 2)? {
            None => vec![0.0; units],
            Some((d, v)) => {
                let ok = d.len() <= 2 && (v.len() == units && d.last() == Some(&(units as i64)) || v.len() == 1);
                if !ok {
                    return Err(n.err(format!("C has dims {d:?}, expected [{units}] or a scalar")));
                }
                (0..units).map(|u| beta * v[if v.len() == 1 { 0 } else { u }]).collect()
            }
        };
        self.dense(n, wt, bias, units)
    }

    fn reshape(&mut self, n: &Node) -> Result<(), OnnxError> {
        let shape = self.ci64(n, 1)?.ok_or_else(|| n.err("missing input 1 (shape)"))?;
        let allow_zero = n.int("allowzero", 0) != 0;
        let in_dims = self.dims();
        let total: usize = in_dims.iter().product();
        let mut out = Vec::with_capacity(shape.len());
        let mut infer = None;
        for (i, &s) in shape.iter().enumerate() {
            out.push(match s {
                0 if !allow_zero => *in_dims.get(i).ok_or_else(|| n.err(format!("shape {shape:?}: 0 at axis {i}")))?,
                -1 if infer.is_none() => {
                    infer = Some(i);
                    1
                }
                s if s > 0 => s as usize,
                _ => return Err(n.err(format!("invalid shape {shape:?}"))),
            });
        }
        let known: usize = out.iter().product();
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(n.err(format!("cannot reshape {in_dims:?} to {shape:?}")));
            }
            out[i] = total / known;
        }
        if out.iter().product::<usize>() != total {
            return Err(n.err(format!("cannot reshape {in_dims:?} to {shape:?}")));
        }
        if out == in_dims {
            return Ok(());
        }
        let b = self.batch;
        match (self.cur, out.as_slice()) {
            (_, [ob, _]) if *ob == b => self.flatten(n),
            (Cur::Flat { len }, [ob, c, 1, 1]) if *ob == b && *c == len && self.pending_perm.is_none() => {
                self.cur = Cur::Spatial { h: 1, w: 1, c: len, order: Order::Nchw };
                self.foldable = None;
                Ok(())
            }
            (Cur::Flat { len }, [ob, 1, 1, c]) if *ob == b && *c == len && self.pending_perm.is_none() => {
                self.cur = Cur::Spatial { h: 1, w: 1, c: len, order: Order::Nhwc };
                self.foldable = None;
                Ok(())
            }
            _ => Err(n.err(format!("Reshape from {in_dims:?} to {out:?} is not a flatten to [N, -1]"))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Import: the graph walk

struct Input {
    name: String,
    dims: Vec<Option<usize>>,
}

fn graph_input(graph: &pb::GraphProto, consts: &Consts) -> Result<Input, OnnxError> {
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
/// layers (see the [module docs](self)); unless `opts.skip_verify`, the same bytes are then
/// loaded, optimised and run by tract-onnx on three probe images, and the network's outputs
/// (after [`Imported::output`]) must match within [`VERIFY_TOLERANCE`] relative to the
/// output scale, else [`OnnxError::Mismatch`]. A file tract-onnx cannot load is an
/// [`OnnxError::Tract`].
pub fn import_onnx_with(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, OnnxError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let opset =
        model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(0, |o| o.version);
    if !graph.sparse_initializer.is_empty() {
        return Err(OnnxError::Graph("sparse initializers are not supported".into()));
    }
    // Unsupported ops first: the most useful error for foreign models.
    for (idx, n) in graph.node.iter().enumerate() {
        if !is_default_domain(n) || !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
            return Err(OnnxError::UnsupportedOp { op: op_label(n), node: node_label(n, idx) });
        }
    }
    let mut consts: Consts = graph.initializer.iter().map(|t| (t.name.clone(), Cow::Borrowed(t))).collect();
    let folded = fold_constants(graph, &mut consts)?;
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
    let chain = build_chain(graph, &consts, &folded, &input.name, &output)?;

    // Input layout and shape.
    let dims = &input.dims;
    let batch = dims.first().copied().flatten().unwrap_or(1);
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
                None => square_guess(d),
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
        notes: Vec::new(),
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
    let max_abs_diff = if opts.skip_verify { None } else { Some(verify(bytes, &network, layout, batch, m.output)?) };
    Ok(Imported {
        network,
        input_layout: layout,
        output: m.output,
        opset,
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        notes: m.notes,
        max_abs_diff,
    })
}

// ---------------------------------------------------------------------------------------
// tract-onnx

mod tract_run {
    use tract_onnx::prelude::*;

    /// An optimised tract plan with a fixed input shape.
    pub(super) struct Runner {
        plan: std::sync::Arc<TypedRunnableModel>,
        shape: Vec<usize>,
    }

    impl Runner {
        pub(super) fn load(bytes: &[u8], shape: &[usize]) -> Result<Runner, String> {
            let run = || -> TractResult<std::sync::Arc<TypedRunnableModel>> {
                tract_onnx::onnx()
                    .model_for_read(&mut &bytes[..])?
                    .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?
                    .into_optimized()?
                    .into_runnable()
            };
            Ok(Runner { plan: run().map_err(|e| format!("{e:#}"))?, shape: shape.to_vec() })
        }

        pub(super) fn run(&self, data: &[f32]) -> Result<Vec<f32>, String> {
            let run = || -> TractResult<Vec<f32>> {
                let t = Tensor::from_shape(&self.shape, data)?;
                let out = self.plan.run(tvec!(t.into_tvalue()))?;
                let v = out[0].to_plain_array_view::<f32>()?.iter().copied().collect();
                Ok(v)
            };
            run().map_err(|e| format!("{e:#}"))
        }
    }
}

/// Deterministic probe images in `[0, 1]` on the 8-bit grid: noise, a smooth gradient, and
/// sparse strokes.
fn probe_images(shape: [usize; 3]) -> Tensor {
    let len: usize = shape.iter().product();
    let mut rng = Rng::new(0x0011_ca4e);
    let mut data = Vec::with_capacity(3 * len);
    data.extend((0..len).map(|_| rng.below(256) as f32 / 255.0));
    data.extend((0..len).map(|i| (i * 255 / len.max(1)) as f32 / 255.0));
    data.extend((0..len).map(|_| if rng.below(5) == 0 { rng.below(256) as f32 / 255.0 } else { 0.0 }));
    Tensor::new([3, shape[0], shape[1], shape[2]], data).expect("probe shape")
}

fn verify(
    bytes: &[u8],
    net: &Network,
    layout: InputLayout,
    batch: usize,
    transform: OutputTransform,
) -> Result<f32, OnnxError> {
    let shape = net.input_shape();
    let runner = tract_run::Runner::load(bytes, &layout.shape(batch, shape)).map_err(OnnxError::Tract)?;
    let x = probe_images(shape);
    let ours = net.forward(&x);
    let k = net.classes();
    let mut max_diff = 0.0f32;
    let mut scale = 1.0f32;
    for i in 0..x.n() {
        let one = layout.convert(x.sample(i), shape);
        let data: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        let out = runner.run(&data).map_err(OnnxError::Tract)?;
        if out.len() != batch * k {
            return Err(OnnxError::Tract(format!(
                "the file outputs {} values for a batch of {batch}; the network has {k} classes",
                out.len()
            )));
        }
        let mine = transform.apply(ours.sample(i));
        for (a, b) in out[..k].iter().zip(&mine) {
            let d = (a - b).abs();
            max_diff = if d.is_nan() { f32::INFINITY } else { max_diff.max(d) };
            scale = scale.max(a.abs());
        }
    }
    let tolerance = VERIFY_TOLERANCE * scale;
    if max_diff > tolerance {
        return Err(OnnxError::Mismatch { max_abs_diff: max_diff, tolerance });
    }
    Ok(max_diff)
}

/// Runs an ONNX file through tract-onnx (optimised plan) on an NHWC batch `x`, converting
/// each image to `layout` (e.g. [`InputLayout::Nchw`] for [`export_onnx`] files) and
/// running one image at a time (or the file's fixed batch size, repeating the image).
/// Returns the file's first output per image as `[n, 1, 1, k]`.
pub fn tract_forward(bytes: &[u8], layout: InputLayout, x: &Tensor) -> Result<Tensor, OnnxError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let consts: Consts = graph.initializer.iter().map(|t| (t.name.clone(), Cow::Borrowed(t))).collect();
    let batch = graph_input(graph, &consts)?.dims.first().copied().flatten().unwrap_or(1);
    let shape = x.sample_shape();
    let runner = tract_run::Runner::load(bytes, &layout.shape(batch, shape)).map_err(OnnxError::Tract)?;
    let mut out = Vec::new();
    let mut k = 0;
    for i in 0..x.n() {
        let one = layout.convert(x.sample(i), shape);
        let data: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        let y = runner.run(&data).map_err(OnnxError::Tract)?;
        k = y.len() / batch;
        out.extend_from_slice(&y[..k]);
    }
    Ok(Tensor::new([x.n(), 1, 1, k], out).expect("consistent output lengths"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny exported model whose graph input is replaced by one with `dims`.
    fn with_input_dims(dims: &[Option<usize>]) -> Vec<u8> {
        let spec = ArchSpec::from_compact("flatten,dense2", [2, 2, 1], 2).unwrap();
        let bytes = export_onnx(&Network::new(spec, 1).unwrap()).unwrap();
        let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
        m.graph.as_mut().unwrap().input[0] = value_info("input", dims);
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
}

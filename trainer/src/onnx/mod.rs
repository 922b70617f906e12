//! ONNX interchange for float networks.
//!
//! - [`export_onnx`] writes a standard ONNX model (opset 13) of a [`Network`](crate::nn::Network) as PyTorch would
//!   export it: input `"input"` of shape `[N, C, H, W]` (NCHW, float32, `N` symbolic), output
//!   `"logits"` of shape `[N, classes]`.
//! - [`import_onnx`] / [`import_onnx_with`] / [`import_onnx_file`] read a float classifier
//!   written by a common exporter (PyTorch `torch.onnx.export` with the TorchScript or the
//!   dynamo exporter, Keras through tf2onnx, skl2onnx MLP classifiers) back into a
//!   [`Network`](crate::nn::Network), and check the result against tract-onnx running the same file.
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
//! Before the walk, the file is rewritten the way the common exporters need (`import/prepass.rs`):
//! - external data (PyTorch's default dynamo exporter writes `model.onnx.data`) is read from
//!   [`ImportOptions::external_data_dir`] ([`import_onnx_file`] sets it to the model's
//!   directory), every location, offset and length checked against the file and
//!   [`MAX_EXTERNAL_BYTES`] before anything is allocated;
//! - a classifier's label post-processing is cut so the graph outputs the scores: skl2onnx's
//!   `ArgMax` -> `ai.onnx.ml.ArrayFeatureExtractor` -> `Reshape` -> `Cast` and `ai.onnx.ml.ZipMap`
//!   (two outputs, label and probabilities);
//! - intermediate `value_info` is dropped (dynamo records the symbolic batch there, which tract
//!   cannot unify with a fixed batch);
//! - shape arithmetic from `Shape` to a `Reshape`'s shape (`x.view(x.size(0), -1)`: `Shape` ->
//!   `Gather` / `Squeeze` / `Unsqueeze` / `Concat`) is evaluated into constants; only the batch
//!   entry of an intermediate tensor's shape may be used.
//!
//! The graph must then be a simple chain from the single float input to the single output
//! (constants may come from initializers, `Constant` nodes or `Identity` of a constant).
//! Supported ops ([`SUPPORTED_OPS`], named from the one op table in `import/ops.rs`, one small
//! function per op):
//!
//! | ONNX | becomes |
//! |---|---|
//! | `Conv` (group 1, or depthwise `group = C_in = C_out`; `dilations` 1; explicit `pads` or `auto_pad` NOTSET / VALID / SAME_UPPER / SAME_LOWER) | `Conv2d` / `DepthwiseConv2d` |
//! | `Gemm` (`transA = 0`, `transB` 0 or 1, any `alpha` / `beta`) | `Dense` |
//! | `MatMul` with a constant `[in, out]` matrix, optionally followed by `Add` | `Dense` |
//! | `Add` / `Sub` / `Mul` / `Div` by a constant per-channel (or scalar) value right after a Conv / Gemm / MatMul | folded into its weights and bias |
//! | `Add` / `Sub` / `Mul` / `Div` by a constant per-channel (or scalar) value on the input (in-graph normalisation) | folded into the first layer (see below) |
//! | `Cast` to FLOAT (skl2onnx's first node) | dropped |
//! | `ReduceMean` over the spatial axes of an NCHW tensor (PyTorch's `AdaptiveAvgPool2d(1)`) | `AvgPool2d` over the whole map (then `Flatten` if `keepdims = 0`) |
//! | `Shape`, `Gather`, `Concat`, `Unsqueeze` (and `Squeeze`, `Reshape`, `Cast`) computing a `Reshape` shape | evaluated before the walk |
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
//! Input normalisation: the imported network always takes iocane's input, pixel bytes / 255
//! in `[0, 1]`. A normalisation the model was trained with outside its graph
//! ([`ImportOptions::input_norm`], `iocane import --input-scale/--mean/--std`) and in-graph
//! `Sub` / `Div` / `Mul` / `Add` by constants on the input are composed into one per-channel
//! map ([`ChannelAffine`], reported as [`Imported::input_affine`]) and folded exactly into the
//! first layer with parameters: a Dense, an unpadded convolution, or any convolution when the
//! map has no shift. A shift before a zero-padded convolution cannot be folded exactly (the
//! padding would be shifted too), so the map becomes a 1x1 depthwise layer of its own in front.
//! The tract-onnx cross-check then feeds the file the normalised probe images.
//!
//! Unsupported ops are reported all at once, every node grouped by op
//! ([`OnnxError::UnsupportedOps`]); anything else is an error naming the op and the node or
//! saying what is wrong ([`OnnxError::Unsupported`], [`OnnxError::NotAChain`], ...). Unless
//! [`ImportOptions::skip_verify`] is set, the file is then loaded and run by tract-onnx on
//! three probe images and the imported network's outputs must match it (see
//! [`OnnxError::Mismatch`]); tract runs the file as rewritten by the pre-pass above, so the
//! check covers exactly the graph that was mapped.

//!
//! # Layout
//! - [`build`]: protobuf builders (tensors, attributes, value infos, nodes), public so that
//!   tests and tools can write files the way other exporters do;
//! - `proto`: protobuf readers for import;
//! - `export`: [`export_onnx`];
//! - `import`: the graph walk and the chain mapper; `import/ops.rs` holds the op table,
//!   `import/prepass.rs` the rewrites before the walk;
//! - `verify`: the tract-onnx cross-check and [`tract_forward`].

use thiserror::Error;

use crate::nn::NnError;

pub mod build;
mod export;
mod import;
mod proto;
mod verify;

pub use export::export_onnx;
pub use import::{
    import_onnx, import_onnx_file, import_onnx_with, ChannelAffine, ImportOptions, Imported, InputLayout, InputNorm,
    OutputTransform, MAX_EXTERNAL_BYTES,
};
pub use verify::tract_forward;

/// ONNX opset version written by [`export_onnx`].
pub const EXPORT_OPSET: i64 = 13;

/// ONNX IR version written by [`export_onnx`] (the one that goes with opset 13).
pub const EXPORT_IR_VERSION: i64 = 7;

/// Op types (default ONNX domain) that [`import_onnx`] maps; any other op is reported in an
/// [`OnnxError::UnsupportedOps`].
pub const SUPPORTED_OPS: [&str; import::ops::COUNT] = import::ops::names();

/// Relative tolerance of the tract-onnx cross-check in [`import_onnx_with`]: the largest
/// absolute difference must not exceed `VERIFY_TOLERANCE * max(1, max |tract output|)`.
pub const VERIFY_TOLERANCE: f32 = 1e-4;

/// Errors of ONNX export and import.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OnnxError {
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// Nodes use ops the importer does not support: every such node, grouped by op in the
    /// order the ops first appear.
    #[error(
        "unsupported ONNX ops: {} (supported: {})",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        SUPPORTED_OPS.join(", ")
    )]
    UnsupportedOps(Vec<UnsupportedNodes>),
    /// The model file could not be read.
    #[error("reading {0}")]
    Io(String),
    /// External data (weights stored beside the file) could not be read.
    #[error("external data: {0}")]
    ExternalData(String),
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

/// The nodes of one unsupported op, for [`OnnxError::UnsupportedOps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedNodes {
    /// The op type (prefixed with its domain if not the default one).
    pub op: String,
    /// The node names (or `#<index> (output `...`)` for unnamed nodes), in graph order.
    pub nodes: Vec<String>,
}

impl std::fmt::Display for UnsupportedNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.nodes.iter().map(|n| format!("`{n}`")).collect();
        let s = if self.nodes.len() == 1 { "" } else { "s" };
        write!(f, "`{}` in {} node{s} {}", self.op, self.nodes.len(), names.join(", "))
    }
}

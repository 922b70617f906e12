//! The float neural-network core: tensors, layer specs, layers with forward/backward
//! passes, the [`Network`] container with its (deterministically parallel) training entry
//! point, optimizers with LR schedules, the adversarial attacks used for training, and
//! interval bound propagation ([`ibp`]) and CROWN-IBP ([`crown_ibp`]) for certified
//! training, and the learned
//! representation (the input of the last layer) with input optimisation towards a target
//! representation ([`represent`]).
//!
//! # Conventions (shared with the int8 exporter and runtime)
//! - Layout is NHWC: a batch is a [`Tensor`] with `shape = [n, h, w, c]`; dense outputs are
//!   `[n, 1, 1, k]`. Input pixels are `byte / 255` in `[0, 1]`.
//! - `Conv2d` weights are OHWI (`[out_c][kh][kw][in_c]`) plus `bias[out_c]`;
//!   `DepthwiseConv2d` (channel multiplier 1) weights are `[kh][kw][c]` plus `bias[c]`;
//!   `Dense` weights are `[out][in]` plus `bias[out]`, where `in` indexes the NHWC-flattened
//!   input `((y * w + x) * c + ch)`.
//! - Padding is zero padding given as `[top, left, bottom, right]`; output size is
//!   `floor((in + pads - k) / stride) + 1`. Pools have no padding; `AvgPool2d` divides by
//!   `kh * kw`. `Flatten` is a no-op on NHWC data (`[n,h,w,c] -> [n,1,1,h*w*c]`).
//! - `Relu` / `Relu6` are separate layers (a quantizer fuses them into the preceding
//!   Conv/Dense). Walk a model with [`Network::layers`] and [`Network::layer_params`].
//!
//! # Determinism
//! Batched passes are split into fixed-size chunks of [`Network::chunk_size`] samples (a
//! function of the architecture only, see [`chunk_size_for`], never of the thread count);
//! chunks run in parallel with rayon and their results are combined in chunk order, so
//! every result is bit-identical whatever `RAYON_NUM_THREADS` is.

pub mod attack;
mod conv;
pub mod crown_ibp;
mod engine;
pub mod fakequant;
mod gemm;
pub mod ibp;
pub mod layers;
mod network;
mod optim;
pub mod represent;
mod spec;
mod tensor;
pub mod trades;

pub use fakequant::FakeQuant;
pub use ibp::{linf_box, IbpLossGrads};
pub use network::{chunk_size_for, Grads, LayerParams, LossGrads, Network, Params, Want};
pub use optim::{LrSchedule, NamedBuffer, Optimizer, OptimizerConfig, OptimizerState};
pub use spec::{ArchSpec, LayerSpec, MAX_ACTIVATION, MAX_MACS, MAX_PARAMS, PRESETS};
pub use tensor::Tensor;
pub use trades::TradesLossGrads;

use thiserror::Error;

/// Errors from building, parsing or validating networks and their inputs.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NnError {
    /// An architecture is structurally invalid (bad shapes, kernel too large, ...).
    #[error("invalid architecture: {0}")]
    InvalidArch(String),
    /// A layer in an architecture is invalid; `index` is 0-based.
    #[error("layer {index} ({layer}): {msg}")]
    InvalidLayer {
        /// 0-based index of the offending layer.
        index: usize,
        /// The layer in compact notation.
        layer: String,
        /// What is wrong.
        msg: String,
    },
    /// The compact architecture text could not be parsed.
    #[error("cannot parse layer {index} `{token}`: {msg}")]
    Parse {
        /// 0-based position of the token in the comma-separated list.
        index: usize,
        /// The offending token.
        token: String,
        /// What is wrong.
        msg: String,
    },
    /// An unknown preset name.
    #[error("unknown preset `{0}` (known: mlp, cnn-s, cnn-m, dwcnn)")]
    UnknownPreset(String),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(String),
    /// A tensor or parameter buffer has the wrong shape or length.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A label is out of range.
    #[error("label {label} at sample {index} is out of range for {classes} classes")]
    Label {
        /// Sample index within the batch.
        index: usize,
        /// The label found.
        label: usize,
        /// Number of classes of the network.
        classes: usize,
    },
    /// Optimizer state does not match the optimizer or the parameters.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
}

impl From<serde_json::Error> for NnError {
    fn from(e: serde_json::Error) -> Self {
        NnError::Json(e.to_string())
    }
}

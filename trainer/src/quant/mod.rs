//! Quantization: from a float [`Network`](crate::nn::Network) to the runtime's int8 contract.
//!
//! [`quantize()`] turns a trained float network and a calibration set into an int8
//! [`ModelRepr`](iocane_runtime::emit::ModelRepr) (per-channel symmetric weights, per-tensor
//! asymmetric activations, requantization multipliers from the runtime's own
//! [`iocane_runtime::quant`]); [`fake_quant_weights`] is the quantization-aware-training view of
//! the same weight rule; [`export`] writes the resulting blob as the firmware files (the blob, a
//! Rust module and a C header).

pub mod export;
mod quantize;

pub use quantize::*;

//! The trainer's integration tests, one binary with a module per area.

mod common;
mod crown_ibp;
mod data;
mod ibp;
mod nn;
#[cfg(feature = "onnx")]
mod onnx;
mod quantize;
mod select;
mod train;

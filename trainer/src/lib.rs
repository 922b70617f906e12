//! iocane-trainer: the host-side half of iocane, one module per job.
//!
//! - [`data`]: IDX readers and the datasets iocane trains on (`mnist-small`, Fashion-MNIST, any IDX folder).
//! - [`nn`]: float layers with forward, backward and input gradients (the runtime's op set),
//!   interval bound propagation ([`nn::ibp`]) and attacks ([`nn::attack`]).
//! - [`train`]: natural / FGSM / PGD adversarial and IBP certified training with curriculum,
//!   evaluation (clean, PGD, IBP-verified), resume, and float checkpoints
//!   ([`train::checkpoint`], safetensors, atomic writes).
//! - [`quant`]: post-training quantization to the runtime's int8 contract, QAT's fake-quant,
//!   and the firmware files ([`quant::export`]).
//! - `onnx` (feature `onnx`, on by default): ONNX import and export of float networks,
//!   cross-checked with tract-onnx. Without it the crate does not depend on tract.
//! - [`rng`]: the deterministic random number generator every other module draws from.
#![deny(missing_docs)]

pub mod data;
pub mod nn;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod quant;
pub mod rng;
pub mod train;

/// The checkpoint module at its former path ([`train::checkpoint`]), kept for the callers
/// outside this crate that name it there.
pub use train::checkpoint;

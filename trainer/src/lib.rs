//! iocane-trainer: the host-side half of iocane.
//!
//! - [`data`]: IDX readers and the datasets iocane trains on (`mnist-small`, Fashion-MNIST, any IDX folder).
//! - [`nn`]: float layers with forward, backward and input gradients (the runtime's op set),
//!   and interval bound propagation ([`nn::ibp`]).
//! - [`train`]: natural / FGSM / PGD adversarial and IBP certified training with curriculum,
//!   evaluation (clean, PGD, IBP-verified), resume.
//! - [`checkpoint`]: float checkpoints (safetensors), atomic writes.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod export;
pub mod nn;
pub mod onnx;
pub mod quantize;
pub mod rng;
pub mod train;

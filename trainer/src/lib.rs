//! iocane-trainer: the host-side half of iocane.
//!
//! - [`data`]: IDX readers and the datasets iocane trains on (`mnist-small`, Fashion-MNIST, any IDX folder).
//! - [`nn`]: float layers with forward, backward and input gradients (the runtime's op set).
//! - [`train`]: natural / FGSM / PGD training with curriculum, evaluation, resume.
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

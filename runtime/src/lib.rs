//! # iocane-runtime
//!
//! `no_std`, heap-free int8 inference for small image classifiers, from a zero-copy model
//! blob (in flash, `include_bytes!`, anywhere) and an arena the caller provides.
//!
//! The crate is small and layered:
//!
//! - [`quant`]: the one int8 arithmetic — pixel mapping, requantization with its rounding
//!   rule, saturation, average pooling's rounding, argmax tie-breaking. The trainer and the
//!   certifier call these same functions; `docs/quantization.md` states the contract.
//! - [`format`](mod@format): the blob layout and [`Model::parse`], which validates everything once
//!   (magic, version, CRC-32, section table, every layer, every offset, overflow-freedom of
//!   the int32 accumulators, and the exact arena size). `docs/format.md` documents each byte.
//! - [`geometry`]: the output-size formula and the receptive-field walk of windowed ops.
//! - [`kernels`]: Dense, Conv2d, DepthwiseConv2d, MaxPool2d, AvgPool2d on NHWC tensors,
//!   with plain i64 reference versions (host only) that the tests compare them with.
//! - [`Model::run`]: the layer loop over a ping-pong arena whose exact size is in the
//!   header. After `parse` succeeds, `run` can only fail on the caller's buffer sizes.
//! - `emit` (feature `std`): the host-side builder, the inverse of `parse`.
//! - [`rng`]: SplitMix64, the tiny integer generator the host tools draw from.
//! - `testing` (feature `testing`): synthetic models with random weights, for tests, benches
//!   and fuzz seeds only.
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use iocane_runtime::{Model, emit::{ModelRepr, LayerRepr}, Shape, OpKind};
//! // A 2x2 single-channel "model": flatten, then a Dense layer to 2 logits.
//! let input = Shape::new(2, 2, 1);
//! let dense = LayerRepr {
//!     op: OpKind::Dense, input: Shape::new(1, 1, 4), output: Shape::new(1, 1, 2),
//!     in_zero_point: -128, out_zero_point: 0, clamp: (0, 0), logits: true,
//!     weights: vec![1, 1, 0, 0, 0, 0, 1, 1], bias: vec![0, 0],
//!     multiplier: vec![1 << 30; 2], shift: vec![1; 2], weight_scale: vec![1.0; 2], out_scale: 1.0,
//!     ..LayerRepr::flatten(input, -128)
//! };
//! let blob = ModelRepr { input, classes: 2, labels: vec![], metadata: vec![],
//!     layers: vec![LayerRepr::flatten(input, -128), dense] }.emit();
//! let model = Model::parse(&blob).unwrap();
//! let mut arena = vec![0u8; model.arena_size()];
//! let mut logits = [0i32; 2];
//! let class = model.run(&[0, 0, 200, 255], &mut arena, &mut logits).unwrap();
//! assert_eq!((class, logits), (1, [0, 455]));
//! # }
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "std")]
mod batch;
#[cfg(feature = "std")]
pub mod emit;
pub mod format;
pub mod geometry;
#[cfg(feature = "std")]
mod incremental;
pub mod kernels;
mod model;
pub mod quant;
pub mod rng;
#[cfg(feature = "testing")]
pub mod testing;

pub use format::{FormatError, Layer, LayerFault, Model, OpKind, Shape};
#[cfg(feature = "std")]
pub use incremental::Incremental;
pub use model::{window, Prediction, RunError};

//! # iocane-certify
//!
//! The release gate for iocane models: it judges the exact int8 model that ships, never a
//! float approximation of it.
//!
//! - [`ibp`]: sound interval bound propagation through the integer arithmetic of
//!   `iocane_runtime::quant`, and per-sample certification against an L-infinity ball of `k`
//!   pixel levels (`k/255`).
//! - [`crown`]: linear-relaxation (CROWN / DeepPoly) bounds through the same integer
//!   arithmetic, back-substituted to the input pixels; never looser than [`ibp`].
//! - [`twin`]: the dequantized float twin of an int8 model, used only as a source of
//!   straight-through gradients for the attacks.
//! - [`attack`]: FGSM, PGD, APGD (CE, DLR, targeted DLR), the Square Attack, random sampling
//!   and an integer-aware coordinate search, all searching valid u8 images inside the ball and
//!   all judged by running `iocane-runtime` on the candidate; the `fast` and `standard` suites.
//! - [`compare`]: the float-vs-int8 differential (`--compare-float`): the twin's float
//!   verdicts beside the gate's int8 ones, per sample.
//! - [`gate`]: the release gate over a dataset (sharded, parallel, deterministic).
//! - [`report`]: report.json, junit.xml, summary.md, curve.svg and counterexamples.
//! - [`gallery`]: `gallery.png`, the broken samples' clean, adversarial and difference images,
//!   drawn on a captioned picture [`gallery::Canvas`] that `iocane study` reuses.
//! - [`plot`]: generic SVG line-chart panels and grouped bar charts (`iocane study`).
//! - `proptest` (feature `proptest`): strategies over L-infinity balls (`linf_ball`,
//!   `dataset_images`) and robustness assertions (`assert_robust`, `prop_robust!`) for
//!   property tests of a user's own exported model.
#![deny(missing_docs)]

pub mod attack;
pub mod compare;
pub mod crown;
pub mod gallery;
pub mod gate;
pub mod ibp;
pub mod plot;
#[cfg(feature = "proptest")]
pub mod proptest;
pub mod report;
pub mod twin;

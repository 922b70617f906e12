//! # iocane
//!
//! Train small image classifiers adversarially, ship them as int8 to microcontrollers, and
//! certify their robustness on the exact integer model that ships.
//!
//! This crate is the `iocane` command-line tool and a thin facade over the workspace:
//! - [`runtime`]: `no_std`, heap-free int8 inference (the code that runs on the device);
//! - [`trainer`]: datasets, natural / FGSM / PGD training, quantization, export;
//! - [`certify`]: attacks and sound interval bounds on the int8 model, the release gate.
#![deny(missing_docs)]

pub use iocane_certify as certify;
pub use iocane_runtime as runtime;
pub use iocane_trainer as trainer;

pub mod cli;

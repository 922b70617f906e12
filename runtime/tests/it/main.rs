//! The runtime's integration tests, one binary with a module per area.

mod format;
mod kernels;
mod quant;

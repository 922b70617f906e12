//! The certifier's integration tests, one binary with a module per area.

mod soundness;

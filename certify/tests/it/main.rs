//! The certifier's integration tests, one binary with a module per area.

mod attacks;
mod bounds;
mod common;
mod crown;

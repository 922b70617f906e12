//! Puts the target's memory map on the linker search path as `memory.x` (cortex-m-rt's and
//! riscv-rt's `link.x` include it) and points the firmware at its fixtures:
//! `IOCANE_PARITY_FIXTURES` (a directory written by `runtime/examples/parity_fixtures.rs`,
//! default `generated/`).
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let memory = match target.as_str() {
        "thumbv7em-none-eabihf" => "memory-mps2-an386.x",
        "thumbv6m-none-eabi" => "memory-microbit.x",
        "riscv32imc-unknown-none-elf" => "memory-riscv-virt.x",
        other => panic!(
            "no memory map for target {other} (thumbv7em-none-eabihf, thumbv6m-none-eabi, riscv32imc-unknown-none-elf)"
        ),
    };
    std::fs::copy(memory, out.join("memory.x")).expect("copy the memory map");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={memory}");
    println!("cargo:rerun-if-env-changed=IOCANE_PARITY_FIXTURES");
    let dir = std::env::var("IOCANE_PARITY_FIXTURES").unwrap_or_else(|_| "generated".into());
    let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| PathBuf::from(&dir));
    let fixtures = dir.join("fixtures.rs");
    println!("cargo:rerun-if-changed={}", fixtures.display());
    if !Path::new(&fixtures).exists() {
        panic!(
            "{} is missing: run .ci/qemu-parity, or `cargo run -p iocane-runtime --features testing \
             --example parity_fixtures -- firmware/qemu-parity/generated` at the workspace root",
            fixtures.display()
        );
    }
    println!("cargo:rustc-env=IOCANE_PARITY_FIXTURES_RS={}", fixtures.display());
}

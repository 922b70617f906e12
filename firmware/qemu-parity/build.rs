//! Puts `memory.x` on the linker search path (cortex-m-rt's `link.x` includes it) and checks
//! that the fixtures have been generated.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::write(out.join("memory.x"), include_bytes!("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=generated/fixtures.rs");
    if !std::path::Path::new("generated/fixtures.rs").exists() {
        panic!(
            "firmware/qemu-parity/generated/fixtures.rs is missing: run .ci/qemu-parity, or \
             `cargo run -p iocane-runtime --features std --example parity_fixtures -- \
             firmware/qemu-parity/generated` at the workspace root"
        );
    }
}

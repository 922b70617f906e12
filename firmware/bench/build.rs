//! Puts `memory.x` and `bench.x` on the linker search path and points the firmware at the
//! models: `IOCANE_BENCH_MODELS` names a directory with `models.rs` (written by
//! scripts/device/count_instructions.py).
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for f in ["memory.x", "bench.x"] {
        std::fs::copy(f, out.join(f)).expect("copy a linker script");
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-env-changed=IOCANE_BENCH_MODELS");
    let dir = std::env::var("IOCANE_BENCH_MODELS")
        .expect("set IOCANE_BENCH_MODELS to the directory of models.rs (scripts/device/count_instructions.py does)");
    let rs = std::fs::canonicalize(&dir).expect("IOCANE_BENCH_MODELS exists").join("models.rs");
    println!("cargo:rerun-if-changed={}", rs.display());
    println!("cargo:rustc-env=IOCANE_BENCH_MODELS_RS={}", rs.display());
}

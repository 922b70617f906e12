//! Puts `memory.x` on the linker search path (cortex-m-rt's `link.x` includes it) and checks
//! that `model/` holds what `iocane export` and the test-image script write.
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    for f in ["memory.x", "model/model.rs", "model/model.icn", "model/images.bin"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for f in ["model/model.rs", "model/model.icn", "model/images.bin"] {
        if !Path::new(f).exists() {
            panic!(
                "examples/cortex-m4/{f} is missing: run `iocane export RUN --out model` here, and \
                 `python3 ../../scripts/device/test_images.py IDX_IMAGES 4 model` for test images \
                 (see README.md)"
            );
        }
    }
}

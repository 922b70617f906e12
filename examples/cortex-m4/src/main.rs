//! An iocane model on a Cortex-M4: parses the blob that `iocane export` wrote (once, at
//! boot), then classifies the embedded test images with a static arena of exactly
//! `model::ARENA_SIZE` bytes and prints each class, its label and the logits over semihosting.
//! No heap, no `unsafe`. Copy this crate to start a project; see README.md.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprint, hprintln};
use iocane_runtime::Model;
use panic_semihosting as _;

/// Written by `iocane export RUN --out model`: `MODEL` (the blob, 4-byte aligned),
/// `ARENA_SIZE`, `INPUT_LEN`, `NUM_CLASSES`, `LABELS`, ...
#[path = "../model/model.rs"]
#[allow(dead_code)]
mod model;

/// Test images, `model::INPUT_LEN` u8 pixels each (NHWC), concatenated.
static IMAGES: &[u8] = include_bytes!("../model/images.bin");

#[entry]
fn main() -> ! {
    // `static mut` in the entry function: cortex-m-rt hands it out as a safe `&'static mut`.
    // Exactly the size the model header states, in .bss, not on the stack.
    static mut ARENA: [u8; model::ARENA_SIZE] = [0; model::ARENA_SIZE];

    let ok = classify_all(ARENA);
    hprintln!("{}", if ok { "DONE" } else { "FAIL" });
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    // `exit` returns only when no debugger answers semihosting.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Parses the model and classifies every test image; false on any error.
fn classify_all(arena: &mut [u8]) -> bool {
    let model = match Model::parse(model::MODEL) {
        Ok(m) => m,
        Err(e) => {
            hprintln!("FAIL: model does not parse: {}", e);
            return false;
        }
    };
    if IMAGES.is_empty() || !IMAGES.len().is_multiple_of(model::INPUT_LEN) {
        hprintln!("FAIL: images.bin is not a whole number of {}-pixel images", model::INPUT_LEN);
        return false;
    }
    let mut ok = true;
    for (i, image) in IMAGES.chunks_exact(model::INPUT_LEN).enumerate() {
        let mut logits = [0i32; model::NUM_CLASSES];
        match model.run(image, arena, &mut logits) {
            Ok(class) => {
                hprint!("image {}: class {} logits", i, class);
                for v in logits {
                    hprint!(" {}", v);
                }
                hprintln!("\n  label {}", model::LABELS.get(class).unwrap_or(&"?"));
            }
            Err(e) => {
                hprintln!("FAIL: image {}: {}", i, e);
                ok = false;
            }
        }
    }
    ok
}

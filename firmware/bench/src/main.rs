//! Entry points for counting instructions in an emulator (scripts/device/count_instructions.py
//! runs them in unicorn; nothing here needs a board). `iocane_bench_run(i)` parses model `i`
//! and runs it once on its embedded image, calling `iocane_bench_mark(k)` before the run
//! (`k = 0`), after each int8 layer (`k = layer + 1`) and after the logits (`k = 0xFFFF`), so the
//! emulator can attribute the instructions between two marks to one layer.
//! `iocane_bench_calibrate(n)` is a hand-counted loop (`3n + 3` instructions) that validates
//! the counting. `main` is never run.
#![no_std]
#![no_main]

use core::hint::black_box;
use cortex_m_rt::entry;
use iocane_runtime::Model;

mod models {
    include!(env!("IOCANE_BENCH_MODELS_RS"));
}

/// Marks a point of the run; the emulator hooks this address and reads `id` from r0.
#[no_mangle]
#[inline(never)]
pub extern "C" fn iocane_bench_mark(id: u32) {
    black_box(id);
}

/// The number of models (read by the emulator).
#[no_mangle]
pub static iocane_bench_models: u32 = models::MODELS.len() as u32;

/// Parses and runs model `which` once on its image; returns the class, or -1 on any error.
#[no_mangle]
pub extern "C" fn iocane_bench_run(which: u32) -> i32 {
    let Some(&(blob, image)) = models::MODELS.get(which as usize) else {
        return -1;
    };
    let Ok(model) = Model::parse(blob) else {
        return -1;
    };
    let mut arena = [0u8; models::MAX_ARENA];
    let mut logits = [0i32; models::MAX_CLASSES];
    let (Some(arena), Some(logits)) = (arena.get_mut(..model.arena_size()), logits.get_mut(..model.num_classes()))
    else {
        return -1;
    };
    iocane_bench_mark(0);
    let result = model.run_observed(black_box(image), arena, logits, |i, _, _| iocane_bench_mark(i as u32 + 1));
    iocane_bench_mark(0xFFFF);
    black_box(&logits);
    result.map_or(-1, |c| c as i32)
}

// r0 = n >= 1. One instruction before the loop, three per iteration, two after: 3n + 3.
core::arch::global_asm!(
    ".section .text.iocane_bench_calibrate,\"ax\",%progbits",
    ".global iocane_bench_calibrate",
    ".type iocane_bench_calibrate,%function",
    ".thumb_func",
    "iocane_bench_calibrate:",
    "    movs r1, #0",
    "1:  adds r1, r1, r0",
    "    subs r0, r0, #1",
    "    bne 1b",
    "    mov r0, r1",
    "    bx lr",
);

#[entry]
fn main() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

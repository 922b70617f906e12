//! Device side of the parity test: runs every fixture model on every fixture image with the
//! device's kernels (portable Rust) and compares
//! each logit and predicted class with the host's (AVX2) results, bit for bit. Reports over
//! semihosting; exits qemu with `EXIT_SUCCESS` only if everything matched.
//!
//! One source for three cores: Cortex-M4 (thumbv7em-none-eabihf, qemu mps2-an386), Cortex-M0
//! (thumbv6m-none-eabi, qemu microbit) and RV32IMC (riscv32imc-unknown-none-elf, qemu virt).
//! The fixtures come from `runtime/examples/parity_fixtures.rs`, written into the directory
//! `IOCANE_PARITY_FIXTURES` names at build time (default `generated/`; see `README.md`). No
//! heap: the arena and the logits live on the stack.
#![no_std]
#![no_main]

#[cfg(target_arch = "arm")]
use cortex_m_rt::entry;
#[cfg(target_arch = "arm")]
use cortex_m_semihosting::{debug, hprintln};
use iocane_runtime::Model;
#[cfg(target_arch = "arm")]
use panic_semihosting as _;
#[cfg(target_arch = "riscv32")]
use riscv_rt::entry;
#[cfg(target_arch = "riscv32")]
use riscv_semihosting::{debug, hprintln};

/// RISC-V has no panic-semihosting crate: report and exit with failure the same way.
#[cfg(target_arch = "riscv32")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        core::hint::spin_loop();
    }
}

mod fixtures {
    include!(env!("IOCANE_PARITY_FIXTURES_RS"));
}
use fixtures::{Fixture, MAX_ARENA, MAX_CLASSES, MODELS};

/// The core this build runs on, for the report.
const CORE: &str = if cfg!(target_arch = "riscv32") {
    "RV32IMC"
} else if cfg!(target_abi = "eabihf") {
    "Cortex-M4"
} else {
    "Cortex-M0"
};

/// Mismatch details printed at most, over the whole run.
const MAX_REPORTS: usize = 10;

/// FNV-1a over the little-endian bytes of the logits (the generator computes the same).
fn fnv1a(logits: &[i32], mut h: u32) -> u32 {
    for v in logits {
        for b in v.to_le_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

fn rd_i32(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Checks one model; returns the number of mismatched values (logits and classes), or
/// `None` if the fixture could not be run at all (parse failure, size disagreement).
fn check(index: usize, fx: &Fixture, arena: &mut [u8], reports: &mut usize) -> Option<usize> {
    let model = match Model::parse(fx.blob) {
        Ok(m) => m,
        Err(e) => {
            hprintln!("model {} ({}): parse failed: {:?}", index, fx.name, e);
            return None;
        }
    };
    let (n, classes) = (model.input_len(), model.num_classes());
    let count = fx.inputs.len() / n.max(1);
    let sizes_ok = n == fx.input_len
        && classes == fx.classes
        && model.arena_size() == fx.arena
        && model.arena_size() <= arena.len()
        && classes <= MAX_CLASSES
        && fx.inputs.len() == count * n
        && fx.expected.len() == count * classes * 4
        && fx.expected_class.len() == count * 2;
    if !sizes_ok {
        hprintln!(
            "model {} ({}): sizes disagree with the host: input {} (host {}), classes {} (host {}), \
             arena {} (host {}, buffer {})",
            index,
            fx.name,
            n,
            fx.input_len,
            classes,
            fx.classes,
            model.arena_size(),
            fx.arena,
            arena.len()
        );
        return None;
    }
    // Stale arena contents must not matter: start from a pattern the host never had.
    arena.fill(0x5A);
    let mut buf = [0i32; MAX_CLASSES];
    let logits = &mut buf[..classes];
    let mut mismatches = 0;
    let mut checksum = 0x811c_9dc5;
    for (j, img) in fx.inputs.chunks_exact(n).enumerate() {
        let class = match model.run(img, arena, logits) {
            Ok(c) => c,
            Err(e) => {
                hprintln!("model {} ({}) input {}: run failed: {:?}", index, fx.name, j, e);
                return None;
            }
        };
        checksum = fnv1a(logits, checksum);
        let expected = &fx.expected[j * classes * 4..(j + 1) * classes * 4];
        for (k, &got) in logits.iter().enumerate() {
            let want = rd_i32(expected, k);
            if got != want {
                mismatches += 1;
                if *reports < MAX_REPORTS {
                    *reports += 1;
                    hprintln!("MISMATCH model {} input {} logit {}: device {}, host {}", index, j, k, got, want);
                }
            }
        }
        let want = u16::from_le_bytes([fx.expected_class[2 * j], fx.expected_class[2 * j + 1]]) as usize;
        if class != want {
            mismatches += 1;
            if *reports < MAX_REPORTS {
                *reports += 1;
                hprintln!("MISMATCH model {} input {} class: device {}, host {}", index, j, class, want);
            }
        }
    }
    hprintln!(
        "model {} ({}): {} inputs, {} mismatches, checksum {:08x} (host {:08x})",
        index,
        fx.name,
        count,
        mismatches,
        checksum,
        fx.checksum
    );
    Some(mismatches)
}

#[entry]
fn main() -> ! {
    let mut arena = [0u8; MAX_ARENA];
    let mut reports = 0;
    let mut failed = 0;
    for (i, fx) in MODELS.iter().enumerate() {
        match check(i, fx, &mut arena, &mut reports) {
            Some(0) => {}
            _ => failed += 1,
        }
    }
    if MODELS.is_empty() {
        hprintln!("FAIL: no fixture models (regenerate the fixtures)");
        failed = 1;
    }
    if failed == 0 {
        hprintln!("PASS: {} models bit-exact with the host on {}", MODELS.len(), CORE);
        debug::exit(debug::EXIT_SUCCESS);
    } else {
        hprintln!("FAIL: {} of {} models differ from the host or did not run", failed, MODELS.len());
        debug::exit(debug::EXIT_FAILURE);
    }
    // `exit` returns only when not running under a semihosting debugger.
    #[allow(clippy::empty_loop)]
    loop {}
}

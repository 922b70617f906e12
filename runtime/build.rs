//! Selects the kernels for the target: `cfg(iocane_arm_dsp)` on Arm `thumbv7em*` targets
//! (Cortex-M4/M7: the DSP extension's SMLAD and SXTB16 in `kernels/dsp.rs`), unless
//! `IOCANE_PORTABLE_KERNELS` is set at build time (the portable kernels then run, for
//! before/after measurements). Stable Rust does not expose `target_feature = "dsp"` to `cfg`.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(iocane_arm_dsp)");
    println!("cargo:rerun-if-env-changed=IOCANE_PORTABLE_KERNELS");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") && std::env::var_os("IOCANE_PORTABLE_KERNELS").is_none() {
        println!("cargo:rustc-cfg=iocane_arm_dsp");
    }
}

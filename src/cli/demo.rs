//! `iocane demo`: the end-to-end story on the embedded data, in a few minutes on 2 cores.
//! Train a small CNN on mnist-small twice (PGD and IBP), export both to int8, certify both at
//! 4/255 and 0.1.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::certify::{Certified, CertifyArgs};
use super::export::ExportArgs;
use super::train::TrainArgs;
use iocane_certify::report::CertifyReport;

/// Parses a subcommand's flags from `argv` (`argv[0]` is its name) exactly as the CLI does,
/// so each step of the demo is what a user would type, with the CLI's defaults.
fn flags<T: clap::Args>(argv: &[&str]) -> Result<T> {
    let cmd = T::augment_args(clap::Command::new("iocane"));
    let m = cmd.try_get_matches_from(argv)?;
    Ok(T::from_arg_matches(&m)?)
}

/// Flags of `iocane demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the run, the export and the reports.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Test samples certified per radius.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One trained, exported and certified model of the demo.
struct Leg {
    label: &'static str,
    final_eval: Option<iocane_trainer::train::FinalMetrics>,
    export: iocane_trainer::quant::export::Exported,
    reports: Vec<(&'static str, CertifyReport, PathBuf)>,
}

/// Runs the demo: the same `cnn-s` trained two ways (PGD for empirical robustness, IBP for
/// provable robustness), each exported to int8 and certified at 4/255 and 0.1.
pub fn run(d: &DemoArgs) -> Result<u8> {
    let legs = [
        ("PGD", "pgd", "pgd", Some("2"), "PGD-7 at eps 0.1 (2-epoch eps ramp)"),
        ("IBP", "ibp", "ibp", None, "IBP certified training at eps 0.1 (per-step eps and kappa ramp)"),
    ];
    let mut done = Vec::new();
    for (i, (label, dir, method, ramp, what)) in legs.into_iter().enumerate() {
        let leg_dir = d.out.join(dir);
        let run_dir = leg_dir.join("train");
        let export_dir = leg_dir.join("export");
        println!("== {}/6 train: cnn-s, {what}, 1 natural warm-up epoch, mnist-small", 3 * i + 1);
        let epochs = d.epochs.to_string();
        let seed = d.seed.to_string();
        let run = run_dir.to_string_lossy();
        let mut argv = vec!["train", "--arch", "cnn-s", "--method", method, "--eps", "0.1", "--epochs", &epochs];
        argv.extend(["--lr", "3e-3", "--warmup-epochs", "1", "--seed", &seed, "--eval-samples", "500", "--force"]);
        argv.extend(["--out", &run]);
        if let Some(r) = ramp {
            argv.extend(["--ramp-epochs", r]);
        }
        let t = flags::<TrainArgs>(&argv)?;
        let m = super::train::run(&t)?;
        println!("\n== {}/6 export: int8 post-training quantization", 3 * i + 2);
        let export =
            super::export::run(&flags::<ExportArgs>(&["export", &run, "--out", &export_dir.to_string_lossy()])?)?;
        println!(
            "\n== {}/6 certify the int8 model (attacks + interval and linear bounds on the integer arithmetic)",
            3 * i + 3
        );
        let blob = std::fs::read(&export.blob)?;
        let test = iocane_trainer::data::load(&iocane_trainer::data::DatasetSpec::MnistSmall)?.test;
        let mut reports = Vec::new();
        for name in ["4/255", "0.1"] {
            let report_dir = leg_dir.join(format!("certify-{}", name.replace('/', "_")));
            let samples = d.samples.to_string();
            let a: CertifyArgs = flags(&[
                "certify",
                &export.blob.to_string_lossy(),
                "--eps",
                name,
                "--gate",
                "empirical",
                "--samples",
                &samples,
                "--seed",
                &seed,
                "--quiet",
                "--report",
                &report_dir.to_string_lossy(),
            ])?;
            let interrupt = super::interrupt_flag("the demo");
            match super::certify::certify_model(&blob, &export.blob.display().to_string(), &test, &a, &interrupt)? {
                Certified::Done(r) => reports.push((name, *r, report_dir)),
                Certified::Interrupted(msg) => {
                    eprintln!("interrupted: {msg}");
                    return Ok(super::EXIT_INTERRUPTED);
                }
            }
        }
        println!();
        done.push(Leg { label, final_eval: m.final_eval, export, reports });
    }

    println!("\n| model | eps | clean | attacked (upper bound) | certified (lower bound) |");
    println!("|---|---|---|---|---|");
    for leg in &done {
        if let Some(f) = &leg.final_eval {
            println!(
                "| {} float (PGD-20; IBP on floats) | 0.1 | {:.2}% | {:.2}% | {:.2}% |",
                leg.label,
                100.0 * f.clean_acc,
                100.0 * f.robust_acc,
                100.0 * f.ibp_verified_acc
            );
        }
        for (name, r, _) in &leg.reports {
            println!(
                "| {} int8 (k={}) | {} | {:.2}% | {:.2}% | {:.2}% |",
                leg.label,
                r.config.k,
                name,
                100.0 * r.result.clean_acc,
                100.0 * r.result.empirical_acc,
                100.0 * r.result.certified_acc
            );
        }
    }
    println!("\nPGD training resists attacks; IBP training makes that resistance provable on the shipped int8 model.");
    println!("\nfiles:");
    for leg in &done {
        let ex = &leg.export;
        println!(
            "  {} int8 blob     {} ({} bytes flash, {} bytes arena, sha256 {})",
            leg.label,
            ex.blob.display(),
            ex.flash_bytes,
            ex.arena_bytes,
            &ex.sha256[..16]
        );
        if let Some(dir) = ex.blob.parent() {
            println!("  {} firmware      {} and model.h", leg.label, dir.join("model.rs").display());
        }
        for (_, _, dir) in &leg.reports {
            println!("  {} report        {}/summary.md (report.json, junit.xml, curve.svg)", leg.label, dir.display());
        }
    }
    Ok(super::EXIT_OK)
}

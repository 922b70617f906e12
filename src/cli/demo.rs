//! `iocane demo`: the end-to-end story on the embedded data, in a few minutes on 2 cores.
//! Train a small CNN on mnist-small twice (PGD and IBP), export both to int8, certify both at
//! 4/255 and 0.1.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::certify::{CertifyArgs, CertifyCmd};
use super::export::ExportArgs;
use super::train::TrainArgs;
use iocane_certify::gate::GateKind;
use iocane_certify::report::CertifyReport;

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
        ("PGD", "pgd", iocane_trainer::train::Method::Pgd, Some(2), "PGD-7 at eps 0.1 (2-epoch eps ramp)"),
        (
            "IBP",
            "ibp",
            iocane_trainer::train::Method::Ibp,
            None,
            "IBP certified training at eps 0.1 (per-step eps and kappa ramp)",
        ),
    ];
    let mut done = Vec::new();
    for (i, (label, dir, method, ramp, what)) in legs.into_iter().enumerate() {
        let leg_dir = d.out.join(dir);
        let run_dir = leg_dir.join("train");
        let export_dir = leg_dir.join("export");
        println!("== {}/6 train: cnn-s, {what}, 1 natural warm-up epoch, mnist-small", 3 * i + 1);
        let t = TrainArgs {
            dataset: "mnist-small".into(),
            data_dir: None,
            arch: "cnn-s".into(),
            method,
            eps: 0.1,
            steps: 7,
            step_size: None,
            epochs: d.epochs,
            batch_size: 128,
            optimizer: "adam".into(),
            lr: 3e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: "cosine".into(),
            warmup_epochs: 1,
            ramp_epochs: ramp,
            ibp_kappa: iocane_trainer::train::DEFAULT_IBP_KAPPA,
            ibp_train_eps: None,
            seed: d.seed,
            eval_samples: 500,
            eval_steps: 20,
            eval_restarts: 1,
            train_samples: 0,
            out: run_dir.clone(),
            resume: false,
            quiet: false,
            qat: false,
            init: None,
        };
        let m = super::train::run(&t)?;
        println!("\n== {}/6 export: int8 post-training quantization", 3 * i + 2);
        let export = super::export::run(&ExportArgs {
            run: run_dir,
            out: export_dir,
            calib: 1000,
            dataset: None,
            data_dir: None,
        })?;
        println!("\n== {}/6 certify the int8 model (attacks + interval bounds on the integer arithmetic)", 3 * i + 3);
        let mut reports = Vec::new();
        for (name, eps) in [("4/255", 4.0 / 255.0), ("0.1", 0.1f32)] {
            let report_dir = leg_dir.join(format!("certify-{}", name.replace('/', "_")));
            let c = CertifyCmd {
                sub: None,
                args: CertifyArgs {
                    model: Some(export.blob.clone()),
                    dataset: "mnist-small".into(),
                    data_dir: None,
                    eps,
                    threshold: 0.0,
                    gate: GateKind::Empirical,
                    samples: d.samples,
                    seed: d.seed,
                    steps: 40,
                    restarts: 2,
                    step_size: None,
                    square_queries: 500,
                    random: 100,
                    eps_sweep: "0,1,2,4,8".into(),
                    shard: None,
                    strict: false,
                    report: report_dir.clone(),
                    quiet: true,
                },
            };
            super::certify::run(&c)?;
            let r = CertifyReport::read(&report_dir.join("report.json"))?;
            reports.push((name, r, report_dir));
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

//! `iocane demo`: the end-to-end story on the embedded data, in a few minutes on 2 cores.
//! Train a small PGD model on mnist-small, export it to int8, certify it at 4/255 and 0.1.

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

/// Runs the demo.
pub fn run(d: &DemoArgs) -> Result<u8> {
    let run_dir = d.out.join("train");
    let export_dir = d.out.join("export");
    println!("== 1/3 train: cnn-s, PGD-7 at eps 0.1 (1 natural warm-up epoch, 2-epoch eps ramp), mnist-small");
    let t = TrainArgs {
        dataset: "mnist-small".into(),
        data_dir: None,
        arch: "cnn-s".into(),
        method: iocane_trainer::train::Method::Pgd,
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
        ramp_epochs: Some(2),
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
    println!("\n== 2/3 export: int8 post-training quantization");
    let ex = super::export::run(&ExportArgs {
        run: run_dir,
        out: export_dir.clone(),
        calib: 1000,
        dataset: None,
        data_dir: None,
    })?;
    println!("\n== 3/3 certify the int8 model (attacks + interval bounds on the integer arithmetic)");
    let mut rows = Vec::new();
    for (name, eps) in [("4/255", 4.0 / 255.0), ("0.1", 0.1f32)] {
        let report_dir = d.out.join(format!("certify-{}", name.replace('/', "_")));
        let c = CertifyCmd {
            sub: None,
            args: CertifyArgs {
                model: Some(ex.blob.clone()),
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
        rows.push((name, r, report_dir));
    }
    let f = m.final_eval.as_ref();
    println!("\n| model | eps | clean | attacked (upper bound) | certified (lower bound) |");
    println!("|---|---|---|---|---|");
    if let Some(f) = f {
        println!("| float (PGD-20) | 0.1 | {:.2}% | {:.2}% | - |", 100.0 * f.clean_acc, 100.0 * f.robust_acc);
    }
    for (name, r, _) in &rows {
        println!(
            "| int8 (k={}) | {} | {:.2}% | {:.2}% | {:.2}% |",
            r.config.k,
            name,
            100.0 * r.result.clean_acc,
            100.0 * r.result.empirical_acc,
            100.0 * r.result.certified_acc
        );
    }
    println!("\nfiles:");
    println!("  float checkpoint  {}", d.out.join("train/model.ckpt").display());
    println!(
        "  int8 blob         {} ({} bytes flash, {} bytes arena, sha256 {})",
        ex.blob.display(),
        ex.flash_bytes,
        ex.arena_bytes,
        &ex.sha256[..16]
    );
    println!("  firmware          {} and model.h", export_dir.join("model.rs").display());
    for (_, _, dir) in &rows {
        println!("  report            {}/summary.md (report.json, junit.xml, curve.svg)", dir.display());
    }
    Ok(super::EXIT_OK)
}

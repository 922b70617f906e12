//! `iocane certify`: the release gate on the exact int8 model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iocane_certify::gate::{self, GateConfig, GateKind};
use iocane_certify::report::CertifyReport;
use iocane_runtime::Model;

use super::{EXIT_GATE_FAILED, EXIT_OK};

/// `iocane certify MODEL ...` or `iocane certify merge DIR...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CertifyCmd {
    /// `merge`: combine shard reports.
    #[command(subcommand)]
    pub sub: Option<CertifySub>,
    /// The gate's flags.
    #[command(flatten)]
    pub args: CertifyArgs,
}

/// Subcommands of `certify`.
#[derive(Debug, Subcommand)]
pub enum CertifySub {
    /// Merge shard reports (report.json in each DIR) into one report and decide the gate.
    Merge {
        /// Shard report directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output directory of the merged report.
        #[arg(long)]
        report: PathBuf,
    },
}

/// Flags of the gate.
#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The int8 model blob (model.icn).
    #[arg(required = true)]
    pub model: Option<PathBuf>,
    /// Dataset whose test split is evaluated: mnist-small, fashion-mnist, idx:DIR.
    #[arg(long, default_value = "mnist-small")]
    pub dataset: String,
    /// Directory holding Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Radius: decimal (0.1) or levels (4/255); applied as k = floor(eps*255) pixel levels.
    #[arg(long, default_value = "4/255", value_parser = super::train::parse_eps)]
    pub eps: f32,
    /// Minimum accuracy (0..1) the gate requires.
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f32,
    /// Which accuracy the gate checks: certified (proven) or empirical (survives attacks).
    #[arg(long, default_value = "certified")]
    pub gate: GateKind,
    /// Test samples to evaluate (0 = all).
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// PGD steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// PGD restarts.
    #[arg(long, default_value_t = 2)]
    pub restarts: usize,
    /// PGD step size in pixel levels (default max(1, k/4)).
    #[arg(long)]
    pub step_size: Option<f32>,
    /// Square Attack query budget per sample.
    #[arg(long, default_value_t = 500)]
    pub square_queries: usize,
    /// Random samples from the ball per sample.
    #[arg(long, default_value_t = 100)]
    pub random: usize,
    /// Radii for the accuracy curve, e.g. 0,1,2,4,8/255 (levels, "/255" optional).
    #[arg(long, default_value = "0,1,2,4,8/255")]
    pub eps_sweep: String,
    /// Certify only shard I of N (sample i belongs to shard i % N), e.g. 0/4.
    #[arg(long)]
    pub shard: Option<String>,
    /// Fail (exit 1) on protocol warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Report directory.
    #[arg(long, default_value = "certify-report")]
    pub report: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses "0,1,2,4,8/255" into levels.
pub fn parse_sweep(s: &str) -> Result<Vec<u8>> {
    let s = s.trim().trim_end_matches("/255");
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse::<u8>().with_context(|| format!("bad level `{t}` in --eps-sweep (0..=255)")))
        .collect()
}

/// Runs `iocane certify`; returns the exit code.
pub fn run(c: &CertifyCmd) -> Result<u8> {
    if let Some(CertifySub::Merge { dirs, report }) = &c.sub {
        return merge(dirs, report);
    }
    let a = &c.args;
    let model_path = a.model.as_ref().context("missing MODEL")?;
    let bytes = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let model =
        Model::parse(&bytes).with_context(|| format!("{} is not a valid iocane model", model_path.display()))?;
    let splits = super::train::load_dataset(&a.dataset, a.data_dir.clone())?;
    let test = &splits.test;
    if [test.height, test.width, test.channels] != [model.input_shape().h, model.input_shape().w, model.input_shape().c]
    {
        bail!(
            "dataset {} has {}x{}x{} images, the model takes {}",
            a.dataset,
            test.height,
            test.width,
            test.channels,
            model.input_shape()
        );
    }
    let k = (a.eps * 255.0 + 1e-4).floor() as u8;
    let shard = match &a.shard {
        None => (0, 1),
        Some(s) => {
            let (i, n) = s.split_once('/').context("--shard takes I/N, e.g. 0/4")?;
            let (i, n): (usize, usize) = (i.parse().context("--shard I")?, n.parse().context("--shard N")?);
            if n == 0 || i >= n {
                bail!("--shard {s}: need 0 <= I < N");
            }
            (i, n)
        }
    };
    let cfg = GateConfig {
        k,
        sweep: parse_sweep(&a.eps_sweep)?,
        samples: a.samples,
        shard,
        seed: a.seed,
        pgd_steps: a.steps,
        pgd_restarts: a.restarts,
        pgd_step_size: a.step_size,
        square_queries: a.square_queries,
        random_samples: a.random,
        gate: a.gate,
        threshold: a.threshold,
    };
    let n = gate::shard_indices(test.len(), cfg.samples, cfg.shard).len();
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(n as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("certify [{bar:30}] {pos}/{len} samples ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let outcome = gate::run(&model, test, &cfg, &|d| bar.inc(d));
    bar.finish_and_clear();
    let sha = iocane_trainer::quant::export::sha256_hex(&bytes);
    let report = CertifyReport::new(
        &model_path.display().to_string(),
        &sha,
        &test.name,
        &test.sha256_hex(),
        cfg,
        outcome,
        t0.elapsed().as_secs_f64(),
    );
    let s = model.input_shape();
    report.write(&a.report, (s.h, s.w, s.c)).context("writing the report")?;
    finish(&report, &a.report, a.strict, a.quiet)
}

fn finish(report: &CertifyReport, dir: &std::path::Path, strict: bool, quiet: bool) -> Result<u8> {
    if !quiet {
        print!("{}", report.markdown());
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let ok = report.passed && (!strict || report.warnings.is_empty());
    println!(
        "\ngate {}: {:?} accuracy {:.2}% at eps {}/255 (threshold {:.2}%){}; report in {}",
        if ok { "PASSED" } else { "FAILED" },
        report.config.gate,
        100.0 * report.gate_value,
        report.config.k,
        100.0 * report.config.threshold as f64,
        if strict && !report.warnings.is_empty() { ", --strict with protocol warnings" } else { "" },
        dir.display()
    );
    Ok(if ok { EXIT_OK } else { EXIT_GATE_FAILED })
}

fn merge(dirs: &[PathBuf], out: &std::path::Path) -> Result<u8> {
    let reports: Vec<CertifyReport> = dirs
        .iter()
        .map(|d| {
            CertifyReport::read(&d.join("report.json"))
                .with_context(|| format!("reading shard report in {}", d.display()))
        })
        .collect::<Result<_>>()?;
    let first = &reports[0];
    for r in &reports[1..] {
        if r.model_sha256 != first.model_sha256
            || r.dataset_sha256 != first.dataset_sha256
            || r.config.k != first.config.k
        {
            bail!("shard reports disagree on the model, dataset or eps; refusing to merge");
        }
    }
    let outcome = gate::merge(&reports.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>());
    let mut cfg = first.config.clone();
    cfg.shard = (0, 1);
    let seconds = reports.iter().map(|r| r.seconds).sum();
    let merged = CertifyReport::new(
        &first.model_file,
        &first.model_sha256,
        &first.dataset,
        &first.dataset_sha256,
        cfg,
        outcome,
        seconds,
    );
    // Image shape is recovered from any counterexample's length only for PNGs; assume square gray.
    let side = merged.outcome.samples.iter().find_map(|s| s.counterexample.as_ref().map(|c| c.len())).unwrap_or(784);
    let h = (side as f64).sqrt() as usize;
    merged.write(out, (h, side / h.max(1), 1)).context("writing the merged report")?;
    finish(&merged, out, false, false)
}

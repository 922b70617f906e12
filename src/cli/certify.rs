//! `iocane certify`: the release gate on the exact int8 model.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use iocane_certify::attack::suite::{AttackList, AttackSuite, STANDARD_SQUARE_QUERIES};
use iocane_certify::gate::{self, BoundMethod, GateConfig, GateError, GateKind, Radius, Threshold};
use iocane_certify::report::{self, CertifyReport, RunIdentity};
use iocane_runtime::Model;

use super::{EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_OK};

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
    ///
    /// The shards must be one run's disjoint, complete cover (0/N .. N-1/N, each once, same
    /// model, data, eps and settings); otherwise nothing is written and the exit code is 2.
    Merge {
        /// Shard report directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output directory of the merged report.
        #[arg(long)]
        report: PathBuf,
        /// No summary on stdout.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// Which accuracy the gate checks (a clap value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GateArg {
    /// Certified (proven) accuracy: a lower bound on robust accuracy.
    Certified,
    /// Empirical accuracy (survives every attack): an upper bound.
    Empirical,
}

impl From<GateArg> for GateKind {
    fn from(g: GateArg) -> GateKind {
        match g {
            GateArg::Certified => GateKind::Certified,
            GateArg::Empirical => GateKind::Empirical,
        }
    }
}

/// Which sound bound proves samples (a clap value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BoundArg {
    /// Interval bounds only (fastest, loosest).
    Ibp,
    /// Interval bounds, then linear-relaxation (CROWN) bounds back-substituted to the
    /// pixels on the samples intervals leave open: never fewer certified samples.
    Crown,
    /// As crown, then branch and bound (splitting hidden neurons at their clamp) on the
    /// samples neither bounds nor attacks decide, up to --bab-branches branches each.
    Bab,
}

impl From<BoundArg> for BoundMethod {
    fn from(b: BoundArg) -> BoundMethod {
        match b {
            BoundArg::Ibp => BoundMethod::Ibp,
            BoundArg::Crown => BoundMethod::Crown,
            BoundArg::Bab => BoundMethod::Bab,
        }
    }
}

/// `I/N`: shard `I` of `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard(pub usize, pub usize);

/// Parses `I/N` with `0 <= I < N`.
pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("bad shard `{s}`: use I/N, e.g. 0/4"))?;
    let i: usize = i.trim().parse().map_err(|_| format!("bad shard index in `{s}`"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("bad shard count in `{s}`"))?;
    if n == 0 || i >= n {
        return Err(format!("shard `{s}`: need 0 <= I < N"));
    }
    Ok(Shard(i, n))
}

/// Parses an eps sweep: comma-separated radii, each `k/255`, a decimal (`0.05`) or a bare
/// integer number of levels (`4`); the legacy form `0,1,2,4,8/255` (levels, one `/255` at
/// the end) is accepted too.
pub fn parse_sweep(s: &str) -> Result<Sweep, String> {
    parse_levels(s).map(Sweep)
}

/// Radii of the accuracy curve, in levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep(pub Vec<u8>);

fn parse_levels(s: &str) -> Result<Vec<u8>, String> {
    let legacy = s.trim().strip_suffix("/255").filter(|rest| !rest.contains('/') && !rest.contains('.'));
    let body = legacy.unwrap_or(s);
    body.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if !t.contains('/') && !t.contains('.') {
                t.parse::<u8>()
                    .map_err(|_| format!("bad level `{t}` in the eps sweep (0..=255, or k/255, or a decimal)"))
            } else {
                t.parse::<Radius>().map(|r| r.k)
            }
        })
        .collect()
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
    /// Radius: levels (4/255) or a decimal (0.1). Applied as k = floor(eps*255) whole pixel
    /// levels, computed exactly; a radius that is not a whole number of levels is rounded
    /// down with a warning (report.json records both), one below 1/255 is an error.
    #[arg(long, default_value = "4/255", value_parser = str::parse::<Radius>)]
    pub eps: Radius,
    /// Minimum accuracy the gate requires: 0.8, 80% or 4/5, in [0, 1]. The gate passes when
    /// at least ceil(threshold * n) of the n samples count (exact, no float rounding): an
    /// accuracy equal to the threshold passes.
    #[arg(long, default_value = "0", value_parser = str::parse::<Threshold>)]
    pub threshold: Threshold,
    /// Which accuracy the gate checks.
    #[arg(long, value_enum, default_value_t = GateArg::Certified)]
    pub gate: GateArg,
    /// The sound bound that proves samples.
    #[arg(long, value_enum, default_value_t = BoundArg::Crown)]
    pub bound: BoundArg,
    /// Branch-and-bound budget per open sample and radius, in branches bounded (with
    /// --bound bab; a count, not a time, so results do not depend on the machine).
    #[arg(long, default_value_t = GateConfig::default().bab_branches)]
    pub bab_branches: usize,
    /// Also stop branch and bound on a sample after this many milliseconds (a wall-clock
    /// budget: which samples stay "unknown" then depends on the machine; no verdict is ever
    /// wrong either way) [default: no time limit, only --bab-branches].
    #[arg(long)]
    pub budget_ms: Option<u64>,
    /// Also judge the dequantized float twin (interval bounds and PGD in float) and list the
    /// samples where quantization changes the verdict (summary.md and report.json); the
    /// gate's decision is not affected.
    #[arg(long)]
    pub compare_float: bool,
    /// Slope-optimisation steps (alpha-CROWN) on each logit difference plain CROWN leaves
    /// open (0 = off).
    #[arg(long, default_value_t = GateConfig::default().alpha_steps)]
    pub alpha_steps: usize,
    /// Test samples to evaluate (0 = all); a run over 0 samples is an error.
    #[arg(long, default_value_t = GateConfig::default().samples)]
    pub samples: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = GateConfig::default().seed)]
    pub seed: u64,
    /// PGD steps.
    #[arg(long, default_value_t = GateConfig::default().pgd_steps)]
    pub steps: usize,
    /// PGD restarts.
    #[arg(long, default_value_t = GateConfig::default().pgd_restarts)]
    pub restarts: usize,
    /// PGD step size, like --eps: levels (2/255) or a decimal (0.01) [default: max(1, k/4)
    /// levels].
    #[arg(long, value_parser = super::train::parse_eps)]
    pub step_size: Option<f32>,
    /// Square Attack query budget per sample [default: 500, or AutoAttack's 5000 when
    /// --attacks names `standard`].
    #[arg(long)]
    pub square_queries: Option<usize>,
    /// Random samples from the ball per sample.
    #[arg(long, default_value_t = GateConfig::default().random_samples)]
    pub random: usize,
    /// The attacks, in the order they run and are reported: `fast` (pgd, fgsm, square,
    /// random), `standard` (AutoAttack's: apgd-ce, apgd-t, square with 5000 queries, then the
    /// integer search on the survivors), or a comma-separated list of presets and names
    /// (pgd, fgsm, square, random, apgd-ce, apgd-dlr, apgd-t, fab-t, search).
    #[arg(long, default_value = "fast")]
    pub attacks: AttackList,
    /// APGD and FAB-T iterations per restart and target class.
    #[arg(long, default_value_t = AttackSuite::default().apgd_iterations)]
    pub apgd_iterations: usize,
    /// APGD and FAB-T restarts.
    #[arg(long, default_value_t = AttackSuite::default().apgd_restarts)]
    pub apgd_restarts: usize,
    /// APGD-T's and FAB-T's target classes (those with the largest clean logits).
    #[arg(long, default_value_t = AttackSuite::default().apgd_targets)]
    pub apgd_targets: usize,
    /// The integer search's query budget per sample.
    #[arg(long, default_value_t = AttackSuite::default().search_queries)]
    pub search_queries: usize,
    /// Carlini's check: at the gate radius, rerun the attacks with doubled steps, restarts
    /// and queries on the samples they left standing; the report says how many more break.
    #[arg(long)]
    pub double_check: bool,
    /// Radii for the accuracy curve: k/255, decimals, or bare integers as levels
    /// (e.g. 0,1,2,4,8 or 1/255,2/255 or 0.01,0.02).
    #[arg(long, default_value = "0,1,2,4,8", value_parser = parse_sweep)]
    pub eps_sweep: Sweep,
    /// Certify only shard I of N (sample i belongs to shard i % N), e.g. 0/4.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Fail (exit 1) on protocol warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Report directory (report.json, junit.xml, summary.md, curve.svg, counterexamples/);
    /// the files the report owns are replaced, others are left alone.
    #[arg(long, default_value = "certify-report")]
    pub report: PathBuf,
    /// No progress and no summary on stdout.
    #[arg(long, short)]
    pub quiet: bool,
}

impl CertifyArgs {
    /// The library configuration these flags describe.
    pub fn config(&self) -> GateConfig {
        GateConfig {
            k: self.eps.k,
            sweep: self.eps_sweep.0.clone(),
            samples: self.samples,
            shard: self.shard.map_or((0, 1), |Shard(i, n)| (i, n)),
            seed: self.seed,
            pgd_steps: self.steps,
            pgd_restarts: self.restarts,
            pgd_step_size: self.step_size.map(|f| f * 255.0),
            square_queries: self.square_queries.unwrap_or(if self.attacks.standard {
                STANDARD_SQUARE_QUERIES
            } else {
                GateConfig::default().square_queries
            }),
            random_samples: self.random,
            gate: self.gate.into(),
            threshold: self.threshold,
            strict: self.strict,
            bound: self.bound.into(),
            bab_branches: self.bab_branches,
            bab_budget_ms: self.budget_ms,
            alpha_steps: self.alpha_steps,
            suite: AttackSuite {
                attacks: self.attacks.attacks.clone(),
                apgd_iterations: self.apgd_iterations,
                apgd_restarts: self.apgd_restarts,
                apgd_targets: self.apgd_targets,
                search_queries: self.search_queries,
                double_check: self.double_check,
            },
        }
    }
}

/// Runs `iocane certify`; returns the exit code.
pub fn run(c: &CertifyCmd) -> Result<u8> {
    if let Some(CertifySub::Merge { dirs, report, quiet }) = &c.sub {
        return merge(dirs, report, *quiet);
    }
    let a = &c.args;
    let model_path = a.model.as_ref().context("missing MODEL")?;
    let bytes = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let splits = super::train::load_dataset(&a.dataset, a.data_dir.clone())?;
    let interrupt = super::interrupt_flag("certify");
    match certify_model(&bytes, &model_path.display().to_string(), &splits.test, a, &interrupt)? {
        Certified::Done(report) => finish(&report, &a.report, a.quiet),
        Certified::Interrupted(msg) => {
            eprintln!("interrupted: {msg}");
            Ok(EXIT_INTERRUPTED)
        }
    }
}

/// What [`certify_model`] ends with.
pub enum Certified {
    /// The report, written to `--report`.
    Done(Box<CertifyReport>),
    /// Ctrl-C stopped the run; nothing was written.
    Interrupted(String),
}

/// Certifies the blob `bytes` on `test` with the flags `a` and writes the report: every
/// input and the report directory are checked before any work.
pub fn certify_model(
    bytes: &[u8],
    model_name: &str,
    test: &iocane_trainer::data::Dataset,
    a: &CertifyArgs,
    interrupt: &AtomicBool,
) -> Result<Certified> {
    let model = Model::parse(bytes).with_context(|| format!("{model_name} is not a valid iocane model"))?;
    let cfg = a.config();
    let n = gate::validate(&model, test, &cfg)?;
    report::check_writable(&a.report).context("the report directory is not writable")?;
    if let Some(w) = a.eps.rounding_warning() {
        eprintln!("warning: {w}");
    }
    let progress = super::progress::Progress::new("certify", "samples", n as u64, a.quiet);
    let t0 = Instant::now();
    let outcome = match gate::run(&model, test, &cfg, &|d| progress.inc(d), interrupt) {
        Ok(o) => o,
        Err(e @ GateError::Interrupted { .. }) => return Ok(Certified::Interrupted(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    progress.finish();
    let id = RunIdentity::new(model_name, bytes, &model, test, a.eps.clone());
    let comparison =
        a.compare_float.then(|| iocane_certify::compare::compare_float(&model, test, &outcome, cfg.k, cfg.seed));
    let mut report = CertifyReport::new(id, cfg, outcome, t0.elapsed().as_secs_f64());
    report.float_comparison = comparison;
    report.write(&a.report).context("writing the report")?;
    Ok(Certified::Done(Box::new(report)))
}

fn finish(report: &CertifyReport, dir: &Path, quiet: bool) -> Result<u8> {
    if !quiet {
        print!("{}", report.markdown());
        if let Some(t) = report.timing_line() {
            println!("\n{t}");
        }
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "\ngate {}: {:?} accuracy {:.2}% ({} of {} samples, {} needed) at eps {}/255, threshold {}{}; report in {}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.config.gate,
        100.0 * report.gate.value,
        report.gate.count,
        report.gate.n,
        report.gate.required,
        report.config.k,
        report.threshold_text(),
        if report.gate.met && !report.passed { ", failed by --strict: protocol warnings" } else { "" },
        dir.display()
    );
    Ok(if report.passed { EXIT_OK } else { EXIT_GATE_FAILED })
}

fn merge(dirs: &[PathBuf], out: &Path, quiet: bool) -> Result<u8> {
    let reports: Vec<CertifyReport> = dirs
        .iter()
        .map(|d| {
            CertifyReport::read(&d.join("report.json"))
                .with_context(|| format!("reading the shard report in {}", d.display()))
        })
        .collect::<Result<_>>()?;
    let merged = report::merge_reports(&reports)?;
    report::check_writable(out).context("the merged report's directory is not writable")?;
    merged.write(out).context("writing the merged report")?;
    finish(&merged, out, quiet)
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;
    use iocane_certify::gate::GateConfig;

    /// `iocane certify MODEL` without flags is the library's `GateConfig::default()`.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let Command::Certify(c) = Cli::parse_from(["iocane", "certify", "m.icn"]).command else { panic!("certify") };
        assert_eq!(c.args.config(), GateConfig::default());
    }

    /// Issue 12: `--attacks` takes presets, names and mixes; `standard` brings AutoAttack's
    /// Square budget unless `--square-queries` is given; bad names are refused by clap.
    #[test]
    fn issue12_attacks_flag_parses_presets_and_lists() {
        use iocane_certify::attack::suite::{AttackName, FAST, STANDARD};
        let cfg = |args: &[&str]| {
            let mut v = vec!["iocane", "certify", "m.icn"];
            v.extend_from_slice(args);
            let Command::Certify(c) = Cli::parse_from(v).command else { panic!("certify") };
            c.args.config()
        };
        assert_eq!(cfg(&["--attacks", "fast"]).suite.attacks, FAST.to_vec());
        let std = cfg(&["--attacks", "standard"]);
        assert_eq!((std.suite.attacks.as_slice(), std.square_queries), (&STANDARD[..], 5000));
        assert_eq!(cfg(&["--attacks", "standard", "--square-queries", "50"]).square_queries, 50);
        let mix = cfg(&["--attacks", "apgd-t,pgd", "--apgd-iterations", "7", "--double-check"]);
        assert_eq!(mix.suite.attacks, vec![AttackName::ApgdT, AttackName::Pgd]);
        assert_eq!((mix.suite.apgd_iterations, mix.suite.double_check, mix.square_queries), (7, true, 500));
        for bad in ["fab", "", "pgd,,fgsm"] {
            let r = Cli::try_parse_from(["iocane", "certify", "m.icn", "--attacks", bad]);
            assert!(r.is_err(), "{bad:?} accepted");
        }
    }
}

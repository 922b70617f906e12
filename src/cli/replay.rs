//! `iocane replay REPORT_DIR`: re-runs every saved counterexample of a certification report
//! through the runtime and checks that it is what the report says (inside the ball around
//! the dataset's image, and misclassified by the int8 model).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use iocane_certify::gate::SampleVerdict;
use iocane_certify::report::CertifyReport;
use iocane_runtime::Model;

use super::{EXIT_GATE_FAILED, EXIT_OK};

/// Flags of `iocane replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A report directory written by `iocane certify` or `iocane certify merge`.
    pub report: PathBuf,
    /// The model blob [default: the report's model file]; its SHA-256 must be the report's.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The dataset [default: the report's]: mnist-small, fashion-mnist, idx:DIR; its test
    /// split's SHA-256 must be the report's.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory holding Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print only the summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Largest model blob read (bytes).
const MAX_MODEL_FILE: u64 = 64 << 20;

/// Replays one broken sample: its counterexample (or, for a misclassified sample without
/// one, its clean image) must be within `k` levels of the dataset's image and misclassified.
/// `Ok` describes the replay, `Err` says why it fails.
fn check_one(
    model: &Model<'_>,
    test: &iocane_trainer::data::Dataset,
    k: u8,
    s: &iocane_certify::gate::SampleResult,
    scratch: &mut (Vec<u8>, Vec<i32>),
) -> std::result::Result<String, String> {
    if s.index >= test.len() {
        return Err(format!("index {} is outside the test split ({} images)", s.index, test.len()));
    }
    if test.label(s.index) != s.label {
        return Err(format!("label {} in the report, {} in the dataset", s.label, test.label(s.index)));
    }
    let clean = test.image(s.index);
    // A misclassified clean image is its own counterexample (no file is written for it).
    let cx = match (&s.counterexample, s.verdict) {
        (Some(cx), _) => cx.as_slice(),
        (None, SampleVerdict::Misclassified) => clean,
        (None, v) => return Err(format!("verdict {v:?} but no counterexample file")),
    };
    let dist = cx.iter().zip(clean).map(|(&a, &b)| a.abs_diff(b)).max().unwrap_or(0);
    let (arena, logits) = scratch;
    let class = model.run(cx, arena, logits).map_err(|e| format!("the runtime refuses it: {e}"))?;
    if dist > k {
        return Err(format!("outside the ball: a pixel differs by {dist} levels, the radius is {k}"));
    }
    if class == s.label {
        return Err(format!("the int8 model classifies it correctly as {class} (logits {logits:?})"));
    }
    Ok(format!("label {}, int8 class {class}, max change {dist}/255 <= {k}/255", s.label))
}

/// Runs `iocane replay`: exit 0 if every counterexample replays, 1 otherwise.
pub fn run(a: &ReplayArgs) -> Result<u8> {
    let report = CertifyReport::read(&a.report.join("report.json"))
        .with_context(|| format!("reading the report in {}", a.report.display()))?;
    let model_path = a.model.clone().unwrap_or_else(|| PathBuf::from(&report.run.model_file));
    let bytes = super::predict::read_capped(&model_path, MAX_MODEL_FILE)
        .with_context(|| "the report's model (give it with --model)".to_string())?;
    let sha = iocane_trainer::quant::export::sha256_hex(&bytes);
    if sha != report.run.model_sha256 {
        bail!(
            "{} has sha256 {sha}, the report was made with a model of sha256 {}",
            model_path.display(),
            report.run.model_sha256
        );
    }
    let model =
        Model::parse(&bytes).with_context(|| format!("{} is not a valid iocane model", model_path.display()))?;
    let name = a.dataset.clone().unwrap_or_else(|| dataset_flag(&report.run.dataset));
    let test = super::train::load_dataset(&name, a.data_dir.clone())?.test;
    if test.sha256_hex() != report.run.dataset_sha256 || test.len() != report.run.split_len {
        bail!(
            "the test split of {name} (sha256 {}, {} images) is not the report's ({}, {} images)",
            test.sha256_hex(),
            test.len(),
            report.run.dataset_sha256,
            report.run.split_len
        );
    }
    if model.input_len() != test.image_len() {
        bail!("the model takes {} pixels, the dataset's images have {}", model.input_len(), test.image_len());
    }
    let k = report.config.k;
    let mut scratch = (vec![0u8; model.arena_size()], vec![0i32; model.num_classes()]);
    let (mut ok, mut bad, mut files) = (0usize, 0usize, 0usize);
    for s in &report.outcome.samples {
        let broken = matches!(s.verdict, SampleVerdict::Falsified | SampleVerdict::Misclassified);
        if !broken && s.counterexample.is_none() {
            continue;
        }
        files += usize::from(s.counterexample.is_some());
        let res = if broken {
            check_one(&model, &test, k, s, &mut scratch)
        } else {
            Err(format!("verdict {:?} but the report holds a counterexample", s.verdict))
        };
        match res {
            Ok(msg) => {
                ok += 1;
                if !a.quiet {
                    println!("sample {}: replayed ({msg})", s.index);
                }
            }
            Err(msg) => {
                bad += 1;
                println!("sample {}: NOT REPLAYED: {msg}", s.index);
            }
        }
    }
    println!(
        "{ok} of {} broken sample(s) replayed on the int8 model at eps {k}/255 ({files} counterexample file(s), {} \
         misclassified clean image(s)); report {}",
        ok + bad,
        ok + bad - files,
        a.report.display()
    );
    Ok(if bad == 0 { EXIT_OK } else { EXIT_GATE_FAILED })
}

/// The `--dataset` value of a split name recorded in a report (`mnist-small/test`).
fn dataset_flag(split: &str) -> String {
    split.strip_suffix("/test").unwrap_or(split).to_string()
}

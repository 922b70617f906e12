//! `iocane study`: the three findings behind adversarial training, reproduced on the user's
//! own data with one command each (issue 16; figures in `docs/STUDIES.md`).
//!
//! - [`capacity`] (Madry et al. 2018, Fig. 4): natural, FGSM and PGD training across a
//!   width scale of a base CNN: clean / FGSM / PGD accuracy, final training loss, cost.
//! - [`features`] (Ilyas et al. 2019): the "robustified" dataset D_R from a robust model's
//!   representation and the "non-robust" dataset D_NR from targeted adversarial examples of
//!   a natural model; natural models trained on each, evaluated on the real test set.
//! - [`saliency`] (Tsipras et al. 2019, Fig. 2): input gradients of a natural and a robust
//!   model on the same test images, as a picture grid and as an alignment score.
//!
//! Every model is trained by the trainer's own loop ([`iocane_trainer::train::train`]) into
//! `OUT/models/<name>/` (model.ckpt, metrics.json). Each study writes `<study>.csv`,
//! `<study>.json`, its figure and `summary.md` into `OUT`, every file atomically. The CSV,
//! JSON and figure are a pure function of the flags (same command, same bytes); wall-clock
//! times go only into `timings.json` and `summary.md`. `--quick` is a small budget for CI.

pub mod capacity;
pub mod features;
pub mod saliency;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iocane_certify::gallery::{to_rgb, Canvas};
use iocane_trainer::checkpoint::write_atomic;
use iocane_trainer::data::{Dataset, Splits};
use iocane_trainer::nn::{ArchSpec, LrSchedule, Network, Tensor};
use iocane_trainer::train::{self, FinalMetrics, Method, Metrics, RunOptions, TrainConfig};

/// `iocane study <name>`.
#[derive(Debug, Args)]
pub struct StudyCmd {
    /// Which study.
    #[command(subcommand)]
    pub study: Study,
}

/// The studies.
#[derive(Debug, Subcommand)]
pub enum Study {
    /// Madry et al. Fig. 4: natural / FGSM / PGD training across a width scale of a base CNN.
    Capacity(capacity::CapacityArgs),
    /// Ilyas et al.: natural models trained on robust (D_R) and non-robust (D_NR) features.
    Features(features::FeaturesArgs),
    /// Tsipras et al. Fig. 2: input gradients of a natural and a robust model, and their alignment with the object.
    Saliency(saliency::SaliencyArgs),
}

/// `--natural` / `--robust`: checkpoints to study instead of training the natural and robust
/// pair (`features` and `saliency`).
#[derive(Clone, Debug, Args)]
pub struct PairArgs {
    /// Use this naturally trained checkpoint (run dir or model.ckpt) instead of training one.
    #[arg(long)]
    pub natural: Option<PathBuf>,
    /// Use this robust (PGD-trained) checkpoint instead of training one.
    #[arg(long)]
    pub robust: Option<PathBuf>,
}

/// A model of the pair and where it came from (a checkpoint path, or "trained here").
pub type Sourced = (Network, String);

impl PairArgs {
    /// Loads (and checks) the checkpoints given on the command line, before any training.
    pub fn load(&self, input: [usize; 3], classes: usize) -> Result<(Option<Sourced>, Option<Sourced>)> {
        let one = |p: &Option<PathBuf>| -> Result<Option<Sourced>> {
            p.as_ref().map(|p| load_network(p, input, classes).map(|n| (n, p.display().to_string()))).transpose()
        };
        Ok((one(&self.natural)?, one(&self.robust)?))
    }
}

/// The natural and the robust (PGD-7) model of a study: the given ones, else trained here on
/// `train_set` with `arch`.
pub fn natural_and_robust(
    s: &mut Setup,
    arch: &ArchSpec,
    train_set: &Dataset,
    (natural, robust): (Option<Sourced>, Option<Sourced>),
) -> Result<(Sourced, Sourced)> {
    let natural = match natural {
        Some(given) => given,
        None => (s.train("natural", &s.config(arch.clone(), Method::Natural), train_set)?.0, "trained here".into()),
    };
    let robust = match robust {
        Some(given) => given,
        None => (s.train("robust", &s.config(arch.clone(), Method::Pgd), train_set)?.0, "trained here (PGD-7)".into()),
    };
    Ok((natural, robust))
}

/// Flags every study takes.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Dataset: mnist-small (embedded), fashion-mnist, or idx:DIR.
    #[arg(long, default_value = "mnist-small")]
    pub dataset: String,
    /// Directory holding Fashion-MNIST (default /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output directory: the study's files are replaced, other files are left alone.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of every random choice (training, attacks, generated datasets).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Small budget (seconds to a minute on 2 cores): fewer models, epochs, samples and steps.
    #[arg(long)]
    pub quick: bool,
    /// L-infinity radius of adversarial training and of the evaluation attacks (decimal or k/255).
    #[arg(long, default_value = "0.1", value_parser = super::train::parse_eps)]
    pub eps: f32,
    /// Training epochs of every model [default: quick 4, full 20].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train on the first N training images (0 = all) [default: quick 2000, full all].
    #[arg(long)]
    pub train_samples: Option<usize>,
    /// Evaluate on the first N test images (0 = all) [default: quick 200, full all].
    #[arg(long)]
    pub test_samples: Option<usize>,
    /// Peak learning rate (Adam, cosine schedule).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `iocane study`.
pub fn run(c: &StudyCmd) -> Result<u8> {
    match &c.study {
        Study::Capacity(a) => capacity::run(a)?,
        Study::Features(a) => features::run(a)?,
        Study::Saliency(a) => saliency::run(a)?,
    }
    Ok(super::EXIT_OK)
}

/// The data, budget and output of one study run, resolved from [`CommonArgs`].
pub struct Setup {
    /// The flags.
    pub args: CommonArgs,
    /// Training images used (the first `train.len()` of the split).
    pub train: Dataset,
    /// Test images evaluated (the first `test.len()` of the split).
    pub test: Dataset,
    /// Epochs per model.
    pub epochs: usize,
    /// Study wall time starts here (reported in `timings.json` only).
    pub t0: Instant,
    /// Wall-clock seconds per phase, in order, for `timings.json`.
    pub timings: Vec<(String, f64)>,
}

impl Setup {
    /// Loads the dataset, applies the budget and checks that `--out` is writable, before
    /// any work.
    pub fn new(args: &CommonArgs) -> Result<Setup> {
        let Splits { train, test, .. } = super::train::load_dataset(&args.dataset, args.data_dir.clone())?;
        let pick = |flag: Option<usize>, quick: usize| match flag.unwrap_or(if args.quick { quick } else { 0 }) {
            0 => usize::MAX,
            n => n,
        };
        let train = train.take(pick(args.train_samples, 2000));
        let test = test.take(pick(args.test_samples, 200));
        if train.is_empty() || test.is_empty() {
            bail!("the dataset {} has no training or no test images", args.dataset);
        }
        let epochs = args.epochs.unwrap_or(if args.quick { 4 } else { 20 });
        if epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        iocane_certify::report::check_writable(&args.out).context("--out is not writable")?;
        Ok(Setup { args: args.clone(), train, test, epochs, t0: Instant::now(), timings: Vec::new() })
    }

    /// `[h, w, c]` of the images.
    pub fn input(&self) -> [usize; 3] {
        [self.train.height, self.train.width, self.train.channels]
    }

    /// A progress line on stderr (unless `--quiet`), with or without a terminal.
    pub fn say(&self, msg: &str) {
        if !self.args.quiet {
            eprintln!("[{:>6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
        }
    }

    /// The training configuration of every study model: Adam with a cosine schedule at
    /// `--lr`, batch 128, one natural warm-up epoch and a 2-epoch eps ramp (shorter runs: as
    /// many as fit), PGD-7 for training, PGD-20 for evaluation.
    pub fn config(&self, arch: ArchSpec, method: Method) -> TrainConfig {
        let warmup = usize::from(self.epochs > 1 && method != Method::Natural);
        TrainConfig {
            schedule: LrSchedule::Cosine { lr: self.args.lr, min_lr: 0.0, epochs: self.epochs, warmup_epochs: 0.0 },
            warmup_epochs: warmup,
            ramp_epochs: 2.min(self.epochs - warmup).max(1),
            seed: self.args.seed,
            eval_samples: self.test.len().min(100),
            train_samples: 0,
            ..TrainConfig::new(&self.args.dataset, arch, method, self.args.eps, self.epochs)
        }
    }

    /// Trains `cfg` on `train` with the trainer's loop into `OUT/models/<name>/`, evaluates on
    /// the study's test images, and returns the trained network with its metrics. The wall
    /// time is recorded under `name`.
    pub fn train(&mut self, name: &str, cfg: &TrainConfig, train_set: &Dataset) -> Result<(Network, Metrics)> {
        let dir = self.args.out.join("models").join(name);
        self.say(&format!(
            "training {name}: {} on {} images, {} epoch(s), eps {:.4}",
            cfg.method,
            train_set.len(),
            cfg.epochs,
            cfg.eps
        ));
        let t = Instant::now();
        let opts = RunOptions {
            progress: !self.args.quiet,
            resume: false,
            interrupt: Some(super::interrupt_flag("the study")),
            init: None,
            scorer: None,
        };
        let m = train::train(cfg, train_set, &self.test, &dir, &opts).with_context(|| format!("training {name}"))?;
        let ck = iocane_trainer::checkpoint::load(&dir.join("model.ckpt"))?;
        self.timings.push((format!("train {name}"), t.elapsed().as_secs_f64()));
        Ok((ck.network, m))
    }

    /// Clean, FGSM and PGD-20 accuracy of `net` on the study's test images (the trainer's
    /// final evaluation, as `iocane train` reports it).
    pub fn evaluate(&self, net: &Network) -> FinalMetrics {
        let cfg = self.config(net.spec().clone(), Method::Natural);
        train::final_eval(net, &self.test, &cfg, 0)
    }

    /// Writes `name` into `OUT` atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.args.out.join(name);
        write_atomic(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `timings.json`: the study's wall time and that of each phase (not
    /// deterministic, which is why it is a file of its own).
    pub fn write_timings(&self) -> Result<()> {
        let phases: Vec<serde_json::Value> =
            self.timings.iter().map(|(k, s)| serde_json::json!({ "phase": k, "seconds": round3(*s) })).collect();
        let v = serde_json::json!({ "total_seconds": round3(self.t0.elapsed().as_secs_f64()), "phases": phases });
        self.write("timings.json", serde_json::to_string_pretty(&v)?.as_bytes())
    }

    /// The timings as Markdown lines for `summary.md`.
    pub fn timings_markdown(&self) -> String {
        let mut s = format!(
            "\nWall time (not part of the deterministic files; also in `timings.json`): {:.1} s in all.\n\n| phase | seconds |\n|---|---|\n",
            self.t0.elapsed().as_secs_f64()
        );
        for (k, v) in &self.timings {
            s.push_str(&format!("| {k} | {v:.1} |\n"));
        }
        s
    }
}

/// `x` rounded to three decimals (JSON figures).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `x` rounded to four decimals (JSON accuracies and scores); non-finite values become 0.
pub fn round4(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

/// Loads the network of a checkpoint given as a run directory or a `model.ckpt` file, and
/// checks it takes the dataset's images and classes.
pub fn load_network(path: &Path, input: [usize; 3], classes: usize) -> Result<Network> {
    let file = iocane_trainer::train::checkpoint::run_checkpoint(path);
    let ck = iocane_trainer::checkpoint::load(&file).with_context(|| format!("loading {}", file.display()))?;
    if ck.network.input_shape() != input || ck.network.classes() != classes {
        bail!(
            "{} takes {:?} images with {} classes, the dataset has {:?} with {}",
            file.display(),
            ck.network.input_shape(),
            ck.network.classes(),
            input,
            classes
        );
    }
    Ok(ck.network)
}

/// The images `idx` of `data` as a float batch (pixels / 255) with their labels.
pub fn batch(data: &Dataset, idx: &[usize]) -> (Tensor, Vec<usize>) {
    train::batch(data, idx)
}

/// A dataset of float images (rounded to the 8-bit grid, as every dataset is) and labels
/// with the metadata of `like`.
pub fn dataset_from(like: &Dataset, name: &str, images: &Tensor, labels: Vec<usize>) -> Dataset {
    Dataset {
        name: name.into(),
        height: like.height,
        width: like.width,
        channels: like.channels,
        classes: like.classes,
        labels_text: like.labels_text.clone(),
        images: images.to_bytes(),
        labels: labels.into_iter().map(|l| l as u8).collect(),
    }
}

/// A picture grid: a title row of `titles`, then one row per entry of `rows`, each a list
/// of (caption, u8 image of `shape` = (h, w, c)) tiles scaled to about 84 pixels; a
/// grayscale PNG when every pixel is grey.
pub fn grid_png(titles: &[&str], rows: &[Vec<(String, Vec<u8>)>], shape: (usize, usize, usize)) -> Result<Vec<u8>> {
    let cols = titles.len().max(rows.iter().map(Vec::len).max().unwrap_or(0)).max(1);
    let (tw, th, _) = to_rgb(&vec![0; shape.0 * shape.1 * shape.2], shape);
    let scale = (84 / tw.max(th).max(1)).clamp(1, 8);
    let text = 1;
    let longest = rows.iter().flatten().map(|(c, _)| c.len()).chain(titles.iter().map(|t| t.len())).max().unwrap_or(0);
    let col = (tw * scale).max(longest * 6 * text + 4);
    let gap = 10;
    let (caption_h, header_h) = (7 * text + 6, 7 * text + 12);
    let row_h = caption_h + th * scale + gap;
    let (w, h) = (gap + cols * (col + gap), header_h + rows.len() * row_h + gap);
    if w.checked_mul(h).is_none_or(|n| n > 64 << 20) {
        bail!("a {w}x{h} picture grid is too large");
    }
    let mut cv = Canvas::new(w, h);
    for (i, t) in titles.iter().enumerate() {
        cv.text(gap + i * (col + gap), 6, t, text, [60; 3]);
    }
    for (r, row) in rows.iter().enumerate() {
        let y = header_h + r * row_h;
        for (i, (caption, img)) in row.iter().enumerate() {
            let x = gap + i * (col + gap);
            cv.text(x, y, caption, text, [0; 3]);
            if img.len() != shape.0 * shape.1 * shape.2 {
                bail!("a grid image has {} values, not one {shape:?} image", img.len());
            }
            let (_, _, rgb) = to_rgb(img, shape);
            cv.tile(x, y + caption_h, (tw, th), &rgb, scale);
        }
    }
    cv.png_gray_if_grey().map_err(anyhow::Error::msg)
}

/// A CSV file: the header line and one line per row, fields joined by commas.
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

/// A percentage with two decimals, for Markdown tables.
pub fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

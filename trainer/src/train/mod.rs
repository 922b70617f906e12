//! The training loop: natural, FGSM, fast-FGSM and PGD adversarial training (Madry et al.
//! 2018) and IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020) certified training
//! with a natural warm-up and an eps ramp (curriculum), per-epoch clean, PGD and IBP-verified evaluation, atomic per-epoch
//! checkpoints and bit-identical `--resume`.
//!
//! # IBP certified training
//! With [`Method::Ibp`] each step minimises `κ · CE(clean) + (1 - κ) · CE(worst case)` where
//! the worst-case logits come from interval bounds on the box
//! `[max(0, x - eps), min(1, x + eps)]` with the last layer elided (see
//! [`crate::nn::ibp`]). After `warmup_epochs` natural epochs, eps ramps linearly **per
//! step** from 0 to [`TrainConfig::ibp_train_eps`] over `ramp_epochs` epochs while κ ramps
//! from 1 to [`TrainConfig::ibp_kappa`]; both then stay put. [`Method::CrownIbp`] follows
//! the same schedule and mixes CROWN-IBP margins into the worst case with a weight β that
//! ramps from [`TrainConfig::crown_ibp_beta_start`] (1) to
//! [`TrainConfig::crown_ibp_beta_end`] (0) over the same ramp (see [`crate::nn::crown_ibp`]).
//!
//! Every random choice derives from the seed: the shuffle of epoch `e` uses stream
//! `SHUFFLE + e`, the attack of batch `b` in epoch `e` uses stream `ATTACK + e * 2^20 + b`,
//! evaluation uses stream `EVAL`. No state but the parameters, the optimizer buffers and the
//! epoch count is needed to resume, so a resumed run is bit-identical to an uninterrupted one.

pub mod checkpoint;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::checkpoint::{Checkpoint, CheckpointError};
use crate::data::Dataset;
use crate::nn::attack::Attack;
use crate::nn::{ArchSpec, LrSchedule, Network, NnError, Optimizer, OptimizerConfig, Tensor, Want};
use crate::rng::Rng;

const SHUFFLE: u64 = 1 << 40;
const ATTACK: u64 = 2 << 40;
const EVAL: u64 = 3 << 40;

/// How training examples are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Clean examples only.
    Natural,
    /// FGSM examples from the clean input (Goodfellow et al. 2015).
    Fgsm,
    /// FGSM from a random start, step 1.25 eps ("fast adversarial training", Wong et al. 2020).
    FgsmRs,
    /// PGD L-infinity examples with a random start (Madry et al. 2018).
    Pgd,
    /// Interval bound propagation certified training (Gowal et al. 2018): the loss mixes the
    /// clean cross-entropy with that of the IBP worst-case logits.
    Ibp,
    /// TRADES (Zhang et al. 2019): clean cross-entropy plus `β` times the KL divergence
    /// between the clean and the adversarial prediction, the adversarial example maximising
    /// that KL ([`crate::nn::trades`]).
    Trades,
    /// CROWN-IBP certified training (Zhang et al. 2020): as IBP, with the worst-case margins
    /// `β · m_CROWN-IBP + (1 - β) · m_IBP`, β ramping from
    /// [`TrainConfig::crown_ibp_beta_start`] to [`TrainConfig::crown_ibp_beta_end`] together
    /// with eps (see [`crate::nn::crown_ibp`]).
    CrownIbp,
}

impl Method {
    /// Whether the method trains on bounds of a box (IBP, CROWN-IBP) rather than on examples:
    /// the per-step eps and κ ramp of [`TrainConfig::ibp_schedule`], no training attack.
    pub fn is_bound_training(self) -> bool {
        matches!(self, Method::Ibp | Method::CrownIbp)
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "natural" => Method::Natural,
            "fgsm" => Method::Fgsm,
            "fgsm-rs" | "fast" => Method::FgsmRs,
            "pgd" => Method::Pgd,
            "ibp" => Method::Ibp,
            "trades" => Method::Trades,
            "crown-ibp" => Method::CrownIbp,
            _ => {
                return Err(format!(
                    "unknown method `{s}`: expected natural, fgsm, fgsm-rs, pgd, trades, ibp or crown-ibp"
                ))
            }
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Natural => "natural",
            Method::Fgsm => "fgsm",
            Method::FgsmRs => "fgsm-rs",
            Method::Pgd => "pgd",
            Method::Ibp => "ibp",
            Method::Trades => "trades",
            Method::CrownIbp => "crown-ibp",
        })
    }
}

/// A training run's configuration (stored in the checkpoint and in `metrics.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset name (informational; the data is passed to [`train`]).
    pub dataset: String,
    /// The architecture.
    pub arch: ArchSpec,
    /// Training method.
    pub method: Method,
    /// Target L-infinity radius in [0, 1] pixel units.
    pub eps: f32,
    /// PGD steps during training.
    pub steps: usize,
    /// PGD step size (default `2.5 * eps / steps`).
    pub step_size: Option<f32>,
    /// Number of epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Natural epochs before adversarial training starts.
    pub warmup_epochs: usize,
    /// Epochs over which eps ramps linearly from 0 to `eps` after the warm-up.
    pub ramp_epochs: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Test samples evaluated after each epoch (0 = all).
    pub eval_samples: usize,
    /// PGD steps of the evaluation attack (more than training).
    pub eval_steps: usize,
    /// PGD restarts of the evaluation attack.
    pub eval_restarts: usize,
    /// Use only the first N training samples (0 = all).
    pub train_samples: usize,
    /// Quantization-aware training: gradients (and training attacks) are computed on the
    /// int8-fake-quantized weights and applied to the float weights (straight-through).
    #[serde(default)]
    pub qat: bool,
    /// Full QAT (with `qat`): the activations are fake-quantized too, at every point the
    /// runtime stores int8 values, with its rounding and clamps
    /// ([`crate::quant::fake_quant`]), so training, its attacks and its interval bounds see the
    /// int8 model's arithmetic (up to float rounding of the accumulator).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qat_activations: bool,
    /// IBP: final weight κ of the clean loss (κ ramps from 1 to this value together with eps).
    #[serde(default = "default_ibp_kappa")]
    pub ibp_kappa: f32,
    /// IBP: the eps trained on (`None`: [`IBP_TRAIN_EPS_FACTOR`] times `eps`, capped at 1).
    #[serde(default)]
    pub ibp_train_eps: Option<f32>,
    /// TRADES: weight `β` of the KL term (the robustness/accuracy trade-off).
    #[serde(default = "default_trades_beta", skip_serializing_if = "is_default_trades_beta")]
    pub trades_beta: f32,
    /// Model selection: score every epoch's network on a held-out slice of the training
    /// split and keep the best as `selected.ckpt` (`None`: the last epoch is the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Selection>,
    /// CROWN-IBP: β (the weight of the CROWN-IBP margins) at the start of the eps ramp; β
    /// moves linearly to [`TrainConfig::crown_ibp_beta_end`] over the ramp and stays there.
    /// Not serialised at its default, so other methods' configurations are unchanged.
    #[serde(default = "default_beta_start", skip_serializing_if = "is_default_beta_start")]
    pub crown_ibp_beta_start: f32,
    /// CROWN-IBP: β at the end of the eps ramp (and after it).
    #[serde(default, skip_serializing_if = "is_default_beta_end")]
    pub crown_ibp_beta_end: f32,
}

/// What [`TrainConfig::select`] maximises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectCriterion {
    /// The int8 model's certified accuracy at `eps` on the held-out slice.
    Certified,
    /// The int8 model's accuracy under PGD at `eps` on the held-out slice.
    Pgd,
}

impl std::str::FromStr for SelectCriterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "certified" => Ok(SelectCriterion::Certified),
            "pgd" => Ok(SelectCriterion::Pgd),
            _ => Err(format!("unknown selection criterion `{s}`: expected certified or pgd")),
        }
    }
}

impl std::fmt::Display for SelectCriterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SelectCriterion::Certified => "certified",
            SelectCriterion::Pgd => "pgd",
        })
    }
}

/// Model selection on a held-out slice of the training split (never the test split).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The score.
    pub criterion: SelectCriterion,
    /// Held-out images: the last `holdout` of the training images in use (after
    /// `train_samples`); training uses the ones before them.
    pub holdout: usize,
}

/// Default [`Selection::holdout`].
pub const DEFAULT_SELECT_HOLDOUT: usize = 500;

/// The file the selected network is saved in, beside `model.ckpt` (the last epoch, which
/// `--resume` continues from).
pub const SELECTED_CKPT: &str = "selected.ckpt";

/// Scores a network on the held-out images for [`TrainConfig::select`] (higher is better):
/// the trainer cannot quantize-and-certify by itself (the certifier depends on the trainer,
/// not the other way round), so the caller supplies the score, e.g. `iocane train --select`
/// the int8 model's certified or PGD accuracy through `iocane-certify`.
#[derive(Clone)]
pub struct Scorer(pub Arc<ScoreFn>);

/// The function inside a [`Scorer`]: the network and the held-out images to a score, or
/// why it could not be computed.
pub type ScoreFn = dyn Fn(&Network, &Dataset) -> Result<f32, String> + Send + Sync;

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scorer")
    }
}

fn is_default_trades_beta(b: &f32) -> bool {
    *b == DEFAULT_TRADES_BETA
}

/// Default TRADES `β` (the authors' setting for CIFAR-10 and the usual choice; their MNIST
/// script uses 1).
pub const DEFAULT_TRADES_BETA: f32 = 6.0;

fn default_trades_beta() -> f32 {
    DEFAULT_TRADES_BETA
}

/// Default β at the start of the CROWN-IBP ramp (Zhang et al. 2020).
pub const DEFAULT_CROWN_IBP_BETA_START: f32 = 1.0;

/// Default β at the end of the CROWN-IBP ramp (Zhang et al. 2020): pure IBP after the ramp.
pub const DEFAULT_CROWN_IBP_BETA_END: f32 = 0.0;

fn default_beta_start() -> f32 {
    DEFAULT_CROWN_IBP_BETA_START
}

fn is_default_beta_start(v: &f32) -> bool {
    *v == DEFAULT_CROWN_IBP_BETA_START
}

fn is_default_beta_end(v: &f32) -> bool {
    *v == DEFAULT_CROWN_IBP_BETA_END
}

/// Default final κ of IBP training (Gowal et al. 2018).
pub const DEFAULT_IBP_KAPPA: f32 = 0.5;

/// IBP trains on `eps` times this factor unless [`TrainConfig::ibp_train_eps`] is set
/// (Gowal et al. train with a larger eps than they test).
pub const IBP_TRAIN_EPS_FACTOR: f32 = 1.1;

/// Training images (the first ones, in file order) whose activation ranges set QAT's scales,
/// recomputed at the start of every epoch; the same rule as the export's calibration.
pub const QAT_CALIBRATION_IMAGES: usize = 256;

fn default_ibp_kappa() -> f32 {
    DEFAULT_IBP_KAPPA
}

impl TrainConfig {
    /// A configuration with the `iocane train` defaults for everything but the dataset name,
    /// the architecture, the method, eps and the epochs: PGD-7 (step `2.5 eps / 7`) for the
    /// attacks, batch 128, Adam at 2e-3 with a cosine schedule, one natural warm-up epoch and
    /// no eps ramp, seed 1, 1000 evaluation samples (PGD-20), all training samples. Set other
    /// fields with struct update syntax: `TrainConfig { seed: 7, ..TrainConfig::new(..) }`.
    pub fn new(dataset: &str, arch: ArchSpec, method: Method, eps: f32, epochs: usize) -> TrainConfig {
        TrainConfig {
            dataset: dataset.into(),
            arch,
            method,
            eps,
            steps: 7,
            step_size: None,
            epochs,
            batch_size: 128,
            optimizer: OptimizerConfig::adam(),
            schedule: LrSchedule::Cosine { lr: 2e-3, min_lr: 0.0, epochs, warmup_epochs: 0.0 },
            warmup_epochs: 1,
            ramp_epochs: 0,
            seed: 1,
            eval_samples: 1000,
            eval_steps: 20,
            eval_restarts: 1,
            train_samples: 0,
            qat: false,
            qat_activations: false,
            ibp_kappa: DEFAULT_IBP_KAPPA,
            ibp_train_eps: None,
            trades_beta: DEFAULT_TRADES_BETA,
            select: None,
            crown_ibp_beta_start: DEFAULT_CROWN_IBP_BETA_START,
            crown_ibp_beta_end: DEFAULT_CROWN_IBP_BETA_END,
        }
    }

    /// eps used in epoch `epoch` (0-based): 0 during warm-up, then a linear ramp (for IBP and
    /// CROWN-IBP, whose ramp advances per step, the eps of the epoch's last step).
    pub fn eps_at(&self, epoch: usize) -> f32 {
        if self.method == Method::Natural || epoch < self.warmup_epochs {
            return 0.0;
        }
        let into = (epoch - self.warmup_epochs + 1) as f32;
        let ramp = self.ramp_epochs.max(1) as f32;
        let target = if self.method.is_bound_training() { self.ibp_train_eps() } else { self.eps };
        target * (into / ramp).min(1.0)
    }

    /// The eps IBP (and CROWN-IBP) trains on at the end of the ramp: `ibp_train_eps`, or
    /// [`IBP_TRAIN_EPS_FACTOR`] times `eps` (capped at 1).
    pub fn ibp_train_eps(&self) -> f32 {
        self.ibp_train_eps.unwrap_or((self.eps * IBP_TRAIN_EPS_FACTOR).min(1.0))
    }

    /// IBP `(eps, κ)` of batch `batch` (0-based) of epoch `epoch` with `steps_per_epoch`
    /// batches: `(0, 1)` during the warm-up, then both ramp linearly per step over
    /// `ramp_epochs` epochs to `(ibp_train_eps, ibp_kappa)`.
    pub fn ibp_schedule(&self, epoch: usize, batch: usize, steps_per_epoch: usize) -> (f32, f32) {
        if epoch < self.warmup_epochs {
            return (0.0, 1.0);
        }
        let t = self.ramp_progress(epoch, batch, steps_per_epoch);
        (self.ibp_train_eps() * t, self.ibp_kappa + (1.0 - t) * (1.0 - self.ibp_kappa))
    }

    /// CROWN-IBP's β of batch `batch` of epoch `epoch`: from
    /// [`TrainConfig::crown_ibp_beta_start`] to [`TrainConfig::crown_ibp_beta_end`],
    /// linearly per step over the ramp of [`TrainConfig::ibp_schedule`] (the start value
    /// during the warm-up, where eps is 0 and β unused).
    pub fn crown_ibp_beta(&self, epoch: usize, batch: usize, steps_per_epoch: usize) -> f32 {
        let t = if epoch < self.warmup_epochs { 0.0 } else { self.ramp_progress(epoch, batch, steps_per_epoch) };
        (1.0 - t) * self.crown_ibp_beta_start + t * self.crown_ibp_beta_end
    }

    /// Fraction of the eps ramp done after batch `batch` of epoch `epoch >= warmup_epochs`.
    fn ramp_progress(&self, epoch: usize, batch: usize, steps_per_epoch: usize) -> f32 {
        let spe = steps_per_epoch.max(1);
        let done = ((epoch - self.warmup_epochs) * spe + batch + 1) as f64;
        (if self.ramp_epochs == 0 { 1.0 } else { (done / (self.ramp_epochs * spe) as f64).min(1.0) }) as f32
    }

    /// The training attack at radius `eps`.
    pub fn attack(&self, eps: f32) -> Option<Attack> {
        if eps <= 0.0 {
            return None;
        }
        Some(match self.method {
            // TRADES runs its own KL attack ([`TrainConfig::trades_step`]).
            Method::Natural | Method::Ibp | Method::CrownIbp | Method::Trades => return None,
            Method::Fgsm => Attack::fgsm(eps),
            Method::FgsmRs => Attack::fgsm_rs(eps),
            Method::Pgd => {
                let steps = self.steps.max(1);
                let step_size = self.step_size.unwrap_or(2.5 * eps / steps as f32);
                Attack::Pgd { eps, step_size, steps, random_start: true, restarts: 1, snap: false }
            }
        })
    }

    /// TRADES' inner attack at radius `eps`: `(step_size, steps)`, the training PGD's
    /// (`steps`, `step_size` or `2.5 * eps / steps`); `None` for other methods or `eps = 0`.
    pub fn trades_step(&self, eps: f32) -> Option<(f32, usize)> {
        if self.method != Method::Trades || eps <= 0.0 {
            return None;
        }
        let steps = self.steps.max(1);
        Some((self.step_size.unwrap_or(2.5 * eps / steps as f32), steps))
    }

    /// The evaluation attack (PGD, `eval_steps`, `eval_restarts`) at radius `eps`.
    pub fn eval_attack(&self, eps: f32) -> Attack {
        let steps = self.eval_steps.max(1);
        Attack::Pgd {
            eps,
            step_size: 2.5 * eps / steps as f32,
            steps,
            random_start: true,
            restarts: self.eval_restarts.max(1),
            snap: true,
        }
    }
}

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Training eps this epoch.
    pub train_eps: f32,
    /// Learning rate at the epoch's start.
    pub lr: f32,
    /// Mean training loss (on the examples trained on).
    pub train_loss: f32,
    /// Training accuracy (on the examples trained on).
    pub train_acc: f32,
    /// Clean test accuracy.
    pub clean_acc: f32,
    /// Test accuracy under the evaluation PGD attack at the target eps.
    pub robust_acc: f32,
    /// Fraction of the evaluated test samples that IBP verifies at the target eps on the
    /// float model (every elided margin lower bound `> 0`); any training method.
    #[serde(default)]
    pub ibp_verified_acc: f32,
    /// The selection score on the held-out images ([`TrainConfig::select`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_score: Option<f32>,
    /// Training throughput.
    pub samples_per_s: f32,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f32,
}

/// Final evaluation on the test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// Clean accuracy.
    pub clean_acc: f32,
    /// Accuracy under FGSM at `eps`.
    pub fgsm_acc: f32,
    /// Accuracy under PGD at `eps` (`attack` says which).
    pub robust_acc: f32,
    /// Fraction verified by IBP at `eps` on the float model (a lower bound on the accuracy
    /// under any attack in the float box).
    #[serde(default)]
    pub ibp_verified_acc: f32,
    /// The eps evaluated.
    pub eps: f32,
    /// Description of the PGD attack.
    pub attack: String,
    /// Test samples evaluated.
    pub samples: usize,
}

/// Everything written to `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The configuration.
    pub config: TrainConfig,
    /// Parameter count.
    pub params: usize,
    /// Multiply-accumulates per inference.
    pub macs: usize,
    /// Per-epoch metrics.
    pub epochs: Vec<EpochMetrics>,
    /// Final evaluation (after the last epoch).
    pub final_eval: Option<FinalMetrics>,
    /// Total training wall time in seconds (over all sessions of a resumed run).
    pub wall_seconds: f32,
    /// With [`TrainConfig::select`]: the 1-based epoch saved as [`SELECTED_CKPT`] (the best
    /// score, the latest of equal ones); the final evaluation is of that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_epoch: Option<usize>,
}

impl Metrics {
    /// A copy without the wall-clock figures (each epoch's `samples_per_s` and `seconds`, and
    /// `wall_seconds`): what the checkpoint stores, so that the same command gives the same
    /// checkpoint bytes. The timings are in `metrics.json` only.
    pub fn without_timings(&self) -> Metrics {
        let mut m = self.clone();
        for e in &mut m.epochs {
            e.samples_per_s = 0.0;
            e.seconds = 0.0;
        }
        m.wall_seconds = 0.0;
        m
    }

    /// Takes the timings of the epochs `prev` (an earlier `metrics.json` of the same run) has,
    /// and the total wall time as their sum: the inverse of [`Metrics::without_timings`] on
    /// resume.
    pub fn restore_timings(&mut self, prev: &Metrics) {
        for e in &mut self.epochs {
            if let Some(p) = prev.epochs.iter().find(|p| p.epoch == e.epoch) {
                e.samples_per_s = p.samples_per_s;
                e.seconds = p.seconds;
            }
        }
        self.wall_seconds = self.epochs.iter().map(|e| e.seconds).sum();
    }
}

/// Errors of a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Checkpoint trouble.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Network trouble (architecture vs data).
    #[error(transparent)]
    Network(#[from] NnError),
    /// I/O writing outputs.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration does not make sense.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// Interrupted (Ctrl-C); the last completed epoch is saved.
    #[error("{}", interrupted_message(*completed, dir))]
    Interrupted {
        /// Completed epochs.
        completed: usize,
        /// Output directory.
        dir: PathBuf,
    },
}

fn interrupted_message(completed: usize, dir: &Path) -> String {
    if completed == 0 {
        format!("interrupted before the first epoch completed: no checkpoint was written in {}", dir.display())
    } else {
        format!(
            "interrupted after {completed} completed epoch(s); the checkpoint of the last completed epoch is {}; continue with --resume",
            dir.join("model.ckpt").display()
        )
    }
}

/// How to run (not part of the configuration: does not change results).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Show progress bars.
    pub progress: bool,
    /// Continue from `out_dir/model.ckpt` if present.
    pub resume: bool,
    /// Set to true to stop after the current batch (Ctrl-C).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Start from these weights instead of a fresh initialisation (fine-tuning, QAT,
    /// imported ONNX models). Must have the configuration's architecture.
    pub init: Option<Network>,
    /// The score of [`TrainConfig::select`] (required when it is set).
    pub scorer: Option<Scorer>,
}

/// Accuracy of `net` on `data` (first `limit` samples, 0 = all), clean and under `attack`.
pub fn evaluate(net: &Network, data: &Dataset, limit: usize, attack: Option<&Attack>, seed: u64) -> (f32, f32) {
    let n = if limit == 0 { data.len() } else { limit.min(data.len()) };
    let bs = 256;
    let (mut clean, mut robust) = (0usize, 0usize);
    let mut rng = Rng::new(seed).fork(EVAL);
    for start in (0..n).step_by(bs) {
        let end = (start + bs).min(n);
        let (x, labels) = batch(data, &(start..end).collect::<Vec<_>>());
        let preds = net.predict(&x);
        clean += preds.iter().zip(&labels).filter(|(p, l)| p == l).count();
        if let Some(a) = attack {
            let adv = a.perturb(net, &x, &labels, &mut rng);
            robust += net.predict(&adv).iter().zip(&labels).filter(|(p, l)| p == l).count();
        }
    }
    let d = n.max(1) as f32;
    (clean as f32 / d, if attack.is_some() { robust as f32 / d } else { f32::NAN })
}

/// Fraction of the first `limit` samples of `data` (0 = all) that IBP verifies on the float
/// model at `eps` (box `[max(0, x - eps), min(1, x + eps)]`, see [`Network::ibp_verified`]).
pub fn verified_accuracy(net: &Network, data: &Dataset, limit: usize, eps: f32) -> f32 {
    let n = if limit == 0 { data.len() } else { limit.min(data.len()) };
    let bs = 512;
    let mut verified = 0usize;
    for start in (0..n).step_by(bs) {
        let end = (start + bs).min(n);
        let (x, labels) = batch(data, &(start..end).collect::<Vec<_>>());
        verified += net.ibp_verified(&x, &labels, eps).iter().filter(|&&v| v).count();
    }
    verified as f32 / n.max(1) as f32
}

/// A float batch `[n, h, w, c]` (pixels / 255) and its labels.
pub fn batch(data: &Dataset, idx: &[usize]) -> (Tensor, Vec<usize>) {
    let il = data.image_len();
    let mut px = Vec::with_capacity(idx.len() * il);
    for &i in idx {
        px.extend(data.image(i).iter().map(|&b| b as f32 / 255.0));
    }
    let t = Tensor { shape: [idx.len(), data.height, data.width, data.channels], data: px };
    (t, idx.iter().map(|&i| data.label(i)).collect())
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), TrainError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Config(e.to_string()))?;
    checkpoint::write_atomic(path, s.as_bytes()).map_err(|source| TrainError::Io { path: path.into(), source })
}

/// Trains according to `cfg` on `train` / `test`, writing `out_dir/model.ckpt` and
/// `out_dir/metrics.json` after every epoch (atomically).
pub fn train(
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    out_dir: &Path,
    opts: &RunOptions,
) -> Result<Metrics, TrainError> {
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(TrainError::Config("batch size and epochs must be positive".into()));
    }
    if !(0.0..=1.0).contains(&cfg.eps) {
        return Err(TrainError::Config(format!("eps {} is outside [0, 1]", cfg.eps)));
    }
    if !(0.0..=1.0).contains(&cfg.ibp_kappa) {
        return Err(TrainError::Config(format!("IBP kappa {} is outside [0, 1]", cfg.ibp_kappa)));
    }
    if cfg.qat_activations && !cfg.qat {
        return Err(TrainError::Config("activation fake-quantization is part of QAT: it needs qat".into()));
    }
    if cfg.qat_activations && cfg.method == Method::CrownIbp {
        // The back-substitution has no linear relaxation of the quantizers' staircase.
        return Err(TrainError::Config(
            "crown-ibp with activation fake-quantization is not supported (no linear relaxation of the int8 \
             rounding); use --method ibp with --qat-activations, or crown-ibp with --qat alone"
                .into(),
        ));
    }
    if !(cfg.trades_beta.is_finite() && cfg.trades_beta >= 0.0) {
        return Err(TrainError::Config(format!("TRADES beta {} must be a finite number >= 0", cfg.trades_beta)));
    }
    if !(0.0..=1.0).contains(&cfg.ibp_train_eps()) {
        return Err(TrainError::Config(format!("IBP training eps {} is outside [0, 1]", cfg.ibp_train_eps())));
    }
    for (name, b) in [("start", cfg.crown_ibp_beta_start), ("end", cfg.crown_ibp_beta_end)] {
        if !(0.0..=1.0).contains(&b) {
            return Err(TrainError::Config(format!("CROWN-IBP beta {name} {b} is outside [0, 1]")));
        }
    }
    if cfg.method == Method::CrownIbp {
        crate::nn::crown_ibp::check_supported(&cfg.arch).map_err(|e| TrainError::Config(e.to_string()))?;
    }
    if cfg.arch.input != [train.height, train.width, train.channels] || cfg.arch.classes != train.classes {
        return Err(TrainError::Config(format!(
            "architecture takes {:?} with {} classes, dataset has {}x{}x{} with {} classes",
            cfg.arch.input, cfg.arch.classes, train.height, train.width, train.channels, train.classes
        )));
    }
    let ckpt_path = out_dir.join("model.ckpt");
    let metrics_path = out_dir.join("metrics.json");
    std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io { path: out_dir.into(), source })?;

    let mut net = match &opts.init {
        Some(n) if n.spec() != &cfg.arch => {
            return Err(TrainError::Config("--init weights have a different architecture than --arch".into()))
        }
        Some(n) => n.clone(),
        None => Network::new(cfg.arch.clone(), cfg.seed)?,
    };
    let mut opt = Optimizer::new(cfg.optimizer, net.params());
    let mut metrics = Metrics {
        config: cfg.clone(),
        params: cfg.arch.param_count(),
        macs: cfg.arch.mac_count(),
        epochs: Vec::new(),
        final_eval: None,
        wall_seconds: 0.0,
        selected_epoch: None,
    };
    let mut start_epoch = 0;
    if opts.resume && ckpt_path.exists() {
        let ck = checkpoint::load(&ckpt_path)?;
        let stored: TrainConfig = serde_json::from_value(ck.train_config.clone())
            .map_err(|e| TrainError::Config(format!("checkpoint's configuration unreadable: {e}")))?;
        if stored != *cfg {
            return Err(TrainError::Config(
                "--resume with a different configuration than the checkpoint's; use the same flags".into(),
            ));
        }
        net = ck.network;
        opt = match &ck.optimizer {
            Some(s) => Optimizer::from_state(s, net.params())?,
            None => return Err(TrainError::Config("checkpoint has no optimizer state to resume".into())),
        };
        if let Ok(m) = serde_json::from_value::<Metrics>(ck.metrics.clone()) {
            metrics = m;
            // The checkpoint holds no timings; metrics.json has those of the epochs it saw.
            if let Some(prev) = std::fs::read(&metrics_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                metrics.restore_timings(&prev);
            }
        }
        start_epoch = ck.epoch;
    }

    let n_used = if cfg.train_samples == 0 { train.len() } else { cfg.train_samples.min(train.len()) };
    let (n_train, holdout) = match &cfg.select {
        None => (n_used, None),
        Some(sel) => {
            if sel.holdout == 0 || sel.holdout >= n_used {
                return Err(TrainError::Config(format!(
                    "model selection holds out {} of {n_used} training images: it needs at least 1 and must leave some to train on",
                    sel.holdout
                )));
            }
            if opts.scorer.is_none() {
                return Err(TrainError::Config("model selection needs a scorer (RunOptions::scorer)".into()));
            }
            (n_used - sel.holdout, Some(train.subset(&(n_used - sel.holdout..n_used).collect::<Vec<_>>())))
        }
    };
    let selected_path = out_dir.join(SELECTED_CKPT);
    let mut selected: Option<Network> = None;
    match (&cfg.select, metrics.selected_epoch) {
        // Resumed where the last completed epoch is the selected one: model.ckpt is written
        // before selected.ckpt, so a run killed between the two has it only there.
        (Some(_), Some(best)) if best == start_epoch => {
            save_selected(&selected_path, &net, best, cfg, &metrics)?;
            selected = Some(net.clone());
        }
        // Resumed: the selected network of the epochs already run is on disk.
        (Some(_), Some(best)) => {
            let ck = checkpoint::load(&selected_path)?;
            if ck.epoch != best {
                return Err(TrainError::Config(format!(
                    "{} holds epoch {} but the run selected epoch {best}",
                    selected_path.display(),
                    ck.epoch
                )));
            }
            selected = Some(ck.network);
        }
        _ => {}
    }
    let steps_per_epoch = n_train.div_ceil(cfg.batch_size);
    let root = Rng::new(cfg.seed);
    for epoch in start_epoch..cfg.epochs {
        let t0 = Instant::now();
        let eps = cfg.eps_at(epoch);
        let attack = cfg.attack(eps);
        let mut order: Vec<usize> = (0..n_train).collect();
        root.fork(SHUFFLE + epoch as u64).shuffle(&mut order);
        let bar = progress_bar(opts.progress, steps_per_epoch as u64, epoch + 1, cfg.epochs);
        let (mut loss_sum, mut correct, mut seen, mut verified) = (0f64, 0usize, 0usize, 0usize);
        let lr0 = cfg.schedule.lr(epoch, 0, steps_per_epoch);
        // QAT's activation ranges, from the weights at the start of the epoch.
        let qat = match cfg.qat {
            true => Some(
                crate::quant::Calibration::new(&net, train, QAT_CALIBRATION_IMAGES)
                    .map_err(|e| TrainError::Config(format!("quantization-aware training: {e}")))?,
            ),
            false => None,
        };
        for (b, idx) in order.chunks(cfg.batch_size).enumerate() {
            if opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                bar.abandon_with_message("interrupted");
                return Err(TrainError::Interrupted { completed: epoch, dir: out_dir.into() });
            }
            let (x, labels) = batch(train, idx);
            let qnet = match &qat {
                Some(cal) => Some(
                    if cfg.qat_activations {
                        crate::quant::fake_quant(&net, cal)
                    } else {
                        crate::quant::fake_quant_weights(&net, cal)
                    }
                    .map_err(|e| TrainError::Config(format!("quantization-aware training: {e}")))?,
                ),
                None => None,
            };
            let grad_net = qnet.as_ref().unwrap_or(&net);
            let ibp = cfg.method.is_bound_training().then(|| cfg.ibp_schedule(epoch, b, steps_per_epoch));
            let beta = (cfg.method == Method::CrownIbp).then(|| cfg.crown_ibp_beta(epoch, b, steps_per_epoch));
            let trades = cfg.trades_step(eps);
            let (loss, n_correct, grads, shown_eps) = match (ibp, trades) {
                (Some((ibp_eps, kappa)), _) if ibp_eps > 0.0 => {
                    let r = match beta {
                        Some(beta) => grad_net.crown_ibp_loss_and_grads(&x, &labels, ibp_eps, kappa, beta, true)?,
                        None => grad_net.ibp_loss_and_grads(&x, &labels, ibp_eps, kappa, true),
                    };
                    verified += r.verified;
                    (r.loss, r.correct, r.param_grads, ibp_eps)
                }
                (_, Some((step_size, steps))) => {
                    let mut rng = root.fork(ATTACK + ((epoch as u64) << 20) + b as u64);
                    let adv = crate::nn::trades::trades_attack(grad_net, &x, &labels, eps, step_size, steps, &mut rng);
                    let r = grad_net.trades_loss_and_grads(&x, &adv, &labels, cfg.trades_beta, true);
                    (r.loss, r.correct, r.param_grads, eps)
                }
                _ => {
                    let x = match &attack {
                        Some(a) => {
                            let mut rng = root.fork(ATTACK + ((epoch as u64) << 20) + b as u64);
                            a.perturb(grad_net, &x, &labels, &mut rng)
                        }
                        None => x,
                    };
                    let lg = grad_net.loss_and_grads(&x, &labels, Want::PARAMS);
                    (lg.loss, lg.correct, lg.param_grads, if ibp.is_some() { 0.0 } else { eps })
                }
            };
            let lr = cfg.schedule.lr(epoch, b, steps_per_epoch);
            if let Some(g) = &grads {
                opt.step(net.params_mut(), g, lr);
            }
            loss_sum += loss as f64 * idx.len() as f64;
            correct += n_correct;
            seen += idx.len();
            let sps = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let ibp_msg = match ibp {
                Some((_, kappa)) => format!(
                    "{} kappa {kappa:.3} verified {:.3}",
                    beta.map_or(String::new(), |b| format!(" beta {b:.3}")),
                    verified as f64 / seen as f64
                ),
                None => String::new(),
            };
            bar.set_message(format!(
                "eps {shown_eps:.3}{ibp_msg} loss {:.4} acc {:.3} {sps:.0} samples/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
            bar.inc(1);
        }
        if !net.params().all_finite() {
            return Err(TrainError::Config(format!(
                "training diverged in epoch {} (non-finite weights); lower the learning rate",
                epoch + 1
            )));
        }
        let train_secs = t0.elapsed().as_secs_f64();
        bar.set_message("evaluating");
        let eval_attack = cfg.eval_attack(cfg.eps);
        let (clean_acc, robust_acc) =
            evaluate(&net, test, cfg.eval_samples, if cfg.eps > 0.0 { Some(&eval_attack) } else { None }, cfg.seed);
        let ibp_verified_acc = verified_accuracy(&net, test, cfg.eval_samples, cfg.eps);
        let select_score = match (&holdout, &opts.scorer) {
            (Some(h), Some(score)) => Some(
                (score.0)(&net, h)
                    .map_err(|e| TrainError::Config(format!("model selection in epoch {}: {e}", epoch + 1)))?,
            ),
            _ => None,
        };
        let em = EpochMetrics {
            epoch: epoch + 1,
            train_eps: eps,
            lr: lr0,
            train_loss: (loss_sum / seen.max(1) as f64) as f32,
            train_acc: correct as f32 / seen.max(1) as f32,
            clean_acc,
            robust_acc: if robust_acc.is_nan() { clean_acc } else { robust_acc },
            ibp_verified_acc,
            select_score,
            samples_per_s: (seen as f64 / train_secs.max(1e-9)) as f32,
            seconds: t0.elapsed().as_secs_f32(),
        };
        let best_before = metrics.selected_epoch.and_then(|e| metrics.epochs.iter().find(|m| m.epoch == e));
        let improved = match (select_score, best_before.and_then(|m| m.select_score)) {
            (Some(_), None) => true,
            (Some(s), Some(b)) => s >= b,
            _ => false,
        };
        let summary = format!(
            "loss {:.4} clean {:.3} pgd {:.3} ibp-verified {:.3}{} ({:.0} samples/s)",
            em.train_loss,
            em.clean_acc,
            em.robust_acc,
            em.ibp_verified_acc,
            match (select_score, &cfg.select) {
                (Some(s), Some(sel)) =>
                    format!(" held-out {} {s:.3}{}", sel.criterion, if improved { " (selected)" } else { "" }),
                _ => String::new(),
            },
            em.samples_per_s
        );
        if opts.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // No bar is drawn without a terminal (CI logs): one line per epoch instead.
            eprintln!("epoch {}/{}: train-eps {:.4} {summary} in {:.1}s", epoch + 1, cfg.epochs, eps, em.seconds);
        }
        bar.finish_with_message(summary);
        metrics.wall_seconds += em.seconds;
        metrics.epochs.push(em);
        if improved {
            metrics.selected_epoch = Some(epoch + 1);
        }
        let ck = Checkpoint {
            network: net.clone(),
            optimizer: Some(opt.state()),
            epoch: epoch + 1,
            train_config: serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?,
            metrics: serde_json::to_value(metrics.without_timings()).map_err(|e| TrainError::Config(e.to_string()))?,
        };
        checkpoint::save(&ckpt_path, &ck)?;
        if improved {
            // After model.ckpt, which then records the selection (see the resume above).
            save_selected(&selected_path, &net, epoch + 1, cfg, &metrics)?;
            selected = Some(net.clone());
        }
        write_json(&metrics_path, &metrics)?;
    }
    if metrics.final_eval.is_none() {
        let interrupted = || opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        if interrupted() {
            return Err(TrainError::Interrupted { completed: cfg.epochs, dir: out_dir.into() });
        }
        if opts.progress {
            eprintln!("final evaluation on {} test samples (clean, FGSM, PGD, IBP)", test.len());
        }
        let t0 = Instant::now();
        let fe = final_eval(selected.as_ref().unwrap_or(&net), test, cfg, 0);
        // A Ctrl-C during the final evaluation stops the run without recording it: the
        // checkpoint of every epoch is already saved; --resume runs the evaluation again.
        if interrupted() {
            return Err(TrainError::Interrupted { completed: cfg.epochs, dir: out_dir.into() });
        }
        metrics.final_eval = Some(fe);
        metrics.wall_seconds += t0.elapsed().as_secs_f32();
        write_json(&metrics_path, &metrics)?;
    }
    Ok(metrics)
}

/// Writes the selected network (of 1-based `epoch`) to `path` atomically.
fn save_selected(
    path: &Path,
    net: &Network,
    epoch: usize,
    cfg: &TrainConfig,
    metrics: &Metrics,
) -> Result<(), TrainError> {
    let ck = Checkpoint {
        network: net.clone(),
        optimizer: None,
        epoch,
        train_config: serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?,
        metrics: serde_json::to_value(metrics.without_timings()).map_err(|e| TrainError::Config(e.to_string()))?,
    };
    Ok(checkpoint::save(path, &ck)?)
}

/// Clean, FGSM and PGD (`cfg.eval_steps`) accuracy and the IBP-verified fraction at `cfg.eps`
/// on the first `limit` test samples.
pub fn final_eval(net: &Network, test: &Dataset, cfg: &TrainConfig, limit: usize) -> FinalMetrics {
    let eps = cfg.eps;
    let pgd = cfg.eval_attack(eps);
    let (clean, robust) = if eps > 0.0 {
        evaluate(net, test, limit, Some(&pgd), cfg.seed)
    } else {
        (evaluate(net, test, limit, None, cfg.seed).0, f32::NAN)
    };
    let fgsm = if eps > 0.0 {
        evaluate(net, test, limit, Some(&Attack::fgsm(eps).with_snap(true)), cfg.seed).1
    } else {
        clean
    };
    FinalMetrics {
        clean_acc: clean,
        fgsm_acc: fgsm,
        robust_acc: if robust.is_nan() { clean } else { robust },
        ibp_verified_acc: verified_accuracy(net, test, limit, eps),
        eps,
        attack: format!(
            "PGD-{} x{} restart(s), step 2.5*eps/steps, random start, 8-bit grid",
            cfg.eval_steps,
            cfg.eval_restarts.max(1)
        ),
        samples: if limit == 0 { test.len() } else { limit.min(test.len()) },
    }
}

fn progress_bar(show: bool, len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

//! `iocane train`: train a classifier naturally, adversarially or with IBP or CROWN-IBP
//! certified training.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use iocane_trainer::data::{self, DatasetSpec};
use iocane_trainer::nn::{ArchSpec, LrSchedule, OptimizerConfig};
use iocane_trainer::train::{
    self, Method, Metrics, RunOptions, Scorer, SelectCriterion, Selection, TrainConfig, DEFAULT_CROWN_IBP_BETA_END,
    DEFAULT_CROWN_IBP_BETA_START, DEFAULT_IBP_KAPPA, DEFAULT_SELECT_HOLDOUT, IBP_TRAIN_EPS_FACTOR,
};

/// `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    /// Adam (decoupled weight decay).
    Adam,
    /// SGD with momentum (coupled weight decay).
    Sgd,
}

/// `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Cosine decay to 0 over the run.
    Cosine,
    /// Constant.
    Constant,
    /// x0.1 every third of the run.
    Step,
}

/// Flags of `iocane train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset: mnist-small (embedded), fashion-mnist, or idx:DIR.
    #[arg(long, default_value = "mnist-small")]
    pub dataset: String,
    /// Directory holding Fashion-MNIST (default /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Architecture: a preset (mlp, cnn-s, cnn-m, dwcnn), compact text
    /// (e.g. conv8k3s2p1,relu,flatten,dense10) or a JSON file.
    #[arg(long, default_value = "cnn-s")]
    pub arch: String,
    /// Training method: natural, fgsm, fgsm-rs, pgd, trades (KL-regularised adversarial
    /// training, Zhang et al. 2019; see --trades-beta), ibp (interval bound propagation
    /// certified training, Gowal et al. 2018: trains for the interval verifier that
    /// `iocane certify` runs on the int8 model; see docs/ibp.md), or crown-ibp (Zhang et al.
    /// 2020: IBP mixed with CROWN back-substitution bounds during the ramp; no maxpool).
    #[arg(long, default_value = "pgd")]
    pub method: Method,
    /// Target L-infinity radius: a decimal (0.1) or levels (8/255).
    #[arg(long, default_value = "0.1", value_parser = parse_eps)]
    pub eps: f32,
    /// PGD steps during training.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// PGD step size, like --eps: a decimal (0.01) or levels (2/255) [default: 2.5 * eps / steps].
    #[arg(long, value_parser = parse_eps)]
    pub step_size: Option<f32>,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Weight decay (coupled for SGD, decoupled for Adam).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Natural epochs before adversarial training.
    #[arg(long, default_value_t = 1)]
    pub warmup_epochs: usize,
    /// Epochs over which eps ramps up after the warm-up [default: 2; with --method ibp or crown-ibp, a
    /// quarter of the epochs after the warm-up but at least 200 steps, and the ramp
    /// advances every step].
    #[arg(long)]
    pub ramp_epochs: Option<usize>,
    /// IBP: final weight κ of the clean loss in κ·CE(clean) + (1-κ)·CE(worst case); κ ramps
    /// from 1 to this value together with eps.
    #[arg(long, default_value_t = DEFAULT_IBP_KAPPA)]
    pub ibp_kappa: f32,
    /// IBP: the eps trained on (decimal or levels) [default: 1.1 x --eps, capped at 1].
    /// Evaluation and IBP-verified accuracy always use --eps.
    #[arg(long, value_parser = parse_eps)]
    pub ibp_train_eps: Option<f32>,
    /// TRADES: weight β of KL(clean ‖ adversarial prediction) beside the clean
    /// cross-entropy; larger trades clean accuracy for robustness.
    #[arg(long, default_value_t = iocane_trainer::train::DEFAULT_TRADES_BETA)]
    pub trades_beta: f32,
    /// CROWN-IBP: weight β of the CROWN-IBP margins at the start of the eps ramp (the loss
    /// uses β·m_CROWN-IBP + (1-β)·m_IBP); β moves linearly to --crown-ibp-beta-end over the ramp.
    #[arg(long, default_value_t = DEFAULT_CROWN_IBP_BETA_START)]
    pub crown_ibp_beta_start: f32,
    /// CROWN-IBP: β at the end of the ramp and after it (0: pure IBP once eps is reached).
    #[arg(long, default_value_t = DEFAULT_CROWN_IBP_BETA_END)]
    pub crown_ibp_beta_end: f32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Test samples evaluated after each epoch (0 = all).
    #[arg(long, default_value_t = 1000)]
    pub eval_samples: usize,
    /// PGD steps of the evaluation attack.
    #[arg(long, default_value_t = 20)]
    pub eval_steps: usize,
    /// PGD restarts of the evaluation attack.
    #[arg(long, default_value_t = 1)]
    pub eval_restarts: usize,
    /// Train on the first N samples only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub train_samples: usize,
    /// Model selection: after every epoch, quantize the network to int8 and score it on
    /// held-out training images (never the test split), `certified` (the certifier's
    /// accuracy at --eps, interval and linear bounds) or `pgd` (int8 accuracy under the
    /// certifier's PGD at --eps); the best epoch is saved as OUT/selected.ckpt, which
    /// `iocane export OUT` then exports.
    #[arg(long)]
    pub select: Option<SelectCriterion>,
    /// Held-out images for --select: the last N of the training images in use, which are
    /// then not trained on.
    #[arg(long, default_value_t = DEFAULT_SELECT_HOLDOUT, requires = "select")]
    pub select_holdout: usize,
    /// Output directory (model.ckpt, metrics.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Quantization-aware training (int8 fake-quantized weights, straight-through gradients);
    /// typically a few epochs fine-tuning a run given with --init.
    #[arg(long)]
    pub qat: bool,
    /// Full QAT: with --qat, fake-quantize the activations too (the runtime's int8 grid,
    /// rounding and clamps at every layer output), so the float model trains, is attacked
    /// and is bounded with the int8 model's arithmetic.
    #[arg(long, requires = "qat")]
    pub qat_activations: bool,
    /// Start from the weights of this checkpoint (a run dir or model.ckpt), e.g. to fine-tune.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Continue from OUT/model.ckpt, bit-identically (the flags must be the run's own; the
    /// ones that differ are named).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh even if OUT already holds a run (its model.ckpt and metrics.json are
    /// removed first).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses an eps given as a decimal (`0.1`) or as levels (`8/255`).
pub fn parse_eps(s: &str) -> Result<f32, String> {
    let v = if let Some((a, b)) = s.split_once('/') {
        let a: f32 = a.trim().parse().map_err(|_| format!("bad eps `{s}`"))?;
        let b: f32 = b.trim().parse().map_err(|_| format!("bad eps `{s}`"))?;
        if b == 0.0 {
            return Err(format!("bad eps `{s}`: division by zero"));
        }
        a / b
    } else {
        s.trim().parse().map_err(|_| format!("bad eps `{s}`: use a decimal like 0.1 or levels like 8/255"))?
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("eps {v} outside [0, 1]"));
    }
    Ok(v)
}

/// Resolves `--arch` (preset, compact text, or JSON file) for an input shape and class count.
pub fn resolve_arch(arch: &str, input: [usize; 3], classes: usize) -> Result<ArchSpec> {
    let p = std::path::Path::new(arch);
    if arch.ends_with(".json") || p.is_file() {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading architecture {arch}"))?;
        return ArchSpec::from_json(&text).with_context(|| format!("architecture {arch}"));
    }
    ArchSpec::resolve(arch, input, classes).with_context(|| format!("architecture `{arch}`"))
}

/// Builds the training configuration from the flags, for a training split of `train_len`
/// images (which sets the default IBP ramp).
pub fn config(a: &TrainArgs, input: [usize; 3], classes: usize, train_len: usize) -> Result<TrainConfig> {
    let arch = resolve_arch(&a.arch, input, classes)?;
    let optimizer = match a.optimizer {
        OptimizerArg::Adam => {
            OptimizerConfig::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: a.weight_decay }
        }
        OptimizerArg::Sgd => {
            OptimizerConfig::Sgd { momentum: a.momentum, nesterov: false, weight_decay: a.weight_decay }
        }
    };
    let schedule = match a.schedule {
        ScheduleArg::Cosine => LrSchedule::Cosine { lr: a.lr, min_lr: 0.0, epochs: a.epochs, warmup_epochs: 0.0 },
        ScheduleArg::Constant => LrSchedule::Constant { lr: a.lr },
        ScheduleArg::Step => LrSchedule::Step { lr: a.lr, gamma: 0.1, every: a.epochs.div_ceil(3).max(1) },
    };
    Ok(TrainConfig {
        dataset: a.dataset.clone(),
        arch,
        method: a.method,
        eps: a.eps,
        steps: a.steps,
        step_size: a.step_size,
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer,
        schedule,
        warmup_epochs: a.warmup_epochs,
        ramp_epochs: a.ramp_epochs.unwrap_or_else(|| {
            let n_train = if a.train_samples == 0 { train_len } else { a.train_samples.min(train_len) };
            default_ramp_epochs(a.method, a.epochs, a.warmup_epochs, n_train.div_ceil(a.batch_size.max(1)))
        }),
        seed: a.seed,
        eval_samples: a.eval_samples,
        eval_steps: a.eval_steps,
        eval_restarts: a.eval_restarts,
        train_samples: a.train_samples,
        qat: a.qat,
        qat_activations: a.qat_activations,
        ibp_kappa: a.ibp_kappa,
        ibp_train_eps: a.ibp_train_eps,
        trades_beta: a.trades_beta,
        select: a.select.map(|criterion| Selection { criterion, holdout: a.select_holdout }),
        crown_ibp_beta_start: a.crown_ibp_beta_start,
        crown_ibp_beta_end: a.crown_ibp_beta_end,
    })
}

/// Fewer IBP ramp steps than this draw a warning (measured on cnn-s / mnist-small: a
/// 24-step ramp never recovers, 126 steps work).
pub const IBP_MIN_RAMP_STEPS: usize = 100;

/// The default IBP ramp is never shorter than this many steps (if the run is long enough).
pub const IBP_DEFAULT_MIN_RAMP_STEPS: usize = 200;

/// `--ramp-epochs` when not given: 2; for IBP and CROWN-IBP a quarter of the epochs after the warm-up
/// (rounded up), but at least [`IBP_DEFAULT_MIN_RAMP_STEPS`] steps of `steps_per_epoch` and
/// at most all epochs after the warm-up. IBP needs a gradual ramp (Gowal et al. 2018), but
/// on cnn-s / mnist-small (40 epochs) a quarter-run ramp certified ~1 point more than a
/// half-run one (two seeds) and a three-quarter one ~4 points less: time at the full eps
/// matters too. See docs/ibp.md.
pub fn default_ramp_epochs(method: Method, epochs: usize, warmup_epochs: usize, steps_per_epoch: usize) -> usize {
    match method {
        Method::Ibp | Method::CrownIbp => {
            let after = epochs.saturating_sub(warmup_epochs).max(1);
            let min = IBP_DEFAULT_MIN_RAMP_STEPS.div_ceil(steps_per_epoch.max(1));
            after.div_ceil(4).max(min).min(after)
        }
        _ => 2,
    }
}

/// Loads a dataset from the `--dataset` / `--data-dir` flags.
pub fn load_dataset(name: &str, dir: Option<PathBuf>) -> Result<data::Splits> {
    let spec: DatasetSpec = name.parse()?;
    let spec = spec.with_data_dir(dir);
    data::load(&spec).with_context(|| format!("loading dataset {name}"))
}

/// Checks `OUT` before any work: a fresh run refuses to overwrite an existing one without
/// `--force` (and with it removes the old run's files, so a later `--resume` cannot mix two
/// runs); `--resume` needs a checkpoint and the checkpoint's own configuration, naming every
/// setting that differs.
fn check_out_dir(a: &TrainArgs, cfg: &TrainConfig) -> Result<()> {
    let ckpt = a.out.join("model.ckpt");
    let metrics = a.out.join("metrics.json");
    if a.resume {
        if !ckpt.exists() {
            bail!("--resume: {} does not exist (nothing to resume; drop --resume to start a new run)", ckpt.display());
        }
        let ck = iocane_trainer::checkpoint::load(&ckpt).context("--resume: loading the checkpoint")?;
        let want = serde_json::to_value(cfg)?;
        let differ: Vec<String> = match (&ck.train_config, &want) {
            (serde_json::Value::Object(old), serde_json::Value::Object(new)) => new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, v)| {
                    let old = old.get(k).map_or("(absent)".to_string(), |o| o.to_string());
                    format!("{k}: checkpoint {old}, flags {v}")
                })
                .collect(),
            _ => vec!["the checkpoint's configuration is unreadable".into()],
        };
        if !differ.is_empty() {
            bail!(
                "--resume with other settings than the run in {}; use the run's own flags:\n  {}",
                a.out.display(),
                differ.join("\n  ")
            );
        }
    } else if ckpt.exists() || metrics.exists() {
        if !a.force {
            bail!(
                "{} already holds a run (model.ckpt / metrics.json): pass --resume to continue it or --force to start afresh",
                a.out.display()
            );
        }
        for f in [&ckpt, &metrics] {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", f.display()))
                }
                _ => {}
            }
        }
    }
    iocane_certify::report::check_writable(&a.out).context("--out is not writable")?;
    Ok(())
}

/// Runs `iocane train`.
pub fn run(a: &TrainArgs) -> Result<Metrics> {
    let splits = load_dataset(&a.dataset, a.data_dir.clone())?;
    let t = &splits.train;
    let mut cfg = config(a, [t.height, t.width, t.channels], t.classes, t.len())?;
    let init = match &a.init {
        None => None,
        Some(p) => {
            let path = iocane_trainer::train::checkpoint::run_checkpoint(p);
            let ck = iocane_trainer::train::checkpoint::load(&path).context("loading the --init checkpoint")?;
            cfg.arch = ck.network.spec().clone();
            Some(ck.network)
        }
    };
    if !(0.0..=1.0).contains(&a.ibp_kappa) {
        bail!("--ibp-kappa {} is outside [0, 1]", a.ibp_kappa);
    }
    for (flag, b) in
        [("--crown-ibp-beta-start", a.crown_ibp_beta_start), ("--crown-ibp-beta-end", a.crown_ibp_beta_end)]
    {
        if !(0.0..=1.0).contains(&b) {
            bail!("{flag} {b} is outside [0, 1]");
        }
    }
    // What the network is: --arch, or the --init checkpoint's network, which replaces it.
    let arch_name = match &a.init {
        Some(p) => format!("the network of --init {}", p.display()),
        None => a.arch.clone(),
    };
    if cfg.method == Method::CrownIbp {
        iocane_trainer::nn::crown_ibp::check_supported(&cfg.arch).with_context(|| format!("--arch {arch_name}"))?;
    }
    if !a.quiet {
        eprintln!(
            "training {} on {} ({} train / {} test), method {}, eps {:.4}, {} params, {} MACs",
            arch_name,
            a.dataset,
            t.len(),
            splits.test.len(),
            cfg.method,
            cfg.eps,
            cfg.arch.param_count(),
            cfg.arch.mac_count()
        );
        if cfg.method.is_bound_training() {
            eprintln!(
                "{}: {} natural warm-up epoch(s), then eps 0 -> {:.4} and kappa 1 -> {} over {} epoch(s){}",
                if cfg.method == Method::CrownIbp { "CROWN-IBP" } else { "IBP" },
                cfg.warmup_epochs,
                cfg.ibp_train_eps(),
                cfg.ibp_kappa,
                cfg.ramp_epochs,
                if a.ibp_train_eps.is_none() {
                    format!(" (train eps = {IBP_TRAIN_EPS_FACTOR} x eps)")
                } else {
                    String::new()
                }
            );
            if cfg.method == Method::CrownIbp {
                eprintln!(
                    "CROWN-IBP: beta {} -> {} over the ramp (margins beta * CROWN-IBP + (1 - beta) * IBP)",
                    cfg.crown_ibp_beta_start, cfg.crown_ibp_beta_end
                );
            }
        }
    }
    if cfg.method.is_bound_training() && cfg.eps > 0.0 {
        let n_train = if cfg.train_samples == 0 { t.len() } else { cfg.train_samples.min(t.len()) };
        let ramp_steps = cfg.ramp_epochs * n_train.div_ceil(cfg.batch_size.max(1));
        if ramp_steps < IBP_MIN_RAMP_STEPS {
            eprintln!(
                "warning: the IBP ramp is only {ramp_steps} steps; below ~{IBP_MIN_RAMP_STEPS} the bounds tend to blow \
                 up and the model never becomes verifiable: use more --epochs or --ramp-epochs"
            );
        }
    }
    check_out_dir(a, &cfg)?;
    let scorer = cfg.select.map(|sel| selection_scorer(sel.criterion, cfg.eps, std::sync::Arc::new(t.clone())));
    let opts = RunOptions {
        progress: !a.quiet,
        resume: a.resume,
        interrupt: Some(super::interrupt_flag("training")),
        init,
        scorer,
    };
    let m = train::train(&cfg, t, &splits.test, &a.out, &opts)?;
    print_summary(&m, &a.out);
    Ok(m)
}

/// Calibration images of the int8 model [`selection_scorer`] scores (`iocane export`'s
/// default `--calib`, so the scored model is the one export writes).
pub const SELECT_CALIB: usize = 1000;

/// The score of `--select`: quantizes the network exactly as `iocane export` does (the first
/// [`SELECT_CALIB`] images of `calib` set the activation ranges) and runs the certifier's gate
/// on the held-out images at `floor(eps * 255)` levels: the certified fraction (interval and
/// linear bounds, no attacks) or the fraction PGD does not break on the int8 model.
pub fn selection_scorer(
    criterion: SelectCriterion,
    eps: f32,
    calib: std::sync::Arc<iocane_trainer::data::Dataset>,
) -> Scorer {
    use iocane_certify::attack::{AttackName, AttackSuite};
    use iocane_certify::gate::{self, BoundMethod, GateConfig, GateKind};
    // f32 eps of k/255 can land a hair below k: absorb that before flooring.
    let k = (eps as f64 * 255.0 + 1e-4).floor().clamp(0.0, 255.0) as u8;
    Scorer(std::sync::Arc::new(move |net, holdout| {
        if k == 0 {
            return Err("--select needs --eps of at least 1/255".into());
        }
        let repr = iocane_trainer::quant::quantize(net, &calib, SELECT_CALIB.min(calib.len()), vec![], vec![])
            .map_err(|e| format!("quantizing: {e}"))?;
        let blob = repr.emit();
        let model = iocane_runtime::Model::parse(&blob).map_err(|e| format!("the quantized model: {e}"))?;
        let (gate_kind, attacks) = match criterion {
            SelectCriterion::Certified => (GateKind::Certified, vec![]),
            SelectCriterion::Pgd => (GateKind::Empirical, vec![AttackName::Pgd]),
        };
        let cfg = GateConfig {
            k,
            sweep: vec![],
            samples: 0,
            gate: gate_kind,
            bound: BoundMethod::Crown,
            random_samples: 0,
            square_queries: 0,
            suite: AttackSuite { attacks, ..AttackSuite::default() },
            ..GateConfig::default()
        };
        let never = std::sync::atomic::AtomicBool::new(false);
        let out = gate::run(&model, holdout, &cfg, &|_| {}, &never).map_err(|e| e.to_string())?;
        let lv = out.at(k).ok_or("the gate reported no counts at the radius")?;
        Ok(lv.acc(match criterion {
            SelectCriterion::Certified => lv.certified,
            SelectCriterion::Pgd => lv.empirical,
        }) as f32)
    }))
}

/// Prints the per-epoch table and the final evaluation.
pub fn print_summary(m: &Metrics, out: &std::path::Path) {
    let select = m.config.select;
    let held_out = match select {
        Some(sel) => format!("  {:>9}", format!("held-{}", sel.criterion)),
        None => String::new(),
    };
    println!("\n epoch  train-eps      lr   loss  train-acc  clean  pgd@eps  ibp@eps{held_out}  samples/s");
    for e in &m.epochs {
        let score = match (select, e.select_score) {
            (Some(_), Some(v)) => {
                format!("  {:>8.3}{}", v, if m.selected_epoch == Some(e.epoch) { "*" } else { " " })
            }
            (Some(_), None) => format!("  {:>9}", "-"),
            _ => String::new(),
        };
        println!(
            " {:>5}  {:>9.4}  {:.1e}  {:.3}  {:>9.3}  {:.3}  {:>7.3}  {:>7.3}{score}  {:>9.0}",
            e.epoch,
            e.train_eps,
            e.lr,
            e.train_loss,
            e.train_acc,
            e.clean_acc,
            e.robust_acc,
            e.ibp_verified_acc,
            e.samples_per_s
        );
    }
    if let (Some(sel), Some(best)) = (select, m.selected_epoch) {
        println!(
            "selected epoch {best} (* above: best int8 {} accuracy on {} held-out training images); \
             the final evaluation is of it and `iocane export` exports it ({}/{})",
            sel.criterion,
            sel.holdout,
            out.display(),
            train::SELECTED_CKPT
        );
    }
    if let Some(f) = &m.final_eval {
        println!(
            "\nfinal on {} test samples, eps {:.4}: clean {:.2}%, FGSM {:.2}%, {} {:.2}%, IBP-verified (float) {:.2}%",
            f.samples,
            f.eps,
            100.0 * f.clean_acc,
            100.0 * f.fgsm_acc,
            f.attack.split(' ').next().unwrap_or("PGD"),
            100.0 * f.robust_acc,
            100.0 * f.ibp_verified_acc
        );
    }
    println!(
        "params {}, MACs {}, wall {:.1}s; wrote {}/model.ckpt and metrics.json",
        m.params,
        m.macs,
        m.wall_seconds,
        out.display()
    );
}

//! CROWN-IBP certified training: the β schedule and the configuration fields, the
//! max-pooling refusal, and a short training run on real data (the bounds and gradients are
//! unit-tested in `nn::crown_ibp`).

use iocane_trainer::data::{load, DatasetSpec};
use iocane_trainer::nn::ArchSpec;
use iocane_trainer::train::{self, Method, RunOptions, TrainConfig, TrainError};

use crate::common::train_config;

fn config() -> TrainConfig {
    TrainConfig {
        steps: 1,
        ramp_epochs: 2,
        seed: 5,
        train_samples: 600,
        eval_samples: 200,
        ..train_config(Method::CrownIbp, 4)
    }
}

/// β ramps per step from the start value to the end value over the eps ramp, alongside eps
/// and κ, and stays there; the configuration round-trips, and configurations without the
/// CROWN-IBP fields (every earlier run) load with the defaults and serialise unchanged.
#[test]
fn crown_ibp_beta_schedule_and_config() {
    let mut cfg = config();
    assert!(cfg.method.is_bound_training() && Method::Ibp.is_bound_training() && !Method::Pgd.is_bound_training());
    assert!(cfg.attack(0.1).is_none());
    // warm-up 1 epoch, ramp 2 epochs of 10 steps.
    assert_eq!(cfg.crown_ibp_beta(0, 3, 10), 1.0);
    assert_eq!(cfg.crown_ibp_beta(1, 9, 10), 0.5);
    assert_eq!(cfg.ibp_schedule(1, 9, 10).0, cfg.ibp_train_eps() * 0.5);
    assert_eq!(cfg.crown_ibp_beta(2, 9, 10), 0.0);
    assert_eq!(cfg.crown_ibp_beta(3, 0, 10), 0.0);
    (cfg.crown_ibp_beta_start, cfg.crown_ibp_beta_end) = (0.8, 0.2);
    assert!((cfg.crown_ibp_beta(1, 9, 10) - 0.5).abs() < 1e-6);
    assert_eq!(cfg.crown_ibp_beta(2, 9, 10), 0.2);
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(serde_json::from_value::<TrainConfig>(json.clone()).unwrap(), cfg);
    assert_eq!(json["method"], "crown-ibp");
    // Default β values are not written: other methods' configurations are as before.
    let ibp = train_config(Method::Ibp, 4);
    let json = serde_json::to_value(&ibp).unwrap();
    assert!(json.get("crown_ibp_beta_start").is_none() && json.get("crown_ibp_beta_end").is_none(), "{json}");
    let back: TrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!((back.crown_ibp_beta_start, back.crown_ibp_beta_end), (1.0, 0.0));
    assert_eq!("crown-ibp".parse::<Method>().unwrap(), Method::CrownIbp);
    assert_eq!(Method::CrownIbp.to_string(), "crown-ibp");
}

/// A max-pooling architecture is refused before any training, with the reason.
#[test]
fn crown_ibp_refuses_maxpool() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let mut cfg = config();
    cfg.arch = ArchSpec::from_compact("conv4k3p1,relu,maxpool2,flatten,dense10", [28, 28, 1], 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = train::train(&cfg, &s.train, &s.test, dir.path(), &RunOptions::default()).unwrap_err();
    assert!(matches!(e, TrainError::Config(_)) && e.to_string().contains("crown-ibp does not support maxpool"), "{e}");
    assert!(!dir.path().join("model.ckpt").exists());
}

/// A short CROWN-IBP run of cnn-s learns (clean accuracy well above chance), verifies some
/// samples at the end of the ramp, and its verified samples are PGD-robust.
#[test]
fn crown_ibp_training_learns() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = train::train(&config(), &s.train, &s.test, dir.path(), &RunOptions::default()).unwrap();
    let last = m.epochs.last().unwrap();
    assert_eq!(m.epochs[0].train_eps, 0.0);
    assert_eq!(last.train_eps, 0.1 * 1.1);
    assert!(last.clean_acc > 0.5, "clean {}", last.clean_acc);
    assert!(last.ibp_verified_acc <= last.robust_acc + 1e-6, "{last:?}");
    assert!(m.epochs.iter().all(|e| e.train_loss.is_finite()));
}

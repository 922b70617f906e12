//! TRADES training on real data, and model selection on a held-out slice of the training
//! split (`TrainConfig::select`): the best epoch is kept, the held-out images are never
//! trained on, and a killed run resumes to the same bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use iocane_trainer::data::{load, Dataset, DatasetSpec};
use iocane_trainer::nn::Network;
use iocane_trainer::train::checkpoint;
use iocane_trainer::train::{
    evaluate, train, Method, RunOptions, Scorer, SelectCriterion, Selection, TrainConfig, SELECTED_CKPT,
};

use crate::common::train_config;

#[test]
fn trades_training_beats_natural_training_under_pgd() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let nat = train(&train_config(Method::Natural, 4), &s.train, &s.test, a.path(), &RunOptions::default()).unwrap();
    let cfg = TrainConfig { trades_beta: 6.0, ..train_config(Method::Trades, 4) };
    let trades = train(&cfg, &s.train, &s.test, b.path(), &RunOptions::default()).unwrap();
    let (nf, tf) = (nat.final_eval.unwrap(), trades.final_eval.unwrap());
    assert!(tf.clean_acc > 0.75, "TRADES clean {}", tf.clean_acc);
    assert!(tf.robust_acc > nf.robust_acc + 0.15, "TRADES {} vs natural {} under PGD", tf.robust_acc, nf.robust_acc);
    // beta = 0 leaves the clean cross-entropy: the same training as Method::Natural, up to
    // the summation order of the double-size batch's gradient.
    let zero = TrainConfig { trades_beta: 0.0, train_samples: 600, ..train_config(Method::Trades, 2) };
    let natural = TrainConfig { train_samples: 600, ..train_config(Method::Natural, 2) };
    let (c, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(&zero, &s.train, &s.test, c.path(), &RunOptions::default()).unwrap();
    train(&natural, &s.train, &s.test, d.path(), &RunOptions::default()).unwrap();
    let load = |d: &tempfile::TempDir| checkpoint::load(&d.path().join("model.ckpt")).unwrap().network;
    let (zc, nc) = (load(&c), load(&d));
    let mut worst = 0f32;
    for (a, b) in zc.params().layers.iter().zip(&nc.params().layers) {
        for (u, v) in a.weights.iter().chain(&a.bias).zip(b.weights.iter().chain(&b.bias)) {
            worst = worst.max((u - v).abs());
        }
    }
    assert!(worst < 1e-3, "TRADES with beta 0 drifts {worst} from natural training");
    // With beta > 0 it is not natural training.
    let six = TrainConfig { trades_beta: 6.0, ..zero };
    let e = tempfile::tempdir().unwrap();
    train(&six, &s.train, &s.test, e.path(), &RunOptions::default()).unwrap();
    assert_ne!(load(&e).params(), nc.params());
}

fn select_config(holdout: usize) -> TrainConfig {
    TrainConfig {
        train_samples: 1000,
        select: Some(Selection { criterion: SelectCriterion::Pgd, holdout }),
        ..train_config(Method::Natural, 3)
    }
}

/// A real, pure score: the float network's clean accuracy on the held-out images.
fn accuracy_scorer() -> Scorer {
    Scorer(Arc::new(|net: &Network, held: &Dataset| Ok(evaluate(net, held, 0, None, 0).0)))
}

fn opts(scorer: Scorer) -> RunOptions {
    RunOptions { scorer: Some(scorer), ..RunOptions::default() }
}

#[test]
fn selection_keeps_the_best_held_out_epoch_and_evaluates_it() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let seen: Arc<Mutex<Vec<(Network, Dataset)>>> = Arc::default();
    // A scripted score that peaks in epoch 2, recording what it was shown.
    let script = [0.25f32, 0.75, 0.5];
    let rec = seen.clone();
    let scorer = Scorer(Arc::new(move |net: &Network, held: &Dataset| {
        let mut v = rec.lock().unwrap();
        v.push((net.clone(), held.clone()));
        Ok(script[v.len() - 1])
    }));
    let dir = tempfile::tempdir().unwrap();
    let cfg = select_config(200);
    let m = train(&cfg, &s.train, &s.test, dir.path(), &opts(scorer)).unwrap();
    assert_eq!(m.selected_epoch, Some(2));
    assert_eq!(m.epochs.iter().map(|e| e.select_score.unwrap()).collect::<Vec<_>>(), script);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // The held-out slice is the last 200 of the 1,000 training images in use.
    assert_eq!(seen[0].1, s.train.subset(&(800..1000).collect::<Vec<_>>()));
    let sel = checkpoint::load(&dir.path().join(SELECTED_CKPT)).unwrap();
    assert_eq!(sel.epoch, 2);
    assert_eq!(sel.network.params(), seen[1].0.params(), "selected.ckpt is not epoch 2's network");
    let last = checkpoint::load(&dir.path().join("model.ckpt")).unwrap();
    assert_eq!(last.epoch, 3);
    assert_ne!(last.network.params(), sel.network.params());
    // The final evaluation is of the selected network, and run directories resolve to it.
    let fe = m.final_eval.unwrap();
    assert_eq!(fe.clean_acc, evaluate(&sel.network, &s.test, 0, None, 0).0);
    assert_eq!(checkpoint::run_checkpoint(dir.path()), dir.path().join(SELECTED_CKPT));
    let plain = tempfile::tempdir().unwrap();
    assert_eq!(checkpoint::run_checkpoint(plain.path()), plain.path().join("model.ckpt"));
}

#[test]
fn held_out_images_are_never_trained_on() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let cfg = select_config(300);
    // The same training split with the held-out slice (images 700..1000) replaced by noise.
    let mut other = s.train.clone();
    let il = other.image_len();
    for (i, v) in other.images[700 * il..1000 * il].iter_mut().enumerate() {
        *v = (i * 7919 % 251) as u8;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ma = train(&cfg, &s.train, &s.test, a.path(), &opts(accuracy_scorer())).unwrap();
    let mb = train(&cfg, &other, &s.test, b.path(), &opts(accuracy_scorer())).unwrap();
    let (ca, cb) = (
        checkpoint::load(&a.path().join("model.ckpt")).unwrap(),
        checkpoint::load(&b.path().join("model.ckpt")).unwrap(),
    );
    assert_eq!(ca.network.params(), cb.network.params(), "the held-out images changed the training");
    // ... but they are what the score sees.
    assert_ne!(
        ma.epochs.iter().map(|e| e.select_score).collect::<Vec<_>>(),
        mb.epochs.iter().map(|e| e.select_score).collect::<Vec<_>>()
    );
    // The selected epoch is the best score (the latest of equal ones).
    let scores: Vec<f32> = ma.epochs.iter().map(|e| e.select_score.unwrap()).collect();
    let best = scores.iter().copied().fold(f32::MIN, f32::max);
    let want = scores.iter().rposition(|&v| v == best).unwrap() + 1;
    assert_eq!(ma.selected_epoch, Some(want));
}

#[test]
fn selection_is_checked_before_training() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for holdout in [0, 1000, 5000] {
        let e = train(&select_config(holdout), &s.train, &s.test, dir.path(), &opts(accuracy_scorer())).unwrap_err();
        assert!(e.to_string().contains("holds out"), "{e}");
    }
    let e = train(&select_config(100), &s.train, &s.test, dir.path(), &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("scorer"), "{e}");
    assert!(!dir.path().join("model.ckpt").exists());
    // A failing score stops the run with the epoch named, never a panic.
    let failing = Scorer(Arc::new(|_: &Network, _: &Dataset| Err("no model".to_string())));
    let e = train(&select_config(100), &s.train, &s.test, dir.path(), &opts(failing)).unwrap_err();
    assert!(e.to_string().contains("epoch 1") && e.to_string().contains("no model"), "{e}");
}

/// Trains `cfg`, stopping after `stop_after` epochs (the interrupt flag is raised from the
/// scorer of that epoch, so the run stops at the next batch boundary of the next epoch).
fn train_stopping(cfg: &TrainConfig, s: &iocane_trainer::data::Splits, dir: &std::path::Path, stop_after: usize) {
    let flag = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(0usize));
    let (f, c) = (flag.clone(), calls.clone());
    let inner = accuracy_scorer();
    let scorer = Scorer(Arc::new(move |net: &Network, held: &Dataset| {
        let mut n = c.lock().unwrap();
        *n += 1;
        if *n == stop_after {
            f.store(true, Ordering::SeqCst);
        }
        (inner.0)(net, held)
    }));
    let r = train(cfg, &s.train, &s.test, dir, &RunOptions { interrupt: Some(flag), ..opts(scorer) });
    assert!(r.unwrap_err().to_string().contains("--resume"));
}

#[test]
fn a_killed_selecting_run_resumes_to_the_same_bytes() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let cfg = select_config(200);
    let full = tempfile::tempdir().unwrap();
    train(&cfg, &s.train, &s.test, full.path(), &opts(accuracy_scorer())).unwrap();
    let resume = RunOptions { resume: true, ..opts(accuracy_scorer()) };
    let same = |dir: &std::path::Path| {
        for f in ["model.ckpt", SELECTED_CKPT] {
            assert_eq!(
                std::fs::read(full.path().join(f)).unwrap(),
                std::fs::read(dir.join(f)).unwrap(),
                "{f} differs after resuming"
            );
        }
    };
    // Stopped after epoch 2, resumed.
    let part = tempfile::tempdir().unwrap();
    train_stopping(&cfg, &s, part.path(), 2);
    train(&cfg, &s.train, &s.test, part.path(), &resume).unwrap();
    same(part.path());
    // Killed between model.ckpt and selected.ckpt of an epoch that was selected: the run
    // resumes from model.ckpt, which then holds the selected network.
    let always = Scorer(Arc::new(|_: &Network, _: &Dataset| Ok(0.5)));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(&cfg, &s.train, &s.test, a.path(), &opts(always.clone())).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let stopper = Scorer(Arc::new(move |_: &Network, _: &Dataset| {
        f.store(true, Ordering::SeqCst);
        Ok(0.5)
    }));
    let r = train(&cfg, &s.train, &s.test, b.path(), &RunOptions { interrupt: Some(flag), ..opts(stopper) });
    assert!(r.is_err());
    assert_eq!(checkpoint::load(&b.path().join("model.ckpt")).unwrap().epoch, 1);
    std::fs::remove_file(b.path().join(SELECTED_CKPT)).unwrap();
    train(&cfg, &s.train, &s.test, b.path(), &RunOptions { resume: true, ..opts(always) }).unwrap();
    for f in ["model.ckpt", SELECTED_CKPT] {
        assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap(), "{f}");
    }
}

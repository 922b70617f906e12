//! A user's property test of an exported int8 model, with `iocane_certify::proptest`.
//!
//! - `cargo test --example proptest_robustness` runs the two `#[test]`s below (they also run
//!   under `cargo test --workspace`);
//! - `cargo run --example proptest_robustness -- MODEL.icn [K]` property-tests your own
//!   exported model on the first 20 mnist-small test images at `K` levels (default 1).
//!
//! Without `IOCANE_MODEL=path/to/model.icn` the tests train a small MLP for a few seconds.
use std::sync::OnceLock;

use iocane::certify::proptest::{check_robust, default_config};
use iocane::runtime::Model;
use iocane::trainer::data::{self, Dataset};

/// The model under test: `IOCANE_MODEL`, else a small MLP trained here (deterministic).
fn model_blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| match std::env::var_os("IOCANE_MODEL") {
        Some(path) => std::fs::read(path).expect("reading IOCANE_MODEL"),
        None => train_small_mlp(),
    })
}

fn test_set() -> &'static Dataset {
    static TEST: OnceLock<Dataset> = OnceLock::new();
    TEST.get_or_init(|| data::load(&data::DatasetSpec::MnistSmall).expect("mnist-small").test)
}

fn train_small_mlp() -> Vec<u8> {
    use iocane::trainer::{checkpoint, nn::ArchSpec, quant, train};
    let splits = data::load(&data::DatasetSpec::MnistSmall).expect("mnist-small");
    let arch = ArchSpec::preset("mlp", [28, 28, 1], 10).unwrap();
    let cfg = train::TrainConfig {
        train_samples: 3000,
        eval_samples: 100,
        ..train::TrainConfig::new("mnist-small", arch, train::Method::Natural, 0.0, 2)
    };
    let dir = std::env::temp_dir().join(format!("iocane-proptest-example-{}", std::process::id()));
    train::train(&cfg, &splits.train, &splits.test, &dir, &train::RunOptions::default()).expect("training");
    let net = checkpoint::load(&dir.join("model.ckpt")).expect("checkpoint").network;
    let _ = std::fs::remove_dir_all(&dir);
    quant::quantize(&net, &splits.train, 300, splits.train.labels_text.clone(), vec![]).expect("quantize").emit()
}

/// `cargo run --example proptest_robustness -- [MODEL.icn] [K]`: the first 20 test images at `K` levels.
fn main() {
    let mut args = std::env::args().skip(1);
    let blob = match args.next() {
        Some(path) => std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}")),
        None => model_blob().to_vec(),
    };
    let k: u8 = args.next().map_or(1, |s| s.parse().expect("K: pixel levels, 0..=255"));
    let model = Model::parse(&blob).expect("not an iocane model");
    let mut broken = 0;
    for i in 0..20 {
        let (img, label) = (test_set().image(i), test_set().label(i));
        match check_robust(&model, img, label, k, &default_config()) {
            Ok(()) => println!("image {i}: no counterexample in 256 points of the ball of {k} level(s)"),
            Err(e) => {
                broken += 1;
                println!("image {i}: {e}");
            }
        }
    }
    println!("{broken} of 20 images broken at {k}/255");
}

#[cfg(test)]
mod tests {
    use super::*;
    use iocane::certify::proptest::{dataset_images, perturbed_images};
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// Every correctly classified image among the first 20 keeps its class on every sampled
    /// point of its ball of one pixel level (1/255). A failure names the dataset index and
    /// a shrunk perturbation.
    #[test]
    fn correct_images_stay_correct_one_level_away() {
        let model = Model::parse(model_blob()).unwrap();
        proptest!(ProptestConfig { cases: 20, failure_persistence: None, ..ProptestConfig::default() },
            |(s in dataset_images(test_set(), 20))| {
            prop_assume!(iocane::certify::proptest::classify(&model, &s.pixels) == s.label);
            iocane::certify::prop_robust!(&model, &s.pixels, s.label, 1);
        });
    }

    /// The same model is not robust at 64/255 (a quarter of the pixel range): the property
    /// test finds a counterexample and shrinks it to a few changed pixels.
    #[test]
    fn a_large_ball_is_broken_and_the_counterexample_shrinks() {
        let model = Model::parse(model_blob()).unwrap();
        let found = (0..20).find_map(|i| {
            let (img, label) = (test_set().image(i), test_set().label(i));
            check_robust(&model, img, label, 64, &default_config()).err()
        });
        let e = found.expect("a naturally trained MLP should not be robust at 64/255");
        assert_ne!(e.class, e.label);
        assert!(e.distance <= 64 && e.changed < 784 / 2, "not shrunk: {e}");
        // Points of the ball drawn directly, composed with a dataset image.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (s, x) = perturbed_images(test_set(), 20, 3).new_tree(&mut runner).unwrap().current();
        assert!(x.iter().zip(&s.pixels).all(|(&a, &b)| a.abs_diff(b) <= 3));
    }
}

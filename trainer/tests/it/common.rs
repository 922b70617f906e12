//! Helpers shared by the trainer's integration tests.

use std::fmt::Debug;

use iocane_trainer::data::Splits;
use iocane_trainer::nn::{ArchSpec, LrSchedule, Network, OptimizerConfig, Tensor};
use iocane_trainer::rng::Rng;
use iocane_trainer::train::{train, Method, RunOptions, TrainConfig};

/// The base configuration of the training tests: `cnn-s` on `mnist-small`, Adam with a
/// cosine schedule over `epochs`, eps 0.1; each test sets what it varies.
pub fn train_config(method: Method, epochs: usize) -> TrainConfig {
    TrainConfig {
        dataset: "mnist-small".into(),
        arch: ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap(),
        method,
        eps: 0.1,
        steps: 5,
        step_size: None,
        epochs,
        batch_size: 64,
        optimizer: OptimizerConfig::adam(),
        schedule: LrSchedule::Cosine { lr: 3e-3, min_lr: 0.0, epochs, warmup_epochs: 0.0 },
        warmup_epochs: 1,
        ramp_epochs: 1,
        seed: 11,
        eval_samples: 200,
        eval_steps: 10,
        eval_restarts: 1,
        train_samples: 2500,
        qat: false,
        qat_activations: false,
        ibp_kappa: 0.5,
        ibp_train_eps: None,
        trades_beta: iocane_trainer::train::DEFAULT_TRADES_BETA,
        select: None,
        crown_ibp_beta_start: 1.0,
        crown_ibp_beta_end: 0.0,
    }
}

/// The network and batch of the thread-count determinism tests: a 16x16 stack covering the
/// direct conv / depthwise kernels (multiples of 8 channels), the im2col path (6 filters), a
/// pointwise conv, pools, activations and dense layers, on `chunks` whole chunks plus `extra`
/// samples of uniform noise.
pub fn thread_test_case(chunks: usize, extra: usize) -> (Network, Tensor, Vec<usize>) {
    let spec = ArchSpec::from_compact(
        "conv8k3s2p1,relu,maxpool2,dw3p1,relu6,conv16k3p1,relu,conv6k3p1,relu,conv8k1,avgpool2s1,flatten,dense16,relu,dense10",
        [16, 16, 1],
        10,
    )
    .unwrap();
    let net = Network::new(spec, 7).unwrap();
    let mut rng = Rng::new(8);
    let n = chunks * net.chunk_size() + extra;
    let x = Tensor::new([n, 16, 16, 1], (0..n * 256).map(|_| rng.uniform_f32()).collect()).unwrap();
    let labels: Vec<usize> = (0..n).map(|_| rng.below(10)).collect();
    (net, x, labels)
}

/// Runs `f` on rayon pools of 1, 2 and 3 threads and asserts the three results are equal.
pub fn assert_same_on_1_2_3_threads<T: PartialEq + Debug + Send>(f: impl Fn() -> T + Sync) {
    let run = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(&f);
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// Trains `cfg` on `s` into a fresh temporary directory, which holds the run's files
/// (`model.ckpt`, `metrics.json`).
pub fn train_into_tempdir(cfg: &TrainConfig, s: &Splits) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    train(cfg, &s.train, &s.test, dir.path(), &RunOptions::default()).unwrap();
    dir
}

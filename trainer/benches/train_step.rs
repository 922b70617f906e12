//! One PGD-7 adversarial training step (Madry et al.): 7 attack gradient passes with
//! respect to the input, one parameter-gradient pass on the adversarial batch, and an
//! SGD-momentum update. Batch 128, MNIST-shaped random data, eps 0.1.
//!
//! Run with `cargo bench -p iocane-trainer --bench train_step`; throughput is reported in
//! samples/s (criterion "elements"). Also benchmarks the single passes.
//!
//! Profiling mode: with `IOCANE_FIXED_ITERS=<n>` (and optionally `IOCANE_PRESET=<name>`)
//! the binary skips criterion and runs exactly `n` PGD-7 steps per preset, printing wall
//! time; combine with `perf stat` / `RAYON_NUM_THREADS` for CPU-time measurements that are
//! robust to a busy machine.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use iocane_trainer::nn::attack::Attack;
use iocane_trainer::nn::{ArchSpec, Network, Optimizer, OptimizerConfig, Tensor, Want};
use iocane_trainer::rng::Rng;
use std::hint::black_box;

const BATCH: usize = 128;

fn setup(preset: &str) -> (Network, Tensor, Vec<usize>) {
    let spec = ArchSpec::preset(preset, [28, 28, 1], 10).expect("preset");
    let net = Network::new(spec, 1).expect("network");
    let mut rng = Rng::new(2);
    let x = Tensor::new([BATCH, 28, 28, 1], (0..BATCH * 784).map(|_| (rng.below(256) as f32) / 255.0).collect())
        .expect("tensor");
    let labels = (0..BATCH).map(|_| rng.below(10)).collect();
    (net, x, labels)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);
    for preset in ["mlp", "cnn-s", "cnn-m", "dwcnn"] {
        let (mut net, x, labels) = setup(preset);
        let mut opt =
            Optimizer::new(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 }, net.params());
        let attack = Attack::pgd(0.1, 7);
        let mut rng = Rng::new(3);
        group.bench_function(BenchmarkId::new("pgd7", preset), |b| {
            b.iter(|| {
                let adv = attack.perturb(&net, &x, &labels, &mut rng);
                let r = net.loss_and_grads(&adv, &labels, Want::PARAMS);
                let g = r.param_grads.expect("grads");
                opt.step(net.params_mut(), &g, 0.01);
                black_box(r.loss)
            })
        });
        if preset == "mlp" || preset == "cnn-s" {
            group.bench_function(BenchmarkId::new("input_grad_pass", preset), |b| {
                b.iter(|| black_box(net.loss_and_grads(&x, &labels, Want::INPUT).loss))
            });
            group.bench_function(BenchmarkId::new("param_grad_pass", preset), |b| {
                b.iter(|| black_box(net.loss_and_grads(&x, &labels, Want::PARAMS).loss))
            });
            group
                .bench_function(BenchmarkId::new("forward", preset), |b| b.iter(|| black_box(net.forward(&x).data[0])));
        }
    }
    group.finish();
}

fn fixed_iters(iters: usize) {
    let only = std::env::var("IOCANE_PRESET").ok();
    for preset in ["mlp", "cnn-s", "cnn-m", "dwcnn"] {
        if only.as_deref().is_some_and(|o| o != preset) {
            continue;
        }
        let (mut net, x, labels) = setup(preset);
        let mut opt = Optimizer::new(OptimizerConfig::sgd(0.9), net.params());
        let attack = Attack::pgd(0.1, 7);
        let mut rng = Rng::new(3);
        let start = std::time::Instant::now();
        for _ in 0..iters {
            let adv = attack.perturb(&net, &x, &labels, &mut rng);
            let r = net.loss_and_grads(&adv, &labels, Want::PARAMS);
            opt.step(net.params_mut(), &r.param_grads.expect("grads"), 0.01);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{preset:6} {iters} PGD-7 steps of {BATCH}: {:.3} s wall, {:.0} samples/s",
            secs,
            (iters * BATCH) as f64 / secs
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(iters) = std::env::var("IOCANE_FIXED_ITERS").ok().and_then(|v| v.parse().ok()) {
        fixed_iters(iters);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

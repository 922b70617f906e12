//! Runs the small CNN (and each of its layers alone) many times and prints the mean time per
//! image, for profilers and quick checks:
//! `cargo run --release -p iocane-runtime --features testing --example profile_cnn`
//! (`RUNS=N` sets the repetitions, `ONLY=prefix` runs only the models whose name starts so).
use iocane_runtime::emit::ModelRepr;
use iocane_runtime::testing::{random_cnn_s, random_model, SynthLayer};
use iocane_runtime::{Model, Shape};

fn time(name: &str, repr: ModelRepr, runs: u32) {
    if std::env::var("ONLY").is_ok_and(|o| !name.starts_with(&o)) {
        return;
    }
    let blob = repr.emit();
    let model = Model::parse(&blob).unwrap();
    let n = model.input_shape().len();
    let px: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
    let mut arena = vec![0u8; model.arena_size()];
    let mut logits = vec![0i32; model.num_classes()];
    let mut s = 0usize;
    let t = std::time::Instant::now();
    for _ in 0..runs {
        s += model.run(std::hint::black_box(&px), &mut arena, &mut logits).unwrap();
    }
    println!("{name:>28}: {:?} per image (checksum {s})", t.elapsed() / runs);
}

fn main() {
    let runs: u32 = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    time("cnn-s", random_cnn_s(1), runs);
    let conv = |filters, relu| SynthLayer::Conv { filters, k: 3, s: 2, p: 1, relu };
    time("conv 28x28x1 -> 8, dense 2", random_model(Shape::new(28, 28, 1), 2, &[conv(8, true)], 1), runs);
    time("conv 14x14x8 -> 16, dense 2", random_model(Shape::new(14, 14, 8), 2, &[conv(16, true)], 1), runs);
    time("dense 784 -> 10", random_model(Shape::new(7, 7, 16), 10, &[], 1), runs);
}

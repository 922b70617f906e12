//! Single-image int8 inference on the host: the 784-64-32-10 MLP, the small CNN, and the
//! depthwise-separable `dwcnn` shape (`conv8k3s2p1, dw3p1, conv16k1, dw3s2p1, conv32k1,
//! dense10`, random weights).
//!
//! `cargo bench -p iocane-runtime --features testing --bench inference`
//! MACs per ns = model MACs / (ns per inference); both are printed once per model.
//! The `batch` group runs the same models on 128 images per `Model::run_batch` call
//! (throughput in images).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iocane_runtime::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
use iocane_runtime::{Model, Shape};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("inference");
    let dwcnn = [
        SynthLayer::Conv { filters: 8, k: 3, s: 2, p: 1, relu: true },
        SynthLayer::Depthwise { k: 3, s: 1, p: 1, relu: true },
        SynthLayer::Conv { filters: 16, k: 1, s: 1, p: 0, relu: true },
        SynthLayer::Depthwise { k: 3, s: 2, p: 1, relu: true },
        SynthLayer::Conv { filters: 32, k: 1, s: 1, p: 0, relu: true },
    ];
    let dw = random_model(Shape::new(28, 28, 1), 10, &dwcnn, 1);
    let mut models = Vec::new();
    for (name, repr) in [("mlp", random_mlp(1)), ("cnn-s", random_cnn_s(1)), ("dwcnn", dw)] {
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap();
        let pixels: Vec<u8> = (0..model.input_len()).map(|i| (i * 37 % 256) as u8).collect();
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; model.num_classes()];
        eprintln!("{name}: {} MACs, arena {} bytes, blob {} bytes", model.macs(), model.arena_size(), blob.len());
        g.throughput(Throughput::Elements(model.macs() as u64));
        g.bench_function(name, |b| {
            b.iter(|| model.run(black_box(&pixels), &mut arena, &mut logits).unwrap());
        });
        models.push((name, blob));
    }
    g.finish();

    const BATCH: usize = 128;
    let mut g = c.benchmark_group("batch");
    for (name, blob) in &models {
        let model = Model::parse(blob).unwrap();
        let pixels: Vec<u8> = (0..BATCH * model.input_len()).map(|i| (i * 37 % 251) as u8).collect();
        let mut logits = vec![0i32; BATCH * model.num_classes()];
        let mut classes = vec![0usize; BATCH];
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(*name, |b| {
            b.iter(|| model.run_batch(black_box(&pixels), &mut logits, &mut classes).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

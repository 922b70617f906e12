//! Single-image inference: the float model exported to ONNX and run by tract-onnx (optimised
//! plan, input `[1, 1, 28, 28]`, one reused state) against the same network quantized to
//! int8 ([`iocane_trainer::quant::quantize`], calibrated on 512 mnist-small training
//! images) and run by `iocane_runtime::Model::run`. Both sides start from
//! `Network::new(preset, seed 1)` for every preset: `mlp`, `cnn-s`, `cnn-m`, `dwcnn`.
//!
//! `cargo bench -p iocane-trainer --bench vs_tract`
//!
//! Then the same at batch `B` on one thread: tract's plan for `[B, 1, 28, 28]` against
//! `Model::run_batch` on the same images. `B` is [`BATCH`] unless the environment sets
//! `IOCANE_BENCH_BATCH` (1 to 4096), for finding tract's best batch:
//! `IOCANE_BENCH_BATCH=512 cargo bench -p iocane-trainer --bench vs_tract -- batch`.
//!
//! Bench ids: `tract_f32/PRESET` and `iocane_int8/PRESET` (one image; throughput in MACs,
//! criterion "elements"), `tract_f32_batch/PRESET` and `iocane_int8_batch/PRESET` (throughput
//! in images). The setup prints, per model, the MAC count,
//! the ONNX and blob sizes and the top-1 agreement of the two on 500 test images.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iocane_runtime::Model;
use iocane_trainer::data::{self, DatasetSpec};
use iocane_trainer::nn::{ArchSpec, Network};
use iocane_trainer::onnx::export_onnx;
use iocane_trainer::quant::quantize;
use std::hint::black_box;
use tract_onnx::prelude::*;

const SHAPE: [usize; 4] = [1, 1, 28, 28];
/// Images per batch in the batch groups, by default.
const BATCH: usize = 128;

/// The batch size: `IOCANE_BENCH_BATCH` if set (1 to 4096), else [`BATCH`].
fn batch_size() -> usize {
    match std::env::var("IOCANE_BENCH_BATCH") {
        Err(_) => BATCH,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => n,
            _ => panic!("IOCANE_BENCH_BATCH must be a whole number from 1 to 4096, got {v:?}"),
        },
    }
}

fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    (1..v.len()).fold(0, |best, j| if v[j] > v[best] { j } else { best })
}

fn bench(c: &mut Criterion) {
    let batch = batch_size();
    let batch_shape = [batch, 1, 28, 28];
    let splits = data::load(&DatasetSpec::MnistSmall).expect("mnist-small");
    let pixels = splits.test.image(0).to_vec();
    let floats: Vec<f32> = pixels.iter().map(|&b| b as f32 / 255.0).collect();
    let input = Tensor::from_shape(&SHAPE, &floats).expect("input").into_tvalue();

    let mut tract_group = Vec::new();
    let mut int8_group = Vec::new();
    for preset in iocane_trainer::nn::PRESETS {
        let spec = ArchSpec::preset(preset, [28, 28, 1], 10).expect("preset");
        let macs = spec.mac_count() as u64;
        let net = Network::new(spec, 1).expect("network");

        let onnx = export_onnx(&net).expect("export");
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .and_then(|m| m.with_input_fact(0, f32::fact(SHAPE).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract plan");

        let repr = quantize(&net, &splits.train, 512, splits.train.labels_text.clone(), vec![]).expect("quantize");
        let blob = repr.emit();

        // Sanity: the two agree on most test images.
        let model = Model::parse(&blob).expect("blob parses");
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; model.num_classes()];
        let n = 500.min(splits.test.len());
        let mut agree = 0;
        for i in 0..n {
            let img = splits.test.image(i);
            let x: Vec<f32> = img.iter().map(|&b| b as f32 / 255.0).collect();
            let out = plan.run(tvec!(Tensor::from_shape(&SHAPE, &x).unwrap().into_tvalue())).unwrap();
            let f = out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>();
            model.run(img, &mut arena, &mut logits).unwrap();
            agree += usize::from(argmax(&f) == argmax(&logits));
        }
        eprintln!(
            "{preset}: {macs} MACs, ONNX {} bytes, int8 blob {} bytes (arena {} bytes), top-1 agreement f32 vs int8 {agree}/{n}",
            onnx.len(),
            blob.len(),
            model.arena_size()
        );
        let batch_plan = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .and_then(|m| m.with_input_fact(0, f32::fact(batch_shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract batch plan");
        tract_group.push((preset, macs, plan, batch_plan));
        int8_group.push((preset, macs, blob));
    }

    let mut g = c.benchmark_group("tract_f32");
    for (preset, macs, plan, _) in &tract_group {
        let mut state = plan.spawn().expect("tract state");
        g.throughput(Throughput::Elements(*macs));
        g.bench_function(*preset, |b| b.iter(|| state.run(tvec!(black_box(&input).clone())).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("iocane_int8");
    for (preset, macs, blob) in &int8_group {
        let model = Model::parse(blob).expect("blob parses");
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; model.num_classes()];
        g.throughput(Throughput::Elements(*macs));
        g.bench_function(*preset, |b| b.iter(|| model.run(black_box(&pixels), &mut arena, &mut logits).unwrap()));
    }
    g.finish();

    let batch_pixels: Vec<u8> = (0..batch).flat_map(|i| splits.test.image(i % splits.test.len()).to_vec()).collect();
    let batch_floats: Vec<f32> = batch_pixels.iter().map(|&b| b as f32 / 255.0).collect();
    let batch_input = Tensor::from_shape(&batch_shape, &batch_floats).expect("batch input").into_tvalue();
    let mut g = c.benchmark_group("tract_f32_batch");
    for (preset, _, _, plan) in &tract_group {
        let mut state = plan.spawn().expect("tract state");
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(*preset, |b| b.iter(|| state.run(tvec!(black_box(&batch_input).clone())).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("iocane_int8_batch");
    for (preset, _, blob) in &int8_group {
        let model = Model::parse(blob).expect("blob parses");
        let mut logits = vec![0i32; batch * model.num_classes()];
        let mut classes = vec![0usize; batch];
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(*preset, |b| {
            b.iter(|| model.run_batch(black_box(&batch_pixels), &mut logits, &mut classes).unwrap())
        });
    }
    g.finish();
}

criterion_group!(vs_tract, bench);
criterion_main!(vs_tract);

//! Helpers shared by the certifier's integration tests: random valid models with random
//! clamp ranges, pixels, proptest strategies, and checks against the runtime.

use iocane_certify::attack::SplitMix64;
use iocane_certify::ibp::LogitBounds;
use iocane_runtime::emit::ModelRepr;
use iocane_runtime::testing::{random_model, SynthLayer};
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// One requested layer: (kind, a, b, c, d, relu); infeasible requests are skipped.
pub type Op = (u8, u8, u8, u8, u8, bool);

/// Turns a list of requests into a valid `SynthLayer` stack for `input`, tracking shapes the
/// way `random_model` does (it inserts a Flatten before a Dense on a spatial tensor).
pub fn plan(input: Shape, ops: &[Op]) -> Vec<SynthLayer> {
    let mut s = input;
    let mut out = Vec::new();
    for &(kind, a, b, c, d, relu) in ops {
        let k = 1 + (b % 3) as usize;
        let st = 1 + (c % 2) as usize;
        let p = (d as usize) % k; // padding must be smaller than the kernel
        match kind % 6 {
            0 => {
                let units = 1 + (a % 6) as usize;
                out.push(SynthLayer::Dense { units, relu });
                s = Shape::new(1, 1, units);
            }
            1 | 2 => {
                if s.h + 2 * p < k || s.w + 2 * p < k {
                    continue;
                }
                let (oh, ow) = ((s.h + 2 * p - k) / st + 1, (s.w + 2 * p - k) / st + 1);
                if kind % 6 == 1 {
                    let filters = 1 + (a % 4) as usize;
                    out.push(SynthLayer::Conv { filters, k, s: st, p, relu });
                    s = Shape::new(oh, ow, filters);
                } else {
                    out.push(SynthLayer::Depthwise { k, s: st, p, relu });
                    s = Shape::new(oh, ow, s.c);
                }
            }
            3 | 4 => {
                if s.h < k || s.w < k {
                    continue;
                }
                out.push(if kind % 6 == 3 {
                    SynthLayer::MaxPool { k, s: st }
                } else {
                    SynthLayer::AvgPool { k, s: st }
                });
                s = Shape::new((s.h - k) / st + 1, (s.w - k) / st + 1, s.c);
            }
            _ => {
                out.push(SynthLayer::Flatten);
                s = Shape::new(1, 1, s.len());
            }
        }
    }
    out
}

/// A random valid model; some hidden layers get random clamp ranges (ReLU6-like caps,
/// narrow windows) on top of random_model's ReLU / none.
pub fn build(input: Shape, classes: usize, ops: &[Op], seed: u64) -> ModelRepr {
    let mut repr = random_model(input, classes, &plan(input, ops), seed);
    let mut rng = SplitMix64(seed ^ 0xC1A3_F00D);
    let n = repr.layers.len();
    // Per-class shifts of the logits layer differ by a few bits, sometimes by tens of bits
    // (both arithmetic paths of the elided margins).
    if rng.next_u64() & 1 == 1 {
        for s in &mut repr.layers[n - 1].shift {
            let d = if rng.next_u64().is_multiple_of(4) { rng.range(-40, -20) } else { rng.range(-2, 0) };
            *s = (*s + d as i32).max(iocane_runtime::quant::SHIFT_MIN);
        }
    }
    for l in repr.layers.iter_mut().take(n - 1).filter(|l| l.op.has_weights()) {
        if rng.next_u64().is_multiple_of(3) {
            // Keep at least 24 levels so layers stay alive; ReLU-style floors half the time.
            let a = if rng.next_u64() & 1 == 1 { l.out_zero_point as i64 } else { rng.range(-128, 100) };
            let b = rng.range(a + 24, 127);
            l.clamp = (a as i8, b as i8);
        }
    }
    repr
}

/// A random model (its blob) and a random image for it, with the pixel generator for more.
pub fn case(input: Shape, classes: usize, ops: &[Op], seed: u64, pseed: u64) -> (Vec<u8>, Vec<u8>, SplitMix64) {
    let blob = build(input, classes, ops, seed).emit();
    let mut rng = SplitMix64(pseed);
    let p = pixels(input.len(), &mut rng);
    (blob, p, rng)
}

pub fn pixels(n: usize, rng: &mut SplitMix64) -> Vec<u8> {
    // Mix of extremes and mid-range values so saturation at 0 / 255 is exercised.
    (0..n)
        .map(|_| match rng.next_u64() % 8 {
            0 => 0,
            1 => 255,
            2 => rng.range(0, 4) as u8,
            3 => rng.range(251, 255) as u8,
            _ => rng.range(0, 255) as u8,
        })
        .collect()
}

/// `n` random layer requests drawn from `rng` (a fixed family of models for a seed).
pub fn random_ops(rng: &mut SplitMix64, n: usize) -> Vec<Op> {
    (0..n)
        .map(|_| {
            let r = rng.next_u64().to_le_bytes();
            (r[0] % 6, r[1], r[2], r[3], r[4], r[5] & 1 == 1)
        })
        .collect()
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    (0u8..6, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>())
}

pub fn arch_strategy() -> impl Strategy<Value = (Shape, usize, Vec<Op>, u64)> {
    (2usize..=6, 2usize..=6, 1usize..=3, 2usize..=5, prop::collection::vec(op_strategy(), 0..5), any::<u64>())
        .prop_map(|(h, w, c, classes, ops, seed)| (Shape::new(h, w, c), classes, ops, seed))
}

pub fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// The runtime's logits and class for `x`.
pub fn run(model: &Model<'_>, x: &[u8]) -> (usize, Vec<i32>) {
    let mut arena = vec![0u8; model.arena_size()];
    let mut z = vec![0i32; model.num_classes()];
    let c = model.run(x, &mut arena, &mut z).unwrap();
    (c, z)
}

pub fn check_contains(b: &LogitBounds, z: &[i32], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(b.contains(z), "{what}: logits {z:?} outside [{:?}, {:?}]", b.lo, b.hi);
    Ok(())
}

/// `z[label] - z[j] >= margins[j]` for every class.
pub fn check_margins(margins: &[i64], z: &[i32], label: usize) -> Result<(), TestCaseError> {
    for (j, &m) in margins.iter().enumerate() {
        let d = z[label] as i64 - z[j] as i64;
        prop_assert!(d >= m, "z[{label}] - z[{j}] = {d} below its bound {m} (logits {z:?})");
    }
    Ok(())
}

/// A random model over `input` with `classes` classes and a dataset of `n` noise images the
/// model labels itself (so every sample is correctly classified).
pub fn noise_dataset(input: Shape, classes: usize, n: usize, seed: u64) -> (Vec<u8>, iocane_trainer::data::Dataset) {
    let blob = build(input, classes, &[(1, 3, 2, 0, 1, true), (0, 5, 0, 0, 0, true)], seed).emit();
    let model = Model::parse(&blob).unwrap();
    let mut rng = SplitMix64(seed);
    let images: Vec<u8> = (0..n).flat_map(|_| pixels(input.len(), &mut rng)).collect();
    let labels = (0..n).map(|i| run(&model, &images[i * input.len()..(i + 1) * input.len()]).0 as u8).collect();
    let data = iocane_trainer::data::Dataset {
        name: "noise/test".into(),
        height: input.h,
        width: input.w,
        channels: input.c,
        classes,
        labels_text: (0..classes).map(|c| c.to_string()).collect(),
        images,
        labels,
    };
    (blob, data)
}

/// Raises the logits layer's shifts by `bits` (a larger logit scale, so that a tighter
/// real-valued bound shows in the integer margins).
pub fn scale_logits(repr: &mut ModelRepr, bits: i32) {
    let last = repr.layers.len() - 1;
    for s in &mut repr.layers[last].shift {
        *s = (*s + bits).min(iocane_runtime::quant::SHIFT_MAX);
    }
}

/// Point `t` of a sample of the box `lo..=hi`: the low corner, the high corner, then points
/// whose pixels are at either end or uniform in between (a third each).
pub fn box_point(lo: &[u8], hi: &[u8], t: usize, rng: &mut SplitMix64) -> Vec<u8> {
    (0..lo.len())
        .map(|i| match (t, rng.next_u64() % 3) {
            (0, _) => lo[i],
            (1, _) => hi[i],
            (_, 0) => lo[i],
            (_, 1) => hi[i],
            _ => rng.range(lo[i] as i64, hi[i] as i64) as u8,
        })
        .collect()
}

/// The true worst margin of logits `z` in [`iocane_certify::ibp::worst_margin`]'s convention:
/// `min_j z_y - z_j - [j < y]`.
pub fn true_margin(z: &[i32], label: usize) -> i64 {
    (0..z.len())
        .filter(|&j| j != label)
        .map(|j| z[label] as i64 - z[j] as i64 - i64::from(j < label))
        .min()
        .unwrap_or(i64::MAX)
}

/// `n` random images for a 4x4x2, 3-class `model`, each labelled with the model's own class
/// (so every sample is correctly classified and reaches the bounds and attacks).
pub fn labelled_by_model(model: &Model<'_>, n: usize, rng: &mut SplitMix64) -> iocane_trainer::data::Dataset {
    let images: Vec<u8> = (0..n).flat_map(|_| pixels(32, rng)).collect();
    let labels = images.chunks(32).map(|x| run(model, x).0 as u8).collect();
    let labels_text = vec!["a".into(), "b".into(), "c".into()];
    iocane_trainer::data::Dataset {
        name: "t".into(),
        height: 4,
        width: 4,
        channels: 2,
        classes: 3,
        labels_text,
        images,
        labels,
    }
}

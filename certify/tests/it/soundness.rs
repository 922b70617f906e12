//! Soundness of the certifier: the interval bounds contain every logit the int8 runtime can
//! produce inside the ball, are exact at k = 0, and no sample is ever both certified and
//! falsified by an attack.

use iocane_certify::attack::{Attacker, PgdConfig, SplitMix64, SquareConfig};
use iocane_certify::ibp::{linf_ball, worst_margin, Bounder, LogitBounds, Verdict};
use iocane_runtime::emit::ModelRepr;
use iocane_runtime::testing::{random_model, SynthLayer};
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// One requested layer: (kind, a, b, c, d, relu); infeasible requests are skipped.
type Op = (u8, u8, u8, u8, u8, bool);

/// Turns a list of requests into a valid `SynthLayer` stack for `input`, tracking shapes the
/// way `random_model` does (it inserts a Flatten before a Dense on a spatial tensor).
fn plan(input: Shape, ops: &[Op]) -> Vec<SynthLayer> {
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
fn build(input: Shape, classes: usize, ops: &[Op], seed: u64) -> ModelRepr {
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

fn pixels(n: usize, rng: &mut SplitMix64) -> Vec<u8> {
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

fn op_strategy() -> impl Strategy<Value = Op> {
    (0u8..6, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>())
}

fn arch_strategy() -> impl Strategy<Value = (Shape, usize, Vec<Op>, u64)> {
    (2usize..=6, 2usize..=6, 1usize..=3, 2usize..=5, prop::collection::vec(op_strategy(), 0..5), any::<u64>())
        .prop_map(|(h, w, c, classes, ops, seed)| (Shape::new(h, w, c), classes, ops, seed))
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// The runtime's logits and class for `x`.
fn run(model: &Model<'_>, x: &[u8]) -> (usize, Vec<i32>) {
    let mut arena = vec![0u8; model.arena_size()];
    let mut z = vec![0i32; model.num_classes()];
    let c = model.run(x, &mut arena, &mut z).unwrap();
    (c, z)
}

fn check_contains(b: &LogitBounds, z: &[i32], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(b.contains(z), "{what}: logits {z:?} outside [{:?}, {:?}]", b.lo, b.hi);
    Ok(())
}

/// `z[label] - z[j] >= margins[j]` for every class.
fn check_margins(margins: &[i64], z: &[i32], label: usize) -> Result<(), TestCaseError> {
    for (j, &m) in margins.iter().enumerate() {
        let d = z[label] as i64 - z[j] as i64;
        prop_assert!(d >= m, "z[{label}] - z[{j}] = {d} below its bound {m} (logits {z:?})");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1500))]

    /// Runtime logits of images in the ball (the clean image, the two extreme corners,
    /// random vertices, random interior points) lie within the bounds.
    #[test]
    fn bounds_contain_runtime_logits((input, classes, ops, seed) in arch_strategy(), k in 0u8..=8, pseed in any::<u64>()) {
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut rng = SplitMix64(pseed);
        let p = pixels(model.input_len(), &mut rng);
        let (lo, hi) = linf_ball(&p, k);
        let mut bounder = Bounder::new(&model);
        let b = bounder.logit_bounds(&lo, &hi);
        prop_assert!(b.lo.iter().zip(&b.hi).all(|(l, h)| l <= h));
        let label = (pseed % classes as u64) as usize;
        let margins = bounder.margin_lower_bounds(&lo, &hi, label);
        prop_assert!(margins.iter().enumerate().all(|(j, &m)| j == label || m >= b.lo[label] as i64 - b.hi[j] as i64));
        let check = |x: &[u8], what: &str| -> Result<(), TestCaseError> {
            let z = run(&model, x).1;
            check_contains(&b, &z, what)?;
            check_margins(&margins, &z, label)
        };
        check(&p, "clean")?;
        check(&lo, "lower corner")?;
        check(&hi, "upper corner")?;
        for s in 0..8 {
            let x: Vec<u8> = (0..p.len())
                .map(|i| if s % 2 == 0 {
                    if rng.next_u64() & 1 == 1 { hi[i] } else { lo[i] }
                } else {
                    rng.range(lo[i] as i64, hi[i] as i64) as u8
                })
                .collect();
            check(&x, if s % 2 == 0 { "vertex" } else { "interior" })?;
        }
    }

    /// With k = 0 the bounds are exactly the runtime's logits, and certification is exactly
    /// "the runtime predicts the label".
    #[test]
    fn zero_radius_bounds_are_the_logits((input, classes, ops, seed) in arch_strategy(), pseed in any::<u64>()) {
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut rng = SplitMix64(pseed);
        let p = pixels(model.input_len(), &mut rng);
        let mut bounder = Bounder::new(&model);
        let b = bounder.logit_bounds(&p, &p);
        let (class, z) = run(&model, &p);
        prop_assert_eq!(&b.lo, &z);
        prop_assert_eq!(&b.hi, &z);
        for label in 0..classes {
            let (v, _) = bounder.certify_sample(&p, label, 0);
            prop_assert_eq!(v, if label == class { Verdict::Certified } else { Verdict::Misclassified });
        }
    }

    /// On inputs of at most 4 pixels, the whole ball (up to 5^4 images) is enumerated:
    /// every image's logits lie within the bounds, and a certified sample has no
    /// misclassified image at all.
    #[test]
    fn exhaustive_ball_on_tiny_inputs(
        (h, w) in (1usize..=2, 1usize..=2),
        classes in 2usize..=4,
        ops in prop::collection::vec(op_strategy(), 0..4),
        seed in any::<u64>(),
        k in 0u8..=2,
        pseed in any::<u64>(),
    ) {
        let input = Shape::new(h, w, 1);
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut rng = SplitMix64(pseed);
        let p = pixels(model.input_len(), &mut rng);
        let (lo, hi) = linf_ball(&p, k);
        let label = run(&model, &p).0;
        let mut bounder = Bounder::new(&model);
        let (verdict, b) = bounder.certify_sample(&p, label, k);
        prop_assert!(verdict != Verdict::Misclassified);
        let margins = bounder.margin_lower_bounds(&lo, &hi, label);
        let mut x = lo.clone();
        loop {
            let (c, z) = run(&model, &x);
            check_contains(&b, &z, "enumerated")?;
            check_margins(&margins, &z, label)?;
            if verdict == Verdict::Certified {
                prop_assert_eq!(c, label, "certified sample misclassified at {:?}", x);
            }
            // Next image of the box, odometer order.
            let mut i = 0;
            while i < x.len() && x[i] == hi[i] {
                x[i] = lo[i];
                i += 1;
            }
            if i == x.len() {
                break;
            }
            x[i] += 1;
        }
    }
}

proptest! {
    #![proptest_config(config(400))]

    /// No sample is both certified and falsified: when the bounds certify, PGD, the Square
    /// Attack and random sampling find nothing; any counterexample they find lies in the
    /// ball and inside the bounds.
    #[test]
    fn certified_samples_are_never_falsified(
        (input, classes, ops, seed) in arch_strategy(),
        k in 0u8..=4,
        pseed in any::<u64>(),
        wrong_label in any::<bool>(),
    ) {
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut rng = SplitMix64(pseed);
        let p = pixels(model.input_len(), &mut rng);
        let (class, _) = run(&model, &p);
        let label = if wrong_label { (class + 1) % classes } else { class };
        let (verdict, b) = Bounder::new(&model).certify_sample(&p, label, k);
        let mut att = Attacker::new(&model);
        let pgd = PgdConfig { steps: 10, restarts: 2, ..PgdConfig::default() };
        let results = [
            att.fgsm(&p, label, k),
            att.pgd(&p, label, k, &pgd, &mut rng),
            att.square(&p, label, k, &SquareConfig { queries: 150, p_init: 0.05 }, &mut rng),
            att.random_sampling(&p, label, k, 40, &mut rng),
        ];
        for r in &results {
            match verdict {
                Verdict::Certified => prop_assert!(r.counterexample.is_none(), "certified yet falsified"),
                Verdict::Misclassified => prop_assert_eq!(r.counterexample.as_deref(), Some(&p[..])),
                Verdict::Unknown => {}
            }
            if let Some(x) = &r.counterexample {
                prop_assert!(x.iter().zip(&p).all(|(&a, &q)| a.abs_diff(q) <= k));
                let (c, z) = run(&model, x);
                prop_assert_ne!(c, label);
                check_contains(&b, &z, "counterexample")?;
            }
        }
    }
}

/// The property above is not vacuous: over a fixed family of models and samples, some
/// samples are certified at k >= 1 and some uncertified ones are falsified, and the two
/// never overlap.
#[test]
fn certified_and_falsified_both_occur_and_never_overlap() {
    let mut rng = SplitMix64(2024);
    let (mut certified, mut falsified, mut unknown, mut trivial) = (0, 0, 0, 0);
    for seed in 0..150u64 {
        let input = Shape::new(4, 4, 2);
        let ops: Vec<Op> = (0..3)
            .map(|_| {
                let r = rng.next_u64().to_le_bytes();
                (r[0] % 6, r[1], r[2], r[3], r[4], r[5] & 1 == 1)
            })
            .collect();
        let blob = build(input, 3, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut bounder = Bounder::new(&model);
        let mut att = Attacker::new(&model);
        for _ in 0..4 {
            let p = pixels(model.input_len(), &mut rng);
            let label = run(&model, &p).0;
            let k = 1 + (rng.next_u64() % 8) as u8;
            let (verdict, b) = bounder.certify_sample(&p, label, k);
            trivial += usize::from(b.lo == b.hi);
            let found = att.pgd(&p, label, k, &PgdConfig::default(), &mut rng).success()
                || att.square(&p, label, k, &SquareConfig { queries: 300, p_init: 0.05 }, &mut rng).success()
                || att.random_sampling(&p, label, k, 100, &mut rng).success();
            match verdict {
                Verdict::Certified => {
                    assert!(!found, "model {seed}: certified sample falsified");
                    certified += 1;
                }
                Verdict::Unknown if found => falsified += 1,
                Verdict::Unknown => unknown += 1,
                Verdict::Misclassified => unreachable!(),
            }
        }
    }
    eprintln!("certified {certified} ({trivial} with constant logits), falsified {falsified}, open {unknown}");
    assert!(certified >= 50, "only {certified} certified samples");
    assert!(falsified >= 10, "only {falsified} falsified samples");
}

/// The elided last layer (margin bounds) certifies samples the logit bounds alone cannot,
/// and every such certificate survives exhaustive enumeration of its ball.
#[test]
fn elided_margins_certify_more_and_stay_sound() {
    let mut rng = SplitMix64(77);
    let (mut only_elided, mut tighter) = (0, 0);
    for seed in 0..1000u64 {
        let input = Shape::new(2, 2, 1);
        let units = 2 + (seed % 6) as u8;
        let ops: Vec<Op> = vec![(0, units, 0, 0, 0, seed % 3 != 0)];
        let blob = random_model(input, 3, &plan(input, &ops), seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut bounder = Bounder::new(&model);
        for _ in 0..3 {
            let p = pixels(4, &mut rng);
            let label = run(&model, &p).0;
            let k = 1 + (rng.next_u64() % 6) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let (verdict, b) = bounder.certify_sample(&p, label, k);
            let margins = bounder.margin_lower_bounds(&lo, &hi, label);
            tighter += usize::from((0..3).any(|j| j != label && margins[j] > b.lo[label] as i64 - b.hi[j] as i64));
            let elided_only = verdict == Verdict::Certified && !b.proves(label);
            assert_eq!(verdict == Verdict::Certified, worst_margin(&margins, label).unwrap() >= 0);
            assert!(worst_margin(&margins, label) >= b.margin(label));
            only_elided += usize::from(elided_only);
            let mut x = lo.clone();
            loop {
                let (c, z) = run(&model, &x);
                assert!(b.contains(&z));
                for j in 0..3 {
                    assert!(z[label] as i64 - z[j] as i64 >= margins[j], "model {seed}: margin bound violated");
                }
                if verdict == Verdict::Certified {
                    assert_eq!(c, label, "model {seed}: certified sample misclassified at {x:?}");
                }
                let mut i = 0;
                while i < 4 && x[i] == hi[i] {
                    x[i] = lo[i];
                    i += 1;
                }
                if i == 4 {
                    break;
                }
                x[i] += 1;
            }
        }
    }
    eprintln!("elided margins tighter in {tighter} samples, decisive in {only_elided}");
    assert!(only_elided >= 8, "elision decided only {only_elided} samples");
}

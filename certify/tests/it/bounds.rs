//! Soundness of the interval bounds: they contain every logit the int8 runtime can produce
//! inside the ball, are exact at k = 0, and the elided last layer stays sound.

use std::sync::atomic::AtomicBool;

use iocane_certify::attack::{margin, SplitMix64};
use iocane_certify::crown::{Crown, CrownConfig};
use iocane_certify::gate::{self, GateConfig, Radius, Threshold};
use iocane_certify::ibp::{linf_ball, try_for_each_image, worst_margin, Bounder, Verdict};
use iocane_certify::report::{CertifyReport, RunIdentity};
use iocane_runtime::emit::{LayerRepr, ModelRepr};
use iocane_runtime::testing::random_model;
use iocane_runtime::{Model, Shape};
use iocane_trainer::data::Dataset;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

use crate::common::*;

proptest! {
    #![proptest_config(config(1500))]

    /// Runtime logits of images in the ball (the clean image, the two extreme corners,
    /// random vertices, random interior points) lie within the bounds.
    #[test]
    fn bounds_contain_runtime_logits((input, classes, ops, seed) in arch_strategy(), k in 0u8..=8, pseed in any::<u64>()) {
        let (blob, p, mut rng) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
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
        let (blob, p, _) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
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

    /// The certifier against the public property-test strategy: every point that
    /// `iocane_certify::proptest::linf_ball` draws has its runtime logits inside the bounds,
    /// and when IBP certifies the sample, `check_robust` (the users' helper) finds no
    /// misclassified point of the ball: certified => robust on every sampled point.
    #[test]
    fn certified_balls_have_no_misclassified_linf_ball_point(
        (input, classes, ops, seed) in arch_strategy(),
        k in 0u8..=6,
        pseed in any::<u64>(),
    ) {
        let (blob, p, _) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
        let label = run(&model, &p).0;
        let (verdict, b) = Bounder::new(&model).certify_sample(&p, label, k);
        let cfg = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
        let mut points = TestRunner::new_with_rng(cfg.clone(), TestRng::from_seed(RngAlgorithm::ChaCha, &pseed.to_le_bytes().repeat(4)));
        let res = points.run(&iocane_certify::proptest::linf_ball(&p, k), |x| {
            check_contains(&b, &run(&model, &x).1, "a linf_ball point")
        });
        prop_assert!(res.is_ok(), "{:?}", res);
        if verdict == Verdict::Certified {
            let r = iocane_certify::proptest::check_robust(&model, &p, label, k, &cfg);
            prop_assert!(r.is_ok(), "certified at k = {} but {:?}", k, r);
        }
    }

    /// On inputs of at most 4 pixels, the whole ball (up to 7^4 images) is enumerated:
    /// every image's logits lie within the bounds and its logit differences above the IBP and
    /// CROWN margins (CROWN's at least IBP's); a sample certified by IBP, CROWN or branch and
    /// bound has no misclassified image at all, and the branch-and-bound margin is a lower
    /// bound on the true worst margin.
    #[test]
    fn exhaustive_ball_on_tiny_inputs(
        (h, w) in (1usize..=2, 1usize..=2),
        classes in 2usize..=4,
        ops in prop::collection::vec(op_strategy(), 0..5),
        seed in any::<u64>(),
        k in 0u8..=3,
        pseed in any::<u64>(),
    ) {
        let input = Shape::new(h, w, 1);
        let (blob, p, _) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
        let (lo, hi) = linf_ball(&p, k);
        let label = run(&model, &p).0;
        let mut bounder = Bounder::new(&model);
        let (verdict, b) = bounder.certify_sample(&p, label, k);
        prop_assert!(verdict != Verdict::Misclassified);
        let margins = bounder.margin_lower_bounds(&lo, &hi, label);
        let crown = Crown::new(&model).margin_lower_bounds(&lo, &hi, label);
        for j in 0..classes {
            prop_assert!(crown[j] >= margins[j], "crown {crown:?} looser than ibp {margins:?}");
        }
        // Optimised slopes, on the margins and (every other case) the hidden accumulators too.
        let alpha_cfg = CrownConfig { alpha_steps: 6, alpha_refine: seed % 2 == 0, ..CrownConfig::default() };
        let alpha = Crown::with_config(&model, alpha_cfg).margin_lower_bounds(&lo, &hi, label);
        for j in 0..classes {
            prop_assert!(alpha_cfg.alpha_refine || alpha[j] >= crown[j], "optimised {alpha:?} looser than crown {crown:?}");
        }
        let bab = Crown::with_config(&model, alpha_cfg).bab_margin(&p, label, k, 24, None).margin.unwrap();
        let certified = verdict == Verdict::Certified
            || worst_margin(&crown, label).unwrap() >= 0
            || worst_margin(&alpha, label).unwrap() >= 0
            || bab >= 0;
        let mut true_worst = i64::MAX;
        try_for_each_image(&lo, &hi, |x| {
            let (c, z) = run(&model, x);
            check_contains(&b, &z, "enumerated")?;
            check_margins(&margins, &z, label)?;
            check_margins(&crown, &z, label)?;
            check_margins(&alpha, &z, label)?;
            if certified {
                prop_assert_eq!(c, label, "certified sample misclassified at {:?}", x);
            }
            // attack::margin is z_y - z_j + [j > y]; worst_margin's is z_y - z_j - [j < y].
            true_worst = true_worst.min(margin(&z, label) - 1);
            Ok(())
        })?;
        prop_assert!(bab <= true_worst, "branch and bound {bab} above the true worst margin {true_worst}");
        // The same search with a falsifier: every corner it offers lies in the ball; a
        // counterexample is a misclassified image of a ball nothing certified; without one
        // the search and its margin are exactly `bab_margin`'s.
        let mut offered = Vec::new();
        let out = Crown::with_config(&model, alpha_cfg).bab_decide(&p, label, k, 24, None, &mut |x| {
            offered.push(x.to_vec());
            (run(&model, x).0 != label).then(|| x.to_vec())
        });
        for x in &offered {
            prop_assert!((0..x.len()).all(|i| lo[i] <= x[i] && x[i] <= hi[i]), "corner {x:?} outside the ball");
        }
        match &out.counterexample {
            Some(x) => {
                prop_assert!(run(&model, x).0 != label && !certified && true_worst < 0);
                prop_assert!(out.margin.unwrap() <= true_worst);
            }
            None => prop_assert_eq!(out.margin, Some(bab)),
        }
    }
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
            try_for_each_image::<()>(&lo, &hi, |x| {
                let (c, z) = run(&model, x);
                assert!(b.contains(&z));
                for j in 0..3 {
                    assert!(z[label] as i64 - z[j] as i64 >= margins[j], "model {seed}: margin bound violated");
                }
                if verdict == Verdict::Certified {
                    assert_eq!(c, label, "model {seed}: certified sample misclassified at {x:?}");
                }
                Ok(())
            })
            .unwrap();
        }
    }
    eprintln!("elided margins tighter in {tighter} samples, decisive in {only_elided}");
    assert!(only_elided >= 8, "elision decided only {only_elided} samples");
}

/// A model with no hidden layer: one pixel, a Dense `1×1×1 → 2` logits layer with the given
/// per-class weight, bias, multiplier and shift (so the final layer's input box is the
/// pixel box itself, `x − z_in = p`).
fn two_logits(w: [i8; 2], b: [i32; 2], m: [i32; 2], shift: [i32; 2]) -> Vec<u8> {
    let layer = LayerRepr {
        weights: w.to_vec(),
        bias: b.to_vec(),
        multiplier: m.to_vec(),
        shift: shift.to_vec(),
        ..LayerRepr::dense_logits(Shape::new(1, 1, 1), 2, -128)
    };
    let repr =
        ModelRepr { input: Shape::new(1, 1, 1), classes: 2, labels: vec![], metadata: vec![], layers: vec![layer] };
    repr.emit()
}

/// Issue 18 gap 1: the worked example of quantization.md §8. Weights (10, 10), biases
/// (5, 0), both multipliers 1/2, pixel 102 with k = 2: the logits are `5p + 3` and `5p` for
/// `p ∈ [100, 104]`, so the per-logit rule fails (503 − 520 = −17) while the elided difference
/// `(5 + 10p)/2 − 10p/2 = 2.5` gives the margin `floor(2.5) = 2`: certified, and report.json
/// records `bound_margin: 2` for the sample.
#[test]
fn spec_gap_1_elided_difference_certifies_the_worked_example() {
    let blob = two_logits([10, 10], [5, 0], [1 << 30; 2], [0; 2]);
    let model = Model::parse(&blob).unwrap();
    let mut bounder = Bounder::new(&model);
    let (lo, hi) = linf_ball(&[102], 2);
    let b = bounder.logit_bounds(&lo, &hi);
    assert_eq!((b.lo.as_slice(), b.hi.as_slice()), (&[503, 500][..], &[523, 520][..]));
    assert!(!b.proves(0));
    assert_eq!(b.margin(0), Some(-17));
    assert_eq!(bounder.margin_lower_bounds(&lo, &hi, 0), [0, 2]);
    // The true smallest difference is 3: the bound is sound, and one below it.
    assert!((100..=104u8).all(|p| {
        let z = run(&model, &[p]).1;
        z[0] - z[1] == 3
    }));
    let ball = bounder.bound_ball(&[102], 0, 2, 0);
    assert_eq!((ball.verdict, ball.margin), (Verdict::Certified, Some(2)));
    // A misclassified sample's margin is the per-logit one, minus 1 for the lower class 0.
    let ball = bounder.bound_ball(&[102], 1, 2, 0);
    assert_eq!((ball.verdict, ball.margin), (Verdict::Misclassified, Some(500 - 523 - 1)));

    // The same sample through the gate, and the field in report.json.
    let data = Dataset {
        name: "spec/test".into(),
        height: 1,
        width: 1,
        channels: 1,
        classes: 2,
        labels_text: vec!["a".into(), "b".into()],
        images: vec![102],
        labels: vec![0],
    };
    let cfg = GateConfig {
        k: 2,
        sweep: vec![],
        samples: 0,
        pgd_steps: 1,
        pgd_restarts: 1,
        square_queries: 1,
        random_samples: 1,
        threshold: "1/1".parse::<Threshold>().unwrap(),
        ..GateConfig::default()
    };
    let outcome = gate::run(&model, &data, &cfg, &|_| {}, &AtomicBool::new(false)).unwrap();
    let id = RunIdentity {
        model_file: "m.icn".into(),
        model_sha256: "00".into(),
        dataset: data.name.clone(),
        dataset_sha256: data.sha256_hex(),
        split_len: 1,
        input_shape: [1, 1, 1],
        classes: 2,
        radius: Radius::levels(2),
    };
    let report = CertifyReport::new(id, cfg, outcome, 1.0);
    assert!(report.passed);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let sample = &json["outcome"]["samples"][0];
    assert_eq!((&sample["verdict"], &sample["bound_margin"]), (&"certified".into(), &2.into()), "{sample}");
}

/// Issue 18 gap 1: the saturation guard. Weights (2, 2), biases (0, 1), both multipliers
/// 2^29 (m = 2^30, shift 30); pixel 1 with k = 1, label 1. The elided difference is
/// `2^29 (acc_1 − acc_0) = 2^29 ≥ 1` everywhere, but at p = 2 both logits saturate to
/// `i32::MAX`, the tie goes to class 0, and the sample is not robust. Because the logit
/// bounds reach `i32::MAX`, the certifier falls back to the per-logit margin and does not
/// certify.
#[test]
fn spec_gap_1_saturation_guard_keeps_certificates_sound() {
    let blob = two_logits([2, 2], [0, 1], [1 << 30; 2], [30; 2]);
    let model = Model::parse(&blob).unwrap();
    assert_eq!(run(&model, &[1]), (1, vec![1 << 30, 1_610_612_736]));
    assert_eq!(run(&model, &[2]), (0, vec![i32::MAX, i32::MAX]));
    let mut bounder = Bounder::new(&model);
    let (lo, hi) = linf_ball(&[1], 1);
    let b = bounder.logit_bounds(&lo, &hi);
    assert_eq!(b.hi, [i32::MAX, i32::MAX]);
    let plain = b.lo[1] as i64 - b.hi[0] as i64;
    assert_eq!(bounder.margin_lower_bounds(&lo, &hi, 1), [plain, 0]);
    let ball = bounder.bound_ball(&[1], 1, 1, 1);
    assert_eq!((ball.verdict, ball.margin), (Verdict::Unknown, Some(plain - 1)));
    assert_eq!(plain - 1, (1i64 << 29) - (1i64 << 31));
}

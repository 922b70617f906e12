//! Soundness of the interval bounds: they contain every logit the int8 runtime can produce
//! inside the ball, are exact at k = 0, and the elided last layer stays sound.

use iocane_certify::attack::SplitMix64;
use iocane_certify::ibp::{linf_ball, worst_margin, Bounder, Verdict};
use iocane_runtime::testing::random_model;
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

use crate::common::*;

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
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let p = pixels(model.input_len(), &mut SplitMix64(pseed));
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

//! Soundness of the linear-relaxation bounds: the requantization relaxation on every integer
//! of its interval, the margins on whole enumerated balls and on sampled corners, and that
//! they are never looser than IBP.

use iocane_certify::attack::SplitMix64;
use iocane_certify::crown::{relax_requantize, Crown, CrownConfig};
use iocane_certify::ibp::{linf_ball, try_for_each_image, worst_margin, Bounder};
use iocane_runtime::{quant, Model, Shape};
use proptest::prelude::*;

use crate::common::*;

/// Every integer of the interval lies between the two lines (exhaustive for short
/// intervals, ends, kinks and a stride for long ones).
fn check_relaxation(lo: i32, hi: i32, m: i32, shift: i32, zp: i8, amin: i8, amax: i8) -> Result<(), TestCaseError> {
    let r = relax_requantize(lo, hi, m, shift, zp, amin, amax);
    let check = |a: i32| -> Result<(), TestCaseError> {
        let y = quant::requantize(a, m, shift, zp, amin, amax) as f64;
        let af = a as f64;
        prop_assert!(r.lo_slope * af + r.lo_icpt <= y, "lower line above y = {y} at acc {a}: {r:?}");
        prop_assert!(r.up_slope * af + r.up_icpt >= y, "upper line below y = {y} at acc {a}: {r:?}");
        Ok(())
    };
    let span = hi as i64 - lo as i64;
    if span <= 4000 {
        for a in lo..=hi {
            check(a)?;
        }
    } else {
        let step = (span / 2000) as i32;
        let mut a = lo;
        while a <= hi - step {
            check(a)?;
            a += step;
        }
        // Around every step of the staircase near the ends of the clamp.
        let s = m as f64 / 2f64.powi(31 - shift);
        for target in [amin as f64, amax as f64, zp as f64] {
            let c = ((target - zp as f64) / s) as i64;
            for a in (c - 3)..=(c + 3) {
                if a >= lo as i64 && a <= hi as i64 {
                    check(a as i32)?;
                }
            }
        }
        check(hi)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn relaxation_holds_on_every_integer(
        m in (1i32 << 30)..i32::MAX,
        shift in -20i32..=0,
        zp in any::<i8>(),
        (a, b) in (any::<i8>(), any::<i8>()),
        lo in -300_000i32..300_000,
        len in prop_oneof![0i32..50, 0i32..5000, 0i32..600_000],
    ) {
        let (amin, amax) = (a.min(b), a.max(b));
        check_relaxation(lo, lo.saturating_add(len), m, shift, zp, amin, amax)?;
    }

    /// Whole balls of at most 4 pixels are enumerated: every image's logit differences are
    /// at least the CROWN margins, which are at least IBP's.
    #[test]
    fn crown_margins_hold_on_enumerated_balls(
        (h, w) in (1usize..=2, 1usize..=2),
        classes in 2usize..=4,
        ops in prop::collection::vec(op_strategy(), 0..5),
        seed in any::<u64>(),
        k in 0u8..=3,
        pseed in any::<u64>(),
    ) {
        let input = Shape::new(h, w, 1);
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let p = pixels(model.input_len(), &mut SplitMix64(pseed));
        let (lo, hi) = linf_ball(&p, k);
        let label = run(&model, &p).0;
        let ibp = Bounder::new(&model).margin_lower_bounds(&lo, &hi, label);
        let crown = Crown::new(&model).margin_lower_bounds(&lo, &hi, label);
        for j in 0..classes {
            prop_assert!(crown[j] >= ibp[j], "crown {crown:?} looser than ibp {ibp:?}");
        }
        let certified = worst_margin(&crown, label).unwrap() >= 0;
        try_for_each_image(&lo, &hi, |x| {
            let (c, z) = run(&model, x);
            check_margins(&crown, &z, label)?;
            if certified {
                prop_assert_eq!(c, label, "certified sample misclassified at {:?}", x);
            }
            Ok(())
        })?;
    }

    /// Larger random models: the margins hold at the ball's corners, at random points and at
    /// the clean image.
    #[test]
    fn crown_margins_hold_at_corners_and_samples(
        (input, classes, ops, seed) in arch_strategy(),
        k in 1u8..=12,
        pseed in any::<u64>(),
    ) {
        let blob = build(input, classes, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut rng = SplitMix64(pseed);
        let p = pixels(model.input_len(), &mut rng);
        let (lo, hi) = linf_ball(&p, k);
        let label = run(&model, &p).0;
        let crown = Crown::new(&model).margin_lower_bounds(&lo, &hi, label);
        check_margins(&crown, &run(&model, &p).1, label)?;
        for t in 0..48 {
            let x: Vec<u8> = (0..p.len())
                .map(|i| match (t, rng.next_u64() % 3) {
                    (0, _) => lo[i],
                    (1, _) => hi[i],
                    (_, 0) => lo[i],
                    (_, 1) => hi[i],
                    _ => rng.range(lo[i] as i64, hi[i] as i64) as u8,
                })
                .collect();
            check_margins(&crown, &run(&model, &x).1, label)?;
        }
    }
}

/// On deeper random models the back-substitution proves samples IBP cannot, and refinement
/// of hidden accumulators never hurts.
#[test]
fn crown_certifies_samples_ibp_cannot() {
    let mut rng = SplitMix64(5);
    let (mut ibp_cert, mut crown_cert, mut plain_cert, mut total) = (0, 0, 0, 0);
    for seed in 0..60u64 {
        let input = Shape::new(6, 6, 1);
        let ops: Vec<Op> = vec![(1, 3, 2, 0, 1, true), (1, 3, 2, 1, 1, true), (0, 11, 0, 0, 0, true)];
        let blob = build(input, 3, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut ibp = Bounder::new(&model);
        let mut crown = Crown::new(&model);
        let mut plain = Crown::with_config(&model, CrownConfig { refine_max_neurons: 0 });
        for _ in 0..4 {
            let p = pixels(model.input_len(), &mut rng);
            let label = run(&model, &p).0;
            let k = 1 + (rng.next_u64() % 4) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let mi = worst_margin(&ibp.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            let mc = worst_margin(&crown.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            let mp = worst_margin(&plain.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            assert!(mc >= mp && mp >= mi, "model {seed}: refined {mc}, unrefined {mp}, ibp {mi}");
            total += 1;
            ibp_cert += usize::from(mi >= 0);
            crown_cert += usize::from(mc >= 0);
            plain_cert += usize::from(mp >= 0);
        }
    }
    eprintln!("certified of {total}: ibp {ibp_cert}, crown without refinement {plain_cert}, crown {crown_cert}");
    assert!(crown_cert > ibp_cert, "crown certified {crown_cert}, ibp {ibp_cert}");
}

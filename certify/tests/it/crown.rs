//! Soundness of the linear-relaxation bounds: the requantization relaxation on every integer
//! of its interval, the margins on sampled corners, and that they are never looser than IBP
//! (whole enumerated balls, with branch and bound, are checked in `bounds.rs`).

use iocane_certify::attack::SplitMix64;
use iocane_certify::crown::{relax_requantize, requantize_line, Crown, CrownConfig, Requant};
use iocane_certify::ibp::{linf_ball, worst_margin, Bounder};
use iocane_runtime::testing::SynthLayer;
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

    /// [`requantize_line`] makes a sound line of any slope (what slope optimisation relies
    /// on): every integer of the interval is on the right side of it, and the line touches
    /// (within rounding) the point it reports.
    #[test]
    fn a_line_of_any_slope_holds_on_every_integer(
        m in (1i32 << 30)..i32::MAX,
        shift in -20i32..=0,
        zp in any::<i8>(),
        (a, b) in (any::<i8>(), any::<i8>()),
        lo in -3_000i32..3_000,
        len in 0i32..3_000,
        frac in -0.5f64..1.5,
        upper in any::<bool>(),
    ) {
        let (amin, amax) = (a.min(b), a.max(b));
        let hi = lo + len;
        let s = m as f64 / 2f64.powi(31 - shift);
        let slope = frac * s;
        let (icpt, at) = requantize_line(lo, hi, Requant { m, shift, zp, amin, amax }, slope, upper);
        prop_assert!(at >= lo as f64 && at <= hi as f64, "attained at {at}, outside [{lo}, {hi}]");
        let mut gap = f64::INFINITY;
        for acc in lo..=hi {
            let y = quant::requantize(acc, m, shift, zp, amin, amax) as f64;
            let line = slope * acc as f64 + icpt;
            if upper {
                prop_assert!(line >= y, "upper line {line} below y = {y} at {acc} (slope {slope})");
            } else {
                prop_assert!(line <= y, "lower line {line} above y = {y} at {acc} (slope {slope})");
            }
            gap = gap.min((line - y).abs());
        }
        // Not vacuous: within one level (the staircase's rounding) of y somewhere.
        prop_assert!(gap <= 1.0 + 1e-6, "the line stays {gap} away from y");
    }

    /// Larger random models: the margins hold at the ball's corners, at random points and at
    /// the clean image.
    #[test]
    fn crown_margins_hold_at_corners_and_samples(
        (input, classes, ops, seed) in arch_strategy(),
        k in 1u8..=12,
        pseed in any::<u64>(),
    ) {
        let (blob, p, mut rng) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
        let (lo, hi) = linf_ball(&p, k);
        let label = run(&model, &p).0;
        let crown = Crown::new(&model).margin_lower_bounds(&lo, &hi, label);
        check_margins(&crown, &run(&model, &p).1, label)?;
        let alpha_cfg = CrownConfig { alpha_steps: 8, alpha_refine: pseed % 2 == 0, ..CrownConfig::default() };
        let alpha = Crown::with_config(&model, alpha_cfg).margin_lower_bounds(&lo, &hi, label);
        check_margins(&alpha, &run(&model, &p).1, label)?;
        // Never looser than CROWN on the same hidden intervals (with `alpha_refine` the
        // intervals are tighter, which can change the heuristic slopes either way).
        if !alpha_cfg.alpha_refine {
            for (j, (&a, &c)) in alpha.iter().zip(&crown).enumerate() {
                prop_assert!(a >= c, "class {j}: optimised slopes {a} looser than CROWN {c}");
            }
        }
        for t in 0..48 {
            let x = box_point(&lo, &hi, t, &mut rng);
            check_margins(&crown, &run(&model, &x).1, label)?;
            check_margins(&alpha, &run(&model, &x).1, label)?;
        }
    }
}

/// On deeper random models the back-substitution proves samples IBP cannot, and refinement
/// of hidden accumulators never hurts.
#[test]
fn crown_certifies_samples_ibp_cannot() {
    let mut rng = SplitMix64(5);
    let (mut ibp_cert, mut crown_cert, mut plain_cert, mut bab_cert, mut total) = (0, 0, 0, 0, 0);
    let mut falsified = 0;
    for seed in 0..60u64 {
        let input = Shape::new(6, 6, 1);
        let ops: Vec<Op> = vec![(1, 3, 2, 0, 1, true), (1, 3, 2, 1, 1, true), (0, 11, 0, 0, 0, true)];
        let blob = build(input, 3, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let mut ibp = Bounder::new(&model);
        let mut crown = Crown::new(&model);
        let mut plain = Crown::with_config(&model, CrownConfig { refine_max_neurons: 0, ..CrownConfig::default() });
        for _ in 0..4 {
            let p = pixels(model.input_len(), &mut rng);
            let label = run(&model, &p).0;
            let k = 1 + (rng.next_u64() % 4) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let mi = worst_margin(&ibp.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            let mc = worst_margin(&crown.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            let mp = worst_margin(&plain.margin_lower_bounds(&lo, &hi, label), label).unwrap();
            assert!(mc >= mp && mp >= mi, "model {seed}: refined {mc}, unrefined {mp}, ibp {mi}");
            let mb = crown.bab_margin(&p, label, k, 32, None).margin.unwrap();
            bab_cert += usize::from(mb >= 0 || mc >= 0);
            let corner = |x: &[u8]| (run(&model, x).0 != label).then(|| x.to_vec());
            let out = crown.bab_decide(&p, label, k, 32, None, &mut |x| corner(x));
            if let Some(x) = &out.counterexample {
                assert!(run(&model, x).0 != label && mb < 0, "model {seed}: a counterexample of a certified ball");
                falsified += 1;
            }
            total += 1;
            ibp_cert += usize::from(mi >= 0);
            crown_cert += usize::from(mc >= 0);
            plain_cert += usize::from(mp >= 0);
        }
    }
    eprintln!(
        "certified of {total}: ibp {ibp_cert}, crown without refinement {plain_cert}, crown {crown_cert}, bab {bab_cert}; falsified by bab's corners {falsified}"
    );
    assert!(crown_cert > ibp_cert, "crown certified {crown_cert}, ibp {ibp_cert}");
    // Branch and bound's corners are counterexamples of some of the balls it cannot prove.
    assert!(falsified > 0 && falsified + bab_cert <= total, "bab's corners falsified {falsified}");
}

/// A random 6x6 model with two strided convolutions and a dense layer, its logits scaled up
/// by 12 bits.
fn deep_scaled_blob(seed: u64) -> Vec<u8> {
    let ops: Vec<Op> = vec![(1, 3, 2, 0, 1, true), (1, 3, 2, 1, 1, true), (0, 11, 0, 0, 0, true)];
    let mut repr = build(Shape::new(6, 6, 1), 3, &ops, seed);
    scale_logits(&mut repr, 12);
    repr.emit()
}

/// Slope optimisation (alpha-CROWN) on deeper random models whose logits layer has a large
/// scale (so a tighter real-valued bound shows in the integer margin): never looser than
/// CROWN, tighter on some samples, and every optimised margin holds at the ball's corners
/// and random points. (Random weights rarely leave room for better slopes; on a trained
/// `cnn-s` they prove 6 % more samples at eps 0.1, docs/RESULTS.md.)
#[test]
fn optimised_slopes_tighten_margins_and_stay_sound() {
    let mut rng = SplitMix64(8);
    let (mut better, mut more_certified, mut total) = (0, 0, 0);
    for seed in 0..40u64 {
        let blob = deep_scaled_blob(seed);
        let model = Model::parse(&blob).unwrap();
        let mut crown = Crown::new(&model);
        let mut alpha = Crown::with_config(&model, CrownConfig { alpha_steps: 20, ..CrownConfig::default() });
        for _ in 0..4 {
            let p = pixels(model.input_len(), &mut rng);
            let (label, _) = run(&model, &p);
            let k = 1 + (rng.next_u64() % 16) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let mc = crown.margin_lower_bounds(&lo, &hi, label);
            let ma = alpha.margin_lower_bounds(&lo, &hi, label);
            for (j, (&a, &c)) in ma.iter().zip(&mc).enumerate() {
                assert!(a >= c, "model {seed}, class {j}: optimised {a} looser than crown {c}");
            }
            let (wc, wa) = (worst_margin(&mc, label).unwrap(), worst_margin(&ma, label).unwrap());
            better += usize::from(wa > wc);
            more_certified += usize::from(wa >= 0 && wc < 0);
            total += 1;
            for t in 0..64 {
                let x = box_point(&lo, &hi, t, &mut rng);
                check_margins(&ma, &run(&model, &x).1, label).unwrap();
            }
        }
    }
    eprintln!("of {total}: optimised slopes tighter on {better}, certified {more_certified} CROWN does not");
    assert!(better > 0, "tighter on {better}, newly certified {more_certified}");
}

/// Branch and bound with optimised slopes and split multipliers (beta-CROWN) on deeper
/// random models with a large logit scale: its margin never exceeds the margin of any image
/// sampled from the ball (its corners and 198 random points), and the multipliers tighten
/// some samples beyond branch and bound without them.
#[test]
fn beta_branch_and_bound_stays_below_every_sampled_margin() {
    let mut rng = SplitMix64(31);
    let (mut tighter, mut total) = (0, 0);
    for seed in 0..30u64 {
        let blob = deep_scaled_blob(seed);
        let model = Model::parse(&blob).unwrap();
        let cfg = CrownConfig { alpha_steps: 10, ..CrownConfig::default() };
        let mut beta = Crown::with_config(&model, cfg);
        let mut no_beta = Crown::with_config(&model, CrownConfig { beta: false, ..cfg });
        for _ in 0..3 {
            let p = pixels(model.input_len(), &mut rng);
            let (label, _) = run(&model, &p);
            let k = 2 + (rng.next_u64() % 14) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let mb = beta.bab_margin(&p, label, k, 24, None).margin.unwrap();
            let mn = no_beta.bab_margin(&p, label, k, 24, None).margin.unwrap();
            tighter += usize::from(mb > mn);
            total += 1;
            for t in 0..200 {
                let x = box_point(&lo, &hi, t, &mut rng);
                let w = true_margin(&run(&model, &x).1, label);
                assert!(mb <= w, "model {seed}, k {k}: branch and bound {mb} above a sampled margin {w} at {x:?}");
            }
        }
    }
    eprintln!("of {total}: split multipliers tighter on {tighter}");
    assert!(tighter > 0, "split multipliers never tightened branch and bound");
}

/// Exhaustive: on 2-pixel inputs (every image of balls of up to 43 levels enumerated) with two hidden
/// layers and a large logit scale, branch and bound with split multipliers never claims a
/// margin above the true worst one, and the multipliers change the result on some samples
/// (so this checks them, not only the splits).
#[test]
fn beta_branch_and_bound_is_exact_on_enumerated_balls() {
    let mut rng = SplitMix64(41);
    let (mut changed, mut total) = (0, 0);
    for seed in 0..150u64 {
        let input = Shape::new(1, 2, 1);
        let hidden = [SynthLayer::Dense { units: 16, relu: true }, SynthLayer::Dense { units: 12, relu: true }];
        let mut repr = iocane_runtime::testing::random_model(input, 3, &hidden, seed);
        scale_logits(&mut repr, 12);
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap();
        let cfg = CrownConfig { alpha_steps: 10, ..CrownConfig::default() };
        let mut beta = Crown::with_config(&model, cfg);
        let mut no_beta = Crown::with_config(&model, CrownConfig { beta: false, ..cfg });
        for _ in 0..2 {
            let p = pixels(2, &mut rng);
            let (label, _) = run(&model, &p);
            let k = 4 + (rng.next_u64() % 40) as u8;
            let (lo, hi) = linf_ball(&p, k);
            let mb = beta.bab_margin(&p, label, k, 16, None).margin.unwrap();
            let mn = no_beta.bab_margin(&p, label, k, 16, None).margin.unwrap();
            changed += usize::from(mb != mn);
            total += 1;
            let mut worst = i64::MAX;
            iocane_certify::ibp::try_for_each_image::<()>(&lo, &hi, |x| {
                worst = worst.min(true_margin(&run(&model, x).1, label));
                Ok(())
            })
            .unwrap();
            assert!(mb <= worst, "model {seed}, k {k}: branch and bound {mb} above the true worst margin {worst}");
        }
    }
    eprintln!("of {total}: split multipliers changed the margin on {changed}");
    assert!(changed > 0, "split multipliers never changed branch and bound");
}

/// Through the gate: `--bound crown` keeps every IBP certificate, adds its own (counted in
/// `certified_crown`), and no sample it certifies is falsified by the attacks of the IBP run.
#[test]
fn gate_with_crown_certifies_a_superset_and_never_a_falsified_sample() {
    use iocane_certify::gate::{self, BoundMethod, GateConfig, SampleVerdict};
    use std::sync::atomic::AtomicBool;
    let (mut extra, mut falsified) = (0, 0);
    let mut rng = SplitMix64(2024);
    for seed in 0..40u64 {
        let input = Shape::new(4, 4, 2);
        let ops = random_ops(&mut rng, 3);
        let blob = build(input, 3, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let n = 12;
        let data = labelled_by_model(&model, n, &mut rng);
        let cfg = |bound| GateConfig {
            k: 6,
            sweep: vec![2],
            samples: 0,
            pgd_steps: 20,
            square_queries: 200,
            random_samples: 50,
            bound,
            ..GateConfig::default()
        };
        let go = |b| gate::run(&model, &data, &cfg(b), &|_| {}, &AtomicBool::new(false)).unwrap();
        let (ibp, crown) = (go(BoundMethod::Ibp), go(BoundMethod::Crown));
        for (a, b) in ibp.samples.iter().zip(&crown.samples) {
            if a.verdict == SampleVerdict::Certified {
                assert_eq!(b.verdict, SampleVerdict::Certified);
                assert_eq!(b.certified_by, Some(BoundMethod::Ibp));
            }
            if b.verdict == SampleVerdict::Certified {
                assert_ne!(
                    a.verdict,
                    SampleVerdict::Falsified,
                    "model {seed}: sample {} certified and falsified",
                    a.index
                );
            }
            falsified += usize::from(a.verdict == SampleVerdict::Falsified);
        }
        for (a, b) in ibp.levels.iter().zip(&crown.levels) {
            assert!(b.certified >= a.certified && a.certified_crown == 0);
            assert_eq!(b.certified - a.certified, b.certified_crown, "k {}", a.k);
            extra += b.certified_crown;
        }
    }
    eprintln!("crown added {extra} certificates, attacks falsified {falsified}");
    assert!(extra > 0 && falsified > 0, "crown added {extra}, attacks falsified {falsified}");
}

/// Across bounds (IBP, CROWN, branch and bound), runs and thread counts (1 and 2 worker
/// threads): the same verdicts, margins and counts for the same bound, and no sample is
/// certified in one run and falsified in another.
#[test]
fn verdicts_agree_across_bounds_runs_and_thread_counts() {
    use iocane_certify::gate::{self, BoundMethod, GateConfig, GateOutcome, SampleVerdict};
    use std::sync::atomic::AtomicBool;
    let mut rng = SplitMix64(77);
    let mut decided = [0usize; 2];
    for seed in 0..12u64 {
        let input = Shape::new(4, 4, 2);
        let ops = random_ops(&mut rng, 3);
        let blob = build(input, 3, &ops, seed).emit();
        let model = Model::parse(&blob).unwrap();
        let n = 10;
        let data = labelled_by_model(&model, n, &mut rng);
        let go = |bound, threads| -> GateOutcome {
            let cfg = GateConfig {
                k: 5,
                sweep: vec![2],
                samples: 0,
                pgd_steps: 10,
                square_queries: 100,
                random_samples: 20,
                bound,
                bab_branches: 16,
                ..GateConfig::default()
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut o = pool.install(|| gate::run(&model, &data, &cfg, &|_| {}, &AtomicBool::new(false)).unwrap());
            // Wall times differ between runs (SampleResult's equality ignores its own).
            for l in &mut o.levels {
                (l.bound_seconds, l.attack_seconds, l.doubled_seconds) = (0.0, 0.0, 0.0);
                l.attacks.iter_mut().for_each(|t| t.seconds = 0.0);
            }
            o
        };
        let mut all = Vec::new();
        for bound in [BoundMethod::Ibp, BoundMethod::Crown, BoundMethod::Bab] {
            let one = go(bound, 1);
            assert_eq!(one, go(bound, 2), "model {seed}, {bound:?}: 1 and 2 threads differ");
            assert_eq!(one, go(bound, 2), "model {seed}, {bound:?}: two runs differ");
            all.push(one);
        }
        for i in 0..n {
            let v: Vec<SampleVerdict> = all.iter().map(|o| o.samples[i].verdict).collect();
            let cert = v.contains(&SampleVerdict::Certified);
            let fals = v.contains(&SampleVerdict::Falsified);
            assert!(!(cert && fals), "model {seed}, sample {i}: certified and falsified across bounds: {v:?}");
            decided[0] += usize::from(cert);
            decided[1] += usize::from(fals);
        }
    }
    assert!(
        decided[0] > 0 && decided[1] > 0,
        "certified {}, falsified {}: the test saw no verdicts",
        decided[0],
        decided[1]
    );
}

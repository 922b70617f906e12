//! Attacks against certificates: no sample is ever both certified and falsified by an
//! attack, and both outcomes occur.

use iocane_certify::attack::{Attacker, PgdConfig, SplitMix64, SquareConfig};
use iocane_certify::ibp::{Bounder, Verdict};
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;

use crate::common::*;

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
        let (blob, p, mut rng) = case(input, classes, &ops, seed, pseed);
        let model = Model::parse(&blob).unwrap();
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
        let ops = random_ops(&mut rng, 3);
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

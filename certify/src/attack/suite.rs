//! Attack suites: which attacks the gate runs on a sample, with which budgets, in which
//! order, and what each one did.
//!
//! Two named suites: `fast`, the gate's default (PGD, FGSM, Square with 500 queries, random
//! sampling), and `standard`, AutoAttack's standard suite as far as it applies here
//! (APGD-CE, APGD-T over 9 target classes, Square with 5,000 queries; FAB-T runs by name
//! only, as it broke nothing the APGD attacks missed, `docs/attacks.md`) followed by the integer-aware search ([`super::search`]) on the samples the
//! other attacks leave standing. Every attack of a suite runs on every sample that is
//! correctly classified and not certified, except the integer search, which runs only on the
//! samples no earlier attack broke; the report gives each attack's robust accuracy alone and
//! after it and every earlier one, in the suite's order (AutoAttack's summary).

use super::{ApgdConfig, ApgdLoss, AttackResult, Attacker, FabConfig, PgdConfig, SearchConfig, SquareConfig};
use iocane_runtime::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// One attack of a suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackName {
    /// PGD with sign gradients ([`Attacker::pgd`]).
    Pgd,
    /// FGSM ([`Attacker::fgsm`]).
    Fgsm,
    /// The Square Attack ([`Attacker::square`]).
    Square,
    /// Random sampling ([`Attacker::random_sampling`]).
    Random,
    /// APGD with the cross-entropy loss ([`Attacker::apgd`]).
    ApgdCe,
    /// APGD with the untargeted DLR loss.
    ApgdDlr,
    /// APGD with the targeted DLR loss over the top target classes (APGD-T).
    ApgdT,
    /// FAB-T, the targeted minimum-norm attack ([`Attacker::fab_t`]).
    FabT,
    /// The integer-aware coordinate search ([`Attacker::integer_search`]), run only on the
    /// samples no earlier attack of the suite broke, from their nearest miss.
    Search,
}

impl AttackName {
    /// Every attack, in the order `--attacks` lists them.
    pub const ALL: [AttackName; 9] = [
        AttackName::Pgd,
        AttackName::Fgsm,
        AttackName::Square,
        AttackName::Random,
        AttackName::ApgdCe,
        AttackName::ApgdDlr,
        AttackName::ApgdT,
        AttackName::FabT,
        AttackName::Search,
    ];

    /// The name used by `--attacks`, the report and `broken_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackName::Pgd => "pgd",
            AttackName::Fgsm => "fgsm",
            AttackName::Square => "square",
            AttackName::Random => "random",
            AttackName::ApgdCe => "apgd-ce",
            AttackName::ApgdDlr => "apgd-dlr",
            AttackName::ApgdT => "apgd-t",
            AttackName::FabT => "fab-t",
            AttackName::Search => "search",
        }
    }

    /// Whether the attack follows the twin's gradients (the others only query the int8 model).
    pub fn uses_gradients(self) -> bool {
        !matches!(self, AttackName::Square | AttackName::Random)
    }
}

impl std::fmt::Display for AttackName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attacks of the `fast` suite, in order (the gate's attacks before suites existed).
pub const FAST: [AttackName; 4] = [AttackName::Pgd, AttackName::Fgsm, AttackName::Square, AttackName::Random];

/// The attacks of the `standard` suite, in order.
pub const STANDARD: [AttackName; 4] = [AttackName::ApgdCe, AttackName::ApgdT, AttackName::Square, AttackName::Search];

/// The Square Attack's budget in the `standard` suite (AutoAttack's).
pub const STANDARD_SQUARE_QUERIES: usize = 5000;

/// A parsed `--attacks` value: `fast`, `standard`, attack names, or a comma-separated mix
/// (`standard,pgd`); presets expand in place, repeats are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttackList {
    /// The attacks, in order, each once.
    pub attacks: Vec<AttackName>,
    /// Whether the `standard` preset was named (it implies AutoAttack's Square budget).
    pub standard: bool,
}

impl std::str::FromStr for AttackList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut attacks = Vec::new();
        let mut standard = false;
        for t in s.split(',').map(str::trim) {
            let add: Vec<AttackName> = match t {
                "fast" => FAST.to_vec(),
                "standard" => {
                    standard = true;
                    STANDARD.to_vec()
                }
                _ => match AttackName::ALL.iter().find(|a| a.as_str() == t) {
                    Some(&a) => vec![a],
                    None => {
                        let names: Vec<&str> = AttackName::ALL.iter().map(|a| a.as_str()).collect();
                        return Err(format!(
                            "unknown attack `{t}`: expected fast, standard or a comma-separated list of {}",
                            names.join(", ")
                        ));
                    }
                },
            };
            for a in add {
                if !attacks.contains(&a) {
                    attacks.push(a);
                }
            }
        }
        Ok(AttackList { attacks, standard })
    }
}

/// The attacks a gate runs and the budgets of those [`crate::gate::GateConfig`] does not
/// already hold (PGD, Square and random sampling keep their own fields there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackSuite {
    /// The attacks, in the order they run and are reported.
    pub attacks: Vec<AttackName>,
    /// APGD iterations per restart and target.
    pub apgd_iterations: usize,
    /// APGD restarts.
    pub apgd_restarts: usize,
    /// APGD-T's number of target classes.
    pub apgd_targets: usize,
    /// The integer search's query budget per sample.
    pub search_queries: usize,
    /// The Carlini check: at the gate radius, rerun the suite with doubled steps and
    /// restarts (and doubled query budgets) on the samples it left standing, and report how
    /// many more it breaks.
    pub double_check: bool,
}

impl Default for AttackSuite {
    /// The `fast` suite, AutoAttack's APGD budgets (100 iterations, 1 restart, 9 targets),
    /// 2,000 search queries, no doubling check.
    fn default() -> Self {
        AttackSuite {
            attacks: FAST.to_vec(),
            apgd_iterations: 100,
            apgd_restarts: 1,
            apgd_targets: 9,
            search_queries: SearchConfig::default().queries,
            double_check: false,
        }
    }
}

/// Every budget of one suite run on one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Budgets {
    /// The attacks, in order.
    pub attacks: Vec<AttackName>,
    /// PGD.
    pub pgd: PgdConfig,
    /// Square.
    pub square: SquareConfig,
    /// Random samples.
    pub random: usize,
    /// APGD (its loss is set per attack).
    pub apgd: ApgdConfig,
    /// APGD-T's target classes.
    pub apgd_targets: usize,
    /// FAB-T.
    pub fab: FabConfig,
    /// The integer search.
    pub search: SearchConfig,
}

impl Budgets {
    /// The same suite with doubled steps, restarts and query budgets (the Carlini check).
    pub fn doubled(&self) -> Budgets {
        let mut b = self.clone();
        b.pgd.steps = b.pgd.steps.saturating_mul(2);
        b.pgd.restarts = b.pgd.restarts.saturating_mul(2);
        b.square.queries = b.square.queries.saturating_mul(2);
        b.random = b.random.saturating_mul(2);
        b.apgd.iterations = b.apgd.iterations.saturating_mul(2);
        b.apgd.restarts = b.apgd.restarts.saturating_mul(2);
        b.fab.iterations = b.fab.iterations.saturating_mul(2);
        b.fab.restarts = b.fab.restarts.saturating_mul(2);
        b.search.queries = b.search.queries.saturating_mul(2);
        b
    }
}

/// What one attack of a suite did to one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct AttackRun {
    /// The attack.
    pub attack: AttackName,
    /// Its result; `None` when it did not run (the integer search after an earlier success).
    pub result: Option<AttackResult>,
    /// Wall seconds it took.
    pub seconds: f64,
}

impl AttackRun {
    /// Whether it ran and found a counterexample.
    pub fn broke(&self) -> bool {
        self.result.as_ref().is_some_and(AttackResult::success)
    }
}

/// Runs `b`'s attacks on one sample, in order, with one random stream.
///
/// # Panics
/// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
pub fn run_suite(
    att: &mut Attacker<'_>,
    pixels: &[u8],
    label: usize,
    k: u8,
    b: &Budgets,
    rng: &mut SplitMix64,
) -> Vec<AttackRun> {
    let mut out: Vec<AttackRun> = Vec::with_capacity(b.attacks.len());
    for &attack in &b.attacks {
        let t = std::time::Instant::now();
        let result = match attack {
            AttackName::Pgd => Some(att.pgd(pixels, label, k, &b.pgd, rng)),
            AttackName::Fgsm => Some(att.fgsm(pixels, label, k)),
            AttackName::Square => Some(att.square(pixels, label, k, &b.square, rng)),
            AttackName::Random => Some(att.random_sampling(pixels, label, k, b.random, rng)),
            AttackName::ApgdCe => {
                Some(att.apgd(pixels, label, k, &ApgdConfig { loss: ApgdLoss::CrossEntropy, ..b.apgd }, rng))
            }
            AttackName::ApgdDlr => Some(att.apgd(pixels, label, k, &ApgdConfig { loss: ApgdLoss::Dlr, ..b.apgd }, rng)),
            AttackName::ApgdT => Some(att.apgd(
                pixels,
                label,
                k,
                &ApgdConfig { loss: ApgdLoss::TargetedDlr { targets: b.apgd_targets }, ..b.apgd },
                rng,
            )),
            AttackName::FabT => Some(att.fab_t(pixels, label, k, &b.fab, rng)),
            AttackName::Search => (!out.iter().any(AttackRun::broke)).then(|| {
                let hint = out
                    .iter()
                    .filter_map(|r| r.result.as_ref()?.nearest_miss.as_ref())
                    .min_by_key(|(m, _)| *m)
                    .map(|(_, x)| x.clone());
                att.integer_search(pixels, label, k, hint.as_deref(), &b.search, rng)
            }),
        };
        out.push(AttackRun { attack, result, seconds: t.elapsed().as_secs_f64() });
    }
    out
}

/// One attack's counts at one radius (mergeable across shards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackTally {
    /// The attack.
    pub attack: AttackName,
    /// Samples it ran on (correct, not certified, and for the search not broken earlier).
    pub ran: usize,
    /// Samples it broke.
    pub broke: usize,
    /// Samples robust after it and every earlier attack of the suite (certified included):
    /// AutoAttack's running robust accuracy.
    pub robust_after: usize,
    /// Seconds it spent, summed over the samples it ran on (and over threads).
    #[serde(default)]
    pub seconds: f64,
}

/// Empty tallies for `attacks`, in order.
pub fn tallies(attacks: &[AttackName]) -> Vec<AttackTally> {
    attacks.iter().map(|&attack| AttackTally { attack, ran: 0, broke: 0, robust_after: 0, seconds: 0.0 }).collect()
}

/// Adds `other` into `acc` attack by attack (an empty side takes the other's).
pub fn add_tallies(acc: &mut Vec<AttackTally>, other: &[AttackTally]) {
    if acc.is_empty() {
        acc.extend_from_slice(other);
        return;
    }
    for (a, o) in acc.iter_mut().zip(other) {
        a.ran += o.ran;
        a.broke += o.broke;
        a.robust_after += o.robust_after;
        a.seconds += o.seconds;
    }
}

/// Counts a certified sample: robust after every attack, attacked by none.
pub fn record_certified(t: &mut [AttackTally]) {
    t.iter_mut().for_each(|t| t.robust_after += 1);
}

/// Counts one sample's suite run (`runs` in the tallies' order).
pub fn record(t: &mut [AttackTally], runs: &[AttackRun]) {
    let mut standing = true;
    for (t, r) in t.iter_mut().zip(runs) {
        t.ran += usize::from(r.result.is_some());
        t.broke += usize::from(r.broke());
        standing &= !r.broke();
        t.robust_after += usize::from(standing);
        t.seconds += r.seconds;
    }
}

/// Whether a gradient-free attack broke the sample while the suite's gradient attacks (at
/// least one ran) all failed: a sign of gradient masking.
pub fn masking_sign(runs: &[AttackRun]) -> bool {
    let (free, grad): (Vec<&AttackRun>, Vec<&AttackRun>) =
        runs.iter().filter(|r| r.result.is_some()).partition(|r| !r.attack.uses_gradients());
    !grad.is_empty() && free.iter().any(|r| r.broke()) && !grad.iter().any(|r| r.broke())
}

/// Carlini et al.'s "iterative attacks must beat single-step ones" at radius `k` over `clean`
/// correctly classified samples: one warning per iterative gradient attack of the suite that breaks fewer samples
/// than FGSM. Reports without tallies give `(survived PGD, survived FGSM)` instead.
pub fn tally_warnings(k: u8, clean: usize, t: &[AttackTally], (pgd, fgsm): (usize, usize)) -> Vec<String> {
    let weaker = |name: AttackName, left: usize, fgsm_left: usize| {
        format!(
            "at k={k}, {} leaves {left} samples standing but FGSM only {fgsm_left}: {} is weaker than FGSM",
            name.as_str().to_uppercase(),
            name.as_str().to_uppercase()
        )
    };
    if t.is_empty() {
        return if pgd > fgsm { vec![weaker(AttackName::Pgd, pgd, fgsm)] } else { vec![] };
    }
    let Some(f) = t.iter().find(|t| t.attack == AttackName::Fgsm) else { return vec![] };
    t.iter()
        .filter(|t| t.attack.uses_gradients() && !matches!(t.attack, AttackName::Fgsm | AttackName::Search))
        .filter(|t| t.broke < f.broke)
        .map(|t| weaker(t.attack, clean.saturating_sub(t.broke), clean.saturating_sub(f.broke)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Iterative attacks that break fewer samples than FGSM are named; the search (which runs
    /// on survivors only) and suites without FGSM raise nothing; old reports use the fields.
    #[test]
    fn weaker_than_fgsm_is_flagged_per_attack() {
        let t = |attack, broke| AttackTally { attack, ran: 10, broke, robust_after: 0, seconds: 0.0 };
        let tallies = [
            t(AttackName::Fgsm, 4),
            t(AttackName::ApgdCe, 3),
            t(AttackName::Pgd, 4),
            t(AttackName::ApgdT, 5),
            t(AttackName::Search, 0),
        ];
        let w = tally_warnings(3, 10, &tallies, (0, 0));
        assert_eq!(w, vec!["at k=3, APGD-CE leaves 7 samples standing but FGSM only 6: APGD-CE is weaker than FGSM"]);
        assert!(tally_warnings(3, 10, &tallies[1..], (0, 0)).is_empty());
        assert_eq!(tally_warnings(1, 10, &[], (8, 7)).len(), 1);
        assert!(tally_warnings(1, 10, &[], (7, 8)).is_empty());
    }

    /// A sample broken only by a gradient-free attack is a masking sign, unless no gradient
    /// attack ran.
    #[test]
    fn masking_sign_needs_a_gradient_attack_that_failed() {
        let run = |attack, broke: Option<bool>| AttackRun {
            attack,
            result: broke.map(|b| AttackResult { counterexample: b.then(Vec::new), ..AttackResult::default() }),
            seconds: 0.0,
        };
        let sq = run(AttackName::Square, Some(true));
        assert!(masking_sign(&[run(AttackName::ApgdT, Some(false)), sq.clone()]));
        assert!(!masking_sign(&[run(AttackName::ApgdT, Some(true)), sq.clone()]));
        assert!(!masking_sign(&[sq.clone(), run(AttackName::Random, Some(false))]));
        assert!(!masking_sign(&[run(AttackName::Search, None), sq]));
    }

    #[test]
    fn attack_lists_parse_presets_names_and_mixes() {
        let p = |s: &str| s.parse::<AttackList>();
        assert_eq!(p("fast").unwrap(), AttackList { attacks: FAST.to_vec(), standard: false });
        assert_eq!(p("standard").unwrap(), AttackList { attacks: STANDARD.to_vec(), standard: true });
        assert_eq!(p("apgd-t, pgd").unwrap().attacks, vec![AttackName::ApgdT, AttackName::Pgd]);
        let mix = p("standard,pgd,square").unwrap();
        assert_eq!(mix.attacks.len(), 5);
        assert_eq!(mix.attacks[4], AttackName::Pgd);
        assert!(mix.standard);
        for a in AttackName::ALL {
            assert_eq!(p(a.as_str()).unwrap().attacks, vec![a]);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
        }
        for bad in ["", "pgd,", "fab", "PGD", "fast;pgd"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("unknown attack") && e.contains("apgd-t"), "{bad:?}: {e}");
        }
    }
}

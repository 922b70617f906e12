//! The release gate: certify and attack a dataset at one or more radii, on the int8 model.
//!
//! Per sample and radius `k` (pixel levels): the clean image is run through the runtime
//! (misclassified?), interval bounds over the integer arithmetic try to prove the ball
//! (certified), and otherwise FGSM, PGD, the Square Attack and random sampling search for a
//! counterexample (falsified) — else the verdict is unknown. Certified accuracy is a lower
//! bound on the true robust accuracy; empirical (attack) accuracy is an upper bound.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use iocane_runtime::rng::SplitMix64;
use iocane_runtime::Model;
use iocane_trainer::data::Dataset;

use crate::attack::{Attacker, PgdConfig, SquareConfig};
use crate::ibp::{Bounder, Verdict};

/// Which figure the gate holds against the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateKind {
    /// Certified (proven) accuracy.
    Certified,
    /// Empirical accuracy (survives every attack).
    Empirical,
}

impl std::str::FromStr for GateKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "certified" => Ok(GateKind::Certified),
            "empirical" => Ok(GateKind::Empirical),
            _ => Err(format!("unknown gate `{s}`: expected certified or empirical")),
        }
    }
}

/// Settings of a certification run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateConfig {
    /// The radius the gate is about, in pixel levels (eps = k/255).
    pub k: u8,
    /// Additional radii for the accuracy-vs-eps curve (levels).
    pub sweep: Vec<u8>,
    /// Samples of the test split to use (0 = all), before sharding.
    pub samples: usize,
    /// Shard `(index, count)`: sample `i` belongs to shard `i % count`.
    pub shard: (usize, usize),
    /// Seed of every random choice.
    pub seed: u64,
    /// PGD steps.
    pub pgd_steps: usize,
    /// PGD restarts.
    pub pgd_restarts: usize,
    /// PGD step size in levels (`None`: max(1, k/4)).
    pub pgd_step_size: Option<f32>,
    /// Square Attack query budget.
    pub square_queries: usize,
    /// Random samples from the ball.
    pub random_samples: usize,
    /// The figure held against the threshold.
    pub gate: GateKind,
    /// Minimum accuracy to pass.
    pub threshold: f32,
}

/// The verdict of one sample at one radius.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleVerdict {
    /// Proven robust by the interval bounds.
    Certified,
    /// An attack found a counterexample.
    Falsified,
    /// Neither proven nor broken.
    Unknown,
    /// The clean image is misclassified.
    Misclassified,
}

/// One sample's outcome at the gate radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// Index in the test split.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// Runtime's prediction on the clean image.
    pub predicted: usize,
    /// Verdict.
    pub verdict: SampleVerdict,
    /// Attacks that broke it (`fgsm`, `pgd`, `square`, `random`).
    pub broken_by: Vec<String>,
    /// The counterexample (u8 pixels), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<Vec<u8>>,
    /// Worst-case certified margin from the bounds (>= 0 means certified).
    pub bound_margin: Option<i64>,
}

/// Counts at one radius (mergeable across shards).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelCounts {
    /// Radius in levels.
    pub k: u8,
    /// Samples evaluated.
    pub n: usize,
    /// Correct on the clean image.
    pub clean: usize,
    /// Certified.
    pub certified: usize,
    /// Survived every attack (includes certified).
    pub empirical: usize,
    /// Survived FGSM.
    pub fgsm: usize,
    /// Survived PGD.
    pub pgd: usize,
    /// Survived the Square Attack.
    pub square: usize,
    /// Survived random sampling.
    pub random: usize,
    /// Broken by Square but not by PGD (a gradient-masking sign).
    pub square_not_pgd: usize,
    /// Seconds spent on bounds.
    pub bound_seconds: f64,
    /// Seconds spent on attacks.
    pub attack_seconds: f64,
}

impl LevelCounts {
    fn add(&mut self, o: &LevelCounts) {
        self.n += o.n;
        self.clean += o.clean;
        self.certified += o.certified;
        self.empirical += o.empirical;
        self.fgsm += o.fgsm;
        self.pgd += o.pgd;
        self.square += o.square;
        self.random += o.random;
        self.square_not_pgd += o.square_not_pgd;
        self.bound_seconds += o.bound_seconds;
        self.attack_seconds += o.attack_seconds;
    }
    /// `count / n`.
    pub fn acc(&self, count: usize) -> f64 {
        count as f64 / self.n.max(1) as f64
    }
}

/// One test sample: pixels, label, index in the split.
struct Sample<'d> {
    px: &'d [u8],
    label: usize,
    index: usize,
}

/// Evaluates one sample at radius `k`.
fn one_sample(
    att: &mut Attacker<'_>,
    bnd: &mut Bounder<'_>,
    cfg: &GateConfig,
    s: &Sample<'_>,
    k: u8,
    counts: &mut LevelCounts,
) -> SampleResult {
    let (px, label, index) = (s.px, s.label, s.index);
    counts.n += 1;
    let t0 = Instant::now();
    let (verdict, bounds) = bnd.certify_sample(px, label, k);
    counts.bound_seconds += t0.elapsed().as_secs_f64();
    let predicted = att.classify(px);
    let mut res = SampleResult {
        index,
        label,
        predicted,
        verdict: SampleVerdict::Misclassified,
        broken_by: vec![],
        counterexample: None,
        bound_margin: None,
    };
    if verdict == Verdict::Misclassified {
        res.bound_margin = bounds.margin(label);
        return res;
    }
    // The exact last-layer margin bound (>= 0 iff certified), consistent with the verdict.
    let (lo, hi) = crate::ibp::linf_ball(px, k);
    res.bound_margin = crate::ibp::worst_margin(&bnd.margin_lower_bounds(&lo, &hi, label), label);
    counts.clean += 1;
    if verdict == Verdict::Certified {
        res.verdict = SampleVerdict::Certified;
        for c in [
            &mut counts.certified,
            &mut counts.empirical,
            &mut counts.fgsm,
            &mut counts.pgd,
            &mut counts.square,
            &mut counts.random,
        ] {
            *c += 1;
        }
        return res;
    }
    let t1 = Instant::now();
    let mut rng = SplitMix64(cfg.seed ^ ((index as u64) << 8) ^ k as u64 ^ 0x5EED_0000_0000);
    let pgd_cfg = PgdConfig {
        steps: cfg.pgd_steps,
        restarts: cfg.pgd_restarts,
        step_size: cfg.pgd_step_size,
        ..PgdConfig::default()
    };
    let sq_cfg = SquareConfig { queries: cfg.square_queries, ..SquareConfig::default() };
    let results = [
        ("pgd", att.pgd(px, label, k, &pgd_cfg, &mut rng)),
        ("fgsm", att.fgsm(px, label, k)),
        ("square", att.square(px, label, k, &sq_cfg, &mut rng)),
        ("random", att.random_sampling(px, label, k, cfg.random_samples, &mut rng)),
    ];
    counts.attack_seconds += t1.elapsed().as_secs_f64();
    let ok = |name: &str| !results.iter().any(|(n, r)| *n == name && r.success());
    counts.fgsm += usize::from(ok("fgsm"));
    counts.pgd += usize::from(ok("pgd"));
    counts.square += usize::from(ok("square"));
    counts.random += usize::from(ok("random"));
    counts.square_not_pgd += usize::from(!ok("square") && ok("pgd"));
    for (name, r) in results {
        if let Some(cx) = r.counterexample {
            res.broken_by.push(name.to_string());
            if res.counterexample.is_none() {
                res.counterexample = Some(cx);
            }
        }
    }
    if res.counterexample.is_some() {
        res.verdict = SampleVerdict::Falsified;
    } else {
        res.verdict = SampleVerdict::Unknown;
        counts.empirical += 1;
    }
    res
}

/// The indices of the test split this shard covers.
pub fn shard_indices(total: usize, samples: usize, shard: (usize, usize)) -> Vec<usize> {
    let n = if samples == 0 { total } else { samples.min(total) };
    (0..n).filter(|i| i % shard.1.max(1) == shard.0).collect()
}

/// Results of a run: per-sample results at the gate radius and counts at every radius.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateOutcome {
    /// Per-sample results at `cfg.k`, in index order.
    pub samples: Vec<SampleResult>,
    /// Counts per radius, ascending `k` (includes `cfg.k` and the sweep).
    pub levels: Vec<LevelCounts>,
}

/// Runs the gate on `test` with `model`, in parallel over samples (results do not depend on
/// the thread count). `progress` is called with the number of samples finished so far.
pub fn run(model: &Model<'_>, test: &Dataset, cfg: &GateConfig, progress: &(dyn Fn(u64) + Sync)) -> GateOutcome {
    let idx = shard_indices(test.len(), cfg.samples, cfg.shard);
    let mut ks: Vec<u8> = cfg.sweep.iter().copied().chain(std::iter::once(cfg.k)).collect();
    ks.sort_unstable();
    ks.dedup();
    let per: Vec<(Vec<LevelCounts>, SampleResult)> = idx
        .par_iter()
        .map_init(
            || (Attacker::new(model), Bounder::new(model)),
            |(att, bnd), &i| {
                let px = test.image(i);
                let label = test.label(i);
                let mut levels = Vec::with_capacity(ks.len());
                let mut main = None;
                for &k in &ks {
                    let mut c = LevelCounts { k, ..LevelCounts::default() };
                    let r = one_sample(att, bnd, cfg, &Sample { px, label, index: i }, k, &mut c);
                    if k == cfg.k {
                        main = Some(r);
                    }
                    levels.push(c);
                }
                progress(1);
                (levels, main.expect("gate radius is among the radii"))
            },
        )
        .collect();
    let mut levels: Vec<LevelCounts> = ks.iter().map(|&k| LevelCounts { k, ..LevelCounts::default() }).collect();
    let mut samples = Vec::with_capacity(per.len());
    for (lv, s) in per {
        for (acc, l) in levels.iter_mut().zip(&lv) {
            acc.add(l);
        }
        samples.push(s);
    }
    GateOutcome { samples, levels }
}

/// Merges shard outcomes (samples re-sorted by index, counts summed).
pub fn merge(parts: &[GateOutcome]) -> GateOutcome {
    let mut samples: Vec<SampleResult> = parts.iter().flat_map(|p| p.samples.iter().cloned()).collect();
    samples.sort_by_key(|s| s.index);
    samples.dedup_by_key(|s| s.index);
    let mut levels: Vec<LevelCounts> = Vec::new();
    for p in parts {
        for l in &p.levels {
            match levels.iter_mut().find(|x| x.k == l.k) {
                Some(x) => x.add(l),
                None => levels.push(l.clone()),
            }
        }
    }
    levels.sort_by_key(|l| l.k);
    GateOutcome { samples, levels }
}

/// Carlini et al.'s protocol checks on an outcome; each warning is one sentence.
pub fn protocol_warnings(o: &GateOutcome) -> Vec<String> {
    let mut w = Vec::new();
    for pair in o.levels.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.acc(b.empirical) > a.acc(a.empirical) + 1e-12 {
            w.push(format!("empirical accuracy rises from k={} to k={}: attacks are too weak", a.k, b.k));
        }
        if b.acc(b.certified) > a.acc(a.certified) + 1e-12 {
            w.push(format!("certified accuracy rises from k={} to k={} (should be impossible)", a.k, b.k));
        }
    }
    for l in &o.levels {
        if l.pgd > l.fgsm {
            w.push(format!(
                "at k={}, PGD leaves {} samples standing but FGSM only {}: PGD is weaker than FGSM",
                l.k, l.pgd, l.fgsm
            ));
        }
        if l.square_not_pgd > 0 {
            w.push(format!(
                "at k={}, the gradient-free Square Attack broke {} sample(s) that PGD did not: a sign of gradient masking",
                l.k, l.square_not_pgd
            ));
        }
    }
    w
}

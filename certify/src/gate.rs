//! The release gate: certify and attack a dataset at one or more radii, on the int8 model.
//!
//! Per sample and radius `k` (pixel levels): the clean image is run through the runtime
//! (misclassified?), interval bounds over the integer arithmetic try to prove the ball
//! (certified), and otherwise the attack suite (`--attacks`: FGSM, PGD, the Square Attack and
//! random sampling by default; APGD and an integer search in `standard`) searches for a
//! counterexample (falsified) — else the verdict is unknown. Certified accuracy is a lower
//! bound on the true robust accuracy; empirical (attack) accuracy is an upper bound.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iocane_runtime::rng::SplitMix64;
use iocane_runtime::Model;
use iocane_trainer::data::Dataset;

use crate::attack::suite::{self, AttackSuite, AttackTally, Budgets};
use crate::attack::{Attacker, PgdConfig, SquareConfig};
use crate::crown::{Crown, CrownConfig};
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
        parse_choice(s, "gate", &[("certified", GateKind::Certified), ("empirical", GateKind::Empirical)])
    }
}

/// The value named `s` among `choices`, else an error naming them all.
fn parse_choice<T: Copy>(s: &str, what: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices.iter().find(|(name, _)| *name == s).map(|&(_, v)| v).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let (last, rest) = names.split_last().map_or(("", &[][..]), |(l, r)| (*l, r));
        let list = if rest.is_empty() { last.to_string() } else { format!("{} or {last}", rest.join(", ")) };
        format!("unknown {what} `{s}`: expected {list}")
    })
}

/// Which sound bound proves samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundMethod {
    /// Interval bounds ([`crate::ibp`]) only.
    Ibp,
    /// Interval bounds, then linear-relaxation bounds ([`crate::crown`]) on the samples
    /// they leave open. Never certifies fewer samples than `Ibp`.
    Crown,
    /// As `Crown`, then branch and bound ([`crate::crown::Crown::bab_margin`]) on the
    /// samples neither the bounds nor the attacks decide, up to
    /// [`GateConfig::bab_branches`] branches each.
    Bab,
}

impl BoundMethod {
    /// The method of reports written before the choice existed.
    fn legacy() -> BoundMethod {
        BoundMethod::Ibp
    }
}

impl std::str::FromStr for BoundMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_choice(s, "bound", &[("ibp", BoundMethod::Ibp), ("crown", BoundMethod::Crown), ("bab", BoundMethod::Bab)])
    }
}

/// The gate's minimum accuracy as an exact fraction `num / den` of the evaluated samples.
///
/// Parsed from a decimal (`0.8`, `.85`, `1`), a percentage (`80%`, `99.5%`) or a fraction
/// (`4/5`), never through a float: `n` samples pass when at least
/// [`Threshold::required`]`(n) = ceil(num * n / den)` of them count, so an accuracy exactly at
/// the threshold passes and no rounding can let one below it through. Serialised as the
/// reduced fraction `"num/den"` (`0.8` is written `"4/5"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    num: u64,
    den: u64,
}

impl Threshold {
    /// Zero: every run over at least one sample passes.
    pub const ZERO: Threshold = Threshold { num: 0, den: 1 };

    /// `num / den`, reduced; `None` unless `den > 0` and `num <= den`.
    pub fn new(num: u64, den: u64) -> Option<Threshold> {
        if den == 0 || num > den {
            return None;
        }
        let g = gcd(num, den);
        Some(Threshold { num: num / g, den: den / g })
    }

    /// Numerator and denominator (reduced).
    pub fn fraction(&self) -> (u64, u64) {
        (self.num, self.den)
    }

    /// The smallest count out of `n` that meets the threshold: `ceil(num * n / den)`.
    pub fn required(&self, n: usize) -> usize {
        let (num, den, n) = (self.num as u128, self.den as u128, n as u128);
        (num * n).div_ceil(den) as usize
    }

    /// Whether `count` of `n` samples meet the threshold (`n` must be positive: a gate over
    /// no samples proves nothing and is an error before it gets here).
    pub fn met(&self, count: usize, n: usize) -> bool {
        n > 0 && count >= self.required(n)
    }

    /// The threshold as a float, for display only (never for the decision).
    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    /// Parses `0.8`, `80%` or `4/5`; anything outside [0, 1], NaN or infinite is an error.
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || format!("bad threshold `{text}`: use a fraction of the samples in [0, 1] such as 0.8, 80% or 4/5");
        let out_of_range = || format!("threshold `{text}` is outside [0, 1]");
        if let Some((a, b)) = t.split_once('/') {
            let num: u64 = a.trim().parse().map_err(|_| bad())?;
            let den: u64 = b.trim().parse().map_err(|_| bad())?;
            if den == 0 {
                return Err(bad());
            }
            return Threshold::new(num, den).ok_or_else(out_of_range);
        }
        let (t, percent) = match t.strip_suffix('%') {
            Some(p) => (p.trim(), true),
            None => (t, false),
        };
        let (num, den) = parse_decimal(t).ok_or_else(|| if t.starts_with('-') { out_of_range() } else { bad() })?;
        let den = if percent { den.checked_mul(100).ok_or_else(bad)? } else { den };
        Threshold::new(num, den).ok_or_else(out_of_range)
    }
}

/// An unsigned decimal `123.456` as `(123456, 1000)`; at most 12 fractional digits.
pub(crate) fn parse_decimal(t: &str) -> Option<(u64, u64)> {
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 12
        || int.len() > 6
    {
        return None;
    }
    let den = 10u64.pow(frac.len() as u32);
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    Some((int.checked_mul(den)?.checked_add(frac)?, den))
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The radius as asked for and as applied: perturbations live on 8-bit pixels, so a radius
/// is a whole number `k` of pixel levels (`eps = k/255`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Radius {
    /// What the user wrote (`0.1`, `4/255`).
    pub requested: String,
    /// The applied radius in levels: `floor(requested * 255)`, computed exactly.
    pub k: u8,
    /// Whether `requested` is exactly `k/255` (otherwise it was rounded down).
    pub exact: bool,
}

impl std::str::FromStr for Radius {
    type Err = String;
    /// Parses a decimal (`0.1`) or a fraction (`4/255`, `1/10`) in [0, 1]; the applied radius
    /// is `floor(eps * 255)` levels, computed in integers. A positive radius that rounds down
    /// to 0 levels is an error (it would certify nothing while claiming a radius).
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || format!("bad eps `{text}`: use a decimal like 0.1 or levels like 8/255");
        let (num, den) = match t.split_once('/') {
            Some((a, b)) => {
                let num: u64 = a.trim().parse().map_err(|_| bad())?;
                let den: u64 = b.trim().parse().map_err(|_| bad())?;
                if den == 0 {
                    return Err(format!("bad eps `{text}`: division by zero"));
                }
                (num, den)
            }
            None => parse_decimal(t).ok_or_else(bad)?,
        };
        if num > den {
            return Err(format!("eps `{text}` is outside [0, 1]"));
        }
        let scaled = num as u128 * 255;
        let k = (scaled / den as u128) as u8;
        if num > 0 && k == 0 {
            return Err(format!(
                "eps `{text}` is less than one pixel level (1/255 = 0.0039): it would certify nothing; use 1/255 or more"
            ));
        }
        Ok(Radius { requested: t.to_string(), k, exact: scaled.is_multiple_of(den as u128) })
    }
}

impl Radius {
    /// Exactly `k/255`.
    pub fn levels(k: u8) -> Radius {
        Radius { requested: format!("{k}/255"), k, exact: true }
    }

    /// A one-line warning when the requested radius was rounded down, else `None`.
    pub fn rounding_warning(&self) -> Option<String> {
        (!self.exact).then(|| {
            format!(
                "eps {} is not a whole number of pixel levels: applied k = {} levels ({}/255 = {:.6}), rounded down",
                self.requested,
                self.k,
                self.k,
                self.k as f64 / 255.0
            )
        })
    }
}

/// Settings of a certification run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Minimum accuracy to pass (exact; see [`Threshold`]).
    pub threshold: Threshold,
    /// Protocol warnings fail the gate too.
    pub strict: bool,
    /// The sound bound that proves samples.
    #[serde(default = "BoundMethod::legacy")]
    pub bound: BoundMethod,
    /// Branch-and-bound budget per open sample and radius, in bounded branches
    /// (deterministic, unlike a time budget); used by [`BoundMethod::Bab`].
    #[serde(default)]
    pub bab_branches: usize,
    /// Wall-clock budget of branch and bound per open sample and radius, in milliseconds
    /// (`None`: only [`GateConfig::bab_branches`] limits it). A time budget makes which
    /// samples end "unknown" depend on the machine; a verdict is never wrong either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bab_budget_ms: Option<u64>,
    /// Slope-optimisation steps of the linear bounds (alpha-CROWN,
    /// [`CrownConfig::alpha_steps`]) on the margins plain CROWN leaves open; `0`: none.
    #[serde(default)]
    pub alpha_steps: usize,
    /// The attacks and their other budgets (reports written before suites existed ran the
    /// `fast` suite).
    #[serde(default)]
    pub suite: AttackSuite,
}

impl GateConfig {
    /// Every attack budget of a run of this configuration.
    pub fn budgets(&self) -> Budgets {
        Budgets {
            attacks: self.suite.attacks.clone(),
            pgd: PgdConfig {
                steps: self.pgd_steps,
                restarts: self.pgd_restarts,
                step_size: self.pgd_step_size,
                ..PgdConfig::default()
            },
            square: SquareConfig { queries: self.square_queries, ..SquareConfig::default() },
            random: self.random_samples,
            apgd: crate::attack::ApgdConfig {
                iterations: self.suite.apgd_iterations,
                restarts: self.suite.apgd_restarts,
                ..crate::attack::ApgdConfig::default()
            },
            apgd_targets: self.suite.apgd_targets,
            fab: crate::attack::FabConfig {
                iterations: self.suite.apgd_iterations,
                restarts: self.suite.apgd_restarts,
                targets: self.suite.apgd_targets,
                ..crate::attack::FabConfig::default()
            },
            search: crate::attack::SearchConfig { queries: self.suite.search_queries, ..Default::default() },
        }
    }
}

impl Default for GateConfig {
    /// The CLI's defaults (`iocane certify` without flags; its numeric flags take their
    /// defaults from here): radius 4/255, sweep 0,1,2,4,8,
    /// 500 samples, seed 1, the `fast` attack suite (PGD 40 steps x 2 restarts, FGSM, Square
    /// 500 queries, 100 random samples), certified gate at threshold 0, CROWN bounds with 10
    /// slope-optimisation steps.
    fn default() -> Self {
        GateConfig {
            k: 4,
            sweep: vec![0, 1, 2, 4, 8],
            samples: 500,
            shard: (0, 1),
            seed: 1,
            pgd_steps: 40,
            pgd_restarts: 2,
            pgd_step_size: None,
            square_queries: 500,
            random_samples: 100,
            gate: GateKind::Certified,
            threshold: Threshold::ZERO,
            strict: false,
            bound: BoundMethod::Crown,
            bab_branches: 64,
            bab_budget_ms: None,
            alpha_steps: 10,
            suite: AttackSuite::default(),
        }
    }
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
///
/// Equality compares the outcome, not the wall time: two results are equal when every field
/// but [`SampleResult::seconds`] is (runs on other machines, thread counts or shards agree).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleResult {
    /// Index in the test split.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// Runtime's prediction on the clean image.
    pub predicted: usize,
    /// Verdict.
    pub verdict: SampleVerdict,
    /// Attacks that broke it, in the suite's order (`pgd`, `apgd-t`, ...; the first one broke
    /// it first and its counterexample is the one stored).
    pub broken_by: Vec<String>,
    /// The counterexample (u8 pixels), if any; in `report.json` only as
    /// [`SampleResult::counterexample_file`] (read back by `CertifyReport::read`).
    #[serde(skip)]
    pub counterexample: Option<Vec<u8>>,
    /// The counterexample's file, relative to the report directory
    /// (`counterexamples/sample_<index>.bin`, raw NHWC u8 pixels; a `.png` beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterexample_file: Option<String>,
    /// The runtime's class of the counterexample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial_class: Option<usize>,
    /// The clean image of a sample with a counterexample (for the gallery); stored as
    /// [`clean_file`] beside the counterexample and read back by `CertifyReport::read`.
    #[serde(skip)]
    pub clean: Option<Vec<u8>>,
    /// Worst-case certified margin from the bounds (>= 0 means certified).
    pub bound_margin: Option<i64>,
    /// The bound that proved the sample (`ibp` if interval bounds sufficed), if certified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certified_by: Option<BoundMethod>,
    /// Wall time spent on this sample at the gate radius (bounds, attacks and branch and
    /// bound), in seconds.
    #[serde(default)]
    pub seconds: f64,
}

impl PartialEq for SampleResult {
    fn eq(&self, o: &Self) -> bool {
        let SampleResult {
            index,
            label,
            predicted,
            verdict,
            broken_by,
            counterexample,
            counterexample_file,
            adversarial_class,
            clean,
            bound_margin,
            certified_by,
            seconds: _,
        } = self;
        (index, label, predicted, verdict, broken_by, counterexample, counterexample_file)
            == (&o.index, &o.label, &o.predicted, &o.verdict, &o.broken_by, &o.counterexample, &o.counterexample_file)
            && (adversarial_class, clean, bound_margin, certified_by)
                == (&o.adversarial_class, &o.clean, &o.bound_margin, &o.certified_by)
    }
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
    /// Certified by the linear-relaxation bounds where interval bounds were not enough
    /// (included in `certified`).
    #[serde(default)]
    pub certified_crown: usize,
    /// Certified by branch and bound where bounds and attacks left the sample open
    /// (included in `certified`).
    #[serde(default)]
    pub certified_bab: usize,
    /// Falsified by branch and bound's falsifier (its corners and the integer search from
    /// them) after surviving every attack (included in `empirical`, which counts the
    /// attacks' survivors).
    #[serde(default)]
    pub falsified_bab: usize,
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
    /// Broken by a gradient-free attack (Square, random) but by none of the suite's gradient
    /// attacks (a gradient-masking sign; 0 when the suite has no gradient attack).
    pub square_not_pgd: usize,
    /// Per attack of the suite, in its order: samples it ran on, broke, and the robust count
    /// after it and every earlier one (empty in reports written before suites existed).
    #[serde(default)]
    pub attacks: Vec<AttackTally>,
    /// The doubling check (at the gate radius, with [`AttackSuite::double_check`]): samples
    /// the suite left standing that it breaks with doubled steps, restarts and queries.
    #[serde(default)]
    pub doubled_broke: usize,
    /// Seconds spent on the doubling check.
    #[serde(default)]
    pub doubled_seconds: f64,
    /// Seconds spent on bounds.
    pub bound_seconds: f64,
    /// Seconds spent on attacks.
    pub attack_seconds: f64,
}

impl LevelCounts {
    /// Adds `o`'s counts and times (every field but `k`).
    pub(crate) fn add(&mut self, o: &LevelCounts) {
        macro_rules! add {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        add!(
            n,
            clean,
            certified,
            certified_crown,
            certified_bab,
            falsified_bab,
            empirical,
            fgsm,
            pgd,
            square,
            random,
            square_not_pgd
        );
        add!(doubled_broke, bound_seconds, attack_seconds, doubled_seconds);
        suite::add_tallies(&mut self.attacks, &o.attacks);
    }
    /// `count / n`.
    pub fn acc(&self, count: usize) -> f64 {
        count as f64 / self.n.max(1) as f64
    }
}

/// Why a gate run cannot start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The run would evaluate no sample (empty split, or a shard past the sample count).
    #[error(
        "the gate would evaluate 0 samples (test split of {split_len}, --samples {samples}, shard {}/{}): a gate over no samples proves nothing",
        shard.0,
        shard.1
    )]
    NoSamples {
        /// Images in the test split.
        split_len: usize,
        /// `--samples` (0 = all).
        samples: usize,
        /// The shard.
        shard: (usize, usize),
    },
    /// The shard is not `I/N` with `0 <= I < N`.
    #[error("shard {0}/{1} is not I/N with 0 <= I < N")]
    BadShard(usize, usize),
    /// The model and the dataset do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// The run was interrupted (Ctrl-C) before every sample was done.
    #[error("interrupted after {done} of {total} samples; nothing was written")]
    Interrupted {
        /// Samples finished.
        done: usize,
        /// Samples of the run.
        total: usize,
    },
}

/// Checks that `model` can be gated on `test` with `cfg` (shape, classes, labels, shard,
/// at least one sample) before any work is done.
pub fn validate(model: &Model<'_>, test: &Dataset, cfg: &GateConfig) -> Result<usize, GateError> {
    let s = model.input_shape();
    if [test.height, test.width, test.channels] != [s.h, s.w, s.c] {
        return Err(GateError::Mismatch(format!(
            "dataset {} has {}x{}x{} images, the model takes {s}",
            test.name, test.height, test.width, test.channels
        )));
    }
    if test.classes != model.num_classes() {
        return Err(GateError::Mismatch(format!(
            "dataset {} has {} classes, the model has {} outputs: certify a model on the data it classifies",
            test.name,
            test.classes,
            model.num_classes()
        )));
    }
    let (i, n) = cfg.shard;
    if n == 0 || i >= n {
        return Err(GateError::BadShard(i, n));
    }
    let idx = shard_indices(test.len(), cfg.samples, cfg.shard);
    if idx.is_empty() {
        return Err(GateError::NoSamples { split_len: test.len(), samples: cfg.samples, shard: cfg.shard });
    }
    if let Some(&bad) = idx.iter().find(|&&j| test.label(j) >= model.num_classes()) {
        return Err(GateError::Mismatch(format!(
            "sample {bad} of {} has label {}, but the model has only {} classes",
            test.name,
            test.label(bad),
            model.num_classes()
        )));
    }
    Ok(idx.len())
}

/// One test sample: pixels, label, index in the split, and the runtime's clean prediction.
struct Sample<'d> {
    px: &'d [u8],
    label: usize,
    index: usize,
    predicted: usize,
}

/// Evaluates one sample at radius `k` (bounds computed once, the clean prediction given),
/// with its wall time.
fn one_sample(
    att: &mut Attacker<'_>,
    bounders: (&mut Bounder<'_>, &mut Crown<'_>),
    cfg: &GateConfig,
    s: &Sample<'_>,
    k: u8,
    counts: &mut LevelCounts,
) -> SampleResult {
    let t = Instant::now();
    let mut res = decide_sample(att, bounders, cfg, s, k, counts);
    res.seconds = t.elapsed().as_secs_f64();
    res
}

/// Records the falsified verdict of sample `index` (clean image `px`) with its replayed
/// counterexample `cx`, from an attack or from branch and bound's falsifier.
fn mark_falsified(res: &mut SampleResult, att: &mut Attacker<'_>, px: &[u8], index: usize, cx: Vec<u8>) {
    res.verdict = SampleVerdict::Falsified;
    res.counterexample_file = Some(counterexample_file(index));
    res.adversarial_class = Some(att.classify(&cx));
    res.clean = Some(px.to_vec());
    res.counterexample = Some(cx);
}

/// The verdict of one sample at radius `k`: bounds, then attacks, then branch and bound.
fn decide_sample(
    att: &mut Attacker<'_>,
    (bnd, crown): (&mut Bounder<'_>, &mut Crown<'_>),
    cfg: &GateConfig,
    s: &Sample<'_>,
    k: u8,
    counts: &mut LevelCounts,
) -> SampleResult {
    let (px, label, index) = (s.px, s.label, s.index);
    counts.n += 1;
    if counts.attacks.is_empty() {
        counts.attacks = suite::tallies(&cfg.suite.attacks);
    }
    let mut res = SampleResult {
        index,
        label,
        predicted: s.predicted,
        verdict: SampleVerdict::Misclassified,
        broken_by: vec![],
        counterexample: None,
        counterexample_file: None,
        adversarial_class: None,
        clean: None,
        bound_margin: None,
        certified_by: None,
        seconds: 0.0,
    };
    let t0 = Instant::now();
    let ball = bnd.bound_ball(px, label, k, s.predicted);
    res.bound_margin = ball.margin;
    let mut verdict = ball.verdict;
    if verdict == Verdict::Certified {
        res.certified_by = Some(BoundMethod::Ibp);
    } else if verdict == Verdict::Unknown && cfg.bound != BoundMethod::Ibp {
        let m = crown.ball_margin(px, label, k);
        res.bound_margin = res.bound_margin.max(m);
        if m.is_some_and(|m| m >= 0) {
            verdict = Verdict::Certified;
            res.certified_by = Some(BoundMethod::Crown);
            counts.certified_crown += 1;
        }
    }
    counts.bound_seconds += t0.elapsed().as_secs_f64();
    match verdict {
        Verdict::Misclassified => return res,
        Verdict::Certified => {
            counts.clean += 1;
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
            suite::record_certified(&mut counts.attacks);
            return res;
        }
        Verdict::Unknown => counts.clean += 1,
    }
    let t1 = Instant::now();
    let mut rng = SplitMix64(cfg.seed ^ ((index as u64) << 8) ^ k as u64 ^ 0x5EED_0000_0000);
    let budgets = cfg.budgets();
    let runs = suite::run_suite(att, px, label, k, &budgets, &mut rng);
    counts.attack_seconds += t1.elapsed().as_secs_f64();
    let ok = |name: suite::AttackName| !runs.iter().any(|r| r.attack == name && r.broke());
    counts.fgsm += usize::from(ok(suite::AttackName::Fgsm));
    counts.pgd += usize::from(ok(suite::AttackName::Pgd));
    counts.square += usize::from(ok(suite::AttackName::Square));
    counts.random += usize::from(ok(suite::AttackName::Random));
    counts.square_not_pgd += usize::from(suite::masking_sign(&runs));
    suite::record(&mut counts.attacks, &runs);
    for r in runs {
        if let Some(cx) = r.result.and_then(|r| r.counterexample) {
            res.broken_by.push(r.attack.to_string());
            if res.counterexample.is_none() {
                res.counterexample = Some(cx);
            }
        }
    }
    if let Some(cx) = res.counterexample.take() {
        mark_falsified(&mut res, att, px, index, cx);
    } else {
        res.verdict = SampleVerdict::Unknown;
        counts.empirical += 1;
        if cfg.suite.double_check && k == cfg.k {
            let t = Instant::now();
            let mut rng = SplitMix64(cfg.seed ^ ((index as u64) << 8) ^ k as u64 ^ 0xD0B1_ED00_0000);
            let runs = suite::run_suite(att, px, label, k, &budgets.doubled(), &mut rng);
            counts.doubled_broke += usize::from(runs.iter().any(suite::AttackRun::broke));
            counts.doubled_seconds += t.elapsed().as_secs_f64();
        }
        if cfg.bound == BoundMethod::Bab {
            let t2 = Instant::now();
            let deadline = cfg.bab_budget_ms.map(|ms| t2 + Duration::from_millis(ms));
            // The falsifier at each open branch's corner: the corner itself, then (when it
            // comes closer to the boundary than every corner before it) the integer search
            // from it over the ball. Both judge on the int8 model, so a returned image is a
            // counterexample whatever the relaxation says.
            let mut closest = i64::MAX;
            let mut srng = SplitMix64(cfg.seed ^ ((index as u64) << 8) ^ k as u64 ^ 0xBAB0_0000_0000);
            let search =
                crate::attack::search::SearchConfig { queries: cfg.suite.search_queries / 2, ..Default::default() };
            let (lo, hi) = crate::ibp::linf_ball(px, k);
            let bab = crown.bab_decide(px, label, k, cfg.bab_branches, deadline, &mut |x| {
                let m = att.margin_of(x, label);
                if m <= 0 {
                    return Some(x.to_vec());
                }
                if m >= closest || search.queries == 0 {
                    return None;
                }
                closest = m;
                att.integer_search_box(&lo, &hi, label, x, &search, &mut srng).counterexample
            });
            counts.bound_seconds += t2.elapsed().as_secs_f64();
            res.bound_margin = res.bound_margin.max(bab.margin);
            if let Some(cx) = bab.counterexample {
                res.broken_by.push("bab".into());
                mark_falsified(&mut res, att, px, index, cx);
                counts.falsified_bab += 1;
            } else if bab.margin.is_some_and(|m| m >= 0) {
                res.verdict = SampleVerdict::Certified;
                res.certified_by = Some(BoundMethod::Bab);
                counts.certified += 1;
                counts.certified_bab += 1;
            }
        }
    }
    res
}

/// Where a sample's counterexample is stored, relative to the report directory.
pub fn counterexample_file(index: usize) -> String {
    format!("counterexamples/sample_{index}.bin")
}

/// Where the clean image of a sample with a counterexample is stored, relative to the
/// report directory (raw NHWC u8 pixels, beside [`counterexample_file`]).
pub fn clean_file(index: usize) -> String {
    format!("counterexamples/sample_{index}.clean.bin")
}

/// The indices of the test split this shard covers.
pub fn shard_indices(total: usize, samples: usize, shard: (usize, usize)) -> Vec<usize> {
    let n = if samples == 0 { total } else { samples.min(total) };
    (0..n).filter(|i| i % shard.1.max(1) == shard.0).collect()
}

/// Results of a run: per-sample results at the gate radius and counts at every radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// Per-sample results at `cfg.k`, in index order.
    pub samples: Vec<SampleResult>,
    /// Counts per radius, ascending `k` (includes `cfg.k` and the sweep).
    pub levels: Vec<LevelCounts>,
}

impl GateOutcome {
    /// The counts at radius `k`, if it was evaluated.
    pub fn at(&self, k: u8) -> Option<&LevelCounts> {
        self.levels.iter().find(|l| l.k == k)
    }
}

/// Runs the gate on `test` with `model`, in parallel over samples (results do not depend on
/// the thread count). `progress` is called with the number of samples finished so far;
/// when `cancel` becomes true the run stops early with [`GateError::Interrupted`].
/// Everything [`validate`] checks is checked first.
pub fn run(
    model: &Model<'_>,
    test: &Dataset,
    cfg: &GateConfig,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &AtomicBool,
) -> Result<GateOutcome, GateError> {
    validate(model, test, cfg)?;
    let idx = shard_indices(test.len(), cfg.samples, cfg.shard);
    let mut ks: Vec<u8> = cfg.sweep.iter().copied().chain(std::iter::once(cfg.k)).collect();
    ks.sort_unstable();
    ks.dedup();
    let done = AtomicUsize::new(0);
    let predicted = clean_classes(model, test, &idx);
    let per: Vec<Option<(Vec<LevelCounts>, SampleResult)>> = idx
        .par_iter()
        .zip(&predicted)
        .map_init(
            || {
                let crown_cfg = CrownConfig { alpha_steps: cfg.alpha_steps, ..CrownConfig::default() };
                (Attacker::new(model), Bounder::new(model), Crown::with_config(model, crown_cfg))
            },
            |(att, bnd, crown), (&i, &predicted)| {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                let px = test.image(i);
                let sample = Sample { px, label: test.label(i), index: i, predicted };
                let mut levels = Vec::with_capacity(ks.len());
                let mut main = None;
                for &k in &ks {
                    let mut c = LevelCounts { k, ..LevelCounts::default() };
                    let r = one_sample(att, (bnd, crown), cfg, &sample, k, &mut c);
                    if k == cfg.k {
                        main = Some(r);
                    }
                    levels.push(c);
                }
                done.fetch_add(1, Ordering::Relaxed);
                progress(1);
                main.map(|m| (levels, m))
            },
        )
        .collect();
    if per.iter().any(Option::is_none) {
        return Err(GateError::Interrupted { done: done.load(Ordering::Relaxed), total: idx.len() });
    }
    let mut levels: Vec<LevelCounts> = ks.iter().map(|&k| LevelCounts { k, ..LevelCounts::default() }).collect();
    let mut samples = Vec::with_capacity(per.len());
    for (lv, s) in per.into_iter().flatten() {
        for (acc, l) in levels.iter_mut().zip(&lv) {
            acc.add(l);
        }
        samples.push(s);
    }
    Ok(GateOutcome { samples, levels })
}

/// Test images per [`Model::run_batch`] call of the clean pass.
const CLEAN_BATCH: usize = 256;

/// The int8 model's class of each test image in `idx`, in order: batches of [`CLEAN_BATCH`]
/// images spread over the threads.
fn clean_classes(model: &Model<'_>, test: &Dataset, idx: &[usize]) -> Vec<usize> {
    let parts: Vec<Vec<usize>> = idx
        .par_chunks(CLEAN_BATCH)
        .map(|chunk| {
            let px: Vec<u8> = chunk.iter().flat_map(|&i| test.image(i).iter().copied()).collect();
            let mut logits = vec![0i32; chunk.len() * model.num_classes()];
            let mut classes = vec![0usize; chunk.len()];
            if let Err(e) = model.run_batch(&px, &mut logits, &mut classes) {
                // `validate` has checked the image length against the model's input.
                panic!("cannot run the model on the test images: {e}");
            }
            classes
        })
        .collect();
    parts.concat()
}

/// Merges shard outcomes (samples re-sorted by index, counts summed). This only adds up:
/// whether the parts are one run's disjoint, complete cover is checked by
/// [`crate::report::merge_reports`], which is what a release gate must call.
pub fn merge(parts: &[GateOutcome]) -> GateOutcome {
    let mut samples: Vec<SampleResult> = parts.iter().flat_map(|p| p.samples.iter().cloned()).collect();
    samples.sort_by_key(|s| s.index);
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
        w.extend(suite::tally_warnings(l.k, l.clean, &l.attacks, (l.pgd, l.fgsm)));
        if l.square_not_pgd > 0 {
            w.push(format!(
                "at k={}, a gradient-free attack (Square, random) broke {} sample(s) that no gradient attack did: a sign of gradient masking",
                l.k, l.square_not_pgd
            ));
        }
        if l.doubled_broke.saturating_mul(100) > l.n {
            w.push(format!(
                "at k={}, doubling the attacks' steps, restarts and queries broke {} more sample(s) ({:.2} points): the attacks have not converged",
                l.k,
                l.doubled_broke,
                100.0 * l.acc(l.doubled_broke)
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: the doubling check warns when doubled budgets break more than 1 % of the
    /// samples, and says by how much.
    #[test]
    fn issue12_doubling_check_warns_above_one_percent() {
        let level = |doubled_broke| LevelCounts { k: 4, n: 200, clean: 190, doubled_broke, ..LevelCounts::default() };
        let warn = |d| protocol_warnings(&GateOutcome { samples: vec![], levels: vec![level(d)] });
        assert!(warn(2).is_empty());
        let w = warn(3);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("broke 3 more sample(s) (1.50 points)"), "{w:?}");
    }

    #[test]
    fn choices_parse_and_name_the_alternatives() {
        assert_eq!("empirical".parse::<GateKind>(), Ok(GateKind::Empirical));
        assert_eq!("bab".parse::<BoundMethod>(), Ok(BoundMethod::Bab));
        assert_eq!("x".parse::<GateKind>().unwrap_err(), "unknown gate `x`: expected certified or empirical");
        assert_eq!("ibp2".parse::<BoundMethod>().unwrap_err(), "unknown bound `ibp2`: expected ibp, crown or bab");
    }

    /// Issue 10.1: an accuracy equal to the threshold passes, one sample fewer fails, for
    /// every n up to 1000 and the thresholds that bit through f32-against-f64 comparison.
    #[test]
    fn issue10_threshold_equal_to_accuracy_passes() {
        for text in ["0.6", "0.8", "0.85", "0.99", "0.5", "1", "0", "0.333", "80%", "99.5%", "4/5"] {
            let t: Threshold = text.parse().unwrap();
            let (num, den) = t.fraction();
            for n in 1..=1000usize {
                let need = t.required(n);
                // need is the least count with count * den >= num * n.
                assert!(need as u128 * den as u128 >= num as u128 * n as u128, "{text} n={n}");
                assert!(need == 0 || (need as u128 - 1) * (den as u128) < num as u128 * n as u128, "{text} n={n}");
                assert!(t.met(need, n) && (need == 0 || !t.met(need - 1, n)));
                if (num * n as u64).is_multiple_of(den) {
                    // The accuracy can equal the threshold exactly: it passes.
                    assert_eq!(need as u64 * den, num * n as u64);
                }
            }
        }
        assert_eq!("0.8".parse::<Threshold>().unwrap().required(500), 400);
        assert_eq!("0.85".parse::<Threshold>().unwrap().required(20), 17);
        assert_eq!("0.99".parse::<Threshold>().unwrap().required(100), 99);
        assert_eq!("0.6".parse::<Threshold>().unwrap().required(5), 3);
    }

    /// Issue 10.2: zero samples never meet a threshold, not even zero.
    #[test]
    fn issue10_zero_samples_never_pass() {
        assert!(!Threshold::ZERO.met(0, 0));
        assert!(Threshold::ZERO.met(0, 1));
    }

    /// Issue 10.5: NaN, infinities and values outside [0, 1] are not thresholds.
    #[test]
    fn issue10_threshold_nan_and_out_of_range_rejected() {
        for bad in ["NaN", "nan", "inf", "-inf", "1.5", "80", "-0.1", "101%", "", "0.8.1", "1/0", "5/4", "abc", "1e-3"]
        {
            assert!(bad.parse::<Threshold>().is_err(), "{bad:?} accepted");
        }
        let t: Threshold = "0.80".parse().unwrap();
        assert_eq!(t.to_string(), "4/5");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"4/5\"");
        assert_eq!(serde_json::from_str::<Threshold>("\"4/5\"").unwrap(), t);
    }

    /// Issue 10.6: radii are whole pixel levels, computed exactly; one that rounds down to 0
    /// levels is an error, one that rounds down otherwise is flagged.
    #[test]
    fn issue10_eps_rounding_is_exact_and_flagged() {
        for bad in ["0.001", "0.0039", "1/256", "2/1000", "-0.1", "1.5", "NaN", "1/0"] {
            assert!(bad.parse::<Radius>().is_err(), "{bad:?} accepted");
        }
        let r: Radius = "4/255".parse().unwrap();
        assert_eq!((r.k, r.exact), (4, true));
        let r: Radius = "0.1".parse().unwrap();
        assert_eq!((r.k, r.exact, r.requested.as_str()), (25, false, "0.1"));
        assert!(r.rounding_warning().unwrap().contains("k = 25"));
        let r: Radius = "0.2".parse().unwrap();
        assert_eq!((r.k, r.exact), (51, true));
        assert_eq!("0".parse::<Radius>().unwrap().k, 0);
        assert_eq!("1".parse::<Radius>().unwrap().k, 255);
        // Every k/255 written as a decimal with enough digits rounds to k or k-1, never k+1.
        for k in 1..=255u32 {
            let exact: Radius = format!("{k}/255").parse().unwrap();
            assert_eq!((exact.k as u32, exact.exact), (k, true));
            let dec: Radius = format!("{:.6}", k as f64 / 255.0).parse().unwrap();
            assert!(dec.k as u32 == k || dec.k as u32 + 1 == k, "k={k} -> {}", dec.k);
        }
    }
}

//! The float-vs-int8 differential (`iocane certify --compare-float`): what a float verifier
//! and a float attack say about the model's dequantized float twin, beside the gate's
//! verdicts on the int8 model that ships, per sample.
//!
//! Published work (e.g. Giacobbe et al. 2020, "How many bits does it take to quantize your
//! neural network?"; Jia & Rinard 2020, "Exploiting verified neural networks via floating
//! point numerical error") shows that a certificate about a float network says nothing
//! certain about its quantized version, and the other way round. This module makes that
//! visible per model: the samples where the two verdicts differ, and how often each pair of
//! verdicts occurs.
//!
//! The float side ([`float_verdict`]):
//! - **misclassified** when the twin's clean prediction is not the label;
//! - **certified** when interval bounds on the twin ([`FloatTwin::margin_lower_bounds`],
//!   the trainer's IBP in `f32`) prove every margin positive;
//! - **falsified** when the twin misclassifies the int8 model's counterexample, or a PGD
//!   search on the twin (judged on the twin, on the same integer pixel grid) finds an image;
//! - **unknown** otherwise.
//!
//! The float side is not sound for anything: it ignores rounding, saturation and float
//! error. It is the reference the differential compares against, never a verdict of the gate.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use iocane_runtime::rng::SplitMix64;
use iocane_runtime::Model;
use iocane_trainer::data::Dataset;

use crate::gate::{GateOutcome, SampleVerdict};
use crate::ibp::{linf_ball, Bounder, Verdict};
use crate::twin::{FloatTwin, Loss};

/// PGD budget of the float side: steps per start, and starts (the clean image, then random
/// points of the ball).
const FLOAT_PGD_STEPS: usize = 40;
const FLOAT_PGD_STARTS: usize = 2;

/// How often one pair of verdicts occurred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictPair {
    /// The gate's verdict on the int8 model.
    pub int8: SampleVerdict,
    /// The float side's verdict on the twin.
    pub float: SampleVerdict,
    /// Samples with this pair.
    pub count: usize,
}

/// A sample whose int8 and float verdicts differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DifferingSample {
    /// Index in the test split.
    pub index: usize,
    /// True label.
    pub label: usize,
    /// The gate's verdict on the int8 model.
    pub int8: SampleVerdict,
    /// The float side's verdict on the twin.
    pub float: SampleVerdict,
}

/// The differential at the gate radius.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatComparison {
    /// Radius in levels (the gate's).
    pub k: u8,
    /// Samples compared.
    pub n: usize,
    /// Every pair of verdicts that occurred, in a fixed order (int8 verdict, then float).
    pub pairs: Vec<VerdictPair>,
    /// The same with the same bound on both sides: the int8 verdict as interval bounds
    /// alone give it (certified by IBP on the int8 model, else the gate's falsified or
    /// unknown), against the float side's (which uses interval bounds too).
    #[serde(default)]
    pub ibp_pairs: Vec<VerdictPair>,
    /// The samples whose verdicts differ, by index.
    pub differing: Vec<DifferingSample>,
}

impl FloatComparison {
    /// Samples with int8 verdict `int8` and float verdict `float`.
    pub fn count(&self, int8: SampleVerdict, float: SampleVerdict) -> usize {
        self.pairs.iter().find(|p| p.int8 == int8 && p.float == float).map_or(0, |p| p.count)
    }

    /// Sums disjoint parts (shards of one run).
    pub fn merge(parts: &[FloatComparison]) -> Option<FloatComparison> {
        let first = parts.first()?;
        let sum = |get: fn(&FloatComparison) -> &Vec<VerdictPair>| {
            let mut per: Vec<(SampleVerdict, SampleVerdict, usize)> = Vec::new();
            for q in parts.iter().flat_map(|p| get(p).iter()) {
                match per.iter_mut().find(|(a, b, _)| *a == q.int8 && *b == q.float) {
                    Some(e) => e.2 += q.count,
                    None => per.push((q.int8, q.float, q.count)),
                }
            }
            ordered(per)
        };
        let mut differing: Vec<DifferingSample> = parts.iter().flat_map(|p| p.differing.iter().cloned()).collect();
        differing.sort_by_key(|d| d.index);
        Some(FloatComparison {
            k: first.k,
            n: parts.iter().map(|p| p.n).sum(),
            pairs: sum(|p| &p.pairs),
            ibp_pairs: sum(|p| &p.ibp_pairs),
            differing,
        })
    }

    /// The Markdown section of `summary.md`.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n## Float twin vs int8 (--compare-float, k = {})\n\nFloat side: interval bounds and PGD on the dequantized float twin (not sound for the int8 model); int8 side: the gate's verdicts.\n",
            self.k
        );
        let _ = writeln!(o, "| int8 \\ float | certified | falsified | unknown | misclassified |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for a in ALL {
            let _ = write!(o, "| {} |", name(a));
            for b in ALL {
                let _ = write!(o, " {} |", self.count(a, b));
            }
            let _ = writeln!(o);
        }
        if !self.ibp_pairs.is_empty() {
            let _ = writeln!(o, "\nThe same bound on both sides (int8 certified by interval bounds alone):\n");
            let _ = writeln!(o, "| int8 (IBP) \\ float | certified | falsified | unknown | misclassified |");
            let _ = writeln!(o, "|---|---|---|---|---|");
            for a in ALL {
                let _ = write!(o, "| {} |", name(a));
                for b in ALL {
                    let c = self.ibp_pairs.iter().find(|p| p.int8 == a && p.float == b).map_or(0, |p| p.count);
                    let _ = write!(o, " {c} |");
                }
                let _ = writeln!(o);
            }
        }
        let carried = self.count(SampleVerdict::Falsified, SampleVerdict::Certified);
        let _ = writeln!(
            o,
            "\n{} of {} samples differ; float-certified but broken on int8: {carried}; float-certified, int8 not proved: {}; int8-certified, float broken: {}; float broken, int8 not: {}.",
            self.differing.len(),
            self.n,
            self.count(SampleVerdict::Unknown, SampleVerdict::Certified),
            self.count(SampleVerdict::Certified, SampleVerdict::Falsified),
            self.count(SampleVerdict::Unknown, SampleVerdict::Falsified),
        );
        if !self.differing.is_empty() {
            let shown: Vec<String> = self
                .differing
                .iter()
                .take(40)
                .map(|d| format!("{} ({} / {})", d.index, name(d.int8), name(d.float)))
                .collect();
            let more = self.differing.len().saturating_sub(40);
            let tail = if more > 0 { format!(" and {more} more (report.json)") } else { String::new() };
            let _ = writeln!(o, "\nDiffering samples (index, int8 / float): {}{tail}.", shown.join(", "));
        }
        o
    }
}

const ALL: [SampleVerdict; 4] =
    [SampleVerdict::Certified, SampleVerdict::Falsified, SampleVerdict::Unknown, SampleVerdict::Misclassified];

fn name(v: SampleVerdict) -> &'static str {
    match v {
        SampleVerdict::Certified => "certified",
        SampleVerdict::Falsified => "falsified",
        SampleVerdict::Unknown => "unknown",
        SampleVerdict::Misclassified => "misclassified",
    }
}

fn ordered(per: Vec<(SampleVerdict, SampleVerdict, usize)>) -> Vec<VerdictPair> {
    let pos = |v: SampleVerdict| ALL.iter().position(|&a| a == v).unwrap_or(ALL.len());
    let mut per = per;
    per.sort_by_key(|&(a, b, _)| (pos(a), pos(b)));
    per.into_iter().filter(|p| p.2 > 0).map(|(int8, float, count)| VerdictPair { int8, float, count }).collect()
}

/// The twin's class of pixels `px` (the first maximal logit, as the runtime's argmax).
fn twin_class(twin: &FloatTwin, px: &[u8]) -> usize {
    let z = twin.forward(&FloatTwin::input_from_pixels(px));
    (0..z.len()).fold(0, |b, j| if z[j] > z[b] { j } else { b })
}

/// The float side's verdict for one sample at radius `k` (see the module docs). `int8_cx`
/// is the int8 model's counterexample, if the gate found one. Deterministic in `seed`.
pub fn float_verdict(
    twin: &FloatTwin,
    px: &[u8],
    label: usize,
    k: u8,
    int8_cx: Option<&[u8]>,
    seed: u64,
) -> SampleVerdict {
    if twin_class(twin, px) != label {
        return SampleVerdict::Misclassified;
    }
    let (lo, hi) = linf_ball(px, k);
    let m = twin.margin_lower_bounds(&lo, &hi, label);
    if m.iter().enumerate().all(|(j, &v)| j == label || v > 0.0) {
        return SampleVerdict::Certified;
    }
    if int8_cx.is_some_and(|cx| twin_class(twin, cx) != label) {
        return SampleVerdict::Falsified;
    }
    // PGD on the integer grid: sign steps of max(1, k/4) levels, projected onto the ball.
    let step = (k / 4).max(1) as i32;
    let mut rng = SplitMix64(seed);
    for start in 0..FLOAT_PGD_STARTS {
        let mut x: Vec<u8> = if start == 0 {
            px.to_vec()
        } else {
            lo.iter().zip(&hi).map(|(&l, &h)| rng.range(l as i64, h as i64) as u8).collect()
        };
        for _ in 0..FLOAT_PGD_STEPS {
            let (z, g) = twin.input_gradient(&FloatTwin::input_from_pixels(&x), label, Loss::Margin);
            if (0..z.len()).fold(0, |b, j| if z[j] > z[b] { j } else { b }) != label {
                return SampleVerdict::Falsified;
            }
            for i in 0..x.len() {
                let d = if g[i] > 0.0 {
                    step
                } else if g[i] < 0.0 {
                    -step
                } else {
                    0
                };
                x[i] = (x[i] as i32 + d).clamp(lo[i] as i32, hi[i] as i32) as u8;
            }
        }
        if twin_class(twin, &x) != label {
            return SampleVerdict::Falsified;
        }
    }
    SampleVerdict::Unknown
}

/// One compared sample: index, label, the gate's verdict, the int8 verdict by interval
/// bounds alone, the float verdict.
type Row = (usize, usize, SampleVerdict, SampleVerdict, SampleVerdict);

/// Compares the gate's verdicts in `outcome` (at radius `k`, on `test`) with the float
/// side's on `model`'s twin (from the provenance scales when consistent, else from the
/// requantization multipliers, as the attacks' twin). Parallel over samples; the result does
/// not depend on the thread count.
pub fn compare_float(model: &Model<'_>, test: &Dataset, outcome: &GateOutcome, k: u8, seed: u64) -> FloatComparison {
    let twin = FloatTwin::from_model(model).unwrap_or_else(|_| FloatTwin::from_requantization(model));
    let rows: Vec<Row> = outcome
        .samples
        .par_iter()
        .map_init(
            || Bounder::new(model),
            |bounder, s| {
                let px = test.image(s.index);
                let sd = seed ^ ((s.index as u64) << 8) ^ k as u64 ^ 0xF10A_7000_0000;
                let f = float_verdict(&twin, px, s.label, k, s.counterexample.as_deref(), sd);
                let by_ibp = match s.verdict {
                    SampleVerdict::Certified if bounder.certify_sample(px, s.label, k).0 != Verdict::Certified => {
                        SampleVerdict::Unknown
                    }
                    v => v,
                };
                (s.index, s.label, s.verdict, by_ibp, f)
            },
        )
        .collect();
    let count = |pick: fn(&Row) -> (SampleVerdict, SampleVerdict)| {
        let mut per: Vec<(SampleVerdict, SampleVerdict, usize)> = Vec::new();
        for a in ALL {
            for b in ALL {
                per.push((a, b, rows.iter().filter(|r| pick(r) == (a, b)).count()));
            }
        }
        ordered(per)
    };
    let differing = rows
        .iter()
        .filter(|r| r.2 != r.4)
        .map(|&(index, label, int8, _, float)| DifferingSample { index, label, int8, float })
        .collect();
    FloatComparison { k, n: rows.len(), pairs: count(|r| (r.2, r.4)), ibp_pairs: count(|r| (r.3, r.4)), differing }
}

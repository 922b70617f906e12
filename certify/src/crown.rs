//! Linear-relaxation bounds (CROWN / DeepPoly back-substitution) on the exact integer model.
//!
//! [`ibp`](crate::ibp) bounds every tensor by a box. This module keeps, for every int8
//! activation, two *linear* bounds in its layer's int32 accumulator, and substitutes them
//! backwards through the layers down to the input pixels, so that correlations between
//! neurons survive (the same pixel raising one neuron and lowering another no longer counts
//! twice). The semantics are the runtime's, to the integer:
//!
//! - a weighted layer's accumulator `acc = b + Σ w (x - zp)` (padding taps contribute
//!   nothing) is exactly linear in its int8 input;
//! - requantization `y = clamp(floor(acc·s + 1/2) + zp_out, min, max)` with `s = m / 2^(31 -
//!   shift)` satisfies `g⁻(acc) <= y <= g⁺(acc)` for the clamped lines
//!   `g±(acc) = clamp(acc·s + zp_out ± 1/2, min, max)` and `y = f(acc)` exactly at the ends of
//!   the accumulator's interval; a line `λ acc + μ` is made an upper (lower) bound of `y` on
//!   that interval by taking `μ` as the maximum (minimum) of `y - λ acc` over the candidate
//!   points where that piecewise-linear difference can be extreme;
//! - max pooling is bounded below by the window input with the largest lower bound and above
//!   by the largest upper bound (or exactly by the dominating input); average pooling is
//!   `sum / count` within `±1/2`;
//! - the logit difference `z_y - z_j` is at least `floor(D)` of a lower bound `D` on
//!   `s_y acc_y - s_j acc_j` when neither logit saturates (the rule of
//!   `docs/quantization.md` §8.1, here with `D` from back-substitution).
//!
//! Accumulator bounds of hidden layers are refined the same way (each neuron's accumulator
//! back-substituted to the input, rounded inward to integers, intersected with IBP), so every
//! relaxation is at least as tight as IBP's. At every layer boundary the partial bound is also
//! concretised over that layer's box, and the best of all is kept: the result is never looser
//! than [`Bounder::bound_ball`](crate::ibp::Bounder::bound_ball).
//!
//! All coefficients are `f64`. Float error is accounted for, not ignored: every step adds to
//! a running slack `σ` a rigorous bound on the rounding error it made (the standard bound
//! `|fl(Σ a_i) - Σ a_i| <= γ_n Σ |a_i|`, `γ_n = n u / (1 - n u)`, used with a factor two to
//! spare), intercepts are rounded outward, and a bound is `floor(value - σ)`. The full
//! argument is `docs/verify.md`.

use iocane_runtime::format::{Layer, OpKind};
use iocane_runtime::geometry::Window;
use iocane_runtime::{quant, window, Model};

use crate::ibp::{channel_abs_sums, worst_margin, Bounder};

/// Largest |int8 value| any activation or shifted input can have.
const ACT_MAX: f64 = 128.0;

/// Absolute rounding slack added to every intercept (far above the error of the few float
/// operations that compute one; see `docs/verify.md`).
const ICPT_EPS: f64 = 1.0 / (1u64 << 40) as f64;

/// `2 γ_n`: twice the classic bound on the relative error of a float sum of `n` terms.
fn gamma(n: usize) -> f64 {
    let nu = (n as f64 + 4.0) * (f64::EPSILON / 2.0);
    2.0 * nu / (1.0 - nu)
}

/// The two linear bounds of one neuron's output in its accumulator:
/// `lo_slope·acc + lo_icpt <= y <= up_slope·acc + up_icpt` on the neuron's accumulator interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Relaxation {
    /// Slope of the lower line.
    pub lo_slope: f64,
    /// Intercept of the lower line.
    pub lo_icpt: f64,
    /// Slope of the upper line.
    pub up_slope: f64,
    /// Intercept of the upper line.
    pub up_icpt: f64,
}

/// One output channel's requantization `y = clamp(floor(acc·s + 1/2) + zp, min, max)`,
/// `s = m / 2^(31 - shift)` (the runtime's `quant::requantize` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    /// Fixed-point multiplier.
    pub m: i32,
    /// Shift.
    pub shift: i32,
    /// Output zero point.
    pub zp: i8,
    /// Lower clamp.
    pub amin: i8,
    /// Upper clamp.
    pub amax: i8,
}

impl Requant {
    /// Channel `c` of weighted layer `layer`.
    pub fn of(layer: &Layer<'_>, c: usize) -> Requant {
        let (amin, amax) = layer.clamp();
        Requant { m: layer.multiplier(c), shift: layer.shift(c), zp: layer.output_zero_point(), amin, amax }
    }

    /// The runtime's result for accumulator `acc`.
    pub fn apply(&self, acc: i32) -> i8 {
        quant::requantize(acc, self.m, self.shift, self.zp, self.amin, self.amax)
    }

    /// The exact scale `s` (exact in f64: `m < 2^31` times a power of two).
    pub fn scale(&self) -> f64 {
        scale_of(self.m, self.shift)
    }
}

/// The exact scale `s = m / 2^(31 - shift)` of a requantization (exact in f64: `m < 2^31`
/// times a power of two).
fn scale_of(m: i32, shift: i32) -> f64 {
    m as f64 * (-((31 - shift) as f64)).exp2()
}

/// Which line of a neuron's [`Relaxation`] is free for slope optimisation: a clamp only at
/// the bottom makes `y` convex on the interval (the upper chord is its best upper line, any
/// lower slope in `[0, s]` may be best); one only at the top makes it concave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curvature {
    /// Constant on the interval, or linear up to rounding: nothing to choose.
    Fixed,
    /// The lower slope is free in `[0, s]`.
    Convex,
    /// The upper slope is free in `[0, s]`.
    Concave,
    /// Clamped at both ends: chords both ways.
    Both,
}

/// Where `y = clamp(floor(acc·s + 1/2) + zp, min, max)` is clamped on `[lo, hi]`.
fn requantize_shape(lo: i32, hi: i32, q: Requant) -> Curvature {
    if q.apply(lo) == q.apply(hi) {
        return Curvature::Fixed;
    }
    let s = q.scale();
    let (tl, th) = (lo as f64 * s + q.zp as f64, hi as f64 * s + q.zp as f64);
    match (tl - 0.5 < q.amin as f64, th + 0.5 > q.amax as f64) {
        (false, false) => Curvature::Fixed,
        (true, false) => Curvature::Convex,
        (false, true) => Curvature::Concave,
        (true, true) => Curvature::Both,
    }
}

/// The intercept `μ` that makes `slope·acc + μ` an upper (`upper`) or lower bound of
/// `y = clamp(floor(acc·s + 1/2) + zp, min, max)` (the runtime's `quant::requantize`) for
/// every integer `acc` in `[lo, hi]`, whatever the slope, and the accumulator where the bound
/// is attained (`dμ/dslope = -acc` there, for slope optimisation).
///
/// `μ` is the extreme value of `y - slope·acc`: exact at `lo` and `hi` (where `y` is computed
/// by the runtime's function), and in between bounded through `g±(acc) = clamp(acc·s + zp ±
/// 1/2, min, max)`, whose difference with a line is extreme at the interior's ends or at its
/// two kinks. Rounded outward by [`ICPT_EPS`]-relative slack.
pub fn requantize_line(lo: i32, hi: i32, q: Requant, slope: f64, upper: bool) -> (f64, f64) {
    debug_assert!(lo <= hi);
    let f = |acc: i32| q.apply(acc) as f64;
    let s = q.scale();
    let (zp, amin, amax) = (q.zp as f64, q.amin as f64, q.amax as f64);
    let (l, h) = (lo as f64, hi as f64);
    let sign = if upper { 1.0 } else { -1.0 };
    let slack = |a: f64| sign * ICPT_EPS * (1.0 + (a * s).abs() + (a * slope).abs() + ACT_MAX);
    // The best candidate so far: (signed value, accumulator).
    let mut best = (f64::NEG_INFINITY, l);
    let mut offer = |a: f64, y: f64| {
        let v = sign * (y - slope * a + slack(a));
        if v > best.0 {
            best = (v, a);
        }
    };
    offer(l, f(lo));
    offer(h, f(hi));
    if hi - lo >= 2 {
        let (i0, i1) = (l + 1.0, h - 1.0);
        let off = 0.5 * sign;
        let g = |a: f64| (a * s + zp + off).clamp(amin, amax);
        offer(i0, g(i0));
        offer(i1, g(i1));
        for a in [(amin - zp - off) / s, (amax - zp - off) / s] {
            if a > i0 && a < i1 {
                offer(a, g(a));
            }
        }
    }
    (sign * best.0, best.1)
}

/// Linear bounds of `y = clamp(floor(acc·s + 1/2) + zp, min, max)` (the runtime's
/// `quant::requantize`) for integer `acc` in `[lo, hi]`.
///
/// The slopes are heuristics (any slope is sound: the intercepts come from
/// [`requantize_line`]): `s` where the interval reaches no clamp, the chord on the side a
/// clamp makes convex or concave, and on the other side `0` or `s`, whichever loses less
/// area.
pub fn relax_requantize(lo: i32, hi: i32, m: i32, shift: i32, zp: i8, amin: i8, amax: i8) -> Relaxation {
    debug_assert!(lo <= hi);
    let f = |acc: i32| quant::requantize(acc, m, shift, zp, amin, amax) as f64;
    let (fl, fu) = (f(lo), f(hi));
    if fl == fu {
        return Relaxation { lo_slope: 0.0, lo_icpt: fl, up_slope: 0.0, up_icpt: fl };
    }
    let s = scale_of(m, shift);
    let (zpf, aminf, amaxf) = (zp as f64, amin as f64, amax as f64);
    let (tl, th) = (lo as f64 * s + zpf, hi as f64 * s + zpf);
    let chord = (fu - fl) / (hi as f64 - lo as f64);
    let q = Requant { m, shift, zp, amin, amax };
    let (lo_slope, up_slope) = match requantize_shape(lo, hi, q) {
        Curvature::Fixed => (s, s),
        // Convex (a ReLU at the bottom): chord above; below, 0 or s, whichever loses less area.
        Curvature::Convex => (if th - aminf > aminf - tl { s } else { 0.0 }, chord),
        // Concave (saturation at the top): chord below; above, s or 0.
        Curvature::Concave => (chord, if amaxf - tl > th - amaxf { s } else { 0.0 }),
        Curvature::Both => (chord, chord),
    };
    let line = |slope, upper| requantize_line(lo, hi, q, slope, upper).0;
    Relaxation { lo_slope, lo_icpt: line(lo_slope, false), up_slope, up_icpt: line(up_slope, true) }
}

/// A branch constraint: the accumulator of neuron `neuron` of layer `layer` lies in
/// `[lo, hi]`. A branch is the part of the ball where all its constraints hold; a split of
/// a neuron's interval into two parts covers it, so a ball is proved when every leaf is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Index of the weighted layer in the model.
    pub layer: usize,
    /// Neuron (output element) of that layer.
    pub neuron: usize,
    /// Least accumulator value of the branch.
    pub lo: i32,
    /// Largest accumulator value of the branch.
    pub hi: i32,
}

/// One bounded branch: its worst margin (`None`: infeasible), the split to try next, and its
/// per-class margins.
type BranchBound = (Option<i64>, Option<(Split, Split)>, Option<Vec<i64>>);

/// The outcome of [`Crown::bab_margin`] and [`Crown::bab_decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BabOutcome {
    /// The worst margin over the ball: over every leaf when the search finished, so `>= 0`
    /// iff certified; over the unfinished frontier otherwise (then negative).
    pub margin: Option<i64>,
    /// Branches bounded (the root included).
    pub branches: usize,
    /// The image the caller's falsifier returned ([`Crown::bab_decide`] only): the search
    /// stopped there.
    pub counterexample: Option<Vec<u8>>,
}

/// A lower bound `c·t + d - sigma` of some objective over a tensor `t`, in reusable buffers.
#[derive(Clone, Debug, Default)]
struct Row {
    c: Vec<f64>,
    d: f64,
    sigma: f64,
    /// `c` is zero outside `lo..hi` (rows of one neuron touch only its receptive field).
    lo: usize,
    hi: usize,
}

impl Row {
    /// An all-zero row of `len` entries, reusing the allocation (only the old span is
    /// cleared).
    fn reset(&mut self, len: usize) {
        if self.c.len() == len {
            let hi = self.hi.min(len);
            self.c[self.lo.min(hi)..hi].fill(0.0);
        } else {
            self.c.clear();
            self.c.resize(len, 0.0);
        }
        (self.lo, self.hi) = (len, 0);
    }

    /// Widens the span to cover `a..b`.
    #[inline]
    fn touch(&mut self, a: usize, b: usize) {
        self.lo = self.lo.min(a);
        self.hi = self.hi.max(b);
    }

    /// The span, empty when nothing was touched.
    fn span(&self) -> core::ops::Range<usize> {
        self.lo.min(self.hi)..self.hi
    }
}

/// Per-sample state of one layer: its input bounds, and for weighted layers the accumulator
/// bounds and relaxations.
#[derive(Clone, Debug, Default)]
struct LayerState {
    in_lo: Vec<i32>,
    in_hi: Vec<i32>,
    acc_lo: Vec<i32>,
    acc_hi: Vec<i32>,
    relax: Vec<Relaxation>,
}

/// Static facts of a weighted layer used by the back-substitution.
#[derive(Clone, Debug, Default)]
struct WeightFacts {
    /// `Σ|w|` of each output channel.
    abs_sum: Vec<f64>,
    /// Terms of the largest float sum one back step forms (for `γ`).
    terms: usize,
    /// The constant each accumulator contributes per unit of its coefficient:
    /// `b_c - zp_in Σ w` over the valid taps of that output (exact in `f64`: integers far
    /// below `2^53`).
    bias_term: Vec<f64>,
    /// Dense and convolution layers: the weights as `f64` in `[tap][in channel][out channel]`
    /// order, so that one output pixel's coefficients over all its channels meet each tap's
    /// weights as one contiguous dot product ([`Crown::affine`]). Empty for depthwise layers.
    wt: Vec<f64>,
}

/// How much [`Crown`] refines hidden accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrownConfig {
    /// Back-substitute each hidden accumulator to tighten it (at most this many neurons per
    /// layer; layers with more keep their IBP accumulator bounds). `0` disables refinement.
    pub refine_max_neurons: usize,
    /// Slope-optimisation steps (alpha-CROWN) for each logit difference that plain CROWN
    /// does not prove: the free slope of every hidden neuron that is convex or concave on
    /// its interval moves by projected sign-gradient ascent on the bound. `0` disables it.
    /// Every slope is sound, so the best bound of all steps is kept.
    pub alpha_steps: usize,
    /// Optimise the slopes for each refined hidden accumulator bound too (tighter
    /// intermediate bounds, at `alpha_steps` back-substitutions per refined neuron).
    pub alpha_refine: bool,
    /// In branch and bound, optimise Lagrange multipliers of the branch's split constraints
    /// with the slopes (beta-CROWN), so a split tightens the whole bound, not only its
    /// neuron's interval. Needs `alpha_steps > 0`.
    pub beta: bool,
}

impl Default for CrownConfig {
    fn default() -> Self {
        CrownConfig { refine_max_neurons: 4096, alpha_steps: 0, alpha_refine: false, beta: true }
    }
}

/// Buffers of [`Crown::relaxed_forward`].
#[derive(Clone, Debug, Default)]
struct Forward {
    /// Values of each tensor (the input of layer `i`).
    val: Vec<Vec<f64>>,
    /// Accumulator values of each weighted layer.
    acc: Vec<Vec<f64>>,
    /// The part of each tensor computed.
    range: Vec<core::ops::Range<usize>>,
    /// The outputs of each layer computed (the accumulators of a weighted layer).
    out_range: Vec<core::ops::Range<usize>>,
}

/// A hidden neuron whose relaxation has a free slope (see [`Curvature`]), during slope
/// optimisation.
#[derive(Clone, Copy, Debug)]
struct FreeLine {
    layer: usize,
    neuron: usize,
    /// The upper line is free (concave), else the lower one (convex).
    upper: bool,
    /// The requantization's scale: the slope lies in `[0, s]`.
    s: f64,
    /// The slope as a fraction of `s`.
    frac: f64,
    /// Where the line's intercept is attained (`dμ/dslope = -a_star`).
    a_star: f64,
    /// The relaxation before optimisation, restored after.
    orig: Relaxation,
}

/// Linear-relaxation bounder for one model, with reusable buffers.
#[derive(Clone, Debug)]
pub struct Crown<'m> {
    model: Model<'m>,
    layers: Vec<Layer<'m>>,
    facts: Vec<WeightFacts>,
    ibp: Bounder<'m>,
    state: Vec<LayerState>,
    cfg: CrownConfig,
    rows: Vec<Row>,
    acc_rows: Vec<Row>,
    /// The objective row of a refinement or margin bound.
    obj_row: Row,
    /// When set, the back-substitution records its coefficients on each weighted layer's
    /// outputs (for choosing a split).
    capture: Option<Vec<Row>>,
    /// The split constraints of the branch being bounded (empty outside branch and bound).
    splits: Vec<Split>,
    /// Lagrange multipliers of those constraints during optimisation (beta-CROWN): for split
    /// `k`, `betas[2k]` of `acc - lo >= 0` and `betas[2k + 1]` of `hi - acc >= 0`; all zero
    /// otherwise.
    betas: Vec<f64>,
    /// Buffers of slope optimisation: the captured rows and the forward pass.
    alpha_cap: Vec<Row>,
    alpha_fw: Forward,
    /// The tensor whose row the last back-substitution ended on (the input, or the output
    /// of a leading Flatten).
    last_row: usize,
}

impl<'m> Crown<'m> {
    /// A bounder for `model` with the default [`CrownConfig`].
    pub fn new(model: &Model<'m>) -> Self {
        Self::with_config(model, CrownConfig::default())
    }

    /// A bounder for `model`.
    pub fn with_config(model: &Model<'m>, cfg: CrownConfig) -> Self {
        let layers: Vec<Layer<'m>> = model.layers().collect();
        let facts = layers.iter().map(weight_facts).collect();
        Crown {
            model: *model,
            state: vec![LayerState::default(); layers.len() + 1],
            layers,
            facts,
            ibp: Bounder::new(model),
            cfg,
            rows: Vec::new(),
            acc_rows: Vec::new(),
            obj_row: Row::default(),
            capture: None,
            splits: Vec::new(),
            betas: Vec::new(),
            alpha_cap: Vec::new(),
            alpha_fw: Forward::default(),
            last_row: 0,
        }
    }

    /// Lower bounds on the logit differences `z[label] - z[j]` over every image of the box
    /// `lo <= pixels <= hi`, one per class (the entry of `label` is 0), each at least as
    /// tight as [`Bounder::margin_lower_bounds`]. The label wins on the whole box iff every
    /// entry is `>= 1` for `j < label` and `>= 0` for `j > label`, i.e. iff
    /// [`worst_margin`] of them is `>= 0`.
    ///
    /// # Panics
    /// As [`Bounder::logit_bounds`], or if `label` is out of range.
    pub fn margin_lower_bounds(&mut self, lo: &[u8], hi: &[u8], label: usize) -> Vec<i64> {
        assert!(label < self.model.num_classes(), "label {label} out of range");
        let base = self.ibp_base(lo, hi, label);
        self.branch_margins(lo, hi, label, &base, &[]).expect("the unsplit box is never empty")
    }

    /// IBP's margins and whether each logit is unsaturated over the whole box: valid in
    /// every branch of it.
    fn ibp_base(&mut self, lo: &[u8], hi: &[u8], label: usize) -> (Vec<i64>, Vec<bool>) {
        let (ibp_margins, logits) = self.ibp.margins_and_logits(lo, hi, label);
        let unsaturated = logits.lo.iter().zip(&logits.hi).map(|(&l, &h)| l > i32::MIN && h < i32::MAX).collect();
        (ibp_margins, unsaturated)
    }

    /// The margins over the part of the box where every split holds (`None` if the splits
    /// contradict the interval bounds: no image of the box satisfies them all).
    fn branch_margins(
        &mut self,
        lo: &[u8],
        hi: &[u8],
        label: usize,
        (ibp_margins, unsaturated): &(Vec<i64>, Vec<bool>),
        splits: &[Split],
    ) -> Option<Vec<i64>> {
        if !self.forward(lo, hi, splits) {
            return None;
        }
        self.splits.clear();
        self.splits.extend_from_slice(splits);
        self.betas.clear();
        self.betas.resize(2 * splits.len(), 0.0);
        let last = self.layers.len() - 1;
        let margins = (0..ibp_margins.len())
            .map(|j| {
                if j == label || !(unsaturated[label] && unsaturated[j]) {
                    return ibp_margins[j];
                }
                let mut d = self.difference_lower_bound(last, label, j);
                // The margin class j needs (ties go to the lower index).
                let need = i64::from(j < label);
                if self.cfg.alpha_steps > 0 && floor_i64(d) < need && ibp_margins[j] < need {
                    d = d.max(self.optimize_difference(last, label, j, need));
                }
                // z_y - z_j > D - 1 for the integer difference: z_y - z_j >= floor(D).
                ibp_margins[j].max(floor_i64(d))
            })
            .collect();
        self.splits.clear();
        self.betas.clear();
        Some(margins)
    }

    /// The worst-case margin over the ball of `k` levels around `pixels` ([`worst_margin`]
    /// of [`Crown::margin_lower_bounds`]): the ball is certified iff it is `>= 0`.
    ///
    /// # Panics
    /// As [`Crown::margin_lower_bounds`].
    pub fn ball_margin(&mut self, pixels: &[u8], label: usize, k: u8) -> Option<i64> {
        let (lo, hi) = crate::ibp::linf_ball(pixels, k);
        worst_margin(&self.margin_lower_bounds(&lo, &hi, label), label)
    }

    /// Branch and bound over the ball of `k` levels around `pixels`: the worst branch is
    /// split on the hidden neuron whose relaxation loses the most for its worst class (at
    /// the kink of its clamp, so that one child is constant on the neuron), until every leaf
    /// is proved, or `max_branches` branches have been bounded, or `deadline` has passed
    /// (checked between branches). Deterministic when `deadline` is `None`.
    ///
    /// # Panics
    /// As [`Crown::margin_lower_bounds`].
    pub fn bab_margin(
        &mut self,
        pixels: &[u8],
        label: usize,
        k: u8,
        max_branches: usize,
        deadline: Option<std::time::Instant>,
    ) -> BabOutcome {
        self.bab_decide(pixels, label, k, max_branches, deadline, &mut |_| None)
    }

    /// [`Crown::bab_margin`] that also tries to falsify each branch before splitting it
    /// further: every branch left open hands `falsify` the input corner `x*` minimising its
    /// worst class's linear bound (an image of the ball: each pixel at the end of its
    /// interval that the bound's coefficient points to, or its clean value where the
    /// coefficient is zero). The search stops at the first image `falsify` returns
    /// ([`BabOutcome::counterexample`]). The corner is only a starting point: whether an
    /// image is a counterexample is `falsify`'s judgement (the gate runs the int8 model and
    /// an integer search from the corner), so no verdict rests on the relaxation, and the
    /// returned margin is the same sound bound as [`Crown::bab_margin`]'s over the branches
    /// bounded so far.
    ///
    /// # Panics
    /// As [`Crown::margin_lower_bounds`].
    pub fn bab_decide(
        &mut self,
        pixels: &[u8],
        label: usize,
        k: u8,
        max_branches: usize,
        deadline: Option<std::time::Instant>,
        falsify: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> BabOutcome {
        assert!(label < self.model.num_classes(), "label {label} out of range");
        let (lo, hi) = crate::ibp::linf_ball(pixels, k);
        let base = self.ibp_base(&lo, &hi, label);
        // Open branches: (worst margin, splits, the split chosen when it was bounded, the
        // per-class margins, which hold in every sub-branch too).
        type Open = (i64, Vec<Split>, Option<(Split, Split)>, Vec<i64>);
        let mut open: Vec<Open> = Vec::new();
        let (root, cand, margins) = self.bab_bound(&lo, &hi, label, &base, &[], &base.0);
        let mut branches = 1;
        // The worst margin of the leaves proved so far.
        let mut proved: Option<i64> = None;
        let mut counterexample = None;
        match (root, margins) {
            (Some(w), Some(m)) if w < 0 => {
                counterexample = self.try_corner(pixels, &lo, &hi, falsify);
                open.push((w, Vec::new(), cand, m));
            }
            (other, _) => proved = other,
        }
        while counterexample.is_none()
            && branches < max_branches
            && deadline.is_none_or(|d| std::time::Instant::now() < d)
        {
            // The worst open branch first (ties: the earliest).
            let Some(pos) = open.iter().enumerate().min_by_key(|(i, b)| (b.0, *i)).map(|(i, _)| i) else { break };
            let Some((x, y)) = open[pos].2 else { break }; // nothing left to split
            let (_, splits, _, parent) = open.remove(pos);
            for part in [x, y] {
                let mut s = splits.clone();
                s.push(part);
                let (m, cand, margins) = self.bab_bound(&lo, &hi, label, &base, &s, &parent);
                branches += 1;
                match (m, margins) {
                    (Some(w), Some(mv)) if w < 0 => {
                        if counterexample.is_none() {
                            counterexample = self.try_corner(pixels, &lo, &hi, falsify);
                        }
                        open.push((w, s, cand, mv));
                    }
                    (Some(w), _) => proved = Some(proved.map_or(w, |p| p.min(w))),
                    (None, _) => {} // no image of the ball in this branch
                }
            }
        }
        let margin = match open.iter().map(|b| b.0).min() {
            Some(w) => Some(w),
            None => proved.or(root),
        };
        BabOutcome { margin, branches, counterexample }
    }

    /// Offers `falsify` the input corner `x*` of the last back-substitution (the worst
    /// class's, which [`Crown::bab_bound`] runs last on an open branch) and returns its
    /// answer. `None` without asking when that back-substitution did not end over the
    /// pixels (only flattens below it keep their order).
    fn try_corner(
        &self,
        pixels: &[u8],
        lo: &[u8],
        hi: &[u8],
        falsify: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let start = self.last_row;
        if self.layers[..start].iter().any(|l| l.op() != OpKind::Flatten) {
            return None;
        }
        let row = self.rows.get(start).filter(|r| r.c.len() == pixels.len())?;
        let x: Vec<u8> = (0..pixels.len())
            .map(|i| match row.c[i] {
                c if c > 0.0 => lo[i],
                c if c < 0.0 => hi[i],
                _ => pixels[i],
            })
            .collect();
        falsify(&x)
    }

    /// Bounds one branch: its worst margin (`None` if infeasible), if it is negative the split
    /// to try next, and its per-class margins. A branch is part of its parent's region, so
    /// the parent's margins (`parent`) hold in it too and each class keeps the better one.
    fn bab_bound(
        &mut self,
        lo: &[u8],
        hi: &[u8],
        label: usize,
        base: &(Vec<i64>, Vec<bool>),
        splits: &[Split],
        parent: &[i64],
    ) -> BranchBound {
        let Some(mut m) = self.branch_margins(lo, hi, label, base, splits) else { return (None, None, None) };
        for (mj, &pj) in m.iter_mut().zip(parent) {
            *mj = (*mj).max(pj);
        }
        let w = worst_margin(&m, label);
        let Some(w) = w.filter(|&w| w < 0) else { return (w, None, Some(m)) };
        // The worst class's back-substitution again, recording its coefficients.
        let j = (0..m.len()).filter(|&j| j != label).min_by_key(|&j| m[j] - i64::from(j < label));
        let mut cand = None;
        if let Some(j) = j {
            self.capture = Some(vec![Row::default(); self.layers.len()]);
            self.difference_lower_bound(self.layers.len() - 1, label, j);
            cand = self.choose_split();
            self.capture = None;
        }
        (Some(w), cand, Some(m))
    }

    /// The split of the current branch: the hidden neuron with an unstable clamp whose
    /// relaxation gap, weighted by its captured coefficient, is largest; split at the kink.
    fn choose_split(&self) -> Option<(Split, Split)> {
        let cap = self.capture.as_ref()?;
        let mut best: Option<(f64, Split, Split)> = None;
        for (idx, layer) in self.layers.iter().enumerate() {
            if !layer.op().has_weights() || layer.outputs_logits() || cap[idx].c.is_empty() {
                continue;
            }
            let st = &self.state[idx];
            let oc = layer.output_shape().c;
            let (zp, (amin, amax)) = (layer.output_zero_point(), layer.clamp());
            for (i, &c) in cap[idx].c.iter().enumerate() {
                let (l, h) = (st.acc_lo[i], st.acc_hi[i]);
                if c == 0.0 || l >= h {
                    continue;
                }
                let ch = i % oc;
                let f = |a: i32| quant::requantize(a, layer.multiplier(ch), layer.shift(ch), zp, amin, amax);
                let (fl, fh) = (f(l), f(h));
                if fl == fh {
                    continue;
                }
                // The first accumulator past the lower clamp, else the first at the upper one.
                let t = if fl == amin {
                    first_above(l, h, |a| f(a) > fl)
                } else if fh == amax {
                    first_above(l, h, |a| f(a) == fh)
                } else {
                    continue;
                };
                let r = &st.relax[i];
                let gap = |a: f64| (r.up_slope - r.lo_slope) * a + (r.up_icpt - r.lo_icpt);
                let score = c.abs() * gap(l as f64).max(gap(t as f64)).max(gap(h as f64));
                if best.as_ref().is_none_or(|b| score > b.0) {
                    let a = Split { layer: idx, neuron: i, lo: l, hi: t - 1 };
                    let b = Split { layer: idx, neuron: i, lo: t, hi: h };
                    best = Some((score, a, b));
                }
            }
        }
        best.map(|(_, a, b)| (a, b))
    }

    /// Interval pass with refinement: fills every layer's input bounds, and for weighted
    /// hidden layers the (refined) accumulator bounds and relaxations.
    fn forward(&mut self, lo: &[u8], hi: &[u8], splits: &[Split]) -> bool {
        let to_int = |v: &[u8]| v.iter().map(|&p| quant::pixel_to_input(p) as i32).collect::<Vec<_>>();
        let (ilo, ihi) = (to_int(lo), to_int(hi));
        self.ibp.set_bounds(&ilo, &ihi);
        let first_weighted = self.layers.iter().position(|l| l.op().has_weights()).unwrap_or(0);
        for idx in 0..self.layers.len() {
            let layer = self.layers[idx];
            {
                let (l, h) = self.ibp.bounds();
                let st = &mut self.state[idx];
                st.in_lo.clear();
                st.in_lo.extend_from_slice(l);
                st.in_hi.clear();
                st.in_hi.extend_from_slice(h);
            }
            match layer.op() {
                OpKind::Flatten => continue,
                OpKind::MaxPool2d | OpKind::AvgPool2d => self.ibp.pool_next(&layer),
                OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    self.ibp.accumulate(&layer);
                    if layer.outputs_logits() {
                        return true;
                    }
                    // The accumulator bounds go into this layer's state (buffers reused),
                    // get refined and split there, and are written back once.
                    let (mut acc_lo, mut acc_hi) =
                        (std::mem::take(&mut self.state[idx].acc_lo), std::mem::take(&mut self.state[idx].acc_hi));
                    let (al, ah) = self.ibp.next_bounds_mut();
                    acc_lo.clear();
                    acc_lo.extend_from_slice(al);
                    acc_hi.clear();
                    acc_hi.extend_from_slice(ah);
                    if idx > first_weighted && acc_lo.len() <= self.cfg.refine_max_neurons {
                        self.refine(idx, &mut acc_lo, &mut acc_hi);
                    }
                    let mut feasible = true;
                    for sp in splits.iter().filter(|sp| sp.layer == idx) {
                        let i = sp.neuron;
                        (acc_lo[i], acc_hi[i]) = (acc_lo[i].max(sp.lo), acc_hi[i].min(sp.hi));
                        feasible &= acc_lo[i] <= acc_hi[i];
                    }
                    if !feasible {
                        (self.state[idx].acc_lo, self.state[idx].acc_hi) = (acc_lo, acc_hi);
                        return false;
                    }
                    let (al, ah) = self.ibp.next_bounds_mut();
                    al.copy_from_slice(&acc_lo);
                    ah.copy_from_slice(&acc_hi);
                    let oc = layer.output_shape().c;
                    let (zp, (amin, amax)) = (layer.output_zero_point(), layer.clamp());
                    let st = &mut self.state[idx];
                    st.relax.clear();
                    st.relax.extend((0..acc_lo.len()).map(|i| {
                        let c = i % oc;
                        relax_requantize(acc_lo[i], acc_hi[i], layer.multiplier(c), layer.shift(c), zp, amin, amax)
                    }));
                    (st.acc_lo, st.acc_hi) = (acc_lo, acc_hi);
                    self.ibp.requantize_next(&layer);
                }
            }
            self.ibp.advance();
        }
        unreachable!("validated models end with a Dense layer emitting logits")
    }

    /// Tightens the accumulator bounds of weighted layer `idx` by back-substituting each
    /// neuron's accumulator (both signs) to the input; integer bounds, rounded inward.
    ///
    /// Only neurons whose interval reaches a clamp are refined: elsewhere the output is a
    /// constant (both ends clamped alike) or the relaxation is the line `s·acc ± 1/2` whatever
    /// the interval, so a tighter interval would change little for its cost.
    fn refine(&mut self, idx: usize, acc_lo: &mut [i32], acc_hi: &mut [i32]) {
        let n = acc_lo.len();
        let layer = self.layers[idx];
        let oc = layer.output_shape().c;
        let (zp, (amin, amax)) = (layer.output_zero_point(), layer.clamp());
        let mut e = std::mem::take(&mut self.obj_row);
        for i in 0..n {
            let c = i % oc;
            let f = |a: i32| quant::requantize(a, layer.multiplier(c), layer.shift(c), zp, amin, amax);
            let (fl, fh) = (f(acc_lo[i]), f(acc_hi[i]));
            if fl == fh || (fl != amin && fh != amax) {
                continue;
            }
            for sign in [1.0f64, -1.0] {
                e.reset(n);
                e.c[i] = sign;
                e.touch(i, i + 1);
                let b = if self.cfg.alpha_steps > 0 && self.cfg.alpha_refine {
                    self.optimize_objective(idx, &e, f64::INFINITY)
                } else {
                    self.back_substitute(idx, &e)
                };
                if !b.is_finite() {
                    continue;
                }
                if sign > 0.0 {
                    // acc >= b (an integer): acc >= ceil(b).
                    let v = b.ceil();
                    if v > acc_lo[i] as f64 {
                        acc_lo[i] = (v as i64).min(acc_hi[i] as i64) as i32;
                    }
                } else {
                    // -acc >= b: acc <= floor(-b).
                    let v = (-b).floor();
                    if v < acc_hi[i] as f64 {
                        acc_hi[i] = (v as i64).max(acc_lo[i] as i64) as i32;
                    }
                }
            }
        }
        self.obj_row = e;
    }

    /// The objective row `s_y acc_y - s_j acc_j` over the accumulators of the logits layer
    /// `last`, written into `e`.
    fn difference_row(&self, last: usize, y: usize, j: usize, e: &mut Row) {
        let layer = self.layers[last];
        let sc = |c: usize| scale_of(layer.multiplier(c), layer.shift(c));
        e.reset(layer.output_shape().c);
        e.c[y] = sc(y);
        e.c[j] = -sc(j);
        e.touch(y.min(j), y.max(j) + 1);
    }

    /// A lower bound on `s_y acc_y - s_j acc_j` of the logits layer `last`.
    fn difference_lower_bound(&mut self, last: usize, y: usize, j: usize) -> f64 {
        let mut e = std::mem::take(&mut self.obj_row);
        self.difference_row(last, y, j, &mut e);
        let b = self.back_substitute(last, &e);
        self.obj_row = e;
        b
    }

    /// [`Crown::difference_lower_bound`] with optimised slopes
    /// ([`Crown::optimize_objective`]), stopping once it reaches `need`.
    fn optimize_difference(&mut self, last: usize, y: usize, j: usize, need: i64) -> f64 {
        let mut e = std::mem::take(&mut self.obj_row);
        self.difference_row(last, y, j, &mut e);
        let b = self.optimize_objective(last, &e, need as f64);
        self.obj_row = e;
        b
    }

    /// Alpha-CROWN: the best lower bound of the objective `e` over weighted layer `top`'s
    /// accumulators (as [`Crown::back_substitute`]) when the free slope of every hidden
    /// neuron the objective reaches (see [`Curvature`]) may move in `[0, s]`. The slopes
    /// start at the heuristic's choice and move by projected sign-gradient ascent on the
    /// bound, [`CrownConfig::alpha_steps`] times or until the bound reaches `need`.
    ///
    /// The gradient is exact for this piecewise-linear bound: it is the back-substituted row
    /// at the input corner `x*` minimising it, so its derivative in a neuron's slope is
    /// `c (acc(x*) - a*)`, with `c` the neuron's coefficient, `acc(x*)` the value at `x*`
    /// of the linear bounds below it (a forward pass through the lines the back-substitution
    /// chose, [`Crown::relaxed_forward`]) and `a*` where the line's intercept is attained.
    /// Soundness does not depend on any of this: every slope is sound (its intercept is
    /// computed for it by [`requantize_line`]), and the result is the best bound actually
    /// computed. The original relaxations are restored before returning.
    fn optimize_objective(&mut self, top: usize, e: &Row, need: f64) -> f64 {
        let steps = self.cfg.alpha_steps;
        let mut cap = std::mem::take(&mut self.alpha_cap);
        cap.resize_with(self.layers.len(), Row::default);
        self.capture = Some(cap);
        let mut best = self.back_substitute(top, e);
        let mut cap = self.capture.take().unwrap_or_default();
        let mut free = if best >= need || steps == 0 { Vec::new() } else { self.free_lines(top, &cap) };
        let betas = self.cfg.beta && best < need && steps > 0 && self.splits.iter().any(|sp| sp.layer < top);
        if !free.is_empty() || betas {
            // Step (as a fraction of the slope range) and its decay per step: tuned on PGD
            // cnn-s at eps 0.1 (0.25 / 0.85 proved 72 of 200 samples; 0.5 / 0.7 and
            // 0.1 / 1.0 71 and 70; docs/RESULTS.md).
            let mut lr = 0.25;
            let mut fw = std::mem::take(&mut self.alpha_fw);
            for _ in 0..steps {
                self.relaxed_forward(top, &cap, &mut fw);
                if self.cfg.beta {
                    self.step_betas(top, &cap, &fw, lr);
                }
                for f in free.iter_mut() {
                    let c = cap[f.layer].c.get(f.neuron).copied().unwrap_or(0.0);
                    if c == 0.0 || (c < 0.0) != f.upper {
                        continue; // the back-substitution used the other line
                    }
                    let g = c * (fw.acc[f.layer][f.neuron] - f.a_star);
                    if g != 0.0 {
                        f.frac = (f.frac + lr * g.signum()).clamp(0.0, 1.0);
                    }
                }
                lr *= 0.85;
                self.set_free_lines(&mut free);
                self.capture = Some(cap);
                let b = self.back_substitute(top, e);
                cap = self.capture.take().unwrap_or_default();
                best = best.max(b);
                if best >= need {
                    break;
                }
            }
            for f in &free {
                self.state[f.layer].relax[f.neuron] = f.orig;
            }
            self.betas.iter_mut().for_each(|b| *b = 0.0);
            self.alpha_fw = fw;
        }
        self.alpha_cap = cap;
        best
    }

    /// The hidden neurons below weighted layer `top` that the captured back-substitution
    /// `cap` reached and whose relaxation has a free slope, at their current relaxations.
    fn free_lines(&self, top: usize, cap: &[Row]) -> Vec<FreeLine> {
        let mut free = Vec::new();
        for (idx, layer) in self.layers.iter().enumerate().take(top) {
            if !layer.op().has_weights() {
                continue;
            }
            let st = &self.state[idx];
            let oc = layer.output_shape().c;
            for i in cap[idx].span() {
                let (q, lo, hi, r) = (Requant::of(layer, i % oc), st.acc_lo[i], st.acc_hi[i], &st.relax[i]);
                let upper = match requantize_shape(lo, hi, q) {
                    Curvature::Convex => false,
                    Curvature::Concave => true,
                    Curvature::Fixed | Curvature::Both => continue,
                };
                let s = q.scale();
                let slope = if upper { r.up_slope } else { r.lo_slope };
                let a_star = requantize_line(lo, hi, q, slope, upper).1;
                free.push(FreeLine { layer: idx, neuron: i, upper, s, frac: slope / s, a_star, orig: *r });
            }
        }
        free
    }

    /// Writes each free line's slope `frac·s` and its intercept into the relaxations.
    fn set_free_lines(&mut self, free: &mut [FreeLine]) {
        for f in free.iter_mut() {
            let layer = self.layers[f.layer];
            let st = &mut self.state[f.layer];
            let q = Requant::of(&layer, f.neuron % layer.output_shape().c);
            let (lo, hi) = (st.acc_lo[f.neuron], st.acc_hi[f.neuron]);
            let slope = f.frac * f.s;
            let (icpt, a) = requantize_line(lo, hi, q, slope, f.upper);
            f.a_star = a;
            let r = &mut st.relax[f.neuron];
            if f.upper {
                (r.up_slope, r.up_icpt) = (slope, icpt);
            } else {
                (r.lo_slope, r.lo_icpt) = (slope, icpt);
            }
        }
    }

    /// One projected sign-gradient step of the split multipliers below weighted layer `top`:
    /// the bound's derivative in `β_lo` is `lo - acc(x*)` and in `β_hi` `acc(x*) - hi`
    /// (`acc(x*)` from [`Crown::relaxed_forward`]); the step is `lr` times the largest
    /// coefficient the objective puts on the layer's outputs times the neuron's
    /// requantization scale (so `β` lives on the scale of the objective's coefficients on
    /// that layer's accumulators; the split neuron's own coefficient is often 0, on the side
    /// of the split where it is constant), and `β` stays `>= 0`. Splits outside the
    /// objective's cone are left at zero.
    fn step_betas(&mut self, top: usize, cap: &[Row], fw: &Forward, lr: f64) {
        for (k, sp) in self.splits.iter().enumerate() {
            if sp.layer >= top || !fw.out_range[sp.layer].contains(&sp.neuron) {
                continue;
            }
            let a = fw.acc[sp.layer][sp.neuron];
            let row = &cap[sp.layer];
            let c = row.c[row.span()].iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let layer = self.layers[sp.layer];
            let scale = c * Requant::of(&layer, sp.neuron % layer.output_shape().c).scale();
            for (b, g) in [(2 * k, sp.lo as f64 - a), (2 * k + 1, a - sp.hi as f64)] {
                if g != 0.0 {
                    self.betas[b] = (self.betas[b] + lr * scale * g.signum()).max(0.0);
                }
            }
        }
    }

    /// The forward pass behind the slope gradient: from the input corner `x*` minimising
    /// the last back-substitution's final row, the value of every weighted layer's
    /// accumulator below `top` (into `fw.acc`) through the lines that back-substitution
    /// chose (`cap`, its coefficients on each layer's outputs: the lower line where
    /// `c >= 0`). Only the part of each tensor the objective depends on is computed: the
    /// receptive-field hull, from `top` down, of the captured row's span.
    fn relaxed_forward(&self, top: usize, cap: &[Row], fw: &mut Forward) {
        let start = self.last_row;
        let n = self.layers.len();
        fw.val.resize_with(n + 1, Vec::new);
        fw.acc.resize_with(n, Vec::new);
        fw.range.clear();
        fw.range.resize(n + 1, 0..0);
        fw.out_range.clear();
        fw.out_range.resize(n, 0..0);
        // range[idx]: the indices of layer idx's input needed; range[top] unused.
        let mut out = cap[top.saturating_sub(1)].span();
        for idx in (start..top).rev() {
            let layer = self.layers[idx];
            if idx + 1 < top && layer.op() != OpKind::Flatten {
                out = fw.range[idx + 1].clone();
            }
            let win = window(&layer);
            let o = layer.output_shape();
            let (mut lo, mut hi) = (usize::MAX, 0);
            match layer.op() {
                OpKind::Flatten => (lo, hi) = (out.start, out.end),
                OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    let taps = Taps::of(&layer);
                    for flat in out.clone() {
                        taps.runs(flat, |x0, _, n| (lo, hi) = (lo.min(x0), hi.max(x0 + n)));
                    }
                }
                OpKind::MaxPool2d | OpKind::AvgPool2d => {
                    for flat in out.clone() {
                        let (p, c) = (flat / o.c, flat % o.c);
                        for_taps(&win, p / o.w, p % o.w, |_, src| (lo, hi) = (lo.min(src + c), hi.max(src + c + 1)));
                    }
                }
            }
            fw.range[idx] = lo.min(hi)..hi;
            out = fw.range[idx].clone();
        }
        // The corner x*.
        let (st0, row0) = (&self.state[start], &self.rows[start]);
        let v0 = &mut fw.val[start];
        v0.clear();
        v0.resize(st0.in_lo.len(), 0.0);
        for k in fw.range[start].clone() {
            v0[k] = if row0.c[k] >= 0.0 { st0.in_lo[k] } else { st0.in_hi[k] } as f64;
        }
        for idx in start..top {
            let layer = self.layers[idx];
            let o = layer.output_shape();
            let outr = if idx + 1 < top { fw.range[idx + 1].clone() } else { cap[idx].span() };
            fw.out_range[idx] = outr.clone();
            let (below, above) = fw.val.split_at_mut(idx + 1);
            let (v, next) = (&below[idx], &mut above[0]);
            next.clear();
            next.resize(o.len(), 0.0);
            let c = &cap[idx].c;
            let coef = |i: usize| c.get(i).copied().unwrap_or(0.0);
            match layer.op() {
                OpKind::Flatten => next[outr.clone()].copy_from_slice(&v[outr]),
                OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    let (zp, w, taps) = (layer.input_zero_point() as f64, layer.weight_bytes(), Taps::of(&layer));
                    let acc = &mut fw.acc[idx];
                    acc.clear();
                    acc.resize(o.len(), 0.0);
                    let rel = &self.state[idx].relax;
                    for flat in outr {
                        let mut a = layer.bias(flat % o.c) as f64;
                        taps.runs(flat, |x0, w0, n| {
                            for (&wb, &xv) in w[w0..w0 + n].iter().zip(&v[x0..x0 + n]) {
                                a += wb as i8 as f64 * (xv - zp);
                            }
                        });
                        acc[flat] = a;
                        let r = &rel[flat];
                        next[flat] =
                            if coef(flat) >= 0.0 { r.lo_slope * a + r.lo_icpt } else { r.up_slope * a + r.up_icpt };
                    }
                }
                OpKind::MaxPool2d | OpKind::AvgPool2d => {
                    let st = &self.state[idx];
                    let win = window(&layer);
                    let count = (win.kernel.0 * win.kernel.1) as f64;
                    let avg = layer.op() == OpKind::AvgPool2d;
                    for flat in outr {
                        let (p, ch, rc) = (flat / o.c, flat % o.c, coef(flat));
                        let (oy, ox) = (p / o.w, p % o.w);
                        next[flat] = if avg {
                            let mut sum = 0.0;
                            for_taps(&win, oy, ox, |_, src| sum += v[src + ch]);
                            sum / count + if rc >= 0.0 { -0.5 } else { 0.5 }
                        } else {
                            let mp = max_pool_choice(st, &win, oy, ox, ch);
                            if rc >= 0.0 || mp.dominates() {
                                v[mp.best]
                            } else {
                                mp.max_hi as f64
                            }
                        };
                    }
                }
            }
        }
    }

    /// The best lower bound of `e·acc + d - sigma` (`acc` the accumulators of weighted layer
    /// `top`) over the box, substituting back to the input and concretising at every layer
    /// boundary on the way.
    fn back_substitute(&mut self, top: usize, e: &Row) -> f64 {
        // One row buffer per tensor (the input of layer i), so each keeps its length and
        // only its last span is cleared.
        let mut rows = std::mem::take(&mut self.rows);
        rows.resize_with(self.layers.len() + 1, Row::default);
        let mut accs = std::mem::take(&mut self.acc_rows);
        accs.resize_with(self.layers.len(), Row::default);
        self.affine(top, e, &mut rows[top]);
        let mut best = self.concretize(top, &rows[top]);
        // rows[cur] is the row over the output of layer idx - 1.
        let mut cur = top;
        let mut idx = top;
        while idx > 0 {
            idx -= 1;
            let layer = self.layers[idx];
            let (below, above) = rows.split_at_mut(cur);
            let (row, out) = (&above[0], &mut below[idx]);
            if let Some(cap) = self.capture.as_mut() {
                cap[idx].clone_from(row);
            }
            if layer.op() == OpKind::Flatten {
                // The same data: the row over the output is the row over the input.
                continue;
            }
            match layer.op() {
                OpKind::Flatten => unreachable!(),
                OpKind::MaxPool2d | OpKind::AvgPool2d => self.pool_back(idx, row, out),
                OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    self.relax_back(idx, row, &mut accs[idx]);
                    self.apply_betas(idx, &mut accs[idx]);
                    self.affine(idx, &accs[idx], out);
                }
            }
            cur = idx;
            best = best.max(self.concretize(idx, &rows[idx]));
        }
        self.last_row = cur;
        self.rows = rows;
        self.acc_rows = accs;
        best
    }

    /// The Lagrangian terms of the split constraints on weighted layer `idx` (beta-CROWN):
    /// on the branch `acc_n - lo >= 0` and `hi - acc_n >= 0`, so subtracting
    /// `β_lo (acc_n - lo) + β_hi (hi - acc_n)` (`β >= 0`) from the objective keeps it a lower
    /// bound there. Adds `-β_lo + β_hi` to the coefficient of `acc_n` and `β_lo lo - β_hi hi`
    /// to the constant, with their rounding error in the slack.
    fn apply_betas(&self, idx: usize, acc: &mut Row) {
        let st = &self.state[idx];
        for (k, sp) in self.splits.iter().enumerate().filter(|(_, sp)| sp.layer == idx) {
            let (bl, bh) = (self.betas[2 * k], self.betas[2 * k + 1]);
            if bl == 0.0 && bh == 0.0 {
                continue;
            }
            let n = sp.neuron;
            let (lo, hi) = (sp.lo as f64, sp.hi as f64);
            let amax = st.acc_lo[n].unsigned_abs().max(st.acc_hi[n].unsigned_abs()) as f64;
            let old = acc.c[n];
            acc.c[n] = old - bl + bh;
            acc.touch(n, n + 1);
            let t = bl * lo - bh * hi;
            acc.sigma += gamma(3) * ((old.abs() + bl + bh) * amax + acc.d.abs() + (bl * lo).abs() + (bh * hi).abs());
            acc.d += t;
        }
    }

    /// `min` of the row over layer `idx`'s input box, minus all slack.
    fn concretize(&self, idx: usize, row: &Row) -> f64 {
        let st = &self.state[idx];
        let mut v = row.d;
        let mut abs = row.d.abs();
        let r = row.span();
        for ((&c, &l), &h) in row.c[r.clone()].iter().zip(&st.in_lo[r.clone()]).zip(&st.in_hi[r]) {
            if c == 0.0 {
                continue;
            }
            let t = c * if c >= 0.0 { l } else { h } as f64;
            v += t;
            abs += t.abs();
        }
        v - row.sigma - gamma(row.c.len() + 1) * abs
    }

    /// Through the requantization of weighted layer `idx`: `row` over its outputs becomes
    /// `acc` over its accumulators (with the new constant and slack).
    fn relax_back(&self, idx: usize, row: &Row, acc: &mut Row) {
        let st = &self.state[idx];
        acc.reset(row.c.len());
        let r = row.span();
        acc.touch(r.start, r.end);
        let (mut d, mut abs_const, mut abs_acc) = (row.d, row.d.abs(), 0.0);
        for (i, &c) in row.c.iter().enumerate().take(r.end).skip(r.start) {
            if c == 0.0 {
                continue;
            }
            let r = &st.relax[i];
            let (slope, icpt) = if c >= 0.0 { (r.lo_slope, r.lo_icpt) } else { (r.up_slope, r.up_icpt) };
            let ei = c * slope;
            acc.c[i] = ei;
            let t = c * icpt;
            d += t;
            abs_const += t.abs();
            abs_acc += ei.abs() * (st.acc_lo[i].unsigned_abs().max(st.acc_hi[i].unsigned_abs())) as f64;
        }
        // fl(c·slope) is within 2u of c·slope; its product with |acc| <= A is the first term.
        acc.sigma = row.sigma + f64::EPSILON * abs_acc + gamma(row.c.len() + 1) * abs_const;
        acc.d = d;
    }

    /// Through the affine part of weighted layer `idx`: `e` over its accumulators becomes
    /// `out` over its input.
    ///
    /// Output pixel by output pixel: where most of a pixel's channels have a coefficient,
    /// each tap's contribution to each input is one dot product of the pixel's coefficients
    /// with the transposed weights ([`WeightFacts::wt`]); where few do (a refinement row's
    /// single neuron), each channel's weights are added on their own. Both form the same
    /// sums of terms `e_c w`, in different orders, so the same float-error bound holds.
    fn affine(&self, idx: usize, e: &Row, out: &mut Row) {
        let layer = self.layers[idx];
        let facts = &self.facts[idx];
        let (i, o) = (layer.input_shape(), layer.output_shape());
        let w = layer.weight_bytes();
        out.reset(i.len());
        let (mut d, sigma) = (e.d, e.sigma);
        let mut abs = d.abs();
        let mut abs_w = 0.0;
        let oc = o.c;
        match layer.op() {
            // A Dense layer is a 1x1 convolution over its 1x1xC input; a depthwise tap reads
            // one channel, a convolution tap all `ic`.
            OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                let taps = Taps::of(&layer);
                let ic = taps.ic;
                let span = e.span();
                for p in span.start / oc..span.end.div_ceil(oc) {
                    let ep = &e.c[p * oc..(p + 1) * oc];
                    let mut nnz = 0;
                    for (c, &ec) in ep.iter().enumerate().filter(|(_, &ec)| ec != 0.0) {
                        let t = ec * facts.bias_term[p * oc + c];
                        d += t;
                        abs += t.abs();
                        abs_w += ec.abs() * facts.abs_sum[c];
                        nnz += 1;
                    }
                    if nnz == 0 {
                        continue;
                    }
                    if !facts.wt.is_empty() && 4 * nnz > oc {
                        taps.pixel_runs(p, |x0, r0| {
                            out.touch(x0, x0 + ic);
                            for (ci, xv) in out.c[x0..x0 + ic].iter_mut().enumerate() {
                                *xv += dot(ep, &facts.wt[(r0 + ci) * oc..(r0 + ci + 1) * oc]);
                            }
                        });
                    } else {
                        for (c, &ec) in ep.iter().enumerate().filter(|(_, &ec)| ec != 0.0) {
                            taps.runs(p * oc + c, |x0, w0, n| {
                                out.touch(x0, x0 + n);
                                for (xv, &wb) in out.c[x0..x0 + n].iter_mut().zip(&w[w0..w0 + n]) {
                                    *xv += ec * (wb as i8) as f64;
                                }
                            });
                        }
                    }
                }
            }
            OpKind::MaxPool2d | OpKind::AvgPool2d | OpKind::Flatten => unreachable!("not a weighted layer"),
        }
        // Each new coefficient is a float sum of terms e_i w_ik, so its error is at most
        // γ Σ_i |e_i w_ik|; times |x_k| <= 128 and summed over k: γ 128 Σ_i |e_i| Σ|w_i.|.
        // The constant adds |b| + |zp| Σ|w| <= |b| + 128 Σ|w| per term.
        let g = gamma(facts.terms);
        out.d = d;
        out.sigma = sigma + g * (2.0 * ACT_MAX * abs_w + abs);
    }

    /// Through pooling layer `idx`.
    ///
    /// Max pooling: each output is at least the window input with the largest lower bound,
    /// and at most the largest upper bound (exactly the dominating input when one input's
    /// lower bound is at least every other's upper bound).
    ///
    /// Average pooling: `sum/count - 1/2 <= y <= sum/count + 1/2` (the runtime rounds
    /// `sum/count` half up and never saturates: the mean of int8 values is in range). Using
    /// `fl(1/count)` for `1/count` moves the line by at most `count * 128 * u / count`,
    /// covered by [`ICPT_EPS`].
    fn pool_back(&self, idx: usize, row: &Row, out: &mut Row) {
        let layer = self.layers[idx];
        let st = &self.state[idx];
        let win = window(&layer);
        let (i, o) = (layer.input_shape(), layer.output_shape());
        let count = win.kernel.0 * win.kernel.1;
        let avg = layer.op() == OpKind::AvgPool2d;
        let inv = 1.0 / count as f64;
        out.reset(i.len());
        let (mut d, mut abs, mut abs_c) = (row.d, row.d.abs(), 0.0);
        for flat in row.span().filter(|&f| row.c[f] != 0.0) {
            let (p, c, rc) = (flat / o.c, flat % o.c, row.c[flat]);
            let (oy, ox) = (p / o.w, p % o.w);
            {
                let t = if avg {
                    let v = rc * inv;
                    for_taps(&win, oy, ox, |_, src| {
                        out.touch(src + c, src + c + 1);
                        out.c[src + c] += v;
                    });
                    abs_c += rc.abs();
                    -rc.abs() * (0.5 + ICPT_EPS)
                } else {
                    let mp = max_pool_choice(st, &win, oy, ox, c);
                    if rc >= 0.0 || mp.dominates() {
                        out.touch(mp.best, mp.best + 1);
                        out.c[mp.best] += rc;
                        abs_c += rc.abs();
                        0.0
                    } else {
                        rc * mp.max_hi as f64
                    }
                };
                d += t;
                abs += t.abs();
            }
        }
        out.d = d;
        out.sigma = row.sigma + gamma(row.c.len() * count + 1) * (ACT_MAX * abs_c + abs);
    }
}

/// Calls `f(tap, src)` for every valid tap of output position `(oy, ox)`: `tap` is
/// `ky * kw + kx`, `src` the input index of channel 0 (the runtime's receptive-field walk,
/// [`Window::rows`] / [`Window::cols`], the same taps as [`Window::tap`]).
#[inline(always)]
fn for_taps(win: &Window, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    let kw = win.kernel.1;
    let (ky0, ky1, iy0) = win.rows(oy);
    let (kx0, kx1, ix0) = win.cols(ox);
    for ky in ky0..ky1 {
        let row = (iy0 + ky as isize) as usize * win.input.w;
        for kx in kx0..kx1 {
            let ix = (ix0 + kx as isize) as usize;
            f(ky * kw + kx, (row + ix) * win.input.c);
        }
    }
}

/// The weight walk of one weighted layer (computed once per layer, not per output):
/// [`Taps::runs`].
struct Taps {
    win: Window,
    oc: usize,
    ow: usize,
    ic: usize,
    per_oc: usize,
    depthwise: bool,
}

impl Taps {
    fn of(layer: &Layer<'_>) -> Taps {
        let win = window(layer);
        let (i, o) = (layer.input_shape(), layer.output_shape());
        let per_oc = win.kernel.0 * win.kernel.1 * i.c;
        Taps { win, oc: o.c, ow: o.w, ic: i.c, per_oc, depthwise: layer.op() == OpKind::DepthwiseConv2d }
    }

    /// Calls `f(x0, r0)` for every valid tap of output pixel `p` of a Dense or convolution
    /// layer: the inputs `x0..x0 + ic` meet the transposed weight rows `r0..r0 + ic`
    /// ([`WeightFacts::wt`], row `tap * ic + ci`).
    #[inline(always)]
    fn pixel_runs(&self, p: usize, mut f: impl FnMut(usize, usize)) {
        let ic = self.ic;
        for_taps(&self.win, p / self.ow, p % self.ow, |tap, src| f(src, tap * ic));
    }

    /// Calls `f(x0, w0, lanes)` for every valid tap of output element `flat`: the weights
    /// `w0..w0 + lanes` multiply the inputs `x0..x0 + lanes` (the runtime's layout: a Dense
    /// layer is a 1x1 convolution over its 1x1xC input, a depthwise tap reads one channel,
    /// a convolution tap all `ic`).
    #[inline(always)]
    fn runs(&self, flat: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (p, c) = (flat / self.oc, flat % self.oc);
        let ic = self.ic;
        for_taps(&self.win, p / self.ow, p % self.ow, |tap, src| {
            if self.depthwise {
                f(src + c, tap * ic + c, 1);
            } else {
                f(src, c * self.per_oc + tap * ic, ic);
            }
        });
    }
}

/// `Σ a_i b_i` over equal-length slices, in four interleaved partial sums.
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The window inputs of one max-pool output that its relaxation uses.
struct MaxPoolChoice {
    /// The input with the largest lower bound (the first on ties): the lower line.
    best: usize,
    best_lo: i32,
    /// The largest upper bound of the other inputs.
    others_hi: i32,
    /// The largest upper bound of all: the upper constant.
    max_hi: i32,
}

impl MaxPoolChoice {
    /// `best` is the maximum on the whole box: the output equals it exactly.
    fn dominates(&self) -> bool {
        self.best_lo >= self.others_hi
    }
}

/// [`MaxPoolChoice`] of output `(oy, ox)`, channel `c`, from the layer's input box.
fn max_pool_choice(st: &LayerState, win: &Window, oy: usize, ox: usize, c: usize) -> MaxPoolChoice {
    let (mut best, mut best_lo) = (usize::MAX, i32::MIN);
    let (mut others_hi, mut max_hi) = (i32::MIN, i32::MIN);
    for_taps(win, oy, ox, |_, src| {
        if best == usize::MAX || st.in_lo[src + c] > best_lo {
            (best, best_lo) = (src + c, st.in_lo[src + c]);
        }
    });
    for_taps(win, oy, ox, |_, src| {
        max_hi = max_hi.max(st.in_hi[src + c]);
        if src + c != best {
            others_hi = others_hi.max(st.in_hi[src + c]);
        }
    });
    MaxPoolChoice { best, best_lo, others_hi, max_hi }
}

fn weight_facts(layer: &Layer<'_>) -> WeightFacts {
    if !layer.op().has_weights() {
        return WeightFacts::default();
    }
    let (i, o) = (layer.input_shape(), layer.output_shape());
    let w = layer.weight_bytes();
    let oc = o.c;
    let abs_sum = channel_abs_sums(layer).into_iter().map(|a| a as f64).collect();
    let per_neuron = if layer.op() == OpKind::Dense { i.len() } else { w.len() / oc.max(1) };
    let taps = Taps::of(layer);
    let zp = layer.input_zero_point() as f64;
    let bias_term = (0..o.len())
        .map(|flat| {
            let mut wsum = 0i64;
            taps.runs(flat, |_, w0, n| wsum += w[w0..w0 + n].iter().map(|&b| b as i8 as i64).sum::<i64>());
            layer.bias(flat % oc) as f64 - zp * wsum as f64
        })
        .collect();
    let wt = if taps.depthwise {
        Vec::new()
    } else {
        // w[c * per_oc + tap * ic + ci] -> wt[(tap * ic + ci) * oc + c].
        let mut wt = vec![0.0; w.len()];
        for (j, &b) in w.iter().enumerate() {
            let (c, r) = (j / taps.per_oc, j % taps.per_oc);
            wt[r * oc + c] = b as i8 as f64;
        }
        wt
    };
    // The longest float sum one back step forms: a coefficient gathers at most one term per
    // (output neuron, tap), in any order; the constant one per output neuron and tap.
    WeightFacts { abs_sum, terms: o.len() * per_neuron.max(1) + i.len() + 1, bias_term, wt }
}

/// The least `a` in `(lo, hi]` with `pred(a)`, for a monotone `pred` false at `lo` and true
/// at `hi`.
fn first_above(lo: i32, hi: i32, pred: impl Fn(i32) -> bool) -> i32 {
    let (mut a, mut b) = (lo as i64, hi as i64); // pred(a) false, pred(b) true
    while b - a > 1 {
        let m = a + (b - a) / 2;
        if pred(m as i32) {
            b = m;
        } else {
            a = m;
        }
    }
    b as i32
}

fn floor_i64(v: f64) -> i64 {
    if v.is_nan() {
        i64::MIN
    } else {
        v.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iocane_runtime::testing::{random_model, SynthLayer};
    use iocane_runtime::Shape;

    /// The pooling back steps against every image of small balls: for `c = ±1` on one pooled
    /// value `y` (computed by the runtime's `quant::average` or `max`), `c·y >= c'·x + d - σ`.
    #[test]
    fn pool_back_steps_hold_on_every_image() {
        let mut rng = iocane_runtime::rng::SplitMix64(9);
        for (avg, seed) in [(true, 1u64), (false, 2), (true, 3), (false, 4)] {
            let pool = if avg { SynthLayer::AvgPool { k: 2, s: 2 } } else { SynthLayer::MaxPool { k: 2, s: 2 } };
            let blob = random_model(Shape::new(2, 2, 1), 2, &[pool], seed).emit();
            let model = Model::parse(&blob).unwrap();
            let mut crown = Crown::new(&model);
            for _ in 0..30 {
                let p: Vec<u8> = (0..4).map(|_| rng.range(0, 255) as u8).collect();
                let k = 1 + (rng.next_u64() % 3) as u8;
                let (lo, hi) = crate::ibp::linf_ball(&p, k);
                crown.forward(&lo, &hi, &[]);
                for c in [1.0, -1.0] {
                    let row = Row { c: vec![c], d: 0.0, sigma: 0.0, lo: 0, hi: 1 };
                    let mut out = Row::default();
                    crown.pool_back(0, &row, &mut out);
                    crate::ibp::try_for_each_image::<()>(&lo, &hi, |x| {
                        let v: Vec<i32> = x.iter().map(|&q| quant::pixel_to_input(q) as i32).collect();
                        let y = if avg { quant::average(v.iter().sum(), 4) as i32 } else { *v.iter().max().unwrap() };
                        let bound: f64 =
                            out.c.iter().zip(&v).map(|(a, &b)| a * b as f64).sum::<f64>() + out.d - out.sigma;
                        assert!(c * y as f64 >= bound, "avg {avg}: c {c}, y {y} below {bound} at {x:?}");
                        Ok(())
                    })
                    .unwrap();
                }
            }
        }
    }
}

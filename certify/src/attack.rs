//! Attacks on the integer model, searching only valid u8 images inside the ball.
//!
//! Every attack proposes integer images with `lo <= x <= hi` (the ball of `k` levels around
//! the clean pixels, intersected with `[0, 255]`) and judges each one by running
//! `iocane-runtime` on it: a returned counterexample is always an image the int8 model really
//! misclassifies (argmax with ties to the lowest index differs from the label). Gradient
//! attacks get their directions from the [`FloatTwin`] (straight-through); the Square Attack
//! and random sampling use the int8 model alone.
//!
//! Every attack first checks the clean image (one query): a misclassified clean image is its
//! own counterexample. With `k = 0` nothing else is tried. All attacks are deterministic
//! given their random generator's state.
//!
//! - [`apgd`]: APGD with the cross-entropy, DLR and targeted DLR losses (AutoAttack's
//!   gradient attacks).
//! - [`fab`]: FAB-T, the minimum-norm attack of AutoAttack's suite.
//! - [`search`]: the integer-aware coordinate search over the levels of a box, also a
//!   falsifier for branch and bound.
//! - [`suite`]: the `fast` and `standard` suites the gate runs, and their budgets.

pub mod apgd;
pub mod fab;
pub mod search;
pub mod suite;

pub use apgd::{ApgdConfig, ApgdLoss};
pub use fab::FabConfig;
pub use search::SearchConfig;
pub use suite::{AttackName, AttackSuite};

use crate::ibp::linf_ball;
use crate::twin::{FloatTwin, Loss};
use iocane_runtime::{Incremental, Model};
use serde::Serialize;

pub use iocane_runtime::rng::SplitMix64;

/// Uniform float in `[0, 1)`.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `n` offsets uniform in `[-1, 1]` and the largest of their magnitudes (plus `1e-12`):
/// the random start of APGD and FAB, which scale them to a chosen largest offset.
fn uniform_offsets(rng: &mut SplitMix64, n: usize) -> (Vec<f32>, f32) {
    let t: Vec<f32> = (0..n).map(|_| 2.0 * unit(rng) as f32 - 1.0).collect();
    let tmax = t.iter().fold(0f32, |a, &b| a.max(b.abs())) + 1e-12;
    (t, tmax)
}

/// Sample `s` of [`Attacker::random_sampling`] into `x`: for three in four samples a random
/// vertex of the box `lo..=hi` (every pixel at `lo` or `hi`), for the fourth a uniform point of
/// the integer box.
fn random_point(lo: &[u8], hi: &[u8], s: usize, rng: &mut SplitMix64, x: &mut [u8]) {
    for ((x, &l), &h) in x.iter_mut().zip(lo).zip(hi) {
        *x = if s % 4 == 3 {
            l + below(rng, (h - l) as usize + 1) as u8
        } else if rng.next_u64() & 1 == 1 {
            h
        } else {
            l
        };
    }
}

/// Images [`Attacker::random_sampling`] draws and runs as one batch ([`Model::run_batch`]).
const RANDOM_BATCH: usize = 32;

/// Uniform index in `[0, n)` (`n > 0`).
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// The outcome of one attack on one sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttackResult {
    /// A valid u8 image inside the ball that the int8 model misclassifies, if one was found.
    pub counterexample: Option<Vec<u8>>,
    /// Number of int8 model runs (queries) spent.
    pub queries: usize,
    /// Number of float-twin gradient evaluations spent (0 for gradient-free attacks).
    pub gradients: usize,
    /// The correctly classified image with the smallest int8 margin ([`margin`]) among those
    /// the attack queried, with that margin: where a later search can start (`None` when it
    /// found a counterexample or queried nothing but a misclassified clean image).
    #[serde(skip)]
    pub nearest_miss: Option<(i64, Vec<u8>)>,
}

impl AttackResult {
    /// Whether the attack found a counterexample.
    pub fn success(&self) -> bool {
        self.counterexample.is_some()
    }
}

/// Configuration of [`Attacker::pgd`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PgdConfig {
    /// Sign-gradient steps per restart.
    pub steps: usize,
    /// Number of starts: restart 0 starts at the clean image, the others uniformly in the ball.
    pub restarts: usize,
    /// Step size in pixel levels; `None` means `max(1, k / 4)`.
    pub step_size: Option<f32>,
    /// The loss ascended on the float twin.
    pub loss: Loss,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig { steps: 40, restarts: 2, step_size: None, loss: Loss::Margin }
    }
}

/// Configuration of [`Attacker::square`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SquareConfig {
    /// Query budget (model runs, including the clean check and the initialisation).
    pub queries: usize,
    /// Initial fraction of pixels changed per step (the `p` schedule halves it over time).
    pub p_init: f32,
}

impl Default for SquareConfig {
    fn default() -> Self {
        SquareConfig { queries: 1000, p_init: 0.05 }
    }
}

/// The `p` schedule of the Square Attack (Andriushchenko et al. 2020), for iteration `it`
/// of `n_iters`, rescaled to the paper's 10 000 iterations.
pub fn square_p(p_init: f32, it: usize, n_iters: usize) -> f32 {
    let it = (it as f64 / n_iters.max(1) as f64 * 10_000.0) as usize;
    let div = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        8001..=10_000 => 512.0,
        _ => 1.0,
    };
    p_init / div
}

/// Runs attacks against one int8 model, reusing its arena and its float twin.
#[derive(Clone, Debug)]
pub struct Attacker<'m> {
    model: Model<'m>,
    twin: FloatTwin,
    arena: Vec<u8>,
    logits: Vec<i32>,
    /// Square's queries: each differs from the best image so far in one window, so only
    /// that window's receptive fields are recomputed (bit-identical to `run`).
    inc: Incremental<'m>,
}

impl<'m> Attacker<'m> {
    /// An attacker for `model`. The twin comes from the provenance scales
    /// ([`FloatTwin::from_model`]) when they are present and consistent, else from the
    /// requantization multipliers ([`FloatTwin::from_requantization`]).
    pub fn new(model: &Model<'m>) -> Self {
        let twin = FloatTwin::from_model(model).unwrap_or_else(|_| FloatTwin::from_requantization(model));
        Self::with_twin(model, twin)
    }

    /// An attacker for `model` using the given twin for gradients.
    ///
    /// # Panics
    /// If the twin's input or class count does not match the model's.
    pub fn with_twin(model: &Model<'m>, twin: FloatTwin) -> Self {
        assert_eq!(twin.input_len(), model.input_len(), "twin and model disagree on the input");
        assert_eq!(twin.num_classes(), model.num_classes(), "twin and model disagree on the classes");
        Attacker {
            model: *model,
            twin,
            arena: vec![0; model.arena_size()],
            logits: vec![0; model.num_classes()],
            inc: Incremental::new(model),
        }
    }

    /// The model under attack.
    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    /// The float twin used for gradients.
    pub fn twin(&self) -> &FloatTwin {
        &self.twin
    }

    /// The int8 model's class for `x`, using the attacker's arena (no allocation).
    ///
    /// # Panics
    /// If `x` does not have `model.input_len()` pixels.
    pub fn classify(&mut self, x: &[u8]) -> usize {
        self.query(x, &mut AttackResult::default())
    }

    /// The int8 model's margin for `label` on `x` ([`margin`]: negative iff misclassified).
    ///
    /// # Panics
    /// As [`Attacker::classify`].
    pub fn margin_of(&mut self, x: &[u8], label: usize) -> i64 {
        self.query(x, &mut AttackResult::default());
        margin(&self.logits, label)
    }

    /// Runs the int8 model on `x`; returns its class and leaves the logits in `self.logits`.
    fn query(&mut self, x: &[u8], res: &mut AttackResult) -> usize {
        res.queries += 1;
        match self.model.run(x, &mut self.arena, &mut self.logits) {
            Ok(c) => c,
            Err(e) => panic!("cannot run the model on the sample: {e}"),
        }
    }

    /// [`Attacker::test`] through the incremental evaluator: the same class and logits,
    /// computed from the evaluator's base image (see [`Incremental`]).
    fn test_incremental(&mut self, x: &[u8], label: usize, res: &mut AttackResult) -> bool {
        res.queries += 1;
        let class = match self.inc.run(x, &mut self.logits) {
            Ok(c) => c,
            Err(e) => panic!("cannot run the model on the sample: {e}"),
        };
        judge(x, class, &self.logits, label, res)
    }

    /// Makes `x` the incremental evaluator's base image without counting a query.
    fn rebase_incremental(&mut self, x: &[u8]) {
        if let Err(e) = self.inc.set_base(x) {
            panic!("cannot run the model on the sample: {e}");
        }
    }

    /// Queries `x`; on misclassification records it as the counterexample and returns true.
    fn test(&mut self, x: &[u8], label: usize, res: &mut AttackResult) -> bool {
        let class = self.query(x, res);
        judge(x, class, &self.logits, label, res)
    }

    /// Checks the clean image (one query); the flag says the attack is already over (clean
    /// image misclassified, or `k = 0`).
    fn start(&mut self, pixels: &[u8], label: usize, k: u8) -> (AttackResult, bool) {
        let mut res = AttackResult::default();
        let done = self.test(pixels, label, &mut res) || k == 0;
        (res, done)
    }

    /// FGSM: one step of `k` levels along the sign of the cross-entropy gradient of the twin
    /// at the clean image, clipped to the ball and `[0, 255]`.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn fgsm(&mut self, pixels: &[u8], label: usize, k: u8) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done {
            return res;
        }
        let (lo, hi) = linf_ball(pixels, k);
        let (_, g) = self.twin.input_gradient(&FloatTwin::input_from_pixels(pixels), label, Loss::CrossEntropy);
        res.gradients += 1;
        let x = sign_vertex(pixels, &lo, &hi, &g);
        if x != pixels {
            self.test(&x, label, &mut res);
        }
        res
    }

    /// PGD with sign gradients from the float twin: from each start, iterate
    /// `x <- clip(x + step * sign(grad), lo, hi)` in float pixel units, round every iterate
    /// to the integer grid and test it on the int8 model; the first success is returned.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn pgd(&mut self, pixels: &[u8], label: usize, k: u8, cfg: &PgdConfig, rng: &mut SplitMix64) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done {
            return res;
        }
        let (lo, hi) = linf_ball(pixels, k);
        let (lo, hi): (Vec<f32>, Vec<f32>) =
            (lo.iter().map(|&v| v as f32).collect(), hi.iter().map(|&v| v as f32).collect());
        let step = cfg.step_size.unwrap_or((k as f32 / 4.0).max(1.0));
        let n = pixels.len();
        let mut cand = vec![0u8; n];
        let mut last = pixels.to_vec();
        let mut scaled = vec![0f32; n];
        for r in 0..cfg.restarts {
            let mut x: Vec<f32> = if r == 0 {
                pixels.iter().map(|&p| p as f32).collect()
            } else {
                (0..n).map(|i| lo[i] + (unit(rng) as f32) * (hi[i] - lo[i])).collect()
            };
            if r > 0 {
                round_into(&x, &mut cand);
                if cand != last {
                    if self.test(&cand, label, &mut res) {
                        return res;
                    }
                    last.copy_from_slice(&cand);
                }
            }
            for _ in 0..cfg.steps {
                for (s, &v) in scaled.iter_mut().zip(&x) {
                    *s = v / 255.0;
                }
                let (_, g) = self.twin.input_gradient(&scaled, label, cfg.loss);
                res.gradients += 1;
                let mut moved = false;
                for i in 0..n {
                    let d = if g[i] > 0.0 {
                        step
                    } else if g[i] < 0.0 {
                        -step
                    } else {
                        0.0
                    };
                    let v = (x[i] + d).clamp(lo[i], hi[i]);
                    moved |= v != x[i];
                    x[i] = v;
                }
                if !moved {
                    break; // a fixed point: further steps change nothing
                }
                round_into(&x, &mut cand);
                if cand != last {
                    if self.test(&cand, label, &mut res) {
                        return res;
                    }
                    last.copy_from_slice(&cand);
                }
            }
        }
        res
    }

    /// The Square Attack (L-infinity, Andriushchenko et al. 2020), gradient-free on the int8
    /// model: minimise the tie-aware integer margin `min_{j != y} (z_y - z_j + [j > y])`
    /// (the image is misclassified iff it is `<= 0`). Starts from vertical stripes of `±k`;
    /// each step sets a random `s x s` window (per channel) to `±k`, with
    /// `s = round(sqrt(p * h * w))` following the standard `p` schedule ([`square_p`]), and
    /// keeps the candidate if its margin is strictly smaller.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn square(
        &mut self,
        pixels: &[u8],
        label: usize,
        k: u8,
        cfg: &SquareConfig,
        rng: &mut SplitMix64,
    ) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done || cfg.queries <= 1 {
            return res;
        }
        let (lo, hi) = linf_ball(pixels, k);
        let shape = self.model.input_shape();
        let (h, w, c) = (shape.h, shape.w, shape.c);
        // Vertical stripes: one random sign per (column, channel), constant down the image.
        let signs: Vec<bool> = (0..w * c).map(|_| rng.next_u64() & 1 == 1).collect();
        let mut best: Vec<u8> = (0..pixels.len())
            .map(|i| {
                let col_ch = i % (w * c);
                if signs[col_ch] {
                    hi[i]
                } else {
                    lo[i]
                }
            })
            .collect();
        if self.test_incremental(&best, label, &mut res) {
            return res;
        }
        self.inc.accept();
        let mut best_margin = margin(&self.logits, label);
        let mut cand = best.clone();
        let side_max = h.min(w).saturating_sub(1).max(1);
        let n_iters = cfg.queries;
        let mut it = 0;
        // Iterations whose window cannot change (vanishingly rare for k > 0) spend no query;
        // the iteration cap keeps the loop finite regardless.
        while res.queries < cfg.queries && it < cfg.queries.saturating_mul(4) {
            it += 1;
            let p = square_p(cfg.p_init, it, n_iters) as f64;
            let s = ((p * (h * w) as f64).sqrt().round() as usize).clamp(1, side_max);
            let y0 = below(rng, h - s + 1);
            let x0 = below(rng, w - s + 1);
            cand.copy_from_slice(&best);
            // Fresh signs per channel, resampled while the window would not change.
            let mut changed = false;
            for _ in 0..16 {
                for ch in 0..c {
                    let up = rng.next_u64() & 1 == 1;
                    for y in y0..y0 + s {
                        for x in x0..x0 + s {
                            let i = (y * w + x) * c + ch;
                            cand[i] = if up { hi[i] } else { lo[i] };
                        }
                    }
                }
                changed = (y0..y0 + s).any(|y| {
                    let a = (y * w + x0) * c;
                    let b = (y * w + x0 + s) * c;
                    cand[a..b] != best[a..b]
                });
                if changed {
                    break;
                }
            }
            if !changed {
                continue;
            }
            if self.test_incremental(&cand, label, &mut res) {
                return res;
            }
            let m = margin(&self.logits, label);
            if m < best_margin {
                best_margin = m;
                best.copy_from_slice(&cand);
                self.inc.accept();
            }
        }
        res
    }

    /// Random sampling, a sanity floor: `n` images from the ball, three in four uniformly
    /// random vertices (every pixel at `lo` or `hi`), one in four uniform over the integer box.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn random_sampling(
        &mut self,
        pixels: &[u8],
        label: usize,
        k: u8,
        n: usize,
        rng: &mut SplitMix64,
    ) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done {
            return res;
        }
        let (lo, hi) = linf_ball(pixels, k);
        let (d, classes) = (pixels.len(), self.model.num_classes());
        let mut xs = vec![0u8; RANDOM_BATCH.min(n) * d];
        let mut logits = vec![0i32; RANDOM_BATCH.min(n) * classes];
        let mut predicted = vec![0usize; RANDOM_BATCH.min(n)];
        // The generator's state after each sample of the batch: a success at sample `s`
        // leaves `rng` where one-at-a-time sampling would have stopped.
        let mut after = vec![rng.clone(); RANDOM_BATCH.min(n)];
        for s0 in (0..n).step_by(RANDOM_BATCH) {
            let m = RANDOM_BATCH.min(n - s0);
            for (j, x) in xs.chunks_exact_mut(d).take(m).enumerate() {
                random_point(&lo, &hi, s0 + j, rng, x);
                after[j] = rng.clone();
            }
            let run = self.model.run_batch(&xs[..m * d], &mut logits[..m * classes], &mut predicted[..m]);
            if let Err(e) = run {
                panic!("cannot run the model on the sample: {e}");
            }
            for j in 0..m {
                res.queries += 1;
                let (x, z) = (&xs[j * d..(j + 1) * d], &logits[j * classes..(j + 1) * classes]);
                if judge(x, predicted[j], z, label, &mut res) {
                    *rng = after[j].clone();
                    return res;
                }
            }
        }
        res
    }
}

/// Records the outcome of querying `x` (the int8 model's `class` and `logits`): on
/// misclassification `x` becomes the counterexample and the result is true; otherwise `x`
/// becomes the nearest miss if its margin is the smallest so far.
fn judge(x: &[u8], class: usize, logits: &[i32], label: usize, res: &mut AttackResult) -> bool {
    if class != label {
        res.counterexample = Some(x.to_vec());
        res.nearest_miss = None;
        return true;
    }
    let m = margin(logits, label);

    match &mut res.nearest_miss {
        Some((best, img)) if m < *best => {
            *best = m;
            img.copy_from_slice(x);
        }
        Some(_) => {}
        None => res.nearest_miss = Some((m, x.to_vec())),
    }
    false
}

/// The `n` classes other than `label` with the largest int8 logits, largest first (ties to
/// the lowest index): the target classes of APGD-T and FAB-T.
fn top_targets(logits: &[i32], label: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).filter(|&j| j != label).collect();
    order.sort_by(|&a, &b| logits[b].cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

/// Rounds float pixel values (already inside `[lo, hi]` with integer ends) to u8.
fn round_into(x: &[f32], out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// Tie-aware integer margin of `label`: `min_{j != y} (z_y - z_j + [j > y])`; the runtime's
/// The vertex of the box `lo..=hi` that the gradient `g` points to: `hi` where `g > 0`, `lo`
/// where `g < 0`, the pixel itself where `g = 0` (FGSM's step, and the integer search's
/// first candidate).
pub(crate) fn sign_vertex(pixels: &[u8], lo: &[u8], hi: &[u8], g: &[f32]) -> Vec<u8> {
    (0..pixels.len())
        .map(|i| {
            if g[i] > 0.0 {
                hi[i]
            } else if g[i] < 0.0 {
                lo[i]
            } else {
                pixels[i]
            }
        })
        .collect()
}

/// argmax differs from `label` iff this is `<= 0`.
pub fn margin(logits: &[i32], label: usize) -> i64 {
    let zy = logits[label] as i64;
    logits
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label)
        .map(|(j, &z)| zy - z as i64 + i64::from(j > label))
        .min()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iocane_runtime::testing::{random_model, SynthLayer};
    use iocane_runtime::Shape;

    fn model_bytes(seed: u64) -> Vec<u8> {
        random_model(
            Shape::new(6, 6, 2),
            4,
            &[
                SynthLayer::Conv { filters: 4, k: 3, s: 2, p: 1, relu: true },
                SynthLayer::Dense { units: 8, relu: true },
            ],
            seed,
        )
        .emit()
    }

    fn random_image(model: &Model, rng: &mut SplitMix64) -> Vec<u8> {
        (0..model.input_len()).map(|_| rng.range(0, 255) as u8).collect()
    }

    fn in_ball(x: &[u8], p: &[u8], k: u8) -> bool {
        x.len() == p.len() && x.iter().zip(p).all(|(&a, &b)| a.abs_diff(b) <= k)
    }

    /// Runs all four attacks with fixed seeds.
    fn all(att: &mut Attacker<'_>, p: &[u8], label: usize, k: u8, seed: u64) -> [AttackResult; 4] {
        let mut rng = SplitMix64(seed);
        [
            att.fgsm(p, label, k),
            att.pgd(p, label, k, &PgdConfig::default(), &mut rng),
            att.square(p, label, k, &SquareConfig { queries: 300, p_init: 0.05 }, &mut rng),
            att.random_sampling(p, label, k, 100, &mut rng),
        ]
    }

    /// Random sampling in batches gives what drawing and querying one image at a time does
    /// (the same counterexample, query count, nearest miss and generator state afterwards),
    /// whether it succeeds early, late or never, and for budgets around the batch size.
    #[test]
    fn batched_random_sampling_is_one_at_a_time_sampling() {
        fn one_at_a_time(
            att: &mut Attacker<'_>,
            pixels: &[u8],
            label: usize,
            k: u8,
            n: usize,
            rng: &mut SplitMix64,
        ) -> AttackResult {
            let (mut res, done) = att.start(pixels, label, k);
            if done {
                return res;
            }
            let (lo, hi) = linf_ball(pixels, k);
            let mut x = vec![0u8; pixels.len()];
            for s in 0..n {
                random_point(&lo, &hi, s, rng, &mut x);
                if att.test(&x, label, &mut res) {
                    return res;
                }
            }
            res
        }
        let mut img_rng = SplitMix64(5);
        let (mut broke, mut held) = (0, 0);
        for seed in 0..12 {
            let bytes = model_bytes(seed);
            let model = Model::parse(&bytes).unwrap();
            let mut att = Attacker::new(&model);
            for (case, &n) in [1usize, 31, 32, 33, 100].iter().enumerate() {
                let p = random_image(&model, &mut img_rng);
                let label = att.classify(&p);
                let k = [8u8, 30, 60][case % 3];
                let (mut r1, mut r2) = (SplitMix64(seed * 7 + case as u64), SplitMix64(seed * 7 + case as u64));
                let want = one_at_a_time(&mut att, &p, label, k, n, &mut r1);
                let got = att.random_sampling(&p, label, k, n, &mut r2);
                assert_eq!(got, want, "seed {seed} n {n} k {k}");
                assert_eq!(got.nearest_miss, want.nearest_miss, "seed {seed} n {n} k {k}");
                assert_eq!(r2, r1, "generator state after seed {seed} n {n}");
                if got.success() {
                    broke += 1;
                } else {
                    held += 1;
                }
            }
        }
        assert!(broke > 0 && held > 0, "the cases must include successes and failures: {broke} / {held}");
    }

    #[test]
    fn counterexamples_are_real_and_inside_the_ball() {
        let mut rng = SplitMix64(1);
        let mut found = [0usize; 4];
        let mut tried = 0;
        for seed in 0..20 {
            let blob = model_bytes(seed);
            let model = Model::parse(&blob).unwrap();
            let mut att = Attacker::new(&model);
            for _ in 0..5 {
                let p = random_image(&model, &mut rng);
                let label = att.classify(&p);
                let k = 12;
                tried += 1;
                for (a, r) in all(&mut att, &p, label, k, seed).iter().enumerate() {
                    if let Some(x) = &r.counterexample {
                        found[a] += 1;
                        assert!(in_ball(x, &p, k));
                        assert_ne!(Attacker::new(&model).classify(x), label);
                    }
                }
            }
        }
        // Random models with a 12-level ball are fragile: every attack must find some.
        for (a, &f) in found.iter().enumerate() {
            assert!(f > 0, "attack {a} found nothing in {tried} samples: {found:?}");
        }
    }

    #[test]
    fn zero_radius_never_succeeds_on_correct_samples() {
        let mut rng = SplitMix64(2);
        let blob = model_bytes(3);
        let model = Model::parse(&blob).unwrap();
        let mut att = Attacker::new(&model);
        for s in 0..20 {
            let p = random_image(&model, &mut rng);
            let label = att.classify(&p);
            for r in all(&mut att, &p, label, 0, s) {
                assert!(r.counterexample.is_none());
                assert_eq!(r.queries, 1);
            }
            // A misclassified clean image is its own counterexample.
            for r in all(&mut att, &p, (label + 1) % 4, 0, s) {
                assert_eq!(r.counterexample.as_deref(), Some(&p[..]));
            }
        }
    }

    #[test]
    fn attacks_are_deterministic() {
        let mut rng = SplitMix64(4);
        let blob = model_bytes(5);
        let model = Model::parse(&blob).unwrap();
        for s in 0..5 {
            let p = random_image(&model, &mut rng);
            let label = Attacker::new(&model).classify(&p);
            let a = all(&mut Attacker::new(&model), &p, label, 6, s);
            let b = all(&mut Attacker::new(&model), &p, label, 6, s);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn margin_follows_the_tie_rule() {
        assert_eq!(margin(&[5, 5, 3], 0), 1);
        assert_eq!(margin(&[5, 5, 3], 1), 0);
        assert_eq!(margin(&[5, 7, 3], 2), -4);
        assert_eq!(square_p(0.05, 1, 10_000), 0.05);
        assert_eq!(square_p(0.05, 5_000, 10_000), 0.05 / 128.0);
        assert_eq!(square_p(0.05, 100, 1_000), 0.05 / 16.0);
    }
}

//! FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast
//! adaptive boundary attack"), L-infinity, targeted, as AutoAttack's standard suite runs it:
//! one run per target class (the classes with the largest clean logits), the first from the
//! clean image, later restarts from a random point at half the radius.
//!
//! FAB is a minimum-norm attack. Each iteration linearises the twin's logit gap
//! `g(x) = z_t - z_y` at the iterate `x` (straight-through gradients, pixel units), and
//! projects two points onto the hyperplane `g(x) + ∇g · (v - x) = 0` intersected with the
//! pixel box `[0, 255]`, each with the smallest L-infinity step ([`project_linf`]): the
//! iterate itself (`d1`) and the clean image (`d2`). The next iterate mixes the two with
//! overshoot `eta`:
//!
//! `x' = clip((x + eta d1)(1 - a) + (x0 + eta d2) a)`, `a = min(|d1| / (|d1| + |d2|), alpha_max)`,
//!
//! so it tracks the decision boundary while being pulled towards the clean image. When an
//! iterate is adversarial it is remembered by its norm and pulled back: `x' = x0 + beta (x - x0)`.
//! The reference's defaults are `alpha_max = 0.1`, `eta = 1.05`, `beta = 0.9`, 100 iterations.
//!
//! On the integer model: each iterate is rounded to the grid and judged by the int8 model
//! twice. Clipped into the ball of `k` levels it is a candidate counterexample (the first
//! misclassified one ends the attack). Unclipped, the int8 model's verdict on it is FAB's own
//! "is adversarial" test, which drives the backward step; such an image may lie outside the
//! ball and is never reported.

use super::{round_into, top_targets, uniform_offsets, AttackResult, Attacker};
use crate::ibp::linf_ball;
use crate::twin::Loss;
use iocane_runtime::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// Configuration of [`Attacker::fab_t`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FabConfig {
    /// Iterations per restart and target (AutoAttack: 100).
    pub iterations: usize,
    /// Runs per target: the first from the clean image, the others from random points.
    pub restarts: usize,
    /// Target classes: those with the largest int8 clean logits other than the label (9).
    pub targets: usize,
    /// The largest weight of the clean image's projection in a step (0.1).
    pub alpha_max: f32,
    /// Overshoot of the projections (1.05).
    pub eta: f32,
    /// Backward step towards the clean image after an adversarial iterate (0.9).
    pub beta: f32,
}

impl Default for FabConfig {
    /// AutoAttack's FAB-T: 100 iterations, 1 restart, 9 targets, `alpha_max = 0.1`,
    /// `eta = 1.05`, `beta = 0.9`.
    fn default() -> Self {
        FabConfig { iterations: 100, restarts: 1, targets: 9, alpha_max: 0.1, eta: 1.05, beta: 0.9 }
    }
}

/// The step `d` of smallest L-infinity norm from `p` (pixel units) with `w · d = c` and
/// `0 <= p + d <= 255`, written into `d`; where the box does not allow `w · d` to reach `c`,
/// the box's vertex in the direction of `c` (the largest `w · d` of that sign the box allows).
///
/// For a radius `r` the largest reachable `s · w · d` (`s` the sign of `c`) is
/// `F(r) = Σ_i |w_i| min(r, room_i)`, `room_i` being the distance from `p_i` to the box's end
/// in the direction `s · sign(w_i)`: each coordinate moves as far as it can towards that end.
/// `F` is continuous, piecewise linear and non-decreasing, so the smallest `r` with
/// `F(r) = |c|` lies on the segment where the sorted rooms cross it, and the step is
/// `d_i = s sign(w_i) min(r, room_i)`.
///
/// # Panics
/// If the slices' lengths differ.
pub fn project_linf(p: &[f32], w: &[f32], c: f32, d: &mut [f32]) {
    assert!(p.len() == w.len() && w.len() == d.len(), "projection: lengths differ");
    d.iter_mut().for_each(|v| *v = 0.0);
    if c == 0.0 || !c.is_finite() {
        return;
    }
    let s = c.signum();
    // (room, |w|, direction) of every coordinate the hyperplane depends on.
    let mut coords: Vec<(f64, f64, usize)> = Vec::with_capacity(p.len());
    for (i, (&pi, &wi)) in p.iter().zip(w).enumerate() {
        if wi == 0.0 || !wi.is_finite() {
            continue;
        }
        let up = s * wi.signum() > 0.0;
        let room = if up { 255.0 - pi } else { pi }.max(0.0) as f64;
        coords.push((room, wi.abs() as f64, i));
    }
    let dir = |i: usize| s * w[i].signum();
    let need = c.abs() as f64;
    let capacity: f64 = coords.iter().map(|&(room, a, _)| room * a).sum();
    if capacity <= need {
        for &(room, _, i) in &coords {
            d[i] = dir(i) * room as f32;
        }
        return;
    }
    coords.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    // Walk the rooms upwards: `below` = Σ |w| room over coordinates already at their end,
    // `rest` = Σ |w| over those still moving with r.
    let mut below = 0f64;
    let mut rest: f64 = coords.iter().map(|&(_, a, _)| a).sum();
    let mut r = coords.last().map_or(0.0, |c| c.0);
    for &(room, a, _) in &coords {
        if below + room * rest >= need {
            r = (need - below) / rest;
            break;
        }
        below += room * a;
        rest -= a;
    }
    for &(room, _, i) in &coords {
        d[i] = dir(i) * room.min(r) as f32;
    }
}

/// The largest absolute entry (at least `1e-8`, as in the reference).
fn linf(d: &[f32]) -> f32 {
    d.iter().fold(1e-8f32, |a, &b| a.max(b.abs()))
}

impl Attacker<'_> {
    /// FAB-T (see the module documentation): for each of `cfg.targets` target classes (the
    /// largest int8 clean logits other than the label, ties to the lowest index),
    /// `cfg.restarts` runs of `cfg.iterations` iterations. Returns the first counterexample
    /// found inside the ball of `k` levels.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn fab_t(&mut self, pixels: &[u8], label: usize, k: u8, cfg: &FabConfig, rng: &mut SplitMix64) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done || cfg.iterations == 0 {
            return res;
        }
        // `start` left the clean image's logits in `self.logits`.
        let targets = top_targets(&self.logits, label, cfg.targets);
        let (lo, hi) = linf_ball(pixels, k);
        for target in targets {
            for r in 0..cfg.restarts {
                if self.fab_run(pixels, (&lo, &hi), label, k, target, r > 0, cfg, rng, &mut res) {
                    return res;
                }
            }
        }
        res
    }

    /// One FAB-T run towards `target`; true when a counterexample was recorded in `res`.
    #[allow(clippy::too_many_arguments)]
    fn fab_run(
        &mut self,
        pixels: &[u8],
        (lo, hi): (&[u8], &[u8]),
        label: usize,
        k: u8,
        target: usize,
        random_start: bool,
        cfg: &FabConfig,
        rng: &mut SplitMix64,
        res: &mut AttackResult,
    ) -> bool {
        let n = pixels.len();
        let x0: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
        let mut x = x0.clone();
        if random_start {
            // Uniform in [-1, 1], scaled to a largest offset of half the radius.
            let (t, tmax) = uniform_offsets(rng, n);
            for i in 0..n {
                x[i] = (x0[i] + k as f32 * t[i] / tmax * 0.5).clamp(0.0, 255.0);
            }
        }
        let (mut d1, mut d2) = (vec![0f32; n], vec![0f32; n]);
        let (mut cand, mut inside) = (vec![0u8; n], vec![0u8; n]);
        let mut last: Option<Vec<u8>> = None;
        let mut scaled = vec![0f32; n];
        for _ in 0..cfg.iterations {
            for (s, &v) in scaled.iter_mut().zip(&x) {
                *s = v / 255.0;
            }
            let (z, g) = self.twin.input_gradient(&scaled, label, Loss::LogitGap { target });
            res.gradients += 1;
            // The gap and its gradient in pixel units: the hyperplane is w · v = w · x - gap.
            let gap = z[target] - z[label];
            let w: Vec<f32> = g.iter().map(|&v| v / 255.0).collect();
            let shift: f64 =
                w.iter().zip(x.iter().zip(&x0)).map(|(&wi, (&xi, &x0i))| wi as f64 * (xi - x0i) as f64).sum();
            project_linf(&x, &w, -gap, &mut d1);
            project_linf(&x0, &w, (shift - gap as f64) as f32, &mut d2);
            let (a1, a2) = (linf(&d1), linf(&d2));
            let alpha = (a1 / (a1 + a2)).clamp(0.0, cfg.alpha_max);
            for i in 0..n {
                let v = (x[i] + cfg.eta * d1[i]) * (1.0 - alpha) + (x0[i] + cfg.eta * d2[i]) * alpha;
                x[i] = v.clamp(0.0, 255.0);
            }
            round_into(&x, &mut cand);
            for i in 0..n {
                inside[i] = cand[i].clamp(lo[i], hi[i]);
            }
            if last.as_deref() != Some(&*inside) {
                if self.test(&inside, label, res) {
                    return true;
                }
                match &mut last {
                    Some(l) => l.copy_from_slice(&inside),
                    None => last = Some(inside.clone()),
                }
            }
            // FAB's own test of the unclipped iterate (outside the ball it is never reported).
            let adversarial = cand != inside && self.query(&cand, res) != label;
            if adversarial {
                for i in 0..n {
                    x[i] = x0[i] + (x[i] - x0[i]) * cfg.beta;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The largest `s · w · d` the box allows with `|d| <= r` (the function the projection
    /// inverts), computed coordinate by coordinate.
    fn reach(p: &[f32], w: &[f32], s: f32, r: f64) -> f64 {
        p.iter()
            .zip(w)
            .map(|(&pi, &wi)| {
                let room = if s * wi.signum() > 0.0 { 255.0 - pi } else { pi } as f64;
                wi.abs() as f64 * room.max(0.0).min(r)
            })
            .sum()
    }

    proptest! {
        #[test]
        fn projection_is_feasible_and_minimal(
            p in prop::collection::vec(0f32..=255.0, 1..12),
            w_seed in prop::collection::vec(-3f32..3.0, 12),
            zero_mask in prop::collection::vec(any::<bool>(), 12),
            c in -2000f32..2000.0,
        ) {
            let n = p.len();
            let w: Vec<f32> = (0..n).map(|i| if zero_mask[i] && i % 3 == 0 { 0.0 } else { w_seed[i] }).collect();
            let mut d = vec![0f32; n];
            project_linf(&p, &w, c, &mut d);
            // Inside the box, zero where w is zero.
            for i in 0..n {
                prop_assert!(p[i] + d[i] >= -1e-3 && p[i] + d[i] <= 255.0 + 1e-3, "leaves the box at {i}");
                if w[i] == 0.0 {
                    prop_assert_eq!(d[i], 0.0);
                }
            }
            let wd: f64 = w.iter().zip(&d).map(|(&a, &b)| a as f64 * b as f64).sum();
            let s = c.signum();
            let capacity = reach(&p, &w, s, f64::INFINITY);
            let norm = d.iter().fold(0f32, |a, &b| a.max(b.abs())) as f64;
            if capacity > c.abs() as f64 {
                // On the hyperplane ...
                prop_assert!((wd - c as f64).abs() <= 1e-3 * (1.0 + c.abs() as f64), "w.d = {wd}, c = {c}");
                // ... and no smaller radius reaches it.
                if norm > 1e-3 {
                    prop_assert!(reach(&p, &w, s, norm * (1.0 - 1e-3)) < c.abs() as f64, "not minimal: {norm}");
                }
            } else {
                // The vertex in c's direction: every coordinate at its end.
                prop_assert!((wd * s as f64 - capacity).abs() <= 1e-3 * (1.0 + capacity), "w.d = {wd}, capacity {capacity}");
            }
        }
    }

    #[test]
    fn projection_on_a_hand_case() {
        // w = (1, 2), p = (10, 10): reach c = 30 with |d| = r: 1 r + 2 r = 30, r = 10.
        let mut d = [0f32; 2];
        project_linf(&[10.0, 10.0], &[1.0, 2.0], 30.0, &mut d);
        assert_eq!(d, [10.0, 10.0]);
        // The second coordinate has only 5 levels of room below: 5 * 2 + r = 20 with r = 10 for the first.
        project_linf(&[100.0, 5.0], &[1.0, 2.0], -20.0, &mut d);
        assert_eq!(d, [-10.0, -5.0]);
        // Out of reach: the vertex.
        project_linf(&[250.0, 0.0], &[1.0, -1.0], 100.0, &mut d);
        assert_eq!(d, [5.0, 0.0]);
        project_linf(&[1.0, 2.0], &[1.0, -1.0], 0.0, &mut d);
        assert_eq!(d, [0.0, 0.0]);
    }
}

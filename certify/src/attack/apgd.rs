//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
//! of diverse parameter-free attacks"), L-infinity, in pixel units on the float twin's
//! straight-through gradients, every iterate judged on the int8 model.
//!
//! The schedule is the reference implementation's (`fra31/auto-attack`, `autopgd_base.py`):
//!
//! - start uniformly in the ball, scaled so that the largest offset is exactly `k` levels;
//! - step size `eta = 2k` levels; the first step is a plain sign step, later ones add
//!   momentum: `z = P(x + eta sign(g))`, `x' = P(x + alpha (z - x) + (1 - alpha)(x - x_prev))`
//!   with `alpha = 0.75` and `P` the projection onto the ball clipped to `[0, 255]`;
//! - checkpoints after `w_0 = max(floor(0.22 N), 1)` iterations, then periods shrinking by
//!   `max(floor(0.03 N), 1)` down to `max(floor(0.06 N), 1)` (the paper's
//!   `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`);
//! - at a checkpoint the step size halves, and the iterate and its gradient are reset to the
//!   best point so far, when the loss increased in at most `rho = 0.75` of the period's steps,
//!   or when the step size was not halved at the previous checkpoint and the best loss has not
//!   improved since.
//!
//! The losses are the twin's (cross-entropy, DLR, targeted DLR): the schedule runs exactly as
//! published on the differentiable twin. Loss values and logit gradients are formed in `f64`
//! ([`Loss::value_f64`], [`crate::twin::FloatTwin::input_direction`]), so that a saturated
//! softmax (an IBP-trained model's confident logits) does not round the cross-entropy and its
//! gradient to zero, which would stall APGD-CE. Every iterate is rounded to the integer grid and run
//! on the int8 model; the first one it misclassifies is the counterexample.

use super::{round_into, top_targets, uniform_offsets, AttackResult, Attacker};
use crate::ibp::linf_ball;
use crate::twin::Loss;
use iocane_runtime::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// The loss APGD ascends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApgdLoss {
    /// Softmax cross-entropy of the true label (APGD-CE).
    CrossEntropy,
    /// The untargeted difference of logits ratio (APGD-DLR).
    Dlr,
    /// The targeted difference of logits ratio against each of the `targets` classes with the
    /// largest clean logits other than the label, one run per target (APGD-T; AutoAttack's
    /// standard suite uses 9).
    TargetedDlr {
        /// How many target classes to try.
        targets: usize,
    },
}

/// Configuration of [`Attacker::apgd`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApgdConfig {
    /// Iterations per restart (and per target): `N` (AutoAttack: 100).
    pub iterations: usize,
    /// Restarts, each from a fresh random point in the ball (AutoAttack's standard suite: 1).
    pub restarts: usize,
    /// The checkpoint condition's fraction `rho` (0.75).
    pub rho: f32,
    /// The momentum weight `alpha` (0.75).
    pub alpha: f32,
    /// The loss.
    pub loss: ApgdLoss,
}

impl Default for ApgdConfig {
    /// AutoAttack's APGD-CE: 100 iterations, 1 restart, `rho = alpha = 0.75`.
    fn default() -> Self {
        ApgdConfig { iterations: 100, restarts: 1, rho: 0.75, alpha: 0.75, loss: ApgdLoss::CrossEntropy }
    }
}

/// The iterations (0-based, counted after the first step) at which APGD checks its step
/// size for a budget of `n` iterations: the reference implementation's checkpoints.
pub fn checkpoints(n: usize) -> Vec<usize> {
    let (mut period, min, decr) = ((22 * n / 100).max(1), (6 * n / 100).max(1), (3 * n / 100).max(1));
    let mut out = Vec::new();
    let mut at = period;
    while at <= n {
        out.push(at - 1);
        period = period.saturating_sub(decr).max(min);
        at += period;
    }
    out
}

impl Attacker<'_> {
    /// APGD (see the module documentation) with `cfg`'s loss; for [`ApgdLoss::TargetedDlr`],
    /// one run of `cfg.restarts` restarts per target class, the targets being the classes with
    /// the largest int8 logits on the clean image (ties to the lowest index). Returns the first
    /// counterexample found.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels or `label` is out of range.
    pub fn apgd(&mut self, pixels: &[u8], label: usize, k: u8, cfg: &ApgdConfig, rng: &mut SplitMix64) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done || cfg.iterations == 0 {
            return res;
        }
        let losses: Vec<Loss> = match cfg.loss {
            ApgdLoss::CrossEntropy => vec![Loss::CrossEntropy],
            ApgdLoss::Dlr => vec![Loss::Dlr],
            // `start` left the clean image's logits in `self.logits`.
            ApgdLoss::TargetedDlr { targets } => top_targets(&self.logits, label, targets)
                .into_iter()
                .map(|target| Loss::DlrTargeted { target })
                .collect(),
        };
        let (lo, hi) = linf_ball(pixels, k);
        let ball = Ball {
            lo: lo.iter().map(|&v| v as f32).collect(),
            hi: hi.iter().map(|&v| v as f32).collect(),
            clean: pixels.iter().map(|&p| p as f32).collect(),
        };
        for loss in losses {
            for _ in 0..cfg.restarts {
                if self.apgd_run(&ball, label, k, loss, cfg, rng, &mut res) {
                    return res;
                }
            }
        }
        res
    }

    /// One APGD run from a random start; true when a counterexample was recorded in `res`.
    #[allow(clippy::too_many_arguments)]
    fn apgd_run(
        &mut self,
        ball: &Ball,
        label: usize,
        k: u8,
        loss: Loss,
        cfg: &ApgdConfig,
        rng: &mut SplitMix64,
        res: &mut AttackResult,
    ) -> bool {
        let n = ball.clean.len();
        let eps = k as f32;
        // Uniform in [-1, 1], scaled so that the largest offset is exactly eps.
        let (t, tmax) = uniform_offsets(rng, n);
        let mut x: Vec<f32> = (0..n).map(|i| ball.project(i, ball.clean[i] + eps * t[i] / tmax)).collect();
        let mut cand = vec![0u8; n];
        let mut last: Option<Vec<u8>> = None;
        let (mut loss_now, mut grad) = self.apgd_eval(&x, label, loss, res);
        if self.apgd_test(&x, label, &mut cand, &mut last, res) {
            return true;
        }
        let (mut x_best, mut grad_best, mut loss_best) = (x.clone(), grad.clone(), loss_now);
        let loss_start = loss_now;
        let mut step = 2.0 * eps;
        let mut x_old = x.clone();
        let checks = checkpoints(cfg.iterations);
        let mut checks = checks.iter().peekable();
        let mut period_start = 0;
        let mut loss_best_last_check = loss_best;
        let mut reduced_last_check = true;
        let mut loss_steps: Vec<f64> = Vec::with_capacity(cfg.iterations);
        let mut next = vec![0f32; n];
        for i in 0..cfg.iterations {
            let a = if i > 0 { cfg.alpha } else { 1.0 };
            for j in 0..n {
                let g = grad[j];
                let s = if g > 0.0 {
                    step
                } else if g < 0.0 {
                    -step
                } else {
                    0.0
                };
                let z = ball.project(j, x[j] + s);
                next[j] = ball.project(j, x[j] + (z - x[j]) * a + (x[j] - x_old[j]) * (1.0 - a));
            }
            x_old.copy_from_slice(&x);
            x.copy_from_slice(&next);
            (loss_now, grad) = self.apgd_eval(&x, label, loss, res);
            if self.apgd_test(&x, label, &mut cand, &mut last, res) {
                return true;
            }
            loss_steps.push(loss_now);
            if loss_now > loss_best {
                x_best.copy_from_slice(&x);
                grad_best.copy_from_slice(&grad);
                loss_best = loss_now;
            }
            if checks.next_if_eq(&&i).is_some() {
                let period = i + 1 - period_start;
                period_start = i + 1;
                // Steps of the period whose loss rose over the previous step's (the step
                // before the first iteration is the start).
                let rose = (0..period)
                    .filter(|&c| {
                        let cur = loss_steps[i - c];
                        let prev = if i > c { loss_steps[i - c - 1] } else { loss_start };
                        cur > prev
                    })
                    .count();
                let oscillating = rose as f64 <= period as f64 * cfg.rho as f64;
                let no_improvement = !reduced_last_check && loss_best_last_check >= loss_best;
                let reduce = oscillating || no_improvement;
                reduced_last_check = reduce;
                loss_best_last_check = loss_best;
                if reduce {
                    step /= 2.0;
                    x.copy_from_slice(&x_best);
                    grad.copy_from_slice(&grad_best);
                }
            }
        }
        false
    }

    /// The twin's loss (in `f64`) and its gradient's direction at pixel-unit `x`.
    fn apgd_eval(&mut self, x: &[f32], label: usize, loss: Loss, res: &mut AttackResult) -> (f64, Vec<f32>) {
        let scaled: Vec<f32> = x.iter().map(|&v| v / 255.0).collect();
        let (logits, g) = self.twin.input_direction(&scaled, label, loss);
        res.gradients += 1;
        (loss.value_f64(&logits, label), g)
    }

    /// Rounds `x` and runs it on the int8 model unless it is the last image tried.
    fn apgd_test(
        &mut self,
        x: &[f32],
        label: usize,
        cand: &mut [u8],
        last: &mut Option<Vec<u8>>,
        res: &mut AttackResult,
    ) -> bool {
        round_into(x, cand);
        if last.as_deref() == Some(&*cand) {
            return false;
        }
        if self.test(cand, label, res) {
            return true;
        }
        match last {
            Some(l) => l.copy_from_slice(cand),
            None => *last = Some(cand.to_vec()),
        }
        false
    }
}

/// The ball in pixel units.
struct Ball {
    lo: Vec<f32>,
    hi: Vec<f32>,
    clean: Vec<f32>,
}

impl Ball {
    /// Projection of coordinate `i` onto the ball clipped to `[0, 255]`.
    fn project(&self, i: usize, v: f32) -> f32 {
        v.clamp(self.lo[i], self.hi[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_reference_schedule() {
        // p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of 100 iterations.
        assert_eq!(checkpoints(100), vec![21, 40, 56, 69, 79, 86, 92, 98]);
        assert_eq!(checkpoints(1), vec![0]);
        assert_eq!(checkpoints(10), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(checkpoints(0).is_empty());
    }
}

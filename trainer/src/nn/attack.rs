//! L-infinity adversarial attacks on the float model, in pixel space (`[0, 1]`).
//!
//! - [`Attack::Fgsm`]: `x + eps * sign(grad)` (Goodfellow et al. 2015).
//! - [`Attack::FgsmRs`]: FGSM from a uniform random start in the eps-ball with step `alpha`
//!   (default `1.25 * eps`) — "fast adversarial training" (Wong, Rice & Kolter 2020).
//! - [`Attack::Pgd`]: projected gradient descent (Madry et al. 2018) with optional random
//!   start and restarts; with several restarts each sample keeps its worst example (the
//!   first misclassified one found, otherwise the highest-loss one).
//! - [`pgd_targeted`]: PGD towards a chosen class per sample (descends that class's loss).
//!
//! Every iterate is projected onto the eps-ball around the clean input **and** onto
//! `[0, 1]`. With `snap` the result is finally rounded to the 8-bit pixel grid
//! (`round(x * 255) / 255`, what a device that reads bytes sees), choosing grid levels that
//! stay inside the ball (exactly so when the clean input is itself on the grid).
//!
//! Gradients are of the mean cross-entropy loss from [`Network::loss_and_grads`], so
//! results are deterministic (for a given `Rng` state) whatever the number of threads.
//! Each random start draws one `u64` from `rng` (see [`random_start`]).

use super::{Network, Tensor, Want};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}

/// An attack configuration (serde JSON with tag `"kind"`: `"fgsm"`, `"fgsm_rs"`, `"pgd"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attack {
    /// Fast gradient sign method from the clean input.
    Fgsm {
        /// L-infinity radius.
        eps: f32,
        /// Round the result to the 8-bit grid.
        #[serde(default)]
        snap: bool,
    },
    /// FGSM from a uniform random start in the ball (fast adversarial training).
    FgsmRs {
        /// L-infinity radius.
        eps: f32,
        /// Step size (Wong et al. use `1.25 * eps`).
        alpha: f32,
        /// Round the result to the 8-bit grid.
        #[serde(default)]
        snap: bool,
    },
    /// Projected gradient descent with sign steps.
    Pgd {
        /// L-infinity radius.
        eps: f32,
        /// Step size per iteration.
        step_size: f32,
        /// Number of gradient steps.
        steps: usize,
        /// Start from a uniform random point in the ball (else from the clean input).
        #[serde(default = "default_true")]
        random_start: bool,
        /// Number of independent runs (>= 1); per sample the worst result is kept.
        #[serde(default = "default_one")]
        restarts: usize,
        /// Round the result to the 8-bit grid.
        #[serde(default)]
        snap: bool,
    },
}

impl Attack {
    /// FGSM with radius `eps`.
    pub fn fgsm(eps: f32) -> Attack {
        Attack::Fgsm { eps, snap: false }
    }

    /// FGSM with random start, `alpha = 1.25 * eps`.
    pub fn fgsm_rs(eps: f32) -> Attack {
        Attack::FgsmRs { eps, alpha: 1.25 * eps, snap: false }
    }

    /// PGD with `steps` steps of size `2.5 * eps / steps` (Madry et al.'s rule), random
    /// start, one restart.
    pub fn pgd(eps: f32, steps: usize) -> Attack {
        Attack::Pgd {
            eps,
            step_size: 2.5 * eps / steps.max(1) as f32,
            steps,
            random_start: true,
            restarts: 1,
            snap: false,
        }
    }

    /// The same attack with snapping to the 8-bit grid switched on or off.
    pub fn with_snap(self, on: bool) -> Attack {
        match self {
            Attack::Fgsm { eps, .. } => Attack::Fgsm { eps, snap: on },
            Attack::FgsmRs { eps, alpha, .. } => Attack::FgsmRs { eps, alpha, snap: on },
            Attack::Pgd { eps, step_size, steps, random_start, restarts, .. } => {
                Attack::Pgd { eps, step_size, steps, random_start, restarts, snap: on }
            }
        }
    }

    /// The L-infinity radius.
    pub fn eps(&self) -> f32 {
        match *self {
            Attack::Fgsm { eps, .. } | Attack::FgsmRs { eps, .. } | Attack::Pgd { eps, .. } => eps,
        }
    }

    /// Number of forward+backward passes over the batch one [`Attack::perturb`] costs
    /// (PGD with restarts adds one forward-only evaluation per restart).
    pub fn gradient_passes(&self) -> usize {
        match *self {
            Attack::Fgsm { .. } | Attack::FgsmRs { .. } => 1,
            Attack::Pgd { steps, restarts, .. } => steps * restarts.max(1),
        }
    }

    /// Computes adversarial examples for the batch `x` with true `labels`. The result has
    /// the shape of `x`, lies in `[0, 1]` and within `eps` of `x` (L-infinity).
    ///
    /// # Panics
    /// If the batch or labels do not fit the network (see [`Network::check_batch`]).
    pub fn perturb(&self, net: &Network, x: &Tensor, labels: &[usize], rng: &mut Rng) -> Tensor {
        match *self {
            Attack::Fgsm { eps, snap } => fgsm(net, x, labels, eps, snap),
            Attack::FgsmRs { eps, alpha, snap } => {
                let start = random_start(x, eps, rng);
                let mut adv = sign_step(net, &start, labels, alpha, x, eps);
                if snap {
                    snap_to_grid(&mut adv, x, eps);
                }
                adv
            }
            Attack::Pgd { eps, step_size, steps, random_start: rs, restarts, snap } => {
                pgd(net, x, labels, eps, step_size, steps, rs, restarts, snap, rng)
            }
        }
    }
}

/// FGSM: `clip(x + eps * sign(grad_x loss))` (deterministic, so no `Rng`).
pub fn fgsm(net: &Network, x: &Tensor, labels: &[usize], eps: f32, snap: bool) -> Tensor {
    let mut adv = sign_step(net, x, labels, eps, x, eps);
    if snap {
        snap_to_grid(&mut adv, x, eps);
    }
    adv
}

/// Targeted PGD: `steps` signed steps of size `step_size` that **descend** the cross-entropy
/// of `targets` (one class per sample), from a uniform random start in the eps-ball around
/// `x` (one `u64` drawn from `rng`), each iterate projected onto the ball and `[0, 1]`; with
/// `snap` the result is rounded to the 8-bit grid inside the ball. The non-robust dataset
/// D_NR of Ilyas et al. 2019 is made of such examples relabelled with their target.
///
/// # Panics
/// If the batch or targets do not fit the network (see [`Network::check_batch`]).
#[allow(clippy::too_many_arguments)]
pub fn pgd_targeted(
    net: &Network,
    x: &Tensor,
    targets: &[usize],
    eps: f32,
    step_size: f32,
    steps: usize,
    snap: bool,
    rng: &mut Rng,
) -> Tensor {
    let mut adv = random_start(x, eps, rng);
    let mut grad = Tensor::zeros(x.shape);
    for _ in 0..steps {
        // A negative step moves against the gradient of the targets' loss.
        sign_step_in_place(net, &mut adv, targets, -step_size, x, eps, &mut grad);
    }
    if snap {
        snap_to_grid(&mut adv, x, eps);
    }
    adv
}

/// PGD (see [`Attack::Pgd`] for the parameters).
#[allow(clippy::too_many_arguments)]
fn pgd(
    net: &Network,
    x: &Tensor,
    labels: &[usize],
    eps: f32,
    step_size: f32,
    steps: usize,
    use_random_start: bool,
    restarts: usize,
    snap: bool,
    rng: &mut Rng,
) -> Tensor {
    let restarts = restarts.max(1);
    let mut best: Option<(Tensor, Vec<f32>, Vec<bool>)> = None;
    for _ in 0..restarts {
        let mut adv = if use_random_start { random_start(x, eps, rng) } else { x.clone() };
        let mut grad = Tensor::zeros(x.shape);
        for _ in 0..steps {
            sign_step_in_place(net, &mut adv, labels, step_size, x, eps, &mut grad);
        }
        if snap {
            snap_to_grid(&mut adv, x, eps);
        }
        if restarts == 1 {
            return adv;
        }
        let r = net.loss_and_grads(&adv, labels, Want::NONE);
        let wrong: Vec<bool> = r.predictions.iter().zip(labels).map(|(p, l)| p != l).collect();
        match best.as_mut() {
            None => best = Some((adv, r.sample_losses, wrong)),
            Some((bx, bl, bw)) => {
                for i in 0..x.n() {
                    let better = !bw[i] && (wrong[i] || r.sample_losses[i] > bl[i]);
                    if better {
                        bx.sample_mut(i).copy_from_slice(adv.sample(i));
                        bl[i] = r.sample_losses[i];
                        bw[i] = wrong[i];
                    }
                }
            }
        }
    }
    best.map(|b| b.0).unwrap_or_else(|| x.clone())
}

/// `x0 + U(-eps, eps)` per value, projected onto the ball and `[0, 1]`.
///
/// Draws one `u64` from `rng` and derives an independent stream per sample from it
/// (`Rng::new(seed).fork(sample_index)`), so the noise is deterministic and generated in
/// parallel.
pub fn random_start(x0: &Tensor, eps: f32, rng: &mut Rng) -> Tensor {
    noisy_copy(x0, rng, |c, r| clamp_ball(c + r.uniform_range_f32(-eps, eps), c, eps))
}

/// `f(c, r)` for every value `c` of `x0`, where `r` is sample `i`'s own stream
/// `Rng::new(seed).fork(i)` and `seed` is one `u64` drawn from `rng`: deterministic noise
/// generated in parallel (the random starts of PGD and TRADES).
pub(crate) fn noisy_copy(x0: &Tensor, rng: &mut Rng, f: impl Fn(f32, &mut Rng) -> f32 + Sync) -> Tensor {
    let base = Rng::new(rng.next_u64());
    let mut x = x0.clone();
    let len = x0.sample_len().max(1);
    x.data.par_chunks_mut(len).zip(x0.data.par_chunks(len)).enumerate().for_each(|(i, (xs, cs))| {
        let mut r = base.fork(i as u64);
        for (v, &c) in xs.iter_mut().zip(cs) {
            *v = f(c, &mut r);
        }
    });
    x
}

/// Clamps `v` to `[max(c - eps, 0), min(c + eps, 1)]` (branch-free selects).
#[inline(always)]
pub(crate) fn clamp_ball(v: f32, c: f32, eps: f32) -> f32 {
    let lo = c - eps;
    let lo = if lo > 0.0 { lo } else { 0.0 };
    let hi = c + eps;
    let hi = if hi < 1.0 { hi } else { 1.0 };
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// Projects `x` onto `{ |x - x0|_inf <= eps } ∩ [0, 1]^d` (element-wise clamp).
pub fn project(x: &mut Tensor, x0: &Tensor, eps: f32) {
    assert_eq!(x.shape, x0.shape, "project: shape mismatch");
    for (v, &c) in x.data.iter_mut().zip(&x0.data) {
        *v = clamp_ball(*v, c, eps);
    }
}

/// Rounds `x` to the 8-bit grid `k / 255`, restricted to the levels within `eps` of `x0`
/// and in `[0, 1]` (a level within 1e-4 of a byte step of the ball's edge counts as inside,
/// absorbing float rounding in `x0 ± eps`). If no level lies in the ball (only possible when
/// `x0` is off-grid and `eps < 1/255`), the level nearest to `x0` is used.
pub fn snap_to_grid(x: &mut Tensor, x0: &Tensor, eps: f32) {
    assert_eq!(x.shape, x0.shape, "snap_to_grid: shape mismatch");
    for (v, &c) in x.data.iter_mut().zip(&x0.data) {
        let kmin = ((c - eps) * 255.0 - 1e-4).ceil().max(0.0);
        let kmax = ((c + eps) * 255.0 + 1e-4).floor().min(255.0);
        let k =
            if kmin <= kmax { (*v * 255.0).round().clamp(kmin, kmax) } else { (c * 255.0).round().clamp(0.0, 255.0) };
        *v = k / 255.0;
    }
}

/// One signed-gradient step from `x`, projected onto the ball around `x0` and `[0, 1]`.
fn sign_step(net: &Network, x: &Tensor, labels: &[usize], step: f32, x0: &Tensor, eps: f32) -> Tensor {
    let mut out = x.clone();
    let mut grad = Tensor::zeros(x.shape);
    sign_step_in_place(net, &mut out, labels, step, x0, eps, &mut grad);
    out
}

/// In-place version of [`sign_step`]; `grad` is scratch space for the input gradient.
fn sign_step_in_place(
    net: &Network,
    x: &mut Tensor,
    labels: &[usize],
    step: f32,
    x0: &Tensor,
    eps: f32,
    grad: &mut Tensor,
) {
    net.loss_and_input_grad_into(x, labels, grad);
    signed_update(x, grad, step, x0, eps);
}

/// `x = clamp_ball(x + step * sign(grad), x0, eps)` element-wise (the update of every
/// signed-gradient attack, whatever loss `grad` is of).
pub(crate) fn signed_update(x: &mut Tensor, grad: &Tensor, step: f32, x0: &Tensor, eps: f32) {
    const BLOCK: usize = 8192;
    x.data.par_chunks_mut(BLOCK).zip(grad.data.par_chunks(BLOCK)).zip(x0.data.par_chunks(BLOCK)).for_each(
        |((xs, gs), cs)| {
            // Fixed-width lanes so the loop vectorises.
            let mut xi = xs.chunks_exact_mut(8);
            let mut gi = gs.chunks_exact(8);
            let mut ci = cs.chunks_exact(8);
            for ((xv, gv), cv) in (&mut xi).zip(&mut gi).zip(&mut ci) {
                let xv: &mut [f32; 8] = xv.try_into().expect("lane");
                let gv: &[f32; 8] = gv.try_into().expect("lane");
                let cv: &[f32; 8] = cv.try_into().expect("lane");
                for q in 0..8 {
                    xv[q] = signed_step(xv[q], gv[q], cv[q], step, eps);
                }
            }
            for ((v, &g), &c) in xi.into_remainder().iter_mut().zip(gi.remainder()).zip(ci.remainder()) {
                *v = signed_step(*v, g, c, step, eps);
            }
        },
    );
}

/// `clamp_ball(v + step * sign(g), c, eps)` with `sign(0) = 0`, written as selects.
#[inline(always)]
fn signed_step(v: f32, g: f32, c: f32, step: f32, eps: f32) -> f32 {
    let s = if g > 0.0 { step } else { 0.0 } - if g < 0.0 { step } else { 0.0 };
    clamp_ball(v + s, c, eps)
}

//! TRADES adversarial training (Zhang et al., ICML 2019, "Theoretically Principled Trade-off
//! between Robustness and Accuracy"): the loss and its inner attack.
//!
//! # Loss
//! For a clean batch `x`, labels `y` and adversarial examples `x'`,
//! `L = mean_s [ CE(z_s, y_s) + β · KL(p_s ‖ q_s) ]` with `z = f(x)`, `z' = f(x')`,
//! `p = softmax(z)`, `q = softmax(z')`. As in the authors' code, the gradient flows through
//! **both** arguments of the KL term:
//! - `∂L/∂z'_i = β (q_i - p_i)`,
//! - `∂L/∂z_i = (p_i - [i = y]) + β p_i (log p_i - log q_i - KL(p ‖ q))`.
//!
//! [`Network::trades_loss_and_grads`] runs `x` and `x'` of a chunk as one double-size chunk
//! through the network's own forward and backward passes (one backward for both terms), in
//! the fixed chunks of [`Network::chunk_size`], combined in chunk order: bit-identical for any
//! thread count.
//!
//! # Attack
//! [`trades_attack`] maximises `KL(p ‖ softmax(f(x')))` over the eps-ball (intersected with
//! `[0, 1]`) with signed gradient steps, from `x + 0.001 · N(0, 1)` (the published start: at
//! `x' = x` the KL gradient is exactly zero), `p` held fixed. The gradient of the KL in `x'` is
//! that of the cross-entropy against the soft target `p`
//! ([`Network::soft_loss_and_input_grad_into`]).

use super::attack::{clamp_ball, noisy_copy, signed_update};
use super::engine::{backward_chunk, forward_chunk, softmax_parts, with_workspace};
use super::network::same_structure;
use super::{Grads, Network, Tensor};
use crate::rng::Rng;
use rayon::prelude::*;

/// Standard deviation of the Gaussian start of [`trades_attack`] (the authors' 0.001).
pub const TRADES_START_STD: f32 = 0.001;

/// Result of [`Network::trades_loss_and_grads`].
#[derive(Clone, Debug, PartialEq)]
pub struct TradesLossGrads {
    /// Mean of `CE(clean) + β · KL(p ‖ q)` over the batch.
    pub loss: f32,
    /// Mean clean cross-entropy.
    pub natural_loss: f32,
    /// Mean `KL(p ‖ q)` between the clean and the adversarial predictions.
    pub robust_loss: f32,
    /// Samples whose clean prediction equals the label.
    pub correct: usize,
    /// Gradients of the mean loss with respect to the parameters (if requested).
    pub param_grads: Option<Grads>,
}

/// Softmax of `z` into `p` and the log-sum-exp of `z` (numerically stable, the engine's
/// [`softmax_parts`]).
fn softmax_into(z: &[f32], p: &mut [f32]) -> f32 {
    let (_, m, sum) = softmax_parts(z);
    let inv = 1.0 / sum;
    for (pv, &v) in p.iter_mut().zip(z) {
        *pv = (v - m).exp() * inv;
    }
    m + sum.ln()
}

/// The TRADES terms of one sample: returns `(CE(z, y), KL(p ‖ q))` and, if `dz` / `dza` are
/// given, writes the gradients of `scale · (CE + β KL)` with respect to `z` and `z'`.
fn sample_terms(
    z: &[f32],
    za: &[f32],
    y: usize,
    beta: f32,
    scale: f32,
    grads: Option<(&mut [f32], &mut [f32])>,
) -> (f32, f32) {
    let k = z.len();
    let mut p = vec![0.0f32; k];
    let mut q = vec![0.0f32; k];
    let lse = softmax_into(z, &mut p);
    let lse_a = softmax_into(za, &mut q);
    let ce = lse - z[y];
    // log p_i - log q_i = (z_i - lse) - (z'_i - lse').
    let mut kl = 0.0f32;
    for i in 0..k {
        kl += p[i] * ((z[i] - lse) - (za[i] - lse_a));
    }
    if let Some((dz, dza)) = grads {
        for i in 0..k {
            let log_ratio = (z[i] - lse) - (za[i] - lse_a);
            let onehot = if i == y { 1.0 } else { 0.0 };
            dz[i] = scale * ((p[i] - onehot) + beta * p[i] * (log_ratio - kl));
            dza[i] = scale * beta * (q[i] - p[i]);
        }
    }
    (ce, kl)
}

impl Network {
    /// The TRADES loss `mean [CE(f(x), y) + β · KL(softmax f(x) ‖ softmax f(x_adv))]` of a
    /// batch and (if `want_params`) its exact gradient with respect to every parameter,
    /// through both the clean and the adversarial logits (see the [module docs](self)).
    /// Bit-identical for any number of threads.
    ///
    /// # Panics
    /// If `x` or `x_adv` does not have the network's input shape, they differ in shape, or
    /// `labels` does not have one label `< classes` per sample.
    pub fn trades_loss_and_grads(
        &self,
        x: &Tensor,
        x_adv: &Tensor,
        labels: &[usize],
        beta: f32,
        want_params: bool,
    ) -> TradesLossGrads {
        self.check_batch(x, Some(labels)).unwrap_or_else(|e| panic!("Network::trades_loss_and_grads: {e}"));
        assert_eq!(x.shape, x_adv.shape, "Network::trades_loss_and_grads: x and x_adv differ in shape");
        let n = x.n();
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let scale = if n > 0 { 1.0 / n as f32 } else { 0.0 };
        let plan = &self.plan;
        let params = &self.params.layers;

        struct ChunkOut {
            natural: f64,
            robust: f64,
            correct: usize,
            grads: Option<Grads>,
        }

        let run = |xc: &[f32], ac: &[f32], lc: &[usize]| -> ChunkOut {
            let cn = lc.len();
            // One double-size chunk: the clean samples, then the adversarial ones.
            let mut both = Vec::with_capacity(2 * cn * il);
            both.extend_from_slice(xc);
            both.extend_from_slice(ac);
            with_workspace(|ws| {
                let logits = forward_chunk(plan, params, 2 * cn, &both, ws);
                let mut dlogits = if want_params { vec![0.0f32; 2 * cn * k] } else { Vec::new() };
                let mut out = ChunkOut { natural: 0.0, robust: 0.0, correct: 0, grads: None };
                for s in 0..cn {
                    let z = &logits[s * k..(s + 1) * k];
                    let za = &logits[(cn + s) * k..(cn + s + 1) * k];
                    let g = if want_params {
                        let (clean, adv) = dlogits.split_at_mut(cn * k);
                        Some((&mut clean[s * k..(s + 1) * k], &mut adv[s * k..(s + 1) * k]))
                    } else {
                        None
                    };
                    let (ce, kl) = sample_terms(z, za, lc[s], beta, scale, g);
                    out.natural += ce as f64;
                    out.robust += kl as f64;
                    out.correct += usize::from(softmax_parts(z).0 == lc[s]);
                }
                if want_params {
                    // Every parameter buffer is overwritten by the backward pass.
                    let mut g = self
                        .grad_pool
                        .take()
                        .filter(|g| same_structure(g, &self.params))
                        .unwrap_or_else(|| self.params.zeros_like());
                    backward_chunk(plan, params, 2 * cn, &both, &dlogits, Some(&mut g.layers), None, ws);
                    out.grads = Some(g);
                }
                out
            })
        };

        let chunk = self.chunk;
        let outs: Vec<ChunkOut> = x
            .data
            .par_chunks(chunk * il)
            .zip(x_adv.data.par_chunks(chunk * il))
            .zip(labels.par_chunks(chunk))
            .map(|((xc, ac), lc)| run(xc, ac, lc))
            .collect();
        let (mut natural, mut robust, mut correct) = (0f64, 0f64, 0usize);
        let param_grads = self.sum_chunk_grads(
            outs.into_iter().map(|o| {
                natural += o.natural;
                robust += o.robust;
                correct += o.correct;
                o.grads
            }),
            want_params,
        );
        let d = n.max(1) as f64;
        TradesLossGrads {
            loss: ((natural + beta as f64 * robust) / d) as f32,
            natural_loss: (natural / d) as f32,
            robust_loss: (robust / d) as f32,
            correct,
            param_grads,
        }
    }
}

/// The TRADES inner maximisation: `steps` signed steps of size `step_size` ascending
/// `KL(softmax f(x) ‖ softmax f(x'))` in `x'`, from `x + 0.001 · N(0, 1)`, every iterate
/// projected onto the eps-ball around `x` and `[0, 1]`. Draws one `u64` from `rng` (one
/// independent normal stream per sample, as [`super::attack::random_start`] does).
///
/// # Panics
/// If the batch or labels do not fit the network (see [`Network::check_batch`]).
pub fn trades_attack(
    net: &Network,
    x: &Tensor,
    labels: &[usize],
    eps: f32,
    step_size: f32,
    steps: usize,
    rng: &mut Rng,
) -> Tensor {
    net.check_batch(x, Some(labels)).unwrap_or_else(|e| panic!("trades_attack: {e}"));
    let k = net.classes();
    let logits = net.forward(x);
    let mut p = vec![0.0f32; logits.data.len()];
    for (z, pv) in logits.data.chunks_exact(k).zip(p.chunks_exact_mut(k)) {
        softmax_into(z, pv);
    }
    let mut adv = noisy_copy(x, rng, |c, r| clamp_ball(c + TRADES_START_STD * r.normal_f32(), c, eps));
    let mut grad = Tensor::zeros(x.shape);
    for _ in 0..steps {
        net.soft_loss_and_input_grad_into(&adv, labels, &p, &mut grad);
        signed_update(&mut adv, &grad, step_size, x, eps);
    }
    adv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{ArchSpec, Want};

    fn net(arch: &str, seed: u64) -> Network {
        Network::new(ArchSpec::from_compact(arch, [5, 5, 1], 4).unwrap(), seed).unwrap()
    }

    fn batch(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
        let mut r = Rng::new(seed);
        let data = (0..n * 25).map(|_| r.uniform_f32()).collect();
        (Tensor { shape: [n, 5, 5, 1], data }, (0..n).map(|i| i % 4).collect())
    }

    fn perturbed(x: &Tensor, eps: f32, seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        let mut a = x.clone();
        a.data.iter_mut().for_each(|v| *v = (*v + r.uniform_range_f32(-eps, eps)).clamp(0.0, 1.0));
        a
    }

    /// The loss computed independently in f64 from the network's logits.
    fn loss_f64(net: &Network, x: &Tensor, xa: &Tensor, labels: &[usize], beta: f64) -> f64 {
        let k = net.classes();
        let (z, za) = (net.forward(x), net.forward(xa));
        let mut total = 0.0;
        for s in 0..x.n() {
            let sm = |v: &[f32]| {
                let m = v.iter().map(|&a| a as f64).fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = v.iter().map(|&a| (a as f64 - m).exp()).collect();
                let t: f64 = e.iter().sum();
                e.into_iter().map(|a| a / t).collect::<Vec<f64>>()
            };
            let p = sm(&z.data[s * k..(s + 1) * k]);
            let q = sm(&za.data[s * k..(s + 1) * k]);
            let ce = -p[labels[s]].ln();
            let kl: f64 = (0..k).map(|i| p[i] * (p[i].ln() - q[i].ln())).sum();
            total += ce + beta * kl;
        }
        total / x.n() as f64
    }

    #[test]
    fn loss_matches_an_independent_computation_and_beta_zero_is_cross_entropy() {
        for arch in ["flatten,dense6,relu,dense4", "conv3k3,relu,flatten,dense4"] {
            let n = net(arch, 3);
            let (x, y) = batch(37, 5);
            let xa = perturbed(&x, 0.2, 9);
            let r = n.trades_loss_and_grads(&x, &xa, &y, 6.0, true);
            let want = loss_f64(&n, &x, &xa, &y, 6.0);
            assert!((r.loss as f64 - want).abs() < 1e-4 * want.max(1.0), "{arch}: {} vs {want}", r.loss);
            assert_eq!(r.correct, n.predict(&x).iter().zip(&y).filter(|(p, l)| p == l).count());
            // beta = 0: exactly the clean cross-entropy and its gradient.
            let r0 = n.trades_loss_and_grads(&x, &xa, &y, 0.0, true);
            let ce = n.loss_and_grads(&x, &y, Want::PARAMS);
            assert!((r0.loss - ce.loss).abs() < 1e-6, "{arch}");
            let (g0, gc) = (r0.param_grads.unwrap(), ce.param_grads.unwrap());
            for (a, b) in g0.layers.iter().zip(&gc.layers) {
                for (u, v) in a.weights.iter().chain(&a.bias).zip(b.weights.iter().chain(&b.bias)) {
                    assert!((u - v).abs() <= 1e-6 + 1e-5 * v.abs(), "{arch}: {u} vs {v}");
                }
            }
            // x_adv = x: the KL term is zero.
            let same = n.trades_loss_and_grads(&x, &x, &y, 6.0, false);
            assert!(same.robust_loss.abs() < 1e-6, "{}", same.robust_loss);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Both terms, including the KL's dependence on the clean logits.
        for arch in ["flatten,dense6,relu,dense4", "conv2k3,flatten,dense4", "conv2k3,relu,flatten,dense4"] {
            let mut n = net(arch, 11);
            let (x, y) = batch(6, 2);
            let xa = perturbed(&x, 0.3, 4);
            let beta = 3.0;
            let g = n.trades_loss_and_grads(&x, &xa, &y, beta as f32, true).param_grads.unwrap();
            let mut checked = 0;
            for li in 0..n.layers().len() {
                let len = n.params().layers[li].weights.len();
                for wi in (0..len).step_by(len.div_ceil(7).max(1)) {
                    // Small steps: with ReLUs a larger one crosses kinks (1e-3 did on conv).
                    let h = 1e-4f32;
                    let orig = n.params().layers[li].weights[wi];
                    n.params_mut().layers[li].weights[wi] = orig + h;
                    let up = loss_f64(&n, &x, &xa, &y, beta);
                    n.params_mut().layers[li].weights[wi] = orig - h;
                    let down = loss_f64(&n, &x, &xa, &y, beta);
                    n.params_mut().layers[li].weights[wi] = orig;
                    let fd = (up - down) / (2.0 * h as f64);
                    let an = g.layers[li].weights[wi] as f64;
                    assert!((fd - an).abs() < 2e-3 + 2e-2 * fd.abs(), "{arch} layer {li} w{wi}: fd {fd} vs {an}");
                    checked += 1;
                }
            }
            assert!(checked >= 10);
        }
    }

    #[test]
    fn bit_identical_for_any_thread_count() {
        let n = net("conv3k3,relu,flatten,dense4", 1);
        let (x, y) = batch(150, 8);
        let xa = perturbed(&x, 0.1, 3);
        let in_pool = |t: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| {
                let r = n.trades_loss_and_grads(&x, &xa, &y, 6.0, true);
                let adv = trades_attack(&n, &x, &y, 0.1, 0.02, 3, &mut Rng::new(4));
                (r, adv)
            })
        };
        let (a, b) = (in_pool(1), in_pool(2));
        assert_eq!(a.0, b.0);
        assert_eq!(a.1.data, b.1.data);
    }

    #[test]
    fn one_hot_soft_targets_are_the_label_loss() {
        let n = net("conv3k3,relu,flatten,dense4", 2);
        let (x, y) = batch(40, 6);
        let mut onehot = vec![0.0f32; 40 * 4];
        for (s, &l) in y.iter().enumerate() {
            onehot[s * 4 + l] = 1.0;
        }
        let (mut g1, mut g2) = (Tensor::zeros(x.shape), Tensor::zeros(x.shape));
        let a = n.soft_loss_and_input_grad_into(&x, &y, &onehot, &mut g1);
        let b = n.loss_and_input_grad_into(&x, &y, &mut g2);
        assert!((a.loss - b.loss).abs() < 1e-6 && a.correct == b.correct);
        for (u, v) in g1.data.iter().zip(&g2.data) {
            assert!((u - v).abs() < 1e-7, "{u} vs {v}");
        }
        // A soft target moves the loss: the uniform target is not the label's.
        let uniform = vec![0.25f32; 40 * 4];
        let c = n.soft_loss_and_input_grad_into(&x, &y, &uniform, &mut g1);
        assert!((c.loss - b.loss).abs() > 1e-3);
    }

    #[test]
    fn the_attack_stays_in_the_ball_and_raises_the_kl() {
        let n = net("flatten,dense8,relu,dense4", 7);
        let (x, y) = batch(64, 1);
        let eps = 0.1;
        let adv = trades_attack(&n, &x, &y, eps, 0.025, 10, &mut Rng::new(2));
        for (a, c) in adv.data.iter().zip(&x.data) {
            assert!((a - c).abs() <= eps + 1e-6 && (0.0..=1.0).contains(a), "{a} vs {c}");
        }
        let kl_attack = n.trades_loss_and_grads(&x, &adv, &y, 1.0, false).robust_loss;
        // A random point of the ball for comparison: the attack must do much better.
        let kl_random = n.trades_loss_and_grads(&x, &perturbed(&x, eps, 3), &y, 1.0, false).robust_loss;
        assert!(kl_attack > 2.0 * kl_random && kl_attack > 1e-4, "attack {kl_attack} vs random {kl_random}");
        // Deterministic in the seed.
        let again = trades_attack(&n, &x, &y, eps, 0.025, 10, &mut Rng::new(2));
        assert_eq!(adv.data, again.data);
    }
}

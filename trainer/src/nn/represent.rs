//! The learned representation of a network: the activations that feed its last `Dense`
//! layer (the "penultimate layer" of Ilyas et al. 2019, "Adversarial examples are not bugs,
//! they are features"), their gradient with respect to the input, and input optimisation
//! that makes an image's representation match a target ([`match_representation`]), which
//! builds the "robustified" dataset D_R from a robust model.
//!
//! The representation is computed by the same layers and the same per-chunk engine as
//! [`Network::forward`]: the network minus its last layer, with the representation in place
//! of the logits. Results are deterministic and bit-identical for any number of threads.

use super::engine::{backward_chunk, forward_chunk, with_workspace, Plan};
use super::{Network, NnError, Tensor};
use rayon::prelude::*;

impl Network {
    /// Values per sample of the representation (the input of the last `Dense` layer).
    pub fn representation_len(&self) -> usize {
        let s = self.layer_input_shape(self.layers().len() - 1);
        s[0] * s[1] * s[2]
    }

    /// The execution plan of the network without its last layer, or an error when no
    /// layer with parameters comes before it (then the representation is the input itself).
    fn body_plan(&self) -> Result<Plan, NnError> {
        let last = self.plan.geoms.len() - 1;
        if self.plan.first_param >= last {
            return Err(NnError::InvalidArch(
                "the network has no hidden representation: no layer with parameters before the last Dense".into(),
            ));
        }
        Ok(Plan::new(self.plan.geoms[..last].to_vec(), self.representation_len()))
    }

    /// The representation `[n, 1, 1, representation_len()]` of a batch `[n, h, w, c]`: the
    /// output of every layer but the last. An error for a batch of another shape, or a
    /// network without a hidden layer.
    pub fn try_representation(&self, x: &Tensor) -> Result<Tensor, NnError> {
        self.check_batch(x, None)?;
        let plan = self.body_plan()?;
        let (il, d) = (self.plan.in_len(), self.representation_len());
        let mut out = Tensor::zeros([x.n(), 1, 1, d]);
        x.data.par_chunks(self.chunk * il).zip(out.data.par_chunks_mut(self.chunk * d)).for_each(|(xc, oc)| {
            with_workspace(|ws| oc.copy_from_slice(forward_chunk(&plan, &self.params.layers, xc.len() / il, xc, ws)));
        });
        Ok(out)
    }

    /// Per-sample squared distances `|r(x_i) - target_i|^2` between the representation of
    /// `x` and `target` (`[n, 1, 1, representation_len()]`), and the gradient of their
    /// **sum** with respect to `x` (so each sample's gradient does not depend on the batch
    /// size). Errors as [`Network::try_representation`], or when `target` has another shape.
    pub fn representation_distance_and_input_grad(
        &self,
        x: &Tensor,
        target: &Tensor,
    ) -> Result<(Vec<f32>, Tensor), NnError> {
        self.check_batch(x, None)?;
        let plan = self.body_plan()?;
        let (n, il, d) = (x.n(), self.plan.in_len(), self.representation_len());
        if target.data.len() != n * d {
            return Err(NnError::Shape(format!(
                "target representation has shape {:?}, the batch needs [{n}, 1, 1, {d}]",
                target.shape
            )));
        }
        let mut dist = vec![0.0f32; n];
        let mut grad = Tensor::zeros(x.shape);
        let c = self.chunk;
        x.data
            .par_chunks(c * il)
            .zip(target.data.par_chunks(c * d))
            .zip(grad.data.par_chunks_mut(c * il))
            .zip(dist.par_chunks_mut(c))
            .for_each(|(((xc, tc), gc), dc)| {
                let cn = xc.len() / il;
                with_workspace(|ws| {
                    let r = forward_chunk(&plan, &self.params.layers, cn, xc, ws);
                    let mut dr = vec![0.0f32; cn * d];
                    for (s, out) in dc.iter_mut().enumerate().take(cn) {
                        let mut sum = 0.0f64;
                        for j in s * d..(s + 1) * d {
                            let e = r[j] - tc[j];
                            dr[j] = 2.0 * e;
                            sum += (e as f64) * (e as f64);
                        }
                        *out = sum as f32;
                    }
                    backward_chunk(&plan, &self.params.layers, cn, xc, &dr, None, Some(gc), ws);
                });
            });
        Ok((dist, grad))
    }
}

/// Input optimisation towards a representation: starting from `start` (`[n, h, w, c]`,
/// values in `[0, 1]`), takes `steps` normalised gradient steps on `|r(x_i) - target_i|^2`
/// per sample, `x_i -= step_size * g_i / |g_i|_2` (an L2 step of `step_size`, as in Ilyas et
/// al.'s construction of D_R), each followed by clipping to `[0, 1]`. The step size decays
/// linearly to a tenth of `step_size` over the run. Returns the images and their final
/// squared distances. Errors as [`Network::representation_distance_and_input_grad`].
pub fn match_representation(
    net: &Network,
    start: &Tensor,
    target: &Tensor,
    steps: usize,
    step_size: f32,
) -> Result<(Tensor, Vec<f32>), NnError> {
    let mut x = start.clone();
    x.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    let len = x.sample_len().max(1);
    for t in 0..steps {
        let (_, g) = net.representation_distance_and_input_grad(&x, target)?;
        let lr = step_size * (1.0 - 0.9 * t as f32 / steps.max(1) as f32);
        x.data.par_chunks_mut(len).zip(g.data.par_chunks(len)).for_each(|(xs, gs)| {
            let norm = gs.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32;
            if norm > 0.0 && norm.is_finite() {
                for (v, &gv) in xs.iter_mut().zip(gs) {
                    *v = (*v - lr * gv / norm).clamp(0.0, 1.0);
                }
            }
        });
    }
    let (dist, _) = net.representation_distance_and_input_grad(&x, target)?;
    Ok((x, dist))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ArchSpec;
    use crate::rng::Rng;

    fn net_and_batch(arch: &str, n: usize) -> (Network, Tensor) {
        let spec = ArchSpec::from_compact(arch, [6, 6, 1], 3).unwrap();
        let mut net = Network::new(spec, 3).unwrap();
        let mut rng = Rng::new(4);
        // Non-zero biases keep hidden units off the relu kink, where differences mislead.
        for l in &mut net.params_mut().layers {
            l.bias.iter_mut().for_each(|b| *b = rng.uniform_range_f32(-0.2, 0.2));
        }
        let x = Tensor::new([n, 6, 6, 1], (0..n * 36).map(|_| rng.uniform_f32()).collect()).unwrap();
        (net, x)
    }

    #[test]
    fn representation_is_the_input_of_the_last_layer() {
        for arch in ["conv2k3,relu,flatten,dense5,relu,dense3", "flatten,dense4,relu,dense3", "conv3k3,flatten,dense3"]
        {
            let (net, x) = net_and_batch(arch, 5);
            let r = net.try_representation(&x).unwrap();
            let acts = net.activations(&x);
            let want = &acts[acts.len() - 2];
            assert_eq!(r.data, want.data, "{arch}");
            assert_eq!(r.shape, [5, 1, 1, net.representation_len()]);
        }
        // No hidden layer: an error, not a panic; a wrong-shaped batch too.
        let (net, x) = net_and_batch("flatten,dense3", 2);
        assert!(matches!(net.try_representation(&x), Err(NnError::InvalidArch(_))));
        let (net, _) = net_and_batch("flatten,dense4,relu,dense3", 2);
        assert!(net.try_representation(&Tensor::zeros([2, 5, 5, 1])).is_err());
        let bad_target = Tensor::zeros([2, 1, 1, 3]);
        assert!(matches!(
            net.representation_distance_and_input_grad(&Tensor::zeros([2, 6, 6, 1]), &bad_target),
            Err(NnError::Shape(_))
        ));
    }

    #[test]
    fn representation_gradient_matches_finite_differences() {
        // More samples than one chunk, so chunking and the per-sample sums are exercised.
        let (net, x) = net_and_batch("conv4k3,relu,flatten,dense6,relu,dense3", 70);
        let mut rng = Rng::new(9);
        let d = net.representation_len();
        let target = Tensor::new([70, 1, 1, d], (0..70 * d).map(|_| rng.uniform_f32()).collect()).unwrap();
        let (dist, g) = net.representation_distance_and_input_grad(&x, &target).unwrap();
        let total = |x: &Tensor| -> f64 {
            let r = net.try_representation(x).unwrap();
            r.data.iter().zip(&target.data).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum()
        };
        assert!((dist.iter().map(|&v| v as f64).sum::<f64>() - total(&x)).abs() < 1e-3);
        let h = 1e-3f32;
        for i in (0..x.data.len()).step_by(97) {
            let at = |delta: f32| {
                let mut y = x.clone();
                y.data[i] += delta;
                total(&y)
            };
            let num = (at(h) - at(-h)) / (2.0 * h as f64);
            let ana = g.data[i] as f64;
            assert!((ana - num).abs() <= 2e-2 * (1.0 + ana.abs().max(num.abs())), "x[{i}]: {ana} vs {num}");
        }
    }

    #[test]
    fn matching_moves_an_image_towards_the_target_representation() {
        let (net, x) = net_and_batch("conv4k3,relu,flatten,dense6,relu,dense3", 8);
        let target = net.try_representation(&x).unwrap();
        // Start from the batch in reverse order: every start is another image.
        let mut start = x.clone();
        for i in 0..8 {
            start.sample_mut(i).copy_from_slice(x.sample(7 - i));
        }
        let (d0, _) = net.representation_distance_and_input_grad(&start, &target).unwrap();
        let (img, d1) = match_representation(&net, &start, &target, 60, 0.1).unwrap();
        assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
        let (s0, s1): (f32, f32) = (d0.iter().sum(), d1.iter().sum());
        assert!(s1 < 0.5 * s0, "distance {s0} -> {s1}");
        // Deterministic.
        assert_eq!(match_representation(&net, &start, &target, 60, 0.1).unwrap().0.data, img.data);
    }
}

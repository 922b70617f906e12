//! [`Network`]: an [`ArchSpec`] plus parameters, with batched forward passes and the
//! training entry point [`Network::loss_and_grads`].

use super::engine::{backward_chunk, forward_chunk, soft_xent, softmax_xent, with_workspace, Plan};
use super::layers::Geom;
pub use super::layers::LayerParams;
use super::{ArchSpec, LayerSpec, NnError, Tensor};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Target multiply-accumulates per chunk used by [`chunk_size_for`].
const CHUNK_MACS: usize = 1 << 22;

/// Samples per parallel work unit for an architecture with `macs` multiply-accumulates per
/// sample: the power of two in `16..=64` closest below `2^22 / macs` (mlp: 64, cnn-s and
/// dwcnn: 32, cnn-m: 16). Small networks get bigger chunks so gemm packing overhead is
/// amortised; big ones smaller chunks for more parallelism on small batches.
///
/// Batches are cut into chunks of exactly this many samples (the last one may be shorter)
/// and per-chunk results are combined in chunk order. The size depends **only on the
/// architecture, never on the number of threads**, which makes every result
/// bit-identical for any rayon thread count.
pub fn chunk_size_for(macs: usize) -> usize {
    let target = CHUNK_MACS / macs.max(1);
    let mut c = 16;
    while c < 64 && c * 2 <= target {
        c *= 2;
    }
    c
}

/// Parameters of a whole network, one [`LayerParams`] per layer (empty for layers
/// without parameters). Also used for gradients ([`Grads`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Per-layer parameters, indexed like [`ArchSpec::layers`].
    pub layers: Vec<LayerParams>,
}

/// Gradients have the same structure as parameters.
pub type Grads = Params;

impl Params {
    /// Zero buffers with the same structure as `self`.
    pub fn zeros_like(&self) -> Params {
        Params { layers: self.layers.iter().map(|l| LayerParams::zeros(l.weights.len(), l.bias.len())).collect() }
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.layers.iter().map(LayerParams::len).sum()
    }

    /// Whether there are no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element-wise `self += other` (same structure required).
    pub fn add_assign(&mut self, other: &Params) {
        assert_eq!(self.layers.len(), other.layers.len(), "Params::add_assign: structure");
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            for (x, y) in a.weights.iter_mut().zip(&b.weights) {
                *x += y;
            }
            for (x, y) in a.bias.iter_mut().zip(&b.bias) {
                *x += y;
            }
        }
    }

    /// Multiplies every value by `s`.
    pub fn scale(&mut self, s: f32) {
        for l in &mut self.layers {
            l.weights.iter_mut().for_each(|v| *v *= s);
            l.bias.iter_mut().for_each(|v| *v *= s);
        }
    }

    /// Euclidean norm over all values (accumulated in `f64`).
    pub fn l2_norm(&self) -> f32 {
        let mut s = 0.0f64;
        for l in &self.layers {
            for &v in l.weights.iter().chain(&l.bias) {
                s += (v as f64) * (v as f64);
            }
        }
        s.sqrt() as f32
    }

    /// Whether every value is finite.
    pub fn all_finite(&self) -> bool {
        self.layers.iter().all(|l| l.weights.iter().chain(&l.bias).all(|v| v.is_finite()))
    }

    /// The non-empty buffers as `(name, values)`, names `"<layer>.weights"` /
    /// `"<layer>.bias"`, in layer order (weights before bias).
    pub fn named(&self) -> Vec<(String, &[f32])> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            if !l.weights.is_empty() {
                out.push((format!("{i}.weights"), l.weights.as_slice()));
            }
            if !l.bias.is_empty() {
                out.push((format!("{i}.bias"), l.bias.as_slice()));
            }
        }
        out
    }
}

/// What [`Network::loss_and_grads`] should compute besides the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Gradients of the mean loss with respect to every parameter.
    pub params: bool,
    /// Gradient of the mean loss with respect to the input batch.
    pub input: bool,
}

impl Want {
    /// Loss and accuracy only.
    pub const NONE: Want = Want { params: false, input: false };
    /// Parameter gradients (training step).
    pub const PARAMS: Want = Want { params: true, input: false };
    /// Input gradient (attack step).
    pub const INPUT: Want = Want { params: false, input: true };
    /// Both.
    pub const BOTH: Want = Want { params: true, input: true };
}

/// Result of [`Network::loss_and_grads`].
#[derive(Clone, Debug, PartialEq)]
pub struct LossGrads {
    /// Mean softmax cross-entropy over the batch.
    pub loss: f32,
    /// Number of samples whose argmax prediction equals the label.
    pub correct: usize,
    /// Per-sample cross-entropy losses.
    pub sample_losses: Vec<f32>,
    /// Per-sample argmax predictions (ties -> lowest index).
    pub predictions: Vec<usize>,
    /// Gradients of the mean loss with respect to the parameters (if requested).
    pub param_grads: Option<Grads>,
    /// Gradient of the mean loss with respect to the input, same shape as the input
    /// (if requested).
    pub input_grad: Option<Tensor>,
}

/// A float network: an [`ArchSpec`] and its parameters.
///
/// Serialises (serde) as `{"spec": ArchSpec, "params": Params}`; deserialisation
/// validates the spec and the parameter lengths.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "NetworkRepr", into = "NetworkRepr")]
pub struct Network {
    pub(super) spec: ArchSpec,
    pub(super) params: Params,
    shapes: Vec<[usize; 3]>,
    pub(super) plan: Plan,
    pub(super) chunk: usize,
    pub(super) grad_pool: GradPool,
}

impl PartialEq for Network {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.params == other.params
    }
}

#[derive(Serialize, Deserialize)]
struct NetworkRepr {
    spec: ArchSpec,
    params: Params,
}

impl TryFrom<NetworkRepr> for Network {
    type Error = NnError;
    fn try_from(r: NetworkRepr) -> Result<Self, NnError> {
        Network::from_params(r.spec, r.params)
    }
}

impl From<Network> for NetworkRepr {
    fn from(n: Network) -> Self {
        NetworkRepr { spec: n.spec, params: n.params }
    }
}

impl Network {
    /// A network with He/Kaiming-normal weights (`N(0, 2 / fan_in)`, fan-in `kh*kw*in_c` for
    /// Conv2d, `kh*kw` for depthwise, `in` for Dense) and zero biases. Layer `i` draws from
    /// `Rng::new(seed).fork(i)`, so the init is a pure function of `(spec, seed)`.
    pub fn new(spec: ArchSpec, seed: u64) -> Result<Network, NnError> {
        let shapes = spec.shapes()?;
        let root = Rng::new(seed);
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (wl, bl) = l.param_lens(shapes[i]);
                let mut p = LayerParams::zeros(wl, bl);
                if wl > 0 {
                    let std = (2.0 / l.fan_in(shapes[i]) as f64).sqrt() as f32;
                    let mut rng = root.fork(i as u64);
                    for w in &mut p.weights {
                        *w = rng.normal_f32() * std;
                    }
                }
                p
            })
            .collect();
        Network::from_params(spec, Params { layers })
    }

    /// A network with the given parameters (lengths are checked against the spec).
    pub fn from_params(spec: ArchSpec, params: Params) -> Result<Network, NnError> {
        let shapes = spec.shapes()?;
        check_params(&spec, &shapes, &params)?;
        let geoms = spec.layers.iter().zip(&shapes).map(|(l, &s)| Geom::new(*l, s).expect("validated")).collect();
        let plan = Plan::new(geoms, spec.classes);
        let chunk = chunk_size_for(spec.mac_count());
        Ok(Network { spec, params, shapes, plan, chunk, grad_pool: GradPool::default() })
    }

    /// The same network with output fake-quantizers installed (full quantization-aware
    /// training, see [`super::fakequant`]): `quant[i]` rounds the output of layer `i` to its
    /// int8 grid in every batched forward pass and stops the gradient where it saturates.
    /// They are a training-time view: not serialised, not part of equality.
    pub fn with_activation_quant(mut self, quant: Vec<Option<super::FakeQuant>>) -> Result<Network, NnError> {
        if quant.len() != self.spec.layers.len() {
            return Err(NnError::Shape(format!(
                "{} activation quantizers for {} layers",
                quant.len(),
                self.spec.layers.len()
            )));
        }
        if quant.last().is_some_and(Option::is_some) {
            return Err(NnError::Shape("the logits are not fake-quantized".into()));
        }
        self.plan.act_quant = quant;
        Ok(self)
    }

    /// The installed output fake-quantizers, one entry per layer (all `None` unless
    /// [`Network::with_activation_quant`] set them).
    pub fn activation_quant(&self) -> &[Option<super::FakeQuant>] {
        &self.plan.act_quant
    }

    /// Serialises to JSON (spec and parameters).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Network serialises")
    }

    /// Parses [`Network::to_json`] output (validated).
    pub fn from_json(json: &str) -> Result<Network, NnError> {
        Ok(serde_json::from_str(json)?)
    }

    /// The architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// The layers (for walking the model, e.g. by a quantizer).
    pub fn layers(&self) -> &[LayerSpec] {
        &self.spec.layers
    }

    /// Parameters of layer `i` (empty buffers for parameterless layers).
    pub fn layer_params(&self, i: usize) -> &LayerParams {
        &self.params.layers[i]
    }

    /// Input shape `[h, w, c]` of layer `i`; `i == layers().len()` gives the logits shape.
    pub fn layer_input_shape(&self, i: usize) -> [usize; 3] {
        self.shapes[i]
    }

    /// Output shape `[h, w, c]` of layer `i`.
    pub fn layer_output_shape(&self, i: usize) -> [usize; 3] {
        self.shapes[i + 1]
    }

    /// Network input shape `[h, w, c]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.spec.input
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.spec.classes
    }

    /// All parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// All parameters, mutably (lengths must not be changed; use [`Network::set_params`]
    /// to replace them with a checked set).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// Replaces all parameters (lengths are checked).
    pub fn set_params(&mut self, params: Params) -> Result<(), NnError> {
        check_params(&self.spec, &self.shapes, &params)?;
        self.params = params;
        Ok(())
    }

    /// Samples per parallel chunk (see [`chunk_size_for`]); fixed by the architecture.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// Checks that `x` has the network's input shape and, if given, that there is one
    /// in-range label per sample.
    pub fn check_batch(&self, x: &Tensor, labels: Option<&[usize]>) -> Result<(), NnError> {
        if x.sample_shape() != self.spec.input || x.data.len() != x.shape.iter().product::<usize>() {
            return Err(NnError::Shape(format!(
                "input batch has shape {:?} ({} values) but the network takes [n, {}, {}, {}]",
                x.shape,
                x.data.len(),
                self.spec.input[0],
                self.spec.input[1],
                self.spec.input[2]
            )));
        }
        if let Some(labels) = labels {
            if labels.len() != x.n() {
                return Err(NnError::Shape(format!("{} labels for a batch of {}", labels.len(), x.n())));
            }
            if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= self.spec.classes) {
                return Err(NnError::Label { index, label, classes: self.spec.classes });
            }
        }
        Ok(())
    }

    /// Logits `[n, 1, 1, classes]` of a batch `[n, h, w, c]`.
    ///
    /// # Panics
    /// If the batch does not have the network's input shape (see [`Network::check_batch`]);
    /// [`Network::try_forward`] returns that as an error instead.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("Network::forward: {e}"))
    }

    /// Logits `[n, 1, 1, classes]` of a batch `[n, h, w, c]`, or [`NnError::Shape`] if the
    /// batch does not have the network's input shape (nothing is allocated then).
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        self.check_batch(x, None)?;
        let n = x.n();
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let mut out = Tensor::zeros([n, 1, 1, k]);
        x.data.par_chunks(self.chunk * il).zip(out.data.par_chunks_mut(self.chunk * k)).for_each(|(xc, oc)| {
            let cn = xc.len() / il;
            with_workspace(|ws| {
                let logits = forward_chunk(&self.plan, &self.params.layers, cn, xc, ws);
                oc.copy_from_slice(logits);
            });
        });
        Ok(out)
    }

    /// Outputs of every layer for a batch (`result[i]` is the output of layer `i`, the
    /// last one the logits). Allocates all activations; meant for calibration/inspection.
    ///
    /// # Panics
    /// If the batch does not have the network's input shape; [`Network::try_activations`]
    /// returns that as an error instead.
    pub fn activations(&self, x: &Tensor) -> Vec<Tensor> {
        self.try_activations(x).unwrap_or_else(|e| panic!("Network::activations: {e}"))
    }

    /// Outputs of every layer for a batch, as [`Network::activations`], or
    /// [`NnError::Shape`] if the batch does not have the network's input shape (checked
    /// before anything is allocated).
    pub fn try_activations(&self, x: &Tensor) -> Result<Vec<Tensor>, NnError> {
        self.check_batch(x, None)?;
        let mut cur = x.clone();
        let mut out = Vec::with_capacity(self.spec.layers.len());
        for (i, l) in self.spec.layers.iter().enumerate() {
            cur = super::layers::forward(l, &self.params.layers[i], &cur).expect("validated");
            out.push(cur.clone());
        }
        Ok(out)
    }

    /// Argmax class per sample (ties -> lowest index).
    ///
    /// # Panics
    /// If the batch does not have the network's input shape.
    pub fn predict(&self, x: &Tensor) -> Vec<usize> {
        let logits = self.forward(x);
        logits.data.chunks_exact(self.spec.classes).map(argmax).collect()
    }

    /// Mean loss and number of correct predictions (no gradients).
    ///
    /// # Panics
    /// As [`Network::loss_and_grads`].
    pub fn evaluate(&self, x: &Tensor, labels: &[usize]) -> (f32, usize) {
        let r = self.loss_and_grads(x, labels, Want::NONE);
        (r.loss, r.correct)
    }

    /// Sums per-chunk parameter gradients in chunk order (so the result does not depend on
    /// the thread count), returning the spent buffers to the pool; zeros when parameter
    /// gradients are wanted but there were no chunks.
    pub(super) fn sum_chunk_grads(
        &self,
        grads: impl IntoIterator<Item = Option<Params>>,
        want_params: bool,
    ) -> Option<Params> {
        let mut total: Option<Params> = None;
        for g in grads.into_iter().flatten() {
            match total.as_mut() {
                None => total = Some(g),
                Some(acc) => {
                    acc.add_assign(&g);
                    self.grad_pool.put(g);
                }
            }
        }
        if want_params && total.is_none() {
            total = Some(self.params.zeros_like());
        }
        total
    }

    /// Mean softmax cross-entropy of the batch, accuracy, and the requested gradients of
    /// the mean loss. The batch is processed in chunks of [`Network::chunk_size`] samples in
    /// parallel;
    /// results are bit-identical for any number of threads.
    ///
    /// # Panics
    /// If the batch does not have the network's input shape, or `labels` does not have one
    /// label `< classes` per sample (see [`Network::check_batch`]).
    pub fn loss_and_grads(&self, x: &Tensor, labels: &[usize], want: Want) -> LossGrads {
        let mut input_grad = want.input.then(|| Tensor::zeros(x.shape));
        let mut r = self.run_batch(x, labels, None, want.params, input_grad.as_mut().map(|t| t.data.as_mut_slice()));
        r.input_grad = input_grad;
        r
    }

    /// Like [`Network::loss_and_grads`] with `Want::INPUT`, but writes the input gradient
    /// into `grad` (reshaped to `x.shape`, reusing its allocation) instead of returning it;
    /// the returned `input_grad` and `param_grads` are `None`. Used by the attacks' inner
    /// loops.
    ///
    /// # Panics
    /// As [`Network::loss_and_grads`].
    pub fn loss_and_input_grad_into(&self, x: &Tensor, labels: &[usize], grad: &mut Tensor) -> LossGrads {
        grad.shape = x.shape;
        grad.data.resize(x.data.len(), 0.0);
        self.run_batch(x, labels, None, false, Some(grad.data.as_mut_slice()))
    }

    /// Like [`Network::loss_and_input_grad_into`], but the loss of sample `s` is the
    /// cross-entropy against the probability vector `targets[s * classes..(s + 1) * classes]`
    /// instead of a one-hot label: `-Σ_j p_j log softmax(z)_j`, whose logit gradient is
    /// `softmax(z) - p`. Up to the constant `Σ_j p_j log p_j` this is `KL(p || softmax(z))`,
    /// the inner objective of TRADES ([`super::trades`]). `labels` only score the
    /// predictions (`correct`).
    ///
    /// # Panics
    /// As [`Network::loss_and_grads`], or if `targets` does not hold `classes` values per
    /// sample.
    pub fn soft_loss_and_input_grad_into(
        &self,
        x: &Tensor,
        labels: &[usize],
        targets: &[f32],
        grad: &mut Tensor,
    ) -> LossGrads {
        assert_eq!(targets.len(), x.n() * self.spec.classes, "soft targets: classes values per sample");
        grad.shape = x.shape;
        grad.data.resize(x.data.len(), 0.0);
        self.run_batch(x, labels, Some(targets), false, Some(grad.data.as_mut_slice()))
    }

    fn run_batch(
        &self,
        x: &Tensor,
        labels: &[usize],
        soft: Option<&[f32]>,
        want_params: bool,
        input_grad: Option<&mut [f32]>,
    ) -> LossGrads {
        self.check_batch(x, Some(labels)).unwrap_or_else(|e| panic!("Network::loss_and_grads: {e}"));
        let n = x.n();
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let scale = if n > 0 { 1.0 / n as f32 } else { 0.0 };
        let want_input = input_grad.is_some();
        let chunk = self.chunk;
        let mut sample_losses = vec![0.0f32; n];
        let mut predictions = vec![0usize; n];

        struct ChunkOut {
            loss_sum: f64,
            grads: Option<Params>,
        }

        let run =
            |ci: usize, xc: &[f32], lc: &[usize], dxc: Option<&mut [f32]>, lossc: &mut [f32], predc: &mut [usize]| {
                let cn = lc.len();
                let softc = soft.map(|t| &t[ci * chunk * k..(ci * chunk + cn) * k]);
                with_workspace(|ws| {
                    let logits = forward_chunk(&self.plan, &self.params.layers, cn, xc, ws);
                    let need_back = want_params || want_input;
                    let mut dlogits = if need_back { vec![0.0f32; cn * k] } else { Vec::new() };
                    let mut loss_sum = 0.0f64;
                    for s in 0..cn {
                        let d = if need_back { Some(&mut dlogits[s * k..(s + 1) * k]) } else { None };
                        let z = &logits[s * k..(s + 1) * k];
                        let (loss, pred) = match softc {
                            Some(t) => soft_xent(z, &t[s * k..(s + 1) * k], scale, d),
                            None => softmax_xent(z, lc[s], scale, d),
                        };
                        lossc[s] = loss;
                        predc[s] = pred;
                        loss_sum += loss as f64;
                    }
                    // Every parameter buffer is overwritten by the backward pass, so recycled
                    // buffers need no zeroing.
                    let mut grads = want_params.then(|| {
                        self.grad_pool
                            .take()
                            .filter(|g| same_structure(g, &self.params))
                            .unwrap_or_else(|| self.params.zeros_like())
                    });
                    if need_back {
                        backward_chunk(
                            &self.plan,
                            &self.params.layers,
                            cn,
                            xc,
                            &dlogits,
                            grads.as_mut().map(|g| g.layers.as_mut_slice()),
                            dxc,
                            ws,
                        );
                    }
                    ChunkOut { loss_sum, grads }
                })
            };

        let outs: Vec<ChunkOut> = match input_grad {
            Some(ig) => x
                .data
                .par_chunks(chunk * il)
                .zip(labels.par_chunks(chunk))
                .zip(ig.par_chunks_mut(chunk * il))
                .zip(sample_losses.par_chunks_mut(chunk))
                .zip(predictions.par_chunks_mut(chunk))
                .enumerate()
                .map(|(ci, ((((xc, lc), dxc), lossc), predc))| run(ci, xc, lc, Some(dxc), lossc, predc))
                .collect(),
            None => x
                .data
                .par_chunks(chunk * il)
                .zip(labels.par_chunks(chunk))
                .zip(sample_losses.par_chunks_mut(chunk))
                .zip(predictions.par_chunks_mut(chunk))
                .enumerate()
                .map(|(ci, (((xc, lc), lossc), predc))| run(ci, xc, lc, None, lossc, predc))
                .collect(),
        };

        // Combine in chunk order (deterministic).
        let mut loss_sum = 0.0f64;
        let param_grads = self.sum_chunk_grads(
            outs.into_iter().map(|o| {
                loss_sum += o.loss_sum;
                o.grads
            }),
            want_params,
        );
        let correct = predictions.iter().zip(labels).filter(|(p, l)| p == l).count();
        LossGrads {
            loss: if n > 0 { (loss_sum / n as f64) as f32 } else { 0.0 },
            correct,
            sample_losses,
            predictions,
            param_grads,
            input_grad: None,
        }
    }
}

/// Recycled per-chunk gradient buffers (avoids re-faulting fresh pages on every call).
#[derive(Default)]
pub(super) struct GradPool(Mutex<Vec<Params>>);

impl GradPool {
    const MAX: usize = 64;
    pub(super) fn take(&self) -> Option<Params> {
        self.0.lock().ok()?.pop()
    }
    pub(super) fn put(&self, p: Params) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < Self::MAX {
                v.push(p);
            }
        }
    }
}

impl Clone for GradPool {
    fn clone(&self) -> Self {
        GradPool::default()
    }
}

impl std::fmt::Debug for GradPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GradPool")
    }
}

pub(super) fn same_structure(a: &Params, b: &Params) -> bool {
    a.layers.len() == b.layers.len()
        && a.layers
            .iter()
            .zip(&b.layers)
            .all(|(x, y)| x.weights.len() == y.weights.len() && x.bias.len() == y.bias.len())
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (j, &z) in v.iter().enumerate().skip(1) {
        if z > v[best] {
            best = j;
        }
    }
    best
}

fn check_params(spec: &ArchSpec, shapes: &[[usize; 3]], params: &Params) -> Result<(), NnError> {
    if params.layers.len() != spec.layers.len() {
        return Err(NnError::Shape(format!("{} parameter sets for {} layers", params.layers.len(), spec.layers.len())));
    }
    for (i, (l, p)) in spec.layers.iter().zip(&params.layers).enumerate() {
        let (wl, bl) = l.param_lens(shapes[i]);
        if p.weights.len() != wl || p.bias.len() != bl {
            return Err(NnError::Shape(format!(
                "layer {i} ({l}) needs {wl} weights and {bl} biases, got {} and {}",
                p.weights.len(),
                p.bias.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_image_shape_is_an_error_not_a_panic() {
        // issue 10 item 4: `export --dataset` with another image shape reached a panic in
        // `activations` (calibration); the checked entry points return an error instead.
        let spec = ArchSpec::from_compact("conv2k3,relu,flatten,dense3", [6, 6, 1], 3).unwrap();
        let net = Network::new(spec, 1).unwrap();
        let right = Tensor::zeros([2, 6, 6, 1]);
        assert_eq!(net.try_forward(&right).unwrap().shape, [2, 1, 1, 3]);
        assert_eq!(net.try_activations(&right).unwrap().len(), 4);
        let wrong = Tensor::zeros([2, 5, 5, 3]);
        for e in [net.try_forward(&wrong).unwrap_err(), net.try_activations(&wrong).unwrap_err()] {
            assert!(matches!(e, NnError::Shape(_)), "{e}");
            assert!(e.to_string().contains("[n, 6, 6, 1]"), "{e}");
        }
    }
}

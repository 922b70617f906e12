//! Optimizers (SGD with momentum / Nesterov, Adam with decoupled weight decay) and
//! learning-rate schedules. Optimizer state is exposed as named `f32` vectors so a run can
//! be checkpointed and resumed bit-identically.

use super::{Grads, NnError, Params};
use crate::rng::cos_f64;
use serde::{Deserialize, Serialize};

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_eps() -> f32 {
    1e-8
}

/// Optimizer hyper-parameters (the learning rate is passed per step, see [`LrSchedule`]).
///
/// Weight decay is applied to **weights only, never to biases**:
/// - `Sgd`: classic coupled L2, `g += weight_decay * w` before momentum (as PyTorch's
///   `SGD(weight_decay=...)`);
/// - `Adam`: decoupled (AdamW, Loshchilov & Hutter): `w -= lr * weight_decay * w` before
///   the Adam update.
///
/// JSON: `{"kind":"sgd","momentum":0.9,"nesterov":true,"weight_decay":5e-4}` or
/// `{"kind":"adam","beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.0}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD: `buf = momentum * buf + g`; step along `g + momentum * buf` (Nesterov) or
    /// `buf`; `momentum = 0` is plain SGD.
    Sgd {
        /// Momentum coefficient (0 disables momentum).
        #[serde(default)]
        momentum: f32,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// Coupled L2 weight decay on weights.
        #[serde(default)]
        weight_decay: f32,
    },
    /// Adam / AdamW with bias correction.
    Adam {
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f32,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f32,
        /// Denominator epsilon.
        #[serde(default = "default_eps")]
        eps: f32,
        /// Decoupled weight decay on weights.
        #[serde(default)]
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    /// SGD with the given momentum, no Nesterov, no weight decay.
    pub fn sgd(momentum: f32) -> Self {
        OptimizerConfig::Sgd { momentum, nesterov: false, weight_decay: 0.0 }
    }

    /// Adam with the usual defaults (0.9, 0.999, 1e-8) and no weight decay.
    pub fn adam() -> Self {
        OptimizerConfig::Adam { beta1: default_beta1(), beta2: default_beta2(), eps: default_eps(), weight_decay: 0.0 }
    }

    /// Names of the per-parameter state slots (`"momentum"` or `"m"`, `"v"`).
    fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerConfig::Sgd { momentum, .. } if *momentum == 0.0 => &[],
            OptimizerConfig::Sgd { .. } => &["momentum"],
            OptimizerConfig::Adam { .. } => &["m", "v"],
        }
    }
}

/// A named state vector, e.g. `"m.3.weights"` (Adam first moment of layer 3's weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedBuffer {
    /// `"<slot>.<layer>.<weights|bias>"`.
    pub name: String,
    /// Values, same length as the parameter buffer.
    pub data: Vec<f32>,
}

/// Complete optimizer state (hyper-parameters, step count, named buffers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Hyper-parameters.
    pub config: OptimizerConfig,
    /// Number of updates applied so far.
    pub step: u64,
    /// State vectors, slot-major then in [`Params::named`] order.
    pub buffers: Vec<NamedBuffer>,
}

/// An optimizer bound to a parameter structure.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    /// `slots[s][b]`: state slot `s` for parameter buffer `b` (in `Params::named` order).
    slots: Vec<Vec<Vec<f32>>>,
    names: Vec<String>,
}

/// `base^exp` by repeated squaring in `f64` (portable, unlike `powi`).
fn powu(base: f64, mut exp: u64) -> f64 {
    let (mut acc, mut b) = (1.0f64, base);
    while exp > 0 {
        if exp & 1 == 1 {
            acc *= b;
        }
        b *= b;
        exp >>= 1;
    }
    acc
}

impl Optimizer {
    /// A fresh optimizer (zero state) for parameters shaped like `params`.
    pub fn new(config: OptimizerConfig, params: &Params) -> Optimizer {
        let named = params.named();
        let slots = config.slots().iter().map(|_| named.iter().map(|(_, v)| vec![0.0; v.len()]).collect()).collect();
        Optimizer { config, step: 0, slots, names: named.into_iter().map(|(n, _)| n).collect() }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr`.
    ///
    /// # Panics
    /// If `params` / `grads` are not shaped like the parameters given to [`Optimizer::new`].
    pub fn step(&mut self, params: &mut Params, grads: &Grads, lr: f32) {
        assert_eq!(params.layers.len(), grads.layers.len(), "Optimizer::step: grads structure");
        self.step += 1;
        let t = self.step;
        let mut b = 0usize;
        for (pl, gl) in params.layers.iter_mut().zip(&grads.layers) {
            for (is_weight, w, g) in [(true, &mut pl.weights, &gl.weights), (false, &mut pl.bias, &gl.bias)] {
                if w.is_empty() {
                    continue;
                }
                assert_eq!(w.len(), g.len(), "Optimizer::step: gradient length");
                assert!(b < self.names.len(), "Optimizer::step: params structure");
                match self.config {
                    OptimizerConfig::Sgd { momentum, nesterov, weight_decay } => {
                        let wd = if is_weight { weight_decay } else { 0.0 };
                        if self.slots.is_empty() {
                            for (wv, &gv) in w.iter_mut().zip(g) {
                                let gg = gv + wd * *wv;
                                *wv -= lr * gg;
                            }
                        } else {
                            let buf = &mut self.slots[0][b];
                            assert_eq!(buf.len(), w.len(), "Optimizer::step: params structure");
                            for ((wv, &gv), bv) in w.iter_mut().zip(g).zip(buf.iter_mut()) {
                                let gg = gv + wd * *wv;
                                *bv = momentum * *bv + gg;
                                let d = if nesterov { gg + momentum * *bv } else { *bv };
                                *wv -= lr * d;
                            }
                        }
                    }
                    OptimizerConfig::Adam { beta1, beta2, eps, weight_decay } => {
                        let wd = if is_weight { weight_decay } else { 0.0 };
                        let bc1 = 1.0 - powu(beta1 as f64, t);
                        let bc2 = 1.0 - powu(beta2 as f64, t);
                        let step_size = (lr as f64 / bc1) as f32;
                        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
                        let (ms, vs) = self.slots.split_at_mut(1);
                        let m = &mut ms[0][b];
                        let v = &mut vs[0][b];
                        assert_eq!(m.len(), w.len(), "Optimizer::step: params structure");
                        for (((wv, &gv), mv), vv) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                            *wv -= lr * wd * *wv;
                            *mv = beta1 * *mv + (1.0 - beta1) * gv;
                            *vv = beta2 * *vv + (1.0 - beta2) * gv * gv;
                            let denom = vv.sqrt() * inv_sqrt_bc2 + eps;
                            *wv -= step_size * *mv / denom;
                        }
                    }
                }
                b += 1;
            }
        }
    }

    /// The complete state as named buffers (for checkpoints).
    pub fn state(&self) -> OptimizerState {
        let mut buffers = Vec::new();
        for (slot, bufs) in self.config.slots().iter().zip(&self.slots) {
            for (name, data) in self.names.iter().zip(bufs) {
                buffers.push(NamedBuffer { name: format!("{slot}.{name}"), data: data.clone() });
            }
        }
        OptimizerState { config: self.config, step: self.step, buffers }
    }

    /// Restores an optimizer from [`Optimizer::state`] for parameters shaped like
    /// `params`; every expected buffer must be present with the right length.
    pub fn from_state(state: &OptimizerState, params: &Params) -> Result<Optimizer, NnError> {
        let mut opt = Optimizer::new(state.config, params);
        opt.step = state.step;
        let expected = opt.config.slots().len() * opt.names.len();
        if state.buffers.len() != expected {
            return Err(NnError::OptimizerState(format!("expected {expected} buffers, got {}", state.buffers.len())));
        }
        for (s, slot) in opt.config.slots().iter().enumerate() {
            for (b, name) in opt.names.iter().enumerate() {
                let full = format!("{slot}.{name}");
                let nb = state
                    .buffers
                    .iter()
                    .find(|nb| nb.name == full)
                    .ok_or_else(|| NnError::OptimizerState(format!("missing buffer `{full}`")))?;
                if nb.data.len() != opt.slots[s][b].len() {
                    return Err(NnError::OptimizerState(format!(
                        "buffer `{full}` has {} values, expected {}",
                        nb.data.len(),
                        opt.slots[s][b].len()
                    )));
                }
                opt.slots[s][b].copy_from_slice(&nb.data);
            }
        }
        Ok(opt)
    }
}

/// Learning-rate schedule over (fractional) epochs.
///
/// JSON: `{"kind":"constant","lr":0.01}`, `{"kind":"step","lr":0.1,"gamma":0.1,"every":10}`,
/// `{"kind":"cosine","lr":0.01,"min_lr":0.0,"epochs":20,"warmup_epochs":1.0}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    /// Always `lr`.
    Constant {
        /// Learning rate.
        lr: f32,
    },
    /// `lr * gamma^floor(epoch / every)`.
    Step {
        /// Initial learning rate.
        lr: f32,
        /// Multiplicative factor.
        gamma: f32,
        /// Period in epochs (>= 1).
        every: usize,
    },
    /// Optional linear warmup from ~0 to `lr` over `warmup_epochs`, then cosine decay to
    /// `min_lr` at `epochs`: `min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`.
    Cosine {
        /// Peak learning rate.
        lr: f32,
        /// Final learning rate.
        #[serde(default)]
        min_lr: f32,
        /// Total number of epochs.
        epochs: usize,
        /// Warmup length in (possibly fractional) epochs.
        #[serde(default)]
        warmup_epochs: f32,
    },
}

impl LrSchedule {
    /// Learning rate for step `step` (0-based) of epoch `epoch` (0-based) when an epoch has
    /// `steps_per_epoch` steps. Schedules are evaluated at fractional epochs
    /// `epoch + step / steps_per_epoch` (warmup at the step's end, so the first step's rate
    /// is positive). Uses portable arithmetic, so the value is the same on every platform.
    pub fn lr(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f32 {
        let spe = steps_per_epoch.max(1) as f64;
        let progress = epoch as f64 + step as f64 / spe;
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Step { lr, gamma, every } => {
                let k = (epoch / every.max(1)) as u64;
                (lr as f64 * powu(gamma as f64, k)) as f32
            }
            LrSchedule::Cosine { lr, min_lr, epochs, warmup_epochs } => {
                let warm = warmup_epochs.max(0.0) as f64;
                if progress < warm {
                    return (lr as f64 * ((progress + 1.0 / spe) / warm).min(1.0)) as f32;
                }
                let span = (epochs as f64 - warm).max(1e-12);
                let t = ((progress - warm) / span).clamp(0.0, 1.0);
                let c = 0.5 * (1.0 + cos_f64(std::f64::consts::PI * t));
                (min_lr as f64 + (lr as f64 - min_lr as f64) * c) as f32
            }
        }
    }
}

//! The per-chunk forward/backward engine behind [`super::Network`].
//!
//! A [`Plan`] is built once per network: layer geometries plus an assignment of activation
//! buffers in which `Relu`, `Relu6` and `Flatten` work in place (their backward passes
//! only need the layer output, which equals the masked input). Each worker thread keeps a
//! [`Workspace`] (thread-local) so steady-state training does not allocate activations.

use super::layers::{backward_raw, forward_raw, Aux, Geom, LayerParams, Scratch};
use super::{FakeQuant, LayerSpec};
use std::cell::RefCell;

/// Static execution plan of a network.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub geoms: Vec<Geom>,
    /// `buf_in[i]`: activation buffer holding the input of layer `i` (0 = the chunk input);
    /// `buf_in[len]` holds the logits.
    pub buf_in: Vec<usize>,
    /// Whether layer `i` runs in place on its input buffer.
    pub inplace: Vec<bool>,
    /// Index of the first layer with parameters.
    pub first_param: usize,
    pub classes: usize,
    /// Per layer, the fake-quantizer of its output (full QAT; all `None` otherwise).
    pub act_quant: Vec<Option<FakeQuant>>,
}

impl Plan {
    pub fn new(geoms: Vec<Geom>, classes: usize) -> Plan {
        let l = geoms.len();
        let mut buf_in = vec![0usize; l + 1];
        let mut inplace = vec![false; l];
        for i in 0..l {
            // Flatten is a pure alias; activations modify their input buffer, which must
            // not be the caller's input.
            let ip = match geoms[i].spec {
                LayerSpec::Flatten => true,
                LayerSpec::Relu | LayerSpec::Relu6 => buf_in[i] != 0,
                _ => false,
            };
            inplace[i] = ip;
            buf_in[i + 1] = if ip { buf_in[i] } else { i + 1 };
        }
        let first_param = geoms.iter().position(|g| g.spec.has_params()).unwrap_or(l);
        Plan { act_quant: vec![None; l], geoms, buf_in, inplace, first_param, classes }
    }

    pub fn in_len(&self) -> usize {
        self.geoms[0].in_len()
    }
}

/// Reusable per-thread buffers.
#[derive(Default)]
pub(crate) struct Workspace {
    acts: Vec<Vec<f32>>,
    aux: Vec<Aux>,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
    scratch: Scratch,
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Runs `f` with this thread's workspace (or a fresh one if it is already in use).
pub(crate) fn with_workspace<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => f(&mut ws),
        Err(_) => f(&mut Workspace::default()),
    })
}

/// Forward pass of `n` samples; returns the logits (`n * classes` values) as a slice of
/// the workspace.
pub(crate) fn forward_chunk<'w>(
    plan: &Plan,
    params: &[LayerParams],
    n: usize,
    x: &[f32],
    ws: &'w mut Workspace,
) -> &'w [f32] {
    let l = plan.geoms.len();
    if ws.acts.len() < l + 1 {
        ws.acts.resize_with(l + 1, Vec::new);
    }
    if ws.aux.len() < l {
        ws.aux.resize_with(l, Aux::default);
    }
    for (i, (g, p)) in plan.geoms.iter().zip(params).enumerate() {
        let bi = plan.buf_in[i];
        if plan.inplace[i] {
            match g.spec {
                LayerSpec::Relu => ws.acts[bi][..n * g.in_len()].iter_mut().for_each(|v| *v = v.max(0.0)),
                LayerSpec::Relu6 => ws.acts[bi][..n * g.in_len()].iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
                _ => {}
            }
        } else {
            let mut y = std::mem::take(&mut ws.acts[i + 1]);
            y.resize(n * g.out_len(), 0.0);
            {
                let xin: &[f32] = if bi == 0 { x } else { &ws.acts[bi][..n * g.in_len()] };
                forward_raw(g, p, n, xin, &mut y, &mut ws.aux[i]);
            }
            ws.acts[i + 1] = y;
        }
        if let Some(q) = &plan.act_quant[i] {
            let ob = plan.buf_in[i + 1];
            debug_assert!(ob != 0, "a quantized output never aliases the caller's input");
            if ob != 0 {
                q.apply_all(&mut ws.acts[ob][..n * g.out_len()]);
            }
        }
    }
    &ws.acts[plan.buf_in[l]][..n * plan.classes]
}

/// Backward pass of `n` samples after [`forward_chunk`]. `dlogits` (`n * classes`) is the
/// gradient of the loss with respect to the logits. Parameter gradients (if `grads`) are
/// written into `grads`; the input gradient (if `dx`) into `dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_chunk(
    plan: &Plan,
    params: &[LayerParams],
    n: usize,
    x: &[f32],
    dlogits: &[f32],
    mut grads: Option<&mut [LayerParams]>,
    mut dx: Option<&mut [f32]>,
    ws: &mut Workspace,
) {
    let l = plan.geoms.len();
    let want_params = grads.is_some();
    let want_input = dx.is_some();
    let mut cur = std::mem::take(&mut ws.grad_a);
    let mut other = std::mem::take(&mut ws.grad_b);
    cur.clear();
    cur.extend_from_slice(dlogits);
    for i in (0..l).rev() {
        let g = &plan.geoms[i];
        let need_dx = want_input || (want_params && plan.first_param < i);
        let need_params = want_params && g.spec.has_params();
        if !need_dx && !need_params {
            break;
        }
        if let Some(q) = &plan.act_quant[i] {
            // Straight-through: no gradient where the quantized output saturated.
            let ob = plan.buf_in[i + 1];
            if ob != 0 {
                q.mask_grad(&ws.acts[ob][..n * g.out_len()], &mut cur[..n * g.out_len()]);
            }
        }
        let bi = plan.buf_in[i];
        if plan.inplace[i] {
            // Output = (masked) input, stored in buffer `bi`; mask the gradient in place.
            match g.spec {
                LayerSpec::Relu => {
                    for (d, &v) in cur.iter_mut().zip(&ws.acts[bi][..n * g.in_len()]) {
                        if v <= 0.0 {
                            *d = 0.0;
                        }
                    }
                }
                LayerSpec::Relu6 => {
                    for (d, &v) in cur.iter_mut().zip(&ws.acts[bi][..n * g.in_len()]) {
                        if !(v > 0.0 && v < 6.0) {
                            *d = 0.0;
                        }
                    }
                }
                _ => {
                    // Flatten: the gradient passes through unchanged.
                    if i == 0 {
                        if let Some(dx) = dx.as_deref_mut() {
                            dx.copy_from_slice(&cur);
                        }
                    }
                }
            }
            continue;
        }
        let xin: &[f32] = if bi == 0 { x } else { &ws.acts[bi][..n * g.in_len()] };
        let gr = if need_params { grads.as_deref_mut().map(|gs| &mut gs[i]) } else { None };
        if i == 0 {
            backward_raw(g, &params[i], n, xin, &ws.aux[i], &cur, gr, dx.as_deref_mut(), &mut ws.scratch);
        } else {
            let dxb = if need_dx {
                other.resize(n * g.in_len(), 0.0);
                Some(&mut other[..])
            } else {
                None
            };
            backward_raw(g, &params[i], n, xin, &ws.aux[i], &cur, gr, dxb, &mut ws.scratch);
            std::mem::swap(&mut cur, &mut other);
        }
    }
    ws.grad_a = cur;
    ws.grad_b = other;
}

/// The parts of a numerically stable softmax of one sample's logits: `(argmax, max, Σ_j
/// exp(z_j - max))` (ties -> lowest index). `log Σ exp z = max + ln(sum)` and
/// `softmax(z)_j = exp(z_j - max) / sum`.
pub(crate) fn softmax_parts(logits: &[f32]) -> (usize, f32, f32) {
    let (mut best, mut m) = (0usize, logits[0]);
    for (j, &z) in logits.iter().enumerate().skip(1) {
        if z > m {
            m = z;
            best = j;
        }
    }
    let mut sum = 0.0f32;
    for &z in logits {
        sum += (z - m).exp();
    }
    (best, m, sum)
}

/// Numerically stable softmax cross-entropy of one sample. Writes `(softmax - onehot) *
/// scale` into `dlogits` if given; returns `(loss, argmax)` (ties -> lowest index).
pub(crate) fn softmax_xent(logits: &[f32], label: usize, scale: f32, dlogits: Option<&mut [f32]>) -> (f32, usize) {
    let (best, m, sum) = softmax_parts(logits);
    let lse = m + sum.ln();
    let loss = lse - logits[label];
    if let Some(d) = dlogits {
        let inv = 1.0 / sum;
        for (j, (dv, &z)) in d.iter_mut().zip(logits).enumerate() {
            let p = (z - m).exp() * inv;
            *dv = (p - if j == label { 1.0 } else { 0.0 }) * scale;
        }
    }
    (loss, best)
}

/// Cross-entropy of one sample against the probability vector `target`:
/// `-Σ_j t_j log softmax(z)_j` (numerically stable). Writes `(softmax - target) * scale` into
/// `dlogits` if given; returns `(loss, argmax)` (ties -> lowest index). With a one-hot
/// `target` it equals [`softmax_xent`].
pub(crate) fn soft_xent(logits: &[f32], target: &[f32], scale: f32, dlogits: Option<&mut [f32]>) -> (f32, usize) {
    let (best, m, sum) = softmax_parts(logits);
    let lse = m + sum.ln();
    let loss = target.iter().zip(logits).map(|(&t, &z)| t * (lse - z)).sum();
    if let Some(d) = dlogits {
        let inv = 1.0 / sum;
        for ((dv, &z), &t) in d.iter_mut().zip(logits).zip(target) {
            *dv = ((z - m).exp() * inv - t) * scale;
        }
    }
    (loss, best)
}

//! Interval bound propagation (IBP) on the float network, and the IBP certified-training
//! loss of Gowal et al. 2018 ("On the Effectiveness of Interval Bound Propagation for
//! Training Verifiably Robust Models").
//!
//! # Bounds
//! An input box `lo <= x <= hi` is carried through the network in center/radius form
//! `c = (hi + lo) / 2`, `r = (hi - lo) / 2`:
//! - affine layers (Dense, Conv2d, DepthwiseConv2d, AvgPool2d) map `c' = W c + b` and
//!   `r' = |W| r`, i.e. the ordinary layer kernel runs twice, once with the weights and bias
//!   on `c` and once with `|W|` and a zero bias on `r` (average pooling has non-negative
//!   weights, so it runs unchanged on both);
//! - monotone layers (Relu, Relu6, MaxPool2d) map the ends `l = c - r`, `u = c + r` to
//!   `f(l)`, `f(u)`;
//! - Flatten is the identity.
//!
//! The bounds are sound in exact arithmetic; in `f32` they can be off by a few ulps (the
//! certifier of the shipped int8 model is the sound one, see `iocane-certify`).
//!
//! # Elided last layer
//! The final Dense layer is folded into the specification `z_y - z_j > 0`: with the
//! penultimate interval `(c, r)`, `d = W_y - W_j`,
//! `m_j = d·c + (b_y - b_j) - |d|·r <= z_y - z_j` on the whole box. This is tighter than
//! `lo_y - hi_j` because shared inputs cancel.
//!
//! # Loss
//! [`Network::ibp_loss_and_grads`] returns `κ · CE(z(x), y) + (1 - κ) · CE(ẑ, y)` with the
//! worst-case logits `ẑ_j = -m_j` (`j ≠ y`), `ẑ_y = 0`, and its exact gradient through both
//! terms. The backward pass of an affine layer reuses the layer's backward kernel twice:
//! `dW = (dc' ⊗ c) + sign(W) ⊙ (dr' ⊗ r)`, `db = dc'`, `dc = Wᵀ dc'`, `dr = |W|ᵀ dr'`.
//!
//! Batches are cut into the same fixed chunks as [`Network::loss_and_grads`] and combined in
//! chunk order, so every result is bit-identical whatever the number of threads.

use super::crown_ibp::{self, CrownWorkspace};
use super::engine::{backward_chunk, forward_chunk, softmax_xent, with_workspace, Plan};
use super::layers::{backward_raw, forward_raw, Aux, LayerParams, Scratch};
use super::network::same_structure;
use super::{Grads, LayerSpec, Network, NnError, Params, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// Result of [`Network::ibp_loss_and_grads`].
#[derive(Clone, Debug, PartialEq)]
pub struct IbpLossGrads {
    /// Mean of `κ · CE(clean) + (1 - κ) · CE(worst case)` over the batch.
    pub loss: f32,
    /// Mean clean cross-entropy.
    pub clean_loss: f32,
    /// Mean cross-entropy of the worst-case logits `ẑ` (the IBP "robust" loss).
    pub robust_loss: f32,
    /// Samples whose clean prediction equals the label.
    pub correct: usize,
    /// Samples whose margin lower bounds are all `> 0` (verified by IBP at this eps).
    pub verified: usize,
    /// Gradients of the mean loss with respect to the parameters (if requested).
    pub param_grads: Option<Grads>,
}

/// The L-infinity box of radius `eps` around `x`, intersected with the pixel range `[0, 1]`:
/// `lo = max(0, x - eps)`, `hi = min(1, x + eps)`.
pub fn linf_box(x: &Tensor, eps: f32) -> (Tensor, Tensor) {
    let lo = x.data.iter().map(|&v| (v - eps).max(0.0)).collect();
    let hi = x.data.iter().map(|&v| (v + eps).min(1.0)).collect();
    (Tensor { shape: x.shape, data: lo }, Tensor { shape: x.shape, data: hi })
}

/// `|W|` with a zero bias for every layer (the radius pass).
pub(super) fn abs_params(params: &Params) -> Vec<LayerParams> {
    params.layers.iter().map(abs_layer).collect()
}

/// `|W|` with a zero bias: the parameters of an affine layer's radius pass (`r' = |W| r`).
pub fn abs_layer(l: &LayerParams) -> LayerParams {
    LayerParams { weights: l.weights.iter().map(|w| w.abs()).collect(), bias: vec![0.0; l.bias.len()] }
}

/// Reusable per-thread buffers of the interval passes.
#[derive(Default)]
pub(crate) struct IbpWorkspace {
    /// `c[i]`, `r[i]`: center and radius of the input of layer `i`.
    pub(super) c: Vec<Vec<f32>>,
    pub(super) r: Vec<Vec<f32>>,
    /// Forward state of the center (or lower-end) pass and of the radius (upper-end) pass.
    aux_c: Vec<Aux>,
    aux_r: Vec<Aux>,
    dc: Vec<f32>,
    dr: Vec<f32>,
    dc_next: Vec<f32>,
    dr_next: Vec<f32>,
    t: [Vec<f32>; 4],
    gc: LayerParams,
    gr: LayerParams,
    scratch: Scratch,
    margins: Vec<f32>,
    dzhat: Vec<f32>,
    zhat: Vec<f32>,
    /// CROWN-IBP's buffers (see [`super::crown_ibp`]).
    pub(super) crown: CrownWorkspace,
}

thread_local! {
    static IBP_WORKSPACE: RefCell<IbpWorkspace> = RefCell::new(IbpWorkspace::default());
}

pub(super) fn with_ibp_workspace<R>(f: impl FnOnce(&mut IbpWorkspace) -> R) -> R {
    IBP_WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => f(&mut ws),
        Err(_) => f(&mut IbpWorkspace::default()),
    })
}

impl IbpWorkspace {
    pub(super) fn ensure_layers(&mut self, l: usize) {
        if self.c.len() < l + 1 {
            self.c.resize_with(l + 1, Vec::new);
            self.r.resize_with(l + 1, Vec::new);
        }
        if self.aux_c.len() < l {
            self.aux_c.resize_with(l, Aux::default);
            self.aux_r.resize_with(l, Aux::default);
        }
    }

    /// Loads the box `[max(0, x - eps), min(1, x + eps)]` as the input interval.
    pub(super) fn load_eps(&mut self, x: &[f32], eps: f32) {
        let (c, r) = (&mut self.c[0], &mut self.r[0]);
        c.clear();
        r.clear();
        for &v in x {
            let (lo, hi) = ((v - eps).max(0.0), (v + eps).min(1.0));
            c.push(0.5 * (hi + lo));
            r.push(0.5 * (hi - lo));
        }
    }

    /// Loads the box `[lo, hi]` as the input interval.
    pub(super) fn load_box(&mut self, lo: &[f32], hi: &[f32]) {
        let (c, r) = (&mut self.c[0], &mut self.r[0]);
        c.clear();
        r.clear();
        for (&l, &h) in lo.iter().zip(hi) {
            c.push(0.5 * (h + l));
            r.push(0.5 * (h - l));
        }
    }
}

/// `(f(l), f(u))` of a monotone activation (`cap` = 6 for Relu6, infinity for Relu).
#[inline]
fn act(v: f32, cap: f32) -> f32 {
    v.max(0.0).min(cap)
}

/// Derivative of [`act`] (0 at the kinks, as in the engine).
#[inline]
fn act_on(v: f32, cap: f32) -> bool {
    v > 0.0 && v < cap
}

pub(super) fn cap_of(spec: &LayerSpec) -> f32 {
    if matches!(spec, LayerSpec::Relu6) {
        6.0
    } else {
        f32::INFINITY
    }
}

/// Propagates the input interval in `ws.c[0]`, `ws.r[0]` through layers `0..upto`; the
/// result is in `ws.c[upto]`, `ws.r[upto]`.
pub(super) fn forward(
    plan: &Plan,
    params: &[LayerParams],
    abs: &[LayerParams],
    upto: usize,
    n: usize,
    ws: &mut IbpWorkspace,
) {
    ws.ensure_layers(upto);
    for i in 0..upto {
        let g = &plan.geoms[i];
        let (il, ol) = (n * g.in_len(), n * g.out_len());
        let mut co = std::mem::take(&mut ws.c[i + 1]);
        let mut ro = std::mem::take(&mut ws.r[i + 1]);
        co.resize(ol, 0.0);
        ro.resize(ol, 0.0);
        let (ci, ri) = (&ws.c[i][..il], &ws.r[i][..il]);
        match g.spec {
            LayerSpec::Dense { .. }
            | LayerSpec::Conv2d { .. }
            | LayerSpec::DepthwiseConv2d { .. }
            | LayerSpec::AvgPool2d { .. } => {
                forward_raw(g, &params[i], n, ci, &mut co, &mut ws.aux_c[i]);
                forward_raw(g, &abs[i], n, ri, &mut ro, &mut ws.aux_r[i]);
            }
            LayerSpec::Flatten => {
                co.copy_from_slice(ci);
                ro.copy_from_slice(ri);
            }
            LayerSpec::Relu | LayerSpec::Relu6 => {
                let cap = cap_of(&g.spec);
                for (((oc, or), &c), &r) in co.iter_mut().zip(ro.iter_mut()).zip(ci).zip(ri) {
                    let (fl, fu) = (act(c - r, cap), act(c + r, cap));
                    *oc = 0.5 * (fu + fl);
                    *or = 0.5 * (fu - fl);
                }
            }
            LayerSpec::MaxPool2d { .. } => {
                let [t0, t1, t2, t3] = &mut ws.t;
                t0.clear();
                t0.extend(ci.iter().zip(ri).map(|(&c, &r)| c - r));
                t1.clear();
                t1.extend(ci.iter().zip(ri).map(|(&c, &r)| c + r));
                t2.resize(ol, 0.0);
                t3.resize(ol, 0.0);
                forward_raw(g, &params[i], n, t0, &mut t2[..ol], &mut ws.aux_c[i]);
                forward_raw(g, &params[i], n, t1, &mut t3[..ol], &mut ws.aux_r[i]);
                for (((oc, or), &l), &u) in co.iter_mut().zip(ro.iter_mut()).zip(&t2[..ol]).zip(&t3[..ol]) {
                    *oc = 0.5 * (u + l);
                    *or = 0.5 * (u - l);
                }
            }
        }
        if let Some(q) = &plan.act_quant[i] {
            // Fake quantization is monotone: quantize both ends.
            for (c, r) in co.iter_mut().zip(ro.iter_mut()) {
                let (l, u) = (q.apply(*c - *r), q.apply(*c + *r));
                *c = 0.5 * (u + l);
                *r = 0.5 * (u - l);
            }
        }
        ws.c[i + 1] = co;
        ws.r[i + 1] = ro;
    }
}

/// Backward of [`forward`]: `ws.dc`, `ws.dr` hold the gradient with respect to
/// `ws.c[upto]`, `ws.r[upto]`; parameter gradients are **added** to `grads`. Stops at the
/// first layer with parameters (no input gradient). Before layer `i` is passed,
/// `inject(i + 1, dc, dr)` may add further gradients with respect to `c[i + 1]`, `r[i + 1]`
/// (CROWN-IBP's dependence on the intermediate bounds).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    plan: &Plan,
    params: &[LayerParams],
    abs: &[LayerParams],
    upto: usize,
    n: usize,
    grads: &mut [LayerParams],
    ws: &mut IbpWorkspace,
    mut inject: impl FnMut(usize, &mut [f32], &mut [f32]),
) {
    for i in (plan.first_param..upto).rev() {
        let g = &plan.geoms[i];
        let need_dx = i > plan.first_param;
        let (il, ol) = (n * g.in_len(), n * g.out_len());
        inject(i + 1, &mut ws.dc[..ol], &mut ws.dr[..ol]);
        let IbpWorkspace { c, r, aux_c, aux_r, dc, dr, dc_next, dr_next, t, gc, gr, scratch, .. } = &mut *ws;
        if let Some(q) = &plan.act_quant[i] {
            // Straight-through at each end: no gradient where that end saturated.
            for k in 0..ol {
                let (cv, rv) = (c[i + 1][k], r[i + 1][k]);
                let dl = if q.passes(cv - rv) { 0.5 * (dc[k] - dr[k]) } else { 0.0 };
                let du = if q.passes(cv + rv) { 0.5 * (dc[k] + dr[k]) } else { 0.0 };
                dc[k] = du + dl;
                dr[k] = du - dl;
            }
        }
        let (ci, ri, dco, dro) = (&c[i][..il], &r[i][..il], &dc[..ol], &dr[..ol]);
        if need_dx {
            dc_next.resize(il, 0.0);
            dr_next.resize(il, 0.0);
        }
        match g.spec {
            LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } => {
                let p = &params[i];
                for buf in [&mut *gc, &mut *gr] {
                    buf.weights.resize(p.weights.len(), 0.0);
                    buf.bias.resize(p.bias.len(), 0.0);
                }
                let dxc = if need_dx { Some(&mut dc_next[..il]) } else { None };
                backward_raw(g, p, n, ci, &aux_c[i], dco, Some(&mut *gc), dxc, scratch);
                let dxr = if need_dx { Some(&mut dr_next[..il]) } else { None };
                backward_raw(g, &abs[i], n, ri, &aux_r[i], dro, Some(&mut *gr), dxr, scratch);
                let acc = &mut grads[i];
                for (((a, &w), &dwc), &dwr) in acc.weights.iter_mut().zip(&p.weights).zip(&gc.weights).zip(&gr.weights)
                {
                    let s = if w > 0.0 {
                        dwr
                    } else if w < 0.0 {
                        -dwr
                    } else {
                        0.0
                    };
                    *a += dwc + s;
                }
                for (a, &b) in acc.bias.iter_mut().zip(&gc.bias) {
                    *a += b;
                }
            }
            LayerSpec::AvgPool2d { .. } => {
                backward_raw(g, &params[i], n, ci, &aux_c[i], dco, None, Some(&mut dc_next[..il]), scratch);
                backward_raw(g, &params[i], n, ri, &aux_r[i], dro, None, Some(&mut dr_next[..il]), scratch);
            }
            LayerSpec::Flatten => {
                dc_next[..il].copy_from_slice(dco);
                dr_next[..il].copy_from_slice(dro);
            }
            LayerSpec::Relu | LayerSpec::Relu6 => {
                let cap = cap_of(&g.spec);
                for k in 0..il {
                    let (cv, rv) = (ci[k], ri[k]);
                    let dfl = if act_on(cv - rv, cap) { 0.5 * (dco[k] - dro[k]) } else { 0.0 };
                    let dfu = if act_on(cv + rv, cap) { 0.5 * (dco[k] + dro[k]) } else { 0.0 };
                    dc_next[k] = dfu + dfl;
                    dr_next[k] = dfu - dfl;
                }
            }
            LayerSpec::MaxPool2d { .. } => {
                let [t0, t1, t2, t3] = t;
                t0.clear();
                t0.extend(dco.iter().zip(dro).map(|(&a, &b)| 0.5 * (a - b)));
                t1.clear();
                t1.extend(dco.iter().zip(dro).map(|(&a, &b)| 0.5 * (a + b)));
                t2.resize(il, 0.0);
                t3.resize(il, 0.0);
                backward_raw(g, &params[i], n, ci, &aux_c[i], t0, None, Some(&mut t2[..il]), scratch);
                backward_raw(g, &params[i], n, ci, &aux_r[i], t1, None, Some(&mut t3[..il]), scratch);
                for k in 0..il {
                    dc_next[k] = t3[k] + t2[k];
                    dr_next[k] = t3[k] - t2[k];
                }
            }
        }
        if !need_dx {
            break;
        }
        std::mem::swap(&mut ws.dc, &mut ws.dc_next);
        std::mem::swap(&mut ws.dr, &mut ws.dr_next);
    }
}

/// Lower bounds `m[s * classes + j]` of `z_y - z_j` with the last Dense layer elided
/// (`0` at `j = y`), from the penultimate interval `c`, `r` (`n * k` values).
pub fn elided_margins(
    last: &LayerParams,
    classes: usize,
    n: usize,
    labels: &[usize],
    c: &[f32],
    r: &[f32],
    m: &mut [f32],
) {
    let k = last.weights.len() / classes;
    for s in 0..n {
        let y = labels[s];
        let (cs, rs) = (&c[s * k..(s + 1) * k], &r[s * k..(s + 1) * k]);
        let wy = &last.weights[y * k..(y + 1) * k];
        for j in 0..classes {
            if j == y {
                m[s * classes + j] = 0.0;
                continue;
            }
            let wj = &last.weights[j * k..(j + 1) * k];
            let (mut ac, mut ar) = (0.0f32, 0.0f32);
            for q in 0..k {
                let d = wy[q] - wj[q];
                ac += d * cs[q];
                ar += d.abs() * rs[q];
            }
            m[s * classes + j] = (last.bias[y] - last.bias[j]) + ac - ar;
        }
    }
}

/// Backward of [`elided_margins`]: `dm` is the gradient with respect to `m`. Writes the
/// gradients with respect to `c` and `r` into `dc`, `dr` and **adds** the parameter
/// gradients to `acc`.
#[allow(clippy::too_many_arguments)]
pub(super) fn elided_backward(
    last: &LayerParams,
    classes: usize,
    n: usize,
    labels: &[usize],
    c: &[f32],
    r: &[f32],
    dm: &[f32],
    dc: &mut [f32],
    dr: &mut [f32],
    acc: &mut LayerParams,
) {
    let k = last.weights.len() / classes;
    dc.fill(0.0);
    dr.fill(0.0);
    for s in 0..n {
        let y = labels[s];
        let (cs, rs) = (&c[s * k..(s + 1) * k], &r[s * k..(s + 1) * k]);
        let (dcs, drs) = (&mut dc[s * k..(s + 1) * k], &mut dr[s * k..(s + 1) * k]);
        for j in 0..classes {
            let gj = dm[s * classes + j];
            if j == y || gj == 0.0 {
                continue;
            }
            acc.bias[y] += gj;
            acc.bias[j] -= gj;
            for q in 0..k {
                let d = last.weights[y * k + q] - last.weights[j * k + q];
                let (sd, ad) = if d > 0.0 {
                    (1.0, d)
                } else if d < 0.0 {
                    (-1.0, -d)
                } else {
                    (0.0, 0.0)
                };
                dcs[q] += gj * d;
                drs[q] -= gj * ad;
                let dd = gj * (cs[q] - sd * rs[q]);
                acc.weights[y * k + q] += dd;
                acc.weights[j * k + q] -= dd;
            }
        }
    }
}

/// Per-chunk results of the IBP loss.
struct ChunkOut {
    loss: f64,
    clean: f64,
    robust: f64,
    correct: usize,
    verified: usize,
    grads: Option<Params>,
}

impl Network {
    pub(super) fn check_box(&self, lo: &Tensor, hi: &Tensor) -> Result<(), NnError> {
        self.check_batch(lo, None)?;
        if hi.shape != lo.shape || hi.data.len() != lo.data.len() {
            return Err(NnError::Shape(format!("box ends have shapes {:?} and {:?}", lo.shape, hi.shape)));
        }
        if let Some(i) = lo.data.iter().zip(&hi.data).position(|(l, h)| l.is_nan() || h.is_nan() || l > h) {
            return Err(NnError::Shape(format!(
                "box is empty or not finite at value {i}: lo {} > hi {}",
                lo.data[i], hi.data[i]
            )));
        }
        Ok(())
    }

    /// Interval bounds `(lo, hi)` on the logits (`[n, 1, 1, classes]` each) over every input
    /// in the box `lo <= x <= hi` (both `[n, h, w, c]`), by IBP through every layer.
    ///
    /// # Errors
    /// If the box does not have the network's input shape, or `lo > hi` somewhere (or a
    /// value is NaN).
    pub fn interval_bounds(&self, lo: &Tensor, hi: &Tensor) -> Result<(Tensor, Tensor), NnError> {
        self.check_box(lo, hi)?;
        let n = lo.n();
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let layers = self.plan.geoms.len();
        let abs = abs_params(&self.params);
        let mut out_lo = Tensor::zeros([n, 1, 1, k]);
        let mut out_hi = Tensor::zeros([n, 1, 1, k]);
        lo.data
            .par_chunks(self.chunk * il)
            .zip(hi.data.par_chunks(self.chunk * il))
            .zip(out_lo.data.par_chunks_mut(self.chunk * k))
            .zip(out_hi.data.par_chunks_mut(self.chunk * k))
            .for_each(|(((l, h), ol), oh)| {
                let cn = l.len() / il;
                with_ibp_workspace(|ws| {
                    ws.ensure_layers(layers);
                    ws.load_box(l, h);
                    forward(&self.plan, &self.params.layers, &abs, layers, cn, ws);
                    for (((a, b), &c), &r) in ol.iter_mut().zip(oh.iter_mut()).zip(&ws.c[layers]).zip(&ws.r[layers]) {
                        *a = c - r;
                        *b = c + r;
                    }
                });
            });
        Ok((out_lo, out_hi))
    }

    /// Lower bounds on the logit differences `z[label] - z[j]` over every input in the box
    /// `lo <= x <= hi`, with the last Dense layer elided (see the [module docs](self)):
    /// `n * classes` values, the entry of the label itself is 0. The network is verified on
    /// sample `s` iff every other entry is `> 0`.
    ///
    /// # Errors
    /// As [`Network::interval_bounds`], or if `labels` does not have one label `< classes`
    /// per sample.
    pub fn margin_lower_bounds(&self, lo: &Tensor, hi: &Tensor, labels: &[usize]) -> Result<Vec<f32>, NnError> {
        self.check_box(lo, hi)?;
        self.check_batch(lo, Some(labels))?;
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let upto = self.plan.geoms.len() - 1;
        let abs = abs_params(&self.params);
        let mut m = vec![0.0f32; lo.n() * k];
        lo.data
            .par_chunks(self.chunk * il)
            .zip(hi.data.par_chunks(self.chunk * il))
            .zip(labels.par_chunks(self.chunk))
            .zip(m.par_chunks_mut(self.chunk * k))
            .for_each(|(((l, h), lc), mc)| {
                let cn = lc.len();
                with_ibp_workspace(|ws| {
                    ws.ensure_layers(upto);
                    ws.load_box(l, h);
                    forward(&self.plan, &self.params.layers, &abs, upto, cn, ws);
                    elided_margins(&self.params.layers[upto], k, cn, lc, &ws.c[upto], &ws.r[upto], mc);
                });
            });
        Ok(m)
    }

    /// Per sample, whether IBP verifies the label on the box `[max(0, x - eps), min(1, x +
    /// eps)]` (every elided margin lower bound `> 0`, see [`Network::margin_lower_bounds`]).
    ///
    /// # Panics
    /// If the batch does not have the network's input shape, or `labels` does not have one
    /// label `< classes` per sample (see [`Network::check_batch`]).
    pub fn ibp_verified(&self, x: &Tensor, labels: &[usize], eps: f32) -> Vec<bool> {
        self.check_batch(x, Some(labels)).unwrap_or_else(|e| panic!("Network::ibp_verified: {e}"));
        let (lo, hi) = linf_box(x, eps);
        let m = self.margin_lower_bounds(&lo, &hi, labels).unwrap_or_else(|e| panic!("Network::ibp_verified: {e}"));
        let k = self.spec.classes;
        m.chunks_exact(k).zip(labels).map(|(ms, &y)| ms.iter().enumerate().all(|(j, &v)| j == y || v > 0.0)).collect()
    }

    /// The IBP training loss (Gowal et al. 2018) on the box `[max(0, x - eps), min(1, x +
    /// eps)]`: the batch mean of `κ · CE(z(x), y) + (1 - κ) · CE(ẑ, y)` where `ẑ_j = -m_j`
    /// are the negated elided margin lower bounds (`ẑ_y = 0`), plus (if `want_params`) its
    /// gradients with respect to every parameter, through both terms. `kappa` is clamped to
    /// `[0, 1]`. Bit-identical for any number of threads.
    ///
    /// # Panics
    /// If the batch does not have the network's input shape, or `labels` does not have one
    /// label `< classes` per sample (see [`Network::check_batch`]).
    pub fn ibp_loss_and_grads(
        &self,
        x: &Tensor,
        labels: &[usize],
        eps: f32,
        kappa: f32,
        want_params: bool,
    ) -> IbpLossGrads {
        self.check_batch(x, Some(labels)).unwrap_or_else(|e| panic!("Network::ibp_loss_and_grads: {e}"));
        self.bound_loss_and_grads(x, labels, eps, kappa, None, want_params)
    }

    /// The IBP loss ([`Network::ibp_loss_and_grads`]) or, with `crown = Some(β)`, the
    /// CROWN-IBP loss whose margins are `β · m_CROWN-IBP + (1 - β) · m_IBP` (see
    /// [`super::crown_ibp`]). The batch and labels are checked by the caller (and, for
    /// CROWN-IBP, the architecture: no max pooling).
    pub(super) fn bound_loss_and_grads(
        &self,
        x: &Tensor,
        labels: &[usize],
        eps: f32,
        kappa: f32,
        crown: Option<f32>,
        want_params: bool,
    ) -> IbpLossGrads {
        let beta = crown.map(|b| b.clamp(0.0, 1.0));
        let nobias = if beta.is_some() { crown_ibp::no_bias_params(&self.params) } else { Vec::new() };
        let n = x.n();
        let k = self.spec.classes;
        let il = self.plan.in_len();
        let upto = self.plan.geoms.len() - 1;
        let kappa = kappa.clamp(0.0, 1.0);
        let inv = if n > 0 { 1.0 / n as f32 } else { 0.0 };
        let (clean_scale, robust_scale) = (kappa * inv, (1.0 - kappa) * inv);
        let abs = abs_params(&self.params);
        let plan = &self.plan;
        let params = &self.params.layers;

        let run = |xc: &[f32], lc: &[usize]| -> ChunkOut {
            let cn = lc.len();
            let mut out = ChunkOut { loss: 0.0, clean: 0.0, robust: 0.0, correct: 0, verified: 0, grads: None };
            let mut grads = want_params.then(|| {
                self.grad_pool
                    .take()
                    .filter(|g| same_structure(g, &self.params))
                    .unwrap_or_else(|| self.params.zeros_like())
            });
            // Clean term: overwrites every parameter gradient.
            with_workspace(|ws| {
                let logits = forward_chunk(plan, params, cn, xc, ws);
                let mut dlogits = if want_params { vec![0.0f32; cn * k] } else { Vec::new() };
                for s in 0..cn {
                    let d = if want_params { Some(&mut dlogits[s * k..(s + 1) * k]) } else { None };
                    let (loss, pred) = softmax_xent(&logits[s * k..(s + 1) * k], lc[s], clean_scale, d);
                    out.clean += loss as f64;
                    out.loss += kappa as f64 * loss as f64;
                    out.correct += usize::from(pred == lc[s]);
                }
                if let Some(g) = grads.as_mut() {
                    backward_chunk(plan, params, cn, xc, &dlogits, Some(&mut g.layers), None, ws);
                }
            });
            // Robust term: adds to the gradients.
            with_ibp_workspace(|ws| {
                ws.ensure_layers(upto);
                ws.load_eps(xc, eps);
                forward(plan, params, &abs, upto, cn, ws);
                let mut margins = std::mem::take(&mut ws.margins);
                let mut zhat = std::mem::take(&mut ws.zhat);
                let mut dzhat = std::mem::take(&mut ws.dzhat);
                margins.resize(cn * k, 0.0);
                zhat.resize(k, 0.0);
                dzhat.resize(k, 0.0);
                elided_margins(&params[upto], k, cn, lc, &ws.c[upto], &ws.r[upto], &mut margins);
                let mut crown = std::mem::take(&mut ws.crown);
                if beta.is_some() {
                    crown_ibp::margins(plan, params, k, cn, lc, &ws.c, &ws.r, &mut crown);
                }
                for s in 0..cn {
                    let ms = &mut margins[s * k..(s + 1) * k];
                    let y = lc[s];
                    match beta {
                        None => out.verified += usize::from(ms.iter().enumerate().all(|(j, &v)| j == y || v > 0.0)),
                        Some(beta) => {
                            // Both bounds are sound: verified if either one is positive.
                            let mc = &crown.margins[s * k..(s + 1) * k];
                            let ok = ms.iter().zip(mc).enumerate().all(|(j, (&a, &b))| j == y || a.max(b) > 0.0);
                            out.verified += usize::from(ok);
                            for (j, (m, &b)) in ms.iter_mut().zip(mc).enumerate() {
                                if j != y {
                                    *m = beta * b + (1.0 - beta) * *m;
                                }
                            }
                        }
                    }
                    for (z, &m) in zhat.iter_mut().zip(ms.iter()) {
                        *z = -m; // -0 at y
                    }
                    let d = if want_params { Some(&mut dzhat[..]) } else { None };
                    let (loss, _) = softmax_xent(&zhat, y, robust_scale, d);
                    out.robust += loss as f64;
                    out.loss += (1.0 - kappa) as f64 * loss as f64;
                    if want_params {
                        // dL/dm_j = -dL/dẑ_j (ẑ_y = 0 is a constant).
                        for (j, (mv, &dz)) in ms.iter_mut().zip(dzhat.iter()).enumerate() {
                            *mv = if j == y { 0.0 } else { -dz };
                        }
                    }
                }
                if let Some(g) = grads.as_mut() {
                    let pl = cn * plan.geoms[upto].in_len();
                    let mut dc = std::mem::take(&mut ws.dc);
                    let mut dr = std::mem::take(&mut ws.dr);
                    dc.resize(pl, 0.0);
                    dr.resize(pl, 0.0);
                    if let Some(beta) = beta {
                        // dL/dm_CROWN = β dL/dm, dL/dm_IBP = (1 - β) dL/dm.
                        crown.g.clear();
                        crown.g.extend(margins.iter().map(|&d| beta * d));
                        margins.iter_mut().for_each(|d| *d *= 1.0 - beta);
                    }
                    elided_backward(
                        &params[upto],
                        k,
                        cn,
                        lc,
                        &ws.c[upto][..pl],
                        &ws.r[upto][..pl],
                        &margins,
                        &mut dc,
                        &mut dr,
                        &mut g.layers[upto],
                    );
                    ws.dc = dc;
                    ws.dr = dr;
                    match beta {
                        None => backward(plan, params, &abs, upto, cn, &mut g.layers, ws, |_, _, _| {}),
                        Some(_) => {
                            crown_ibp::backward(
                                plan,
                                params,
                                &nobias,
                                k,
                                cn,
                                lc,
                                &ws.c,
                                &ws.r,
                                &mut crown,
                                &mut g.layers,
                            );
                            backward(plan, params, &abs, upto, cn, &mut g.layers, ws, |j, dc, dr| {
                                crown.inject(j, dc, dr)
                            });
                        }
                    }
                }
                ws.crown = crown;
                ws.margins = margins;
                ws.zhat = zhat;
                ws.dzhat = dzhat;
            });
            out.grads = grads;
            out
        };

        let outs: Vec<ChunkOut> =
            x.data.par_chunks(self.chunk * il).zip(labels.par_chunks(self.chunk)).map(|(xc, lc)| run(xc, lc)).collect();

        // Combine in chunk order (deterministic).
        let (mut loss, mut clean, mut robust, mut correct, mut verified) = (0f64, 0f64, 0f64, 0usize, 0usize);
        let param_grads = self.sum_chunk_grads(
            outs.into_iter().map(|o| {
                loss += o.loss;
                clean += o.clean;
                robust += o.robust;
                correct += o.correct;
                verified += o.verified;
                o.grads
            }),
            want_params,
        );
        let d = n.max(1) as f64;
        IbpLossGrads {
            loss: (loss / d) as f32,
            clean_loss: (clean / d) as f32,
            robust_loss: (robust / d) as f32,
            correct,
            verified,
            param_grads,
        }
    }
}

//! Sound interval bound propagation (IBP) over the exact integer arithmetic of the runtime.
//!
//! Every int8 tensor element gets an integer interval `[l, u]` that contains its value for
//! every input image inside the box `lo <= pixels <= hi`. Weighted layers bound their int32
//! accumulator exactly per neuron (`bias + Σ (w > 0 ? w (l - zp) : w (u - zp))`, padding taps
//! contribute 0), then push both ends through the runtime's own `quant::requantize` /
//! `quant::requantize_logit`, which are monotone non-decreasing in the accumulator. Max
//! pooling takes the maximum of each end, average pooling applies `quant::average` to each
//! end's sum, flatten is the identity. No rounding rule is re-implemented here: the bounds
//! are about the integers the device computes.
//!
//! With `lo == hi` (k = 0) the bounds are exactly the runtime's logits.

use iocane_runtime::format::{Layer, OpKind};
use iocane_runtime::{quant, window, Model};
use serde::Serialize;

/// The L-infinity ball of `k` pixel levels around `pixels` (a perturbation of `k/255`),
/// intersected with the valid pixel range: `lo[i] = p[i] - k` and `hi[i] = p[i] + k`,
/// saturated to `[0, 255]`.
pub fn linf_ball(pixels: &[u8], k: u8) -> (Vec<u8>, Vec<u8>) {
    let lo = pixels.iter().map(|&p| p.saturating_sub(k)).collect();
    let hi = pixels.iter().map(|&p| p.saturating_add(k)).collect();
    (lo, hi)
}

/// Calls `f` on every image of the box `lo <= x <= hi` (odometer order, first pixel
/// fastest), stopping at the first error. There are `Π (hi[i] - lo[i] + 1)` images: this is
/// for exhaustive checks on tiny inputs (and on small branches of a split ball).
///
/// # Panics
/// If `lo` and `hi` differ in length or `lo[i] > hi[i]` somewhere.
pub fn try_for_each_image<E>(lo: &[u8], hi: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    assert!(lo.len() == hi.len() && lo.iter().zip(hi).all(|(l, h)| l <= h), "not a box");
    let mut x = lo.to_vec();
    loop {
        f(&x)?;
        let mut i = 0;
        while i < x.len() && x[i] == hi[i] {
            x[i] = lo[i];
            i += 1;
        }
        if i == x.len() {
            return Ok(());
        }
        x[i] += 1;
    }
}

/// Integer bounds on the int32 logits: for every image in the box, `lo[c] <= logit[c] <= hi[c]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogitBounds {
    /// Lower bound of each class logit.
    pub lo: Vec<i32>,
    /// Upper bound of each class logit.
    pub hi: Vec<i32>,
}

impl LogitBounds {
    /// Whether `logits` lie inside the bounds (same length, `lo <= logit <= hi` everywhere).
    pub fn contains(&self, logits: &[i32]) -> bool {
        logits.len() == self.lo.len()
            && logits.iter().zip(self.lo.iter().zip(&self.hi)).all(|(&z, (&l, &h))| l <= z && z <= h)
    }

    /// Whether the bounds prove that the runtime's argmax is `label` for every image in the
    /// box: for every other class `j`, `lo[label] > hi[j]` when `j < label` and
    /// `lo[label] >= hi[j]` when `j > label` (argmax breaks ties towards the lowest index).
    pub fn proves(&self, label: usize) -> bool {
        let Some(&l) = self.lo.get(label) else { return false };
        self.hi.iter().enumerate().all(|(j, &h)| j == label || if j < label { l > h } else { l >= h })
    }

    /// The worst-case margin of `label`: `min_j (lo[label] - hi[j])` over the other classes,
    /// minus one for classes below `label` (so the sample is certified iff the result is
    /// `>= 0`). `None` if `label` is out of range or there is no other class.
    pub fn margin(&self, label: usize) -> Option<i64> {
        let l = *self.lo.get(label)? as i64;
        self.hi.iter().enumerate().filter(|&(j, _)| j != label).map(|(j, &h)| l - h as i64 - i64::from(j < label)).min()
    }
}

/// The outcome of certifying one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The int8 model classifies every image of the ball as the label (a proof).
    Certified,
    /// The clean image is classified correctly, but the bounds are too loose to prove the ball.
    Unknown,
    /// The int8 model misclassifies the clean image itself.
    Misclassified,
}

/// The outcome of [`Bounder::bound_ball`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BallBound {
    /// Certified, unknown or misclassified.
    pub verdict: Verdict,
    /// The worst-case certified margin (`>= 0` iff certified, for a correctly classified
    /// sample); `None` for a model with one class.
    pub margin: Option<i64>,
}

/// Reusable scratch for bounding many samples of one model without reallocating.
#[derive(Clone, Debug)]
pub struct Bounder<'m> {
    model: Model<'m>,
    /// Bounds of the current tensor (int8 values held as i32).
    lo: Vec<i32>,
    hi: Vec<i32>,
    /// Bounds of the next tensor.
    next_lo: Vec<i32>,
    next_hi: Vec<i32>,
    /// `l - zp` and `u - zp` of the current weighted layer's input.
    shifted_lo: Vec<i16>,
    shifted_hi: Vec<i16>,
    /// Each convolution's weights split into `w+ = max(w, 0)` and `w- = min(w, 0)` and
    /// transposed to `[kh][kw][ic][oc]`, keyed by the layer's weight bytes: a tap's
    /// contribution to every output channel is one contiguous run.
    conv_split: Vec<ConvSplit>,
    /// `|bias| + 255 Σ|w|` of each class of the logits layer.
    last_caps: Vec<i64>,
    /// Per-channel bias, multiplier and shift of the current layer.
    params: Vec<(i32, i32, i32)>,
    /// The ball of the sample being certified.
    ball_lo: Vec<u8>,
    ball_hi: Vec<u8>,
    /// For running the runtime on the clean image.
    arena: Vec<u8>,
    logits: Vec<i32>,
}

impl<'m> Bounder<'m> {
    /// Scratch buffers sized for `model`.
    pub fn new(model: &Model<'m>) -> Self {
        debug_assert!(accumulators_fit_i32(model), "the runtime validator guarantees |bias| + 255 Σ|w| <= i32::MAX");
        let widest = model.layers().map(|l| l.input_shape().len().max(l.output_shape().len())).max().unwrap_or(0);
        let widest = widest.max(model.input_len());
        let conv_split: Vec<ConvSplit> =
            model.layers().filter(|l| l.op() == OpKind::Conv2d).map(|l| ConvSplit::new(&l)).collect();
        Bounder {
            model: *model,
            lo: Vec::with_capacity(widest),
            hi: Vec::with_capacity(widest),
            next_lo: Vec::with_capacity(widest),
            next_hi: Vec::with_capacity(widest),
            shifted_lo: Vec::with_capacity(widest),
            shifted_hi: Vec::with_capacity(widest),
            conv_split,
            last_caps: model.layer(model.layer_count() - 1).map_or(Vec::new(), |l| channel_caps(&l)),
            params: Vec::new(),
            ball_lo: Vec::with_capacity(model.input_len()),
            ball_hi: Vec::with_capacity(model.input_len()),
            arena: vec![0; model.arena_size()],
            logits: vec![0; model.num_classes()],
        }
    }

    /// The model being bounded.
    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    /// Bounds on the logits over all images `lo <= x <= hi` (elementwise, raw u8 pixels).
    ///
    /// # Panics
    /// If `lo` or `hi` does not have `model.input_len()` pixels, or `lo[i] > hi[i]` somewhere.
    pub fn logit_bounds(&mut self, lo: &[u8], hi: &[u8]) -> LogitBounds {
        let mut out = LogitBounds::default();
        self.logit_bounds_into(lo, hi, &mut out);
        out
    }

    /// [`Bounder::logit_bounds`] writing into `out` (reusing its allocations).
    ///
    /// # Panics
    /// As [`Bounder::logit_bounds`].
    pub fn logit_bounds_into(&mut self, lo: &[u8], hi: &[u8], out: &mut LogitBounds) {
        let n = self.model.input_len();
        assert!(lo.len() == n && hi.len() == n, "the box has {}/{} pixels, the model takes {n}", lo.len(), hi.len());
        assert!(lo.iter().zip(hi).all(|(l, h)| l <= h), "empty box: lo > hi for some pixel");
        self.lo.clear();
        self.hi.clear();
        self.lo.extend(lo.iter().map(|&p| quant::pixel_to_input(p) as i32));
        self.hi.extend(hi.iter().map(|&p| quant::pixel_to_input(p) as i32));
        let model = self.model;
        for layer in model.layers() {
            match layer.op() {
                OpKind::Flatten => continue,
                OpKind::MaxPool2d | OpKind::AvgPool2d => self.pool(&layer),
                OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d => {
                    self.weighted(&layer);
                    if layer.outputs_logits() {
                        out.lo.clear();
                        out.hi.clear();
                        out.lo.extend_from_slice(&self.next_lo);
                        out.hi.extend_from_slice(&self.next_hi);
                        return;
                    }
                }
            }
            core::mem::swap(&mut self.lo, &mut self.next_lo);
            core::mem::swap(&mut self.hi, &mut self.next_hi);
        }
        // A validated model always ends in a logits layer.
        unreachable!("validated models end with a Dense layer emitting logits")
    }

    /// Certifies one sample against the ball of `k` levels around `pixels`.
    ///
    /// Runs the runtime on the clean image first: if its argmax is not `label` the verdict
    /// is [`Verdict::Misclassified`]. Otherwise the sample is [`Verdict::Certified`] iff the
    /// logit bounds prove the label (see [`LogitBounds::proves`]) or, failing that, the
    /// tighter margin bounds of [`Bounder::margin_lower_bounds`] do; else
    /// [`Verdict::Unknown`]. The logit bounds are returned in every case.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels.
    pub fn certify_sample(&mut self, pixels: &[u8], label: usize, k: u8) -> (Verdict, LogitBounds) {
        let class = match self.model.run(pixels, &mut self.arena, &mut self.logits) {
            Ok(c) => c,
            Err(e) => panic!("cannot run the model on the sample: {e}"),
        };
        let bounds = self.ball_bounds(pixels, k);
        let verdict = if class != label {
            Verdict::Misclassified
        } else if bounds.proves(label) || self.elision_proves(&bounds, label) {
            Verdict::Certified
        } else {
            Verdict::Unknown
        };
        (verdict, bounds)
    }

    /// Logit bounds over the ball of `k` levels around `pixels` (clipped to [0, 255]), in the
    /// reusable ball buffers.
    fn ball_bounds(&mut self, pixels: &[u8], k: u8) -> LogitBounds {
        let (mut lo, mut hi) = (core::mem::take(&mut self.ball_lo), core::mem::take(&mut self.ball_hi));
        lo.clear();
        hi.clear();
        lo.extend(pixels.iter().map(|&p| p.saturating_sub(k)));
        hi.extend(pixels.iter().map(|&p| p.saturating_add(k)));
        let bounds = self.logit_bounds(&lo, &hi);
        (self.ball_lo, self.ball_hi) = (lo, hi);
        bounds
    }

    /// The verdict and worst-case margin of the ball of `k` levels around `pixels`, with the
    /// bounds computed once. `predicted` is the runtime's class of the clean image (the
    /// caller has it already): if it is not `label` the verdict is
    /// [`Verdict::Misclassified`] and the margin is the plain [`LogitBounds::margin`];
    /// otherwise the margin is [`worst_margin`] of [`Bounder::margin_lower_bounds`] and the
    /// ball is certified iff it is `>= 0` (the same rule as [`Bounder::certify_sample`]).
    ///
    /// # Panics
    /// As [`Bounder::margin_lower_bounds`].
    pub fn bound_ball(&mut self, pixels: &[u8], label: usize, k: u8, predicted: usize) -> BallBound {
        assert!(label < self.model.num_classes(), "label {label} out of range");
        let bounds = self.ball_bounds(pixels, k);
        if predicted != label {
            return BallBound { verdict: Verdict::Misclassified, margin: bounds.margin(label) };
        }
        let margin = worst_margin(&self.elided_margins(&bounds, label), label);
        let certified = bounds.proves(label) || margin.is_some_and(|m| m >= 0);
        BallBound { verdict: if certified { Verdict::Certified } else { Verdict::Unknown }, margin }
    }

    /// Lower bounds on the logit differences `z[label] - z[j]` over every image of the box,
    /// one per class `j` (the entry of `label` itself is 0). The label wins on the whole box
    /// iff every entry is `>= 1` for `j < label` and `>= 0` for `j > label`.
    ///
    /// Each entry is the better of `lo[label] - hi[j]` from the logit bounds and a bound
    /// that elides the final layer: the two logits are `floor(acc * m / 2^T + 1/2)` of
    /// accumulators that are linear in the same int8 inputs, so the real difference
    /// `acc_label m_label / 2^T_label - acc_j m_j / 2^T_j` is bounded as one linear function
    /// (shared inputs cancel), exactly in i128, and `z[label] - z[j] >= floor` of its lower
    /// bound. The elided bound is used only when neither logit can saturate.
    ///
    /// # Panics
    /// As [`Bounder::logit_bounds`], or if `label` is out of range.
    pub fn margin_lower_bounds(&mut self, lo: &[u8], hi: &[u8], label: usize) -> Vec<i64> {
        self.margins_and_logits(lo, hi, label).0
    }

    /// [`Bounder::margin_lower_bounds`] and the logit bounds they came from, in one pass.
    pub(crate) fn margins_and_logits(&mut self, lo: &[u8], hi: &[u8], label: usize) -> (Vec<i64>, LogitBounds) {
        assert!(label < self.model.num_classes(), "label {label} out of range");
        let bounds = self.logit_bounds(lo, hi);
        (self.elided_margins(&bounds, label), bounds)
    }

    /// The margin bounds of [`Bounder::margin_lower_bounds`], right after `bounds` were
    /// computed (the final layer's input bounds are still in `shifted_lo/hi`).
    fn elided_margins(&self, bounds: &LogitBounds, label: usize) -> Vec<i64> {
        (0..bounds.lo.len()).map(|j| if j == label { 0 } else { self.elided_margin(bounds, label, j) }).collect()
    }

    /// Whether the elided margins prove `label`, computing them only for the classes the
    /// logit bounds leave open and stopping at the first class that stays open.
    fn elision_proves(&self, bounds: &LogitBounds, label: usize) -> bool {
        (0..bounds.lo.len()).all(|j| {
            let need = i64::from(j < label);
            j == label
                || bounds.lo[label] as i64 - bounds.hi[j] as i64 >= need
                || self.elided_margin(bounds, label, j) >= need
        })
    }

    /// Lower bound on `z[y] - z[j]`: the better of `lo[y] - hi[j]` and the elided bound.
    fn elided_margin(&self, bounds: &LogitBounds, y: usize, j: usize) -> i64 {
        let plain = bounds.lo[y] as i64 - bounds.hi[j] as i64;
        let unsaturated = |c: usize| bounds.lo[c] > i32::MIN && bounds.hi[c] < i32::MAX;
        let Some(last) = self.model.layer(self.model.layer_count() - 1) else { return plain };
        if !(unsaturated(y) && unsaturated(j)) {
            return plain;
        }
        let n = last.input_shape().c;
        let w = last.weight_bytes();
        let (a, c) = (&self.shifted_lo[..n], &self.shifted_hi[..n]);
        let (ty, tj) = (31 - last.shift(y), 31 - last.shift(j));
        let e = ty.max(tj);
        let ay = (last.multiplier(y) as i128) << (e - ty);
        let aj = (last.multiplier(j) as i128) << (e - tj);
        let (wy, wj) = (&w[y * n..(y + 1) * n], &w[j * n..(j + 1) * n]);
        // N = ay acc_y - aj acc_j = (ay b_y - aj b_j) + Σ alpha_i x_i, x_i in [a_i, c_i]; the
        // lower bound takes x_i = a_i where alpha_i >= 0 and c_i where alpha_i < 0.
        // Every partial sum is at most ay cap_y + aj cap_j in magnitude (cap = |b| + 255 Σ|w|,
        // |x_i| <= 255). With ay, aj < 2^92 and cap < 2^31 that is < 2^124: exact in i128;
        // when it is below 2^63 (always, unless the two shifts differ by many bits) the same
        // sum is exact in i64.
        let (by, bj) = (last.bias(y), last.bias(j));
        let bound = ay * self.last_caps[y] as i128 + aj * self.last_caps[j] as i128;
        let num: i128 = if bound < 1i128 << 63 {
            let (ay, aj) = (ay as i64, aj as i64);
            let mut num = ay * by as i64 - aj * bj as i64;
            for i in 0..n {
                let alpha = ay * (wy[i] as i8 as i64) - aj * (wj[i] as i8 as i64);
                num += alpha * if alpha >= 0 { a[i] } else { c[i] } as i64;
            }
            num as i128
        } else {
            let mut num = ay * by as i128 - aj * bj as i128;
            for i in 0..n {
                let alpha = ay * (wy[i] as i8 as i128) - aj * (wj[i] as i8 as i128);
                num += alpha * if alpha >= 0 { a[i] } else { c[i] } as i128;
            }
            num
        };
        // With D = N / 2^e the real difference and z = floor(v + 1/2) in (v - 1/2, v + 1/2]:
        // z_y - z_j > D - 1 >= D_lo - 1, so the integer z_y - z_j >= floor(D_lo).
        let elided = num.div_euclid(1i128 << e);
        plain.max(elided.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    /// Max or average pooling: `self.lo/hi` -> `self.next_lo/next_hi`.
    fn pool(&mut self, layer: &Layer<'_>) {
        let (i, o) = (layer.input_shape(), layer.output_shape());
        let (kh, kw) = layer.kernel();
        let (sh, sw) = layer.stride();
        let max = layer.op() == OpKind::MaxPool2d;
        let count = (kh * kw) as i32;
        self.next_lo.clear();
        self.next_hi.clear();
        for oy in 0..o.h {
            for ox in 0..o.w {
                for c in 0..o.c {
                    let (mut l, mut h) = if max { (i32::MIN, i32::MIN) } else { (0, 0) };
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let idx = ((oy * sh + ky) * i.w + ox * sw + kx) * i.c + c;
                            let (a, b) = (self.lo[idx], self.hi[idx]);
                            if max {
                                l = l.max(a);
                                h = h.max(b);
                            } else {
                                l += a;
                                h += b;
                            }
                        }
                    }
                    if !max {
                        l = quant::average(l, count) as i32;
                        h = quant::average(h, count) as i32;
                    }
                    self.next_lo.push(l);
                    self.next_hi.push(h);
                }
            }
        }
    }

    /// Dense, Conv2d or DepthwiseConv2d: `self.lo/hi` -> `self.next_lo/next_hi`, either
    /// int8 activations or (for the final layer) int32 logits.
    fn weighted(&mut self, layer: &Layer<'_>) {
        self.accumulate(layer);
        self.requantize_next(layer);
    }

    /// Sets the bounds of the next layer's input (int8 values as i32), for stepping layer by
    /// layer with [`Bounder::accumulate`], [`Bounder::requantize_next`], [`Bounder::pool_next`]
    /// and [`Bounder::advance`].
    pub(crate) fn set_bounds(&mut self, lo: &[i32], hi: &[i32]) {
        self.lo.clear();
        self.hi.clear();
        self.lo.extend_from_slice(lo);
        self.hi.extend_from_slice(hi);
    }

    /// The bounds of the current tensor.
    pub(crate) fn bounds(&self) -> (&[i32], &[i32]) {
        (&self.lo, &self.hi)
    }

    /// The bounds the last step wrote (accumulators after [`Bounder::accumulate`], int8
    /// activations or logits after [`Bounder::requantize_next`], pooled values after
    /// [`Bounder::pool_next`]); writable, so that a tighter sound bound can replace them.
    pub(crate) fn next_bounds_mut(&mut self) -> (&mut [i32], &mut [i32]) {
        (&mut self.next_lo, &mut self.next_hi)
    }

    /// Makes the next tensor the current one.
    pub(crate) fn advance(&mut self) {
        core::mem::swap(&mut self.lo, &mut self.next_lo);
        core::mem::swap(&mut self.hi, &mut self.next_hi);
    }

    /// Max or average pooling of the current bounds into the next ones.
    pub(crate) fn pool_next(&mut self, layer: &Layer<'_>) {
        self.pool(layer);
    }

    /// The accumulator bounds of a weighted layer (into the next bounds), before
    /// requantization: `bias + Σ w (x - zp)` over the current input bounds, exact per neuron.
    pub(crate) fn accumulate(&mut self, layer: &Layer<'_>) {
        let zp = layer.input_zero_point() as i32;
        self.shifted_lo.clear();
        self.shifted_hi.clear();
        // Int8 values minus an int8 zero point: in [-255, 255].
        self.shifted_lo.extend(self.lo.iter().map(|&v| (v - zp) as i16));
        self.shifted_hi.extend(self.hi.iter().map(|&v| (v - zp) as i16));
        let (i, o) = (layer.input_shape(), layer.output_shape());
        let w = layer.weight_bytes();
        let oc = o.c;
        self.params.clear();
        self.params.extend((0..oc).map(|c| (layer.bias(c), layer.multiplier(c), layer.shift(c))));
        self.next_lo.clear();
        self.next_hi.clear();
        // Accumulator bounds first (in next_lo / next_hi), requantized below.
        match layer.op() {
            OpKind::Dense => {
                let n = i.c;
                for (c, row) in w.chunks_exact(n).enumerate() {
                    let (l, h) = dot_bounds(&self.shifted_lo, &self.shifted_hi, row);
                    let b = self.params[c].0;
                    self.next_lo.push(b.wrapping_add(l));
                    self.next_hi.push(b.wrapping_add(h));
                }
            }
            OpKind::Conv2d => {
                let win = window(layer);
                let (kw, ic, iw) = (win.kernel.1, i.c, i.w);
                // Split in `Bounder::new` for every convolution of the model; a layer of
                // another blob is split here once.
                let at = match self.conv_split.iter().position(|c| c.key == w.as_ptr() as usize) {
                    Some(at) => at,
                    None => {
                        self.conv_split.push(ConvSplit::new(layer));
                        self.conv_split.len() - 1
                    }
                };
                let split = &self.conv_split[at];
                let ocp = split.lanes;
                // Per output pixel and block of `BLOCK` output channels (accumulators in
                // registers), the same terms `w+ l + w- u` (and `w+ u + w- l`) as
                // `dot_bounds` over the receptive field, summed in tap order: exact in i32
                // for the reason given at `dot_bounds` (any subset, any order). Lanes past
                // `oc` have zero weights and are not stored.
                for oy in 0..o.h {
                    let (ky0, ky1, iy0) = win.rows(oy);
                    for ox in 0..o.w {
                        let (kx0, kx1, ix0) = win.cols(ox);
                        for c0 in (0..oc).step_by(BLOCK) {
                            let cn = BLOCK.min(oc - c0);
                            let mut lo = [0i32; BLOCK];
                            let mut hi = [0i32; BLOCK];
                            for (j, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate().take(cn) {
                                (*l, *h) = (self.params[c0 + j].0, self.params[c0 + j].0);
                            }
                            for ky in ky0..ky1 {
                                let iy = (iy0 + ky as isize) as usize;
                                let src = (iy * iw + (ix0 + kx0 as isize) as usize) * ic;
                                let t = (ky * kw + kx0) * ic;
                                let n = (kx1 - kx0) * ic;
                                let (xl, xh) = (&self.shifted_lo[src..src + n], &self.shifted_hi[src..src + n]);
                                for (e, (&x, &y)) in xl.iter().zip(xh).enumerate() {
                                    let at = (t + e) * ocp + c0;
                                    let block = |v: &'_ [i32]| -> Option<[i32; BLOCK]> {
                                        v.get(at..at + BLOCK).and_then(|b| b.try_into().ok())
                                    };
                                    let (Some(rp), Some(rn)) = (block(&split.pos), block(&split.neg)) else {
                                        continue;
                                    };
                                    let (x, y) = (x as i32, y as i32);
                                    for j in 0..BLOCK {
                                        lo[j] = lo[j].wrapping_add(rp[j] * x + rn[j] * y);
                                        hi[j] = hi[j].wrapping_add(rp[j] * y + rn[j] * x);
                                    }
                                }
                            }
                            self.next_lo.extend_from_slice(&lo[..cn]);
                            self.next_hi.extend_from_slice(&hi[..cn]);
                        }
                    }
                }
            }
            OpKind::DepthwiseConv2d => {
                let (kh, kw) = layer.kernel();
                let win = window(layer);
                let cn = i.c;
                for oy in 0..o.h {
                    for ox in 0..o.w {
                        let base = self.next_lo.len();
                        self.next_lo.extend(self.params.iter().map(|p| p.0));
                        self.next_hi.extend(self.params.iter().map(|p| p.0));
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let Some(src) = win.tap((oy, ox), (ky, kx)) else { continue };
                                let wrow = &w[(ky * kw + kx) * cn..(ky * kw + kx + 1) * cn];
                                let (xl, xh) = (&self.shifted_lo[src..src + cn], &self.shifted_hi[src..src + cn]);
                                let (ol, oh) = (&mut self.next_lo[base..base + cn], &mut self.next_hi[base..base + cn]);
                                for c in 0..cn {
                                    let wv = wrow[c] as i8 as i32;
                                    let (p, q) = (wv * xl[c] as i32, wv * xh[c] as i32);
                                    ol[c] = ol[c].wrapping_add(p.min(q));
                                    oh[c] = oh[c].wrapping_add(p.max(q));
                                }
                            }
                        }
                    }
                }
            }
            OpKind::MaxPool2d | OpKind::AvgPool2d | OpKind::Flatten => unreachable!("not a weighted layer"),
        }
        debug_assert_eq!(self.next_lo.len(), o.len());
    }

    /// Requantizes accumulator bounds (the next bounds, from [`Bounder::accumulate`]) in
    /// place with the runtime's monotone functions: int8 activations, or int32 logits for
    /// the final layer.
    pub(crate) fn requantize_next(&mut self, layer: &Layer<'_>) {
        let oc = layer.output_shape().c;
        self.params.clear();
        self.params.extend((0..oc).map(|c| (layer.bias(c), layer.multiplier(c), layer.shift(c))));
        // Requantize both ends with the runtime's monotone functions.
        // Channels are innermost: each chunk of `oc` bounds is one pixel's channels.
        let pixels = self.next_lo.chunks_exact_mut(oc.max(1)).zip(self.next_hi.chunks_exact_mut(oc.max(1)));
        if layer.outputs_logits() {
            for (ls, hs) in pixels {
                for ((l, h), &(_, m, s)) in ls.iter_mut().zip(hs.iter_mut()).zip(&self.params) {
                    debug_assert!(*l <= *h);
                    *l = quant::requantize_logit(*l, m, s);
                    *h = quant::requantize_logit(*h, m, s);
                }
            }
        } else {
            let ozp = layer.output_zero_point();
            let (amin, amax) = layer.clamp();
            for (ls, hs) in pixels {
                for ((l, h), &(_, m, s)) in ls.iter_mut().zip(hs.iter_mut()).zip(&self.params) {
                    debug_assert!(*l <= *h);
                    *l = quant::requantize(*l, m, s, ozp, amin, amax) as i32;
                    *h = quant::requantize(*h, m, s, ozp, amin, amax) as i32;
                }
            }
        }
    }
}

/// A convolution's weights as `w+` and `w-`, transposed to `[kh][kw][ic][oc]` (see
/// [`Bounder`]'s `conv_split`).
#[derive(Clone, Debug)]
struct ConvSplit {
    /// The address of the layer's weight bytes (in the model blob, which outlives the
    /// bounder).
    key: usize,
    /// Channels per tap in `pos` / `neg`: `oc` rounded up to whole blocks.
    lanes: usize,
    pos: Vec<i32>,
    neg: Vec<i32>,
}

impl ConvSplit {
    fn new(layer: &Layer<'_>) -> Self {
        let w = layer.weight_bytes();
        let oc = layer.output_shape().c;
        let per_oc = w.len().checked_div(oc).unwrap_or(0);
        // Rows padded with zero weights to whole blocks of `BLOCK` channels.
        let lanes = oc.div_ceil(BLOCK) * BLOCK;
        let (mut pos, mut neg) = (vec![0i32; per_oc * lanes], vec![0i32; per_oc * lanes]);
        for (c, row) in w.chunks_exact(per_oc.max(1)).enumerate().take(oc) {
            for (t, &b) in row.iter().enumerate() {
                let v = b as i8 as i32;
                pos[t * lanes + c] = v.max(0);
                neg[t * lanes + c] = v.min(0);
            }
        }
        ConvSplit { key: w.as_ptr() as usize, lanes, pos, neg }
    }
}

/// Output channels of a convolution's interval bounds computed together (two vectors of
/// eight i32 lanes per bound).
const BLOCK: usize = 16;

/// The worst-case margin from [`Bounder::margin_lower_bounds`]: `min_j margins[j]` over
/// the other classes, minus one for classes below `label`, so that it is `>= 0` iff the
/// margins certify `label` (the same convention as [`LogitBounds::margin`], which it
/// dominates). `None` if there is no other class or `label` is out of range.
pub fn worst_margin(margins: &[i64], label: usize) -> Option<i64> {
    if label >= margins.len() {
        return None;
    }
    margins.iter().enumerate().filter(|&(j, _)| j != label).map(|(j, &m)| m - i64::from(j < label)).min()
}

/// Bounds of `Σ w[i] x[i]` over `x[i]` in `[a[i], c[i]]`: with `w+ = max(w, 0)` and
/// `w- = min(w, 0)`, `(Σ w+ a + w- c, Σ w+ c + w- a)`.
///
/// Exact in i32: every term is at most `255 |w|` in magnitude and the validator proved
/// `|bias| + 255 Σ|w| <= i32::MAX` per output channel, so no partial sum (of any subset of
/// terms, in any order, plus the bias) can overflow. The wrapping operations only spare the
/// optimiser the overflow checks; the branch-free form lets it vectorise.
#[inline(always)]
fn dot_bounds(a: &[i16], c: &[i16], w: &[u8]) -> (i32, i32) {
    const L: usize = 8;
    let mut lo = [0i32; L];
    let mut hi = [0i32; L];
    let (ac, cc, wc) = (a.chunks_exact(L), c.chunks_exact(L), w.chunks_exact(L));
    let (ar, cr, wr) = (ac.remainder(), cc.remainder(), wc.remainder());
    for ((xa, xc), ws) in ac.zip(cc).zip(wc) {
        if let (Ok(xa), Ok(xc), Ok(ws)) =
            (<&[i16; L]>::try_from(xa), <&[i16; L]>::try_from(xc), <&[u8; L]>::try_from(ws))
        {
            for j in 0..L {
                let wv = ws[j] as i8 as i32;
                let (wp, wn) = (wv.max(0), wv.min(0));
                let (x, y) = (xa[j] as i32, xc[j] as i32);
                lo[j] = lo[j].wrapping_add(wp * x + wn * y);
                hi[j] = hi[j].wrapping_add(wp * y + wn * x);
            }
        }
    }
    let mut l = lo.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    let mut h = hi.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    for ((&xa, &xc), &wv) in ar.iter().zip(cr).zip(wr) {
        let wv = wv as i8 as i32;
        let (wp, wn) = (wv.max(0), wv.min(0));
        l = l.wrapping_add(wp * xa as i32 + wn * xc as i32);
        h = h.wrapping_add(wp * xc as i32 + wn * xa as i32);
    }
    (l, h)
}

/// `|bias| + 255 Σ|w|` per output channel of a weighted layer: a bound on `|acc|`.
fn channel_caps(l: &Layer<'_>) -> Vec<i64> {
    channel_abs_sums(l)
        .into_iter()
        .enumerate()
        .map(|(c, abs)| quant::accumulator_bound(l.bias(c), abs) as i64)
        .collect()
}

/// `Σ|w|` of each output channel of a weighted layer (over the runtime's `channel_taps`).
pub(crate) fn channel_abs_sums(l: &Layer<'_>) -> Vec<u64> {
    let oc = l.output_shape().c;
    let w = l.weight_bytes();
    let depthwise = l.op() == OpKind::DepthwiseConv2d;
    (0..oc)
        .map(|c| quant::channel_taps(depthwise, w.len(), oc, c).map(|i| (w[i] as i8).unsigned_abs() as u64).sum())
        .collect()
}

/// The validator's overflow guarantee, re-checked: `|bias| + 255 Σ|w| <= i32::MAX` for every
/// output channel of every weighted layer.
fn accumulators_fit_i32(model: &Model<'_>) -> bool {
    model.layers().filter(|l| l.op().has_weights()).all(|l| channel_caps(&l).iter().all(|&c| c <= i32::MAX as i64))
}

/// Bounds on the int32 logits of `model` over every image with `lo <= pixels <= hi`
/// (see [`Bounder`] to bound many samples without reallocating).
///
/// # Panics
/// If `lo` or `hi` does not have `model.input_len()` pixels, or `lo[i] > hi[i]` somewhere.
pub fn logit_bounds(model: &Model<'_>, lo: &[u8], hi: &[u8]) -> LogitBounds {
    Bounder::new(model).logit_bounds(lo, hi)
}

/// Certifies `pixels` with true class `label` against the ball of `k` levels (see
/// [`Bounder::certify_sample`]).
///
/// # Panics
/// If `pixels` does not have `model.input_len()` pixels.
pub fn certify_sample(model: &Model<'_>, pixels: &[u8], label: usize, k: u8) -> (Verdict, LogitBounds) {
    Bounder::new(model).certify_sample(pixels, label, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iocane_runtime::kernels::reference;
    use iocane_runtime::rng::SplitMix64;
    use iocane_runtime::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
    use iocane_runtime::Shape;

    fn pixels(n: usize, rng: &mut SplitMix64) -> Vec<u8> {
        (0..n).map(|_| rng.range(0, 255) as u8).collect()
    }

    #[test]
    fn ball_saturates() {
        let (lo, hi) = linf_ball(&[0, 3, 128, 250, 255], 4);
        assert_eq!(lo, [0, 0, 124, 246, 251]);
        assert_eq!(hi, [4, 7, 132, 254, 255]);
    }

    /// The gate's one-pass `bound_ball` gives the verdict of `certify_sample` and the margin
    /// of `margin_lower_bounds` (misclassified: the plain margin), on every class and radius.
    #[test]
    fn bound_ball_agrees_with_the_two_pass_rule() {
        let mut rng = SplitMix64(5);
        for blob in [random_mlp(3).emit(), random_cnn_s(4).emit()] {
            let model = Model::parse(&blob).unwrap();
            let mut b = Bounder::new(&model);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..6 {
                let x = pixels(model.input_len(), &mut rng);
                let z = reference::run_model(&model, &x);
                // The runtime's argmax: ties go to the lowest index.
                let predicted = (0..z.len()).fold(0, |best, i| if z[i] > z[best] { i } else { best });
                for (label, k) in (0..model.num_classes()).flat_map(|l| [0u8, 1, 3, 8].map(|k| (l, k))) {
                    let (verdict, bounds) = b.certify_sample(&x, label, k);
                    let (lo, hi) = linf_ball(&x, k);
                    let margin = match verdict {
                        Verdict::Misclassified => bounds.margin(label),
                        _ => worst_margin(&b.margin_lower_bounds(&lo, &hi, label), label),
                    };
                    let one = b.bound_ball(&x, label, k, predicted);
                    assert_eq!((one.verdict, one.margin), (verdict, margin), "label {label} k {k}");
                    seen.insert(verdict);
                }
            }
            assert!(seen.contains(&Verdict::Misclassified) && seen.len() >= 2, "{seen:?}");
        }
    }

    #[test]
    fn zero_radius_is_exact_on_benchmark_models() {
        let mut rng = SplitMix64(7);
        for repr in [random_mlp(1), random_cnn_s(2)] {
            let blob = repr.emit();
            let model = Model::parse(&blob).unwrap();
            let mut b = Bounder::new(&model);
            for _ in 0..5 {
                let x = pixels(model.input_len(), &mut rng);
                let z = reference::run_model(&model, &x);
                let bounds = b.logit_bounds(&x, &x);
                assert_eq!(bounds.lo, z);
                assert_eq!(bounds.hi, z);
            }
        }
    }

    #[test]
    fn bounds_contain_samples_of_the_ball() {
        let mut rng = SplitMix64(11);
        let repr = random_model(
            Shape::new(6, 6, 2),
            4,
            &[
                SynthLayer::Conv { filters: 3, k: 3, s: 1, p: 1, relu: true },
                SynthLayer::Depthwise { k: 2, s: 1, p: 1, relu: false },
                SynthLayer::AvgPool { k: 2, s: 2 },
                SynthLayer::MaxPool { k: 2, s: 1 },
                SynthLayer::Dense { units: 5, relu: true },
            ],
            3,
        );
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap();
        let mut b = Bounder::new(&model);
        for k in [0u8, 1, 3, 8] {
            let x = pixels(model.input_len(), &mut rng);
            let (lo, hi) = linf_ball(&x, k);
            let bounds = b.logit_bounds(&lo, &hi);
            for _ in 0..50 {
                let y: Vec<u8> = lo.iter().zip(&hi).map(|(&l, &h)| rng.range(l as i64, h as i64) as u8).collect();
                assert!(bounds.contains(&reference::run_model(&model, &y)));
            }
        }
    }

    #[test]
    fn verdicts_follow_the_tie_rule() {
        let b = LogitBounds { lo: vec![5, 5, 3], hi: vec![5, 5, 3] };
        assert!(b.proves(0)); // ties with class 1 go to 0
        assert!(!b.proves(1)); // ties with class 0 go to 0
        assert!(!b.proves(2));
        assert!(!b.proves(3));
        assert_eq!(b.margin(0), Some(0));
        assert_eq!(b.margin(1), Some(-1));
        assert_eq!(worst_margin(&[0, 0, 2], 0), Some(0));
        assert_eq!(worst_margin(&[0, 0, 2], 1), Some(-1));
        assert_eq!(worst_margin(&[0, 0, 2], 3), None);
        assert_eq!(serde_json::to_string(&Verdict::Misclassified).unwrap(), "\"misclassified\"");
    }

    #[test]
    fn certify_sample_reports_misclassified_and_certified() {
        let mut rng = SplitMix64(5);
        let blob = random_mlp(9).emit();
        let model = Model::parse(&blob).unwrap();
        let x = pixels(model.input_len(), &mut rng);
        let z = reference::run_model(&model, &x);
        let class = quant::argmax(&z);
        let (v, bounds) = certify_sample(&model, &x, class, 0);
        assert_eq!(v, Verdict::Certified);
        assert_eq!(bounds.lo, z);
        let (v, _) = certify_sample(&model, &x, (class + 1) % 10, 0);
        assert_eq!(v, Verdict::Misclassified);
    }
}

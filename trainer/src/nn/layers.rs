//! Layer kernels: forward, backward (parameter gradients) and input gradients for every
//! op of [`LayerSpec`].
//!
//! The public functions [`forward`] and [`backward`] run one layer on a whole [`Tensor`]
//! (they allocate; handy for tests, reference checks and a quantizer's calibration). The
//! network engine uses the same kernels on preallocated chunk buffers.
//!
//! Convolutions and Dense layers use im2col + one sgemm per chunk (matrixmultiply through
//! `ndarray::linalg::general_mat_mul`); depthwise convolutions and pools are direct loops
//! over NHWC with the channel loop innermost.

use super::conv;
use super::gemm::{gemm, gemv, Mat};
use super::{LayerSpec, NnError, Tensor};
use serde::{Deserialize, Serialize};

/// Parameters of one layer: `weights` in the layout documented in [`crate::nn`] (OHWI for
/// Conv2d, `[kh][kw][c]` for DepthwiseConv2d, `[out][in]` for Dense) and `bias`. Both are
/// empty for layers without parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerParams {
    /// Weights (see the layout above).
    pub weights: Vec<f32>,
    /// Bias, one per output channel / unit.
    pub bias: Vec<f32>,
}

impl LayerParams {
    /// Zero parameters of the given lengths.
    pub fn zeros(weights: usize, bias: usize) -> Self {
        LayerParams { weights: vec![0.0; weights], bias: vec![0.0; bias] }
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.weights.len() + self.bias.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Static geometry of one layer instance: the spec plus input and output shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub spec: LayerSpec,
    pub inp: [usize; 3],
    pub out: [usize; 3],
}

impl Geom {
    pub fn new(spec: LayerSpec, inp: [usize; 3]) -> Result<Geom, String> {
        let out = spec.output_shape(inp)?;
        Ok(Geom { spec, inp, out })
    }
    pub fn in_len(&self) -> usize {
        self.inp[0] * self.inp[1] * self.inp[2]
    }
    pub fn out_len(&self) -> usize {
        self.out[0] * self.out[1] * self.out[2]
    }
    /// Whether a Conv2d is a plain per-pixel matmul (1x1 kernel, stride 1, no padding).
    fn pointwise(&self) -> bool {
        matches!(self.spec, LayerSpec::Conv2d { kernel: [1, 1], stride: [1, 1], padding: [0, 0, 0, 0], .. })
    }
}

#[cfg(test)]
thread_local! {
    /// Test hook: route every Conv2d through im2col + gemm.
    static FORCE_GEMM_CONV: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a Conv2d / DepthwiseConv2d runs on the direct kernels of [`conv`] (else
/// im2col + gemm or a plain gemm for pointwise convolutions; plain loops for depthwise).
#[inline]
fn use_direct(g: &Geom) -> bool {
    #[cfg(test)]
    if FORCE_GEMM_CONV.with(|f| f.get()) {
        return false;
    }
    match g.spec {
        LayerSpec::Conv2d { .. } => !g.pointwise() && conv::supported(g),
        LayerSpec::DepthwiseConv2d { .. } => conv::depthwise_supported(g),
        _ => false,
    }
}

/// Per-chunk saved state of a layer between forward and backward.
#[derive(Default)]
pub(crate) struct Aux {
    /// im2col matrix `[n*oh*ow, kh*kw*c]` of a Conv2d on the gemm path, or the zero-padded
    /// input of a Conv2d / DepthwiseConv2d on the direct path.
    pub cols: Vec<f32>,
    /// Max-pool argmax, as an index into the chunk's input buffer.
    pub idx: Vec<u32>,
    /// Direct conv: pixel base offsets into the (padded) input.
    pub pix: Vec<usize>,
    /// Direct conv: tap offsets.
    pub off: Vec<usize>,
    /// Direct conv: transposed weights `[K][F]`.
    pub wt: Vec<f32>,
}

/// Reusable scratch buffers for backward passes.
#[derive(Default)]
pub(crate) struct Scratch {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// What a layer's backward pass needs from its forward pass: the geometry, the parameters,
/// the batch size, the layer input and the saved state.
#[derive(Clone, Copy)]
pub(crate) struct Saved<'a> {
    pub g: &'a Geom,
    pub p: &'a LayerParams,
    pub n: usize,
    pub x: &'a [f32],
    pub aux: &'a Aux,
}

/// Where a backward pass writes: the parameter gradients and the input gradient, each when
/// wanted (overwritten, not accumulated).
pub(crate) struct GradsOut<'a> {
    pub params: Option<&'a mut LayerParams>,
    pub input: Option<&'a mut [f32]>,
}

/// Forward of `n` samples: `x` has `n * in_len` values, `y` receives `n * out_len`.
/// `aux` is filled with what backward needs.
pub(crate) fn forward_raw(g: &Geom, p: &LayerParams, n: usize, x: &[f32], y: &mut [f32], aux: &mut Aux) {
    let [h, w, c] = g.inp;
    let [oh, ow, _] = g.out;
    debug_assert_eq!(x.len(), n * g.in_len());
    debug_assert_eq!(y.len(), n * g.out_len());
    match g.spec {
        LayerSpec::Dense { units } => {
            fill_bias(y, &p.bias);
            let k = h * w * c;
            gemm(1.0, Mat::n(x, n, k), Mat::t(&p.weights, units, k), 1.0, y, n, units);
        }
        LayerSpec::Conv2d { .. } if use_direct(g) => {
            conv::forward(g, p, n, x, y, aux);
        }
        LayerSpec::Conv2d { filters, kernel, .. } => {
            fill_bias(y, &p.bias);
            let m = n * oh * ow;
            let k = kernel[0] * kernel[1] * c;
            if g.pointwise() {
                gemm(1.0, Mat::n(x, m, k), Mat::t(&p.weights, filters, k), 1.0, y, m, filters);
            } else {
                aux.cols.resize(m * k, 0.0);
                im2col(g, n, x, &mut aux.cols);
                gemm(1.0, Mat::n(&aux.cols, m, k), Mat::t(&p.weights, filters, k), 1.0, y, m, filters);
            }
        }
        LayerSpec::DepthwiseConv2d { .. } if use_direct(g) => {
            conv::depthwise_forward(g, p, n, x, y, aux);
        }
        LayerSpec::DepthwiseConv2d { kernel, stride, padding } => {
            for i in 0..n {
                let xs = &x[i * h * w * c..(i + 1) * h * w * c];
                let ys = &mut y[i * oh * ow * c..(i + 1) * oh * ow * c];
                for oy in 0..oh {
                    let (ky0, ky1) = valid_range(oy, stride[0], padding[0], kernel[0], h);
                    for ox in 0..ow {
                        let (kx0, kx1) = valid_range(ox, stride[1], padding[1], kernel[1], w);
                        let out = &mut ys[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                        out.copy_from_slice(&p.bias);
                        for ky in ky0..ky1 {
                            let iy = oy * stride[0] + ky - padding[0];
                            for kx in kx0..kx1 {
                                let ix = ox * stride[1] + kx - padding[1];
                                let xi = &xs[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                                let wk = &p.weights[(ky * kernel[1] + kx) * c..(ky * kernel[1] + kx + 1) * c];
                                for ((o, &a), &b) in out.iter_mut().zip(xi).zip(wk) {
                                    *o += a * b;
                                }
                            }
                        }
                    }
                }
            }
        }
        LayerSpec::MaxPool2d { .. } => {
            aux.idx.resize(n * g.out_len(), 0);
            for_each_pool_window(g, n, |o0, taps| {
                let out = &mut y[o0..o0 + c];
                let idx = &mut aux.idx[o0..o0 + c];
                for (t, &i0) in taps.iter().enumerate() {
                    let xi = &x[i0..i0 + c];
                    if t == 0 {
                        out.copy_from_slice(xi);
                        for (ch, v) in idx.iter_mut().enumerate() {
                            *v = (i0 + ch) as u32;
                        }
                    } else {
                        for ch in 0..c {
                            if xi[ch] > out[ch] {
                                out[ch] = xi[ch];
                                idx[ch] = (i0 + ch) as u32;
                            }
                        }
                    }
                }
            });
        }
        LayerSpec::AvgPool2d { kernel, .. } => {
            let scale = 1.0 / (kernel[0] * kernel[1]) as f32;
            for_each_pool_window(g, n, |o0, taps| {
                let out = &mut y[o0..o0 + c];
                out.fill(0.0);
                for &i0 in taps {
                    for (o, &v) in out.iter_mut().zip(&x[i0..i0 + c]) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o *= scale;
                }
            });
        }
        LayerSpec::Relu => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v.max(0.0);
            }
        }
        LayerSpec::Relu6 => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v.clamp(0.0, 6.0);
            }
        }
        LayerSpec::Flatten => y.copy_from_slice(x),
    }
}

/// Backward of `n` samples. `x` is the layer input of the forward pass, `dy` the gradient
/// of the loss with respect to the output. If `grads` is given it **receives** (overwrites)
/// the parameter gradients; if `dx` is given it receives the input gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_raw(
    g: &Geom,
    p: &LayerParams,
    n: usize,
    x: &[f32],
    aux: &Aux,
    dy: &[f32],
    grads: Option<&mut LayerParams>,
    dx: Option<&mut [f32]>,
    scratch: &mut Scratch,
) {
    let [h, w, c] = g.inp;
    let [oh, ow, _oc] = g.out;
    debug_assert_eq!(dy.len(), n * g.out_len());
    match g.spec {
        LayerSpec::Dense { units } => {
            let k = h * w * c;
            if let Some(gr) = grads {
                gemm(1.0, Mat::t(dy, n, units), Mat::n(x, n, k), 0.0, &mut gr.weights, units, k);
                col_sums(dy, units, &mut gr.bias);
            }
            if let Some(dx) = dx {
                if n == 1 {
                    // One sample (the float twin's attacks): no sgemm packing of the weights.
                    gemv(1.0, Mat::n(dy, 1, units), Mat::n(&p.weights, units, k), 0.0, dx);
                } else {
                    gemm(1.0, Mat::n(dy, n, units), Mat::n(&p.weights, units, k), 0.0, dx, n, k);
                }
            }
        }
        LayerSpec::Conv2d { .. } if use_direct(g) => {
            conv::backward(Saved { g, p, n, x, aux }, dy, GradsOut { params: grads, input: dx }, scratch);
        }
        LayerSpec::Conv2d { filters, kernel, .. } => {
            let m = n * oh * ow;
            let k = kernel[0] * kernel[1] * c;
            let pointwise = g.pointwise();
            if let Some(gr) = grads {
                let cols: &[f32] = if pointwise { x } else { &aux.cols };
                gemm(1.0, Mat::t(dy, m, filters), Mat::n(cols, m, k), 0.0, &mut gr.weights, filters, k);
                col_sums(dy, filters, &mut gr.bias);
            }
            if let Some(dx) = dx {
                if pointwise {
                    gemm(1.0, Mat::n(dy, m, filters), Mat::n(&p.weights, filters, k), 0.0, dx, m, k);
                } else {
                    let dcols = &mut scratch.a;
                    dcols.resize(m * k, 0.0);
                    gemm(1.0, Mat::n(dy, m, filters), Mat::n(&p.weights, filters, k), 0.0, dcols, m, k);
                    col2im(g, n, dcols, dx);
                }
            }
        }
        LayerSpec::DepthwiseConv2d { .. } if use_direct(g) => {
            conv::depthwise_backward(Saved { g, p, n, x, aux }, dy, GradsOut { params: grads, input: dx }, scratch);
        }
        LayerSpec::DepthwiseConv2d { kernel, stride, padding } => {
            let mut grads = grads;
            if let Some(gr) = grads.as_deref_mut() {
                gr.weights.fill(0.0);
                gr.bias.fill(0.0);
            }
            let mut dx = dx;
            if let Some(d) = dx.as_deref_mut() {
                d.fill(0.0);
            }
            for i in 0..n {
                // The input is read for the weight gradient only (the input gradient runs
                // without one, see `affine_input_gradient`).
                let xs = if grads.is_some() { &x[i * h * w * c..(i + 1) * h * w * c] } else { &[][..] };
                let dys = &dy[i * oh * ow * c..(i + 1) * oh * ow * c];
                for oy in 0..oh {
                    let (ky0, ky1) = valid_range(oy, stride[0], padding[0], kernel[0], h);
                    for ox in 0..ow {
                        let (kx0, kx1) = valid_range(ox, stride[1], padding[1], kernel[1], w);
                        let d = &dys[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                        if let Some(gr) = grads.as_deref_mut() {
                            for (b, &v) in gr.bias.iter_mut().zip(d) {
                                *b += v;
                            }
                        }
                        for ky in ky0..ky1 {
                            let iy = oy * stride[0] + ky - padding[0];
                            for kx in kx0..kx1 {
                                let ix = ox * stride[1] + kx - padding[1];
                                let xo = (iy * w + ix) * c;
                                let wo = (ky * kernel[1] + kx) * c;
                                if let Some(gr) = grads.as_deref_mut() {
                                    let gw = &mut gr.weights[wo..wo + c];
                                    for ((gv, &a), &b) in gw.iter_mut().zip(&xs[xo..xo + c]).zip(d) {
                                        *gv += a * b;
                                    }
                                }
                                if let Some(dxa) = dx.as_deref_mut() {
                                    let dxs = &mut dxa[i * h * w * c + xo..i * h * w * c + xo + c];
                                    for ((o, &a), &b) in dxs.iter_mut().zip(&p.weights[wo..wo + c]).zip(d) {
                                        *o += a * b;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        LayerSpec::MaxPool2d { .. } => {
            if let Some(dx) = dx {
                dx.fill(0.0);
                for (&j, &d) in aux.idx.iter().zip(dy) {
                    dx[j as usize] += d;
                }
            }
        }
        LayerSpec::AvgPool2d { kernel, .. } => {
            if let Some(dx) = dx {
                dx.fill(0.0);
                let scale = 1.0 / (kernel[0] * kernel[1]) as f32;
                for_each_pool_window(g, n, |o0, taps| {
                    let d = &dy[o0..o0 + c];
                    for &i0 in taps {
                        for (o, &v) in dx[i0..i0 + c].iter_mut().zip(d) {
                            *o += v * scale;
                        }
                    }
                });
            }
        }
        LayerSpec::Relu => {
            if let Some(dx) = dx {
                for ((o, &d), &v) in dx.iter_mut().zip(dy).zip(x) {
                    *o = if v > 0.0 { d } else { 0.0 };
                }
            }
        }
        LayerSpec::Relu6 => {
            if let Some(dx) = dx {
                for ((o, &d), &v) in dx.iter_mut().zip(dy).zip(x) {
                    *o = if v > 0.0 && v < 6.0 { d } else { 0.0 };
                }
            }
        }
        LayerSpec::Flatten => {
            if let Some(dx) = dx {
                dx.copy_from_slice(dy);
            }
        }
    }
}

/// The input gradient of an affine layer (Dense, Conv2d, DepthwiseConv2d, AvgPool2d) on `n`
/// rows without a forward pass or a layer input: `dx = dy · ∂y/∂x`, the transpose of the
/// layer's linear map applied to every row of `dy`. Rows need not be samples: CROWN passes
/// its bound matrices (one row per sample and specification) backwards with it. `aux` only
/// receives the convolutions' offsets.
///
/// # Panics
/// On a layer that is not affine (its input gradient depends on the input).
pub(crate) fn affine_input_gradient(
    g: &Geom,
    p: &LayerParams,
    n: usize,
    dy: &[f32],
    dx: &mut [f32],
    aux: &mut Aux,
    scratch: &mut Scratch,
) {
    match g.spec {
        LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } if use_direct(g) => {
            conv::prepare_offsets(g, n, aux)
        }
        LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } => {}
        LayerSpec::AvgPool2d { .. } => {}
        _ => panic!("affine_input_gradient on {}", g.spec),
    }
    backward_raw(g, p, n, &[], aux, dy, None, Some(dx), scratch);
}

/// Valid kernel taps `[k0, k1)` along one axis: the runtime's receptive-field walk
/// ([`iocane_runtime::geometry::taps`]).
fn valid_range(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (usize, usize) {
    let (k0, k1, _) = iocane_runtime::geometry::taps(o, stride, pad, k, size);
    (k0, k1)
}

fn fill_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `out[j] = sum_i m[i, j]` for a row-major matrix with `cols` columns.
fn col_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// The windows of a pooling layer (no padding) on `n` samples: for every output pixel, in
/// order, calls `f(o0, taps)` with the offset of its `c` outputs and the offsets of the `c`
/// values of each of its `kh * kw` input pixels, in kernel order.
fn for_each_pool_window(g: &Geom, n: usize, mut f: impl FnMut(usize, &[usize])) {
    let (LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride }) = g.spec else {
        unreachable!()
    };
    let [h, w, c] = g.inp;
    let [oh, ow, _] = g.out;
    let mut taps = Vec::with_capacity(kernel[0] * kernel[1]);
    for i in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                taps.clear();
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        taps.push(((i * h + oy * stride[0] + ky) * w + ox * stride[1] + kx) * c);
                    }
                }
                f(((i * oh + oy) * ow + ox) * c, &taps);
            }
        }
    }
}

/// The im2col correspondence of a Conv2d on `n` samples: for every row `r` (sample `i`,
/// output pixel `(oy, ox)`, in that order) calls `f(r, whole, runs, span)`, where `whole` says
/// whether every tap is inside the image and `runs` holds, per kernel row inside the image,
/// the offset of its first in-image tap in the batch (`x`) and in the row, each run `span`
/// values long.
fn for_each_patch(g: &Geom, n: usize, mut f: impl FnMut(usize, bool, &[(usize, usize)], usize)) {
    let LayerSpec::Conv2d { kernel, stride, padding, .. } = g.spec else { unreachable!() };
    let [h, w, c] = g.inp;
    let [oh, ow, _] = g.out;
    let [kh, kw] = kernel;
    let mut runs = Vec::with_capacity(kh);
    let mut r = 0;
    for i in 0..n {
        for oy in 0..oh {
            let (ky0, ky1) = valid_range(oy, stride[0], padding[0], kh, h);
            for ox in 0..ow {
                let (kx0, kx1) = valid_range(ox, stride[1], padding[1], kw, w);
                let whole = ky0 == 0 && ky1 == kh && kx0 == 0 && kx1 == kw;
                runs.clear();
                if kx1 > kx0 {
                    let ix0 = ox * stride[1] + kx0 - padding[1];
                    for ky in ky0..ky1 {
                        let iy = oy * stride[0] + ky - padding[0];
                        runs.push((((i * h + iy) * w + ix0) * c, (ky * kw + kx0) * c));
                    }
                }
                f(r, whole, &runs, (kx1.max(kx0) - kx0) * c);
                r += 1;
            }
        }
    }
}

/// im2col for NHWC: row `(i, oy, ox)`, column `(ky, kx, ci)` (matching OHWI weights).
fn im2col(g: &Geom, n: usize, x: &[f32], cols: &mut [f32]) {
    let row_len = g.spec.fan_in(g.inp);
    for_each_patch(g, n, |r, whole, runs, span| {
        let row = &mut cols[r * row_len..(r + 1) * row_len];
        if !whole {
            row.fill(0.0);
        }
        for &(src, dst) in runs {
            row[dst..dst + span].copy_from_slice(&x[src..src + span]);
        }
    });
}

/// Adjoint of [`im2col`]: scatter-adds `cols` into `dx` (which is overwritten).
fn col2im(g: &Geom, n: usize, cols: &[f32], dx: &mut [f32]) {
    let row_len = g.spec.fan_in(g.inp);
    dx.fill(0.0);
    for_each_patch(g, n, |r, _, runs, span| {
        let row = &cols[r * row_len..(r + 1) * row_len];
        for &(dst, src) in runs {
            for (o, &v) in dx[dst..dst + span].iter_mut().zip(&row[src..src + span]) {
                *o += v;
            }
        }
    });
}

fn check_layer(spec: &LayerSpec, p: &LayerParams, x: &Tensor) -> Result<Geom, NnError> {
    let g = Geom::new(*spec, x.sample_shape())
        .map_err(|m| NnError::Shape(format!("{spec} on input {:?}: {m}", x.sample_shape())))?;
    if x.data.len() != x.shape.iter().product::<usize>() {
        return Err(NnError::Shape(format!("tensor of shape {:?} has {} values", x.shape, x.data.len())));
    }
    let (wl, bl) = spec.param_lens(g.inp);
    if p.weights.len() != wl || p.bias.len() != bl {
        return Err(NnError::Shape(format!(
            "{spec} on input {:?} needs {wl} weights and {bl} biases, got {} and {}",
            g.inp,
            p.weights.len(),
            p.bias.len()
        )));
    }
    Ok(g)
}

/// Runs one layer forward on a batch. `params` must have the lengths given by
/// [`LayerSpec::param_lens`] for `x`'s sample shape (empty for parameterless layers).
pub fn forward(spec: &LayerSpec, params: &LayerParams, x: &Tensor) -> Result<Tensor, NnError> {
    let g = check_layer(spec, params, x)?;
    let n = x.n();
    let mut y = Tensor::zeros([n, g.out[0], g.out[1], g.out[2]]);
    let mut aux = Aux::default();
    forward_raw(&g, params, n, &x.data, &mut y.data, &mut aux);
    Ok(y)
}

/// [`forward`] of a single sample, faster for Dense layers (a direct row-times-matrix
/// product instead of sgemm, which packs the whole weight matrix on every call). The sum runs
/// in another order, so a Dense output can differ from [`forward`]'s in the last bits: for
/// callers that run one sample at a time and never compare with a batch (the certifier's
/// float twin). Any other layer, or a batch, is [`forward`].
pub fn forward_sample(spec: &LayerSpec, params: &LayerParams, x: &Tensor) -> Result<Tensor, NnError> {
    let LayerSpec::Dense { units } = *spec else {
        return forward(spec, params, x);
    };
    let g = check_layer(spec, params, x)?;
    if x.n() != 1 {
        return forward(spec, params, x);
    }
    let mut y = Tensor::zeros([1, g.out[0], g.out[1], g.out[2]]);
    fill_bias(&mut y.data, &params.bias);
    let k = g.in_len();
    gemv(1.0, Mat::n(&x.data, 1, k), Mat::t(&params.weights, units, k), 1.0, &mut y.data);
    Ok(y)
}

/// Runs one layer backward on a batch: given the forward input `x` and the gradient `dy`
/// of some scalar loss with respect to the layer output, returns the input gradient (if
/// `want_input`) and the parameter gradients (empty buffers for parameterless layers).
pub fn backward(
    spec: &LayerSpec,
    params: &LayerParams,
    x: &Tensor,
    dy: &Tensor,
    want_input: bool,
) -> Result<(Option<Tensor>, LayerParams), NnError> {
    let (g, aux) = replay_forward(spec, params, x, dy)?;
    let n = x.n();
    let (wl, bl) = spec.param_lens(g.inp);
    let mut grads = LayerParams::zeros(wl, bl);
    let mut dx = want_input.then(|| Tensor::zeros(x.shape));
    let mut scratch = Scratch::default();
    backward_raw(
        &g,
        params,
        n,
        &x.data,
        &aux,
        &dy.data,
        spec.has_params().then_some(&mut grads),
        dx.as_mut().map(|t| t.data.as_mut_slice()),
        &mut scratch,
    );
    Ok((dx, grads))
}

/// Checks a backward call's shapes and recomputes the forward pass for the state backward
/// needs (im2col / argmax).
fn replay_forward(spec: &LayerSpec, params: &LayerParams, x: &Tensor, dy: &Tensor) -> Result<(Geom, Aux), NnError> {
    let g = check_backward(spec, params, x, dy)?;
    let n = x.n();
    let mut aux = Aux::default();
    let mut y = vec![0.0; n * g.out_len()];
    forward_raw(&g, params, n, &x.data, &mut y, &mut aux);
    Ok((g, aux))
}

/// Checks a backward call's shapes: the layer's on `x`, and `dy` of the layer's output shape.
fn check_backward(spec: &LayerSpec, params: &LayerParams, x: &Tensor, dy: &Tensor) -> Result<Geom, NnError> {
    let g = check_layer(spec, params, x)?;
    let n = x.n();
    if dy.shape != [n, g.out[0], g.out[1], g.out[2]] || dy.data.len() != n * g.out_len() {
        return Err(NnError::Shape(format!(
            "{spec}: output gradient has shape {:?}, expected {:?}",
            dy.shape,
            [n, g.out[0], g.out[1], g.out[2]]
        )));
    }
    Ok(g)
}

/// What [`backward_raw`] needs in `aux` to form the input gradient only: the direct
/// convolutions' offsets (and padded input), max pooling's argmax (a forward pass). Dense
/// layers, convolutions on the gemm path (their input gradient is `dy * W`, then col2im),
/// average pooling and the activations need nothing, so no forward pass is replayed.
fn input_gradient_state(g: &Geom, params: &LayerParams, n: usize, x: &[f32]) -> Aux {
    let mut aux = Aux::default();
    match g.spec {
        LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } if use_direct(g) => {
            conv::prepare_state(g, n, x, &mut aux)
        }
        LayerSpec::MaxPool2d { .. } => {
            let mut y = vec![0.0; n * g.out_len()];
            forward_raw(g, params, n, x, &mut y, &mut aux);
        }
        _ => {}
    }
    aux
}

/// The input gradient of one layer on a batch: given the forward input `x` and the gradient
/// `dy` of some scalar loss with respect to the layer output, returns `d loss / d x` (what
/// [`backward`] returns with `want_input`, without computing the parameter gradients).
pub fn input_gradient(spec: &LayerSpec, params: &LayerParams, x: &Tensor, dy: &Tensor) -> Result<Tensor, NnError> {
    let g = check_backward(spec, params, x, dy)?;
    let n = x.n();
    let aux = input_gradient_state(&g, params, n, &x.data);
    let mut dx = Tensor::zeros(x.shape);
    backward_raw(&g, params, n, &x.data, &aux, &dy.data, None, Some(dx.data.as_mut_slice()), &mut Scratch::default());
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn run(
        spec: &LayerSpec,
        p: &LayerParams,
        x: &Tensor,
        dy: &Tensor,
        gemm_only: bool,
    ) -> (Tensor, Tensor, LayerParams) {
        FORCE_GEMM_CONV.with(|f| f.set(gemm_only));
        let y = forward(spec, p, x).unwrap();
        let (dx, gp) = backward(spec, p, x, dy, true).unwrap();
        FORCE_GEMM_CONV.with(|f| f.set(false));
        (y, dx.unwrap(), gp)
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (&u, &v)) in a.iter().zip(b).enumerate() {
            assert!((u - v).abs() <= 1e-4 * (1.0 + u.abs().max(v.abs())), "{what}[{i}]: {u} vs {v}");
        }
    }

    /// The direct conv kernels agree with im2col + gemm, and the depthwise kernels with the
    /// plain loops (forward, input and parameter gradients) on many shapes, strides,
    /// paddings and filter / channel counts.
    #[test]
    fn direct_conv_matches_im2col_gemm() {
        let mut rng = Rng::new(99);
        for case in 0..300 {
            let kh = 1 + rng.below(3);
            let kw = 1 + rng.below(3);
            let f = [8, 16, 24, 32, 40, 64][rng.below(6)];
            let c = if case % 3 == 2 { [8, 16, 24][rng.below(3)] } else { 1 + rng.below(5) };
            let stride = [1 + rng.below(3), 1 + rng.below(3)];
            let padding = [rng.below(kh), rng.below(kw), rng.below(kh), rng.below(kw)];
            let inp = [kh + rng.below(6), kw + rng.below(6), c];
            let n = 1 + rng.below(4);
            let spec = if case % 3 == 2 {
                LayerSpec::DepthwiseConv2d { kernel: [kh, kw], stride, padding }
            } else {
                LayerSpec::Conv2d { filters: f, kernel: [kh, kw], stride, padding }
            };
            let g = Geom::new(spec, inp).unwrap();
            if g.pointwise() {
                continue;
            }
            assert!(use_direct(&g));
            let (wl, bl) = spec.param_lens(inp);
            let mut v = |len: usize| (0..len).map(|_| rng.uniform_range_f32(-1.0, 1.0)).collect::<Vec<_>>();
            let p = LayerParams { weights: v(wl), bias: v(bl) };
            let x = Tensor::new([n, inp[0], inp[1], c], v(n * g.in_len())).unwrap();
            let dy = Tensor::new([n, g.out[0], g.out[1], g.out[2]], v(n * g.out_len())).unwrap();
            let (y1, dx1, g1) = run(&spec, &p, &x, &dy, false);
            let (y2, dx2, g2) = run(&spec, &p, &x, &dy, true);
            let what = format!("case {case} {spec} on {inp:?}");
            close(&y1.data, &y2.data, &format!("{what} y"));
            close(&dx1.data, &dx2.data, &format!("{what} dx"));
            close(&g1.weights, &g2.weights, &format!("{what} dw"));
            close(&g1.bias, &g2.bias, &format!("{what} db"));
        }
    }

    /// `forward_sample` is `forward` up to float rounding, for one sample and for a batch.
    #[test]
    fn forward_sample_is_forward() {
        let mut rng = Rng::new(3);
        for (spec, inp) in [(LayerSpec::Dense { units: 13 }, [1, 1, 70]), (LayerSpec::Relu, [2, 3, 4])] {
            for n in [1, 2] {
                let g = Geom::new(spec, inp).unwrap();
                let (wl, bl) = spec.param_lens(inp);
                let mut v = |len: usize| (0..len).map(|_| rng.uniform_range_f32(-2.0, 2.0)).collect::<Vec<_>>();
                let p = LayerParams { weights: v(wl), bias: v(bl) };
                let x = Tensor::new([n, inp[0], inp[1], inp[2]], v(n * g.in_len())).unwrap();
                close(&forward_sample(&spec, &p, &x).unwrap().data, &forward(&spec, &p, &x).unwrap().data, "y");
            }
        }
    }

    /// `input_gradient` (which replays only the state the input gradient needs) gives
    /// bit-identical results to the full `backward` (which replays the forward pass), for
    /// every layer kind, both conv paths, a single sample (the attacks' case, where Dense
    /// takes the matrix-vector path) and a batch.
    #[test]
    fn input_gradient_is_backwards_input_gradient() {
        let mut rng = Rng::new(7);
        let specs = [
            (LayerSpec::Dense { units: 10 }, [1, 1, 60]),
            (LayerSpec::Conv2d { filters: 8, kernel: [3, 3], stride: [2, 2], padding: [1, 1, 1, 1] }, [7, 7, 3]),
            (LayerSpec::Conv2d { filters: 16, kernel: [3, 3], stride: [1, 1], padding: [0, 0, 0, 0] }, [6, 5, 2]),
            (LayerSpec::Conv2d { filters: 5, kernel: [1, 1], stride: [1, 1], padding: [0, 0, 0, 0] }, [4, 4, 3]),
            (LayerSpec::DepthwiseConv2d { kernel: [3, 3], stride: [1, 1], padding: [1, 1, 1, 1] }, [5, 5, 8]),
            (LayerSpec::MaxPool2d { kernel: [2, 2], stride: [2, 2] }, [6, 6, 3]),
            (LayerSpec::AvgPool2d { kernel: [2, 2], stride: [2, 2] }, [6, 6, 3]),
            (LayerSpec::Relu, [4, 4, 2]),
            (LayerSpec::Relu6, [4, 4, 2]),
            (LayerSpec::Flatten, [4, 4, 2]),
        ];
        for gemm_only in [false, true] {
            for (spec, inp) in specs {
                for n in [1, 3] {
                    let g = Geom::new(spec, inp).unwrap();
                    let (wl, bl) = spec.param_lens(inp);
                    let mut v = |len: usize| (0..len).map(|_| rng.uniform_range_f32(-4.0, 4.0)).collect::<Vec<_>>();
                    let p = LayerParams { weights: v(wl), bias: v(bl) };
                    let x = Tensor::new([n, inp[0], inp[1], inp[2]], v(n * g.in_len())).unwrap();
                    let dy = Tensor::new([n, g.out[0], g.out[1], g.out[2]], v(n * g.out_len())).unwrap();
                    FORCE_GEMM_CONV.with(|f| f.set(gemm_only));
                    let (full, _) = backward(&spec, &p, &x, &dy, true).unwrap();
                    let only = input_gradient(&spec, &p, &x, &dy).unwrap();
                    FORCE_GEMM_CONV.with(|f| f.set(false));
                    let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&only), bits(&full.unwrap()), "{spec} on {inp:?}, n = {n}, gemm only {gemm_only}");
                }
            }
        }
    }
}

//! Re-running a model on images that differ from a base image in a small window, on the
//! host (feature `std`): [`Incremental`].
//!
//! Query attacks (the Square Attack above all) run the model thousands of times on images
//! that differ from the best image so far in one small square. Every output of a
//! convolution, depthwise convolution or pooling layer is a function of its receptive field
//! alone, so only the outputs whose receptive field meets the changed rectangle can change;
//! the next layer's changed rectangle is the bounding box of those outputs, and so on until a
//! dense layer (or flatten), after which everything is recomputed.
//!
//! The arithmetic is [`Model::run`]'s, not a copy of it: each changed rectangle's outputs are
//! computed by the same kernels ([`crate::model::run_layer_in`]), on a crop of the layer's
//! input with the window cut to match (below), so every logit is bit-identical to a full
//! run. The property tests check that against [`Model::run`] on random models, images and
//! changes, and through sequences of accepted and rejected queries.
//!
//! **The crop.** For output rows `oy0..oy1` of a layer with stride `s`, top padding `pt` and
//! kernel height `kh`, output row `oy` reads input rows `oy*s - pt .. oy*s - pt + kh`
//! (clipped to the image; rows outside it are padding). The crop keeps input rows
//! `a = max(0, oy0*s - pt)` to `b = min(h, (oy1-1)*s - pt + kh)`; the cut window has top
//! padding `pt' = a - (oy0*s - pt)` and bottom padding `pb' = (oy1-1)*s - pt + kh - b`. Its
//! output row `oy - oy0` then starts at `(oy - oy0)*s - pt' = oy*s - pt - a`, the same input
//! row in crop coordinates, and the crop's clipping at `0` and `b - a` is the image's
//! clipping at `0` and `h` (no row between `a` and `b` is cut, no row outside is read), so
//! each output reads exactly the taps it reads in the whole layer. Columns alike.

use std::vec::Vec;

use crate::format::{Model, OpKind, Shape};
use crate::geometry::Window;
use crate::kernels::Output;
use crate::model::{run_layer_in, run_layer_portable_in, window, RunError};

/// Changed output pixels up to which a layer runs the portable kernels (see
/// [`run_layer_portable_in`]).
const FEW_PIXELS: usize = 16;
use crate::quant;

/// A half-open rectangle of pixels `rows x cols` of a tensor (all channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    rows: (usize, usize),
    cols: (usize, usize),
}

/// What changed in one tensor against the base: nothing, a rectangle, or possibly everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dirty {
    None,
    Rect(Rect),
    All,
}

/// Incremental evaluation of one model: a base image with every layer's output cached, and
/// queries on images that differ from it anywhere (cheapest when in one small window).
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use iocane_runtime::{testing::random_cnn_s, Incremental, Model};
/// let blob = random_cnn_s(1).emit();
/// let model = Model::parse(&blob).unwrap();
/// let mut inc = Incremental::new(&model);
/// let mut x = vec![100u8; model.input_len()];
/// inc.set_base(&x).unwrap();
/// x[5 * 28 + 7] = 200; // one pixel changed
/// let mut logits = vec![0; model.num_classes()];
/// let class = inc.run(&x, &mut logits).unwrap();
/// let mut arena = vec![0u8; model.arena_size()];
/// let mut full = vec![0; model.num_classes()];
/// assert_eq!(model.run(&x, &mut arena, &mut full).unwrap(), class);
/// assert_eq!(logits, full);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Incremental<'m> {
    model: Model<'m>,
    /// `base[0]`: the base image as int8 inputs; `base[i + 1]`: layer `i`'s output on it
    /// (a flatten layer's output is its input, copied). The logits layer has none.
    base: Vec<Vec<u8>>,
    /// The same tensors for the last query; equal to `base` outside `dirty`.
    cand: Vec<Vec<u8>>,
    /// What `cand[i]` changed against `base[i]` in the last query.
    dirty: Vec<Dirty>,
    /// The shape of `base[i]`.
    shapes: Vec<Shape>,
    base_pixels: Vec<u8>,
    cand_pixels: Vec<u8>,
    base_logits: Vec<i32>,
    cand_logits: Vec<i32>,
    has_base: bool,
    crop: Vec<u8>,
    part: Vec<u8>,
}

impl<'m> Incremental<'m> {
    /// An evaluator for `model`, with no base image yet ([`Incremental::set_base`] first).
    pub fn new(model: &Model<'m>) -> Self {
        let mut shapes = vec![model.input_shape()];
        shapes.extend(model.layers().filter(|l| !l.outputs_logits()).map(|l| l.output_shape()));
        let sizes: Vec<usize> = shapes.iter().map(|s| s.len()).collect();
        let k = model.num_classes();
        Incremental {
            model: *model,
            base: sizes.iter().map(|&n| vec![0; n]).collect(),
            cand: sizes.iter().map(|&n| vec![0; n]).collect(),
            dirty: vec![Dirty::None; sizes.len()],
            shapes,
            base_pixels: vec![0; model.input_len()],
            cand_pixels: vec![0; model.input_len()],
            base_logits: vec![0; k],
            cand_logits: vec![0; k],
            has_base: false,
            crop: Vec::new(),
            part: Vec::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    /// Makes `pixels` the base image (a full run, every layer's output kept) and returns its
    /// class; its logits are [`Incremental::base_logits`].
    pub fn set_base(&mut self, pixels: &[u8]) -> Result<usize, RunError> {
        self.check(pixels)?;
        self.base_pixels.copy_from_slice(pixels);
        for (d, &p) in self.base[0].iter_mut().zip(pixels) {
            *d = quant::pixel_to_input(p) as u8;
        }
        for (level, layer) in self.model.layers().enumerate() {
            if layer.outputs_logits() {
                run_layer_in(&layer, &window(&layer), &self.base[level], Output::Logits(&mut self.base_logits));
                break;
            }
            let (done, rest) = self.base.split_at_mut(level + 1);
            let (input, out) = (&done[level], &mut rest[0]);
            if layer.op() == OpKind::Flatten {
                out.copy_from_slice(input);
            } else {
                run_into(&layer, &window(&layer), input, out);
            }
        }
        for (c, b) in self.cand.iter_mut().zip(&self.base) {
            c.copy_from_slice(b);
        }
        self.dirty.fill(Dirty::None);
        self.cand_pixels.copy_from_slice(pixels);
        self.cand_logits.copy_from_slice(&self.base_logits);
        self.has_base = true;
        Ok(quant::argmax(&self.base_logits))
    }

    /// The base image's logits.
    pub fn base_logits(&self) -> &[i32] {
        &self.base_logits
    }

    /// Runs the model on `pixels`, recomputing only what can differ from the base image
    /// (the bounding rectangle of the changed pixels, carried through the layers). Writes
    /// the logits and returns the class: both exactly those of [`Model::run`]. Without a base
    /// image yet, `pixels` becomes the base.
    pub fn run(&mut self, pixels: &[u8], logits: &mut [i32]) -> Result<usize, RunError> {
        self.check(pixels)?;
        if logits.len() != self.model.num_classes() {
            return Err(RunError::LogitsLength { expected: self.model.num_classes(), got: logits.len() });
        }
        if !self.has_base {
            let class = self.set_base(pixels)?;
            logits.copy_from_slice(&self.base_logits);
            return Ok(class);
        }
        self.revert();
        let shape = self.model.input_shape();
        let mut dirty = changed_rect(&self.base_pixels, pixels, shape);
        self.cand_pixels.copy_from_slice(pixels);
        if let Dirty::Rect(r) = dirty {
            let c = shape.c;
            for y in r.rows.0..r.rows.1 {
                let span = (y * shape.w + r.cols.0) * c..(y * shape.w + r.cols.1) * c;
                for (d, &p) in self.cand[0][span.clone()].iter_mut().zip(&pixels[span]) {
                    *d = quant::pixel_to_input(p) as u8;
                }
            }
        }
        self.dirty[0] = dirty;
        let mut level = 0;
        for layer in self.model.layers() {
            if dirty == Dirty::None {
                break;
            }
            if layer.outputs_logits() {
                run_layer_in(&layer, &window(&layer), &self.cand[level], Output::Logits(&mut self.cand_logits));
                dirty = Dirty::All;
                break;
            }
            let (done, rest) = self.cand.split_at_mut(level + 1);
            let (input, out) = (&done[level], &mut rest[0]);
            dirty = match (layer.op(), dirty) {
                (OpKind::Flatten, _) => {
                    out.copy_from_slice(input);
                    Dirty::All
                }
                (OpKind::Dense, _) | (_, Dirty::All) => {
                    run_into(&layer, &window(&layer), input, out);
                    Dirty::All
                }
                (_, Dirty::Rect(r)) => {
                    let win = window(&layer);
                    match output_rect(&win, r) {
                        None => Dirty::None,
                        Some(o) => {
                            let (sub, rows, cols) = cut(&win, o);
                            gather(input, win.input, rows, cols, &mut self.crop);
                            self.part.resize(sub.output.len(), 0);
                            if sub.output.h * sub.output.w <= FEW_PIXELS && layer.op().has_weights() {
                                let (zero_point, (min, max)) = (layer.output_zero_point(), layer.clamp());
                                let out = Output::Act { buf: &mut self.part, zero_point, min, max };
                                run_layer_portable_in(&layer, &sub, &self.crop, out);
                            } else {
                                run_into(&layer, &sub, &self.crop, &mut self.part);
                            }
                            scatter(&self.part, out, win.output, o);
                            Dirty::Rect(o)
                        }
                    }
                }
                (_, Dirty::None) => Dirty::None,
            };
            level += 1;
            self.dirty[level] = dirty;
        }
        if dirty == Dirty::None {
            self.cand_logits.copy_from_slice(&self.base_logits);
        }
        logits.copy_from_slice(&self.cand_logits);
        Ok(quant::argmax(logits))
    }

    /// Makes the image of the last [`Incremental::run`] the base (keeping every cached
    /// tensor, so the next query again recomputes only its own change).
    pub fn accept(&mut self) {
        for (((b, c), d), &s) in self.base.iter_mut().zip(&self.cand).zip(&mut self.dirty).zip(&self.shapes) {
            copy_dirty(c, b, *d, s);
            *d = Dirty::None;
        }
        self.base_pixels.copy_from_slice(&self.cand_pixels);
        self.base_logits.copy_from_slice(&self.cand_logits);
    }

    /// Restores the candidate tensors to the base where the last query changed them.
    fn revert(&mut self) {
        for (((c, b), d), &s) in self.cand.iter_mut().zip(&self.base).zip(&mut self.dirty).zip(&self.shapes) {
            copy_dirty(b, c, *d, s);
            *d = Dirty::None;
        }
    }

    fn check(&self, pixels: &[u8]) -> Result<(), RunError> {
        let n = self.model.input_len();
        if pixels.len() != n {
            return Err(RunError::InputLength { expected: n, got: pixels.len() });
        }
        Ok(())
    }
}

/// Copies what `d` marks of a tensor of shape `s` from `src` to `dst`.
fn copy_dirty(src: &[u8], dst: &mut [u8], d: Dirty, s: Shape) {
    match d {
        Dirty::None => {}
        Dirty::All => dst.copy_from_slice(src),
        Dirty::Rect(r) => {
            for y in r.rows.0..r.rows.1 {
                let span = (y * s.w + r.cols.0) * s.c..(y * s.w + r.cols.1) * s.c;
                dst[span.clone()].copy_from_slice(&src[span]);
            }
        }
    }
}

/// Runs a weighted or pooling layer over `win` (the layer's own window or a cut of it).
fn run_into(layer: &crate::Layer<'_>, win: &Window, input: &[u8], out: &mut [u8]) {
    if layer.op().has_weights() {
        let (zero_point, (min, max)) = (layer.output_zero_point(), layer.clamp());
        run_layer_in(layer, win, input, Output::Act { buf: out, zero_point, min, max });
    } else {
        crate::model::run_pool_in(layer, win, input, out);
    }
}

/// The bounding rectangle of the pixels where `a` and `b` differ.
fn changed_rect(a: &[u8], b: &[u8], s: Shape) -> Dirty {
    let row = s.w * s.c;
    let mut rect: Option<Rect> = None;
    for (y, (ra, rb)) in a.chunks_exact(row).zip(b.chunks_exact(row)).enumerate() {
        if ra == rb {
            continue;
        }
        let first = ra.iter().zip(rb).position(|(x, y)| x != y).unwrap_or(0) / s.c;
        let last = row - 1 - ra.iter().rev().zip(rb.iter().rev()).position(|(x, y)| x != y).unwrap_or(0);
        let (x0, x1) = (first, last / s.c + 1);
        rect = Some(match rect {
            None => Rect { rows: (y, y + 1), cols: (x0, x1) },
            Some(r) => Rect { rows: (r.rows.0, y + 1), cols: (r.cols.0.min(x0), r.cols.1.max(x1)) },
        });
    }
    rect.map_or(Dirty::None, Dirty::Rect)
}

/// Output positions `o` of one axis whose taps `o*s - p .. o*s - p + k` meet input `a..b`.
fn axis_range(a: usize, b: usize, k: usize, s: usize, p: usize, n_out: usize) -> Option<(usize, usize)> {
    // o*s - p < b  <=>  o*s < b + p;  o*s - p + k > a  <=>  o*s > a + p - k.
    let hi = (b + p).div_ceil(s).min(n_out);
    let lo = if a + p + 1 > k { (a + p + 1 - k).div_ceil(s) } else { 0 };
    (lo < hi).then_some((lo, hi))
}

/// The outputs of `win` whose receptive field meets `r`, if any.
fn output_rect(win: &Window, r: Rect) -> Option<Rect> {
    let rows = axis_range(r.rows.0, r.rows.1, win.kernel.0, win.stride.0, win.padding.0, win.output.h)?;
    let cols = axis_range(r.cols.0, r.cols.1, win.kernel.1, win.stride.1, win.padding.1, win.output.w)?;
    Some(Rect { rows, cols })
}

/// One axis of the cut (module header): the crop `a..b` of the input and the cut window's
/// padding before and after, for outputs `o0..o1`.
fn cut_axis((o0, o1): (usize, usize), k: usize, s: usize, p: usize, n_in: usize) -> ((usize, usize), usize, usize) {
    let start = (o0 * s) as isize - p as isize;
    let end = ((o1 - 1) * s) as isize - p as isize + k as isize;
    let a = start.max(0) as usize;
    let b = (end.min(n_in as isize)).max(a as isize) as usize;
    ((a, b), (a as isize - start) as usize, (end - b as isize) as usize)
}

/// The window of the outputs `o` of `win`, over the crop it reads, and that crop's rows and
/// columns in the input.
fn cut(win: &Window, o: Rect) -> (Window, (usize, usize), (usize, usize)) {
    let (rows, pt, pb) = cut_axis(o.rows, win.kernel.0, win.stride.0, win.padding.0, win.input.h);
    let (cols, pl, pr) = cut_axis(o.cols, win.kernel.1, win.stride.1, win.padding.1, win.input.w);
    let sub = Window {
        input: Shape::new(rows.1 - rows.0, cols.1 - cols.0, win.input.c),
        output: Shape::new(o.rows.1 - o.rows.0, o.cols.1 - o.cols.0, win.output.c),
        kernel: win.kernel,
        stride: win.stride,
        padding: (pt, pl, pb, pr),
    };
    debug_assert_eq!(
        Window::output_shape(sub.input, sub.kernel, sub.stride, sub.padding, sub.output.c),
        Some(sub.output)
    );
    (sub, rows, cols)
}

/// Copies input rows `rows`, columns `cols` (all channels) of the tensor `x` of shape `s`
/// into `crop`.
fn gather(x: &[u8], s: Shape, rows: (usize, usize), cols: (usize, usize), crop: &mut Vec<u8>) {
    crop.clear();
    for y in rows.0..rows.1 {
        crop.extend_from_slice(&x[(y * s.w + cols.0) * s.c..(y * s.w + cols.1) * s.c]);
    }
}

/// Writes `part` (the rectangle `r` of a tensor of shape `s`) into `out`.
fn scatter(part: &[u8], out: &mut [u8], s: Shape, r: Rect) {
    let span = (r.cols.1 - r.cols.0) * s.c;
    for (y, src) in (r.rows.0..r.rows.1).zip(part.chunks_exact(span)) {
        let at = (y * s.w + r.cols.0) * s.c;
        out[at..at + span].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::testing::{random_cnn_s, random_model, SynthLayer};
    use proptest::prelude::*;

    fn full_run(model: &Model<'_>, x: &[u8]) -> (Vec<i32>, usize) {
        let mut arena = vec![0u8; model.arena_size()];
        let mut z = vec![0i32; model.num_classes()];
        let c = model.run(x, &mut arena, &mut z).unwrap();
        (z, c)
    }

    /// A copy of `x` with a random `s x s` window (of the `h x w` image) set to random
    /// values, some channels only.
    fn change_window(x: &[u8], shape: Shape, s: usize, rng: &mut SplitMix64) -> Vec<u8> {
        let mut y = x.to_vec();
        let (h, w, c) = (shape.h, shape.w, shape.c);
        let (sh, sw) = (s.min(h), s.min(w));
        let y0 = (rng.next_u64() as usize) % (h - sh + 1);
        let x0 = (rng.next_u64() as usize) % (w - sw + 1);
        for yy in y0..y0 + sh {
            for xx in x0..x0 + sw {
                for ch in 0..c {
                    if !rng.next_u64().is_multiple_of(4) {
                        y[(yy * w + xx) * c + ch] = rng.next_u64() as u8;
                    }
                }
            }
        }
        y
    }

    /// Replays `steps` queries of (window size, accept?) on `model` from a random base,
    /// checking every query's logits and class against a full run.
    fn replay(model: &Model<'_>, seed: u64, steps: &[(usize, bool)]) -> Result<(), TestCaseError> {
        let mut rng = SplitMix64(seed);
        let shape = model.input_shape();
        let mut base: Vec<u8> = (0..model.input_len()).map(|_| rng.next_u64() as u8).collect();
        let mut inc = Incremental::new(model);
        let class = inc.set_base(&base).unwrap();
        let (z, c) = full_run(model, &base);
        prop_assert_eq!((inc.base_logits(), class), (&z[..], c));
        let mut logits = vec![0i32; model.num_classes()];
        for &(s, accept) in steps {
            let x = change_window(&base, shape, s, &mut rng);
            let class = inc.run(&x, &mut logits).unwrap();
            let (z, c) = full_run(model, &x);
            prop_assert_eq!((&logits[..], class), (&z[..], c), "window {} accept {}", s, accept);
            if accept {
                inc.accept();
                base = x;
                prop_assert_eq!(inc.base_logits(), &z[..]);
            }
        }
        Ok(())
    }

    fn layer() -> impl Strategy<Value = SynthLayer> {
        prop_oneof![
            (1usize..12, 1usize..5, 1usize..4, 0usize..3, any::<bool>())
                .prop_map(|(filters, k, s, p, relu)| SynthLayer::Conv { filters, k, s, p: p.min(k - 1), relu }),
            (1usize..5, 1usize..3, any::<bool>()).prop_map(|(k, s, relu)| SynthLayer::Depthwise {
                k,
                s,
                p: k / 2,
                relu
            }),
            Just(SynthLayer::MaxPool { k: 2, s: 2 }),
            Just(SynthLayer::AvgPool { k: 2, s: 2 }),
            Just(SynthLayer::MaxPool { k: 3, s: 2 }),
            (1usize..20, any::<bool>()).prop_map(|(units, relu)| SynthLayer::Dense { units, relu }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Random models (convolutions of every stride, padding and kernel the strategy
        /// makes, depthwise, pooling, then dense layers), random bases, and 12 queries each
        /// changing a random window (some accepted as the new base): every query's logits
        /// and class are exactly `run`'s.
        #[test]
        fn incremental_runs_are_full_runs(
            layers in prop::collection::vec(layer(), 0..5),
            seed in any::<u64>(),
            steps in prop::collection::vec((1usize..6, any::<bool>()), 12),
            (h, w, c) in (3usize..13, 3usize..13, 1usize..4),
        ) {
            let (mut spatial, dense): (Vec<_>, Vec<_>) =
                layers.into_iter().partition(|l| !matches!(l, SynthLayer::Dense { .. }));
            // Keep the spatial layers whose window fits what is left of the image.
            let mut shape = Shape::new(h, w, c);
            spatial.retain(|l| {
                let (k, s, p) = match *l {
                    SynthLayer::Conv { k, s, p, .. } => (k, s, p),
                    SynthLayer::Depthwise { k, s, p, .. } => (k, s, p),
                    SynthLayer::MaxPool { k, s } | SynthLayer::AvgPool { k, s } => (k, s, 0),
                    _ => return false,
                };
                match (crate::geometry::output_len(shape.h, 2 * p, k, s), crate::geometry::output_len(shape.w, 2 * p, k, s)) {
                    (Some(oh), Some(ow)) => {
                        shape = Shape::new(oh, ow, shape.c);
                        true
                    }
                    _ => false,
                }
            });
            let mut all = spatial;
            if !dense.is_empty() {
                all.push(SynthLayer::Flatten);
                all.extend(dense);
            }
            let repr = random_model(Shape::new(h, w, c), 5, &all, seed);
            let blob = repr.emit();
            let model = Model::parse(&blob).unwrap();
            replay(&model, seed ^ 0x5eed, &steps)?;
        }
    }

    /// The `cnn-s` preset's shape with Square-sized windows, and the corner cases: no
    /// change, the whole image changed, two distant pixels (one bounding rectangle).
    #[test]
    fn cnn_s_windows_and_corner_cases() {
        let blob = random_cnn_s(7).emit();
        let model = Model::parse(&blob).unwrap();
        let steps: Vec<(usize, bool)> = (0..60).map(|i| (1 + i % 7, i % 3 == 0)).collect();
        replay(&model, 11, &steps).unwrap();

        let mut inc = Incremental::new(&model);
        let mut logits = vec![0i32; model.num_classes()];
        let x: Vec<u8> = (0..model.input_len()).map(|i| (i * 31 % 256) as u8).collect();
        // Without a base, the first query is a full run.
        assert_eq!(inc.run(&x, &mut logits).unwrap(), full_run(&model, &x).1);
        assert_eq!(logits, full_run(&model, &x).0);
        // No change.
        inc.run(&x, &mut logits).unwrap();
        assert_eq!(logits, full_run(&model, &x).0);
        // Two corners: the rectangle is the whole image.
        let mut y = x.clone();
        y[0] ^= 0x80;
        y[model.input_len() - 1] ^= 0x80;
        inc.run(&y, &mut logits).unwrap();
        assert_eq!(logits, full_run(&model, &y).0);
        // Everything.
        let z: Vec<u8> = x.iter().map(|v| 255 - v).collect();
        inc.run(&z, &mut logits).unwrap();
        assert_eq!(logits, full_run(&model, &z).0);
        // Back to the base after a rejected query.
        inc.run(&x, &mut logits).unwrap();
        assert_eq!(logits, full_run(&model, &x).0);
        // Buffer sizes are checked.
        assert_eq!(inc.run(&x[1..], &mut logits), Err(RunError::InputLength { expected: x.len(), got: x.len() - 1 }));
        assert!(matches!(inc.run(&x, &mut logits[1..]), Err(RunError::LogitsLength { .. })));
    }

    /// The output range of one axis is exactly the outputs whose taps meet the input range
    /// (brute force over small geometries).
    #[test]
    fn axis_range_is_the_brute_force_set() {
        for n_in in 1..9usize {
            for k in 1..5usize {
                for s in 1..4usize {
                    for p in 0..k {
                        let Some(n_out) = crate::geometry::output_len(n_in, 2 * p, k, s) else { continue };
                        for a in 0..n_in {
                            for b in a + 1..=n_in {
                                let meets = |o: usize| {
                                    let start = (o * s) as isize - p as isize;
                                    (start..start + k as isize).any(|t| t >= a as isize && t < b as isize)
                                };
                                let want: Vec<usize> = (0..n_out).filter(|&o| meets(o)).collect();
                                let got: Vec<usize> =
                                    axis_range(a, b, k, s, p, n_out).map_or(vec![], |(lo, hi)| (lo..hi).collect());
                                assert_eq!(got, want, "n_in {n_in} k {k} s {s} p {p} a {a} b {b}");
                            }
                        }
                    }
                }
            }
        }
    }
}

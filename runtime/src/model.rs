//! Running a validated model: the ping-pong arena plan and the layer loop.

use crate::format::{Layer, Model, OpKind};
use crate::kernels::{self, Output, Window};
use crate::quant;
use core::fmt;

/// Why a run was refused. Only the caller's buffers can be wrong: the model was validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The input does not have `input_len()` pixels.
    InputLength {
        /// Pixels the model takes.
        expected: usize,
        /// Pixels given.
        got: usize,
    },
    /// The arena is smaller than `arena_size()`.
    ArenaTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The logits buffer does not have `num_classes()` slots (or the fixed capacity is too small).
    LogitsLength {
        /// Slots needed.
        expected: usize,
        /// Slots given.
        got: usize,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::InputLength { expected, got } => write!(f, "input has {got} pixels, model takes {expected}"),
            RunError::ArenaTooSmall { needed, got } => write!(f, "arena has {got} bytes, model needs {needed}"),
            RunError::LogitsLength { expected, got } => {
                write!(f, "logits buffer has {got} slots, model has {expected} classes")
            }
        }
    }
}

impl core::error::Error for RunError {}

/// A classification: the winning class and all logits, in fixed capacity `N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction<const N: usize> {
    /// Index of the largest logit (ties: lowest index).
    pub class: usize,
    /// The int32 logits, one per class.
    pub logits: heapless::Vec<i32, N>,
}

impl<const N: usize> Prediction<N> {
    /// The `K` best classes with their logits, best first (ties: lowest index first).
    pub fn top<const K: usize>(&self) -> heapless::Vec<(usize, i32), K> {
        let mut out: heapless::Vec<(usize, i32), K> = heapless::Vec::new();
        for (i, &v) in self.logits.iter().enumerate() {
            let pos = out.iter().position(|&(_, w)| v > w).unwrap_or(out.len());
            if pos < K {
                if out.len() == K {
                    out.pop();
                }
                // Cannot fail: there is room after the pop above.
                let _ = out.insert(pos, (i, v));
            }
        }
        out
    }
}

impl<'a> Model<'a> {
    /// Runs one image. `pixels` are the raw 8-bit pixels in NHWC order, `arena` at least
    /// [`Model::arena_size`] bytes, `logits` exactly [`Model::num_classes`] slots.
    /// Returns the predicted class (argmax, ties to the lowest index).
    pub fn run(&self, pixels: &[u8], arena: &mut [u8], logits: &mut [i32]) -> Result<usize, RunError> {
        self.run_observed(pixels, arena, logits, |_, _, _| {})
    }

    /// Like [`Model::run`], calling `observe(layer_index, layer, output)` after every int8
    /// layer with its output tensor (bytes holding int8 values). Flatten layers are reported
    /// with their (unchanged) input; the final logits layer is not reported here.
    pub fn run_observed(
        &self,
        pixels: &[u8],
        arena: &mut [u8],
        logits: &mut [i32],
        mut observe: impl FnMut(usize, &Layer<'a>, &[u8]),
    ) -> Result<usize, RunError> {
        let n_in = self.input_len();
        if pixels.len() != n_in {
            return Err(RunError::InputLength { expected: n_in, got: pixels.len() });
        }
        let need = self.arena_size();
        if arena.len() < need {
            return Err(RunError::ArenaTooSmall { needed: need, got: arena.len() });
        }
        if logits.len() != self.num_classes() {
            return Err(RunError::LogitsLength { expected: self.num_classes(), got: logits.len() });
        }
        let arena = &mut arena[..need];
        for (d, &p) in arena.iter_mut().zip(pixels) {
            *d = quant::pixel_to_input(p) as u8;
        }
        // The current tensor lives at the start of the arena (`at_start`) or at its end.
        let mut cur_len = n_in;
        let mut at_start = true;
        for (i, layer) in self.layers().enumerate() {
            let op = layer.op();
            if op == OpKind::Flatten {
                let range = if at_start { 0..cur_len } else { need - cur_len..need };
                observe(i, &layer, &arena[range]);
                continue;
            }
            let out_len = layer.output_shape().len();
            if layer.outputs_logits() {
                let input = if at_start { &arena[..cur_len] } else { &arena[need - cur_len..] };
                run_layer(&layer, input, Output::Logits(logits));
                break;
            }
            let (input, out) = if at_start {
                let (lo, hi) = arena.split_at_mut(need - out_len);
                (&lo[..cur_len], hi)
            } else {
                let (lo, hi) = arena.split_at_mut(out_len);
                (&hi[hi.len() - cur_len..], lo)
            };
            if op.has_weights() {
                let (zero_point, (min, max)) = (layer.output_zero_point(), layer.clamp());
                run_layer(&layer, input, Output::Act { buf: &mut out[..], zero_point, min, max });
            } else {
                run_pool(&layer, input, out);
            }
            observe(i, &layer, out);
            cur_len = out_len;
            at_start = !at_start;
        }
        Ok(quant::argmax(logits))
    }

    /// Runs one image and returns the class and the logits in a fixed-capacity vector.
    /// Fails with [`RunError::LogitsLength`] if the model has more than `N` classes.
    pub fn classify<const N: usize>(&self, pixels: &[u8], arena: &mut [u8]) -> Result<Prediction<N>, RunError> {
        let k = self.num_classes();
        let mut logits: heapless::Vec<i32, N> = heapless::Vec::new();
        if logits.resize(k, 0).is_err() {
            return Err(RunError::LogitsLength { expected: k, got: N });
        }
        let class = self.run(pixels, arena, &mut logits)?;
        Ok(Prediction { class, logits })
    }
}

/// The window geometry of a layer.
pub fn window(layer: &Layer<'_>) -> Window {
    Window {
        input: layer.input_shape(),
        output: layer.output_shape(),
        kernel: layer.kernel(),
        stride: layer.stride(),
        padding: layer.padding(),
    }
}

pub(crate) fn run_layer(layer: &Layer<'_>, input: &[u8], out: Output<'_>) {
    run_layer_in(layer, &window(layer), input, out)
}

/// A weighted layer's kernel over `win`: the layer's own window, or (on the host) the cut of
/// it that [`crate::Incremental`] recomputes.
pub(crate) fn run_layer_in(layer: &Layer<'_>, win: &Window, input: &[u8], out: Output<'_>) {
    let w = kernels::Weights::new(layer.weight_bytes(), layer.input_zero_point(), layer);
    match layer.op() {
        OpKind::Dense => kernels::dense(input, &w, out),
        OpKind::Conv2d => kernels::conv2d(win, input, &w, out),
        OpKind::DepthwiseConv2d => kernels::depthwise_conv2d(win, input, &w, out),
        OpKind::MaxPool2d | OpKind::AvgPool2d | OpKind::Flatten => {}
    }
}

/// [`run_layer_in`] with the portable kernels (bit-identical to the dispatched ones: the
/// kernel tests compare every path with the reference). For a handful of output pixels they
/// are the faster choice: the vector paths lay out a block's weights afresh on every call.
#[cfg(feature = "std")]
pub(crate) fn run_layer_portable_in(layer: &Layer<'_>, win: &Window, input: &[u8], mut out: Output<'_>) {
    let w = kernels::Weights::new(layer.weight_bytes(), layer.input_zero_point(), layer);
    match layer.op() {
        OpKind::Dense => kernels::portable::dense(input, &w, &mut out),
        OpKind::Conv2d => kernels::portable::conv2d(win, input, &w, &mut out),
        OpKind::DepthwiseConv2d => kernels::portable::depthwise_conv2d(win, input, &w, &mut out),
        OpKind::MaxPool2d | OpKind::AvgPool2d | OpKind::Flatten => {}
    }
}

pub(crate) fn run_pool(layer: &Layer<'_>, input: &[u8], out: &mut [u8]) {
    run_pool_in(layer, &window(layer), input, out)
}

/// A pooling layer over `win` (see [`run_layer_in`]).
pub(crate) fn run_pool_in(layer: &Layer<'_>, win: &Window, input: &[u8], out: &mut [u8]) {
    match layer.op() {
        OpKind::MaxPool2d => kernels::max_pool2d(win, input, out),
        OpKind::AvgPool2d => kernels::avg_pool2d(win, input, out),
        _ => {}
    }
}

//! Test fixtures (feature `testing`): synthetic models with random weights for tests,
//! benches, examples and fuzz seeds. Not part of the default API: nothing in production code
//! should build a model from random numbers.

use std::string::ToString;
use std::vec::Vec;

use crate::emit::{LayerRepr, ModelRepr};
use crate::kernels::ChannelParams;
use crate::rng::SplitMix64;
use crate::{quant, OpKind, Shape};

/// A layer of a synthetic model for [`random_model`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthLayer {
    /// Dense with `units` outputs, optional fused ReLU.
    Dense {
        /// Output units.
        units: usize,
        /// Fuse a ReLU.
        relu: bool,
    },
    /// Conv2d with `filters` outputs, square kernel, stride and symmetric padding.
    Conv {
        /// Output channels.
        filters: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        s: usize,
        /// Padding on every side.
        p: usize,
        /// Fuse a ReLU.
        relu: bool,
    },
    /// Depthwise conv, square kernel, stride, symmetric padding.
    Depthwise {
        /// Kernel size.
        k: usize,
        /// Stride.
        s: usize,
        /// Padding on every side.
        p: usize,
        /// Fuse a ReLU.
        relu: bool,
    },
    /// Max pooling, square kernel and stride.
    MaxPool {
        /// Kernel size.
        k: usize,
        /// Stride.
        s: usize,
    },
    /// Average pooling, square kernel and stride.
    AvgPool {
        /// Kernel size.
        k: usize,
        /// Stride.
        s: usize,
    },
    /// Flatten.
    Flatten,
}

/// Builds a valid model with random int8 weights, biases, zero points and requantization
/// parameters scaled so activations use the int8 range. For tests, benches and fuzz seeds:
/// the arithmetic is real, only the numbers are random. A final Dense to `classes` int32
/// logits is appended; a Flatten is inserted before the first Dense if missing.
pub fn random_model(input: Shape, classes: usize, layers: &[SynthLayer], seed: u64) -> ModelRepr {
    let mut rng = SplitMix64(seed);
    let mut shape = input;
    let mut zp = quant::INPUT_ZERO_POINT;
    let mut out = Vec::new();
    let mut all: Vec<SynthLayer> = layers.to_vec();
    all.push(SynthLayer::Dense { units: classes, relu: false });
    let n = all.len();
    for (i, l) in all.into_iter().enumerate() {
        let last = i + 1 == n;
        if matches!(l, SynthLayer::Dense { .. }) && (shape.h != 1 || shape.w != 1) {
            out.push(LayerRepr::flatten(shape, zp));
            shape = Shape::new(1, 1, shape.len());
        }
        let (op, kernel, stride, padding, oc, relu) = match l {
            SynthLayer::Flatten => {
                let f = LayerRepr::flatten(shape, zp);
                shape = f.output;
                out.push(f);
                continue;
            }
            SynthLayer::MaxPool { k, s } | SynthLayer::AvgPool { k, s } => {
                let op = if matches!(l, SynthLayer::MaxPool { .. }) { OpKind::MaxPool2d } else { OpKind::AvgPool2d };
                let p = LayerRepr::pool(op, shape, (k, k), (s, s), zp);
                shape = p.output;
                out.push(p);
                continue;
            }
            SynthLayer::Dense { units, relu } => (OpKind::Dense, (1, 1), (1, 1), (0, 0, 0, 0), units, relu),
            SynthLayer::Conv { filters, k, s, p, relu } => {
                (OpKind::Conv2d, (k, k), (s, s), (p, p, p, p), filters, relu)
            }
            SynthLayer::Depthwise { k, s, p, relu } => {
                (OpKind::DepthwiseConv2d, (k, k), (s, s), (p, p, p, p), shape.c, relu)
            }
        };
        let output = if op == OpKind::Dense {
            Shape::new(1, 1, oc)
        } else {
            LayerRepr::window_output(shape, kernel, stride, padding, oc)
        };
        let fan_in = match op {
            OpKind::Dense => shape.c,
            OpKind::Conv2d => kernel.0 * kernel.1 * shape.c,
            _ => kernel.0 * kernel.1,
        };
        let wn = match op {
            OpKind::DepthwiseConv2d => kernel.0 * kernel.1 * oc,
            _ => fan_in * oc,
        };
        let weights: Vec<i8> = (0..wn).map(|_| rng.range(-127, 127) as i8).collect();
        let bias: Vec<i32> = (0..oc).map(|_| rng.range(-20_000, 20_000) as i32).collect();
        // Typical |acc| ~ sqrt(fan_in) * 73 * 60; aim for outputs of about +-40.
        let typical = (fan_in as f64).sqrt() * 73.0 * 60.0;
        let mut multiplier = Vec::new();
        let mut shift = Vec::new();
        for _ in 0..oc {
            let jitter = 0.5 + (rng.next_u64() % 1000) as f64 / 1000.0;
            let (m, s) = quant::quantize_multiplier(40.0 / typical * jitter).unwrap_or((1 << 30, -20));
            multiplier.push(m);
            shift.push(s);
        }
        let ozp = if last { 0 } else { rng.range(-30, 30) as i8 };
        let clamp = if last {
            (0, 0)
        } else if relu {
            (ozp, 127)
        } else {
            (-128, 127)
        };
        out.push(LayerRepr {
            op,
            input: shape,
            output,
            kernel,
            stride,
            padding,
            in_zero_point: zp,
            out_zero_point: ozp,
            clamp,
            logits: last,
            weights,
            bias,
            multiplier,
            shift,
            weight_scale: std::vec![0.01; oc],
            out_scale: 0.05,
        });
        shape = output;
        zp = ozp;
    }
    ModelRepr {
        input,
        classes,
        labels: (0..classes).map(|c| std::format!("class {c}")).collect(),
        metadata: std::vec![("source".to_string(), "random_model".to_string()), ("seed".to_string(), seed.to_string())],
        layers: out,
    }
}

/// The MNIST-sized MLP 784-64-32-10 of the benchmarks, with random weights.
pub fn random_mlp(seed: u64) -> ModelRepr {
    random_model(
        Shape::new(28, 28, 1),
        10,
        &[
            SynthLayer::Flatten,
            SynthLayer::Dense { units: 64, relu: true },
            SynthLayer::Dense { units: 32, relu: true },
        ],
        seed,
    )
}

/// The small CNN of the benchmarks (conv 8@3x3 s2 p1, conv 16@3x3 s2 p1, dense 10), random weights.
pub fn random_cnn_s(seed: u64) -> ModelRepr {
    random_model(
        Shape::new(28, 28, 1),
        10,
        &[
            SynthLayer::Conv { filters: 8, k: 3, s: 2, p: 1, relu: true },
            SynthLayer::Conv { filters: 16, k: 3, s: 2, p: 1, relu: true },
        ],
        seed,
    )
}

/// Per-output-channel requantization data held in vectors, for kernel tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelTable {
    /// Biases.
    pub bias: Vec<i32>,
    /// Requantization multipliers.
    pub m: Vec<i32>,
    /// Requantization shifts.
    pub s: Vec<i32>,
}

impl ChannelTable {
    /// Random parameters for `n` channels, drawn in this order: biases in +-100,000, then any
    /// positive multiplier, then any shift in [-31, 30].
    pub fn random(rng: &mut SplitMix64, n: usize) -> ChannelTable {
        ChannelTable {
            bias: (0..n).map(|_| rng.range(-100_000, 100_000) as i32).collect(),
            m: (0..n).map(|_| rng.range(1, i32::MAX as i64) as i32).collect(),
            s: (0..n).map(|_| rng.range(-31, 30) as i32).collect(),
        }
    }
}

impl ChannelParams for ChannelTable {
    fn bias(&self, c: usize) -> i32 {
        self.bias[c]
    }
    fn multiplier(&self, c: usize) -> i32 {
        self.m[c]
    }
    fn shift(&self, c: usize) -> i32 {
        self.s[c]
    }
}

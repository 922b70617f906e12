//! Host-side model builder: an owned [`ModelRepr`] that emits the blob [`Model::parse`] reads.
//!
//! `emit` and [`ModelRepr::from_model`] form a round trip: parse(emit(r)) gives back `r`,
//! and emit(from_model(parse(b))) gives back `b` byte for byte for any blob `emit` wrote
//! (parse also accepts other section orders and gaps, which re-emitting normalises).

extern crate std;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::format::{self, align4, field, layer_field, tag, Model, OpKind, Shape, HEADER_LEN, LAYER_RECORD_LEN};
use crate::{geometry, quant};

/// One layer, owned. Fields mirror the layer record of `docs/format.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRepr {
    /// The operation.
    pub op: OpKind,
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Kernel `(h, w)`.
    pub kernel: (usize, usize),
    /// Stride `(h, w)`.
    pub stride: (usize, usize),
    /// Zero padding `(top, left, bottom, right)`.
    pub padding: (usize, usize, usize, usize),
    /// Input zero point.
    pub in_zero_point: i8,
    /// Output zero point.
    pub out_zero_point: i8,
    /// Output clamp `(min, max)` (fused activation).
    pub clamp: (i8, i8),
    /// Whether this is the final layer emitting int32 logits.
    pub logits: bool,
    /// Int8 weights in the op's layout.
    pub weights: Vec<i8>,
    /// Int32 biases, one per output channel.
    pub bias: Vec<i32>,
    /// Requantization multipliers, one per output channel.
    pub multiplier: Vec<i32>,
    /// Requantization shifts, one per output channel.
    pub shift: Vec<i32>,
    /// Float weight scales, one per output channel (provenance for host tools).
    pub weight_scale: Vec<f32>,
    /// Float output scale (provenance for host tools).
    pub out_scale: f32,
}

impl LayerRepr {
    fn bare(op: OpKind, input: Shape, output: Shape, zp: i8) -> Self {
        LayerRepr {
            op,
            input,
            output,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0, 0, 0),
            in_zero_point: zp,
            out_zero_point: zp,
            clamp: (-128, 127),
            logits: false,
            weights: Vec::new(),
            bias: Vec::new(),
            multiplier: Vec::new(),
            shift: Vec::new(),
            weight_scale: Vec::new(),
            out_scale: 0.0,
        }
    }

    /// A Dense layer `input -> 1x1xunits` emitting int32 logits, input zero point `in_zp`:
    /// weights `1`, bias `0`, multiplier `2^30` and shift `0` (a scale of 1/2) per unit, for
    /// hand-built test models to overwrite with their own numbers.
    pub fn dense_logits(input: Shape, units: usize, in_zp: i8) -> Self {
        LayerRepr {
            out_zero_point: 0,
            clamp: (0, 0),
            logits: true,
            weights: vec![1; units * input.len()],
            bias: vec![0; units],
            multiplier: vec![1 << 30; units],
            shift: vec![0; units],
            weight_scale: vec![1.0; units],
            out_scale: 1.0,
            ..Self::bare(OpKind::Dense, input, Shape::new(1, 1, units), in_zp)
        }
    }

    /// A Flatten layer on `input` with zero point `zp`.
    pub fn flatten(input: Shape, zp: i8) -> Self {
        Self::bare(OpKind::Flatten, input, Shape::new(1, 1, input.len()), zp)
    }

    /// A pooling layer (`MaxPool2d` or `AvgPool2d`) without padding.
    pub fn pool(op: OpKind, input: Shape, kernel: (usize, usize), stride: (usize, usize), zp: i8) -> Self {
        let output = Self::window_output(input, kernel, stride, (0, 0, 0, 0), input.c);
        LayerRepr { kernel, stride, ..Self::bare(op, input, output, zp) }
    }

    /// Output shape of a windowed op with the given geometry (`channels` output channels).
    pub fn window_output(
        input: Shape,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize, usize, usize),
        channels: usize,
    ) -> Shape {
        // A kernel larger than the padded input gives 1 (a layer the validator rejects).
        let len = |i, p, k, s: usize| geometry::output_len(i, p, k, s.max(1)).unwrap_or(1);
        Shape::new(
            len(input.h, padding.0 + padding.2, kernel.0, stride.0),
            len(input.w, padding.1 + padding.3, kernel.1, stride.1),
            channels,
        )
    }

    /// Number of int8 multiply-accumulates.
    pub fn macs(&self) -> usize {
        match self.op {
            OpKind::Dense => self.output.c * self.input.c,
            OpKind::Conv2d => self.output.len() * self.kernel.0 * self.kernel.1 * self.input.c,
            OpKind::DepthwiseConv2d => self.output.len() * self.kernel.0 * self.kernel.1,
            _ => 0,
        }
    }
}

/// A whole model, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRepr {
    /// Input shape (pixels).
    pub input: Shape,
    /// Number of classes.
    pub classes: usize,
    /// Class labels (empty, or one per class, without newlines).
    pub labels: Vec<String>,
    /// Metadata `key=value` lines (keys without `=`, values without newlines).
    pub metadata: Vec<(String, String)>,
    /// Layers in order; the last one is a Dense emitting logits.
    pub layers: Vec<LayerRepr>,
}

/// The exact arena size of the ping-pong plan: with `s_0` the input size and `s_1, s_2, ...`
/// the sizes of the int8 outputs of the non-Flatten, non-final layers,
/// `arena = max(s_0, max_i (s_i + s_{i+1}))`.
pub fn arena_size(input: Shape, layers: &[LayerRepr]) -> usize {
    let mut prev = input.len();
    let mut arena = prev;
    for (i, l) in layers.iter().enumerate() {
        if l.op == OpKind::Flatten || i + 1 == layers.len() {
            continue;
        }
        let s = l.output.len();
        arena = arena.max(prev + s);
        prev = s;
    }
    arena
}

fn put_u16(b: &mut [u8], off: usize, v: usize) {
    b[off..off + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl ModelRepr {
    /// Serializes the model. The result passes [`Model::parse`] if the model is valid
    /// (consistent shapes, zero points, ranges); `emit` itself does not validate.
    pub fn emit(&self) -> Vec<u8> {
        let n_sections = 2 + usize::from(!self.labels.is_empty()) + usize::from(!self.metadata.is_empty());
        let table = HEADER_LEN;
        let layers_off = align4(table + n_sections * format::SECTION_ENTRY_LEN);
        let layers_len = self.layers.len() * LAYER_RECORD_LEN;
        let data_off = layers_off + layers_len;
        // Lay out tensor data.
        let mut data: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        for l in &self.layers {
            if !l.op.has_weights() {
                offsets.push([0u32; 5]);
                continue;
            }
            let mut o = [0u32; 5];
            o[0] = (data_off + data.len()) as u32;
            data.extend(l.weights.iter().map(|&w| w as u8));
            data.resize(align4(data.len()), 0);
            for (k, vals) in [&l.bias, &l.multiplier, &l.shift].into_iter().enumerate() {
                o[k + 1] = (data_off + data.len()) as u32;
                for v in vals {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            o[4] = (data_off + data.len()) as u32;
            for v in &l.weight_scale {
                data.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            offsets.push(o);
        }
        let labels = self.labels.join("\n");
        let meta: String = self.metadata.iter().map(|(k, v)| std::format!("{k}={v}\n")).collect();
        let labels_off = data_off + data.len();
        let meta_off = align4(labels_off + labels.len());
        let total = align4(meta_off + meta.len());

        let mut b = std::vec![0u8; total];
        b[0..4].copy_from_slice(&format::MAGIC);
        put_u16(&mut b, field::VERSION, format::VERSION as usize);
        put_u16(&mut b, field::HEADER_LEN, HEADER_LEN);
        put_u32(&mut b, field::TOTAL_LEN, total as u32);
        put_u16(&mut b, field::INPUT_H, self.input.h);
        put_u16(&mut b, field::INPUT_W, self.input.w);
        put_u16(&mut b, field::INPUT_C, self.input.c);
        put_u16(&mut b, field::CLASSES, self.classes);
        put_u32(&mut b, field::ARENA, arena_size(self.input, &self.layers) as u32);
        put_u16(&mut b, field::LAYER_COUNT, self.layers.len());
        put_u16(&mut b, field::SECTION_COUNT, n_sections);
        put_u32(&mut b, field::SECTION_TABLE, table as u32);
        let mut sections = std::vec![(tag::LAYERS, layers_off, layers_len), (tag::DATA, data_off, data.len())];
        if !self.labels.is_empty() {
            sections.push((tag::LABELS, labels_off, labels.len()));
        }
        if !self.metadata.is_empty() {
            sections.push((tag::META, meta_off, meta.len()));
        }
        for (i, (t, off, len)) in sections.into_iter().enumerate() {
            let e = table + i * format::SECTION_ENTRY_LEN;
            b[e..e + 4].copy_from_slice(&t);
            put_u32(&mut b, e + 4, off as u32);
            put_u32(&mut b, e + 8, len as u32);
        }
        for (i, (l, o)) in self.layers.iter().zip(&offsets).enumerate() {
            let r = layers_off + i * LAYER_RECORD_LEN;
            b[r + layer_field::OP] = l.op.code();
            b[r + layer_field::OUTPUT_KIND] = u8::from(l.logits);
            b[r + layer_field::KERNEL_H] = l.kernel.0 as u8;
            b[r + layer_field::KERNEL_W] = l.kernel.1 as u8;
            b[r + layer_field::STRIDE_H] = l.stride.0 as u8;
            b[r + layer_field::STRIDE_W] = l.stride.1 as u8;
            b[r + layer_field::PAD_TOP] = l.padding.0 as u8;
            b[r + layer_field::PAD_LEFT] = l.padding.1 as u8;
            b[r + layer_field::PAD_BOTTOM] = l.padding.2 as u8;
            b[r + layer_field::PAD_RIGHT] = l.padding.3 as u8;
            b[r + layer_field::IN_ZP] = l.in_zero_point as u8;
            b[r + layer_field::OUT_ZP] = l.out_zero_point as u8;
            b[r + layer_field::ACT_MIN] = l.clamp.0 as u8;
            b[r + layer_field::ACT_MAX] = l.clamp.1 as u8;
            for (f, v) in [
                (layer_field::IN_H, l.input.h),
                (layer_field::IN_W, l.input.w),
                (layer_field::IN_C, l.input.c),
                (layer_field::OUT_H, l.output.h),
                (layer_field::OUT_W, l.output.w),
                (layer_field::OUT_C, l.output.c),
            ] {
                put_u16(&mut b, r + f, v);
            }
            for (k, f) in [
                layer_field::WEIGHTS,
                layer_field::BIAS,
                layer_field::MULTIPLIER,
                layer_field::SHIFT,
                layer_field::WEIGHT_SCALE,
            ]
            .into_iter()
            .enumerate()
            {
                put_u32(&mut b, r + f, o[k]);
            }
            if l.op.has_weights() {
                put_u32(&mut b, r + layer_field::OUT_SCALE, l.out_scale.to_bits());
            }
        }
        b[data_off..data_off + data.len()].copy_from_slice(&data);
        b[labels_off..labels_off + labels.len()].copy_from_slice(labels.as_bytes());
        b[meta_off..meta_off + meta.len()].copy_from_slice(meta.as_bytes());
        let crc = format::blob_crc(&b);
        put_u32(&mut b, field::CRC, crc);
        b
    }

    /// Rebuilds the owned form of a validated model.
    pub fn from_model(m: &Model<'_>) -> ModelRepr {
        let layers = m
            .layers()
            .map(|l| {
                let oc = l.output_shape().c;
                let w = l.op().has_weights();
                let per = |f: &dyn Fn(usize) -> i32| if w { (0..oc).map(f).collect() } else { Vec::new() };
                LayerRepr {
                    op: l.op(),
                    input: l.input_shape(),
                    output: l.output_shape(),
                    kernel: l.kernel(),
                    stride: l.stride(),
                    padding: l.padding(),
                    in_zero_point: l.input_zero_point(),
                    out_zero_point: l.output_zero_point(),
                    clamp: l.clamp(),
                    logits: l.outputs_logits(),
                    weights: l.weights().collect(),
                    bias: per(&|c| l.bias(c)),
                    multiplier: per(&|c| l.multiplier(c)),
                    shift: per(&|c| l.shift(c)),
                    weight_scale: if w {
                        (0..oc).map(|c| f32::from_bits(l.weight_scale_bits(c))).collect()
                    } else {
                        Vec::new()
                    },
                    out_scale: f32::from_bits(l.output_scale_bits()),
                }
            })
            .collect();
        ModelRepr {
            input: m.input_shape(),
            classes: m.num_classes(),
            labels: (0..m.num_classes()).filter_map(|i| m.label(i)).map(|s| s.to_string()).collect(),
            metadata: m
                .metadata()
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            layers,
        }
    }

    /// Input scale of the model (pixels / 255) as a real number.
    pub const INPUT_SCALE: f32 = 1.0 / 255.0;

    /// The input zero point.
    pub const INPUT_ZERO_POINT: i8 = quant::INPUT_ZERO_POINT;
}

/// The fixtures at their former path (they live in [`crate::testing`] now), for callers not yet
/// moved; only with the `testing` feature.
#[cfg(feature = "testing")]
pub use crate::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};

//! The model blob: a little-endian, 4-byte-aligned byte layout that is used in place.
//!
//! [`Model::parse`] checks a blob once — magic, version, length, CRC-32, the section table,
//! every layer record, every offset and length, shape chaining, requantization parameters,
//! the impossibility of int32 overflow, and the arena size — and then hands out infallible
//! accessors. `docs/format.md` documents every byte.

use crate::geometry::Window;
use crate::quant;
use core::fmt;

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 4] = *b"ICNM";
/// The format version this runtime reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;
/// Size of one section table entry in bytes.
pub const SECTION_ENTRY_LEN: usize = 12;
/// Size of one layer record in bytes.
pub const LAYER_RECORD_LEN: usize = 64;
/// Largest number of layers a blob may hold.
pub const MAX_LAYERS: usize = 64;
/// Largest number of classes a blob may declare.
pub const MAX_CLASSES: usize = 1024;
/// Largest number of elements any tensor (input or activation) may have: 2^28. Bounding
/// sizes this way makes every size computation exact on 32-bit targets too, so validation
/// gives the same verdict on the device as on the host.
pub const MAX_TENSOR_LEN: u64 = 1 << 28;
/// Largest number of sections a blob may declare.
pub const MAX_SECTIONS: usize = 16;

/// Byte offsets of the header fields.
pub mod field {
    /// `[u8; 4]` magic, `b"ICNM"`.
    pub const MAGIC: usize = 0;
    /// `u16` format version.
    pub const VERSION: usize = 4;
    /// `u16` header length (64).
    pub const HEADER_LEN: usize = 6;
    /// `u32` total blob length.
    pub const TOTAL_LEN: usize = 8;
    /// `u32` CRC-32 of the blob with this field read as zero.
    pub const CRC: usize = 12;
    /// `u16` input height.
    pub const INPUT_H: usize = 16;
    /// `u16` input width.
    pub const INPUT_W: usize = 18;
    /// `u16` input channels.
    pub const INPUT_C: usize = 20;
    /// `u16` number of classes.
    pub const CLASSES: usize = 22;
    /// `u32` exact arena size in bytes.
    pub const ARENA: usize = 24;
    /// `u16` number of layers.
    pub const LAYER_COUNT: usize = 28;
    /// `u16` number of section table entries.
    pub const SECTION_COUNT: usize = 30;
    /// `u32` offset of the section table.
    pub const SECTION_TABLE: usize = 32;
    /// Offset of the reserved bytes (must be zero) up to [`super::HEADER_LEN`].
    pub const RESERVED: usize = 36;
}

/// Byte offsets inside a 64-byte layer record.
pub mod layer_field {
    /// `u8` op code ([`super::OpKind`]).
    pub const OP: usize = 0;
    /// `u8` output kind: 0 = int8 activations, 1 = int32 logits.
    pub const OUTPUT_KIND: usize = 1;
    /// `u8` kernel height.
    pub const KERNEL_H: usize = 2;
    /// `u8` kernel width.
    pub const KERNEL_W: usize = 3;
    /// `u8` vertical stride.
    pub const STRIDE_H: usize = 4;
    /// `u8` horizontal stride.
    pub const STRIDE_W: usize = 5;
    /// `u8` padding rows above (they hold the input zero point, docs/format.md §5.1).
    pub const PAD_TOP: usize = 6;
    /// `u8` padding columns on the left.
    pub const PAD_LEFT: usize = 7;
    /// `u8` padding rows below.
    pub const PAD_BOTTOM: usize = 8;
    /// `u8` padding columns on the right.
    pub const PAD_RIGHT: usize = 9;
    /// `i8` zero point of the input tensor.
    pub const IN_ZP: usize = 10;
    /// `i8` zero point of the output tensor.
    pub const OUT_ZP: usize = 11;
    /// `i8` lower clamp of the output (fused activation).
    pub const ACT_MIN: usize = 12;
    /// `i8` upper clamp of the output (fused activation).
    pub const ACT_MAX: usize = 13;
    /// `u16` input height, width, channels; output height, width, channels.
    pub const IN_H: usize = 16;
    /// `u16` input width.
    pub const IN_W: usize = 18;
    /// `u16` input channels.
    pub const IN_C: usize = 20;
    /// `u16` output height.
    pub const OUT_H: usize = 22;
    /// `u16` output width.
    pub const OUT_W: usize = 24;
    /// `u16` output channels.
    pub const OUT_C: usize = 26;
    /// `u32` offset of the int8 weights.
    pub const WEIGHTS: usize = 28;
    /// `u32` offset of the int32 biases (one per output channel).
    pub const BIAS: usize = 32;
    /// `u32` offset of the int32 multipliers (one per output channel).
    pub const MULTIPLIER: usize = 36;
    /// `u32` offset of the int32 shifts (one per output channel).
    pub const SHIFT: usize = 40;
    /// `u32` offset of the f32 weight scales (host-side provenance, one per output channel).
    pub const WEIGHT_SCALE: usize = 44;
    /// `u32` bits of the f32 output scale (host-side provenance).
    pub const OUT_SCALE: usize = 48;
    /// Offset of the reserved bytes (must be zero) up to [`super::LAYER_RECORD_LEN`].
    pub const RESERVED: usize = 52;
}

/// Section tags (four ASCII bytes read as a little-endian u32).
pub mod tag {
    /// Layer records (required).
    pub const LAYERS: [u8; 4] = *b"LAYR";
    /// Tensor data: weights, biases, requantization parameters (required).
    pub const DATA: [u8; 4] = *b"DATA";
    /// Class labels: UTF-8, one per line, `classes` lines (optional).
    pub const LABELS: [u8; 4] = *b"LABL";
    /// Free-form UTF-8 metadata, `key=value` lines (optional).
    pub const META: [u8; 4] = *b"META";
}

/// The operation a layer performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Fully connected: `y[o] = b[o] + Σ w[o][i] (x[i] - zp)`.
    Dense,
    /// 2-D convolution, weights `[out_c][kh][kw][in_c]`, padding taps hold the input zero point.
    Conv2d,
    /// Depthwise 2-D convolution (channel multiplier 1), weights `[kh][kw][c]`.
    DepthwiseConv2d,
    /// Max pooling without padding.
    MaxPool2d,
    /// Average pooling without padding, rounded half up.
    AvgPool2d,
    /// Reshape `[h, w, c]` to `[1, 1, h*w*c]` (no data movement in NHWC).
    Flatten,
}

impl OpKind {
    /// The op code stored in a layer record.
    pub const fn code(self) -> u8 {
        match self {
            OpKind::Dense => 1,
            OpKind::Conv2d => 2,
            OpKind::DepthwiseConv2d => 3,
            OpKind::MaxPool2d => 4,
            OpKind::AvgPool2d => 5,
            OpKind::Flatten => 6,
        }
    }

    /// Decodes an op code.
    pub const fn from_code(code: u8) -> Option<OpKind> {
        Some(match code {
            1 => OpKind::Dense,
            2 => OpKind::Conv2d,
            3 => OpKind::DepthwiseConv2d,
            4 => OpKind::MaxPool2d,
            5 => OpKind::AvgPool2d,
            6 => OpKind::Flatten,
            _ => return None,
        })
    }

    /// The op's name as written in docs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Dense => "Dense",
            OpKind::Conv2d => "Conv2d",
            OpKind::DepthwiseConv2d => "DepthwiseConv2d",
            OpKind::MaxPool2d => "MaxPool2d",
            OpKind::AvgPool2d => "AvgPool2d",
            OpKind::Flatten => "Flatten",
        }
    }

    /// Whether the op has weights, biases and requantization parameters.
    pub const fn has_weights(self) -> bool {
        matches!(self, OpKind::Dense | OpKind::Conv2d | OpKind::DepthwiseConv2d)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor shape in NHWC order, batch of one: height, width, channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels (innermost).
    pub c: usize,
}

impl Shape {
    /// Builds a shape.
    pub const fn new(h: usize, w: usize, c: usize) -> Self {
        Shape { h, w, c }
    }
    /// Number of elements.
    pub const fn len(&self) -> usize {
        // Saturating: on 32-bit targets a hostile header must not overflow (it is rejected later).
        self.h.saturating_mul(self.w).saturating_mul(self.c)
    }
    /// Whether the shape has no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.h, self.w, self.c)
    }
}

/// Why a blob was rejected. Each variant names the offending field or layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than the fixed header.
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `ICNM`.
    BadMagic,
    /// A format version this runtime does not read.
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// The header length field is not 64.
    BadHeaderLen,
    /// The blob's length differs from the header's `total_len`.
    LengthMismatch {
        /// Length stated in the header.
        stated: usize,
        /// Length of the byte slice.
        actual: usize,
    },
    /// The CRC-32 does not match the content.
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the blob.
        computed: u32,
    },
    /// A reserved byte is not zero.
    ReservedNotZero {
        /// Layer index, or `None` for the header.
        layer: Option<u16>,
    },
    /// Bad input shape or class count in the header.
    BadHeader,
    /// The section table is malformed (empty section, bounds, alignment, duplicates, overlap,
    /// missing section).
    BadSection {
        /// Index of the offending section entry (or the section count when one is missing).
        index: u16,
    },
    /// Labels are not valid UTF-8 or not one per class.
    BadLabels,
    /// Metadata is not valid UTF-8.
    BadMetadata,
    /// The layer count is zero, too large, or does not match the layer section.
    BadLayerCount,
    /// A layer record is invalid.
    BadLayer {
        /// Index of the layer.
        layer: u16,
        /// What is wrong with it.
        reason: LayerFault,
    },
    /// The arena size in the header differs from the one the layers need.
    ArenaMismatch {
        /// Size stated in the header.
        stated: usize,
        /// Size the ping-pong plan needs.
        needed: usize,
    },
}

/// What is wrong with a layer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFault {
    /// Unknown op code.
    UnknownOp,
    /// Output kind is not 0 or 1, or int32 output on a layer other than the final Dense.
    OutputKind,
    /// The final layer is not a Dense with int32 output and one output per class.
    FinalLayer,
    /// Kernel, stride or padding out of range.
    Geometry,
    /// The input shape differs from the previous layer's output shape.
    InputShape,
    /// The output shape differs from the one the op computes.
    OutputShape,
    /// The input zero point differs from the previous layer's output zero point.
    ZeroPoint,
    /// The clamp range is empty or the pooling / flatten fields are inconsistent.
    Activation,
    /// A tensor offset is misaligned, out of bounds, or outside the DATA section.
    TensorBounds,
    /// A weight is -128 (the symmetric range is [-127, 127]).
    WeightRange,
    /// A multiplier is not positive or a shift is outside [-31, 30].
    Requantization,
    /// The int32 accumulator could overflow for some input.
    AccumulatorOverflow,
}

impl fmt::Display for LayerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerFault::UnknownOp => "unknown op code",
            LayerFault::OutputKind => "invalid output kind",
            LayerFault::FinalLayer => "final layer must be Dense with int32 output, one per class",
            LayerFault::Geometry => "kernel, stride or padding out of range",
            LayerFault::InputShape => "input shape differs from the previous output shape",
            LayerFault::OutputShape => "output shape differs from the computed one",
            LayerFault::ZeroPoint => "input zero point differs from the previous output zero point",
            LayerFault::Activation => "invalid clamp range or zero point for this op",
            LayerFault::TensorBounds => "tensor offset misaligned or out of bounds",
            LayerFault::WeightRange => "weight -128 outside the symmetric range [-127, 127]",
            LayerFault::Requantization => "multiplier not positive or shift outside [-31, 30]",
            LayerFault::AccumulatorOverflow => "int32 accumulator could overflow",
        })
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooShort { len } => write!(f, "blob too short: {len} bytes, header needs {HEADER_LEN}"),
            FormatError::BadMagic => f.write_str("not an iocane model (bad magic, expected \"ICNM\")"),
            FormatError::UnsupportedVersion { found } => {
                write!(f, "unsupported format version {found} (this runtime reads {VERSION})")
            }
            FormatError::BadHeaderLen => write!(f, "header length field is not {HEADER_LEN}"),
            FormatError::LengthMismatch { stated, actual } => {
                write!(f, "length mismatch: header says {stated} bytes, got {actual} (truncated or padded?)")
            }
            FormatError::BadCrc { stored, computed } => {
                write!(f, "CRC mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupted)")
            }
            FormatError::ReservedNotZero { layer: None } => f.write_str("reserved header bytes are not zero"),
            FormatError::ReservedNotZero { layer: Some(l) } => write!(f, "layer {l}: reserved bytes are not zero"),
            FormatError::BadHeader => f.write_str("invalid input shape or class count in header"),
            FormatError::BadSection { index } => write!(f, "invalid section table entry {index}"),
            FormatError::BadLabels => f.write_str("labels are not UTF-8 with one line per class"),
            FormatError::BadMetadata => f.write_str("metadata is not valid UTF-8"),
            FormatError::BadLayerCount => f.write_str("invalid layer count"),
            FormatError::BadLayer { layer, reason } => write!(f, "layer {layer}: {reason}"),
            FormatError::ArenaMismatch { stated, needed } => {
                write!(f, "arena size mismatch: header says {stated} bytes, layers need {needed}")
            }
        }
    }
}

impl core::error::Error for FormatError {}

#[inline]
pub(crate) fn rd_u16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[inline]
pub(crate) fn rd_u32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

#[inline]
pub(crate) fn rd_i32(b: &[u8], off: usize) -> i32 {
    rd_u32(b, off) as i32
}

#[inline]
fn rd_i8(b: &[u8], off: usize) -> i8 {
    b.get(off).copied().unwrap_or(0) as i8
}

#[inline]
fn rd_u8(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// CRC-32/ISO-HDLC (the zlib / PNG / Ethernet CRC) with a 16-entry nibble table (64 bytes of flash).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0xFFFF_FFFF, bytes) ^ 0xFFFF_FFFF
}

/// Nibble table of the reflected polynomial 0xEDB88320: 64 bytes of flash, two lookups a byte.
const CRC_NIBBLE: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Continues a CRC-32 computation over more bytes (state not finalised).
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc ^= b as u32;
        crc = (crc >> 4) ^ CRC_NIBBLE[(crc & 15) as usize];
        crc = (crc >> 4) ^ CRC_NIBBLE[(crc & 15) as usize];
    }
    crc
}

/// The blob's CRC as stored in the header: CRC-32 over the blob with the CRC field as zeros.
pub fn blob_crc(bytes: &[u8]) -> u32 {
    let head = bytes.get(..field::CRC).unwrap_or(bytes);
    let mut crc = crc32_update(0xFFFF_FFFF, head);
    if bytes.len() >= field::CRC + 4 {
        crc = crc32_update(crc, &[0, 0, 0, 0]);
        crc = crc32_update(crc, &bytes[field::CRC + 4..]);
    }
    crc ^ 0xFFFF_FFFF
}

/// A validated view of one layer record. All accessors are infallible.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    blob: &'a [u8],
    rec: usize,
    op: OpKind,
}

impl<'a> Layer<'a> {
    #[inline]
    fn u8_at(&self, f: usize) -> u8 {
        rd_u8(self.blob, self.rec + f)
    }
    #[inline]
    fn u16_at(&self, f: usize) -> usize {
        rd_u16(self.blob, self.rec + f) as usize
    }
    #[inline]
    fn off(&self, f: usize) -> usize {
        rd_u32(self.blob, self.rec + f) as usize
    }

    /// The operation.
    pub fn op(&self) -> OpKind {
        self.op
    }
    /// Whether the layer emits int32 logits (only the final Dense does).
    pub fn outputs_logits(&self) -> bool {
        self.u8_at(layer_field::OUTPUT_KIND) == 1
    }
    /// Kernel `(height, width)`; `(1, 1)` for Dense and Flatten.
    pub fn kernel(&self) -> (usize, usize) {
        (self.u8_at(layer_field::KERNEL_H) as usize, self.u8_at(layer_field::KERNEL_W) as usize)
    }
    /// Stride `(vertical, horizontal)`.
    pub fn stride(&self) -> (usize, usize) {
        (self.u8_at(layer_field::STRIDE_H) as usize, self.u8_at(layer_field::STRIDE_W) as usize)
    }
    /// Zero padding `(top, left, bottom, right)`.
    pub fn padding(&self) -> (usize, usize, usize, usize) {
        (
            self.u8_at(layer_field::PAD_TOP) as usize,
            self.u8_at(layer_field::PAD_LEFT) as usize,
            self.u8_at(layer_field::PAD_BOTTOM) as usize,
            self.u8_at(layer_field::PAD_RIGHT) as usize,
        )
    }
    /// Zero point of the input tensor.
    pub fn input_zero_point(&self) -> i8 {
        rd_i8(self.blob, self.rec + layer_field::IN_ZP)
    }
    /// Zero point of the output tensor (0 for logits).
    pub fn output_zero_point(&self) -> i8 {
        rd_i8(self.blob, self.rec + layer_field::OUT_ZP)
    }
    /// Output clamp range `(min, max)` (the fused activation).
    pub fn clamp(&self) -> (i8, i8) {
        (rd_i8(self.blob, self.rec + layer_field::ACT_MIN), rd_i8(self.blob, self.rec + layer_field::ACT_MAX))
    }
    /// Input shape.
    pub fn input_shape(&self) -> Shape {
        Shape::new(self.u16_at(layer_field::IN_H), self.u16_at(layer_field::IN_W), self.u16_at(layer_field::IN_C))
    }
    /// Output shape.
    pub fn output_shape(&self) -> Shape {
        Shape::new(self.u16_at(layer_field::OUT_H), self.u16_at(layer_field::OUT_W), self.u16_at(layer_field::OUT_C))
    }
    /// Number of int8 weights.
    pub fn weight_count(&self) -> usize {
        let i = self.input_shape();
        let o = self.output_shape();
        let (kh, kw) = self.kernel();
        match self.op {
            OpKind::Dense => o.c.saturating_mul(i.c),
            OpKind::Conv2d => o.c.saturating_mul(kh * kw).saturating_mul(i.c),
            OpKind::DepthwiseConv2d => o.c.saturating_mul(kh * kw),
            _ => 0,
        }
    }
    /// The int8 weights as stored (two's complement bytes; read each with `as i8`), empty
    /// for ops without weights. Layout: Dense `[out][in]`, Conv2d `[out][kh][kw][in]`,
    /// DepthwiseConv2d `[kh][kw][c]`.
    pub fn weight_bytes(&self) -> &'a [u8] {
        let off = self.off(layer_field::WEIGHTS);
        let n = self.weight_count();
        self.blob.get(off..off + n).unwrap_or(&[])
    }
    /// Weight `i` (0 past the end).
    pub fn weight(&self, i: usize) -> i8 {
        self.weight_bytes().get(i).map_or(0, |&b| b as i8)
    }
    /// The int8 weights as an iterator.
    pub fn weights(&self) -> impl Iterator<Item = i8> + 'a {
        self.weight_bytes().iter().map(|&b| b as i8)
    }
    fn per_channel(&self, f: usize, c: usize) -> i32 {
        rd_i32(self.blob, self.off(f) + 4 * c)
    }
    /// Bias of output channel `c` (int32 at scale `s_in * s_w[c]`).
    pub fn bias(&self, c: usize) -> i32 {
        self.per_channel(layer_field::BIAS, c)
    }
    /// Requantization multiplier of output channel `c`.
    pub fn multiplier(&self, c: usize) -> i32 {
        self.per_channel(layer_field::MULTIPLIER, c)
    }
    /// Requantization shift of output channel `c`.
    pub fn shift(&self, c: usize) -> i32 {
        self.per_channel(layer_field::SHIFT, c)
    }
    /// Weight scale of output channel `c` (host-side provenance; not used at inference).
    pub fn weight_scale_bits(&self, c: usize) -> u32 {
        self.per_channel(layer_field::WEIGHT_SCALE, c) as u32
    }
    /// Bits of the f32 output scale (host-side provenance; not used at inference).
    pub fn output_scale_bits(&self) -> u32 {
        rd_u32(self.blob, self.rec + layer_field::OUT_SCALE)
    }
    /// Number of int8 multiply-accumulates for one inference of this layer.
    pub fn macs(&self) -> usize {
        let o = self.output_shape();
        let (kh, kw) = self.kernel();
        match self.op {
            OpKind::Dense => o.c.saturating_mul(self.input_shape().c),
            OpKind::Conv2d => o.len().saturating_mul(kh * kw).saturating_mul(self.input_shape().c),
            OpKind::DepthwiseConv2d => o.len().saturating_mul(kh * kw),
            _ => 0,
        }
    }
    /// Bytes this layer's parameters take in the blob.
    pub fn param_bytes(&self) -> usize {
        if self.op.has_weights() {
            align4(self.weight_count()) + 4 * 4 * self.output_shape().c
        } else {
            0
        }
    }
}

/// Whether a shape's element count, computed exactly in u64, is at most [`MAX_TENSOR_LEN`].
fn shape_fits(s: Shape) -> bool {
    (s.h as u64) * (s.w as u64) * (s.c as u64) <= MAX_TENSOR_LEN
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A validated model blob. Cheap to copy; borrows the bytes (flash, `include_bytes!`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    blob: &'a [u8],
    layers_off: usize,
    layer_count: usize,
    labels: &'a str,
    meta: &'a str,
    input: Shape,
    classes: usize,
    arena: usize,
}

impl<'a> Model<'a> {
    /// Validates a blob completely. After `Ok`, running the model cannot fail on the model's
    /// account, and no accessor can panic or read out of bounds.
    pub fn parse(blob: &'a [u8]) -> Result<Model<'a>, FormatError> {
        if blob.len() < HEADER_LEN {
            return Err(FormatError::TooShort { len: blob.len() });
        }
        if blob[0..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = rd_u16(blob, field::VERSION);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        if rd_u16(blob, field::HEADER_LEN) as usize != HEADER_LEN {
            return Err(FormatError::BadHeaderLen);
        }
        let total = rd_u32(blob, field::TOTAL_LEN) as usize;
        if total != blob.len() {
            return Err(FormatError::LengthMismatch { stated: total, actual: blob.len() });
        }
        let stored = rd_u32(blob, field::CRC);
        let computed = blob_crc(blob);
        if stored != computed {
            return Err(FormatError::BadCrc { stored, computed });
        }
        if blob[field::RESERVED..HEADER_LEN].iter().any(|&b| b != 0) {
            return Err(FormatError::ReservedNotZero { layer: None });
        }
        let input = Shape::new(
            rd_u16(blob, field::INPUT_H) as usize,
            rd_u16(blob, field::INPUT_W) as usize,
            rd_u16(blob, field::INPUT_C) as usize,
        );
        let classes = rd_u16(blob, field::CLASSES) as usize;
        if input.is_empty() || !(2..=MAX_CLASSES).contains(&classes) || !shape_fits(input) {
            return Err(FormatError::BadHeader);
        }

        // Section table.
        let sec_count = rd_u16(blob, field::SECTION_COUNT) as usize;
        let sec_off = rd_u32(blob, field::SECTION_TABLE) as usize;
        if sec_count == 0 || sec_count > MAX_SECTIONS {
            return Err(FormatError::BadSection { index: 0 });
        }
        let table_end = sec_off.saturating_add(sec_count * SECTION_ENTRY_LEN);
        if !sec_off.is_multiple_of(4) || sec_off < HEADER_LEN || table_end > total {
            return Err(FormatError::BadSection { index: 0 });
        }
        let mut layers = None;
        let mut data = None;
        let mut labels = None;
        let mut meta = None;
        let mut ranges: [(usize, usize); MAX_SECTIONS] = [(0, 0); MAX_SECTIONS];
        for i in 0..sec_count {
            let e = sec_off + i * SECTION_ENTRY_LEN;
            let t = [blob[e], blob[e + 1], blob[e + 2], blob[e + 3]];
            let off = rd_u32(blob, e + 4) as usize;
            let len = rd_u32(blob, e + 8) as usize;
            let bad = FormatError::BadSection { index: i as u16 };
            let end = off.checked_add(len).ok_or(bad)?;
            // Non-empty, aligned, in bounds, after the header and the table, no overlap with
            // another section. Every range is non-empty, so the half-open overlap test below is
            // exact (an empty range would need a special case: see docs/format.md §4).
            if len == 0 || !off.is_multiple_of(4) || end > total || off < table_end {
                return Err(bad);
            }
            for r in ranges.iter().take(i) {
                if off < r.1 && r.0 < end {
                    return Err(bad);
                }
            }
            ranges[i] = (off, end);
            let slot = match t {
                tag::LAYERS => &mut layers,
                tag::DATA => &mut data,
                tag::LABELS => &mut labels,
                tag::META => &mut meta,
                _ => return Err(bad),
            };
            if slot.is_some() {
                return Err(bad);
            }
            *slot = Some((off, len));
        }
        let missing = FormatError::BadSection { index: sec_count as u16 };
        let (layers_off, layers_len) = layers.ok_or(missing)?;
        let (data_off, data_len) = data.ok_or(missing)?;

        let labels = match labels {
            None => "",
            Some((o, l)) => {
                let s = core::str::from_utf8(&blob[o..o + l]).map_err(|_| FormatError::BadLabels)?;
                if s.split('\n').count() != classes {
                    return Err(FormatError::BadLabels);
                }
                s
            }
        };
        let meta = match meta {
            None => "",
            Some((o, l)) => core::str::from_utf8(&blob[o..o + l]).map_err(|_| FormatError::BadMetadata)?,
        };

        let layer_count = rd_u16(blob, field::LAYER_COUNT) as usize;
        if layer_count == 0 || layer_count > MAX_LAYERS || layers_len != layer_count * LAYER_RECORD_LEN {
            return Err(FormatError::BadLayerCount);
        }

        let model = Model {
            blob,
            layers_off,
            layer_count,
            labels,
            meta,
            input,
            classes,
            arena: rd_u32(blob, field::ARENA) as usize,
        };
        let needed = model.validate_layers(data_off, data_off.saturating_add(data_len))?;
        if needed != model.arena {
            return Err(FormatError::ArenaMismatch { stated: model.arena, needed });
        }
        Ok(model)
    }

    /// Checks every layer record; returns the arena size the ping-pong plan needs.
    fn validate_layers(&self, data_start: usize, data_end: usize) -> Result<usize, FormatError> {
        let mut shape = self.input;
        let mut zp = quant::INPUT_ZERO_POINT;
        // Sizes of the previous tensor that lives in the arena, for the ping-pong plan.
        let mut prev_bytes = self.input.len();
        let mut arena = prev_bytes;
        for i in 0..self.layer_count {
            let li = i as u16;
            let rec = self.layers_off + i * LAYER_RECORD_LEN;
            let b = self.blob;
            let fault = |reason| FormatError::BadLayer { layer: li, reason };
            if b[rec + layer_field::RESERVED..rec + LAYER_RECORD_LEN].iter().any(|&x| x != 0)
                || b[rec + 14] != 0
                || b[rec + 15] != 0
            {
                return Err(FormatError::ReservedNotZero { layer: Some(li) });
            }
            let op = OpKind::from_code(b[rec + layer_field::OP]).ok_or(fault(LayerFault::UnknownOp))?;
            let layer = Layer { blob: b, rec, op };
            let is_last = i + 1 == self.layer_count;
            let out_kind = b[rec + layer_field::OUTPUT_KIND];
            if out_kind > 1 {
                return Err(fault(LayerFault::OutputKind));
            }
            if is_last != (out_kind == 1) {
                return Err(fault(if is_last { LayerFault::FinalLayer } else { LayerFault::OutputKind }));
            }
            if is_last && (op != OpKind::Dense || layer.output_shape() != Shape::new(1, 1, self.classes)) {
                return Err(fault(LayerFault::FinalLayer));
            }
            if layer.input_shape() != shape {
                return Err(fault(LayerFault::InputShape));
            }
            if layer.input_zero_point() != zp {
                return Err(fault(LayerFault::ZeroPoint));
            }
            let (kh, kw) = layer.kernel();
            let (sh, sw) = layer.stride();
            let (pt, pl, pb, pr) = layer.padding();
            let no_geometry = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt + pl + pb + pr == 0;
            let expect = match op {
                OpKind::Dense | OpKind::Flatten => {
                    if !no_geometry {
                        return Err(fault(LayerFault::Geometry));
                    }
                    if op == OpKind::Dense && (shape.h != 1 || shape.w != 1) {
                        return Err(fault(LayerFault::InputShape));
                    }
                    let c = if op == OpKind::Flatten { shape.len() } else { layer.output_shape().c };
                    Shape::new(1, 1, c)
                }
                _ => {
                    let pooling = matches!(op, OpKind::MaxPool2d | OpKind::AvgPool2d);
                    if kh == 0 || kw == 0 || sh == 0 || sw == 0 || pt >= kh || pb >= kh || pl >= kw || pr >= kw {
                        return Err(fault(LayerFault::Geometry));
                    }
                    if pooling && pt + pl + pb + pr != 0 {
                        return Err(fault(LayerFault::Geometry));
                    }
                    let c = match op {
                        OpKind::Conv2d => layer.output_shape().c,
                        _ => shape.c,
                    };
                    // u16 + 2 * u8: the padded sizes cannot overflow.
                    match Window::output_shape(shape, (kh, kw), (sh, sw), (pt, pl, pb, pr), c) {
                        Some(s) => s,
                        None => return Err(fault(LayerFault::Geometry)),
                    }
                }
            };
            let out = layer.output_shape();
            if out != expect || out.is_empty() || !shape_fits(out) {
                return Err(fault(LayerFault::OutputShape));
            }
            let (amin, amax) = layer.clamp();
            let ozp = layer.output_zero_point();
            if op.has_weights() {
                if is_last {
                    if ozp != 0 || amin != 0 || amax != 0 {
                        return Err(fault(LayerFault::Activation));
                    }
                } else if amin > amax {
                    return Err(fault(LayerFault::Activation));
                }
                self.validate_tensors(&layer, data_start, data_end).map_err(fault)?;
            } else {
                // Pooling and flatten keep the quantization of their input.
                if ozp != zp || amin != -128 || amax != 127 {
                    return Err(fault(LayerFault::Activation));
                }
                for f in [
                    layer_field::WEIGHTS,
                    layer_field::BIAS,
                    layer_field::MULTIPLIER,
                    layer_field::SHIFT,
                    layer_field::WEIGHT_SCALE,
                    layer_field::OUT_SCALE,
                ] {
                    if layer.off(f) != 0 {
                        return Err(fault(LayerFault::TensorBounds));
                    }
                }
            }
            if op != OpKind::Flatten && !is_last {
                let bytes = out.len();
                arena = arena.max(prev_bytes.saturating_add(bytes));
                prev_bytes = bytes;
            }
            shape = out;
            zp = ozp;
        }
        Ok(arena)
    }

    fn validate_tensors(&self, layer: &Layer<'_>, start: usize, end: usize) -> Result<(), LayerFault> {
        let oc = layer.output_shape().c;
        let check = |off: usize, len: usize| -> Result<(), LayerFault> {
            if !off.is_multiple_of(4) || off < start || off.checked_add(len).is_none_or(|e| e > end) || len > end {
                Err(LayerFault::TensorBounds)
            } else {
                Ok(())
            }
        };
        let wn = layer.weight_count();
        check(layer.off(layer_field::WEIGHTS), wn)?;
        for f in [layer_field::BIAS, layer_field::MULTIPLIER, layer_field::SHIFT, layer_field::WEIGHT_SCALE] {
            check(layer.off(f), oc.saturating_mul(4))?;
        }
        let w = layer.weight_bytes();
        if w.len() != wn {
            return Err(LayerFault::TensorBounds);
        }
        if w.contains(&0x80) {
            return Err(LayerFault::WeightRange);
        }
        // Per output channel: multiplier, shift, and an exact bound on |acc|.
        let depthwise = layer.op() == OpKind::DepthwiseConv2d;
        for c in 0..oc {
            let m = layer.multiplier(c);
            let s = layer.shift(c);
            if m <= 0 || !(quant::SHIFT_MIN..=quant::SHIFT_MAX).contains(&s) {
                return Err(LayerFault::Requantization);
            }
            let abs_w: u64 =
                quant::channel_taps(depthwise, w.len(), oc, c).map(|i| (w[i] as i8).unsigned_abs() as u64).sum();
            if quant::accumulator_bound(layer.bias(c), abs_w) > i32::MAX as u64 {
                return Err(LayerFault::AccumulatorOverflow);
            }
        }
        Ok(())
    }

    /// The whole blob.
    pub fn bytes(&self) -> &'a [u8] {
        self.blob
    }
    /// Input shape (pixels, NHWC).
    pub fn input_shape(&self) -> Shape {
        self.input
    }
    /// Number of input pixels.
    pub fn input_len(&self) -> usize {
        self.input.len()
    }
    /// Number of classes (length of the logits).
    pub fn num_classes(&self) -> usize {
        self.classes
    }
    /// Exact arena size in bytes that [`Model::run`] needs.
    pub fn arena_size(&self) -> usize {
        self.arena
    }
    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layer_count
    }
    /// Layer `i`, or `None` past the end.
    pub fn layer(&self, i: usize) -> Option<Layer<'a>> {
        if i >= self.layer_count {
            return None;
        }
        let rec = self.layers_off + i * LAYER_RECORD_LEN;
        let op = OpKind::from_code(rd_u8(self.blob, rec))?;
        Some(Layer { blob: self.blob, rec, op })
    }
    /// All layers in order.
    pub fn layers(&self) -> impl Iterator<Item = Layer<'a>> + '_ {
        (0..self.layer_count).filter_map(move |i| self.layer(i))
    }
    /// Label of class `i`, if the blob carries labels.
    pub fn label(&self, i: usize) -> Option<&'a str> {
        if self.labels.is_empty() {
            return None;
        }
        self.labels.split('\n').nth(i)
    }
    /// Free-form metadata (`key=value` lines).
    pub fn metadata(&self) -> &'a str {
        self.meta
    }
    /// Value of metadata key `key`, if present.
    pub fn metadata_value(&self, key: &str) -> Option<&'a str> {
        self.meta.lines().find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }
    /// Total int8 multiply-accumulates per inference.
    pub fn macs(&self) -> usize {
        self.layers().map(|l| l.macs()).sum()
    }
    /// Number of parameters (weights and biases).
    pub fn param_count(&self) -> usize {
        self.layers().filter(|l| l.op().has_weights()).map(|l| l.weight_count() + l.output_shape().c).sum()
    }
}

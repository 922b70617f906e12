//! Dense NHWC float tensors.

use super::NnError;
use serde::{Deserialize, Serialize};

/// A dense batch of images or feature maps in NHWC layout: `shape = [n, h, w, c]` and
/// `data.len() == n * h * w * c`, element `(i, y, x, ch)` at `((i * h + y) * w + x) * c + ch`.
/// Dense-layer outputs (logits) have shape `[n, 1, 1, k]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// `[n, h, w, c]`.
    pub shape: [usize; 4],
    /// Row-major NHWC data.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`, checking the length.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Self, NnError> {
        let len: usize = shape.iter().product();
        if data.len() != len {
            return Err(NnError::Shape(format!("tensor of shape {shape:?} needs {len} values, got {}", data.len())));
        }
        Ok(Tensor { shape, data })
    }

    /// A zero tensor of the given shape.
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor { shape, data: vec![0.0; shape.iter().product()] }
    }

    /// Builds a float image batch from bytes (`x = byte / 255`), shape `[n, h, w, c]`.
    pub fn from_bytes(shape: [usize; 4], bytes: &[u8]) -> Result<Self, NnError> {
        Tensor::new(shape, bytes.iter().map(|&b| b as f32 / 255.0).collect())
    }

    /// Batch size `n`.
    pub fn n(&self) -> usize {
        self.shape[0]
    }

    /// Per-sample shape `[h, w, c]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        [self.shape[1], self.shape[2], self.shape[3]]
    }

    /// Number of values per sample, `h * w * c`.
    pub fn sample_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// The values of sample `i`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let l = self.sample_len();
        &self.data[i * l..(i + 1) * l]
    }

    /// The values of sample `i`, mutably.
    pub fn sample_mut(&mut self, i: usize) -> &mut [f32] {
        let l = self.sample_len();
        &mut self.data[i * l..(i + 1) * l]
    }

    /// A new batch made of the given samples of `self`, in that order.
    pub fn gather(&self, indices: &[usize]) -> Tensor {
        let l = self.sample_len();
        let mut data = Vec::with_capacity(indices.len() * l);
        for &i in indices {
            data.extend_from_slice(self.sample(i));
        }
        Tensor { shape: [indices.len(), self.shape[1], self.shape[2], self.shape[3]], data }
    }

    /// Samples `start..end` as a new batch.
    pub fn slice_batch(&self, start: usize, end: usize) -> Tensor {
        let l = self.sample_len();
        Tensor {
            shape: [end - start, self.shape[1], self.shape[2], self.shape[3]],
            data: self.data[start * l..end * l].to_vec(),
        }
    }

    /// Snaps every value to the 8-bit pixel grid: `round(x * 255) / 255`, clamped to
    /// `[0, 1]` (what a device that sees bytes would see).
    pub fn snap_to_u8_grid(&mut self) {
        for v in &mut self.data {
            *v = (v.clamp(0.0, 1.0) * 255.0).round() / 255.0;
        }
    }

    /// Converts `[0, 1]` pixels back to bytes (`round(x * 255)`, clamped).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
    }

    /// Largest absolute element-wise difference to `other` (same shape required).
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape, "max_abs_diff: shape mismatch");
        self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }
}

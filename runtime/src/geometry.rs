//! Geometry of windowed ops (conv, depthwise, pooling), one home for the rules the
//! validator, the kernels, the blob builder, the trainer's layer specs and the certifier share:
//! the output-size formula ([`output_len`]) and the receptive-field walk ([`Window`]).

use crate::format::Shape;

/// Output length along one axis of a windowed op: `(input + pad - kernel) / stride + 1`
/// (`pad` = both sides together), `None` if the kernel is larger than the padded input or
/// the stride is 0.
#[inline]
pub const fn output_len(input: usize, pad: usize, kernel: usize, stride: usize) -> Option<usize> {
    match (input + pad).checked_sub(kernel) {
        Some(d) if stride > 0 => Some(d / stride + 1),
        _ => None,
    }
}

/// The receptive field along one axis: for output position `o` of a window with `kernel`
/// taps, `stride` and leading padding `pad` over an axis of `size` inputs, the valid taps
/// `[k0, k1)` (the others fall on padding; empty when `k1 == k0`) and the input position of
/// tap 0, `o * stride - pad` (negative inside the leading padding).
#[inline]
pub const fn taps(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize, isize) {
    let start = (o * stride) as isize - pad as isize;
    let k0 = if start < 0 { (-start) as usize } else { 0 };
    let k0 = if k0 < kernel { k0 } else { kernel };
    let end = size as isize - start;
    let k1 = if end <= 0 {
        0
    } else if (end as usize) < kernel {
        end as usize
    } else {
        kernel
    };
    (k0, if k1 > k0 { k1 } else { k0 }, start)
}

/// Spatial geometry of a windowed op (conv, depthwise, pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
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
}

impl Window {
    /// The receptive field's rows for output row `oy`: the valid kernel rows `[k0, k1)` (the
    /// others fall on padding) and the first input row `oy * sh - pt` (negative in the top
    /// padding).
    #[inline]
    pub fn rows(&self, oy: usize) -> (usize, usize, isize) {
        taps(oy, self.stride.0, self.padding.0, self.kernel.0, self.input.h)
    }
    /// The receptive field's columns for output column `ox`, as [`Window::rows`] does rows.
    #[inline]
    pub fn cols(&self, ox: usize) -> (usize, usize, isize) {
        taps(ox, self.stride.1, self.padding.1, self.kernel.1, self.input.w)
    }

    /// Input pixel (index of its first channel in an NHWC buffer) under tap `(ky, kx)` of
    /// output pixel `(oy, ox)`, `None` for a padding tap.
    #[inline]
    pub fn tap(&self, (oy, ox): (usize, usize), (ky, kx): (usize, usize)) -> Option<usize> {
        let iy = (oy * self.stride.0 + ky).checked_sub(self.padding.0)?;
        let ix = (ox * self.stride.1 + kx).checked_sub(self.padding.1)?;
        (iy < self.input.h && ix < self.input.w).then_some((iy * self.input.w + ix) * self.input.c)
    }

    /// The output shape of the window over `input` (`channels` output channels), `None` if a
    /// kernel is larger than the padded input or a stride is 0.
    pub const fn output_shape(
        input: Shape,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize, usize, usize),
        channels: usize,
    ) -> Option<Shape> {
        match (
            output_len(input.h, padding.0 + padding.2, kernel.0, stride.0),
            output_len(input.w, padding.1 + padding.3, kernel.1, stride.1),
        ) {
            (Some(h), Some(w)) => Some(Shape::new(h, w, channels)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_len_is_the_floor_formula() {
        assert_eq!(output_len(28, 2, 3, 2), Some(14));
        assert_eq!(output_len(5, 0, 2, 2), Some(2));
        assert_eq!(output_len(2, 0, 3, 1), None);
        assert_eq!(output_len(4, 0, 2, 0), None);
    }

    #[test]
    fn taps_clip_to_the_input() {
        // 3-tap kernel, pad 1, input 4: output 0 sees taps 1..3, output 3 (stride 1) taps 0..2.
        assert_eq!(taps(0, 1, 1, 3, 4), (1, 3, -1));
        assert_eq!(taps(1, 1, 1, 3, 4), (0, 3, 0));
        assert_eq!(taps(3, 1, 1, 3, 4), (0, 2, 2));
        assert_eq!(taps(0, 2, 0, 2, 1), (0, 1, 0));
        assert_eq!(taps(5, 1, 0, 2, 4), (0, 0, 5));
    }

    #[test]
    fn taps_and_rows_agree() {
        let w = Window {
            input: Shape::new(5, 4, 2),
            output: Shape::new(3, 2, 2),
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1, 1, 1),
        };
        for oy in 0..3 {
            let (k0, k1, start) = w.rows(oy);
            for ky in 0..3 {
                let valid = w.tap((oy, 0), (ky, 1)).is_some();
                assert_eq!(valid, (k0..k1).contains(&ky), "oy {oy} ky {ky}");
                if valid {
                    assert_eq!(w.tap((oy, 0), (ky, 1)), Some(((start + ky as isize) as usize * 4) * 2));
                }
            }
        }
    }
}

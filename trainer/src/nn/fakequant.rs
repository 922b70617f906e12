//! Activation fake-quantization for full quantization-aware training.
//!
//! A [`FakeQuant`] on a layer's output rounds every value to the int8 grid the runtime
//! stores it on and maps it back: `v = (clamp(floor(y / s + 1/2) + zp, min, max) - zp) · s`.
//! That is the runtime's requantization rule (`iocane_runtime::quant::requantize`: round
//! half up, add the zero point, saturate to the fused activation's clamp; average pooling
//! rounds its mean the same way) carried out in `f32` on the float accumulator instead of
//! the integer one, so it agrees with the device up to float rounding of the accumulator
//! and of the requantization multiplier.
//!
//! The backward pass is the straight-through estimator: the gradient passes unchanged where
//! the output is strictly inside the clamp range and is zero at the clamp ends (saturated),
//! as for a ReLU or ReLU6.
//!
//! Install quantizers with [`super::Network::with_activation_quant`]; every batched forward
//! and backward pass of the network (training, attacks, interval bounds) then runs them.

/// Levels below an exact half that [`FakeQuant::level`] still rounds up: above the `f32`
/// error of `y / s` for `|y / s| <= 256` (about `3e-5`), far below a level.
pub const HALF_SLACK: f32 = 1e-4;

/// An int8 output quantizer (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeQuant {
    /// The output scale `s` (> 0).
    pub scale: f32,
    /// The zero point `zp` (an int8 level).
    pub zero_point: i32,
    /// The smallest level (the fused activation's clamp), `-128 <= min <= max <= 127`.
    pub min: i32,
    /// The largest level.
    pub max: i32,
    lo: f32,
    hi: f32,
    half: f32,
}

impl FakeQuant {
    /// A quantizer with scale `scale`, zero point `zero_point` and clamp `[min, max]`, or
    /// `None` if the scale is not a positive finite number or the levels are not ordered
    /// int8 levels.
    pub fn new(scale: f32, zero_point: i32, min: i32, max: i32) -> Option<FakeQuant> {
        let ok = scale.is_finite() && scale > 0.0 && (-128..=127).contains(&min) && min <= max && max <= 127;
        ok.then(|| FakeQuant {
            scale,
            zero_point,
            min,
            max,
            // Half a step inside the ends: quantized values are a whole step apart, so this
            // tells the ends apart even after float rounding (e.g. of `c ± r`).
            lo: (min - zero_point) as f32 * scale + 0.5 * scale,
            hi: (max - zero_point) as f32 * scale - 0.5 * scale,
            half: 0.5,
        })
    }

    /// The same quantizer for outputs that are often exact halves of a level, which must
    /// round up as on the device: an average pool's mean of grid values is a multiple of
    /// `1 / (kh · kw)` levels, and `f32` can land such a half a hair below. Values within
    /// [`HALF_SLACK`] levels below a half then round up. (Elsewhere exact halves are rare and
    /// the slack would only move values the device rounds down.)
    pub fn rounding_exact_halves(mut self) -> FakeQuant {
        self.half = 0.5 + HALF_SLACK;
        self
    }

    /// The level of `y`: `clamp(floor(y / s + 1/2) + zp, min, max)` (NaN maps to `min`).
    ///
    /// With [`FakeQuant::rounding_exact_halves`], `y / s` within [`HALF_SLACK`] levels below a
    /// half rounds up too.
    #[inline]
    pub fn level(&self, y: f32) -> i32 {
        let t = (y / self.scale + self.half).floor();
        // Clamp in float first: the cast of a huge value would saturate anyway, NaN -> min.
        let t = t.clamp((self.min - self.zero_point) as f32, (self.max - self.zero_point) as f32);
        if t.is_nan() {
            self.min
        } else {
            t as i32 + self.zero_point
        }
    }

    /// The fake-quantized value of `y`: its level mapped back to the float scale.
    #[inline]
    pub fn apply(&self, y: f32) -> f32 {
        (self.level(y) - self.zero_point) as f32 * self.scale
    }

    /// Whether the straight-through gradient passes at a fake-quantized output `v` (it is
    /// strictly between the clamp ends; `v` is compared with the ends moved half a step
    /// inwards, so float rounding of `v` cannot matter).
    #[inline]
    pub fn passes(&self, v: f32) -> bool {
        v > self.lo && v < self.hi
    }

    /// Fake-quantizes `values` in place.
    pub fn apply_all(&self, values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = self.apply(*v));
    }

    /// Zeroes the gradient `grad` where the fake-quantized outputs `out` are saturated.
    pub fn mask_grad(&self, out: &[f32], grad: &mut [f32]) {
        for (d, &v) in grad.iter_mut().zip(out) {
            if !self.passes(v) {
                *d = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_up_and_saturates_like_the_runtime() {
        let q = FakeQuant::new(0.5, -3, -128, 127).unwrap();
        // y / s = 2.5 -> floor(3.0) = 3 (half up), 2.4 / 0.5 = 4.8 -> 5, -1.25 / 0.5 = -2.5 -> -2.
        assert_eq!(q.level(1.25), 3 - 3);
        assert_eq!(q.level(2.4), 5 - 3);
        assert_eq!(q.level(-1.25), -2 - 3);
        assert_eq!(q.apply(-1.25), -1.0);
        assert_eq!(q.level(1e9), 127);
        assert_eq!(q.level(-1e9), -128);
        assert_eq!(q.level(f32::NAN), -128);
        assert_eq!(q.apply(1e9), (127 + 3) as f32 * 0.5);
        // The runtime's rule on the same real value: floor(x + 1/2) + zp, clamped.
        for i in -400..400 {
            let y = i as f32 * 0.173;
            let want = ((y as f64 / 0.5 + 0.5).floor() as i64 - 3).clamp(-128, 127) as i32;
            assert_eq!(q.level(y), want, "{y}");
        }
        assert!(FakeQuant::new(0.0, 0, -128, 127).is_none());
        assert!(FakeQuant::new(1.0, 0, 5, 4).is_none());
        assert!(FakeQuant::new(1.0, 0, -129, 4).is_none());
    }

    #[test]
    fn the_straight_through_gradient_stops_only_at_the_clamp_ends() {
        // A fused ReLU: levels [zp, 127].
        let q = FakeQuant::new(0.1, -128, -128, 127).unwrap();
        let out: Vec<f32> = [-1.0, 0.0, 0.04, 0.06, 3.0, 25.5, 40.0].iter().map(|&y| q.apply(y)).collect();
        let mut g = vec![1.0; out.len()];
        q.mask_grad(&out, &mut g);
        // -1, 0 and 0.04 round to level zp (the ReLU's 0); 25.5 and 40 saturate at 127.
        assert_eq!(g, vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }
}

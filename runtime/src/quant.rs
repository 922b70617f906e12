//! The one int8 arithmetic of iocane.
//!
//! Every integer operation that decides what a model outputs is defined here, once. The
//! kernels call these functions; the trainer's integer simulation and the certifier's
//! interval bounds call them too, so the device, the trainer and the certificate all speak
//! about the same arithmetic. `docs/quantization.md` states the contract in prose.
//!
//! Summary:
//! - input pixel `p: u8` becomes `q = p - 128` (scale 1/255, zero point -128), so a
//!   perturbation of k/255 is exactly k integer levels;
//! - weights are int8 in `[-127, 127]`, symmetric per output channel;
//! - biases are int32 at scale `s_in * s_w[c]`;
//! - accumulation is exact in int32 (the model validator proves no overflow is possible);
//! - requantization multiplies by a Q0.31 multiplier `m` and shifts right by `31 - shift`,
//!   rounding half up (towards +infinity) **once**, then adds the output zero point and
//!   saturates to the layer's clamp range (which also implements fused ReLU / ReLU6);
//! - the final layer emits int32 logits, and argmax breaks ties by the lowest class index.

/// Zero point of the model input: pixel `p` is stored as `p - 128`.
pub const INPUT_ZERO_POINT: i8 = -128;

/// Smallest allowed weight value (symmetric range, -128 is never used).
pub const WEIGHT_MIN: i8 = -127;
/// Largest allowed weight value.
pub const WEIGHT_MAX: i8 = 127;

/// Smallest allowed requantization `shift` (a right shift of 62 bits in total).
pub const SHIFT_MIN: i32 = -31;
/// Largest allowed requantization `shift` (a right shift of 1 bit in total).
pub const SHIFT_MAX: i32 = 30;

/// Maps an 8-bit pixel to the model's int8 input (`p - 128`).
#[inline(always)]
pub const fn pixel_to_input(p: u8) -> i8 {
    (p ^ 0x80) as i8
}

/// Maps a model input value back to its pixel (`q + 128`).
#[inline(always)]
pub const fn input_to_pixel(q: i8) -> u8 {
    (q as u8) ^ 0x80
}

/// Fixed-point rescaling of an int32 accumulator: `round_half_up(acc * m / 2^(31 - shift))`.
///
/// `m` must be positive and `shift` in [`SHIFT_MIN`, `SHIFT_MAX`] (the model validator
/// guarantees both), so the total right shift is between 1 and 62 bits and the product fits
/// in i64 exactly. Rounding is done once, half towards +infinity: `floor(v + 1/2)`.
///
/// The function is monotone non-decreasing in `acc` (because `m > 0`), which is what lets
/// interval bound propagation push bounds through it exactly.
#[inline(always)]
pub const fn rescale(acc: i32, m: i32, shift: i32) -> i64 {
    let total = (31 - shift) as u32;
    let prod = acc as i64 * m as i64;
    (prod + (1i64 << (total - 1))) >> total
}

/// Requantizes an accumulator to an int8 activation: rescale, add the output zero point,
/// saturate to `[act_min, act_max]`.
///
/// The clamp range implements the fused activation: `[-128, 127]` for none,
/// `[zero_point, 127]` for ReLU, `[zero_point, min(127, zero_point + round(6 / s))]` for ReLU6.
#[inline(always)]
pub const fn requantize(acc: i32, m: i32, shift: i32, zero_point: i8, act_min: i8, act_max: i8) -> i8 {
    let (lo, hi) = (act_min as i32, act_max as i32);
    if shift < 0 {
        // The common case (real multiplier below 1/2): all in 32 bits, see `rescale_hi`.
        let v = rescale_hi(acc, m, shift) + zero_point as i32;
        return (if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }) as i8;
    }
    let v = rescale(acc, m, shift) + zero_point as i64;
    (if v < lo as i64 {
        lo as i64
    } else if v > hi as i64 {
        hi as i64
    } else {
        v
    }) as i8
}

/// Requantizes an accumulator to an int32 logit: rescale and saturate to the i32 range
/// (logit zero point is 0, there is no activation).
#[inline(always)]
pub const fn requantize_logit(acc: i32, m: i32, shift: i32) -> i32 {
    if shift < 0 {
        return rescale_hi(acc, m, shift);
    }
    let v = rescale(acc, m, shift);
    if v < i32::MIN as i64 {
        i32::MIN
    } else if v > i32::MAX as i64 {
        i32::MAX
    } else {
        v as i32
    }
}

/// [`rescale`] for `shift < 0` (a total right shift `31 - shift` of 32 to 62 bits), computed
/// from the high word of the product only, so that 32-bit cores need no 64-bit shift or
/// compare (on Cortex-M4: one `SMULL`, an add and an arithmetic shift). Equal to `rescale`
/// for every input (tested against it, and against the exact rule, in this module):
/// with `prod = hi * 2^32 + lo`, `0 <= lo < 2^32` and `t = total - 32 >= 1`,
/// `floor((prod + 2^(total-1)) / 2^total) = floor((hi + 2^(t-1) + lo / 2^32) / 2^t)`
/// `= floor((hi + 2^(t-1)) / 2^t)` because `hi + 2^(t-1)` is an integer and `lo / 2^32 < 1`;
/// for `t = 0` (`shift = -1`) it is `hi + [lo >= 2^31]`. `|prod| < 2^62`, so `|hi| < 2^30`
/// and nothing overflows; the result is within `±2^30`.
#[inline(always)]
const fn rescale_hi(acc: i32, m: i32, shift: i32) -> i32 {
    let prod = acc as i64 * m as i64;
    let hi = (prod >> 32) as i32;
    if shift == -1 {
        hi + ((prod as u32) >> 31) as i32
    } else {
        let t = (-1 - shift) as u32;
        (hi + (1 << (t - 1))) >> t
    }
}

/// One output channel's requantization, [`requantize`] and [`requantize_logit`] with what
/// depends only on `(m, shift)` computed once: for a kernel that requantizes many outputs of
/// the same channel. Equal to those functions for every input (tested in this module).
///
/// For `shift < 0` (total right shift `31 - shift` = `32 + t`, `t` in [0, 30]) the rescale is
/// `((acc * m + 2^(31 - shift - 1)) >> 32) >> t`: the rounding constant is added to the
/// 64-bit product (one `SMLAL` on Cortex-M4), then the high word is shifted; floor of a floor
/// is the floor of the whole quotient, so this is [`rescale`] exactly. `|acc * m| < 2^62` and
/// the constant is at most `2^61`, so the sum fits in i64. Other shifts take [`rescale`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requantizer {
    /// `2^(30 - shift)` for `shift < 0`, else unused.
    round: i64,
    /// The Q0.31 multiplier.
    m: i32,
    /// The shift, in [`SHIFT_MIN`, `SHIFT_MAX`].
    shift: i32,
}

impl Requantizer {
    /// The requantization of a channel with multiplier `m` (positive) and `shift` (in
    /// [`SHIFT_MIN`, `SHIFT_MAX`]), as the model validator guarantees them.
    #[inline(always)]
    pub const fn new(m: i32, shift: i32) -> Self {
        let round = if shift < 0 && shift >= SHIFT_MIN { 1i64 << (30 - shift) } else { 0 };
        Requantizer { round, m, shift }
    }

    /// `rescale(acc, m, shift)` for `shift < 0`, within `±2^30`.
    #[inline(always)]
    const fn rescale_neg(&self, acc: i32) -> i32 {
        let t = (-1 - self.shift) as u32;
        (((acc as i64 * self.m as i64 + self.round) >> 32) as i32) >> t
    }

    /// [`requantize`]`(acc, m, shift, zero_point, act_min, act_max)`.
    #[inline(always)]
    pub const fn requantize(&self, acc: i32, zero_point: i8, act_min: i8, act_max: i8) -> i8 {
        if self.shift >= 0 || self.shift < SHIFT_MIN {
            return requantize(acc, self.m, self.shift, zero_point, act_min, act_max);
        }
        let (lo, hi) = (act_min as i32, act_max as i32);
        let v = self.rescale_neg(acc) + zero_point as i32;
        (if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }) as i8
    }

    /// [`requantize_logit`]`(acc, m, shift)`.
    #[inline(always)]
    pub const fn requantize_logit(&self, acc: i32) -> i32 {
        if self.shift >= 0 || self.shift < SHIFT_MIN {
            return requantize_logit(acc, self.m, self.shift);
        }
        self.rescale_neg(acc)
    }
}

/// Average of `count` int8 values given their sum, rounded half up: `floor(sum / count + 1/2)`.
///
/// Monotone non-decreasing in `sum`. `count` must be positive (the validator guarantees it).
#[inline(always)]
pub const fn average(sum: i32, count: i32) -> i8 {
    let num = 2 * sum as i64 + count as i64;
    let den = 2 * count as i64;
    let q = num.div_euclid(den);
    (if q < -128 {
        -128
    } else if q > 127 {
        127
    } else {
        q
    }) as i8
}

/// Index of the largest logit; ties go to the lowest index. Returns 0 for an empty slice.
#[inline]
pub fn argmax(logits: &[i32]) -> usize {
    let mut best = 0;
    let mut best_v = i32::MIN;
    for (i, &v) in logits.iter().enumerate() {
        if i == 0 || v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Encodes a positive real multiplier as `(m, shift)` with `m` in `[2^30, 2^31)` such that
/// `real ≈ m * 2^(shift - 31)`.
///
/// Host-side helper (uses floating point; never called at inference time). `m` is the
/// significand rounded half away from zero to 31 bits. Returns `None` when `real` is not
/// finite and positive or when the shift would fall outside [`SHIFT_MIN`, `SHIFT_MAX`].
pub fn quantize_multiplier(real: f64) -> Option<(i32, i32)> {
    if !(real.is_finite() && real > 0.0) {
        return None;
    }
    // real = sig * 2^exp with sig in [0.5, 1): computed exactly by scaling by powers of two.
    let mut sig = real;
    let mut exp: i32 = 0;
    while sig >= 1.0 {
        sig *= 0.5;
        exp += 1;
    }
    while sig < 0.5 {
        sig *= 2.0;
        exp -= 1;
        if exp < -1100 {
            return None;
        }
    }
    // sig * 2^31 is exact in f64 (a power-of-two scale); round half away from zero.
    let scaled = sig * 2147483648.0;
    // scaled is in [2^30, 2^31): truncation is floor.
    let mut m = {
        let f = scaled as i64;
        if scaled - f as f64 >= 0.5 {
            f + 1
        } else {
            f
        }
    };
    if m == 1i64 << 31 {
        m = 1 << 30;
        exp += 1;
    }
    if !(SHIFT_MIN..=SHIFT_MAX).contains(&exp) {
        return None;
    }
    Some((m as i32, exp))
}

/// The real number a `(m, shift)` pair stands for: `m * 2^(shift - 31)` (host-side helper).
pub fn multiplier_to_real(m: i32, shift: i32) -> f64 {
    let mut v = m as f64;
    let mut e = shift - 31;
    while e < 0 {
        v *= 0.5;
        e += 1;
    }
    while e > 0 {
        v *= 2.0;
        e -= 1;
    }
    v
}

/// Quantizes a real weight given its channel scale: `round_half_away(w / scale)` clamped to
/// `[-127, 127]` (host-side helper used by the trainer's quantizer).
pub fn quantize_weight(w: f32, scale: f32) -> i8 {
    let v = round_half_away(w as f64 / scale as f64);
    v.clamp(WEIGHT_MIN as f64, WEIGHT_MAX as f64) as i8
}

/// Largest `|x - zero_point|` of an int8 activation `x`, whatever the zero point: 255.
pub const MAX_INPUT_OFFSET: u64 = 255;

/// The bound on one output channel's int32 accumulator: `|bias| + 255 Σ|w|`, where
/// `abs_weight_sum` is `Σ|w|` over the channel's weights ([`channel_taps`]). The model
/// validator accepts a layer only if this is at most `i32::MAX` for every channel, the
/// quantizer clamps biases to keep it there ([`bias_limit`]), and the certifier's interval
/// bounds rely on it.
#[inline]
pub const fn accumulator_bound(bias: i32, abs_weight_sum: u64) -> u64 {
    bias.unsigned_abs() as u64 + MAX_INPUT_OFFSET * abs_weight_sum
}

/// The largest `|bias|` for which [`accumulator_bound`] stays within `i32::MAX`:
/// `i32::MAX - 255 Σ|w|`, or 0 if the weights alone exceed it.
#[inline]
pub const fn bias_limit(abs_weight_sum: u64) -> u64 {
    (i32::MAX as u64).saturating_sub(MAX_INPUT_OFFSET * abs_weight_sum)
}

/// Flat indices of output channel `c`'s weights in a weighted layer with `len` weights and
/// `oc` output channels: the row `[c K, (c + 1) K)` for Dense and Conv2d (`[out][...]`,
/// `K = len / oc`), the stride-`oc` column `c, c + oc, ...` for DepthwiseConv2d
/// (`[kh][kw][c]`).
pub fn channel_taps(depthwise: bool, len: usize, oc: usize, c: usize) -> core::iter::StepBy<core::ops::Range<usize>> {
    let oc = oc.max(1);
    if depthwise {
        (c..len).step_by(oc)
    } else {
        let per = len / oc;
        (c * per..(c + 1) * per).step_by(1)
    }
}

/// The per-output-channel weight scale (host-side rule, shared by the quantizer and
/// quantization-aware training): `max|w_c| / 127` (`max_abs` = `max|w_c|`), floored at
/// `max(s_out, |b_c|) / (2^28 s_in)`.
///
/// The floor is for channels with (nearly) no weights — IBP training drives unneeded filters
/// to ~0 — which would otherwise get a requantization multiplier `s_in s_w / s_out` below the
/// runtime's range (`2^-32`) or an int32 bias `b_c / (s_in s_w)` that saturates; at the floor
/// the multiplier is at least `2^-28` and the bias at most `2^28` in magnitude. Weights below
/// half the floor quantize to 0, which moves the channel's output by at most
/// `K (1 + |b_c| / s_out) 2^-21` output steps (`K` = fan-in). Ordinary channels are orders of
/// magnitude above the floor and unaffected.
pub fn weight_scale(max_abs: f32, s_in: f64, s_out: f64, bias: f32) -> f32 {
    const TWO_28: f64 = (1u64 << 28) as f64;
    let floor = (s_out.max(bias.abs() as f64) / (TWO_28 * s_in)) as f32;
    (max_abs / 127.0).max(floor)
}

/// Rounds half away from zero without `std` (`f64::round` is not in `core`).
pub fn round_half_away(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    // |v| < 2^52: adding/subtracting via truncation through i64 is exact.
    if v.abs() >= 4503599627370496.0 {
        return v;
    }
    let t = v as i64 as f64; // truncation towards zero
    let frac = v - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_taps_are_rows_or_columns() {
        assert_eq!(channel_taps(false, 12, 3, 1).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(channel_taps(true, 12, 3, 1).collect::<Vec<_>>(), [1, 4, 7, 10]);
    }

    #[test]
    fn accumulator_bound_and_bias_limit_agree() {
        for abs in [0u64, 1, 1000, 8_421_504, 8_421_505, u32::MAX as u64] {
            let limit = bias_limit(abs);
            if limit > 0 {
                assert!(accumulator_bound(limit as i32, abs) <= i32::MAX as u64);
                assert!(accumulator_bound(-(limit as i32), abs) <= i32::MAX as u64);
            }
            assert!(limit == 0 || accumulator_bound(limit as i32, abs) == i32::MAX as u64);
        }
    }

    #[test]
    fn weight_scale_floors_dead_channels_only() {
        let (s_in, s_out) = (0.02, 0.05);
        assert_eq!(weight_scale(31.75, s_in, s_out, 0.3), 0.25);
        let floor = weight_scale(0.0, s_in, s_out, 0.3);
        assert_eq!(floor, (0.3f32 as f64 / (268_435_456.0 * 0.02)) as f32);
        assert_eq!(weight_scale(1e-12, s_in, s_out, 0.0), (0.05 / (268_435_456.0 * 0.02)) as f32);
    }

    /// The rule written out with i128 and exact rational comparison.
    fn rescale_exact(acc: i32, m: i32, shift: i32) -> i128 {
        let total = 31 - shift;
        let num = acc as i128 * m as i128; // value = num / 2^total
        let den = 1i128 << total;
        // floor(num/den + 1/2) = floor((2 num + den) / (2 den))
        (2 * num + den).div_euclid(2 * den)
    }

    #[test]
    fn pixel_mapping_is_exact_and_invertible() {
        for p in 0..=255u8 {
            let q = pixel_to_input(p);
            assert_eq!(q as i32, p as i32 - 128);
            assert_eq!(input_to_pixel(q), p);
        }
    }

    #[test]
    fn rescale_rounds_half_up() {
        // m = 2^30, shift 0 -> multiply by 1/2.
        let m = 1 << 30;
        assert_eq!(rescale(3, m, 0), 2); // 1.5 -> 2
        assert_eq!(rescale(-3, m, 0), -1); // -1.5 -> -1
        assert_eq!(rescale(5, m, 0), 3); // 2.5 -> 3
        assert_eq!(rescale(-5, m, 0), -2); // -2.5 -> -2
        assert_eq!(rescale(4, m, 0), 2);
    }

    #[test]
    fn rescale_matches_exact_rule_on_edges() {
        let accs = [i32::MIN, i32::MIN + 1, -1_000_000, -1, 0, 1, 7, 1_000_000, i32::MAX];
        let ms = [1, 2, 1 << 30, (1 << 30) + 12345, i32::MAX];
        for &a in &accs {
            for &m in &ms {
                for s in SHIFT_MIN..=SHIFT_MAX {
                    assert_eq!(rescale(a, m, s) as i128, rescale_exact(a, m, s), "a={a} m={m} s={s}");
                }
            }
        }
    }

    /// The 32-bit path of `requantize` / `requantize_logit` (`shift < 0`) against the i64
    /// `rescale` and the exact i128 rule, on edges and 200,000 random cases.
    #[test]
    fn rescale_hi_equals_rescale() {
        let accs = [i32::MIN, i32::MIN + 1, -(1 << 30), -1_000_001, -2, -1, 0, 1, 2, 1 << 20, 999_999, i32::MAX];
        let ms = [1, 2, 3, 1 << 30, (1 << 30) + 1, (1 << 30) + 12345, i32::MAX - 1, i32::MAX];
        let check = |a: i32, m: i32, s: i32| {
            let want = rescale(a, m, s);
            assert_eq!(rescale_hi(a, m, s) as i64, want, "a={a} m={m} s={s}");
            assert_eq!(want as i128, rescale_exact(a, m, s));
            assert_eq!(requantize_logit(a, m, s) as i64, want);
            let r = Requantizer::new(m, s);
            assert_eq!(r.requantize_logit(a) as i64, want);
            for (zp, lo, hi) in [(0i8, -128i8, 127i8), (-128, -128, 127), (127, -128, 127), (-5, -5, 40)] {
                let v = (want + zp as i64).clamp(lo as i64, hi as i64) as i8;
                assert_eq!(requantize(a, m, s, zp, lo, hi), v, "a={a} m={m} s={s} zp={zp}");
                assert_eq!(r.requantize(a, zp, lo, hi), v, "a={a} m={m} s={s} zp={zp}");
            }
        };
        for &a in &accs {
            for &m in &ms {
                for s in SHIFT_MIN..0 {
                    check(a, m, s);
                }
            }
        }
        let mut r = crate::rng::SplitMix64(0x5eed);
        for _ in 0..200_000 {
            let a = r.next_u64() as i32;
            let m = ((r.next_u64() as u32) >> 1).max(1) as i32;
            let s = -1 - (r.next_u64() % 31) as i32;
            check(a, m, s);
        }
    }

    /// [`Requantizer`] against [`requantize`] / [`requantize_logit`] for every shift (the
    /// negative ones are also checked against the exact rule above).
    #[test]
    fn requantizer_equals_requantize() {
        let mut r = crate::rng::SplitMix64(0x0e0e);
        for _ in 0..200_000 {
            let a = r.next_u64() as i32;
            let m = ((r.next_u64() as u32) >> 1).max(1) as i32;
            let s = SHIFT_MIN + (r.next_u64() % (SHIFT_MAX - SHIFT_MIN + 1) as u64) as i32;
            let (zp, lo) = (r.next_u64() as i8, r.next_u64() as i8);
            let hi = lo.max(r.next_u64() as i8);
            let q = Requantizer::new(m, s);
            assert_eq!(q.requantize(a, zp, lo, hi), requantize(a, m, s, zp, lo, hi), "a={a} m={m} s={s}");
            assert_eq!(q.requantize_logit(a), requantize_logit(a, m, s), "a={a} m={m} s={s}");
        }
        for s in SHIFT_MIN..=SHIFT_MAX {
            for a in [i32::MIN, -1, 0, 1, i32::MAX] {
                let q = Requantizer::new(i32::MAX, s);
                assert_eq!(q.requantize_logit(a), requantize_logit(a, i32::MAX, s));
                assert_eq!(q.requantize(a, 0, -128, 127), requantize(a, i32::MAX, s, 0, -128, 127));
            }
        }
    }

    #[test]
    fn requantize_saturates_and_clamps() {
        let m = 1 << 30; // x 1/2 at shift 0 ... use shift 1 -> x1
        assert_eq!(requantize(1000, m, 1, 0, -128, 127), 127);
        assert_eq!(requantize(-1000, m, 1, 0, -128, 127), -128);
        assert_eq!(requantize(-5, m, 1, -10, -10, 127), -10); // -15 clamped to the ReLU floor
        assert_eq!(requantize(5, m, 1, -10, -10, 127), -5);
        assert_eq!(requantize(i32::MAX, i32::MAX, SHIFT_MAX, 0, -128, 127), 127);
        assert_eq!(requantize_logit(i32::MAX, i32::MAX, SHIFT_MAX), i32::MAX);
        assert_eq!(requantize_logit(i32::MIN, i32::MAX, SHIFT_MAX), i32::MIN);
    }

    #[test]
    fn average_rounds_half_up_and_is_monotone() {
        assert_eq!(average(3, 2), 2);
        assert_eq!(average(-3, 2), -1);
        assert_eq!(average(-1, 4), 0); // -0.25
        assert_eq!(average(-2, 4), 0); // -0.5 -> 0
        assert_eq!(average(-3, 4), -1); // -0.75
        let mut prev = i8::MIN;
        for s in -128 * 9..=127 * 9 {
            let a = average(s, 9);
            assert!(a >= prev);
            prev = a;
        }
    }

    #[test]
    fn argmax_ties_go_to_lowest_index() {
        assert_eq!(argmax(&[1, 3, 3, 2]), 1);
        assert_eq!(argmax(&[i32::MIN, i32::MIN]), 0);
        assert_eq!(argmax(&[-5, -5, -4]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn quantize_multiplier_round_trips() {
        for &r in &[1.0, 0.5, 0.75, 1e-6, 3.3e-3, 123.456, 0.999_999_999_9, 1.0 / 255.0] {
            let (m, s) = quantize_multiplier(r).unwrap();
            assert!(m >= 1 << 30, "{r}: m={m}");
            let back = multiplier_to_real(m, s);
            assert!(((back - r) / r).abs() < 1e-9, "{r} -> {back}");
        }
        assert!(quantize_multiplier(0.0).is_none());
        assert!(quantize_multiplier(-1.0).is_none());
        assert!(quantize_multiplier(f64::NAN).is_none());
        assert!(quantize_multiplier(1e30).is_none());
        assert!(quantize_multiplier(1e-30).is_none());
    }

    #[test]
    fn quantize_weight_rounds_and_clamps() {
        assert_eq!(quantize_weight(0.5, 1.0), 1);
        assert_eq!(quantize_weight(-0.5, 1.0), -1);
        assert_eq!(quantize_weight(1000.0, 1.0), 127);
        assert_eq!(quantize_weight(-1000.0, 1.0), -127);
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(-2.5), -3.0);
        assert_eq!(round_half_away(-2.4), -2.0);
    }
}

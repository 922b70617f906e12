//! The worked examples of `docs/quantization.md`, computed from the code: every number the
//! document states is recomputed here with the host-side functions an emitter must
//! reproduce (`quant::weight_scale`, `quantize_weight`, `round_half_away`,
//! `quantize_multiplier`) and the device arithmetic (`rescale`, `requantize`, the kernels).

use iocane_runtime::emit::{LayerRepr, ModelRepr};
use iocane_runtime::kernels::reference;
use iocane_runtime::{quant, Model, Shape};

/// The neuron of §5.4, host side, in the trainer's precision: real weights and bias are f32,
/// `s_in` and `s_out` f64, `s_w` f32.
struct Neuron {
    s_w: f32,
    w_q: [i8; 3],
    b_q: i32,
    m: i32,
    shift: i32,
}

const S_IN: f64 = 1.0 / 255.0;
const S_OUT: f64 = 0.01;
const W: [f32; 3] = [0.5, -0.25, 0.04];
const B: f32 = 0.1;

fn quantize_neuron() -> Neuron {
    let max_abs = W.iter().fold(0f32, |m, w| m.max(w.abs()));
    let s_w = quant::weight_scale(max_abs, S_IN, S_OUT, B);
    let w_q = W.map(|w| quant::quantize_weight(w, s_w));
    let s_acc = S_IN * s_w as f64;
    let b_q = quant::round_half_away(B as f64 / s_acc) as i32;
    let (m, shift) = quant::quantize_multiplier(s_acc / S_OUT).unwrap();
    Neuron { s_w, w_q, b_q, m, shift }
}

/// Issue 18 gap 4: §5.4 step by step. `s_w` is `0.5 / 127` rounded to f32 (bits
/// `0x3b810204`), and only that gives the stated multiplier 1697563106; the exact rational
/// `s_w = 1/254` gives 1697563112.
#[test]
fn spec_gap_4_worked_neuron_of_section_5_4() {
    let n = quantize_neuron();
    // Step 2: the f32 scale, slightly below 1/254, and the weight quotients it gives.
    assert_eq!(n.s_w, 0.5f32 / 127.0);
    assert_eq!(n.s_w.to_bits(), 0x3b81_0204);
    assert!((n.s_w as f64) < 1.0 / 254.0);
    let quotients = W.map(|w| w as f64 / n.s_w as f64);
    assert!(quotients[0] > 127.0 && quotients[0] < 127.000001, "{}", quotients[0]);
    assert!(quotients[1] < -63.5 && quotients[1] > -63.500001, "{}", quotients[1]);
    assert!(quotients[2] > 10.159999 && quotients[2] < 10.16, "{}", quotients[2]);
    assert_eq!(n.w_q, [127, -64, 10]);
    // Step 3: the bias quotient is 6477.00012 (from the f32 bias 0.1 and the f32 s_w).
    let q = B as f64 / (S_IN * n.s_w as f64);
    assert!(q > 6477.00012 && q < 6477.00013, "{q}");
    assert_eq!(n.b_q, 6477);
    // Step 1 and 4: pixels (0, 128, 255) through the reference Dense accumulator.
    let x: Vec<i8> = [0u8, 128, 255].iter().map(|&p| quant::pixel_to_input(p)).collect();
    assert_eq!(x, [-128, 0, 127]);
    assert_eq!(reference::dense_acc(&x, &n.w_q, &[n.b_q], quant::INPUT_ZERO_POINT), [835]);
    // Step 5: the multiplier from the f32 s_w; the exact rational gives 6 more.
    let real = S_IN * n.s_w as f64 / S_OUT;
    assert!((real - 0.00154392).abs() < 5e-9, "{real}");
    assert_eq!((n.m, n.shift), (1697563106, -9));
    assert_eq!(quant::quantize_multiplier(S_IN * (0.5 / 127.0) / S_OUT), Some((1697563112, -9)));
    // round(2^31 · 2^9 · (1/255)(1/254)/(1/100)) in exact integers.
    let (num, den) = (100i128 << 40, 255i128 * 254);
    assert_eq!((2 * num + den).div_euclid(2 * den), 1697563112);
    // Step 6: one rounding, zero point, ReLU clamp.
    assert_eq!(quant::rescale(835, n.m, n.shift), 1);
    assert_eq!(quant::requantize(835, n.m, n.shift, -20, -20, 127), -19);
}

/// Issue 18 gap 4: the §5.4 neuron as layer 0 of a blob, run by `Model::run`: a final Dense
/// with weights (1, −1), bias 0 and multiplier 1 reads it back as the logits
/// `(−19 + 20, −(−19 + 20)) = (1, −1)`.
#[test]
fn spec_gap_4_worked_neuron_runs_on_the_device_path() {
    let n = quantize_neuron();
    let hidden = LayerRepr {
        out_zero_point: -20,
        clamp: (-20, 127),
        logits: false,
        weights: n.w_q.to_vec(),
        bias: vec![n.b_q],
        multiplier: vec![n.m],
        shift: vec![n.shift],
        weight_scale: vec![n.s_w],
        out_scale: S_OUT as f32,
        ..LayerRepr::dense_logits(Shape::new(1, 1, 3), 1, -128)
    };
    let readout = LayerRepr {
        input: Shape::new(1, 1, 1),
        output: Shape::new(1, 1, 2),
        in_zero_point: -20,
        out_zero_point: 0,
        clamp: (0, 0),
        logits: true,
        weights: vec![1, -1],
        bias: vec![0, 0],
        multiplier: vec![1 << 30; 2],
        shift: vec![1; 2],
        weight_scale: vec![1.0; 2],
        out_scale: S_OUT as f32,
        ..hidden.clone()
    };
    let repr = ModelRepr {
        input: Shape::new(1, 1, 3),
        classes: 2,
        labels: vec![],
        metadata: vec![],
        layers: vec![hidden, readout],
    };
    let blob = repr.emit();
    let model = Model::parse(&blob).unwrap();
    let (mut arena, mut logits) = (vec![0u8; model.arena_size()], [0i32; 2]);
    assert_eq!(model.run(&[0, 128, 255], &mut arena, &mut logits), Ok(0));
    assert_eq!(logits, [1, -1]);
}

/// Issue 18 gap 5 (§3): the bias is rounded half away from zero, like the weights: ties at
/// ±k.5 go to ±(k + 1), not to even and not up.
#[test]
fn spec_gap_5_bias_ties_round_half_away_from_zero() {
    for (q, want) in [(382.5, 383.0), (-382.5, -383.0), (0.5, 1.0), (-0.5, -1.0), (6477.5, 6478.0), (-2.5, -3.0)] {
        assert_eq!(quant::round_half_away(q), want, "{q}");
    }
    // The quotient of §3 lands exactly on a tie for b = 1.5 / 128 and s_w = 1/128 (s_in = 1/255).
    let q = (1.5f32 / 128.0) as f64 / (S_IN * (1.0f32 / 128.0) as f64);
    assert_eq!(q, 382.5);
}

/// Every other number of quantization.md, recomputed: the §5.1 multiplier table, the §5.2
/// rounding table, the §5.3 and §6 examples, the ReLU6 range, argmax ties, the §7 averages
/// and the §4 fan-in limit.
#[test]
fn spec_quantization_md_examples_are_computed_by_the_code() {
    // §5.1
    for (real, want) in [
        (0.5, (1073741824, 0)),
        (1.0, (1073741824, 1)),
        (0.75, (1610612736, 0)),
        (1.0 / 255.0, (1077952576, -7)),
        (0.0123, (1690499128, -6)),
    ] {
        assert_eq!(quant::quantize_multiplier(real), Some(want), "M = {real}");
    }
    // §5.2
    let half = 1 << 30;
    for (acc, shift, want) in
        [(3, 0, 2), (-3, 0, -1), (5, 0, 3), (-5, 0, -2), (4, 0, 2), (101, -3, 6), (3, -2, 0), (-2, -1, 0)]
    {
        assert_eq!(quant::rescale(acc, half, shift), want, "rescale({acc}, 2^30, {shift})");
    }
    // §5.3
    assert_eq!(quant::requantize(101, half, -3, 5, -128, 127), 11);
    assert_eq!(quant::requantize(1000, half, 0, -10, -10, 127), 127);
    assert_eq!(quant::requantize(-1000, half, -3, -10, -10, 127), -10);
    let relu6_max = (-100.0 + quant::round_half_away(6.0 / 0.05)).min(127.0);
    assert_eq!(relu6_max, 20.0);
    // §6
    assert_eq!(quant::requantize_logit(123456, half, -3), 7716);
    assert_eq!(quant::argmax(&[5, 9, 9, 1]), 1);
    // §7
    for (sum, count, want) in [(3, 2, 2), (-3, 2, -1), (-2, 4, 0), (-3, 4, -1)] {
        assert_eq!(quant::average(sum, count), want, "average({sum}, {count})");
    }
    // §4: all weights ±127 and no bias fit up to a fan-in of 66,311.
    assert!(quant::accumulator_bound(0, 127 * 66_311) <= i32::MAX as u64);
    assert!(quant::accumulator_bound(0, 127 * 66_312) > i32::MAX as u64);
    // §10: TFLite's double rounding differs; iocane's single rounding gives 0, 0 and -1.
    assert_eq!((quant::rescale(3, half, -2), quant::rescale(-2, half, -1), quant::average(-3, 2)), (0, 0, -1));
}

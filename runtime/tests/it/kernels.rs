//! Every kernel against its plain i64 reference, on random shapes, weights, multipliers and
//! zero points, including saturation edges; and whole models against the reference runner.
//! The weighted kernels are checked both through the dispatching entry points (the AVX2 path on
//! x86-64-v3 hosts), through [`kernels::portable`] (what Cortex-M0 and RISC-V run) and through
//! [`kernels::dsp`] (what Cortex-M4/M7 run; here with the DSP instructions emulated, the real
//! ones run in the Cortex-M4 parity test).

use iocane_runtime::kernels::{self, reference, Output, Weights, Window};
use iocane_runtime::testing::{random_model, ChannelTable as Params, SynthLayer};
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;

fn bytes(n: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(any::<i8>(), n)
}

fn as_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

fn check_weighted(acc: &[i64], p: &Params, oc: usize, zp: i8, clamp: (i8, i8), got_act: &[u8], got_logits: &[i32]) {
    for (i, &a) in acc.iter().enumerate() {
        let c = i % oc;
        // The kernels accumulate in i32; the validator guarantees the i64 sum fits.
        let want = reference::requantize(a, p.m[c], p.s[c], zp, clamp.0, clamp.1);
        assert_eq!(got_act[i] as i8, want, "act {i}");
        assert_eq!(got_logits[i], reference::requantize_logit(a, p.m[c], p.s[c]), "logit {i}");
    }
}

fn geometry() -> impl Strategy<Value = (Window, usize)> {
    (
        (1usize..9, 1usize..9, 1usize..5),
        (1usize..5, 1usize..4, 1usize..4, 1usize..3),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        1usize..6,
    )
        .prop_filter_map("kernel fits", |((h, w, c), (kh, kw, sh, sw), (pt, pl, pb, pr), oc)| {
            let (pt, pl, pb, pr) = (pt.min(kh - 1), pl.min(kw - 1), pb.min(kh - 1), pr.min(kw - 1));
            if h + pt + pb < kh || w + pl + pr < kw {
                return None;
            }
            let input = Shape::new(h, w, c);
            let output = Shape::new((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1, oc);
            Some((Window { input, output, kernel: (kh, kw), stride: (sh, sw), padding: (pt, pl, pb, pr) }, oc))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dense_matches_reference(
        // Past kernels::dsp::X_PACK (1024) too: the DSP kernel's unpack-per-row-group path.
        (n, oc) in prop_oneof![4 => (1usize..200, 1usize..20), 1 => (1020usize..1100, 1usize..8)],
        seed in any::<u64>(),
        zp in any::<i8>(), ozp in any::<i8>(), relu in any::<bool>(),
    ) {
        let mut r = iocane_runtime::rng::SplitMix64(seed);
        let x: Vec<i8> = (0..n).map(|_| r.range(-128, 127) as i8).collect();
        let w: Vec<i8> = (0..n * oc).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, oc);
        let clamp = if relu { (ozp, 127) } else { (-128, 127) };
        let acc = reference::dense_acc(&x, &w, &p.bias, zp);
        let mut act = vec![0u8; oc];
        let mut logits = vec![0i32; oc];
        kernels::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Act { buf: &mut act, zero_point: ozp, min: clamp.0, max: clamp.1 });
        kernels::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, ozp, clamp, &act, &logits);
        // The portable kernel (what Cortex-M and RISC-V run) on the same case.
        kernels::portable::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: clamp.0, max: clamp.1 });
        kernels::portable::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, ozp, clamp, &act, &logits);
        // The Cortex-M4 DSP kernel's loops (instructions emulated).
        act.fill(0);
        logits.fill(0);
        kernels::dsp::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: clamp.0, max: clamp.1 });
        kernels::dsp::dense(&as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, ozp, clamp, &act, &logits);
    }

    #[test]
    fn conv2d_matches_reference(
        (win, oc) in geometry(),
        seed in any::<u64>(), zp in any::<i8>(), ozp in any::<i8>(),
    ) {
        let mut r = iocane_runtime::rng::SplitMix64(seed);
        let x: Vec<i8> = (0..win.input.len()).map(|_| r.range(-128, 127) as i8).collect();
        let w: Vec<i8> = (0..oc * win.kernel.0 * win.kernel.1 * win.input.c).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, oc);
        let acc = reference::conv2d_acc(&win, &x, &w, &p.bias, zp);
        let mut act = vec![0u8; win.output.len()];
        let mut logits = vec![0i32; win.output.len()];
        kernels::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Act { buf: &mut act, zero_point: ozp, min: ozp, max: 127 });
        kernels::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, ozp, (ozp, 127), &act, &logits);
        kernels::portable::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: ozp, max: 127 });
        kernels::portable::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, ozp, (ozp, 127), &act, &logits);
        act.fill(0);
        logits.fill(0);
        let ran_act = kernels::dsp::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: ozp, max: 127 });
        let ran_logits = kernels::dsp::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        prop_assert!(ran_act && ran_logits);
        check_weighted(&acc, &p, oc, ozp, (ozp, 127), &act, &logits);
    }

    /// Wide layers: more output channels than one parameter block (32), and receptive fields
    /// larger than the stack patch (512), which take the row-by-row path.
    #[test]
    fn conv2d_wide_and_deep_match_reference(
        (h, w, ic, oc, k) in (3usize..7, 3usize..7, prop_oneof![Just(3usize), 57usize..70], 30usize..40, 2usize..4),
        seed in any::<u64>(), zp in any::<i8>(),
    ) {
        let input = Shape::new(h, w, ic);
        let win = Window { input, output: Shape::new(h - k + 3, w - k + 3, oc), kernel: (k, k), stride: (1, 1), padding: (1, 1, 1, 1) };
        let mut r = iocane_runtime::rng::SplitMix64(seed);
        let x: Vec<i8> = (0..input.len()).map(|_| r.range(-128, 127) as i8).collect();
        let wts: Vec<i8> = (0..oc * k * k * ic).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, oc);
        let acc = reference::conv2d_acc(&win, &x, &wts, &p.bias, zp);
        let mut act = vec![0u8; win.output.len()];
        let mut logits = vec![0i32; win.output.len()];
        kernels::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), Output::Act { buf: &mut act, zero_point: 3, min: -128, max: 127 });
        kernels::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, 3, (-128, 127), &act, &logits);
        kernels::portable::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), &mut Output::Act { buf: &mut act, zero_point: 3, min: -128, max: 127 });
        kernels::portable::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, oc, 3, (-128, 127), &act, &logits);
        // The DSP kernel takes receptive fields up to the patch limit; the others fall back.
        act.fill(0);
        logits.fill(0);
        let fits = k * k * ic <= kernels::CONV_PATCH_MAX;
        let ran_act = kernels::dsp::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), &mut Output::Act { buf: &mut act, zero_point: 3, min: -128, max: 127 });
        let ran_logits = kernels::dsp::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&wts), zp, &p), &mut Output::Logits(&mut logits));
        prop_assert_eq!((ran_act, ran_logits), (fits, fits));
        if fits {
            check_weighted(&acc, &p, oc, 3, (-128, 127), &act, &logits);
        }
    }

    #[test]
    fn depthwise_matches_reference(
        (win, _) in geometry(),
        // Channel counts past the kernels' 32-channel block too.
        wide in prop_oneof![3 => Just(None), 1 => (30usize..70).prop_map(Some)],
        seed in any::<u64>(), zp in any::<i8>(), ozp in any::<i8>(),
    ) {
        let c = wide.unwrap_or(win.input.c);
        let win = Window { input: Shape { c, ..win.input }, output: Shape { c, ..win.output }, ..win };
        let c = win.input.c;
        let mut r = iocane_runtime::rng::SplitMix64(seed);
        let x: Vec<i8> = (0..win.input.len()).map(|_| r.range(-128, 127) as i8).collect();
        let w: Vec<i8> = (0..win.kernel.0 * win.kernel.1 * c).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, c);
        let acc = reference::depthwise_acc(&win, &x, &w, &p.bias, zp);
        let mut act = vec![0u8; win.output.len()];
        let mut logits = vec![0i32; win.output.len()];
        kernels::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Act { buf: &mut act, zero_point: ozp, min: -128, max: 127 });
        kernels::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut logits));
        check_weighted(&acc, &p, c, ozp, (-128, 127), &act, &logits);
        // The portable kernel and the Cortex-M4 DSP kernel's loops (instructions emulated).
        kernels::portable::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: -128, max: 127 });
        kernels::portable::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, c, ozp, (-128, 127), &act, &logits);
        act.fill(0);
        logits.fill(0);
        kernels::dsp::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Act { buf: &mut act, zero_point: ozp, min: -128, max: 127 });
        kernels::dsp::depthwise_conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut logits));
        check_weighted(&acc, &p, c, ozp, (-128, 127), &act, &logits);
    }

    #[test]
    fn pools_match_reference(
        (h, w, c, k, s) in (1usize..10, 1usize..10, prop_oneof![3 => 1usize..4, 1 => 30usize..70], 1usize..4, 1usize..4),
        x in bytes(9 * 9 * 70),
    ) {
        prop_assume!(h >= k && w >= k);
        let input = Shape::new(h, w, c);
        let win = Window { input, output: Shape::new((h - k) / s + 1, (w - k) / s + 1, c), kernel: (k, k), stride: (s, s), padding: (0, 0, 0, 0) };
        let x = &x[..input.len()];
        let mut out = vec![0u8; win.output.len()];
        kernels::max_pool2d(&win, &as_bytes(x), &mut out);
        prop_assert_eq!(as_bytes(&reference::max_pool(&win, x)), out.clone());
        kernels::avg_pool2d(&win, &as_bytes(x), &mut out);
        prop_assert_eq!(as_bytes(&reference::avg_pool(&win, x)), out);
    }

    #[test]
    fn random_models_match_reference_runner(
        seed in any::<u64>(),
        arch in 0usize..5,
        pixels in prop::collection::vec(any::<u8>(), 12 * 12 * 2),
    ) {
        let layers: &[SynthLayer] = match arch {
            0 => &[SynthLayer::Dense { units: 16, relu: true }],
            1 => &[SynthLayer::Conv { filters: 4, k: 3, s: 1, p: 1, relu: true }, SynthLayer::MaxPool { k: 2, s: 2 }],
            2 => &[SynthLayer::Depthwise { k: 3, s: 2, p: 1, relu: false }, SynthLayer::Conv { filters: 6, k: 1, s: 1, p: 0, relu: true }, SynthLayer::AvgPool { k: 2, s: 2 }],
            3 => &[SynthLayer::Conv { filters: 5, k: 3, s: 2, p: 1, relu: true }, SynthLayer::Conv { filters: 7, k: 3, s: 2, p: 0, relu: false }, SynthLayer::Flatten, SynthLayer::Dense { units: 9, relu: true }],
            _ => &[SynthLayer::AvgPool { k: 3, s: 3 }, SynthLayer::Depthwise { k: 2, s: 1, p: 1, relu: true }],
        };
        let repr = random_model(Shape::new(12, 12, 2), 7, layers, seed);
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap();
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; 7];
        let class = model.run(&pixels, &mut arena, &mut logits).unwrap();
        let want = reference::run_model(&model, &pixels);
        prop_assert_eq!(&logits, &want);
        prop_assert_eq!(class, iocane_runtime::quant::argmax(&want));
    }
}

#[test]
fn dense_saturates_at_extremes() {
    let p = Params { bias: vec![i32::MAX / 2, -(i32::MAX / 2)], m: vec![i32::MAX, 1], s: vec![30, -31] };
    let x = vec![127u8 as i8 as u8; 4];
    let w = [127i8 as u8; 8];
    let mut act = [0u8; 2];
    kernels::dense(&x, &Weights::new(&w, -128, &p), Output::Act { buf: &mut act, zero_point: 0, min: -128, max: 127 });
    assert_eq!(act, [127, 0]);
}

#[test]
fn arena_is_exact_and_too_small_is_an_error() {
    let repr = iocane_runtime::emit::random_cnn_s(3);
    let blob = repr.emit();
    let model = Model::parse(&blob).unwrap();
    // Input 784, conv1 out 14*14*8 = 1568, conv2 out 7*7*16 = 784: max(784+1568, 1568+784).
    assert_eq!(model.arena_size(), 784 + 1568);
    let pixels = vec![100u8; 784];
    let mut logits = [0i32; 10];
    let mut small = vec![0u8; model.arena_size() - 1];
    assert!(matches!(model.run(&pixels, &mut small, &mut logits), Err(iocane_runtime::RunError::ArenaTooSmall { .. })));
    let mut arena = vec![0u8; model.arena_size()];
    assert!(model.run(&pixels[..10], &mut arena, &mut logits).is_err());
    assert!(model.run(&pixels, &mut arena, &mut logits[..9]).is_err());
    let a = model.run(&pixels, &mut arena, &mut logits).unwrap();
    // A bigger, dirty arena gives the same answer.
    let mut big = vec![0xAAu8; 10_000];
    let mut logits2 = [0i32; 10];
    assert_eq!(model.run(&pixels, &mut big, &mut logits2).unwrap(), a);
    assert_eq!(logits, logits2);
    let pred = model.classify::<16>(&pixels, &mut arena).unwrap();
    assert_eq!(pred.class, a);
    assert_eq!(&pred.logits[..], &logits[..]);
    let top = pred.top::<3>();
    assert_eq!(top[0].0, a);
    assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    assert!(model.classify::<4>(&pixels, &mut arena).is_err());
}

/// `x`, an int8 tensor of shape `s`, with `(top, left, bottom, right)` rows and columns of
/// `fill` around it.
fn bordered(x: &[i8], s: Shape, (pt, pl, pb, pr): (usize, usize, usize, usize), fill: i8) -> (Vec<i8>, Shape) {
    let o = Shape::new(s.h + pt + pb, s.w + pl + pr, s.c);
    let mut out = vec![fill; o.len()];
    for y in 0..s.h {
        for xx in 0..s.w {
            let (src, dst) = ((y * s.w + xx) * s.c, ((y + pt) * o.w + xx + pl) * o.c);
            out[dst..dst + s.c].copy_from_slice(&x[src..src + s.c]);
        }
    }
    (out, o)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Issue 18 gap 3 (format.md §5.1): a padded tap is the input zero point. For every zero
    /// point, a padded Conv2d / DepthwiseConv2d equals the unpadded one on the input bordered
    /// with `in_zp`: in the reference accumulators, the dispatching kernels and the portable
    /// ones.
    #[test]
    fn spec_gap_3_padding_taps_are_the_input_zero_point((win, oc) in geometry(), seed in any::<u64>(), zp in any::<i8>()) {
        let mut r = iocane_runtime::rng::SplitMix64(seed);
        let x: Vec<i8> = (0..win.input.len()).map(|_| r.range(-128, 127) as i8).collect();
        let (xp, sp) = bordered(&x, win.input, win.padding, zp);
        let flat = Window { input: sp, padding: (0, 0, 0, 0), ..win };
        let (kh, kw) = win.kernel;
        // Conv2d.
        let w: Vec<i8> = (0..oc * kh * kw * win.input.c).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, oc);
        let padded = reference::conv2d_acc(&win, &x, &w, &p.bias, zp);
        prop_assert_eq!(&padded, &reference::conv2d_acc(&flat, &xp, &w, &p.bias, zp));
        let (mut a, mut b) = (vec![0i32; win.output.len()], vec![0i32; win.output.len()]);
        kernels::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut a));
        kernels::conv2d(&flat, &as_bytes(&xp), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut b));
        prop_assert_eq!(&a, &b);
        kernels::portable::conv2d(&win, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), &mut Output::Logits(&mut b));
        prop_assert_eq!(&a, &b);
        // DepthwiseConv2d (one output channel per input channel).
        let c = win.input.c;
        let (dwin, dflat) = (Window { output: Shape { c, ..win.output }, ..win }, Window { output: Shape { c, ..win.output }, ..flat });
        let w: Vec<i8> = (0..kh * kw * c).map(|_| r.range(-127, 127) as i8).collect();
        let p = Params::random(&mut r, c);
        prop_assert_eq!(
            reference::depthwise_acc(&dwin, &x, &w, &p.bias, zp),
            reference::depthwise_acc(&dflat, &xp, &w, &p.bias, zp)
        );
        let (mut a, mut b) = (vec![0i32; dwin.output.len()], vec![0i32; dwin.output.len()]);
        kernels::depthwise_conv2d(&dwin, &as_bytes(&x), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut a));
        kernels::depthwise_conv2d(&dflat, &as_bytes(&xp), &Weights::new(&as_bytes(&w), zp, &p), Output::Logits(&mut b));
        prop_assert_eq!(a, b);
    }
}

/// Issue 18 gap 3, on whole models: layer 0's padding is the pixel zero point −128, i.e. the
/// pixel value 0, not the int8 value 0 (pixel 128). A padded first layer gives the logits of
/// the same layer unpadded on the image bordered with pixel 0, and not those of the image
/// bordered with pixel 128.
#[test]
fn spec_gap_3_first_layer_padding_is_pixel_zero() {
    let input = Shape::new(5, 5, 2);
    let mut rng = iocane_runtime::rng::SplitMix64(18);
    for (seed, first) in [
        SynthLayer::Conv { filters: 3, k: 3, s: 1, p: 1, relu: true },
        SynthLayer::Depthwise { k: 3, s: 2, p: 1, relu: false },
    ]
    .into_iter()
    .enumerate()
    {
        let padded = random_model(input, 3, &[first], seed as u64);
        let mut flat = padded.clone();
        let wide = Shape::new(7, 7, 2);
        (flat.input, flat.layers[0].input, flat.layers[0].padding) = (wide, wide, (0, 0, 0, 0));
        let (a, b) = (padded.emit(), flat.emit());
        let (a, b) = (Model::parse(&a).unwrap(), Model::parse(&b).unwrap());
        let mut differs = false;
        for _ in 0..20 {
            let px: Vec<u8> = (0..input.len()).map(|_| rng.range(0, 255) as u8).collect();
            let as_i8: Vec<i8> = px.iter().map(|&p| p as i8).collect();
            let border = |p: u8| -> Vec<u8> {
                bordered(&as_i8, input, (1, 1, 1, 1), p as i8).0.iter().map(|&v| v as u8).collect()
            };
            let want = reference::run_model(&a, &px);
            assert_eq!(reference::run_model(&b, &border(0)), want);
            let (mut arena, mut logits) = (vec![0u8; b.arena_size()], vec![0i32; 3]);
            b.run(&border(0), &mut arena, &mut logits).unwrap();
            assert_eq!(logits, want);
            differs |= reference::run_model(&b, &border(128)) != want;
        }
        assert!(differs, "layer {first:?}: bordering with pixel 128 never changed the logits");
    }
}

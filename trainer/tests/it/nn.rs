//! Tests of the float NN core: layer and network gradients against finite differences,
//! training, attacks, determinism across thread counts, specs, optimizers.

use iocane_trainer::nn::attack::{self, Attack};
use iocane_trainer::nn::layers::{self, LayerParams};
use iocane_trainer::nn::{
    chunk_size_for, ArchSpec, LayerSpec, LrSchedule, Network, NnError, Optimizer, OptimizerConfig, OptimizerState,
    Params, Tensor, Want,
};
use iocane_trainer::rng::Rng;
use proptest::prelude::*;

use crate::common::{assert_same_on_1_2_3_threads, thread_test_case};

// ---------------------------------------------------------------------------------------
// Helpers

fn rand_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_range_f32(-scale, scale)).collect()
}

/// Values for activation/pool inputs that stay away from the kinks of
/// relu/relu6 and from each other (so max-pool argmaxes are stable under +-h).
fn kink_free_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    // A shuffled grid of distinct values 0.25 apart, each at least 0.125 from 0 and 6
    // (finite differences use h = 0.1).
    let mut vals: Vec<f32> = (0..n).map(|i| (i as f32 - (n / 2) as f32) * 0.25 + 0.125).collect();
    rng.shuffle(&mut vals);
    vals
}

/// `sum(r * y)` in f64 — a linear functional of the layer output.
fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn assert_close(what: &str, analytic: f64, numeric: f64, tol: f64) {
    let err = (analytic - numeric).abs();
    assert!(
        err <= tol * (1.0 + analytic.abs().max(numeric.abs())),
        "{what}: analytic {analytic} vs numeric {numeric} (err {err})"
    );
}

/// Checks input and parameter gradients of one layer against central differences of
/// `L = sum(r * layer(x))`.
fn check_layer_grads(spec: LayerSpec, n: usize, inp: [usize; 3], seed: u64) {
    let mut rng = Rng::new(seed);
    let out = spec.output_shape(inp).expect("valid layer");
    let in_len = n * inp[0] * inp[1] * inp[2];
    let xdata = match spec {
        LayerSpec::Relu | LayerSpec::Relu6 | LayerSpec::MaxPool2d { .. } => kink_free_values(&mut rng, in_len),
        _ => rand_vec(&mut rng, in_len, 1.0),
    };
    let x = Tensor::new([n, inp[0], inp[1], inp[2]], xdata).unwrap();
    let (wl, bl) = spec.param_lens(inp);
    let params = LayerParams { weights: rand_vec(&mut rng, wl, 1.0), bias: rand_vec(&mut rng, bl, 1.0) };
    let r = Tensor::new([n, out[0], out[1], out[2]], rand_vec(&mut rng, n * out[0] * out[1] * out[2], 1.0)).unwrap();
    let y = layers::forward(&spec, &params, &x).unwrap();
    assert_eq!(y.shape, [n, out[0], out[1], out[2]]);
    let (dx, dp) = layers::backward(&spec, &params, &x, &r, true).unwrap();
    let dx = dx.unwrap();
    assert_eq!(dx.shape, x.shape);
    assert_eq!(dp.weights.len(), wl);
    assert_eq!(dp.bias.len(), bl);

    let h = 0.1f32; // every op is (piecewise) linear and inputs avoid kinks by > h
    let loss = |x: &Tensor, p: &LayerParams| dot64(&layers::forward(&spec, p, x).unwrap().data, &r.data);
    // Central difference of the loss in one coordinate, chosen by `at` on a copy of (x, params).
    let central = |at: &dyn for<'a> Fn(&'a mut Tensor, &'a mut LayerParams) -> &'a mut f32| {
        let shifted = |d: f32| {
            let (mut x, mut p) = (x.clone(), params.clone());
            *at(&mut x, &mut p) += d;
            loss(&x, &p)
        };
        (shifted(h) - shifted(-h)) / (2.0 * h as f64)
    };
    for i in 0..x.data.len() {
        let num = central(&|x, _| &mut x.data[i]);
        assert_close(&format!("{spec} dx[{i}]"), dx.data[i] as f64, num, 1e-4);
    }
    for i in 0..wl {
        let num = central(&|_, p| &mut p.weights[i]);
        assert_close(&format!("{spec} dw[{i}]"), dp.weights[i] as f64, num, 1e-4);
    }
    for i in 0..bl {
        let num = central(&|_, p| &mut p.bias[i]);
        assert_close(&format!("{spec} db[{i}]"), dp.bias[i] as f64, num, 1e-4);
    }
}

/// Mean cross-entropy computed in f64 from the network's logits.
fn loss64(net: &Network, x: &Tensor, labels: &[usize]) -> f64 {
    let logits = net.forward(x);
    let k = net.classes();
    let mut total = 0.0;
    for (s, &l) in labels.iter().enumerate() {
        let z: Vec<f64> = logits.data[s * k..(s + 1) * k].iter().map(|&v| v as f64).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - z[l];
    }
    total / labels.len() as f64
}

/// Whole-network gradient check (parameters and input) with central differences.
fn check_network_grads(spec: ArchSpec, n: usize, seed: u64) {
    let mut net = Network::new(spec.clone(), seed).unwrap();
    let mut rng = Rng::new(seed ^ 0xABCD);
    // Non-zero biases: with zero biases a sample whose hidden units are all dead sits
    // exactly on the next relu's kink, where finite differences are meaningless.
    for l in &mut net.params_mut().layers {
        for b in &mut l.bias {
            *b = rng.uniform_range_f32(-0.2, 0.2);
        }
    }
    let [h, w, c] = spec.input;
    let x = Tensor::new([n, h, w, c], (0..n * h * w * c).map(|_| rng.uniform_f32()).collect()).unwrap();
    let labels: Vec<usize> = (0..n).map(|_| rng.below(spec.classes)).collect();
    let r = net.loss_and_grads(&x, &labels, Want::BOTH);
    assert!((r.loss as f64 - loss64(&net, &x, &labels)).abs() < 1e-5);
    let grads = r.param_grads.unwrap();
    let dx = r.input_grad.unwrap();
    let eps = 1e-3f32;
    let mut checked = 0;
    let mut bad = Vec::new();
    // Parameters: a deterministic sample of coordinates in every buffer.
    for li in 0..spec.layers.len() {
        for which in 0..2 {
            let len = if which == 0 { net.layer_params(li).weights.len() } else { net.layer_params(li).bias.len() };
            for j in (0..len).step_by((len / 12).max(1)) {
                let eval = |delta: f32| {
                    let mut p = net.params().clone();
                    let buf = if which == 0 { &mut p.layers[li].weights } else { &mut p.layers[li].bias };
                    buf[j] += delta;
                    let mut m = net.clone();
                    m.set_params(p).unwrap();
                    loss64(&m, &x, &labels)
                };
                let num = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
                let g = if which == 0 { grads.layers[li].weights[j] } else { grads.layers[li].bias[j] } as f64;
                checked += 1;
                if (g - num).abs() > 2e-3 * (1.0 + g.abs()) {
                    bad.push(format!("layer {li} buf {which} [{j}]: {g} vs {num}"));
                }
            }
        }
    }
    for j in (0..x.data.len()).step_by((x.data.len() / 40).max(1)) {
        let eval = |delta: f32| {
            let mut xx = x.clone();
            xx.data[j] += delta;
            loss64(&net, &xx, &labels)
        };
        let num = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
        let g = dx.data[j] as f64;
        checked += 1;
        if (g - num).abs() > 2e-3 * (1.0 + g.abs()) {
            bad.push(format!("input [{j}]: {g} vs {num}"));
        }
    }
    // Inputs and seeds are fixed, so no finite-difference step straddles a kink here.
    assert!(bad.len() * 50 <= checked, "{} of {checked} gradient checks failed: {bad:?}", bad.len());
}

/// Synthetic separable problem: class k has a bright 2x2 blob at position k of a grid
/// plus noise, on `size x size x 1` images.
fn blobs(n: usize, size: usize, classes: usize, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let mut data = vec![0.0f32; n * size * size];
    let mut labels = Vec::with_capacity(n);
    let per_row = (size / 3).max(1);
    for i in 0..n {
        let k = rng.below(classes);
        labels.push(k);
        let img = &mut data[i * size * size..(i + 1) * size * size];
        for v in img.iter_mut() {
            *v = 0.3 * rng.uniform_f32();
        }
        let (by, bx) = ((k / per_row) * 3, (k % per_row) * 3);
        for dy in 0..2 {
            for dx in 0..2 {
                img[(by + dy) * size + bx + dx] = 0.7 + 0.3 * rng.uniform_f32();
            }
        }
    }
    (Tensor::new([n, size, size, 1], data).unwrap(), labels)
}

/// `n` blobs of `size x size` in `classes` classes (seed `data_seed`) and a fresh network
/// `compact` (seed `init_seed`) for them.
fn blob_problem(
    data_seed: u64,
    n: usize,
    size: usize,
    classes: usize,
    compact: &str,
    init_seed: u64,
) -> (Tensor, Vec<usize>, Network) {
    let (x, labels) = blobs(n, size, classes, &mut Rng::new(data_seed));
    let spec = ArchSpec::from_compact(compact, [size, size, 1], classes).unwrap();
    (x, labels, Network::new(spec, init_seed).unwrap())
}

fn train(net: &mut Network, x: &Tensor, labels: &[usize], steps: usize, lr: f32) -> Vec<f32> {
    let mut opt =
        Optimizer::new(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 }, net.params());
    let mut losses = Vec::new();
    for _ in 0..steps {
        let r = net.loss_and_grads(x, labels, Want::PARAMS);
        losses.push(r.loss);
        let g = r.param_grads.unwrap();
        opt.step(net.params_mut(), &g, lr);
    }
    losses
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn params_bits(p: &Params) -> Vec<u32> {
    p.layers.iter().flat_map(|l| l.weights.iter().chain(&l.bias)).map(|v| v.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------
// Layer gradients

#[test]
fn layer_grads_fixed_cases() {
    let cases: Vec<(&str, [usize; 3])> = vec![
        ("dense4", [1, 1, 6]),
        ("conv3k3s2p1", [5, 6, 2]),
        ("conv2k3x2s1x2p1_0_0_1", [4, 5, 3]),
        ("conv4k1", [3, 3, 3]),
        ("conv8k3s2p1", [5, 6, 1]),
        ("conv16k3s1p1", [4, 5, 3]),
        ("conv24k2x3s2x1p1_2_0_1", [5, 5, 2]),
        ("conv32k3s2p1", [5, 5, 2]),
        ("conv64k2", [3, 4, 2]),
        ("conv8k3", [4, 4, 2]),
        ("conv2k1s2", [4, 4, 2]),
        ("dw3s1p1", [4, 5, 3]),
        ("dw2x3s2x1p1_2_0_1", [5, 4, 2]),
        ("dw3s2p1", [5, 5, 8]),
        ("dw2x3s1x2p1_2_0_1", [4, 5, 16]),
        ("maxpool2", [4, 4, 3]),
        ("maxpool3s2", [5, 5, 2]),
        ("avgpool2", [4, 5, 2]),
        ("avgpool2x3s1", [3, 4, 2]),
        ("relu", [3, 3, 2]),
        ("relu6", [3, 3, 2]),
        ("flatten", [2, 3, 2]),
    ];
    for (i, (tok, inp)) in cases.into_iter().enumerate() {
        let spec = LayerSpec::parse(tok).unwrap();
        check_layer_grads(spec, 3, inp, 100 + i as u64);
    }
}

fn arb_layer() -> impl Strategy<Value = (LayerSpec, [usize; 3])> {
    (
        0usize..8,
        (1usize..=3, 1usize..=3),
        (1usize..=3, 1usize..=3),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        // Small counts use the im2col + gemm path, multiples of 8 the direct kernels.
        prop_oneof![1usize..=4, Just(8usize), Just(16), Just(24), Just(32), Just(64)],
        (1usize..=4, 1usize..=4, 1usize..=3),
        (0usize..=3, 0usize..=3),
    )
        .prop_map(|(op, (kh, kw), (sh, sw), (pt, pl, pb, pr), f, (eh, ew, c), _)| {
            let kernel = [kh, kw];
            let stride = [sh, sw];
            let padding = [pt % kh, pl % kw, pb % kh, pr % kw];
            let inp = [kh + eh, kw + ew, c];
            let spec = match op {
                0 => LayerSpec::Conv2d { filters: f, kernel, stride, padding },
                1 => LayerSpec::DepthwiseConv2d { kernel, stride, padding },
                2 => LayerSpec::MaxPool2d { kernel, stride },
                3 => LayerSpec::AvgPool2d { kernel, stride },
                4 => LayerSpec::Relu,
                5 => LayerSpec::Relu6,
                6 => LayerSpec::Flatten,
                _ => LayerSpec::Dense { units: f },
            };
            let inp = if op == 7 { [1, 1, inp[0] * inp[2]] } else { inp };
            (spec, inp)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn layer_grads_match_finite_differences((spec, inp) in arb_layer(), n in 1usize..=3, seed in any::<u64>()) {
        check_layer_grads(spec, n, inp, seed);
    }

    #[test]
    fn compact_form_round_trips((spec, _inp) in arb_layer()) {
        let text = spec.to_string();
        prop_assert_eq!(LayerSpec::parse(&text).unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        prop_assert_eq!(serde_json::from_str::<LayerSpec>(&json).unwrap(), spec);
    }
}

#[test]
fn conv_matches_naive_reference() {
    // 4 filters: im2col + gemm path; 8 and 24: direct kernels.
    for f in [4, 8, 24] {
        conv_matches_naive_reference_with(f);
    }
}

fn conv_matches_naive_reference_with(f: usize) {
    // Independent direct convolution, NHWC / OHWI, asymmetric padding and stride.
    let mut rng = Rng::new(5);
    let (n, h, w, c) = (2, 6, 5, 3);
    let (kh, kw, sh, sw) = (3, 2, 2, 1);
    let pad = [1, 0, 2, 1];
    let spec = LayerSpec::Conv2d { filters: f, kernel: [kh, kw], stride: [sh, sw], padding: pad };
    let x = Tensor::new([n, h, w, c], rand_vec(&mut rng, n * h * w * c, 1.0)).unwrap();
    let p = LayerParams { weights: rand_vec(&mut rng, f * kh * kw * c, 1.0), bias: rand_vec(&mut rng, f, 1.0) };
    let y = layers::forward(&spec, &p, &x).unwrap();
    let oh = (h + pad[0] + pad[2] - kh) / sh + 1;
    let ow = (w + pad[1] + pad[3] - kw) / sw + 1;
    assert_eq!(y.shape, [n, oh, ow, f]);
    for i in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..f {
                    let mut acc = p.bias[o] as f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * sh + ky) as isize - pad[0] as isize;
                            let ix = (ox * sw + kx) as isize - pad[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ci in 0..c {
                                let xv = x.data[((i * h + iy as usize) * w + ix as usize) * c + ci];
                                let wv = p.weights[((o * kh + ky) * kw + kx) * c + ci];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let got = y.data[((i * oh + oy) * ow + ox) * f + o] as f64;
                    assert!((got - acc).abs() < 1e-5, "({i},{oy},{ox},{o}): {got} vs {acc}");
                }
            }
        }
    }
}

#[test]
fn dense_uses_nhwc_flatten_order() {
    // Dense weight [out][in] with in = (y*w + x)*c + ch.
    let spec = ArchSpec::from_compact("flatten,dense1", [2, 2, 2], 1).unwrap();
    let mut w = vec![0.0; 8];
    let (width, chans) = (2, 2);
    let (y, x, ch) = (1, 0, 1);
    w[(y * width + x) * chans + ch] = 1.0;
    let params = Params { layers: vec![LayerParams::default(), LayerParams { weights: w, bias: vec![0.5] }] };
    let net = Network::from_params(spec, params).unwrap();
    let x = Tensor::new([1, 2, 2, 2], (0..8).map(|v| v as f32).collect()).unwrap();
    assert_eq!(net.forward(&x).data, vec![5.0 + 0.5]);
}

#[test]
fn pools_and_activations_forward_values() {
    let x = Tensor::new([1, 2, 2, 1], vec![1.0, -2.0, 7.0, 3.0]).unwrap();
    let none = LayerParams::default();
    let mp = LayerSpec::parse("maxpool2").unwrap();
    assert_eq!(layers::forward(&mp, &none, &x).unwrap().data, vec![7.0]);
    let ap = LayerSpec::parse("avgpool2").unwrap();
    assert_eq!(layers::forward(&ap, &none, &x).unwrap().data, vec![2.25]);
    let r6 = layers::forward(&LayerSpec::Relu6, &none, &x).unwrap();
    assert_eq!(r6.data, vec![1.0, 0.0, 6.0, 3.0]);
    let r = layers::forward(&LayerSpec::Relu, &none, &x).unwrap();
    assert_eq!(r.data, vec![1.0, 0.0, 7.0, 3.0]);
    // Max-pool ties route the gradient to the first maximum.
    let t = Tensor::new([1, 1, 2, 1], vec![4.0, 4.0]).unwrap();
    let mp12 = LayerSpec::MaxPool2d { kernel: [1, 2], stride: [1, 2] };
    let dy = Tensor::new([1, 1, 1, 1], vec![1.0]).unwrap();
    let (dx, _) = layers::backward(&mp12, &none, &t, &dy, true).unwrap();
    assert_eq!(dx.unwrap().data, vec![1.0, 0.0]);
}

#[test]
fn layer_api_rejects_bad_shapes() {
    let spec = LayerSpec::parse("conv2k3").unwrap();
    let x = Tensor::zeros([1, 4, 4, 1]);
    let bad = LayerParams::zeros(5, 2);
    assert!(matches!(layers::forward(&spec, &bad, &x), Err(NnError::Shape(_))));
    let small = Tensor::zeros([1, 2, 2, 1]);
    let ok = LayerParams::zeros(18, 2);
    assert!(layers::forward(&spec, &ok, &small).is_err());
}

// ---------------------------------------------------------------------------------------
// Network gradients

#[test]
fn network_grads_cnn_s_like() {
    let spec = ArchSpec::from_compact("conv3k3s2p1,relu,conv4k3s2p1,relu,flatten,dense5", [8, 8, 1], 5).unwrap();
    check_network_grads(spec, 5, 1);
}

#[test]
fn network_grads_all_ops() {
    let spec = ArchSpec::from_compact(
        "conv4k3p1,relu6,maxpool2,dw3p1,relu,conv3k1,avgpool2,flatten,dense6,relu,dense3",
        [8, 8, 2],
        3,
    )
    .unwrap();
    check_network_grads(spec, 4, 2);
}

#[test]
fn network_grads_mlp_and_multi_chunk_batch() {
    let spec = ArchSpec::from_compact("flatten,dense7,relu,dense5,relu,dense4", [3, 3, 2], 4).unwrap();
    // More samples than one chunk: per-chunk gradients must sum to the batch gradient.
    let chunk = Network::new(spec.clone(), 0).unwrap().chunk_size();
    check_network_grads(spec, chunk * 2 + 3, 3);
}

#[test]
fn batch_gradient_is_mean_of_sample_gradients() {
    let spec = ArchSpec::preset("cnn-s", [12, 12, 1], 4).unwrap();
    let net = Network::new(spec, 9).unwrap();
    let mut rng = Rng::new(1);
    let (x, labels) = blobs(net.chunk_size() + 5, 12, 4, &mut rng);
    let full = net.loss_and_grads(&x, &labels, Want::BOTH);
    let mut acc = net.params().zeros_like();
    let mut loss = 0.0;
    for i in 0..x.n() {
        let xi = x.slice_batch(i, i + 1);
        let r = net.loss_and_grads(&xi, &labels[i..i + 1], Want::BOTH);
        loss += r.loss;
        acc.add_assign(&r.param_grads.unwrap());
        let gi = r.input_grad.unwrap();
        let fi = full.input_grad.as_ref().unwrap().sample(i);
        for (a, b) in gi.data.iter().zip(fi) {
            assert!((a / x.n() as f32 - b).abs() < 1e-6);
        }
        assert_eq!(full.sample_losses[i].to_bits(), r.sample_losses[0].to_bits());
    }
    acc.scale(1.0 / x.n() as f32);
    assert!((loss / x.n() as f32 - full.loss).abs() < 1e-5);
    let g = full.param_grads.unwrap();
    for (a, b) in params_bits(&acc).iter().zip(params_bits(&g)) {
        let (a, b) = (f32::from_bits(*a), f32::from_bits(b));
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn predict_and_forward_agree() {
    let spec = ArchSpec::preset("dwcnn", [28, 28, 1], 10).unwrap();
    let net = Network::new(spec, 4).unwrap();
    let mut rng = Rng::new(2);
    let x = Tensor::new([37, 28, 28, 1], (0..37 * 784).map(|_| rng.uniform_f32()).collect()).unwrap();
    let logits = net.forward(&x);
    assert_eq!(logits.shape, [37, 1, 1, 10]);
    let pred = net.predict(&x);
    let labels: Vec<usize> = (0..37).map(|i| i % 10).collect();
    let r = net.loss_and_grads(&x, &labels, Want::NONE);
    assert_eq!(pred, r.predictions);
    assert_eq!(r.correct, pred.iter().zip(&labels).filter(|(p, l)| p == l).count());
    // activations() ends with the same logits.
    let acts = net.activations(&x.slice_batch(0, 3));
    assert_eq!(acts.len(), net.layers().len());
    let last = acts.last().unwrap();
    for (a, b) in last.data.iter().zip(&logits.data[..30]) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn predict_ties_pick_lowest_index() {
    let spec = ArchSpec::from_compact("flatten,dense3", [1, 1, 2], 3).unwrap();
    let params = Params {
        layers: vec![LayerParams::default(), LayerParams { weights: vec![0.0; 6], bias: vec![1.0, 2.0, 2.0] }],
    };
    let net = Network::from_params(spec, params).unwrap();
    assert_eq!(net.predict(&Tensor::zeros([2, 1, 1, 2])), vec![1, 1]);
}

#[test]
fn softmax_is_stable_for_huge_logits() {
    let spec = ArchSpec::from_compact("flatten,dense2", [1, 1, 1], 2).unwrap();
    let params =
        Params { layers: vec![LayerParams::default(), LayerParams { weights: vec![1e4, -1e4], bias: vec![0.0, 0.0] }] };
    let net = Network::from_params(spec, params).unwrap();
    let x = Tensor::new([2, 1, 1, 1], vec![1.0, 1.0]).unwrap();
    let r = net.loss_and_grads(&x, &[0, 1], Want::BOTH);
    assert!(r.loss.is_finite());
    assert!((r.sample_losses[0]).abs() < 1e-6);
    assert!((r.sample_losses[1] - 2e4).abs() < 1.0);
    assert!(r.param_grads.unwrap().all_finite());
}

// ---------------------------------------------------------------------------------------
// Training

#[test]
fn sgd_decreases_loss_on_separable_problem() {
    let (x, labels, mut net) = blob_problem(3, 96, 12, 4, "conv4k3s2p1,relu,conv8k3s2p1,relu,flatten,dense4", 1);
    let losses = train(&mut net, &x, &labels, 50, 0.05);
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let (_, correct) = net.evaluate(&x, &labels);
    assert!(correct >= 90, "accuracy {correct}/96");
}

#[test]
fn adam_decreases_loss_on_mlp() {
    let mut rng = Rng::new(4);
    let (x, labels) = blobs(64, 9, 3, &mut rng);
    let spec = ArchSpec::preset("mlp", [9, 9, 1], 3).unwrap();
    let mut net = Network::new(spec, 2).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::adam(), net.params());
    let first = net.evaluate(&x, &labels).0;
    for _ in 0..50 {
        let g = net.loss_and_grads(&x, &labels, Want::PARAMS).param_grads.unwrap();
        opt.step(net.params_mut(), &g, 1e-3);
    }
    let last = net.evaluate(&x, &labels).0;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

// ---------------------------------------------------------------------------------------
// Attacks

fn trained_tiny() -> (Network, Tensor, Vec<usize>) {
    let (x, labels, mut net) = blob_problem(11, 64, 12, 4, "conv4k3s2p1,relu,conv8k3s2p1,relu,flatten,dense4", 5);
    train(&mut net, &x, &labels, 150, 0.05);
    (net, x, labels)
}

fn assert_in_ball(adv: &Tensor, x: &Tensor, eps: f32) {
    assert_eq!(adv.shape, x.shape);
    for (&a, &c) in adv.data.iter().zip(&x.data) {
        assert!((0.0..=1.0).contains(&a), "{a} outside [0,1]");
        assert!((a - c).abs() <= eps + 1e-6, "|{a} - {c}| > {eps}");
    }
}

#[test]
fn pgd_beats_fgsm_and_stays_in_ball() {
    let (net, x, labels) = trained_tiny();
    let clean = net.evaluate(&x, &labels).0;
    let eps = 0.15;
    let mut rng = Rng::new(1);
    let fg = Attack::fgsm(eps).perturb(&net, &x, &labels, &mut rng);
    let fgrs = Attack::fgsm_rs(eps).perturb(&net, &x, &labels, &mut rng);
    let pgd = Attack::pgd(eps, 10).perturb(&net, &x, &labels, &mut rng);
    let pgd_r = Attack::Pgd { eps, step_size: eps / 4.0, steps: 10, random_start: true, restarts: 3, snap: false }
        .perturb(&net, &x, &labels, &mut rng);
    for adv in [&fg, &fgrs, &pgd, &pgd_r] {
        assert_in_ball(adv, &x, eps);
    }
    let (lf, _) = net.evaluate(&fg, &labels);
    let (lp, cp) = net.evaluate(&pgd, &labels);
    let (lr, cr) = net.evaluate(&pgd_r, &labels);
    assert!(lf > clean, "fgsm {lf} vs clean {clean}");
    assert!(lp > lf, "pgd {lp} vs fgsm {lf}");
    // Restarts keep the per-sample worst: never fewer errors than any single run would give
    // on the same samples is not guaranteed, but it must be at least as strong overall here.
    assert!(cr <= cp + 2 && lr > lf, "restarts: loss {lr}, correct {cr}; single: {lp}, {cp}");
}

#[test]
fn targeted_pgd_reaches_its_targets_and_stays_in_ball() {
    // issue 16: D_NR (Ilyas et al.) is made of targeted examples relabelled with the target.
    let (net, x, labels) = trained_tiny();
    let targets: Vec<usize> = labels.iter().map(|&l| (l + 1) % 4).collect();
    let eps = 0.3;
    let hits = |adv: &Tensor| net.predict(adv).iter().zip(&targets).filter(|(p, t)| p == t).count();
    let mut xg = x.clone();
    xg.snap_to_u8_grid();
    let adv = attack::pgd_targeted(&net, &xg, &targets, eps, eps / 4.0, 20, true, &mut Rng::new(3));
    assert_in_ball(&adv, &xg, eps);
    assert!(adv.data.iter().all(|v| ((v * 255.0) - (v * 255.0).round()).abs() < 1e-3), "snapped");
    // Untargeted PGD of the same budget hits the chosen class far less often.
    let untargeted = Attack::pgd(eps, 20).perturb(&net, &xg, &labels, &mut Rng::new(3));
    let (t, u, clean) = (hits(&adv), hits(&untargeted), hits(&xg));
    assert!(t > u && t >= x.n() / 2 && t > clean, "targeted {t}, untargeted {u}, clean {clean} of {}", x.n());
    let again = attack::pgd_targeted(&net, &xg, &targets, eps, eps / 4.0, 20, true, &mut Rng::new(3));
    assert_eq!(bits(&again.data), bits(&adv.data));
}

#[test]
fn snapped_attacks_are_on_grid_and_in_ball() {
    let (net, x, labels) = trained_tiny();
    // Clean inputs on the 8-bit grid, as from a dataset.
    let mut xg = x.clone();
    xg.snap_to_u8_grid();
    for eps in [8.0 / 255.0, 0.1, 0.3] {
        let mut rng = Rng::new(2);
        for att in [Attack::fgsm(eps), Attack::fgsm_rs(eps), Attack::pgd(eps, 5)] {
            let adv = att.with_snap(true).perturb(&net, &xg, &labels, &mut rng);
            assert_in_ball(&adv, &xg, eps);
            for &v in &adv.data {
                let k = v * 255.0;
                assert!((k - k.round()).abs() < 1e-3, "{v} not on the grid");
            }
        }
    }
}

#[test]
fn attack_without_random_start_is_deterministic_and_zero_eps_is_identity() {
    let (net, x, labels) = trained_tiny();
    let a = Attack::Pgd { eps: 0.1, step_size: 0.02, steps: 5, random_start: false, restarts: 1, snap: false };
    let r1 = a.perturb(&net, &x, &labels, &mut Rng::new(1));
    let r2 = a.perturb(&net, &x, &labels, &mut Rng::new(2));
    assert_eq!(bits(&r1.data), bits(&r2.data));
    let z = Attack::pgd(0.0, 3).perturb(&net, &x, &labels, &mut Rng::new(3));
    assert_eq!(bits(&z.data), bits(&x.data));
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<Attack>(&json).unwrap(), a);
    let parsed: Attack = serde_json::from_str(r#"{"kind":"pgd","eps":0.1,"step_size":0.01,"steps":7}"#).unwrap();
    assert_eq!(parsed.gradient_passes(), 7);
}

#[test]
fn projection_and_grid_helpers() {
    let x0 = Tensor::new([1, 1, 1, 4], vec![0.0, 0.5, 1.0, 10.0 / 255.0]).unwrap();
    let mut x = Tensor::new([1, 1, 1, 4], vec![-0.3, 0.9, 0.95, 0.5]).unwrap();
    attack::project(&mut x, &x0, 0.1);
    assert_eq!(x.data, vec![0.0, 0.6, 0.95, 10.0 / 255.0 + 0.1]);
    let mut y = x.clone();
    attack::snap_to_grid(&mut y, &x0, 0.1);
    for (&v, &c) in y.data.iter().zip(&x0.data) {
        assert!((v * 255.0 - (v * 255.0).round()).abs() < 1e-4);
        assert!((v - c).abs() <= 0.1 + 1e-6);
    }
    // 10/255 + 0.1 = 35.5/255 -> the ball allows up to level 35.
    assert_eq!((y.data[3] * 255.0).round(), 35.0);
    let mut rng = Rng::new(1);
    let r = attack::random_start(&x0, 0.05, &mut rng);
    assert!(r.data.iter().zip(&x0.data).all(|(a, b)| (a - b).abs() <= 0.05 && (0.0..=1.0).contains(a)));
    // FGSM free function = Attack::Fgsm.
    let (net, xb, labels) = trained_tiny();
    let a = attack::fgsm(&net, &xb, &labels, 0.1, false);
    let b = Attack::fgsm(0.1).perturb(&net, &xb, &labels, &mut rng);
    assert_eq!(bits(&a.data), bits(&b.data));
}

// ---------------------------------------------------------------------------------------
// Determinism across thread counts

#[test]
fn results_are_bit_identical_across_thread_counts() {
    let (net, x, labels) = thread_test_case(5, 7);
    assert_same_on_1_2_3_threads(|| {
        let r = net.loss_and_grads(&x, &labels, Want::BOTH);
        let adv = Attack::pgd(0.1, 3).perturb(&net, &x, &labels, &mut Rng::new(1));
        let logits = net.forward(&x);
        (
            r.loss.to_bits(),
            bits(&r.sample_losses),
            params_bits(&r.param_grads.unwrap()),
            bits(&r.input_grad.unwrap().data),
            bits(&adv.data),
            bits(&logits.data),
        )
    });
}

// ---------------------------------------------------------------------------------------
// Specs

#[test]
fn preset_counts() {
    let mnist = [28, 28, 1];
    let count = |name: &str| {
        let s = ArchSpec::preset(name, mnist, 10).unwrap();
        (s.param_count(), s.mac_count())
    };
    assert_eq!(count("mlp"), (52_650, 52_544));
    assert_eq!(count("cnn-s"), (9_098, 78_400));
    assert_eq!(count("cnn-m"), (89_546, 1_377_152));
    assert_eq!(count("dwcnn"), (16_698, 101_136));
    for name in iocane_trainer::nn::PRESETS {
        let s = ArchSpec::preset(name, mnist, 10).unwrap();
        assert!(s.param_count() < 100_000 && s.mac_count() < 3_000_000);
        let net = Network::new(s.clone(), 0).unwrap();
        assert_eq!(net.param_count(), s.param_count());
        let table = s.summary();
        assert!(table.contains("total"), "{table}");
    }
    let s = ArchSpec::preset("cnn-s", mnist, 10).unwrap();
    assert_eq!(s.to_compact(), "conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense10");
    assert_eq!(s.shapes().unwrap()[2], [14, 14, 8]);
    assert_eq!(s.shapes().unwrap()[4], [7, 7, 16]);
    assert!(matches!(ArchSpec::preset("resnet", mnist, 10), Err(NnError::UnknownPreset(_))));
}

#[test]
fn chunk_sizes_depend_only_on_the_architecture() {
    let mnist = [28, 28, 1];
    let chunk = |name: &str| Network::new(ArchSpec::preset(name, mnist, 10).unwrap(), 0).unwrap().chunk_size();
    assert_eq!(chunk("mlp"), 64);
    assert_eq!(chunk("cnn-s"), 32);
    assert_eq!(chunk("dwcnn"), 32);
    assert_eq!(chunk("cnn-m"), 16);
    assert_eq!(chunk_size_for(1), 64);
    assert_eq!(chunk_size_for(usize::MAX), 16);
}

#[test]
fn summary_table_lists_layers() {
    let s = ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap();
    let t = s.summary();
    assert!(t.contains("conv8k3s2p1"));
    assert!(t.contains("14x14x8"));
    assert!(t.contains("9,098"));
    assert!(t.contains("78,400"));
    assert_eq!(t.lines().count(), 2 + 1 + 6 + 1 + 1);
}

#[test]
fn spec_json_and_compact_round_trip() {
    for name in iocane_trainer::nn::PRESETS {
        let s = ArchSpec::preset(name, [28, 28, 1], 10).unwrap();
        assert_eq!(ArchSpec::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(ArchSpec::from_compact(&s.to_compact(), s.input, s.classes).unwrap(), s);
        assert_eq!(ArchSpec::resolve(name, s.input, s.classes).unwrap(), s);
    }
    let json = r#"{"input":[8,8,1],"classes":3,"layers":[
        {"op":"Conv2d","filters":2,"kernel":[3,3]},
        {"op":"Relu"},{"op":"MaxPool2d","kernel":[2,2],"stride":[2,2]},
        {"op":"Flatten"},{"op":"Dense","units":3}]}"#;
    let s = ArchSpec::from_json(json).unwrap();
    assert_eq!(s.to_compact(), "conv2k3,relu,maxpool2,flatten,dense3");
    assert_eq!(s.layers()[0], LayerSpec::Conv2d { filters: 2, kernel: [3, 3], stride: [1, 1], padding: [0; 4] });
    let compact = ArchSpec::from_compact(" Conv2k3 , RELU,maxpool2 ,flatten,dense3", [8, 8, 1], 3).unwrap();
    assert_eq!(compact, s);
}

#[test]
fn bad_specs_are_rejected_with_useful_errors() {
    // (compact spec, input, classes, words the error must contain)
    let cases: &[(&str, [usize; 3], usize, &[&str])] = &[
        ("conv8k3,relu,dense10", [28, 28, 1], 10, &["flatten"]),
        ("flatten,dense5", [28, 28, 1], 10, &["5 units", "10 classes"]),
        ("flatten,dense10,relu", [28, 28, 1], 10, &["last layer"]),
        ("conv8k9,flatten,dense10", [4, 4, 1], 10, &["larger than the padded input"]),
        ("conv8k3p3,flatten,dense10", [8, 8, 1], 10, &["padding"]),
        ("conv8k3s0,flatten,dense10", [8, 8, 1], 10, &["stride"]),
        ("conv0k3,flatten,dense10", [8, 8, 1], 10, &["filters"]),
        ("maxpool0,flatten,dense10", [8, 8, 1], 10, &["kernel"]),
        ("conv8k3,softmax,dense10", [8, 8, 1], 10, &["layer 1", "softmax"]),
        ("", [8, 8, 1], 10, &["no layers"]),
        ("flatten,dense10", [0, 8, 1], 10, &["input"]),
        ("flatten,dense0", [8, 8, 1], 0, &["classes"]),
    ];
    for &(text, input, classes, words) in cases {
        let e = ArchSpec::from_compact(text, input, classes).unwrap_err().to_string();
        assert!(words.iter().all(|w| e.contains(w)), "{text:?}: {e}");
    }
    assert!(ArchSpec::from_json(r#"{"input":[8,8,1],"classes":2,"layers":[{"op":"Softmax"}]}"#).is_err());
    assert!(ArchSpec::from_json(r#"{"input":[8,8,1],"classes":2,"layers":[{"op":"Dense","units":2,"bias":false}]}"#)
        .is_err());
    assert!(ArchSpec::from_json(r#"{"input":[8,8,1],"classes":2,"layers":[{"op":"Dense","units":2}]}"#).is_err());
    // Dense directly on a 1x1xN tensor is fine.
    assert!(ArchSpec::from_compact("dense4,relu,dense2", [1, 1, 8], 2).is_ok());
}

#[test]
fn network_json_round_trip_and_validation() {
    let spec = ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap();
    let net = Network::new(spec.clone(), 3).unwrap();
    let back = Network::from_json(&net.to_json()).unwrap();
    assert_eq!(params_bits(back.params()), params_bits(net.params()));
    assert_eq!(back, net);
    let mut p = net.params().clone();
    p.layers[0].weights.pop();
    assert!(Network::from_params(spec.clone(), p).is_err());
    // Same seed, same init; different seed, different init.
    assert_eq!(Network::new(spec.clone(), 3).unwrap(), net);
    assert_ne!(Network::new(spec, 4).unwrap(), net);
}

#[test]
fn he_init_has_expected_scale() {
    let spec = ArchSpec::preset("mlp", [28, 28, 1], 10).unwrap();
    let net = Network::new(spec, 0).unwrap();
    let w = &net.layer_params(1).weights;
    let var = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    assert!((var - 2.0 / 784.0).abs() < 0.1 * 2.0 / 784.0, "var {var}");
    assert!(net.layer_params(1).bias.iter().all(|&b| b == 0.0));
}

// ---------------------------------------------------------------------------------------
// Optimizers and schedules

fn resume_is_bit_identical(config: OptimizerConfig) {
    let (x, labels, mut net) = blob_problem(6, 40, 9, 3, "conv3k3s2p1,relu,flatten,dense3", 1);
    let mut opt = Optimizer::new(config, net.params());
    let step = |net: &mut Network, opt: &mut Optimizer, k: usize| {
        for i in 0..k {
            let g = net.loss_and_grads(&x, &labels, Want::PARAMS).param_grads.unwrap();
            opt.step(net.params_mut(), &g, 0.01 * (1.0 + i as f32));
        }
    };
    step(&mut net, &mut opt, 4);
    let saved_net = net.to_json();
    let saved_opt = serde_json::to_string(&opt.state()).unwrap();
    step(&mut net, &mut opt, 3);
    let mut net2 = Network::from_json(&saved_net).unwrap();
    let state: OptimizerState = serde_json::from_str(&saved_opt).unwrap();
    let mut opt2 = Optimizer::from_state(&state, net2.params()).unwrap();
    assert_eq!(opt2.steps(), 4);
    step(&mut net2, &mut opt2, 3);
    assert_eq!(params_bits(net.params()), params_bits(net2.params()));
    assert_eq!(opt.state(), opt2.state());
}

#[test]
fn optimizer_resume_is_bit_identical() {
    resume_is_bit_identical(OptimizerConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 5e-4 });
    resume_is_bit_identical(OptimizerConfig::sgd(0.0));
    resume_is_bit_identical(OptimizerConfig::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
}

#[test]
fn optimizer_state_names_and_validation() {
    let spec = ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap();
    let net = Network::new(spec, 0).unwrap();
    let st = Optimizer::new(OptimizerConfig::adam(), net.params()).state();
    let names: Vec<&str> = st.buffers.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m.0.weights",
            "m.0.bias",
            "m.2.weights",
            "m.2.bias",
            "m.5.weights",
            "m.5.bias",
            "v.0.weights",
            "v.0.bias",
            "v.2.weights",
            "v.2.bias",
            "v.5.weights",
            "v.5.bias"
        ]
    );
    let mut broken = st.clone();
    broken.buffers[3].data.pop();
    assert!(Optimizer::from_state(&broken, net.params()).is_err());
    let mut missing = st;
    missing.buffers.pop();
    assert!(Optimizer::from_state(&missing, net.params()).is_err());
}

#[test]
fn sgd_and_adam_single_step_values() {
    let params = Params { layers: vec![LayerParams { weights: vec![1.0, -2.0], bias: vec![0.5] }] };
    let grads = Params { layers: vec![LayerParams { weights: vec![0.5, 0.25], bias: vec![1.0] }] };
    // SGD + momentum + coupled weight decay (weights only).
    let mut p = params.clone();
    let mut opt = Optimizer::new(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.1 }, &p);
    opt.step(&mut p, &grads, 0.1);
    assert!((p.layers[0].weights[0] - (1.0 - 0.1 * (0.5 + 0.1))).abs() < 1e-7);
    assert!((p.layers[0].bias[0] - (0.5 - 0.1)).abs() < 1e-7);
    opt.step(&mut p, &grads, 0.1);
    let w1 = 1.0 - 0.1 * 0.6;
    let buf = 0.9 * 0.6 + (0.5 + 0.1 * w1);
    assert!((p.layers[0].weights[0] - (w1 - 0.1 * buf)).abs() < 1e-6);
    // Adam's first step moves every parameter by ~lr * sign(g).
    let mut p = params.clone();
    let mut opt = Optimizer::new(OptimizerConfig::adam(), &p);
    opt.step(&mut p, &grads, 0.01);
    assert!((p.layers[0].weights[0] - 0.99).abs() < 1e-6);
    assert!((p.layers[0].weights[1] + 2.01).abs() < 1e-6);
    assert!((p.layers[0].bias[0] - 0.49).abs() < 1e-6);
}

#[test]
fn lr_schedules() {
    let c = LrSchedule::Constant { lr: 0.1 };
    assert_eq!(c.lr(5, 3, 10), 0.1);
    let s = LrSchedule::Step { lr: 0.1, gamma: 0.5, every: 2 };
    assert_eq!(s.lr(0, 0, 10), 0.1);
    assert_eq!(s.lr(1, 9, 10), 0.1);
    assert!((s.lr(2, 0, 10) - 0.05).abs() < 1e-9);
    assert!((s.lr(5, 0, 10) - 0.025).abs() < 1e-9);
    let cos = LrSchedule::Cosine { lr: 0.1, min_lr: 0.0, epochs: 10, warmup_epochs: 1.0 };
    assert!((cos.lr(0, 0, 10) - 0.01).abs() < 1e-7);
    assert!((cos.lr(0, 9, 10) - 0.1).abs() < 1e-7);
    assert!((cos.lr(1, 0, 10) - 0.1).abs() < 1e-7);
    assert!((cos.lr(5, 5, 10) - 0.05).abs() < 1e-6);
    assert!(cos.lr(9, 9, 10) < 0.001);
    assert_eq!(cos.lr(20, 0, 10), 0.0);
    let mut prev = f32::INFINITY;
    for e in 1..10 {
        let v = cos.lr(e, 0, 10);
        assert!(v < prev);
        prev = v;
    }
    let json = r#"{"kind":"cosine","lr":0.01,"epochs":20}"#;
    let parsed: LrSchedule = serde_json::from_str(json).unwrap();
    assert_eq!(parsed, LrSchedule::Cosine { lr: 0.01, min_lr: 0.0, epochs: 20, warmup_epochs: 0.0 });
}

#[test]
#[should_panic(expected = "out of range")]
fn bad_labels_panic_with_message() {
    let spec = ArchSpec::preset("mlp", [4, 4, 1], 3).unwrap();
    let net = Network::new(spec, 0).unwrap();
    net.loss_and_grads(&Tensor::zeros([2, 4, 4, 1]), &[0, 3], Want::NONE);
}

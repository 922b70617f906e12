//! ONNX export / import tests. Every comparison with tract-onnx runs the file through
//! tract's own loader and optimiser (not through the library's helpers) and checks
//! `max |ours - tract| <= 1e-5 * max(1, max |tract|)`: an absolute 1e-5 for outputs of
//! magnitude up to 1, relative to the largest output beyond that.

use iocane_trainer::data::{self, DatasetSpec};
use iocane_trainer::nn::{ArchSpec, Network, Tensor, Want, PRESETS};
use iocane_trainer::onnx::build::{
    self, attr_float as af, attr_int as ai, attr_ints as ais, attr_string as astr, attr_tensor, f32_tensor,
};
use iocane_trainer::onnx::{
    export_onnx, import_onnx, import_onnx_with, tract_forward, ImportOptions, InputLayout, OnnxError, OutputTransform,
    UnsupportedNodes,
};
use iocane_trainer::rng::Rng;
use iocane_trainer::train::batch;
use std::sync::OnceLock;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

const TOL: f32 = 1e-5;

mod exporters;

// ---------------------------------------------------------------------------------------
// Helpers

/// tract-onnx, used directly.
mod tr {
    use tract_onnx::prelude::*;

    fn optimise(model: InferenceModel, shape: &[usize]) -> TractResult<Arc<TypedRunnableModel>> {
        model.with_input_fact(0, f32::fact(shape).into())?.into_optimized()?.into_runnable()
    }

    pub fn plan_bytes(bytes: &[u8], shape: &[usize]) -> Arc<TypedRunnableModel> {
        optimise(tract_onnx::onnx().model_for_read(&mut &bytes[..]).expect("tract loads the bytes"), shape)
            .expect("tract optimises the model")
    }

    pub fn plan_path(path: &std::path::Path, shape: &[usize]) -> Arc<TypedRunnableModel> {
        optimise(tract_onnx::onnx().model_for_path(path).expect("tract loads the file"), shape)
            .expect("tract optimises the model")
    }

    pub fn run(plan: &Arc<TypedRunnableModel>, shape: &[usize], data: &[f32]) -> Vec<f32> {
        let t = Tensor::from_shape(shape, data).expect("input tensor");
        let out = plan.run(tvec!(t.into_tvalue())).expect("tract runs");
        out[0].to_plain_array_view::<f32>().expect("f32 output").iter().copied().collect()
    }

    /// Runs a model with a symbolic batch dimension as loaded (no input fact override).
    pub fn run_dynamic(bytes: &[u8], shape: &[usize], data: &[f32]) -> Vec<f32> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .expect("load")
            .into_optimized()
            .expect("optimise")
            .into_runnable()
            .expect("plan");
        run(&plan, shape, data)
    }
}

fn mnist(n: usize) -> Tensor {
    static TEST: OnceLock<data::Dataset> = OnceLock::new();
    let ds = TEST.get_or_init(|| data::load(&DatasetSpec::MnistSmall).expect("mnist-small").test);
    let idx: Vec<usize> = (0..n).map(|i| i * 97 % ds.len()).collect();
    batch(ds, &idx).0
}

/// "Real-looking" images of any shape: blurred random blobs on the 8-bit grid, plus an
/// all-zero and an all-one image.
fn images(shape: [usize; 3], n: usize, seed: u64) -> Tensor {
    let [h, w, c] = shape;
    let mut rng = Rng::new(seed);
    let mut data = Vec::new();
    for i in 0..n {
        match i {
            0 => data.extend(std::iter::repeat_n(0.0, h * w * c)),
            1 => data.extend(std::iter::repeat_n(1.0, h * w * c)),
            _ => {
                let (cy, cx) = (rng.uniform_f32() * h as f32, rng.uniform_f32() * w as f32);
                let r = 1.0 + rng.uniform_f32() * (h.max(w) as f32) / 2.0;
                for y in 0..h {
                    for x in 0..w {
                        for _ in 0..c {
                            let d = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt();
                            let v = (1.0 - d / r).clamp(0.0, 1.0) * 0.8 + rng.uniform_f32() * 0.2;
                            data.push((v * 255.0).round() / 255.0);
                        }
                    }
                }
            }
        }
    }
    Tensor::new([n, h, w, c], data).unwrap()
}

/// `max |a - b|`, asserting it is within `TOL * max(1, max |b|)`.
fn assert_close(what: &str, ours: &[f32], tract: &[f32]) -> f32 {
    assert_eq!(ours.len(), tract.len(), "{what}: output lengths");
    let scale = tract.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours.iter().zip(tract).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff <= TOL * scale, "{what}: max |diff| {diff:e} > {:e} (ours {ours:?}, tract {tract:?})", TOL * scale);
    diff
}

fn randomize_biases(net: &mut Network, seed: u64) {
    let mut rng = Rng::new(seed);
    for l in &mut net.params_mut().layers {
        for b in &mut l.bias {
            *b = rng.normal_f32() * 0.1;
        }
    }
}

fn rand_vec(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal_f32() * std).collect()
}

/// Compares an imported network with tract on the file, per image; `layout` says how the
/// file takes the image.
fn check_against_tract(what: &str, bytes: &[u8], net: &Network, layout: InputLayout, out: OutputTransform, x: &Tensor) {
    let shape = net.input_shape();
    let in_shape = layout.shape(1, shape);
    let plan = tr::plan_bytes(bytes, &in_shape);
    let ours = net.forward(x);
    let mut worst = 0.0f32;
    for i in 0..x.n() {
        let img = match layout {
            InputLayout::Nchw => InputLayout::Nchw.convert(x.sample(i), shape),
            _ => x.sample(i).to_vec(),
        };
        let t = tr::run(&plan, &in_shape, &img);
        worst = worst.max(assert_close(&format!("{what} image {i}"), &out.apply(ours.sample(i)), &t));
    }
    eprintln!("{what}: max |imported - tract| = {worst:e}");
}

// ---------------------------------------------------------------------------------------
// A small ONNX graph builder, producing files the way the common exporters do.

struct G {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: Vec<pb::ValueInfoProto>,
    output: Vec<pb::ValueInfoProto>,
    opset: i64,
    producer: &'static str,
    rng: Rng,
}

/// Graph inputs and outputs as PyTorch writes them: a negative dim is the symbolic batch.
fn vinfo(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    let dims: Vec<Option<usize>> = dims.iter().map(|&d| usize::try_from(d).ok()).collect();
    build::value_info(name, &dims, "batch_size")
}

fn udims(dims: &[i64]) -> Vec<usize> {
    dims.iter().map(|&d| usize::try_from(d).expect("fixed dim")).collect()
}

impl G {
    fn new(opset: i64, producer: &'static str, input: &str, dims: &[i64]) -> G {
        G {
            nodes: vec![],
            inits: vec![],
            input: vec![vinfo(input, dims)],
            output: vec![],
            opset,
            producer,
            rng: Rng::new(opset as u64 * 1000 + dims.len() as u64),
        }
    }

    fn init(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        assert_eq!(data.len() as i64, dims.iter().product::<i64>(), "{name}");
        self.inits.push(f32_tensor(name, &udims(dims), &data));
        name.to_string()
    }

    /// Random weights `N(0, 2/fan_in)`.
    fn weights(&mut self, name: &str, dims: &[i64], fan_in: usize) -> String {
        let n = dims.iter().product::<i64>() as usize;
        let v = rand_vec(&mut self.rng, n, (2.0 / fan_in as f32).sqrt());
        self.init(name, dims, v)
    }

    fn bias(&mut self, name: &str, dims: &[i64]) -> String {
        let n = dims.iter().product::<i64>() as usize;
        let v = rand_vec(&mut self.rng, n, 0.1);
        self.init(name, dims, v)
    }

    fn i64s(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// A `Constant` node holding a float scalar (how PyTorch passes Clip bounds).
    fn constant(&mut self, out: &str, v: f32) -> String {
        let t = pb::TensorProto {
            dims: vec![],
            data_type: DataType::Float as i32,
            float_data: vec![v],
            ..Default::default()
        };
        self.nodes.push(build::node(
            "Constant",
            &format!("/Constant_{out}"),
            &[],
            &[out],
            vec![attr_tensor("value", t)],
        ));
        out.to_string()
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) {
        self.nodes.push(build::node(op, name, inputs, outputs, attrs));
    }

    fn bytes(&mut self, output: &str, dims: &[i64]) -> Vec<u8> {
        self.output = vec![vinfo(output, dims)];
        let ir = if self.opset >= 13 { 8 } else { 4 };
        prost::Message::encode_to_vec(&self.model(self.output.clone(), &[("", self.opset)], ir))
    }

    /// The model with these graph outputs, opsets and IR version.
    fn model(&self, outputs: Vec<pb::ValueInfoProto>, opsets: &[(&str, i64)], ir_version: i64) -> pb::ModelProto {
        pb::ModelProto {
            ir_version,
            opset_import: opsets
                .iter()
                .map(|&(d, v)| pb::OperatorSetIdProto { domain: d.into(), version: v })
                .collect(),
            producer_name: self.producer.into(),
            producer_version: "test".into(),
            graph: Some(pb::GraphProto {
                node: self.nodes.clone(),
                name: "g".into(),
                initializer: self.inits.clone(),
                input: self.input.clone(),
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// PyTorch-style LeNet: Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten ->
/// Gemm(transB=1) -> Relu -> Gemm, NCHW input with a symbolic batch.
fn pytorch_lenet(channels: usize, side: usize) -> Vec<u8> {
    let c = channels as i64;
    let mut g = G::new(17, "pytorch", "input", &[-1, c, side as i64, side as i64]);
    let w1 = g.weights("conv1.weight", &[6, c, 5, 5], 25 * channels);
    let b1 = g.bias("conv1.bias", &[6]);
    g.node(
        "Conv",
        "/conv1/Conv",
        &["input", &w1, &b1],
        &["/conv1/Conv_output_0"],
        vec![
            ai("group", 1),
            ais("dilations", &[1, 1]),
            ais("kernel_shape", &[5, 5]),
            ais("pads", &[2, 2, 2, 2]),
            ais("strides", &[1, 1]),
        ],
    );
    g.node("Relu", "/relu/Relu", &["/conv1/Conv_output_0"], &["/relu/Relu_output_0"], vec![]);
    g.node(
        "MaxPool",
        "/pool/MaxPool",
        &["/relu/Relu_output_0"],
        &["/pool/MaxPool_output_0"],
        vec![ai("ceil_mode", 0), ais("kernel_shape", &[2, 2]), ais("pads", &[0, 0, 0, 0]), ais("strides", &[2, 2])],
    );
    let w2 = g.weights("conv2.weight", &[12, 6, 3, 3], 54);
    let b2 = g.bias("conv2.bias", &[12]);
    g.node(
        "Conv",
        "/conv2/Conv",
        &["/pool/MaxPool_output_0", &w2, &b2],
        &["/conv2/Conv_output_0"],
        vec![ais("kernel_shape", &[3, 3]), ais("strides", &[1, 1])],
    );
    g.node("Relu", "/relu_1/Relu", &["/conv2/Conv_output_0"], &["/relu_1/Relu_output_0"], vec![]);
    g.node(
        "MaxPool",
        "/pool_1/MaxPool",
        &["/relu_1/Relu_output_0"],
        &["/pool_1/MaxPool_output_0"],
        vec![ais("kernel_shape", &[2, 2]), ais("strides", &[2, 2])],
    );
    g.node("Flatten", "/Flatten", &["/pool_1/MaxPool_output_0"], &["/Flatten_output_0"], vec![ai("axis", 1)]);
    let s = ((side / 2 - 2) / 2) as i64;
    let k = 12 * s * s;
    let w3 = g.weights("fc1.weight", &[32, k], k as usize);
    let b3 = g.bias("fc1.bias", &[32]);
    g.node(
        "Gemm",
        "/fc1/Gemm",
        &["/Flatten_output_0", &w3, &b3],
        &["/fc1/Gemm_output_0"],
        vec![af("alpha", 1.0), af("beta", 1.0), ai("transB", 1)],
    );
    g.node("Relu", "/relu_2/Relu", &["/fc1/Gemm_output_0"], &["/relu_2/Relu_output_0"], vec![]);
    let w4 = g.weights("fc2.weight", &[10, 32], 32);
    let b4 = g.bias("fc2.bias", &[10]);
    g.node("Gemm", "/fc2/Gemm", &["/relu_2/Relu_output_0", &w4, &b4], &["output"], vec![ai("transB", 1)]);
    g.bytes("output", &[-1, 10])
}

// ---------------------------------------------------------------------------------------
// Export

#[test]
fn export_matches_tract_for_every_preset() {
    let x = mnist(8);
    for preset in PRESETS {
        for seed in [1u64, 7] {
            let spec = ArchSpec::preset(preset, [28, 28, 1], 10).unwrap();
            let mut net = Network::new(spec, seed).unwrap();
            randomize_biases(&mut net, seed + 100);
            let bytes = export_onnx(&net).unwrap();
            let ours = net.forward(&x);
            let shape = [1, 1, 28, 28];
            let plan = tr::plan_bytes(&bytes, &shape);
            let mut worst = 0.0f32;
            for i in 0..x.n() {
                let t = tr::run(&plan, &shape, &InputLayout::Nchw.convert(x.sample(i), [28, 28, 1]));
                worst = worst.max(assert_close(&format!("{preset} seed {seed} image {i}"), ours.sample(i), &t));
            }
            eprintln!("export {preset} seed {seed}: max |forward - tract| = {worst:e} ({} bytes)", bytes.len());

            // The same through a file on disk.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("{preset}.onnx"));
            std::fs::write(&path, &bytes).unwrap();
            let plan = tr::plan_path(&path, &shape);
            for i in 0..2 {
                let t = tr::run(&plan, &shape, &InputLayout::Nchw.convert(x.sample(i), [28, 28, 1]));
                assert_close(&format!("{preset} via path image {i}"), ours.sample(i), &t);
            }
        }
    }
}

#[test]
fn export_has_dynamic_batch_and_standard_names() {
    let spec = ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap();
    let mut net = Network::new(spec, 3).unwrap();
    randomize_biases(&mut net, 4);
    let bytes = export_onnx(&net).unwrap();
    let m: pb::ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.opset_import[0].version, 13);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "input");
    assert_eq!(g.output[0].name, "logits");
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Conv", "Relu", "Conv", "Relu", "Flatten", "Gemm"]);
    // A batch of 3 through the symbolic N.
    let x = mnist(3);
    let data: Vec<f32> = (0..3).flat_map(|i| InputLayout::Nchw.convert(x.sample(i), [28, 28, 1])).collect();
    let t = tr::run_dynamic(&bytes, &[3, 1, 28, 28], &data);
    assert_close("batch of 3", &net.forward(&x).data, &t);
}

/// Architectures exercising the odd corners of the export mapping.
const ODD: [(&str, [usize; 3], usize); 5] = [
    ("conv4k3x5p1_2_0_2s1x2,relu6,avgpool2,dw3p1,relu,maxpool3s2,flatten,dense16,relu,dense10", [28, 28, 1], 10),
    ("conv6k3p1,relu,maxpool2,dw3s2p0_0_1_1,relu6,flatten,dense12,relu,dense5", [12, 10, 3], 5),
    ("conv4k3s2p1,relu,flatten,conv8k1,relu,dense3", [8, 8, 2], 3),
    ("conv8k4s4,relu,conv16k2,dense10", [8, 8, 1], 10),
    ("flatten,dense8,relu6,flatten,dense4", [4, 4, 3], 4),
];

#[test]
fn export_matches_tract_for_odd_architectures() {
    for (i, (arch, shape, classes)) in ODD.iter().enumerate() {
        let spec = ArchSpec::from_compact(arch, *shape, *classes).unwrap();
        let mut net = Network::new(spec, 11 + i as u64).unwrap();
        randomize_biases(&mut net, 50 + i as u64);
        let bytes = export_onnx(&net).unwrap();
        let x = images(*shape, 6, i as u64);
        check_against_tract(&format!("export {arch}"), &bytes, &net, InputLayout::Nchw, OutputTransform::Logits, &x);
        // The library's own tract helper agrees too.
        let t = tract_forward(&bytes, InputLayout::Nchw, &x).unwrap();
        assert_close(&format!("tract_forward {arch}"), &net.forward(&x).data, &t.data);
    }
}

// ---------------------------------------------------------------------------------------
// Round trip

#[test]
fn export_import_round_trip_is_exact() {
    let x = mnist(16);
    for preset in PRESETS {
        let spec = ArchSpec::preset(preset, [28, 28, 1], 10).unwrap();
        let mut net = Network::new(spec, 5).unwrap();
        randomize_biases(&mut net, 6);
        let back = import_onnx_with(&export_onnx(&net).unwrap(), &ImportOptions::default()).unwrap();
        assert_eq!(back.network.spec(), net.spec(), "{preset}");
        assert_eq!(back.network.params(), net.params(), "{preset}");
        assert_eq!(back.network.forward(&x).data, net.forward(&x).data, "{preset}");
        assert_eq!(back.input_layout, InputLayout::Nchw);
        assert_eq!(back.output, OutputTransform::Logits);
        assert!(back.max_abs_diff.unwrap() < 1e-4, "{preset}: {:?}", back.max_abs_diff);
        eprintln!("round trip {preset}: tract check max |diff| {:e}", back.max_abs_diff.unwrap());
    }
    for (i, (arch, shape, classes)) in ODD.iter().enumerate() {
        let spec = ArchSpec::from_compact(arch, *shape, *classes).unwrap();
        let mut net = Network::new(spec, 21 + i as u64).unwrap();
        randomize_biases(&mut net, 60 + i as u64);
        let back = import_onnx(&export_onnx(&net).unwrap()).unwrap();
        let x = images(*shape, 5, 9);
        assert_close(&format!("round trip {arch}"), &back.forward(&x).data, &net.forward(&x).data);
    }
}

// ---------------------------------------------------------------------------------------
// Import of exporter-style files

#[test]
fn import_pytorch_lenet() {
    let bytes = pytorch_lenet(1, 28);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    let net = &imp.network;
    assert_eq!(imp.input_layout, InputLayout::Nchw);
    assert_eq!(net.input_shape(), [28, 28, 1]);
    assert_eq!(net.spec().to_compact(), "conv6k5p2,relu,maxpool2,conv12k3,relu,maxpool2,flatten,dense32,relu,dense10");
    assert!(imp.notes.iter().any(|n| n.contains("NCHW to NHWC")), "{:?}", imp.notes);
    check_against_tract("pytorch lenet", &bytes, net, InputLayout::Nchw, OutputTransform::Logits, &mnist(8));

    // RGB: channel order matters for the flatten permutation.
    let bytes = pytorch_lenet(3, 20);
    let net = import_onnx(&bytes).unwrap();
    assert_eq!(net.input_shape(), [20, 20, 3]);
    check_against_tract(
        "pytorch lenet rgb",
        &bytes,
        &net,
        InputLayout::Nchw,
        OutputTransform::Logits,
        &images([20, 20, 3], 6, 1),
    );
}

/// PyTorch-style BatchNormalization with random statistics.
fn batchnorm(g: &mut G, name: &str, input: &str, out: &str, c: i64) {
    let gamma: Vec<f32> = (0..c).map(|_| 0.5 + g.rng.uniform_f32()).collect();
    let beta = rand_vec(&mut g.rng, c as usize, 0.2);
    let mean = rand_vec(&mut g.rng, c as usize, 0.3);
    let var: Vec<f32> = (0..c).map(|_| 0.2 + g.rng.uniform_f32()).collect();
    let s = g.init(&format!("{name}.weight"), &[c], gamma);
    let b = g.init(&format!("{name}.bias"), &[c], beta);
    let m = g.init(&format!("{name}.running_mean"), &[c], mean);
    let v = g.init(&format!("{name}.running_var"), &[c], var);
    g.node(
        "BatchNormalization",
        &format!("/{name}/BatchNormalization"),
        &[input, &s, &b, &m, &v],
        &[out],
        vec![af("epsilon", 1e-3), af("momentum", 0.9)],
    );
}

/// PyTorch MobileNet-style block: Conv + BatchNormalization + Relu, depthwise Conv + BN +
/// Clip(0, 6) (bounds from Constant nodes), 1x1 Conv without bias, Flatten, Dropout, Gemm,
/// Identity, final Softmax; fixed batch 1, RGB.
#[test]
fn import_conv_batchnorm_depthwise_clip_dropout_softmax() {
    let mut g = G::new(13, "pytorch", "x", &[1, 3, 16, 16]);
    let w = g.weights("c1.weight", &[8, 3, 3, 3], 27);
    g.node("Conv", "/c1/Conv", &["x", &w], &["c1"], vec![ais("kernel_shape", &[3, 3]), ais("pads", &[1, 1, 1, 1])]);
    batchnorm(&mut g, "bn1", "c1", "bn1", 8);
    g.node("Relu", "/relu/Relu", &["bn1"], &["r1"], vec![]);
    let w = g.weights("dw.weight", &[8, 1, 3, 3], 9);
    let b = g.bias("dw.bias", &[8]);
    g.node(
        "Conv",
        "/dw/Conv",
        &["r1", &w, &b],
        &["dw"],
        vec![ai("group", 8), ais("kernel_shape", &[3, 3]), ais("pads", &[1, 1, 1, 1]), ais("strides", &[2, 2])],
    );
    batchnorm(&mut g, "bn2", "dw", "bn2", 8);
    let lo = g.constant("clip_min", 0.0);
    let hi = g.constant("clip_max", 6.0);
    g.node("Clip", "/act/Clip", &["bn2", &lo, &hi], &["r2"], vec![]);
    let w = g.weights("pw.weight", &[4, 8, 1, 1], 8);
    g.node("Conv", "/pw/Conv", &["r2", &w], &["pw"], vec![ais("kernel_shape", &[1, 1])]);
    g.node("Relu", "/relu2/Relu", &["pw"], &["r3"], vec![]);
    g.node("Flatten", "/Flatten", &["r3"], &["flat"], vec![]);
    g.node("Dropout", "/drop/Dropout", &["flat"], &["drop", "mask"], vec![]);
    let w = g.weights("fc.weight", &[5, 256], 256);
    let b = g.bias("fc.bias", &[5]);
    g.node("Gemm", "/fc/Gemm", &["drop", &w, &b], &["fc"], vec![ai("transB", 1)]);
    g.node("Identity", "/id/Identity", &["fc"], &["logits"], vec![]);
    g.node("Softmax", "/Softmax", &["logits"], &["probs"], vec![ai("axis", 1)]);
    let bytes = g.bytes("probs", &[1, 5]);

    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.output, OutputTransform::Softmax);
    assert_eq!(imp.network.spec().to_compact(), "conv8k3p1,relu,dw3s2p1,relu6,conv4k1,relu,flatten,dense5");
    assert_eq!(imp.notes.iter().filter(|n| n.contains("folded BatchNormalization")).count(), 2, "{:?}", imp.notes);
    let x = images([16, 16, 3], 6, 2);
    check_against_tract("conv+bn+dw+clip+softmax", &bytes, &imp.network, InputLayout::Nchw, imp.output, &x);
    // Logits themselves are produced (probabilities only after the transform).
    let logits = imp.network.forward(&x);
    assert!(logits.data.iter().any(|&v| !(0.0..=1.0).contains(&v)));
}

/// GlobalAveragePool -> Flatten -> Gemm(transB = 0, alpha, beta) -> BatchNormalization (1-D),
/// opset 9 Clip with attributes, Identity of an initializer (weight sharing), SAME_UPPER
/// padding, LogSoftmax.
#[test]
fn import_gap_gemm_bn1d_old_clip_same_padding() {
    let mut g = G::new(9, "pytorch", "input", &[-1, 2, 15, 15]);
    let w = g.weights("conv.weight", &[6, 2, 3, 3], 18);
    g.node("Identity", "/shared", &[&w], &["conv.weight.alias"], vec![]);
    let b = g.bias("conv.bias", &[6]);
    g.node(
        "Conv",
        "/conv/Conv",
        &["input", "conv.weight.alias", &b],
        &["c"],
        vec![astr("auto_pad", "SAME_UPPER"), ais("strides", &[2, 2])],
    );
    g.node("Clip", "/clip", &["c"], &["r"], vec![af("min", 0.0), af("max", 6.0)]);
    g.node("GlobalAveragePool", "/gap", &["r"], &["gap"], vec![]);
    g.node("Flatten", "/flatten", &["gap"], &["f"], vec![]);
    let w = g.weights("fc.weight", &[6, 7], 6);
    let b = g.bias("fc.bias", &[7]);
    g.node("Gemm", "/fc/Gemm", &["f", &w, &b], &["fc"], vec![af("alpha", 0.5), af("beta", 2.0)]);
    let gamma: Vec<f32> = (0..7).map(|i| 0.5 + i as f32 * 0.1).collect();
    let s = g.init("bn.weight", &[7], gamma);
    let b = g.bias("bn.bias", &[7]);
    let m = g.bias("bn.mean", &[7]);
    let v = g.init("bn.var", &[7], vec![0.5; 7]);
    g.node("BatchNormalization", "/bn", &["fc", &s, &b, &m, &v], &["logits"], vec![]);
    g.node("LogSoftmax", "/lsm", &["logits"], &["out"], vec![]);
    let bytes = g.bytes("out", &[-1, 7]);

    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.output, OutputTransform::LogSoftmax);
    assert_eq!(imp.opset, 9);
    assert_eq!(imp.network.spec().to_compact(), "conv6k3s2p1,relu6,avgpool8,flatten,dense7");
    let x = images([15, 15, 2], 6, 3);
    check_against_tract("gap+gemm+bn1d", &bytes, &imp.network, InputLayout::Nchw, imp.output, &x);
}

/// Keras CNN through tf2onnx: NHWC input, Transpose to NCHW, Conv, Relu, MaxPool, Transpose
/// back, Reshape (shape initializer) to [-1, N], MatMul + Add, Relu, MatMul + Add, Softmax.
#[test]
fn import_keras_tf2onnx_cnn() {
    let mut g = G::new(13, "tf2onnx", "input_1", &[-1, 28, 28, 1]);
    g.node("Transpose", "sequential/conv2d/Conv2D__6", &["input_1"], &["t0"], vec![ais("perm", &[0, 3, 1, 2])]);
    let w = g.weights("sequential/conv2d/Conv2D/ReadVariableOp:0", &[4, 1, 3, 3], 9);
    let b = g.bias("sequential/conv2d/BiasAdd/ReadVariableOp:0", &[4]);
    g.node(
        "Conv",
        "sequential/conv2d/Conv2D",
        &["t0", &w, &b],
        &["c"],
        vec![ais("dilations", &[1, 1]), ais("kernel_shape", &[3, 3]), ais("strides", &[1, 1])],
    );
    g.node("Relu", "sequential/conv2d/Relu", &["c"], &["r"], vec![]);
    g.node(
        "MaxPool",
        "sequential/max_pooling2d/MaxPool",
        &["r"],
        &["p"],
        vec![ais("kernel_shape", &[2, 2]), ais("strides", &[2, 2])],
    );
    g.node("Transpose", "sequential/max_pooling2d/MaxPool__12", &["p"], &["t1"], vec![ais("perm", &[0, 2, 3, 1])]);
    let shape = g.i64s("const_fold_opt__20", &[-1, 676]);
    g.node("Reshape", "sequential/flatten/Reshape", &["t1", &shape], &["flat"], vec![]);
    let w = g.weights("sequential/dense/MatMul/ReadVariableOp:0", &[676, 16], 676);
    g.node("MatMul", "sequential/dense/MatMul", &["flat", &w], &["mm"], vec![]);
    let b = g.bias("sequential/dense/BiasAdd/ReadVariableOp:0", &[16]);
    g.node("Add", "sequential/dense/BiasAdd", &["mm", &b], &["a"], vec![]);
    g.node("Relu", "sequential/dense/Relu", &["a"], &["r2"], vec![]);
    let w = g.weights("sequential/dense_1/MatMul/ReadVariableOp:0", &[16, 10], 16);
    g.node("MatMul", "sequential/dense_1/MatMul", &["r2", &w], &["mm2"], vec![]);
    let b = g.bias("sequential/dense_1/BiasAdd/ReadVariableOp:0", &[10]);
    // Bias first: Add is commutative and some converters emit it that way.
    g.node("Add", "sequential/dense_1/BiasAdd", &[&b, "mm2"], &["a2"], vec![]);
    g.node("Softmax", "sequential/dense_1/Softmax", &["a2"], &["dense_1"], vec![]);
    let bytes = g.bytes("dense_1", &[-1, 10]);

    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Nhwc);
    assert_eq!(imp.output, OutputTransform::Softmax);
    assert_eq!(imp.network.spec().to_compact(), "conv4k3,relu,maxpool2,flatten,dense16,relu,dense10");
    assert!(!imp.notes.iter().any(|n| n.contains("NCHW to NHWC")), "NHWC flatten needs no permutation");
    check_against_tract("keras cnn", &bytes, &imp.network, InputLayout::Nhwc, imp.output, &mnist(8));
}

/// Keras MLP ([N, 28, 28] input, Reshape via a Constant node) and an skl2onnx-style MLP
/// ([N, 784] input, MatMul + Add without a final Softmax).
#[test]
fn import_keras_and_sklearn_mlps() {
    let mut g = G::new(13, "tf2onnx", "flatten_input", &[-1, 28, 28]);
    let shape = build::i64_tensor("", &[2], &[-1, 784]);
    g.nodes.push(build::node("Constant", "const_shape", &[], &["shape"], vec![attr_tensor("value", shape)]));
    g.node("Reshape", "sequential/flatten/Reshape", &["flatten_input", "shape"], &["f"], vec![]);
    let w = g.weights("W1", &[784, 32], 784);
    g.node("MatMul", "sequential/dense/MatMul", &["f", &w], &["m"], vec![]);
    let b = g.bias("B1", &[32]);
    g.node("Add", "sequential/dense/BiasAdd", &["m", &b], &["a"], vec![]);
    g.node("Relu", "sequential/dense/Relu", &["a"], &["r"], vec![]);
    let w = g.weights("W2", &[32, 10], 32);
    g.node("MatMul", "sequential/dense_1/MatMul", &["r", &w], &["m2"], vec![]);
    let b = g.bias("B2", &[1, 10]);
    g.node("Add", "sequential/dense_1/BiasAdd", &["m2", &b], &["a2"], vec![]);
    g.node("Softmax", "sequential/dense_1/Softmax", &["a2"], &["out"], vec![]);
    let bytes = g.bytes("out", &[-1, 10]);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Hw);
    assert_eq!(imp.network.input_shape(), [28, 28, 1]);
    assert_eq!(imp.network.spec().to_compact(), "flatten,dense32,relu,dense10");
    check_against_tract("keras mlp", &bytes, &imp.network, InputLayout::Hw, imp.output, &mnist(8));

    let mut g = G::new(15, "skl2onnx", "float_input", &[-1, 784]);
    let w = g.weights("coefficient", &[784, 24], 784);
    g.node("MatMul", "MatMul", &["float_input", &w], &["mul_result"], vec![]);
    let b = g.bias("intercepts", &[1, 24]);
    g.node("Add", "Add", &["mul_result", &b], &["add_result"], vec![]);
    g.node("Relu", "Relu", &["add_result"], &["next_activations"], vec![]);
    let w = g.weights("coefficient1", &[24, 10], 24);
    g.node("MatMul", "MatMul1", &["next_activations", &w], &["mul_result1"], vec![]);
    let b = g.bias("intercepts1", &[1, 10]);
    g.node("Add", "Add1", &["mul_result1", &b], &["out_activations_result"], vec![]);
    let bytes = g.bytes("out_activations_result", &[-1, 10]);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Flat);
    assert_eq!(imp.network.input_shape(), [28, 28, 1], "784 features are taken as a 28x28 image");
    check_against_tract("sklearn mlp", &bytes, &imp.network, InputLayout::Flat, imp.output, &mnist(8));
    // An explicit image shape.
    let imp =
        import_onnx_with(&bytes, &ImportOptions { input_shape: Some([14, 14, 4]), ..Default::default() }).unwrap();
    assert_eq!(imp.network.input_shape(), [14, 14, 4]);
}

#[test]
fn imported_network_trains_and_serialises() {
    let net = import_onnx(&pytorch_lenet(1, 28)).unwrap();
    let x = mnist(32);
    let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
    let r = net.loss_and_grads(&x, &labels, Want::BOTH);
    assert!(r.loss.is_finite());
    assert!(r.param_grads.unwrap().all_finite());
    let back = Network::from_json(&net.to_json()).unwrap();
    assert_eq!(back, net);
}

// ---------------------------------------------------------------------------------------
// Errors

/// A Conv -> <op> -> Flatten -> Gemm PyTorch graph.
fn graph_with(op: &str, extra_inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> Vec<u8> {
    let mut g = G::new(13, "pytorch", "input", &[1, 1, 8, 8]);
    let w = g.weights("conv.weight", &[2, 1, 3, 3], 9);
    g.node("Conv", "/conv/Conv", &["input", &w], &["c"], vec![]);
    let mut inputs = vec!["c"];
    inputs.extend_from_slice(extra_inputs);
    g.node(op, &format!("/act/{op}"), &inputs, &["a"], attrs);
    g.node("Flatten", "/flatten", &["a"], &["f"], vec![]);
    let w = g.weights("fc.weight", &[3, 72], 72);
    g.node("Gemm", "/fc/Gemm", &["f", &w], &["out"], vec![ai("transB", 1)]);
    g.bytes("out", &[1, 3])
}

#[test]
fn unsupported_ops_name_the_op_and_the_node() {
    for op in ["Sigmoid", "LSTM", "Tanh", "LeakyRelu"] {
        let err = import_onnx(&graph_with(op, &[], vec![])).unwrap_err();
        assert_eq!(
            err,
            OnnxError::UnsupportedOps(vec![UnsupportedNodes { op: op.into(), nodes: vec![format!("/act/{op}")] }])
        );
        let msg = err.to_string();
        assert!(msg.contains(op) && msg.contains(&format!("/act/{op}")), "{msg}");
        eprintln!("{msg}");
    }
    // A torch LSTM classifier as the TorchScript exporter writes it (the shape of
    // torch.onnx.export of nn.LSTM + nn.Linear on the last step): every unsupported node is
    // reported at once, grouped by op, so LSTM is named and not only the first Gather.
    let mut g = G::new(17, "pytorch", "input", &[-1, 28, 28]);
    g.node("Transpose", "/Transpose", &["input"], &["t"], vec![ais("perm", &[1, 0, 2])]);
    g.node("Shape", "/lstm/Shape", &["t"], &["s"], vec![]);
    let i1 = g.i64s("/lstm/Constant_output_0", &[1]);
    g.node("Gather", "/lstm/Gather", &["s", &i1], &["b"], vec![ai("axis", 0)]);
    let w = g.weights("onnx::LSTM_W", &[1, 128, 28], 28);
    let r = g.weights("onnx::LSTM_R", &[1, 128, 32], 32);
    g.node("LSTM", "/lstm/LSTM", &["t", &w, &r], &["y", "h", "c"], vec![ai("hidden_size", 32)]);
    g.node("Squeeze", "/lstm/Squeeze", &["y"], &["ys"], vec![]);
    let i2 = g.i64s("/Constant_output_0", &[1]);
    g.node("Gather", "/Gather", &["ys", &i2], &["last"], vec![ai("axis", 0)]);
    g.node("Tanh", "/Tanh", &["last"], &["th"], vec![]);
    g.node("Tanh", "/Tanh_1", &["th"], &["th2"], vec![]);
    let w = g.weights("fc.weight", &[10, 32], 32);
    g.node("Gemm", "/fc/Gemm", &["th2", &w], &["output"], vec![ai("transB", 1)]);
    let err = import_onnx(&g.bytes("output", &[-1, 10])).unwrap_err();
    let group = |op: &str, nodes: &[&str]| UnsupportedNodes {
        op: op.into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
    };
    assert_eq!(
        err,
        OnnxError::UnsupportedOps(vec![group("LSTM", &["/lstm/LSTM"]), group("Tanh", &["/Tanh", "/Tanh_1"])])
    );
    let msg = err.to_string();
    assert!(msg.contains("`LSTM` in 1 node `/lstm/LSTM`; `Tanh` in 2 nodes `/Tanh`, `/Tanh_1`"), "{msg}");
    eprintln!("{msg}");

    // An unnamed node is identified by its index and output.
    let mut g = G::new(13, "x", "input", &[1, 4]);
    g.node("Sigmoid", "", &["input"], &["s"], vec![]);
    let err = import_onnx(&g.bytes("s", &[1, 4])).unwrap_err();
    assert!(err.to_string().contains("#0 (output `s`)"), "{err}");
}

#[test]
fn structural_errors_are_clear() {
    // Residual connection: not a chain.
    let mut g = G::new(13, "pytorch", "input", &[1, 2, 6, 6]);
    let w = g.weights("conv.weight", &[2, 2, 3, 3], 18);
    g.node("Conv", "/conv/Conv", &["input", &w], &["c"], vec![ais("pads", &[1, 1, 1, 1])]);
    g.node("Relu", "/relu", &["c"], &["r"], vec![]);
    g.node("Add", "/add", &["r", "c"], &["s"], vec![]);
    g.node("Flatten", "/flatten", &["s"], &["f"], vec![]);
    let w = g.weights("fc.weight", &[3, 72], 72);
    g.node("Gemm", "/fc", &["f", &w], &["out"], vec![ai("transB", 1)]);
    let err = import_onnx(&g.bytes("out", &[1, 3])).unwrap_err();
    assert!(matches!(err, OnnxError::NotAChain(_)), "{err}");
    eprintln!("{err}");

    // Missing initializer.
    let mut g = G::new(13, "pytorch", "input", &[1, 4]);
    g.node("Gemm", "/fc", &["input", "fc.weight"], &["out"], vec![ai("transB", 1)]);
    let err = import_onnx(&g.bytes("out", &[1, 3])).unwrap_err();
    assert_eq!(err, OnnxError::MissingInitializer { op: "Gemm".into(), node: "/fc".into(), input: "fc.weight".into() });
    eprintln!("{err}");

    // Unsupported attributes and placements.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (graph_with("Clip", &[], vec![af("min", 0.0), af("max", 1.0)]), "neither ReLU"),
        (graph_with("MaxPool", &[], vec![ais("kernel_shape", &[2, 2]), ais("pads", &[1, 1, 1, 1])]), "padded pooling"),
        (graph_with("BatchNormalization", &[], vec![]), "missing input 1"),
        (graph_with("Relu", &[], vec![]), ""),
    ];
    for (bytes, want) in &cases[..3] {
        let err = import_onnx(bytes).unwrap_err();
        assert!(err.to_string().contains(want), "{err} (want {want})");
        eprintln!("{err}");
    }
    import_onnx(&cases[3].0).expect("the control case imports");

    let conv_with = |attrs: Vec<pb::AttributeProto>, wdims: &[i64]| {
        let mut g = G::new(13, "pytorch", "input", &[1, 2, 8, 8]);
        let w = g.weights("conv.weight", wdims, 9);
        g.node("Conv", "/conv/Conv", &["input", &w], &["c"], attrs);
        g.node("Flatten", "/flatten", &["c"], &["f"], vec![]);
        g.bytes("f", &[1, 72])
    };
    let err = import_onnx(&conv_with(vec![ais("dilations", &[2, 2])], &[2, 2, 3, 3])).unwrap_err();
    assert!(err.to_string().contains("dilations [2, 2]") && err.to_string().contains("/conv/Conv"), "{err}");
    let err = import_onnx(&conv_with(vec![ai("group", 2)], &[4, 1, 3, 3])).unwrap_err();
    assert!(err.to_string().contains("grouped convolution"), "{err}");
    let err = import_onnx(&conv_with(vec![], &[2, 2, 3, 3])).unwrap_err();
    assert!(err.to_string().contains("must end with a Gemm"), "{err}");

    // BatchNormalization with nothing to fold into.
    let mut g = G::new(13, "pytorch", "input", &[1, 4]);
    let s = g.init("s", &[4], vec![1.0; 4]);
    let b = g.init("b", &[4], vec![0.0; 4]);
    g.node("BatchNormalization", "/bn", &["input", &s, &b, &b, &s], &["n"], vec![]);
    let w = g.weights("fc.weight", &[3, 4], 4);
    g.node("Gemm", "/fc", &["n", &w], &["out"], vec![ai("transB", 1)]);
    let err = import_onnx(&g.bytes("out", &[1, 3])).unwrap_err();
    assert!(err.to_string().contains("folded"), "{err}");

    assert!(matches!(import_onnx(b"definitely not protobuf \xff\xff\xff"), Err(OnnxError::Decode(_))));
}

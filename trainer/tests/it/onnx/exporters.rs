//! Files in the exact form the real exporters write them (issue 17), built by hand because
//! neither torch, scikit-learn, onnx nor onnxruntime is available here:
//!
//! - skl2onnx 1.20 `to_onnx(MLPClassifier)`: `convert_sklearn_mlp_classifier` in
//!   `skl2onnx/operator_converters/multilayer_perceptron.py` (input `Cast`, `MatMul` + `Add` per
//!   layer with `[1, units]` intercepts, the output activation node named after the *hidden*
//!   activation, `Identity` to `probabilities`, then `ArgMax` -> `ArrayFeatureExtractor` ->
//!   `Reshape([-1])` -> `Cast(INT64)` to `label`) and `convert_sklearn_zipmap` in `zip_map.py`
//!   (`Cast` to `output_label`, `ZipMap` to `output_probability`): two graph outputs.
//! - torch.onnx TorchScript exporter (`dynamo=False`, `input_names=["input"]`,
//!   `dynamic_axes={"input": {0: "batch_size"}}`): `/conv1/Conv`-style node names, every Conv
//!   attribute written, `Flatten(axis=1)`, `Gemm(transB=1)`.
//! - torch.onnx dynamo exporter (the default, `dynamic_shapes` batch): opset 18, IR 10,
//!   `node_*` names, value_info for every intermediate with the symbolic batch,
//!   `AdaptiveAvgPool2d(1)` as `ReduceMean(axes=[-1, -2], keepdims=1)`,
//!   `x.view(x.size(0), -1)` as `Shape` -> `Gather(0)` -> `Unsqueeze` -> `Concat([.., -1])` ->
//!   `Reshape`, and initializers of 256 bytes or more in `model.onnx.data` beside the file,
//!   smallest first, with `location` / `offset` / `length` entries (onnx_ir's
//!   `external_data.py`, which `ONNXProgram.save` uses; its size threshold is 256 bytes).
//!
//! Trained weights come from iocane's own trainer on mnist-small, so the top-1 figures mean
//! something; [`exporter_forms_agree_with_the_int8_blob_on_mnist_small`] prints the agreement
//! between tract running each file and the int8 blob.

use std::path::Path;
use std::sync::OnceLock;

use iocane_runtime::Model;
use iocane_trainer::data::{self, DatasetSpec, Splits};
use iocane_trainer::nn::{ArchSpec, LayerParams, LayerSpec, Network, Tensor};
use iocane_trainer::onnx::build::{self, attr_int as ai, attr_ints as ais};
use iocane_trainer::onnx::{
    import_onnx_file, import_onnx_with, ChannelAffine, ImportOptions, InputLayout, InputNorm, OnnxError,
    OutputTransform,
};
use iocane_trainer::quant::quantize;
use iocane_trainer::train::{checkpoint, train, Method, RunOptions};
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};

use super::{assert_close, check_against_tract, images, mnist, vinfo, G};

fn splits() -> &'static Splits {
    static S: OnceLock<Splits> = OnceLock::new();
    S.get_or_init(|| data::load(&DatasetSpec::MnistSmall).expect("mnist-small"))
}

/// A network trained naturally for `epochs` epochs on `samples` mnist-small images.
fn trained(arch: &str, epochs: usize, samples: usize) -> Network {
    let mut cfg = super::super::common::train_config(Method::Natural, epochs);
    cfg.arch = ArchSpec::from_compact(arch, [28, 28, 1], 10).unwrap();
    cfg.train_samples = samples;
    cfg.eval_samples = 100;
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &splits().train, &splits().test, dir.path(), &RunOptions::default()).unwrap();
    checkpoint::load(&dir.path().join("model.ckpt")).unwrap().network
}

const MLP: &str = "flatten,dense64,relu,dense10";
const TS_CNN: &str = "conv8k3p1,relu,maxpool2,conv16k3,relu,maxpool2,flatten,dense32,relu,dense10";
const DYNAMO_CNN: &str = "conv16k3p1,relu,maxpool2,conv32k3p1,relu,maxpool2,conv32k3p1,relu,avgpool7,flatten,dense10";

fn mlp() -> &'static Network {
    static N: OnceLock<Network> = OnceLock::new();
    N.get_or_init(|| trained(MLP, 2, 4000))
}
fn ts_cnn() -> &'static Network {
    static N: OnceLock<Network> = OnceLock::new();
    N.get_or_init(|| trained(TS_CNN, 2, 4000))
}
fn dynamo_cnn() -> &'static Network {
    static N: OnceLock<Network> = OnceLock::new();
    N.get_or_init(|| trained(DYNAMO_CNN, 5, 8000))
}

// ---------------------------------------------------------------------------------------
// Weight layouts

/// OHWI conv weights as OIHW.
fn oihw(p: &LayerParams, o: usize, [kh, kw]: [usize; 2], c: usize) -> Vec<f32> {
    let mut w = vec![0.0; p.weights.len()];
    for oc in 0..o {
        for ci in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    w[((oc * c + ci) * kh + y) * kw + x] = p.weights[((oc * kh + y) * kw + x) * c + ci];
                }
            }
        }
    }
    w
}

/// Dense rows `[out][in]` over an NHWC flatten of `[h, w, c]` as rows over the NCHW flatten.
fn rows_nchw(p: &LayerParams, [h, w, c]: [usize; 3]) -> Vec<f32> {
    let k = h * w * c;
    let mut out = vec![0.0; p.weights.len()];
    for u in 0..p.bias.len() {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[u * k + (ch * h + y) * w + x] = p.weights[u * k + (y * w + x) * c + ch];
                }
            }
        }
    }
    out
}

/// Dense rows `[out][in]` transposed to `[in][out]` (a MatMul operand).
fn transposed(p: &LayerParams) -> Vec<f32> {
    let (units, k) = (p.bias.len(), p.weights.len() / p.bias.len());
    (0..k * units).map(|i| p.weights[(i % units) * k + i / units]).collect()
}

fn dense_params(net: &Network) -> Vec<&LayerParams> {
    net.spec()
        .layers
        .iter()
        .zip(&net.params().layers)
        .filter(|(l, _)| matches!(l, LayerSpec::Dense { .. }))
        .map(|(_, p)| p)
        .collect()
}

// ---------------------------------------------------------------------------------------
// skl2onnx

/// `to_onnx(MLPClassifier(hidden_layer_sizes=(64,)), X.astype(float32))` for the trained
/// `flatten,dense64,relu,dense10` network; `with_tail = false` stops at `probabilities` (the
/// reference tract can run: it has no ai.onnx.ml kernels).
fn skl2onnx_mlp(net: &Network, with_tail: bool) -> Vec<u8> {
    skl2onnx_mlp_with(net, with_tail, true)
}

/// As [`skl2onnx_mlp`]; `zipmap = false` is `options={"zipmap": False}`: the outputs are then
/// `label` and `probabilities` themselves.
fn skl2onnx_mlp_with(net: &Network, with_tail: bool, zipmap: bool) -> Vec<u8> {
    let d = dense_params(net);
    let mut g = G::new(21, "skl2onnx", "X", &[-1, 784]);
    g.node("Cast", "Cast", &["X"], &["cast_input"], vec![ai("to", DataType::Float as i64)]);
    let coef = g.init("coefficient", &[784, 64], transposed(d[0]));
    let icpt = g.init("intercepts", &[1, 64], d[0].bias.clone());
    g.node("MatMul", "MatMul", &["cast_input", &coef], &["mul_result"], vec![]);
    g.node("Add", "Add", &["mul_result", &icpt], &["add_result"], vec![]);
    g.node("Relu", "Relu", &["add_result"], &["next_activations"], vec![]);
    let coef = g.init("coefficient1", &[64, 10], transposed(d[1]));
    let icpt = g.init("intercepts1", &[1, 10], d[1].bias.clone());
    g.node("MatMul", "MatMul1", &["next_activations", &coef], &["mul_result1"], vec![]);
    g.node("Add", "Add1", &["mul_result1", &icpt], &["add_result1"], vec![]);
    // The output activation is named after the hidden one: `activations_map[model.activation]`.
    g.node("Softmax", "Relu1", &["add_result1"], &["out_activations_result"], vec![]);
    g.node("Identity", "Identity", &["out_activations_result"], &["probabilities"], vec![]);
    if !with_tail {
        return g.bytes("probabilities", &[-1, 10]);
    }
    g.inits.push(pb::TensorProto {
        name: "classes".into(),
        dims: vec![10],
        data_type: DataType::Int32 as i32,
        int32_data: (0..10).collect(),
        ..Default::default()
    });
    g.node("ArgMax", "ArgMax", &["probabilities"], &["argmax_output"], vec![ai("axis", 1)]);
    g.node(
        "ArrayFeatureExtractor",
        "ArrayFeatureExtractor",
        &["classes", "argmax_output"],
        &["array_feature_extractor_result"],
        vec![],
    );
    g.nodes.last_mut().unwrap().domain = "ai.onnx.ml".into();
    let shape = g.i64s("shape_tensor", &[-1]);
    g.node("Reshape", "Reshape", &["array_feature_extractor_result", &shape], &["reshaped_result"], vec![]);
    g.node("Cast", "Cast1", &["reshaped_result"], &["label"], vec![ai("to", DataType::Int64 as i64)]);
    if !zipmap {
        let mut label = vinfo("label", &[-1]);
        if let Some(pb::type_proto::Value::TensorType(t)) = label.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.elem_type = DataType::Int64 as i32;
        }
        let m = g.model(vec![label, vinfo("probabilities", &[-1, 10])], &[("", 21), ("ai.onnx.ml", 1)], 10);
        return prost::Message::encode_to_vec(&m);
    }
    g.node("Cast", "Cast2", &["label"], &["output_label"], vec![ai("to", DataType::Int64 as i64)]);
    g.node(
        "ZipMap",
        "ZipMap",
        &["probabilities"],
        &["output_probability"],
        vec![ais("classlabels_int64s", &(0..10).collect::<Vec<_>>())],
    );
    g.nodes.last_mut().unwrap().domain = "ai.onnx.ml".into();
    let mut label = vinfo("output_label", &[-1]);
    if let Some(pb::type_proto::Value::TensorType(t)) = label.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = DataType::Int64 as i32;
    }
    // `output_probability` is a sequence of maps; tract's protobuf schema has only tensor
    // types, so a real file decodes to a type without a value, as written here.
    let probs = pb::ValueInfoProto {
        name: "output_probability".into(),
        r#type: Some(pb::TypeProto { denotation: String::new(), value: None }),
        doc_string: String::new(),
    };
    let m = g.model(vec![label, probs], &[("", 21), ("ai.onnx.ml", 1)], 10);
    prost::Message::encode_to_vec(&m)
}

#[test]
fn skl2onnx_mlp_classifier_imports_as_written() {
    let net = mlp();
    let bytes = skl2onnx_mlp(net, true);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Flat);
    assert_eq!(imp.output, OutputTransform::Softmax);
    assert_eq!(imp.network.spec().to_compact(), MLP);
    assert!(imp.notes.iter().any(|n| n.contains("cut the classifier's label post-processing")), "{:?}", imp.notes);
    assert!(imp.notes.iter().any(|n| n.contains("ZipMap")), "{:?}", imp.notes);
    // Against tract running the scores part of the same graph (tract has no ZipMap).
    let reference = skl2onnx_mlp(net, false);
    check_against_tract("skl2onnx MLPClassifier", &reference, &imp.network, InputLayout::Flat, imp.output, &mnist(16));
    // The weights are the trained ones.
    let x = mnist(8);
    assert_close("skl2onnx weights", &imp.network.forward(&x).data, &net.forward(&x).data);
    // options={"zipmap": False}: outputs `label` and `probabilities`.
    let bytes = skl2onnx_mlp_with(net, true, false);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.network.spec().to_compact(), MLP);
    assert!(
        imp.notes.iter().any(|n| n.contains("cut the classifier's label post-processing") && n.contains("[\"label\"]")),
        "{:?}",
        imp.notes
    );
    check_against_tract("skl2onnx zipmap=False", &reference, &imp.network, InputLayout::Flat, imp.output, &mnist(8));
}

// ---------------------------------------------------------------------------------------
// PyTorch TorchScript exporter

/// `torch.onnx.export(model, x, "model.onnx", input_names=["input"], output_names=["output"],
/// dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}}, dynamo=False)`
/// of a Sequential-free module with `conv1`, `conv2`, `fc1`, `fc2` and `F.relu` /
/// `F.max_pool2d` / `torch.flatten(x, 1)`; `norm` = `(mean, std)` makes the first conv take
/// normalised input (its trained weights un-folded: the file on `(x - mean) / std` computes
/// what the trained network does on `x`, exactly away from zero padding).
fn torchscript_cnn(net: &Network, norm: Option<(f32, f32)>) -> Vec<u8> {
    let mut g = G::new(17, "pytorch", "input", &[-1, 1, 28, 28]);
    let mut cur = "input".to_string();
    let mut shape = [28usize, 28, 1];
    let (mut convs, mut fcs, mut relus, mut pools) = (0, 0, 0, 0);
    let suffix = |i: usize| if i == 0 { String::new() } else { format!("_{i}") };
    for (l, p) in net.spec().layers.iter().zip(&net.params().layers) {
        let next_shape = l.output_shape(shape).unwrap();
        let out = match *l {
            LayerSpec::Conv2d { filters, kernel, stride, padding } => {
                convs += 1;
                let mut w = oihw(p, filters, kernel, shape[2]);
                let mut b = p.bias.clone();
                if let (Some((mean, std)), 1) = (norm, convs) {
                    for (oc, bias) in b.iter_mut().enumerate() {
                        let per = w.len() / filters;
                        let row = &mut w[oc * per..(oc + 1) * per];
                        *bias += mean * row.iter().sum::<f32>();
                        row.iter_mut().for_each(|v| *v *= std);
                    }
                }
                let name = format!("conv{convs}");
                let w = g.init(
                    &format!("{name}.weight"),
                    &[filters as i64, shape[2] as i64, kernel[0] as i64, kernel[1] as i64],
                    w,
                );
                let b = g.init(&format!("{name}.bias"), &[filters as i64], b);
                let out = format!("/{name}/Conv_output_0");
                let pads = padding.map(|v| v as i64);
                g.node(
                    "Conv",
                    &format!("/{name}/Conv"),
                    &[&cur, &w, &b],
                    &[&out],
                    vec![
                        ais("dilations", &[1, 1]),
                        ai("group", 1),
                        ais("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
                        ais("pads", &[pads[0], pads[1], pads[2], pads[3]]),
                        ais("strides", &[stride[0] as i64, stride[1] as i64]),
                    ],
                );
                out
            }
            LayerSpec::Relu => {
                let (name, out) = (format!("/Relu{}", suffix(relus)), format!("/Relu{}_output_0", suffix(relus)));
                relus += 1;
                g.node("Relu", &name, &[&cur], &[&out], vec![]);
                out
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                let (name, out) = (format!("/MaxPool{}", suffix(pools)), format!("/MaxPool{}_output_0", suffix(pools)));
                pools += 1;
                g.node(
                    "MaxPool",
                    &name,
                    &[&cur],
                    &[&out],
                    vec![
                        ai("ceil_mode", 0),
                        ais("dilations", &[1, 1]),
                        ais("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
                        ais("pads", &[0, 0, 0, 0]),
                        ais("strides", &[stride[0] as i64, stride[1] as i64]),
                    ],
                );
                out
            }
            LayerSpec::Flatten => {
                g.node("Flatten", "/Flatten", &[&cur], &["/Flatten_output_0"], vec![ai("axis", 1)]);
                "/Flatten_output_0".to_string()
            }
            LayerSpec::Dense { units } => {
                fcs += 1;
                let k = p.weights.len() / units;
                let rows = if fcs == 1 { rows_nchw(p, flat_source(net)) } else { p.weights.clone() };
                let name = format!("fc{fcs}");
                let w = g.init(&format!("{name}.weight"), &[units as i64, k as i64], rows);
                let b = g.init(&format!("{name}.bias"), &[units as i64], p.bias.clone());
                let last = fcs == dense_params(net).len();
                let out = if last { "output".to_string() } else { format!("/{name}/Gemm_output_0") };
                g.node(
                    "Gemm",
                    &format!("/{name}/Gemm"),
                    &[&cur, &w, &b],
                    &[&out],
                    vec![build::attr_float("alpha", 1.0), build::attr_float("beta", 1.0), ai("transB", 1)],
                );
                out
            }
            ref other => panic!("no TorchScript form for {other}"),
        };
        cur = out;
        shape = next_shape;
    }
    g.bytes("output", &[-1, 10])
}

/// The `[h, w, c]` map the network's first Flatten flattens.
fn flat_source(net: &Network) -> [usize; 3] {
    let mut shape = net.input_shape();
    for l in &net.spec().layers {
        if *l == LayerSpec::Flatten {
            return shape;
        }
        shape = l.output_shape(shape).unwrap();
    }
    panic!("no flatten")
}

#[test]
fn torchscript_cnn_imports_as_written() {
    let net = ts_cnn();
    let bytes = torchscript_cnn(net, None);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.network.spec().to_compact(), TS_CNN);
    assert_eq!(imp.input_affine, None);
    check_against_tract("TorchScript CNN", &bytes, &imp.network, InputLayout::Nchw, imp.output, &mnist(16));
    let x = mnist(8);
    assert_close("TorchScript weights", &imp.network.forward(&x).data, &net.forward(&x).data);
}

// ---------------------------------------------------------------------------------------
// PyTorch dynamo exporter

/// Writes `torch.onnx.export(model, (x,), path, dynamic_shapes={"x": {0: Dim("batch")}})` of a
/// module `conv1 -> relu -> max_pool2d -> conv2 -> relu -> AdaptiveAvgPool2d(1) ->
/// x.view(x.size(0), -1) -> fc` (the trained `DYNAMO_CNN`), with its external data, into `dir`;
/// returns the model path.
fn dynamo_cnn_files(net: &Network, dir: &Path) -> std::path::PathBuf {
    let mut g = G::new(18, "pytorch", "x", &[-1, 1, 28, 28]);
    let mut value_info = Vec::new();
    // torch.export names values after the aten op, numbered from the second use.
    let mut uses: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut name = |op: &'static str| {
        let k = uses.entry(op).or_insert(0);
        *k += 1;
        if *k == 1 {
            op.to_string()
        } else {
            format!("{op}_{}", *k - 1)
        }
    };
    let mut val = 0;
    let mut val_name = || {
        val += 1;
        format!("val_{}", val - 1)
    };
    let mut cur = "x".to_string();
    let mut shape = [28usize, 28, 1];
    let (mut convs, mut fcs) = (0, 0);
    let ls = &net.spec().layers;
    for (l, p) in ls.iter().zip(&net.params().layers) {
        let next = l.output_shape(shape).unwrap();
        let out = match *l {
            LayerSpec::Conv2d { filters, kernel, padding, stride } => {
                convs += 1;
                let c = shape[2];
                let dims = [filters as i64, c as i64, kernel[0] as i64, kernel[1] as i64];
                let w = g.init(&format!("conv{convs}.weight"), &dims, oihw(p, filters, kernel, c));
                let b = g.init(&format!("conv{convs}.bias"), &[filters as i64], p.bias.clone());
                let out = name("conv2d");
                let attrs = vec![
                    ai("group", 1),
                    ais("pads", &padding.map(|v| v as i64)),
                    ais("strides", &stride.map(|v| v as i64)),
                    ais("dilations", &[1, 1]),
                ];
                g.node("Conv", &format!("node_{out}"), &[&cur, &w, &b], &[&out], attrs);
                out
            }
            LayerSpec::Relu => {
                let out = name("relu");
                g.node("Relu", &format!("node_{out}"), &[&cur], &[&out], vec![]);
                out
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                let out = name("max_pool2d");
                let attrs = vec![
                    ais("kernel_shape", &kernel.map(|v| v as i64)),
                    ais("strides", &stride.map(|v| v as i64)),
                    ais("pads", &[0, 0, 0, 0]),
                    ais("dilations", &[1, 1]),
                    ai("ceil_mode", 0),
                ];
                g.node("MaxPool", &format!("node_{out}"), &[&cur], &[&out], attrs);
                out
            }
            // AdaptiveAvgPool2d(1) over the whole map.
            LayerSpec::AvgPool2d { kernel, .. } if kernel == [shape[0], shape[1]] => {
                let axes = g.i64s(&val_name(), &[-1, -2]);
                let out = name("mean");
                g.node(
                    "ReduceMean",
                    &format!("node_{out}"),
                    &[&cur, &axes],
                    &[&out],
                    vec![ai("keepdims", 1), ai("noop_with_empty_axes", 0)],
                );
                out
            }
            // x.view(x.size(0), -1)
            LayerSpec::Flatten => {
                let (s, i0, b, z, u, m1, cat) =
                    (val_name(), val_name(), name("sym_size_int"), val_name(), val_name(), val_name(), val_name());
                g.node("Shape", &format!("node_Shape_{}", &s[4..]), &[&cur], &[&s], vec![]);
                g.inits.push(build::i64_tensor(&i0, &[], &[0]));
                g.node("Gather", &format!("node_Gather_{}", &i0[4..]), &[&s, &i0], &[&b], vec![ai("axis", 0)]);
                g.i64s(&z, &[0]);
                g.node("Unsqueeze", &format!("node_Unsqueeze_{}", &u[4..]), &[&b, &z], &[&u], vec![]);
                g.i64s(&m1, &[-1]);
                g.node("Concat", &format!("node_Concat_{}", &cat[4..]), &[&u, &m1], &[&cat], vec![ai("axis", 0)]);
                let out = name("view");
                g.node("Reshape", &format!("node_{out}"), &[&cur, &cat], &[&out], vec![]);
                out
            }
            LayerSpec::Dense { units } => {
                fcs += 1;
                let k = p.weights.len() / units;
                let rows = if fcs == 1 { rows_nchw(p, flat_source(net)) } else { p.weights.clone() };
                let w = g.init(&format!("fc{fcs}.weight"), &[units as i64, k as i64], rows);
                let b = g.init(&format!("fc{fcs}.bias"), &[units as i64], p.bias.clone());
                let out = name("linear");
                g.node("Gemm", &format!("node_{out}"), &[&cur, &w, &b], &[&out], vec![ai("transB", 1)]);
                out
            }
            ref other => panic!("no dynamo form for {other}"),
        };
        // value_info with the symbolic batch for every intermediate value.
        let dims: Vec<Option<usize>> = match *l {
            LayerSpec::Dense { units } => vec![None, Some(units)],
            LayerSpec::Flatten => vec![None, Some(next.iter().product())],
            _ => vec![None, Some(next[2]), Some(next[0]), Some(next[1])],
        };
        value_info.push(build::value_info(&out, &dims, "batch"));
        cur = out;
        shape = next;
    }
    let outputs = vec![build::value_info(&cur, &[None, Some(10)], "batch")];
    value_info.pop();
    let mut m = g.model(outputs, &[("", 18)], 10);
    let graph = m.graph.as_mut().unwrap();
    graph.value_info = value_info;
    graph.input = vec![build::value_info("x", &[None, Some(1), Some(28), Some(28)], "batch")];
    // External data: tensors of 256 bytes or more, smallest first, into model.onnx.data.
    let mut big: Vec<usize> =
        (0..graph.initializer.len()).filter(|&i| graph.initializer[i].raw_data.len() >= 256).collect();
    big.sort_by_key(|&i| graph.initializer[i].raw_data.len());
    let mut data = Vec::new();
    for i in big {
        let t = &mut graph.initializer[i];
        let raw = std::mem::take(&mut t.raw_data);
        let entry = |k: &str, v: String| pb::StringStringEntryProto { key: k.into(), value: v };
        t.external_data = vec![
            entry("location", "model.onnx.data".into()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        data.extend_from_slice(&raw);
    }
    m.producer_version = "2.9.0".into();
    let path = dir.join("model.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
    std::fs::write(dir.join("model.onnx.data"), &data).unwrap();
    path
}

/// tract on a file by path (its own external-data loader), the batch left symbolic.
fn tract_dynamic(path: &Path, x: &Tensor, layout: InputLayout, norm: Option<&ChannelAffine>) -> Vec<Vec<f32>> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx().model_for_path(path).unwrap().into_optimized().unwrap().into_runnable().unwrap();
    let shape = x.sample_shape();
    (0..x.n())
        .map(|i| {
            let img = norm.map_or_else(|| x.sample(i).to_vec(), |a| a.apply(x.sample(i)));
            let t =
                tract_onnx::prelude::Tensor::from_shape(&layout.shape(1, shape), &layout.convert(&img, shape)).unwrap();
            let out = plan.run(tvec!(t.into_tvalue())).unwrap();
            out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
        })
        .collect()
}

#[test]
fn dynamo_cnn_with_external_data_and_dynamic_batch_imports_as_written() {
    let net = dynamo_cnn();
    let dir = tempfile::tempdir().unwrap();
    let path = dynamo_cnn_files(net, dir.path());
    // The reported failure: tract with the batch fixed to 1 cannot unify the value_info's
    // symbolic batch.
    let fixed = {
        use tract_onnx::prelude::*;
        tract_onnx::onnx().model_for_path(&path).and_then(|m| {
            m.with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), [1, 1, 28, 28]))?.into_optimized()
        })
    };
    assert!(fixed.is_err(), "tract accepts the fixed batch with the value_info as written");

    // From bytes alone the weights are missing: a clear error naming the file.
    let bytes = std::fs::read(&path).unwrap();
    let err = import_onnx_with(&bytes, &ImportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::ExternalData(m) if m.contains("model.onnx.data")), "{err}");

    let imp = import_onnx_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(imp.network.spec().to_compact(), DYNAMO_CNN);
    assert!(imp.max_abs_diff.is_some());
    for want in ["external data", "value_info"] {
        assert!(imp.notes.iter().any(|n| n.contains(want)), "{want}: {:?}", imp.notes);
    }
    let x = mnist(12);
    let tract = tract_dynamic(&path, &x, InputLayout::Nchw, None);
    let ours = imp.network.forward(&x);
    for (i, t) in tract.iter().enumerate() {
        assert_close(&format!("dynamo image {i}"), ours.sample(i), t);
    }

    // Broken external data is an error, never a panic or a huge allocation.
    let data = dir.path().join("model.onnx.data");
    let full = std::fs::read(&data).unwrap();
    std::fs::write(&data, &full[..full.len() - 4]).unwrap();
    let err = import_onnx_file(&path, &ImportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::ExternalData(m) if m.contains("past the end")), "{err}");
    let mut m: pb::ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
    t.dims = vec![1 << 40, 1 << 20];
    std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
    let err = import_onnx_file(&path, &ImportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::ExternalData(m) if m.contains("bytes of external data allowed")), "{err}");
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
    t.external_data[0].value = "../model.onnx.data".into();
    std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
    let err = import_onnx_file(&path, &ImportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::ExternalData(m) if m.contains("not a relative path inside")), "{err}");
    #[cfg(unix)]
    {
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link.data")).unwrap();
        let mut m: pb::ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
        let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
        t.external_data[0].value = "link.data".into();
        std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
        let err = import_onnx_file(&path, &ImportOptions::default()).unwrap_err();
        assert!(matches!(&err, OnnxError::ExternalData(m) if m.contains("resolves outside")), "{err}");
    }
}

/// `x.view(x.size(0), -1)` written the other way torchlib can: `Shape(start=0, end=1)` ->
/// `Squeeze` -> `Reshape([-1])` -> `Concat`; and a shape that needs a non-batch dim is an
/// error naming the Reshape.
#[test]
fn shape_arithmetic_variants_fold_or_are_named() {
    let build = |with_c: bool| {
        let mut g = G::new(18, "pytorch", "x", &[-1, 2, 6, 6]);
        let w = g.weights("conv.weight", &[4, 2, 3, 3], 18);
        g.node("Conv", "node_conv2d", &["x", &w], &["conv2d"], vec![ais("pads", &[1, 1, 1, 1])]);
        g.node("Shape", "node_Shape_0", &["conv2d"], &["val_0"], vec![ai("start", 0), ai("end", 1)]);
        g.node("Squeeze", "node_Squeeze_1", &["val_0"], &["sym_size_int"], vec![]);
        let m1 = g.i64s("val_2", &[-1]);
        g.node("Reshape", "node_Reshape_3", &["sym_size_int", &m1], &["val_3"], vec![]);
        let rest = if with_c {
            g.node("Shape", "node_Shape_4", &["conv2d"], &["val_4"], vec![]);
            let one = g.i64s("val_5", &[1]);
            g.node("Gather", "node_Gather_5", &["val_4", &one], &["val_6"], vec![ai("axis", 0)]);
            "val_6".to_string()
        } else {
            g.i64s("val_6", &[-1])
        };
        g.node("Concat", "node_Concat_6", &["val_3", &rest], &["val_7"], vec![ai("axis", 0)]);
        g.node("Reshape", "node_view", &["conv2d", "val_7"], &["view"], vec![]);
        let w = g.weights("fc.weight", &[3, 144], 144);
        g.node("Gemm", "node_linear", &["view", &w], &["linear"], vec![ai("transB", 1)]);
        g.bytes("linear", &[-1, 3])
    };
    let bytes = build(false);
    let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.network.spec().to_compact(), "conv4k3p1,flatten,dense3");
    check_against_tract(
        "Shape/Squeeze/Concat view",
        &bytes,
        &imp.network,
        InputLayout::Nchw,
        imp.output,
        &images([6, 6, 2], 5, 9),
    );
    let err = import_onnx_with(&build(true), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("node_view") && err.to_string().contains("other than the batch"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Input normalisation

#[test]
fn normalisation_outside_the_graph_is_folded_exactly() {
    let net = ts_cnn();
    let (mean, std) = (0.1307f32, 0.3081f32);
    let bytes = torchscript_cnn(net, Some((mean, std)));
    let norm = InputNorm { scale: 1.0, mean: vec![mean], std: vec![std] };
    let opts = ImportOptions { input_norm: Some(norm.clone()), ..Default::default() };
    let imp = import_onnx_with(&bytes, &opts).unwrap();
    // conv1 pads with zeros, so the shift cannot go into it exactly: a 1x1 depthwise layer
    // takes the normalisation.
    assert_eq!(imp.network.spec().to_compact(), format!("dw1,{TS_CNN}"));
    let a = norm.affine(1).unwrap();
    assert_eq!(imp.input_affine.as_ref(), Some(&a));
    let x = mnist(16);
    let shape = [1, 1, 28, 28];
    let plan = super::tr::plan_bytes(&bytes, &shape);
    let ours = imp.network.forward(&x);
    for i in 0..x.n() {
        let t = super::tr::run(&plan, &shape, &InputLayout::Nchw.convert(&a.apply(x.sample(i)), [28, 28, 1]));
        assert_close(&format!("normalised input image {i}"), ours.sample(i), &t);
    }
    // Away from the padded borders the file on normalised input is the trained network.
    let agree = (0..x.n()).filter(|&i| argmax(ours.sample(i)) == argmax(net.forward(&x).sample(i))).count();
    assert!(agree >= 14, "{agree}/16");

    // An unpadded first layer takes the normalisation itself (here a Dense after Flatten:
    // the skl2onnx MLP with 0..255 inputs and a 3-value mean/std broadcast refused).
    let bytes = skl2onnx_mlp(mlp(), true);
    let norm = InputNorm { scale: 255.0, mean: vec![33.3], std: vec![78.6] };
    let imp =
        import_onnx_with(&bytes, &ImportOptions { input_norm: Some(norm.clone()), ..Default::default() }).unwrap();
    assert_eq!(imp.network.spec().to_compact(), MLP);
    let a = norm.affine(1).unwrap();
    let reference = skl2onnx_mlp(mlp(), false);
    let plan = super::tr::plan_bytes(&reference, &[1, 784]);
    let ours = imp.network.forward(&x);
    for i in 0..x.n() {
        let t = super::tr::run(&plan, &[1, 784], &a.apply(x.sample(i)));
        assert_close(&format!("MLP normalised image {i}"), &imp.output.apply(ours.sample(i)), &t);
    }
    let bad = InputNorm { scale: 1.0, mean: vec![0.5; 3], std: vec![0.2; 3] };
    let err = import_onnx_with(&bytes, &ImportOptions { input_norm: Some(bad), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("3 mean values for an input of 1 channels"), "{err}");
    let zero = InputNorm { scale: 1.0, mean: vec![0.5], std: vec![0.0] };
    assert!(import_onnx_with(&bytes, &ImportOptions { input_norm: Some(zero), ..Default::default() }).is_err());
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// `(x - mean) / std` inside the model (`Sub` and `Div` by `[1, 3, 1, 1]` buffers, as a
/// module's forward writes it), then `x * 2` after the conv, before unpadded and padded convs.
#[test]
fn in_graph_normalisation_is_folded_and_matches_tract() {
    for (pads, want) in [([0i64; 4], "conv4k3,relu,flatten,dense5"), ([1; 4], "dw1,conv4k3p1,relu,flatten,dense5")] {
        let mut g = G::new(17, "pytorch", "input", &[-1, 3, 8, 8]);
        let mean = g.init("mean", &[1, 3, 1, 1], vec![0.485, 0.456, 0.406]);
        let std = g.init("std", &[1, 3, 1, 1], vec![0.229, 0.224, 0.225]);
        g.node("Sub", "/Sub", &["input", &mean], &["/Sub_output_0"], vec![]);
        g.node("Div", "/Div", &["/Sub_output_0", &std], &["/Div_output_0"], vec![]);
        let w = g.weights("conv.weight", &[4, 3, 3, 3], 27);
        let b = g.bias("conv.bias", &[4]);
        g.node(
            "Conv",
            "/conv/Conv",
            &["/Div_output_0", &w, &b],
            &["c"],
            vec![ais("pads", &pads), ais("kernel_shape", &[3, 3])],
        );
        let two = g.constant("two", 2.0);
        g.node("Mul", "/Mul", &["c", &two], &["m"], vec![]);
        g.node("Relu", "/Relu", &["m"], &["r"], vec![]);
        g.node("Flatten", "/Flatten", &["r"], &["f"], vec![]);
        let k = if pads[0] == 0 { 4 * 36 } else { 4 * 64 };
        let w = g.weights("fc.weight", &[5, k], k as usize);
        g.node("Gemm", "/fc/Gemm", &["f", &w], &["output"], vec![ai("transB", 1)]);
        let bytes = g.bytes("output", &[-1, 5]);
        let imp = import_onnx_with(&bytes, &ImportOptions::default()).unwrap();
        assert_eq!(imp.network.spec().to_compact(), want);
        let a = imp.input_affine.clone().expect("the in-graph normalisation is reported");
        assert_eq!(imp.input_norm_nodes, ["Sub `/Sub`", "Div `/Div`"]);
        assert!((a.scale[0] - 1.0 / 0.229).abs() < 1e-5 && (a.shift[2] + 0.406 / 0.225).abs() < 1e-5, "{a}");
        check_against_tract(
            &format!("in-graph Sub/Div, pads {pads:?}"),
            &bytes,
            &imp.network,
            InputLayout::Nchw,
            imp.output,
            &images([8, 8, 3], 6, 4),
        );
    }
    // Elementwise ops elsewhere are refused with the node named.
    let mut g = G::new(17, "pytorch", "input", &[-1, 1, 4, 4]);
    let w = g.weights("conv.weight", &[2, 1, 3, 3], 9);
    g.node("Conv", "/conv/Conv", &["input", &w], &["c"], vec![]);
    g.node("Relu", "/Relu", &["c"], &["r"], vec![]);
    let h = g.constant("half", 0.5);
    g.node("Mul", "/Mul", &["r", &h], &["m"], vec![]);
    g.node("Flatten", "/Flatten", &["m"], &["f"], vec![]);
    let w = g.weights("fc.weight", &[3, 8], 8);
    g.node("Gemm", "/fc/Gemm", &["f", &w], &["output"], vec![ai("transB", 1)]);
    let err = import_onnx_with(&g.bytes("output", &[-1, 3]), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/Mul") && err.to_string().contains("only supported on the model input"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The figure

/// Top-1 agreement on all 2000 mnist-small test images between tract running each
/// exporter-form file and the int8 blob of its import (quantized on 1000 training images).
/// The source frameworks (scikit-learn, PyTorch) are not available here, so tract on the file
/// stands in for them.
#[test]
fn exporter_forms_agree_with_the_int8_blob_on_mnist_small() {
    let test = &splits().test;
    let n = test.len();
    let x = iocane_trainer::train::batch(test, &(0..n).collect::<Vec<_>>()).0;
    let dir = tempfile::tempdir().unwrap();
    let dynamo = dynamo_cnn_files(dynamo_cnn(), dir.path());
    let ts = dir.path().join("ts.onnx");
    std::fs::write(&ts, torchscript_cnn(ts_cnn(), None)).unwrap();
    let ts_norm = dir.path().join("ts_norm.onnx");
    std::fs::write(&ts_norm, torchscript_cnn(ts_cnn(), Some((0.1307, 0.3081)))).unwrap();
    let skl = dir.path().join("skl.onnx");
    std::fs::write(&skl, skl2onnx_mlp(mlp(), true)).unwrap();
    let skl_ref = dir.path().join("skl_scores.onnx");
    std::fs::write(&skl_ref, skl2onnx_mlp(mlp(), false)).unwrap();
    let norm = InputNorm { scale: 1.0, mean: vec![0.1307], std: vec![0.3081] };
    let cases: [(&str, &Path, &Path, InputLayout, Option<InputNorm>); 4] = [
        ("scikit-learn MLPClassifier (skl2onnx)", &skl, &skl_ref, InputLayout::Flat, None),
        ("PyTorch TorchScript exporter CNN", &ts, &ts, InputLayout::Nchw, None),
        (
            "PyTorch TorchScript CNN + Normalize(0.1307, 0.3081)",
            &ts_norm,
            &ts_norm,
            InputLayout::Nchw,
            Some(norm.clone()),
        ),
        ("PyTorch dynamo CNN, dynamic batch, external data", &dynamo, &dynamo, InputLayout::Nchw, None),
    ];
    let labels: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    let acc = |pred: &[usize]| pred.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let int8 = |net: &Network| -> Vec<usize> {
        let blob = quantize(net, &splits().train, 1000, test.labels_text.clone(), vec![]).unwrap().emit();
        let model = Model::parse(&blob).unwrap();
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; 10];
        (0..n).map(|i| model.run(test.image(i), &mut arena, &mut logits).unwrap()).collect()
    };
    // What the issue saw: the normalised model imported without its normalisation.
    let silent = int8(&import_onnx_file(&ts_norm, &ImportOptions::default()).unwrap().network);
    let with = int8(
        &import_onnx_file(&ts_norm, &ImportOptions { input_norm: Some(norm.clone()), ..Default::default() })
            .unwrap()
            .network,
    );
    eprintln!(
        "FIGURE Normalize(0.1307, 0.3081) model: int8 accuracy {:.2} % without --mean/--std, {:.2} % with them",
        100.0 * acc(&silent),
        100.0 * acc(&with)
    );
    assert!(acc(&with) > acc(&silent) + 0.02, "the folded normalisation matters");
    for (name, file, reference, layout, norm) in cases {
        let opts = ImportOptions { input_norm: norm.clone(), ..Default::default() };
        let imp = import_onnx_file(file, &opts).unwrap();
        let affine = norm.map(|m| m.affine(1).unwrap());
        let tract: Vec<usize> =
            tract_dynamic(reference, &x, layout, affine.as_ref()).iter().map(|v| argmax(v)).collect();
        let int8 = int8(&imp.network);
        let agree = tract.iter().zip(&int8).filter(|(a, b)| a == b).count();
        eprintln!(
            "FIGURE {name}: top-1 agreement tract(file) vs int8 blob {agree}/{n} = {:.2} %; accuracy tract {:.2} %, int8 {:.2} %",
            100.0 * agree as f64 / n as f64,
            100.0 * acc(&tract),
            100.0 * acc(&int8)
        );
        assert!(agree as f64 >= 0.97 * n as f64, "{name}: {agree}/{n}");
        assert!(acc(&tract) > 0.8, "{name}: the trained weights classify");
    }
}

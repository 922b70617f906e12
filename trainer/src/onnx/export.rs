//! Export of a float [`Network`] as a standard ONNX model (see the [module docs](super)).

use prost::Message;
use tract_onnx::pb;

use super::build::{attr_int, attr_ints, f32_tensor, i64_tensor, node, value_info};
use super::{OnnxError, EXPORT_IR_VERSION, EXPORT_OPSET};
use crate::nn::{LayerSpec, Network};

struct Emitter {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    cur: String,
}

impl Emitter {
    fn init(&mut self, t: pb::TensorProto) -> String {
        let name = t.name.clone();
        self.inits.push(t);
        name
    }

    /// Appends a node consuming the current tensor (plus `extra` inputs); its output becomes
    /// the current tensor.
    fn node(&mut self, op: &str, name: String, extra: Vec<String>, attribute: Vec<pb::AttributeProto>) {
        let out = format!("{name}_out");
        let mut input = vec![std::mem::replace(&mut self.cur, out.clone())];
        input.extend(extra);
        let input: Vec<&str> = input.iter().map(String::as_str).collect();
        self.nodes.push(node(op, &name, &input, &[&out], attribute));
    }
}

fn window_attrs(kernel: [usize; 2], stride: [usize; 2], padding: Option<[usize; 4]>) -> Vec<pb::AttributeProto> {
    let ints = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let mut a = vec![attr_ints("kernel_shape", &ints(&kernel)), attr_ints("strides", &ints(&stride))];
    if let Some(p) = padding {
        a.push(attr_ints("pads", &ints(&p)));
        a.push(attr_ints("dilations", &[1, 1]));
    }
    a
}

/// Whether the first layer after `i` that is not an activation or a Flatten is a Dense.
fn next_is_dense(layers: &[LayerSpec], i: usize) -> bool {
    layers[i + 1..]
        .iter()
        .find(|l| !matches!(l, LayerSpec::Relu | LayerSpec::Relu6 | LayerSpec::Flatten))
        .is_some_and(|l| matches!(l, LayerSpec::Dense { .. }))
}

/// Exports the float network as an ONNX model (opset 13), encoded as protobuf bytes.
///
/// The graph takes `"input"`, float32 `[N, C, H, W]` (NCHW, `N` a symbolic batch dimension;
/// pixels `byte / 255` as for [`Network::forward`]) and produces `"logits"`, `[N, classes]`.
/// Weights are stored as raw little-endian initializers named `<layer>_<index>.weight` /
/// `.bias`; the model's `doc_string` and the metadata entry `iocane.arch` record the
/// architecture. See the [module docs](super) for the op mapping. Running the file (e.g. with
/// tract-onnx or onnxruntime) on the NCHW form of an image gives the same logits as
/// [`Network::forward`] up to float rounding.
pub fn export_onnx(net: &Network) -> Result<Vec<u8>, OnnxError> {
    Ok(export_model(net).encode_to_vec())
}

fn export_model(net: &Network) -> pb::ModelProto {
    let layers = net.layers();
    let [ih, iw, ic] = net.input_shape();
    let mut e = Emitter { nodes: Vec::new(), inits: Vec::new(), cur: "input".into() };
    // Whether the current ONNX tensor is 4-D NCHW (else 2-D [N, len]).
    let mut rank4 = true;
    // NCHW-flattened shape whose order the next Dense's columns must follow.
    let mut pending: Option<[usize; 3]> = None;
    let mut clip_bounds: Option<(String, String)> = None;
    for (i, l) in layers.iter().enumerate() {
        let [h, w, c] = net.layer_input_shape(i);
        let p = net.layer_params(i);
        let needs_rank4 =
            matches!(l, LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. } | LayerSpec::MaxPool2d { .. })
                || matches!(l, LayerSpec::AvgPool2d { .. });
        if needs_rank4 && !rank4 {
            // A flat [N, len] tensor is our [1, 1, len] map: reshape it to [N, len, 1, 1].
            let shape = e.init(i64_tensor(&format!("reshape_{i}.shape"), &[4], &[0, c as i64, 1, 1]));
            e.node("Reshape", format!("reshape_{i}"), vec![shape], vec![]);
            rank4 = true;
        }
        match *l {
            LayerSpec::Conv2d { filters, kernel, stride, padding } => {
                let [kh, kw] = kernel;
                let mut wt = vec![0.0f32; p.weights.len()];
                for o in 0..filters {
                    for y in 0..kh {
                        for x in 0..kw {
                            for ci in 0..c {
                                wt[((o * c + ci) * kh + y) * kw + x] = p.weights[((o * kh + y) * kw + x) * c + ci];
                            }
                        }
                    }
                }
                let name = format!("conv_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[filters, c, kh, kw], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[filters], &p.bias));
                let mut attrs = window_attrs(kernel, stride, Some(padding));
                attrs.push(attr_int("group", 1));
                e.node("Conv", name, vec![wn, bn], attrs);
            }
            LayerSpec::DepthwiseConv2d { kernel, stride, padding } => {
                let [kh, kw] = kernel;
                let mut wt = vec![0.0f32; p.weights.len()];
                for ch in 0..c {
                    for y in 0..kh {
                        for x in 0..kw {
                            wt[(ch * kh + y) * kw + x] = p.weights[(y * kw + x) * c + ch];
                        }
                    }
                }
                let name = format!("dwconv_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[c, 1, kh, kw], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[c], &p.bias));
                let mut attrs = window_attrs(kernel, stride, Some(padding));
                attrs.push(attr_int("group", c as i64));
                e.node("Conv", name, vec![wn, bn], attrs);
            }
            LayerSpec::MaxPool2d { kernel, stride } => {
                e.node("MaxPool", format!("maxpool_{i}"), vec![], window_attrs(kernel, stride, None))
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                e.node("AveragePool", format!("avgpool_{i}"), vec![], window_attrs(kernel, stride, None))
            }
            LayerSpec::Relu => e.node("Relu", format!("relu_{i}"), vec![], vec![]),
            LayerSpec::Relu6 => {
                let (lo, hi) = clip_bounds
                    .get_or_insert_with(|| {
                        (e.init(f32_tensor("relu6.min", &[], &[0.0])), e.init(f32_tensor("relu6.max", &[], &[6.0])))
                    })
                    .clone();
                e.node("Clip", format!("relu6_{i}"), vec![lo, hi], vec![]);
            }
            LayerSpec::Flatten => {
                if rank4 {
                    if h * w > 1 && c > 1 {
                        if next_is_dense(layers, i) {
                            pending = Some([h, w, c]);
                        } else {
                            let perm = attr_ints("perm", &[0, 2, 3, 1]);
                            e.node("Transpose", format!("to_nhwc_{i}"), vec![], vec![perm]);
                        }
                    }
                    e.node("Flatten", format!("flatten_{i}"), vec![], vec![attr_int("axis", 1)]);
                    rank4 = false;
                }
            }
            LayerSpec::Dense { units } => {
                if rank4 {
                    // Dense on a 1x1xC map without an explicit Flatten.
                    e.node("Flatten", format!("flatten_{i}"), vec![], vec![attr_int("axis", 1)]);
                    rank4 = false;
                }
                let k = h * w * c;
                let wt = match pending.take() {
                    Some([fh, fw, fc]) => {
                        let mut wt = vec![0.0f32; p.weights.len()];
                        for u in 0..units {
                            for ch in 0..fc {
                                for y in 0..fh {
                                    for x in 0..fw {
                                        wt[u * k + (ch * fh + y) * fw + x] = p.weights[u * k + (y * fw + x) * fc + ch];
                                    }
                                }
                            }
                        }
                        wt
                    }
                    None => p.weights.clone(),
                };
                let name = format!("gemm_{i}");
                let wn = e.init(f32_tensor(&format!("{name}.weight"), &[units, k], &wt));
                let bn = e.init(f32_tensor(&format!("{name}.bias"), &[units], &p.bias));
                let attrs = vec![attr_int("transB", 1)];
                e.node("Gemm", name, vec![wn, bn], attrs);
            }
        }
    }
    // Validated networks end with a Dense: its Gemm produces the logits.
    if let Some(last) = e.nodes.last_mut() {
        last.output[0] = "logits".into();
    }
    let spec = net.spec();
    let graph = pb::GraphProto {
        node: e.nodes,
        name: "iocane".into(),
        initializer: e.inits,
        input: vec![value_info("input", &[None, Some(ic), Some(ih), Some(iw)], "N")],
        output: vec![value_info("logits", &[None, Some(spec.classes)], "N")],
        doc_string: String::new(),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: EXPORT_IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: EXPORT_OPSET }],
        producer_name: "iocane".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "iocane float network `{}`: input [N, {ic}, {ih}, {iw}] NCHW float32 pixels byte/255, output logits [N, {}]",
            spec.to_compact(),
            spec.classes
        ),
        graph: Some(graph),
        metadata_props: vec![pb::StringStringEntryProto {
            key: "iocane.arch".into(),
            value: serde_json::to_string(spec).expect("ArchSpec serialises"),
        }],
        ..Default::default()
    }
}

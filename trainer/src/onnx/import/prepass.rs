//! Rewrites of a decoded model before the chain walk, for files as the common exporters write
//! them:
//!
//! - [`inline_external_data`]: weights stored beside the file (PyTorch's default dynamo
//!   exporter writes `model.onnx.data`), read with every offset and length checked against the
//!   file before anything is allocated;
//! - [`cut_classifier_tail`]: a classifier's label post-processing (skl2onnx's `ArgMax` ->
//!   `ArrayFeatureExtractor` -> `Reshape` -> `Cast` and `ZipMap`, two graph outputs) is cut so
//!   the graph outputs the scores;
//! - [`drop_value_info`]: intermediate shape annotations (dynamo records the symbolic batch
//!   `N` there, which tract then refuses to unify with a fixed batch of 1) are dropped;
//! - [`fold_shape_arithmetic`]: `Shape` -> `Gather` -> `Unsqueeze` / `Concat` -> `Reshape`
//!   shape computations (`x.view(x.size(0), -1)` with a dynamic batch) are evaluated into
//!   constants.
//!
//! The rewritten model is also what tract-onnx runs for the cross-check, so the check covers
//! exactly the graph that was mapped.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};

use super::super::build::{float_value_info, i64_tensor};
use super::super::proto::{node_label, numel, op_label, tensor_i64, Consts};
use super::super::OnnxError;
use crate::nn::MAX_PARAMS;

/// Largest total size of external data the importer reads: enough for [`MAX_PARAMS`] DOUBLE
/// weights, far beyond what a network can hold.
pub const MAX_EXTERNAL_BYTES: u64 = 8 * MAX_PARAMS as u64;

fn ext_err(t: &pb::TensorProto, msg: impl std::fmt::Display) -> OnnxError {
    OnnxError::ExternalData(format!("tensor `{}`: {msg}", t.name))
}

/// Loads every initializer stored as external data from `dir` (the model file's directory)
/// into `raw_data`; returns how many were loaded. Without `dir` such a tensor is an error.
///
/// The location must be a relative path inside `dir`; the byte count is computed from the
/// dims and element type, must match a declared `length`, must fit the file from `offset`,
/// and all tensors together must stay within [`MAX_EXTERNAL_BYTES`], all checked before the
/// bytes are read.
pub(super) fn inline_external_data(graph: &mut pb::GraphProto, dir: Option<&Path>) -> Result<usize, OnnxError> {
    let mut budget = MAX_EXTERNAL_BYTES;
    let mut loaded = 0;
    for t in &mut graph.initializer {
        if t.data_location != Some(DataLocation::External as i32) && t.external_data.is_empty() {
            continue;
        }
        let entry = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone());
        let location = entry("location").ok_or_else(|| ext_err(t, "external data without a `location`"))?;
        let Some(dir) = dir else {
            return Err(ext_err(
                t,
                format!("stored in external file `{location}`: import the model from its path so the file beside it can be read"),
            ));
        };
        let rel = Path::new(&location);
        if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ext_err(
                t,
                format!("external data location `{location}` is not a relative path inside the model's directory"),
            ));
        }
        let parse = |k: &str| -> Result<Option<u64>, OnnxError> {
            entry(k)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| ext_err(t, format!("external data `{k}` = `{v}` is not a byte count")))
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let declared = parse("length")?;
        let elem: u64 = match DataType::try_from(t.data_type) {
            Ok(DataType::Float | DataType::Int32) => 4,
            Ok(DataType::Double | DataType::Int64) => 8,
            _ => return Err(ext_err(t, "external data of an element type other than FLOAT, DOUBLE, INT32, INT64")),
        };
        let count = numel(&t.dims).map_err(|e| ext_err(t, e))? as u64;
        let len = count.checked_mul(elem).filter(|&l| l <= budget).ok_or_else(|| {
            ext_err(
                t,
                format!("dims {:?} need more than the {MAX_EXTERNAL_BYTES} bytes of external data allowed", t.dims),
            )
        })?;
        if declared.is_some_and(|d| d != len) {
            return Err(ext_err(
                t,
                format!(
                    "external data length {} does not match dims {:?} ({len} bytes)",
                    declared.unwrap_or(0),
                    t.dims
                ),
            ));
        }
        let io = |e: std::io::Error| ext_err(t, format!("{}: {e}", dir.join(rel).display()));
        // Symbolic links may not lead out of the model's directory either.
        let path = dir.join(rel).canonicalize().map_err(io)?;
        if !path.starts_with(dir.canonicalize().map_err(io)?) {
            return Err(ext_err(t, format!("external data `{location}` resolves outside the model's directory")));
        }
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ext_err(
                t,
                format!("bytes {offset}..+{len} are past the end of {} ({size} bytes)", path.display()),
            ));
        }
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).map_err(io)?;
        budget -= len;
        t.raw_data = buf;
        t.external_data.clear();
        t.data_location = None;
        loaded += 1;
    }
    Ok(loaded)
}

/// Ops of a classifier's label post-processing (after the scores).
const LABEL_OPS: [&str; 7] =
    ["ArgMax", "ai.onnx.ml.ArrayFeatureExtractor", "ai.onnx.ml.ZipMap", "Reshape", "Cast", "Identity", "Squeeze"];

/// Cuts a classifier's label post-processing: for a tensor `scores` read by an `ArgMax` or a
/// `ZipMap` whose downstream nodes are all [`LABEL_OPS`] and produce every other graph
/// output, those nodes are removed and `scores` becomes the one graph output. Returns a note
/// saying what was cut.
pub(super) fn cut_classifier_tail(graph: &mut pb::GraphProto) -> Option<String> {
    let candidates: Vec<String> = graph
        .node
        .iter()
        .filter(|n| matches!(op_label(n).as_str(), "ArgMax" | "ai.onnx.ml.ZipMap"))
        .filter_map(|n| n.input.first().cloned())
        .collect();
    for scores in candidates {
        // Every node depending on `scores` (nodes are topologically sorted).
        let mut tainted: HashSet<&str> = HashSet::from([scores.as_str()]);
        let mut downstream = Vec::new();
        for (i, n) in graph.node.iter().enumerate() {
            if n.input.iter().any(|s| tainted.contains(s.as_str())) {
                downstream.push(i);
                tainted.extend(n.output.iter().map(String::as_str));
            }
        }
        let all_label_ops = downstream.iter().all(|&i| LABEL_OPS.contains(&op_label(&graph.node[i]).as_str()));
        let outputs_covered = graph.output.iter().all(|o| o.name == scores || tainted.contains(o.name.as_str()));
        if downstream.is_empty() || !all_label_ops || !outputs_covered {
            continue;
        }
        let cut: Vec<String> = downstream
            .iter()
            .map(|&i| format!("{} `{}`", op_label(&graph.node[i]), node_label(&graph.node[i], i)))
            .collect();
        let dropped_outputs: Vec<String> =
            graph.output.iter().filter(|o| o.name != scores).map(|o| o.name.clone()).collect();
        let cut_idx: HashSet<usize> = downstream.iter().copied().collect();
        let mut idx = 0;
        graph.node.retain(|_| {
            idx += 1;
            !cut_idx.contains(&(idx - 1))
        });
        let out = graph
            .output
            .iter()
            .chain(&graph.value_info)
            .find(|v| v.name == scores)
            .cloned()
            .unwrap_or_else(|| float_value(&scores));
        graph.output = vec![out];
        // Initializers only the cut nodes read (the class labels).
        let used: HashSet<&str> = graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        let inputs: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
        graph.initializer.retain(|t| used.contains(t.name.as_str()) || inputs.contains(&t.name));
        return Some(format!(
            "cut the classifier's label post-processing {} (outputs {dropped_outputs:?}); the scores `{scores}` are the output",
            cut.join(", ")
        ));
    }
    None
}

/// A float tensor value of unknown shape.
fn float_value(name: &str) -> pb::ValueInfoProto {
    float_value_info(name, None)
}

/// Drops the graph's intermediate `value_info` (tract re-infers every shape from the input);
/// returns how many were dropped.
pub(super) fn drop_value_info(graph: &mut pb::GraphProto) -> usize {
    std::mem::take(&mut graph.value_info).len()
}

/// One entry of a shape computed in the graph.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dim {
    Known(i64),
    /// The batch size (symbolic in the file; the import's batch here).
    Batch,
    /// A dimension of an intermediate tensor other than the batch.
    Unknown,
}

/// A shape value: its entries, whether it is a scalar, and whether entries past `dims` are
/// unknown (the shape of an intermediate tensor of unknown rank).
#[derive(Clone, Debug)]
struct ShapeVal {
    dims: Vec<Dim>,
    scalar: bool,
    open: bool,
}

/// Longest shape value the folding builds (a hostile graph could double one per `Concat`).
const MAX_SHAPE_LEN: usize = 64;

const SHAPE_OPS: [&str; 7] = ["Shape", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Concat", "Cast"];

/// Evaluates shape computations that start at a `Shape` node into INT64 constants in
/// `consts`, marking their nodes as folded. Only the batch entry of an intermediate tensor's
/// shape is known (it is `batch`); the graph input's dims are all known. A computed shape that
/// needs any other entry is an error naming the node that reads it.
pub(super) fn fold_shape_arithmetic<'a>(
    graph: &'a pb::GraphProto,
    consts: &mut Consts<'a>,
    folded: &mut HashSet<usize>,
    input: (&str, &[Option<usize>]),
    batch: usize,
) -> Result<(), OnnxError> {
    let mut vals: HashMap<&str, ShapeVal> = HashMap::new();
    for (idx, n) in graph.node.iter().enumerate() {
        if folded.contains(&idx)
            || !super::super::proto::is_default_domain(n)
            || !SHAPE_OPS.contains(&n.op_type.as_str())
        {
            continue;
        }
        let label = || node_label(n, idx);
        let err = |msg: String| OnnxError::Unsupported { op: n.op_type.clone(), node: label(), msg };
        let val = if n.op_type == "Shape" {
            let Some(x) = n.input.first() else { continue };
            let attr = |k: &str| n.attribute.iter().find(|a| a.name == k).map(|a| a.i);
            let (dims, open) = if x == input.0 {
                (
                    input
                        .1
                        .iter()
                        .enumerate()
                        .map(
                            |(i, d)| if i == 0 { Dim::Batch } else { d.map_or(Dim::Unknown, |d| Dim::Known(d as i64)) },
                        )
                        .collect(),
                    false,
                )
            } else {
                (vec![Dim::Batch], true)
            };
            let v = ShapeVal { dims, scalar: false, open };
            match (attr("start").unwrap_or(0), attr("end")) {
                (0, None) => v,
                (0, Some(1)) => ShapeVal { dims: vec![Dim::Batch], scalar: false, open: false },
                (s, e) if !v.open => {
                    let r = v.dims.len() as i64;
                    let clamp = |i: i64| (if i < 0 { i + r } else { i }).clamp(0, r) as usize;
                    let (s, e) = (clamp(s), clamp(e.unwrap_or(r)));
                    ShapeVal { dims: v.dims[s..e.max(s)].to_vec(), scalar: false, open: false }
                }
                (s, e) => {
                    return Err(err(format!(
                        "Shape(start {s}, end {e:?}) of an intermediate tensor: only its batch entry is known"
                    )))
                }
            }
        } else {
            // A shape op is folded when it reads a shape value and otherwise only constants.
            let mut parts = Vec::new();
            let mut any_shape = false;
            let mut computed = false;
            for name in n.input.iter() {
                if name.is_empty() {
                    parts.push(None);
                } else if let Some(v) = vals.get(name.as_str()) {
                    any_shape = true;
                    parts.push(Some(v.clone()));
                } else if let Some(t) = consts.get(name) {
                    // Only small integer constants take part in shapes.
                    let small = numel(&t.dims).is_ok_and(|n| n <= MAX_SHAPE_LEN);
                    parts.push(small.then(|| tensor_i64(t).ok()).flatten().map(|v| ShapeVal {
                        dims: v.into_iter().map(Dim::Known).collect(),
                        scalar: t.dims.is_empty(),
                        open: false,
                    }));
                } else {
                    computed = true;
                }
            }
            if !any_shape || computed {
                continue;
            }
            shape_op(n, &parts).map_err(err)?
        };
        if let Some(out) = n.output.first() {
            vals.insert(out, val);
        }
        folded.insert(idx);
    }
    // Materialise the shape values read by nodes that stay.
    for (idx, n) in graph.node.iter().enumerate() {
        if folded.contains(&idx) {
            continue;
        }
        for name in &n.input {
            let Some(v) = vals.get(name.as_str()) else { continue };
            let bad = v.open || v.dims.contains(&Dim::Unknown);
            if bad {
                return Err(OnnxError::Unsupported {
                    op: op_label(n),
                    node: node_label(n, idx),
                    msg: format!("input `{name}` is a shape computed from dims other than the batch (only x.size(0) is supported)"),
                });
            }
            let data: Vec<i64> = v.dims.iter().map(|d| if let Dim::Known(k) = d { *k } else { batch as i64 }).collect();
            let dims: Vec<usize> = if v.scalar { vec![] } else { vec![data.len()] };
            consts.insert(name.clone(), Cow::Owned(i64_tensor(name, &dims, &data)));
        }
    }
    Ok(())
}

/// One non-`Shape` shape op on its inputs (`None`: absent or not an integer constant).
fn shape_op(n: &pb::NodeProto, parts: &[Option<ShapeVal>]) -> Result<ShapeVal, String> {
    let int = |k: &str, d: i64| n.attribute.iter().find(|a| a.name == k).map_or(d, |a| a.i);
    let first = parts.first().cloned().flatten().ok_or("input 0 is not a shape")?;
    let one_d = |v: ShapeVal| ShapeVal { scalar: false, ..v };
    match n.op_type.as_str() {
        "Cast" | "Identity" => Ok(first),
        "Unsqueeze" | "Reshape" if first.scalar => Ok(one_d(first)),
        "Reshape" | "Squeeze" if !first.open && first.dims.len() == 1 => {
            let target = parts.get(1).cloned().flatten();
            let scalar = n.op_type == "Squeeze" || target.is_some_and(|t| t.dims.is_empty());
            Ok(ShapeVal { scalar, ..first })
        }
        "Gather" => {
            if int("axis", 0) != 0 {
                return Err("Gather on a shape must use axis 0".into());
            }
            let idx = parts.get(1).cloned().flatten().ok_or("Gather indices must be a constant")?;
            if idx.dims.len() > MAX_SHAPE_LEN {
                return Err(format!("Gather of more than {MAX_SHAPE_LEN} shape entries"));
            }
            let r = first.dims.len() as i64;
            let dims = idx
                .dims
                .iter()
                .map(|d| match *d {
                    Dim::Known(i) if (0..r).contains(&i) => first.dims[i as usize],
                    Dim::Known(i) if i < 0 && !first.open && i + r >= 0 => first.dims[(i + r) as usize],
                    Dim::Known(_) if first.open => Dim::Unknown,
                    _ => Dim::Unknown,
                })
                .collect();
            Ok(ShapeVal { dims, scalar: idx.scalar, open: false })
        }
        "Concat" => {
            let mut dims = Vec::new();
            for p in parts {
                let p = p.as_ref().ok_or("every Concat input must be a shape or an integer constant")?;
                if p.open {
                    return Err("Concat of the whole shape of an intermediate tensor (unknown rank)".into());
                }
                dims.extend_from_slice(&p.dims);
                if dims.len() > MAX_SHAPE_LEN {
                    return Err(format!("a shape of more than {MAX_SHAPE_LEN} entries"));
                }
            }
            Ok(ShapeVal { dims, scalar: false, open: false })
        }
        op => Err(format!("{op} on a shape value is not supported")),
    }
}

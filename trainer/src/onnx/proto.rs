//! Small protobuf readers for import: tensor values, data types and node labels (the
//! builders are in [`super::build`]).

use std::borrow::Cow;
use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};

pub(super) type Consts<'a> = HashMap<String, Cow<'a, pb::TensorProto>>;

/// A constant float tensor: `(dims, values)`.
pub(super) type ConstF32 = (Vec<i64>, Vec<f32>);

pub(super) fn numel(dims: &[i64]) -> Result<usize, String> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)).ok_or_else(|| format!("has invalid dims {dims:?}"))
    })
}

pub(super) fn check_inline(t: &pb::TensorProto) -> Result<(), String> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err("uses external data outside the initializers (not supported: embed it in the model)".into());
    }
    if t.segment.is_some() {
        return Err("is segmented (not supported)".into());
    }
    Ok(())
}

pub(super) fn dtype_name(t: i32) -> String {
    DataType::try_from(t).map(|d| d.as_str_name().to_string()).unwrap_or_else(|_| format!("#{t}"))
}

pub(super) fn raw_chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Result<Vec<T>, String> {
    if !raw.len().is_multiple_of(N) {
        return Err(format!("has {} raw bytes, not a multiple of {N}", raw.len()));
    }
    Ok(raw.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect())
}

/// The values of an inline numeric tensor as read: float element types widened to f64 (exact
/// for FLOAT), integer ones to i64.
enum Values {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

/// Reads an inline tensor of element type FLOAT, DOUBLE, INT32 or INT64 (from `raw_data` when
/// it is set, else from the typed field), then checks the value count against the dims. Other
/// element types are reported as not `expected`.
fn tensor_values(t: &pb::TensorProto, expected: &str) -> Result<Values, String> {
    check_inline(t)?;
    let n = numel(&t.dims)?;
    let (raw, r) = (!t.raw_data.is_empty(), &t.raw_data);
    let v = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if raw => Values::Float(raw_chunks::<4, _>(r, |b| f32::from_le_bytes(b) as f64)?),
        Ok(DataType::Float) => Values::Float(t.float_data.iter().map(|&v| v as f64).collect()),
        Ok(DataType::Double) if raw => Values::Float(raw_chunks::<8, _>(r, f64::from_le_bytes)?),
        Ok(DataType::Double) => Values::Float(t.double_data.clone()),
        Ok(DataType::Int64) if raw => Values::Int(raw_chunks::<8, _>(r, i64::from_le_bytes)?),
        Ok(DataType::Int64) => Values::Int(t.int64_data.clone()),
        Ok(DataType::Int32) if raw => Values::Int(raw_chunks::<4, _>(r, |b| i32::from_le_bytes(b) as i64)?),
        Ok(DataType::Int32) => Values::Int(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => return Err(wrong_type(t, expected)),
    };
    let len = match &v {
        Values::Float(v) => v.len(),
        Values::Int(v) => v.len(),
    };
    if len != n {
        return Err(format!("holds {len} values for dims {:?}", t.dims));
    }
    Ok(v)
}

fn wrong_type(t: &pb::TensorProto, expected: &str) -> String {
    format!("has element type {} (expected {expected})", dtype_name(t.data_type))
}

/// The values of a FLOAT or DOUBLE tensor, as f32.
pub(super) fn tensor_f32(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    match tensor_values(t, "FLOAT")? {
        Values::Float(v) => Ok(v.into_iter().map(|v| v as f32).collect()),
        Values::Int(_) => Err(wrong_type(t, "FLOAT")),
    }
}

/// The values of an INT64 or INT32 tensor, as i64.
pub(super) fn tensor_i64(t: &pb::TensorProto) -> Result<Vec<i64>, String> {
    match tensor_values(t, "INT64")? {
        Values::Int(v) => Ok(v),
        Values::Float(_) => Err(wrong_type(t, "INT64")),
    }
}

pub(super) fn node_label(n: &pb::NodeProto, idx: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        match n.output.first().filter(|o| !o.is_empty()) {
            Some(o) => format!("#{idx} (output `{o}`)"),
            None => format!("#{idx}"),
        }
    }
}

pub(super) fn op_label(n: &pb::NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

pub(super) fn is_default_domain(n: &pb::NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

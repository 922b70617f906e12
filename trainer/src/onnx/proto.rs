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
        return Err("uses external data (not supported: embed the weights in the model)".into());
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

/// The values of an inline tensor: `decode(data type, raw)` reads them (`None` for a data
/// type it does not read, reported as not `expected`), then their count is checked against
/// the dims.
fn tensor_values<T>(
    t: &pb::TensorProto,
    expected: &str,
    decode: impl FnOnce(DataType, bool) -> Option<Result<Vec<T>, String>>,
) -> Result<Vec<T>, String> {
    check_inline(t)?;
    let n = numel(&t.dims)?;
    let raw = !t.raw_data.is_empty();
    let v = DataType::try_from(t.data_type)
        .ok()
        .and_then(|d| decode(d, raw))
        .ok_or_else(|| format!("has element type {} (expected {expected})", dtype_name(t.data_type)))??;
    if v.len() != n {
        return Err(format!("holds {} values for dims {:?}", v.len(), t.dims));
    }
    Ok(v)
}

pub(super) fn tensor_f32(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    tensor_values(t, "FLOAT", |d, raw| {
        Some(match d {
            DataType::Float if raw => raw_chunks::<4, _>(&t.raw_data, f32::from_le_bytes),
            DataType::Float => Ok(t.float_data.clone()),
            DataType::Double if raw => raw_chunks::<8, _>(&t.raw_data, |b| f64::from_le_bytes(b) as f32),
            DataType::Double => Ok(t.double_data.iter().map(|&v| v as f32).collect()),
            _ => return None,
        })
    })
}

pub(super) fn tensor_i64(t: &pb::TensorProto) -> Result<Vec<i64>, String> {
    tensor_values(t, "INT64", |d, raw| {
        Some(match d {
            DataType::Int64 if raw => raw_chunks::<8, _>(&t.raw_data, i64::from_le_bytes),
            DataType::Int64 => Ok(t.int64_data.clone()),
            DataType::Int32 if raw => raw_chunks::<4, _>(&t.raw_data, |b| i32::from_le_bytes(b) as i64),
            DataType::Int32 => Ok(t.int32_data.iter().map(|&v| v as i64).collect()),
            _ => return None,
        })
    })
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

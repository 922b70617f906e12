//! Builders for ONNX protobuf messages: tensors, attributes, value infos and nodes.
//!
//! [`export_onnx`](super::export_onnx) writes its files with them, `Constant` folding in the
//! importer makes its tensors with them, and tests use them to write files the way other
//! exporters (PyTorch, tf2onnx, skl2onnx) do. Tensors are written inline as little-endian
//! `raw_data`, the layout every exporter uses for weights.

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

/// A float32 tensor named `name` of shape `dims` holding `data` (row-major).
pub fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    raw_tensor(name, dims, DataType::Float, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int64 tensor named `name` of shape `dims` holding `data` (row-major).
pub fn i64_tensor(name: &str, dims: &[usize], data: &[i64]) -> pb::TensorProto {
    raw_tensor(name, dims, DataType::Int64, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn raw_tensor(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

/// An `INT` attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

/// A `FLOAT` attribute.
pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
}

/// A `STRING` attribute.
pub fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A `TENSOR` attribute (e.g. a `Constant` node's `value`).
pub fn attr_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

/// A float32 graph input or output named `name`: `Some(d)` is a fixed dimension, `None` the
/// symbolic dimension `symbol` (e.g. `"N"` or PyTorch's `"batch_size"`).
pub fn value_info(name: &str, dims: &[Option<usize>], symbol: &str) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam(symbol.into()),
            }),
        })
        .collect();
    float_value_info(name, Some(pb::TensorShapeProto { dim }))
}

/// A float32 value named `name` of the given shape (`None`: unknown shape).
pub fn float_value_info(name: &str, shape: Option<pb::TensorShapeProto>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
        }),
        doc_string: String::new(),
    }
}

/// A default-domain node `op` named `name`.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_little_endian_raw_data_with_their_dims() {
        let t = f32_tensor("w", &[2, 1], &[1.0, -2.5]);
        assert_eq!(t.dims, [2, 1]);
        assert_eq!(t.data_type, DataType::Float as i32);
        assert_eq!(t.raw_data, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
        let t = i64_tensor("s", &[2], &[0, -1]);
        assert_eq!(t.data_type, DataType::Int64 as i32);
        assert_eq!(t.raw_data, [0i64.to_le_bytes(), (-1i64).to_le_bytes()].concat());
    }

    #[test]
    fn value_info_names_the_symbolic_dimension() {
        let v = value_info("x", &[None, Some(3)], "batch_size");
        let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.and_then(|t| t.value) else { panic!("tensor type") };
        let dims: Vec<_> = t.shape.unwrap().dim.into_iter().map(|d| d.value.unwrap()).collect();
        assert_eq!(dims, [dimension::Value::DimParam("batch_size".into()), dimension::Value::DimValue(3)]);
    }
}

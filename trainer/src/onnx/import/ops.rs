//! The op table of the importer: every supported ONNX op, registered once in [`OPS`] with the
//! small function that maps one node of it onto the network being built. The list of
//! supported ops ([`super::super::SUPPORTED_OPS`]) and the "unsupported op" errors are read
//! from this table.

use super::{Cur, Mapper, Node, Order, OutputTransform};
use crate::nn::{LayerParams, LayerSpec};
use crate::onnx::OnnxError;

/// Maps one node onto the network: `(mapper, node, position of the computed input)`.
pub(in crate::onnx) type MapOp = fn(&mut Mapper<'_>, &Node<'_>, usize) -> Result<(), OnnxError>;

/// Number of supported ops.
pub(in crate::onnx) const COUNT: usize = 29;

/// Every supported op (default ONNX domain) with its mapping function; `None` for `Constant`,
/// which is folded into the constants before the chain is walked and so never mapped.
pub(in crate::onnx) const OPS: [(&str, Option<MapOp>); COUNT] = [
    ("Conv", Some(conv)),
    ("Gemm", Some(gemm)),
    ("MatMul", Some(matmul)),
    ("Add", Some(add)),
    ("Sub", Some(sub)),
    ("Mul", Some(mul)),
    ("Div", Some(div)),
    ("Cast", Some(cast)),
    ("ReduceMean", Some(reduce_mean)),
    ("BatchNormalization", Some(batchnorm)),
    ("Relu", Some(relu)),
    ("Clip", Some(clip)),
    ("MaxPool", Some(pool)),
    ("AveragePool", Some(pool)),
    ("GlobalAveragePool", Some(global_pool)),
    ("GlobalMaxPool", Some(global_pool)),
    ("Flatten", Some(flatten)),
    ("Reshape", Some(reshape)),
    ("Squeeze", Some(squeeze)),
    ("Transpose", Some(transpose)),
    ("Dropout", Some(dropout)),
    ("Identity", Some(identity)),
    ("Softmax", Some(softmax)),
    ("LogSoftmax", Some(softmax)),
    ("Constant", None),
    ("Shape", Some(shape_only)),
    ("Gather", Some(shape_only)),
    ("Concat", Some(shape_only)),
    ("Unsqueeze", Some(shape_only)),
];

/// The names of [`OPS`], in order.
pub(in crate::onnx) const fn names() -> [&'static str; COUNT] {
    let mut out = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        out[i] = OPS[i].0;
        i += 1;
    }
    out
}

fn identity(_: &mut Mapper<'_>, _: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    Ok(())
}

fn dropout(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    m.notes.push(format!("dropped Dropout `{}`", n.label));
    Ok(())
}

fn relu(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    m.push(n, LayerSpec::Relu, LayerParams::default())
}

fn global_pool(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let [h, w, _] = m.nchw(n)?;
    push_pool(m, n, n.op() == "GlobalMaxPool", [h, w], [h, w])
}

/// Appends a max (`max`) or average pooling layer.
fn push_pool(
    m: &mut Mapper<'_>,
    n: &Node<'_>,
    max: bool,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<(), OnnxError> {
    let l = if max { LayerSpec::MaxPool2d { kernel, stride } } else { LayerSpec::AvgPool2d { kernel, stride } };
    m.push(n, l, LayerParams::default())
}

fn matmul(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let len = m.flat(n)?;
    let (bd, bv) = m.cf32_req(n, 1, "B")?;
    if bd.len() != 2 || bd[0] as usize != len {
        return Err(n.err(format!("B has dims {bd:?}, expected [{len}, units]")));
    }
    let units = bd[1] as usize;
    let mut wt = vec![0.0f32; bv.len()];
    for j in 0..len {
        for u in 0..units {
            wt[u * len + j] = bv[j * units + u];
        }
    }
    m.dense(n, wt, vec![0.0; units], units)
}

/// `x + c`: a bias right after a Conv / Gemm / MatMul, or part of the input normalisation.
fn add(m: &mut Mapper<'_>, n: &Node<'_>, data_pos: usize) -> Result<(), OnnxError> {
    m.elementwise(n, data_pos, |v| (1.0, v))
}

/// `x - c` (or `c - x`): as [`add`].
fn sub(m: &mut Mapper<'_>, n: &Node<'_>, data_pos: usize) -> Result<(), OnnxError> {
    if data_pos == 0 {
        m.elementwise(n, data_pos, |v| (1.0, -v))
    } else {
        m.elementwise(n, data_pos, |v| (-1.0, v))
    }
}

/// `x * c`: scales the layer right before it, or part of the input normalisation.
fn mul(m: &mut Mapper<'_>, n: &Node<'_>, data_pos: usize) -> Result<(), OnnxError> {
    m.elementwise(n, data_pos, |v| (v, 0.0))
}

/// `x / c` (not `c / x`): as [`mul`] by `1 / c`.
fn div(m: &mut Mapper<'_>, n: &Node<'_>, data_pos: usize) -> Result<(), OnnxError> {
    if data_pos != 0 {
        return Err(n.err("a constant divided by the tensor is not an affine map"));
    }
    m.elementwise(n, data_pos, |v| (1.0 / v, 0.0))
}

/// `Cast` to FLOAT of a float tensor (skl2onnx starts with one): nothing.
fn cast(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let to = n.int("to", 0);
    if to != tract_onnx::pb::tensor_proto::DataType::Float as i64 {
        return Err(n.err(format!(
            "Cast to element type {} (only FLOAT, a no-op on float tensors)",
            super::dtype_name(to as i32)
        )));
    }
    m.notes.push(format!("dropped Cast `{}` (to FLOAT)", n.label));
    Ok(())
}

/// `ReduceMean` over the spatial axes of an NCHW tensor (PyTorch's `AdaptiveAvgPool2d(1)` and
/// `x.mean((2, 3))`): global average pooling, then a flatten if `keepdims = 0`.
fn reduce_mean(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let axes = match m.ci64(n, 1)? {
        Some(a) => a,
        None => n.ints("axes").unwrap_or_default(),
    };
    let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    axes.sort_unstable();
    let [h, w, _] = match m.nchw(n) {
        Ok(s) if axes == [2, 3] => s,
        _ => {
            return Err(n.err(format!(
                "only a mean over the spatial axes [2, 3] of an NCHW tensor is supported (axes {axes:?}, shape {:?})",
                m.dims()
            )))
        }
    };
    push_pool(m, n, false, [h, w], [h, w])?;
    if n.int("keepdims", 1) == 0 {
        m.flatten(n)?;
    }
    Ok(())
}

/// Shape arithmetic (`Shape`, `Gather`, `Concat`, `Unsqueeze`) is evaluated before the walk;
/// reaching one here means it computes on data.
fn shape_only(_: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    Err(n.err(format!(
        "{} is only supported in shape arithmetic starting at a Shape node and feeding a Reshape \
         (e.g. x.view(x.size(0), -1))",
        n.op()
    )))
}

fn flatten(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let rank = m.dims().len() as i64;
    let axis = n.int("axis", 1);
    if (if axis < 0 { axis + rank } else { axis }) != 1 {
        return Err(n.err(format!("axis {axis} is not supported (only 1)")));
    }
    m.flatten(n)
}

fn squeeze(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let axes = match m.ci64(n, 1)? {
        Some(a) => Some(a),
        None => n.ints("axes"),
    };
    let mut axes: Vec<i64> = axes.unwrap_or_default().iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    axes.sort_unstable();
    match m.cur {
        Cur::Spatial { h: 1, w: 1, order: Order::Nchw, .. } if axes == [2, 3] => m.flatten(n),
        _ => Err(n.err(format!(
            "only squeezing the 1x1 spatial axes [2, 3] of an NCHW tensor is supported (axes {axes:?}, shape {:?})",
            m.dims()
        ))),
    }
}

fn transpose(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    let rank = m.dims().len();
    let perm = n.ints("perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
    let identity: Vec<i64> = (0..rank as i64).collect();
    match (m.cur, perm.as_slice()) {
        (_, p) if p == identity.as_slice() => {}
        (Cur::Spatial { h, w, c, order: Order::Nhwc }, [0, 3, 1, 2]) => {
            m.cur = Cur::Spatial { h, w, c, order: Order::Nchw }
        }
        (Cur::Spatial { h, w, c, order: Order::Nchw }, [0, 2, 3, 1]) => {
            m.cur = Cur::Spatial { h, w, c, order: Order::Nhwc }
        }
        _ => {
            return Err(
                n.err(format!("perm {perm:?} on shape {:?}: only NHWC <-> NCHW conversions are supported", m.dims()))
            )
        }
    }
    m.foldable = None;
    Ok(())
}

fn softmax(m: &mut Mapper<'_>, n: &Node<'_>, _: usize) -> Result<(), OnnxError> {
    m.flat(n)?;
    let axis = n.int("axis", if m.opset >= 13 { -1 } else { 1 });
    if axis != 1 && axis != -1 {
        return Err(n.err(format!("axis {axis} is not supported (only the class axis 1 / -1)")));
    }
    m.output = if n.op() == "Softmax" { OutputTransform::Softmax } else { OutputTransform::LogSoftmax };
    m.notes.push(format!("dropped the final {} `{}` (the network outputs logits)", n.op(), n.label));
    Ok(())
}

fn clip(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let (lo, hi) = if n.attr("min").is_some() || n.attr("max").is_some() {
        (n.float("min").unwrap_or(f32::NEG_INFINITY), n.float("max").unwrap_or(f32::INFINITY))
    } else {
        (m.scalar(n, 1)?.unwrap_or(f32::NEG_INFINITY), m.scalar(n, 2)?.unwrap_or(f32::INFINITY))
    };
    let l = if lo == 0.0 && hi >= f32::MAX {
        LayerSpec::Relu
    } else if lo == 0.0 && hi == 6.0 {
        LayerSpec::Relu6
    } else {
        return Err(n.err(format!("Clip(min {lo}, max {hi}) is neither ReLU (0, inf) nor ReLU6 (0, 6)")));
    };
    m.push(n, l, LayerParams::default())
}

fn conv(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let [h, w, c] = m.nchw(n)?;
    let (wd, wv) = m.cf32_req(n, 1, "W")?;
    if wd.len() != 4 {
        return Err(n.err(format!("weight dims {wd:?}: only 2-D convolutions are supported")));
    }
    let [o, ipg, kh, kw] = [wd[0] as usize, wd[1] as usize, wd[2] as usize, wd[3] as usize];
    n.check_dilations()?;
    if let Some(ks) = n.ints("kernel_shape") {
        if ks != [kh as i64, kw as i64] {
            return Err(n.err(format!("kernel_shape {ks:?} does not match the weight dims {wd:?}")));
        }
    }
    let stride = n.pair("strides", Some([1, 1]))?;
    let padding = n.pads([h, w], [kh, kw], stride)?;
    let bias = match m.cf32(n, 2)? {
        None => vec![0.0; o],
        Some((_, b)) if b.len() == o => b,
        Some((d, _)) => return Err(n.err(format!("bias dims {d:?}, expected [{o}]"))),
    };
    let group = n.int("group", 1);
    if group == 1 {
        if ipg != c {
            return Err(n.err(format!("weight dims {wd:?} expect {ipg} input channels, the input has {c}")));
        }
        let mut wt = vec![0.0f32; wv.len()];
        for oc in 0..o {
            for ci in 0..c {
                for y in 0..kh {
                    for x in 0..kw {
                        wt[((oc * kh + y) * kw + x) * c + ci] = wv[((oc * c + ci) * kh + y) * kw + x];
                    }
                }
            }
        }
        let l = LayerSpec::Conv2d { filters: o, kernel: [kh, kw], stride, padding };
        m.push(n, l, LayerParams { weights: wt, bias })
    } else if group as usize == c && ipg == 1 && o == c {
        let mut wt = vec![0.0f32; wv.len()];
        for ch in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    wt[(y * kw + x) * c + ch] = wv[(ch * kh + y) * kw + x];
                }
            }
        }
        let l = LayerSpec::DepthwiseConv2d { kernel: [kh, kw], stride, padding };
        m.push(n, l, LayerParams { weights: wt, bias })
    } else {
        Err(n.err(format!(
            "grouped convolution (group {group}, {c} input channels, {o} outputs): only group 1 and depthwise \
             (group = input channels = output channels) are supported"
        )))
    }
}

fn pool(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let [h, w, _] = m.nchw(n)?;
    let kernel = n.pair("kernel_shape", None)?;
    let stride = n.pair("strides", Some([1, 1]))?;
    n.check_dilations()?;
    let pads = n.pads([h, w], kernel, stride)?;
    if pads != [0; 4] {
        return Err(n.err(format!("padded pooling (pads {pads:?}) is not supported")));
    }
    if n.int("ceil_mode", 0) != 0
        && !(h.saturating_sub(kernel[0]).is_multiple_of(stride[0])
            && w.saturating_sub(kernel[1]).is_multiple_of(stride[1]))
    {
        return Err(n.err("ceil_mode = 1 changes the output size here (only floor rounding is supported)"));
    }
    push_pool(m, n, n.op() == "MaxPool", kernel, stride)
}

fn batchnorm(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let li = m.foldable.ok_or_else(|| {
        n.err("BatchNormalization must directly follow a Conv, Gemm or MatMul so it can be folded into it")
    })?;
    if n.int("training_mode", 0) != 0 {
        return Err(n.err("training_mode = 1 is not supported"));
    }
    if n.int("spatial", 1) != 1 {
        return Err(n.err("spatial = 0 is not supported"));
    }
    let c = m.channels();
    let get = |i: usize, what: &str| -> Result<Vec<f32>, OnnxError> {
        let (d, v) = m.cf32_req(n, i, what)?;
        if v.len() != c {
            return Err(n.err(format!("{what} has dims {d:?}, expected [{c}]")));
        }
        Ok(v)
    };
    let gamma = get(1, "scale")?;
    let beta = get(2, "B")?;
    let mean = get(3, "mean")?;
    let var = get(4, "var")?;
    let eps = n.float("epsilon").unwrap_or(1e-5) as f64;
    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32).collect();
    let shift: Vec<f32> =
        beta.iter().zip(&mean).zip(&scale).map(|((&b, &m), &s)| (b as f64 - m as f64 * s as f64) as f32).collect();
    m.fold(li, &scale, &shift);
    m.notes.push(format!("folded BatchNormalization `{}` into layer {li} ({})", n.label, m.layers[li]));
    Ok(())
}

fn gemm(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let len = m.flat(n)?;
    if n.int("transA", 0) != 0 {
        return Err(n.err("transA = 1 is not supported"));
    }
    let trans_b = n.int("transB", 0) != 0;
    let alpha = n.float("alpha").unwrap_or(1.0);
    let beta = n.float("beta").unwrap_or(1.0);
    let (bd, bv) = m.cf32_req(n, 1, "B")?;
    if bd.len() != 2 {
        return Err(n.err(format!("B has dims {bd:?}, expected 2-D")));
    }
    let (units, k) = if trans_b { (bd[0] as usize, bd[1] as usize) } else { (bd[1] as usize, bd[0] as usize) };
    if k != len {
        return Err(n.err(format!("B has dims {bd:?} (transB {}) but the input has {len} features", trans_b as u8)));
    }
    let mut wt = vec![0.0f32; units * k];
    for u in 0..units {
        for j in 0..k {
            wt[u * k + j] = alpha * if trans_b { bv[u * k + j] } else { bv[j * units + u] };
        }
    }
    let bias = match m.cf32(n, 2)? {
        None => vec![0.0; units],
        Some((d, v)) => {
            let ok = d.len() <= 2 && (v.len() == units && d.last() == Some(&(units as i64)) || v.len() == 1);
            if !ok {
                return Err(n.err(format!("C has dims {d:?}, expected [{units}] or a scalar")));
            }
            (0..units).map(|u| beta * v[if v.len() == 1 { 0 } else { u }]).collect()
        }
    };
    m.dense(n, wt, bias, units)
}

fn reshape(m: &mut Mapper<'_>, n: &Node<'_>, _data: usize) -> Result<(), OnnxError> {
    let shape = m.ci64(n, 1)?.ok_or_else(|| n.err("missing input 1 (shape)"))?;
    let allow_zero = n.int("allowzero", 0) != 0;
    let in_dims = m.dims();
    let total: usize = in_dims.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        out.push(match s {
            0 if !allow_zero => *in_dims.get(i).ok_or_else(|| n.err(format!("shape {shape:?}: 0 at axis {i}")))?,
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            s if s > 0 => s as usize,
            _ => return Err(n.err(format!("invalid shape {shape:?}"))),
        });
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(n.err(format!("cannot reshape {in_dims:?} to {shape:?}")));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(n.err(format!("cannot reshape {in_dims:?} to {shape:?}")));
    }
    if out == in_dims {
        return Ok(());
    }
    let b = m.batch;
    match (m.cur, out.as_slice()) {
        (_, [ob, _]) if *ob == b => m.flatten(n),
        (Cur::Flat { len }, [ob, c, 1, 1]) if *ob == b && *c == len && m.pending_perm.is_none() => {
            m.cur = Cur::Spatial { h: 1, w: 1, c: len, order: Order::Nchw };
            m.foldable = None;
            Ok(())
        }
        (Cur::Flat { len }, [ob, 1, 1, c]) if *ob == b && *c == len && m.pending_perm.is_none() => {
            m.cur = Cur::Spatial { h: 1, w: 1, c: len, order: Order::Nhwc };
            m.foldable = None;
            Ok(())
        }
        _ => Err(n.err(format!("Reshape from {in_dims:?} to {out:?} is not a flatten to [N, -1]"))),
    }
}

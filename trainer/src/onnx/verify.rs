//! The tract-onnx cross-check of an import, and [`tract_forward`].

use std::borrow::Cow;

use prost::Message;
use tract_onnx::pb;

use super::import::graph_input;
use super::proto::Consts;
use super::{ChannelAffine, InputLayout, OnnxError, OutputTransform, VERIFY_TOLERANCE};
use crate::nn::{Network, Tensor};
use crate::rng::Rng;

mod tract_run {
    use tract_onnx::prelude::*;

    /// An optimised tract plan with a fixed input shape.
    pub(super) struct Runner {
        plan: std::sync::Arc<TypedRunnableModel>,
        shape: Vec<usize>,
    }

    impl Runner {
        pub(super) fn load(bytes: &[u8], shape: &[usize]) -> Result<Runner, String> {
            let run = || -> TractResult<std::sync::Arc<TypedRunnableModel>> {
                tract_onnx::onnx()
                    .model_for_read(&mut &bytes[..])?
                    .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?
                    .into_optimized()?
                    .into_runnable()
            };
            Ok(Runner { plan: run().map_err(|e| format!("{e:#}"))?, shape: shape.to_vec() })
        }

        pub(super) fn run(&self, data: &[f32]) -> Result<Vec<f32>, String> {
            let run = || -> TractResult<Vec<f32>> {
                let t = Tensor::from_shape(&self.shape, data)?;
                let out = self.plan.run(tvec!(t.into_tvalue()))?;
                let v = out[0].to_plain_array_view::<f32>()?.iter().copied().collect();
                Ok(v)
            };
            run().map_err(|e| format!("{e:#}"))
        }
    }
}

/// Deterministic probe images in `[0, 1]` on the 8-bit grid: noise, a smooth gradient, and
/// sparse strokes.
fn probe_images(shape: [usize; 3]) -> Tensor {
    let len: usize = shape.iter().product();
    let mut rng = Rng::new(0x0011_ca4e);
    let mut data = Vec::with_capacity(3 * len);
    data.extend((0..len).map(|_| rng.below(256) as f32 / 255.0));
    data.extend((0..len).map(|i| (i * 255 / len.max(1)) as f32 / 255.0));
    data.extend((0..len).map(|_| if rng.below(5) == 0 { rng.below(256) as f32 / 255.0 } else { 0.0 }));
    Tensor::new([3, shape[0], shape[1], shape[2]], data).expect("probe shape")
}

pub(super) fn verify(
    bytes: &[u8],
    net: &Network,
    layout: InputLayout,
    batch: usize,
    transform: OutputTransform,
    input_norm: Option<&ChannelAffine>,
) -> Result<f32, OnnxError> {
    let shape = net.input_shape();
    let runner = tract_run::Runner::load(bytes, &layout.shape(batch, shape)).map_err(OnnxError::Tract)?;
    let x = probe_images(shape);
    let ours = net.forward(&x);
    let k = net.classes();
    let mut max_diff = 0.0f32;
    let mut scale = 1.0f32;
    for i in 0..x.n() {
        // The file takes the normalised image (the network folds the normalisation in).
        let img = match input_norm {
            Some(a) => a.apply(x.sample(i)),
            None => x.sample(i).to_vec(),
        };
        let one = layout.convert(&img, shape);
        let data: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        let out = runner.run(&data).map_err(OnnxError::Tract)?;
        if out.len() != batch * k {
            return Err(OnnxError::Tract(format!(
                "the file outputs {} values for a batch of {batch}; the network has {k} classes",
                out.len()
            )));
        }
        let mine = transform.apply(ours.sample(i));
        for (a, b) in out[..k].iter().zip(&mine) {
            let d = (a - b).abs();
            max_diff = if d.is_nan() { f32::INFINITY } else { max_diff.max(d) };
            scale = scale.max(a.abs());
        }
    }
    let tolerance = VERIFY_TOLERANCE * scale;
    if max_diff > tolerance {
        return Err(OnnxError::Mismatch { max_abs_diff: max_diff, tolerance });
    }
    Ok(max_diff)
}

/// Runs an ONNX file through tract-onnx (optimised plan) on an NHWC batch `x`, converting
/// each image to `layout` (e.g. [`InputLayout::Nchw`] for [`export_onnx`](super::export_onnx) files) and
/// running one image at a time (or the file's fixed batch size, repeating the image).
/// Returns the file's first output per image as `[n, 1, 1, k]`.
pub fn tract_forward(bytes: &[u8], layout: InputLayout, x: &Tensor) -> Result<Tensor, OnnxError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let consts: Consts = graph.initializer.iter().map(|t| (t.name.clone(), Cow::Borrowed(t))).collect();
    let batch = graph_input(graph, &consts)?.dims.first().copied().flatten().unwrap_or(1);
    let shape = x.sample_shape();
    let runner = tract_run::Runner::load(bytes, &layout.shape(batch, shape)).map_err(OnnxError::Tract)?;
    let mut out = Vec::new();
    let mut k = 0;
    for i in 0..x.n() {
        let one = layout.convert(x.sample(i), shape);
        let data: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        let y = runner.run(&data).map_err(OnnxError::Tract)?;
        k = y.len() / batch;
        out.extend_from_slice(&y[..k]);
    }
    Ok(Tensor::new([x.n(), 1, 1, k], out).expect("consistent output lengths"))
}

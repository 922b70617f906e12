//! Many images at once on the host (feature `std`): [`Model::run_batch`].
//!
//! The same layers, kernels and arithmetic as [`Model::run`], in the same order, so every
//! image's logits are bit-identical to a single run (the tests check it). What changes is
//! the loop nest: each layer runs over the whole batch before the next starts, and dense
//! layers are one int8 matrix product ([`crate::kernels::dense_batch`]) that reads each
//! weight row once for several images instead of once per image; so are convolutions on a
//! CPU with AVX-VNNI ([`crate::kernels::conv2d_batch`], over every output pixel of the
//! batch). Buffers are allocated per call (two activation planes of `n` images), which is
//! why this lives behind `std`: the device path stays [`Model::run`] on a caller's arena.

use std::vec::Vec;

use crate::format::{Model, OpKind};
use crate::kernels::{self, Output};
use crate::model::{run_layer, run_pool, window, RunError};
use crate::quant;

impl Model<'_> {
    /// Runs `classes.len()` images. `pixels` holds them one after another (each
    /// [`Model::input_len`] raw 8-bit pixels, NHWC), `logits` receives their logits one
    /// after another ([`Model::num_classes`] each) and `classes[i]` the class of image `i`
    /// (argmax, ties to the lowest index). Identical, image for image, to [`Model::run`].
    pub fn run_batch(&self, pixels: &[u8], logits: &mut [i32], classes: &mut [usize]) -> Result<(), RunError> {
        let (n, n_in, k) = (classes.len(), self.input_len(), self.num_classes());
        if pixels.len() != n.saturating_mul(n_in) {
            return Err(RunError::InputLength { expected: n.saturating_mul(n_in), got: pixels.len() });
        }
        if logits.len() != n.saturating_mul(k) {
            return Err(RunError::LogitsLength { expected: n.saturating_mul(k), got: logits.len() });
        }
        if n == 0 {
            return Ok(());
        }
        let mut cur: Vec<u8> = pixels.iter().map(|&p| quant::pixel_to_input(p) as u8).collect();
        let mut next: Vec<u8> = Vec::new();
        let mut cur_len = n_in;
        for layer in self.layers() {
            let op = layer.op();
            if op == OpKind::Flatten {
                continue;
            }
            let w = kernels::Weights::new(layer.weight_bytes(), layer.input_zero_point(), &layer);
            if layer.outputs_logits() {
                if op == OpKind::Dense {
                    kernels::dense_batch(&cur, n, &w, &mut Output::Logits(logits));
                } else {
                    for (x, z) in cur.chunks_exact(cur_len).zip(logits.chunks_exact_mut(k)) {
                        run_layer(&layer, x, Output::Logits(z));
                    }
                }
                break;
            }
            let out_len = layer.output_shape().len();
            next.clear();
            next.resize(n * out_len, 0);
            let (zero_point, (min, max)) = (layer.output_zero_point(), layer.clamp());
            if op == OpKind::Dense {
                kernels::dense_batch(&cur, n, &w, &mut Output::Act { buf: &mut next, zero_point, min, max });
            } else if op == OpKind::Conv2d {
                let out = &mut Output::Act { buf: &mut next, zero_point, min, max };
                kernels::conv2d_batch(&window(&layer), &cur, n, &w, out);
            } else {
                for (x, y) in cur.chunks_exact(cur_len).zip(next.chunks_exact_mut(out_len)) {
                    if op.has_weights() {
                        run_layer(&layer, x, Output::Act { buf: y, zero_point, min, max });
                    } else {
                        run_pool(&layer, x, y);
                    }
                }
            }
            core::mem::swap(&mut cur, &mut next);
            cur_len = out_len;
        }
        for (c, z) in classes.iter_mut().zip(logits.chunks_exact(k)) {
            *c = quant::argmax(z);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
    use crate::{Model, RunError, Shape};
    use proptest::prelude::*;

    /// Every image of a batch, run alone.
    fn one_by_one(model: &Model<'_>, pixels: &[u8]) -> (Vec<i32>, Vec<usize>) {
        let (n_in, k) = (model.input_len(), model.num_classes());
        let mut arena = vec![0u8; model.arena_size()];
        let (mut logits, mut classes) = (vec![0i32; pixels.len() / n_in * k], vec![]);
        for (x, z) in pixels.chunks_exact(n_in).zip(logits.chunks_exact_mut(k)) {
            classes.push(model.run(x, &mut arena, z).unwrap());
        }
        (logits, classes)
    }

    fn batch(model: &Model<'_>, pixels: &[u8]) -> (Vec<i32>, Vec<usize>) {
        let n = pixels.len() / model.input_len();
        let (mut logits, mut classes) = (vec![0i32; n * model.num_classes()], vec![0usize; n]);
        model.run_batch(pixels, &mut logits, &mut classes).unwrap();
        (logits, classes)
    }

    fn layer() -> impl Strategy<Value = SynthLayer> {
        prop_oneof![
            (1usize..40, any::<bool>()).prop_map(|(units, relu)| SynthLayer::Dense { units, relu }),
            (1usize..12, 1usize..4, 1usize..3, 0usize..2, any::<bool>())
                .prop_map(|(filters, k, s, p, relu)| SynthLayer::Conv { filters, k, s, p: p.min(k - 1), relu }),
            (1usize..4, 1usize..3, any::<bool>()).prop_map(|(k, s, relu)| SynthLayer::Depthwise {
                k,
                s,
                p: k / 2,
                relu
            }),
            Just(SynthLayer::MaxPool { k: 2, s: 2 }),
            Just(SynthLayer::AvgPool { k: 2, s: 2 }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random models (dense stacks, convolutions, depthwise, pooling, in any order the
        /// shapes allow) and random batches of 1-9 images: the batch gives every image's
        /// logits and class exactly as `run` does.
        #[test]
        fn batch_is_run_image_by_image(
            layers in prop::collection::vec(layer(), 0..4),
            seed in any::<u64>(),
            n in 1usize..10,
            pix_seed in any::<u64>(),
        ) {
            // Convolutions and pools first (they need a spatial input), then dense layers.
            let (mut spatial, dense): (Vec<_>, Vec<_>) =
                layers.into_iter().partition(|l| !matches!(l, SynthLayer::Dense { .. }));
            spatial.truncate(2);
            let mut all = spatial.clone();
            if !dense.is_empty() {
                all.push(SynthLayer::Flatten);
                all.extend(dense);
            }
            let repr = random_model(Shape::new(9, 8, 2), 7, &all, seed);
            let blob = repr.emit();
            let model = Model::parse(&blob).unwrap();
            let mut rng = crate::rng::SplitMix64(pix_seed);
            let pixels: Vec<u8> = (0..n * model.input_len()).map(|_| rng.next_u64() as u8).collect();
            prop_assert_eq!(batch(&model, &pixels), one_by_one(&model, &pixels));
        }
    }

    /// The presets' shapes (long dense rows: several 16-wide blocks and a tail), batches
    /// around the kernel's image and row blocks.
    #[test]
    fn presets_batch_equals_single_runs() {
        for repr in [random_mlp(3), random_cnn_s(4)] {
            let blob = repr.emit();
            let model = Model::parse(&blob).unwrap();
            for n in [1, 2, 3, 4, 5, 7, 13] {
                let pixels: Vec<u8> = (0..n * model.input_len()).map(|i| (i * 37 % 251) as u8).collect();
                assert_eq!(batch(&model, &pixels), one_by_one(&model, &pixels), "n = {n}");
            }
        }
    }

    /// Wrong buffer sizes are errors naming both sizes; an empty batch is fine.
    #[test]
    fn buffer_sizes_are_checked() {
        let blob = random_mlp(1).emit();
        let model = Model::parse(&blob).unwrap();
        let (n_in, k) = (model.input_len(), model.num_classes());
        let px = vec![0u8; 2 * n_in];
        let (mut z, mut c) = (vec![0i32; 2 * k], vec![0usize; 2]);
        assert_eq!(
            model.run_batch(&px[1..], &mut z, &mut c),
            Err(RunError::InputLength { expected: 2 * n_in, got: 2 * n_in - 1 })
        );
        assert_eq!(
            model.run_batch(&px, &mut z[1..], &mut c),
            Err(RunError::LogitsLength { expected: 2 * k, got: 2 * k - 1 })
        );
        assert_eq!(model.run_batch(&[], &mut [], &mut []), Ok(()));
        assert_eq!(model.run_batch(&px, &mut z, &mut c), Ok(()));
    }
}

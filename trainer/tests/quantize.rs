//! The trainer's integer simulation is bit-exact with iocane-runtime, for every preset, on
//! real images and random inputs; quantization keeps a trained model's accuracy.

use iocane_runtime::Model;
use iocane_trainer::data::{load, DatasetSpec};
use iocane_trainer::nn::{ArchSpec, Network, PRESETS};
use iocane_trainer::quantize::{quantize, IntSim};

#[test]
fn int_simulation_is_bit_exact_with_the_runtime_for_every_preset() {
    let splits = load(&DatasetSpec::MnistSmall).unwrap();
    let test = splits.test.take(1000);
    let mut rng = iocane_runtime::emit::SplitMix64(99);
    for (k, name) in PRESETS.iter().enumerate() {
        let spec = ArchSpec::preset(name, [28, 28, 1], 10).unwrap();
        let net = Network::new(spec, 7 + k as u64).unwrap();
        let repr = quantize(&net, &splits.train, 200, vec![], vec![]).unwrap();
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        let sim = IntSim::new(&repr);
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; 10];
        let mut images: Vec<Vec<u8>> = (0..test.len()).map(|i| test.image(i).to_vec()).collect();
        images.extend((0..50).map(|_| (0..784).map(|_| rng.range(0, 255) as u8).collect()));
        images.push(vec![0; 784]);
        images.push(vec![255; 784]);
        let mut distinct = std::collections::BTreeSet::new();
        for img in &images {
            model.run(img, &mut arena, &mut logits).unwrap();
            let want = sim.logits(img);
            assert_eq!(logits, want, "{name}: runtime and trainer simulation differ");
            distinct.insert(logits.clone());
        }
        // The comparison is not vacuous: outputs vary with the input.
        assert!(distinct.len() > images.len() / 2, "{name}: only {} distinct outputs", distinct.len());
    }
}

#[test]
fn quantized_model_keeps_the_float_models_decisions() {
    // Train a tiny model briefly, quantize, and compare float and int8 accuracy on real data.
    use iocane_trainer::train::{train, Method, RunOptions, TrainConfig};
    let splits = load(&DatasetSpec::MnistSmall).unwrap();
    let cfg = TrainConfig {
        dataset: "mnist-small".into(),
        arch: ArchSpec::preset("cnn-s", [28, 28, 1], 10).unwrap(),
        method: Method::Natural,
        eps: 0.0,
        steps: 1,
        step_size: None,
        epochs: 2,
        batch_size: 64,
        optimizer: iocane_trainer::nn::OptimizerConfig::adam(),
        schedule: iocane_trainer::nn::LrSchedule::Constant { lr: 3e-3 },
        warmup_epochs: 0,
        ramp_epochs: 0,
        seed: 3,
        eval_samples: 200,
        eval_steps: 1,
        eval_restarts: 1,
        train_samples: 3000,
        qat: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let m = train(&cfg, &splits.train, &splits.test, dir.path(), &RunOptions::default()).unwrap();
    let ck = iocane_trainer::checkpoint::load(&dir.path().join("model.ckpt")).unwrap();
    let repr = quantize(&ck.network, &splits.train, 500, vec![], vec![]).unwrap();
    let blob = repr.emit();
    let model = Model::parse(&blob).unwrap();
    let mut arena = vec![0u8; model.arena_size()];
    let mut logits = vec![0i32; 10];
    let n = 1000;
    let (x, labels) = iocane_trainer::train::batch(&splits.test, &(0..n).collect::<Vec<_>>());
    let float_pred = ck.network.predict(&x);
    let (mut agree, mut int_correct) = (0, 0);
    for i in 0..n {
        let c = model.run(splits.test.image(i), &mut arena, &mut logits).unwrap();
        agree += usize::from(c == float_pred[i]);
        int_correct += usize::from(c == labels[i]);
    }
    let float_acc = float_pred.iter().zip(&labels).filter(|(a, b)| a == b).count() as f32 / n as f32;
    let int_acc = int_correct as f32 / n as f32;
    assert!(m.final_eval.unwrap().clean_acc > 0.85);
    assert!(agree as f32 / n as f32 > 0.97, "int8 agrees with float on only {agree} of {n}");
    assert!((float_acc - int_acc).abs() < 0.02, "float {float_acc} vs int8 {int_acc}");
}

#[test]
fn fake_quant_weights_are_exactly_representable() {
    use iocane_trainer::quantize::fake_quant_weights;
    let splits = load(&DatasetSpec::MnistSmall).unwrap();
    for name in PRESETS {
        let net = Network::new(ArchSpec::preset(name, [28, 28, 1], 10).unwrap(), 5).unwrap();
        let fq = fake_quant_weights(&net);
        assert_ne!(fq.params(), net.params(), "{name}: fake quantization changed nothing");
        let a = quantize(&net, &splits.train, 100, vec![], vec![]).unwrap();
        let b = quantize(&fq, &splits.train, 100, vec![], vec![]).unwrap();
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!(x.weights, y.weights, "{name}: int8 weights change under fake quantization");
        }
        // Idempotent.
        assert_eq!(fake_quant_weights(&fq).params(), fq.params());
    }
}

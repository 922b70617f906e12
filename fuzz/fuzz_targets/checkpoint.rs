//! Load arbitrary bytes as a safetensors checkpoint. Nothing may panic or allocate from a
//! length field; a checkpoint that loads must save to bytes that load back to the same
//! network, and run on one input of its shape.
//!
//! Under `--cfg fuzzing` the loader computes but does not enforce the checksum, so that the
//! fuzzer reaches the structural checks behind it.
#![no_main]
use iocane_trainer::checkpoint;
use iocane_trainer::nn::Tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ck) = checkpoint::from_bytes(data) else { return };
    let again = checkpoint::to_bytes(&ck);
    let ck2 = checkpoint::from_bytes(&again).expect("a saved checkpoint loads");
    assert_eq!(ck2.network.spec(), ck.network.spec());
    assert_eq!(ck2.network.params(), ck.network.params());
    assert_eq!(ck2.epoch, ck.epoch);
    // Running is only a resource question beyond this (the architecture limits allow networks
    // that take seconds and gigabytes per sample): keep the fuzzer fast.
    let spec = ck.network.spec();
    let values: usize =
        spec.shapes().expect("a loaded spec is valid").iter().map(|s| s.iter().product::<usize>()).sum();
    if spec.mac_count() > 1 << 20 || values > 1 << 20 {
        return;
    }
    let [h, w, c] = ck.network.input_shape();
    let x = Tensor::new([1, h, w, c], vec![0.5; h * w * c]).expect("tensor");
    let logits = ck.network.try_forward(&x).expect("input of the network's shape");
    assert_eq!(logits.data.len(), ck.network.classes());
    let wrong = Tensor::new([1, h, w, c + 1], vec![0.5; h * w * (c + 1)]).expect("tensor");
    assert!(ck.network.try_forward(&wrong).is_err(), "a wrong input shape must be an error");
});

//! Parse arbitrary bytes; if they form a valid model, run it on three inputs and compare the
//! logits with the plain i64 reference runner (differential: on an AVX2 build this checks the
//! vector kernels), then check the emit -> parse round trip. Nothing may panic, and a valid
//! model must run.
#![no_main]
use iocane_runtime::emit::ModelRepr;
use iocane_runtime::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the time, repair length and CRC so the fuzzer reaches the structural validator.
    let mut owned = data.to_vec();
    if owned.len() >= 64 && owned[0] & 1 == 1 {
        owned[0..4].copy_from_slice(b"ICNM");
        let n = owned.len() as u32;
        owned[8..12].copy_from_slice(&n.to_le_bytes());
        let crc = iocane_runtime::format::blob_crc(&owned);
        owned[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &owned[..]] {
        if let Ok(m) = Model::parse(bytes) {
            let mut arena = vec![0u8; m.arena_size()];
            let mut logits = vec![0i32; m.num_classes()];
            for fill in [0u8, 127, 255] {
                // A ramp over the fill value, so that windows see varied pixels.
                let px: Vec<u8> = (0..m.input_len()).map(|i| fill.wrapping_add((i * 37) as u8)).collect();
                m.run(&px, &mut arena, &mut logits).expect("validated model must run");
                assert_eq!(
                    logits,
                    iocane_runtime::kernels::reference::run_model(&m, &px),
                    "kernels differ from the reference"
                );
            }
            let again = ModelRepr::from_model(&m).emit();
            let m2 = Model::parse(&again).expect("re-emitted model must parse");
            assert_eq!(m2.arena_size(), m.arena_size());
        }
    }
});

//! The blob format: emit/parse round trips, and rejection of every corruption without a panic.

use iocane_runtime::emit::ModelRepr;
use iocane_runtime::format::{blob_crc, field, FormatError, HEADER_LEN};
use iocane_runtime::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
use iocane_runtime::{Model, Shape};
use proptest::prelude::*;

fn tiny() -> Vec<u8> {
    random_model(
        Shape::new(6, 6, 1),
        3,
        &[SynthLayer::Conv { filters: 2, k: 3, s: 2, p: 1, relu: true }, SynthLayer::MaxPool { k: 2, s: 1 }],
        7,
    )
    .emit()
}

fn fix_crc(b: &mut [u8]) {
    let crc = blob_crc(b);
    b[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Parse, and if accepted, run on a few inputs: nothing may panic.
fn parse_and_run(b: &[u8]) -> Result<(), FormatError> {
    let m = Model::parse(b)?;
    let mut arena = vec![0u8; m.arena_size()];
    let mut logits = vec![0i32; m.num_classes()];
    for fill in [0u8, 128, 255] {
        let px = vec![fill; m.input_len()];
        m.run(&px, &mut arena, &mut logits).expect("validated model runs");
    }
    let _ = (m.macs(), m.param_count(), m.label(0), m.metadata());
    Ok(())
}

#[test]
fn emit_parse_round_trip_is_exact() {
    for repr in [random_mlp(1), random_cnn_s(2)] {
        let blob = repr.emit();
        let m = Model::parse(&blob).unwrap();
        let back = ModelRepr::from_model(&m);
        assert_eq!(back, repr);
        assert_eq!(back.emit(), blob);
        assert_eq!(m.label(3), Some("class 3"));
        assert_eq!(m.metadata_value("source"), Some("random_model"));
        assert_eq!(m.input_shape(), Shape::new(28, 28, 1));
    }
    let mlp = Model::parse(&random_mlp(1).emit()).unwrap().macs();
    assert_eq!(mlp, 784 * 64 + 64 * 32 + 32 * 10);
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let blob = tiny();
    assert!(parse_and_run(&blob).is_ok());
    for i in 0..blob.len() * 8 {
        let mut b = blob.clone();
        b[i / 8] ^= 1 << (i % 8);
        assert!(Model::parse(&b).is_err(), "bit {i} flip accepted");
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let blob = tiny();
    for n in 0..blob.len() {
        assert!(Model::parse(&blob[..n]).is_err(), "truncation to {n} accepted");
    }
    let mut longer = blob.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(Model::parse(&longer), Err(FormatError::LengthMismatch { .. })));
}

#[test]
fn structural_corruption_with_valid_crc_is_caught_by_validation() {
    // Change each header / table / layer-record byte to several values, then repair the CRC:
    // the validator must reject or accept without panicking, and accepted models must run.
    let blob = tiny();
    let m = Model::parse(&blob).unwrap();
    let records_end = HEADER_LEN + 4 * 12 + m.layer_count() * 64;
    let mut rejected = 0;
    for i in 0..records_end.min(blob.len()) {
        if (field::CRC..field::CRC + 4).contains(&i) {
            continue;
        }
        for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xff, blob[i].wrapping_add(1), blob[i].wrapping_sub(1)] {
            let mut b = blob.clone();
            b[i] = v;
            fix_crc(&mut b);
            if parse_and_run(&b).is_err() {
                rejected += 1;
            }
        }
    }
    assert!(rejected > 1000, "only {rejected} corruptions rejected");
}

#[test]
fn specific_errors_are_reported() {
    let blob = tiny();
    let mut b = blob.clone();
    b[0] = b'X';
    assert_eq!(Model::parse(&b).unwrap_err(), FormatError::BadMagic);
    let mut b = blob.clone();
    b[field::VERSION] = 9;
    assert!(matches!(Model::parse(&b), Err(FormatError::UnsupportedVersion { found: 9 })));
    let mut b = blob.clone();
    let n = b.len();
    b[n - 1] ^= 0x40;
    assert!(matches!(Model::parse(&b), Err(FormatError::BadCrc { .. })));
    let mut b = blob.clone();
    b[field::ARENA] = b[field::ARENA].wrapping_add(1);
    fix_crc(&mut b);
    assert!(matches!(Model::parse(&b), Err(FormatError::ArenaMismatch { .. })));
    assert!(matches!(Model::parse(&[]), Err(FormatError::TooShort { len: 0 })));
    // Messages are human-readable.
    assert!(FormatError::BadMagic.to_string().contains("ICNM"));
}

#[test]
fn weight_minus_128_and_overflow_are_rejected() {
    let mut repr = random_mlp(5);
    repr.layers[1].weights[0] = -128;
    assert!(matches!(Model::parse(&repr.emit()), Err(FormatError::BadLayer { layer: 1, .. })));
    let mut repr = random_mlp(5);
    repr.layers[1].bias[0] = i32::MAX - 10;
    assert!(matches!(
        Model::parse(&repr.emit()),
        Err(FormatError::BadLayer { layer: 1, reason: iocane_runtime::LayerFault::AccumulatorOverflow })
    ));
    let mut repr = random_mlp(5);
    repr.layers[2].multiplier[3] = 0;
    assert!(Model::parse(&repr.emit()).is_err());
    let mut repr = random_mlp(5);
    repr.layers[2].shift[3] = 31;
    assert!(Model::parse(&repr.emit()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_and_run(&b);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..600),
        magic_ok in any::<bool>(),
    ) {
        let mut b = tiny()[..HEADER_LEN].to_vec();
        b.extend_from_slice(&tail);
        if !magic_ok { b[1] = 0; }
        let n = b.len() as u32;
        b[field::TOTAL_LEN..field::TOTAL_LEN + 4].copy_from_slice(&n.to_le_bytes());
        fix_crc(&mut b);
        let _ = parse_and_run(&b);
    }

    #[test]
    fn random_mutations_with_fixed_crc_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut b = tiny();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        fix_crc(&mut b);
        let _ = parse_and_run(&b);
    }
}

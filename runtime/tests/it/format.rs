//! The blob format: emit/parse round trips, and rejection of every corruption without a panic.

use iocane_runtime::emit::{LayerRepr, ModelRepr};
use iocane_runtime::format::{blob_crc, field, FormatError, HEADER_LEN, SECTION_ENTRY_LEN};
use iocane_runtime::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
use iocane_runtime::{LayerFault, Model, OpKind, Shape};
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

/// The section table of a canonical blob: `(tag, offset, length)` per entry.
fn sections(b: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    let (table, count) = (u32_at(field::SECTION_TABLE), u16::from_le_bytes([b[30], b[31]]) as usize);
    (0..count)
        .map(|i| {
            let e = table + i * SECTION_ENTRY_LEN;
            ([b[e], b[e + 1], b[e + 2], b[e + 3]], u32_at(e + 4), u32_at(e + 8))
        })
        .collect()
}

/// `b` with section entry `i` set to `(offset, length)` and the CRC repaired.
fn with_section(b: &[u8], i: usize, off: usize, len: usize) -> Vec<u8> {
    let mut b = b.to_vec();
    let e = HEADER_LEN + i * SECTION_ENTRY_LEN;
    b[e + 4..e + 8].copy_from_slice(&(off as u32).to_le_bytes());
    b[e + 8..e + 12].copy_from_slice(&(len as u32).to_le_bytes());
    fix_crc(&mut b);
    b
}

/// Issue 18 gap 2 (format.md §4): a zero-length section is rejected wherever it lies: at its
/// own place, at the start of another section (accepted before the fix), strictly inside
/// another, at the end of the blob. Omitting the entry is the one encoding of "no META".
#[test]
fn spec_gap_2_empty_sections_are_rejected_wherever_they_lie() {
    let blob = tiny();
    let secs = sections(&blob);
    assert_eq!(secs.iter().map(|s| &s.0).collect::<Vec<_>>(), [b"LAYR", b"DATA", b"LABL", b"META"]);
    let (data_off, labl, meta) = (secs[1].1, secs[2], secs[3]);
    let bad = |i: u16| Err(FormatError::BadSection { index: i });
    for off in [meta.1, data_off, data_off + 4, labl.1, blob.len() / 4 * 4] {
        assert_eq!(Model::parse(&with_section(&blob, 3, off, 0)).map(|_| ()), bad(3), "empty META at {off:#x}");
    }
    // An empty LABL is a section error too, not a label error: section checks come first.
    assert_eq!(Model::parse(&with_section(&blob, 2, labl.1, 0)).map(|_| ()), bad(2));
    // Dropping the META entry (section_count 3) gives the same model without metadata.
    let mut no_meta = blob.clone();
    no_meta[field::SECTION_COUNT..field::SECTION_COUNT + 2].copy_from_slice(&3u16.to_le_bytes());
    fix_crc(&mut no_meta);
    let m = Model::parse(&no_meta).unwrap();
    assert_eq!((m.metadata(), m.label(1)), ("", Some("class 1")));
}

/// Issue 18 gap 2: with every range non-empty, the half-open overlap test is exact: one
/// shared byte is an overlap, touching ends are not (whichever entry comes first).
#[test]
fn spec_gap_2_non_empty_sections_overlap_by_one_byte_or_not_at_all() {
    let blob = tiny();
    let secs = sections(&blob);
    let (labl, meta) = (secs[2], secs[3]);
    let labl_end = labl.1 + labl.2;
    // META is entry 3, LABL entry 2: move META onto LABL's last aligned word.
    let last_word = (labl_end - 1) / 4 * 4;
    let b = with_section(&blob, 3, last_word, meta.2);
    assert_eq!(Model::parse(&b).map(|_| ()), Err(FormatError::BadSection { index: 3 }));
    // Grow LABL over the zero gap byte so that it ends exactly where META starts: touching,
    // accepted (the gap byte becomes part of the last label).
    assert_eq!(meta.1 - labl_end, 1, "tiny() has one gap byte between LABL and META");
    let m_blob = with_section(&blob, 2, labl.1, meta.1 - labl.1);
    let m = Model::parse(&m_blob).unwrap();
    assert_eq!(m.label(2), Some("class 2\0"));
    // Grow LABL by one byte into META (entry 2 checked against entries 0 and 1 only, then
    // META, entry 3, against it).
    let b = with_section(&blob, 2, labl.1, meta.1 - labl.1 + 1);
    assert_eq!(Model::parse(&b).map(|_| ()), Err(FormatError::BadSection { index: 3 }));
}

/// Issue 18 gap 2: the committed fuzz seed corpus (valid models written by the `fuzz_seeds`
/// example) parses and runs unchanged under the empty-section rule.
#[test]
fn spec_gap_2_fuzz_seed_corpus_still_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/parse_run");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let b = std::fs::read(&path).unwrap();
        parse_and_run(&b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(sections(&b).iter().all(|s| s.2 > 0));
        n += 1;
    }
    assert!(n >= 5, "only {n} seeds in {}", dir.display());
}

/// A single Dense logits layer on `input`, 2 classes, for the check-order tests.
fn dense_only(input: Shape, kernel: (usize, usize)) -> ModelRepr {
    let (oc, ic) = (2, input.c);
    let layer = LayerRepr { kernel, weights: vec![1; oc * ic], ..LayerRepr::dense_logits(input, oc, -128) };
    ModelRepr { input, classes: oc, labels: vec![], metadata: vec![], layers: vec![layer] }
}

/// Issue 18 gap 6 (format.md §9 check 21): for a Dense, the chained input shape (check 19)
/// is checked first, then the geometry, then the `1 × 1 × C` input: a Dense with a 3×3
/// kernel on a 2×2 input is a `Geometry` fault, with a 1×1 kernel an `InputShape` fault.
#[test]
fn spec_gap_6_dense_geometry_is_checked_before_its_input_shape() {
    let fault = |r: &ModelRepr| match Model::parse(&r.emit()) {
        Err(FormatError::BadLayer { layer: 0, reason }) => reason,
        other => panic!("expected a layer-0 fault, got {other:?}"),
    };
    let flat = Shape::new(1, 1, 4);
    assert!(Model::parse(&dense_only(flat, (1, 1)).emit()).is_ok());
    assert_eq!(fault(&dense_only(flat, (3, 3))), LayerFault::Geometry);
    let square = Shape::new(2, 2, 1);
    assert_eq!(fault(&dense_only(square, (1, 1))), LayerFault::InputShape);
    assert_eq!(fault(&dense_only(square, (3, 3))), LayerFault::Geometry);
    // A broken chain (check 19) comes before both.
    let mut r = dense_only(square, (3, 3));
    r.input = Shape::new(1, 1, 4);
    assert_eq!(fault(&r), LayerFault::InputShape);
    r.layers[0].in_zero_point = 0; // check 20 (zero point) also comes after check 19
    assert_eq!(fault(&r), LayerFault::InputShape);
    let mut r = dense_only(square, (3, 3));
    r.layers[0].in_zero_point = 0;
    assert_eq!(fault(&r), LayerFault::ZeroPoint);
}

/// The numbers of format.md, recomputed: the CRC check value (§3.1), the two arena examples
/// (§10) and the walkthrough of `seed0` (§13).
#[test]
fn spec_format_md_examples_are_computed_by_the_code() {
    assert_eq!(iocane_runtime::format::crc32(b"123456789"), 0xCBF4_3926);
    // §10
    assert_eq!(Model::parse(&random_mlp(1).emit()).unwrap().arena_size(), 848);
    assert_eq!(Model::parse(&random_cnn_s(1).emit()).unwrap().arena_size(), 2352);
    // §13: seed0 of the fuzz_seeds example.
    let blob = random_model(Shape::new(5, 5, 2), 3, &[SynthLayer::Dense { units: 4, relu: true }], 0).emit();
    assert_eq!(blob.len(), 680);
    let m = Model::parse(&blob).unwrap();
    assert_eq!(u32::from_le_bytes(blob[12..16].try_into().unwrap()), 0xfb85_768d);
    assert_eq!((m.arena_size(), m.layer_count(), m.num_classes()), (54, 3, 3));
    assert_eq!(
        sections(&blob),
        [(*b"LAYR", 0x70, 192), (*b"DATA", 0x130, 324), (*b"LABL", 0x274, 23), (*b"META", 0x28c, 27)]
    );
    let (l0, l1, l2) = (m.layer(0).unwrap(), m.layer(1).unwrap(), m.layer(2).unwrap());
    assert_eq!((l0.op(), l0.output_shape()), (OpKind::Flatten, Shape::new(1, 1, 50)));
    assert_eq!((l1.input_zero_point(), l1.output_zero_point(), l1.clamp()), (-128, -16, (-16, 127)));
    assert_eq!(l1.weights().take(4).collect::<Vec<_>>(), [123, 38, -33, -108]);
    assert_eq!((0..4).map(|c| l1.bias(c)).collect::<Vec<_>>(), [17340, -16998, 108, -13711]);
    assert_eq!((0..4).map(|c| l1.multiplier(c)).collect::<Vec<_>>(), [1716828863, 1628786358, 1665707408, 1251055607]);
    assert_eq!((0..4).map(|c| l1.shift(c)).collect::<Vec<_>>(), [-9; 4]);
    assert_eq!((l1.weight_scale_bits(0), l1.output_scale_bits()), (0.01f32.to_bits(), 0.05f32.to_bits()));
    assert_eq!(l2.weights().collect::<Vec<_>>(), [-5, -42, -123, -48, 120, -92, 40, -10, 12, 49, -49, 88]);
    assert_eq!((0..3).map(|c| l2.bias(c)).collect::<Vec<_>>(), [520, 4509, -4676]);
    assert_eq!((0..3).map(|c| l2.multiplier(c)).collect::<Vec<_>>(), [1504925162, 1656798343, 1114573431]);
    assert_eq!((0..3).map(|c| l2.shift(c)).collect::<Vec<_>>(), [-7, -8, -7]);
    assert_eq!((m.label(2), m.metadata()), (Some("class 2"), "source=random_model\nseed=0\n"));
    let real = iocane_runtime::quant::multiplier_to_real(1716828863, -9);
    assert!((real - 0.0015614).abs() < 5e-8, "{real}");
}

//! Integration tests of the datasets module: the embedded `mnist-small`, Fashion-MNIST
//! (when installed), IDX round trips and rejection of corrupt files.

use std::fs;
use std::path::Path;

use iocane_trainer::data::idx::{self, IdxImages};
use iocane_trainer::data::{
    load, DataError, Dataset, DatasetSpec, FASHION_MNIST_DIR, FASHION_MNIST_LABELS, IDX_FILE_NAMES,
};
use proptest::prelude::*;

/// Writes a small IDX dataset (train `n_train`, test `n_test`, `h x w x c`) to `dir`,
/// gzip-compressing the files if `gz` (and naming them `.gz` then).
fn write_dataset(
    dir: &Path,
    n_train: usize,
    n_test: usize,
    shape: (usize, usize, usize),
    classes: u8,
    gz: bool,
) -> (IdxImages, Vec<u8>, IdxImages, Vec<u8>) {
    let (h, w, c) = shape;
    let make = |n: usize, seed: usize| {
        let images = IdxImages {
            count: n,
            rows: h,
            cols: w,
            channels: c,
            pixels: (0..n * h * w * c).map(|i| ((i * 31 + seed * 7) % 256) as u8).collect(),
        };
        let labels: Vec<u8> = (0..n).map(|i| ((i + seed) % classes as usize) as u8).collect();
        (images, labels)
    };
    let (ti, tl) = make(n_train, 1);
    let (vi, vl) = make(n_test, 2);
    let name = |i: usize| {
        let base = IDX_FILE_NAMES[i];
        dir.join(if gz { format!("{base}.gz") } else { base.to_string() })
    };
    idx::write_images(name(0), &ti, gz).unwrap();
    idx::write_labels(name(1), &tl, gz).unwrap();
    idx::write_images(name(2), &vi, gz).unwrap();
    idx::write_labels(name(3), &vl, gz).unwrap();
    (ti, tl, vi, vl)
}

fn mean_pixel(d: &Dataset) -> f64 {
    d.images.iter().map(|&p| p as f64).sum::<f64>() / d.images.len() as f64
}

#[test]
fn mnist_small_shape_and_counts() {
    let s = load(&"mnist-small".parse().unwrap()).unwrap();
    for (d, n, name) in [(&s.train, 8000, "mnist-small/train"), (&s.test, 2000, "mnist-small/test")] {
        assert_eq!(d.len(), n);
        assert_eq!(d.name, name);
        assert_eq!((d.height, d.width, d.channels, d.classes), (28, 28, 1, 10));
        assert_eq!(d.image_len(), 784);
        assert_eq!(d.images.len(), n * 784);
        assert_eq!(d.labels_text, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(d.labels.iter().all(|&l| l < 10));
        // Stratified split: every class holds 8-13 % of each split.
        for (c, &k) in d.class_counts().iter().enumerate() {
            assert!(k * 100 >= n * 8 && k * 100 <= n * 13, "{name}: class {c} has {k}");
        }
    }
    // Test counts per digit, from the split rule in data/README.md.
    assert_eq!(s.test.class_counts(), vec![200, 225, 198, 206, 196, 173, 203, 214, 189, 196]);
    let mut first = s.test.take(100).class_counts();
    first.retain(|&k| k > 0);
    assert_eq!(first.len(), 10, "the first 100 test images miss a class");
}

#[test]
fn mnist_small_pixels_are_sane() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    for d in [&s.train, &s.test] {
        let mean = mean_pixel(d);
        assert!((20.0..=60.0).contains(&mean), "{}: mean pixel {mean}", d.name);
        // MNIST: background 0, ink up to 255, borders blank.
        assert_eq!(d.images.iter().copied().max(), Some(255));
        let blank_corner = (0..d.len()).filter(|&i| d.image(i)[0] == 0).count();
        assert_eq!(blank_corner, d.len());
        // Every image has ink.
        assert!((0..d.len()).all(|i| d.image(i).iter().any(|&p| p > 128)));
    }
    // Train and test are disjoint.
    let train: std::collections::HashSet<&[u8]> = (0..s.train.len()).map(|i| s.train.image(i)).collect();
    assert_eq!(train.len(), s.train.len(), "duplicate train images");
    assert!((0..s.test.len()).all(|i| !train.contains(s.test.image(i))));
}

#[test]
fn mnist_small_is_deterministic_and_pinned() {
    let a = load(&DatasetSpec::MnistSmall).unwrap();
    let b = load(&DatasetSpec::MnistSmall).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.sha256_hex(), b.train.sha256_hex());
    assert_ne!(a.train.sha256_hex(), a.test.sha256_hex());
    // Pinned: a change to data/mnist-small or to the hash layout must be deliberate.
    assert_eq!(a.train.sha256_hex(), "01b4768a2cbfb0d6904b639a0e738bd45b3c43d3aab793ff25208713402f6a22");
    assert_eq!(a.test.sha256_hex(), "ee111344614cd1c0696402392a49f8727a9aacd8d3f9341ccbc5fa90a590475a");
    // Works from any working directory: the files are embedded.
    let here = std::env::current_dir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_current_dir(tmp.path()).unwrap();
    let c = load(&DatasetSpec::MnistSmall);
    std::env::set_current_dir(here).unwrap();
    assert_eq!(c.unwrap(), a);
}

#[test]
fn data_readme_lists_the_embedded_file_hashes() {
    use sha2::{Digest, Sha256};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    for name in IDX_FILE_NAMES {
        let bytes = fs::read(root.join("mnist-small").join(format!("{name}.gz"))).unwrap();
        let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let line = readme
            .lines()
            .find(|l| l.contains(&format!("`{name}.gz`")))
            .unwrap_or_else(|| panic!("data/README.md does not list {name}.gz"));
        assert!(line.contains(&hex), "data/README.md: {name}.gz should have SHA-256 {hex}");
    }
}

#[test]
fn fashion_mnist_loads_when_installed() {
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        eprintln!(
            "NOTE: {FASHION_MNIST_DIR} is missing, skipping the Fashion-MNIST test \
             (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let s = load(&"fashion-mnist".parse().unwrap()).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (60_000, 10_000));
    assert_eq!(s.train.name, "fashion-mnist/train");
    for d in [&s.train, &s.test] {
        assert_eq!((d.height, d.width, d.channels, d.classes), (28, 28, 1, 10));
        assert_eq!(d.labels_text, FASHION_MNIST_LABELS.map(String::from).to_vec());
        // Fashion-MNIST is exactly balanced.
        let per_class = d.len() / 10;
        assert_eq!(d.class_counts(), vec![per_class; 10]);
        let mean = mean_pixel(d);
        assert!((50.0..=90.0).contains(&mean), "{}: mean pixel {mean}", d.name);
    }
    assert_eq!(s.train.sha256_hex(), "35a7267531a4fd9d805bcc78562ce68bce172f954a71afb577eb8f64a1f658d1");
    assert_eq!(s.test.sha256_hex(), "0a6f5570585b33227f987c3c2d062aec799076ec3870b7a77ef8ed45f99b0298");
    // --data-dir pointing at the same folder gives the same data.
    let spec = DatasetSpec::FashionMnist { dir: None }.with_data_dir(Some(FASHION_MNIST_DIR.into()));
    let t = load(&spec).unwrap();
    assert_eq!(t.test.sha256_hex(), s.test.sha256_hex());
}

#[test]
fn missing_fashion_mnist_says_how_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let spec = DatasetSpec::FashionMnist { dir: None }.with_data_dir(Some(missing.clone()));
    let e = load(&spec).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("apt-get install dataset-fashion-mnist"), "{msg}");
    assert!(msg.contains("--data-dir"), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    // The folder exists but a file is missing.
    write_dataset(tmp.path(), 4, 2, (28, 28, 1), 10, true);
    fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let spec = DatasetSpec::FashionMnist { dir: Some(tmp.path().into()) };
    let msg = load(&spec).unwrap_err().to_string();
    assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");
    assert!(msg.contains("apt-get install dataset-fashion-mnist"), "{msg}");

    // idx:DIR has no install hint but names the folder.
    let e = load(&DatasetSpec::Idx(missing.clone())).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()));
}

#[test]
fn idx_dir_round_trip_raw_and_gzip() {
    for gz in [false, true] {
        for shape in [(28, 28, 1), (5, 3, 3)] {
            let tmp = tempfile::tempdir().unwrap();
            let (ti, tl, vi, vl) = write_dataset(tmp.path(), 17, 9, shape, 7, gz);
            let spec: DatasetSpec = format!("idx:{}", tmp.path().display()).parse().unwrap();
            let s = load(&spec).unwrap();
            assert_eq!(s.train.name, format!("idx:{}/train", tmp.path().display()));
            assert_eq!((s.train.height, s.train.width, s.train.channels), shape);
            assert_eq!(s.train.classes, 7);
            assert_eq!(s.train.labels_text.len(), 7);
            assert_eq!(s.train.images, ti.pixels);
            assert_eq!(s.train.labels, tl);
            assert_eq!(s.test.images, vi.pixels);
            assert_eq!(s.test.labels, vl);
            // The file content decides, not the name: a gzip file without `.gz`.
            let direct = idx::read_images(tmp.path().join(if gz {
                "train-images-idx3-ubyte.gz"
            } else {
                "train-images-idx3-ubyte"
            }))
            .unwrap();
            assert_eq!(direct, ti);
        }
    }
}

#[test]
fn compression_detected_by_content_not_name() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = vec![3u8, 1, 4, 1, 5];
    // gzip data under a plain name, raw data under a .gz name.
    let a = tmp.path().join("labels.idx");
    let b = tmp.path().join("labels.gz");
    idx::write_labels(&a, &labels, true).unwrap();
    idx::write_labels(&b, &labels, false).unwrap();
    assert!(idx::is_gzip(&fs::read(&a).unwrap()));
    assert_eq!(idx::read_labels(&a).unwrap(), labels);
    assert_eq!(idx::read_labels(&b).unwrap(), labels);
}

#[test]
fn idx_classes_at_least_two() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), 3, 2, (2, 2, 1), 1, false);
    let s = load(&DatasetSpec::Idx(tmp.path().into())).unwrap();
    assert_eq!(s.train.classes, 2);
    assert_eq!(s.train.labels_text, vec!["0", "1"]);
}

#[test]
fn idx_test_label_beyond_the_training_classes_is_rejected() {
    // issue 10 item 7: the classes come from the training labels; a test label 11 in a
    // 3-class dataset is an error, not a 12-class dataset.
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), 3, 2, (2, 2, 1), 3, false);
    idx::write_labels(tmp.path().join(IDX_FILE_NAMES[3]), &[0, 11], false).unwrap();
    let e = load(&DatasetSpec::Idx(tmp.path().into())).unwrap_err();
    assert!(matches!(e, DataError::LabelOutOfRange { label: 11, classes: 3, .. }), "{e:?}");
}

#[test]
fn bad_magic_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.png");
    fs::write(&p, b"\x89PNG\r\n\x1a\n0000000000000000").unwrap();
    let e = idx::read_images(&p).unwrap_err();
    match &e {
        DataError::BadMagic { found, .. } => assert_eq!(*found, 0x8950_4e47),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("0x89504e47") && msg.contains("0x00000803"), "{msg}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    // A label file where images are expected: dimension count mismatch.
    let l = idx::encode_labels(&[1, 2, 3]);
    let e = idx::parse_images(&l, "labels-as-images").unwrap_err();
    assert!(matches!(e, DataError::DimensionCount { found: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("labels-as-images"));
    // Wrong data type (f32).
    let mut f = idx::encode_labels(&[1, 2, 3, 4]);
    f[2] = 0x0D;
    let e = idx::parse_labels(&f, "f").unwrap_err();
    assert!(matches!(e, DataError::WrongDataType { found: 0x0D, .. }), "{e:?}");
}

#[test]
fn truncation_at_every_length_is_rejected() {
    let raw = idx::encode_images(3, 4, 5, 1, &[7u8; 60]);
    for n in 0..raw.len() {
        let e = idx::parse_images(&raw[..n], "cut").unwrap_err();
        match e {
            DataError::Truncated { expected, actual, .. } => {
                assert_eq!(actual, n as u64);
                assert!(expected > n as u128 && expected <= raw.len() as u128);
                if n >= 16 {
                    assert_eq!(expected, raw.len() as u128);
                }
            }
            other => panic!("prefix {n}: {other:?}"),
        }
    }
    let labels = idx::encode_labels(&[1, 2, 3]);
    for n in 0..labels.len() {
        assert!(matches!(idx::parse_labels(&labels[..n], "cut"), Err(DataError::Truncated { .. })));
    }
    // A cut gzip stream is an error too (gzip or, for the first byte, truncated IDX).
    let gz = idx::gzip(&raw);
    for n in 0..gz.len() {
        match idx::parse_images(&gz[..n], "cut.gz") {
            Err(DataError::Gzip { .. }) | Err(DataError::Truncated { .. }) => {}
            other => panic!("gzip prefix {n}: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut raw = idx::encode_labels(&[1, 2, 3]);
    raw.extend_from_slice(b"xy");
    let e = idx::parse_labels(&raw, "t").unwrap_err();
    match e {
        DataError::TrailingBytes { expected, actual, .. } => assert_eq!((expected, actual), (11, 13)),
        ref other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("2 trailing bytes"), "{e}");
    assert!(matches!(idx::parse_labels(&idx::gzip(&raw), "t.gz"), Err(DataError::TrailingBytes { .. })));
}

#[test]
fn label_out_of_range_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), 5, 3, (28, 28, 1), 10, false);
    idx::write_labels(tmp.path().join(IDX_FILE_NAMES[1]), &[0, 1, 10, 2, 3], false).unwrap();
    let spec = DatasetSpec::FashionMnist { dir: Some(tmp.path().into()) };
    let e = load(&spec).unwrap_err();
    match &e {
        DataError::LabelOutOfRange { index, label, classes, .. } => assert_eq!((*index, *label, *classes), (2, 10, 10)),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("train-labels-idx1-ubyte"), "{e}");
    // Same check when building a dataset directly.
    let images = idx::parse_images(&idx::encode_images(2, 1, 1, 1, &[0, 0]), "i").unwrap();
    let e = Dataset::from_idx("d", images, "i", vec![0, 3], "l", 3, vec![]).unwrap_err();
    assert!(matches!(e, DataError::LabelOutOfRange { label: 3, .. }), "{e:?}");
}

#[test]
fn count_mismatch_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), 5, 3, (4, 4, 1), 3, true);
    idx::write_labels(tmp.path().join("t10k-labels-idx1-ubyte.gz"), &[0, 1], true).unwrap();
    let e = load(&DatasetSpec::Idx(tmp.path().into())).unwrap_err();
    match &e {
        DataError::CountMismatch { images, labels, .. } => assert_eq!((*images, *labels), (3, 2)),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("t10k-images") && msg.contains("t10k-labels"), "{msg}");
}

#[test]
fn shape_mismatch_between_splits_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), 5, 3, (4, 4, 1), 3, false);
    let other = IdxImages { count: 3, rows: 4, cols: 5, channels: 1, pixels: vec![0; 60] };
    idx::write_images(tmp.path().join(IDX_FILE_NAMES[2]), &other, false).unwrap();
    let e = load(&DatasetSpec::Idx(tmp.path().into())).unwrap_err();
    assert!(matches!(e, DataError::ShapeMismatch { .. }), "{e:?}");
}

#[test]
fn huge_declared_dimensions_do_not_allocate() {
    // 4G x 64K x 64K images declared, 10 bytes present: must fail fast, not allocate.
    let mut raw = Vec::new();
    raw.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    for d in [u32::MAX, 65_535, 65_535] {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(&[0; 10]);
    let e = idx::parse_images(&raw, "huge").unwrap_err();
    match e {
        DataError::Truncated { expected, actual, .. } => {
            assert_eq!(actual, 26);
            assert_eq!(expected, u32::MAX as u128 * 65_535 * 65_535 + 16);
        }
        other => panic!("{other:?}"),
    }
    let e = idx::parse_images(&idx::gzip(&raw), "huge.gz").unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    let mut labels = idx::encode_labels(&[]);
    labels[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(idx::parse_labels(&labels, "huge"), Err(DataError::Truncated { .. })));
}

#[test]
fn gzip_bomb_is_capped() {
    // 3 MiB of zeros compress to a few KiB; a 1 MiB limit must stop the decompressor.
    let gz = idx::gzip(&vec![0u8; 3 << 20]);
    assert!(gz.len() < 16 << 10);
    let e = idx::decompress_with_limit(&gz, "bomb.gz", 1 << 20).unwrap_err();
    assert!(matches!(e, DataError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("bomb.gz"));
    assert_eq!(idx::MAX_DECOMPRESSED_BYTES, 1 << 30);
}

#[test]
fn io_errors_carry_the_path() {
    let e = idx::read_labels("/nonexistent/dir/labels-idx1-ubyte").unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/dir/labels-idx1-ubyte"), "{e}");
}

#[test]
fn take_and_subset_on_real_data() {
    let s = load(&DatasetSpec::MnistSmall).unwrap();
    let t = s.test.take(10);
    assert_eq!(t.len(), 10);
    assert_eq!(t.image(9), s.test.image(9));
    assert_eq!(s.test.take(1_000_000).len(), 2000);
    let sub = s.test.subset(&[5, 1999, 5]);
    assert_eq!(sub.len(), 3);
    assert_eq!(sub.image(1), s.test.image(1999));
    assert_eq!(sub.label(2), s.test.label(5));
    assert_eq!(sub.image(0), sub.image(2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(
        n in 0usize..6, h in 1usize..5, w in 1usize..5, c in 1usize..4, gz: bool, seed: u8,
    ) {
        let pixels: Vec<u8> = (0..n * h * w * c).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i as u8) ^ seed).collect();
        let mut ib = idx::encode_images(n, h, w, c, &pixels);
        let mut lb = idx::encode_labels(&labels);
        if gz {
            ib = idx::gzip(&ib);
            lb = idx::gzip(&lb);
        }
        let im = idx::parse_images(&ib, "p").unwrap();
        prop_assert_eq!((im.count, im.rows, im.cols, im.channels), (n, h, w, c));
        prop_assert_eq!(&im.pixels, &pixels);
        prop_assert_eq!(idx::parse_labels(&lb, "p").unwrap(), labels);
    }

    #[test]
    fn prop_corrupt_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Arbitrary input: an error or a consistent result, never a panic or huge allocation.
        if let Ok(im) = idx::parse_images(&bytes, "fuzz") {
            prop_assert_eq!(im.pixels.len(), im.count * im.image_len());
        }
        if let Ok(l) = idx::parse_labels(&bytes, "fuzz") {
            prop_assert!(l.len() < 64);
        }
    }

    #[test]
    fn prop_any_cut_or_extension_is_rejected(n in 1usize..5, cut in 0usize..200, extra in 1usize..5) {
        let raw = idx::encode_images(n, 3, 3, 1, &vec![1u8; n * 9]);
        let cut = cut % raw.len();
        let truncated = matches!(
            idx::parse_images(&raw[..cut], "p"),
            Err(DataError::Truncated { .. })
        );
        prop_assert!(truncated);
        let mut long = raw.clone();
        long.extend(std::iter::repeat_n(0u8, extra));
        let trailing = matches!(
            idx::parse_images(&long, "p"),
            Err(DataError::TrailingBytes { .. })
        );
        prop_assert!(trailing);
    }
}

//! Parse arbitrary bytes as IDX images and as IDX labels (raw, and gzip-wrapped for inputs
//! up to 256 bytes). Nothing may panic or allocate beyond the input's own size; a parsed file must
//! re-encode to the same bytes and parse the same from gzip; labels must pass or fail the
//! class-count rule without panicking.
#![no_main]
use iocane_trainer::data::idx;
use iocane_trainer::data::DataError;
use libfuzzer_sys::fuzz_target;

/// Both parses succeeded with equal values, or both failed.
fn same<T: PartialEq>(a: &Result<T, DataError>, b: &Result<T, DataError>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let images = idx::parse_images(data, "fuzz");
    if let Ok(im) = &images {
        assert_eq!(im.pixels.len(), im.count * im.image_len());
        let raw = idx::decompress(data, "fuzz").expect("parsed input decompresses");
        let again = idx::encode_images(im.count, im.rows, im.cols, im.channels, &im.pixels);
        // A 4-D file with one channel re-encodes as 3-D; otherwise the bytes are identical.
        if !(raw.len() >= 4 && raw[3] == 4 && im.channels == 1) {
            assert_eq!(&again[..], &raw[..], "re-encoded images differ");
        }
        assert_eq!(&idx::parse_images(&again, "again").expect("re-encoded images parse"), im);
    }
    let labels = idx::parse_labels(data, "fuzz");
    if let Ok(l) = &labels {
        assert_eq!(&idx::parse_labels(&idx::encode_labels(l), "again").expect("re-encoded labels parse"), l);
        if let Ok(classes) = iocane_trainer::data::classes_of_labels(l, "fuzz") {
            assert!((2..=256).contains(&classes));
            assert!(l.iter().all(|&x| usize::from(x) < classes));
        }
    }
    // The gzip path must agree with the raw one (small inputs only: compression is slow).
    if data.len() <= 256 && !idx::is_gzip(data) {
        let gz = idx::gzip(data);
        assert!(same(&images, &idx::parse_images(&gz, "gz")), "gzip changes the image result");
        assert!(same(&labels, &idx::parse_labels(&gz, "gz")), "gzip changes the label result");
    }
});

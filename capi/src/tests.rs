//! Unit tests: the header is current, and the ABI agrees with `Model::run`. The C side
//! (every status code from C, host and device) is `tests/c/test_capi.c`, run by `.ci/capi`.
use super::*;
use iocane_runtime::testing::random_cnn_s;
use std::ffi::CStr;
use std::path::Path;

fn generate_header() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

/// Fails when `include/iocane.h` is not what cbindgen makes of `src/lib.rs` now;
/// `IOCANE_BLESS=1 cargo test` rewrites it (atomically: a temporary file, then a rename).
#[test]
fn header_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/iocane.h");
    let fresh = generate_header();
    if std::env::var_os("IOCANE_BLESS").is_some() {
        let tmp = path.with_extension("h.tmp");
        std::fs::write(&tmp, &fresh).expect("write the temporary header");
        std::fs::rename(&tmp, &path).expect("rename the header into place");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "capi/include/iocane.h is stale: run `IOCANE_BLESS=1 cargo test` in capi/ and commit it"
    );
    for name in ["iocane_model_parse", "iocane_model_run", "IOCANE_ERR_LOGITS_LENGTH", "IOCANE_STATUS_COUNT"] {
        assert!(fresh.contains(name), "{name} missing from the header");
    }
}

fn name(s: iocane_status) -> &'static str {
    // SAFETY: the function returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(iocane_status_name(s)) }.to_str().unwrap()
}

fn message(s: iocane_status) -> &'static str {
    // SAFETY: as above.
    unsafe { CStr::from_ptr(iocane_status_message(s)) }.to_str().unwrap()
}

#[test]
fn every_status_has_a_distinct_name_and_a_message() {
    let mut names: Vec<&str> = (0..IOCANE_STATUS_COUNT).map(name).collect();
    assert_eq!(names[0], "IOCANE_OK");
    assert!(names[1..].iter().all(|n| n.starts_with("IOCANE_ERR_")));
    assert!((0..IOCANE_STATUS_COUNT).all(|s| !message(s).is_empty()));
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), IOCANE_STATUS_COUNT as usize);
    for bad in [-1, IOCANE_STATUS_COUNT, i32::MIN, i32::MAX] {
        assert_eq!(name(bad), "IOCANE_ERR_UNKNOWN");
    }
    // The names are the constants' own names (the header shows them side by side).
    let header = generate_header();
    for s in 0..IOCANE_STATUS_COUNT {
        assert!(header.contains(&format!("#define {} {s}", name(s))), "{} is not {s} in the header", name(s));
    }
}

fn empty_model() -> iocane_model_t {
    iocane_model_t { opaque: [0; IOCANE_MODEL_WORDS], tag: 0 }
}

#[test]
fn parse_and_run_agree_with_the_runtime() {
    let blob = random_cnn_s(7).emit();
    let reference = Model::parse(&blob).unwrap();
    let mut m = empty_model();
    // SAFETY: valid pointers and lengths.
    unsafe {
        assert_eq!(iocane_model_parse(&mut m, blob.as_ptr(), blob.len()), IOCANE_OK);
        assert_eq!(iocane_model_arena_size(&m), reference.arena_size());
        assert_eq!(iocane_model_input_len(&m), reference.input_len());
        assert_eq!(iocane_model_num_classes(&m), reference.num_classes());
    }
    let mut arena = vec![0u8; reference.arena_size()];
    let mut want = vec![0i32; reference.num_classes()];
    let mut got = vec![0i32; reference.num_classes()];
    for seed in 0..8u8 {
        let pixels: Vec<u8> =
            (0..reference.input_len()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let want_class = reference.run(&pixels, &mut arena, &mut want).unwrap();
        let mut class = usize::MAX;
        // SAFETY: valid pointers and lengths, distinct buffers.
        let status = unsafe {
            iocane_model_run(
                &m,
                pixels.as_ptr(),
                pixels.len(),
                arena.as_mut_ptr(),
                arena.len(),
                got.as_mut_ptr(),
                got.len(),
                &mut class,
            )
        };
        assert_eq!(status, IOCANE_OK);
        assert_eq!((class, &got), (want_class, &want));
    }
}

#[test]
fn errors_are_reported_and_leave_outputs_alone() {
    let blob = random_cnn_s(8).emit();
    let mut m = empty_model();
    // SAFETY: NULL and valid pointers only.
    unsafe {
        assert_eq!(iocane_model_parse(core::ptr::null_mut(), blob.as_ptr(), blob.len()), IOCANE_ERR_NULL_POINTER);
        assert_eq!(iocane_model_parse(&mut m, core::ptr::null(), blob.len()), IOCANE_ERR_NULL_POINTER);
        assert_eq!(iocane_model_parse(&mut m, blob.as_ptr(), 10), IOCANE_ERR_TOO_SHORT);
        assert_eq!(iocane_model_arena_size(&m), 0);
        assert_eq!(iocane_model_arena_size(core::ptr::null()), 0);
        assert_eq!(iocane_model_parse(&mut m, blob.as_ptr(), blob.len()), IOCANE_OK);
    }
    let model = Model::parse(&blob).unwrap();
    let (n, k, a) = (model.input_len(), model.num_classes(), model.arena_size());
    let pixels = vec![0u8; n + 1];
    let arena = vec![0u8; a];
    let mut logits = vec![7i32; k + 1];
    let mut class = 99usize;
    let run = |m: *const iocane_model_t, n: usize, a: usize, k: usize, logits: &mut [i32], class: &mut usize| {
        // SAFETY: the lengths never exceed the buffers; `m` is NULL or valid.
        unsafe { iocane_model_run(m, pixels.as_ptr(), n, arena.clone().as_mut_ptr(), a, logits.as_mut_ptr(), k, class) }
    };
    assert_eq!(run(&m, n + 1, a, k, &mut logits, &mut class), IOCANE_ERR_INPUT_LENGTH);
    assert_eq!(run(&m, n, a - 1, k, &mut logits, &mut class), IOCANE_ERR_ARENA_TOO_SMALL);
    assert_eq!(run(&m, n, a, k + 1, &mut logits, &mut class), IOCANE_ERR_LOGITS_LENGTH);
    assert_eq!(run(core::ptr::null(), n, a, k, &mut logits, &mut class), IOCANE_ERR_NULL_POINTER);
    assert!(logits.iter().all(|&v| v == 7) && class == 99, "an error wrote outputs");
    // A copy of a parsed handle is not taken for one (its address differs).
    let copy = iocane_model_t { opaque: m.opaque, tag: m.tag };
    assert_eq!(run(&copy, n, a, k, &mut logits, &mut class), IOCANE_ERR_NOT_PARSED);
    assert_eq!(run(&empty_model(), n, a, k, &mut logits, &mut class), IOCANE_ERR_NOT_PARSED);
    assert_eq!(run(&m, n, a, k, &mut logits, &mut class), IOCANE_OK);
    assert!(class < k);
}

//! Writes the fixtures of the device/host parity test (`firmware/qemu-parity`, run by
//! `.ci/qemu-parity`): model blobs, inputs, and the logits this host computes for them:
//! `cargo run -p iocane-runtime --features testing --example parity_fixtures -- OUT_DIR
//! [IMAGES [MAX_ARENA]]`: IMAGES per model (default and at most 16; the first four are the
//! fixed patterns), and only the models whose arena fits MAX_ARENA bytes (default: all), for
//! cores with little flash and RAM (the Cortex-M0 of qemu's micro:bit has 256 KiB and 16 KiB).
//!
//! Everything is deterministic (fixed seeds). For model `i`, `OUT_DIR` gets `model{i}.icn`,
//! `input{i}.bin` (16 images, pixels concatenated), `expected{i}.bin` (their logits,
//! little-endian i32, concatenated) and `class{i}.bin` (the predicted classes, little-endian
//! u16), plus `fixtures.rs`, which the firmware `include!`s. The firmware runs the same
//! blobs with the portable kernels on a Cortex-M4 and must reproduce every logit bit for bit.
use iocane_runtime::emit::ModelRepr;
use iocane_runtime::rng::SplitMix64;
use iocane_runtime::testing::{random_cnn_s, random_mlp, random_model, SynthLayer};
use iocane_runtime::{Model, OpKind, Shape};
use std::fmt::Write as _;
use std::path::Path;

/// Images per model, at most.
const INPUTS: usize = 16;

/// FNV-1a over the little-endian bytes of the logits; the firmware computes the same.
fn fnv1a(logits: &[i32], mut h: u32) -> u32 {
    for v in logits {
        for b in v.to_le_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Sets one channel's requantization shift to `shift` in the first layer of kind `op`.
fn set_shift(repr: &mut ModelRepr, op: OpKind, channel: usize, shift: i32) {
    let l = repr.layers.iter_mut().find(|l| l.op == op).expect("layer of that kind");
    l.shift[channel] = shift;
}

/// The models: every op, odd shapes, channel counts off the 8/32/64 blocks, each AVX2 conv
/// path (direct with each scratch size, patches, and the portable fallback for large
/// kernels), dense inputs longer than one AVX2 chunk, and both requantization clamps
/// (narrow and wide).
fn models() -> Vec<(&'static str, ModelRepr)> {
    let conv = |filters, k, s, p, relu| SynthLayer::Conv { filters, k, s, p, relu };
    let dw = |k, s, p, relu| SynthLayer::Depthwise { k, s, p, relu };

    // Depthwise and pooling; one channel of the first conv gets a multiplier above 1
    // (shift > 0) so its 8-channel block takes the AVX2 wide clamp, another the smallest
    // shift; this leaves the model valid (only the accumulators are bounded).
    let mut dw_pool = random_model(
        Shape::new(16, 16, 4),
        10,
        &[
            conv(12, 3, 1, 1, true),
            dw(3, 2, 1, true),
            SynthLayer::MaxPool { k: 2, s: 2 },
            dw(2, 1, 1, false),
            SynthLayer::AvgPool { k: 2, s: 1 },
            SynthLayer::Dense { units: 70, relu: true },
        ],
        3,
    );
    set_shift(&mut dw_pool, OpKind::Conv2d, 3, 1);
    set_shift(&mut dw_pool, OpKind::Conv2d, 5, -31);
    set_shift(&mut dw_pool, OpKind::Dense, 66, 2);

    // Odd input 9x7x3, odd channel counts, no activation before the pools.
    let odd = random_model(
        Shape::new(9, 7, 3),
        5,
        &[
            conv(5, 3, 2, 1, false),
            SynthLayer::MaxPool { k: 2, s: 1 },
            dw(3, 1, 1, true),
            SynthLayer::AvgPool { k: 2, s: 1 },
            SynthLayer::Dense { units: 7, relu: true },
        ],
        4,
    );

    // Larger tensors, one conv per AVX2 path: 32x32x8 and 16x16x40 padded exceed the direct
    // kernel's largest scratch (patch path), 16x16x20 padded takes the 8192-element direct
    // scratch, and 5x5x33 = 825 taps exceed the AVX2 patch limit (portable on both sides).
    // 40 and 33 channels cross the 8- and 32-channel blocks; one conv is 1x1.
    let large = random_model(
        Shape::new(32, 32, 8),
        10,
        &[
            conv(40, 3, 2, 1, true),
            conv(20, 1, 1, 0, false),
            conv(33, 3, 1, 1, true),
            conv(12, 5, 2, 0, true),
            SynthLayer::AvgPool { k: 2, s: 2 },
            SynthLayer::Dense { units: 17, relu: false },
        ],
        5,
    );

    vec![("cnn_s", random_cnn_s(1)), ("mlp", random_mlp(2)), ("dw_pool", dw_pool), ("odd_9x7x3", odd), ("large", large)]
}

/// `count` images of `n` pixels: the extremes, two patterns, then SplitMix64 bytes.
fn inputs(n: usize, seed: u64, count: usize) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut px = Vec::with_capacity(INPUTS * n);
    px.extend(std::iter::repeat_n(0u8, n));
    px.extend(std::iter::repeat_n(255u8, n));
    px.extend((0..n).map(|i| if i % 2 == 0 { 0 } else { 255 }));
    px.extend((0..n).map(|i| (i * 37 % 256) as u8));
    for _ in 4..INPUTS {
        px.extend((0..n).map(|_| rng.next_u64() as u8));
    }
    px.truncate(count * n);
    px
}

/// Writes `dir/name` atomically: a temporary file, then a rename.
fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    std::fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("rename {name}: {e}"));
}

fn main() {
    let usage = "usage: parity_fixtures OUT_DIR [IMAGES [MAX_ARENA]]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(args.first().expect(usage));
    let count: usize = args.get(1).map_or(INPUTS, |a| a.parse().expect(usage));
    let arena_limit: usize = args.get(2).map_or(usize::MAX, |a| a.parse().expect(usage));
    assert!((1..=INPUTS).contains(&count), "IMAGES must be in 1..={INPUTS}");
    std::fs::create_dir_all(dir).expect("create output dir");
    let avx2 = cfg!(all(target_arch = "x86_64", target_feature = "avx2"));
    println!("host kernels: {}", if avx2 { "AVX2" } else { "portable (this host build has no AVX2)" });

    let mut src = String::from(
        "// Generated by runtime/examples/parity_fixtures.rs: do not edit.\n\
         \n\
         /// One model with its inputs and the host's results.\n\
         pub struct Fixture {\n    \
             /// Short description.\n    pub name: &'static str,\n    \
             /// The model blob (4-byte aligned).\n    pub blob: &'static [u8],\n    \
             /// Pixels per image.\n    pub input_len: usize,\n    \
             /// Logits per image.\n    pub classes: usize,\n    \
             /// The arena size the host's parse reported.\n    pub arena: usize,\n    \
             /// `count` images, concatenated.\n    pub inputs: &'static [u8],\n    \
             /// The host's logits, little-endian i32, concatenated.\n    pub expected: &'static [u8],\n    \
             /// The host's predicted classes, little-endian u16.\n    pub expected_class: &'static [u8],\n    \
             /// FNV-1a of the host's logit bytes.\n    pub checksum: u32,\n\
         }\n\
         \n\
         /// Forces 4-byte alignment on the embedded blobs.\n\
         #[repr(C, align(4))]\n\
         pub struct Aligned<T: ?Sized>(pub T);\n\n",
    );
    let mut entries = String::new();
    let (mut max_arena, mut max_classes) = (0, 0);
    let mut total_blob = 0;
    for (i, (name, repr)) in models().into_iter().enumerate() {
        let blob = repr.emit();
        let model = Model::parse(&blob).unwrap_or_else(|e| panic!("model {i} ({name}) does not parse: {e}"));
        if model.arena_size() > arena_limit {
            println!("model {i} ({name}): arena {} bytes > {arena_limit}, left out", model.arena_size());
            continue;
        }
        let (n, classes) = (model.input_len(), model.num_classes());
        let px = inputs(n, 0x1000 + i as u64, count);
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; classes];
        let (mut expected, mut class) = (Vec::new(), Vec::new());
        let mut checksum = 0x811c_9dc5;
        for img in px.chunks_exact(n) {
            let c = model.run(img, &mut arena, &mut logits).expect("host run");
            checksum = fnv1a(&logits, checksum);
            expected.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
            class.extend((c as u16).to_le_bytes());
        }
        write(dir, &format!("model{i}.icn"), &blob);
        write(dir, &format!("input{i}.bin"), &px);
        write(dir, &format!("expected{i}.bin"), &expected);
        write(dir, &format!("class{i}.bin"), &class);
        let s = model.input_shape();
        println!(
            "model {i} ({name}, {}x{}x{}, {} layers, {classes} classes): blob {} bytes, arena {} bytes, {count} inputs, host checksum {checksum:08x}",
            s.h,
            s.w,
            s.c,
            model.layers().count(),
            blob.len(),
            model.arena_size()
        );
        max_arena = max_arena.max(model.arena_size());
        max_classes = max_classes.max(classes);
        total_blob += blob.len();
        writeln!(src, "static BLOB{i}: &Aligned<[u8]> = &Aligned(*include_bytes!(\"model{i}.icn\"));").unwrap();
        writeln!(
            entries,
            "    Fixture {{\n        name: {name:?},\n        blob: &BLOB{i}.0,\n        input_len: {n},\n        \
             classes: {classes},\n        arena: {},\n        inputs: include_bytes!(\"input{i}.bin\"),\n        \
             expected: include_bytes!(\"expected{i}.bin\"),\n        expected_class: include_bytes!(\"class{i}.bin\"),\n        \
             checksum: 0x{checksum:08x},\n    }},",
            model.arena_size()
        )
        .unwrap();
    }
    writeln!(src, "\n/// Every model.\npub static MODELS: &[Fixture] = &[\n{entries}];").unwrap();
    writeln!(src, "\n/// The largest arena any model needs.\npub const MAX_ARENA: usize = {max_arena};").unwrap();
    writeln!(src, "\n/// The largest class count.\npub const MAX_CLASSES: usize = {max_classes};").unwrap();
    assert!(total_blob > 0, "no model fits an arena of {arena_limit} bytes");
    write(dir, "fixtures.rs", src.as_bytes());
    println!("blobs: {total_blob} bytes in total; wrote {}", dir.join("fixtures.rs").display());
}

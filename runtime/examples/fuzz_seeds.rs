//! Writes valid model blobs as a fuzz seed corpus:
//! `cargo run -p iocane-runtime --features testing --example fuzz_seeds -- fuzz/corpus/parse_run`.
use iocane_runtime::testing::{random_cnn_s, random_model, SynthLayer};
use iocane_runtime::Shape;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/parse_run".into());
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let archs: [&[SynthLayer]; 4] = [
        &[SynthLayer::Dense { units: 4, relu: true }],
        &[SynthLayer::Conv { filters: 2, k: 3, s: 2, p: 1, relu: true }, SynthLayer::MaxPool { k: 2, s: 1 }],
        &[SynthLayer::Depthwise { k: 2, s: 1, p: 1, relu: false }, SynthLayer::AvgPool { k: 2, s: 2 }],
        &[
            SynthLayer::Conv { filters: 3, k: 2, s: 1, p: 0, relu: false },
            SynthLayer::Flatten,
            SynthLayer::Dense { units: 5, relu: true },
        ],
    ];
    for (i, a) in archs.iter().enumerate() {
        let blob = random_model(Shape::new(5, 5, 2), 3, a, i as u64).emit();
        std::fs::write(format!("{dir}/seed{i}"), blob).expect("write seed");
    }
    std::fs::write(format!("{dir}/cnn_s"), random_cnn_s(1).emit()).expect("write seed");
}

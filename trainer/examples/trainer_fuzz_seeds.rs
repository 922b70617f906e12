//! Writes the seed corpora of the trainer's fuzz targets (`fuzz/corpus/{idx,checkpoint,onnx_import}`):
//! a real tiny IDX image/label pair (raw and gzip), checkpoints of tiny networks (with and
//! without optimizer state), and ONNX exports of tiny networks covering every layer kind.
//!
//! `cargo run -p iocane-trainer --example trainer_fuzz_seeds -- fuzz/corpus`
use std::path::Path;

use iocane_trainer::checkpoint::{self, Checkpoint};
use iocane_trainer::data::idx;
use iocane_trainer::nn::{ArchSpec, Network, Optimizer, OptimizerConfig};
use iocane_trainer::onnx::export_onnx;

/// Tiny architectures: every layer kind, 1 and 3 channels.
const ARCHS: [(&str, [usize; 3], usize); 4] = [
    ("flatten,dense4,relu,dense3", [3, 3, 1], 3),
    ("conv2k3s2p1,relu,maxpool2,flatten,dense2", [6, 6, 1], 2),
    ("dw3p1,relu6,conv2k1,avgpool2,flatten,dense3", [4, 4, 3], 3),
    ("conv3k2x3p1_0_1_2,relu,flatten,dense2", [5, 4, 2], 2),
];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);

    // IDX: the first images and labels of the embedded mnist-small, cut to 4x4 crops so the
    // seeds stay small, plus an NHWC file.
    let s = iocane_trainer::data::load(&iocane_trainer::data::DatasetSpec::MnistSmall).expect("mnist-small");
    let n = 3;
    let crop: Vec<u8> = (0..n)
        .flat_map(|i| {
            let img = s.train.image(i);
            (12..16).flat_map(move |y| (12..16).map(move |x| img[y * 28 + x]))
        })
        .collect();
    let images = idx::encode_images(n, 4, 4, 1, &crop);
    let labels = idx::encode_labels(&s.train.labels[..n]);
    let nhwc = idx::encode_images(2, 2, 2, 3, &(0..24).collect::<Vec<u8>>());
    let dir = root.join("idx");
    write(&dir, "images", &images);
    write(&dir, "images.gz", &idx::gzip(&images));
    write(&dir, "labels", &labels);
    write(&dir, "labels.gz", &idx::gzip(&labels));
    write(&dir, "nhwc", &nhwc);

    for (i, (arch, shape, classes)) in ARCHS.iter().enumerate() {
        let spec = ArchSpec::from_compact(arch, *shape, *classes).expect("valid arch");
        let network = Network::new(spec, 100 + i as u64).expect("network");
        let optimizer = (i % 2 == 1).then(|| {
            let cfg = OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 };
            Optimizer::new(cfg, network.params()).state()
        });
        write(&root.join("onnx_import"), &format!("export{i}.onnx"), &export_onnx(&network).expect("export"));
        let ck = Checkpoint {
            network,
            optimizer,
            epoch: i,
            train_config: serde_json::json!({"seed": i}),
            metrics: serde_json::json!([]),
        };
        write(&root.join("checkpoint"), &format!("tiny{i}.ckpt"), &checkpoint::to_bytes(&ck));
    }
}

//! Train -> quantize -> emit -> certify through the library API, on a tiny budget (seconds).
//!
//! `cargo run --example quickstart [OUT_DIR]` (default: `target/quickstart`) writes the run,
//! the firmware files and a certification report, and exits 1 if the gate fails.
use std::sync::atomic::AtomicBool;

use iocane::certify::gate::{self, GateConfig, GateKind, Radius};
use iocane::certify::report::{CertifyReport, RunIdentity};
use iocane::runtime::Model;
use iocane::trainer::{checkpoint, data, nn::ArchSpec, quant, train};

fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/quickstart".into()));
    let splits = data::load(&data::DatasetSpec::MnistSmall)?;
    let (train_set, test) = (&splits.train, &splits.test);

    // 1. Train a small MLP for 2 epochs with fast FGSM adversarial training at eps 0.05.
    let arch = ArchSpec::preset("mlp", [28, 28, 1], 10)?;
    let cfg = train::TrainConfig {
        train_samples: 3000,
        eval_samples: 200,
        ..train::TrainConfig::new("mnist-small", arch, train::Method::FgsmRs, 0.05, 2)
    };
    train::train(&cfg, train_set, test, &out, &train::RunOptions::default())?;
    let network = checkpoint::load(&out.join("model.ckpt"))?.network;

    // 2. Quantize to int8 (activation ranges from 300 training images), 3. emit the blob.
    let repr = quant::quantize(&network, train_set, 300, train_set.labels_text.clone(), vec![])?;
    let blob = repr.emit();
    let exported = quant::export::write_firmware_files(&out.join("export"), &blob)?;
    println!("int8 model: {} bytes of flash, {} bytes of arena", exported.flash_bytes, exported.arena_bytes);

    // 4. Certify the exact int8 model at eps 2/255 on 100 test images: attacks + interval bounds.
    let model = Model::parse(&blob)?;
    let radius: Radius = "2/255".parse()?;
    let gate_cfg = GateConfig {
        k: radius.k,
        sweep: vec![0, 1, 4],
        samples: 100,
        pgd_steps: 10,
        pgd_restarts: 1,
        square_queries: 100,
        random_samples: 20,
        gate: GateKind::Empirical,
        threshold: "0.5".parse()?,
        ..GateConfig::default()
    };
    let t0 = std::time::Instant::now();
    let outcome = gate::run(&model, test, &gate_cfg, &|_| {}, &AtomicBool::new(false))?;
    let id = RunIdentity::new(&exported.blob.display().to_string(), &blob, &model, test, radius);
    let report = CertifyReport::new(id, gate_cfg, outcome, t0.elapsed().as_secs_f64());
    report.write(&out.join("certify"))?;
    print!("{}", report.markdown());
    Ok(if report.passed { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

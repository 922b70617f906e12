//! `iocane export`: quantize a trained run to int8 and write the firmware files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use iocane_trainer::quant::export::{write_firmware_files, Exported};
use iocane_trainer::quant::quantize;
use iocane_trainer::train::checkpoint;
use iocane_trainer::train::{Metrics, TrainConfig};

/// Flags of `iocane export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The training run directory (holding model.ckpt), or a model.ckpt file.
    pub run: PathBuf,
    /// Output directory for model.icn, model.rs, model.h and model.onnx.
    #[arg(long)]
    pub out: PathBuf,
    /// Calibration images (from the training split) for activation ranges (0 = all).
    #[arg(long, default_value_t = 1000)]
    pub calib: usize,
    /// Calibration dataset (default: the one the run was trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory holding Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs `iocane export`; returns what was written.
pub fn run(a: &ExportArgs) -> Result<Exported> {
    let ckpt_path = checkpoint::run_checkpoint(&a.run);
    let ck = checkpoint::load(&ckpt_path).context("loading the checkpoint")?;
    let cfg: Option<TrainConfig> = serde_json::from_value(ck.train_config.clone()).ok();
    let dataset =
        a.dataset.clone().or_else(|| cfg.as_ref().map(|c| c.dataset.clone())).unwrap_or_else(|| "mnist-small".into());
    let splits = super::train::load_dataset(&dataset, a.data_dir.clone())?;
    let t = &splits.train;
    let spec = ck.network.spec();
    if spec.input != [t.height, t.width, t.channels] || spec.classes != t.classes {
        let [h, w, c] = spec.input;
        bail!(
            "the network takes {:?} images with {} classes, calibration dataset {} has {}x{}x{} with {} classes: \
             pass --dataset with {h}x{w}x{c} images of {} classes (e.g. idx:DIR)",
            spec.input,
            spec.classes,
            dataset,
            t.height,
            t.width,
            t.channels,
            t.classes,
            spec.classes
        );
    }
    let calib = if a.calib == 0 { t.len() } else { a.calib.min(t.len()) };
    let mut meta = vec![
        ("source".to_string(), "iocane-trainer".to_string()),
        ("dataset".to_string(), dataset.clone()),
        ("arch".to_string(), ck.network.spec().to_compact()),
        ("epochs".to_string(), ck.epoch.to_string()),
        ("calibration".to_string(), format!("{calib} images of {dataset}/train")),
        ("quantization".to_string(), "ptq per-channel int8".to_string()),
    ];
    if let Some(c) = &cfg {
        meta.push(("method".into(), c.method.to_string()));
        meta.push(("eps".into(), format!("{}", c.eps)));
        meta.push(("seed".into(), c.seed.to_string()));
    }
    if let Ok(m) = serde_json::from_value::<Metrics>(ck.metrics.clone()) {
        if let Some(e) = m.epochs.last() {
            meta.push(("float_clean_acc".into(), format!("{:.4}", e.clean_acc)));
            meta.push(("float_pgd_acc".into(), format!("{:.4}", e.robust_acc)));
        }
    }
    let labels = splits.train.labels_text.clone();
    let repr = quantize(&ck.network, &splits.train, calib, labels, meta).context("quantizing")?;
    let blob = repr.emit();
    let ex = write_firmware_files(&a.out, &blob).context("writing firmware files")?;
    let onnx = iocane_trainer::onnx::export_onnx(&ck.network).context("exporting ONNX")?;
    let onnx_path = a.out.join("model.onnx");
    checkpoint::write_atomic(&onnx_path, &onnx).with_context(|| format!("writing {}", onnx_path.display()))?;
    println!("exported {} -> {}", ckpt_path.display(), a.out.display());
    println!("  params   {}", ex.params);
    println!("  flash    {} bytes (model.icn)", ex.flash_bytes);
    println!("  arena    {} bytes", ex.arena_bytes);
    println!("  sha256   {}", ex.sha256);
    println!("  files    model.icn model.rs model.h model.onnx");
    Ok(ex)
}

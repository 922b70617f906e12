//! `iocane import`: read a float ONNX classifier into a trainer checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use iocane_trainer::onnx::{import_onnx_with, ImportOptions};
use iocane_trainer::train::checkpoint::{self, Checkpoint};

/// Flags of `iocane import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The ONNX file (PyTorch torch.onnx.export, tf2onnx, skl2onnx: a chain of supported ops).
    pub model: PathBuf,
    /// Output run directory (model.ckpt), ready for `train --init`, `export`, `certify`.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `iocane import`.
pub fn run(a: &ImportArgs) -> Result<()> {
    let bytes = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let imported = import_onnx_with(&bytes, &ImportOptions::default())
        .with_context(|| format!("importing {}", a.model.display()))?;
    let net = imported.network;
    let ck = Checkpoint {
        network: net.clone(),
        optimizer: None,
        epoch: 0,
        train_config: serde_json::json!({"imported_from": a.model.display().to_string()}),
        metrics: serde_json::Value::Null,
    };
    let path = a.out.join("model.ckpt");
    checkpoint::save(&path, &ck)?;
    println!("imported {} ({} params): {}", a.model.display(), net.param_count(), net.spec().to_compact());
    for n in &imported.notes {
        println!("  note: {n}");
    }
    if let Some(d) = imported.max_abs_diff {
        println!("  matches tract-onnx's own output to {d:.2e}");
    }
    println!("wrote {}", path.display());
    Ok(())
}

//! `iocane import`: read a float ONNX classifier into a trainer checkpoint.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use iocane_trainer::onnx::{import_onnx_file, ImportOptions, Imported, InputLayout, InputNorm};
use iocane_trainer::train::checkpoint::{self, Checkpoint};

/// Layout of a 4-D image input (`--layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// `[N, C, H, W]` (PyTorch).
    Nchw,
    /// `[N, H, W, C]` (Keras / TensorFlow).
    Nhwc,
}

/// Flags of `iocane import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The ONNX file (PyTorch torch.onnx.export with either exporter, tf2onnx, skl2onnx: a chain
    /// of supported ops). External data (`model.onnx.data`) is read from beside it.
    pub model: PathBuf,
    /// Output run directory (model.ckpt), ready for `train --init`, `export`, `certify`.
    #[arg(long)]
    pub out: PathBuf,
    /// Image shape `H,W,C` for inputs whose shape the file does not fix: a flat `[N, D]` input
    /// (`H*W*C = D`, features in row-major HWC order) or symbolic image dims.
    #[arg(long, value_name = "H,W,C", value_parser = parse_shape)]
    pub input_shape: Option<[usize; 3]>,
    /// Layout of a 4-D input, instead of detecting it.
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Normalisation the model was trained with outside its graph: the file's input is
    /// `(x * input-scale - mean) / std` with `x` = pixel byte / 255. `--input-scale 255` for a
    /// model trained on 0..255 values. Folded into the first layer.
    #[arg(long, value_name = "S")]
    pub input_scale: Option<f32>,
    /// Per-channel mean of that normalisation (one value, or one per channel: `0.485,0.456,0.406`).
    #[arg(long, value_name = "M[,M...]", value_delimiter = ',')]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of that normalisation (one value, or one per channel).
    #[arg(long, value_name = "S[,S...]", value_delimiter = ',')]
    pub std: Vec<f32>,
}

fn parse_shape(s: &str) -> std::result::Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|_| format!("`{p}` is not a positive integer")))
        .collect::<std::result::Result<_, _>>()?;
    match v.as_slice() {
        &[h, w, c] if h > 0 && w > 0 && c > 0 => Ok([h, w, c]),
        _ => Err(format!("`{s}`: expected three positive integers H,W,C")),
    }
}

impl ImportArgs {
    /// The import options the flags describe.
    pub fn options(&self) -> Result<ImportOptions> {
        let input_norm = if self.input_scale.is_none() && self.mean.is_empty() && self.std.is_empty() {
            None
        } else {
            if self.mean.len() > 1 && self.std.len() > 1 && self.mean.len() != self.std.len() {
                bail!("--mean has {} values and --std {}", self.mean.len(), self.std.len());
            }
            let or = |v: &[f32], d: f32| if v.is_empty() { vec![d] } else { v.to_vec() };
            Some(InputNorm {
                scale: self.input_scale.unwrap_or(1.0),
                mean: or(&self.mean, 0.0),
                std: or(&self.std, 1.0),
            })
        };
        Ok(ImportOptions {
            input_shape: self.input_shape,
            input_layout: self.layout.map(|l| match l {
                LayoutArg::Nchw => InputLayout::Nchw,
                LayoutArg::Nhwc => InputLayout::Nhwc,
            }),
            input_norm,
            ..ImportOptions::default()
        })
    }
}

/// The input contract of an imported network, for `import`'s output.
fn input_contract(a: &ImportArgs, imp: &Imported) -> Vec<String> {
    let [h, w, c] = imp.network.input_shape();
    let mut lines = vec![format!(
        "INPUT CONTRACT: the model takes {h}x{w}x{c} pixel bytes (NHWC) as byte/255 in [0, 1], like every iocane model"
    )];
    match &imp.input_affine {
        Some(aff) => {
            let flags = a.input_scale.is_some() || !a.mean.is_empty() || !a.std.is_empty();
            let nodes = imp.input_norm_nodes.join(", ");
            let from = match (flags, nodes.is_empty()) {
                (true, false) => format!("--input-scale/--mean/--std, then the graph's {nodes}"),
                (true, true) => "--input-scale/--mean/--std".to_string(),
                _ => format!("the graph's {nodes}"),
            };
            lines.push(format!("  the file's input normalisation ({from}) is folded into the network: {aff}"));
        }
        None => {
            lines.push(
                "  WARNING: no input normalisation was given or found in the graph: the file's input is taken to be"
                    .into(),
            );
            lines.push(
                "  byte/255 unchanged. If the model was trained with a normalisation outside the graph (e.g.".into(),
            );
            lines.push(
                "  torchvision Normalize(mean, std), or 0..255 inputs), re-run with --mean/--std (--input-scale 255),"
                    .into(),
            );
            lines.push("  or its accuracy will be silently lower.".into());
        }
    }
    lines
}

/// Runs `iocane import`.
pub fn run(a: &ImportArgs) -> Result<()> {
    let opts = a.options()?;
    let imported = import_onnx_file(&a.model, &opts).with_context(|| format!("importing {}", a.model.display()))?;
    let net = imported.network.clone();
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
    for line in input_contract(a, &imported) {
        println!("{line}");
    }
    println!("wrote {}", path.display());
    Ok(())
}

//! Float checkpoints in the safetensors format, written atomically.
//!
//! Layout (the standard safetensors container, <https://github.com/huggingface/safetensors>):
//! an 8-byte little-endian header length `N`, `N` bytes of JSON, then the raw tensor bytes.
//! Every tensor is `F32`, little-endian. Names:
//! - `param.<layer>.weights`, `param.<layer>.bias`: the network parameters (layer = index in
//!   the architecture, layouts as in [`crate::nn`]: OHWI conv, `[kh][kw][c]` depthwise,
//!   `[out][in]` dense);
//! - `opt.<slot>.<layer>.<weights|bias>`: optimizer state buffers (for `--resume`).
//!
//! `__metadata__` holds strings: `format` = `iocane-ckpt-v1`, `arch` (the architecture JSON),
//! `train` (the training configuration JSON), `epoch` (completed epochs), `optimizer` (the
//! optimizer configuration JSON), `optimizer_step`, and `metrics` (JSON of the epochs so far).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::nn::{ArchSpec, NamedBuffer, Network, NnError, OptimizerConfig, OptimizerState};

/// Errors reading or writing checkpoints.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid iocane checkpoint.
    #[error("{path}: not a valid iocane checkpoint: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The stored network is inconsistent.
    #[error("{path}")]
    Network {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: NnError,
    },
}

/// Everything a checkpoint holds.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The network (architecture and parameters).
    pub network: Network,
    /// Optimizer state, if saved.
    pub optimizer: Option<OptimizerState>,
    /// Completed epochs.
    pub epoch: usize,
    /// Training configuration JSON (free-form for readers).
    pub train_config: Value,
    /// Per-epoch metrics so far (JSON array).
    pub metrics: Value,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A killed process leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tensors(net: &Network, opt: Option<&OptimizerState>) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> =
        net.params().named().into_iter().map(|(n, d)| (format!("param.{n}"), d.to_vec())).collect();
    if let Some(o) = opt {
        out.extend(o.buffers.iter().map(|b| (format!("opt.{}", b.name), b.data.clone())));
    }
    out
}

/// Serializes a checkpoint to safetensors bytes.
pub fn to_bytes(ck: &Checkpoint) -> Vec<u8> {
    let ts = tensors(&ck.network, ck.optimizer.as_ref());
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "iocane-ckpt-v1".into());
    meta.insert("arch".into(), ck.network.spec().to_json().into());
    meta.insert("train".into(), ck.train_config.to_string().into());
    meta.insert("epoch".into(), ck.epoch.to_string().into());
    meta.insert("metrics".into(), ck.metrics.to_string().into());
    if let Some(o) = &ck.optimizer {
        meta.insert("optimizer".into(), serde_json::to_string(&o.config).unwrap_or_default().into());
        meta.insert("optimizer_step".into(), o.step.to_string().into());
    }
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for (name, data) in &ts {
        let len = data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": [data.len()], "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, data) in &ts {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    write_atomic(path, &to_bytes(ck)).map_err(|source| CheckpointError::Io { path: path.into(), source })
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
    from_bytes(&bytes).map_err(|e| match e {
        CheckpointError::Invalid { msg, .. } => CheckpointError::Invalid { path: path.into(), msg },
        CheckpointError::Network { source, .. } => CheckpointError::Network { path: path.into(), source },
        other => other,
    })
}

/// Parses safetensors bytes into a checkpoint.
pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let bad = |msg: &str| CheckpointError::Invalid { path: PathBuf::new(), msg: msg.to_string() };
    if bytes.len() < 8 {
        return Err(bad("file shorter than the 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        return Err(bad("header length exceeds the file (truncated?)"));
    }
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(&format!("header JSON: {e}")))?;
    let data = &bytes[8 + n..];
    let obj = header.as_object().ok_or_else(|| bad("header is not a JSON object"))?;
    let meta = obj.get("__metadata__").and_then(|m| m.as_object()).ok_or_else(|| bad("missing __metadata__"))?;
    let get = |k: &str| meta.get(k).and_then(|v| v.as_str()).ok_or_else(|| bad(&format!("missing metadata `{k}`")));
    if get("format")? != "iocane-ckpt-v1" {
        return Err(bad("unknown checkpoint format"));
    }
    let spec = ArchSpec::from_json(get("arch")?)
        .map_err(|source| CheckpointError::Network { path: PathBuf::new(), source })?;
    let mut by_name: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        if info.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
            return Err(bad(&format!("tensor {name}: only F32 is supported")));
        }
        let offs = info.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| bad("missing data_offsets"))?;
        let (a, b) = match (offs.first().and_then(|v| v.as_u64()), offs.get(1).and_then(|v| v.as_u64())) {
            (Some(a), Some(b)) if a <= b && (b as usize) <= data.len() && (b - a) % 4 == 0 => (a as usize, b as usize),
            _ => return Err(bad(&format!("tensor {name}: data offsets out of bounds (truncated?)"))),
        };
        let vals = data[a..b].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        by_name.insert(name.clone(), vals);
    }
    // Rebuild parameters in the network's own order.
    let template =
        Network::new(spec.clone(), 0).map_err(|source| CheckpointError::Network { path: PathBuf::new(), source })?;
    let mut params = template.params().clone();
    for (i, layer) in params.layers.iter_mut().enumerate() {
        for (kind, slot) in [("weights", &mut layer.weights), ("bias", &mut layer.bias)] {
            if slot.is_empty() {
                continue;
            }
            let name = format!("param.{i}.{kind}");
            let src = by_name.get(&name).ok_or_else(|| bad(&format!("missing tensor {name}")))?;
            if src.len() != slot.len() {
                return Err(bad(&format!("tensor {name}: wrong length")));
            }
            slot.copy_from_slice(src);
        }
    }
    let network = Network::from_params(spec, params)
        .map_err(|source| CheckpointError::Network { path: PathBuf::new(), source })?;
    let optimizer = match meta.get("optimizer").and_then(|v| v.as_str()) {
        None => None,
        Some(cfg) => {
            let config: OptimizerConfig = serde_json::from_str(cfg).map_err(|e| bad(&format!("optimizer: {e}")))?;
            let step = get("optimizer_step")?.parse().map_err(|_| bad("optimizer_step is not a number"))?;
            let buffers = by_name
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("opt.").map(|n| NamedBuffer { name: n.to_string(), data: v.clone() })
                })
                .collect();
            Some(OptimizerState { config, step, buffers })
        }
    };
    let epoch = get("epoch")?.parse().map_err(|_| bad("epoch is not a number"))?;
    let train_config = serde_json::from_str(get("train")?).map_err(|e| bad(&format!("train config: {e}")))?;
    let metrics = serde_json::from_str(get("metrics")?).map_err(|e| bad(&format!("metrics: {e}")))?;
    Ok(Checkpoint { network, optimizer, epoch, train_config, metrics })
}

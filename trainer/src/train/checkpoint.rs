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
//! `__metadata__` holds strings: `format` = `iocane-ckpt-v2`, `arch` (the architecture JSON),
//! `train` (the training configuration JSON), `epoch` (completed epochs), `optimizer` (the
//! optimizer configuration JSON), `optimizer_step`, `metrics` (JSON of the epochs so far) and
//! `checksum`.
//!
//! # Integrity
//! `checksum` is `sha256:` and 64 lowercase hex digits: SHA-256 over, in order, the ASCII tag
//! `iocane-ckpt-v2`; every `__metadata__` entry but `checksum`, as key then value (the value
//! as compact JSON text); every tensor entry, as name then its index object as compact JSON
//! text; then the data section. Entries come in the header's (sorted) key order and each item
//! is prefixed with its length in bytes as a little-endian `u64`. A flipped bit anywhere in
//! the metadata, the tensor index or the tensor bytes is a [`CheckpointError::Checksum`].
//! Loading also rejects
//! - tensors whose byte ranges do not tile the data section exactly (overlaps, gaps or trailing
//!   bytes), whose `shape` does not match their length, or that the architecture does not use;
//! - any NaN or infinite value, naming the tensor and the index
//!   ([`CheckpointError::NonFinite`]);
//! - architectures beyond the size limits of [`ArchSpec`](crate::nn::ArchSpec), before any
//!   parameter is allocated.
//!
//! `iocane-ckpt-v1` files (written before checksums existed) are refused with a message saying
//! so: nothing tells a v1 file with a flipped bit from an intact one. Fuzzing builds
//! (`--cfg fuzzing`) compute the checksum but do not enforce it, so that the fuzzer reaches the
//! checks behind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::nn::{ArchSpec, LayerParams, NamedBuffer, Network, NnError, OptimizerConfig, OptimizerState, Params};

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
    /// The checksum does not match the content: the file is corrupt.
    #[error("{path}: checksum mismatch, the checkpoint is corrupt (stored {stored}, content hashes to {computed})")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum stored in the file.
        stored: String,
        /// The checksum of the content.
        computed: String,
    },
    /// A tensor holds NaN or an infinity.
    #[error("{path}: tensor {tensor} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Index of the first non-finite value.
        index: usize,
        /// The value.
        value: f32,
    },
}

impl CheckpointError {
    /// The same error about `path`.
    fn at(self, path: &Path) -> CheckpointError {
        let path = path.to_path_buf();
        match self {
            CheckpointError::Io { source, .. } => CheckpointError::Io { path, source },
            CheckpointError::Invalid { msg, .. } => CheckpointError::Invalid { path, msg },
            CheckpointError::Network { source, .. } => CheckpointError::Network { path, source },
            CheckpointError::Checksum { stored, computed, .. } => CheckpointError::Checksum { path, stored, computed },
            CheckpointError::NonFinite { tensor, index, value, .. } => {
                CheckpointError::NonFinite { path, tensor, index, value }
            }
        }
    }
}

/// The `format` string of checkpoints written by this version.
pub const FORMAT: &str = "iocane-ckpt-v2";

/// The checksum of a header (metadata and tensor index, in the map's order) and the data
/// section, as documented in the [module docs](self).
fn checksum(header: &serde_json::Map<String, Value>, data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut item = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    item(FORMAT.as_bytes());
    if let Some(meta) = header.get("__metadata__").and_then(Value::as_object) {
        for (k, v) in meta.iter().filter(|(k, _)| k.as_str() != "checksum") {
            item(k.as_bytes());
            item(v.to_string().as_bytes());
        }
    }
    for (name, info) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        item(name.as_bytes());
        item(info.to_string().as_bytes());
    }
    item(data);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
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

/// The checkpoint a run directory stands for: its `selected.ckpt` (the network model
/// selection kept, see [`super::TrainConfig::select`]) if there is one, else its `model.ckpt`
/// (the last epoch). A path that is not a directory is taken as the checkpoint file itself.
/// Export, fine-tuning (`--init`) and the studies all load runs through this one rule.
pub fn run_checkpoint(path: &Path) -> PathBuf {
    if !path.is_dir() {
        return path.to_path_buf();
    }
    let selected = path.join(super::SELECTED_CKPT);
    if selected.is_file() {
        selected
    } else {
        path.join("model.ckpt")
    }
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
    meta.insert("format".into(), FORMAT.into());
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
    let mut data = Vec::with_capacity(offset);
    for (_, values) in &ts {
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = checksum(&header, &data);
    if let Some(Value::Object(meta)) = header.get_mut("__metadata__") {
        meta.insert("checksum".into(), sum.into());
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    write_atomic(path, &to_bytes(ck)).map_err(|source| CheckpointError::Io { path: path.into(), source })
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
    from_bytes(&bytes).map_err(|e| e.at(path))
}

/// One tensor of the index: name and byte range in the data section.
struct Entry<'a> {
    name: &'a str,
    start: usize,
    end: usize,
}

/// Parses safetensors bytes into a checkpoint (see the [module docs](self) for what is
/// checked). Errors carry an empty path; [`load`] fills it in.
pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let bad = |msg: &str| CheckpointError::Invalid { path: PathBuf::new(), msg: msg.to_string() };
    let net_err = |source| CheckpointError::Network { path: PathBuf::new(), source };
    if bytes.len() < 8 {
        return Err(bad("file shorter than the 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let n = match usize::try_from(n) {
        Ok(n) if n <= bytes.len() - 8 => n,
        _ => return Err(bad("header length exceeds the file (truncated?)")),
    };
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(&format!("header JSON: {e}")))?;
    let data = &bytes[8 + n..];
    let obj = header.as_object().ok_or_else(|| bad("header is not a JSON object"))?;
    let meta = obj.get("__metadata__").and_then(|m| m.as_object()).ok_or_else(|| bad("missing __metadata__"))?;
    let get = |k: &str| meta.get(k).and_then(|v| v.as_str()).ok_or_else(|| bad(&format!("missing metadata `{k}`")));
    match get("format")? {
        FORMAT => {}
        "iocane-ckpt-v1" => {
            return Err(bad("format iocane-ckpt-v1 has no checksum, so its integrity cannot be checked; \
                 it was written by an older iocane: train again (or load and save it with that version \
                 after checking it) to get an iocane-ckpt-v2 file"))
        }
        other => return Err(bad(&format!("unknown checkpoint format `{other}` (expected {FORMAT})"))),
    }
    let stored = get("checksum")?;
    let computed = checksum(obj, data);
    if stored != computed && !cfg!(fuzzing) {
        return Err(CheckpointError::Checksum { path: PathBuf::new(), stored: stored.to_string(), computed });
    }
    // The tensor index: F32 only, `shape` consistent with the byte range, and the ranges
    // tiling the data section exactly, so the tensors decoded below hold at most as many
    // bytes as the file.
    let mut entries = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        if info.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
            return Err(bad(&format!("tensor {name}: only F32 is supported")));
        }
        let offs = info.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| bad("missing data_offsets"))?;
        let (start, end) = match offs.as_slice() {
            [a, b] => match (a.as_u64().map(usize::try_from), b.as_u64().map(usize::try_from)) {
                (Some(Ok(a)), Some(Ok(b))) if a <= b && b <= data.len() && (b - a) % 4 == 0 => (a, b),
                _ => return Err(bad(&format!("tensor {name}: data offsets out of bounds (truncated?)"))),
            },
            _ => return Err(bad(&format!("tensor {name}: data_offsets must be [start, end]"))),
        };
        let numel = info.get("shape").and_then(|s| s.as_array()).and_then(|dims| {
            dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(d.as_u64()?).ok()?))
        });
        if numel != Some((end - start) / 4) {
            return Err(bad(&format!("tensor {name}: shape does not match its {} bytes", end - start)));
        }
        entries.push(Entry { name, start, end });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0;
    for e in &entries {
        if e.start != at {
            return Err(bad(&format!("tensor {}: data overlaps another tensor or leaves a gap", e.name)));
        }
        at = e.end;
    }
    if at != data.len() {
        return Err(bad(&format!("{} bytes after the last tensor", data.len() - at)));
    }
    // The architecture is validated (size limits included) before anything is allocated for it.
    let spec = ArchSpec::from_json(get("arch")?).map_err(net_err)?;
    let mut by_name: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for e in &entries {
        let vals: Vec<f32> =
            data[e.start..e.end].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some((index, &value)) = vals.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CheckpointError::NonFinite { path: PathBuf::new(), tensor: e.name.to_string(), index, value });
        }
        by_name.insert(e.name, vals);
    }
    // Rebuild parameters in the network's own order.
    let shapes = spec.shapes().map_err(net_err)?;
    let mut layers = Vec::with_capacity(spec.layers.len());
    for (i, (layer, &shape)) in spec.layers.iter().zip(&shapes).enumerate() {
        let (wl, bl) = layer.param_lens(shape);
        let mut take = |kind: &str, len: usize| -> Result<Vec<f32>, CheckpointError> {
            if len == 0 {
                return Ok(Vec::new());
            }
            let name = format!("param.{i}.{kind}");
            let v = by_name.remove(name.as_str()).ok_or_else(|| bad(&format!("missing tensor {name}")))?;
            if v.len() != len {
                return Err(bad(&format!("tensor {name}: {} values, the architecture needs {len}", v.len())));
            }
            Ok(v)
        };
        layers.push(LayerParams { weights: take("weights", wl)?, bias: take("bias", bl)? });
    }
    if let Some(name) = by_name.keys().find(|k| !k.starts_with("opt.")) {
        return Err(bad(&format!("tensor {name} does not belong to the architecture")));
    }
    let network = Network::from_params(spec, Params { layers }).map_err(net_err)?;
    let optimizer = match meta.get("optimizer").and_then(|v| v.as_str()) {
        None => None,
        Some(cfg) => {
            let config: OptimizerConfig = serde_json::from_str(cfg).map_err(|e| bad(&format!("optimizer: {e}")))?;
            let step = get("optimizer_step")?.parse().map_err(|_| bad("optimizer_step is not a number"))?;
            let buffers = std::mem::take(&mut by_name)
                .into_iter()
                .filter_map(|(k, data)| k.strip_prefix("opt.").map(|n| NamedBuffer { name: n.to_string(), data }))
                .collect();
            Some(OptimizerState { config, step, buffers })
        }
    };
    let epoch = get("epoch")?.parse().map_err(|_| bad("epoch is not a number"))?;
    let train_config = serde_json::from_str(get("train")?).map_err(|e| bad(&format!("train config: {e}")))?;
    let metrics = serde_json::from_str(get("metrics")?).map_err(|e| bad(&format!("metrics: {e}")))?;
    Ok(Checkpoint { network, optimizer, epoch, train_config, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ArchSpec;

    fn tiny() -> Checkpoint {
        let spec = ArchSpec::from_compact("conv2k3,relu,flatten,dense3", [4, 4, 1], 3).unwrap();
        Checkpoint {
            network: Network::new(spec, 7).unwrap(),
            optimizer: None,
            epoch: 2,
            train_config: serde_json::json!({"lr": 0.1}),
            metrics: serde_json::json!([]),
        }
    }

    /// Splits checkpoint bytes into (header map, data).
    fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
    }

    /// Assembles a file from a header (its checksum recomputed) and data.
    fn seal(mut header: serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
        let sum = checksum(&header, data);
        header.get_mut("__metadata__").unwrap().as_object_mut().unwrap().insert("checksum".into(), sum.into());
        let h = Value::Object(header).to_string();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn set_meta(header: &mut serde_json::Map<String, Value>, key: &str, value: &str) {
        header.get_mut("__metadata__").unwrap().as_object_mut().unwrap().insert(key.into(), value.into());
    }

    #[test]
    fn round_trip_carries_a_checksum() {
        let ck = tiny();
        let bytes = to_bytes(&ck);
        let (header, _) = split(&bytes);
        let sum = header["__metadata__"]["checksum"].as_str().unwrap().to_string();
        assert!(sum.starts_with("sha256:") && sum.len() == 7 + 64, "{sum}");
        let back = from_bytes(&bytes).unwrap();
        assert_eq!(back.network.params(), ck.network.params());
        assert_eq!(back.epoch, 2);
        assert_eq!(to_bytes(&back), bytes);
    }

    #[test]
    fn flipped_bit_in_weights_is_a_checksum_mismatch() {
        let bytes = to_bytes(&tiny());
        let mut bad = bytes.clone();
        let last = bad.len() - 5;
        bad[last] ^= 0x01;
        let e = from_bytes(&bad).unwrap_err();
        assert!(matches!(e, CheckpointError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn flipped_bit_in_metadata_is_a_checksum_mismatch() {
        let bytes = to_bytes(&tiny());
        let (mut header, data) = split(&bytes);
        let sum = header["__metadata__"]["checksum"].clone();
        set_meta(&mut header, "epoch", "3");
        header.get_mut("__metadata__").unwrap().as_object_mut().unwrap().insert("checksum".into(), sum);
        let h = Value::Object(header).to_string();
        let mut bad = (h.len() as u64).to_le_bytes().to_vec();
        bad.extend_from_slice(h.as_bytes());
        bad.extend_from_slice(&data);
        assert!(matches!(from_bytes(&bad), Err(CheckpointError::Checksum { .. })));
    }

    #[test]
    fn nan_and_inf_weights_are_rejected_naming_the_tensor() {
        for (value, layer, kind) in
            [(f32::NAN, 0, "weights"), (f32::INFINITY, 3, "bias"), (f32::NEG_INFINITY, 3, "weights")]
        {
            let mut ck = tiny();
            let p = &mut ck.network.params_mut().layers[layer];
            if kind == "weights" {
                p.weights[1] = value;
            } else {
                p.bias[1] = value;
            }
            // The checksum is valid: the values themselves are refused.
            let e = load_err(&to_bytes(&ck));
            match &e {
                CheckpointError::NonFinite { tensor, index: 1, .. } => {
                    assert_eq!(tensor, &format!("param.{layer}.{kind}"))
                }
                other => panic!("{other}"),
            }
            assert!(e.to_string().contains(&format!("param.{layer}.{kind}")), "{e}");
        }
    }

    fn load_err(bytes: &[u8]) -> CheckpointError {
        from_bytes(bytes).map(|_| ()).unwrap_err()
    }

    #[test]
    fn arch_claiming_1e17_filters_is_an_error_before_allocating() {
        let (mut header, data) = split(&to_bytes(&tiny()));
        let arch = r#"{"input":[4,4,1],"classes":3,"layers":[{"op":"Conv2d","filters":100000000000000000,"kernel":[3,3]},{"op":"Flatten"},{"op":"Dense","units":3}]}"#;
        set_meta(&mut header, "arch", arch);
        let e = load_err(&seal(header, &data));
        assert!(matches!(e, CheckpointError::Network { .. }), "{e}");
        // The cause is the error's source (printed once, by the caller's error chain).
        let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
        assert!(cause.contains("limit"), "{e}: {cause}");
    }

    #[test]
    fn overlapping_and_gapped_tensors_are_rejected() {
        let (header, data) = split(&to_bytes(&tiny()));
        // Every tensor pointing at the whole data section would multiply the memory needed.
        let mut overlap = header.clone();
        for (k, v) in overlap.iter_mut() {
            if k != "__metadata__" {
                *v = serde_json::json!({"dtype": "F32", "shape": [data.len() / 4], "data_offsets": [0, data.len()]});
            }
        }
        assert!(load_err(&seal(overlap, &data)).to_string().contains("overlaps"));
        let mut trailing = data.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert!(load_err(&seal(header.clone(), &trailing)).to_string().contains("after the last tensor"));
        let mut shape = header;
        let name = shape.keys().find(|k| k.starts_with("param.")).unwrap().clone();
        shape.get_mut(&name).unwrap()["shape"] = serde_json::json!([1000]);
        assert!(load_err(&seal(shape, &data)).to_string().contains("shape does not match"));
    }

    #[test]
    fn tensor_outside_the_architecture_is_rejected() {
        let (mut header, mut data) = split(&to_bytes(&tiny()));
        let n = data.len();
        header.insert(
            "param.1.weights".into(),
            serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [n, n + 4]}),
        );
        data.extend_from_slice(&1f32.to_le_bytes());
        assert!(load_err(&seal(header, &data)).to_string().contains("does not belong"));
    }

    #[test]
    fn v1_checkpoint_without_checksum_is_refused_with_the_reason() {
        let (mut header, data) = split(&to_bytes(&tiny()));
        set_meta(&mut header, "format", "iocane-ckpt-v1");
        let e = load_err(&seal(header, &data));
        assert!(e.to_string().contains("no checksum"), "{e}");
    }

    #[test]
    fn header_length_beyond_the_file_is_rejected() {
        let mut bytes = to_bytes(&tiny());
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(load_err(&bytes).to_string().contains("header length"));
    }

    #[test]
    fn load_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.ckpt");
        let mut bytes = to_bytes(&tiny());
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        std::fs::write(&p, bytes).unwrap();
        let e = load(&p).map(|_| ()).unwrap_err();
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
    }
}

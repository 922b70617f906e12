//! `iocane inspect`: a human-readable description of a model blob.

use std::fmt::Write;

use iocane_runtime::{FormatError, Model, OpKind};
use sha2::{Digest, Sha256};

/// SHA-256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Validates `bytes` and describes the model: header, layers, sizes, metadata and hash.
pub fn describe(bytes: &[u8]) -> Result<String, FormatError> {
    let m = Model::parse(bytes)?;
    let mut s = String::new();
    let _ = writeln!(s, "iocane model, format v{}", iocane_runtime::format::VERSION);
    let _ = writeln!(s, "  sha256      {}", sha256_hex(bytes));
    let _ = writeln!(s, "  flash       {} bytes", bytes.len());
    let _ = writeln!(s, "  arena       {} bytes (exact)", m.arena_size());
    let _ = writeln!(s, "  input       {} u8 pixels (HxWxC, NHWC)", m.input_shape());
    let _ = writeln!(s, "  classes     {}", m.num_classes());
    let _ = writeln!(s, "  params      {}", m.param_count());
    let _ = writeln!(s, "  MACs        {}", m.macs());
    let labels: Vec<&str> = (0..m.num_classes()).filter_map(|i| m.label(i)).collect();
    if !labels.is_empty() {
        let _ = writeln!(s, "  labels      {}", labels.join(", "));
    }
    let _ = writeln!(
        s,
        "\n  #  op               input      output     kernel  stride  pad      zp(in,out)  clamp        MACs"
    );
    for (i, l) in m.layers().enumerate() {
        let (kh, kw) = l.kernel();
        let (sh, sw) = l.stride();
        let (pt, pl, pb, pr) = l.padding();
        let clamp = if l.outputs_logits() {
            "int32 logits".to_string()
        } else {
            let (a, b) = l.clamp();
            let act = if l.op().has_weights() && a == l.output_zero_point() && a != -128 { " relu" } else { "" };
            format!("[{a},{b}]{act}")
        };
        let geo = !matches!(l.op(), OpKind::Dense | OpKind::Flatten);
        let _ = writeln!(
            s,
            "  {i:<2} {:<16} {:<10} {:<10} {:<7} {:<7} {:<8} {:<11} {:<12} {}",
            l.op().name(),
            l.input_shape().to_string(),
            l.output_shape().to_string(),
            if geo { format!("{kh}x{kw}") } else { "-".into() },
            if geo { format!("{sh}x{sw}") } else { "-".into() },
            if geo { format!("{pt},{pl},{pb},{pr}") } else { "-".into() },
            format!("{},{}", l.input_zero_point(), l.output_zero_point()),
            clamp,
            l.macs()
        );
    }
    if !m.metadata().is_empty() {
        let _ = writeln!(s, "\n  metadata");
        for line in m.metadata().lines() {
            if let Some((k, v)) = line.split_once('=') {
                let _ = writeln!(s, "    {k:<18} {v}");
            }
        }
    }
    Ok(s)
}

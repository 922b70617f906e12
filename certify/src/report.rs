//! Reports of a certification run: `report.json`, `junit.xml`, `summary.md`, `curve.svg`,
//! and replayable counterexamples (`counterexamples/sample_<i>.bin` and `.png`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gate::{GateConfig, GateKind, GateOutcome, LevelCounts, SampleVerdict};

/// Errors writing or reading reports.
#[derive(Debug, Error)]
pub enum ReportError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A report could not be parsed or encoded.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Accuracies at one radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// Radius in levels.
    pub k: u8,
    /// `k / 255`.
    pub eps: f64,
    /// Clean accuracy.
    pub clean_acc: f64,
    /// Accuracy surviving every attack (upper bound on robust accuracy).
    pub empirical_acc: f64,
    /// Certified accuracy (lower bound on robust accuracy).
    pub certified_acc: f64,
    /// Accuracy under FGSM alone.
    pub fgsm_acc: f64,
    /// Accuracy under PGD alone.
    pub pgd_acc: f64,
    /// Accuracy under the Square Attack alone.
    pub square_acc: f64,
    /// Accuracy under random sampling alone.
    pub random_acc: f64,
    /// Samples per second of the bound pass.
    pub bound_samples_per_s: f64,
    /// Samples per second of the attack pass (over samples that needed attacks).
    pub attack_samples_per_s: f64,
}

impl LevelSummary {
    /// Derives accuracies from counts.
    pub fn from_counts(c: &LevelCounts) -> Self {
        let attacked = c.clean.saturating_sub(c.certified);
        LevelSummary {
            k: c.k,
            eps: c.k as f64 / 255.0,
            clean_acc: c.acc(c.clean),
            empirical_acc: c.acc(c.empirical),
            certified_acc: c.acc(c.certified),
            fgsm_acc: c.acc(c.fgsm),
            pgd_acc: c.acc(c.pgd),
            square_acc: c.acc(c.square),
            random_acc: c.acc(c.random),
            bound_samples_per_s: c.n as f64 / c.bound_seconds.max(1e-9),
            attack_samples_per_s: attacked as f64 / c.attack_seconds.max(1e-9),
        }
    }
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertifyReport {
    /// Report format version.
    pub format: String,
    /// Model file as given.
    pub model_file: String,
    /// SHA-256 of the model blob.
    pub model_sha256: String,
    /// Dataset name.
    pub dataset: String,
    /// SHA-256 of the evaluated split (see `Dataset::sha256_hex`).
    pub dataset_sha256: String,
    /// Settings (radius, attacks, seed, shard, gate, threshold).
    pub config: GateConfig,
    /// eps = k/255 of the gate.
    pub eps: f64,
    /// The figure held against the threshold.
    pub gate_value: f64,
    /// Whether the gate passed.
    pub passed: bool,
    /// Accuracies at the gate radius.
    pub result: LevelSummary,
    /// Accuracies at every radius (ascending).
    pub curve: Vec<LevelSummary>,
    /// Protocol warnings (Carlini et al.).
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Raw counts and per-sample verdicts (mergeable).
    pub outcome: GateOutcome,
}

impl CertifyReport {
    /// Builds the report and decides the gate.
    pub fn new(
        model_file: &str,
        model_sha256: &str,
        dataset: &str,
        dataset_sha256: &str,
        config: GateConfig,
        outcome: GateOutcome,
        seconds: f64,
    ) -> Self {
        let curve: Vec<LevelSummary> = outcome.levels.iter().map(LevelSummary::from_counts).collect();
        let result = curve
            .iter()
            .find(|l| l.k == config.k)
            .cloned()
            .unwrap_or_else(|| LevelSummary::from_counts(&LevelCounts::default()));
        let gate_value = match config.gate {
            GateKind::Certified => result.certified_acc,
            GateKind::Empirical => result.empirical_acc,
        };
        let passed = gate_value + 1e-12 >= config.threshold as f64;
        let warnings = crate::gate::protocol_warnings(&outcome);
        CertifyReport {
            format: "iocane-certify-report-v1".into(),
            model_file: model_file.into(),
            model_sha256: model_sha256.into(),
            dataset: dataset.into(),
            dataset_sha256: dataset_sha256.into(),
            eps: config.k as f64 / 255.0,
            config,
            gate_value,
            passed,
            result,
            curve,
            warnings,
            seconds,
            outcome,
        }
    }

    /// Count of samples with a verdict.
    pub fn count(&self, v: SampleVerdict) -> usize {
        self.outcome.samples.iter().filter(|s| s.verdict == v).count()
    }

    /// JUnit XML: one test case for the gate, one per protocol check.
    pub fn junit(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        let gate_name = format!(
            "{} accuracy at eps {}/255 >= {:.4}",
            match self.config.gate {
                GateKind::Certified => "certified",
                GateKind::Empirical => "empirical",
            },
            self.config.k,
            self.config.threshold
        );
        let failures = usize::from(!self.passed) + self.warnings.len().min(1);
        let mut o = String::new();
        let _ = writeln!(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = writeln!(
            o,
            "<testsuite name=\"iocane-certify\" tests=\"2\" failures=\"{failures}\" time=\"{:.3}\">",
            self.seconds
        );
        let _ = write!(o, "  <testcase classname=\"iocane.gate\" name=\"{}\"", esc(&gate_name));
        if self.passed {
            let _ = writeln!(o, "/>");
        } else {
            let _ = writeln!(
                o,
                ">\n    <failure message=\"{:.4} &lt; {:.4}\">model {} on {}: {:.4} below threshold {:.4}</failure>\n  </testcase>",
                self.gate_value,
                self.config.threshold,
                esc(&self.model_sha256),
                esc(&self.dataset),
                self.gate_value,
                self.config.threshold
            );
        }
        let _ = write!(o, "  <testcase classname=\"iocane.protocol\" name=\"evaluation protocol checks\"");
        if self.warnings.is_empty() {
            let _ = writeln!(o, "/>");
        } else {
            let _ = writeln!(
                o,
                ">\n    <failure message=\"{} warning(s)\">{}</failure>\n  </testcase>",
                self.warnings.len(),
                esc(&self.warnings.join("\n"))
            );
        }
        let _ = writeln!(o, "</testsuite>");
        o
    }

    /// Markdown summary.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# iocane certify: {}\n", if self.passed { "PASSED" } else { "FAILED" });
        let _ = writeln!(o, "- model: `{}` (sha256 `{}`)", self.model_file, self.model_sha256);
        let _ = writeln!(
            o,
            "- dataset: {} ({} samples, sha256 `{}`)",
            self.dataset,
            self.outcome.samples.len(),
            self.dataset_sha256
        );
        let _ = writeln!(
            o,
            "- threat model: L-infinity, eps = {}/255 = {:.4} (k = {} integer levels, clipped to [0, 255])",
            self.config.k, self.eps, self.config.k
        );
        let _ = writeln!(
            o,
            "- gate: {:?} accuracy {:.2}% vs threshold {:.2}%",
            self.config.gate,
            100.0 * self.gate_value,
            100.0 * self.config.threshold as f64
        );
        let _ = writeln!(
            o,
            "- attacks: PGD-{} x{} restarts (straight-through gradients, judged on int8), FGSM, Square ({} queries), random ({} samples); seed {}",
            self.config.pgd_steps, self.config.pgd_restarts, self.config.square_queries, self.config.random_samples, self.config.seed
        );
        let _ =
            writeln!(o, "\n| k | eps | clean | empirical (upper) | certified (lower) | FGSM | PGD | Square | random |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for l in &self.curve {
            let _ = writeln!(
                o,
                "| {} | {:.4} | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.2}% |",
                l.k,
                l.eps,
                100.0 * l.clean_acc,
                100.0 * l.empirical_acc,
                100.0 * l.certified_acc,
                100.0 * l.fgsm_acc,
                100.0 * l.pgd_acc,
                100.0 * l.square_acc,
                100.0 * l.random_acc
            );
        }
        let _ = writeln!(
            o,
            "\nVerdicts at k = {}: {} certified, {} falsified, {} unknown, {} misclassified.",
            self.config.k,
            self.count(SampleVerdict::Certified),
            self.count(SampleVerdict::Falsified),
            self.count(SampleVerdict::Unknown),
            self.count(SampleVerdict::Misclassified)
        );
        if self.warnings.is_empty() {
            let _ = writeln!(o, "\nProtocol checks: none raised.");
        } else {
            let _ = writeln!(o, "\nProtocol warnings:");
            for w in &self.warnings {
                let _ = writeln!(o, "- {w}");
            }
        }
        o
    }

    /// Accuracy against eps as an SVG line chart (clean, attacked, certified).
    pub fn svg(&self) -> String {
        let (w, h, m) = (560.0, 360.0, 50.0);
        let max_k = self.curve.iter().map(|l| l.k).max().unwrap_or(1).max(1) as f64;
        let x = |k: u8| m + (w - 2.0 * m) * k as f64 / max_k;
        let y = |a: f64| h - m - (h - 2.0 * m) * a;
        let mut o = String::new();
        let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">");
        let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(o, "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - m, w - m, h - m);
        let _ = writeln!(o, "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>", h - m);
        for t in 0..=4 {
            let a = t as f64 / 4.0;
            let _ = writeln!(
                o,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
                m - 6.0,
                y(a) + 4.0,
                a * 100.0
            );
        }
        for l in &self.curve {
            let _ = writeln!(
                o,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}/255</text>",
                x(l.k),
                h - m + 18.0,
                l.k
            );
        }
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">eps (L-infinity, pixel levels)</text>",
            w / 2.0,
            h - 8.0
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"24\" text-anchor=\"middle\">accuracy vs eps: {}</text>",
            w / 2.0,
            self.dataset
        );
        type Series<'a> = (&'a str, &'a str, fn(&LevelSummary) -> f64);
        let series: [Series<'_>; 3] = [
            ("clean", "#555555", |l| l.clean_acc),
            ("attacked (upper bound)", "#d62728", |l| l.empirical_acc),
            ("certified (lower bound)", "#1f77b4", |l| l.certified_acc),
        ];
        for (i, (name, color, f)) in series.iter().enumerate() {
            let pts: Vec<String> = self.curve.iter().map(|l| format!("{:.1},{:.1}", x(l.k), y(f(l)))).collect();
            let _ = writeln!(
                o,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            let ly = m + 16.0 * i as f64;
            let _ = writeln!(
                o,
                "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>",
                w - m - 170.0,
                w - m - 150.0
            );
            let _ = writeln!(o, "<text x=\"{}\" y=\"{}\">{name}</text>", w - m - 145.0, ly + 4.0);
        }
        let _ = writeln!(o, "</svg>");
        o
    }

    /// Writes report.json, junit.xml, summary.md, curve.svg and the counterexamples into `dir`.
    pub fn write(&self, dir: &Path, shape: (usize, usize, usize)) -> Result<(), ReportError> {
        let io = |path: PathBuf| move |source| ReportError::Io { path, source };
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ReportError::Format { path: dir.join("report.json"), msg: e.to_string() })?;
        let put = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            iocane_trainer::checkpoint::write_atomic(&p, bytes).map_err(io(p.clone()))
        };
        put("report.json", json.as_bytes())?;
        put("junit.xml", self.junit().as_bytes())?;
        put("summary.md", self.markdown().as_bytes())?;
        put("curve.svg", self.svg().as_bytes())?;
        for s in &self.outcome.samples {
            if let Some(cx) = &s.counterexample {
                put(&format!("counterexamples/sample_{}.bin", s.index), cx)?;
                let png = png_bytes(cx, shape)
                    .map_err(|msg| ReportError::Format { path: dir.join("counterexamples"), msg })?;
                put(&format!("counterexamples/sample_{}.png", s.index), &png)?;
            }
        }
        Ok(())
    }

    /// Reads a report written by [`CertifyReport::write`].
    pub fn read(path: &Path) -> Result<CertifyReport, ReportError> {
        let bytes = std::fs::read(path).map_err(|source| ReportError::Io { path: path.into(), source })?;
        serde_json::from_slice(&bytes).map_err(|e| ReportError::Format { path: path.into(), msg: e.to_string() })
    }
}

/// Encodes an NHWC u8 image (1 or 3 channels) as PNG.
pub fn png_bytes(px: &[u8], (h, w, c): (usize, usize, usize)) -> Result<Vec<u8>, String> {
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| e.to_string())?;
        wr.write_image_data(px).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

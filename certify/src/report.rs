//! Reports of a certification run: `report.json`, `junit.xml`, `summary.md`, `curve.svg`,
//! and replayable counterexamples (`counterexamples/sample_<i>.bin` and `.png`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gate::{BoundMethod, GateConfig, GateKind, GateOutcome, LevelCounts, SampleVerdict};

/// Errors writing or reading reports.
#[derive(Debug, Error)]
pub enum ReportError {
    /// File system error.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A report could not be parsed or encoded.
    #[error("{}: {msg}", path.display())]
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
    /// Per attack of the suite, in its order (empty for reports written before suites).
    #[serde(default)]
    pub attacks: Vec<AttackSummary>,
}

/// One attack's accuracies at one radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackSummary {
    /// The attack.
    pub attack: crate::attack::AttackName,
    /// Accuracy under this attack alone (over the samples it ran on; the integer search runs
    /// only on what the earlier attacks left).
    pub alone_acc: f64,
    /// Robust accuracy after this attack and every earlier one (AutoAttack's running figure).
    pub robust_acc: f64,
    /// Samples this attack broke first (no earlier attack of the suite broke them).
    pub broke_first: usize,
    /// Samples per second of this attack over the samples it ran on (per thread).
    #[serde(default)]
    pub samples_per_s: f64,
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
            attacks: c
                .attacks
                .iter()
                .scan(c.clean, |before, t| {
                    let first = before.saturating_sub(t.robust_after);
                    *before = t.robust_after;
                    Some(AttackSummary {
                        attack: t.attack,
                        alone_acc: c.acc(c.clean.saturating_sub(t.broke)),
                        robust_acc: c.acc(t.robust_after),
                        broke_first: first,
                        samples_per_s: t.ran as f64 / t.seconds.max(1e-9),
                    })
                })
                .collect(),
        }
    }
}

/// Largest `report.json` [`CertifyReport::read`] reads (bytes), checked before reading.
pub const MAX_REPORT_BYTES: u64 = 256 << 20;

/// The report format this version writes and reads.
pub const REPORT_FORMAT: &str = "iocane-certify-report-v2";

/// What a run was about, besides its settings: enough to check that shard reports are one
/// run's parts and to write their images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Model file as given.
    pub model_file: String,
    /// SHA-256 of the model blob.
    pub model_sha256: String,
    /// Dataset name.
    pub dataset: String,
    /// SHA-256 of the evaluated split (see `Dataset::sha256_hex`).
    pub dataset_sha256: String,
    /// Images in the evaluated split (before `--samples` and sharding).
    pub split_len: usize,
    /// Image shape `[h, w, c]` (NHWC u8 pixels).
    pub input_shape: [usize; 3],
    /// Classes of the model (and of the dataset).
    pub classes: usize,
    /// The radius as requested and as applied.
    pub radius: crate::gate::Radius,
}

impl RunIdentity {
    /// The identity of a run of `model` (parsed from `blob`, found at `model_file`) on
    /// `test` at `radius`: hashes of the blob and of the split, shapes and classes.
    pub fn new(
        model_file: &str,
        blob: &[u8],
        model: &iocane_runtime::Model<'_>,
        test: &iocane_trainer::data::Dataset,
        radius: crate::gate::Radius,
    ) -> RunIdentity {
        let s = model.input_shape();
        RunIdentity {
            model_file: model_file.to_string(),
            model_sha256: iocane_trainer::quant::export::sha256_hex(blob),
            dataset: test.name.clone(),
            dataset_sha256: test.sha256_hex(),
            split_len: test.len(),
            input_shape: [s.h, s.w, s.c],
            classes: model.num_classes(),
            radius,
        }
    }
}

/// How the gate decided, in counts (the figures are for display only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Samples the gate counted (at the gate radius).
    pub n: usize,
    /// Samples that met the gate's criterion (certified, or surviving every attack).
    pub count: usize,
    /// Samples needed to pass: `ceil(threshold * n)` (see `gate::Threshold`).
    pub required: usize,
    /// `count / n`.
    pub value: f64,
    /// Whether `count >= required` (and `n > 0`).
    pub met: bool,
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertifyReport {
    /// Report format version ([`REPORT_FORMAT`]).
    pub format: String,
    /// Version of iocane that wrote the report.
    pub iocane_version: String,
    /// What was certified: model, dataset, shape, classes, requested and applied radius.
    #[serde(flatten)]
    pub run: RunIdentity,
    /// Settings (radius, attacks, seed, shard, gate, threshold, strict).
    pub config: GateConfig,
    /// eps = k/255 of the gate, as applied (`run.radius` has the eps as requested).
    pub eps: f64,
    /// The gate's counts and decision at the gate radius.
    pub gate: GateDecision,
    /// The verdict: `gate.met`, and with `config.strict` no protocol warning either.
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
    /// The float-vs-int8 differential (`--compare-float`), if it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_comparison: Option<crate::compare::FloatComparison>,
}

impl CertifyReport {
    /// Builds the report and decides the gate: passed iff the count of samples meeting the
    /// gate's criterion is at least `ceil(threshold * n)`, over `n > 0` samples (exact
    /// integer comparison), and, with `config.strict`, no protocol warning was raised.
    pub fn new(id: RunIdentity, config: GateConfig, outcome: GateOutcome, seconds: f64) -> Self {
        let curve: Vec<LevelSummary> = outcome.levels.iter().map(LevelSummary::from_counts).collect();
        let at = outcome.at(config.k).cloned().unwrap_or_else(|| LevelCounts { k: config.k, ..Default::default() });
        let result = LevelSummary::from_counts(&at);
        let gate_count = match config.gate {
            GateKind::Certified => at.certified,
            GateKind::Empirical => at.empirical,
        };
        let gate_required = config.threshold.required(at.n);
        let gate_met = config.threshold.met(gate_count, at.n);
        let warnings = crate::gate::protocol_warnings(&outcome);
        let passed = gate_met && (!config.strict || warnings.is_empty());
        CertifyReport {
            format: REPORT_FORMAT.into(),
            iocane_version: env!("CARGO_PKG_VERSION").into(),
            run: id,
            eps: config.k as f64 / 255.0,
            config,
            gate: GateDecision {
                n: at.n,
                count: gate_count,
                required: gate_required,
                value: at.acc(gate_count),
                met: gate_met,
            },
            passed,
            result,
            curve,
            warnings,
            seconds,
            outcome,
            float_comparison: None,
        }
    }

    /// Count of samples with a verdict.
    pub fn count(&self, v: SampleVerdict) -> usize {
        self.outcome.samples.iter().filter(|s| s.verdict == v).count()
    }

    /// JUnit XML: one test case for the gate, one for the protocol checks. The failures agree
    /// with the exit code: the protocol case fails only under `--strict`; otherwise its
    /// warnings are reported as the case's `system-out`.
    pub fn junit(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        let gate_name = format!(
            "{} accuracy at eps {}/255 >= {}",
            match self.config.gate {
                GateKind::Certified => "certified",
                GateKind::Empirical => "empirical",
            },
            self.config.k,
            self.threshold_text()
        );
        let protocol_fails = self.config.strict && !self.warnings.is_empty();
        let failures = usize::from(!self.gate.met) + usize::from(protocol_fails);
        let mut o = String::new();
        let _ = writeln!(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = writeln!(
            o,
            "<testsuite name=\"iocane-certify\" tests=\"2\" failures=\"{failures}\" time=\"{:.3}\">",
            self.seconds
        );
        let _ = write!(o, "  <testcase classname=\"iocane.gate\" name=\"{}\"", esc(&gate_name));
        if self.gate.met {
            let _ = writeln!(o, "/>");
        } else {
            let _ = writeln!(
                o,
                ">\n    <failure message=\"{} of {} samples, {} needed\">model {} on {}: {} of {} samples ({:.2}%), below the threshold {} ({} needed)</failure>\n  </testcase>",
                self.gate.count,
                self.gate.n,
                self.gate.required,
                esc(&self.run.model_sha256),
                esc(&self.run.dataset),
                self.gate.count,
                self.gate.n,
                100.0 * self.gate.value,
                self.threshold_text(),
                self.gate.required
            );
        }
        let _ = write!(o, "  <testcase classname=\"iocane.protocol\" name=\"evaluation protocol checks\"");
        if self.warnings.is_empty() {
            let _ = writeln!(o, "/>");
        } else if protocol_fails {
            let _ = writeln!(
                o,
                ">\n    <failure message=\"{} warning(s) (--strict)\">{}</failure>\n  </testcase>",
                self.warnings.len(),
                esc(&self.warnings.join("\n"))
            );
        } else {
            let _ = writeln!(
                o,
                ">\n    <system-out>{} warning(s), not failing without --strict:\n{}</system-out>\n  </testcase>",
                self.warnings.len(),
                esc(&self.warnings.join("\n"))
            );
        }
        let _ = writeln!(o, "</testsuite>");
        o
    }

    /// The threshold as a percentage with its exact fraction, e.g. `80.00% (4/5)`.
    pub fn threshold_text(&self) -> String {
        format!("{:.2}% ({})", 100.0 * self.config.threshold.as_f64(), self.config.threshold)
    }

    /// Time per sample at the gate radius (median and slowest, from each sample's
    /// `seconds`), for the console: wall times differ between runs, so `summary.md` leaves
    /// them out. `None` for a report without samples.
    pub fn timing_line(&self) -> Option<String> {
        let mut t: Vec<(f64, usize)> = self.outcome.samples.iter().map(|s| (s.seconds, s.index)).collect();
        if t.is_empty() {
            return None;
        }
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (slow, idx) = t[t.len() - 1];
        Some(format!(
            "time per sample at k = {}: median {:.1} ms, slowest {:.1} ms (sample {idx})",
            self.config.k,
            1e3 * t[t.len() / 2].0,
            1e3 * slow
        ))
    }

    /// Markdown summary.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# iocane certify: {}\n", if self.passed { "PASSED" } else { "FAILED" });
        let _ = writeln!(o, "- model: `{}` (sha256 `{}`)", self.run.model_file, self.run.model_sha256);
        let _ = writeln!(
            o,
            "- dataset: {} ({} samples, sha256 `{}`)",
            self.run.dataset,
            self.outcome.samples.len(),
            self.run.dataset_sha256
        );
        let _ = writeln!(
            o,
            "- threat model: L-infinity, eps = {}/255 = {:.4} (k = {} integer levels, clipped to [0, 255]){}",
            self.config.k,
            self.eps,
            self.config.k,
            if self.run.radius.exact {
                String::new()
            } else {
                format!("; requested {}, rounded down", self.run.radius.requested)
            }
        );
        let _ = writeln!(
            o,
            "- gate: {:?} accuracy {:.2}% ({} of {}) vs threshold {} ({} needed){}",
            self.config.gate,
            100.0 * self.gate.value,
            self.gate.count,
            self.gate.n,
            self.threshold_text(),
            self.gate.required,
            if self.config.strict { "; --strict: protocol warnings fail the gate" } else { "" }
        );
        let _ = writeln!(o, "- attacks: {}; seed {}", self.attacks_text(), self.config.seed);
        let crown = match self.config.alpha_steps {
            0 => "linear relaxation (CROWN)".to_string(),
            n => format!("linear relaxation (CROWN, {n} slope-optimisation steps)"),
        };
        let bounds = match self.config.bound {
            BoundMethod::Ibp => "interval bounds (IBP)".to_string(),
            BoundMethod::Crown => format!("interval bounds, then {crown} on the open samples"),
            BoundMethod::Bab => format!(
                "interval bounds, then {crown}, then branch and bound ({} branches{}) on the samples the attacks leave open",
                self.config.bab_branches,
                self.config.bab_budget_ms.map(|ms| format!(" or {ms} ms")).unwrap_or_default()
            ),
        };
        let _ = writeln!(o, "- bounds: {bounds}, all on the int8 arithmetic");
        let legacy = self.config.suite.attacks == crate::attack::suite::FAST;
        if legacy {
            let _ = writeln!(
                o,
                "\n| k | eps | clean | empirical (upper) | certified (lower) | FGSM | PGD | Square | random |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        } else {
            self.suite_table(&mut o);
        }
        for l in self.curve.iter().filter(|_| legacy) {
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
        self.running_table(&mut o);
        let _ = writeln!(
            o,
            "\nVerdicts at k = {}: {} certified, {} falsified, {} unknown, {} misclassified.",
            self.config.k,
            self.count(SampleVerdict::Certified),
            self.count(SampleVerdict::Falsified),
            self.count(SampleVerdict::Unknown),
            self.count(SampleVerdict::Misclassified)
        );
        if let Some(at) = self.outcome.at(self.config.k).filter(|_| self.config.bound != BoundMethod::Ibp) {
            let _ = writeln!(
                o,
                "Certified by interval bounds {}, by linear relaxation {}, by branch and bound {}.",
                at.certified - at.certified_crown - at.certified_bab,
                at.certified_crown,
                at.certified_bab
            );
            if at.falsified_bab > 0 {
                let _ = writeln!(
                    o,
                    "Falsified by branch and bound (an int8 counterexample from a branch's corner or the integer search from it) {} of the samples every attack left standing; the per-attack figures above do not count them.",
                    at.falsified_bab
                );
            }
        }
        if let Some(at) = self.outcome.at(self.config.k).filter(|_| self.config.suite.double_check) {
            let standing = at.empirical.saturating_sub(at.certified);
            let _ = writeln!(
                o,
                "Doubling check at k = {}: doubled steps, restarts and queries broke {} of the {} samples the attacks left standing ({:.2} points of robust accuracy).",
                self.config.k,
                at.doubled_broke,
                standing,
                100.0 * at.acc(at.doubled_broke)
            );
        }
        let shown = crate::gallery::gallery_samples(&self.outcome.samples).len();
        if shown > 0 {
            let broken = self.outcome.samples.iter().filter(|s| s.counterexample.is_some()).count();
            let _ = writeln!(
                o,
                "\nCounterexamples: [{GALLERY}]({GALLERY}) shows {shown} of {broken} (clean, adversarial, difference x{}; \
                 captioned with the true class, the int8 model's class of the adversarial image and the attack).",
                crate::gallery::gain(self.config.k)
            );
        }
        if let Some(c) = &self.float_comparison {
            o.push_str(&c.markdown());
        }
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

    /// The attacks and their budgets in one phrase.
    pub fn attacks_text(&self) -> String {
        use crate::attack::AttackName as A;
        let c = &self.config;
        let s = &c.suite;
        let parts: Vec<String> = s
            .attacks
            .iter()
            .map(|a| match a {
                A::Pgd => format!(
                    "PGD-{} x{} restarts (straight-through gradients, judged on int8)",
                    c.pgd_steps, c.pgd_restarts
                ),
                A::Fgsm => "FGSM".to_string(),
                A::Square => format!("Square ({} queries)", c.square_queries),
                A::Random => format!("random ({} samples)", c.random_samples),
                A::ApgdCe => format!("APGD-CE ({} iterations x{} restarts)", s.apgd_iterations, s.apgd_restarts),
                A::ApgdDlr => format!("APGD-DLR ({} iterations x{} restarts)", s.apgd_iterations, s.apgd_restarts),
                A::ApgdT => format!(
                    "APGD-T ({} targets x {} iterations x{} restarts)",
                    s.apgd_targets, s.apgd_iterations, s.apgd_restarts
                ),
                A::FabT => format!(
                    "FAB-T ({} targets x {} iterations x{} restarts)",
                    s.apgd_targets, s.apgd_iterations, s.apgd_restarts
                ),
                A::Search => format!("integer search ({} queries, on the survivors)", s.search_queries),
            })
            .collect();
        parts.join(", ")
    }

    /// The accuracy table with a column per attack of the suite (alone).
    fn suite_table(&self, o: &mut String) {
        let names: Vec<String> = self
            .config
            .suite
            .attacks
            .iter()
            .map(
                |a| if *a == crate::attack::AttackName::Search { format!("{a} (on survivors)") } else { a.to_string() },
            )
            .collect();
        let _ = writeln!(o, "\n| k | eps | clean | empirical (upper) | certified (lower) | {} |", names.join(" | "));
        let _ = writeln!(o, "|---|---|---|---|---|{}", "---|".repeat(names.len()));
        for l in &self.curve {
            let alone: Vec<String> = l.attacks.iter().map(|a| format!("{:.2}%", 100.0 * a.alone_acc)).collect();
            let _ = writeln!(
                o,
                "| {} | {:.4} | {:.2}% | {:.2}% | {:.2}% | {} |",
                l.k,
                l.eps,
                100.0 * l.clean_acc,
                100.0 * l.empirical_acc,
                100.0 * l.certified_acc,
                alone.join(" | ")
            );
        }
    }

    /// The running robust accuracy in the suite's order (AutoAttack's summary: clean, after
    /// each attack, final), with the samples each attack broke first.
    fn running_table(&self, o: &mut String) {
        let names: Vec<String> = self.config.suite.attacks.iter().map(|a| a.to_string()).collect();
        if self.curve.iter().all(|l| l.attacks.is_empty()) {
            return;
        }
        let _ = writeln!(
            o,
            "\nRobust accuracy in the suite's order (clean, after each attack, final), with the samples each attack broke first:\n"
        );
        let _ = writeln!(
            o,
            "| k | clean | {} | final |",
            names.iter().map(|n| format!("after {n}")).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(o, "|---|---|{}---|", "---|".repeat(names.len()));
        for l in &self.curve {
            let after: Vec<String> =
                l.attacks.iter().map(|a| format!("{:.2}% (-{})", 100.0 * a.robust_acc, a.broke_first)).collect();
            let _ = writeln!(
                o,
                "| {} | {:.2}% | {} | {:.2}% |",
                l.k,
                100.0 * l.clean_acc,
                after.join(" | "),
                100.0 * l.empirical_acc
            );
        }
    }

    /// Accuracy against eps as an SVG line chart: clean, attacked (upper bound) and certified
    /// (lower bound) accuracy with a marker at each measured radius, the gate's threshold as a
    /// horizontal line, the gate's radius as a vertical line, and the legend beside the plot
    /// (never over a curve).
    pub fn svg(&self) -> String {
        let (w, h) = (720.0, 380.0);
        let (left, right, top, bottom) = (60.0, 500.0, 50.0, 320.0);
        let max_k = self.curve.iter().map(|l| l.k).chain([self.config.k]).max().unwrap_or(1).max(1) as f64;
        let x = |k: u8| left + (right - left) * k as f64 / max_k;
        let y = |a: f64| bottom - (bottom - top) * a.clamp(0.0, 1.0);
        let mut o = String::new();
        let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">");
        let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">accuracy vs eps: {}</text>",
            (left + right) / 2.0,
            esc(&self.run.dataset)
        );
        for t in 0..=4 {
            let a = t as f64 / 4.0;
            let _ = writeln!(
                o,
                "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{right}\" y2=\"{0:.1}\" stroke=\"#e5e5e5\"/>",
                y(a)
            );
            let _ = writeln!(
                o,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
                left - 6.0,
                y(a) + 4.0,
                a * 100.0
            );
        }
        let _ = writeln!(o, "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/>");
        let _ = writeln!(o, "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>");
        // Tick labels at each measured radius, skipping those too close to the previous one.
        let mut last_label = f64::NEG_INFINITY;
        for l in &self.curve {
            let _ = writeln!(
                o,
                "<line x1=\"{0:.1}\" y1=\"{bottom}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"black\"/>",
                x(l.k),
                bottom + 4.0
            );
            if x(l.k) - last_label >= 40.0 {
                last_label = x(l.k);
                let _ = writeln!(
                    o,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}/255</text>",
                    x(l.k),
                    bottom + 18.0,
                    l.k
                );
            }
        }
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">eps (L-infinity, pixel levels)</text>",
            (left + right) / 2.0,
            bottom + 40.0
        );
        // The gate: its radius (vertical) and its threshold (horizontal), both dashed.
        let gx = x(self.config.k);
        let _ = writeln!(
            o,
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"#2ca02c\" stroke-width=\"1.5\" stroke-dasharray=\"2,3\"/>"
        );
        let _ = writeln!(
            o,
            "<text x=\"{gx:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#2ca02c\">gate eps {}/255</text>",
            top - 6.0,
            self.config.k
        );
        let ty = y(self.config.threshold.as_f64());
        let _ = writeln!(
            o,
            "<line x1=\"{left}\" y1=\"{ty:.1}\" x2=\"{right}\" y2=\"{ty:.1}\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>"
        );
        type Series<'a> = (&'a str, &'a str, fn(&LevelSummary) -> f64);
        let series: [Series<'_>; 3] = [
            ("clean", "#555555", |l| l.clean_acc),
            ("attacked (upper bound)", "#d62728", |l| l.empirical_acc),
            ("certified (lower bound)", "#1f77b4", |l| l.certified_acc),
        ];
        // Markers differ in shape too, so that coinciding points stay visible.
        let marker = |o: &mut String, i: usize, cx: f64, cy: f64, color: &str| {
            let _ = match i {
                0 => writeln!(o, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4.5\" fill=\"white\" stroke=\"{color}\" stroke-width=\"2\"/>"),
                1 => writeln!(o, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{color}\"/>", cx - 3.5, cy - 3.5),
                _ => writeln!(
                    o,
                    "<path d=\"M{cx:.1},{:.1} L{:.1},{cy:.1} L{cx:.1},{:.1} L{:.1},{cy:.1} Z\" fill=\"{color}\"/>",
                    cy - 4.0,
                    cx + 4.0,
                    cy + 4.0,
                    cx - 4.0
                ),
            };
        };
        for (i, (_, color, f)) in series.iter().enumerate() {
            let pts: Vec<String> = self.curve.iter().map(|l| format!("{:.1},{:.1}", x(l.k), y(f(l)))).collect();
            let _ = writeln!(
                o,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            for l in &self.curve {
                marker(&mut o, i, x(l.k), y(f(l)), color);
            }
        }
        // The legend, right of the plot.
        let lx = right + 24.0;
        for (i, (name, color, _)) in series.iter().enumerate() {
            let ly = top + 8.0 + 20.0 * i as f64;
            let _ = writeln!(
                o,
                "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>",
                lx + 24.0
            );
            marker(&mut o, i, lx + 12.0, ly, color);
            let _ = writeln!(o, "<text x=\"{}\" y=\"{}\">{name}</text>", lx + 30.0, ly + 4.0);
        }
        let ly = top + 8.0 + 20.0 * 3.0;
        let gate = match self.config.gate {
            GateKind::Certified => "certified",
            GateKind::Empirical => "attacked",
        };
        let _ = writeln!(
            o,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>",
            lx + 24.0
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\">threshold {:.0}% ({gate})</text>",
            lx + 30.0,
            ly + 4.0,
            100.0 * self.config.threshold.as_f64()
        );
        let ly = ly + 20.0;
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#2ca02c\" stroke-width=\"1.5\" stroke-dasharray=\"2,3\"/>",
            lx + 12.0,
            ly - 7.0,
            lx + 12.0,
            ly + 7.0
        );
        let _ = writeln!(o, "<text x=\"{}\" y=\"{}\">gate eps {}/255</text>", lx + 30.0, ly + 4.0, self.config.k);
        let verdict = if self.passed { ("PASSED", "#2ca02c") } else { ("FAILED", "#d62728") };
        let _ = writeln!(
            o,
            "<text x=\"{lx}\" y=\"{}\" fill=\"{}\">gate {}: {:.2}% at {}/255</text>",
            ly + 34.0,
            verdict.1,
            verdict.0,
            100.0 * self.gate.value,
            self.config.k
        );
        let _ = writeln!(o, "</svg>");
        o
    }

    /// Writes report.json, junit.xml, summary.md, curve.svg, gallery.png (when a sample has a
    /// counterexample) and `counterexamples/` into `dir`.
    ///
    /// The directory's other files are left alone, but everything the report owns is
    /// replaced: the counterexamples are written to a temporary folder first and swapped in,
    /// so no stale counterexample of an earlier run survives, and every file is written
    /// atomically, `report.json` last (an earlier `report.json` is removed first), so a
    /// killed run never leaves a report that names files it did not write.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ReportError::Format { path: dir.join("report.json"), msg: e.to_string() })?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pid = std::process::id();
        let tmp = dir.join(format!(".{COUNTEREXAMPLES}.tmp-{pid}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let [h, w, c] = self.run.input_shape;
        let mut any = false;
        for s in &self.outcome.samples {
            if let (Some(cx), Some(file)) = (&s.counterexample, &s.counterexample_file) {
                if !any {
                    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
                    any = true;
                }
                let name = Path::new(file).file_name().map(PathBuf::from).unwrap_or_default();
                let bin = tmp.join(&name);
                std::fs::write(&bin, cx).map_err(io(&bin))?;
                let png = png_bytes(cx, (h, w, c)).map_err(|msg| ReportError::Format { path: bin.clone(), msg })?;
                let png_path = bin.with_extension("png");
                std::fs::write(&png_path, png).map_err(io(&png_path))?;
                if let Some(clean) = &s.clean {
                    let name = Path::new(&crate::gate::clean_file(s.index)).file_name().map(PathBuf::from);
                    let p = tmp.join(name.unwrap_or_default());
                    std::fs::write(&p, clean).map_err(io(&p))?;
                }
            }
        }
        let gallery = crate::gallery::gallery_png(&self.outcome.samples, (h, w, c), self.config.k)
            .transpose()
            .map_err(|msg| ReportError::Format { path: dir.join(GALLERY), msg })?;
        let report_path = dir.join("report.json");
        match std::fs::remove_file(&report_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&report_path)(e)),
            _ => {}
        }
        let live = dir.join(COUNTEREXAMPLES);
        if live.exists() {
            let old = dir.join(format!(".{COUNTEREXAMPLES}.old-{pid}"));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&live, &old).map_err(io(&live))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        if any {
            std::fs::rename(&tmp, &live).map_err(io(&live))?;
        }
        let put = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            iocane_trainer::checkpoint::write_atomic(&p, bytes).map_err(io(&p))
        };
        put("junit.xml", self.junit().as_bytes())?;
        put("summary.md", self.markdown().as_bytes())?;
        put("curve.svg", self.svg().as_bytes())?;
        match gallery {
            Some(png) => put(GALLERY, &png)?,
            None => match std::fs::remove_file(dir.join(GALLERY)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&dir.join(GALLERY))(e)),
                _ => {}
            },
        }
        put("report.json", json.as_bytes())
    }

    /// Parses `report.json` bytes (no counterexample pixels are loaded); the format must be
    /// [`REPORT_FORMAT`].
    pub fn from_json(bytes: &[u8]) -> Result<CertifyReport, String> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if head.format != REPORT_FORMAT {
            return Err(format!(
                "report format `{}`, this iocane reads `{REPORT_FORMAT}`: re-run the shard with this version",
                head.format
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Reads a report written by [`CertifyReport::write`], with its counterexamples (each
    /// must be the file the report names for it and hold exactly one image).
    pub fn read(path: &Path) -> Result<CertifyReport, ReportError> {
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        let size = std::fs::metadata(path).map_err(io(path))?.len();
        if size > MAX_REPORT_BYTES {
            return Err(ReportError::Format {
                path: path.into(),
                msg: format!("{size} bytes, more than the {MAX_REPORT_BYTES} a report may have"),
            });
        }
        let bytes = std::fs::read(path).map_err(io(path))?;
        let mut r = CertifyReport::from_json(&bytes).map_err(|msg| ReportError::Format { path: path.into(), msg })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let len = r.run.input_shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        for s in &mut r.outcome.samples {
            let Some(file) = &s.counterexample_file else { continue };
            if *file != crate::gate::counterexample_file(s.index) {
                return Err(ReportError::Format {
                    path: path.into(),
                    msg: format!(
                        "sample {} names counterexample `{file}`, expected `{}`",
                        s.index,
                        crate::gate::counterexample_file(s.index)
                    ),
                });
            }
            let p = dir.join(file);
            // The size first: a huge file is refused before it is read.
            let size = std::fs::metadata(&p).map_err(io(&p))?.len();
            if usize::try_from(size).ok() != len {
                return Err(ReportError::Format {
                    path: p,
                    msg: format!("{size} bytes, expected one {:?} image", r.run.input_shape),
                });
            }
            let cx = std::fs::read(&p).map_err(io(&p))?;
            if Some(cx.len()) != len {
                return Err(ReportError::Format { path: p, msg: "changed while being read".into() });
            }
            s.counterexample = Some(cx);
            // The clean image (for the gallery) is optional: reports of earlier versions lack it.
            let p = dir.join(crate::gate::clean_file(s.index));
            match std::fs::metadata(&p) {
                Ok(m) if usize::try_from(m.len()).ok() == len => {
                    let clean = std::fs::read(&p).map_err(io(&p))?;
                    s.clean = (Some(clean.len()) == len).then_some(clean);
                }
                Ok(m) => {
                    return Err(ReportError::Format {
                        path: p,
                        msg: format!("{} bytes, expected one {:?} image", m.len(), r.run.input_shape),
                    })
                }
                Err(_) => {}
            }
        }
        Ok(r)
    }

    /// Checks that the report's counts, verdicts and sample indices agree with each other and
    /// with its shard (what a merge relies on).
    pub fn check_consistent(&self) -> Result<(), String> {
        if self.run.radius.k != self.config.k {
            return Err(format!(
                "the applied radius {} differs from the configured k = {}",
                self.run.radius.k, self.config.k
            ));
        }
        let c = &self.config;
        let (i, n) = c.shard;
        if n == 0 || i >= n {
            return Err(format!("shard {i}/{n} is not I/N with 0 <= I < N"));
        }
        // The shard's size first, in closed form: a hostile `split_len` must not make the
        // list of expected indices below allocate (or take) forever.
        let total = if c.samples == 0 { self.run.split_len } else { c.samples.min(self.run.split_len) };
        let size = if total > i { (total - i - 1) / n + 1 } else { 0 };
        if size != self.outcome.samples.len() {
            return Err(format!(
                "shard {i}/{n} of a split of {} ({total} samples) should hold {size} samples but holds {}",
                self.run.split_len,
                self.outcome.samples.len()
            ));
        }
        let want = crate::gate::shard_indices(self.run.split_len, c.samples, c.shard);
        let got: Vec<usize> = self.outcome.samples.iter().map(|s| s.index).collect();
        if got != want {
            return Err(format!(
                "shard {i}/{n} should hold samples {} of the split of {} ({} samples) but holds {}",
                describe_indices(&want),
                self.run.split_len,
                want.len(),
                describe_indices(&got)
            ));
        }
        let mut ks: Vec<u8> = c.sweep.iter().copied().chain(std::iter::once(c.k)).collect();
        ks.sort_unstable();
        ks.dedup();
        if self.outcome.levels.iter().map(|l| l.k).collect::<Vec<_>>() != ks {
            return Err("the radii of the counts do not match the configuration".into());
        }
        for l in &self.outcome.levels {
            let ordered = l.certified <= l.empirical
                && l.certified_crown + l.certified_bab <= l.certified
                && l.certified + l.falsified_bab <= l.empirical
                && l.empirical <= l.clean
                && l.clean <= l.n
                && [l.fgsm, l.pgd, l.square, l.random].iter().all(|&x| l.certified <= x && x <= l.clean);
            if l.n != want.len() || !ordered {
                return Err(format!("the counts at k={} are inconsistent ({} samples in the shard)", l.k, want.len()));
            }
        }
        let at = self.outcome.at(c.k).ok_or("no counts at the gate radius")?;
        let count = |v: SampleVerdict| self.outcome.samples.iter().filter(|s| s.verdict == v).count();
        if count(SampleVerdict::Certified) != at.certified
            || want.len() - count(SampleVerdict::Misclassified) != at.clean
            || count(SampleVerdict::Certified) + count(SampleVerdict::Unknown) + at.falsified_bab != at.empirical
        {
            return Err(format!("the sample verdicts do not match the counts at k={}", c.k));
        }
        for l in &self.outcome.levels {
            let names: Vec<_> = l.attacks.iter().map(|t| t.attack).collect();
            let running = l.attacks.windows(2).all(|w| w[1].robust_after <= w[0].robust_after)
                && l.attacks.iter().all(|t| {
                    l.certified <= t.robust_after && t.robust_after <= l.clean && t.broke <= t.ran && t.ran <= l.clean
                })
                && l.attacks.last().is_none_or(|t| t.robust_after == l.empirical);
            if !(names.is_empty() || names == c.suite.attacks) || !running {
                return Err(format!("the per-attack counts at k={} are inconsistent", l.k));
            }
        }
        for s in &self.outcome.samples {
            if s.label >= self.run.classes || s.predicted >= self.run.classes {
                return Err(format!("sample {} has a class outside 0..{}", s.index, self.run.classes));
            }
            if (s.verdict == SampleVerdict::Falsified) != s.counterexample_file.is_some() {
                return Err(format!("sample {}: a falsified verdict needs a counterexample, and only it", s.index));
            }
        }
        Ok(())
    }
}

/// Why shard reports cannot be merged.
#[derive(Debug, Error)]
pub enum MergeError {
    /// No report was given.
    #[error("no shard reports to merge")]
    Empty,
    /// One report is inconsistent in itself.
    #[error("shard report {index} ({file}): {msg}")]
    Inconsistent {
        /// Position in the list.
        index: usize,
        /// Its model file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// The reports are not one run's parts.
    #[error("shard reports are not one run's disjoint, complete cover: {0}")]
    NotOneRun(String),
}

/// Merges shard reports into the report of the whole run, after proving that they are one
/// run's disjoint and complete cover: every report is consistent in itself
/// ([`CertifyReport::check_consistent`]); all have the same model, dataset, split, shape,
/// classes, requested eps and settings (radius, sweep, samples, seed, attacks, gate,
/// threshold, strict) but for the shard; and their shards are `0/N, 1/N, ..., N-1/N`, each
/// exactly once. The gate is decided anew from the summed counts.
pub fn merge_reports(reports: &[CertifyReport]) -> Result<CertifyReport, MergeError> {
    let first = reports.first().ok_or(MergeError::Empty)?;
    for (index, r) in reports.iter().enumerate() {
        r.check_consistent().map_err(|msg| MergeError::Inconsistent { index, file: r.run.model_file.clone(), msg })?;
    }
    let settings = |r: &CertifyReport| {
        let mut c = r.config.clone();
        c.shard = (0, 1);
        c
    };
    let (id, cfg) = (first.run.clone(), settings(first));
    for r in &reports[1..] {
        let other = r.run.clone();
        let what = if other.model_sha256 != id.model_sha256 {
            Some("model")
        } else if (&other.dataset, &other.dataset_sha256, other.split_len)
            != (&id.dataset, &id.dataset_sha256, id.split_len)
        {
            Some("dataset")
        } else if other.input_shape != id.input_shape || other.classes != id.classes {
            Some("image shape or classes")
        } else if other.radius != id.radius {
            Some("eps")
        } else if settings(r) != cfg {
            Some("settings (samples, sweep, seed, attacks, gate, threshold or strict)")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(MergeError::NotOneRun(format!("they differ in the {what}")));
        }
    }
    let n = first.config.shard.1;
    // A set, not a table of `n` flags: `n` comes from the file.
    let mut seen = std::collections::BTreeSet::new();
    for r in reports {
        let (i, m) = r.config.shard;
        if m != n {
            return Err(MergeError::NotOneRun(format!("shard counts differ ({n} and {m})")));
        }
        if !seen.insert(i) {
            return Err(MergeError::NotOneRun(format!("shard {i}/{n} is given twice")));
        }
    }
    if seen.len() != n {
        let missing: Vec<String> = (0..n).filter(|i| !seen.contains(i)).take(8).map(|i| format!("{i}/{n}")).collect();
        let more = n - seen.len() - missing.len();
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Err(MergeError::NotOneRun(format!("shard(s) {}{more} missing", missing.join(", "))));
    }
    let outcome = crate::gate::merge(&reports.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>());
    let seconds = reports.iter().map(|r| r.seconds).sum();
    let mut merged = CertifyReport::new(id, cfg, outcome, seconds);
    // The differential of a sharded run: only when every shard ran it.
    let parts: Option<Vec<_>> = reports.iter().map(|r| r.float_comparison.clone()).collect();
    merged.float_comparison = parts.and_then(|p| crate::compare::FloatComparison::merge(&p));
    merged
        .check_consistent()
        .map_err(|msg| MergeError::NotOneRun(format!("the merged report is inconsistent: {msg}")))?;
    Ok(merged)
}

/// `0, 1, ..., 9` or `0, 4, 8 ... (25 in all)` for error messages.
fn describe_indices(v: &[usize]) -> String {
    let head: Vec<String> = v.iter().take(4).map(|i| i.to_string()).collect();
    if v.len() <= 4 {
        format!("[{}]", head.join(", "))
    } else {
        format!("[{} ... {}] ({} in all)", head.join(", "), v[v.len() - 1], v.len())
    }
}

/// Escapes text for XML.
/// Escapes text for XML (SVG, JUnit).
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The counterexample gallery of a report folder (see [`crate::gallery`]).
pub const GALLERY: &str = "gallery.png";

/// The folder of a report's counterexamples.
pub const COUNTEREXAMPLES: &str = "counterexamples";

/// Checks, before any work, that a report can be written into `dir`: creates it and a
/// probe file in it, then removes the probe.
pub fn check_writable(dir: &Path) -> Result<(), ReportError> {
    let io = |path: PathBuf| move |source| ReportError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.into()))?;
    let probe = dir.join(format!(".iocane-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(io(dir.into()))?;
    std::fs::remove_file(&probe).map_err(io(probe))
}

/// Encodes an NHWC u8 image as PNG: 1 channel as grayscale, 3 as RGB, any other count as
/// its channels side by side in grayscale (`c` tiles of `w` columns), so no image is lost.
pub fn png_bytes(px: &[u8], (h, w, c): (usize, usize, usize)) -> Result<Vec<u8>, String> {
    if h.checked_mul(w).and_then(|hw| hw.checked_mul(c)) != Some(px.len()) || px.is_empty() {
        return Err(format!("{} pixels do not make a {h}x{w}x{c} image", px.len()));
    }
    let (color, width, data) = match c {
        1 => (png::ColorType::Grayscale, w, std::borrow::Cow::Borrowed(px)),
        3 => (png::ColorType::Rgb, w, std::borrow::Cow::Borrowed(px)),
        _ => {
            let mut tiled = Vec::with_capacity(px.len());
            for y in 0..h {
                for ch in 0..c {
                    tiled.extend((0..w).map(|x| px[(y * w + x) * c + ch]));
                }
            }
            (png::ColorType::Grayscale, w * c, std::borrow::Cow::Owned(tiled))
        }
    };
    let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(h)) else {
        return Err(format!("a {h}x{w}x{c} image is too large for PNG"));
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| e.to_string())?;
        wr.write_image_data(&data).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{self, GateConfig, Radius, Threshold};
    use iocane_runtime::emit::{random_model, SynthLayer};
    use iocane_runtime::rng::SplitMix64;
    use iocane_runtime::{Model, Shape};
    use iocane_trainer::data::Dataset;
    use std::sync::atomic::AtomicBool;

    /// A 3x5x2 (non-square, two-channel) dataset of noise, with a model that takes it.
    fn fixture() -> (Vec<u8>, Dataset) {
        let blob = random_model(Shape::new(3, 5, 2), 3, &[SynthLayer::Dense { units: 6, relu: true }], 9).emit();
        let mut rng = SplitMix64(3);
        let n = 24;
        let images = (0..n * 30).map(|_| rng.range(0, 255) as u8).collect();
        let model = Model::parse(&blob).unwrap();
        let data0 = Dataset {
            name: "noise/test".into(),
            height: 3,
            width: 5,
            channels: 2,
            classes: 3,
            labels_text: vec!["a".into(), "b".into(), "c".into()],
            images,
            labels: vec![0; n],
        };
        // Label each image with the model's own class so that some samples are correct.
        let mut arena = vec![0u8; model.arena_size()];
        let mut logits = vec![0i32; 3];
        let labels = (0..n).map(|i| model.run(data0.image(i), &mut arena, &mut logits).unwrap() as u8).collect();
        let data = Dataset { labels, ..data0 };
        (blob, data)
    }

    fn config(shard: (usize, usize), seed: u64) -> GateConfig {
        GateConfig {
            k: 40,
            sweep: vec![0, 8],
            samples: 0,
            shard,
            seed,
            pgd_steps: 3,
            pgd_restarts: 1,
            square_queries: 20,
            random_samples: 5,
            gate: GateKind::Empirical,
            threshold: "1/2".parse::<Threshold>().unwrap(),
            ..GateConfig::default()
        }
    }

    fn report(blob: &[u8], data: &Dataset, cfg: GateConfig) -> CertifyReport {
        let model = Model::parse(blob).unwrap();
        let outcome = gate::run(&model, data, &cfg, &|_| {}, &AtomicBool::new(false)).unwrap();
        let id = RunIdentity {
            model_file: "m.icn".into(),
            model_sha256: "00".into(),
            dataset: data.name.clone(),
            dataset_sha256: data.sha256_hex(),
            split_len: data.len(),
            input_shape: [3, 5, 2],
            classes: 3,
            radius: Radius::levels(cfg.k),
        };
        CertifyReport::new(id, cfg, outcome, 1.0)
    }

    /// Issue 10.3: a validated merge of a complete cover equals the unsharded run; an
    /// incomplete cover, a repeated shard, or shards of another run are refused.
    #[test]
    fn issue10_merge_proves_one_runs_disjoint_complete_cover() {
        let (blob, data) = fixture();
        let whole = report(&blob, &data, config((0, 1), 1));
        let parts: Vec<CertifyReport> = (0..3).map(|i| report(&blob, &data, config((i, 3), 1))).collect();
        let merged = merge_reports(&parts).unwrap();
        assert_eq!(merged.outcome.samples, whole.outcome.samples);
        assert_eq!(merged.gate.count, whole.gate.count);
        assert_eq!(merged.passed, whole.passed);
        assert_eq!(merged.config, whole.config);
        assert!(whole.outcome.samples.iter().any(|s| s.counterexample.is_some()), "fixture has no counterexample");

        let refused = |rs: &[CertifyReport], needle: &str| {
            let e = merge_reports(rs).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        };
        refused(&parts[..1], "missing");
        refused(&[parts[0].clone(), parts[0].clone(), parts[1].clone(), parts[2].clone()], "given twice");
        refused(&[parts[0].clone(), parts[1].clone(), report(&blob, &data, config((2, 3), 2))], "settings");
        let mut other_model = parts[2].clone();
        other_model.run.model_sha256 = "ff".into();
        refused(&[parts[0].clone(), parts[1].clone(), other_model], "model");
        let mut other_threshold = parts[2].clone();
        other_threshold.config.threshold = "0.9".parse().unwrap();
        refused(&[parts[0].clone(), parts[1].clone(), other_threshold], "settings");
        let mut other_eps = parts[2].clone();
        other_eps.run.radius.requested = "0.16".into();
        other_eps.run.radius.exact = false;
        refused(&[parts[0].clone(), parts[1].clone(), other_eps], "eps");
        let mut other_data = parts[2].clone();
        other_data.run.dataset_sha256 = "aa".into();
        refused(&[parts[0].clone(), parts[1].clone(), other_data], "dataset");
        // A tampered shard: counts that do not match its verdicts, or a sample of another shard.
        let mut tampered = parts[2].clone();
        tampered.outcome.levels.iter_mut().for_each(|l| l.empirical = l.clean);
        refused(&[parts[0].clone(), parts[1].clone(), tampered], "do not match");
        let mut stolen = parts[2].clone();
        stolen.outcome.samples[0].index = 0;
        refused(&[parts[0].clone(), parts[1].clone(), stolen], "should hold");
        refused(&[], "no shard reports");
    }

    /// Issue 10.9: counterexamples of any channel count become real PNGs, the report writes
    /// and reads back (non-square, two channels), and a reused report directory keeps no
    /// stale counterexample while files it does not own survive.
    #[test]
    fn issue10_two_channel_pngs_and_no_stale_counterexamples() {
        let png = png_bytes(&[7u8; 30], (3, 5, 2)).unwrap();
        assert!(png.len() > 30 && png.starts_with(b"\x89PNG"));
        assert!(png_bytes(&[7u8; 29], (3, 5, 2)).is_err());
        let (blob, data) = fixture();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let big = report(&blob, &data, config((0, 1), 1));
        big.write(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let cx = std::fs::read_dir(dir.join(COUNTEREXAMPLES)).unwrap().count();
        assert!(cx >= 2, "fixture should have counterexamples");
        let back = CertifyReport::read(&dir.join("report.json")).unwrap();
        assert_eq!(back.outcome.samples, big.outcome.samples);
        let mut small_cfg = config((0, 1), 1);
        small_cfg.k = 0;
        small_cfg.sweep = vec![];
        let small = report(&blob, &data, small_cfg);
        assert!(small.outcome.samples.iter().all(|s| s.counterexample.is_none()));
        small.write(&dir).unwrap();
        assert!(!dir.join(COUNTEREXAMPLES).exists(), "stale counterexamples survived");
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // A report whose counterexample file was swapped for a wrong-sized one is refused.
        big.write(&dir).unwrap();
        let first = big.outcome.samples.iter().find_map(|s| s.counterexample_file.clone()).unwrap();
        std::fs::write(dir.join(&first), b"short").unwrap();
        assert!(CertifyReport::read(&dir.join("report.json")).is_err());
    }

    /// Issue 10, output: junit.xml fails exactly when the exit code does.
    #[test]
    fn issue10_junit_agrees_with_the_verdict() {
        let (blob, data) = fixture();
        let base = report(&blob, &data, config((0, 1), 1));
        for strict in [false, true] {
            let mut cfg = base.config.clone();
            cfg.strict = strict;
            let mut r = CertifyReport::new(base.run.clone(), cfg, base.outcome.clone(), 1.0);
            // A protocol warning, as `protocol_warnings` would raise it.
            r.warnings = vec!["a protocol warning".into()];
            r.passed = r.gate.met && !strict;
            let xml = r.junit();
            let failures = usize::from(!r.gate.met) + usize::from(strict);
            assert!(xml.contains(&format!("failures=\"{failures}\"")), "{xml}");
            assert_eq!(xml.contains("<failure message=\"1 warning(s)"), strict, "{xml}");
            assert_eq!(xml.contains("<system-out>1 warning(s)"), !strict, "{xml}");
        }
    }

    /// Issue 10, output: report.json records the version and the requested and applied eps,
    /// and holds no inline pixels.
    #[test]
    fn issue10_report_records_version_and_eps() {
        let (blob, data) = fixture();
        let mut r = report(&blob, &data, config((0, 1), 1));
        r.run.radius.requested = "0.16".into();
        r.run.radius.exact = false;
        let json = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["iocane_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["radius"]["requested"], "0.16");
        assert_eq!(v["config"]["k"], 40);
        assert_eq!(v["radius"]["exact"], false);
        let s = v["outcome"]["samples"].as_array().unwrap();
        assert!(s.iter().all(|s| s.get("counterexample").is_none()));
        assert!(s.iter().any(|s| s["counterexample_file"].is_string()));
    }

    /// Issue 14: the gallery is written with the report, linked from summary.md, rebuilt
    /// identically by a merge of shard reports read back from disk, and removed when a later
    /// run into the same folder has no counterexample.
    #[test]
    fn issue14_gallery_is_linked_merged_and_never_stale() {
        let (blob, data) = fixture();
        let tmp = tempfile::tempdir().unwrap();
        let whole = report(&blob, &data, config((0, 1), 1));
        whole.write(&tmp.path().join("whole")).unwrap();
        let gallery = std::fs::read(tmp.path().join("whole").join(GALLERY)).unwrap();
        assert!(gallery.starts_with(b"\x89PNG"));
        let md = std::fs::read_to_string(tmp.path().join("whole/summary.md")).unwrap();
        assert!(md.contains("[gallery.png](gallery.png)"), "{md}");
        let parts: Vec<CertifyReport> = (0..3)
            .map(|i| {
                let dir = tmp.path().join(format!("s{i}"));
                report(&blob, &data, config((i, 3), 1)).write(&dir).unwrap();
                CertifyReport::read(&dir.join("report.json")).unwrap()
            })
            .collect();
        assert!(parts.iter().flat_map(|p| &p.outcome.samples).any(|s| s.clean.is_some()));
        let merged = merge_reports(&parts).unwrap();
        merged.write(&tmp.path().join("merged")).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("merged").join(GALLERY)).unwrap(), gallery);
        let mut small_cfg = config((0, 1), 1);
        small_cfg.k = 0;
        small_cfg.sweep = vec![];
        let small = report(&blob, &data, small_cfg);
        small.write(&tmp.path().join("whole")).unwrap();
        assert!(!tmp.path().join("whole").join(GALLERY).exists(), "stale gallery");
        assert!(!small.markdown().contains("gallery.png"));
    }

    /// Issue 14: curve.svg marks every measured point of each series, draws the threshold and
    /// the gate radius, and keeps its legend right of the plot area (x > 500).
    #[test]
    fn issue14_curve_has_markers_threshold_gate_and_an_outside_legend() {
        let (blob, data) = fixture();
        let r = report(&blob, &data, config((0, 1), 1));
        let svg = r.svg();
        let points = r.curve.len();
        assert_eq!(points, 3);
        // One marker per point and series, plus one per series in the legend.
        assert_eq!(svg.matches("<circle").count(), points + 1);
        assert_eq!(svg.matches("<rect x=").count(), points + 1);
        assert_eq!(svg.matches("<path d=").count(), points + 1);
        assert!(svg.contains("threshold 50% (attacked)") && svg.contains("gate eps 40/255"), "{svg}");
        let num = |line: &str, attr: &str| -> f64 {
            let i = line.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
            line[i..].split('"').next().unwrap().parse().unwrap()
        };
        for line in svg.lines().filter(|l| l.starts_with("<text") && (l.contains("bound)") || l.contains(">clean<"))) {
            assert!(num(line, "x") > 500.0, "legend inside the plot: {line}");
        }
        // The plot's own marks stay inside it.
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line.split("points=\"").nth(1).unwrap().trim_end_matches("\"/>");
            for p in pts.split(' ') {
                let x: f64 = p.split(',').next().unwrap().parse().unwrap();
                assert!((60.0..=500.0).contains(&x), "{p}");
            }
        }
    }

    /// Issue 12: a standard-suite report has a column per attack and the running robust
    /// accuracy, its per-attack counts add up to the verdicts, survive a merge, and a report
    /// whose per-attack counts were tampered with is refused.
    #[test]
    fn issue12_per_attack_counts_are_reported_merged_and_checked() {
        use crate::attack::suite::{AttackSuite, STANDARD};
        let (blob, data) = fixture();
        let cfg = |shard| GateConfig {
            suite: AttackSuite {
                attacks: STANDARD.to_vec(),
                apgd_iterations: 5,
                apgd_targets: 2,
                search_queries: 30,
                ..AttackSuite::default()
            },
            ..config(shard, 1)
        };
        let whole = report(&blob, &data, cfg((0, 1)));
        whole.check_consistent().unwrap();
        let md = whole.markdown();
        assert!(md.contains("| apgd-ce | apgd-t | square | search (on survivors) |"), "{md}");
        assert!(
            md.contains("| k | clean | after apgd-ce | after apgd-t | after square | after search | final |"),
            "{md}"
        );
        let at = whole.outcome.at(40).unwrap();
        let first: usize = whole.result.attacks.iter().map(|a| a.broke_first).sum();
        assert_eq!(first, at.clean - at.empirical);
        assert!(first > 0, "the fixture breaks nothing");
        let parts: Vec<CertifyReport> = (0..2).map(|i| report(&blob, &data, cfg((i, 2)))).collect();
        assert_eq!(merge_reports(&parts).unwrap().outcome.levels, {
            let mut l = whole.outcome.levels.clone();
            let m = merge_reports(&parts).unwrap();
            for (a, b) in l.iter_mut().zip(&m.outcome.levels) {
                (a.bound_seconds, a.attack_seconds) = (b.bound_seconds, b.attack_seconds);
                for (x, y) in a.attacks.iter_mut().zip(&b.attacks) {
                    x.seconds = y.seconds;
                }
            }
            l
        });
        let mut tampered = whole.clone();
        tampered.outcome.levels.iter_mut().for_each(|l| l.attacks[0].robust_after = l.clean + 1);
        assert!(tampered.check_consistent().unwrap_err().contains("per-attack"));
        let mut renamed = whole.clone();
        renamed.outcome.levels.iter_mut().for_each(|l| l.attacks.reverse());
        assert!(renamed.check_consistent().is_err());
    }

    fn shard_report(split_len: usize, shard: (usize, usize)) -> CertifyReport {
        let config = GateConfig {
            k: 0,
            sweep: Vec::new(),
            samples: 0,
            shard,
            pgd_steps: 1,
            pgd_restarts: 1,
            square_queries: 1,
            random_samples: 1,
            ..GateConfig::default()
        };
        let id = RunIdentity {
            model_file: "m".into(),
            model_sha256: "0".repeat(64),
            dataset: "d".into(),
            dataset_sha256: "1".repeat(64),
            split_len,
            input_shape: [1, 1, 1],
            classes: 2,
            radius: crate::gate::Radius::levels(0),
        };
        let outcome = GateOutcome { samples: Vec::new(), levels: vec![LevelCounts::default()] };
        CertifyReport::new(id, config, outcome, 0.0)
    }

    #[test]
    fn huge_split_len_is_inconsistent_without_listing_the_indices() {
        // A report claiming a split of 10^18 images made the consistency check build a
        // vector of 10^18 / N expected indices (an out-of-memory abort) before comparing.
        let r = shard_report(1_000_000_000_000_000_000, (0, 2));
        let e = r.check_consistent().unwrap_err();
        assert!(e.contains("should hold 500000000000000000 samples but holds 0"), "{e}");
    }

    #[test]
    fn huge_shard_count_is_not_one_run_without_a_table_of_shards() {
        // A report claiming shard 0 of usize::MAX: merging it must not allocate a flag per shard.
        let r = shard_report(0, (0, usize::MAX));
        let e = merge_reports(&[r]).unwrap_err().to_string();
        assert!(e.contains(&format!("1/{}", usize::MAX)) && e.contains("more missing"), "{e}");
    }
}

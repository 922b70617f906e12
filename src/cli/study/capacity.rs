//! `iocane study capacity` (Madry et al. 2018, Fig. 4): natural, FGSM and PGD training of the
//! same CNN at several widths, with the clean, FGSM and PGD test accuracy and the final
//! training loss (on the examples trained on: adversarial ones for FGSM and PGD) against
//! width, and what each costs.
//!
//! The base CNN at width `w` is `conv{2w}k3s2p1,relu,conv{4w}k3s2p1,relu,flatten,dense<classes>`
//! (Madry et al.'s MNIST network also starts from 2 and 4 filters): width 4 is the `cnn-s`
//! preset. The cost is given twice: as gradient passes (deterministic: training passes per
//! image times images times epochs) in the CSV and JSON, and as wall time in `timings.json`.

use anyhow::{bail, Result};
use clap::Args;
use iocane_certify::plot::{panels_svg, LineChart, Series};
use iocane_trainer::nn::ArchSpec;
use iocane_trainer::train::Method;
use serde::Serialize;

use super::{csv, pct, round4, CommonArgs, Setup};

/// Flags of `iocane study capacity`.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Flags shared by the studies.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Width multipliers of the base CNN (comma-separated) [default: quick 1,4; full 1,2,4,8].
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
}

/// The base CNN at width `w` for `classes` classes (see the module docs).
pub fn arch_at(w: usize, input: [usize; 3], classes: usize) -> Result<ArchSpec> {
    Ok(ArchSpec::from_compact(
        &format!("conv{}k3s2p1,relu,conv{}k3s2p1,relu,flatten,dense{classes}", 2 * w, 4 * w),
        input,
        classes,
    )?)
}

/// One trained model of the study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityRow {
    /// Width multiplier.
    pub width: usize,
    /// Training method.
    pub method: String,
    /// Parameters.
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
    /// Clean test accuracy.
    pub clean_acc: f64,
    /// Test accuracy under FGSM at eps.
    pub fgsm_acc: f64,
    /// Test accuracy under PGD-20 at eps.
    pub pgd_acc: f64,
    /// Mean training loss of the last epoch (on the examples trained on).
    pub final_train_loss: f64,
    /// Training accuracy of the last epoch (on the examples trained on).
    pub final_train_acc: f64,
    /// Forward-backward passes per training image per epoch (1 natural, 2 FGSM, steps + 1 PGD).
    pub passes_per_image: usize,
    /// Forward-backward passes of the whole training run (`passes_per_image` x images x
    /// epochs at full eps, natural warm-up epochs counted at 1).
    pub training_passes: usize,
}

/// `capacity.json`.
#[derive(Debug, Serialize)]
struct CapacityJson<'a> {
    study: &'static str,
    dataset: &'a str,
    seed: u64,
    quick: bool,
    eps: f32,
    epochs: usize,
    train_images: usize,
    test_images: usize,
    base_arch: String,
    training: &'static str,
    evaluation: String,
    widths: &'a [usize],
    rows: &'a [CapacityRow],
}

const METHODS: [Method; 3] = [Method::Natural, Method::Fgsm, Method::Pgd];

/// Runs the study.
pub fn run(a: &CapacityArgs) -> Result<()> {
    let mut s = Setup::new(&a.common)?;
    let widths = a.widths.clone().unwrap_or(if a.common.quick { vec![1, 4] } else { vec![1, 2, 4, 8] });
    if widths.is_empty() || widths.iter().any(|&w| w == 0 || w > 64) {
        bail!("--widths must be a non-empty list of multipliers in 1..=64");
    }
    let (input, classes) = (s.input(), s.train.classes);
    let train = s.train.clone();
    let mut rows = Vec::new();
    for &w in &widths {
        let arch = arch_at(w, input, classes)?;
        for method in METHODS {
            let cfg = s.config(arch.clone(), method);
            let (_, m) = s.train(&format!("{method}-x{w}"), &cfg, &train)?;
            let fe =
                m.final_eval.clone().ok_or_else(|| anyhow::anyhow!("training {method}-x{w}: no final evaluation"))?;
            let last = m.epochs.last().ok_or_else(|| anyhow::anyhow!("training {method}-x{w}: no epoch"))?;
            let passes = 1 + cfg.attack(cfg.eps).map_or(0, |at| at.gradient_passes());
            let adv_epochs = (0..cfg.epochs).filter(|&e| cfg.eps_at(e) > 0.0).count();
            let training_passes = train.len() * (passes * adv_epochs + (cfg.epochs - adv_epochs));
            s.say(&format!(
                "{method}-x{w}: clean {:.4} FGSM {:.4} PGD {:.4} loss {:.4}",
                fe.clean_acc, fe.fgsm_acc, fe.robust_acc, last.train_loss
            ));
            rows.push(CapacityRow {
                width: w,
                method: method.to_string(),
                params: arch.param_count(),
                macs: arch.mac_count(),
                clean_acc: round4(fe.clean_acc as f64),
                fgsm_acc: round4(fe.fgsm_acc as f64),
                pgd_acc: round4(fe.robust_acc as f64),
                final_train_loss: round4(last.train_loss as f64),
                final_train_acc: round4(last.train_acc as f64),
                passes_per_image: passes,
                training_passes,
            });
        }
    }

    let header = [
        "width",
        "method",
        "params",
        "macs",
        "clean_acc",
        "fgsm_acc",
        "pgd_acc",
        "final_train_loss",
        "final_train_acc",
        "passes_per_image",
        "training_passes",
    ];
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.width.to_string(),
                r.method.clone(),
                r.params.to_string(),
                r.macs.to_string(),
                format!("{:.4}", r.clean_acc),
                format!("{:.4}", r.fgsm_acc),
                format!("{:.4}", r.pgd_acc),
                format!("{:.4}", r.final_train_loss),
                format!("{:.4}", r.final_train_acc),
                r.passes_per_image.to_string(),
                r.training_passes.to_string(),
            ]
        })
        .collect();
    s.write("capacity.csv", csv(&header, &lines).as_bytes())?;
    let base_arch = arch_at(1, input, classes)?.to_compact();
    let json = CapacityJson {
        study: "capacity",
        dataset: &a.common.dataset,
        seed: a.common.seed,
        quick: a.common.quick,
        eps: a.common.eps,
        epochs: s.epochs,
        train_images: s.train.len(),
        test_images: s.test.len(),
        base_arch,
        training: "Adam, cosine LR, batch 128; FGSM and PGD-7 (step 2.5 eps / 7, random start) after 1 natural warm-up epoch and an eps ramp",
        evaluation: format!("FGSM and PGD-20 (1 restart, random start, 8-bit grid) at eps {:.4} on the first {} test images", a.common.eps, s.test.len()),
        widths: &widths,
        rows: &rows,
    };
    s.write("capacity.json", serde_json::to_string_pretty(&json)?.as_bytes())?;

    let ticks: Vec<String> = widths.iter().map(|w| format!("x{w}")).collect();
    let series = |f: fn(&CapacityRow) -> f64| -> Vec<Series> {
        METHODS
            .iter()
            .map(|m| Series {
                name: format!("{m} training"),
                values: widths
                    .iter()
                    .map(|&w| rows.iter().find(|r| r.width == w && r.method == m.to_string()).map_or(f64::NAN, f))
                    .collect(),
            })
            .collect()
    };
    let panel = |title: &str, f: fn(&CapacityRow) -> f64| LineChart {
        title: title.into(),
        x_label: "width (x base CNN)".into(),
        x_ticks: ticks.clone(),
        y_range: (0.0, 1.0),
        percent: true,
        series: series(f),
    };
    let max_loss = rows.iter().map(|r| r.final_train_loss).fold(0.0f64, f64::max);
    let loss = LineChart {
        title: "final training loss".into(),
        y_range: (0.0, (max_loss * 1.1).max(0.1)),
        percent: false,
        ..panel("", |r| r.final_train_loss)
    };
    let charts = [
        panel("clean accuracy", |r| r.clean_acc),
        panel(&format!("FGSM accuracy (eps {:.3})", a.common.eps), |r| r.fgsm_acc),
        panel(&format!("PGD-20 accuracy (eps {:.3})", a.common.eps), |r| r.pgd_acc),
        loss,
    ];
    let title = format!("capacity: {} ({} train images, {} epochs)", a.common.dataset, s.train.len(), s.epochs);
    s.write("capacity.svg", panels_svg(&title, &charts, 2).as_bytes())?;

    let mut md = format!(
        "# Capacity study (Madry et al. 2018, Fig. 4): {}\n\nBase CNN `{}` at widths {}; eps {:.4}; {} epochs on {} training images; \
         evaluated on the first {} test images (FGSM and PGD-20 on the 8-bit grid).\n\n![capacity](capacity.svg)\n\n\
         | width | params | method | clean | FGSM | PGD-20 | final train loss | passes / image / epoch |\n|---|---|---|---|---|---|---|---|\n",
        a.common.dataset,
        json.base_arch,
        ticks.join(", "),
        a.common.eps,
        s.epochs,
        s.train.len(),
        s.test.len()
    );
    for r in &rows {
        md.push_str(&format!(
            "| x{} | {} | {} | {} | {} | {} | {:.4} | {} |\n",
            r.width,
            r.params,
            r.method,
            pct(r.clean_acc),
            pct(r.fgsm_acc),
            pct(r.pgd_acc),
            r.final_train_loss,
            r.passes_per_image
        ));
    }
    md.push_str(&s.timings_markdown());
    s.write("summary.md", md.as_bytes())?;
    s.write_timings()?;
    s.say(&format!(
        "wrote capacity.csv, capacity.json, capacity.svg, summary.md and timings.json to {}",
        a.common.out.display()
    ));
    Ok(())
}

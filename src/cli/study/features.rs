//! `iocane study features` (Ilyas et al. 2019, "Adversarial examples are not bugs, they are
//! features"), on the study's training images:
//!
//! - a natural and a robust (PGD-trained) model (trained here, or given as checkpoints);
//! - **D_R**, the "robustified" dataset: for each training image `x` with label `y`, an image
//!   whose representation under the robust model (the input of its last layer) matches that
//!   of `x`, found by input optimisation from another training image
//!   ([`iocane_trainer::nn::represent::match_representation`]), labelled `y`;
//! - **D_NR**, the "non-robust" dataset: targeted PGD examples of the natural model towards
//!   `t = (y + 1) mod classes` ([`iocane_trainer::nn::attack::pgd_targeted`]), labelled `t`
//!   (Ilyas et al.'s deterministic D_det: the robust features still say `y`);
//! - natural models trained on D_R and on D_NR with the same budget, and all four models'
//!   clean and PGD-20 accuracy on the real test set.
//!
//! The paper's claims: the D_R model is somewhat robust although trained naturally, and the
//! D_NR model generalises to the real test set although every label looks wrong to a human.
//! Generated images are rounded to the 8-bit grid, like every dataset.

use anyhow::{bail, Result};
use clap::Args;
use iocane_certify::plot::bars_svg;
use iocane_trainer::nn::{attack, represent, ArchSpec, Network, Tensor};
use iocane_trainer::rng::Rng;
use iocane_trainer::train::Method;
use serde::Serialize;

use super::{batch, csv, dataset_from, grid_png, natural_and_robust, pct, round4, CommonArgs, PairArgs, Setup};

/// The default architecture of the features and saliency studies: `cnn-s` with a 64-unit
/// hidden layer, so the representation is a 64-value bottleneck as in Ilyas et al.
pub const STUDY_ARCH: &str = "conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense64,relu";

/// The study architecture for `classes` classes, or `--arch` (preset, compact text or JSON).
pub fn study_arch(arch: Option<&str>, input: [usize; 3], classes: usize) -> Result<ArchSpec> {
    match arch {
        Some(a) => super::super::train::resolve_arch(a, input, classes),
        None => Ok(ArchSpec::from_compact(&format!("{STUDY_ARCH},dense{classes}"), input, classes)?),
    }
}

/// Flags of `iocane study features`.
#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Flags shared by the studies.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Architecture of every model (needs a hidden layer before the last Dense)
    /// [default: conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense64,relu,dense<classes>].
    #[arg(long)]
    pub arch: Option<String>,
    /// Checkpoints to use instead of training the pair.
    #[command(flatten)]
    pub pair: PairArgs,
    /// D_R: input-optimisation steps per image [default: quick 40, full 200].
    #[arg(long)]
    pub dr_steps: Option<usize>,
    /// D_R: L2 length of the first normalised gradient step (decays linearly to a tenth).
    #[arg(long, default_value_t = 1.0)]
    pub dr_step_size: f32,
    /// D_NR: L-infinity radius of the targeted attack on the natural model (decimal or k/255).
    #[arg(long, default_value = "0.2", value_parser = super::super::train::parse_eps)]
    pub nr_eps: f32,
    /// D_NR: targeted PGD steps (step 2.5 x eps / steps) [default: quick 10, full 20].
    #[arg(long)]
    pub nr_steps: Option<usize>,
}

/// One evaluated model.
#[derive(Clone, Debug, Serialize)]
pub struct FeaturesRow {
    /// `natural`, `robust`, `natural-on-D_R`, `natural-on-D_NR`.
    pub model: String,
    /// What it was trained on.
    pub trained_on: String,
    /// Clean accuracy on the real test set.
    pub clean_acc: f64,
    /// FGSM accuracy at eps.
    pub fgsm_acc: f64,
    /// PGD-20 accuracy at eps.
    pub pgd_acc: f64,
}

/// How the two datasets came out.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratedStats {
    /// Images in each of D_R and D_NR.
    pub images: usize,
    /// D_R: mean squared representation distance at the start (another image) ...
    pub dr_start_distance: f64,
    /// ... and after the optimisation, relative to the start (0 = matched exactly).
    pub dr_final_relative_distance: f64,
    /// D_R: fraction of images the robust model classifies as their label.
    pub dr_robust_model_agrees: f64,
    /// D_NR: fraction of images the natural model classifies as the target (attack success).
    pub nr_target_success: f64,
    /// D_NR: fraction the robust model classifies as the original class `y`.
    pub nr_robust_model_sees_original: f64,
}

#[derive(Serialize)]
struct FeaturesJson<'a> {
    study: &'static str,
    dataset: &'a str,
    seed: u64,
    quick: bool,
    eps: f32,
    epochs: usize,
    train_images: usize,
    test_images: usize,
    arch: String,
    natural_from: String,
    robust_from: String,
    dr: String,
    nr: String,
    generated: &'a GeneratedStats,
    rows: &'a [FeaturesRow],
}

/// Images per generation batch.
const BATCH: usize = 256;
/// Example rows in `features.png`.
const SHOWN: usize = 8;

/// Runs the study.
pub fn run(a: &FeaturesArgs) -> Result<()> {
    let c = &a.common;
    let mut s = Setup::new(c)?;
    let (input, classes) = (s.input(), s.train.classes);
    if classes < 2 {
        bail!("the features study needs at least 2 classes");
    }
    let arch = study_arch(a.arch.as_deref(), input, classes)?;
    // D_R needs a representation: checked before any training.
    let has_representation = |net: &Network, what: &str| -> Result<()> {
        match net.try_representation(&Tensor::zeros([1, input[0], input[1], input[2]])) {
            Ok(_) => Ok(()),
            Err(e) => bail!("{what}: {e}"),
        }
    };
    has_representation(&Network::new(arch.clone(), c.seed)?, "--arch")?;
    let train = s.train.clone();
    // Checkpoints given on the command line are loaded (and checked) before any training.
    let given = a.pair.load(input, classes)?;
    if let Some((net, _)) = &given.1 {
        has_representation(net, "the --robust model")?;
    }
    let ((natural, natural_from), (robust, robust_from)) = natural_and_robust(&mut s, &arch, &train, given)?;

    let dr_steps = a.dr_steps.unwrap_or(if c.quick { 40 } else { 200 });
    let nr_steps = a.nr_steps.unwrap_or(if c.quick { 10 } else { 20 }).max(1);
    let n = train.len();
    let root = Rng::new(c.seed).fork(16 << 40);
    // Each D_R start is another training image: the image after it in a seeded shuffle.
    let mut order: Vec<usize> = (0..n).collect();
    root.fork(1).shuffle(&mut order);
    let mut next = vec![0usize; n];
    for k in 0..n {
        next[order[k]] = order[(k + 1) % n];
    }

    let t = std::time::Instant::now();
    s.say(&format!("building D_R: {n} images, {dr_steps} representation-matching steps each"));
    let progress = super::super::progress::Progress::new("D_R", "images", n as u64, c.quiet);
    let mut dr_images = Tensor::zeros([n, input[0], input[1], input[2]]);
    let (mut d0_sum, mut d1_sum, mut dr_agree) = (0f64, 0f64, 0usize);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(BATCH) {
        let (x, labels) = batch(&train, chunk);
        let starts: Vec<usize> = chunk.iter().map(|&i| next[i]).collect();
        let (x0, _) = batch(&train, &starts);
        let target = robust.try_representation(&x)?;
        let (d0, _) = robust.representation_distance_and_input_grad(&x0, &target)?;
        let (mut img, d1) = represent::match_representation(&robust, &x0, &target, dr_steps, a.dr_step_size)?;
        img.snap_to_u8_grid();
        d0_sum += d0.iter().map(|&v| v as f64).sum::<f64>();
        d1_sum += d1.iter().map(|&v| v as f64).sum::<f64>();
        dr_agree += robust.predict(&img).iter().zip(&labels).filter(|(p, l)| p == l).count();
        dr_images.data[chunk[0] * train.image_len()..(chunk[0] + chunk.len()) * train.image_len()]
            .copy_from_slice(&img.data);
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    s.timings.push(("build D_R".into(), t.elapsed().as_secs_f64()));

    let t = std::time::Instant::now();
    s.say(&format!("building D_NR: {n} targeted PGD-{nr_steps} examples at eps {:.4}", a.nr_eps));
    let mut nr_images = Tensor::zeros(dr_images.shape);
    let (mut nr_hit, mut nr_orig) = (0usize, 0usize);
    let mut nr_labels = Vec::with_capacity(n);
    for (b, chunk) in idx.chunks(BATCH).enumerate() {
        let (x, labels) = batch(&train, chunk);
        let targets: Vec<usize> = labels.iter().map(|&l| (l + 1) % classes).collect();
        let mut rng = root.fork(2 + b as u64);
        let step = 2.5 * a.nr_eps / nr_steps as f32;
        let adv = attack::pgd_targeted(&natural, &x, &targets, a.nr_eps, step, nr_steps, true, &mut rng);
        nr_hit += natural.predict(&adv).iter().zip(&targets).filter(|(p, t)| p == t).count();
        nr_orig += robust.predict(&adv).iter().zip(&labels).filter(|(p, l)| p == l).count();
        nr_images.data[chunk[0] * train.image_len()..(chunk[0] + chunk.len()) * train.image_len()]
            .copy_from_slice(&adv.data);
        nr_labels.extend(targets);
    }
    s.timings.push(("build D_NR".into(), t.elapsed().as_secs_f64()));
    let labels: Vec<usize> = (0..n).map(|i| train.label(i)).collect();
    let d_r = dataset_from(&train, "D_R", &dr_images, labels.clone());
    let d_nr = dataset_from(&train, "D_NR", &nr_images, nr_labels.clone());
    let stats = GeneratedStats {
        images: n,
        dr_start_distance: round4(d0_sum / n as f64),
        dr_final_relative_distance: round4(d1_sum / d0_sum.max(1e-12)),
        dr_robust_model_agrees: round4(dr_agree as f64 / n as f64),
        nr_target_success: round4(nr_hit as f64 / n as f64),
        nr_robust_model_sees_original: round4(nr_orig as f64 / n as f64),
    };
    s.say(&format!(
        "D_R: distance {:.3} -> {:.1}% of it, robust model agrees on {:.1}%; D_NR: target reached on {:.1}%",
        stats.dr_start_distance,
        100.0 * stats.dr_final_relative_distance,
        100.0 * stats.dr_robust_model_agrees,
        100.0 * stats.nr_target_success
    ));

    let on_dr = s.train("natural-on-D_R", &s.config(arch.clone(), Method::Natural), &d_r)?.0;
    let on_nr = s.train("natural-on-D_NR", &s.config(arch.clone(), Method::Natural), &d_nr)?.0;
    let t = std::time::Instant::now();
    let models: [(&str, &str, &Network); 4] = [
        ("natural", "the real training images", &natural),
        ("robust", "the real training images, PGD-7", &robust),
        ("natural-on-D_R", "D_R (robust features only)", &on_dr),
        ("natural-on-D_NR", "D_NR (non-robust features, labels y+1)", &on_nr),
    ];
    let mut rows = Vec::new();
    for (name, on, net) in models {
        s.say(&format!("evaluating {name} on {} test images", s.test.len()));
        let fe = s.evaluate(net);
        rows.push(FeaturesRow {
            model: name.into(),
            trained_on: on.into(),
            clean_acc: round4(fe.clean_acc as f64),
            fgsm_acc: round4(fe.fgsm_acc as f64),
            pgd_acc: round4(fe.robust_acc as f64),
        });
    }
    s.timings.push(("evaluate".into(), t.elapsed().as_secs_f64()));

    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                format!("\"{}\"", r.trained_on),
                format!("{:.4}", r.clean_acc),
                format!("{:.4}", r.fgsm_acc),
                format!("{:.4}", r.pgd_acc),
            ]
        })
        .collect();
    s.write("features.csv", csv(&["model", "trained_on", "clean_acc", "fgsm_acc", "pgd_acc"], &lines).as_bytes())?;
    let json = FeaturesJson {
        study: "features",
        dataset: &c.dataset,
        seed: c.seed,
        quick: c.quick,
        eps: c.eps,
        epochs: s.epochs,
        train_images: n,
        test_images: s.test.len(),
        arch: arch.to_compact(),
        natural_from,
        robust_from,
        dr: format!(
            "{dr_steps} normalised-gradient steps (L2 step {} decaying to a tenth) matching the robust model's representation, from another training image; label y",
            a.dr_step_size
        ),
        nr: format!("targeted PGD-{nr_steps} on the natural model at eps {:.4} towards t = (y + 1) mod {classes}; label t", a.nr_eps),
        generated: &stats,
        rows: &rows,
    };
    s.write("features.json", serde_json::to_string_pretty(&json)?.as_bytes())?;
    let groups: Vec<(String, Vec<f64>)> =
        rows.iter().map(|r| (r.model.clone(), vec![r.clean_acc, r.pgd_acc])).collect();
    let title = format!("features: {} (real test set, eps {:.3})", c.dataset, c.eps);
    s.write("features.svg", bars_svg(&title, &["clean", "PGD-20"], &groups).as_bytes())?;
    let shape = (input[0], input[1], input[2]);
    let il = train.image_len();
    let grid: Vec<Vec<(String, Vec<u8>)>> = (0..SHOWN.min(n))
        .map(|i| {
            vec![
                (format!("Y {}", labels[i]), train.image(i).to_vec()),
                (format!("Y {}", labels[i]), d_r.images[i * il..(i + 1) * il].to_vec()),
                (format!("LABEL {}", nr_labels[i]), d_nr.images[i * il..(i + 1) * il].to_vec()),
            ]
        })
        .collect();
    s.write("features.png", &grid_png(&["ORIGINAL", "D_R", "D_NR"], &grid, shape)?)?;

    let mut md = format!(
        "# Robust and non-robust features (Ilyas et al. 2019): {}\n\nArchitecture `{}`; {} training images, {} epochs per model; \
         eps {:.4}; evaluated on the first {} real test images (PGD-20 on the 8-bit grid).\n\n\
         - D_R: {}.\n- D_NR: {}.\n\n![accuracy](features.svg)\n\n| model | trained on | clean | FGSM | PGD-20 |\n|---|---|---|---|---|\n",
        c.dataset,
        json.arch,
        n,
        s.epochs,
        c.eps,
        s.test.len(),
        json.dr,
        json.nr
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.model,
            r.trained_on,
            pct(r.clean_acc),
            pct(r.fgsm_acc),
            pct(r.pgd_acc)
        ));
    }
    md.push_str(&format!(
        "\nD_R: the optimisation closed the representation distance to {:.1} % of the start's; the robust model \
         classifies {} of D_R as its label. D_NR: the targeted attack reached the target on {}; the robust model still \
         sees the original class in {}.\n\nExamples (original, D_R, D_NR with its training label):\n\n![examples](features.png)\n",
        100.0 * stats.dr_final_relative_distance,
        pct(stats.dr_robust_model_agrees),
        pct(stats.nr_target_success),
        pct(stats.nr_robust_model_sees_original)
    ));
    md.push_str(&s.timings_markdown());
    s.write("summary.md", md.as_bytes())?;
    s.write_timings()?;
    s.say(&format!(
        "wrote features.csv, features.json, features.svg, features.png, summary.md and timings.json to {}",
        c.out.display()
    ));
    Ok(())
}

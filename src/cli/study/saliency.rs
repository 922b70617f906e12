//! `iocane study saliency` (Tsipras et al. 2019, "Robustness may be at odds with accuracy",
//! Fig. 2): the gradient of the loss with respect to the input pixels, for a natural and a
//! robust (PGD-trained) model on the same test images, as a picture grid (image | natural
//! gradient | robust gradient) and as a number.
//!
//! The alignment score of one image is the Pearson correlation between `|gradient|` and the
//! object mask (pixels above `--mask-threshold`); `saliency.json` gives its mean over the
//! images and the fraction of images where the robust model's score is the higher one. A
//! constant gradient or mask has no correlation and scores 0. Gradients are drawn signed
//! (mid grey 0, white positive, black negative) and scaled per tile to its 99th percentile
//! of `|gradient|`.

use anyhow::{bail, Result};
use clap::Args;
use iocane_trainer::nn::{Network, Want};
use serde::Serialize;

use super::features::study_arch;
use super::{batch, csv, grid_png, natural_and_robust, round4, CommonArgs, PairArgs, Setup};

/// Flags of `iocane study saliency`.
#[derive(Debug, Args)]
pub struct SaliencyArgs {
    /// Flags shared by the studies.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Architecture of both models [default: conv8k3s2p1,relu,conv16k3s2p1,relu,flatten,dense64,relu,dense<classes>].
    #[arg(long)]
    pub arch: Option<String>,
    /// Checkpoints to use instead of training the pair.
    #[command(flatten)]
    pub pair: PairArgs,
    /// Test images scored (the first ones) [default: quick 64, full 1000].
    #[arg(long)]
    pub images: Option<usize>,
    /// Rows of the picture grid (the first scored images).
    #[arg(long, default_value_t = 8)]
    pub show: usize,
    /// Object mask: pixels above this value (in [0, 1]).
    #[arg(long, default_value_t = 0.5)]
    pub mask_threshold: f32,
}

/// One scored image.
#[derive(Clone, Debug, Serialize)]
pub struct SaliencyRow {
    /// Test image index.
    pub index: usize,
    /// True class.
    pub label: usize,
    /// Natural model's class.
    pub natural_pred: usize,
    /// Robust model's class.
    pub robust_pred: usize,
    /// Pearson correlation of the natural model's `|gradient|` with the mask.
    pub natural_alignment: f64,
    /// Pearson correlation of the robust model's `|gradient|` with the mask.
    pub robust_alignment: f64,
}

#[derive(Serialize)]
struct SaliencyJson<'a> {
    study: &'static str,
    dataset: &'a str,
    seed: u64,
    quick: bool,
    eps: f32,
    epochs: usize,
    train_images: usize,
    images: usize,
    mask_threshold: f32,
    arch: String,
    natural_from: String,
    robust_from: String,
    score: &'static str,
    natural_mean_alignment: f64,
    robust_mean_alignment: f64,
    robust_higher_fraction: f64,
    natural_clean_acc: f64,
    robust_clean_acc: f64,
    rows: &'a [SaliencyRow],
}

/// Pearson correlation of `a` and `b` (in `f64`); 0 when either is constant.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n == 0.0 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().map(|&v| v as f64).sum::<f64>() / n, b.iter().map(|&v| v as f64).sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// A signed gradient as a u8 picture: 128 + 127 * g / s clamped, `s` the 99th percentile of
/// `|g|` (mid grey when the gradient is zero).
pub fn gradient_picture(g: &[f32]) -> Vec<u8> {
    let mut mags: Vec<f32> = g.iter().map(|v| v.abs()).collect();
    mags.sort_by(f32::total_cmp);
    let s = mags.get((mags.len() * 99 / 100).min(mags.len().saturating_sub(1))).copied().unwrap_or(0.0);
    g.iter().map(|&v| if s > 0.0 { (128.0 + 127.0 * (v / s).clamp(-1.0, 1.0)).round() as u8 } else { 128 }).collect()
}

/// Input gradients of the loss of `net` for the images `idx` of the test set (per image,
/// up to the batch's 1/n factor, which no score or picture depends on).
fn gradients(net: &Network, test: &iocane_trainer::data::Dataset, idx: &[usize]) -> (Vec<Vec<f32>>, Vec<usize>) {
    let (x, labels) = batch(test, idx);
    let r = net.loss_and_grads(&x, &labels, Want::INPUT);
    let g = r.input_grad.unwrap_or_else(|| iocane_trainer::nn::Tensor::zeros(x.shape));
    ((0..x.n()).map(|i| g.sample(i).to_vec()).collect(), r.predictions)
}

/// Runs the study.
pub fn run(a: &SaliencyArgs) -> Result<()> {
    let c = &a.common;
    if !(0.0..1.0).contains(&a.mask_threshold) {
        bail!("--mask-threshold {} must be in [0, 1)", a.mask_threshold);
    }
    let mut s = Setup::new(c)?;
    let (input, classes) = (s.input(), s.train.classes);
    let arch = study_arch(a.arch.as_deref(), input, classes)?;
    let train = s.train.clone();
    // Checkpoints given on the command line are loaded (and checked) before any training.
    let given = a.pair.load(input, classes)?;
    let ((natural, natural_from), (robust, robust_from)) = natural_and_robust(&mut s, &arch, &train, given)?;
    let n = a.images.unwrap_or(if c.quick { 64 } else { 1000 }).min(s.test.len());
    if n == 0 {
        bail!("--images must be at least 1");
    }
    s.say(&format!("input gradients of both models on {n} test images"));
    let t = std::time::Instant::now();
    let mut rows = Vec::with_capacity(n);
    let mut pictures = Vec::new();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(256) {
        let (gn, pn) = gradients(&natural, &s.test, chunk);
        let (gr, pr) = gradients(&robust, &s.test, chunk);
        for (k, &i) in chunk.iter().enumerate() {
            let img = s.test.image(i);
            let mask: Vec<f32> =
                img.iter().map(|&b| if b as f32 / 255.0 > a.mask_threshold { 1.0 } else { 0.0 }).collect();
            let abs = |g: &[f32]| g.iter().map(|v| v.abs()).collect::<Vec<f32>>();
            rows.push(SaliencyRow {
                index: i,
                label: s.test.label(i),
                natural_pred: pn[k],
                robust_pred: pr[k],
                natural_alignment: round4(pearson(&abs(&gn[k]), &mask)),
                robust_alignment: round4(pearson(&abs(&gr[k]), &mask)),
            });
            if i < a.show {
                pictures.push(vec![
                    (format!("#{i} Y {}", s.test.label(i)), img.to_vec()),
                    (format!("PRED {} R {:.2}", pn[k], rows[i].natural_alignment), gradient_picture(&gn[k])),
                    (format!("PRED {} R {:.2}", pr[k], rows[i].robust_alignment), gradient_picture(&gr[k])),
                ]);
            }
        }
    }
    s.timings.push(("gradients".into(), t.elapsed().as_secs_f64()));
    let mean = |f: fn(&SaliencyRow) -> f64| round4(rows.iter().map(f).sum::<f64>() / n as f64);
    let higher = rows.iter().filter(|r| r.robust_alignment > r.natural_alignment).count();
    let acc = |f: fn(&SaliencyRow) -> usize| round4(rows.iter().filter(|r| f(r) == r.label).count() as f64 / n as f64);
    let json = SaliencyJson {
        study: "saliency",
        dataset: &c.dataset,
        seed: c.seed,
        quick: c.quick,
        eps: c.eps,
        epochs: s.epochs,
        train_images: s.train.len(),
        images: n,
        mask_threshold: a.mask_threshold,
        arch: arch.to_compact(),
        natural_from,
        robust_from,
        score: "Pearson correlation of |d loss / d pixel| with the mask (pixel > threshold), per image",
        natural_mean_alignment: mean(|r| r.natural_alignment),
        robust_mean_alignment: mean(|r| r.robust_alignment),
        robust_higher_fraction: round4(higher as f64 / n as f64),
        natural_clean_acc: acc(|r| r.natural_pred),
        robust_clean_acc: acc(|r| r.robust_pred),
        rows: &rows,
    };
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                r.label.to_string(),
                r.natural_pred.to_string(),
                r.robust_pred.to_string(),
                format!("{:.4}", r.natural_alignment),
                format!("{:.4}", r.robust_alignment),
            ]
        })
        .collect();
    let header = ["index", "label", "natural_pred", "robust_pred", "natural_alignment", "robust_alignment"];
    s.write("saliency.csv", csv(&header, &lines).as_bytes())?;
    s.write("saliency.json", serde_json::to_string_pretty(&json)?.as_bytes())?;
    s.write(
        "saliency.png",
        &grid_png(&["IMAGE", "NATURAL GRADIENT", "ROBUST GRADIENT"], &pictures, (input[0], input[1], input[2]))?,
    )?;
    let md = format!(
        "# Saliency (Tsipras et al. 2019, Fig. 2): {}\n\nArchitecture `{}`; natural model: {}; robust model (PGD, eps {:.4}): {}. \
         {} test images; alignment = Pearson correlation of |gradient| with the mask of pixels > {}.\n\n\
         | model | clean accuracy on these images | mean alignment |\n|---|---|---|\n| natural | {:.2} % | {:.4} |\n| robust | {:.2} % | {:.4} |\n\n\
         The robust model's gradient is the better aligned on {:.1} % of the images.\n\n\
         Image, natural gradient, robust gradient (signed; grey = 0; each tile scaled to its 99th percentile):\n\n![saliency](saliency.png)\n{}",
        c.dataset,
        json.arch,
        json.natural_from,
        c.eps,
        json.robust_from,
        n,
        a.mask_threshold,
        100.0 * json.natural_clean_acc,
        json.natural_mean_alignment,
        100.0 * json.robust_clean_acc,
        json.robust_mean_alignment,
        100.0 * json.robust_higher_fraction,
        s.timings_markdown()
    );
    s.write("summary.md", md.as_bytes())?;
    s.write_timings()?;
    s.say(&format!(
        "natural alignment {:.4}, robust {:.4} (robust higher on {:.1}% of {n}); wrote saliency.csv, saliency.json, saliency.png, summary.md, timings.json to {}",
        json.natural_mean_alignment,
        json.robust_mean_alignment,
        100.0 * json.robust_higher_fraction,
        c.out.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_and_gradient_pictures() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[0.0, 1.0]), 0.0, "constant input");
        assert_eq!(pearson(&[], &[]), 0.0);
        assert_eq!(gradient_picture(&[0.0; 4]), vec![128; 4]);
        let p = gradient_picture(&[1.0, -1.0, 0.0, 0.5]);
        assert_eq!((p[0], p[1], p[2]), (255, 1, 128));
    }
}

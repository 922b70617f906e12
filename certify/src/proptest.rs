//! Property tests of an int8 model (feature `proptest`): strategies over the L-infinity
//! ball of a user's images, and robustness assertions judged by the runtime.
//!
//! - [`linf_ball`]: valid 8-bit images within `k` levels of an image (clipped to
//!   `[0, 255]`), three in four drawn at a corner of the ball (every pixel at an end, where
//!   adversarial points of a ReLU network live), shrinking towards the original image so
//!   that a failure is reported as a small perturbation.
//! - [`dataset_images`]: one of the first `n` images of a dataset with its label, shrinking
//!   towards the first one; [`perturbed_images`] composes the two.
//! - [`check_point`] (inside `proptest!`), [`check_robust`] / [`assert_robust`] (a whole
//!   ball in one call) and the [`prop_robust!`](crate::prop_robust) macro.
//!
//! Sampling finds counterexamples, it proves nothing: a ball that passes may still hold an
//! adversarial image. For a proof use [`crate::ibp::Bounder`]; the project's soundness
//! tests check that the two agree (certified => no sampled point is misclassified).
//!
//! ```
//! use iocane_certify::ibp::{Bounder, Verdict};
//! use iocane_certify::proptest::{assert_robust, check_point, classify, linf_ball};
//! use iocane_runtime::{emit::random_mlp, Model};
//! use proptest::prelude::*;
//!
//! let blob = random_mlp(7).emit(); // or std::fs::read("model.icn")
//! let model = Model::parse(&blob).unwrap();
//! let image = vec![128u8; model.input_len()];
//! let label = classify(&model, &image);
//!
//! // One call: 256 points of the ball of 1 level, shrunk to a small perturbation on failure.
//! assert_robust(&model, &image, label, 1);
//!
//! // Or composed in the user's own proptest.
//! proptest!(|(x in linf_ball(&image, 1))| {
//!     prop_assert!(x.iter().zip(&image).all(|(&a, &b)| a.abs_diff(b) <= 1));
//!     check_point(&model, &x, label)?;
//! });
//!
//! // Sampling cannot prove robustness; the interval bounds can, when they are tight enough.
//! let (verdict, _) = Bounder::new(&model).certify_sample(&image, label, 1);
//! assert_ne!(verdict, Verdict::Misclassified);
//! ```
//! ```

use std::fmt;

use ::proptest::prelude::{Rng, Strategy, TestCaseError};
use ::proptest::strategy::{NewTree, ValueTree};
use ::proptest::test_runner::{Config, TestError, TestRng, TestRunner};
use iocane_runtime::rng::SplitMix64;
use iocane_runtime::Model;
use iocane_trainer::data::Dataset;

/// The proptest crate this module is built on (for [`prop_robust!`](crate::prop_robust)).
#[doc(hidden)]
pub use ::proptest as __proptest;

/// The runtime's class of `pixels` (argmax, ties to the lowest index).
///
/// # Panics
/// If `pixels` does not have `model.input_len()` pixels.
pub fn classify(model: &Model<'_>, pixels: &[u8]) -> usize {
    logits(model, pixels).0
}

/// The runtime's class and int32 logits of `pixels`.
///
/// # Panics
/// If `pixels` does not have `model.input_len()` pixels.
pub fn logits(model: &Model<'_>, pixels: &[u8]) -> (usize, Vec<i32>) {
    let mut arena = vec![0u8; model.arena_size()];
    let mut z = vec![0i32; model.num_classes()];
    match model.run(pixels, &mut arena, &mut z) {
        Ok(c) => (c, z),
        Err(e) => panic!("cannot run the model on a {}-pixel image: {e}", pixels.len()),
    }
}

/// A strategy of valid 8-bit images within `k` levels of `image` (see the module doc).
///
/// Each pixel `p` takes a value in `[p - k, p + k]` clipped to `[0, 255]`: with probability
/// 3/4 one of the two ends, else uniform. Shrinking first halves every offset from `image`
/// (while the test still fails), then resets pixels to `image` one at a time: the shrunk
/// failure is a perturbation of few pixels.
pub fn linf_ball(image: &[u8], k: u8) -> LinfBall {
    LinfBall { center: image.to_vec(), k }
}

/// The strategy of [`linf_ball`].
#[derive(Clone, Debug)]
pub struct LinfBall {
    center: Vec<u8>,
    k: u8,
}

impl LinfBall {
    /// The image at the centre of the ball.
    pub fn center(&self) -> &[u8] {
        &self.center
    }

    /// The radius in pixel levels.
    pub fn k(&self) -> u8 {
        self.k
    }
}

impl Strategy for LinfBall {
    type Tree = LinfBallTree;
    type Value = Vec<u8>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let mut rng = SplitMix64(runner.rng().next_u64());
        let k = self.k;
        let current = self
            .center
            .iter()
            .map(|&p| {
                let (lo, hi) = (p.saturating_sub(k), p.saturating_add(k));
                let r = rng.next_u64();
                match r % 4 {
                    0 => lo + ((r >> 8) % (u64::from(hi - lo) + 1)) as u8,
                    1 | 2 if (r >> 2) & 1 == 0 => lo,
                    _ => hi,
                }
            })
            .collect();
        Ok(LinfBallTree { center: self.center.clone(), current, phase: Phase::Halve, undo: Undo::None })
    }
}

/// Where [`LinfBallTree`] is in its shrinking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Halve every offset from the centre at once.
    Halve,
    /// Reset pixels to the centre one at a time, from this index on.
    Reset(usize),
    /// Nothing simpler is left to try.
    Done,
}

/// How to undo the last simplification.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Undo {
    None,
    Halve(Vec<u8>),
    Pixel(usize, u8),
}

/// The value tree of [`LinfBall`]: the current image and its shrinking state.
#[derive(Clone, Debug)]
pub struct LinfBallTree {
    center: Vec<u8>,
    current: Vec<u8>,
    phase: Phase,
    undo: Undo,
}

impl ValueTree for LinfBallTree {
    type Value = Vec<u8>;

    fn current(&self) -> Vec<u8> {
        self.current.clone()
    }

    fn simplify(&mut self) -> bool {
        loop {
            match self.phase {
                Phase::Halve => {
                    if self.current == self.center {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let halved: Vec<u8> = self
                        .center
                        .iter()
                        .zip(&self.current)
                        .map(|(&c, &x)| (i16::from(c) + (i16::from(x) - i16::from(c)) / 2) as u8)
                        .collect();
                    if halved == self.current {
                        self.phase = Phase::Reset(0);
                        continue;
                    }
                    self.undo = Undo::Halve(std::mem::replace(&mut self.current, halved));
                    return true;
                }
                Phase::Reset(from) => {
                    let Some(i) = (from..self.current.len()).find(|&i| self.current[i] != self.center[i]) else {
                        self.phase = Phase::Done;
                        continue;
                    };
                    self.undo = Undo::Pixel(i, self.current[i]);
                    self.current[i] = self.center[i];
                    self.phase = Phase::Reset(i + 1);
                    return true;
                }
                Phase::Done => return false,
            }
        }
    }

    fn complicate(&mut self) -> bool {
        match std::mem::replace(&mut self.undo, Undo::None) {
            Undo::None => false,
            Undo::Halve(prev) => {
                // Halving made the test pass: keep the larger offsets, reset pixel by pixel.
                self.current = prev;
                self.phase = Phase::Reset(0);
                true
            }
            Undo::Pixel(i, v) => {
                self.current[i] = v;
                true
            }
        }
    }
}

/// One image of a dataset with its index and label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledImage {
    /// Index in the dataset.
    pub index: usize,
    /// NHWC u8 pixels.
    pub pixels: Vec<u8>,
    /// True label.
    pub label: usize,
}

/// A strategy of the first `n` images of `dataset` (all of them if `n` is 0 or larger),
/// shrinking towards index 0. The images are copied once, when the strategy is made.
///
/// # Panics
/// If the dataset is empty.
pub fn dataset_images(dataset: &Dataset, n: usize) -> impl Strategy<Value = LabeledImage> + Clone {
    let n = if n == 0 { dataset.len() } else { n.min(dataset.len()) };
    assert!(n > 0, "dataset_images: the dataset {} is empty", dataset.name);
    let images: std::sync::Arc<Vec<LabeledImage>> = std::sync::Arc::new(
        (0..n).map(|i| LabeledImage { index: i, pixels: dataset.image(i).to_vec(), label: dataset.label(i) }).collect(),
    );
    (0..n).prop_map(move |i| images[i].clone())
}

/// A strategy of (an image of the first `n` of `dataset`, a point of its ball of `k` levels).
pub fn perturbed_images(dataset: &Dataset, n: usize, k: u8) -> impl Strategy<Value = (LabeledImage, Vec<u8>)> + Clone {
    dataset_images(dataset, n).prop_flat_map(move |s| {
        let ball = linf_ball(&s.pixels, k);
        (::proptest::strategy::Just(s), ball)
    })
}

/// A point of a ball that the model does not classify as the label.
#[derive(Clone, PartialEq, Eq)]
pub struct NotRobust {
    /// The (shrunk) misclassified image.
    pub image: Vec<u8>,
    /// The expected label.
    pub label: usize,
    /// The runtime's class of `image`.
    pub class: usize,
    /// The runtime's logits of `image`.
    pub logits: Vec<i32>,
    /// Pixels that differ from the centre of the ball.
    pub changed: usize,
    /// Largest per-pixel difference from the centre, in levels.
    pub distance: u8,
    /// Passing cases before the first failure (0: the first point drawn failed).
    pub cases: u32,
}

impl fmt::Display for NotRobust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the int8 model classifies an image of the ball as {} instead of {} (logits {:?}); \
             {} pixel(s) changed by at most {} level(s)",
            self.class, self.label, self.logits, self.changed, self.distance
        )
    }
}

impl fmt::Debug for NotRobust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotRobust({self}; image {:?})", self.image)
    }
}

impl std::error::Error for NotRobust {}

/// Inside a `proptest!` body: fails the case unless the runtime classifies `x` as `label`.
///
/// # Panics
/// If `x` does not have `model.input_len()` pixels.
pub fn check_point(model: &Model<'_>, x: &[u8], label: usize) -> Result<(), TestCaseError> {
    let (class, z) = logits(model, x);
    if class == label {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("classified as {class} instead of {label} (logits {z:?})")))
    }
}

/// The configuration [`assert_robust`] uses: proptest's default (256 cases, or
/// `PROPTEST_CASES`), with no failure persistence (the runs are deterministic instead).
pub fn default_config() -> Config {
    Config { failure_persistence: None, ..Config::default() }
}

/// Property-tests the ball of `k` levels around `image`: `config.cases` points drawn by
/// [`linf_ball`] with a deterministic generator (the same points on every run), each
/// judged by the runtime. Returns the shrunk counterexample if a point is not classified as
/// `label` (the centre itself counts).
///
/// # Panics
/// If `image` does not have `model.input_len()` pixels.
pub fn check_robust(model: &Model<'_>, image: &[u8], label: usize, k: u8, config: &Config) -> Result<(), NotRobust> {
    assert_eq!(image.len(), model.input_len(), "check_robust: image and model disagree on the input size");
    let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm));
    let scratch = std::cell::RefCell::new((vec![0u8; model.arena_size()], vec![0i32; model.num_classes()]));
    // Passing cases before the first failure (shrinking runs the property again).
    let (cases, failed) = (std::cell::Cell::new(0u32), std::cell::Cell::new(false));
    let result = runner.run(&linf_ball(image, k), |x| {
        let (arena, z) = &mut *scratch.borrow_mut();
        let class = model.run(&x, arena, z).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if class == label {
            cases.set(cases.get() + u32::from(!failed.get()));
            Ok(())
        } else {
            failed.set(true);
            Err(TestCaseError::fail("misclassified"))
        }
    });
    let cases = cases.get();
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(_, x)) => {
            let (class, logits) = self::logits(model, &x);
            let diffs = x.iter().zip(image).map(|(&a, &b)| a.abs_diff(b));
            let changed = diffs.clone().filter(|&d| d > 0).count();
            let distance = diffs.max().unwrap_or(0);
            Err(NotRobust { image: x, label, class, logits, changed, distance, cases })
        }
        // linf_ball never rejects, so proptest has no reason to abort.
        Err(TestError::Abort(reason)) => unreachable!("linf_ball rejected a case: {reason}"),
    }
}

/// Asserts, like `assert!`, that [`check_robust`] with [`default_config`] finds no point of
/// the ball of `k` levels around `image` that the model does not classify as `label`;
/// panics with the shrunk counterexample otherwise.
///
/// # Panics
/// On a counterexample, or if `image` does not have `model.input_len()` pixels.
#[track_caller]
pub fn assert_robust(model: &Model<'_>, image: &[u8], label: usize, k: u8) {
    if let Err(e) = check_robust(model, image, label, k, &default_config()) {
        panic!("assert_robust failed at k = {k}: {e:?}");
    }
}

/// Inside a `proptest!` body: `prop_robust!(&model, &image, label, k)` property-tests the
/// ball of `k` levels around `image` ([`check_robust`] with [`default_config`](crate::proptest::default_config))
/// and fails the outer case with the counterexample, so the outer test shrinks the image
/// (e.g. the dataset index of [`dataset_images`](crate::proptest::dataset_images)) too.
#[macro_export]
macro_rules! prop_robust {
    ($model:expr, $image:expr, $label:expr, $k:expr) => {
        if let ::core::result::Result::Err(e) =
            $crate::proptest::check_robust($model, $image, $label, $k, &$crate::proptest::default_config())
        {
            return ::core::result::Result::Err($crate::proptest::__proptest::test_runner::TestCaseError::fail(
                format!("{e:?}"),
            ));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::proptest::test_runner::Config;
    use iocane_runtime::testing::random_mlp;

    fn runner(seed: u8) -> TestRunner {
        TestRunner::new_with_rng(default_config(), TestRng::from_seed(Default::default(), &[seed; 32]))
    }

    #[test]
    fn linf_ball_stays_in_the_clipped_ball_and_favours_corners() {
        let center: Vec<u8> = (0..=255u8).step_by(3).collect();
        let mut r = runner(1);
        let (mut ends, mut total) = (0usize, 0usize);
        for k in [0u8, 1, 5, 40, 255] {
            let ball = linf_ball(&center, k);
            for _ in 0..50 {
                let x = ball.new_tree(&mut r).unwrap().current();
                assert_eq!(x.len(), center.len());
                for (&a, &c) in x.iter().zip(&center) {
                    let (lo, hi) = (c.saturating_sub(k), c.saturating_add(k));
                    assert!(lo <= a && a <= hi, "{a} outside [{lo}, {hi}] (k {k})");
                    if k > 0 && lo < hi {
                        total += 1;
                        ends += usize::from(a == lo || a == hi);
                    }
                }
            }
        }
        // Three in four pixels are drawn at an end (and the uniform quarter hits them too).
        assert!(ends * 100 >= total * 70, "{ends} of {total} pixels at a corner");
        assert!(ends < total, "no interior point at all");
    }

    /// A test failing iff pixel 3 moved shrinks to exactly that pixel, moved by one level.
    #[test]
    fn linf_ball_shrinks_towards_the_original_image() {
        let center = vec![100u8; 16];
        let mut r = runner(2);
        let err = r.run(&linf_ball(&center, 20), |x| {
            if x[3] == 100 {
                Ok(())
            } else {
                Err(TestCaseError::fail("pixel 3 moved"))
            }
        });
        let Err(TestError::Fail(_, x)) = err else { panic!("the failing property passed: {err:?}") };
        let moved: Vec<usize> = (0..16).filter(|&i| x[i] != 100).collect();
        assert_eq!(moved, vec![3], "{x:?}");
        assert_eq!(x[3].abs_diff(100), 1, "{x:?}");
        // A property failing on a whole-image condition shrinks to the smallest offsets.
        let err = runner(3).run(&linf_ball(&center, 20), |x| {
            if x.iter().map(|&p| u32::from(p.abs_diff(100))).sum::<u32>() < 10 {
                Ok(())
            } else {
                Err(TestCaseError::fail("too far"))
            }
        });
        let Err(TestError::Fail(_, x)) = err else { panic!("the failing property passed: {err:?}") };
        let l1: u32 = x.iter().map(|&p| u32::from(p.abs_diff(100))).sum();
        assert!((10..=20).contains(&l1), "shrunk to L1 {l1}: {x:?}");
    }

    #[test]
    fn check_robust_finds_and_shrinks_counterexamples() {
        let blob = random_mlp(3).emit();
        let model = Model::parse(&blob).unwrap();
        let image: Vec<u8> = (0..model.input_len()).map(|i| (i * 37 % 256) as u8).collect();
        let label = classify(&model, &image);
        // The image itself: robust at k = 0 for its own class, not for another one.
        assert_eq!(check_robust(&model, &image, label, 0, &default_config()), Ok(()));
        let other = (label + 1) % model.num_classes();
        let e = check_robust(&model, &image, other, 0, &default_config()).unwrap_err();
        assert_eq!((e.class, e.changed, e.distance, e.cases), (label, 0, 0, 0));
        // A ball of random weights at k = 128 holds other classes: the counterexample is
        // inside the ball, misclassified, and shrunk (not every pixel moved to the end).
        let e = check_robust(&model, &image, label, 128, &Config { cases: 64, ..default_config() }).unwrap_err();
        assert!(e.image.iter().zip(&image).all(|(&a, &b)| a.abs_diff(b) <= 128));
        assert_eq!(classify(&model, &e.image), e.class);
        assert_ne!(e.class, label);
        assert!(e.changed > 0 && e.changed < image.len(), "{e}");
        // Deterministic: the same counterexample on every run.
        let again = check_robust(&model, &image, label, 128, &Config { cases: 64, ..default_config() }).unwrap_err();
        assert_eq!(e, again);
        let msg = std::panic::catch_unwind(|| assert_robust(&model, &image, other, 0)).unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains(&format!("as {label} instead of {other}")), "{msg}");
    }

    #[test]
    fn prop_robust_fails_the_outer_case() {
        let blob = random_mlp(3).emit();
        let model = Model::parse(&blob).unwrap();
        let image = vec![9u8; model.input_len()];
        let label = classify(&model, &image);
        let outer = |k: u8, label: usize| -> Result<(), TestCaseError> {
            crate::prop_robust!(&model, &image, label, k);
            Ok(())
        };
        // A runner counts its passing cases across runs: one runner per run.
        assert!(runner(4).run(&(0u8..=0), |k| outer(k, label)).is_ok());
        let other = (label + 1) % model.num_classes();
        let res = runner(4).run(&(0u8..=0), |k| outer(k, other));
        assert!(matches!(res, Err(TestError::Fail(..))), "{res:?}");
    }

    #[test]
    fn dataset_images_are_the_first_n_with_their_labels() {
        let images: Vec<u8> = (0..40u8).collect();
        let data = Dataset {
            name: "tiny/test".into(),
            height: 2,
            width: 2,
            channels: 1,
            classes: 3,
            labels_text: vec!["a".into(), "b".into(), "c".into()],
            images,
            labels: vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0],
        };
        let s = dataset_images(&data, 4);
        let mut r = runner(5);
        let mut seen = [false; 4];
        for _ in 0..64 {
            let v = s.new_tree(&mut r).unwrap().current();
            assert!(v.index < 4);
            assert_eq!(v.pixels, data.image(v.index));
            assert_eq!(v.label, data.label(v.index));
            seen[v.index] = true;
        }
        assert_eq!(seen, [true; 4]);
        let err = runner(6).run(&perturbed_images(&data, 0, 2), |(s, x)| {
            ::proptest::prop_assert!(x.iter().zip(&s.pixels).all(|(&a, &b)| a.abs_diff(b) <= 2));
            ::proptest::prop_assert!(s.index < 5, "index {}", s.index);
            Ok(())
        });
        // Index 5 and above fail; the failure shrinks to index 5, the smallest failing one.
        let Err(TestError::Fail(_, (s, _))) = err else { panic!("{err:?}") };
        assert_eq!(s.index, 5);
    }
}

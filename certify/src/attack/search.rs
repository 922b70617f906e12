//! Integer-aware search: coordinate moves over the integer levels of a box, judged by the
//! int8 model's exact, tie-aware margin.
//!
//! Gradient attacks move every pixel at once along a direction the float twin suggests; on an
//! int8 model the margin is a staircase, and near a decision boundary the twin's direction can
//! point across a step the integer model never takes. This search ignores the size of the
//! gradient and asks the integer model directly: one pixel at a time, it tries levels of the
//! pixel's `[lo, hi]` range and keeps a move when the int8 margin
//! `min_{j != y} (z_y - z_j + [j > y])` strictly falls. The image is misclassified iff that
//! margin is `<= 0`.
//!
//! The gate starts it from the nearest miss of the attacks before it (the correctly classified
//! image with the smallest int8 margin they queried), so it finishes what they almost found.
//!
//! Each round orders the pixels by the straight-through gradient of the twin's margin loss
//! times the room the pixel has in the gradient's direction (the twin only ranks the pixels; it
//! never decides). A round first tries the far end of every ranked pixel (a vertex move),
//! then, on the pixels whose vertex move was refused, every one of their `hi - lo + 1` levels
//! (the `2k + 1` levels of the ball for an interior pixel), keeping the best. A round without
//! an accepted move is a local minimum of the staircase: the search then kicks the best local
//! minimum found so far (sets `KICK_PIXELS` (16) random pixels to random levels of their range)
//! and descends again from there (iterated local search), until the query budget is spent.
//!
//! [`Attacker::integer_search_box`] searches any integer box with a given start, so a
//! branch-and-bound verifier can call it as its falsifier on the boxes it splits;
//! [`Attacker::integer_search`] searches the `k`-level ball of an image.

use super::{margin, AttackResult, Attacker};
use crate::ibp::linf_ball;
use crate::twin::{FloatTwin, Loss};
use iocane_runtime::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// Configuration of [`Attacker::integer_search`] and [`Attacker::integer_search_box`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Query budget (int8 model runs, including the start).
    pub queries: usize,
    /// Pixels ranked per round (the others wait for the next round's ranking).
    pub pixels_per_round: usize,
}

impl Default for SearchConfig {
    /// 2,000 queries, 64 pixels per round.
    fn default() -> Self {
        SearchConfig { queries: 2000, pixels_per_round: 64 }
    }
}

impl Attacker<'_> {
    /// The integer search on the ball of `k` levels around `pixels` (clipped to `[0, 255]`),
    /// started from the best (smallest int8 margin) of the clean image, the vertex the twin's
    /// margin gradient points to and `hint` (an earlier attack's
    /// [`AttackResult::nearest_miss`], clamped into the ball). Checks the clean image first,
    /// like every attack.
    ///
    /// # Panics
    /// If `pixels` does not have `model.input_len()` pixels, `hint` is not that long, or
    /// `label` is out of range.
    pub fn integer_search(
        &mut self,
        pixels: &[u8],
        label: usize,
        k: u8,
        hint: Option<&[u8]>,
        cfg: &SearchConfig,
        rng: &mut SplitMix64,
    ) -> AttackResult {
        let (mut res, done) = self.start(pixels, label, k);
        if done {
            return res;
        }
        let clean_margin = margin(&self.logits, label);
        let (lo, hi) = linf_ball(pixels, k);
        let (_, g) = self.twin.input_gradient(&FloatTwin::input_from_pixels(pixels), label, Loss::Margin);
        res.gradients += 1;
        let vertex = super::sign_vertex(pixels, &lo, &hi, &g);
        let (mut start, mut start_margin) = (pixels.to_vec(), clean_margin);
        let hint = hint.map(|h| (0..pixels.len()).map(|i| h[i].clamp(lo[i], hi[i])).collect::<Vec<u8>>());
        for cand in [Some(vertex), hint].into_iter().flatten() {
            if cand == start || res.queries >= cfg.queries {
                continue;
            }
            if self.test(&cand, label, &mut res) {
                return res;
            }
            let m = margin(&self.logits, label);
            if m < start_margin {
                (start, start_margin) = (cand, m);
            }
        }
        let sub = SearchConfig { queries: cfg.queries.saturating_sub(res.queries), ..*cfg };
        let more = self.integer_search_box(&lo, &hi, label, &start, &sub, rng);
        res.queries += more.queries;
        res.gradients += more.gradients;
        res.counterexample = more.counterexample;
        res.nearest_miss = more.nearest_miss;
        res
    }

    /// The integer search (see the module documentation) inside the box `lo <= x <= hi`
    /// from `start` (clamped into the box), for at most `cfg.queries` int8 runs. Returns the
    /// first image of the box the int8 model does not classify as `label` (the start itself
    /// if it is one).
    ///
    /// # Panics
    /// If `lo`, `hi` or `start` do not have `model.input_len()` pixels, or `label` is out of
    /// range.
    pub fn integer_search_box(
        &mut self,
        lo: &[u8],
        hi: &[u8],
        label: usize,
        start: &[u8],
        cfg: &SearchConfig,
        rng: &mut SplitMix64,
    ) -> AttackResult {
        let n = self.model.input_len();
        assert!(lo.len() == n && hi.len() == n && start.len() == n, "box and start must have the model's input length");
        let mut res = AttackResult::default();
        if cfg.queries == 0 {
            return res;
        }
        let (lo, hi): (Vec<u8>, Vec<u8>) = lo.iter().zip(hi).map(|(&a, &b)| (a.min(b), a.max(b))).unzip();
        let mut x: Vec<u8> = (0..n).map(|i| start[i].clamp(lo[i], hi[i])).collect();
        // Every query below differs from `x` in one pixel: the incremental evaluator keeps
        // `x` as its base and recomputes only that pixel's receptive fields.
        if self.test_incremental(&x, label, &mut res) {
            return res;
        }
        self.inc.accept();
        let mut best = margin(&self.logits, label);
        // The best local minimum so far, where each kick starts, and the pixels a kick may move.
        let mut global = (best, x.clone());
        let movable: Vec<usize> = (0..n).filter(|&i| lo[i] < hi[i]).collect();
        let mut cand = x.clone();
        let mut scaled = vec![0f32; n];
        while res.queries < cfg.queries {
            for (s, &v) in scaled.iter_mut().zip(&x) {
                *s = v as f32 / 255.0;
            }
            let (_, g) = self.twin.input_gradient(&scaled, label, Loss::Margin);
            res.gradients += 1;
            // Rank by predicted gain; random tie-breaks so that flat gradients still move.
            let mut ranked: Vec<(f32, u64, usize)> = (0..n)
                .filter(|&i| lo[i] < hi[i])
                .map(|i| {
                    let room = if g[i] > 0.0 { hi[i] - x[i] } else { x[i] - lo[i] };
                    (g[i].abs() * room as f32, rng.next_u64(), i)
                })
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            ranked.truncate(cfg.pixels_per_round.max(1));
            let mut accepted = false;
            let mut refused = Vec::new();
            // Vertex moves: the far end in the gradient's direction (the other end if the
            // pixel is already there).
            for &(_, _, i) in &ranked {
                if res.queries >= cfg.queries {
                    return res;
                }
                let to = if g[i] > 0.0 && x[i] < hi[i] || x[i] == lo[i] { hi[i] } else { lo[i] };
                cand[i] = to;
                if self.test_incremental(&cand, label, &mut res) {
                    return res;
                }
                let m = margin(&self.logits, label);
                if m < best {
                    best = m;
                    x[i] = to;
                    accepted = true;
                    self.inc.accept();
                } else {
                    cand[i] = x[i];
                    refused.push(i);
                }
            }
            // Level moves: every level of the refused pixels, keeping the best.
            for i in refused {
                let (mut best_level, cur) = (x[i], x[i]);
                for v in lo[i]..=hi[i] {
                    if v == cur {
                        continue;
                    }
                    if res.queries >= cfg.queries {
                        return res;
                    }
                    cand[i] = v;
                    if self.test_incremental(&cand, label, &mut res) {
                        return res;
                    }
                    let m = margin(&self.logits, label);
                    if m < best {
                        best = m;
                        best_level = v;
                    }
                }
                x[i] = best_level;
                cand[i] = best_level;
                if best_level != cur {
                    accepted = true;
                    // The new `x` becomes the base (a run of the evaluator's own, not a query).
                    self.rebase_incremental(&x);
                }
            }
            if !accepted {
                // A local minimum of the staircase: kick the best image found so far and
                // descend again (iterated local search), while the budget lasts.
                if best < global.0 {
                    global = (best, x.clone());
                }
                if movable.is_empty() || res.queries >= cfg.queries {
                    break;
                }
                x.clone_from(&global.1);
                for _ in 0..KICK_PIXELS {
                    let i = movable[(rng.next_u64() % movable.len() as u64) as usize];
                    let span = u64::from(hi[i] - lo[i]) + 1;
                    x[i] = lo[i] + (rng.next_u64() % span) as u8;
                }
                cand.clone_from(&x);
                if self.test(&x, label, &mut res) {
                    return res;
                }
                best = margin(&self.logits, label);
                self.rebase_incremental(&x);
            }
        }
        res
    }
}

/// Pixels a kick of the iterated local search sets to random levels of their range.
const KICK_PIXELS: usize = 16;

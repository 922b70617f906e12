//! Progress on long work: a bar on a terminal, plain lines on stderr otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Progress of `total` items of work, safe to advance from many threads.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: Option<Plain>,
}

struct Plain {
    what: &'static str,
    total: u64,
    done: AtomicU64,
    every: u64,
    t0: Instant,
}

impl Progress {
    /// Progress over `total` items called `what` (e.g. "samples"). Hidden with `quiet`; on a
    /// terminal an indicatif bar; otherwise a line on stderr every 5 % of the work.
    pub fn new(label: &'static str, what: &'static str, total: u64, quiet: bool) -> Progress {
        if quiet {
            return Progress { bar: None, plain: None };
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{label} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            return Progress { bar: Some(bar), plain: None };
        }
        eprintln!("{label}: {total} {what}");
        let every = total.div_ceil(20).max(1);
        Progress { bar: None, plain: Some(Plain { what, total, done: AtomicU64::new(0), every, t0: Instant::now() }) }
    }

    /// Advances by `d` items.
    pub fn inc(&self, d: u64) {
        if let Some(b) = &self.bar {
            b.inc(d);
        }
        if let Some(p) = &self.plain {
            let before = p.done.fetch_add(d, Ordering::Relaxed);
            let now = before + d;
            if now / p.every != before / p.every || now == p.total {
                let secs = p.t0.elapsed().as_secs_f64();
                let rate = now as f64 / secs.max(1e-9);
                let eta = p.total.saturating_sub(now) as f64 / rate.max(1e-9);
                eprintln!(
                    "  {now}/{} {} ({:.0}%), {secs:.0}s elapsed, {rate:.1}/s, eta {eta:.0}s",
                    p.total,
                    p.what,
                    100.0 * now as f64 / p.total.max(1) as f64
                );
            }
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

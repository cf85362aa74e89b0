//! Progress of a long command (bench, demo, reconcile, run-once, sync-cards): a bar with rate
//! and ETA when stderr is a terminal and logs are text, else an INFO line "n of N, rate, ETA"
//! at most every `PAYCRON_PROGRESS_SECONDS` — so a CronJob's log shows a long run moving, and a person at a
//! terminal sees it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One long command's progress.
pub struct Progress {
    what: &'static str,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
    every: Duration,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Progress of `what` over `total` items (0: unknown, counted as they come), logged at most
    /// `every` without a terminal.
    pub fn new(what: &'static str, total: u64, every: Duration) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var("PAYCRON_LOG_FORMAT").map_or(true, |f| f.trim() != "json");
        let bar = terminal.then(|| {
            let bar = if total > 0 {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::new_spinner()
            };
            let style = if total > 0 {
                "{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}"
            } else {
                "{spinner} {msg} {pos} {per_sec}"
            };
            if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
                bar.set_style(s.progress_chars("=> "));
            }
            bar.set_message(what);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        Progress {
            what,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            every,
            bar,
        }
    }

    /// `n` more items done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= self.every {
            *last = Instant::now();
            self.log(done);
        }
    }

    /// The total, once known.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn log(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta =
            (total > done && rate > 0.0).then(|| ((total - done) as f64 / rate).round() as u64);
        tracing::info!(
            task = self.what,
            done,
            total,
            rate_per_s = (rate * 10.0).round() / 10.0,
            eta_s = eta,
            "progress"
        );
    }

    /// Clears the bar (the command's own summary follows).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_without_a_terminal() {
        let p = Progress::new("test", 10, Duration::from_secs(10));
        p.inc(3);
        p.inc(4);
        assert_eq!(p.done(), 7);
        p.set_total(20);
        p.finish();
    }
}

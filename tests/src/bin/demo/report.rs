//! Timestamps for event lines, and the summary table.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The demo's clock: event lines carry the time since the start.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    start: Arc<Instant>,
}

impl Clock {
    pub(crate) fn start() -> Self {
        Self {
            start: Arc::new(Instant::now()),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints one event line.
    pub(crate) fn say(&self, who: &str, what: &str) {
        println!("[{:>7.3}s] {who:<12} {what}", self.elapsed().as_secs_f64());
    }
}

/// One line of the summary table.
#[derive(Debug, Default, Clone)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) maybe_delivered: u64,
    pub(crate) not_sent: u64,
    pub(crate) lost: u64,
    pub(crate) mismatched: u64,
    pub(crate) reconnects: u64,
    pub(crate) latencies: Vec<Duration>,
    /// A free-form note: drain rate, reference counts.
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(rank.min(sorted.len() - 1)).copied()
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

pub(crate) fn print_table(rows: &[Row]) {
    println!(
        "{:<16} {:>7} {:>7} {:>7} {:>8} {:>5} {:>8} {:>10} {:>8} {:>8}  note",
        "section",
        "sent",
        "ok",
        "maybe",
        "not-sent",
        "lost",
        "mismatch",
        "reconnects",
        "p50 ms",
        "p99 ms"
    );
    for r in rows {
        println!(
            "{:<16} {:>7} {:>7} {:>7} {:>8} {:>5} {:>8} {:>10} {:>8} {:>8}  {}",
            r.name,
            r.sent,
            r.ok,
            r.maybe_delivered,
            r.not_sent,
            r.lost,
            r.mismatched,
            r.reconnects,
            ms(r.percentile(0.50)),
            ms(r.percentile(0.99)),
            r.note
        );
    }
}

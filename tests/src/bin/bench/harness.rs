//! What every scenario shares: the run mode, rounds, statistics, table rows and a typed failure.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

/// How hard to run: full, or the `--quick` smoke mode of CI.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    quick: bool,
}

impl Mode {
    /// A full run (`quick = false`) or the smoke mode.
    pub(crate) const fn new(quick: bool) -> Self {
        Self { quick }
    }

    /// Whether this is the smoke mode.
    pub(crate) const fn is_quick(&self) -> bool {
        self.quick
    }

    /// Rounds of A B interleaving: 5 in a full run, 3 in the smoke mode.
    pub(crate) const fn rounds(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }

    /// Picks the figure for this mode.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// A scenario that could not run, or a liveness check that failed. The binary exits non-zero on it.
#[derive(Debug)]
pub(crate) struct BenchError {
    message: String,
}

impl BenchError {
    /// A failure described by `message`.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        Self::new(format!("i/o: {e}"))
    }
}

impl From<tokio::time::error::Elapsed> for BenchError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        Self::new("liveness: the run did not finish within its time bound")
    }
}

/// The result of a scenario run.
pub(crate) type BenchResult<T> = Result<T, BenchError>;

/// Median, min and max of a series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stats {
    /// The statistics of `values`; `None` when there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: first,
            max: last,
        })
    }
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// Lower is better (ns per op, a gap): the ratio is peer / ours.
    Lower,
    /// Higher is better (throughput): the ratio is ours / peer.
    Higher,
}

/// Paired samples of ours and a peer, one pair per round.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pairs {
    pub(crate) ours: Vec<f64>,
    pub(crate) peer: Vec<f64>,
}

impl Pairs {
    /// Adds one round.
    pub(crate) fn push(&mut self, ours: f64, peer: f64) {
        self.ours.push(ours);
        self.peer.push(peer);
    }

    /// The per-round ratios, oriented so that above 1 means ours is better.
    pub(crate) fn ratios(&self, better: Better) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.peer)
            .map(|(&o, &p)| match better {
                // Equal figures (two zeros included) are a tie.
                _ if o == p => 1.0,
                Better::Lower => p / o,
                Better::Higher => o / p,
            })
            .collect()
    }

    /// Median of our samples.
    pub(crate) fn ours_median(&self) -> f64 {
        Stats::of(&self.ours).map_or(f64::NAN, |s| s.median)
    }

    /// Median of the peer's samples.
    pub(crate) fn peer_median(&self) -> f64 {
        Stats::of(&self.peer).map_or(f64::NAN, |s| s.median)
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The scenario id and case, such as "B3 16 callers".
    pub(crate) scenario: String,
    /// Our figure.
    pub(crate) ours: String,
    /// The peer's figure, with the peer's name.
    pub(crate) peer: String,
    /// The per-round ratios' statistics (above 1: ours is better); `None` when there is no peer for this figure.
    pub(crate) ratio: Option<Stats>,
    /// A physical or direct-call reference measured in the same run, if any.
    pub(crate) reference: String,
    /// The target, in words.
    pub(crate) target: String,
    /// Whether the target was met; `None` when the figure has no target.
    pub(crate) met: Option<bool>,
}

/// A benchmark scenario.
#[derive(Debug)]
pub(crate) struct Scenario {
    /// The id, matched by the NAME filter (such as "B3").
    pub(crate) id: &'static str,
    /// A short title, also matched by the filter.
    pub(crate) title: &'static str,
    /// How it is measured, for the notes of `BENCHMARKS.md`.
    pub(crate) method: &'static str,
    /// Runs it.
    pub(crate) run: fn(Mode) -> BenchResult<Vec<Row>>,
}

/// Nanoseconds per operation.
pub(crate) fn ns_per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_secs_f64() * 1e9 / ops.max(1) as f64
}

/// A duration in nanoseconds, in a readable unit.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "n/a".to_owned()
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A rate per second, in a readable unit.
pub(crate) fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} /s")
    }
}

/// A multi-thread tokio runtime with two workers, like the machines this runs on.
pub(crate) fn runtime() -> BenchResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Spawns `tasks` tasks, each the future `task()` returns, and gives the wall time until all are done.
///
/// Each task carries its own loop and its own clones of what it uses, so nothing is shared per operation but what is
/// measured. The time includes spawning the tasks, small next to the operations for the counts used here.
pub(crate) async fn spread<F, Fut>(tasks: usize, task: F) -> BenchResult<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = BenchResult<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        set.spawn(task());
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| BenchError::new(format!("a task failed: {e}")))??;
    }
    Ok(started.elapsed())
}

/// A function that wraps an error's text as a [`BenchError`] saying what failed: `.map_err(|e| err("connect")(e.to_string()))`.
pub(crate) fn err(what: &'static str) -> impl Fn(String) -> BenchError {
    move |e| BenchError::new(format!("{what}: {e}"))
}

/// A raw tokio-tungstenite client of `addr` (`ws://addr/`), with Nagle off: the clients of the WebSocket benches.
pub(crate) async fn ws_client(
    addr: std::net::SocketAddr,
) -> BenchResult<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| err("connect")(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| err("nodelay")(e.to_string()))?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .map_err(|e| err("client handshake")(e.to_string()))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn ratios_are_oriented_so_above_one_is_better() {
        let mut p = Pairs::default();
        p.push(10.0, 100.0);
        assert_eq!(p.ratios(Better::Lower), [10.0]);
        assert_eq!(p.ratios(Better::Higher), [0.1]);
    }
}

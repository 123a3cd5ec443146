//! The soak: thousands of TCP connections for minutes while the server bounces, then close-all; memory, file
//! descriptors and tasks must come back to where they were. Outside CI: `cargo xtask soak`.
//!
//! Two kinds of clients share one loopback echo server ([`FlakyServer`], restarted on its port every bounce period):
//! `connman_tcp::Connection`s writing a short line now and then through their `Writer`, and full stacks
//! (`Queue → Reconnect → Heartbeat → PipelineConnector`) sending requests. A warm-up round (everything connects,
//! talks, and closes) comes first, so the baseline includes what the allocator and the runtime keep once they have
//! served that many connections; the soak proper must then end where the warm-up ended.
//!
//! The test binary counts every heap allocation ([`stats_alloc`]), so the memory check is on live heap bytes, exact;
//! resident memory is sampled and reported but not asserted, since the system allocator keeps the pages of a peak.
//!
//! A leak of heap bytes (beyond 1 MiB + 1 % of the peak), of a file descriptor or of a task fails it.
//!
//! Environment (set by `cargo xtask soak`): `CONNMAN_SOAK_CONNECTIONS` (default 2000), `CONNMAN_SOAK_STACKS`
//! (default 100), `CONNMAN_SOAK_SECONDS` (default 120), `CONNMAN_SOAK_BOUNCE_SECONDS` (default 15).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_core::backoff::{Exponential, Jitter};
use connman_core::outcome::Outcome;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
use connman_queue::queue::{CallOptions, QueueConfig, QueueLayer};
use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
use connman_tcp::pipeline::PipelineConnector;
use connman_tcp::{Connection, Handler, TcpConnector};
use connman_tests::flaky::FlakyServer;
use tokio::task::JoinSet;
use tokio_util::codec::LinesCodec;
use tower::{Layer, ServiceExt};

/// Counts live heap bytes for the leak check.
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    heap: u64,
    rss: u64,
    fds: u64,
    tasks: u64,
}

impl Sample {
    fn now() -> Self {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        let fds = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count() as u64;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as u64;
        let heap = HEAP.stats();
        Self {
            heap: heap.bytes_allocated.saturating_sub(heap.bytes_deallocated) as u64,
            rss: pages * 4096,
            fds,
            tasks,
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            heap: self.heap.max(other.heap),
            rss: self.rss.max(other.rss),
            fds: self.fds.max(other.fds),
            tasks: self.tasks.max(other.tasks),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Counts what a `Connection` receives.
#[derive(Debug)]
struct Counting(Arc<AtomicU64>);

impl Handler for Counting {
    fn on_data(&mut self, data: Bytes) {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

/// The clients of one round and what they did.
struct Clients {
    conns: Vec<Connection>,
    tasks: JoinSet<(u64, u64, u64)>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

fn backoff() -> Exponential {
    Exponential::builder()
        .initial(ms(50))
        .max(Duration::from_secs(2))
        .jitter(Jitter::Full)
        .build()
        .expect("valid backoff")
}

fn ping() -> String {
    "ping".to_owned()
}

/// Starts `connections` `Connection`s and `stacks` full stacks against `server`.
fn start(server: &FlakyServer, connections: u64, stacks: u64) -> Clients {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Vec<Connection> = (0..connections)
        .map(|_| {
            Connection::builder(server.addr(), Counting(received.clone()))
                .backoff(backoff())
                .connect()
                .expect("inside a runtime")
        })
        .collect();
    let mut tasks = JoinSet::new();
    // Connection traffic: every connection writes a line about once a second.
    let writers: Vec<_> = conns.iter().map(Connection::writer).collect();
    let stopped = stop.clone();
    tasks.spawn(async move {
        let mut written = 0;
        let mut turn = 0usize;
        while !stopped.load(Ordering::Acquire) {
            for w in writers.iter().skip(turn % 10).step_by(10) {
                if w.is_connected() && w.write_all(b"soak\n").await.is_ok() {
                    written += 1;
                }
            }
            turn += 1;
            tokio::time::sleep(ms(100)).await;
        }
        (written, 0, 0)
    });
    for _ in 0..stacks {
        let heartbeat = HeartbeatLayer::new(
            HeartbeatConfig::builder()
                .interval(Duration::from_secs(1))
                .timeout(ms(500))
                .build()
                .expect("valid heartbeat"),
            ping as fn() -> String,
        );
        let make: PipelineConnector<_, _, String> = PipelineConnector::new(
            TcpConnector::new().connect_timeout(Duration::from_secs(2)),
            LinesCodec::new_with_max_length(1024),
        );
        let link = ReconnectLayer::new(
            ReconnectConfig::builder(server.addr())
                .backoff(backoff())
                .build()
                .expect("valid reconnect config"),
        )
        .layer(heartbeat.layer(make));
        let mut svc = QueueLayer::new(
            QueueConfig::builder()
                .capacity(64)
                .max_wait(Duration::from_secs(10))
                .build()
                .expect("valid queue config"),
        )
        .layer(link);
        let stopped = stop.clone();
        tasks.spawn(async move {
            let (mut ok, mut uncertain, mut failed) = (0, 0, 0);
            while !stopped.load(Ordering::Acquire) {
                if ServiceExt::<String>::ready(&mut svc).await.is_err() {
                    break;
                }
                let call = svc.call_with("request".to_owned(), CallOptions::new());
                match call.await {
                    Ok(answer) if answer == "request" => ok += 1,
                    Ok(answer) => panic!("echo answered {answer:?}"),
                    Err(e) => match Outcome::of(&e) {
                        Outcome::MaybeDelivered => uncertain += 1,
                        Outcome::NotSent | Outcome::Elapsed => failed += 1,
                        other => panic!("untyped outcome {other:?}: {e}"),
                    },
                }
                tokio::time::sleep(ms(50)).await;
            }
            svc.close();
            (ok, uncertain, failed)
        });
    }
    Clients {
        conns,
        tasks,
        stop,
        received,
    }
}

/// Closes every client and waits (bounded) for their tasks; returns the stacks' (ok, maybe delivered, not sent).
async fn close_all(mut clients: Clients) -> (u64, u64, u64) {
    clients.stop.store(true, Ordering::Release);
    for conn in &clients.conns {
        conn.disconnect();
    }
    let mut totals = (0, 0, 0);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = clients.tasks.join_next().await {
            let (a, b, c) = done.expect("a client task");
            totals = (totals.0 + a, totals.1 + b, totals.2 + c);
        }
        for conn in &clients.conns {
            conn.closed().await;
        }
    })
    .await
    .expect("every client closes in time");
    drop(clients.conns);
    totals
}

/// Waits (bounded) until the server holds no connection and the process no more than `limit` fds and tasks.
async fn settle(server: &FlakyServer, limit: Option<Sample>) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sample = Sample::now();
        let settled = server.live() == 0
            && limit.is_none_or(|l| sample.fds <= l.fds && sample.tasks <= l.tasks);
        if settled || Instant::now() > deadline {
            return sample;
        }
        tokio::time::sleep(ms(100)).await;
    }
}

#[test]
#[ignore = "a soak of minutes, outside CI: run it with `cargo xtask soak`"]
fn soak_thousands_of_connections_and_bounces_leave_nothing_behind() {
    let connections = env("CONNMAN_SOAK_CONNECTIONS", 2000);
    let stacks = env("CONNMAN_SOAK_STACKS", 100);
    let seconds = env("CONNMAN_SOAK_SECONDS", 120);
    let bounce = Duration::from_secs(env("CONNMAN_SOAK_BOUNCE_SECONDS", 15));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let server = FlakyServer::builder()
            .greeting(Bytes::new())
            .start()
            .await
            .expect("the server starts");
        let start_sample = Sample::now();

        // Warm-up: the same clients connect, talk and close once.
        let warm = start(&server, connections, stacks);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let warm_peak = Sample::now();
        close_all(warm).await;
        let baseline = settle(&server, None).await;
        println!(
            "start: heap {:.1} MiB, rss {:.1} MiB, fds {}, tasks {}; after warm-up (peak rss {:.1} MiB, fds {}): heap {:.1} MiB, rss {:.1} MiB, fds {}, tasks {}",
            mib(start_sample.heap),
            mib(start_sample.rss),
            start_sample.fds,
            start_sample.tasks,
            mib(warm_peak.rss),
            warm_peak.fds,
            mib(baseline.heap),
            mib(baseline.rss),
            baseline.fds,
            baseline.tasks
        );

        // The soak.
        let started = Instant::now();
        let clients = start(&server, connections, stacks);
        let received = clients.received.clone();
        let mut peak = Sample::now();
        let (mut bounces, mut next_bounce) = (0, started + bounce);
        let mut last_report = started;
        while started.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sample = Sample::now();
            peak = peak.max(sample);
            if Instant::now() >= next_bounce {
                server.stop().await;
                tokio::time::sleep(ms(300)).await;
                server.restart().await.expect("the port is still ours");
                bounces += 1;
                next_bounce += bounce;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "{:>4} s: heap {:.1} MiB, rss {:.1} MiB, fds {}, tasks {}, server live {}, bounces {bounces}",
                    started.elapsed().as_secs(),
                    mib(sample.heap),
                    mib(sample.rss),
                    sample.fds,
                    sample.tasks,
                    server.live()
                );
            }
        }
        // Everyone back after the last bounce, then close-all.
        let everyone = connections + stacks;
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while (server.live() as f64) < 0.9 * everyone as f64 {
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await;
        let live_before_close = server.live();
        let (ok, maybe, not_sent) = close_all(clients).await;
        let end = settle(&server, Some(baseline)).await;
        println!(
            "soak: {connections} connections + {stacks} stacks for {seconds} s, {bounces} bounces, {} accepts; \
             stacks: {ok} ok, {maybe} maybe delivered, {not_sent} not sent; connection bytes received {}",
            server.accepted(),
            received.load(Ordering::Relaxed)
        );
        println!(
            "heap: baseline {:.2} MiB, peak {:.2} MiB, end {:.2} MiB; rss: baseline {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; \
             fds: baseline {}, peak {}, end {}; tasks: baseline {}, peak {}, end {}",
            mib(baseline.heap),
            mib(peak.heap),
            mib(end.heap),
            mib(baseline.rss),
            mib(peak.rss),
            mib(end.rss),
            baseline.fds,
            peak.fds,
            end.fds,
            baseline.tasks,
            peak.tasks,
            end.tasks
        );
        assert!(bounces > 0 || seconds < bounce.as_secs(), "no bounce");
        assert!(
            live_before_close as f64 >= 0.9 * (connections + stacks) as f64,
            "only {live_before_close} of {} clients were connected at the end",
            connections + stacks
        );
        assert!(ok > 0, "no stack request succeeded");
        assert!(end.fds <= baseline.fds, "file descriptors leaked: {end:?} vs {baseline:?}");
        assert!(end.tasks <= baseline.tasks, "tasks leaked: {end:?} vs {baseline:?}");
        // Live heap bytes: everything the connections, stacks and their tasks held is freed.
        let heap_allowance = (1 << 20) + peak.heap.saturating_sub(baseline.heap) / 100;
        assert!(
            end.heap <= baseline.heap + heap_allowance,
            "heap leaked: end {:.2} MiB, baseline {:.2} MiB, allowance {:.2} MiB",
            mib(end.heap),
            mib(baseline.heap),
            mib(heap_allowance)
        );
        // Resident memory is reported, not asserted: the system allocator keeps the pages of a peak after they are
        // freed (the live heap above is the exact measure of a leak).
        println!(
            "rss above the warm-up's baseline after close-all: {:.1} MiB (the allocator's retention of the peak)",
            mib(end.rss.saturating_sub(baseline.rss))
        );
    });
}

/// The helper types compile into the suite; the soak itself runs only on request.
#[test]
fn soak_sample_reads_the_process() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let s = Sample::now();
        assert!(s.rss > 0 && s.fds >= 3, "{s:?}");
    });
}

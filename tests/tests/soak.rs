//! The soak: thousands of TCP and WebSocket connections for minutes while the servers bounce and drain, then
//! close-all; memory, file descriptors and tasks must come back to where they were. Outside CI: `cargo xtask soak`.
//!
//! Two kinds of clients share one loopback echo server ([`FlakyServer`], restarted on its port every bounce period):
//! `connman_tcp::Connection`s writing a short line now and then through their `Writer`, and full stacks
//! (`Queue → Reconnect → Heartbeat → PipelineConnector`) sending requests. A warm-up round (everything connects,
//! talks, and closes) comes first, so the baseline includes what the allocator and the runtime keep once they have
//! served that many connections; the soak proper must then end where the warm-up ended.
//!
//! WebSocket clients (`WsClient`s) connect to a [`CountingServer`] (connman-ws's `accept` into a `Group`). Each sends
//! a message about once a second and reads the server's broadcast ticks. The WebSocket server bounces with the TCP
//! one (closing every connection with 1012, then listening again on its port), and every drain period a new server
//! takes over: the clients' address moves to it and the old one drains its group at a paced rate with 4200, so the
//! clients come back spread out, to the new one. What the servers received is checked against what the clients were
//! told: never more than was written or maybe delivered.
//!
//! The test binary counts every heap allocation ([`stats_alloc`]), so the memory check is on live heap bytes, exact;
//! resident memory is sampled and reported but not asserted, since the system allocator keeps the pages of a peak.
//!
//! A leak of heap bytes (beyond 1 MiB + 1 % of the peak), of a file descriptor or of a task fails it.
//!
//! Environment (set by `cargo xtask soak`): `CONNMAN_SOAK_CONNECTIONS` (default 2000), `CONNMAN_SOAK_STACKS`
//! (default 100), `CONNMAN_SOAK_WS` (WebSocket clients, default 1000), `CONNMAN_SOAK_SECONDS` (default 120),
//! `CONNMAN_SOAK_BOUNCE_SECONDS` (default 15), `CONNMAN_SOAK_DRAIN_SECONDS` (default 40),
//! `CONNMAN_SOAK_DRAIN_RATE` (closes per second, default 200).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_core::backoff::{Exponential, Jitter};
use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use connman_core::outcome::Outcome;
use connman_pool::drain::DrainConfig;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
use connman_queue::queue::{CallOptions, QueueConfig, QueueLayer};
use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
use connman_tcp::pipeline::PipelineConnector;
use connman_tcp::{Connection, Handler, HostPort, TcpConnector};
use connman_tests::flaky::FlakyServer;
use connman_tests::ws::{CountingServer, Counts};
use connman_ws::client::{Message, WsClient};
use connman_ws::{AcceptConfig, WsConfig};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::codec::LinesCodec;
use tower::{Layer, ServiceExt, service_fn};

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

/// What the client tasks of one round did.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Lines the `Connection`s wrote.
    written: u64,
    /// The stacks' requests: ok, maybe delivered, not sent (or expired).
    stacks: [u64; 3],
    /// The `WsClient`s' sends: ok (written), maybe delivered, not sent, expired in the queue.
    ws: [u64; 4],
}

impl Tally {
    fn add(&mut self, other: Self) {
        self.written += other.written;
        for (mine, theirs) in self.stacks.iter_mut().zip(other.stacks) {
            *mine += theirs;
        }
        for (mine, theirs) in self.ws.iter_mut().zip(other.ws) {
            *mine += theirs;
        }
    }
}

/// The clients of one round and what they did.
struct Clients {
    conns: Vec<Connection>,
    ws: Vec<WsClient>,
    tasks: JoinSet<Tally>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    /// Broadcast ticks the `WsClient`s received.
    ticks: Arc<AtomicU64>,
}

/// The WebSocket servers: the one the clients' address points at, and those draining their group.
struct WsServers {
    current: CountingServer,
    draining: Vec<(CountingServer, tokio::task::JoinHandle<usize>)>,
    /// The port the clients connect to.
    target: Arc<AtomicU16>,
    /// What every server received, over all of them.
    counts: Counts,
    bounces: u64,
    drains: u64,
    /// Members the finished drains closed.
    drained: usize,
}

const WS_NAMESPACE: &str = "soak";

impl WsServers {
    async fn start() -> Self {
        let counts = Counts::new();
        let current = CountingServer::with_counts(ws_accept_config(), counts.clone())
            .await
            .expect("the websocket server starts");
        Self {
            target: Arc::new(AtomicU16::new(current.port())),
            current,
            draining: Vec::new(),
            counts,
            bounces: 0,
            drains: 0,
            drained: 0,
        }
    }

    /// Members of every server's group.
    fn live(&self) -> usize {
        self.current.group().len()
            + self
                .draining
                .iter()
                .map(|(server, _)| server.group().len())
                .sum::<usize>()
    }

    /// The current server closes every connection with 1012 ("restarting") and listens again on its port.
    async fn bounce(&mut self) {
        self.current
            .stop(CloseCode::RESTART, Duration::from_secs(2))
            .await;
        tokio::time::sleep(ms(300)).await;
        self.current
            .restart()
            .await
            .expect("the websocket port is still ours");
        self.bounces += 1;
    }

    /// A new server takes over: the clients' address moves to it, and the old one drains at `rate` per second with
    /// 4200, so its clients come back, spread out, to the new one.
    async fn hand_over(&mut self, rate: u32) {
        let next = CountingServer::with_counts(ws_accept_config(), self.counts.clone())
            .await
            .expect("the next websocket server starts");
        self.target.store(next.port(), Ordering::SeqCst);
        let old = std::mem::replace(&mut self.current, next);
        let drain = old
            .group()
            .drain(DrainConfig::max_per_second(rate).expect("a drain rate above zero"))
            .expect("a group drains once");
        let task = tokio::spawn(async move { drain.await.closed });
        self.draining.push((old, task));
        self.drains += 1;
    }

    /// Lets go of the servers whose drain finished.
    async fn reap(&mut self) {
        let mut still = Vec::new();
        for (server, task) in self.draining.drain(..) {
            if task.is_finished() {
                self.drained += task.await.expect("a drain task");
            } else {
                still.push((server, task));
            }
        }
        self.draining = still;
    }
}

fn ws_accept_config() -> AcceptConfig {
    AcceptConfig::new(WsConfig::default()).namespace(WS_NAMESPACE)
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

/// Starts `connections` `Connection`s and `stacks` full stacks against `server`, and `ws` `WsClient`s against the
/// WebSocket server `target` names.
fn start(
    server: &FlakyServer,
    connections: u64,
    stacks: u64,
    ws: u64,
    target: &Arc<AtomicU16>,
) -> Clients {
    let received = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
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
        Tally {
            written,
            ..Tally::default()
        }
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
            Tally {
                stacks: [ok, uncertain, failed],
                ..Tally::default()
            }
        });
    }
    let ws = (0..ws)
        .map(|i| ws_client(i, target, &mut tasks, &ticks))
        .collect();
    Clients {
        conns,
        ws,
        tasks,
        stop,
        received,
        ticks,
    }
}

/// One `WsClient`: its task sends a numbered message about once a second, and counts the ticks it receives, until
/// the client is closed.
fn ws_client(
    i: u64,
    target: &Arc<AtomicU16>,
    tasks: &mut JoinSet<Tally>,
    ticks: &Arc<AtomicU64>,
) -> WsClient {
    let target = target.clone();
    let transport = service_fn(move |_: HostPort| {
        let port = target.load(Ordering::SeqCst);
        async move { Ok::<_, BoxError>(TcpStream::connect(("127.0.0.1", port)).await?) }
    });
    let (client, mut incoming) = WsClient::builder(&format!("ws://soak.invalid/{WS_NAMESPACE}"))
        .transport(transport)
        .ping(Some((Duration::from_secs(5), Duration::from_secs(2))))
        .backoff(backoff())
        .queue_capacity(16)
        .max_wait(Duration::from_secs(10))
        .build()
        .expect("valid client settings");
    let (mut sender, ticks) = (client.clone(), ticks.clone());
    tasks.spawn(async move {
        let mut ws = [0; 4];
        let mut n = 0u64;
        // Spread over the second, so that a thousand clients do not send at once.
        let mut next = tokio::time::Instant::now() + ms(i % 1000);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    n += 1;
                    next += Duration::from_secs(1);
                    match sender.send(Message::from(format!("{i} {n}"))).await {
                        Ok(()) => ws[0] += 1,
                        Err(e) => match Outcome::of(&e) {
                            Outcome::MaybeDelivered => ws[1] += 1,
                            Outcome::NotSent => ws[2] += 1,
                            Outcome::Elapsed => ws[3] += 1,
                            Outcome::Closed => break,
                            other => panic!("untyped outcome {other:?}: {e}"),
                        },
                    }
                }
                tick = incoming.recv() => match tick {
                    Some(_) => {
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                },
            }
        }
        Tally {
            ws,
            ..Tally::default()
        }
    });
    client
}

/// Closes every client and waits (bounded) for their tasks; returns what they did.
async fn close_all(mut clients: Clients) -> Tally {
    clients.stop.store(true, Ordering::Release);
    for conn in &clients.conns {
        conn.disconnect();
    }
    let mut totals = Tally::default();
    tokio::time::timeout(Duration::from_secs(30), async {
        // A closed client fails its queued and later sends with `Closed`, which ends its task.
        futures_util::future::join_all(clients.ws.iter().map(WsClient::close)).await;
        while let Some(done) = clients.tasks.join_next().await {
            totals.add(done.expect("a client task"));
        }
        for conn in &clients.conns {
            conn.closed().await;
        }
    })
    .await
    .expect("every client closes in time");
    drop(clients.conns);
    drop(clients.ws);
    totals
}

/// Waits (bounded) until the servers hold no connection and the process no more than `limit` fds and tasks.
async fn settle(server: &FlakyServer, ws: &WsServers, limit: Option<Sample>) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sample = Sample::now();
        let settled = server.live() == 0
            && ws.live() == 0
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
    let ws_clients = env("CONNMAN_SOAK_WS", 1000);
    let seconds = env("CONNMAN_SOAK_SECONDS", 120);
    let bounce = Duration::from_secs(env("CONNMAN_SOAK_BOUNCE_SECONDS", 15));
    let drain_every = Duration::from_secs(env("CONNMAN_SOAK_DRAIN_SECONDS", 40));
    let drain_rate =
        u32::try_from(env("CONNMAN_SOAK_DRAIN_RATE", 200)).expect("a drain rate in range");
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
        let mut ws = WsServers::start().await;
        let start_sample = Sample::now();

        // Warm-up: the same clients connect, talk and close once.
        let warm = start(&server, connections, stacks, ws_clients, &ws.target);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let warm_peak = Sample::now();
        close_all(warm).await;
        let baseline = settle(&server, &ws, None).await;
        let ws_received_before = ws.counts.received();
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
        let clients = start(&server, connections, stacks, ws_clients, &ws.target);
        let (received, ticks) = (clients.received.clone(), clients.ticks.clone());
        let mut peak = Sample::now();
        let (mut bounces, mut next_bounce) = (0, started + bounce);
        let mut next_drain = started + drain_every;
        let mut last_report = started;
        while started.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sample = Sample::now();
            peak = peak.max(sample);
            ws.current.group().broadcast(WS_NAMESPACE, "tick", &[]);
            ws.reap().await;
            if Instant::now() >= next_bounce {
                server.stop().await;
                ws.bounce().await;
                tokio::time::sleep(ms(300)).await;
                server.restart().await.expect("the port is still ours");
                bounces += 1;
                next_bounce += bounce;
            }
            if Instant::now() >= next_drain {
                ws.hand_over(drain_rate).await;
                next_drain += drain_every;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "{:>4} s: heap {:.1} MiB, rss {:.1} MiB, fds {}, tasks {}, server live {}, ws live {}, bounces {bounces}, drains {}",
                    started.elapsed().as_secs(),
                    mib(sample.heap),
                    mib(sample.rss),
                    sample.fds,
                    sample.tasks,
                    server.live(),
                    ws.live(),
                    ws.drains
                );
            }
        }
        // Everyone back after the last bounce, then close-all.
        let everyone = connections + stacks;
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                ws.reap().await;
                if server.live() as f64 >= 0.9 * everyone as f64
                    && ws.current.group().len() as f64 >= 0.9 * ws_clients as f64
                {
                    break;
                }
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await;
        let live_before_close = server.live();
        let ws_live_before_close = ws.current.group().len();
        let tally = close_all(clients).await;
        // The last drains finish once their groups are empty.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while !ws.draining.is_empty() {
                ws.reap().await;
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await;
        let end = settle(&server, &ws, Some(baseline)).await;
        let [ok, maybe, not_sent] = tally.stacks;
        let [ws_ok, ws_maybe, ws_not_sent, ws_expired] = tally.ws;
        let ws_received = ws.counts.received() - ws_received_before;
        println!(
            "soak: {connections} connections + {stacks} stacks + {ws_clients} websocket clients for {seconds} s, \
             {bounces} bounces, {} accepts; stacks: {ok} ok, {maybe} maybe delivered, {not_sent} not sent; \
             connection lines written {}, bytes received {}",
            server.accepted(),
            tally.written,
            received.load(Ordering::Relaxed)
        );
        println!(
            "websocket: {} bounces, {} drains at {drain_rate}/s closing {} members, {} handshakes; sends: {ws_ok} ok \
             (written), {ws_maybe} maybe delivered, {ws_not_sent} not sent, {ws_expired} expired in the queue; received by the servers {ws_received}; \
             ticks received {}",
            ws.bounces,
            ws.drains,
            ws.drained,
            ws.counts.accepted(),
            ticks.load(Ordering::Relaxed)
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
        assert!(
            ws_live_before_close as f64 >= 0.9 * ws_clients as f64,
            "only {ws_live_before_close} of {ws_clients} websocket clients were connected at the end"
        );
        assert!(ws_ok > 0, "no websocket send succeeded");
        // A send comes back unsent only after its replays ran out: eight sockets lost before it was written, which
        // these bounces and drains never do to one send. (A send handed to a socket that had ended, or to one being
        // closed, before the client's driver saw it used to burn its replays in microseconds.)
        assert_eq!(ws_not_sent, 0, "websocket sends ended unsent");
        assert!(
            ws_clients == 0 || seconds < drain_every.as_secs() || ws.drains > 0,
            "no drain"
        );
        assert!(ws.draining.is_empty(), "a drain did not finish");
        // No phantom and no duplicate: the servers never received more than was written or maybe delivered.
        assert!(
            ws_received <= ws_ok + ws_maybe,
            "the servers received {ws_received}, more than the {ws_ok} written and {ws_maybe} maybe delivered"
        );
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

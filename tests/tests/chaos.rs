//! The full-stack chaos test of connman-queue over real TCP: "nothing lost" under faults.
//!
//! The stack is `Queue → Reconnect → Heartbeat → PipelineConnector over TcpConnector` (a line codec with a length
//! limit), talking through a [`FaultProxy`] to a [`checker::line::EchoServer`](connman_tests::checker::line::EchoServer)
//! that logs every `(client, seq)` it receives. Clients push traffic while a fault task cuts, resets, slices, delays,
//! blackholes and refuses links and restarts the server on the same port; at the end the client and server logs must
//! agree (RELIABILITY.md): nothing lost, nothing phantom, no duplicate, order kept, nothing pending.
//!
//! The proxy works on real time, so these tests do too; each one is bounded by a timeout.
//!
//! Two things about the line protocol shape how requests are numbered and framed here:
//!
//! * `LinesCodec` hands out an unterminated last line at the end of a stream. The echo server therefore logs the
//!   prefix of a request line that a cut ended halfway, and parses a number from a cut seq. Every seq here has
//!   twelve digits, so such a prefix parses to a seq below [`BASE_SEQ`] that no client issued; those arrivals
//!   are counted and left out of the check.
//! * The clients have no such problem: `Pipeline` refuses a frame cut short by the end of the stream, whatever its
//!   codec, so a reply cut by a fault fails as a lost link instead of reaching its caller as a whole one.

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use connman_core::backoff::{Constant, presets};
use connman_core::error::{BoxError, MaybeDelivered, NotSent};
use connman_core::lifecycle::Event;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatLayer, MakeHeartbeat};
use connman_queue::queue::QueueConfig;
use connman_queue::queue::{CallOptions, Queue, QueueHandle, QueueLayer};
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::{Reconnect, ReconnectLayer};
use connman_tcp::TcpConnector;
use connman_tcp::pipeline::{Pipeline, PipelineConnector, PipelineError};
use connman_tests::checker::line::{EchoServer, parse_reply, parse_request, reply, request};
use connman_tests::checker::{ClientLog, Mode, Outcome, ServerLog, Violation, check};
use connman_tests::flaky::FlakyServer;
use connman_tests::proxy::{FaultProxy, ProxyHandle};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_util::codec::{Framed, LinesCodec};
use tower::{Layer, Service, ServiceExt};

/// The seqs of every client start just above this twelve-digit number, so every seq has twelve digits.
const BASE_SEQ: u64 = 100_000_000_000;

/// The client id the heartbeat's pings carry; no request client uses it.
const PING_CLIENT: u64 = 0;

/// The longest line the clients accept.
const MAX_LINE: usize = 1024;

/// The fewest requests the chaos run must issue.
const MIN_REQUESTS: u64 = 100_000;

/// The fewest proxy faults the chaos run must inject.
const MIN_FAULTS: u64 = 100;

/// The fewest server restarts the chaos run must make.
const MIN_RESTARTS: u64 = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The heartbeat's ping: a request line of the ping client, answered by the echo server like any other.
fn ping() -> String {
    format!("{PING_CLIENT} 0 ping")
}

/// A request line without its newline (the codec adds it).
fn line(client: u64, seq: u64, payload: &str) -> String {
    request(client, seq, payload)
        .trim_end_matches('\n')
        .to_owned()
}

type Make = PipelineConnector<TcpConnector, LinesCodec, String>;
type Link = Reconnect<MakeHeartbeat<Make, fn() -> String>, SocketAddr>;
type Stack = Queue<Link, String>;

/// The make service at the bottom of every stack here.
fn make() -> Make {
    PipelineConnector::new(
        TcpConnector::new().connect_timeout(Duration::from_secs(1)),
        LinesCodec::new_with_max_length(MAX_LINE),
    )
    .max_in_flight(64)
}

/// How many requests each queue is responsible for at most.
const QUEUE_CAPACITY: usize = 256;

/// How many request bytes each queue is responsible for at most.
const QUEUE_MAX_WEIGHT: usize = 64 * 1024;

/// The queue settings of the chaos stacks.
fn queue_layer() -> QueueLayer<String> {
    let config = QueueConfig::builder()
        .capacity(QUEUE_CAPACITY)
        .max_weight(QUEUE_MAX_WEIGHT)
        .max_wait(Duration::from_secs(10))
        .weigh(String::len)
        .build();
    QueueLayer::new(config.expect("valid queue settings"))
}

/// One full stack to `addr`, with the receiver of its heartbeat events.
fn stack(addr: SocketAddr) -> (Stack, broadcast::Receiver<HeartbeatEvent>) {
    let config = HeartbeatConfig::builder()
        .interval(ms(120))
        .timeout(ms(60))
        .build()
        .expect("valid heartbeat");
    let heartbeat = HeartbeatLayer::new(config, ping as fn() -> String);
    let beats = heartbeat.subscribe();
    let link = ReconnectLayer::new(
        ReconnectConfig::builder(addr)
            .backoff(Constant::new(ms(5)))
            .build()
            .expect("valid reconnect config"),
    )
    .layer(heartbeat.layer(make()));
    (queue_layer().layer(link), beats)
}

/// What one client task does: how many requests, how many at once, with which options.
#[derive(Debug, Clone)]
struct ClientPlan {
    client: u64,
    min_requests: u64,
    window: usize,
    options: CallOptions,
    payload: &'static str,
}

/// Issues requests `BASE_SEQ + 1, + 2, …` in order through `svc`, at most `window` unanswered at once, until it issued
/// `min_requests` and `stop` is set; records every request and its outcome in `log`. Returns how many it issued once
/// every one of them has an outcome.
async fn run_client<S>(
    mut svc: Queue<S, String>,
    plan: ClientPlan,
    log: ClientLog,
    stop: Arc<AtomicBool>,
    issued_total: Arc<AtomicU64>,
) -> u64
where
    S: Service<String, Response = String> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let client = plan.client;
    let mut waiting = JoinSet::new();
    let mut issued = 0;
    while issued < plan.min_requests || !stop.load(Ordering::Acquire) {
        while waiting.try_join_next().is_some() {}
        if waiting.len() >= plan.window {
            waiting.join_next().await;
            continue;
        }
        ServiceExt::<String>::ready(&mut svc)
            .await
            .expect("the queue stays open");
        issued += 1;
        let seq = BASE_SEQ + issued;
        if plan.options.idempotent {
            log.issue_idempotent(client, seq);
        } else {
            log.issue(client, seq);
        }
        let fut = svc.call_with(line(client, seq, plan.payload), plan.options);
        issued_total.fetch_add(1, Ordering::Relaxed);
        let log = log.clone();
        waiting.spawn(async move {
            let result = fut.await;
            log.resolve(client, seq, outcome_of(client, seq, &result));
        });
    }
    while waiting.join_next().await.is_some() {}
    issued
}

/// The outcome of a request: `Ok` only if the reply names this very request.
fn outcome_of(client: u64, seq: u64, result: &Result<String, BoxError>) -> Outcome {
    match result {
        Ok(answer) if parse_reply(answer) == Ok((client, seq)) => Outcome::Ok,
        Ok(answer) => Outcome::Other(format!("reply {answer:?} to {client} {seq}")),
        Err(e) => Outcome::of_error(e.as_ref()),
    }
}

/// The request arrivals of a server log: pings and the prefixes of cut lines left out, and counted.
#[derive(Debug)]
struct Arrivals {
    requests: ServerLog,
    pings: u64,
    cut_prefixes: u64,
}

fn arrivals(server: &ServerLog) -> Arrivals {
    assert_eq!(server.overflowed(), 0, "the server log overflowed");
    let entries = server.entries();
    let requests = ServerLog::new(entries.len().max(1));
    let (mut pings, mut cut_prefixes) = (0, 0);
    for (client, seq) in entries {
        if client == PING_CLIENT {
            pings += 1;
        } else if seq < BASE_SEQ {
            // A request line cut inside its seq: the server parsed a shorter number no client uses.
            cut_prefixes += 1;
        } else {
            requests.record(client, seq).expect("sized to fit");
        }
    }
    Arrivals {
        requests,
        pings,
        cut_prefixes,
    }
}

/// What the fault task did.
#[derive(Debug, Default)]
struct FaultTally {
    by_kind: BTreeMap<&'static str, u64>,
    restarts: u64,
    blackholes_detected: u64,
    /// Pongs seen before the blackholes (a lower bound: the event channels are bounded).
    pongs: u64,
    stacks: u64,
}

impl FaultTally {
    fn faults(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

/// A fault of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    CutAfter,
    ResetNow,
    SliceWrites,
    Delay,
    Refuse,
    Blackhole,
}

impl Fault {
    const fn name(self) -> &'static str {
        match self {
            Fault::CutAfter => "cut_after",
            Fault::ResetNow => "reset_now",
            Fault::SliceWrites => "slice_writes",
            Fault::Delay => "delay",
            Fault::Refuse => "refuse",
            Fault::Blackhole => "blackhole",
        }
    }
}

/// The faults the fault task cycles through.
const CYCLE: [Fault; 5] = [
    Fault::CutAfter,
    Fault::ResetNow,
    Fault::SliceWrites,
    Fault::Delay,
    Fault::Refuse,
];

/// Every this many faults one is a blackhole; it costs the heartbeat's detection time, so it comes less often.
const BLACKHOLE_EVERY: u64 = 16;

/// The `i`-th fault of the run.
fn fault_at(i: u64) -> Fault {
    if i % BLACKHOLE_EVERY == BLACKHOLE_EVERY - 1 {
        Fault::Blackhole
    } else {
        CYCLE[((i % BLACKHOLE_EVERY) % CYCLE.len() as u64) as usize]
    }
}

/// Restart the echo server after every this many faults.
const RESTART_EVERY: u64 = 25;

/// Everything the fault task works on.
struct Chaos {
    server: EchoServer,
    proxy: ProxyHandle,
    beats: Vec<broadcast::Receiver<HeartbeatEvent>>,
    queues: Vec<QueueHandle>,
    log: ClientLog,
    issued: Arc<AtomicU64>,
    rng: fastrand::Rng,
}

impl Chaos {
    /// Injects faults until at least [`MIN_FAULTS`] faults and [`MIN_RESTARTS`] restarts are done and the clients
    /// issued [`MIN_REQUESTS`]; then heals everything.
    async fn run(mut self) -> (FaultTally, EchoServer) {
        let mut tally = FaultTally {
            stacks: self.beats.len() as u64,
            ..FaultTally::default()
        };
        let mut i: u64 = 0;
        while tally.faults() < MIN_FAULTS
            || tally.restarts < MIN_RESTARTS
            || self.issued.load(Ordering::Relaxed) < MIN_REQUESTS
        {
            self.sample_gauges();
            if i % RESTART_EVERY == RESTART_EVERY - 1 {
                self.restart_server().await;
                tally.restarts += 1;
            }
            let fault = fault_at(i);
            self.inject(fault, &mut tally).await;
            *tally.by_kind.entry(fault.name()).or_insert(0) += 1;
            i += 1;
        }
        self.proxy.heal();
        self.proxy.restore().await.expect("the proxy port is free");
        self.server
            .restart()
            .await
            .expect("the server port is free");
        (tally, self.server)
    }

    async fn inject(&mut self, fault: Fault, tally: &mut FaultTally) {
        let proxy = &self.proxy;
        match fault {
            Fault::CutAfter => {
                proxy.cut_after(self.rng.u64(0..400));
                sleep(ms(60)).await;
            }
            Fault::ResetNow => {
                proxy.reset_now();
                sleep(ms(40)).await;
            }
            Fault::SliceWrites => {
                proxy.slice_writes(self.rng.usize(1..16));
                sleep(ms(60)).await;
            }
            Fault::Delay => {
                proxy.delay(ms(self.rng.u64(1..4)));
                sleep(ms(60)).await;
            }
            Fault::Refuse => {
                proxy.refuse().await;
                sleep(ms(60)).await;
                proxy.restore().await.expect("the proxy port is free");
            }
            Fault::Blackhole => {
                for beats in &mut self.beats {
                    while let Ok(event) = beats.try_recv() {
                        if matches!(event, HeartbeatEvent::Pong { .. }) {
                            tally.pongs += 1;
                        }
                    }
                }
                proxy.blackhole();
                for beats in &mut self.beats {
                    if ping_timed_out(beats, Duration::from_secs(3)).await {
                        tally.blackholes_detected += 1;
                    }
                }
                // A real half-open link never carries bytes again; the proxy's would, minus what it dropped, so the
                // links that went through the blackhole are reset before forwarding resumes.
                proxy.reset_now();
            }
        }
        proxy.heal();
    }

    /// Stops the echo server (closing every connection) and listens on the same port again.
    async fn restart_server(&mut self) {
        self.server.stop().await;
        sleep(ms(30)).await;
        // The port is ours unless an outgoing connection happened to take it as its local port meanwhile.
        let mut attempts = 0;
        while let Err(e) = self.server.restart().await {
            attempts += 1;
            assert!(attempts < 100, "cannot listen again: {e}");
            sleep(ms(10)).await;
        }
    }

    fn sample_gauges(&self) {
        for queue in &self.queues {
            let stats = queue.stats();
            self.log
                .gauge("queue len", stats.len as u64, QUEUE_CAPACITY as u64);
            self.log
                .gauge("queue weight", stats.weight as u64, QUEUE_MAX_WEIGHT as u64);
        }
        self.log
            .gauge("proxy connections", self.proxy.stats().live, 1024);
    }
}

/// Waits up to `bound` for a ping to time out; true if one did.
async fn ping_timed_out(beats: &mut broadcast::Receiver<HeartbeatEvent>, bound: Duration) -> bool {
    timeout(bound, async {
        loop {
            match beats.recv().await {
                Ok(HeartbeatEvent::TimedOut { .. }) => return true,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nothing_lost_under_faults_and_restarts() {
    const STACKS: u64 = 2;
    const CLIENTS_PER_STACK: u64 = 6;
    let started = StdInstant::now();
    let server_log = ServerLog::new(2_000_000);
    let server = EchoServer::start(server_log.clone()).await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let client_log = ClientLog::new(1_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));

    let body = async {
        let mut beats = Vec::new();
        let mut queues = Vec::new();
        let mut clients = JoinSet::new();
        let clients_total = STACKS * CLIENTS_PER_STACK;
        for s in 0..STACKS {
            let (svc, beat) = stack(proxy.addr());
            beats.push(beat);
            queues.push(svc.handle());
            for c in 0..CLIENTS_PER_STACK {
                let plan = ClientPlan {
                    client: 10 + s * CLIENTS_PER_STACK + c,
                    min_requests: MIN_REQUESTS.div_ceil(clients_total),
                    window: 24,
                    options: CallOptions::new(),
                    payload: "chaos",
                };
                clients.spawn(run_client(
                    svc.clone(),
                    plan,
                    client_log.clone(),
                    stop.clone(),
                    issued.clone(),
                ));
            }
        }
        let chaos = Chaos {
            server,
            proxy: proxy.handle().clone(),
            beats,
            queues: queues.clone(),
            log: client_log.clone(),
            issued: issued.clone(),
            rng: fastrand::Rng::with_seed(0x5eed),
        };
        let (tally, server) = chaos.run().await;
        stop.store(true, Ordering::Release);
        let faults_done = started.elapsed();

        // Liveness: once the faults stop, every request resolves within the queue's max wait, the heartbeat's
        // detection time and the backoff, with room to spare.
        let settled = timeout(Duration::from_secs(20), async {
            let mut total = 0;
            while let Some(issued) = clients.join_next().await {
                total += issued.expect("client task");
            }
            total
        })
        .await
        .expect("every request resolves once the faults stop");
        (tally, server, queues, settled, faults_done)
    };
    let (tally, server, queues, settled, faults_done) = timeout(Duration::from_secs(120), body)
        .await
        .expect("the chaos run ends in time");

    let arrivals = arrivals(&server_log);
    let report = check(&arrivals.requests, &client_log, Mode::AtMostOnce);
    let pstats = proxy.handle().stats();
    println!("{report}");
    println!(
        "faults {} {:?}, server restarts {}, blackholes detected {} of {}, pongs {}",
        tally.faults(),
        tally.by_kind,
        tally.restarts,
        tally.blackholes_detected,
        tally
            .by_kind
            .get(Fault::Blackhole.name())
            .copied()
            .unwrap_or(0)
            * tally.stacks,
        tally.pongs,
    );
    println!("proxy {pstats:?}");
    println!("server {:?}", server.stats());
    for (i, queue) in queues.iter().enumerate() {
        println!("queue {i} {:?}", queue.stats());
    }
    println!(
        "pings {}, cut request prefixes {}, faults done after {:?}, settled after {:?}",
        arrivals.pings,
        arrivals.cut_prefixes,
        faults_done,
        started.elapsed()
    );

    assert_eq!(
        settled,
        report.counts().requests,
        "every issued request is logged"
    );
    assert!(report.counts().requests >= MIN_REQUESTS, "too few requests");
    assert!(tally.faults() >= MIN_FAULTS, "too few faults");
    assert!(tally.restarts >= MIN_RESTARTS, "too few restarts");
    assert!(
        pstats.cuts > 0 && pstats.resets > 0 && pstats.refusals > 0,
        "{pstats:?}"
    );
    assert!(
        pstats.sliced > 0 && pstats.delayed > 0 && pstats.blackholed > 0,
        "{pstats:?}"
    );
    let blackholes = tally
        .by_kind
        .get(Fault::Blackhole.name())
        .copied()
        .unwrap_or(0);
    assert!(blackholes > 0, "no blackhole");
    assert_eq!(
        tally.blackholes_detected,
        blackholes * tally.stacks,
        "the heartbeat of every stack sees every blackhole"
    );
    assert!(
        arrivals.pings > 0,
        "no heartbeat ping went through the stack"
    );
    assert!(
        report.counts().ok > 0 && report.counts().maybe_delivered > 0,
        "{report}"
    );
    assert_eq!(
        report.counts().other,
        0,
        "a reply did not match or an error was untyped\n{report}"
    );
    // What the client saw of each request that arrived out of order, to tell a replay from a late delivery.
    for v in report.violations() {
        if let Violation::OutOfOrder { client, seq, after } = v {
            eprintln!(
                "out of order: {client}/{seq} {:?}, arrived after {after} {:?}",
                client_log.outcome(*client, *seq),
                client_log.outcome(*client, *after)
            );
        }
    }
    report.assert_clean();
}

/// Counts how often each request reached the connection: every dispatch after the first is a retry.
#[derive(Debug, Clone, Default)]
struct Dispatches(Arc<Mutex<HashMap<(u64, u64), u32>>>);

impl Dispatches {
    fn note(&self, req: &str, log: &ClientLog) {
        let Ok(r) = parse_request(req) else { return };
        let mut seen = self.0.lock().unwrap();
        let n = seen.entry((r.client, r.seq)).or_insert(0);
        *n += 1;
        if *n > 1 {
            log.retried(r.client, r.seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_idempotent_requests_are_replayed_at_least_once() {
    const CLIENTS: u64 = 4;
    const PER_CLIENT: u64 = 2_000;
    let server_log = ServerLog::new(100_000);
    let server = EchoServer::start(server_log.clone()).await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let client_log = ClientLog::new(100_000);
    let stop = Arc::new(AtomicBool::new(true));
    let issued = Arc::new(AtomicU64::new(0));
    let handle = proxy.handle().clone();

    let body = async {
        let reconnect = ReconnectLayer::new(
            ReconnectConfig::builder(proxy.addr())
                .backoff(Constant::new(ms(5)))
                .build()
                .expect("valid reconnect config"),
        );
        let mut events = reconnect.subscribe();
        let dispatches = Dispatches::default();
        let (log, seen) = (client_log.clone(), dispatches.clone());
        let link = tower::util::MapRequest::new(reconnect.layer(make()), move |req: String| {
            seen.note(&req, &log);
            req
        });
        let svc = queue_layer().layer(link);
        let queue = svc.handle();

        // Every reconnect of the shared link is a reconnect for each of its clients.
        let log = client_log.clone();
        let reconnects = Arc::new(AtomicU64::new(0));
        let lagged = Arc::new(AtomicU64::new(0));
        let (counted, missed) = (reconnects.clone(), lagged.clone());
        let watcher = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::Connected { first: false, .. }) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        for c in 0..CLIENTS {
                            log.reconnected(10 + c);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        missed.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });

        let mut clients = JoinSet::new();
        for c in 0..CLIENTS {
            let plan = ClientPlan {
                client: 10 + c,
                min_requests: PER_CLIENT,
                window: 16,
                options: CallOptions::new().idempotent(),
                payload: "again",
            };
            clients.spawn(run_client(
                svc.clone(),
                plan,
                client_log.clone(),
                stop.clone(),
                issued.clone(),
            ));
        }
        let faults = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut n = 0;
            while issued.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT {
                if n % 2 == 0 {
                    handle.cut_after(rng.u64(0..300));
                } else {
                    handle.reset_now();
                }
                sleep(ms(30)).await;
                handle.heal();
                n += 1;
            }
            n
        });
        while clients.join_next().await.is_some() {}
        let faults = faults.await.unwrap();
        let stats = queue.stats();
        watcher.abort();
        let reconnects = reconnects.load(Ordering::Relaxed);
        (faults, stats, reconnects, lagged.load(Ordering::Relaxed))
    };
    let (faults, stats, reconnects, lagged) = timeout(Duration::from_secs(60), body)
        .await
        .expect("the run ends in time");

    let arrivals = arrivals(&server_log);
    let report = check(&arrivals.requests, &client_log, Mode::AtLeastOnce);
    println!("{report}");
    println!("faults {faults}, reconnects {reconnects}, queue {stats:?}");
    assert_eq!(lagged, 0, "the reconnect count is complete");
    assert!(faults > 0 && reconnects > 0);
    assert!(stats.replayed > 0, "nothing was replayed: {stats:?}");
    assert!(report.counts().retries > 0);
    // Idempotent requests are replayed instead of failing as maybe delivered.
    assert_eq!(report.counts().maybe_delivered, 0, "{report}");
    assert_eq!(report.counts().other, 0, "{report}");
    report.assert_clean();
}

/// The line limit of the clients of the garbage tests.
const GARBAGE_LIMIT: usize = 256;

/// A line server that answers like the echo server, except that it answers a request whose payload is `oversize` with
/// a line over [`MAX_LINE`] (and [`GARBAGE_LIMIT`]) and one whose payload is `utf8` with invalid UTF-8. It keeps the connection open
/// afterwards: the client has to close it.
async fn bad_server(log: ServerLog) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.spawn(serve_badly(stream, log.clone()));
        }
    });
    (addr, task)
}

async fn serve_badly(stream: TcpStream, log: ServerLog) {
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(4096));
    while let Some(Ok(line)) = framed.next().await {
        let Ok(req) = parse_request(&line) else {
            return;
        };
        let _ = log.record(req.client, req.seq);
        let sent = match req.payload.as_str() {
            "oversize" => {
                let mut long = vec![b'x'; MAX_LINE * 2];
                long.push(b'\n');
                framed.get_mut().write_all(&long).await
            }
            "utf8" => framed.get_mut().write_all(b"\xff\xfe\xfd garbage\n").await,
            _ => framed
                .send(reply(req.client, req.seq).trim_end_matches('\n'))
                .await
                .map_err(io::Error::other),
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn pipeline_to(addr: SocketAddr) -> Pipeline<String, String> {
    let mut make: PipelineConnector<_, _, String> = PipelineConnector::new(
        TcpConnector::new(),
        LinesCodec::new_with_max_length(GARBAGE_LIMIT),
    );
    poll_fn(|cx| Service::<SocketAddr>::poll_ready(&mut make, cx))
        .await
        .unwrap();
    make.call(addr).await.unwrap()
}

async fn send(p: &mut Pipeline<String, String>, req: String) -> Result<String, BoxError> {
    poll_fn(|cx| p.poll_ready(cx)).await?;
    p.call(req).await
}

/// The pipeline error along an error's source chain.
fn pipeline_error(error: &BoxError) -> Option<PipelineError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = cause {
        if let Some(p) = e.downcast_ref::<PipelineError>() {
            return Some(p.clone());
        }
        cause = e.source();
    }
    None
}

/// Sends a trigger and three requests behind it on one pipeline; returns the trigger's error and the pipeline's
/// final error. Asserts that every request failed as not sent or maybe delivered.
async fn garbage_on_one_connection(addr: SocketAddr, trigger: &str) -> (BoxError, PipelineError) {
    let mut p = pipeline_to(addr).await;
    assert_eq!(send(&mut p, line(1, 1, "fine")).await.unwrap(), "1 1 ok");
    let mut calls = Vec::new();
    for (seq, payload) in [(2, trigger), (3, "after"), (4, "after"), (5, "after")] {
        poll_fn(|cx| p.poll_ready(cx)).await.unwrap();
        calls.push(p.call(line(1, seq, payload)));
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await);
    }
    for (i, result) in results.iter().enumerate() {
        let error = result
            .as_ref()
            .expect_err("no request on a garbled link succeeds");
        assert!(
            error.is::<NotSent>() || error.is::<MaybeDelivered>(),
            "request {i}: {error}"
        );
        assert!(
            pipeline_error(error).is_some(),
            "request {i}: untyped {error}"
        );
    }
    let trigger_error = results.remove(0).unwrap_err();
    let dead = poll_fn(|cx| p.poll_ready(cx))
        .await
        .expect_err("the connection is closed");
    let dead = pipeline_error(&dead).expect("a pipeline error");
    (trigger_error, dead)
}

#[tokio::test]
async fn garbage_closes_only_its_connection_with_a_typed_error() {
    let server_log = ServerLog::new(10_000);
    let (addr, server) = bad_server(server_log.clone()).await;
    timeout(Duration::from_secs(10), async {
        // A well-behaved client on its own connection to the same server, busy all along.
        let mut good = pipeline_to(addr).await;
        let steady = tokio::spawn(async move {
            for seq in 1..=500 {
                let answer = send(&mut good, line(2, seq, "steady")).await.unwrap();
                assert_eq!(parse_reply(&answer), Ok((2, seq)));
            }
        });

        // A reply over the line limit is the codec's complaint.
        let (trigger, dead) = garbage_on_one_connection(addr, "oversize").await;
        assert!(trigger.is::<MaybeDelivered>(), "{trigger}");
        assert!(dead.is_codec(), "{dead:?}");

        // Invalid UTF-8 closes the connection with a typed error too.
        let (trigger, _dead) = garbage_on_one_connection(addr, "utf8").await;
        assert!(trigger.is::<MaybeDelivered>(), "{trigger}");

        steady.await.expect("the other connection is undisturbed");

        // Through the whole stack, a garbled link is replaced and later requests go through.
        let (svc, _beats) = stack(addr);
        let client_log = ClientLog::new(1000);
        let mut svc = svc;
        for (seq, payload) in [
            (1, "fine"),
            (2, "oversize"),
            (3, "fine"),
            (4, "utf8"),
            (5, "fine"),
        ] {
            let seq = BASE_SEQ + seq;
            client_log.issue(3, seq);
            ServiceExt::<String>::ready(&mut svc).await.unwrap();
            let result = svc
                .call_with(line(3, seq, payload), CallOptions::new())
                .await;
            client_log.resolve(3, seq, outcome_of(3, seq, &result));
            let expected = if payload == "fine" {
                Outcome::Ok
            } else {
                Outcome::MaybeDelivered
            };
            assert_eq!(client_log.outcome(3, seq), Some(expected), "{payload}");
        }
        let report = check(
            &arrivals(&server_log).requests,
            &client_log,
            Mode::AtMostOnce,
        );
        println!("{report}");
        report.assert_clean();
    })
    .await
    .expect("nothing hangs on garbage");
    server.abort();
}

#[tokio::test]
async fn invalid_utf8_is_a_codec_error() {
    let (addr, server) = bad_server(ServerLog::new(100)).await;
    let (_, dead) = timeout(
        Duration::from_secs(5),
        garbage_on_one_connection(addr, "utf8"),
    )
    .await
    .expect("bounded");
    assert!(dead.is_codec(), "{dead:?}");
    server.abort();
}

#[tokio::test]
async fn up_24_queued_calls_survive_a_server_that_drops_every_connection() {
    // buffered.js: the server drops every stream 300 ms after accept; calls issued at t = 2 s must all get answers.
    let server = FlakyServer::builder()
        .lifetime(Some(ms(300)))
        .greeting(bytes::Bytes::new())
        .start()
        .await
        .unwrap();
    timeout(Duration::from_secs(10), async {
        let make: PipelineConnector<_, _, String> = PipelineConnector::new(
            TcpConnector::new(),
            LinesCodec::new_with_max_length(MAX_LINE),
        );
        // upnode reconnects after a fixed second.
        let link = ReconnectLayer::new(
            ReconnectConfig::builder(server.addr())
                .backoff(presets::upnode())
                .build()
                .expect("valid reconnect config"),
        )
        .layer(make);
        let mut svc = QueueLayer::default().layer(link);
        let start = tokio::time::Instant::now();
        ServiceExt::<String>::ready(&mut svc).await.unwrap();
        assert_eq!(svc.call("first".to_owned()).await.unwrap(), "first");

        // By t = 2 s the first connection is long gone; the calls wait for the next one.
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        let queued_before = svc.stats().queued;
        let mut calls = JoinSet::new();
        for i in 0..5 {
            ServiceExt::<String>::ready(&mut svc).await.unwrap();
            let call = svc.call(format!("call {i}"));
            calls.spawn(async move { (i, call.await) });
        }
        let mut answered = 0;
        while let Some(joined) = calls.join_next().await {
            let (i, result) = joined.unwrap();
            assert_eq!(result.unwrap(), format!("call {i}"));
            answered += 1;
        }
        assert_eq!(answered, 5);
        let stats = svc.stats();
        // All five waited in the queue for the link to come back.
        assert_eq!(stats.queued - queued_before, 5, "{stats:?}");
        assert!(server.accepted() >= 2);
        println!("answered after {:?}, {stats:?}", start.elapsed());
    })
    .await
    .expect("bounded");
}

/// A line server whose first connection reads one request and closes without answering it (so the request was
/// written and then the link was lost); later connections answer like the echo server. Returns the lines it read.
async fn drops_the_first_answer() -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut first = true;
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let drop_it = std::mem::take(&mut first);
            connections.spawn(async move {
                let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
                while let Some(Ok(line)) = framed.next().await {
                    log.lock().unwrap().push(line.clone());
                    if drop_it {
                        // Written and read, never answered: the link goes.
                        return;
                    }
                    if framed.send(line).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, task)
}

/// UP-14 through the real stack (pipeline over TCP, `Reconnect`, `Queue`): a request the server read before the link
/// was lost ends `MaybeDelivered`, never `NotSent` (the connection itself must say it was written, no mock says it for
/// it), and is not replayed; an idempotent one in the same spot is replayed on the next connection.
#[tokio::test]
async fn up_14_written_then_lost_is_maybe_delivered_through_the_real_stack() {
    use connman_core::outcome::Outcome as Verdict;
    for idempotent in [false, true] {
        let (addr, seen, server) = drops_the_first_answer().await;
        timeout(Duration::from_secs(10), async {
            let link = ReconnectLayer::new(
                ReconnectConfig::builder(addr)
                    .backoff(Constant::new(ms(5)))
                    .build()
                    .expect("valid reconnect config"),
            )
            .layer(make());
            let mut svc = QueueLayer::default().layer(link);
            ServiceExt::<String>::ready(&mut svc).await.unwrap();
            let options = if idempotent {
                CallOptions::new().idempotent()
            } else {
                CallOptions::new()
            };
            let result = svc.call_with("written".to_owned(), options).await;
            if idempotent {
                assert_eq!(result.expect("replayed on the next link"), "written");
                assert_eq!(*seen.lock().unwrap(), ["written", "written"]);
            } else {
                let err = result.expect_err("the link was lost after the write");
                assert_eq!(Verdict::of(&err), Verdict::MaybeDelivered, "{err}");
                assert!(err.is::<MaybeDelivered>());
                assert_eq!(*seen.lock().unwrap(), ["written"], "never replayed");
                assert_eq!(svc.stats().maybe_delivered, 1);
            }
        })
        .await
        .expect("within the bound");
        server.abort();
    }
}

//! The full TCP stack over a simulated network (turmoil), seed after seed: "nothing lost" under partitions, held
//! links, latency, message loss and server crashes.
//!
//! The stack is the one of `chaos.rs`: `Queue → Reconnect → Heartbeat → PipelineConnector` over a line codec, here
//! with a connector that opens a `turmoil::net::TcpStream`. A server host answers the line protocol of
//! [`connman_tests::checker::line`] and logs every `(client, seq)` it receives. Each seed draws its own schedule of
//! faults (and turmoil draws its latencies and losses from the same seed); every run ends with the nothing-lost check
//! (lost 0, phantom 0, duplicates 0, order kept, nothing pending) and with the heartbeat's promise: a link that went
//! silent under a partition or a hold is declared dead within interval + timeout.
//!
//! A partitioned turmoil stream never fails by itself: a dropped segment leaves a gap the receiver waits on forever, as
//! a real half-open link would. Only the heartbeat catches it, which `sim_without_heartbeat_a_partition_goes_unnoticed`
//! shows.
//!
//! Environment:
//!
//! * `CONNMAN_SIM_SEED=N` replays seed `N` alone, with its schedule and outcome printed;
//! * `CONNMAN_SIM_SEEDS=N` and `CONNMAN_SIM_FIRST=K` run seeds `K..K+N` (default: [`CI_SEEDS`] seeds from 1);
//! * `CONNMAN_SIM_THREADS=N` runs seeds on `N` threads (default 2).
//!
//! `cargo xtask sim --seeds N` is the long mode.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use connman_core::backoff::{Exponential, Jitter};
use connman_core::error::BoxError;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatLayer};
use connman_queue::queue::{CallOptions, Queue, QueueConfig, QueueLayer};
use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
use connman_tcp::pipeline::PipelineConnector;
use connman_tests::checker::line::{parse_reply, parse_request, reply, request};
use connman_tests::checker::{ClientLog, Counts, Mode, Outcome, ServerLog, check};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, LinesCodec};
use tower::{Layer, Service, ServiceExt};

/// Seeds the CI run checks.
const CI_SEEDS: u64 = 200;

/// The server's port.
const PORT: u16 = 7000;

/// The client id of the heartbeat's pings; no request uses it.
const PING_CLIENT: u64 = 0;

/// The payload of every request; a line cut short by a crash never carries it whole, so the server never logs one.
const PAYLOAD: &str = "sim";

/// The longest line either side accepts.
const MAX_LINE: usize = 256;

/// Heartbeat schedule: a ping every interval, an answer due within the timeout.
const INTERVAL: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_millis(100);

/// What detection may take beyond interval + timeout: the simulation's ticks.
const SLACK: Duration = Duration::from_millis(5);

/// How long a connect may take before the attempt counts as failed (a SYN to a crashed or held host waits).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// The queue's bounds.
const QUEUE_CAPACITY: usize = 64;
const QUEUE_MAX_WAIT: Duration = Duration::from_secs(5);

/// Requests each pipeline lets be in flight.
const MAX_IN_FLIGHT: usize = 16;

/// The latency of a healthy network, and the most a latency fault adds.
const BASE_LATENCY: Duration = Duration::from_millis(2);
const MAX_FAULT_LATENCY_MS: u64 = 40;

/// How long a client may take to see every outcome once the faults stop, in simulated time.
const SETTLE_BOUND: Duration = Duration::from_secs(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Simulated time now, from inside a host.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// The server host.

/// Listens on [`PORT`]; each connection reads request lines, logs the `(client, seq)` of every whole request, and
/// answers it. Pings are answered, not logged. A crash drops every connection with the host.
async fn server(log: ServerLog) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, log.clone()));
    }
}

async fn serve(stream: turmoil::net::TcpStream, log: ServerLog) {
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    while let Some(Ok(line)) = framed.next().await {
        let Ok(req) = parse_request(&line) else {
            return;
        };
        if req.client == PING_CLIENT {
            if req.payload != "ping" {
                return;
            }
        } else if req.payload == PAYLOAD {
            // A full log is reported by the check; the request is still answered.
            let _ = log.record(req.client, req.seq);
        } else {
            // Only the tail of a request cut by a crash looks like this; it was never whole.
            return;
        }
        if framed
            .send(reply(req.client, req.seq).trim_end_matches('\n'))
            .await
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The client host: the stack over turmoil's TCP, and what it saw of its connections.

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The heartbeat declared it dead (a ping timed out or failed).
    Heartbeat,
    /// The peer closed or reset it.
    Eof,
    /// The client dropped it.
    Dropped,
}

/// One connection: when it was established and when and how it ended, in simulated time.
#[derive(Debug, Clone, Copy)]
struct ConnRecord {
    opened: Duration,
    ended: Option<(Duration, End)>,
}

/// Every connection of the client, in the order they were established.
#[derive(Debug, Clone, Default)]
struct Conns(Arc<Mutex<Vec<ConnRecord>>>);

impl Conns {
    fn open(&self) -> usize {
        let mut conns = self.0.lock().unwrap();
        conns.push(ConnRecord {
            opened: now(),
            ended: None,
        });
        conns.len() - 1
    }

    fn end(&self, id: usize, how: End) {
        let mut conns = self.0.lock().unwrap();
        if let Some(conn) = conns.get_mut(id) {
            conn.ended.get_or_insert((now(), how));
        }
    }

    /// The heartbeat speaks of the connection in use: at most one is open and not yet declared dead.
    fn heartbeat_ended(&self) {
        let mut conns = self.0.lock().unwrap();
        if let Some(conn) = conns.iter_mut().rev().find(|c| c.ended.is_none()) {
            conn.ended = Some((now(), End::Heartbeat));
        }
    }

    /// The connection established before `at` and not ended by then, if any.
    fn live_at(&self, at: Duration) -> Option<usize> {
        let conns = self.0.lock().unwrap();
        conns
            .iter()
            .rposition(|c| c.opened < at && c.ended.is_none_or(|(t, _)| t >= at))
    }

    fn get(&self, id: usize) -> ConnRecord {
        self.0.lock().unwrap()[id]
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A turmoil stream that notes in [`Conns`] when the peer ends it and when it is dropped.
struct Tracked {
    inner: turmoil::net::TcpStream,
    id: usize,
    conns: Conns,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                this.conns.end(this.id, End::Eof)
            }
            Poll::Ready(Err(_)) => this.conns.end(this.id, End::Eof),
            _ => {}
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.conns.end(self.id, End::Dropped);
    }
}

/// The transport: a turmoil TCP connect, bounded by [`CONNECT_TIMEOUT`].
async fn connect(target: (&'static str, u16), conns: Conns) -> Result<Tracked, BoxError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, turmoil::net::TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let id = conns.open();
    Ok(Tracked {
        inner: stream,
        id,
        conns,
    })
}

/// The heartbeat's ping: a request line of the ping client.
fn ping() -> String {
    format!("{PING_CLIENT} 0 ping")
}

/// How the client stack is set up.
#[derive(Debug, Clone, Copy)]
struct StackPlan {
    heartbeat: bool,
    clients: u64,
    window: usize,
    /// The longest pause between two requests of one client, in ms.
    max_pause_ms: u64,
}

/// What the client host shares with the test.
#[derive(Debug, Clone, Default)]
struct Shared {
    conns: Conns,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    pings_timed_out: Arc<AtomicU64>,
}

/// The client host: the full stack, `plan.clients` clients pushing requests until told to stop, then waiting for
/// every outcome.
async fn client(seed: u64, plan: StackPlan, shared: Shared, log: ClientLog) -> turmoil::Result {
    let heartbeat_config = if plan.heartbeat {
        HeartbeatConfig::builder()
            .interval(INTERVAL)
            .timeout(TIMEOUT)
            .build()?
    } else {
        HeartbeatConfig::disabled()
    };
    let heartbeat = HeartbeatLayer::new(heartbeat_config, ping as fn() -> String);
    let mut beats = heartbeat.subscribe();
    let (conns, timed_out) = (shared.conns.clone(), shared.pings_timed_out.clone());
    tokio::spawn(async move {
        loop {
            match beats.recv().await {
                Ok(HeartbeatEvent::TimedOut { .. }) => {
                    timed_out.fetch_add(1, Ordering::Relaxed);
                    conns.heartbeat_ended();
                }
                Ok(HeartbeatEvent::Failed { .. }) => conns.heartbeat_ended(),
                Ok(_) => {}
                // Only pongs can be many; a lost dead event would fail the detection check, never pass it.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let backoff = Exponential::builder()
        .initial(ms(10))
        .max(ms(200))
        .jitter(Jitter::Full)
        .seed(seed)
        .build()?;
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder(("server", PORT))
            .backoff(backoff)
            .build()?,
    );
    let conns = shared.conns.clone();
    let transport =
        tower::service_fn(move |target: (&'static str, u16)| connect(target, conns.clone()));
    let make: PipelineConnector<_, _, String> =
        PipelineConnector::new(transport, LinesCodec::new_with_max_length(MAX_LINE))
            .max_in_flight(MAX_IN_FLIGHT);
    let link = reconnect.layer(heartbeat.layer(make));
    let queue_config = QueueConfig::builder()
        .capacity(QUEUE_CAPACITY)
        .max_wait(QUEUE_MAX_WAIT)
        .build()?;
    let svc = QueueLayer::new(queue_config).layer(link);
    let handle = svc.handle();

    let mut clients = JoinSet::new();
    for c in 1..=plan.clients {
        clients.spawn(run_client(
            svc.clone(),
            c,
            fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(c)),
            plan,
            log.clone(),
            shared.stop.clone(),
            shared.issued.clone(),
        ));
    }
    drop(svc);
    let settled = tokio::time::timeout(SETTLE_BOUND, async {
        while let Some(done) = clients.join_next().await {
            done?;
        }
        Ok::<_, tokio::task::JoinError>(())
    });
    // The bound runs from the moment the faults stop: wait for that first.
    while !shared.stop.load(Ordering::Acquire) {
        tokio::time::sleep(ms(10)).await;
    }
    settled
        .await
        .map_err(|_| "requests still unresolved long after the faults stopped")??;
    let stats = handle.stats();
    log.gauge("queue len", stats.len as u64, QUEUE_CAPACITY as u64);
    handle.close();
    Ok(())
}

/// One client: a request every few ms, at most `plan.window` unanswered, until told to stop; then waits for every
/// outcome.
async fn run_client<S>(
    mut svc: Queue<S, String>,
    client: u64,
    mut rng: fastrand::Rng,
    plan: StackPlan,
    log: ClientLog,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
) where
    S: Service<String, Response = String> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let mut waiting = JoinSet::new();
    let mut seq = 0;
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(ms(rng.u64(1..=plan.max_pause_ms))).await;
        while waiting.try_join_next().is_some() {}
        if waiting.len() >= plan.window {
            continue;
        }
        if ServiceExt::<String>::ready(&mut svc).await.is_err() {
            break;
        }
        seq += 1;
        log.issue(client, seq);
        let fut = svc.call_with(line(client, seq), CallOptions::new());
        issued.fetch_add(1, Ordering::Relaxed);
        let log = log.clone();
        waiting.spawn(async move {
            let result = fut.await;
            log.resolve(client, seq, outcome_of(client, seq, &result));
        });
    }
    while waiting.join_next().await.is_some() {}
}

/// A request line without its newline (the codec adds it).
fn line(client: u64, seq: u64) -> String {
    request(client, seq, PAYLOAD)
        .trim_end_matches('\n')
        .to_owned()
}

/// `Ok` only if the reply names this very request.
fn outcome_of(client: u64, seq: u64, result: &Result<String, BoxError>) -> Outcome {
    match result {
        Ok(answer) if parse_reply(answer) == Ok((client, seq)) => Outcome::Ok,
        Ok(answer) => Outcome::Other(format!("reply {answer:?} to {client} {seq}")),
        Err(e) => Outcome::of_error(e.as_ref()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Faults.

/// A fault of the simulated network or of the server host.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// No segment crosses between client and server for the duration; what was sent meanwhile is lost.
    Partition,
    /// Segments are held for the duration, then delivered.
    Hold,
    /// Every segment takes up to this many ms.
    Latency(u64),
    /// Each segment may fail the link with this probability, losing what is in flight on it.
    Loss(f64),
    /// The server host is down for the duration (its connections die with it), then starts again.
    Crash,
    /// The server host restarts at once.
    Bounce,
}

impl Fault {
    const fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::Hold => "hold",
            Fault::Latency(_) => "latency",
            Fault::Loss(_) => "loss",
            Fault::Crash => "crash",
            Fault::Bounce => "bounce",
        }
    }

    /// Whether the heartbeat must declare a link dead within interval + timeout of the fault's start.
    fn silences_link(self, duration: Duration) -> bool {
        matches!(self, Fault::Partition | Fault::Hold) && duration > INTERVAL + TIMEOUT + SLACK
    }
}

/// One fault at a time in simulated time.
#[derive(Debug, Clone, Copy)]
struct Phase {
    at: Duration,
    fault: Fault,
    duration: Duration,
}

/// A seed's faults: a warm-up, then faults one after the other with quiet gaps, then the end of the faults.
#[derive(Debug, Clone)]
struct Schedule {
    phases: Vec<Phase>,
    end: Duration,
}

impl Schedule {
    fn draw(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut at = ms(rng.u64(200..500));
        let mut phases = Vec::new();
        for _ in 0..rng.usize(3..=5) {
            let (fault, duration) = match rng.u8(0..6) {
                0 => (Fault::Partition, ms(rng.u64(50..1200))),
                1 => (Fault::Hold, ms(rng.u64(50..1000))),
                2 => (
                    Fault::Latency(rng.u64(5..=MAX_FAULT_LATENCY_MS)),
                    ms(rng.u64(200..1000)),
                ),
                3 => (
                    Fault::Loss(f64::from(rng.u32(2..=40)) / 1000.0),
                    ms(rng.u64(200..1000)),
                ),
                4 => (Fault::Crash, ms(rng.u64(20..800))),
                _ => (Fault::Bounce, Duration::ZERO),
            };
            phases.push(Phase {
                at,
                fault,
                duration,
            });
            at += duration + ms(rng.u64(100..600));
        }
        Self { phases, end: at }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.phases {
            write!(
                f,
                "{:>6} ms {:<9} {:>5} ms",
                p.at.as_millis(),
                p.fault.name(),
                p.duration.as_millis()
            )?;
            match p.fault {
                Fault::Latency(l) => writeln!(f, "  up to {l} ms")?,
                Fault::Loss(r) => writeln!(f, "  rate {r}")?,
                _ => writeln!(f)?,
            }
        }
        write!(f, "{:>6} ms faults end", self.end.as_millis())
    }
}

/// A link silenced by a fault while a connection was live on it, and when that connection was declared dead.
#[derive(Debug, Clone, Copy)]
struct Silence {
    fault: &'static str,
    at: Duration,
    ended: Option<(Duration, End)>,
}

impl Silence {
    /// How long after the fault started the connection was found dead.
    fn detected_after(&self) -> Option<Duration> {
        self.ended.map(|(t, _)| t.saturating_sub(self.at))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// One seed.

/// What one seed did and saw.
#[derive(Debug)]
struct SeedRun {
    seed: u64,
    counts: Counts,
    faults: Vec<&'static str>,
    silences: Vec<Silence>,
    connections: usize,
    pings_timed_out: u64,
    sim_time: Duration,
    wall: Duration,
}

/// Why a seed failed, with everything needed to replay it.
#[derive(Debug)]
struct SeedFailure {
    seed: u64,
    reason: String,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.reason)?;
        write!(
            f,
            "replay: CONNMAN_SIM_SEED={} cargo test -p connman-tests --test sim -- sim_nothing_lost_over_seeds --nocapture",
            self.seed
        )
    }
}

const STACK: StackPlan = StackPlan {
    heartbeat: true,
    clients: 3,
    window: 8,
    max_pause_ms: 20,
};

/// Runs one seed: the server, the client stack and the seed's schedule of faults; then the checks.
fn run_seed(seed: u64, plan: StackPlan, schedule: &Schedule) -> Result<SeedRun, SeedFailure> {
    let fail = |reason: String| SeedFailure { seed, reason };
    let started = StdInstant::now();
    let server_log = ServerLog::new(1_000_000);
    let client_log = ClientLog::new(1_000_000);
    let shared = Shared::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(schedule.end + SETTLE_BOUND + Duration::from_secs(10))
        .min_message_latency(ms(1))
        .max_message_latency(BASE_LATENCY)
        .tcp_capacity(256)
        .build();
    let log = server_log.clone();
    sim.host("server", move || server(log.clone()));
    sim.client(
        "client",
        client(seed, plan, shared.clone(), client_log.clone()),
    );

    let mut next = 0;
    let mut active: Option<(Phase, Duration)> = None;
    let mut silences = Vec::new();
    let mut faults = Vec::new();
    let mut stopped = false;
    loop {
        let t = sim.elapsed();
        if let Some((phase, until)) = active {
            if t >= until {
                heal(&mut sim, phase.fault);
                active = None;
            }
        }
        if active.is_none() {
            if let Some(&phase) = schedule.phases.get(next).filter(|p| t >= p.at) {
                next += 1;
                faults.push(phase.fault.name());
                if phase.fault.silences_link(phase.duration) {
                    if let Some(id) = shared.conns.live_at(t) {
                        silences.push((phase.fault.name(), t, id));
                    }
                }
                inject(&mut sim, phase.fault);
                active = Some((phase, t + phase.duration));
            }
        }
        if !stopped && active.is_none() && next == schedule.phases.len() && t >= schedule.end {
            shared.stop.store(true, Ordering::Release);
            stopped = true;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(fail(format!("the simulation failed: {e}"))),
        }
    }

    let silences: Vec<Silence> = silences
        .into_iter()
        .map(|(fault, at, id)| Silence {
            fault,
            at,
            ended: shared.conns.get(id).ended,
        })
        .collect();
    let report = check(&server_log, &client_log, Mode::AtMostOnce);
    let run = SeedRun {
        seed,
        counts: report.counts().clone(),
        faults,
        silences,
        connections: shared.conns.len(),
        pings_timed_out: shared.pings_timed_out.load(Ordering::Relaxed),
        sim_time: sim.elapsed(),
        wall: started.elapsed(),
    };
    if !report.is_clean() {
        return Err(fail(format!("{report}\nschedule:\n{schedule}")));
    }
    if report.counts().other > 0 {
        return Err(fail(format!("untyped errors\n{report}")));
    }
    if report.counts().ok == 0 {
        return Err(fail(format!("nothing succeeded\n{report}")));
    }
    if plan.heartbeat {
        for s in &run.silences {
            match s.detected_after() {
                Some(after) if after <= INTERVAL + TIMEOUT + SLACK => {}
                other => {
                    return Err(fail(format!(
                        "a {} at {:?} went unnoticed past interval + timeout: the live link ended {other:?} later\nschedule:\n{schedule}",
                        s.fault, s.at
                    )));
                }
            }
        }
    }
    Ok(run)
}

fn inject(sim: &mut turmoil::Sim<'_>, fault: Fault) {
    match fault {
        Fault::Partition => sim.partition("client", "server"),
        Fault::Hold => sim.hold("client", "server"),
        Fault::Latency(max) => sim.set_max_message_latency(ms(max)),
        Fault::Loss(rate) => sim.set_fail_rate(rate),
        Fault::Crash => sim.crash("server"),
        Fault::Bounce => sim.bounce("server"),
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, fault: Fault) {
    match fault {
        Fault::Partition => sim.repair("client", "server"),
        Fault::Hold => sim.release("client", "server"),
        Fault::Latency(_) => sim.set_max_message_latency(BASE_LATENCY),
        Fault::Loss(_) => {
            sim.set_fail_rate(0.0);
            // A link the last loss took down comes back.
            sim.repair("client", "server");
        }
        Fault::Crash => sim.bounce("server"),
        Fault::Bounce => {}
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Many seeds.

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a whole number"),
    }
}

/// Runs `seeds` on `threads` threads; every failure, in seed order.
fn run_seeds(seeds: &[u64], threads: usize) -> (Vec<SeedRun>, Vec<SeedFailure>) {
    let next = AtomicU64::new(0);
    let results = Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let schedule = Schedule::draw(seed);
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_seed(seed, STACK, &schedule)
                    }))
                    .unwrap_or_else(|panic| {
                        let reason = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "a panic".to_owned());
                        Err(SeedFailure {
                            seed,
                            reason: format!("panicked: {reason}"),
                        })
                    });
                    let mut results = results.lock().unwrap();
                    match outcome {
                        Ok(run) => results.0.push(run),
                        Err(failure) => {
                            eprintln!("{failure}");
                            results.1.push(failure);
                        }
                    }
                }
            });
        }
    });
    let (mut runs, mut failures) = results.into_inner().unwrap();
    runs.sort_by_key(|r: &SeedRun| r.seed);
    failures.sort_by_key(|f: &SeedFailure| f.seed);
    (runs, failures)
}

/// Totals over many seeds.
#[derive(Debug, Default)]
struct Summary {
    seeds: usize,
    requests: u64,
    ok: u64,
    maybe_delivered: u64,
    not_sent: u64,
    expired: u64,
    received: u64,
    connections: usize,
    faults: BTreeMap<&'static str, u64>,
    silences: u64,
    by_heartbeat: u64,
    worst_detection: Duration,
    pings_timed_out: u64,
    sim_time: Duration,
}

impl Summary {
    fn of(runs: &[SeedRun]) -> Self {
        let mut s = Self {
            seeds: runs.len(),
            ..Self::default()
        };
        for r in runs {
            s.requests += r.counts.requests;
            s.ok += r.counts.ok;
            s.maybe_delivered += r.counts.maybe_delivered;
            s.not_sent += r.counts.not_sent;
            s.expired += r.counts.expired;
            s.received += r.counts.received;
            s.connections += r.connections;
            s.pings_timed_out += r.pings_timed_out;
            s.sim_time += r.sim_time;
            for f in &r.faults {
                *s.faults.entry(f).or_insert(0) += 1;
            }
            for silence in &r.silences {
                s.silences += 1;
                if let Some((_, End::Heartbeat)) = silence.ended {
                    s.by_heartbeat += 1;
                }
                if let Some(after) = silence.detected_after() {
                    s.worst_detection = s.worst_detection.max(after);
                }
            }
        }
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} seeds, {:.1} s simulated: {} requests ({} ok, {} maybe delivered, {} not sent, {} expired), {} received, {} connections",
            self.seeds,
            self.sim_time.as_secs_f64(),
            self.requests,
            self.ok,
            self.maybe_delivered,
            self.not_sent,
            self.expired,
            self.received,
            self.connections
        )?;
        let mut faults = String::new();
        for (name, n) in &self.faults {
            let _ = write!(faults, " {name} {n}");
        }
        writeln!(f, "faults:{faults}")?;
        write!(
            f,
            "silenced live links {}: {} declared dead by the heartbeat, worst detection {:?} (bound {:?}); pings timed out {}",
            self.silences,
            self.by_heartbeat,
            self.worst_detection,
            INTERVAL + TIMEOUT + SLACK,
            self.pings_timed_out
        )
    }
}

#[test]
fn sim_nothing_lost_over_seeds() {
    let threads = env_u64("CONNMAN_SIM_THREADS").unwrap_or(2) as usize;
    let seeds: Vec<u64> = match env_u64("CONNMAN_SIM_SEED") {
        Some(seed) => {
            println!("seed {seed}, schedule:\n{}", Schedule::draw(seed));
            vec![seed]
        }
        None => {
            let first = env_u64("CONNMAN_SIM_FIRST").unwrap_or(1);
            let n = env_u64("CONNMAN_SIM_SEEDS").unwrap_or(CI_SEEDS);
            (first..first + n).collect()
        }
    };
    let started = StdInstant::now();
    let (runs, failures) = run_seeds(&seeds, threads);
    let wall = started.elapsed();
    let summary = Summary::of(&runs);
    println!("{summary}");
    println!(
        "wall {:.1} s on {threads} threads (slowest seed {:?})",
        wall.as_secs_f64(),
        runs.iter().map(|r| r.wall).max().unwrap_or_default()
    );
    if let [run] = runs.as_slice() {
        println!("{run:#?}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    if seeds.len() >= 50 {
        // Over a run of any size, every fault happened and the heartbeat did the detecting.
        for fault in ["partition", "hold", "latency", "loss", "crash", "bounce"] {
            assert!(
                summary.faults.get(fault).is_some_and(|&n| n > 0),
                "no {fault}"
            );
        }
        assert!(
            summary.silences > 0 && summary.by_heartbeat > 0,
            "{summary}"
        );
        assert!(summary.maybe_delivered > 0 && summary.ok > 0, "{summary}");
    }
}

/// One partition of a busy link, long enough for several pings.
fn one_partition(at: u64, duration: u64) -> Schedule {
    Schedule {
        phases: vec![Phase {
            at: ms(at),
            fault: Fault::Partition,
            duration: ms(duration),
        }],
        end: ms(at + duration + 500),
    }
}

#[test]
fn sim_partition_detected_by_heartbeat_within_interval_plus_timeout() {
    // Partitions that start at every phase of the ping schedule.
    for (seed, start) in [(11, 600), (12, 655), (13, 730), (14, 790), (15, 849)] {
        let schedule = one_partition(start, 1200);
        let run = run_seed(seed, STACK, &schedule).unwrap_or_else(|f| panic!("{f}"));
        let [silence] = run.silences.as_slice() else {
            panic!("seed {seed}: no live link at the partition: {run:#?}");
        };
        let (_, how) = silence.ended.expect("the link ended");
        assert_eq!(how, End::Heartbeat, "seed {seed}: {silence:?}");
        let after = silence.detected_after().expect("detected");
        assert!(
            after <= INTERVAL + TIMEOUT + SLACK,
            "seed {seed}: {after:?}"
        );
        // Never before a ping could have gone unanswered for the timeout.
        assert!(
            after >= TIMEOUT.saturating_sub(SLACK),
            "seed {seed}: {after:?}"
        );
        assert!(run.counts.maybe_delivered > 0, "{:?}", run.counts);
        println!("seed {seed}: partition at {start} ms detected after {after:?}");
    }
}

#[test]
fn sim_without_heartbeat_a_partition_goes_unnoticed() {
    // The same fault with the heartbeat off: the half-open link is never found dead, and the requests written into
    // it never get an outcome. The simulation's bound reports the hang.
    let plan = StackPlan {
        heartbeat: false,
        ..STACK
    };
    let schedule = one_partition(600, 1200);
    let failure = run_seed(11, plan, &schedule).expect_err("a silent link hangs its requests");
    println!("as expected without a heartbeat: {}", failure.reason);
    assert!(
        failure.reason.contains("unresolved") || failure.reason.contains("Ran for duration"),
        "{}",
        failure.reason
    );
}

#[test]
fn sim_same_seed_same_run() {
    let schedule = Schedule::draw(7);
    let a = run_seed(7, STACK, &schedule).unwrap_or_else(|f| panic!("{f}"));
    let b = run_seed(7, STACK, &schedule).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.connections, b.connections);
    assert_eq!(a.sim_time, b.sim_time);
}

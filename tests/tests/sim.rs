//! The full TCP stack and the reconnecting WebSocket client over a simulated network (turmoil), seed after seed:
//! "nothing lost" under partitions, held links, latency, message loss and server crashes.
//!
//! The WebSocket half (`sim_ws_*`, at the end of the file) runs `WsClient`s against connman-ws's server side over
//! the same faults and checks: see its section.
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
//! * `CONNMAN_SIM_SEEDS=N` and `CONNMAN_SIM_FIRST=K` run seeds `K..K+N` (default: [`CI_SEEDS`] seeds from 1 for
//!   the TCP stack, [`WS_CI_SEEDS`] for the WebSocket client);
//! * `CONNMAN_SIM_THREADS=N` runs seeds on `N` threads (default 2).
//!
//! `cargo xtask sim --seeds N` is the long mode.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use connman_core::backoff::{Exponential, Jitter};
use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use connman_pool::group::Group;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatLayer};
use connman_queue::queue::{CallOptions, Queue, QueueConfig, QueueLayer};
use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
use connman_tcp::HostPort;
use connman_tcp::pipeline::PipelineConnector;
use connman_tests::checker::line::{parse_reply, parse_request, reply, request};
use connman_tests::checker::{ClientLog, Counts, Mode, Outcome, ServerLog, check};
use connman_tests::ws::{Counts as ServerCounts, serve_connection};
use connman_ws::client::{ClientEvent, Message, WsClient};
use connman_ws::{AcceptConfig, WsConfig};
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
    watch_dead(
        heartbeat.subscribe(),
        shared.conns.clone(),
        shared.pings_timed_out.clone(),
        |event| match event {
            HeartbeatEvent::TimedOut { .. } => Some(true),
            HeartbeatEvent::Failed { .. } => Some(false),
            _ => None,
        },
    );

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
    settle(clients, &shared.stop).await?;
    let stats = handle.stats();
    log.gauge("queue len", stats.len as u64, QUEUE_CAPACITY as u64);
    handle.close();
    Ok(())
}

/// Notes in `conns` every link a client's events declare dead: `dead` reads an event as `Some(true)` for a ping
/// that timed out, `Some(false)` for a ping that failed, `None` for anything else.
fn watch_dead<E: Clone + Send + 'static>(
    mut events: broadcast::Receiver<E>,
    conns: Conns,
    timed_out: Arc<AtomicU64>,
    dead: fn(&E) -> Option<bool>,
) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(ping_timed_out) = dead(&event) {
                        if ping_timed_out {
                            timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                        conns.heartbeat_ended();
                    }
                }
                // Only pongs can be many; a lost dead event would fail the detection check, never pass it.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Waits for every client task to see all its outcomes, within [`SETTLE_BOUND`] of the moment the faults stop.
async fn settle(mut clients: JoinSet<()>, stop: &AtomicBool) -> turmoil::Result {
    let settled = tokio::time::timeout(SETTLE_BOUND, async {
        while let Some(done) = clients.join_next().await {
            done?;
        }
        Ok::<_, tokio::task::JoinError>(())
    });
    // The bound runs from the moment the faults stop: wait for that first.
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(ms(10)).await;
    }
    settled
        .await
        .map_err(|_| "requests still unresolved long after the faults stopped")??;
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
    /// The WebSocket server closes every connection with 1012 ("restarting") and goes on serving: its clients come
    /// back after a random delay. WebSocket seeds only.
    Restart,
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
            Fault::Restart => "restart",
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
    /// The faults of a TCP seed.
    fn draw(seed: u64) -> Self {
        Self::draw_from(seed, 6)
    }

    /// The faults of a WebSocket seed: those of a TCP seed and [`Fault::Restart`].
    fn draw_ws(seed: u64) -> Self {
        Self::draw_from(seed, 7)
    }

    /// Draws among the first `kinds` kinds of fault (the same draws as ever for the first six).
    fn draw_from(seed: u64, kinds: u8) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut at = ms(rng.u64(200..500));
        let mut phases = Vec::new();
        for _ in 0..rng.usize(3..=5) {
            let (fault, duration) = match rng.u8(0..kinds) {
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
                5 => (Fault::Bounce, Duration::ZERO),
                _ => (Fault::Restart, Duration::ZERO),
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
    /// Which client's link (an index into the watched [`Conns`]).
    client: usize,
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
    /// Plain WebSocket sends reported written (`Ok`: WebSocket has no receipt), and of those, how many never
    /// arrived (each written to a socket that a fault then killed). Zero for the TCP stack.
    written: u64,
    written_unreceived: u64,
    sim_time: Duration,
    wall: Duration,
}

/// Why a seed failed, with everything needed to replay it.
#[derive(Debug)]
struct SeedFailure {
    seed: u64,
    /// The test that replays it.
    test: &'static str,
    reason: String,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.reason)?;
        write!(
            f,
            "replay: CONNMAN_SIM_SEED={} cargo test -p connman-tests --test sim -- {} --exact --nocapture",
            self.seed, self.test
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
    let fail = |reason: String| SeedFailure {
        seed,
        test: "sim_nothing_lost_over_seeds",
        reason,
    };
    let started = StdInstant::now();
    let server_log = ServerLog::new(1_000_000);
    let client_log = ClientLog::new(1_000_000);
    let shared = Shared::default();
    let mut sim = build_sim(seed, schedule);
    let log = server_log.clone();
    sim.host("server", move || server(log.clone()));
    sim.client(
        "client",
        client(seed, plan, shared.clone(), client_log.clone()),
    );
    let (faults, silences) = drive(
        &mut sim,
        schedule,
        std::slice::from_ref(&shared.conns),
        &shared.stop,
        &|| {},
    )
    .map_err(fail)?;
    let report = check(&server_log, &client_log, Mode::AtMostOnce);
    let run = SeedRun {
        seed,
        counts: report.counts().clone(),
        faults,
        silences,
        connections: shared.conns.len(),
        pings_timed_out: shared.pings_timed_out.load(Ordering::Relaxed),
        written: 0,
        written_unreceived: 0,
        sim_time: sim.elapsed(),
        wall: started.elapsed(),
    };
    verdict(&report, &run, plan.heartbeat, schedule).map_err(fail)?;
    Ok(run)
}

/// The simulation of one seed: turmoil draws latencies and losses from the seed, and runs long enough for the
/// schedule, the settling after it, and a margin.
fn build_sim<'a>(seed: u64, schedule: &Schedule) -> turmoil::Sim<'a> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(schedule.end + SETTLE_BOUND + Duration::from_secs(10))
        .min_message_latency(ms(1))
        .max_message_latency(BASE_LATENCY)
        .tcp_capacity(256)
        .build()
}

/// Steps `sim` through `schedule`, one fault at a time: injects and heals each (a [`Fault::Restart`] by calling
/// `restart`), notes the live link of every watched client when a fault silences the link, sets `stop` once the
/// faults are over, and runs to the end. Gives the faults injected and the silenced links with how each ended.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    schedule: &Schedule,
    watched: &[Conns],
    stop: &AtomicBool,
    restart: &dyn Fn(),
) -> Result<(Vec<&'static str>, Vec<Silence>), String> {
    let mut next = 0;
    let mut active: Option<(Phase, Duration)> = None;
    let mut silenced = Vec::new();
    let mut faults = Vec::new();
    let mut stopped = false;
    loop {
        let t = sim.elapsed();
        if let Some((phase, until)) = active {
            if t >= until {
                heal(sim, phase.fault);
                active = None;
            }
        }
        if active.is_none() {
            if let Some(&phase) = schedule.phases.get(next).filter(|p| t >= p.at) {
                next += 1;
                faults.push(phase.fault.name());
                if phase.fault.silences_link(phase.duration) {
                    for (client, conns) in watched.iter().enumerate() {
                        if let Some(id) = conns.live_at(t) {
                            silenced.push((phase.fault.name(), t, client, id));
                        }
                    }
                }
                if phase.fault == Fault::Restart {
                    restart();
                }
                inject(sim, phase.fault);
                active = Some((phase, t + phase.duration));
            }
        }
        if !stopped && active.is_none() && next == schedule.phases.len() && t >= schedule.end {
            stop.store(true, Ordering::Release);
            stopped = true;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("the simulation failed: {e}")),
        }
    }
    let silences = silenced
        .into_iter()
        .map(|(fault, at, client, id)| Silence {
            fault,
            at,
            client,
            ended: watched[client].get(id).ended,
        })
        .collect();
    Ok((faults, silences))
}

/// The checks every seed ends with: the nothing-lost report clean, no untyped error, something succeeded, and (with
/// a heartbeat) every silenced link declared dead within interval + timeout.
fn verdict(
    report: &connman_tests::checker::Report,
    run: &SeedRun,
    heartbeat: bool,
    schedule: &Schedule,
) -> Result<(), String> {
    if !report.is_clean() {
        return Err(format!("{report}\nschedule:\n{schedule}"));
    }
    if report.counts().other > 0 {
        return Err(format!("untyped errors\n{report}"));
    }
    if report.counts().ok == 0 {
        return Err(format!("nothing succeeded\n{report}"));
    }
    if heartbeat {
        for s in &run.silences {
            match s.detected_after() {
                Some(after) if after <= INTERVAL + TIMEOUT + SLACK => {}
                other => {
                    return Err(format!(
                        "a {} at {:?} went unnoticed past interval + timeout by client {}: the live link ended {other:?} later\nschedule:\n{schedule}",
                        s.fault, s.at, s.client
                    ));
                }
            }
        }
    }
    Ok(())
}

fn inject(sim: &mut turmoil::Sim<'_>, fault: Fault) {
    match fault {
        Fault::Partition => sim.partition("client", "server"),
        Fault::Hold => sim.hold("client", "server"),
        Fault::Latency(max) => sim.set_max_message_latency(ms(max)),
        Fault::Loss(rate) => sim.set_fail_rate(rate),
        Fault::Crash => sim.crash("server"),
        Fault::Bounce => sim.bounce("server"),
        // The server host does it itself (see `drive`).
        Fault::Restart => {}
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
        Fault::Bounce | Fault::Restart => {}
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

/// Runs `seeds` on `threads` threads through `run`; every failure, in seed order.
fn run_seeds(
    seeds: &[u64],
    threads: usize,
    test: &'static str,
    run: &(dyn Fn(u64) -> Result<SeedRun, SeedFailure> + Sync),
) -> (Vec<SeedRun>, Vec<SeedFailure>) {
    let next = AtomicU64::new(0);
    let results = Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)))
                            .unwrap_or_else(|panic| {
                                let reason = panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| {
                                        panic.downcast_ref::<&str>().map(|s| (*s).to_owned())
                                    })
                                    .unwrap_or_else(|| "a panic".to_owned());
                                Err(SeedFailure {
                                    seed,
                                    test,
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
    written: u64,
    written_unreceived: u64,
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
            s.written += r.written;
            s.written_unreceived += r.written_unreceived;
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
        if self.written > 0 {
            writeln!(
                f,
                "plain sends reported written: {}, of which never received (their socket died after the write): {}",
                self.written, self.written_unreceived
            )?;
        }
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

/// The seeds a run checks: `CONNMAN_SIM_SEED` alone, or `CONNMAN_SIM_SEEDS` from `CONNMAN_SIM_FIRST` (default
/// `ci_seeds` from 1).
fn seeds_to_run(ci_seeds: u64, draw: fn(u64) -> Schedule) -> Vec<u64> {
    match env_u64("CONNMAN_SIM_SEED") {
        Some(seed) => {
            println!("seed {seed}, schedule:\n{}", draw(seed));
            vec![seed]
        }
        None => {
            let first = env_u64("CONNMAN_SIM_FIRST").unwrap_or(1);
            let n = env_u64("CONNMAN_SIM_SEEDS").unwrap_or(ci_seeds);
            (first..first + n).collect()
        }
    }
}

/// Runs the seeds of [`seeds_to_run`] through `run`, prints the summary, and fails with every failing seed and its
/// replay command. Over 50 seeds or more, every kind of fault must have happened, the heartbeat must have done the
/// detecting, and both success and maybe-delivered must have been seen.
fn over_seeds(
    ci_seeds: u64,
    test: &'static str,
    draw: fn(u64) -> Schedule,
    run: &(dyn Fn(u64) -> Result<SeedRun, SeedFailure> + Sync),
) -> Summary {
    let threads = env_u64("CONNMAN_SIM_THREADS").unwrap_or(2) as usize;
    let seeds = seeds_to_run(ci_seeds, draw);
    let started = StdInstant::now();
    let (runs, failures) = run_seeds(&seeds, threads, test, run);
    let wall = started.elapsed();
    let summary = Summary::of(&runs);
    println!("{test}: {summary}");
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
    summary
}

#[test]
fn sim_nothing_lost_over_seeds() {
    over_seeds(
        CI_SEEDS,
        "sim_nothing_lost_over_seeds",
        Schedule::draw,
        &|seed| run_seed(seed, STACK, &Schedule::draw(seed)),
    );
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

/// How long after its fault a silenced link was found dead, checked to be within interval + timeout, and never
/// before a ping could have gone unanswered for the timeout.
fn detected_in_time(seed: u64, silence: &Silence) -> Duration {
    let after = silence.detected_after().expect("detected");
    assert!(
        after <= INTERVAL + TIMEOUT + SLACK,
        "seed {seed}: {silence:?}"
    );
    assert!(
        after >= TIMEOUT.saturating_sub(SLACK),
        "seed {seed}: {silence:?}"
    );
    after
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
        let after = detected_in_time(seed, silence);
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

// ---------------------------------------------------------------------------------------------------------------
// The reconnecting WebSocket client over the same network and faults.
//
// A server host runs connman-ws's server side ([`serve_connection`] into a `Group`) on turmoil's TCP; it logs the
// `(client, seq)` of every whole message and answers the requests. The client host runs `WsClient`s whose transport
// opens a turmoil stream. Request clients use `WsClient::request` (the answer is the receipt: `Ok` means the server
// logged it, so the checker holds them to "nothing lost"); send clients use `WsClient::send` (`Ok` means written;
// WebSocket has no receipt, so a message written to a socket that a fault then kills may be gone, and the run counts
// those). Its seeds draw one more fault: the server closing every connection with 1012 ("restarting"), after which
// the clients come back after a random delay. For both: no phantom among the `NotSent`, no duplicate (a send is
// replayed only when provably never written), order per client, no hang, and every link silenced by a partition or
// a hold found dead by the client's ping within ping interval + pong timeout.

/// The WebSocket server's namespace.
const WS_NAMESPACE: &str = "sim";

/// Seeds the CI run checks for the WebSocket client.
const WS_CI_SEEDS: u64 = 60;

/// The client ids of the two kinds of WebSocket client.
const WS_REQUEST: &str = "req";
const WS_SEND: &str = "msg";

/// Parses `"<client> <seq> <payload>"`, the line of a request or of its answer.
fn ws_line(message: &[u8]) -> Option<(u64, u64, &str)> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(3, ' ');
    let client = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((client, seq, parts.next().unwrap_or_default()))
}

/// The WebSocket server host: every whole message logged; a request answered on its own connection. When
/// `restart` is set, it closes every connection with 1012 and goes on serving.
async fn ws_server(log: ServerLog, restart: Arc<AtomicBool>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let group = Group::new();
    {
        let group = group.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ms(1)).await;
                if restart.swap(false, Ordering::AcqRel) {
                    for closing in group.close_all(WS_NAMESPACE, CloseCode::RESTART, "restarting") {
                        tokio::spawn(closing);
                    }
                }
            }
        });
    }
    let config = AcceptConfig::new(WsConfig::default()).namespace(WS_NAMESPACE);
    let counts = {
        let group = group.clone();
        ServerCounts::new().on_message(move |ns, id, payload| {
            let Some((client, seq, kind)) = ws_line(payload) else {
                return;
            };
            if kind != WS_REQUEST && kind != WS_SEND {
                return;
            }
            // A full log is reported by the check.
            let _ = log.record(client, seq);
            if kind == WS_REQUEST {
                let _ = group.send(ns, id, format!("{client} {seq} ok"));
            }
        })
    };
    loop {
        let (stream, _) = listener.accept().await?;
        let (group, config, counts) = (group.clone(), config.clone(), counts.clone());
        tokio::spawn(async move { serve_connection(stream, &config, &group, &counts).await });
    }
}

/// How the WebSocket clients are set up.
#[derive(Debug, Clone, Copy)]
struct WsPlan {
    /// Ping every [`INTERVAL`], pong due within [`TIMEOUT`]; or no ping at all.
    ping: bool,
    /// Request clients, then send clients.
    requesters: u64,
    senders: u64,
    window: usize,
    max_pause_ms: u64,
    /// How long a written request waits for its answer.
    request_timeout: Duration,
}

const WS_CLIENTS: WsPlan = WsPlan {
    ping: true,
    requesters: 2,
    senders: 1,
    window: 8,
    max_pause_ms: 20,
    request_timeout: QUEUE_MAX_WAIT,
};

/// What the WebSocket client host shares with the test: each client's connections, and counts.
#[derive(Debug, Clone, Default)]
struct WsShared {
    conns: Vec<Conns>,
    stop: Arc<AtomicBool>,
    pings_timed_out: Arc<AtomicU64>,
    written: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Set to have the server close every connection with 1012.
    restart: Arc<AtomicBool>,
}

/// The client host: one `WsClient` per client, each sending until told to stop, then waiting for every outcome.
async fn ws_client_host(
    seed: u64,
    plan: WsPlan,
    shared: WsShared,
    log: ClientLog,
) -> turmoil::Result {
    let mut clients = JoinSet::new();
    let mut handles = Vec::new();
    for (i, conns) in shared.conns.iter().enumerate() {
        let c = i as u64 + 1;
        let request = c <= plan.requesters;
        let backoff = Exponential::builder()
            .initial(ms(10))
            .max(ms(200))
            .jitter(Jitter::Full)
            .seed(seed.wrapping_mul(131).wrapping_add(c))
            .build()?;
        let transport = {
            let conns = conns.clone();
            tower::service_fn(move |_: HostPort| connect(("server", PORT), conns.clone()))
        };
        let builder = WsClient::builder(&format!("ws://server:{PORT}/{WS_NAMESPACE}"))
            .transport(transport)
            .ping(plan.ping.then_some((INTERVAL, TIMEOUT)))
            .backoff(backoff)
            .come_back_within(ms(100))
            .queue_capacity(QUEUE_CAPACITY)
            .max_wait(QUEUE_MAX_WAIT)
            .handshake_timeout(CONNECT_TIMEOUT)
            .close_timeout(ms(200))
            .request_timeout(plan.request_timeout);
        let builder = if request {
            builder.correlate(|msg: &Message| ws_line(msg.as_bytes()).map(|(_, seq, _)| seq))
        } else {
            builder
        };
        let (client, mut incoming) = builder.build()?;
        // Answers to requests are matched to them; nothing else arrives. Keep reading, so that nothing waits on a
        // full inbound queue.
        tokio::spawn(async move { while incoming.recv().await.is_some() {} });
        watch_dead(
            client.events(),
            conns.clone(),
            shared.pings_timed_out.clone(),
            |event| matches!(event, ClientEvent::PongTimeout { .. }).then_some(true),
        );
        handles.push(client.clone());
        clients.spawn(run_ws_client(
            client,
            c,
            request,
            fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(c)),
            plan,
            log.clone(),
            shared.clone(),
        ));
    }
    settle(clients, &shared.stop).await?;
    for client in handles {
        log.gauge(
            "queue len",
            client.stats().len as u64,
            QUEUE_CAPACITY as u64,
        );
        client.close().await;
    }
    Ok(())
}

/// One WebSocket client: a numbered message every few ms, at most `plan.window` unresolved, until told to stop;
/// then waits for every outcome. Each message enters the client's queue before the next is made, so the queue's
/// order is the seq order.
async fn run_ws_client(
    mut client: WsClient,
    c: u64,
    request: bool,
    mut rng: fastrand::Rng,
    plan: WsPlan,
    log: ClientLog,
    shared: WsShared,
) {
    let mut waiting = JoinSet::new();
    let mut seq = 0;
    let kind = if request { WS_REQUEST } else { WS_SEND };
    while !shared.stop.load(Ordering::Acquire) {
        tokio::time::sleep(ms(rng.u64(1..=plan.max_pause_ms))).await;
        while waiting.try_join_next().is_some() {}
        if waiting.len() >= plan.window {
            continue;
        }
        if ServiceExt::<Message>::ready(&mut client).await.is_err() {
            break;
        }
        seq += 1;
        log.issue(c, seq);
        let msg = Message::from(format!("{c} {seq} {kind}"));
        let (log, written) = (log.clone(), shared.written.clone());
        if request {
            let mut sender = client.clone();
            let mut reply = Box::pin(async move { sender.request(msg).await });
            // The first poll puts the request in the queue (its room is reserved), so the next one goes after it.
            let first = std::future::poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await;
            if let Poll::Ready(result) = first {
                log.resolve(c, seq, ws_request_outcome(c, seq, &result));
                continue;
            }
            waiting.spawn(async move {
                let result = reply.await;
                log.resolve(c, seq, ws_request_outcome(c, seq, &result));
            });
        } else {
            let sent = Service::call(&mut client, msg);
            waiting.spawn(async move {
                let outcome = match sent.await {
                    // Written, with no receipt: the checker holds it to what a maybe-delivered promises (no
                    // duplicate, no phantom); the run counts those that never arrived.
                    Ok(()) => {
                        lock(&written).push((c, seq));
                        Outcome::MaybeDelivered
                    }
                    Err(e) => Outcome::of_error(e.as_ref()),
                };
                log.resolve(c, seq, outcome);
            });
        }
    }
    while waiting.join_next().await.is_some() {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `Ok` only if the answer names this very request.
fn ws_request_outcome(c: u64, seq: u64, result: &Result<Message, BoxError>) -> Outcome {
    match result {
        Ok(answer) => match ws_line(answer.as_bytes()) {
            Some((ac, aseq, "ok")) if (ac, aseq) == (c, seq) => Outcome::Ok,
            _ => Outcome::Other(format!("answer {answer:?} to {c} {seq}")),
        },
        Err(e) => Outcome::of_error(e.as_ref()),
    }
}

/// Runs one seed of the WebSocket client: the server, the clients and the seed's schedule of faults; then the checks.
///
/// A seed replays its schedule and turmoil's network exactly, and so its verdict; the client's counts may differ
/// by a request or two between runs (ok against maybe delivered), where two of its tasks are ready in the same tick
/// and tokio's `select!` picks one at random.
fn run_ws_seed(seed: u64, plan: WsPlan, schedule: &Schedule) -> Result<SeedRun, SeedFailure> {
    let fail = |reason: String| SeedFailure {
        seed,
        test: "sim_ws_nothing_lost_over_seeds",
        reason,
    };
    let started = StdInstant::now();
    let server_log = ServerLog::new(1_000_000);
    let client_log = ClientLog::new(1_000_000);
    let shared = WsShared {
        conns: (0..plan.requesters + plan.senders)
            .map(|_| Conns::default())
            .collect(),
        ..WsShared::default()
    };
    let mut sim = build_sim(seed, schedule);
    let log = server_log.clone();
    let restart = shared.restart.clone();
    sim.host("server", move || ws_server(log.clone(), restart.clone()));
    sim.client(
        "client",
        ws_client_host(seed, plan, shared.clone(), client_log.clone()),
    );
    let (faults, silences) = drive(&mut sim, schedule, &shared.conns, &shared.stop, &|| {
        shared.restart.store(true, Ordering::Release);
    })
    .map_err(fail)?;
    let report = check(&server_log, &client_log, Mode::AtMostOnce);
    let written = lock(&shared.written).clone();
    let written_unreceived = written
        .iter()
        .filter(|&&(c, s)| server_log.count(c, s) == 0)
        .count() as u64;
    let run = SeedRun {
        seed,
        counts: report.counts().clone(),
        faults,
        silences,
        connections: shared.conns.iter().map(Conns::len).sum(),
        pings_timed_out: shared.pings_timed_out.load(Ordering::Relaxed),
        written: written.len() as u64,
        written_unreceived,
        sim_time: sim.elapsed(),
        wall: started.elapsed(),
    };
    verdict(&report, &run, plan.ping, schedule).map_err(fail)?;
    Ok(run)
}

#[test]
fn sim_ws_nothing_lost_over_seeds() {
    let summary = over_seeds(
        WS_CI_SEEDS,
        "sim_ws_nothing_lost_over_seeds",
        Schedule::draw_ws,
        &|seed| run_ws_seed(seed, WS_CLIENTS, &Schedule::draw_ws(seed)),
    );
    if summary.seeds >= 50 {
        assert!(summary.faults.contains_key("restart"), "no restart");
        assert!(
            summary.written > 0 && summary.not_sent + summary.maybe_delivered > 0,
            "{summary}"
        );
    }
}

#[test]
fn sim_ws_partition_detected_by_ping_within_interval_plus_timeout() {
    for (seed, start) in [(11, 600), (12, 655), (13, 730), (14, 790), (15, 849)] {
        let schedule = one_partition(start, 1200);
        let run = run_ws_seed(seed, WS_CLIENTS, &schedule).unwrap_or_else(|f| panic!("{f}"));
        let clients = (WS_CLIENTS.requesters + WS_CLIENTS.senders) as usize;
        assert_eq!(
            run.silences.len(),
            clients,
            "seed {seed}: a live link per client: {run:#?}"
        );
        assert!(
            run.pings_timed_out >= clients as u64,
            "seed {seed}: {run:#?}"
        );
        for silence in &run.silences {
            detected_in_time(seed, silence);
        }
        assert!(run.counts.maybe_delivered > 0, "{:?}", run.counts);
        println!(
            "seed {seed}: partition at {start} ms detected after {:?}",
            run.silences
                .iter()
                .filter_map(Silence::detected_after)
                .max()
        );
    }
}

#[test]
fn sim_ws_without_ping_a_partition_goes_unnoticed() {
    // The same partition with the ping off: no client finds its half-open socket dead, so the requests written into
    // it never get an answer or an outcome before the bound. (The request timeout is set past the bound here: it
    // would end them as `Elapsed` after 5 s, which is not detection of the dead link.)
    let plan = WsPlan {
        ping: false,
        request_timeout: SETTLE_BOUND * 2,
        ..WS_CLIENTS
    };
    let schedule = one_partition(600, 1200);
    let failure = run_ws_seed(11, plan, &schedule).expect_err("a silent link hangs its requests");
    println!("as expected without a ping: {}", failure.reason);
    assert!(
        failure.reason.contains("unresolved") || failure.reason.contains("Ran for duration"),
        "{}",
        failure.reason
    );
}

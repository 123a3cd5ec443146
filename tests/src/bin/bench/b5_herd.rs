//! B5 at 1000 clients: the herd after a server restart, with jittered backoff presets and with the jitter off.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_core::Event;
use connman_core::backoff::{Backoff, Exponential, ExponentialBuilder, Jitter, presets};
use connman_core::error::{BoxError, LinkLost};
use connman_queue::reconnect::{CloseHandle, Reconnect, ReconnectConfig, ReconnectLayer};
use connman_tcp::{Connection, Handler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, runtime,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B5",
    title: "herd after a server restart, 1000 clients",
    method: "Rounds: 5 (1 with `--quick`). A loopback server (listen backlog 4096) greets every connection with one byte and holds it; 1000 \
             clients (100 with `--quick`) connect and wait for the greeting. The server then closes its listener \
             and every connection, and listens again on the same port 300 ms later, before any client's first \
             backoff delay is over. A client is back when the greeting of a new connection arrives. Figures per \
             round: the gap from \"listening again\" to the first client back, the time until all are back, the \
             accepts per 10 ms window at the restarted server, and the clients back later than their schedule \
             allows (loss + the largest first delay the policy can draw + 100 ms). The spread is the busiest 10 ms \
             window over the mean of the windows that the jittered policy's first delay covers (gRPC: 0.8–1.2 s \
             after the loss, 40 windows; socket.io: 0.5–1.5 s, 100 windows); the same divisor is used with the \
             jitter off, so the figure shows the storm the jitter prevents. Ours is one `connman_tcp::Connection` \
             per client (its own backoff instance, so its own jitter draws), and, in rows of their own, one \
             connman-queue `Reconnect` per client over a make service that connects and reads the greeting (a task \
             polls it ready; its connection service fails once the server closes it); the peer is a tokio `TcpStream` loop \
             per client with the same policy (connect, read the greeting, hold until EOF, reset on success, \
             `tokio::time::sleep` the next delay). Each round measures the `Connection`s, the `Reconnect`s, then the peer, each in its own \
             outage. The ratio compares the time until all are back (peer / ours). Met (jittered presets): no \
             10 ms window above 2× the mean, and nobody back later than the schedule.",
    run,
};

/// How long the server stays down: shorter than every policy's shortest first delay.
const OUTAGE: Duration = Duration::from_millis(300);

/// The accept histogram's window.
const WINDOW: Duration = Duration::from_millis(10);

/// What a client may take beyond its scheduled attempt before it counts as late: connect, accept and greeting of a
/// loaded loopback server.
const LATE_SLACK: Duration = Duration::from_millis(100);

/// The greeting byte.
const GREETING: &[u8] = b"h";

/// A backoff policy under test.
#[derive(Debug, Clone, Copy)]
struct Policy {
    name: &'static str,
    builder: fn() -> ExponentialBuilder,
    /// The range the first delay is drawn from when jittered.
    first: (Duration, Duration),
    jitter: bool,
}

impl Policy {
    fn backoff(&self) -> BenchResult<Exponential> {
        let builder = (self.builder)();
        let builder = if self.jitter {
            builder
        } else {
            builder.jitter(Jitter::None)
        };
        builder
            .build()
            .map_err(|e| BenchError::new(format!("{}: {e}", self.name)))
    }

    /// The latest a client's first attempt after the loss can come.
    fn latest_first(&self) -> Duration {
        self.first.1
    }

    /// How many windows the jittered first delay covers.
    fn windows(&self) -> f64 {
        (self.first.1 - self.first.0).as_secs_f64() / WINDOW.as_secs_f64()
    }
}

const GRPC: Policy = Policy {
    name: "gRPC preset (1 s ×1.6 ±20 %)",
    builder: presets::grpc_builder,
    first: (Duration::from_millis(800), Duration::from_millis(1200)),
    jitter: true,
};

const SOCKETIO: Policy = Policy {
    name: "socket.io preset (1 s ×2 ±50 %)",
    builder: presets::socketio_builder,
    first: (Duration::from_millis(500), Duration::from_millis(1500)),
    jitter: true,
};

const fn jitter_off(policy: Policy, name: &'static str) -> Policy {
    Policy {
        name,
        jitter: false,
        ..policy
    }
}

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let clients = mode.pick(100, 1000);
    ensure_fds(clients * 2 + 256)?;
    let policies = if mode.is_quick() {
        vec![GRPC, jitter_off(GRPC, "gRPC preset, jitter off")]
    } else {
        vec![
            GRPC,
            jitter_off(GRPC, "gRPC preset, jitter off"),
            SOCKETIO,
            jitter_off(SOCKETIO, "socket.io preset, jitter off"),
        ]
    };
    // One round in the smoke mode: the herd takes seconds per outage.
    let rounds = mode.pick(1, mode.rounds());
    let rt = runtime()?;
    rt.block_on(async move {
        let mut server = HerdServer::start().await?;
        let mut rows = Vec::new();
        for policy in policies {
            let (mut conn, mut stack) = (Figures::default(), Figures::default());
            for _ in 0..rounds {
                let ours = herd(&mut server, clients, policy, Contender::Ours).await?;
                let tower = herd(&mut server, clients, policy, Contender::Stack).await?;
                let peer = herd(&mut server, clients, policy, Contender::Peer).await?;
                conn.push(&ours, &peer);
                stack.push(&tower, &peer);
            }
            rows.push(conn.row(clients, policy, "Connection"));
            rows.push(stack.row(clients, policy, "Reconnect stack"));
        }
        server.stop().await;
        Ok(rows)
    })
}

/// The paired figures of one of ours against the peer, round by round.
#[derive(Debug, Default)]
struct Figures {
    back: Pairs,
    gaps: Pairs,
    spreads: Pairs,
    late: Pairs,
}

impl Figures {
    fn push(&mut self, ours: &Herd, peer: &Herd) {
        self.back.push(ns(ours.all_back), ns(peer.all_back));
        self.gaps.push(ns(ours.first_back), ns(peer.first_back));
        self.spreads.push(ours.spread, peer.spread);
        self.late.push(ours.late as f64, peer.late as f64);
    }

    fn row(&self, clients: usize, policy: Policy, ours: &str) -> Row {
        let spread = Stats::of(&self.spreads.ours).map_or(f64::NAN, |s| s.max);
        let late = Stats::of(&self.late.ours).map_or(f64::NAN, |s| s.max);
        Row {
            scenario: format!("B5 herd {clients} clients, {}: all back", policy.name),
            ours: format!("{ours}: {}", fmt_ns(self.back.ours_median())),
            peer: format!("TcpStream loop: {}", fmt_ns(self.back.peer_median())),
            ratio: Stats::of(&self.back.ratios(Better::Lower)),
            reference: format!(
                "first back: ours {}, peer {}; busiest 10 ms / mean: ours {:.2} (worst {spread:.2}), peer {:.2}; \
                 late: ours {:.0} (worst {late:.0}), peer {:.0}",
                fmt_ns(self.gaps.ours_median()),
                fmt_ns(self.gaps.peer_median()),
                self.spreads.ours_median(),
                self.spreads.peer_median(),
                self.late.ours_median(),
                self.late.peer_median(),
            ),
            target: if policy.jitter {
                "busiest 10 ms ≤ 2× mean; nobody late".to_owned()
            } else {
                "none (the storm without jitter)".to_owned()
            },
            met: policy.jitter.then_some(spread <= 2.0 && late == 0.0),
        }
    }
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Which client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// `connman_tcp::Connection`.
    Ours,
    /// connman-queue's `Reconnect` over a make service that connects and reads the greeting.
    Stack,
    Peer,
}

/// What one outage showed.
#[derive(Debug, Clone, Copy)]
struct Herd {
    first_back: Duration,
    all_back: Duration,
    /// The busiest 10 ms window over the mean of the jitter's windows.
    spread: f64,
    late: usize,
}

/// Connects `clients` clients, restarts the server under them, and measures their return.
async fn herd(
    server: &mut HerdServer,
    clients: usize,
    policy: Policy,
    contender: Contender,
) -> BenchResult<Herd> {
    let probe = Probe::new(clients);
    let running = match contender {
        Contender::Ours => Running::Ours(
            (0..clients)
                .map(|i| ours(server.addr, policy, i, probe.clone()))
                .collect::<BenchResult<Vec<_>>>()?,
        ),
        Contender::Stack => {
            let (mut set, mut closes) = (JoinSet::new(), Vec::new());
            for i in 0..clients {
                let (task, close) = stack(server.addr, policy, i, probe.clone())?;
                set.spawn(task);
                closes.push(close);
            }
            Running::Stack(set, closes)
        }
        Contender::Peer => {
            let mut set = JoinSet::new();
            for i in 0..clients {
                set.spawn(peer(server.addr, policy.backoff()?, i, probe.clone()));
            }
            Running::Peer(set)
        }
    };
    let result = outage(server, clients, policy, &probe).await;
    match running {
        Running::Ours(conns) => conns.iter().for_each(Connection::disconnect),
        Running::Stack(mut set, closes) => {
            closes.iter().for_each(CloseHandle::close);
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        Running::Peer(mut set) => {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }
    result
}

enum Running {
    Ours(Vec<Connection>),
    Stack(JoinSet<()>, Vec<CloseHandle>),
    Peer(JoinSet<()>),
}

async fn outage(
    server: &mut HerdServer,
    clients: usize,
    policy: Policy,
    probe: &Probe,
) -> BenchResult<Herd> {
    let bound = Duration::from_secs(30);
    // Everyone connected and greeted.
    tokio::time::timeout(bound, probe.wait_all_since(None)).await?;
    server.stop().await;
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    server.restart().await?;
    let listening = Instant::now();
    tokio::time::timeout(bound, probe.wait_all_since(Some(stopped))).await?;

    let backs = probe.first_since(stopped);
    let first = backs.iter().min().copied().unwrap_or(listening);
    let last = backs.iter().max().copied().unwrap_or(listening);
    let schedule = stopped + policy.latest_first() + LATE_SLACK;
    let late = backs.iter().filter(|&&at| at > schedule).count();

    let accepts = server.accepts_since(listening);
    let mut windows: Vec<u64> = Vec::new();
    for at in &accepts {
        let i = ((*at - listening).as_nanos() / WINDOW.as_nanos()) as usize;
        if windows.len() <= i {
            windows.resize(i + 1, 0);
        }
        windows[i] += 1;
    }
    let busiest = windows.iter().copied().max().unwrap_or(0) as f64;
    let mean = clients as f64 / policy.windows();
    if accepts.len() < clients {
        return Err(BenchError::new(format!(
            "{} accepts after the restart for {clients} clients",
            accepts.len()
        )));
    }
    Ok(Herd {
        first_back: first.saturating_duration_since(listening),
        all_back: last.saturating_duration_since(listening),
        spread: busiest / mean,
        late,
    })
}

/// Records when each client got a greeting. One slot per client, written by its own task.
#[derive(Debug, Clone)]
struct Probe {
    greeted: Arc<Vec<Mutex<Vec<Instant>>>>,
}

impl Probe {
    fn new(clients: usize) -> Self {
        Self {
            greeted: Arc::new((0..clients).map(|_| Mutex::new(Vec::new())).collect()),
        }
    }

    fn greeted(&self, client: usize) {
        if let Some(slot) = self.greeted.get(client) {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            // A client is greeted once per connection; a few connections per round at most.
            if slot.len() < 64 {
                slot.push(Instant::now());
            }
        }
    }

    /// The first greeting of each client since `since`; only clients that have one.
    fn first_since(&self, since: Instant) -> Vec<Instant> {
        self.greeted
            .iter()
            .filter_map(|slot| {
                let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                slot.iter().copied().find(|&at| at >= since)
            })
            .collect()
    }

    /// Waits until every client has been greeted (since `since`, if given).
    async fn wait_all_since(&self, since: Option<Instant>) {
        loop {
            let all = self.greeted.iter().all(|slot| {
                let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                match since {
                    Some(since) => slot.iter().any(|&at| at >= since),
                    None => !slot.is_empty(),
                }
            });
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Ours: a supervised `Connection` per client.
fn ours(addr: SocketAddr, policy: Policy, client: usize, probe: Probe) -> BenchResult<Connection> {
    Connection::builder(addr, Greeted { client, probe })
        .backoff(policy.backoff()?)
        .connect()
        .map_err(|e| BenchError::new(format!("connection: {e}")))
}

#[derive(Debug)]
struct Greeted {
    client: usize,
    probe: Probe,
}

impl Handler for Greeted {
    fn on_data(&mut self, _data: Bytes) {
        self.probe.greeted(self.client);
    }

    fn on_event(&mut self, _event: &Event) {}
}

/// Ours, the tower way: a `Reconnect` whose make service connects and reads the greeting, and whose connection
/// service fails `poll_ready` once the server closes it. A task keeps polling it ready, which is all it takes to keep
/// the link up: `Reconnect` reconnects on its own schedule.
fn stack(
    addr: SocketAddr,
    policy: Policy,
    client: usize,
    probe: Probe,
) -> BenchResult<(impl Future<Output = ()> + Send + 'static, CloseHandle)> {
    let make = tower::service_fn(move |addr: SocketAddr| {
        let probe = probe.clone();
        async move {
            let mut stream = TcpStream::connect(addr).await?;
            let mut buf = [0u8; 64];
            if stream.read(&mut buf).await? == 0 {
                return Err(BoxError::from(LinkLost::new()));
            }
            probe.greeted(client);
            Ok(Held::hold(stream))
        }
    });
    let config = ReconnectConfig::builder(addr)
        .backoff(policy.backoff()?)
        .build()
        .map_err(|e| BenchError::new(format!("reconnect config: {e}")))?;
    let close = config.close_handle();
    let mut link: Reconnect<_, SocketAddr> = ReconnectLayer::new(config).layer(make);
    let task = async move {
        // Pending while the link is up; an error only once closed.
        let _ = poll_fn(|cx| Service::<()>::poll_ready(&mut link, cx)).await;
    };
    Ok((task, close))
}

/// A held connection as a service: ready never (nothing is sent), failed once the server closed it.
struct Held {
    closed: CancellationToken,
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _reader: Arc<DropGuard>,
}

impl Held {
    /// Reads `stream` until the server closes it, in a task that stops when the last clone is dropped.
    fn hold(mut stream: TcpStream) -> Self {
        let closed = CancellationToken::new();
        let stop = CancellationToken::new();
        let (eof, stopped) = (closed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    read = stream.read(&mut buf) => if !matches!(read, Ok(n) if n > 0) {
                        eof.cancel();
                        return;
                    },
                }
            }
        });
        Self {
            closed,
            wait: None,
            _reader: Arc::new(stop.drop_guard()),
        }
    }
}

impl Clone for Held {
    fn clone(&self) -> Self {
        Self {
            closed: self.closed.clone(),
            wait: None,
            _reader: self._reader.clone(),
        }
    }
}

impl Service<()> for Held {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let closed = self.closed.clone();
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(closed.cancelled_owned()));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(LinkLost::new().into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

/// The peer: connect, read the greeting, hold the link until it drops, then wait what the backoff says.
async fn peer(addr: SocketAddr, mut backoff: Exponential, client: usize, probe: Probe) {
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let mut buf = [0u8; 64];
            if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                backoff.reset();
                probe.greeted(client);
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }
        match backoff.next_delay() {
            Some(d) => tokio::time::sleep(d).await,
            None => return,
        }
    }
}

/// A server that greets and holds every connection, stops (listener and connections) and restarts on its port, and
/// records when it accepted each connection.
struct HerdServer {
    addr: SocketAddr,
    accepts: Arc<Mutex<Vec<Instant>>>,
    task: Option<JoinHandle<()>>,
}

impl HerdServer {
    async fn start() -> BenchResult<Self> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(serve(listener, accepts.clone())));
        Ok(Self {
            addr,
            accepts,
            task,
        })
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) -> BenchResult<()> {
        self.stop().await;
        lock(&self.accepts).clear();
        let listener = listen(self.addr)?;
        self.task = Some(tokio::spawn(serve(listener, self.accepts.clone())));
        Ok(())
    }

    fn accepts_since(&self, since: Instant) -> Vec<Instant> {
        lock(&self.accepts)
            .iter()
            .copied()
            .filter(|&at| at >= since)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listener on `addr` with address reuse and a backlog as deep as the system allows by default.
fn listen(addr: SocketAddr) -> BenchResult<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(4096)?)
}

/// Accepts, records, greets and holds every connection until aborted; aborting drops them all.
async fn serve(listener: tokio::net::TcpListener, accepts: Arc<Mutex<Vec<Instant>>>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                {
                    let mut accepts = lock(&accepts);
                    // Bounded: a few accepts per client per round.
                    if accepts.len() < 1 << 20 {
                        accepts.push(Instant::now());
                    }
                }
                conns.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if stream.write_all(GREETING).await.is_ok() {
                        let mut buf = [0u8; 64];
                        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Makes sure the process may open `needed` file descriptors: raises the soft limit to the hard one with
/// `prlimit` if it is lower, and fails with a clear message if even the hard limit is too low.
fn ensure_fds(needed: usize) -> BenchResult<()> {
    let (soft, hard) = nofile()?;
    if soft >= needed as u64 {
        return Ok(());
    }
    if hard >= needed as u64 {
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        if status.is_ok_and(|s| s.success()) && nofile()?.0 >= needed as u64 {
            return Ok(());
        }
    }
    Err(BenchError::new(format!(
        "B5 herd needs {needed} file descriptors; the limit is {soft} (hard {hard}): raise it with `ulimit -n {needed}`"
    )))
}

/// The soft and hard limits on open files, from `/proc/self/limits`.
fn nofile() -> BenchResult<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| BenchError::new("no open-file limit in /proc/self/limits"))?;
    let mut numbers = line.split_whitespace().filter_map(|w| {
        w.parse::<u64>()
            .ok()
            .or((w == "unlimited").then_some(u64::MAX))
    });
    match (numbers.next(), numbers.next()) {
        (Some(soft), Some(hard)) => Ok((soft, hard)),
        _ => Err(BenchError::new(format!(
            "cannot read the open-file limit: {line}"
        ))),
    }
}

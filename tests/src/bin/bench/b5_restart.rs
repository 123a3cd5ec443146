//! B5: recovery after a server restart, one client, the same fixed backoff schedule for ours and the peer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_core::Event;
use connman_core::backoff::{Backoff, Constant};
use connman_tcp::{Connection, Handler, Writer};
use connman_tests::flaky::FlakyServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, runtime,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B5",
    title: "recovery after a server restart",
    method: "A loopback echo server on `127.0.0.1:0` (`connman_tests::flaky::FlakyServer`, no greeting, no lifetime) \
             serves one client. Once the client has echoed, the server \
             closes its listener and every connection, and listens again on the same port 2.5 backoff delays \
             later; the figure is the gap from \"listening again\" to the client's first successful echo. Both \
             clients use `Constant` backoff of 20 ms, so attempts fall at loss + 20, 40, 60 ms (plus the timer's \
             rounding to whole milliseconds) and the next scheduled attempt comes about 10 ms after the restart. \
             Both clients also record when each attempt starts (ours through `Handler::on_event`), and the \
             reference is the median delay from the restart to that next attempt. Ours is \
             `connman_tcp::Connection`, which echoes through its `Writer` on `on_connect`/`on_reconnect`; the peer \
             is a plain tokio `TcpStream` loop driven by the same `connman_core::backoff::Constant` (reset on \
             success, `tokio::time::sleep` between attempts). Each round measures ours, then the peer, each in its \
             own outage. Met: our median gap is at most the peer's next attempt + 1 ms.",
    run,
};

/// The fixed delay between attempts of both clients.
const DELAY: Duration = Duration::from_millis(20);

/// What both clients send and expect back.
const PING: &[u8] = b"ping";

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let rounds = mode.pick(3, 9);
    let bound = Duration::from_secs(5);
    rt.block_on(async move {
        // No greeting and no lifetime: a plain echo server that stops and restarts on the same port.
        let server = FlakyServer::builder()
            .greeting(Bytes::new())
            .start()
            .await?;
        let mut gaps = Pairs::default();
        let mut next_attempts = Pairs::default();
        for _ in 0..rounds {
            let (ours_gap, ours_next) = {
                let (probe, mut echoes, mut attempts) = Probe::new();
                let client = ours(server.addr(), probe);
                let gap = gap(&server, &mut echoes, &mut attempts, bound).await;
                client.disconnect();
                gap?
            };
            let (peer_gap, peer_next) = {
                let (probe, mut echoes, mut attempts) = Probe::new();
                let client = tokio::spawn(peer(server.addr(), probe));
                let gap = gap(&server, &mut echoes, &mut attempts, bound).await;
                client.abort();
                gap?
            };
            gaps.push(ns(ours_gap), ns(peer_gap));
            next_attempts.push(ns(ours_next), ns(peer_next));
        }
        server.stop().await;
        let ratio = Stats::of(&gaps.ratios(Better::Lower));
        Ok(vec![Row {
            scenario: "B5 restart → first echo, 1 client".to_owned(),
            ours: format!("Connection: {}", fmt_ns(gaps.ours_median())),
            peer: format!("TcpStream loop: {}", fmt_ns(gaps.peer_median())),
            ratio,
            reference: format!(
                "next attempt after the restart: ours {}, peer {}",
                fmt_ns(next_attempts.ours_median()),
                fmt_ns(next_attempts.peer_median())
            ),
            target: "≥ 1.0: gap ≤ next scheduled attempt + 1 ms".to_owned(),
            met: Some(gaps.ours_median() <= next_attempts.peer_median() + 1e6),
        }])
    })
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Waits for the client to echo, stops the server and restarts it 2.5 delays later; returns the delays from the
/// restart to the first echo and to the first connect attempt after it.
async fn gap(
    server: &FlakyServer,
    echoes: &mut mpsc::Receiver<Instant>,
    attempts: &mut mpsc::Receiver<Instant>,
    bound: Duration,
) -> BenchResult<(Duration, Duration)> {
    next_echo(echoes, bound).await?;
    server.stop().await;
    let stopped = Instant::now();
    tokio::time::sleep_until((stopped + DELAY * 5 / 2).into()).await;
    server.restart().await?;
    let listening = Instant::now();
    let echoed = loop {
        let at = next_echo(echoes, bound).await?;
        if at >= listening {
            break at;
        }
    };
    let mut attempt = None;
    while let Ok(at) = attempts.try_recv() {
        if at >= listening {
            attempt.get_or_insert(at);
        }
    }
    let attempt =
        attempt.ok_or_else(|| BenchError::new("no connect attempt was seen after the restart"))?;
    Ok((echoed - listening, attempt - listening))
}

async fn next_echo(echoes: &mut mpsc::Receiver<Instant>, bound: Duration) -> BenchResult<Instant> {
    tokio::time::timeout(bound, echoes.recv())
        .await?
        .ok_or_else(|| BenchError::new("liveness: the client stopped reporting echoes"))
}

/// The peer: connect, echo once, hold the link until it drops, then wait what the backoff says and try again.
async fn peer(addr: SocketAddr, probe: Probe) {
    let mut backoff = Constant::new(DELAY);
    loop {
        probe.attempt();
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            backoff.reset();
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 64];
            if stream.write_all(PING).await.is_ok()
                && stream.read_exact(&mut buf[..PING.len()]).await.is_ok()
            {
                probe.echoed();
                // Hold the link until the server goes away.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }
        match backoff.next_delay() {
            Some(d) => tokio::time::sleep(d).await,
            None => return,
        }
    }
}

/// Ours: a supervised `Connection` that echoes once on every connect, through its `Writer`.
fn ours(addr: SocketAddr, probe: Probe) -> Connection {
    let (up_tx, mut up_rx) = mpsc::channel::<Writer>(4);
    let conn = Connection::builder(
        addr,
        Echoer {
            probe,
            up: up_tx,
            writer: None,
            received: 0,
        },
    )
    .backoff(Constant::new(DELAY))
    .connect()
    .expect("inside a runtime");
    tokio::spawn(async move {
        while let Some(writer) = up_rx.recv().await {
            // A failed write means the link is gone again; the next connect sends another.
            let _ = writer.write_all(PING).await;
        }
    });
    conn
}

/// Reports echoes and connect attempts to the measuring task. Bounded channels, never waited on: a report that does
/// not fit is dropped, and the measurement then fails its liveness bound rather than hang.
#[derive(Debug, Clone)]
struct Probe {
    echoes: mpsc::Sender<Instant>,
    attempts: mpsc::Sender<Instant>,
}

impl Probe {
    fn new() -> (Self, mpsc::Receiver<Instant>, mpsc::Receiver<Instant>) {
        let (echoes, echoes_rx) = mpsc::channel(16);
        let (attempts, attempts_rx) = mpsc::channel(256);
        (Self { echoes, attempts }, echoes_rx, attempts_rx)
    }

    fn echoed(&self) {
        let _ = self.echoes.try_send(Instant::now());
    }

    fn attempt(&self) {
        let _ = self.attempts.try_send(Instant::now());
    }
}

/// The handler of our client.
#[derive(Debug)]
struct Echoer {
    probe: Probe,
    up: mpsc::Sender<Writer>,
    /// The writer from `on_connect`; it stays valid across reconnects.
    writer: Option<Writer>,
    received: usize,
}

impl Handler for Echoer {
    fn on_connect(&mut self, writer: Writer) {
        self.received = 0;
        let _ = self.up.try_send(writer.clone());
        self.writer = Some(writer);
    }

    fn on_reconnect(&mut self) {
        self.received = 0;
        if let Some(writer) = &self.writer {
            let _ = self.up.try_send(writer.clone());
        }
    }

    fn on_data(&mut self, data: Bytes) {
        self.received += data.len();
        if self.received >= PING.len() {
            self.received = 0;
            self.probe.echoed();
        }
    }

    fn on_event(&mut self, event: &Event) {
        if matches!(event, Event::Connecting { .. }) {
            self.probe.attempt();
        }
    }
}

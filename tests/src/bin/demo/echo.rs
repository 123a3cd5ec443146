//! Supervised `Connection`s and a named `Pool` pinging the flaky echo server (the connman seed's `runTest.sh`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::Event;
use connman_pool::pool::Pools;
use connman_tcp::{Connection, Handler, HostPort, Writer};
use connman_tests::flaky::FlakyServer;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, sleep};

use crate::report::{Clock, Row};

/// How often each connection pings.
const PING_EVERY: Duration = Duration::from_millis(100);
/// How long the flaky server keeps each connection (`esrv.js` used 5 s).
const LIFETIME: Duration = Duration::from_secs(3);
/// How long the listener stays down in the middle of the run.
const OUTAGE: Duration = Duration::from_millis(2500);

pub(crate) async fn run(clock: Clock, total: Duration) -> Result<Vec<Row>, String> {
    let server = FlakyServer::builder()
        .lifetime(Some(LIFETIME))
        .start()
        .await
        .map_err(|e| format!("cannot start the flaky server: {e}"))?;
    let port = server.port();
    clock.say(
        "echo",
        &format!("flaky echo server on 127.0.0.1:{port}, ends each connection after {LIFETIME:?}"),
    );

    // Two single connections (by name and by address, as in runTest.sh) and a pool of two.
    let pools: Pools<Connection> = Pools::new();
    let mut pingers = Vec::new();
    for (key, host) in [("localhost", "localhost"), ("127.0.0.1", "127.0.0.1")] {
        let (handler, state) = Pinger::new(key);
        let conn = pools
            .connect(key, || {
                Connection::connect(HostPort::new(host, port), handler).expect("inside a runtime")
            })
            .map_err(|e| e.to_string())?;
        watch_events(&clock, key, &conn);
        pingers.push(state);
    }
    // A second connection under a taken key is refused, never an orphaned socket (CN-16).
    if let Err(e) = pools.connect("localhost", || -> Connection {
        unreachable!("the key is taken")
    }) {
        clock.say(
            "echo",
            &format!("second connect under \"localhost\" refused: {e}"),
        );
    }
    let pool = pools.create_pool("pingers").map_err(|e| e.to_string())?;
    for i in 0..2 {
        let name = format!("pool[{i}]");
        let (handler, state) = Pinger::new(&name);
        let index =
            pool.add(Connection::connect(server.addr(), handler).expect("inside a runtime"));
        if let Some(conn) = pool.get(index) {
            watch_events(&clock, &name, &conn);
        }
        pingers.push(state);
    }

    let stop_pinging = Instant::now() + total.saturating_sub(Duration::from_millis(2500));
    let pinging: Vec<_> = pingers
        .iter()
        .map(|p| tokio::spawn(ping_loop(p.clone(), stop_pinging)))
        .collect();

    // In the middle of the run, the listener goes away for a while: backoff grows, then everyone comes back.
    sleep(total.mul_f64(0.35)).await;
    clock.say("echo", &format!("server stops listening for {OUTAGE:?}"));
    server.stop().await;
    sleep(OUTAGE).await;
    server
        .restart()
        .await
        .map_err(|e| format!("cannot restart the flaky server: {e}"))?;
    clock.say("echo", "server listens again on the same port");

    for task in pinging {
        task.await.map_err(|e| e.to_string())?;
    }
    // Let the last echoes come home, then disconnect everything at once.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while pingers.iter().any(|p| p.lock().pending_count() > 0) && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    clock.say("echo", "disconnect_all()");
    pools.disconnect_all();
    for key in ["localhost", "127.0.0.1"] {
        if let Some(conn) = pools.connection(key) {
            conn.closed().await;
        }
    }
    if let Some(pool) = pools.pool("pingers") {
        for conn in pool.iter() {
            conn.closed().await;
        }
    }

    let mut row = Row::new("echo");
    for p in &pingers {
        let s = p.lock();
        row.sent += s.sent;
        row.ok += s.ok;
        row.maybe_delivered += s.maybe.len() as u64;
        row.not_sent += s.not_sent;
        row.lost += s.pending.len() as u64;
        row.mismatched += s.mismatched;
        row.reconnects += s.reconnects;
        row.latencies.extend_from_slice(&s.latencies);
    }
    row.note = format!(
        "{} connections, server accepted {}",
        pingers.len(),
        server.accepted()
    );
    Ok(vec![row])
}

/// Prints a connection's lifecycle events as they happen.
fn watch_events(clock: &Clock, name: &str, conn: &Connection) {
    let mut events = conn.events();
    let clock = clock.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let closed = matches!(event, Event::Closed { .. });
                    clock.say(&name, &event.to_string());
                    if closed {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => clock.say(&name, &format!("({n} events skipped)")),
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// The per-connection bookkeeping of pings: what was written and what came back.
#[derive(Debug, Default)]
struct PingState {
    name: String,
    writer: Option<Writer>,
    next_seq: u64,
    /// Written, waiting for the echo: seq → when it was written.
    pending: HashMap<u64, Instant>,
    /// Written, then the link was lost before the echo.
    maybe: HashSet<u64>,
    buf: Vec<u8>,
    sent: u64,
    ok: u64,
    not_sent: u64,
    mismatched: u64,
    reconnects: u64,
    latencies: Vec<Duration>,
}

impl PingState {
    fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"hello" {
            return;
        }
        let parsed = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.rsplit_once(' '))
            .filter(|(name, _)| *name == self.name)
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        match parsed {
            Some(seq) => {
                if let Some(at) = self.pending.remove(&seq) {
                    self.ok += 1;
                    self.latencies.push(at.elapsed());
                } else if self.maybe.remove(&seq) {
                    // Counted as maybe-delivered when the link dropped, but the echo made it after all.
                    self.ok += 1;
                } else {
                    self.mismatched += 1;
                }
            }
            None => self.mismatched += 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Shared(Arc<Mutex<PingState>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PingState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handler: keeps the writer, matches echoes, and turns unanswered pings into maybe-delivered on a reset.
#[derive(Debug)]
struct Pinger(Shared);

impl Pinger {
    fn new(name: &str) -> (Self, Shared) {
        let shared = Shared(Arc::new(Mutex::new(PingState {
            name: name.to_owned(),
            ..PingState::default()
        })));
        (Self(shared.clone()), shared)
    }
}

impl Handler for Pinger {
    fn on_connect(&mut self, writer: Writer) {
        self.0.lock().writer = Some(writer);
    }

    fn on_reconnect(&mut self) {
        self.0.lock().reconnects += 1;
    }

    fn on_reset(&mut self) {
        let mut s = self.0.lock();
        s.buf.clear();
        let unanswered: Vec<u64> = s.pending.drain().map(|(seq, _)| seq).collect();
        s.maybe.extend(unanswered);
    }

    fn on_data(&mut self, data: Bytes) {
        let mut s = self.0.lock();
        s.buf.extend_from_slice(&data);
        while let Some(end) = s.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = s.buf.drain(..=end).take(end).collect();
            s.on_line(&line);
        }
        if s.buf.len() > 4096 {
            // No line is this long: the stream is garbage.
            s.buf.clear();
            s.mismatched += 1;
        }
    }
}

async fn ping_loop(state: Shared, until: Instant) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let (writer, seq, line) = {
            let mut s = state.lock();
            let Some(writer) = s.writer.clone() else {
                s.not_sent += 1;
                continue;
            };
            s.next_seq += 1;
            let seq = s.next_seq;
            s.pending.insert(seq, Instant::now());
            (writer, seq, format!("{} {seq}\n", s.name))
        };
        match writer.write_all(line.as_bytes()).await {
            Ok(()) => state.lock().sent += 1,
            Err(e) if e.is_io() => {
                // Part of it may be on the wire: counted as sent; the reset turns it into maybe-delivered.
                state.lock().sent += 1;
            }
            Err(_) => {
                // Not connected or closed: provably never written.
                let mut s = state.lock();
                s.pending.remove(&seq);
                s.not_sent += 1;
            }
        }
    }
}

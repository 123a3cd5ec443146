//! Unit tests of [`Connection`] on paused time, over in-memory duplex streams from a scripted connector.

use super::*;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use connman_core::backoff::Constant;
use connman_core::lifecycle::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What the scripted connector does on its next attempt.
enum Outcome {
    /// Hands out this end of a duplex pair.
    Connect(DuplexStream),
    /// Fails with this error kind.
    Fail(io::ErrorKind),
    /// Waits for a stream from the test; the attempt is aborted if its sender is dropped or the attempt is.
    Later(oneshot::Receiver<DuplexStream>),
    /// Never completes.
    Hang,
}

/// A connector that plays a script of outcomes (refusing once it runs out) and records when each attempt started.
#[derive(Clone, Default)]
struct Script {
    inner: Arc<Mutex<ScriptInner>>,
}

#[derive(Default)]
struct ScriptInner {
    outcomes: VecDeque<Outcome>,
    attempts: Vec<Instant>,
}

impl Script {
    fn push(&self, outcome: Outcome) {
        self.inner.lock().unwrap().outcomes.push_back(outcome);
    }

    /// Scripts a successful connect and returns the server's end.
    fn accept(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.push(Outcome::Connect(client));
        server
    }

    fn attempts(&self) -> Vec<Instant> {
        self.inner.lock().unwrap().attempts.clone()
    }

    fn connector(&self) -> Script {
        self.clone()
    }
}

impl Service<&'static str> for Script {
    type Response = DuplexStream;
    type Error = io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _target: &'static str) -> Self::Future {
        let outcome = {
            let mut inner = self.inner.lock().unwrap();
            inner.attempts.push(Instant::now());
            inner.outcomes.pop_front()
        };
        Box::pin(async move {
            match outcome {
                Some(Outcome::Connect(io)) => Ok(io),
                Some(Outcome::Fail(kind)) => Err(kind.into()),
                Some(Outcome::Later(rx)) => rx
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::ConnectionAborted)),
                Some(Outcome::Hang) => std::future::pending().await,
                None => Err(io::ErrorKind::ConnectionRefused.into()),
            }
        })
    }
}

use crate::testing::{Call, Probe, Recorder};

fn recorder() -> (Recorder, Probe) {
    crate::testing::recorder(None)
}

fn is_connect(c: &Call) -> bool {
    matches!(c, Call::Connect)
}
fn is_reconnect(c: &Call) -> bool {
    matches!(c, Call::Reconnect)
}
fn is_reset(c: &Call) -> bool {
    matches!(c, Call::Reset)
}
fn is_close(c: &Call) -> bool {
    matches!(c, Call::Close)
}
fn is_failed(c: &Call) -> bool {
    matches!(c, Call::Event(Event::ConnectFailed { .. }))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn connect(script: &Script, handler: Recorder) -> Builder<Script, &'static str, Recorder> {
    Connection::builder("mock", handler).connector(script.connector())
}

fn connect_with<H: Handler>(script: &Script, handler: H) -> Builder<Script, &'static str, H> {
    Connection::builder("mock", handler).connector(script.connector())
}

/// Offsets of the attempts from the first one.
fn offsets(attempts: &[Instant]) -> Vec<Duration> {
    attempts.iter().map(|t| *t - attempts[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn cn_01_invalid_target_is_a_typed_fatal_error() {
    let (rec, mut probe) = recorder();
    let target: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let conn = Connection::connect(target, rec).expect("inside a runtime");
    assert_eq!(conn.closed().await, CloseReason::Fatal);
    let Call::Event(Event::ConnectFailed {
        error, next_delay, ..
    }) = probe.until(is_failed).await
    else {
        unreachable!()
    };
    let error = error
        .downcast_ref::<ConnectError>()
        .expect("a ConnectError");
    assert!(error.is_invalid_target());
    assert_eq!(next_delay, None);
    assert_eq!(probe.count(is_failed), 1);
    assert_eq!(probe.count(is_close), 1);
}

#[tokio::test(start_paused = true)]
async fn cn_02_connecting_starts_on_construction() {
    let script = Script::default();
    script.push(Outcome::Hang);
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe
        .until(|c| matches!(c, Call::Event(Event::Connecting { attempt: 1 })))
        .await;
    assert_eq!(script.attempts().len(), 1);
    assert_eq!(*conn.state().borrow(), State::Connecting { attempt: 1 });
}

#[tokio::test(start_paused = true)]
async fn cn_03_on_connect_once_then_on_reconnect() {
    let script = Script::default();
    let first = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    // Three more links, each lost in turn.
    let mut server = first;
    for _ in 0..3 {
        let next = script.accept();
        drop(server);
        probe.until(is_reconnect).await;
        server = next;
    }
    drop(server);
    let calls = probe.calls();
    let order: Vec<&str> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Connect => Some("connect"),
            Call::Reconnect => Some("reconnect"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["connect", "reconnect", "reconnect", "reconnect"]);
}

#[tokio::test(start_paused = true)]
async fn cn_04_lost_link_resets_then_reconnects_after_backoff() {
    let script = Script::default();
    let server = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    let _second = script.accept();
    let lost_at = Instant::now();
    drop(server);
    probe.until(is_reset).await;
    probe.until(is_reconnect).await;
    // connman waits 20 ms before reconnecting after a loss.
    assert_eq!(*script.attempts().last().unwrap() - lost_at, ms(20));
    let kinds: Vec<&str> = probe
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Event(Event::Disconnected { .. }) => Some("disconnected"),
            Call::Reset => Some("reset"),
            Call::Event(Event::Connecting { .. }) => Some("connecting"),
            Call::Reconnect => Some("reconnect"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "connecting",
            "disconnected",
            "reset",
            "connecting",
            "reconnect"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cn_05_failed_attempts_are_events_not_resets() {
    let script = Script::default();
    for _ in 0..3 {
        script.push(Outcome::Fail(io::ErrorKind::ConnectionRefused));
    }
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    assert_eq!(probe.count(is_failed), 3);
    assert_eq!(probe.count(is_reset), 0);
    assert_eq!(probe.count(is_connect), 1);
}

#[tokio::test(start_paused = true)]
async fn cn_06_errors_are_events_not_panics() {
    let script = Script::default();
    script.push(Outcome::Fail(io::ErrorKind::ConnectionRefused));
    script.push(Outcome::Fail(io::ErrorKind::PermissionDenied));
    script.push(Outcome::Fail(io::ErrorKind::Other));
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    let mut events = conn.events();
    probe.until(is_connect).await;
    let kinds: Vec<io::ErrorKind> = probe
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Event(Event::ConnectFailed { error, .. }) => Some(
                error
                    .downcast_ref::<io::Error>()
                    .expect("the io error")
                    .kind(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::Other
        ]
    );
    // The same events reach subscribers.
    let mut failed = 0;
    while let Ok(event) = events.try_recv() {
        failed += usize::from(matches!(event, Event::ConnectFailed { .. }));
    }
    assert_eq!(failed, 3);
    assert!(conn.state().borrow().is_up());
}

#[tokio::test(start_paused = true)]
async fn cn_07_data_arrives_as_raw_chunks() {
    let script = Script::default();
    let mut server = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    server.write_all(b"hello\r\n").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 7 {
        if let Call::Data(chunk) = probe.until(|c| matches!(c, Call::Data(_))).await {
            got.extend_from_slice(&chunk);
        }
    }
    server.write_all(&[0, 159, 146, 150]).await.unwrap();
    while got.len() < 11 {
        if let Call::Data(chunk) = probe.until(|c| matches!(c, Call::Data(_))).await {
            got.extend_from_slice(&chunk);
        }
    }
    // No framing and no decoding: the bytes as sent, invalid UTF-8 included.
    assert_eq!(got, b"hello\r\n\x00\x9f\x92\x96");
}

#[tokio::test(start_paused = true)]
async fn cn_08_backoff_schedule_to_the_instant() {
    let script = Script::default();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    for _ in 0..6 {
        probe.until(is_failed).await;
    }
    // Attempts after waits of 20, 40, 80, 160, 320 ms: connman's doubling from 10 ms.
    assert_eq!(
        offsets(&script.attempts())[..6],
        [0, 20, 60, 140, 300, 620].map(ms)
    );
    let delays: Vec<Option<Duration>> = probe
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Event(Event::ConnectFailed { next_delay, .. }) => Some(*next_delay),
            _ => None,
        })
        .take(3)
        .collect();
    assert_eq!(delays, [Some(ms(20)), Some(ms(40)), Some(ms(80))]);
}

#[tokio::test(start_paused = true)]
async fn cn_09_success_resets_the_backoff() {
    let script = Script::default();
    for _ in 0..3 {
        script.push(Outcome::Fail(io::ErrorKind::ConnectionRefused));
    }
    let server = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    assert_eq!(offsets(&script.attempts()), [0, 20, 60, 140].map(ms));
    let _next = script.accept();
    let lost = Instant::now();
    drop(server);
    probe.until(is_reconnect).await;
    // Back to the first delay after a good connection.
    assert_eq!(*script.attempts().last().unwrap() - lost, ms(20));
}

#[tokio::test(start_paused = true)]
async fn cn_10_max_attempts_gives_up_with_closed_gave_up() {
    let script = Script::default();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec)
        .backoff(Constant::new(ms(100)).with_max_attempts(2).unwrap())
        .connect()
        .expect("inside a runtime");
    assert_eq!(conn.closed().await, CloseReason::GaveUp);
    assert_eq!(offsets(&script.attempts()), [0, 100, 200].map(ms));
    probe.until(is_close).await;
    assert_eq!(probe.count(is_close), 1);
    assert!(matches!(
        probe.calls().iter().rev().nth(1),
        Some(Call::Event(Event::Closed {
            reason: CloseReason::GaveUp
        }))
    ));
}

#[tokio::test(start_paused = true)]
async fn cn_11_connect_timeout_bounds_each_attempt() {
    let script = Script::default();
    script.push(Outcome::Hang);
    script.push(Outcome::Hang);
    let (rec, mut probe) = recorder();
    let start = Instant::now();
    let _conn = connect(&script, rec)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .expect("inside a runtime");
    let Call::Event(Event::ConnectFailed { error, .. }) = probe.until(is_failed).await else {
        unreachable!()
    };
    assert!(error.downcast_ref::<ConnectError>().unwrap().is_timed_out());
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
    probe.until(is_failed).await;
    // Each attempt gets 3 s, with the backoff wait (20 ms) between them.
    assert_eq!(offsets(&script.attempts()), [ms(0), ms(3020)]);
    assert_eq!(Instant::now() - start, ms(6020));
}

#[tokio::test(start_paused = true)]
async fn cn_11_default_connect_timeout_is_ten_seconds() {
    let script = Script::default();
    script.push(Outcome::Hang);
    let (rec, mut probe) = recorder();
    let start = Instant::now();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_failed).await;
    assert_eq!(Instant::now() - start, DEFAULT_CONNECT_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn cn_12_disconnect_while_up_closes_the_socket_for_good() {
    let script = Script::default();
    let mut server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    conn.disconnect();
    assert_eq!(conn.closed().await, CloseReason::Requested);
    // The peer sees the end of the stream.
    let mut buf = [0; 8];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(script.attempts().len(), 1);
    assert!(conn.is_closed());
}

#[tokio::test(start_paused = true)]
async fn cn_13_disconnect_during_backoff_never_reconnects() {
    let script = Script::default();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec)
        .backoff(Constant::new(Duration::from_secs(5)))
        .connect()
        .expect("inside a runtime");
    probe.until(is_failed).await;
    assert!(matches!(
        *conn.state().borrow(),
        State::Backoff { attempt: 2, .. }
    ));
    conn.disconnect();
    conn.closed().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.attempts().len(), 1);
    assert_eq!(probe.count(is_close), 1);
}

#[tokio::test(start_paused = true)]
async fn cn_14_controlled_disconnect_calls_on_close_not_on_reset() {
    let script = Script::default();
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    conn.disconnect();
    conn.disconnect();
    conn.closed().await;
    probe.until(is_close).await;
    assert_eq!(probe.count(is_reset), 0);
    assert_eq!(probe.count(is_close), 1);
    assert!(
        !probe
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Event(Event::Disconnected { .. })))
    );
    assert!(matches!(probe.calls().last(), Some(Call::Close)));
}

#[tokio::test(start_paused = true)]
async fn cn_15_user_half_close_is_a_lost_link_and_reconnects() {
    let script = Script::default();
    let mut server = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    let _second = script.accept();
    let writer = probe.writer();
    writer.shutdown().await.unwrap();
    // The peer sees the FIN and closes its side in turn, as esrv.js does on 'end'.
    let mut buf = [0; 8];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    drop(server);
    probe.until(is_reset).await;
    probe.until(is_reconnect).await;
}

#[tokio::test(start_paused = true)]
async fn cn_15_writer_disconnect_ends_for_good() {
    let script = Script::default();
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    probe.writer().disconnect();
    assert_eq!(conn.closed().await, CloseReason::Requested);
    assert_eq!(probe.count(is_reset), 0);
}

#[tokio::test(start_paused = true)]
async fn cn_24_disconnect_while_connecting_aborts_the_attempt() {
    let script = Script::default();
    let (late_tx, late_rx) = oneshot::channel();
    script.push(Outcome::Later(late_rx));
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe
        .until(|c| matches!(c, Call::Event(Event::Connecting { .. })))
        .await;
    conn.disconnect();
    assert_eq!(conn.closed().await, CloseReason::Requested);
    // The attempt was dropped: a socket that would arrive now has nowhere to go.
    let (client, _server) = tokio::io::duplex(64);
    assert!(late_tx.send(client).is_err());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.attempts().len(), 1);
    assert_eq!(probe.count(is_connect), 0);
    assert_eq!(probe.count(is_reset), 0);
    assert_eq!(probe.count(is_close), 1);
}

#[tokio::test(start_paused = true)]
async fn writer_is_not_connected_while_down_and_closed_at_the_end() {
    let script = Script::default();
    let server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec)
        .backoff(Constant::new(Duration::from_secs(5)))
        .connect()
        .expect("inside a runtime");
    probe.until(is_connect).await;
    let writer = conn.writer();
    assert!(writer.is_connected());
    drop(server);
    probe.until(is_reset).await;
    let err = writer.write_all(b"x").await.unwrap_err();
    assert!(err.is_not_connected(), "{err}");
    assert!(!writer.is_connected());
    conn.disconnect();
    conn.closed().await;
    assert!(writer.write_all(b"x").await.unwrap_err().is_closed());
}

#[tokio::test(start_paused = true)]
async fn writer_survives_a_reconnect() {
    let script = Script::default();
    let mut first = script.accept();
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    let writer = probe.writer();
    writer.write_all(b"one").await.unwrap();
    let mut buf = [0; 3];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one");

    let mut second = script.accept();
    drop(first);
    probe.until(is_reconnect).await;
    writer.write_all(b"two").await.unwrap();
    second.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
}

#[tokio::test(start_paused = true)]
async fn peer_closing_mid_write_is_a_typed_error_and_reconnects() {
    let script = Script::default();
    // A small pipe: a large write blocks until the peer reads, and the peer closes instead.
    let (client, server) = tokio::io::duplex(16);
    script.push(Outcome::Connect(client));
    let (rec, mut probe) = recorder();
    let _conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    let _next = script.accept();
    let writer = probe.writer();
    let write = tokio::spawn(async move { writer.write_all(&[7; 4096]).await });
    tokio::task::yield_now().await;
    drop(server);
    let err = write.await.unwrap().unwrap_err();
    assert!(err.is_io() || err.is_not_connected(), "{err:?}");
    probe.until(is_reset).await;
    probe.until(is_reconnect).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_disconnects() {
    let script = Script::default();
    let mut server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    let other = conn.clone();
    probe.until(is_connect).await;
    drop(conn);
    assert!(!other.is_closed());
    drop(other);
    probe.until(is_close).await;
    let mut buf = [0; 1];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn state_watch_follows_the_lifecycle() {
    let script = Script::default();
    script.push(Outcome::Fail(io::ErrorKind::ConnectionRefused));
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let start = Instant::now();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    let mut state = conn.state();
    let backoff = *state
        .wait_for(|s| matches!(s, State::Backoff { .. }))
        .await
        .unwrap();
    assert_eq!(
        backoff,
        State::Backoff {
            attempt: 2,
            until: (start + ms(20)).into_std()
        }
    );
    state.wait_for(State::is_up).await.unwrap();
    probe.until(is_connect).await;
    conn.disconnect();
    state.wait_for(State::is_closed).await.unwrap();
    // `Closed` is published once `on_close` has run.
    assert!(matches!(probe.calls().last(), Some(Call::Close)));
}

#[tokio::test(start_paused = true)]
async fn min_uptime_keeps_backing_off_on_a_flapping_peer() {
    let script = Script::default();
    let (rec, mut probe) = recorder();
    let server = script.accept();
    let _conn = connect(&script, rec)
        .min_uptime(Duration::from_secs(1))
        .connect()
        .expect("inside a runtime");
    probe.until(is_connect).await;
    // The peer accepts and drops at once, three times.
    let mut server = server;
    let mut lost = Vec::new();
    for _ in 0..3 {
        let next = script.accept();
        lost.push(Instant::now());
        drop(server);
        probe.until(is_reconnect).await;
        server = next;
    }
    let attempts = script.attempts();
    let waits: Vec<Duration> = lost
        .iter()
        .zip(&attempts[1..])
        .map(|(l, a)| *a - *l)
        .collect();
    assert_eq!(waits, [20, 40, 80].map(ms));
    drop(server);
}

#[tokio::test(start_paused = true)]
async fn disconnect_trait_ends_the_connection() {
    use connman_core::supervise::Disconnect;
    let script = Script::default();
    let _server = script.accept();
    let (rec, mut probe) = recorder();
    let conn = connect(&script, rec).connect().expect("inside a runtime");
    probe.until(is_connect).await;
    let members: Vec<Box<dyn Disconnect>> = vec![Box::new(conn.clone())];
    members.iter().for_each(|m| m.disconnect());
    assert_eq!(conn.closed().await, CloseReason::Requested);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_ends_the_connection_without_hanging_writers() {
    struct Panics;
    impl Handler for Panics {
        fn on_data(&mut self, _: Bytes) {
            panic!("handler bug");
        }
    }
    let script = Script::default();
    let mut server = script.accept();
    let conn = connect_with(&script, Panics)
        .connect()
        .expect("inside a runtime");
    let mut state = conn.state();
    state.wait_for(State::is_up).await.unwrap();
    let writer = conn.writer();
    server.write_all(b"boom").await.unwrap();
    assert_eq!(conn.closed().await, CloseReason::Fatal);
    let err = writer.write_all(b"x").await.unwrap_err();
    assert!(err.is_closed() || err.is_not_connected(), "{err}");
}

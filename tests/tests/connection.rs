//! `connman_tcp::Connection` over real loopback sockets against a `FlakyServer`.
//!
//! Each test is bounded by a `tokio::time::timeout` of a few seconds; timings are shrunk from the seed's so that the
//! whole file runs in a few seconds of real time.

use std::time::Duration;

use bytes::Bytes;
use connman_core::backoff::{Constant, Exponential};
use connman_core::lifecycle::CloseReason;
use connman_core::{Event, State};
use connman_tcp::{ConnectError, Connection, HostPort};
use connman_tests::flaky::FlakyServer;

use tokio::time::{sleep, timeout};

const BOUND: Duration = Duration::from_secs(5);

use connman_tcp::testing::{Call, recorder};

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

/// Waits until `cond` holds, polling; bounded by the caller's timeout.
async fn eventually(cond: impl Fn() -> bool) {
    while !cond() {
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn cn_01_port_zero_closes_with_a_typed_fatal_error() {
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn =
            Connection::connect(HostPort::new("127.0.0.1", 0), rec).expect("inside a runtime");
        assert_eq!(conn.closed().await, CloseReason::Fatal);
        let Call::Event(Event::ConnectFailed { error, .. }) = probe.until(is_failed).await else {
            unreachable!()
        };
        assert!(
            error
                .downcast_ref::<ConnectError>()
                .unwrap()
                .is_invalid_target()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn cn_02_cn_07_connects_at_once_greeting_and_echo_arrive_raw() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        probe.until(is_connect).await;
        assert_eq!(probe.data(7).await, b"hello\r\n");
        conn.writer().write_all(b"echo me").await.unwrap();
        assert_eq!(probe.data(7).await, b"echo me");
        conn.disconnect();
        conn.closed().await;
    })
    .await
    .expect("bounded");
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.bytes_echoed(), 7);
}

#[tokio::test]
async fn cn_03_cn_04_short_lifetime_resets_and_reconnects_fast() {
    let server = FlakyServer::builder()
        .lifetime(Some(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(HostPort::new("localhost", server.port()), rec)
            .expect("inside a runtime");
        probe.until(is_connect).await;
        for _ in 0..3 {
            probe.until(is_reset).await;
            probe.until(is_reconnect).await;
        }
        assert_eq!(probe.count(is_connect), 1);
        // Each loss is followed by one reconnect 20 ms later; no attempt failed.
        assert_eq!(probe.count(is_failed), 0);
        conn.disconnect();
        conn.closed().await;
    })
    .await
    .expect("bounded");
    assert!(server.accepted() >= 4);
}

#[tokio::test]
async fn cn_05_refused_attempts_are_events_then_connect() {
    let server = FlakyServer::start().await.unwrap();
    server.stop().await;
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        for _ in 0..3 {
            let Call::Event(Event::ConnectFailed { error, .. }) = probe.until(is_failed).await
            else {
                unreachable!()
            };
            // A refused connection: a typed error, no panic.
            assert!(error.downcast_ref::<ConnectError>().unwrap().is_refused());
        }
        server.restart().await.unwrap();
        probe.until(is_connect).await;
        assert_eq!(probe.count(is_reset), 0);
        conn.disconnect();
        conn.closed().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn cn_12_cn_14_disconnect_while_up_closes_without_reset() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        probe.until(is_connect).await;
        eventually(|| server.live() == 1).await;
        conn.disconnect();
        assert_eq!(conn.closed().await, CloseReason::Requested);
        eventually(|| server.live() == 0).await;
        sleep(Duration::from_millis(100)).await;
        assert_eq!(probe.count(is_reset), 0);
        assert_eq!(probe.count(is_close), 1);
    })
    .await
    .expect("bounded");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn cn_13_disconnect_during_backoff_never_reconnects() {
    let server = FlakyServer::start().await.unwrap();
    server.stop().await;
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::builder(server.addr(), rec)
            .backoff(Constant::new(Duration::from_millis(200)))
            .connect()
            .expect("inside a runtime");
        probe.until(is_failed).await;
        conn.disconnect();
        conn.closed().await;
        // The listener is back, but nothing comes to it.
        server.restart().await.unwrap();
        sleep(Duration::from_millis(400)).await;
        assert_eq!(server.accepted(), 0);
        assert_eq!(probe.count(is_failed), 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn cn_15_half_close_by_the_user_reconnects() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        probe.until(is_connect).await;
        probe.writer().shutdown().await.unwrap();
        // The server ends its side on our FIN; that is a lost link.
        probe.until(is_reset).await;
        probe.until(is_reconnect).await;
        conn.disconnect();
        conn.closed().await;
    })
    .await
    .expect("bounded");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn cn_23_run_test_port() {
    // runTest.sh, shrunk: connections live 150 ms (was 5 s), the listener stops after 500 ms (was 30 s).
    let server = FlakyServer::builder()
        .lifetime(Some(Duration::from_millis(150)))
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let targets = [
            HostPort::new("localhost", server.port()),
            HostPort::new("127.0.0.1", server.port()),
            HostPort::new("127.0.0.1", server.port()),
            HostPort::new("127.0.0.1", server.port()),
        ];
        let mut conns = Vec::new();
        let mut probes = Vec::new();
        for (n, target) in targets.into_iter().enumerate() {
            // tcho.js pings every 225·n - 550 ms; here every 20 + 10·n ms.
            let (rec, probe) = recorder(Some(Duration::from_millis(20 + 10 * n as u64)));
            conns.push(Connection::connect(target, rec).expect("inside a runtime"));
            probes.push(probe);
        }
        // Periodic resets with fast reconnects.
        for probe in &mut probes {
            probe.until(is_connect).await;
            for _ in 0..2 {
                probe.until(is_reset).await;
                probe.until(is_reconnect).await;
            }
        }
        assert!(server.bytes_echoed() > 0);
        // The listener goes away: attempts fail and the backoff grows.
        server.stop().await;
        for probe in &mut probes {
            for _ in 0..4 {
                probe.until(is_failed).await;
            }
            let delays: Vec<Duration> = probe
                .calls()
                .iter()
                .filter_map(|c| match c {
                    Call::Event(Event::ConnectFailed {
                        next_delay: Some(d),
                        ..
                    }) => Some(*d),
                    _ => None,
                })
                .collect();
            // The loss itself took the first 20 ms wait; every failed attempt then doubles it.
            assert!(
                delays.len() >= 4 && delays[0] >= Duration::from_millis(40),
                "{delays:?}"
            );
            assert!(delays.windows(2).all(|w| w[1] == w[0] * 2), "{delays:?}");
        }
        // disconnectAll: every retry stops.
        for conn in &conns {
            conn.disconnect();
        }
        for conn in &conns {
            assert_eq!(conn.closed().await, CloseReason::Requested);
        }
        let accepted = server.accepted();
        server.restart().await.unwrap();
        sleep(Duration::from_millis(400)).await;
        assert_eq!(server.accepted(), accepted);
        for probe in &probes {
            assert_eq!(probe.count(is_connect), 1);
            assert_eq!(probe.count(is_close), 1);
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn cn_24_disconnect_right_after_construction_never_connects() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let (rec, probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        conn.disconnect();
        assert_eq!(conn.closed().await, CloseReason::Requested);
        sleep(Duration::from_millis(100)).await;
        assert_eq!(probe.count(is_connect), 0);
        assert_eq!(probe.count(is_close), 1);
        // Whether the attempt had begun or not, no connection stays open.
        eventually(|| server.live() == 0).await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn unresolvable_host_is_a_typed_error() {
    timeout(Duration::from_secs(15), async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::builder(HostPort::new("no-such-host.invalid", 80), rec)
            .backoff(
                Constant::new(Duration::from_millis(10))
                    .with_max_attempts(1)
                    .unwrap(),
            )
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .expect("inside a runtime");
        let Call::Event(Event::ConnectFailed { error, .. }) = probe.until(is_failed).await else {
            unreachable!()
        };
        let error = error.downcast_ref::<ConnectError>().unwrap();
        // A resolver that cannot answer at all in time counts as a timeout; either way it is typed.
        assert!(error.is_unresolved() || error.is_timed_out(), "{error:?}");
        assert_eq!(conn.closed().await, CloseReason::GaveUp);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn peer_closing_mid_write_is_a_typed_error_and_reconnects() {
    let server = FlakyServer::builder()
        .lifetime(Some(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::builder(server.addr(), rec)
            .backoff(
                Exponential::builder()
                    .initial(Duration::from_millis(5))
                    .build()
                    .unwrap(),
            )
            .connect()
            .expect("inside a runtime");
        probe.until(is_connect).await;
        let writer = probe.writer();
        // Write until the server ends the connection under us.
        let chunk = vec![b'x'; 64 * 1024];
        let err = loop {
            if let Err(e) = writer.write_all(&chunk).await {
                break e;
            }
        };
        assert!(err.is_io() || err.is_not_connected(), "{err:?}");
        probe.until(is_reconnect).await;
        conn.disconnect();
        conn.closed().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn state_watch_shows_up_and_closed() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let conn = Connection::connect(server.addr(), ()).expect("inside a runtime");
        let mut state = conn.state();
        state.wait_for(State::is_up).await.unwrap();
        conn.disconnect();
        state.wait_for(State::is_closed).await.unwrap();
    })
    .await
    .expect("bounded");
}

/// CN-17: connman's `connect()` returned nothing and `getConnection` handed out its internal object. Here `connect`
/// returns the handle itself: its writer, state watch and events all reach the one supervised socket.
#[tokio::test]
async fn cn_17_connect_returns_a_handle_to_the_supervised_socket() {
    let server = FlakyServer::builder()
        .greeting(Bytes::new())
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let (rec, mut probe) = recorder(None);
        let conn = Connection::connect(server.addr(), rec).expect("inside a runtime");
        let mut events = conn.events();
        let mut state = conn.state();
        state.wait_for(State::is_up).await.unwrap();
        conn.writer().write_all(b"via the handle").await.unwrap();
        assert_eq!(probe.data(14).await, b"via the handle");
        conn.disconnect();
        while !matches!(events.recv().await.unwrap(), Event::Closed { .. }) {}
        assert!(conn.is_closed());
    })
    .await
    .expect("bounded");
    assert_eq!(server.accepted(), 1);
}

//! Reconnect tests in the style of linkerd's: paused time, schedules asserted to the instant.

mod support;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::backoff::{Constant, presets};
use connman_core::error::{BoxError, Closed, Elapsed};
use connman_core::lifecycle::{Event, FailureKind, State};
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::{FatalConnect, GaveUp, Reconnect, ReconnectLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

type Conn = mock::Mock<&'static str, &'static str>;
type ConnHandle = mock::Handle<&'static str, &'static str>;
type Maker = mock::Mock<&'static str, Conn>;
type MakerHandle = mock::Handle<&'static str, Conn>;

use support::ms;

type Rc = Reconnect<Maker, &'static str>;

/// Waits until the reconnect is ready (a named function keeps the request type concrete inside spawned tasks).
fn ready(rc: &mut Rc) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
    support::ready::<_, &'static str>(rc)
}

fn maker() -> (Maker, MakerHandle) {
    mock::pair()
}

fn events(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Answers the next connect with a fresh connection and returns its handle.
async fn accept(mk: &mut MakerHandle) -> ConnHandle {
    let (_, send) = mk.next_request().await.expect("connect");
    let (conn, handle) = mock::pair();
    send.send_response(conn);
    handle
}

/// The backoff schedule to the instant; the connector is called for every attempt (UP-20); and a request waits
/// through failed attempts instead of failing with the first one.
#[tokio::test(start_paused = true)]
async fn schedule_to_the_instant_and_no_request_fails_for_a_failed_attempt() {
    let (mk, mut mk_handle) = maker();
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(presets::connman())
            .build()
            .expect("valid reconnect config"),
    );
    let rc = layer.layer(mk);
    let start = Instant::now();
    let call = tokio::spawn(rc.oneshot("hello"));
    let mut at = Vec::new();
    for _ in 0..5 {
        let (target, send) = mk_handle.next_request().await.expect("attempt");
        assert_eq!(target, "peer");
        at.push(start.elapsed());
        send.send_error("refused");
    }
    assert_eq!(at, [0, 20, 60, 140, 300].map(ms));
    let mut conn = accept(&mut mk_handle).await;
    assert_eq!(start.elapsed(), ms(620));
    let (req, send) = conn.next_request().await.expect("request");
    assert_eq!(req, "hello");
    send.send_response("world");
    // Five failed attempts, and the request still succeeds (tower's Reconnect would have failed it).
    assert_eq!(call.await.expect("task").expect("response"), "world");
}

#[tokio::test(start_paused = true)]
async fn reset_after_stable_connection() {
    let (mk, mut mk_handle) = maker();
    let mut rc = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(presets::connman())
            .build()
            .expect("valid reconnect config"),
    )
    .layer(mk);
    let start = Instant::now();
    let first = tokio::spawn(async move { ready(&mut rc).await.map(|()| rc) });
    for _ in 0..2 {
        let (_, send) = mk_handle.next_request().await.expect("attempt");
        send.send_error("refused");
    }
    let mut conn = accept(&mut mk_handle).await;
    let mut rc = first.await.expect("task").expect("up");
    assert_eq!(start.elapsed(), ms(60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The link fails: the next attempt comes after the first delay again, not the third.
    conn.send_error("reset by peer");
    let lost = Instant::now();
    let again = tokio::spawn(async move { ready(&mut rc).await });
    let (_, send) = mk_handle.next_request().await.expect("reconnect");
    assert_eq!(lost.elapsed(), ms(20));
    let (conn2, _h) = mock::pair();
    send.send_response(conn2);
    again.await.expect("task").expect("up again");
}

/// A connection whose `poll_ready` always fails.
#[derive(Clone)]
struct Broken;

impl Service<&'static str> for Broken {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("broken pipe".into()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        std::future::ready(Err("broken pipe".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn no_hot_loop_when_inner_poll_ready_fails() {
    let connects = Arc::new(AtomicUsize::new(0));
    let c = connects.clone();
    let mk = tower::service_fn(move |_: &'static str| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(Broken) }
    });
    let mut rc = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(ms(100)))
            .build()
            .expect("valid reconnect config"),
    )
    .layer(mk);
    let mut rx = rc.subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(1),
        poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx)),
    )
    .await;
    assert!(waited.is_err(), "never ready, never an error");
    // One connect per backoff period: 0, 100, …, 900 ms (and 1000 ms at the edge).
    let n = connects.load(Ordering::SeqCst);
    assert!((10..=11).contains(&n), "{n} connects in 1 s");
    let lost = events(&mut rx)
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    assert_eq!(lost, n, "each link loss handled once");
}

/// A connect that never finishes and tells when it is dropped.
struct Hanging(Arc<AtomicBool>);

impl Future for Hanging {
    type Output = Result<Conn, BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// UP-17: close while connecting cancels the connect; the link never comes up after close.
#[tokio::test(start_paused = true)]
async fn up_17_close_while_connecting_cancels_the_connect() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let mk = tower::service_fn(move |_: &'static str| Hanging(d.clone()));
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .build()
            .expect("valid reconnect config"),
    );
    let close = layer.close_handle();
    let mut state = layer.state();
    let rc = layer.layer(mk);
    let call = tokio::spawn(rc.oneshot("hello"));
    state
        .wait_for(|s| matches!(s, State::Connecting { .. }))
        .await
        .expect("connecting");
    assert!(!dropped.load(Ordering::SeqCst));
    close.close();
    let err = call.await.expect("task").expect_err("closed");
    assert!(err.is::<Closed>());
    assert!(
        dropped.load(Ordering::SeqCst),
        "the connect in flight was dropped"
    );
    assert_eq!(*state.borrow(), State::Closed);
}

/// UP-18: close during backoff cancels the timer: no attempt and no event after close.
#[tokio::test(start_paused = true)]
async fn up_18_close_during_backoff_cancels_the_timer() {
    let connects = Arc::new(AtomicUsize::new(0));
    let c = connects.clone();
    let mk = tower::service_fn(move |_: &'static str| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<Conn, BoxError>("refused".into()) }
    });
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(Duration::from_secs(1)))
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = layer.subscribe();
    let mut state = layer.state();
    let close = layer.close_handle();
    let rc = layer.layer(mk);
    let call = tokio::spawn(rc.oneshot("hello"));
    state
        .wait_for(|s| matches!(s, State::Backoff { .. }))
        .await
        .expect("backing off");
    close.close();
    let err = call.await.expect("task").expect_err("closed");
    assert!(err.is::<Closed>());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    let events = events(&mut rx);
    assert!(matches!(events.last(), Some(Event::Closed { .. })));
    let connecting = events
        .iter()
        .filter(|e| matches!(e, Event::Connecting { .. }))
        .count();
    assert_eq!(connecting, 1, "no spurious reconnect after close");
}

/// UP-12 and UP-13: a link loss is handled once; reconnect events are not emitted for the first connect.
#[tokio::test(start_paused = true)]
async fn up_12_up_13_link_loss_once_and_reconnect_events() {
    let (mk, mut mk_handle) = maker();
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(ms(10)))
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = layer.subscribe();
    let mut rc = layer.layer(mk);
    let driver = tokio::spawn(async move {
        for _ in 0..2 {
            ready(&mut rc).await.expect("ready");
            rc.call("x").await.expect("response");
        }
    });
    let mut conn = accept(&mut mk_handle).await;
    let (_, send) = conn.next_request().await.expect("x");
    // The link fails before the answer reaches the driver, so its next `poll_ready` sees it.
    conn.send_error("eof");
    send.send_response("ok");
    let mut conn2 = accept(&mut mk_handle).await;
    let (_, send) = conn2.next_request().await.expect("x again");
    send.send_response("ok");
    driver.await.expect("driver");
    let events = events(&mut rx);
    let connected: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            Event::Connected { first, .. } => Some(*first),
            _ => None,
        })
        .collect();
    assert_eq!(connected, [true, false]);
    let lost = events
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    assert_eq!(lost, 1);
}

/// UP-07: only one "up" per connection, however often readiness is polled.
#[tokio::test(start_paused = true)]
async fn up_07_one_up_per_connection() {
    let (mk, mut mk_handle) = maker();
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = layer.subscribe();
    let mut rc = layer.layer(mk);
    let driver = tokio::spawn(async move {
        for _ in 0..5 {
            ready(&mut rc).await.expect("ready");
        }
        rc
    });
    let _conn = accept(&mut mk_handle).await;
    let _rc = driver.await.expect("driver");
    let ups = events(&mut rx)
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert_eq!(ups, 1);
}

/// UP-05 and UP-06: the hook runs on each new connection before it is up; requests go through what it yields and
/// wait until it is done.
#[tokio::test(start_paused = true)]
async fn up_05_up_06_hook_runs_before_requests() {
    let (mk, mut mk_handle) = maker();
    let hook = |mut conn: Conn| async move {
        conn.ready().await?.call("auth moo hax").await?;
        Ok::<_, BoxError>(conn)
    };
    let rc = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .on_up(hook)
            .build()
            .expect("valid reconnect config"),
    )
    .layer(mk);
    let call = tokio::spawn(rc.oneshot("beep"));
    let mut conn = accept(&mut mk_handle).await;
    let (req, send) = conn.next_request().await.expect("auth");
    assert_eq!(req, "auth moo hax");
    // Connected, not yet up: the request waits.
    tokio::time::sleep(ms(50)).await;
    assert!(conn.poll_request().is_pending());
    send.send_response("ok");
    let (req, send) = conn.next_request().await.expect("beep");
    assert_eq!(req, "beep");
    send.send_response("boop");
    assert_eq!(call.await.expect("task").expect("boop"), "boop");
}

/// UP-08: a hook that never finishes fails the attempt after the hook timeout; the next attempt follows.
#[tokio::test(start_paused = true)]
async fn up_08_hook_timeout_fails_the_attempt() {
    let (mk, mut mk_handle) = maker();
    let hangs = Arc::new(AtomicBool::new(true));
    let h = hangs.clone();
    let hook = move |conn: Conn| {
        let hang = h.swap(false, Ordering::SeqCst);
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(conn)
        }
    };
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(ms(100)))
            .on_up(hook)
            .hook_timeout(Duration::from_secs(1))
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = layer.subscribe();
    let rc = layer.layer(mk);
    let start = Instant::now();
    let call = tokio::spawn(rc.oneshot("x"));
    let _first = accept(&mut mk_handle).await;
    let mut second = accept(&mut mk_handle).await;
    assert_eq!(start.elapsed(), ms(1100));
    let (_, send) = second.next_request().await.expect("x");
    send.send_response("ok");
    call.await.expect("task").expect("ok");
    let failed = events(&mut rx)
        .into_iter()
        .find_map(|e| match e {
            Event::ConnectFailed { error, .. } => Some(error),
            _ => None,
        })
        .expect("a failed attempt");
    assert!(failed.is::<Elapsed>());
    let zero = ReconnectConfig::builder(())
        .hook_timeout(Duration::ZERO)
        .build();
    assert!(zero.is_err());
}

#[tokio::test(start_paused = true)]
async fn fatal_failure_fails_for_good() {
    let (mk, mut mk_handle) = maker();
    let mut rc = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .classify(|e: &BoxError| {
                if e.to_string() == "access denied" {
                    FailureKind::Fatal
                } else {
                    FailureKind::Retriable
                }
            })
            .build()
            .expect("valid reconnect config"),
    )
    .layer(mk);
    let (ready, _) = tokio::join!(
        poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx)),
        async {
            let (_, send) = mk_handle.next_request().await.expect("attempt");
            send.send_error("access denied");
        }
    );
    let err = ready.expect_err("fatal");
    assert!(err.is::<FatalConnect>());
    let again = poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx)).await;
    assert!(again.expect_err("still fatal").is::<FatalConnect>());
}

#[tokio::test(start_paused = true)]
async fn give_up_fails_for_good() {
    let mk = tower::service_fn(|_: &'static str| async { Err::<Conn, BoxError>("refused".into()) });
    let backoff = Constant::new(ms(10))
        .with_max_attempts(2)
        .expect("attempts");
    let mut rc = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(backoff)
            .build()
            .expect("valid reconnect config"),
    )
    .layer(mk);
    let err = poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx))
        .await
        .expect_err("gave up");
    let gave_up = err.downcast_ref::<GaveUp>().expect("GaveUp");
    assert!(std::error::Error::source(gave_up).is_some_and(|e| e.to_string() == "refused"));
}

/// UP-15: close while up ends the connection, emits one close, and no reconnect follows.
#[tokio::test(start_paused = true)]
async fn up_15_close_while_up() {
    let (mk, mut mk_handle) = maker();
    let layer = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = layer.subscribe();
    let mut rc = layer.layer(mk);
    let (ready, mut conn) = tokio::join!(
        poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx)),
        accept(&mut mk_handle)
    );
    ready.expect("up");
    rc.close();
    assert!(conn.next_request().await.is_none(), "connection dropped");
    let err = poll_fn(|cx| Service::<&'static str>::poll_ready(&mut rc, cx))
        .await
        .expect_err("closed");
    assert!(err.is::<Closed>());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(mk_handle.poll_request().is_pending());
    let closes = events(&mut rx)
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .count();
    assert_eq!(closes, 1);
}

#[tokio::test(start_paused = true)]
async fn reconnect_new_serves_requests() {
    let mk = tower::service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(tower::service_fn(|n: u32| async move {
            Ok::<_, BoxError>(n + 1)
        }))
    });
    let rc = Reconnect::new(mk, ReconnectConfig::new("peer"));
    assert_eq!(rc.oneshot(1).await.expect("ok"), 2);
}

/// Handles of one `Reconnect` share one link: one connect serves every clone, a loss seen by one is a loss for all,
/// and a single reconnect brings them all back. Requests through a clone go out on the clone's own copy of the
/// connection.
#[tokio::test(start_paused = true)]
async fn clones_share_one_link_and_one_reconnect() {
    let (mk, mut mk_handle) = maker();
    let config = ReconnectConfig::builder("peer")
        .backoff(Constant::new(ms(10)))
        .build()
        .expect("valid reconnect config");
    let stats = config.clone();
    let mut a: Rc = Reconnect::new(mk, config);
    let mut b = a.clone();
    let mut conn = {
        let ready_a = tokio::spawn(async move {
            ready(&mut a).await.expect("a ready");
            a
        });
        let conn = accept(&mut mk_handle).await;
        a = ready_a.await.expect("task");
        conn
    };
    ready(&mut b)
        .await
        .expect("b ready without a connect of its own");
    assert!(
        mk_handle.poll_request().is_pending(),
        "one connect for both"
    );
    let (ra, rb) = (a.call("from a"), b.call("from b"));
    for _ in 0..2 {
        let (req, send) = conn.next_request().await.expect("request");
        send.send_response(req);
    }
    assert_eq!(
        (ra.await.expect("a"), rb.await.expect("b")),
        ("from a", "from b")
    );

    // The connection fails `poll_ready` for one handle: both wait for the one reconnect.
    conn.send_error("link lost");
    let mut wait_a = tokio_test::task::spawn(ready(&mut a));
    tokio_test::assert_pending!(wait_a.poll());
    drop(wait_a);
    assert!(matches!(*stats.state().borrow(), State::Backoff { .. }));
    let mut wait_b = tokio_test::task::spawn(ready(&mut b));
    tokio_test::assert_pending!(wait_b.poll());
    drop(wait_b);
    // Someone must drive the link: both handles wait in tasks, and one connect serves both.
    let back_a = tokio::spawn(async move { ready(&mut a).await.map(|()| a) });
    let back_b = tokio::spawn(async move { ready(&mut b).await.map(|()| b) });
    let _conn = accept(&mut mk_handle).await;
    let _a = back_a.await.expect("task").expect("a back");
    let _b = back_b.await.expect("task").expect("b back");
    assert!(
        mk_handle.poll_request().is_pending(),
        "one reconnect for both"
    );
    let s = stats.stats();
    assert_eq!(
        (
            s.lifecycle.attempts,
            s.lifecycle.connects,
            s.lifecycle.reconnects,
            s.lifecycle.links_lost
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(s.hook_runs, 2);
}

/// Closing through one handle closes the link for every clone.
#[tokio::test(start_paused = true)]
async fn closing_one_handle_closes_every_clone() {
    let (mk, mut mk_handle) = maker();
    let mut a: Rc = Reconnect::new(mk, ReconnectConfig::new("peer"));
    let mut b = a.clone();
    let ready_a = tokio::spawn(async move {
        ready(&mut a).await.expect("a ready");
        a
    });
    let _conn = accept(&mut mk_handle).await;
    let mut a = ready_a.await.expect("task");
    ready(&mut b).await.expect("b ready");
    a.close();
    assert!(ready(&mut b).await.expect_err("closed").is::<Closed>());
    assert!(ready(&mut a).await.expect_err("closed").is::<Closed>());
}

/// With `first_attempt_fatal`, a first connect that fails closes for good at once with `FatalConnect`, whose source is
/// the real error (not a stand-in), and the event stream carries it too.
#[tokio::test(start_paused = true)]
async fn first_attempt_fatal_fails_at_once_with_the_real_error() {
    let (mk, mut mk_handle) = maker();
    let config = ReconnectConfig::builder("peer")
        .first_attempt_fatal(true)
        .build()
        .expect("valid reconnect config");
    let mut events_rx = config.subscribe();
    let mut rc: Rc = Reconnect::new(mk, config);
    let attempt = tokio::spawn(async move { ready(&mut rc).await });
    let (_, send) = mk_handle.next_request().await.expect("first attempt");
    send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    let err = attempt.await.expect("task").expect_err("fatal");
    let fatal = err.downcast_ref::<FatalConnect>().expect("FatalConnect");
    let source = std::error::Error::source(fatal).expect("the real error");
    assert!(source.is::<std::io::Error>(), "{source}");
    let failed = events(&mut events_rx)
        .into_iter()
        .find_map(|e| match e {
            Event::ConnectFailed { error, .. } => Some(error),
            _ => None,
        })
        .expect("a failed attempt event");
    assert!(failed.is::<std::io::Error>());
}

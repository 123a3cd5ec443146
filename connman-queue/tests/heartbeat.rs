//! Heartbeat tests on paused time: pings, RTT, half-open links, bad settings.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::backoff::Constant;
use connman_core::error::{BoxError, LinkLost, MaybeDelivered};
use connman_core::lifecycle::Event;
use connman_queue::heartbeat::{
    Heartbeat, HeartbeatConfig, HeartbeatEvent, HeartbeatLayer, PingFailed, PingTimeout,
};
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::ReconnectLayer;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use support::secs;

/// The far side of a fake connection.
#[derive(Default)]
struct Peer {
    silent: AtomicBool,
    knows_ping: AtomicBool,
    pings: AtomicUsize,
    rtt: Mutex<Duration>,
}

/// A cloneable connection to a [`Peer`]: answers each request with itself after the peer's RTT.
#[derive(Clone)]
struct FakeConn(Arc<Peer>);

impl Service<String> for FakeConn {
    type Response = String;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        let peer = self.0.clone();
        Box::pin(async move {
            if req == "ping" {
                peer.pings.fetch_add(1, Ordering::SeqCst);
                if !peer.knows_ping.load(Ordering::SeqCst) {
                    return Err("remote does not implement ping".into());
                }
            }
            if peer.silent.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let rtt = *peer.rtt.lock().expect("rtt");
            tokio::time::sleep(rtt).await;
            Ok(req)
        })
    }
}

fn peer() -> Arc<Peer> {
    let peer = Arc::new(Peer::default());
    peer.knows_ping.store(true, Ordering::SeqCst);
    *peer.rtt.lock().expect("rtt") = Duration::from_millis(30);
    peer
}

fn layer(config: HeartbeatConfig) -> HeartbeatLayer<fn() -> String> {
    HeartbeatLayer::new(config, || "ping".to_string())
}

async fn ready(hb: &mut Heartbeat<FakeConn>) -> Result<(), BoxError> {
    support::ready::<_, String>(hb).await
}

/// UP-09: a ping every interval through the connection itself, each answer reported with its RTT.
#[tokio::test(start_paused = true)]
async fn up_09_pings_every_interval_and_reports_rtt() {
    let peer = peer();
    let layer = layer(HeartbeatConfig::default());
    let mut events = layer.subscribe();
    let mut hb = layer.wrap(FakeConn(peer.clone()));
    tokio::time::sleep(secs(35)).await;
    assert_eq!(peer.pings.load(Ordering::SeqCst), 3);
    for _ in 0..3 {
        match events.try_recv().expect("event") {
            HeartbeatEvent::Pong { rtt } => assert_eq!(rtt, Duration::from_millis(30)),
            other => panic!("unexpected {other:?}"),
        }
    }
    ready(&mut hb).await.expect("alive");
    assert!(!hb.is_dead());
}

/// UP-09: an interval of zero (upnode's `ping: 0`) sends no pings at all.
#[tokio::test(start_paused = true)]
async fn up_09_interval_zero_disables_pings() {
    let peer = peer();
    let config = HeartbeatConfig::builder()
        .interval(Duration::ZERO)
        .timeout(Duration::ZERO)
        .build()
        .expect("disabled");
    assert!(!config.is_enabled());
    let mut hb = layer(config).wrap(FakeConn(peer.clone()));
    tokio::time::sleep(secs(120)).await;
    assert_eq!(peer.pings.load(Ordering::SeqCst), 0);
    ready(&mut hb).await.expect("alive");
    assert_eq!(hb.call("x".into()).await.expect("echo"), "x");
}

/// UP-09: a half-open link (the peer keeps the socket but stops answering) is detected within interval + timeout;
/// `poll_ready` then fails with `LinkLost` and requests in flight fail with `MaybeDelivered`.
#[tokio::test(start_paused = true)]
async fn up_09_half_open_detected_within_interval_plus_timeout() {
    let peer = peer();
    let layer = layer(
        HeartbeatConfig::builder()
            .interval(secs(10))
            .timeout(secs(5))
            .build()
            .expect("config"),
    );
    let mut events = layer.subscribe();
    let mut hb = layer.wrap(FakeConn(peer.clone()));
    let start = Instant::now();
    peer.silent.store(true, Ordering::SeqCst);
    ready(&mut hb).await.expect("looks alive");
    let in_flight = tokio::spawn(hb.call("order 1".into()));
    tokio::time::sleep(secs(15) - Duration::from_millis(1)).await;
    ready(&mut hb).await.expect("not yet declared dead");
    let err = in_flight.await.expect("task").expect_err("link died");
    assert_eq!(start.elapsed(), secs(15));
    let md = err
        .downcast_ref::<MaybeDelivered>()
        .expect("MaybeDelivered");
    assert!(std::error::Error::source(md).is_some_and(|e| e.is::<LinkLost>()));
    let err = ready(&mut hb).await.expect_err("dead");
    let lost = err.downcast_ref::<LinkLost>().expect("LinkLost");
    assert!(std::error::Error::source(lost).is_some_and(|e| e.is::<PingTimeout>()));
    assert!(matches!(
        events.try_recv(),
        Ok(HeartbeatEvent::TimedOut { .. })
    ));
    // The lossless counters agree with the stream.
    let stats = layer.stats();
    assert_eq!((stats.timeouts, stats.failures, stats.deaths()), (1, 0, 1));
}

/// UP-10: a remote that cannot answer pings gives a typed error and an event, never a crash.
#[tokio::test(start_paused = true)]
async fn up_10_remote_without_ping_is_a_typed_error() {
    let peer = peer();
    peer.knows_ping.store(false, Ordering::SeqCst);
    let layer = layer(HeartbeatConfig::default());
    let mut events = layer.subscribe();
    let mut hb = layer.wrap(FakeConn(peer.clone()));
    tokio::time::sleep(secs(11)).await;
    match events.try_recv().expect("event") {
        HeartbeatEvent::Failed { error } => {
            assert_eq!(error.to_string(), "remote does not implement ping")
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = ready(&mut hb).await.expect_err("dead");
    let lost = err.downcast_ref::<LinkLost>().expect("LinkLost");
    assert!(std::error::Error::source(lost).is_some_and(|e| e.is::<PingFailed>()));
    assert_eq!(layer.stats().deaths(), 1);
}

/// UP-11: the timeout must be shorter than the interval (upnode's server waited 100 s for a 10 s ping).
#[test]
fn up_11_timeout_not_shorter_than_interval_is_invalid() {
    assert!(
        HeartbeatConfig::builder()
            .interval(secs(10))
            .timeout(secs(100))
            .build()
            .is_err()
    );
    assert!(
        HeartbeatConfig::builder()
            .interval(secs(10))
            .timeout(secs(10))
            .build()
            .is_err()
    );
    assert!(
        HeartbeatConfig::builder()
            .interval(secs(10))
            .timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    let ok = HeartbeatConfig::builder()
        .interval(secs(10))
        .timeout(secs(9))
        .build()
        .expect("valid");
    assert_eq!((ok.interval(), ok.timeout()), (secs(10), secs(9)));
}

/// Under a Reconnect, a connection the heartbeat declares dead is replaced.
#[tokio::test(start_paused = true)]
async fn dead_link_is_replaced_by_reconnect() {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let p = peers.clone();
    let mk = tower::service_fn(move |_: &'static str| {
        let peer = peer();
        p.lock().expect("peers").push(peer.clone());
        async move { Ok::<_, BoxError>(FakeConn(peer)) }
    });
    let heartbeat = layer(
        HeartbeatConfig::builder()
            .interval(secs(2))
            .timeout(secs(1))
            .build()
            .expect("config"),
    );
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(Duration::from_millis(100)))
            .build()
            .expect("valid reconnect config"),
    );
    let mut rx = reconnect.subscribe();
    let mut svc = reconnect.layer(heartbeat.layer(mk));
    assert_eq!(
        svc.ready()
            .await
            .expect("up")
            .call("a".into())
            .await
            .expect("a"),
        "a"
    );
    let first = peers.lock().expect("peers")[0].clone();
    first.silent.store(true, Ordering::SeqCst);
    tokio::time::sleep(secs(4)).await;
    // The heartbeat declared the first link dead at 3 s; the next request goes through a new connection.
    assert_eq!(
        svc.ready()
            .await
            .expect("up")
            .call("b".into())
            .await
            .expect("b"),
        "b"
    );
    assert_eq!(peers.lock().expect("peers").len(), 2);
    let lost = std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    assert_eq!(lost, 1);
}

/// Dropping the connection stops its pinger: no task outlives the link.
#[tokio::test(start_paused = true)]
async fn dropping_the_connection_stops_the_pinger() {
    let peer = peer();
    let hb = layer(HeartbeatConfig::default()).wrap(FakeConn(peer.clone()));
    tokio::time::sleep(secs(11)).await;
    assert_eq!(peer.pings.load(Ordering::SeqCst), 1);
    drop(hb);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(peer.pings.load(Ordering::SeqCst), 1);
    // Only this test's handle is left: the pinger let go of its clone of the connection.
    assert_eq!(Arc::strong_count(&peer), 1);
}

/// The builder accepts an interval near `Duration::MAX` (pings in effect never): the pinger waits instead of
/// overflowing the clock on its first deadline and dying.
#[tokio::test(start_paused = true)]
async fn heartbeat_interval_near_duration_max_keeps_the_pinger() {
    let peer = peer();
    let config = HeartbeatConfig::builder()
        .interval(Duration::MAX)
        .timeout(secs(5))
        .build()
        .expect("a valid schedule");
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut hb = layer(config).wrap(FakeConn(peer.clone()));
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the pinger died");
    ready(&mut hb).await.expect("alive");
    assert!(!hb.is_dead());
    assert_eq!(peer.pings.load(Ordering::SeqCst), 0);
}

//! Queue tests: tower's buffer test list, then upnode's behaviours (UP-xx) done right.

mod support;

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use connman_core::error::InvalidConfig;
use connman_core::error::{BoxError, Closed, Elapsed, MaybeDelivered, NotSent, Overloaded};
use connman_queue::queue::QueueConfig;
use connman_queue::queue::{CallOptions, Queue, QueueLayer, ServiceFailed};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{Service, ServiceExt};
use tower_test::mock;

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;

fn new_queue(layer: QueueLayer<&'static str>) -> (Queue<Mock, &'static str>, Handle) {
    let (service, handle) = mock::pair();
    (Queue::new(service, layer.config().clone()), handle)
}

fn default_queue() -> (Queue<Mock, &'static str>, Handle) {
    new_queue(QueueLayer::default())
}

use support::settle;

async fn ready(queue: &mut Queue<Mock, &'static str>) {
    support::ready::<_, &'static str>(queue)
        .await
        .expect("queue ready");
}

#[tokio::test(start_paused = true)]
async fn req_and_res() {
    let (mut queue, mut handle) = default_queue();
    ready(&mut queue).await;
    let response = queue.call("hello");
    let (req, send) = handle.next_request().await.expect("request");
    assert_eq!(req, "hello");
    send.send_response("world");
    assert_eq!(response.await.expect("response"), "world");
}

#[tokio::test(start_paused = true)]
async fn clears_canceled_requests() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let res1 = queue.call("hello");
    ready(&mut queue).await;
    let res2 = queue.call("hello2");
    ready(&mut queue).await;
    let res3 = queue.call("hello3");
    assert_eq!(queue.stats().len, 3);
    drop(res2);
    assert_eq!(queue.stats().len, 2);
    handle.allow(3);
    settle().await;
    let (req, send) = handle.next_request().await.expect("first");
    assert_eq!(req, "hello");
    send.send_response("world");
    let (req, send) = handle.next_request().await.expect("third");
    assert_eq!(req, "hello3", "the cancelled request was never sent");
    send.send_response("world3");
    assert_eq!(res1.await.expect("res1"), "world");
    assert_eq!(res3.await.expect("res3"), "world3");
    assert_eq!(queue.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn when_inner_is_not_ready() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let mut res = task::spawn(queue.call("hello"));
    settle().await;
    assert_pending!(res.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    settle().await;
    let (req, send) = handle.next_request().await.expect("request");
    assert_eq!(req, "hello");
    send.send_response("world");
    assert_eq!(res.await.expect("response"), "world");
}

#[tokio::test(start_paused = true)]
async fn when_inner_fails() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let res = queue.call("hello");
    handle.send_error("foobar");
    handle.allow(1);
    let err = res.await.expect_err("inner failed");
    let failed = err.downcast_ref::<ServiceFailed>().expect("ServiceFailed");
    assert_eq!(
        std::error::Error::source(failed).map(ToString::to_string),
        Some("foobar".into())
    );
    // The queue serves nothing more, and says why.
    let err = poll_fn(|cx| Service::poll_ready(&mut queue, cx))
        .await
        .expect_err("failed for good");
    assert!(err.is::<ServiceFailed>());
}

#[tokio::test(start_paused = true)]
async fn waits_for_channel_capacity() {
    let (mut queue, mut handle) = new_queue(QueueLayer::new(
        QueueConfig::builder()
            .capacity(3)
            .build()
            .expect("valid queue config"),
    ));
    handle.allow(0);
    let mut service = task::spawn(());
    let mut responses = Vec::new();
    for req in ["1", "2", "3"] {
        assert_ready_ok!(service.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
        responses.push(queue.call(req));
    }
    assert_pending!(service.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    handle.allow(1);
    settle().await;
    let (req, send) = handle.next_request().await.expect("first");
    assert_eq!(req, "1");
    send.send_response("one");
    // Capacity comes back once the first request is answered.
    assert_eq!(responses.remove(0).await.expect("one"), "one");
    assert!(service.is_woken());
    assert_ready_ok!(service.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
}

#[tokio::test(start_paused = true)]
async fn wakes_pending_waiters_on_close() {
    let (mut queue, mut handle) = new_queue(QueueLayer::new(
        QueueConfig::builder()
            .capacity(1)
            .build()
            .expect("valid queue config"),
    ));
    handle.allow(0);
    ready(&mut queue).await;
    let response = queue.call("1");
    let mut other = queue.clone();
    let mut waiter = task::spawn(());
    assert_pending!(waiter.enter(|cx, _| Service::poll_ready(&mut other, cx)));
    queue.close();
    assert!(waiter.is_woken(), "the waiter is woken by close");
    let err = assert_ready_err!(waiter.enter(|cx, _| Service::poll_ready(&mut other, cx)));
    assert!(err.is::<Closed>());
    assert!(response.await.expect_err("closed").is::<Closed>());
}

#[tokio::test(start_paused = true)]
async fn doesnt_leak_permits() {
    let (mut queue, mut handle) = new_queue(QueueLayer::new(
        QueueConfig::builder()
            .capacity(2)
            .build()
            .expect("valid queue config"),
    ));
    handle.allow(0);
    let mut a = queue.clone();
    let mut b = queue.clone();
    let mut t = task::spawn(());
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut a, cx)));
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut b, cx)));
    assert_pending!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    // A handle dropped with a reserved slot gives it back.
    drop(a);
    assert!(t.is_woken());
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    // A request dropped while queued gives its slot back too.
    let res = b.call("x");
    drop(res);
    let mut c = queue.clone();
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut c, cx)));
    assert_eq!(queue.stats().len, 0);
}

#[tokio::test(start_paused = true)]
async fn holds_while_down() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    let mut responses = Vec::new();
    for req in ["a", "b", "c"] {
        ready(&mut queue).await;
        responses.push(task::spawn(queue.call(req)));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    for res in &mut responses {
        assert_pending!(res.poll());
    }
    assert_eq!(queue.stats().len, 3);
    assert!(
        handle.poll_request().is_pending(),
        "nothing sent while down"
    );
}

/// A max wait past what the clock can tell is "never expire", not "expire at once".
#[tokio::test(start_paused = true)]
async fn a_max_wait_near_duration_max_waits_instead_of_expiring_at_once() {
    let config = QueueConfig::builder()
        .max_wait(Duration::MAX)
        .build()
        .expect("config");
    let (service, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut queue = Queue::new(service, config);
    handle.allow(0);
    ready(&mut queue).await;
    let mut res = task::spawn(queue.call("a"));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_pending!(res.poll());
    handle.allow(1);
    let (req, send) = handle.next_request().await.expect("sent once up");
    assert_eq!(req, "a");
    send.send_response("A");
    assert_eq!(res.await.expect("answered"), "A");
}

/// UP-02 and UP-03: requests wait in FIFO order while down and go out in that order once up.
#[tokio::test(start_paused = true)]
async fn up_02_up_03_queued_in_fifo_and_flushed_in_order() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    let mut responses = Vec::new();
    for req in ["a", "b", "c", "d"] {
        ready(&mut queue).await;
        responses.push(queue.call(req));
    }
    handle.allow(100);
    settle().await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (req, send) = handle.next_request().await.expect("request");
        seen.push(req);
        send.send_response(req);
    }
    assert_eq!(seen, ["a", "b", "c", "d"]);
    for (res, want) in responses.into_iter().zip(["a", "b", "c", "d"]) {
        assert_eq!(res.await.expect("response"), want);
    }
    // UP-03: once up, a new request goes straight out.
    ready(&mut queue).await;
    let res = queue.call("e");
    let (req, send) = handle.next_request().await.expect("e");
    assert_eq!(req, "e");
    send.send_response("e");
    assert_eq!(res.await.expect("e"), "e");
}

/// UP-01: while up with nothing queued, a request takes the fast path: no queue, no worker hop.
#[tokio::test(start_paused = true)]
async fn up_01_request_while_up_goes_straight_out() {
    let (mut queue, mut handle) = default_queue();
    ready(&mut queue).await;
    let res = queue.call("now");
    // Sent during `call` itself: the request is at the mock before anyone polls the response or the worker.
    let (req, send) = assert_ready!(handle.poll_request()).expect("sent in call");
    assert_eq!(req, "now");
    send.send_response("ok");
    assert_eq!(res.await.expect("ok"), "ok");
    let stats = queue.stats();
    assert_eq!((stats.direct, stats.queued), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn replays_fifo_on_reconnect() {
    let (mut queue, mut handle) = default_queue();
    let mut responses = Vec::new();
    for req in ["a", "b", "c"] {
        ready(&mut queue).await;
        responses.push(task::spawn(queue.call(req)));
    }
    // All three were written at once; the link goes down before any was written to the wire: NotSent.
    for want in ["a", "b", "c"] {
        let (req, send) = handle.next_request().await.expect("request");
        assert_eq!(req, want);
        send.send_error(NotSent::new());
    }
    handle.allow(0);
    for res in &mut responses {
        assert_pending!(res.poll());
    }
    assert_eq!(queue.stats().replayed, 3);
    assert_eq!(queue.stats().len, 3);
    handle.allow(10);
    settle().await;
    for want in ["a", "b", "c"] {
        let (req, send) = handle.next_request().await.expect("replayed");
        assert_eq!(req, want, "replayed in order");
        send.send_response(want);
    }
    for (res, want) in responses.into_iter().zip(["a", "b", "c"]) {
        assert_eq!(res.await.expect("response"), want);
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_while_queued_is_not_sent() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let res = queue.call("cancelled");
    ready(&mut queue).await;
    let kept = queue.call("kept");
    drop(res);
    handle.allow(10);
    settle().await;
    let (req, send) = handle.next_request().await.expect("request");
    assert_eq!(req, "kept");
    send.send_response("ok");
    assert_eq!(kept.await.expect("ok"), "ok");
    assert!(handle.poll_request().is_pending());
    assert_eq!(queue.stats().cancelled, 1);
}

/// UP-04: a request with a deadline fails with `Elapsed` if still queued then, and is never sent later.
#[tokio::test(start_paused = true)]
async fn up_04_expires_after_deadline() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let short = tokio::spawn(queue.call_with(
        "short",
        CallOptions::new().deadline(Duration::from_millis(10)),
    ));
    ready(&mut queue).await;
    let long = queue.call_with("long", CallOptions::new().deadline(Duration::from_secs(4)));
    let start = tokio::time::Instant::now();
    let err = short.await.expect("task").expect_err("expired");
    assert!(err.is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    handle.allow(10);
    settle().await;
    let (req, send) = handle.next_request().await.expect("long");
    assert_eq!(req, "long", "the expired request is never sent");
    send.send_response("ok");
    assert_eq!(long.await.expect("ok"), "ok");
    assert_eq!(queue.stats().expired, 1);
}

/// The queue's own max wait bounds every request, even without a deadline.
#[tokio::test(start_paused = true)]
async fn expires_after_deadline() {
    let layer = QueueLayer::new(
        QueueConfig::builder()
            .max_wait(Duration::from_secs(2))
            .build()
            .expect("valid queue config"),
    );
    let (mut queue, mut handle) = new_queue(layer);
    handle.allow(0);
    ready(&mut queue).await;
    let start = tokio::time::Instant::now();
    let err = queue.call("x").await.expect_err("expired");
    assert!(err.is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    handle.allow(1);
    settle().await;
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn capacity_backpressure() {
    let layer = QueueLayer::new(
        QueueConfig::builder()
            .capacity(2)
            .weigh(|req: &&'static str| req.len())
            .max_weight(8)
            .build()
            .expect("valid queue config"),
    );
    let (mut queue, mut handle) = new_queue(layer);
    handle.allow(0);
    let mut t = task::spawn(());
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    let a = queue.call("12345");
    // Bytes: 5 of 8 are taken, a 4-byte request does not fit and is rejected with a typed error.
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    let err = queue.call("1234").await.expect_err("too heavy");
    assert!(err.is::<Overloaded>());
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    let b = queue.call("123");
    // Count: two requests held, the third waits.
    assert_pending!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    assert_eq!(queue.stats().weight, 8);
    handle.allow(10);
    settle().await;
    for _ in 0..2 {
        let (req, send) = handle.next_request().await.expect("request");
        send.send_response(req);
    }
    assert_eq!(a.await.expect("a"), "12345");
    assert_eq!(b.await.expect("b"), "123");
    assert!(t.is_woken());
    assert_ready_ok!(t.enter(|cx, _| Service::poll_ready(&mut queue, cx)));
    assert_eq!(queue.stats().weight, 0);
}

#[tokio::test(start_paused = true)]
async fn reject_when_full_is_overloaded() {
    let layer = QueueLayer::new(
        QueueConfig::builder()
            .capacity(1)
            .reject_when_full()
            .build()
            .expect("valid queue config"),
    );
    let (mut queue, mut handle) = new_queue(layer);
    handle.allow(0);
    ready(&mut queue).await;
    let held = queue.call("a");
    ready(&mut queue).await;
    let err = queue.call("b").await.expect_err("full");
    assert!(err.is::<Overloaded>());
    assert_eq!(queue.stats().overloaded, 1);
    // Found full once, the handle tries again once capacity is back.
    ready(&mut queue).await;
    handle.allow(10);
    let (_, send) = handle.next_request().await.expect("a");
    send.send_response("a");
    assert_eq!(held.await.expect("a"), "a");
    let _ = queue
        .call("c")
        .await
        .expect_err("the earlier poll_ready found it full");
    ready(&mut queue).await;
    let c = queue.call("c");
    let (_, send) = handle.next_request().await.expect("c");
    send.send_response("c");
    assert_eq!(c.await.expect("c"), "c");
}

#[test]
fn invalid_settings_are_rejected() {
    let builder = QueueConfig::<()>::builder;
    assert!(builder().capacity(0).build().is_err());
    assert!(builder().max_weight(0).build().is_err());
    assert!(builder().max_wait(Duration::ZERO).build().is_err());
    // One error for the whole builder, whichever setting is out of range.
    let err = builder().capacity(0).max_wait(Duration::ZERO).build();
    assert!(err.is_err_and(|e| (&e as &dyn std::error::Error).is::<InvalidConfig>()));
    assert!(builder().build().is_ok());
}

/// UP-14: a request written before the link dropped fails with `MaybeDelivered` (never hangs, never silently
/// retried); an idempotent one is replayed.
#[tokio::test(start_paused = true)]
async fn up_14_in_flight_fails_maybe_delivered_unless_idempotent() {
    let (mut queue, mut handle) = default_queue();
    ready(&mut queue).await;
    let plain = queue.call("plain");
    ready(&mut queue).await;
    let idem = queue.call_with("idem", CallOptions::new().idempotent());
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.expect("request");
        send.send_error(MaybeDelivered::new());
    }
    let err = plain.await.expect_err("maybe delivered");
    assert!(err.is::<MaybeDelivered>());
    let mut idem = task::spawn(idem);
    assert_pending!(idem.poll());
    let (req, send) = handle.next_request().await.expect("replayed");
    assert_eq!(req, "idem");
    send.send_response("ok");
    assert_eq!(idem.await.expect("ok"), "ok");
    let stats = queue.stats();
    assert_eq!((stats.maybe_delivered, stats.replayed), (1, 1));
}

/// UP-14: a bare `LinkLost` from below counts as maybe delivered, and the caller sees `MaybeDelivered`.
#[tokio::test(start_paused = true)]
async fn up_14_link_lost_in_flight_is_maybe_delivered() {
    let (mut queue, mut handle) = default_queue();
    ready(&mut queue).await;
    let res = queue.call("x");
    let (_, send) = handle.next_request().await.expect("request");
    send.send_error(connman_core::error::LinkLost::new());
    let err = res.await.expect_err("lost");
    let md = err
        .downcast_ref::<MaybeDelivered>()
        .expect("MaybeDelivered");
    assert!(std::error::Error::source(md).is_some());
}

/// UP-16: close fails every queued and every later request with `Closed`; nothing hangs.
#[tokio::test(start_paused = true)]
async fn up_16_close_fails_queued_and_later_with_closed() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    let mut responses = Vec::new();
    for req in ["a", "b"] {
        ready(&mut queue).await;
        responses.push(queue.call(req));
    }
    let handle_ = queue.handle();
    handle_.close();
    assert!(handle_.is_closed());
    for res in responses {
        assert!(res.await.expect_err("closed").is::<Closed>());
    }
    let err = queue.ready().await.expect_err("later");
    assert!(err.is::<Closed>());
    // Nothing was sent, and the inner service was dropped.
    assert!(matches!(handle.poll_request(), Poll::Ready(None)));
}

/// UP-19: upnode crashed when it emitted an `error` event nobody listened to. Here every failure is a value: with no
/// subscriber on any event stream, failed connects and a failed request disturb nothing (no panic, the next request
/// goes on), the failures are still counted, and the request's error is typed.
#[tokio::test(start_paused = true)]
async fn up_19_errors_are_values() {
    use connman_core::backoff::Constant;
    use connman_core::outcome::Outcome;
    use connman_queue::reconnect::{Reconnect, ReconnectConfig};

    let (mk, mut mk_handle) = mock::pair::<(), Mock>();
    let config = ReconnectConfig::builder(())
        .backoff(Constant::new(Duration::from_millis(5)))
        .build()
        .expect("valid reconnect config");
    let stats = config.clone();
    // Nobody subscribes to the lifecycle events: they have no listener at all.
    let mut queue = Queue::new(Reconnect::new(mk, config), QueueConfig::default());
    queue.ready().await.expect("ready");
    let bad = queue.call("bad");
    queue.ready().await.expect("ready");
    let good = queue.call("good");
    for _ in 0..2 {
        let (_, send) = mk_handle.next_request().await.expect("attempt");
        send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    }
    let (_, send) = mk_handle.next_request().await.expect("attempt");
    let (conn, mut conn_handle) = mock::pair();
    send.send_response(conn);
    let (req, send) = conn_handle.next_request().await.expect("bad");
    assert_eq!(req, "bad");
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "remote said no",
    ));
    let (req, send) = conn_handle.next_request().await.expect("good");
    assert_eq!(req, "good");
    send.send_response("fine");
    let err: BoxError = bad.await.expect_err("error");
    assert_eq!(Outcome::of(&err), Outcome::Other);
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the service's own error");
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(good.await.expect("good"), "fine");
    assert_eq!(stats.stats().lifecycle.failed_attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_worker() {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let service = tower::service_fn(move |_: ()| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    let mut queue = Queue::new(service, QueueConfig::default());
    queue
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect("ok");
    let weak = Arc::downgrade(&counter);
    drop(queue);
    drop(counter);
    settle().await;
    assert!(weak.upgrade().is_none(), "the worker let go of the service");
}

/// Many handles on a multi-threaded runtime, with a service that reports every seventh request unsent: every request
/// gets its own answer exactly once, and the bounds hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_with_replays() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = tower::service_fn(move |req: u64| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n % 7 == 3 {
                Err::<u64, BoxError>(NotSent::new().into())
            } else {
                Ok(req)
            }
        }
    });
    let config = QueueConfig::builder().capacity(16).build();
    let queue = Queue::new(service, config.expect("valid queue config"));
    let run = async {
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let mut queue = queue.clone();
                tokio::spawn(async move {
                    for i in 0..500u64 {
                        let req = t * 1000 + i;
                        let res = queue.ready().await.expect("ready").call(req).await;
                        assert_eq!(res.expect("answer"), req);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("finished in time");
    let stats = queue.stats();
    assert!(stats.replayed > 0);
    assert_eq!((stats.len, stats.weight), (0, 0));
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        2000 + stats.replayed,
        "one call per request plus one per replay"
    );
}

/// A request that fails unsent on a healthy link (it cannot be encoded, say) is not replayed forever: after the
/// replay bound its `NotSent` reaches the caller.
#[tokio::test(start_paused = true)]
async fn replays_are_bounded() {
    let (mut queue, mut handle) = new_queue(QueueLayer::new(
        QueueConfig::builder()
            .max_replays(3)
            .build()
            .expect("valid queue config"),
    ));
    ready(&mut queue).await;
    let res = tokio::spawn(queue.call("unencodable"));
    for _ in 0..4 {
        let (req, send) = handle.next_request().await.expect("attempt");
        assert_eq!(req, "unencodable");
        send.send_error(NotSent::new());
    }
    let err = res.await.expect("task").expect_err("gave up");
    assert!(err.is::<NotSent>());
    assert!(handle.poll_request().is_pending(), "no fifth attempt");
    assert_eq!(queue.stats().replayed, 3);
}

/// UP-04: an expired request is never sent, even when its caller has not polled it since the deadline passed.
#[tokio::test(start_paused = true)]
async fn up_04_expired_is_never_sent_even_unpolled() {
    let (mut queue, mut handle) = default_queue();
    handle.allow(0);
    ready(&mut queue).await;
    let late = queue.call_with(
        "late",
        CallOptions::new().deadline(Duration::from_millis(10)),
    );
    tokio::time::advance(Duration::from_millis(20)).await;
    handle.allow(10);
    settle().await;
    assert!(handle.poll_request().is_pending(), "expired, never sent");
    assert!(late.await.expect_err("expired").is::<Elapsed>());
    assert_eq!(queue.stats().expired, 1);
}

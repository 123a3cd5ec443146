//! The full stack, Queue over Reconnect (over Heartbeat), against fake make services: upnode's scenarios.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::backoff::Constant;
use connman_core::error::{BoxError, Closed};
use connman_queue::queue::{Queue, QueueLayer, ServiceFailed};
use connman_queue::reconnect::GaveUp;
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::ReconnectLayer;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::ms;

/// A connection the server drops `lifetime` after accepting it: then its `poll_ready` fails.
#[derive(Clone)]
struct Flaky {
    born: Instant,
    lifetime: Duration,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service<String> for Flaky {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.born.elapsed() >= self.lifetime {
            return Poll::Ready(Err("connection reset".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        self.log.lock().expect("log").push(req.clone());
        std::future::ready(Ok(format!("re: {req}")))
    }
}

/// UP-24: the server drops every connection a few ms after accepting it; queued calls survive the flapping and all
/// get answers, in order.
#[tokio::test(start_paused = true)]
async fn up_24_queued_calls_survive_repeated_flapping() {
    let connects = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (c, l) = (connects.clone(), log.clone());
    let mk = tower::service_fn(move |_: &'static str| {
        c.fetch_add(1, Ordering::SeqCst);
        let conn = Flaky {
            born: Instant::now(),
            lifetime: ms(5),
            log: l.clone(),
        };
        async move { Ok::<_, BoxError>(conn) }
    });
    let svc = ServiceBuilder::new()
        .layer(QueueLayer::default())
        .layer(ReconnectLayer::new(
            ReconnectConfig::builder("peer")
                .backoff(Constant::new(ms(3)))
                .build()
                .expect("valid reconnect config"),
        ))
        .service(mk);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let svc = svc.clone();
        calls.push(tokio::spawn(svc.oneshot(format!("call {i}"))));
        tokio::time::sleep(ms(1)).await;
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.expect("task").expect("answer"),
            format!("re: call {i}")
        );
    }
    let sent = log.lock().expect("log").clone();
    let want: Vec<String> = (0..40).map(|i| format!("call {i}")).collect();
    assert_eq!(sent, want, "each call sent once, in order");
    assert!(connects.load(Ordering::SeqCst) >= 5, "the link flapped");
}

/// A connect that never finishes and tells when it is dropped.
struct Hanging(Arc<AtomicBool>);

impl Future for Hanging {
    type Output = Result<Flaky, BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// UP-16 and UP-17: closing the queue fails what waits with `Closed` and cancels the connect in flight below.
#[tokio::test(start_paused = true)]
async fn up_16_up_17_queue_close_cancels_connect_below() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let mk = tower::service_fn(move |_: &'static str| Hanging(d.clone()));
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .build()
            .expect("valid reconnect config"),
    );
    let state = reconnect.state();
    let mut queue: Queue<_, String> = ServiceBuilder::new()
        .layer(QueueLayer::default())
        .layer(reconnect)
        .service(mk);
    let call = tokio::spawn(queue.clone().oneshot("hello".to_string()));
    tokio::time::sleep(ms(10)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    queue.close();
    assert!(
        call.await
            .expect("task")
            .expect_err("closed")
            .is::<Closed>()
    );
    assert!(dropped.load(Ordering::SeqCst), "connect cancelled");
    assert!(state.borrow().is_closed());
    let later = queue.ready().await.expect_err("closed for good");
    assert!(later.is::<Closed>());
}

/// UP-18: closing the queue while the link below backs off drops the timer: no attempt after close.
#[tokio::test(start_paused = true)]
async fn up_18_queue_close_cancels_backoff_timer() {
    let connects = Arc::new(AtomicUsize::new(0));
    let c = connects.clone();
    let mk = tower::service_fn(move |_: &'static str| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<Flaky, BoxError>("refused".into()) }
    });
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder("peer")
            .backoff(Constant::new(Duration::from_secs(1)))
            .build()
            .expect("valid reconnect config"),
    );
    let mut events = reconnect.subscribe();
    let queue: Queue<_, String> = ServiceBuilder::new()
        .layer(QueueLayer::default())
        .layer(reconnect)
        .service(mk);
    let handle = queue.handle();
    let call = tokio::spawn(queue.oneshot("hello".to_string()));
    tokio::time::sleep(ms(500)).await;
    handle.close();
    assert!(
        call.await
            .expect("task")
            .expect_err("closed")
            .is::<Closed>()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    let all: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(matches!(
        all.last(),
        Some(connman_core::lifecycle::Event::Closed { .. })
    ));
}

/// UP-05 and UP-06 through the queue: requests made while down wait for the hook, which runs first on each new
/// connection, then go out in order through what it yields.
#[tokio::test(start_paused = true)]
async fn up_05_up_06_queued_requests_go_after_the_hook() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let mk = tower::service_fn(move |_: &'static str| {
        let conn = Flaky {
            born: Instant::now(),
            lifetime: Duration::from_secs(3600),
            log: l.clone(),
        };
        async move {
            tokio::time::sleep(ms(100)).await;
            Ok::<_, BoxError>(conn)
        }
    });
    let hook = |mut conn: Flaky| async move {
        conn.ready().await?.call("auth".to_string()).await?;
        Ok::<_, BoxError>(conn)
    };
    let svc = ServiceBuilder::new()
        .layer(QueueLayer::default())
        .layer(ReconnectLayer::new(
            ReconnectConfig::builder("peer")
                .on_up(hook)
                .build()
                .expect("valid reconnect config"),
        ))
        .service(mk);
    let calls: Vec<_> = (0..3)
        .map(|i| tokio::spawn(svc.clone().oneshot(format!("call {i}"))))
        .collect();
    for call in calls {
        call.await.expect("task").expect("answer");
    }
    assert_eq!(
        *log.lock().expect("log"),
        ["auth", "call 0", "call 1", "call 2"]
    );
}

/// When the link below gives up for good, what waits fails with a typed error that says why, and so does every later
/// request: nothing hangs.
#[tokio::test(start_paused = true)]
async fn give_up_below_fails_queued_with_the_reason() {
    let mk =
        tower::service_fn(|_: &'static str| async { Err::<Flaky, BoxError>("refused".into()) });
    let backoff = Constant::new(ms(10))
        .with_max_attempts(3)
        .expect("attempts");
    let queue: Queue<_, String> = ServiceBuilder::new()
        .layer(QueueLayer::default())
        .layer(ReconnectLayer::new(
            ReconnectConfig::builder("peer")
                .backoff(backoff)
                .build()
                .expect("valid reconnect config"),
        ))
        .service(mk);
    let err = queue
        .clone()
        .oneshot("x".to_string())
        .await
        .expect_err("gave up");
    let failed = err.downcast_ref::<ServiceFailed>().expect("ServiceFailed");
    assert!(std::error::Error::source(failed).is_some_and(|e| e.is::<GaveUp>()));
    let later = queue
        .oneshot("y".to_string())
        .await
        .expect_err("still failed");
    assert!(later.is::<ServiceFailed>());
}

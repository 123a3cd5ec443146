//! The replay barrier of `Reconnect`: a new connection serves nothing until the calls of the lost one have settled,
//! so that a request the lost link never wrote is back in its place before anything issued later goes out.

mod support;

use std::future::{Pending, pending};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::backoff::Constant;
use connman_core::error::BoxError;
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::{DEFAULT_SETTLE_TIMEOUT, Reconnect, ReconnectLayer};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, Service};

/// A connection whose calls never answer, and that fails `poll_ready` once it is marked dead.
#[derive(Debug, Clone)]
struct Conn {
    dead: Arc<AtomicBool>,
}

impl Service<u32> for Conn {
    type Response = u32;
    type Error = BoxError;
    type Future = Pending<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.dead.load(Ordering::SeqCst) {
            Poll::Ready(Err("link lost".into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        pending()
    }
}

/// Hands out connections; the test kills the first one.
#[derive(Debug, Clone, Default)]
struct Make {
    made: Arc<AtomicUsize>,
    first: Arc<AtomicBool>,
}

impl Service<()> for Make {
    type Response = Conn;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Conn, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let dead = if self.made.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first.clone()
        } else {
            Arc::default()
        };
        std::future::ready(Ok(Conn { dead }))
    }
}

fn reconnect(make: Make) -> Reconnect<Make, ()> {
    ReconnectLayer::new(
        ReconnectConfig::builder(())
            .backoff(Constant::new(Duration::from_millis(1)))
            .build()
            .expect("valid reconnect config"),
    )
    .layer(make)
}

async fn ready(svc: &mut Reconnect<Make, ()>) {
    support::ready::<_, u32>(svc).await.expect("ready");
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_waits_until_the_calls_of_the_lost_one_are_dropped() {
    let make = Make::default();
    let mut svc = reconnect(make.clone());
    ready(&mut svc).await;
    let open_call = svc.call(1);

    // The link dies with a call still open: the next connection is made, but serves nothing yet.
    make.first.store(true, Ordering::SeqCst);
    let mut waiting = task::spawn(std::future::poll_fn(|cx| {
        Service::<u32>::poll_ready(&mut svc, cx)
    }));
    assert_pending!(waiting.poll());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_pending!(waiting.poll());
    assert_eq!(
        make.made.load(Ordering::SeqCst),
        2,
        "the new connection is made meanwhile"
    );

    // Its owner lets go of the call (a queue would have put a never-written request back in line first).
    drop(open_call);
    assert!(waiting.is_woken());
    assert_ready_ok!(waiting.poll());
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_the_calls_of_a_lost_connection_is_bounded() {
    let make = Make::default();
    let mut svc = reconnect(make.clone());
    ready(&mut svc).await;
    let _held_forever = svc.call(1);

    make.first.store(true, Ordering::SeqCst);
    let mut waiting = task::spawn(std::future::poll_fn(|cx| {
        Service::<u32>::poll_ready(&mut svc, cx)
    }));
    assert_pending!(waiting.poll());
    tokio::time::sleep(DEFAULT_SETTLE_TIMEOUT - Duration::from_millis(10)).await;
    assert_pending!(waiting.poll());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_ready_ok!(waiting.poll());
}

#[tokio::test(start_paused = true)]
async fn no_wait_when_the_lost_connection_had_no_open_calls() {
    let make = Make::default();
    let mut svc = reconnect(make.clone());
    ready(&mut svc).await;
    let done = svc.call(1);
    drop(done);

    make.first.store(true, Ordering::SeqCst);
    let mut waiting = task::spawn(std::future::poll_fn(|cx| {
        Service::<u32>::poll_ready(&mut svc, cx)
    }));
    assert_pending!(waiting.poll());
    // Only the 1 ms backoff stands between the lost link and the new one.
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_ready_ok!(waiting.poll());
}

#[test]
fn a_zero_settle_timeout_is_rejected() {
    let zero = ReconnectConfig::builder(())
        .settle_timeout(Duration::ZERO)
        .build();
    assert!(zero.is_err());
}

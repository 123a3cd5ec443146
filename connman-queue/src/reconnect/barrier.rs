//! The replay barrier: a new connection serves nothing until the calls still open on the lost one are gone.
//!
//! This is the one contract between [`Reconnect`](super::Reconnect) and a [`Queue`](crate::queue::Queue) above it.
//! A call of a lost connection that failed as never written is put back in its place in the queue by the call's
//! owner, when the owner sees the failure, and only then drops the call's future. So once every call of the lost
//! connection has been dropped, every such request is back in line, and nothing issued later can overtake it on the
//! next connection. The [`Barrier`] counts those calls and tells the next connection when they are gone; its
//! [settle timeout](super::ReconnectBuilder::settle_timeout) bounds the wait for an owner that holds a call without
//! polling or dropping it.
//!
//! # How calls are counted
//!
//! Each handle of the service has one [`Calls`] per connection, and each of its calls holds a strong count of it
//! (an [`OpenCall`]) until the call's future is dropped. While the connection is up, the barrier holds one more
//! strong count of every handle's `Calls` and the handle holds a weak one: so a call costs one upgrade and one drop,
//! the only writes to shared memory on the request path, and an idle handle holds nothing that delays a settle. When
//! the connection is lost, the barrier lets go of its counts and keeps weak ones: the lost connection has settled
//! once none can be upgraded, and the last call to go wakes the connection's owner through the `Calls`' drop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Sleep;

/// The calls of one handle on one connection.
///
/// Aligned to two cache lines, so that the counts of handles on different threads (at the start of the `Arc`'s
/// allocation) never share a line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Calls {
    /// Woken when these calls are all gone after the connection was lost.
    settled: Arc<AtomicWaker>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        self.settled.wake();
    }
}

/// One open call: a strong count of its handle's [`Calls`], until the call's future is dropped.
#[derive(Debug)]
pub(crate) struct OpenCall {
    _calls: Arc<Calls>,
}

/// A handle's side: its weak count of its [`Calls`] on the connection it uses.
#[derive(Debug)]
pub(crate) struct CallCounter(Weak<Calls>);

impl CallCounter {
    /// Counts a call on the connection; `None` once the connection was lost and all its calls are gone (the handle
    /// then has to take the next connection: nothing was written).
    pub(crate) fn open(&self) -> Option<OpenCall> {
        self.0.upgrade().map(|calls| OpenCall { _calls: calls })
    }
}

/// The owner's side, kept with the connection under the owner's lock.
#[derive(Debug)]
pub(crate) struct Barrier {
    settled: Arc<AtomicWaker>,
    /// Every handle's calls on the current connection, held strongly while it is up.
    current: Vec<Arc<Calls>>,
    /// When to look for handles that are gone: twice the size after the last look, so it costs O(1) per handle.
    prune_at: usize,
    /// The calls of the lost connection that may still be open.
    lost: Vec<Weak<Calls>>,
    /// The settle timeout, running while `lost` is not empty.
    bound: Option<Pin<Box<Sleep>>>,
}

impl Barrier {
    const FIRST_PRUNE: usize = 8;

    pub(crate) fn new() -> Self {
        Self {
            settled: Arc::new(AtomicWaker::new()),
            current: Vec::new(),
            prune_at: Self::FIRST_PRUNE,
            lost: Vec::new(),
            bound: None,
        }
    }

    /// A handle starts using the current connection: its counter of calls on it.
    pub(crate) fn join(&mut self) -> CallCounter {
        if self.current.len() >= self.prune_at {
            // A handle that is gone holds no weak count; with no call open either, nothing needs its `Calls`.
            self.current
                .retain(|c| Arc::weak_count(c) > 0 || Arc::strong_count(c) > 1);
            self.prune_at = (self.current.len() * 2).max(Self::FIRST_PRUNE);
        }
        let calls = Arc::new(Calls {
            settled: self.settled.clone(),
        });
        let counter = CallCounter(Arc::downgrade(&calls));
        self.current.push(calls);
        counter
    }

    /// The current connection is lost: the next one waits until its open calls are gone, for at most `timeout`.
    pub(crate) fn lose(&mut self, timeout: Duration) {
        let lost = std::mem::take(&mut self.current);
        self.prune_at = Self::FIRST_PRUNE;
        self.lost.extend(lost.iter().map(Arc::downgrade));
        drop(lost);
        self.lost.retain(|c| c.strong_count() > 0);
        if !self.lost.is_empty() && self.bound.is_none() {
            self.bound = Some(Box::pin(tokio::time::sleep(timeout)));
        }
    }

    /// True once the calls of the lost connection are all gone, or the settle timeout has passed; else the task of
    /// `cx` is woken when the last goes or the timeout passes.
    pub(crate) fn poll_settled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.lost.is_empty() {
            return true;
        }
        // Registered before the counts are read: a call dropped after the read wakes this task.
        self.settled.register(cx.waker());
        self.lost.retain(|c| c.strong_count() > 0);
        let timed_out = self
            .bound
            .as_mut()
            .is_none_or(|bound| bound.as_mut().poll(cx).is_ready());
        if self.lost.is_empty() || timed_out {
            self.lost.clear();
            self.bound = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    /// Ready once `barrier` has settled.
    fn settled(barrier: &mut Barrier) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if barrier.poll_settled(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_settles_when_its_last_open_call_is_dropped() {
        let mut barrier = Barrier::new();
        let idle = barrier.join();
        let busy = barrier.join();
        let first = busy.open().expect("up");
        let second = busy.open().expect("up");
        barrier.lose(Duration::from_secs(1));
        // The idle handle holds only a weak count: it delays nothing, and it can no longer count a call.
        assert!(idle.open().is_none());
        let mut settle = tokio_test::task::spawn(settled(&mut barrier));
        assert!(settle.poll().is_pending());
        // One call of the busy handle is still open: no wake-up for nothing.
        drop(first);
        assert!(!settle.is_woken());
        assert!(settle.poll().is_pending());
        drop(second);
        assert!(settle.is_woken());
        assert!(settle.poll().is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_held_past_the_settle_timeout_no_longer_holds_the_next_connection() {
        let mut barrier = Barrier::new();
        let handle = barrier.join();
        let _held = handle.open().expect("up");
        barrier.lose(Duration::from_secs(1));
        let mut settle = tokio_test::task::spawn(settled(&mut barrier));
        assert!(settle.poll().is_pending());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(settle.poll().is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(settle.poll().is_ready());
    }

    #[test]
    fn handles_that_are_gone_leave_the_current_connection() {
        let mut barrier = Barrier::new();
        let kept = barrier.join();
        for _ in 0..1000 {
            drop(barrier.join());
        }
        assert!(
            barrier.current.len() < 2 * Barrier::FIRST_PRUNE + 2,
            "{}",
            barrier.current.len()
        );
        assert!(kept.open().is_some());
    }
}

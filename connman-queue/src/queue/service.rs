//! The [`Queue`] service and its handle.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use connman_core::error::{BoxError, NoRuntime, Overloaded};
use tokio::sync::TryAcquireError;
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::config::QueueConfig;
use super::error::NotReady;
use super::future::{ResponseFuture, Ticket};
use super::local::HandleState;
use super::shared::{self, Place, Shared, Submitted};
use super::stats::QueueStats;

/// Requests wait here while the link is down and go out in order once it is up. See the [module docs](super).
///
/// A clone is a new handle to the same queue (like `tower::buffer::Buffer`); each clone reserves its own capacity in
/// `poll_ready`. Requests must be `Clone`: a request stays with the queue until it is answered, so that one that was
/// not sent can be replayed.
///
/// While the service below is ready and nothing waits, a request takes the fast path: each handle sends through its
/// own clone of the service below (so it must be `Clone`, as `Reconnect` and pipelined clients are) and writes only
/// to words of its own: one read of the queue's gate word, a permit from the capacity the handle holds (taken from the
/// queue's semaphore in batches), and its own counters. The slow path (a request that has to wait, a replay) takes
/// the queue's lock; there the service's `poll_ready` and `call` run under it, so they must be quick and must not call
/// back into the queue (tower services never block there; the response future is polled outside the lock).
///
/// ```
/// use connman_core::error::BoxError;
/// use connman_queue::queue::{CallOptions, QueueLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let echo = service_fn(|req: &'static str| async move { Ok::<_, BoxError>(req) });
/// let mut queue = QueueLayer::default().layer(echo);
///
/// // Up and nothing waiting: the request goes straight through.
/// assert_eq!(queue.ready().await?.call_with("hi", CallOptions::new().idempotent()).await?, "hi");
/// assert_eq!(queue.stats().direct, 1);
///
/// // Closed: every later request fails with `Closed`.
/// queue.handle().close();
/// assert!(queue.ready().await.is_err());
/// # Ok(()) }
/// ```
pub struct Queue<S: tower_service::Service<Req>, Req> {
    shared: Arc<Shared<S, Req>>,
    /// This handle's share of the capacity, shared with its response futures.
    state: Arc<HandleState<S, Req>>,
    /// This handle's own clone of the service below, for the fast path.
    svc: Option<S>,
    /// Numbers this handle's requests sent while the gate is open.
    next: u64,
    /// The handle's place in the line for capacity, while it waits.
    waiter: Option<PollSemaphore>,
    waiting: bool,
    overloaded: bool,
}

/// Per-request options for [`Queue::call_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Replay the request after a [`MaybeDelivered`](connman_core::error::MaybeDelivered) failure too
    /// (at-least-once). Only for requests that are safe to apply twice.
    pub idempotent: bool,
    /// Fail with [`Elapsed`](connman_core::error::Elapsed) if the request is still queued this long after the call
    /// (upnode's `up(t, cb)`, UP-04). The queue's own max wait applies too. For a request that went straight out
    /// and came back for a replay, the time counts from that first replay: time in flight is not time queued.
    pub deadline: Option<Duration>,
}

impl CallOptions {
    /// No options: at-most-once, only the queue's max wait.
    pub const fn new() -> Self {
        Self {
            idempotent: false,
            deadline: None,
        }
    }

    /// Marks the request idempotent: it may be delivered more than once.
    #[must_use]
    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Sets a deadline for the time the request spends queued.
    #[must_use]
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// A handle to close a queue and read its counters, whatever its service and request types.
#[derive(Clone)]
pub struct QueueHandle {
    control: Arc<dyn Control + Send + Sync>,
}

impl QueueHandle {
    /// Closes the queue: every queued and later request fails with
    /// [`Closed`](connman_core::error::Closed), and the queue's own copy of the inner service is dropped (a
    /// `Reconnect` below cancels its connect and its backoff timer once no handle holds a clone of it). A handle keeps
    /// a clone for its fast path while the link is up; it lets go of it at its next `poll_ready` or call, or when it
    /// is dropped. Idempotent.
    pub fn close(&self) {
        self.control.close();
    }

    /// Whether the queue is closed (or its inner service failed for good).
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }

    /// The gauges and counters now.
    pub fn stats(&self) -> QueueStats {
        self.control.stats()
    }
}

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

trait Control {
    fn close(&self);
    fn is_closed(&self) -> bool;
    fn stats(&self) -> QueueStats;
}

impl<S, Req> Control for Shared<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    fn close(&self) {
        Shared::close(self);
    }

    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }

    fn stats(&self) -> QueueStats {
        Shared::stats(self)
    }
}

impl<S, Req> Queue<S, Req>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Clone + Send + 'static,
{
    /// Puts a queue with `config` in front of `service`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the queue spawns a small worker task, as `tower::buffer::Buffer` does (a
    /// [`Layer`](tower_layer::Layer) cannot return an error). [`Queue::try_new`] returns the typed
    /// [`NoRuntime`] instead.
    pub fn new(service: S, config: QueueConfig<Req>) -> Self {
        match Self::try_new(service, config) {
            Ok(queue) => queue,
            Err(e) => panic!("{e}: Queue::new spawns its worker on the current tokio runtime"),
        }
    }

    /// Puts a queue with `config` in front of `service`; outside a tokio runtime, fails with [`NoRuntime`].
    ///
    /// ```
    /// use connman_core::error::NoRuntime;
    /// use connman_queue::queue::{Queue, QueueConfig};
    ///
    /// let echo = tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// assert_eq!(Queue::try_new(echo, QueueConfig::default()).unwrap_err(), NoRuntime::new());
    /// ```
    pub fn try_new(service: S, config: QueueConfig<Req>) -> Result<Self, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime::new())?;
        let shared = Arc::new(Shared::new(service, &config));
        runtime.spawn(shared::run(Arc::downgrade(&shared), shared.notify.clone()));
        Ok(Self::from_shared(shared))
    }

    /// A handle that closes the queue and reads its counters.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            control: self.shared.clone(),
        }
    }
}

impl<S, Req> Queue<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    fn from_shared(shared: Arc<Shared<S, Req>>) -> Self {
        Self {
            state: Arc::new(HandleState::new(shared.clone())),
            shared,
            svc: None,
            next: 0,
            waiter: None,
            waiting: false,
            overloaded: false,
        }
    }

    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes the queue; see [`QueueHandle::close`].
    pub fn close(&self) {
        self.shared.close();
    }

    /// The gauges and counters now.
    pub fn stats(&self) -> QueueStats {
        self.shared.stats()
    }

    /// Sends `req` with per-request options, after a successful `poll_ready`.
    pub fn call_with(&mut self, req: Req, options: CallOptions) -> ResponseFuture<S, Req>
    where
        S: Clone,
    {
        let state = &self.state;
        let shared = &self.shared;
        if std::mem::take(&mut self.overloaded) {
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return ResponseFuture::failed(state.clone(), Overloaded::new().into());
        }
        if !state.is_reserved() {
            return ResponseFuture::failed(state.clone(), NotReady::new().into());
        }
        let weight = match shared.weight {
            None => 0,
            Some(_) => {
                let weight = (shared.weigh)(&req);
                if !shared.reserve_weight(weight) {
                    state.unreserve();
                    shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
                    return ResponseFuture::failed(state.clone(), Overloaded::new().into());
                }
                weight
            }
        };
        let wait = options
            .deadline
            .map_or(shared.max_wait, |d| d.min(shared.max_wait));
        let ticket = Ticket::new(weight);
        // The fast path: the gate is open, and this handle's own clone of the service below is ready.
        let gate = shared.gate();
        if gate & 1 == 1 {
            if self.svc.is_none() {
                self.svc = shared.clone_service();
            }
            if let Some(svc) = &mut self.svc {
                let mut cx = Context::from_waker(Waker::noop());
                // Pending or an error: the slow path below asks the queue's own copy, and sees the error too.
                if let Poll::Ready(Ok(())) = svc.poll_ready(&mut cx) {
                    state.use_reserved();
                    state.count_direct();
                    let place = Place {
                        epoch: gate >> 1,
                        seq: self.next,
                    };
                    self.next += 1;
                    let keep = req.clone();
                    let fut = svc.call(req);
                    return ResponseFuture::sent(
                        state.clone(),
                        ticket,
                        options.idempotent,
                        wait,
                        place,
                        fut,
                        keep,
                    );
                }
            }
        } else {
            // Shut (an outage, a close): the handle lets go of its clone, so that what the service below holds (a
            // connection, a connect in flight) goes with the queue's own copy; it takes a new one once open again.
            self.svc = None;
        }
        state.use_reserved();
        match shared.submit(req, wait, &mut self.next) {
            Submitted::Sent(place, fut, req) => {
                state.count_direct();
                ResponseFuture::sent(
                    state.clone(),
                    ticket,
                    options.idempotent,
                    wait,
                    place,
                    fut,
                    req,
                )
            }
            Submitted::Queued(place, deadline, rx) => ResponseFuture::queued(
                state.clone(),
                ticket,
                options.idempotent,
                deadline,
                place,
                rx,
            ),
            Submitted::Failed(e) => {
                state.answered();
                shared.release_weight(weight);
                ResponseFuture::failed(state.clone(), e)
            }
        }
    }
}

impl<S, Req> Service<Req> for Queue<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The fast path: a permit this handle holds spare, reserved in a word only it and its futures write (and a
        // read of the closed flag, written once).
        if !self.shared.is_closed() && self.state.try_reserve() {
            self.stop_waiting();
            self.overloaded = false;
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.shared.is_closed() {
                self.svc = None;
                self.stop_waiting();
                return Poll::Ready(Err(self.shared.failure()));
            }
            if self.state.try_reserve() {
                self.stop_waiting();
                self.overloaded = false;
                return Poll::Ready(Ok(()));
            }
            // Take a batch of permits, or at least one, without waiting.
            let permits = &self.shared.permits;
            let batch = self
                .shared
                .batch
                .min(u32::try_from(permits.available_permits()).unwrap_or(u32::MAX))
                .max(1);
            match permits.try_acquire_many(batch) {
                Ok(permit) => {
                    permit.forget();
                    self.state.add_held(batch);
                    continue;
                }
                Err(TryAcquireError::Closed) => continue,
                Err(TryAcquireError::NoPermits) => {}
            }
            if !self.waiting {
                // Capacity held spare by other handles comes back first; then this handle waits in line (FIFO).
                self.shared.waiting.fetch_add(1, Ordering::Relaxed);
                self.waiting = true;
                self.shared.reclaim_spare();
            }
            if self.shared.reject_when_full && permits.available_permits() == 0 {
                // A handle found full tries again at its next `poll_ready`: capacity may have come back since.
                self.stop_waiting();
                self.overloaded = true;
                return Poll::Ready(Ok(()));
            }
            let waiter = self
                .waiter
                .get_or_insert_with(|| PollSemaphore::new(self.shared.permits.clone()));
            match waiter.poll_acquire(cx) {
                Poll::Ready(Some(permit)) => {
                    permit.forget();
                    self.state.add_held(1);
                }
                // Closed: reported at the top of the loop.
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.call_with(req, CallOptions::new())
    }
}

impl<S, Req> Clone for Queue<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    fn clone(&self) -> Self {
        // A clone of a ready handle is not ready: capacity is reserved per handle.
        Self::from_shared(self.shared.clone())
    }
}

impl<S: Service<Req>, Req> Drop for Queue<S, Req> {
    fn drop(&mut self) {
        // A handle dropped gives back its reserved and spare permits now, the others as its requests are answered;
        // one dropped while waiting leaves the line.
        if std::mem::take(&mut self.waiting) {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        self.state.orphan();
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Queue<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("ready", &self.state.is_reserved())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use connman_core::error::NotSent;
    use tower_test::mock;

    use super::*;

    type Mock = mock::Mock<&'static str, &'static str>;

    async fn ready(queue: &mut Queue<Mock, &'static str>) {
        poll_fn(|cx| Service::poll_ready(queue, cx))
            .await
            .expect("queue ready");
    }

    /// With the default weigher the weight held is counted from calls and answers, not with an atomic of its own:
    /// it must still be exact through queued, sent, replayed, failed and dropped requests, and a reserved slot that
    /// no request used weighs nothing.
    #[tokio::test(start_paused = true)]
    async fn unit_weight_gauge_counts_requests_called_and_not_answered() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut queue = Queue::new(service, QueueConfig::default());
        assert!(queue.shared.weight.is_none());
        handle.allow(0);
        ready(&mut queue).await;
        let a = queue.call("a");
        ready(&mut queue).await;
        let b = queue.call("b");
        // Reserved, not called: no weight.
        ready(&mut queue).await;
        assert_eq!(queue.stats().weight, 2);
        drop(b);
        assert_eq!(queue.stats().weight, 1);
        handle.allow(1);
        let (req, send) = handle.next_request().await.expect("a");
        assert_eq!(req, "a");
        // Not sent: replayed, and still held.
        send.send_error(NotSent::new());
        let mut a = tokio_test::task::spawn(a);
        assert!(a.poll().is_pending());
        assert_eq!(queue.stats().weight, 1);
        handle.allow(1);
        let (_, send) = handle.next_request().await.expect("a again");
        send.send_response("A");
        assert_eq!(a.await.expect("answer"), "A");
        assert_eq!(queue.stats().weight, 0);
        // A request refused at call (the queue closed after its slot was reserved) gives its weight back at once.
        queue.close();
        let c = queue.call("c");
        assert_eq!(queue.stats().weight, 0);
        assert!(
            c.await
                .expect_err("closed")
                .is::<connman_core::error::Closed>()
        );
    }

    /// A weigher of one's own, or a weight bound below the capacity, keeps the atomic weight count and its bound.
    #[tokio::test(start_paused = true)]
    async fn a_binding_weight_bound_is_still_enforced_with_unit_weights() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let config = QueueConfig::builder()
            .max_weight(1)
            .build()
            .expect("weight");
        let mut queue = Queue::new(service, config);
        assert!(queue.shared.weight.is_some());
        handle.allow(0);
        ready(&mut queue).await;
        let _held = queue.call("a");
        ready(&mut queue).await;
        let err = queue.call("b").await.expect_err("over the weight bound");
        assert!(err.is::<Overloaded>());
        assert_eq!(queue.stats().weight, 1);
    }

    /// Many callers on two threads through a queue of four slots: slots taken and given back concurrently, with
    /// handles joining and leaving the line, never let more than four requests in at once and are never lost.
    #[test]
    fn capacity_holds_and_no_slot_is_lost_under_concurrent_callers() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        const CAPACITY: usize = 4;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (inside2, most2) = (inside.clone(), most.clone());
        let service = tower::service_fn(move |n: u64| {
            let (inside, most) = (inside2.clone(), most2.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(n)
            }
        });
        rt.block_on(async {
            let config = QueueConfig::builder()
                .capacity(CAPACITY)
                .build()
                .expect("capacity");
            let queue = Queue::new(service, config);
            let callers: Vec<_> = (0..32u64)
                .map(|caller| {
                    let mut queue = queue.clone();
                    tokio::spawn(async move {
                        for n in 0..200 {
                            if (caller + n) % 5 == 0 {
                                // Now and then a handle gives up while waiting for a slot, perhaps after one was
                                // granted to it: it leaves the line and the slot must go on to the next.
                                let waiting = std::future::poll_fn(|cx| {
                                    Poll::Ready(Service::poll_ready(&mut queue, cx).is_pending())
                                })
                                .await;
                                if waiting {
                                    tokio::task::yield_now().await;
                                    queue = queue.clone();
                                }
                            }
                            let answer = tower::ServiceExt::ready(&mut queue)
                                .await
                                .expect("ready")
                                .call(n)
                                .await
                                .expect("answer");
                            assert_eq!(answer, n);
                        }
                    })
                })
                .collect();
            for caller in callers {
                tokio::time::timeout(std::time::Duration::from_secs(20), caller)
                    .await
                    .expect("no caller hangs")
                    .expect("caller");
            }
            let stats = queue.stats();
            assert_eq!((stats.len, stats.weight), (0, 0));
            // Every permit is back once the last handle is gone.
            let shared = queue.shared.clone();
            drop(queue);
            assert_eq!(shared.permits.available_permits(), CAPACITY);
        });
        assert!(most.load(Ordering::SeqCst) <= CAPACITY);
        assert_eq!(inside.load(Ordering::SeqCst), 0);
    }
}

//! The state every clone of a [`Queue`](super::Queue), its futures and its worker share.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use connman_core::capacity::Share;
use connman_core::error::{BoxError, Closed, Elapsed, SharedError};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;
use tower_service::Service;

use super::config::{QueueConfig, Weigher};
use super::error::ServiceFailed;
use super::stats::QueueStats;

pub(crate) struct Shared<S: Service<Req>, Req> {
    inner: Mutex<Inner<S, Req>>,
    pub(crate) notify: Arc<Notify>,
    /// `epoch << 1 | open`. Open while nothing waits and the service below was last seen ready: handles then send
    /// through their own clone of it without touching anything shared. Written only by the slow path.
    gate: AtomicU64,
    /// The capacity: every request the queue answers for holds one permit, taken by handles in batches.
    pub(crate) permits: Arc<Semaphore>,
    /// How many permits a handle takes at once when it has none spare.
    pub(crate) batch: u32,
    /// Handles waiting for a permit; while any wait, handles give back the permits they hold spare.
    pub(crate) waiting: AtomicUsize,
    /// The weight bound, with a weigher of one's own (with the default, one per request, the weight is the count and
    /// its bound is folded into the capacity).
    pub(crate) weight: Option<Semaphore>,
    pub(crate) max_weight: usize,
    closed: AtomicBool,
    pub(crate) max_wait: Duration,
    pub(crate) reject_when_full: bool,
    pub(crate) max_replays: u32,
    pub(crate) weigh: Weigher<Req>,
    pub(crate) counters: Counters,
}

struct Inner<S: Service<Req>, Req> {
    service: Option<S>,
    /// Waiting requests, sorted by their place: a replayed request goes back to it.
    queue: VecDeque<Entry<S::Future, Req>>,
    next_seq: u64,
    failure: Option<Failure>,
    /// The counters of every handle, for the gauges.
    handles: Vec<Weak<Counted>>,
}

/// Where a request stands in line: requests sent while the gate was open in one epoch come before those queued in
/// the next (closed) epoch, which come before those sent once it opens again. Inside an open epoch each handle numbers
/// its own requests, so a handle's requests keep their order through replays; inside a closed epoch the queue numbers
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
}

struct Entry<F, Req> {
    place: Place,
    deadline: Instant,
    req: Req,
    tx: oneshot::Sender<Result<Dispatch<F, Req>, BoxError>>,
}

/// A request the worker sent: the inner future to poll, and a copy of the request for a replay.
pub(crate) struct Dispatch<F, Req> {
    pub(crate) fut: F,
    pub(crate) req: Req,
}

pub(crate) type Receiver<F, Req> = oneshot::Receiver<Result<Dispatch<F, Req>, BoxError>>;

#[derive(Clone)]
enum Failure {
    Closed,
    Failed(SharedError),
}

impl Failure {
    fn error(&self) -> BoxError {
        match self {
            Failure::Closed => Closed::new().into(),
            Failure::Failed(e) => ServiceFailed::new(e.clone()).into(),
        }
    }
}

/// What a submitted request became.
pub(crate) enum Submitted<F, Req> {
    /// Sent at once.
    Sent(Place, F, Req),
    /// Waiting in the queue until the deadline.
    Queued(Place, Instant, Receiver<F, Req>),
    /// Refused.
    Failed(BoxError),
}

/// What one handle counts: written by that handle and its own futures only, read by the gauges. Aligned to two cache
/// lines so that handles on different threads never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counted {
    /// The handle's share of the capacity, see [`super::local`].
    pub(crate) share: Share,
    /// Whether a reservation (counted in the share) is not used by a request yet; only the handle writes it.
    pub(crate) reserved: AtomicBool,
    /// Requests sent at once on the fast path; only the handle writes it.
    pub(crate) direct: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Direct sends of handles that are gone.
    pub(crate) direct: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) maybe_delivered: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) len: AtomicUsize,
}

pub(crate) enum Step {
    Idle,
    Again,
    Stop,
}

impl<S, Req> Shared<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    pub(crate) fn new(service: S, config: &QueueConfig<Req>) -> Self {
        // Weight is counted one way, by a semaphore of its own, and only where its bound can bind: with one per
        // request and a weight bound no lower than the capacity, the weight is the count of requests.
        let weight = (!config.unit_weight || config.max_weight < config.capacity)
            .then(|| Semaphore::new(config.max_weight));
        let capacity = config.capacity;
        Self {
            inner: Mutex::new(Inner {
                service: Some(service),
                queue: VecDeque::new(),
                next_seq: 0,
                failure: None,
                handles: Vec::new(),
            }),
            notify: Arc::new(Notify::new()),
            gate: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(capacity)),
            batch: u32::try_from((capacity / 64).clamp(1, 16)).unwrap_or(1),
            waiting: AtomicUsize::new(0),
            weight,
            max_weight: config.max_weight,
            closed: AtomicBool::new(false),
            max_wait: config.max_wait,
            reject_when_full: config.reject_when_full,
            max_replays: config.max_replays,
            weigh: config.weigh.clone(),
            counters: Counters::default(),
        }
    }

    /// The slow path: sends `req` at once if nothing waits and the service below is ready (opening the gate), else
    /// queues it for at most `wait` (closing the gate). `next` numbers the handle's requests sent while open.
    pub(crate) fn submit(
        &self,
        req: Req,
        wait: Duration,
        next: &mut u64,
    ) -> Submitted<S::Future, Req> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(failure) = &inner.failure {
            return Submitted::Failed(failure.error());
        }
        if inner.queue.is_empty()
            && let Some(svc) = inner.service.as_mut()
        {
            // The worker is idle when nothing waits, so polling here steals no wake-up from it.
            let mut cx = Context::from_waker(Waker::noop());
            match svc.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    let keep = req.clone();
                    let fut = svc.call(req);
                    let epoch = self.open();
                    let place = Place { epoch, seq: *next };
                    *next += 1;
                    return Submitted::Sent(place, fut, keep);
                }
                Poll::Ready(Err(e)) => {
                    self.fail(inner, e.into());
                    return Submitted::Failed(Self::failure_of(inner));
                }
                Poll::Pending => {}
            }
        }
        let epoch = self.shut();
        let place = Place {
            epoch,
            seq: inner.next_seq,
        };
        inner.next_seq += 1;
        // Only a request that has to wait reads the clock.
        let deadline = deadline(Instant::now(), wait);
        let (tx, rx) = oneshot::channel();
        inner.queue.push_back(Entry {
            place,
            deadline,
            req,
            tx,
        });
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        self.counters
            .len
            .store(inner.queue.len(), Ordering::Relaxed);
        drop(guard);
        self.notify.notify_one();
        Submitted::Queued(place, deadline, rx)
    }

    /// Opens the gate (a new epoch if it was shut); returns the open epoch. Called under the lock.
    fn open(&self) -> u64 {
        let gate = self.gate.load(Ordering::Acquire);
        if gate & 1 == 1 || self.closed.load(Ordering::Acquire) {
            return gate >> 1;
        }
        let epoch = (gate >> 1) + 1;
        self.gate.store(epoch << 1 | 1, Ordering::Release);
        epoch
    }

    /// Shuts the gate (a new epoch if it was open); returns the shut epoch. Called under the lock.
    fn shut(&self) -> u64 {
        let gate = self.gate.load(Ordering::Acquire);
        if gate & 1 == 0 {
            return gate >> 1;
        }
        let epoch = (gate >> 1) + 1;
        self.gate.store(epoch << 1, Ordering::Release);
        epoch
    }

    /// Puts a request that was not sent (or that is idempotent) back in its place in the queue.
    pub(crate) fn requeue(
        &self,
        place: Place,
        deadline: Instant,
        req: Req,
    ) -> Result<Receiver<S::Future, Req>, BoxError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(failure) = &inner.failure {
            return Err(failure.error());
        }
        // Nothing issued after it may overtake it: the gate stays shut until the queue is empty again.
        self.shut();
        let (tx, rx) = oneshot::channel();
        let pos = inner.queue.partition_point(|e| e.place <= place);
        inner.queue.insert(
            pos,
            Entry {
                place,
                deadline,
                req,
                tx,
            },
        );
        self.counters
            .len
            .store(inner.queue.len(), Ordering::Relaxed);
        drop(guard);
        self.notify.notify_one();
        Ok(rx)
    }

    /// Sends waiting requests, in order, while the inner service is ready.
    pub(crate) fn poll_dispatch(&self, cx: &mut Context<'_>) -> Poll<Step> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.failure.is_some() {
            return Poll::Ready(Step::Stop);
        }
        loop {
            let now = Instant::now();
            while let Some(front) = inner.queue.front() {
                if front.tx.is_closed() {
                    inner.queue.pop_front();
                } else if front.deadline <= now {
                    // A request whose deadline passed is never sent, even if its caller has not noticed yet.
                    if let Some(entry) = inner.queue.pop_front() {
                        self.counters.expired.fetch_add(1, Ordering::Relaxed);
                        let _ = entry.tx.send(Err(Elapsed::new().into()));
                    }
                } else {
                    break;
                }
            }
            self.counters
                .len
                .store(inner.queue.len(), Ordering::Relaxed);
            let Some(svc) = inner.service.as_mut() else {
                return Poll::Ready(Step::Stop);
            };
            if inner.queue.is_empty() {
                // Drained. The gate stays shut until a request finds the service below ready with nothing waiting
                // (`submit`): asking here would leave the service reserved for a call that may never come.
                return Poll::Ready(Step::Idle);
            }
            match svc.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.fail(inner, e.into());
                    return Poll::Ready(Step::Stop);
                }
                Poll::Ready(Ok(())) => {
                    let Some(entry) = inner.queue.pop_front() else {
                        return Poll::Ready(Step::Idle);
                    };
                    let keep = entry.req.clone();
                    let fut = svc.call(entry.req);
                    // The caller may have gone in between; its request then went out and nobody waits for it.
                    let _ = entry.tx.send(Ok(Dispatch { fut, req: keep }));
                }
            }
        }
    }

    /// Closes the queue: every waiting and later request fails with `Closed`, and the inner service is dropped, which
    /// cancels whatever it was doing (a connect, a backoff timer).
    pub(crate) fn close(&self) {
        let mut guard = self.lock();
        if guard.failure.is_none() {
            self.fail(&mut guard, Closed::new().into());
        }
    }

    /// The error of a closed or failed queue.
    pub(crate) fn failure(&self) -> BoxError {
        Self::failure_of(&self.lock())
    }

    fn failure_of(inner: &Inner<S, Req>) -> BoxError {
        inner
            .failure
            .as_ref()
            .map_or_else(|| Closed::new().into(), Failure::error)
    }

    fn fail(&self, inner: &mut Inner<S, Req>, error: BoxError) {
        let failure = if error.is::<Closed>() {
            Failure::Closed
        } else {
            Failure::Failed(Arc::from(error))
        };
        for entry in inner.queue.drain(..) {
            let _ = entry.tx.send(Err(failure.error()));
        }
        inner.failure = Some(failure);
        inner.service = None;
        self.counters.len.store(0, Ordering::Relaxed);
        self.closed.store(true, Ordering::Release);
        self.shut();
        self.permits.close();
        self.notify.notify_one();
    }
}

impl<S: Service<Req>, Req> Shared<S, Req> {
    /// The gate word: open (bit 0) and the epoch.
    pub(crate) fn gate(&self) -> u64 {
        self.gate.load(Ordering::Acquire)
    }

    /// A clone of the service below for a handle's fast path; `None` once the queue is closed.
    pub(crate) fn clone_service(&self) -> Option<S>
    where
        S: Clone,
    {
        self.lock().service.clone()
    }

    /// Takes back the permits every handle holds spare, for a handle that found none free.
    pub(crate) fn reclaim_spare(&self) {
        let inner = self.lock();
        let n: u64 = inner
            .handles
            .iter()
            .filter_map(Weak::upgrade)
            .map(|h| h.share.reclaim())
            .sum();
        drop(inner);
        super::local::give_back(self, n);
    }

    /// Registers a handle's counters for the gauges.
    pub(crate) fn register(&self, counted: &Arc<Counted>) {
        let mut inner = self.lock();
        inner.handles.retain(|h| h.strong_count() > 0);
        inner.handles.push(Arc::downgrade(counted));
    }

    /// Reserves `weight` with a weigher of one's own; false if it does not fit.
    pub(crate) fn reserve_weight(&self, weight: usize) -> bool {
        let Some(sem) = &self.weight else {
            return true;
        };
        match u32::try_from(weight) {
            Ok(0) => true,
            Ok(n) => sem.try_acquire_many(n).map(|p| p.forget()).is_ok(),
            Err(_) => false,
        }
    }

    /// Gives back `weight` reserved with [`Shared::reserve_weight`].
    pub(crate) fn release_weight(&self, weight: usize) {
        if let Some(sem) = &self.weight
            && weight != 0
        {
            sem.add_permits(weight);
        }
    }

    /// Takes the request at `place` out of the queue; false if it is no longer there (sent or failed already).
    pub(crate) fn remove(&self, place: Place) -> bool {
        let mut inner = self.lock();
        match inner.queue.binary_search_by_key(&place, |e| e.place) {
            Ok(pos) => {
                inner.queue.remove(pos);
                self.counters
                    .len
                    .store(inner.queue.len(), Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let c = &self.counters;
        let (count, direct) = {
            let inner = self.lock();
            inner.handles.iter().filter_map(Weak::upgrade).fold(
                (0, c.direct.load(Ordering::Relaxed)),
                |(n, d), h| {
                    (
                        n + super::local::in_flight(&h),
                        d + h.direct.load(Ordering::Relaxed),
                    )
                },
            )
        };
        let weight = match &self.weight {
            Some(sem) => self.max_weight.saturating_sub(sem.available_permits()),
            None => count,
        };
        QueueStats {
            len: c.len.load(Ordering::Relaxed),
            weight,
            direct,
            queued: c.queued.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            maybe_delivered: c.maybe_delivered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            closed: self.is_closed(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S, Req>> {
        // A panic in the inner service while the lock was held leaves the queue itself consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Service<Req>, Req> Drop for Shared<S, Req> {
    fn drop(&mut self) {
        // Wakes the worker so that it notices it has nothing left to serve.
        self.notify.notify_one();
    }
}

/// The instant `wait` after `now`, saturated: a wait past what the clock can tell means "not in this process's life",
/// never "at once".
pub(crate) fn deadline(now: Instant, wait: Duration) -> Instant {
    connman_core::rt::tokio::later(now, wait)
}

/// The worker: sends queued requests once the inner service is ready. It ends when the queue closes or is dropped.
pub(crate) async fn run<S, Req>(shared: Weak<Shared<S, Req>>, notify: Arc<Notify>)
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    loop {
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();
        let step = std::future::poll_fn(|cx| {
            let Some(shared) = shared.upgrade() else {
                return Poll::Ready(Step::Stop);
            };
            match shared.poll_dispatch(cx) {
                Poll::Ready(step) => Poll::Ready(step),
                Poll::Pending if notified.as_mut().poll(cx).is_ready() => Poll::Ready(Step::Again),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match step {
            Step::Stop => return,
            Step::Again => {}
            Step::Idle => notified.await,
        }
    }
}

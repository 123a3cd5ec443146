//! The state every clone of a [`Queue`](super::Queue), its futures and its worker share.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use connman_core::error::{BoxError, Closed, Elapsed, SharedError};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tower_service::Service;

use super::config::{QueueConfig, Weigher};
use super::error::ServiceFailed;
use super::slots::Slots;
use super::stats::QueueStats;

pub(crate) struct Shared<S: Service<Req>, Req> {
    inner: Mutex<Inner<S, Req>>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) slots: Slots,
    /// The weight held, unless `unit_weight`.
    weight: AtomicUsize,
    /// Every request weighs one and the weight bound cannot bind before the count bound: the weight held is the
    /// number of requests called and not yet answered, counted under the lock (calls) and by the slots (answers),
    /// so the fast path spends no atomic operation on weight.
    pub(crate) unit_weight: bool,
    closed: AtomicBool,
    pub(crate) max_weight: usize,
    pub(crate) max_wait: Duration,
    pub(crate) reject_when_full: bool,
    pub(crate) max_replays: u32,
    pub(crate) weigh: Weigher<Req>,
    pub(crate) counters: Counters,
}

struct Inner<S: Service<Req>, Req> {
    service: Option<S>,
    /// Waiting requests, sorted by sequence number: a replayed request goes back to its place.
    queue: VecDeque<Entry<S::Future, Req>>,
    next_seq: u64,
    failure: Option<Failure>,
    /// Requests called, wrapping, when `unit_weight`.
    called: u32,
    /// Requests sent at once on the fast path.
    direct: u64,
}

struct Entry<F, Req> {
    seq: u64,
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
    /// Sent at once on the fast path.
    Sent(u64, F, Req),
    /// Waiting in the queue until the deadline.
    Queued(u64, Instant, Receiver<F, Req>),
    /// Refused.
    Failed(BoxError),
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
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
    pub(crate) fn new(service: S, layer: &QueueConfig<Req>) -> Self {
        let slots = Slots::new(
            layer.capacity,
            layer.unit_weight && layer.max_weight >= layer.capacity,
        );
        let unit_weight = slots.counts_answers();
        Self {
            inner: Mutex::new(Inner {
                service: Some(service),
                queue: VecDeque::new(),
                next_seq: 0,
                failure: None,
                called: 0,
                direct: 0,
            }),
            notify: Arc::new(Notify::new()),
            slots,
            weight: AtomicUsize::new(0),
            unit_weight,
            closed: AtomicBool::new(false),
            max_weight: layer.max_weight,
            max_wait: layer.max_wait,
            reject_when_full: layer.reject_when_full,
            max_replays: layer.max_replays,
            weigh: layer.weigh.clone(),
            counters: Counters::default(),
        }
    }

    /// Sends `req` at once if nothing waits and the inner service is ready; else queues it for at most `wait`.
    pub(crate) fn submit(&self, req: Req, wait: Duration) -> Submitted<S::Future, Req> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if self.unit_weight {
            // Matched by the answer counted when the request's slot is released, whatever happens next.
            inner.called = inner.called.wrapping_add(1);
        }
        if let Some(failure) = &inner.failure {
            return Submitted::Failed(failure.error());
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.queue.is_empty()
            && let Some(svc) = inner.service.as_mut()
        {
            // The worker is idle when nothing waits, so polling here steals no wake-up from it.
            let mut cx = Context::from_waker(Waker::noop());
            match svc.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    let keep = req.clone();
                    let fut = svc.call(req);
                    inner.direct += 1;
                    return Submitted::Sent(seq, fut, keep);
                }
                Poll::Ready(Err(e)) => {
                    self.fail(inner, e.into());
                    return Submitted::Failed(Self::failure_of(inner));
                }
                Poll::Pending => {}
            }
        }
        // Only a request that has to wait reads the clock.
        let deadline = deadline(Instant::now(), wait);
        let (tx, rx) = oneshot::channel();
        inner.queue.push_back(Entry {
            seq,
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
        Submitted::Queued(seq, deadline, rx)
    }

    /// Puts a request that was not sent (or that is idempotent) back in its place in the queue.
    pub(crate) fn requeue(
        &self,
        seq: u64,
        deadline: Instant,
        req: Req,
    ) -> Result<Receiver<S::Future, Req>, BoxError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(failure) = &inner.failure {
            return Err(failure.error());
        }
        let (tx, rx) = oneshot::channel();
        let pos = inner.queue.partition_point(|e| e.seq < seq);
        inner.queue.insert(
            pos,
            Entry {
                seq,
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
            if inner.queue.is_empty() {
                return Poll::Ready(Step::Idle);
            }
            let Some(svc) = inner.service.as_mut() else {
                return Poll::Ready(Step::Stop);
            };
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

    /// Reserves `weight`; false if it does not fit.
    pub(crate) fn reserve_weight(&self, weight: usize) -> bool {
        self.weight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(weight).filter(|&w| w <= self.max_weight)
            })
            .is_ok()
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
        self.slots.close();
        self.notify.notify_one();
    }
}

impl<S: Service<Req>, Req> Shared<S, Req> {
    /// Takes request `seq` out of the queue; false if it is no longer there (sent or failed already).
    pub(crate) fn remove(&self, seq: u64) -> bool {
        let mut inner = self.lock();
        match inner.queue.binary_search_by_key(&seq, |e| e.seq) {
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

    /// Gives back the slot and `weight` of a request that was called.
    pub(crate) fn release(&self, weight: usize) {
        if !self.unit_weight && weight != 0 {
            self.weight.fetch_sub(weight, Ordering::AcqRel);
        }
        self.slots.release(true);
    }

    /// Gives back a slot reserved by `poll_ready` that no request used.
    pub(crate) fn release_slot(&self) {
        self.slots.release(false);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let c = &self.counters;
        let (weight, direct) = {
            let inner = self.lock();
            // Answers follow calls and calls wait for the lock: the difference is the weight held.
            let weight = if self.unit_weight {
                inner.called.wrapping_sub(self.slots.answered()) as usize
            } else {
                self.weight.load(Ordering::Relaxed)
            };
            (weight, inner.direct)
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

/// The instant `wait` after `now` (`now` itself if the clock cannot tell it).
pub(crate) fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
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

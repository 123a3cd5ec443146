//! The [`Reconnect`] service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use connman_core::driver::{Driver, Next};
use connman_core::error::{BoxError, Closed, Elapsed, NotSent};
use connman_core::lifecycle::{CloseReason, Event, Lifecycle, State};
use connman_core::rt::tokio::{Publish, TokioTimer};
use tokio::sync::{broadcast, watch};
use tokio::time::Timeout;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower_service::Service;

use super::barrier::{Barrier, CallCounter};
use super::config::{BoxBackoff, Classifier, ReconnectConfig};
use super::error::{FatalConnect, GaveUp};
use super::future::ResponseFuture;
use super::handle::{CloseHandle, Closer, ReconnectStats};
use super::hook::{Identity, OnUp};

/// A service that keeps a connection made by a make service `M` up, and serves requests through it.
///
/// It drives a [`Lifecycle`]: `poll_ready` stays `Pending` through connect attempts and backoff and never returns an
/// error for a retriable failure, so no request fails just because one attempt failed (the flaw of tower's
/// `Reconnect`, tower#60). When the connection's own `poll_ready` fails, the link is lost: the connection is dropped and
/// a new one made after the backoff (no hot loop, tower#244). A fatal failure, a backoff that gives up or a close make
/// `poll_ready` fail for good: with [`FatalConnect`], [`GaveUp`] or [`Closed`]. A backoff of zero reconnects at once,
/// yielding to the scheduler every few attempts rather than spinning inside one `poll_ready`.
///
/// A clone is a new handle to the same link (one lifecycle, one connection). Each handle keeps its own clone of the
/// connection service, so while the link is up a request through any handle touches nothing the other handles
/// write: `poll_ready` reads one shared word (the link's generation) and asks the handle's own connection clone. The
/// connection service must therefore be `Clone`, as pipelined clients are. The link is closed when the last handle is
/// dropped.
///
/// ```
/// use connman_queue::reconnect::{Reconnect, ReconnectConfig};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), connman_core::error::BoxError> {
/// // A "connection" that doubles numbers; the make service hands out a new one per connect.
/// let connect = service_fn(|_addr: &'static str| async {
///     Ok::<_, std::io::Error>(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }))
/// });
/// let reconnect = Reconnect::new(connect, ReconnectConfig::new("127.0.0.1:7000"));
/// assert_eq!(reconnect.oneshot(21).await?, 42);
/// # Ok(()) }
/// ```
pub struct Reconnect<M, Target, H = Identity>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    shared: Arc<Shared<M, Target, H>>,
    /// This handle's clone of the connection, while it belongs to the current generation.
    local: Option<Local<H::Service>>,
}

/// A handle's own view of the link: its clone of the connection and the open calls it made on it.
struct Local<S> {
    generation: u64,
    svc: S,
    calls: CallCounter,
}

/// What every handle of one link shares.
struct Shared<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    /// `generation << 1 | up`: written only when the link comes up (and has settled) or is lost; read by every
    /// request.
    gate: AtomicU64,
    close: Closer,
    /// The handles parked on the slow path; the machine's futures are polled with a waker that wakes them all.
    wakers: Arc<Wakers>,
    core: Mutex<Core<M, Target, H>>,
}

/// The slow path: the machine and what it drives, under a lock taken only while the link is not up for a handle.
struct Core<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    mk: M,
    target: Target,
    hook: H,
    classify: Classifier,
    hook_timeout: std::time::Duration,
    settle_timeout: std::time::Duration,
    /// The one source of truth about the link: idle, connecting, up, backing off or closed.
    driver: Driver<BoxBackoff, TokioTimer, Publish>,
    /// The connect in flight, while the machine is connecting and the make service has been called.
    attempt: Option<Attempt<M::Future, H::Future>>,
    /// The connection, while the machine is up.
    svc: Option<H::Service>,
    /// Counts links made, so that a handle can tell its connection clone is of a lost link.
    generation: u64,
    /// The replay barrier: the open calls of every handle on the current connection and on the lost one.
    barrier: Barrier,
    close: Closer,
    hook_runs: Arc<AtomicU64>,
    close_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// After this many transitions in one `poll_ready` the service yields, so that a zero backoff cannot spin.
const MAX_STEPS: usize = 16;

/// A connect attempt in flight: the make service's future, then the on-up hook's.
enum Attempt<F, HF> {
    Making(Pin<Box<F>>),
    Hooking(Pin<Box<Timeout<HF>>>),
}

enum Step {
    Again,
    Park,
}

impl<M, Target, H> Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    /// Reconnects through `mk` with `config` (and its shared state watch, events and close handle).
    pub fn new(mk: M, config: ReconnectConfig<Target, H>) -> Self {
        let lifecycle = Lifecycle::with_config((config.backoff)(), config.config);
        let close = config.observe.close;
        let core = Core {
            mk,
            target: config.target,
            hook: config.hook,
            classify: config.classify,
            hook_timeout: config.hook_timeout,
            settle_timeout: config.settle_timeout,
            driver: Driver::new(lifecycle, TokioTimer::new(), config.observe.publish),
            attempt: None,
            svc: None,
            generation: 0,
            barrier: Barrier::new(),
            close: close.clone(),
            hook_runs: config.observe.hook_runs,
            close_wait: None,
        };
        Self {
            shared: Arc::new(Shared {
                gate: AtomicU64::new(0),
                close,
                wakers: Arc::default(),
                core: Mutex::new(core),
            }),
            local: None,
        }
    }

    /// The state of the link, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.shared.lock().driver.observer().state()
    }

    /// The lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.lock().driver.observer().subscribe()
    }

    /// Lossless counts of the link's events so far.
    pub fn stats(&self) -> ReconnectStats {
        let core = self.shared.lock();
        ReconnectStats {
            lifecycle: core.driver.observer().counters(),
            hook_runs: core.hook_runs.load(Ordering::Relaxed),
        }
    }

    /// A handle that closes this link for good from anywhere.
    pub fn close_handle(&self) -> CloseHandle {
        CloseHandle::new(self.shared.close.clone())
    }

    /// Closes the link for good, for every handle: cancels a connect in progress (UP-17), drops a pending backoff
    /// timer (UP-18), tears an established connection down. Every later `poll_ready` fails with [`Closed`].
    pub fn close(&mut self) {
        self.shared.close.close();
        self.local = None;
        let mut core = self.shared.lock();
        core.close_now(&self.shared.gate);
        drop(core);
        self.shared.wakers.wake_all();
    }
}

impl<M, Target, H> Shared<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn lock(&self) -> MutexGuard<'_, Core<M, Target, H>> {
        // No user code that could leave the core half-changed runs under this lock but the make service, the hook and
        // the connection's `poll_ready`; a panic there leaves the machine in a state it can move on from.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M, Target, H> Core<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn close_now(&mut self, gate: &AtomicU64) {
        self.driver.close();
        // What the close cancels (the connect, the link) is dropped here; the driver dropped the timer.
        self.attempt = None;
        self.svc = None;
        self.down(gate);
    }

    /// The link is not up for handles any more: the next generation starts.
    fn down(&mut self, gate: &AtomicU64) {
        self.generation += 1;
        gate.store(self.generation << 1, Ordering::Release);
    }

    /// The error every `poll_ready` fails with once the machine is closed.
    fn dead(&self, reason: CloseReason) -> BoxError {
        let last = self.driver.lifecycle().last_error().cloned();
        match reason {
            CloseReason::Fatal => FatalConnect::new(last).into(),
            CloseReason::GaveUp => GaveUp::new(last).into(),
            _ => Closed::new().into(),
        }
    }

    fn failed_attempt(&mut self, error: BoxError) {
        self.attempt = None;
        let kind = (self.classify)(&error);
        self.driver.connect_failed(error, kind);
    }

    /// The connection of `generation` is lost (a handle's clone failed its `poll_ready`); a stale report is ignored.
    /// The calls still open on it must settle before the next connection serves anything.
    fn lost(&mut self, generation: u64, error: BoxError, gate: &AtomicU64) {
        if generation != self.generation || !self.driver.state().is_up() {
            return;
        }
        self.svc = None;
        self.down(gate);
        self.barrier.lose(self.settle_timeout);
        self.driver.link_lost(error);
    }

    /// The replay barrier: true once the calls of the last lost connection have all been dropped by their owners, or
    /// the settle timeout has passed. A request that one of them failed as never written is then back in its place in
    /// a queue above, so nothing issued later overtakes it on the new connection.
    fn settled(&mut self, cx: &mut Context<'_>) -> bool {
        self.barrier.poll_settled(cx)
    }

    /// Registers for a close while the service waits; true if it is closed already.
    fn closed_while_parked(&mut self, cx: &mut Context<'_>) -> bool {
        let close = self.close.token();
        let wait = self
            .close_wait
            .get_or_insert_with(|| Box::pin(close.clone().cancelled_owned()));
        wait.as_mut().poll(cx).is_ready()
    }
}

impl<M, Target, H> Core<M, Target, H>
where
    M: Service<Target>,
    M::Error: Into<BoxError>,
    Target: Clone,
    H: OnUp<M::Response>,
{
    /// Drives the machine until the link is up and settled (then the gate is open), closed, or waiting.
    fn poll_up<Req>(&mut self, cx: &mut Context<'_>, gate: &AtomicU64) -> Poll<Result<(), BoxError>>
    where
        H::Service: Service<Req>,
        <H::Service as Service<Req>>::Error: Into<BoxError>,
    {
        let mut steps = 0;
        loop {
            if self.close.is_closed() && !self.driver.state().is_closed() {
                self.close_now(gate);
            }
            // The driver first: it fires the backoff timer, and hands out what the machine asks of this owner.
            match self.driver.poll_next(cx) {
                Poll::Ready(Next::Connect { .. }) => self.attempt = None,
                Poll::Ready(Next::Closed { reason }) => {
                    self.attempt = None;
                    self.svc = None;
                    return Poll::Ready(Err(self.dead(reason)));
                }
                // A connect to cancel or a link to tear down: dropping it does both.
                Poll::Ready(_) => {
                    self.attempt = None;
                    self.svc = None;
                }
                Poll::Pending => {}
            }
            // Each arm either moves the machine on (`Again`) or waits on something it polled (`Park`); a `Park` comes
            // only from an iteration that changed nothing, so the driver's poll above registered this task too.
            let step = match self.driver.state() {
                State::Idle => {
                    self.driver.start();
                    Step::Again
                }
                State::Up { .. } => match self.svc.as_mut().map(|svc| svc.poll_ready(cx)) {
                    Some(Poll::Ready(Ok(()))) if self.settled(cx) => {
                        gate.store(self.generation << 1 | 1, Ordering::Release);
                        return Poll::Ready(Ok(()));
                    }
                    Some(Poll::Ready(Ok(())) | Poll::Pending) => Step::Park,
                    Some(Poll::Ready(Err(e))) => {
                        self.lost(self.generation, e.into(), gate);
                        Step::Again
                    }
                    // Up without a connection cannot happen: the two are set together.
                    None => {
                        self.lost(self.generation, Closed::new().into(), gate);
                        Step::Again
                    }
                },
                State::Connecting { .. } => self.poll_attempt(cx),
                _ => Step::Park,
            };
            if let Step::Park = step {
                if self.closed_while_parked(cx) {
                    continue;
                }
                return Poll::Pending;
            }
            steps += 1;
            if steps >= MAX_STEPS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Moves the connect attempt on: the make service, then the hook. `Park` once it waits.
    fn poll_attempt(&mut self, cx: &mut Context<'_>) -> Step {
        match &mut self.attempt {
            None => match self.mk.poll_ready(cx) {
                Poll::Pending => Step::Park,
                Poll::Ready(Ok(())) => {
                    let fut = self.mk.call(self.target.clone());
                    self.attempt = Some(Attempt::Making(Box::pin(fut)));
                    Step::Again
                }
                Poll::Ready(Err(e)) => {
                    self.failed_attempt(e.into());
                    Step::Again
                }
            },
            Some(Attempt::Making(fut)) => match fut.as_mut().poll(cx) {
                Poll::Pending => Step::Park,
                Poll::Ready(Ok(conn)) => {
                    self.hook_runs.fetch_add(1, Ordering::Relaxed);
                    let hook = self.hook.on_up(conn);
                    let hook = tokio::time::timeout(self.hook_timeout, hook);
                    self.attempt = Some(Attempt::Hooking(Box::pin(hook)));
                    Step::Again
                }
                Poll::Ready(Err(e)) => {
                    self.failed_attempt(e.into());
                    Step::Again
                }
            },
            Some(Attempt::Hooking(fut)) => match fut.as_mut().poll(cx) {
                Poll::Pending => Step::Park,
                Poll::Ready(Ok(Ok(svc))) => {
                    self.attempt = None;
                    self.svc = Some(svc);
                    self.driver.connected();
                    Step::Again
                }
                Poll::Ready(Ok(Err(e))) => {
                    self.failed_attempt(e.into());
                    Step::Again
                }
                Poll::Ready(Err(_)) => {
                    self.failed_attempt(Elapsed::new().into());
                    Step::Again
                }
            },
        }
    }
}

impl<M, Target, H, Req> Service<Req> for Reconnect<M, Target, H>
where
    M: Service<Target>,
    M::Error: Into<BoxError>,
    Target: Clone,
    H: OnUp<M::Response>,
    H::Service: Service<Req> + Clone,
    <H::Service as Service<Req>>::Error: Into<BoxError>,
{
    type Response = <H::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<H::Service as Service<Req>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            // The fast path: the link is up in this handle's generation, and not closed. Two loads of shared words
            // that only the slow path writes.
            if let Some(local) = &mut self.local {
                if self.shared.gate.load(Ordering::Acquire) == (local.generation << 1 | 1)
                    && !self.shared.close.is_closed()
                {
                    match local.svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let generation = local.generation;
                            self.local = None;
                            let mut core = self.shared.lock();
                            core.lost(generation, e.into(), &self.shared.gate);
                        }
                    }
                } else {
                    self.local = None;
                }
            }
            // The slow path: drive the machine under the lock, woken with every other handle that waits.
            let shared = &*self.shared;
            shared.wakers.register(cx.waker());
            let waker = Waker::from(shared.wakers.clone());
            let mut slow = Context::from_waker(&waker);
            let mut core = shared.lock();
            match core.poll_up::<Req>(&mut slow, &shared.gate) {
                Poll::Ready(Ok(())) => {
                    let Some(svc) = core.svc.clone() else {
                        // `poll_up` is ready only with a connection; should that ever change, try again.
                        continue;
                    };
                    let calls = core.barrier.join();
                    self.local = Some(Local {
                        generation: core.generation,
                        svc,
                        calls,
                    });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match &mut self.local {
            Some(local) => match local.calls.open() {
                Some(call) => ResponseFuture::called(local.svc.call(req), call),
                // The connection was lost since `poll_ready`, and its calls are all gone: nothing was written.
                None => {
                    self.local = None;
                    ResponseFuture::failed(NotSent::new().into())
                }
            },
            // Called without a successful `poll_ready`: nothing was written, so the request may be retried.
            None => ResponseFuture::failed(NotSent::new().into()),
        }
    }
}

impl<M, Target, H> Clone for Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn clone(&self) -> Self {
        // A clone of a ready handle is not ready: it takes its own connection clone in `poll_ready`.
        Self {
            shared: self.shared.clone(),
            local: None,
        }
    }
}

impl<M, Target, H> Drop for Core<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn drop(&mut self) {
        // The last handle is gone: nobody can use the link any more.
        if !self.driver.state().is_closed() {
            self.driver.close();
        }
    }
}

impl<M, Target, H> fmt::Debug for Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("gate", &self.shared.gate.load(Ordering::Relaxed))
            .field("ready", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

/// The wakers of every handle parked on the slow path; waking it wakes them all.
#[derive(Default)]
struct Wakers(Mutex<Vec<Waker>>);

impl Wakers {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

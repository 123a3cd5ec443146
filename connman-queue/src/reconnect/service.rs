//! The [`Reconnect`] service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use connman_core::driver::{Driver, Next};
use connman_core::error::{BoxError, Closed, Elapsed, NotSent};
use connman_core::lifecycle::{CloseReason, Event, Lifecycle, State};
use connman_core::rt::tokio::{Publish, TokioTimer};
use tokio::sync::{broadcast, watch};
use tokio::time::{Sleep, Timeout};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower_service::Service;

use super::error::{FatalConnect, GaveUp};
use super::future::{Calls, ResponseFuture};
use super::hook::{Identity, OnUp};
use super::layer::{BoxBackoff, Classifier, CloseHandle, ReconnectLayer};

/// A service that keeps a connection made by a make service `M` up, and serves requests through it.
///
/// It drives a [`Lifecycle`]: `poll_ready` stays `Pending` through connect attempts and backoff and never returns an
/// error for a retriable failure, so no request fails just because one attempt failed (the flaw of tower's
/// `Reconnect`, tower#60). When the connection's own `poll_ready` fails, the link is lost: the connection is dropped and
/// a new one made after the backoff (no hot loop, tower#244). A fatal failure, a backoff that gives up or a close make
/// `poll_ready` fail for good: with [`FatalConnect`], [`GaveUp`] or [`Closed`]. A backoff of zero reconnects at once,
/// yielding to the scheduler every few attempts rather than spinning inside one `poll_ready`.
///
/// ```
/// use connman_queue::reconnect::Reconnect;
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), connman_core::error::BoxError> {
/// // A "connection" that doubles numbers; the make service hands out a new one per connect.
/// let connect = service_fn(|_addr: &'static str| async {
///     Ok::<_, std::io::Error>(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }))
/// });
/// let reconnect = Reconnect::new(connect, "127.0.0.1:7000");
/// assert_eq!(reconnect.oneshot(21).await?, 42);
/// # Ok(()) }
/// ```
pub struct Reconnect<M, Target, H = Identity>
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
    /// The open calls of the current connection.
    calls: Arc<Calls>,
    /// The open calls of the last lost connection, and how long a new connection waits for them at most.
    settling: Option<(Arc<Calls>, Pin<Box<Sleep>>)>,
    close: CancellationToken,
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

impl<M, Target> Reconnect<M, Target>
where
    M: Service<Target>,
    Target: Clone,
{
    /// Reconnects to `target` through `mk` with the defaults of [`ReconnectLayer::new`].
    pub fn new(mk: M, target: Target) -> Self {
        Self::from_layer(mk, ReconnectLayer::new(target))
    }
}

impl<M, Target, H> Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    pub(crate) fn from_layer(mk: M, layer: ReconnectLayer<Target, H>) -> Self {
        let lifecycle = Lifecycle::with_config((layer.backoff)(), layer.config);
        Self {
            mk,
            target: layer.target,
            hook: layer.hook,
            classify: layer.classify,
            hook_timeout: layer.hook_timeout,
            settle_timeout: layer.settle_timeout,
            driver: Driver::new(lifecycle, TokioTimer::new(), layer.observe.publish),
            attempt: None,
            svc: None,
            calls: Arc::default(),
            settling: None,
            close: layer.observe.close,
            close_wait: None,
        }
    }

    /// The make service.
    pub fn get_ref(&self) -> &M {
        &self.mk
    }

    /// The make service, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.mk
    }

    /// The state of the link, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.driver.observer().state()
    }

    /// The lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.driver.observer().subscribe()
    }

    /// A handle that closes this link for good from anywhere.
    pub fn close_handle(&self) -> CloseHandle {
        CloseHandle::from_token(self.close.clone())
    }

    /// Closes the link for good: cancels a connect in progress (UP-17), drops a pending backoff timer (UP-18), tears
    /// an established connection down. Every later `poll_ready` fails with [`Closed`].
    pub fn close(&mut self) {
        self.close.cancel();
        self.close_now();
    }

    fn close_now(&mut self) {
        self.driver.close();
        // What the close cancels (the connect, the link) is dropped here; the driver dropped the timer.
        self.attempt = None;
        self.svc = None;
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

    /// The replay barrier: true once the calls of the last lost connection have all been dropped by their owners, or
    /// the settle timeout has passed. A request that one of them failed as never written is then back in its place in
    /// a queue above, so nothing issued later overtakes it on the new connection.
    fn settled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((calls, bound)) = &mut self.settling else {
            return true;
        };
        if calls.poll_settled(cx).is_pending() && bound.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.settling = None;
        true
    }

    /// Registers for a close while the service waits; true if it is closed already.
    fn closed_while_parked(&mut self, cx: &mut Context<'_>) -> bool {
        let close = &self.close;
        let wait = self
            .close_wait
            .get_or_insert_with(|| Box::pin(close.clone().cancelled_owned()));
        wait.as_mut().poll(cx).is_ready()
    }
}

impl<M, Target, H, Req> Service<Req> for Reconnect<M, Target, H>
where
    M: Service<Target>,
    M::Error: Into<BoxError>,
    Target: Clone,
    H: OnUp<M::Response>,
    H::Service: Service<Req>,
    <H::Service as Service<Req>>::Error: Into<BoxError>,
{
    type Response = <H::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<H::Service as Service<Req>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut steps = 0;
        loop {
            if self.close.is_cancelled() && !self.driver.state().is_closed() {
                self.close_now();
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
                    Some(Poll::Ready(Ok(()))) if self.settled(cx) => return Poll::Ready(Ok(())),
                    Some(Poll::Ready(Ok(())) | Poll::Pending) => Step::Park,
                    Some(Poll::Ready(Err(e))) => {
                        self.lost(e.into());
                        Step::Again
                    }
                    // Up without a connection cannot happen: the two are set together.
                    None => {
                        self.lost(Closed::new().into());
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

    fn call(&mut self, req: Req) -> Self::Future {
        match &mut self.svc {
            Some(svc) => ResponseFuture::called(svc.call(req), self.calls.open()),
            // Called without a successful `poll_ready`: nothing was written, so the request may be retried.
            None => ResponseFuture::failed(NotSent::new().into()),
        }
    }
}

impl<M, Target, H> Reconnect<M, Target, H>
where
    M: Service<Target>,
    M::Error: Into<BoxError>,
    Target: Clone,
    H: OnUp<M::Response>,
{
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

    /// The link is lost: drop the connection and back off before the next one. Its calls that are still open must
    /// settle before the next connection serves anything.
    fn lost(&mut self, error: BoxError) {
        self.svc = None;
        let lost = std::mem::take(&mut self.calls);
        if lost.any_open() {
            let bound = Box::pin(tokio::time::sleep(self.settle_timeout));
            self.settling = Some((lost, bound));
        }
        self.driver.link_lost(error);
    }
}

impl<M, Target, H> Drop for Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn drop(&mut self) {
        if !self.driver.state().is_closed() {
            self.close_now();
        }
    }
}

impl<M, Target, H> fmt::Debug for Reconnect<M, Target, H>
where
    M: Service<Target> + fmt::Debug,
    Target: fmt::Debug,
    H: OnUp<M::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("mk", &self.mk)
            .field("target", &self.target)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

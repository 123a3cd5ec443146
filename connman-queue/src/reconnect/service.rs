//! The [`Reconnect`] service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use connman_core::error::{BoxError, Closed, Elapsed, NotSent, SharedError};
use connman_core::lifecycle::{Action, CloseReason, Event, Lifecycle, State};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Sleep, Timeout};
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
    lifecycle: Lifecycle<BoxBackoff>,
    conn: Conn<M::Future, H::Future, H::Service>,
    /// The open calls of the current connection.
    calls: Arc<Calls>,
    /// The open calls of the last lost connection, and how long a new connection waits for them at most.
    settling: Option<(Arc<Calls>, Pin<Box<Sleep>>)>,
    last_error: Option<SharedError>,
    state: watch::Sender<State>,
    events: broadcast::Sender<Event>,
    close: CancellationToken,
    close_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// After this many transitions in one `poll_ready` the service yields, so that a zero backoff cannot spin.
const MAX_STEPS: usize = 16;

enum Conn<F, HF, S> {
    Idle,
    MakeReady,
    Connecting(Pin<Box<F>>),
    Hooking(Pin<Box<Timeout<HF>>>),
    Up(S),
    Backoff(Pin<Box<Sleep>>),
    Closed(Dead),
}

#[derive(Clone)]
enum Dead {
    Requested,
    Fatal(Option<SharedError>),
    GaveUp(Option<SharedError>),
}

impl Dead {
    fn error(&self) -> BoxError {
        match self {
            Dead::Requested => Closed::new().into(),
            Dead::Fatal(e) => FatalConnect::new(e.clone()).into(),
            Dead::GaveUp(e) => GaveUp::new(e.clone()).into(),
        }
    }
}

enum Step {
    Input(Option<Action>),
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
            lifecycle,
            conn: Conn::Idle,
            calls: Arc::default(),
            settling: None,
            last_error: None,
            state: layer.observe.state,
            events: layer.observe.events,
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
        self.state.subscribe()
    }

    /// The lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
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
        let now = now();
        // The action (cancel the connect, drop the timer, tear down) is carried out by dropping what `conn` holds.
        let _ = self.lifecycle.close(now);
        if !matches!(self.conn, Conn::Closed(_)) {
            self.conn = Conn::Closed(Dead::Requested);
        }
        self.publish();
    }

    fn apply(&mut self, action: Option<Action>) {
        match action {
            Some(Action::Connect { .. }) => self.conn = Conn::MakeReady,
            Some(Action::Wait { until }) => {
                self.conn =
                    Conn::Backoff(Box::pin(tokio::time::sleep_until(Instant::from_std(until))));
            }
            Some(_) => self.conn = Conn::Closed(Dead::Requested),
            None => {}
        }
        self.publish();
    }

    /// Drains the lifecycle's events into the channel and publishes the state.
    fn publish(&mut self) {
        while let Some(event) = self.lifecycle.poll_event() {
            tracing::debug!(%event, "reconnect");
            match &event {
                Event::ConnectFailed { error, .. } => self.last_error = Some(error.clone()),
                Event::Disconnected { reason } => self.last_error = Some(reason.clone()),
                Event::Closed { reason } => {
                    let dead = match reason {
                        CloseReason::Fatal => Dead::Fatal(self.last_error.clone()),
                        CloseReason::GaveUp => Dead::GaveUp(self.last_error.clone()),
                        _ => Dead::Requested,
                    };
                    self.conn = Conn::Closed(dead);
                }
                _ => {}
            }
            // Nobody listening is fine: events are for whoever cares.
            let _ = self.events.send(event);
        }
        let state = self.lifecycle.state();
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    fn failed_attempt(&mut self, error: BoxError) -> Option<Action> {
        let kind = (self.classify)(&error);
        self.lifecycle.connect_failed(now(), error, kind)
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
            if self.close.is_cancelled() && !matches!(self.conn, Conn::Closed(_)) {
                self.close_now();
            }
            let step = match &mut self.conn {
                Conn::Closed(dead) => return Poll::Ready(Err(dead.error())),
                Conn::Up(svc) => match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) if self.settled(cx) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) | Poll::Pending => Step::Park,
                    Poll::Ready(Err(e)) => {
                        // The link is lost: drop the connection and back off before the next one. Its calls that
                        // are still open must settle before the next connection serves anything.
                        let e: BoxError = e.into();
                        self.conn = Conn::Idle;
                        let lost = std::mem::take(&mut self.calls);
                        if lost.any_open() {
                            let bound = Box::pin(tokio::time::sleep(self.settle_timeout));
                            self.settling = Some((lost, bound));
                        }
                        Step::Input(self.lifecycle.link_lost(now(), e))
                    }
                },
                Conn::Idle => Step::Input(self.lifecycle.start(now())),
                Conn::MakeReady => match self.mk.poll_ready(cx) {
                    Poll::Pending => Step::Park,
                    Poll::Ready(Ok(())) => {
                        let fut = self.mk.call(self.target.clone());
                        self.conn = Conn::Connecting(Box::pin(fut));
                        Step::Again
                    }
                    Poll::Ready(Err(e)) => Step::Input(self.failed_attempt(e.into())),
                },
                Conn::Connecting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => Step::Park,
                    Poll::Ready(Ok(conn)) => {
                        let hook = self.hook.on_up(conn);
                        self.conn =
                            Conn::Hooking(Box::pin(tokio::time::timeout(self.hook_timeout, hook)));
                        Step::Again
                    }
                    Poll::Ready(Err(e)) => Step::Input(self.failed_attempt(e.into())),
                },
                Conn::Hooking(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => Step::Park,
                    Poll::Ready(Ok(Ok(svc))) => {
                        self.conn = Conn::Up(svc);
                        Step::Input(self.lifecycle.connected(now()))
                    }
                    Poll::Ready(Ok(Err(e))) => Step::Input(self.failed_attempt(e.into())),
                    Poll::Ready(Err(_)) => Step::Input(self.failed_attempt(Elapsed::new().into())),
                },
                Conn::Backoff(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Pending => Step::Park,
                    Poll::Ready(()) => Step::Input(self.lifecycle.timer_fired(now())),
                },
            };
            match step {
                Step::Input(action) => self.apply(action),
                Step::Again => {}
                Step::Park => {
                    if self.closed_while_parked(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
            steps += 1;
            if steps >= MAX_STEPS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match &mut self.conn {
            Conn::Up(svc) => ResponseFuture::called(svc.call(req), self.calls.open()),
            // Called without a successful `poll_ready`: nothing was written, so the request may be retried.
            _ => ResponseFuture::failed(NotSent::new().into()),
        }
    }
}

impl<M, Target, H> Drop for Reconnect<M, Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response>,
{
    fn drop(&mut self) {
        if !self.lifecycle.state().is_closed() {
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
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

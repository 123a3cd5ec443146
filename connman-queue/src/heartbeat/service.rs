//! [`Heartbeat`]: one connection, pinged by a small task.

use connman_core::rt::tokio::later;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::error::{BoxError, LinkLost, MaybeDelivered, SharedError};
use pin_project::pin_project;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tower_service::Service;

use super::config::HeartbeatConfig;
use super::error::{PingFailed, PingTimeout};

/// How many heartbeat events a slow subscriber may fall behind before it loses the oldest.
pub const EVENT_CAPACITY: usize = 64;

/// What the heartbeat saw.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HeartbeatEvent {
    /// A ping was answered (upnode's `ping` event with the round trip time).
    Pong {
        /// The round trip time.
        rtt: Duration,
    },
    /// A ping got no answer in time; the link is taken for dead.
    TimedOut {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// A ping failed (UP-10); the link is taken for dead.
    Failed {
        /// Why.
        error: SharedError,
    },
}

/// Where a heartbeat's outcomes go: the bounded event stream, and lossless counters beside it.
#[derive(Debug, Clone)]
pub(crate) struct Beats {
    pub(crate) events: broadcast::Sender<HeartbeatEvent>,
    pub(crate) tally: Arc<Tally>,
}

#[derive(Debug, Default)]
pub(crate) struct Tally {
    pongs: AtomicU64,
    timeouts: AtomicU64,
    failures: AtomicU64,
}

impl Beats {
    pub(crate) fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            events,
            tally: Arc::default(),
        }
    }

    fn send(&self, event: HeartbeatEvent) {
        let counter = match &event {
            HeartbeatEvent::Pong { .. } => &self.tally.pongs,
            HeartbeatEvent::TimedOut { .. } => &self.tally.timeouts,
            HeartbeatEvent::Failed { .. } => &self.tally.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    pub(crate) fn stats(&self) -> HeartbeatStats {
        HeartbeatStats {
            pongs: self.tally.pongs.load(Ordering::Relaxed),
            timeouts: self.tally.timeouts.load(Ordering::Relaxed),
            failures: self.tally.failures.load(Ordering::Relaxed),
        }
    }
}

/// Lossless counts of every connection's heartbeat, beside the event stream (which drops the oldest past
/// [`EVENT_CAPACITY`]). A death is a timeout or a failure: each ends one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatStats {
    /// Pings answered.
    pub pongs: u64,
    /// Pings unanswered in time: the link was declared dead.
    pub timeouts: u64,
    /// Pings that failed: the link was declared dead.
    pub failures: u64,
}

impl HeartbeatStats {
    /// Links declared dead: timeouts and failures.
    pub const fn deaths(&self) -> u64 {
        self.timeouts + self.failures
    }
}

/// A connection that is pinged on a schedule; once a ping fails or times out, the link is dead: `poll_ready` fails
/// with [`LinkLost`] (so a `Reconnect` above replaces the connection) and requests in flight fail with
/// [`MaybeDelivered`].
///
/// Built by [`HeartbeatLayer::wrap`](super::HeartbeatLayer::wrap) or a [`MakeHeartbeat`](super::MakeHeartbeat).
/// A clone pings nothing more: it shares the pinger, which stops when the last clone is dropped.
pub struct Heartbeat<S> {
    inner: S,
    monitor: Option<Arc<Monitor>>,
    dead_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _stop: Option<Arc<DropGuard>>,
}

impl<S: Clone> Clone for Heartbeat<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            monitor: self.monitor.clone(),
            dead_wait: None,
            _stop: self._stop.clone(),
        }
    }
}

struct Monitor {
    dead: CancellationToken,
    reason: OnceLock<Reason>,
}

/// Why the link was declared dead; kept as concrete types so that callers can downcast the source.
#[derive(Clone)]
enum Reason {
    Timeout(PingTimeout),
    Failed(PingFailed),
}

impl Monitor {
    fn declare_dead(&self, reason: Reason) {
        let _ = self.reason.set(reason);
        self.dead.cancel();
    }

    fn error(&self) -> LinkLost {
        match self.reason.get() {
            Some(Reason::Timeout(e)) => LinkLost::with_source(e.clone()),
            Some(Reason::Failed(e)) => LinkLost::with_source(e.clone()),
            None => LinkLost::new(),
        }
    }
}

impl<S> Heartbeat<S> {
    pub(crate) fn start<Req, P>(inner: S, config: HeartbeatConfig, ping: P, events: Beats) -> Self
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        P: Fn() -> Req + Send + Sync + 'static,
        Req: Send + 'static,
    {
        if !config.is_enabled() {
            return Self::unmonitored(inner);
        }
        let monitor = Arc::new(Monitor {
            dead: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(pinger(
            inner.clone(),
            config,
            ping,
            monitor.clone(),
            events,
            stop.clone(),
        ));
        Self {
            inner,
            monitor: Some(monitor),
            dead_wait: None,
            _stop: Some(Arc::new(stop.drop_guard())),
        }
    }

    pub(crate) fn unmonitored(inner: S) -> Self {
        Self {
            inner,
            monitor: None,
            dead_wait: None,
            _stop: None,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The connection, by value; its pinger stops.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether a ping failed or timed out.
    pub fn is_dead(&self) -> bool {
        self.monitor.as_ref().is_some_and(|m| m.dead.is_cancelled())
    }
}

impl<S, Req> Service<Req> for Heartbeat<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Some(monitor) = &self.monitor else {
            return self.inner.poll_ready(cx).map_err(Into::into);
        };
        if monitor.dead.is_cancelled() {
            return Poll::Ready(Err(monitor.error().into()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(result) => Poll::Ready(result.map_err(Into::into)),
            Poll::Pending => {
                let wait = self
                    .dead_wait
                    .get_or_insert_with(|| Box::pin(monitor.dead.clone().cancelled_owned()));
                match wait.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(monitor.error().into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            fut: self.inner.call(req),
            monitor: self.monitor.clone(),
            dead_wait: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Heartbeat<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat")
            .field("inner", &self.inner)
            .field("monitored", &self.monitor.is_some())
            .field("dead", &self.is_dead())
            .finish()
    }
}

/// The response of a request sent through a [`Heartbeat`]: fails with [`MaybeDelivered`] if the link is declared
/// dead while it is in flight.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    fut: F,
    monitor: Option<Arc<Monitor>>,
    dead_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.fut.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let Some(monitor) = this.monitor else {
            return Poll::Pending;
        };
        let wait = this
            .dead_wait
            .get_or_insert_with(|| Box::pin(monitor.dead.clone().cancelled_owned()));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(MaybeDelivered::with_source(monitor.error()).into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Pings `conn` every interval until stopped or until a ping fails or times out.
async fn pinger<S, Req, P>(
    mut conn: S,
    config: HeartbeatConfig,
    ping: P,
    monitor: Arc<Monitor>,
    events: Beats,
    stop: CancellationToken,
) where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Fn() -> Req,
{
    let mut next = later(Instant::now(), config.interval());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let exchange = async {
            std::future::poll_fn(|cx| conn.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            conn.call(ping()).await.map_err(Into::<BoxError>::into)
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = tokio::time::timeout(config.timeout(), exchange) => outcome,
        };
        match outcome {
            Ok(Ok(_)) => {
                let rtt = sent.elapsed();
                tracing::trace!(?rtt, "pong");
                events.send(HeartbeatEvent::Pong { rtt });
                next = later(sent, config.interval());
            }
            Ok(Err(error)) => {
                let error: SharedError = Arc::from(error);
                tracing::debug!(%error, "ping failed");
                events.send(HeartbeatEvent::Failed {
                    error: error.clone(),
                });
                monitor.declare_dead(Reason::Failed(PingFailed::new(error)));
                return;
            }
            Err(_) => {
                tracing::debug!(timeout = ?config.timeout(), "ping timed out");
                events.send(HeartbeatEvent::TimedOut {
                    timeout: config.timeout(),
                });
                monitor.declare_dead(Reason::Timeout(PingTimeout::new(config.timeout())));
                return;
            }
        }
    }
}

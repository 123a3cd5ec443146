//! [`HeartbeatLayer`] and [`MakeHeartbeat`]: every connection a make service makes gets pinged.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use connman_core::error::BoxError;
use pin_project::pin_project;
use tokio::sync::broadcast;
use tower_layer::Layer;
use tower_service::Service;

use super::config::HeartbeatConfig;
use super::service::{Beats, Heartbeat, HeartbeatEvent, HeartbeatStats};

/// Pings every connection made by the make service it wraps; see the [module docs](super).
///
/// `ping` builds the ping request, sent through the connection's own service.
///
/// ```
/// use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
///
/// let layer = HeartbeatLayer::new(HeartbeatConfig::default(), || "PING".to_string());
/// let mut events = layer.subscribe();
/// assert!(events.try_recv().is_err());
/// ```
pub struct HeartbeatLayer<P> {
    pub(crate) config: HeartbeatConfig,
    pub(crate) ping: P,
    pub(crate) events: Beats,
}

impl<P> HeartbeatLayer<P> {
    /// Pings with `ping()` on the schedule of `config`.
    pub fn new(config: HeartbeatConfig, ping: P) -> Self {
        Self {
            config,
            ping,
            events: Beats::new(),
        }
    }

    /// The heartbeat events of every connection of this layer, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HeartbeatEvent> {
        self.events.events.subscribe()
    }

    /// Lossless counts of every connection's heartbeat so far: pongs, and deaths (timeouts, failures).
    pub fn stats(&self) -> HeartbeatStats {
        self.events.stats()
    }

    /// The schedule.
    pub fn config(&self) -> HeartbeatConfig {
        self.config
    }

    /// Starts pinging one connection.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime when pings are enabled: the pinger is a small task.
    pub fn wrap<S, Req>(&self, conn: S) -> Heartbeat<S>
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        P: Fn() -> Req + Clone + Send + Sync + 'static,
        Req: Send + 'static,
    {
        Heartbeat::start(conn, self.config, self.ping.clone(), self.events.clone())
    }
}

impl<P: Clone> Clone for HeartbeatLayer<P> {
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            ping: self.ping.clone(),
            events: self.events.clone(),
        }
    }
}

impl<P> fmt::Debug for HeartbeatLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<M, P: Clone> Layer<M> for HeartbeatLayer<P> {
    type Service = MakeHeartbeat<M, P>;

    fn layer(&self, inner: M) -> Self::Service {
        MakeHeartbeat {
            inner,
            layer: self.clone(),
        }
    }
}

/// A make service whose connections are each wrapped in a [`Heartbeat`].
pub struct MakeHeartbeat<M, P> {
    inner: M,
    layer: HeartbeatLayer<P>,
}

impl<M, P> MakeHeartbeat<M, P> {
    /// The wrapped make service.
    pub fn get_ref(&self) -> &M {
        &self.inner
    }

    /// The wrapped make service, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// The wrapped make service, by value.
    pub fn into_inner(self) -> M {
        self.inner
    }
}

impl<M: Clone, P: Clone> Clone for MakeHeartbeat<M, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<M: fmt::Debug, P> fmt::Debug for MakeHeartbeat<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeHeartbeat")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<M, Target, P, Req> Service<Target> for MakeHeartbeat<M, P>
where
    M: Service<Target>,
    M::Response: Service<Req> + Clone + Send + 'static,
    <M::Response as Service<Req>>::Future: Send,
    <M::Response as Service<Req>>::Error: Into<BoxError>,
    P: Fn() -> Req + Clone + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Response = Heartbeat<M::Response>;
    type Error = M::Error;
    type Future = MakeFuture<M::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, target: Target) -> Self::Future {
        MakeFuture {
            fut: self.inner.call(target),
            layer: Some(self.layer.clone()),
        }
    }
}

/// A connect in progress; its connection starts being pinged once made.
#[pin_project]
pub struct MakeFuture<F, P> {
    #[pin]
    fut: F,
    layer: Option<HeartbeatLayer<P>>,
}

impl<F, P> fmt::Debug for MakeFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeFuture").finish_non_exhaustive()
    }
}

impl<F, S, E, P, Req> Future for MakeFuture<F, P>
where
    F: Future<Output = Result<S, E>>,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    P: Fn() -> Req + Clone + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Output = Result<Heartbeat<S>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let conn = ready!(this.fut.poll(cx))?;
        match this.layer.take() {
            Some(layer) => Poll::Ready(Ok(layer.wrap(conn))),
            // Polled again after completion: report the same settings-free connection rather than panic.
            None => Poll::Ready(Ok(Heartbeat::unmonitored(conn))),
        }
    }
}

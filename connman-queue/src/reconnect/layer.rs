//! [`ReconnectLayer`]: the settings of a [`Reconnect`], and the handles to watch and close it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use connman_core::backoff::{Backoff, presets};
use connman_core::error::{BoxError, InvalidConfig};
use connman_core::lifecycle::{self, Event, FailureKind, State};
use connman_core::rt::tokio::Publish;
use connman_core::supervise::Disconnect;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;
use tower_service::Service;

use super::hook::{Identity, OnUp};
use super::service::Reconnect;

/// The default time an on-up hook may take: 10 s.
///
/// upnode has no limit (UP-08: a hook that never emits `up` holds the queue forever); 10 s is upnode's own ping
/// interval, the time it gives a healthy link to answer.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time the calls of a lost connection get to resolve before a new connection serves requests: 1 s.
///
/// See [`ReconnectLayer::settle_timeout`]. Calls of a lost link resolve as soon as their owners poll them (the link
/// failed them all); the bound only matters for an owner that holds a call without polling or dropping it.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many events a slow subscriber may fall behind before it loses the oldest.
pub const EVENT_CAPACITY: usize = 64;

pub(crate) type BoxBackoff = Box<dyn Backoff + Send + Sync>;
pub(crate) type Classifier = Arc<dyn Fn(&BoxError) -> FailureKind + Send + Sync>;

/// Wraps a make service in a [`Reconnect`]; holds its settings and the handles to observe and close it.
///
/// Every [`Reconnect`] made from one layer (and its clones) shares one state watch, one event channel and one close
/// handle: build one layer per supervised link.
///
/// ```
/// use connman_queue::reconnect::ReconnectLayer;
/// use connman_core::backoff::presets;
///
/// let layer = ReconnectLayer::new("127.0.0.1:7000").backoff(presets::upnode());
/// let state = layer.state();
/// assert!(!state.borrow().is_up());
/// ```
pub struct ReconnectLayer<Target, H = Identity> {
    pub(crate) target: Target,
    pub(crate) hook: H,
    pub(crate) backoff: Arc<dyn Fn() -> BoxBackoff + Send + Sync>,
    pub(crate) classify: Classifier,
    pub(crate) hook_timeout: Duration,
    pub(crate) settle_timeout: Duration,
    pub(crate) config: lifecycle::Config,
    pub(crate) observe: Observe,
}

/// The channels shared by every [`Reconnect`] of one layer.
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    pub(crate) publish: Publish,
    pub(crate) close: CancellationToken,
}

impl<Target> ReconnectLayer<Target> {
    /// Settings to reconnect to `target` with the defaults: the [`presets::connman`] backoff (20 ms doubling up to
    /// 128 s, never giving up), every failure retriable, no hook, a [`DEFAULT_HOOK_TIMEOUT`].
    pub fn new(target: Target) -> Self {
        Self {
            target,
            hook: Identity,
            backoff: Arc::new(|| Box::new(presets::connman())),
            classify: Arc::new(|_| FailureKind::Retriable),
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            settle_timeout: DEFAULT_SETTLE_TIMEOUT,
            config: lifecycle::Config::new(),
            observe: Observe {
                publish: Publish::new(EVENT_CAPACITY),
                close: CancellationToken::new(),
            },
        }
    }
}

impl<Target, H> ReconnectLayer<Target, H> {
    /// Sets the backoff policy; each [`Reconnect`] gets its own copy.
    #[must_use]
    pub fn backoff<B>(mut self, backoff: B) -> Self
    where
        B: Backoff + Clone + Send + Sync + 'static,
    {
        self.backoff = Arc::new(move || Box::new(backoff.clone()));
        self
    }

    /// Sets the classifier that tells a fatal connect failure from a retriable one (default: all retriable).
    #[must_use]
    pub fn classify<F>(mut self, classify: F) -> Self
    where
        F: Fn(&BoxError) -> FailureKind + Send + Sync + 'static,
    {
        self.classify = Arc::new(classify);
        self
    }

    /// Sets the hook that runs on each new connection before it is up (re-auth, resubscribe).
    pub fn on_up<H2>(self, hook: H2) -> ReconnectLayer<Target, H2> {
        ReconnectLayer {
            target: self.target,
            hook,
            backoff: self.backoff,
            classify: self.classify,
            hook_timeout: self.hook_timeout,
            settle_timeout: self.settle_timeout,
            config: self.config,
            observe: self.observe,
        }
    }

    /// Sets how long the on-up hook may take before the attempt counts as failed with
    /// [`Elapsed`](connman_core::error::Elapsed) (UP-08). Zero is rejected.
    pub fn hook_timeout(mut self, timeout: Duration) -> Result<Self, InvalidConfig> {
        if timeout.is_zero() {
            return Err(InvalidConfig::new("hook timeout must be greater than zero"));
        }
        self.hook_timeout = timeout;
        Ok(self)
    }

    /// Sets how long a new connection waits, at most, for the calls of the lost one to resolve before it serves a
    /// request (default [`DEFAULT_SETTLE_TIMEOUT`]). Zero is rejected.
    ///
    /// This is the replay barrier: a call of the lost connection that fails as never written is put back in its place
    /// by a [`Queue`](crate::queue::Queue) above when its owner sees the failure. Waiting for those calls keeps a
    /// request issued later from overtaking it on the new connection, so requests reach the peer in the order they
    /// were issued.
    pub fn settle_timeout(mut self, timeout: Duration) -> Result<Self, InvalidConfig> {
        if timeout.is_zero() {
            return Err(InvalidConfig::new(
                "settle timeout must be greater than zero",
            ));
        }
        self.settle_timeout = timeout;
        Ok(self)
    }

    /// Resets the backoff after a lost link only if the link had stayed up this long (flap-aware reset).
    #[must_use]
    pub fn min_uptime(mut self, min_uptime: Duration) -> Self {
        self.config = self.config.min_uptime(min_uptime);
        self
    }

    /// The state of the link, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.observe.publish.state()
    }

    /// The lifecycle events from now on, through a bounded channel ([`EVENT_CAPACITY`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.observe.publish.subscribe()
    }

    /// A handle that closes the link for good from anywhere.
    pub fn close_handle(&self) -> CloseHandle {
        CloseHandle(self.observe.close.clone())
    }
}

impl<M, Target, H> Layer<M> for ReconnectLayer<Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response> + Clone,
    Target: Clone,
{
    type Service = Reconnect<M, Target, H>;

    fn layer(&self, mk: M) -> Self::Service {
        Reconnect::from_layer(mk, self.clone())
    }
}

impl<Target: Clone, H: Clone> Clone for ReconnectLayer<Target, H> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            hook: self.hook.clone(),
            backoff: self.backoff.clone(),
            classify: self.classify.clone(),
            hook_timeout: self.hook_timeout,
            settle_timeout: self.settle_timeout,
            config: self.config,
            observe: self.observe.clone(),
        }
    }
}

impl<Target: fmt::Debug, H> fmt::Debug for ReconnectLayer<Target, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectLayer")
            .field("target", &self.target)
            .field("hook_timeout", &self.hook_timeout)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Closes a [`Reconnect`] for good from anywhere: a connect in progress is cancelled, a pending backoff timer is
/// dropped, an established connection is torn down, and every later `poll_ready` fails with
/// [`Closed`](connman_core::error::Closed).
#[derive(Debug, Clone)]
pub struct CloseHandle(CancellationToken);

impl CloseHandle {
    pub(crate) fn from_token(token: CancellationToken) -> Self {
        Self(token)
    }

    /// Closes the link. Idempotent.
    pub fn close(&self) {
        self.0.cancel();
    }

    /// Whether the link was closed through this handle.
    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl Disconnect for CloseHandle {
    fn disconnect(&self) {
        self.close();
    }
}

//! [`ReconnectConfig`] and its [`ReconnectBuilder`]: the settings of a [`Reconnect`](super::Reconnect).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use connman_core::backoff::{Backoff, presets};
use connman_core::error::{BoxError, InvalidConfig};
use connman_core::lifecycle::{self, Event, FailureKind, State};
use connman_core::rt::tokio::Publish;
use tokio::sync::{broadcast, watch};

use super::handle::{CloseHandle, Closer, Observe, ReconnectStats};
use super::hook::Identity;

/// The default time an on-up hook may take: 10 s.
///
/// upnode has no limit (UP-08: a hook that never emits `up` holds the queue forever); 10 s is upnode's own ping
/// interval, the time it gives a healthy link to answer.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time the calls of a lost connection get to resolve before a new connection serves requests: 1 s.
///
/// See [`ReconnectBuilder::settle_timeout`]. Calls of a lost link resolve as soon as their owners poll them (the link
/// failed them all); the bound only matters for an owner that holds a call without polling or dropping it.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many events a slow subscriber may fall behind before it loses the oldest.
pub const EVENT_CAPACITY: usize = 64;

pub(crate) type BoxBackoff = Box<dyn Backoff + Send + Sync>;
pub(crate) type Classifier = Arc<dyn Fn(&BoxError) -> FailureKind + Send + Sync>;

/// The settings of a [`Reconnect`](super::Reconnect), checked, and the handles to observe and close it.
///
/// Every [`Reconnect`](super::Reconnect) made from one config (and its clones) shares one state watch, one event
/// channel and one close handle: build one config per supervised link.
///
/// ```
/// use connman_core::backoff::presets;
/// use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
/// use std::time::Duration;
///
/// let config = ReconnectConfig::builder("127.0.0.1:7000")
///     .backoff(presets::upnode())
///     .hook_timeout(Duration::from_secs(2))
///     .build()?;
/// let state = config.state();
/// assert!(!state.borrow().is_up());
/// let layer = ReconnectLayer::new(config);
/// # let _ = layer;
/// // Every setting is checked in one place, with one error type.
/// assert!(ReconnectConfig::builder(()).hook_timeout(Duration::ZERO).build().is_err());
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
pub struct ReconnectConfig<Target, H = Identity> {
    pub(crate) target: Target,
    pub(crate) hook: H,
    pub(crate) backoff: Arc<dyn Fn() -> BoxBackoff + Send + Sync>,
    pub(crate) classify: Classifier,
    pub(crate) hook_timeout: Duration,
    pub(crate) settle_timeout: Duration,
    pub(crate) config: lifecycle::Config,
    pub(crate) observe: Observe,
}

impl<Target> ReconnectConfig<Target> {
    /// A builder for `target` that starts from the defaults: the [`presets::connman`] backoff (20 ms doubling up to
    /// 128 s, never giving up), every failure retriable, no hook, a [`DEFAULT_HOOK_TIMEOUT`] and a
    /// [`DEFAULT_SETTLE_TIMEOUT`].
    pub fn builder(target: Target) -> ReconnectBuilder<Target> {
        ReconnectBuilder {
            config: ReconnectConfig {
                target,
                hook: Identity,
                backoff: Arc::new(|| Box::new(presets::connman())),
                classify: Arc::new(|_| FailureKind::Retriable),
                hook_timeout: DEFAULT_HOOK_TIMEOUT,
                settle_timeout: DEFAULT_SETTLE_TIMEOUT,
                config: lifecycle::Config::new(),
                observe: Observe {
                    publish: Publish::new(EVENT_CAPACITY),
                    close: Closer::default(),
                    hook_runs: Arc::default(),
                },
            },
        }
    }

    /// The defaults for `target` (see [`ReconnectConfig::builder`]).
    pub fn new(target: Target) -> Self {
        Self::builder(target).config
    }
}

impl<Target, H> ReconnectConfig<Target, H> {
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
        CloseHandle::new(self.observe.close.clone())
    }

    /// Lossless counts of the link's events so far.
    pub fn stats(&self) -> ReconnectStats {
        self.observe.stats()
    }

    /// The target handed to the make service on every attempt.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl<Target: Clone, H: Clone> Clone for ReconnectConfig<Target, H> {
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

impl<Target: fmt::Debug, H> fmt::Debug for ReconnectConfig<Target, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectConfig")
            .field("target", &self.target)
            .field("hook_timeout", &self.hook_timeout)
            .field("settle_timeout", &self.settle_timeout)
            .field("lifecycle", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ReconnectConfig`]: setters never fail, [`ReconnectBuilder::build`] checks everything at once.
#[must_use = "a builder does nothing until `build` is called"]
pub struct ReconnectBuilder<Target, H = Identity> {
    config: ReconnectConfig<Target, H>,
}

impl<Target, H> ReconnectBuilder<Target, H> {
    /// Sets the backoff policy; each [`Reconnect`](super::Reconnect) gets its own copy.
    pub fn backoff<B>(mut self, backoff: B) -> Self
    where
        B: Backoff + Clone + Send + Sync + 'static,
    {
        self.config.backoff = Arc::new(move || Box::new(backoff.clone()));
        self
    }

    /// Sets the classifier that tells a fatal connect failure from a retriable one (default: all retriable).
    pub fn classify<F>(mut self, classify: F) -> Self
    where
        F: Fn(&BoxError) -> FailureKind + Send + Sync + 'static,
    {
        self.config.classify = Arc::new(classify);
        self
    }

    /// Sets the hook that runs on each new connection before it is up (re-auth, resubscribe).
    pub fn on_up<H2>(self, hook: H2) -> ReconnectBuilder<Target, H2> {
        let c = self.config;
        ReconnectBuilder {
            config: ReconnectConfig {
                target: c.target,
                hook,
                backoff: c.backoff,
                classify: c.classify,
                hook_timeout: c.hook_timeout,
                settle_timeout: c.settle_timeout,
                config: c.config,
                observe: c.observe,
            },
        }
    }

    /// Sets how long the on-up hook may take before the attempt counts as failed with
    /// [`Elapsed`](connman_core::error::Elapsed) (UP-08). Must be greater than zero.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.config.hook_timeout = timeout;
        self
    }

    /// Sets how long a new connection waits, at most, for the calls of the lost one to resolve before it serves a
    /// request (default [`DEFAULT_SETTLE_TIMEOUT`]). Must be greater than zero.
    ///
    /// This is the replay barrier: a call of the lost connection that fails as never written is put back in its place
    /// by a [`Queue`](crate::queue::Queue) above when its owner sees the failure. Waiting for those calls keeps a
    /// request issued later from overtaking it on the new connection, so requests reach the peer in the order they
    /// were issued.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.config.settle_timeout = timeout;
        self
    }

    /// Resets the backoff after a lost link only if the link had stayed up this long (flap-aware reset).
    pub fn min_uptime(mut self, min_uptime: Duration) -> Self {
        self.config.config = self.config.config.min_uptime(min_uptime);
        self
    }

    /// Closes for good, with [`FatalConnect`](super::FatalConnect), when the very first connect fails, instead of
    /// backing off: a wrong address or bad credentials are told at once. See
    /// [`Config::first_attempt_fatal`](connman_core::lifecycle::Config::first_attempt_fatal).
    pub fn first_attempt_fatal(mut self, fatal: bool) -> Self {
        self.config.config = self.config.config.first_attempt_fatal(fatal);
        self
    }

    /// Checks the settings: [`InvalidConfig`] names the first that is out of range.
    pub fn build(self) -> Result<ReconnectConfig<Target, H>, InvalidConfig> {
        if self.config.hook_timeout.is_zero() {
            return Err(InvalidConfig::new("hook timeout must be greater than zero"));
        }
        if self.config.settle_timeout.is_zero() {
            return Err(InvalidConfig::new(
                "settle timeout must be greater than zero",
            ));
        }
        Ok(self.config)
    }
}

impl<Target: fmt::Debug, H> fmt::Debug for ReconnectBuilder<Target, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectBuilder")
            .field("config", &self.config)
            .finish()
    }
}

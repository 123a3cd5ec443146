//! The registry's settings and their defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use connman_core::backoff::{Backoff, presets};
use connman_core::error::InvalidConfig;

/// The default connect timeout: connection-manager's 10 000 ms (CM-07).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default grace period after the last reference is gone: connection-manager's 20 000 ms "page refresh" (CM-22).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// The default bound on `disconnect`: soketi's 3 000 ms shutdown grace period (the original has none, CM-26).
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of a [`Registry`](super::Registry). Every default is finite.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// How long a connect may take: [`DEFAULT_CONNECT_TIMEOUT`] unless a [`Spec`](super::Spec) says otherwise.
    pub connect_timeout: Duration,
    /// How long a connection with no reference is kept: [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// How long `disconnect` may take, and how long a connect that timed out is watched for a late connection:
    /// [`DEFAULT_TEARDOWN_TIMEOUT`].
    pub teardown_timeout: Duration,
    backoff: BackoffFactory,
}

type BackoffFactory = Arc<dyn Fn() -> Box<dyn Backoff + Send> + Send + Sync>;

impl Config {
    /// The defaults; reconnects follow connman's backoff ([`presets::connman`]: 20 ms doubling to 128 s).
    pub fn new() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            grace: DEFAULT_GRACE,
            teardown_timeout: DEFAULT_TEARDOWN_TIMEOUT,
            backoff: Arc::new(|| Box::new(presets::connman())),
        }
    }

    /// Sets [`Config::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Config::grace`].
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`Config::teardown_timeout`].
    #[must_use]
    pub fn teardown_timeout(mut self, timeout: Duration) -> Self {
        self.teardown_timeout = timeout;
        self
    }

    /// Sets how reconnects back off: `make` builds a fresh policy for each connection.
    #[must_use]
    pub fn backoff<B>(mut self, make: impl Fn() -> B + Send + Sync + 'static) -> Self
    where
        B: Backoff + Send + 'static,
    {
        self.backoff = Arc::new(move || Box::new(make()));
        self
    }

    /// Checks the settings a registry cannot work with.
    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.connect_timeout.is_zero() {
            return Err(InvalidConfig::new("connect timeout must be more than zero"));
        }
        if self.teardown_timeout.is_zero() {
            return Err(InvalidConfig::new(
                "teardown timeout must be more than zero",
            ));
        }
        Ok(())
    }

    /// A fresh backoff policy for one connection's supervisor.
    pub(super) fn make_backoff(&self) -> Box<dyn Backoff + Send> {
        (self.backoff)()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("connect_timeout", &self.connect_timeout)
            .field("grace", &self.grace)
            .field("teardown_timeout", &self.teardown_timeout)
            .finish_non_exhaustive()
    }
}

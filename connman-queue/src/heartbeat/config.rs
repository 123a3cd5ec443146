//! [`HeartbeatConfig`]: how often to ping and how long to wait for the answer.

use std::time::Duration;

use connman_core::error::InvalidConfig;
use connman_core::heartbeat::check_schedule;

/// The default ping interval: upnode's `ping` option, 10 000 ms.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The default ping timeout: upnode's `timeout` option, 5 000 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often to ping and how long to wait for the answer; the timeout is always shorter than the interval.
///
/// ```
/// use connman_queue::heartbeat::HeartbeatConfig;
/// use std::time::Duration;
///
/// let config = HeartbeatConfig::builder()
///     .interval(Duration::from_secs(10))
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// assert!(config.is_enabled());
/// // upnode's server side waited 100 s for a 10 s ping (UP-11): rejected here.
/// let slow = HeartbeatConfig::builder().interval(Duration::from_secs(10)).timeout(Duration::from_secs(100));
/// assert!(slow.build().is_err());
/// // An interval of zero turns pings off, as upnode's `ping: 0` (UP-09).
/// assert!(!HeartbeatConfig::builder().interval(Duration::ZERO).build()?.is_enabled());
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    interval: Duration,
    timeout: Duration,
}

impl HeartbeatConfig {
    /// A builder that starts from upnode's defaults ([`DEFAULT_INTERVAL`], [`DEFAULT_TIMEOUT`]).
    pub const fn builder() -> HeartbeatBuilder {
        HeartbeatBuilder {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// No pings at all.
    pub const fn disabled() -> Self {
        Self {
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
        }
    }

    /// Whether pings are sent.
    pub const fn is_enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// The ping interval (zero when disabled).
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// The ping timeout (zero when disabled).
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for HeartbeatConfig {
    /// upnode's defaults: a ping every 10 s, 5 s to answer.
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Builds a [`HeartbeatConfig`]: setters never fail, [`HeartbeatBuilder::build`] checks everything at once.
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatBuilder {
    interval: Duration,
    timeout: Duration,
}

impl HeartbeatBuilder {
    /// Ping every `interval`; zero turns pings off (the timeout is then ignored).
    pub const fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Declare the link dead if an answer takes `timeout` or longer.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the schedule with [`connman_core::heartbeat::check_schedule`]: with pings on, the timeout must be
    /// greater than zero and shorter than the interval, else [`InvalidConfig`].
    pub const fn build(self) -> Result<HeartbeatConfig, InvalidConfig> {
        if self.interval.is_zero() {
            return Ok(HeartbeatConfig::disabled());
        }
        match check_schedule(self.interval, self.timeout) {
            Ok(()) => Ok(HeartbeatConfig {
                interval: self.interval,
                timeout: self.timeout,
            }),
            Err(e) => Err(e),
        }
    }
}

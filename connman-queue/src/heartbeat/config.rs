//! [`HeartbeatConfig`]: how often to ping and how long to wait for the answer.

use std::time::Duration;

use connman_core::error::InvalidConfig;

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
/// let config = HeartbeatConfig::new(Duration::from_secs(10), Duration::from_secs(5))?;
/// assert!(config.is_enabled());
/// // upnode's server side waited 100 s for a 10 s ping (UP-11): rejected here.
/// assert!(HeartbeatConfig::new(Duration::from_secs(10), Duration::from_secs(100)).is_err());
/// // An interval of zero turns pings off, as upnode's `ping: 0` (UP-09).
/// assert!(!HeartbeatConfig::new(Duration::ZERO, Duration::ZERO)?.is_enabled());
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    interval: Duration,
    timeout: Duration,
}

impl HeartbeatConfig {
    /// Ping every `interval` and declare the link dead if an answer takes `timeout` or longer.
    ///
    /// An `interval` of zero disables pings (the timeout is then ignored); otherwise the timeout must be greater than
    /// zero and shorter than the interval, else [`InvalidConfig`].
    pub const fn new(interval: Duration, timeout: Duration) -> Result<Self, InvalidConfig> {
        if interval.is_zero() {
            return Ok(Self::disabled());
        }
        if timeout.is_zero() {
            return Err(InvalidConfig::new(
                "heartbeat timeout must be greater than zero",
            ));
        }
        if timeout.as_nanos() >= interval.as_nanos() {
            return Err(InvalidConfig::new(
                "heartbeat timeout must be shorter than the interval",
            ));
        }
        Ok(Self { interval, timeout })
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

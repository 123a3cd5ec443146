//! Settings of a group: per-member queue bounds, the slow-consumer policy and timeouts.

use std::time::Duration;

use connman_core::error::InvalidConfig;
use connman_core::member::CloseCode;

/// What a member's queue does when a new message does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the new message and keep the queued ones (uWebSockets drops above its backpressure limit).
    DropNewest,
    /// Drop the oldest queued messages until the new one fits: a late reader gets the most recent state.
    DropOldest,
    /// Drop everything queued and close the member with this code (Centrifugo closes slow readers).
    Close(CloseCode),
}

/// Settings of a [`Group`](super::Group). Build from [`GroupConfig::default`] with the `with_*` methods.
///
/// ```
/// use connman_pool::group::{GroupConfig, SlowConsumer};
/// use std::time::Duration;
///
/// let config = GroupConfig::default()
///     .with_max_queued_messages(64)
///     .with_slow_consumer(SlowConsumer::DropOldest)
///     .with_idle_timeout(Some(Duration::from_secs(30)));
/// assert_eq!(config.max_queued_messages(), 64);
/// ```
#[derive(Debug, Clone)]
pub struct GroupConfig {
    max_queued_messages: usize,
    max_queued_bytes: usize,
    slow_consumer: SlowConsumer,
    idle_timeout: Option<Duration>,
    close_timeout: Duration,
}

impl GroupConfig {
    /// Default bound on messages waiting in one member's queue: 1024 (tower's `Buffer` bound in connman's benchmarks).
    pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1024;
    /// Default bound on bytes waiting in one member's queue: 1 MiB (Centrifugo's `client_queue_max_size`).
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1024 * 1024;
    /// Default idle timeout: 120 s (soketi's idle close, code 4201).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
    /// Default bound on a close, flush included: 30 s (the `closeTimeout` of Node's `ws`).
    pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Bounds each member's queue to `n` messages (at least 1).
    pub const fn with_max_queued_messages(mut self, n: usize) -> Self {
        self.max_queued_messages = n;
        self
    }

    /// Bounds each member's queue to `n` bytes of messages (at least 1). A message larger than this is never queued.
    pub const fn with_max_queued_bytes(mut self, n: usize) -> Self {
        self.max_queued_bytes = n;
        self
    }

    /// Sets what a full queue does with a new message.
    pub const fn with_slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// Closes a member with [`CloseCode::IDLE_TIMEOUT`] after this long without traffic in either direction; `None`
    /// never closes idle members.
    pub const fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Bounds a close, including the flush of what was queued before it; past it the member is dropped.
    pub const fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The bound on queued messages per member.
    pub const fn max_queued_messages(&self) -> usize {
        self.max_queued_messages
    }

    /// The bound on queued bytes per member.
    pub const fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    /// What a full queue does with a new message.
    pub const fn slow_consumer(&self) -> SlowConsumer {
        self.slow_consumer
    }

    /// The idle timeout, if any.
    pub const fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The bound on a close.
    pub const fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// Rejects settings that cannot work.
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_queued_messages == 0 {
            return Err(InvalidConfig::new("max_queued_messages must be at least 1"));
        }
        if self.max_queued_bytes == 0 {
            return Err(InvalidConfig::new("max_queued_bytes must be at least 1"));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(InvalidConfig::new("idle_timeout must be longer than zero"));
        }
        if self.close_timeout.is_zero() {
            return Err(InvalidConfig::new("close_timeout must be longer than zero"));
        }
        Ok(())
    }
}

impl Default for GroupConfig {
    /// 1024 messages and 1 MiB per member, drop newest when full, 120 s idle timeout, 30 s close timeout.
    fn default() -> Self {
        Self {
            max_queued_messages: Self::DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: Self::DEFAULT_MAX_QUEUED_BYTES,
            slow_consumer: SlowConsumer::DropNewest,
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            close_timeout: Self::DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

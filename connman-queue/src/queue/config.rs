//! [`QueueConfig`] and its [`QueueBuilder`]: the settings of a [`Queue`](super::Queue), checked once, at `build`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use connman_core::error::InvalidConfig;

/// The default number of requests a queue is responsible for at once: 1024.
///
/// upnode's queue is unbounded (UP-02); tower's `Buffer` has no default. 1024 is our choice: enough to ride out a
/// reconnect at thousands of requests per second, small enough to bound memory.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The default total weight of the requests a queue is responsible for: 16 Mi units.
///
/// With the default weigher (1 per request) the count bound is the one that binds; with a byte weigher
/// (`|req: &Bytes| req.len()`) this is 16 MiB.
pub const DEFAULT_MAX_WEIGHT: usize = 16 * 1024 * 1024;

/// The default longest time a request may wait in the queue, over all its replays: 30 s.
///
/// upnode waits forever by default (UP-04, UP-16). 30 s outlasts upnode's fixed 1 s reconnect delay thirty times and
/// covers the first ten steps of connman's doubling backoff (20 ms … 10.24 s), yet nothing waits forever.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// The default number of times one request may be replayed: 8.
///
/// A replay follows a failure that proved the request unsent (or an idempotent one maybe delivered). After a lost
/// link that takes a new connection each time, so eight replays mean eight connections in a row that could not carry
/// it. A request that fails unsent on a healthy link (say, it cannot be encoded) would fail the same way forever: the
/// bound turns that into its error instead of a busy loop.
pub const DEFAULT_MAX_REPLAYS: u32 = 8;

pub(crate) type Weigher<Req> = Arc<dyn Fn(&Req) -> usize + Send + Sync>;

/// The settings of a [`Queue`](super::Queue), checked: made by [`QueueBuilder::build`] or [`QueueConfig::default`].
///
/// ```
/// use connman_queue::queue::{QueueConfig, QueueLayer};
/// use std::time::Duration;
///
/// let config = QueueConfig::builder()
///     .capacity(64)
///     .weigh(|req: &Vec<u8>| req.len())
///     .max_weight(1 << 20)
///     .max_wait(Duration::from_secs(5))
///     .max_replays(3)
///     .build()?;
/// let layer = QueueLayer::new(config);
/// # let _ = layer;
/// // Every setting is checked in one place, with one error type.
/// assert!(QueueConfig::<Vec<u8>>::builder().capacity(0).build().is_err());
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
pub struct QueueConfig<Req> {
    pub(crate) capacity: usize,
    pub(crate) max_weight: usize,
    pub(crate) max_wait: Duration,
    pub(crate) reject_when_full: bool,
    pub(crate) max_replays: u32,
    pub(crate) weigh: Weigher<Req>,
    /// Whether `weigh` is the default, one per request.
    pub(crate) unit_weight: bool,
    _req: PhantomData<fn(Req)>,
}

impl<Req> QueueConfig<Req> {
    /// A builder that starts from the defaults.
    pub fn builder() -> QueueBuilder<Req> {
        QueueBuilder {
            config: Self::default(),
        }
    }

    /// How many requests the queue is responsible for at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most total weight the queue is responsible for at once.
    pub fn max_weight(&self) -> usize {
        self.max_weight
    }

    /// The longest a request may wait in the queue over all its replays.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// How many times one request may be replayed.
    pub fn max_replays(&self) -> u32 {
        self.max_replays
    }

    /// Whether a full queue rejects instead of holding `poll_ready` pending.
    pub fn rejects_when_full(&self) -> bool {
        self.reject_when_full
    }
}

impl<Req> Default for QueueConfig<Req> {
    /// [`DEFAULT_CAPACITY`], [`DEFAULT_MAX_WEIGHT`] with a weight of 1 per request, [`DEFAULT_MAX_WAIT`],
    /// [`DEFAULT_MAX_REPLAYS`], and backpressure (not rejection) when full.
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            max_weight: DEFAULT_MAX_WEIGHT,
            max_wait: DEFAULT_MAX_WAIT,
            reject_when_full: false,
            max_replays: DEFAULT_MAX_REPLAYS,
            weigh: Arc::new(|_| 1),
            unit_weight: true,
            _req: PhantomData,
        }
    }
}

impl<Req> Clone for QueueConfig<Req> {
    fn clone(&self) -> Self {
        Self {
            capacity: self.capacity,
            max_weight: self.max_weight,
            max_wait: self.max_wait,
            reject_when_full: self.reject_when_full,
            max_replays: self.max_replays,
            weigh: self.weigh.clone(),
            unit_weight: self.unit_weight,
            _req: PhantomData,
        }
    }
}

impl<Req> fmt::Debug for QueueConfig<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("capacity", &self.capacity)
            .field("max_weight", &self.max_weight)
            .field("max_wait", &self.max_wait)
            .field("reject_when_full", &self.reject_when_full)
            .field("max_replays", &self.max_replays)
            .finish_non_exhaustive()
    }
}

/// Builds a [`QueueConfig`]: setters never fail, [`QueueBuilder::build`] checks everything at once.
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct QueueBuilder<Req> {
    config: QueueConfig<Req>,
}

impl<Req> QueueBuilder<Req> {
    /// How many requests the queue is responsible for at once: queued, and written but not yet answered (those may
    /// come back for a replay). Must be greater than zero.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// The most total weight the queue is responsible for at once. Must be greater than zero.
    pub fn max_weight(mut self, max_weight: usize) -> Self {
        self.config.max_weight = max_weight;
        self
    }

    /// How to weigh a request (for example its size in bytes). A request whose weight does not fit in what is left
    /// fails at once with [`Overloaded`](connman_core::error::Overloaded): its weight is only known at `call`.
    pub fn weigh<F>(mut self, weigh: F) -> Self
    where
        F: Fn(&Req) -> usize + Send + Sync + 'static,
    {
        self.config.weigh = Arc::new(weigh);
        self.config.unit_weight = false;
        self
    }

    /// The longest a request may wait in the queue over all its replays; past it, it fails with
    /// [`Elapsed`](connman_core::error::Elapsed) and is never sent. Must be greater than zero.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// How many times one request may be replayed before its last error goes to the caller (zero: never replay).
    pub fn max_replays(mut self, max_replays: u32) -> Self {
        self.config.max_replays = max_replays;
        self
    }

    /// When full, let `poll_ready` succeed and fail the request at once with
    /// [`Overloaded`](connman_core::error::Overloaded), instead of holding `poll_ready` pending.
    pub fn reject_when_full(mut self) -> Self {
        self.config.reject_when_full = true;
        self
    }

    /// Checks the settings: [`InvalidConfig`] names the first that is out of range.
    pub fn build(self) -> Result<QueueConfig<Req>, InvalidConfig> {
        let c = &self.config;
        if c.capacity == 0 {
            return Err(InvalidConfig::new(
                "queue capacity must be greater than zero",
            ));
        }
        // What one handle can count of the capacity (2^31 - 1), below the bound of tokio's semaphore that holds it.
        if c.capacity > super::local::MAX_CAPACITY {
            return Err(InvalidConfig::new("queue capacity is too large"));
        }
        if c.max_weight == 0 {
            return Err(InvalidConfig::new(
                "queue max weight must be greater than zero",
            ));
        }
        if c.max_wait.is_zero() {
            return Err(InvalidConfig::new(
                "queue max wait must be greater than zero",
            ));
        }
        Ok(self.config)
    }
}

impl<Req> Default for QueueBuilder<Req> {
    fn default() -> Self {
        QueueConfig::builder()
    }
}

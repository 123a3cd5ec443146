//! [`QueueLayer`]: the settings of a [`Queue`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use connman_core::error::{BoxError, InvalidConfig};
use tower_layer::Layer;
use tower_service::Service;

use super::service::Queue;

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

/// Puts a [`Queue`] in front of a service. All settings are checked when set.
///
/// ```
/// use connman_queue::queue::QueueLayer;
/// use std::time::Duration;
///
/// let layer = QueueLayer::<Vec<u8>>::new()
///     .capacity(64)?
///     .weigh(|req: &Vec<u8>| req.len())
///     .max_weight(1 << 20)?
///     .max_wait(Duration::from_secs(5))?;
/// # let _ = layer;
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
pub struct QueueLayer<Req> {
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

impl<Req> QueueLayer<Req> {
    /// The defaults: [`DEFAULT_CAPACITY`], [`DEFAULT_MAX_WEIGHT`] with a weight of 1 per request,
    /// [`DEFAULT_MAX_WAIT`], [`DEFAULT_MAX_REPLAYS`], and backpressure (not rejection) when full.
    pub fn new() -> Self {
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

    /// How many requests the queue is responsible for at once: queued, and written but not yet answered (those may
    /// come back for a replay). Zero is rejected.
    pub fn capacity(mut self, capacity: usize) -> Result<Self, InvalidConfig> {
        if capacity == 0 {
            return Err(InvalidConfig::new(
                "queue capacity must be greater than zero",
            ));
        }
        // The bound of tokio's semaphore (`usize::MAX >> 3`), kept: the slot counter needs its top bit to close.
        if capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(InvalidConfig::new("queue capacity is too large"));
        }
        self.capacity = capacity;
        Ok(self)
    }

    /// The most total weight the queue is responsible for at once. Zero is rejected.
    pub fn max_weight(mut self, max_weight: usize) -> Result<Self, InvalidConfig> {
        if max_weight == 0 {
            return Err(InvalidConfig::new(
                "queue max weight must be greater than zero",
            ));
        }
        self.max_weight = max_weight;
        Ok(self)
    }

    /// How to weigh a request (for example its size in bytes). A request whose weight does not fit in what is left
    /// fails at once with [`Overloaded`](connman_core::error::Overloaded): its weight is only known at `call`.
    #[must_use]
    pub fn weigh<F>(mut self, weigh: F) -> Self
    where
        F: Fn(&Req) -> usize + Send + Sync + 'static,
    {
        self.weigh = Arc::new(weigh);
        self.unit_weight = false;
        self
    }

    /// The longest a request may wait in the queue over all its replays; past it, it fails with
    /// [`Elapsed`](connman_core::error::Elapsed) and is never sent. Zero is rejected.
    pub fn max_wait(mut self, max_wait: Duration) -> Result<Self, InvalidConfig> {
        if max_wait.is_zero() {
            return Err(InvalidConfig::new(
                "queue max wait must be greater than zero",
            ));
        }
        self.max_wait = max_wait;
        Ok(self)
    }

    /// How many times one request may be replayed before its last error goes to the caller (zero: never replay).
    #[must_use]
    pub const fn max_replays(mut self, max_replays: u32) -> Self {
        self.max_replays = max_replays;
        self
    }

    /// When full, let `poll_ready` succeed and fail the request at once with
    /// [`Overloaded`](connman_core::error::Overloaded), instead of holding `poll_ready` pending.
    #[must_use]
    pub fn reject_when_full(mut self) -> Self {
        self.reject_when_full = true;
        self
    }
}

impl<Req> Default for QueueLayer<Req> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req> Clone for QueueLayer<Req> {
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

impl<Req> fmt::Debug for QueueLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("capacity", &self.capacity)
            .field("max_weight", &self.max_weight)
            .field("max_wait", &self.max_wait)
            .field("reject_when_full", &self.reject_when_full)
            .field("max_replays", &self.max_replays)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Layer<S> for QueueLayer<Req>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Clone + Send + 'static,
{
    type Service = Queue<S, Req>;

    fn layer(&self, service: S) -> Self::Service {
        Queue::new(service, self)
    }
}

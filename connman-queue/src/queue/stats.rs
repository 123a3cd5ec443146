//! [`QueueStats`]: a lossless snapshot of a queue's gauges and counters.

/// A snapshot of a queue's gauges and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Requests waiting in the queue now.
    pub len: usize,
    /// Total weight of the requests the queue is responsible for now.
    pub weight: usize,
    /// Requests sent at once on the fast path.
    pub direct: u64,
    /// Requests that had to wait in the queue.
    pub queued: u64,
    /// Replays after a failure that proved the request unsent (or of an idempotent request).
    pub replayed: u64,
    /// Requests that failed with `MaybeDelivered`.
    pub maybe_delivered: u64,
    /// Requests that failed with `Elapsed` while queued.
    pub expired: u64,
    /// Requests dropped by their caller while queued (never sent).
    pub cancelled: u64,
    /// Requests rejected with `Overloaded`.
    pub overloaded: u64,
    /// Whether the queue is closed or its inner service failed for good.
    pub closed: bool,
}

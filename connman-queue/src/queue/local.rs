//! What one [`Queue`](super::Queue) handle owns: its share of the capacity, a [`Share`] that only the handle, its own
//! response futures and a handle waiting for capacity write.
//!
//! The share counts the permits the handle took from the queue's semaphore, the slots it took from them for its
//! requests (reserved or in flight), and whether the handle is gone (then each answered request gives its permit
//! straight back to the semaphore). A request on the fast path changes it twice (reserve, answer) and nothing else that
//! is shared; whether the reservation is used yet is a flag only the handle writes. The share's protocol is modelled
//! with loom in connman-core.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use connman_core::capacity::Share;
use tower_service::Service;

use super::shared::{Counted, Shared};

/// The most capacity one handle can count (and so the largest capacity a queue accepts).
pub(crate) const MAX_CAPACITY: usize = Share::MAX;

/// The requests called and not yet answered, by a handle's counters (a reservation is not a request yet).
pub(crate) fn in_flight(counted: &Counted) -> usize {
    let taken = usize::try_from(counted.share.taken()).unwrap_or(usize::MAX);
    taken.saturating_sub(usize::from(counted.reserved.load(Ordering::Relaxed)))
}

/// A handle's state, shared with its response futures (each holds a count of it: aligned so that the count of one
/// handle never shares a cache line with another's).
#[repr(align(128))]
pub(crate) struct HandleState<S: Service<Req>, Req> {
    pub(crate) shared: Arc<Shared<S, Req>>,
    pub(crate) counted: Arc<Counted>,
}

impl<S: Service<Req>, Req> HandleState<S, Req> {
    pub(crate) fn new(shared: Arc<Shared<S, Req>>) -> Self {
        let counted = Arc::new(Counted::default());
        shared.register(&counted);
        Self { shared, counted }
    }

    /// Whether a slot is reserved for the next call.
    pub(crate) fn is_reserved(&self) -> bool {
        self.counted.reserved.load(Ordering::Relaxed)
    }

    /// Reserves a slot from the permits held (counted as taken from now on); false if none is spare.
    pub(crate) fn try_reserve(&self) -> bool {
        if self.is_reserved() {
            return true;
        }
        if !self.counted.share.try_take() {
            return false;
        }
        // Only the handle writes this flag: a store, not a read-modify-write.
        self.counted.reserved.store(true, Ordering::Relaxed);
        true
    }

    /// Adds `n` permits taken from the semaphore.
    pub(crate) fn add_held(&self, n: u32) {
        self.counted.share.add(n);
    }

    /// The reserved slot becomes a request in flight: it is counted already.
    pub(crate) fn use_reserved(&self) {
        self.counted.reserved.store(false, Ordering::Relaxed);
    }

    /// Gives up the reserved slot without a request.
    pub(crate) fn unreserve(&self) {
        if self.counted.reserved.swap(false, Ordering::Relaxed) {
            // The handle is here, so the share is not orphaned: the slot stays with the handle.
            self.counted.share.give_back();
            self.give_back_if_wanted();
        }
    }

    /// A request in flight is answered (or dropped): its permit is free again, for this handle or, once the handle
    /// is gone, for the queue.
    pub(crate) fn answered(&self) {
        if self.counted.share.give_back() {
            self.shared.permits.add_permits(1);
        } else if self.shared.waiting.load(Ordering::Relaxed) > 0 {
            self.give_back_if_wanted();
        }
    }

    /// While another handle waits for capacity, gives back every permit held spare.
    pub(crate) fn give_back_if_wanted(&self) {
        if self.shared.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        give_back(&self.shared, self.counted.share.reclaim());
    }

    /// The handle is gone: its permits not in use go back now, the others as their requests are answered.
    pub(crate) fn orphan(&self) {
        if self.counted.reserved.swap(false, Ordering::Relaxed) {
            self.counted.share.give_back();
        }
        give_back(&self.shared, self.counted.share.orphan());
        let direct = self.counted.direct.load(Ordering::Relaxed);
        self.shared
            .counters
            .direct
            .fetch_add(direct, Ordering::Relaxed);
        self.counted.direct.store(0, Ordering::Relaxed);
    }

    /// Counts a request sent at once; only the handle writes this counter, so no atomic read-modify-write is needed.
    pub(crate) fn count_direct(&self) {
        let d = &self.counted.direct;
        d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// Puts `n` permits back into the queue's semaphore.
pub(crate) fn give_back<S: Service<Req>, Req>(shared: &Shared<S, Req>, n: u64) {
    if n > 0 {
        // `n` is at most the capacity, which fits a usize.
        shared
            .permits
            .add_permits(usize::try_from(n).unwrap_or(usize::MAX));
    }
}

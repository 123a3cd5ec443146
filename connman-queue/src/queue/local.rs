//! What one [`Queue`](super::Queue) handle owns: its share of the capacity, counted in one word that only the handle
//! and its own response futures write.
//!
//! The word holds the permits the handle took from the queue's semaphore (`held`), its requests reserved or called
//! and not yet answered (`in_flight`), and whether the handle is gone (then each answered request gives its permit
//! straight back to the semaphore). A request on the fast path changes this word twice (reserve, answer) and nothing
//! else that is shared; whether the reservation is used yet is a flag only the handle writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_service::Service;

use super::shared::{Counted, Shared};

const IN_FLIGHT_BITS: u32 = 31;
const ONE: u64 = 1;
const IN_FLIGHT_MASK: u64 = (1 << IN_FLIGHT_BITS) - 1;
const HELD_ONE: u64 = 1 << IN_FLIGHT_BITS;
const HELD_MASK: u64 = IN_FLIGHT_MASK << IN_FLIGHT_BITS;
const ORPHAN: u64 = 1 << 63;

/// The most capacity one handle can count (and so the largest capacity a queue accepts).
pub(crate) const MAX_CAPACITY: usize = IN_FLIGHT_MASK as usize;

/// The requests called and not yet answered, by a handle's counters (a reservation is not a request yet).
pub(crate) fn in_flight(counted: &Counted) -> usize {
    let w = counted.word.load(Ordering::Relaxed) & IN_FLIGHT_MASK;
    (w as usize).saturating_sub(usize::from(counted.reserved.load(Ordering::Relaxed)))
}

fn held(word: u64) -> u64 {
    (word & HELD_MASK) >> IN_FLIGHT_BITS
}

/// Permits held and not used by a request or a reservation.
fn spare(word: u64) -> u64 {
    held(word).saturating_sub(word & IN_FLIGHT_MASK)
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

    /// Reserves a slot from the permits held (counted in flight from now on); false if none is spare.
    pub(crate) fn try_reserve(&self) -> bool {
        if self.is_reserved() {
            return true;
        }
        let word = &self.counted.word;
        let mut w = word.load(Ordering::Relaxed);
        loop {
            if spare(w) == 0 {
                return false;
            }
            match word.compare_exchange_weak(w, w + ONE, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    // Only the handle writes this flag: a store, not a read-modify-write.
                    self.counted.reserved.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Adds `n` permits taken from the semaphore.
    pub(crate) fn add_held(&self, n: u32) {
        self.counted
            .word
            .fetch_add(u64::from(n) * HELD_ONE, Ordering::Relaxed);
    }

    /// The reserved slot becomes a request in flight: it is counted already.
    pub(crate) fn use_reserved(&self) {
        self.counted.reserved.store(false, Ordering::Relaxed);
    }

    /// Gives up the reserved slot without a request.
    pub(crate) fn unreserve(&self) {
        if self.counted.reserved.swap(false, Ordering::Relaxed) {
            self.counted.word.fetch_sub(ONE, Ordering::AcqRel);
            self.give_back_if_wanted();
        }
    }

    /// A request in flight is answered (or dropped): its permit is free again, for this handle or, once the handle
    /// is gone, for the queue.
    pub(crate) fn answered(&self) {
        let before = self.counted.word.fetch_sub(ONE, Ordering::AcqRel);
        if before & ORPHAN != 0 {
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
        let n = reclaim(&self.counted);
        if n > 0 {
            // `n` is at most the capacity, which fits a usize.
            self.shared.permits.add_permits(n as usize);
        }
    }

    /// The handle is gone: its permits not in use go back now, the others as their requests are answered.
    pub(crate) fn orphan(&self) {
        if self.counted.reserved.swap(false, Ordering::Relaxed) {
            self.counted.word.fetch_sub(ONE, Ordering::AcqRel);
        }
        let before = self.counted.word.fetch_or(ORPHAN, Ordering::AcqRel);
        let free = held(before).saturating_sub(before & IN_FLIGHT_MASK);
        if free > 0 {
            self.shared.permits.add_permits(free as usize);
        }
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

/// Takes the spare permits out of a handle's word (the handle may be busy: only permits neither in flight nor reserved
/// move); returns how many.
pub(crate) fn reclaim(counted: &Counted) -> u64 {
    let word = &counted.word;
    let mut w = word.load(Ordering::Relaxed);
    loop {
        let n = spare(w);
        if n == 0 || w & ORPHAN != 0 {
            return 0;
        }
        match word.compare_exchange_weak(w, w - n * HELD_ONE, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(now) => w = now,
        }
    }
}

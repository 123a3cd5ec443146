//! A handle's share of a bounded capacity, counted in one word that the handle, its requests and other handles
//! update without a lock.
//!
//! A queue that bounds how many requests it answers for keeps that bound in a semaphore, and its handles take permits
//! from it in batches, so that a request on the fast path touches nothing another handle writes. A [`Share`] is what
//! one handle holds: the permits it took (`held`), the slots it took from them for requests (`taken`: reserved or in
//! flight), and whether the handle is gone (`orphaned`). One word holds all three, so that every change is one
//! atomic step:
//!
//! * the handle [takes](Share::try_take) a slot only while one is spare (`taken < held`), and [adds](Share::add)
//!   permits it took from the semaphore;
//! * a request [gives its slot back](Share::give_back) when it is answered; once the handle is gone, the permit goes
//!   back to the semaphore with it;
//! * another handle that waits [reclaims](Share::reclaim) the spare permits, never a slot in use;
//! * the handle, when dropped, [is orphaned](Share::orphan): its spare permits go back at once, the others as their
//!   requests are answered.
//!
//! The share never hands out more slots than it holds permits, and every permit comes back exactly once: the loom
//! models of this module (`cargo xtask ci` runs them) race each pair of these steps.
//!
//! ```
//! use connman_core::capacity::Share;
//!
//! let share = Share::new();
//! assert!(!share.try_take()); // no permit held yet
//! share.add(2);
//! assert!(share.try_take() && share.try_take());
//! assert!(!share.try_take()); // both in use
//! assert!(!share.give_back()); // answered: the slot is the handle's again
//! assert_eq!(share.reclaim(), 1); // a waiting handle takes the spare permit
//! assert_eq!(share.orphan(), 0); // the handle goes; one request is still in flight
//! assert!(share.give_back()); // answered after the handle went: that permit goes back to the semaphore
//! ```

use std::fmt;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

const TAKEN_BITS: u32 = 31;
const ONE: u64 = 1;
const TAKEN_MASK: u64 = (1 << TAKEN_BITS) - 1;
const HELD_ONE: u64 = 1 << TAKEN_BITS;
const HELD_MASK: u64 = TAKEN_MASK << TAKEN_BITS;
const ORPHAN: u64 = 1 << 63;

fn held(word: u64) -> u64 {
    (word & HELD_MASK) >> TAKEN_BITS
}

fn taken(word: u64) -> u64 {
    word & TAKEN_MASK
}

/// Permits held and not taken.
fn spare(word: u64) -> u64 {
    held(word).saturating_sub(taken(word))
}

/// One handle's share of a bounded capacity. See the [module docs](self).
pub struct Share {
    word: AtomicU64,
}

impl Share {
    /// The most permits, and the most slots, one share can count: a capacity above this cannot be shared this way.
    pub const MAX: usize = TAKEN_MASK as usize;

    /// A share holding nothing.
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
        }
    }

    /// Takes a slot from the permits held, if one is spare; it counts as taken until [`give_back`](Self::give_back).
    pub fn try_take(&self) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if spare(w) == 0 {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(w, w + ONE, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// Adds `n` permits the owner took from the semaphore (at most [`Share::MAX`] held in all).
    pub fn add(&self, n: u32) {
        self.word
            .fetch_add(u64::from(n) * HELD_ONE, Ordering::Release);
    }

    /// Gives a taken slot back. True when the share is orphaned: its permit must then go back to the semaphore.
    pub fn give_back(&self) -> bool {
        let before = self.word.fetch_sub(ONE, Ordering::AcqRel);
        debug_assert!(taken(before) > 0, "a slot given back that was not taken");
        before & ORPHAN != 0
    }

    /// Takes the spare permits out, for another owner to use (none once orphaned: they went back then); returns how
    /// many. Slots taken are never touched.
    pub fn reclaim(&self) -> u64 {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            let n = spare(w);
            if n == 0 || w & ORPHAN != 0 {
                return 0;
            }
            match self.word.compare_exchange_weak(
                w,
                w - n * HELD_ONE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => w = now,
            }
        }
    }

    /// The owner is gone: returns how many permits go back now (those spare); each slot still taken returns its
    /// permit through [`give_back`](Self::give_back).
    pub fn orphan(&self) -> u64 {
        let before = self.word.fetch_or(ORPHAN, Ordering::AcqRel);
        if before & ORPHAN != 0 {
            return 0;
        }
        spare(before)
    }

    /// The slots taken now (reserved or in flight).
    pub fn taken(&self) -> u64 {
        taken(self.word.load(Ordering::Relaxed))
    }

    /// The permits held now.
    pub fn held(&self) -> u64 {
        held(self.word.load(Ordering::Relaxed))
    }
}

impl Default for Share {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("Share")
            .field("held", &held(w))
            .field("taken", &taken(w))
            .field("orphaned", &(w & ORPHAN != 0))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_permit_comes_back_once_through_reclaim_orphan_and_give_back() {
        let share = Share::new();
        share.add(5);
        assert!(share.try_take() && share.try_take() && share.try_take());
        assert!(!share.give_back());
        // 5 held, 2 taken: 3 spare.
        assert_eq!(share.reclaim(), 3);
        assert_eq!(share.reclaim(), 0);
        assert!(!share.try_take());
        share.add(1);
        // 3 held, 2 taken: 1 spare goes back at the orphaning, then 2 as answered.
        assert_eq!(share.orphan(), 1);
        assert_eq!(share.orphan(), 0);
        assert_eq!(share.reclaim(), 0);
        assert!(share.give_back());
        assert!(share.give_back());
        assert_eq!(share.taken(), 0);
    }

    #[test]
    fn the_largest_share_counts_exactly() {
        let share = Share::new();
        share.add(u32::try_from(Share::MAX).expect("fits"));
        assert_eq!(share.held(), Share::MAX as u64);
        for _ in 0..3 {
            assert!(share.try_take());
        }
        assert_eq!(share.reclaim(), Share::MAX as u64 - 3);
        assert_eq!((share.held(), share.taken()), (3, 3));
    }
}

/// The share as loom sees it: each model races two of its steps and checks that no more slots are taken than
/// permits held, and that every permit comes back exactly once.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn loom_a_reclaim_racing_takes_never_hands_out_a_permit_twice() {
        loom::model(|| {
            let share = Arc::new(Share::new());
            share.add(2);
            let owner = {
                let share = share.clone();
                thread::spawn(move || {
                    let first = share.try_take();
                    let second = share.try_take();
                    u64::from(first) + u64::from(second)
                })
            };
            let reclaimed = share.reclaim();
            let taken = owner.join().expect("owner");
            // What the owner took and what the other handle took come from the same two permits.
            assert!(
                taken + reclaimed <= 2,
                "{taken} taken, {reclaimed} reclaimed"
            );
            assert_eq!(share.held() + reclaimed, 2);
            assert_eq!(share.taken(), taken);
            assert!(share.taken() <= share.held());
        });
    }

    #[test]
    fn loom_an_orphaning_racing_answers_returns_each_permit_once() {
        loom::model(|| {
            let share = Arc::new(Share::new());
            share.add(3);
            assert!(share.try_take() && share.try_take());
            let answers: Vec<_> = (0..2)
                .map(|_| {
                    let share = share.clone();
                    thread::spawn(move || u64::from(share.give_back()))
                })
                .collect();
            let now = share.orphan();
            let later: u64 = answers.into_iter().map(|a| a.join().expect("answer")).sum();
            assert_eq!(now + later, 3, "{now} at once, {later} as answered");
        });
    }

    #[test]
    fn loom_a_reclaim_racing_an_orphaning_returns_each_permit_once() {
        loom::model(|| {
            let share = Arc::new(Share::new());
            share.add(3);
            assert!(share.try_take());
            let waiter = {
                let share = share.clone();
                thread::spawn(move || share.reclaim())
            };
            let now = share.orphan();
            let reclaimed = waiter.join().expect("waiter");
            let answered = u64::from(share.give_back());
            assert_eq!(reclaimed + now + answered, 3);
        });
    }

    #[test]
    fn loom_an_answer_racing_a_take_and_a_reclaim_keeps_the_bound() {
        loom::model(|| {
            let share = Arc::new(Share::new());
            share.add(1);
            assert!(share.try_take());
            let answer = {
                let share = share.clone();
                thread::spawn(move || assert!(!share.give_back()))
            };
            let waiter = {
                let share = share.clone();
                thread::spawn(move || share.reclaim())
            };
            let took = share.try_take();
            answer.join().expect("answer");
            let reclaimed = waiter.join().expect("waiter");
            // One permit: taken again by the owner, or reclaimed by the waiter, never both.
            assert!(u64::from(took) + reclaimed <= 1);
            assert!(share.taken() <= share.held());
        });
    }
}

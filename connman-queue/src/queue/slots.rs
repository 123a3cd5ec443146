//! The queue's capacity: a counter of free slots that a handle takes with one atomic operation when one is free, and
//! a first-come, first-served line of handles waiting when none is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// One answered request, in the high half of [`Slots::state`] when the slots count answers.
const ANSWER: u64 = 1 << 32;

/// The largest capacity for which the slots can count answers too.
const MAX_COUNTED: usize = (1 << 31) - 1;

/// Free slots and the handles waiting for one.
///
/// A released slot goes to the first waiting handle if there is one (it is granted to it, and the handle takes it
/// at its next poll), so a handle that waits is never overtaken by one that came later, and a slot is never left
/// free while a handle waits for it.
#[derive(Debug)]
pub(crate) struct Slots {
    /// The number of free slots in the bits below `closed`, the `closed` bit, and, when the slots count answers,
    /// the number of answered requests (wrapping) in the high 32 bits: a released slot and its answer are one atomic
    /// addition.
    state: AtomicU64,
    /// The bit set once closed: bit 31 when counting answers, else bit 63.
    closed: u64,
    counts_answers: bool,
    /// Whether `line` may hold a handle; lets [`Slots::release`] skip the lock when nobody waits.
    contended: AtomicBool,
    line: Mutex<Line>,
}

/// The result of [`Slots::poll_take`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The handle holds a slot now.
    Slot,
    /// The queue is closed.
    Closed,
}

#[derive(Debug, Default)]
struct Line {
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    waker: Option<Waker>,
    /// A released slot was handed to this waiter; it is its own once it polls.
    granted: bool,
}

impl Slots {
    /// `capacity` free slots; with `count_answers` (for a capacity up to [`MAX_COUNTED`]), a count of answered
    /// requests too.
    pub(crate) fn new(capacity: usize, count_answers: bool) -> Self {
        let counts_answers = count_answers && capacity <= MAX_COUNTED;
        Self {
            // A capacity is at most tokio's `Semaphore::MAX_PERMITS` (`usize::MAX >> 3`), below bit 63.
            state: AtomicU64::new(capacity as u64),
            closed: if counts_answers { 1 << 31 } else { 1 << 63 },
            counts_answers,
            contended: AtomicBool::new(false),
            line: Mutex::new(Line::default()),
        }
    }

    /// Takes a free slot without waiting: `None` if there is none (or a handle waits for one already).
    pub(crate) fn try_take(&self) -> Option<Taken> {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & self.closed != 0 {
                return Some(Taken::Closed);
            }
            if state & (self.closed - 1) == 0 {
                return None;
            }
            match self.state.compare_exchange_weak(
                state,
                state - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Taken::Slot),
                Err(now) => state = now,
            }
        }
    }

    /// Takes a slot, or joins (or stays in) the line of waiting handles. `ticket` is the handle's place in the line,
    /// kept between polls.
    pub(crate) fn poll_take(&self, ticket: &mut Option<u64>, cx: &mut Context<'_>) -> Poll<Taken> {
        let mut line = self.lock();
        if self.is_closed() {
            if let Some(id) = ticket.take() {
                line.remove(id);
                self.settle(&line);
            }
            return Poll::Ready(Taken::Closed);
        }
        if let Some(id) = *ticket {
            if let Some(pos) = line.position(id) {
                if line.waiters[pos].granted {
                    line.waiters.remove(pos);
                    *ticket = None;
                    self.settle(&line);
                    return Poll::Ready(Taken::Slot);
                }
                line.waiters[pos].waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // Only this handle takes itself out of the line while the queue is open, so this does not happen; if it
            // did, joining again is right.
            *ticket = None;
        }
        if line.waiters.is_empty() && self.try_take() == Some(Taken::Slot) {
            return Poll::Ready(Taken::Slot);
        }
        let id = line.next_id;
        line.next_id += 1;
        line.waiters.push_back(Waiter {
            id,
            waker: Some(cx.waker().clone()),
            granted: false,
        });
        *ticket = Some(id);
        // Published before looking at the free count again, as `release` adds to it before looking at this: one of the
        // two sees the other, so a slot released just now is not left free while this handle waits.
        self.contended.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.grant_free(&mut line);
        if let Some(pos) = line.position(id)
            && line.waiters[pos].granted
        {
            line.waiters.remove(pos);
            *ticket = None;
            self.settle(&line);
            return Poll::Ready(Taken::Slot);
        }
        Poll::Pending
    }

    /// Leaves the line (a handle dropped while waiting); a slot granted to it goes to the next.
    pub(crate) fn leave(&self, id: u64) {
        let mut line = self.lock();
        if let Some(pos) = line.position(id)
            && let Some(waiter) = line.waiters.remove(pos)
        {
            if waiter.granted {
                self.give(&mut line, false);
            }
            self.settle(&line);
        }
    }

    /// Gives a slot back: to the first waiting handle, or to the free count. `answered`: the slot held a request
    /// that is answered now (counted when the slots count answers).
    pub(crate) fn release(&self, answered: bool) {
        if !self.contended.load(Ordering::SeqCst) {
            self.state
                .fetch_add(1 + self.answer(answered), Ordering::SeqCst);
            if !self.contended.load(Ordering::SeqCst) {
                return;
            }
            // A handle joined the line meanwhile and may have looked at the free count before this slot was added.
            let mut line = self.lock();
            self.grant_free(&mut line);
            return;
        }
        let mut line = self.lock();
        self.give(&mut line, answered);
    }

    /// The number of answered requests, wrapping; zero unless the slots count answers.
    pub(crate) fn answered(&self) -> u32 {
        if self.counts_answers {
            // The high half of the state is the answer count.
            (self.state.load(Ordering::Acquire) >> 32) as u32
        } else {
            0
        }
    }

    /// Whether the slots count answers.
    pub(crate) fn counts_answers(&self) -> bool {
        self.counts_answers
    }

    /// Closes: no slot is taken any more, and every waiting handle is woken to see it.
    pub(crate) fn close(&self) {
        self.state.fetch_or(self.closed, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut line = self.lock();
            line.waiters
                .iter_mut()
                .filter_map(|w| w.waker.take())
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & self.closed != 0
    }

    /// What to add to the state for an answer.
    fn answer(&self, answered: bool) -> u64 {
        if answered && self.counts_answers {
            ANSWER
        } else {
            0
        }
    }

    /// Hands one released slot to the first waiter that has none, or adds it to the free count.
    fn give(&self, line: &mut Line, answered: bool) {
        if let Some(waiter) = line.waiters.iter_mut().find(|w| !w.granted) {
            waiter.granted = true;
            if let Some(waker) = waiter.waker.take() {
                waker.wake();
            }
            if answered && self.counts_answers {
                self.state.fetch_add(ANSWER, Ordering::SeqCst);
            }
        } else {
            self.state
                .fetch_add(1 + self.answer(answered), Ordering::SeqCst);
        }
    }

    /// Moves free slots to waiters that have none.
    fn grant_free(&self, line: &mut Line) {
        for waiter in line.waiters.iter_mut().filter(|w| !w.granted) {
            if self.try_take() != Some(Taken::Slot) {
                break;
            }
            waiter.granted = true;
            if let Some(waker) = waiter.waker.take() {
                waker.wake();
            }
        }
    }

    /// Clears `contended` once nobody waits.
    fn settle(&self, line: &Line) {
        if line.waiters.is_empty() {
            self.contended.store(false, Ordering::SeqCst);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // Nothing panics while the line is locked; a poisoned line is still consistent.
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Line {
    fn position(&self, id: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == id)
    }

    fn remove(&mut self, id: u64) {
        if let Some(pos) = self.position(id) {
            self.waiters.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::task;

    fn poll(slots: &Slots, ticket: &mut Option<u64>, t: &mut task::Spawn<()>) -> Poll<Taken> {
        t.enter(|cx, _| slots.poll_take(ticket, cx))
    }

    #[test]
    fn a_released_slot_goes_to_the_first_waiter_not_to_a_newcomer() {
        let slots = Slots::new(1, false);
        assert_eq!(slots.try_take(), Some(Taken::Slot));
        let (mut first, mut second) = (None, None);
        let (mut t1, mut t2) = (task::spawn(()), task::spawn(()));
        assert!(poll(&slots, &mut first, &mut t1).is_pending());
        assert!(poll(&slots, &mut second, &mut t2).is_pending());
        slots.release(false);
        assert!(t1.is_woken());
        assert!(!t2.is_woken());
        // The slot is granted to the first waiter: a newcomer finds none.
        assert_eq!(slots.try_take(), None);
        assert_eq!(poll(&slots, &mut first, &mut t1), Poll::Ready(Taken::Slot));
        assert!(poll(&slots, &mut second, &mut t2).is_pending());
        slots.release(false);
        assert_eq!(poll(&slots, &mut second, &mut t2), Poll::Ready(Taken::Slot));
        // Nobody waits now: a release goes back to the free count.
        slots.release(false);
        assert_eq!(slots.try_take(), Some(Taken::Slot));
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_granted_slot_on() {
        let slots = Slots::new(1, false);
        assert_eq!(slots.try_take(), Some(Taken::Slot));
        let (mut first, mut second) = (None, None);
        let (mut t1, mut t2) = (task::spawn(()), task::spawn(()));
        assert!(poll(&slots, &mut first, &mut t1).is_pending());
        assert!(poll(&slots, &mut second, &mut t2).is_pending());
        slots.release(false);
        slots.leave(first.expect("in line"));
        assert!(t2.is_woken());
        assert_eq!(poll(&slots, &mut second, &mut t2), Poll::Ready(Taken::Slot));
    }

    #[test]
    fn close_wakes_every_waiter_and_refuses_slots() {
        let slots = Slots::new(1, false);
        assert_eq!(slots.try_take(), Some(Taken::Slot));
        let mut ticket = None;
        let mut t = task::spawn(());
        assert!(poll(&slots, &mut ticket, &mut t).is_pending());
        slots.close();
        assert!(t.is_woken());
        assert_eq!(
            poll(&slots, &mut ticket, &mut t),
            Poll::Ready(Taken::Closed)
        );
        slots.release(false);
        assert_eq!(slots.try_take(), Some(Taken::Closed));
    }
}

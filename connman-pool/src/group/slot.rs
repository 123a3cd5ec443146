//! The group's side of one member: its bounded outbound queue, its phase and its counters.
//!
//! A slot is shared by the group (which pushes messages and asks for closes) and the member's writer task (which takes
//! batches and drives the member). The queue, the phase and the last-activity instant sit under one short-held mutex;
//! the writer is woken through a [`Notify`] only when the queue goes from empty to non-empty or the phase changes.

use connman_core::rt::tokio::later;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::member::CloseCode;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{GroupConfig, MemberStats, Remote, SlowConsumer};

/// What happened to a message offered to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// It is in the queue.
    Queued,
    /// The queue was full: this message was dropped, or the member started closing as the policy says.
    Dropped,
    /// The member is closing or gone: the message was not taken.
    NotOpen,
}

/// Where a member is in its life.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Takes messages.
    Open,
    /// Takes no more messages; the writer flushes what is queued, then closes with this code, all before `deadline`.
    Closing {
        code: CloseCode,
        reason: String,
        deadline: Instant,
    },
    /// Taken out of the group: the writer stops at once and drops the member without a close.
    Detached,
}

pub(crate) struct Slot {
    pub(crate) remote: Remote,
    /// Join order across the whole group: drain closes the oldest first.
    pub(crate) seq: u64,
    state: Mutex<SlotState>,
    pub(crate) wake: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    /// Cancelled once the member has left the group and its writer has stopped.
    pub(crate) done: CancellationToken,
}

struct SlotState {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    phase: Phase,
    last_activity: Instant,
}

/// What the writer should do next.
pub(crate) enum Step {
    /// Feed the batch that was moved into the writer's buffer.
    Feed,
    /// Nothing queued; flush if anything was fed since the last flush, else close or wait.
    Idle {
        phase: Phase,
        last_activity: Instant,
    },
}

impl Slot {
    pub(crate) fn new(remote: Remote, seq: u64, now: Instant) -> Self {
        Self {
            remote,
            seq,
            state: Mutex::new(SlotState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                phase: Phase::Open,
                last_activity: now,
            }),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            done: CancellationToken::new(),
        }
    }

    /// Offers `msg` to the queue, applying the slow-consumer policy when it is full.
    pub(crate) fn push(&self, msg: Bytes, now: Instant, config: &GroupConfig) -> Push {
        let mut st = self.lock();
        let (push, wake) = self.push_locked(&mut st, msg, now, config);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        push
    }

    /// Offers every message of `msgs` in order under one lock, with at most one wake of the writer; `each` hears
    /// what happened to each.
    pub(crate) fn push_many(
        &self,
        msgs: &[Bytes],
        now: Instant,
        config: &GroupConfig,
        mut each: impl FnMut(Push),
    ) {
        let mut st = self.lock();
        let mut wake = false;
        for msg in msgs {
            let (push, woke) = self.push_locked(&mut st, msg.clone(), now, config);
            wake |= woke;
            each(push);
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The push itself; says whether the writer must be woken.
    fn push_locked(
        &self,
        st: &mut SlotState,
        msg: Bytes,
        now: Instant,
        config: &GroupConfig,
    ) -> (Push, bool) {
        if !matches!(st.phase, Phase::Open) {
            return (Push::NotOpen, false);
        }
        st.last_activity = now;
        let fits = |st: &SlotState, len: usize| {
            st.queue.len() < config.max_queued_messages()
                && st.queued_bytes.saturating_add(len) <= config.max_queued_bytes()
        };
        let len = msg.len();
        if !fits(st, len) {
            match config.slow_consumer() {
                SlowConsumer::DropNewest => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return (Push::Dropped, false);
                }
                SlowConsumer::DropOldest => {
                    if len > config.max_queued_bytes() {
                        // It could never fit, however much is dropped.
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        return (Push::Dropped, false);
                    }
                    while !fits(st, len) {
                        match st.queue.pop_front() {
                            Some(old) => {
                                st.queued_bytes -= old.len();
                                self.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            None => break,
                        }
                    }
                }
                SlowConsumer::Close(code) => {
                    let discarded = st.queue.len() as u64 + 1;
                    st.queue.clear();
                    st.queued_bytes = 0;
                    self.dropped.fetch_add(discarded, Ordering::Relaxed);
                    st.phase = Phase::Closing {
                        code,
                        reason: "slow consumer".to_owned(),
                        deadline: later(now, config.close_timeout()),
                    };
                    return (Push::Dropped, true);
                }
            }
        }
        let was_empty = st.queue.is_empty();
        st.queued_bytes += len;
        st.queue.push_back(msg);
        (Push::Queued, was_empty)
    }

    /// Starts a close unless one is under way or the member is gone; returns whether this call started it.
    pub(crate) fn begin_close(
        &self,
        code: CloseCode,
        reason: &str,
        now: Instant,
        timeout: Duration,
    ) -> bool {
        let mut st = self.lock();
        if !matches!(st.phase, Phase::Open) {
            return false;
        }
        st.phase = Phase::Closing {
            code,
            reason: reason.to_owned(),
            deadline: later(now, timeout),
        };
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Takes the member out of service: the writer stops without closing it. Returns the messages still queued.
    pub(crate) fn detach(&self) -> usize {
        let mut st = self.lock();
        st.phase = Phase::Detached;
        let left = st.queue.len();
        st.queue.clear();
        st.queued_bytes = 0;
        drop(st);
        self.dropped.fetch_add(left as u64, Ordering::Relaxed);
        self.wake.notify_one();
        left
    }

    /// Records traffic from the peer: the idle timer starts again.
    pub(crate) fn touch(&self, now: Instant) {
        let mut st = self.lock();
        if now > st.last_activity {
            st.last_activity = now;
        }
    }

    /// How long since the last traffic in either direction.
    pub(crate) fn idle_since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.lock().last_activity)
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.lock().phase, Phase::Open)
    }

    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase.clone()
    }

    pub(crate) fn stats(&self) -> MemberStats {
        let queued = self.lock().queue.len() as u64;
        MemberStats {
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued,
        }
    }

    /// Moves everything queued into `batch` (which must be empty) or says why there is nothing.
    pub(crate) fn take(&self, batch: &mut VecDeque<Bytes>) -> Step {
        let mut st = self.lock();
        if !st.queue.is_empty() && !matches!(st.phase, Phase::Detached) {
            std::mem::swap(&mut st.queue, batch);
            st.queued_bytes = 0;
            return Step::Feed;
        }
        Step::Idle {
            phase: st.phase.clone(),
            last_activity: st.last_activity,
        }
    }

    pub(crate) fn count_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // No code panics while holding this lock, and its state stays consistent at every step anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("remote", &self.remote)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

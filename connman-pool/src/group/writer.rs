//! The writer task of one member: feeds queued messages until the queue is empty, then flushes once.
//!
//! One task per member keeps a slow member from holding up anyone else, and coalesces writes: a burst of broadcasts
//! becomes one batch of `start_send`s and a single flush. The same task performs the member's close (flush first,
//! then the close, all bounded by the close timeout) and its idle timeout, then takes the member out of the group.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::Poll;

use bytes::Bytes;
use connman_core::error::BoxError;
use connman_core::member::{CloseCode, Member};
use futures_util::SinkExt;
use tokio::time::{Instant, Sleep, sleep_until};

use connman_core::rt::tokio::later;

use super::slot::{Phase, Slot, Step};
use super::{Departure, Inner};

/// Drives `member` for `slot` until it is closed, fails or is detached.
pub(crate) async fn run<M>(member: M, slot: Arc<Slot>, group: Weak<Inner>)
where
    M: Member,
    M::Error: Into<BoxError>,
{
    // Whatever ends this task (its end, a panic in the member, the runtime shutting down), the member leaves the
    // group and its waiters hear it.
    let mut exit = Exit {
        slot: slot.clone(),
        group,
        departure: Departure::Failed,
    };
    let idle_timeout = exit.group.upgrade().and_then(|g| g.config.idle_timeout());
    let mut member = pin!(member);
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    let mut dirty = false;
    // One idle timer for the member's life. It is moved earlier when needed, never later: activity only pushes the
    // deadline back, so a timer that fires early is re-armed from the latest activity. Without this, every wake of
    // the writer (every burst of a broadcast) would register and cancel a timer.
    let mut idle_timer = pin!(sleep_until(
        idle_timeout.map_or_else(Instant::now, |t| later(Instant::now(), t))
    ));
    exit.departure = loop {
        match slot.take(&mut batch) {
            Step::Feed => {
                let fed = guarded(&slot, async {
                    while let Some(msg) = batch.pop_front() {
                        member.feed(msg).await.map_err(Into::into)?;
                        slot.count_sent(1);
                    }
                    Ok::<(), BoxError>(())
                })
                .await;
                dirty = true;
                let left = batch.len() as u64;
                batch.clear();
                slot.count_dropped(left);
                match fed {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::debug!(remote = ?slot.remote, error = %e, "member failed while sending");
                        break Departure::Failed;
                    }
                    None => break stopped(&slot),
                }
            }
            Step::Idle { .. } if dirty => {
                dirty = false;
                match guarded(&slot, member.flush()).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::debug!(remote = ?slot.remote, error = %e.into(), "member failed to flush");
                        break Departure::Failed;
                    }
                    None => break stopped(&slot),
                }
            }
            Step::Idle {
                phase: Phase::Detached,
                ..
            } => break Departure::Removed,
            Step::Idle {
                phase: Phase::Closing { code, reason, .. },
                ..
            } => break close(&slot, member.as_mut(), code, &reason).await,
            Step::Idle {
                phase: Phase::Open,
                last_activity,
            } => {
                let idle_at = idle_timeout.map(|t| later(last_activity, t));
                if let Some(at) = idle_at
                    && idle_timer.deadline() > at
                {
                    idle_timer.as_mut().reset(at);
                }
                tokio::select! {
                    () = slot.wake.notified() => {}
                    // The peer went away: the member leaves at once, and dropping it releases its socket.
                    () = poll_fn(|cx| member.as_mut().poll_ended(cx)) => break Departure::Ended,
                    () = &mut idle_timer, if idle_at.is_some() => {
                        // Inbound frames the owner never saw (pongs) count as activity too.
                        if let Some(heard) = member.as_ref().get_ref().last_heard() {
                            slot.touch(Instant::from_std(heard));
                        }
                        idle_expired(&slot, &exit.group, idle_timeout);
                        if let Some(timeout) = idle_timeout {
                            let now = Instant::now();
                            let left = timeout.saturating_sub(slot.idle_since(now));
                            idle_timer.as_mut().reset(later(now, left));
                        }
                    }
                }
            }
        }
    };
}

/// Takes the member out of the group when its writer ends.
struct Exit {
    slot: Arc<Slot>,
    group: Weak<Inner>,
    departure: Departure,
}

impl Drop for Exit {
    fn drop(&mut self) {
        let left = self.slot.detach();
        if left > 0 {
            tracing::debug!(remote = ?self.slot.remote, left, "messages dropped with the member");
        }
        if let Some(group) = self.group.upgrade() {
            group.depart(&self.slot, self.departure);
        }
        self.slot.done.cancel();
    }
}

/// Flushes nothing more: sends the close and waits for it, within the close deadline.
async fn close<M>(
    slot: &Slot,
    mut member: std::pin::Pin<&mut M>,
    code: CloseCode,
    reason: &str,
) -> Departure
where
    M: Member,
    M::Error: Into<BoxError>,
{
    if let Err(e) = member.as_mut().start_close(code, reason) {
        tracing::debug!(remote = ?slot.remote, error = %e.into(), "member failed to start its close");
        return Departure::Failed;
    }
    match guarded(slot, poll_fn(|cx| member.as_mut().poll_close(cx))).await {
        Some(Ok(())) => Departure::Closed(code),
        Some(Err(e)) => {
            tracing::debug!(remote = ?slot.remote, error = %e.into(), "member failed to close");
            Departure::Failed
        }
        None => stopped(slot),
    }
}

/// Why a guarded operation was cut short.
fn stopped(slot: &Slot) -> Departure {
    match slot.phase() {
        Phase::Detached => Departure::Removed,
        _ => Departure::CloseTimedOut,
    }
}

/// Starts the idle close if nothing happened since the timer was armed.
fn idle_expired(slot: &Slot, group: &Weak<Inner>, idle_timeout: Option<std::time::Duration>) {
    let (Some(timeout), Some(group)) = (idle_timeout, group.upgrade()) else {
        return;
    };
    let now = Instant::now();
    if let Phase::Open = slot.phase()
        && slot.idle_since(now) >= timeout
    {
        slot.begin_close(
            CloseCode::IDLE_TIMEOUT,
            "idle timeout",
            now,
            group.config.close_timeout(),
        );
    }
}

/// Runs `fut` until it completes, the member is detached, or its close deadline passes (`None` for the last two).
async fn guarded<F: Future>(slot: &Slot, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    // Most operations finish at once (a close with nothing queued, a feed into a ready sink): they need no timer and
    // no look at the phase.
    if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(out);
    }
    // The close deadline's timer, boxed: it is rarely needed, and a timer held inline would sit in the writer's
    // future (and so in the memory of every member) for the member's whole life.
    let mut bound: Option<Pin<Box<Sleep>>> = None;
    loop {
        match slot.phase() {
            Phase::Open => bound = None,
            Phase::Closing { deadline, .. } => match &mut bound {
                Some(sleep) if sleep.deadline() == deadline => {}
                _ => bound = Some(Box::pin(sleep_until(deadline))),
            },
            Phase::Detached => return None,
        }
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            // A new message or a phase change: look at the phase again.
            () = slot.wake.notified() => {}
            () = async { if let Some(sleep) = &mut bound { sleep.as_mut().await } }, if bound.is_some() => return None,
        }
    }
}

//! The response future of [`Queue`](super::Queue).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use connman_core::error::{BoxError, Closed, Elapsed, MaybeDelivered};
use connman_core::outcome::Outcome;
use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::local::HandleState;
use super::shared::{Dispatch, Place, Receiver};

/// The response of a request sent through a [`Queue`](super::Queue).
///
/// Dropping it while the request is queued takes the request out: it is never sent.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S: Service<Req>, Req> {
    /// The handle that made the request: its capacity and, through it, the queue.
    handle: Arc<HandleState<S, Req>>,
    #[pin]
    state: State<S::Future, Req>,
    /// The weight of the request, held with its capacity permit until it is answered (while `holds`).
    weight: usize,
    holds: bool,
    place: Place,
    idempotent: bool,
    replays: u32,
    /// The longest it may wait, from the first time it has to, in nanoseconds (saturated at 584 years).
    wait: u64,
    /// When the request stops waiting, and its timer: made the first time it has to wait (at the call if it is
    /// queued at once, at its first replay if it went straight out), so the fast path never reads the clock. Boxed:
    /// the future stays small, and a small future is moved without a call to `memcpy`.
    waiting: Option<Box<Waiting>>,
}

/// The deadline of a request that waits, and its timer once it is polled while queued.
struct Waiting {
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Waiting {
    fn until(deadline: Instant) -> Box<Self> {
        Box::new(Self {
            deadline,
            sleep: None,
        })
    }
}

/// The capacity permit and weight a request holds until it is answered.
#[derive(Debug)]
pub(crate) struct Ticket {
    weight: usize,
}

impl Ticket {
    pub(crate) fn new(weight: usize) -> Self {
        Self { weight }
    }
}

#[pin_project(project = StateProj)]
enum State<F, Req> {
    Failed(Option<BoxError>),
    InFlight {
        #[pin]
        fut: F,
        req: Option<Req>,
    },
    Queued(Receiver<F, Req>),
    Done,
}

/// What an inner error says about the request.
enum Verdict {
    NotSent,
    MaybeDelivered,
    Other,
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    pub(crate) fn failed(handle: Arc<HandleState<S, Req>>, error: BoxError) -> Self {
        Self::with_state(
            handle,
            None,
            false,
            (None, Duration::ZERO),
            Place { epoch: 0, seq: 0 },
            State::Failed(Some(error)),
        )
    }

    #[allow(clippy::too_many_arguments)] // One constructor per way a request leaves the handle; each is called once.
    pub(crate) fn sent(
        handle: Arc<HandleState<S, Req>>,
        ticket: Ticket,
        idempotent: bool,
        wait: Duration,
        place: Place,
        fut: S::Future,
        req: Req,
    ) -> Self {
        let state = State::InFlight {
            fut,
            req: Some(req),
        };
        Self::with_state(handle, Some(ticket), idempotent, (None, wait), place, state)
    }

    pub(crate) fn queued(
        handle: Arc<HandleState<S, Req>>,
        ticket: Ticket,
        idempotent: bool,
        deadline: Instant,
        place: Place,
        rx: Receiver<S::Future, Req>,
    ) -> Self {
        Self::with_state(
            handle,
            Some(ticket),
            idempotent,
            (Some(deadline), Duration::ZERO),
            place,
            State::Queued(rx),
        )
    }

    fn with_state(
        handle: Arc<HandleState<S, Req>>,
        ticket: Option<Ticket>,
        idempotent: bool,
        (deadline, wait): (Option<Instant>, Duration),
        place: Place,
        state: State<S::Future, Req>,
    ) -> Self {
        Self {
            handle,
            state,
            weight: ticket.as_ref().map_or(0, |t| t.weight),
            holds: ticket.is_some(),
            place,
            idempotent,
            replays: 0,
            wait: u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
            waiting: deadline.map(Waiting::until),
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.as_mut().poll_state(cx));
        let mut this = self.project();
        this.state.set(State::Done);
        if std::mem::take(this.holds) {
            release(this.handle, *this.weight);
        }
        Poll::Ready(result)
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    fn poll_state(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Failed(error) => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| Closed::new().into())));
                }
                StateProj::Done => return Poll::Ready(Err(Closed::new().into())),
                StateProj::InFlight { fut, req } => {
                    let error: BoxError = match ready!(fut.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => e.into(),
                    };
                    let exhausted = *this.replays >= this.handle.shared.max_replays;
                    let replay = match verdict(&error) {
                        Verdict::NotSent if exhausted => return Poll::Ready(Err(error)),
                        Verdict::NotSent => true,
                        Verdict::MaybeDelivered if *this.idempotent && !exhausted => true,
                        Verdict::MaybeDelivered => {
                            this.handle
                                .shared
                                .counters
                                .maybe_delivered
                                .fetch_add(1, Ordering::Relaxed);
                            if error.is::<MaybeDelivered>() {
                                return Poll::Ready(Err(error));
                            }
                            return Poll::Ready(Err(MaybeDelivered::with_source(error).into()));
                        }
                        Verdict::Other => return Poll::Ready(Err(error)),
                    };
                    debug_assert!(replay);
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(error));
                    };
                    let now = Instant::now();
                    let wait = Duration::from_nanos(*this.wait);
                    let deadline = this
                        .waiting
                        .get_or_insert_with(|| Waiting::until(super::shared::deadline(now, wait)))
                        .deadline;
                    if now >= deadline {
                        this.handle
                            .shared
                            .counters
                            .expired
                            .fetch_add(1, Ordering::Relaxed);
                        return Poll::Ready(Err(Elapsed::new().into()));
                    }
                    let rx = match this.handle.shared.requeue(*this.place, deadline, req) {
                        Ok(rx) => rx,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    *this.replays += 1;
                    this.handle
                        .shared
                        .counters
                        .replayed
                        .fetch_add(1, Ordering::Relaxed);
                    this.state.set(State::Queued(rx));
                }
                StateProj::Queued(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Ready(Ok(Ok(Dispatch { fut, req }))) => {
                        this.state.set(State::InFlight {
                            fut,
                            req: Some(req),
                        });
                    }
                    Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Closed::new().into())),
                    Poll::Pending => {
                        let wait = Duration::from_nanos(*this.wait);
                        let waiting = this.waiting.get_or_insert_with(|| {
                            Waiting::until(super::shared::deadline(Instant::now(), wait))
                        });
                        let deadline = waiting.deadline;
                        let sleep = waiting
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        if this.handle.shared.remove(*this.place) {
                            this.handle
                                .shared
                                .counters
                                .expired
                                .fetch_add(1, Ordering::Relaxed);
                            return Poll::Ready(Err(Elapsed::new().into()));
                        }
                        // Sent (or failed) just before the deadline: the outcome is in the channel now.
                    }
                },
            }
        }
    }
}

#[pinned_drop]
impl<S: Service<Req>, Req> PinnedDrop for ResponseFuture<S, Req> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if std::mem::take(this.holds) {
            release(this.handle, *this.weight);
        }
        if matches!(*this.state, State::Queued(_)) && this.handle.shared.remove(*this.place) {
            this.handle
                .shared
                .counters
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed(_) => "failed",
            State::InFlight { .. } => "in flight",
            State::Queued(_) => "queued",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// The delivery verdict of the layer below, by the public classifier.
fn verdict(error: &BoxError) -> Verdict {
    match Outcome::of(error) {
        Outcome::MaybeDelivered => Verdict::MaybeDelivered,
        Outcome::NotSent => Verdict::NotSent,
        _ => Verdict::Other,
    }
}

/// Gives back what an answered (or dropped) request held.
fn release<S: Service<Req>, Req>(handle: &HandleState<S, Req>, weight: usize) {
    handle.answered();
    handle.shared.release_weight(weight);
}

//! The one async driver of a [`Lifecycle`]: the clock, the waits and the events, so that owners only connect.
//!
//! A [`Lifecycle`] is sans-IO: it takes instants and returns [`Action`]s. Every owner of a supervised link needs the
//! same glue around it: read the clock, turn [`Action::Wait`] into a sleep and call back when it fires, hand the
//! events to whoever listens. [`Driver`] is that glue, once, over any [`Timer`] (as hyper's `rt::Timer`).
//!
//! The owner keeps what the machine cannot: the connect future in flight and the established link. It feeds the
//! driver what happened ([`Driver::connected`], [`Driver::connect_failed`], [`Driver::link_lost`], [`Driver::close`])
//! and asks it what to do next with [`Driver::poll_next`] (or `driver.next().await`), which waits out any backoff and
//! answers with a [`Next`]: connect, drop what you hold, or closed for good. Events and state changes go to the
//! driver's [`Observer`] as they happen.
//!
//! The driver is a plain value, not a task: a `tower::Service` drives it from `poll_ready`, a supervisor task from a
//! `select!` beside its own signals. A supervisor that reconnects and re-attaches listeners looks like this:
//!
//! ```
//! use connman_core::backoff::Constant;
//! use connman_core::driver::{Driver, Next};
//! use connman_core::lifecycle::{Config, Event, FailureKind, Lifecycle};
//! use connman_core::rt::{Sleep, Timer};
//! # use std::future::Future;
//! # use std::pin::Pin;
//! # use std::sync::{Arc, Mutex};
//! # use std::task::{Context, Poll};
//! use std::time::{Duration, Instant};
//!
//! # /// A timer on a manual clock: a sleep is over once the clock has passed its deadline.
//! # #[derive(Clone)]
//! # struct Manual(Arc<Mutex<Instant>>);
//! # struct Until(Arc<Mutex<Instant>>, Instant);
//! # impl Future for Until {
//! #     type Output = ();
//! #     fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
//! #         let mut now = self.0.lock().unwrap();
//! #         // Sleeping advances the clock, as paused tokio time does.
//! #         *now = (*now).max(self.1);
//! #         Poll::Ready(())
//! #     }
//! # }
//! # impl Sleep for Until {}
//! # impl Timer for Manual {
//! #     fn now(&self) -> Instant { *self.0.lock().unwrap() }
//! #     fn sleep_until(&self, at: Instant) -> Pin<Box<dyn Sleep>> { Box::pin(Until(self.0.clone(), at)) }
//! # }
//! # let timer = Manual(Arc::new(Mutex::new(Instant::now())));
//! // A supervisor whose connects fail twice, then succeed; the link is lost once and comes back.
//! let mut outcomes = vec![Ok("conn 2"), Ok("conn 1"), Err("refused"), Err("refused")];
//! let config = Config::new().first_attempt_fatal(false);
//! let lifecycle = Lifecycle::with_config(Constant::new(Duration::from_millis(10)), config);
//! let mut seen = Vec::new();
//! let observer = |event: Event| seen.push(event.to_string());
//! let mut driver = Driver::new(lifecycle, timer, observer);
//!
//! # futures_executor_block_on(async {
//! driver.start();
//! let mut up = 0;
//! loop {
//!     match driver.next().await {
//!         Next::Connect { .. } => match outcomes.pop() {
//!             Some(Ok(_conn)) => {
//!                 driver.connected();
//!                 up += 1;
//!                 // Re-attach the listeners to `_conn` here. The first link is lost, the second is closed.
//!                 if up == 1 {
//!                     driver.link_lost(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
//!                 } else {
//!                     driver.close();
//!                 }
//!             }
//!             Some(Err(e)) => driver.connect_failed(std::io::Error::other(e), FailureKind::Retriable),
//!             None => unreachable!("the outcomes cover every attempt"),
//!         },
//!         Next::Closed { .. } => break,
//!         // `TearDown`, `CancelConnect`: drop the link or the connect in flight.
//!         _ => {}
//!     }
//! }
//! # });
//! drop(driver);
//! assert_eq!(seen.len(), 10);
//! assert_eq!(seen[5], "connected (attempt 3)");
//! assert_eq!(seen[9], "closed (Requested)");
//! # fn futures_executor_block_on<F: Future>(f: F) -> F::Output {
//! #     struct Noop;
//! #     impl std::task::Wake for Noop { fn wake(self: Arc<Self>) {} }
//! #     let waker = std::task::Waker::from(Arc::new(Noop));
//! #     let mut cx = Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::backoff::Backoff;
use crate::error::BoxError;
use crate::lifecycle::{Action, CloseReason, Event, FailureKind, Lifecycle, State};
use crate::rt::{Sleep, Timer};

/// What the owner of a [`Driver`] must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Next {
    /// Start connect attempt number `attempt`; report its end with [`Driver::connected`] or
    /// [`Driver::connect_failed`].
    Connect {
        /// The attempt number, from 1 since the last good connection.
        attempt: u32,
    },
    /// Abandon the connect in flight (dropping its future aborts it).
    CancelConnect,
    /// Tear the established (or late) link down.
    TearDown,
    /// Closed for good; every later poll answers the same.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Told of every [`Event`] and every change of [`State`] as the driver makes them.
///
/// Implemented for `()` (ignore everything) and for every `FnMut(Event)`.
pub trait Observer {
    /// An event happened. Events come in the machine's order, and none is dropped on the way here.
    fn on_event(&mut self, event: Event);

    /// The state changed (called after the events that led to it).
    fn on_state(&mut self, state: State) {
        let _ = state;
    }
}

impl Observer for () {
    fn on_event(&mut self, _: Event) {}
}

impl<F: FnMut(Event)> Observer for F {
    fn on_event(&mut self, event: Event) {
        self(event)
    }
}

/// Drives a [`Lifecycle`] over a [`Timer`] and tells an [`Observer`]. See the [module docs](self).
pub struct Driver<B, T, O = ()> {
    lifecycle: Lifecycle<B>,
    timer: T,
    observer: O,
    /// The wait the machine asked for, if any.
    sleep: Option<Pin<Box<dyn Sleep>>>,
    /// An action for the owner not yet handed out by `poll_next`.
    pending: Option<Next>,
    /// The task parked in `poll_next`, woken by any input.
    waker: Option<Waker>,
    last_state: State,
}

impl<B: Backoff, T: Timer, O: Observer> Driver<B, T, O> {
    /// A driver of `lifecycle` (usually in [`State::Idle`]) on `timer`, telling `observer`.
    pub fn new(lifecycle: Lifecycle<B>, timer: T, observer: O) -> Self {
        let last_state = lifecycle.state();
        Self {
            lifecycle,
            timer,
            observer,
            sleep: None,
            pending: None,
            waker: None,
            last_state,
        }
    }

    /// Starts the first attempt; does nothing unless the machine is idle.
    pub fn start(&mut self) {
        let action = self.lifecycle.start(self.timer.now());
        self.apply(action);
    }

    /// The connect in flight succeeded.
    pub fn connected(&mut self) {
        let action = self.lifecycle.connected(self.timer.now());
        self.apply(action);
    }

    /// The connect in flight failed; `kind` says whether to retry (a [`Config`](crate::lifecycle::Config) with
    /// `first_attempt_fatal` may close anyway). The error reaches the observer in [`Event::ConnectFailed`].
    pub fn connect_failed(&mut self, error: impl Into<BoxError>, kind: FailureKind) {
        let action = self.lifecycle.connect_failed(self.timer.now(), error, kind);
        self.apply(action);
    }

    /// The established link was lost.
    pub fn link_lost(&mut self, reason: impl Into<BoxError>) {
        let action = self.lifecycle.link_lost(self.timer.now(), reason);
        self.apply(action);
    }

    /// Closes for good, from any state. Idempotent.
    pub fn close(&mut self) {
        let action = self.lifecycle.close(self.timer.now());
        self.apply(action);
    }

    /// What to do next: waits out a backoff (firing the machine's timer when it is over) and is ready with the next
    /// [`Next`]. Pending while the owner has the move (a connect in flight, a link up, not started).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            if let Some(next) = self.pending.take() {
                return Poll::Ready(next);
            }
            if let Some(reason) = self.lifecycle.close_reason() {
                return Poll::Ready(Next::Closed { reason });
            }
            let Some(sleep) = self.sleep.as_mut() else {
                self.park(cx);
                return Poll::Pending;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                self.park(cx);
                return Poll::Pending;
            }
            self.sleep = None;
            let action = self.lifecycle.timer_fired(self.timer.now());
            self.apply(action);
        }
    }

    /// [`Driver::poll_next`] as a future.
    pub async fn next(&mut self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lifecycle.state()
    }

    /// The machine (its state, last error, close reason, counters).
    pub fn lifecycle(&self) -> &Lifecycle<B> {
        &self.lifecycle
    }

    /// The timer.
    pub fn timer(&self) -> &T {
        &self.timer
    }

    /// The current instant on the timer's clock.
    pub fn now(&self) -> Instant {
        self.timer.now()
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The observer, mutably.
    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    /// Carries out what the machine returned, then tells the observer.
    fn apply(&mut self, action: Option<Action>) {
        match action {
            None => {}
            Some(Action::Wait { until }) => self.sleep = Some(self.timer.sleep_until(until)),
            Some(Action::CancelTimer) => self.sleep = None,
            Some(Action::Connect { attempt }) => self.pending = Some(Next::Connect { attempt }),
            Some(Action::CancelConnect) => self.pending = Some(Next::CancelConnect),
            Some(Action::TearDown) => self.pending = Some(Next::TearDown),
        }
        let state = self.lifecycle.state();
        if state.is_closed() {
            self.sleep = None;
        }
        if matches!(self.pending, Some(Next::Connect { .. }))
            && !matches!(state, State::Connecting { .. })
        {
            // The owner never took the connect, and the machine has moved on: it is void.
            self.pending = None;
        }
        while let Some(event) = self.lifecycle.poll_event() {
            self.observer.on_event(event);
        }
        let state = self.lifecycle.state();
        if state != self.last_state {
            self.last_state = state;
            self.observer.on_state(state);
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn park(&mut self, cx: &mut Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

impl<B, T: fmt::Debug, O> fmt::Debug for Driver<B, T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("lifecycle", &self.lifecycle)
            .field("timer", &self.timer)
            .field("waiting", &self.sleep.is_some())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Constant;
    use crate::error::LinkLost;
    use crate::lifecycle::Config;
    use std::sync::{Arc, Mutex};
    use std::task::Wake;
    use std::time::Duration;

    /// A clock moved by hand; a sleep is over once the clock has reached its deadline.
    #[derive(Debug, Clone)]
    struct Manual(Arc<Mutex<Instant>>);

    struct Until(Arc<Mutex<Instant>>, Instant);

    impl std::future::Future for Until {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if *self.0.lock().unwrap() >= self.1 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Sleep for Until {}

    impl Timer for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
        fn sleep_until(&self, at: Instant) -> Pin<Box<dyn Sleep>> {
            Box::pin(Until(self.0.clone(), at))
        }
    }

    impl Manual {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    #[derive(Default)]
    struct Counted(std::sync::atomic::AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    struct Record(Seen);

    impl Observer for Record {
        fn on_event(&mut self, event: Event) {
            self.0.lock().unwrap().push(event.to_string());
        }
        fn on_state(&mut self, state: State) {
            self.0.lock().unwrap().push(format!("{state:?}"));
        }
    }

    fn driver(config: Config) -> (Driver<Constant, Manual, Record>, Manual, Seen) {
        let timer = Manual(Arc::new(Mutex::new(Instant::now())));
        let seen = Seen::default();
        let lc = Lifecycle::with_config(Constant::new(Duration::from_secs(1)), config);
        (
            Driver::new(lc, timer.clone(), Record(seen.clone())),
            timer,
            seen,
        )
    }

    fn refused() -> std::io::Error {
        std::io::ErrorKind::ConnectionRefused.into()
    }

    #[test]
    fn waits_out_the_backoff_then_asks_to_connect() {
        let (mut d, timer, _) = driver(Config::new());
        let wakes = Arc::new(Counted::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(d.poll_next(&mut cx), Poll::Pending, "not started");
        d.start();
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Connect { attempt: 1 })
        );
        assert_eq!(d.poll_next(&mut cx), Poll::Pending, "the owner connects");
        d.connect_failed(refused(), FailureKind::Retriable);
        timer.advance(Duration::from_millis(999));
        assert_eq!(d.poll_next(&mut cx), Poll::Pending);
        timer.advance(Duration::from_millis(1));
        assert_eq!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Connect { attempt: 2 })
        );
    }

    #[test]
    fn close_while_waiting_drops_the_wait_and_answers_closed_for_good() {
        let (mut d, timer, seen) = driver(Config::new());
        let waker = Waker::from(Arc::new(Counted::default()));
        let mut cx = Context::from_waker(&waker);
        d.start();
        d.connect_failed(refused(), FailureKind::Retriable);
        d.close();
        timer.advance(Duration::from_secs(5));
        // The connect asked for before the failure was never taken; it is void now.
        for _ in 0..2 {
            assert_eq!(
                d.poll_next(&mut cx),
                Poll::Ready(Next::Closed {
                    reason: CloseReason::Requested
                })
            );
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.last().map(String::as_str), Some("Closed"));
        assert_eq!(seen.iter().filter(|s| s.starts_with("closed")).count(), 1);
    }

    #[test]
    fn a_connection_after_close_is_torn_down() {
        let (mut d, _, _) = driver(Config::new());
        let waker = Waker::from(Arc::new(Counted::default()));
        let mut cx = Context::from_waker(&waker);
        d.start();
        assert_eq!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Connect { attempt: 1 })
        );
        d.close();
        assert_eq!(d.poll_next(&mut cx), Poll::Ready(Next::CancelConnect));
        d.connected();
        assert_eq!(d.poll_next(&mut cx), Poll::Ready(Next::TearDown));
        assert!(matches!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Closed { .. })
        ));
    }

    #[test]
    fn first_attempt_fatal_reports_the_real_error_to_the_observer() {
        let (mut d, _, seen) = driver(Config::new().first_attempt_fatal(true));
        let waker = Waker::from(Arc::new(Counted::default()));
        let mut cx = Context::from_waker(&waker);
        d.start();
        let _ = d.poll_next(&mut cx);
        d.connect_failed(refused(), FailureKind::Retriable);
        assert_eq!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Closed {
                reason: CloseReason::Fatal
            })
        );
        assert!(
            d.lifecycle()
                .last_error()
                .is_some_and(|e| e.is::<std::io::Error>())
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|s| s.contains("connection refused")),
            "{seen:?}"
        );
    }

    #[test]
    fn lost_link_backs_off_and_reconnects() {
        let (mut d, timer, seen) = driver(Config::new());
        let waker = Waker::from(Arc::new(Counted::default()));
        let mut cx = Context::from_waker(&waker);
        d.start();
        let _ = d.poll_next(&mut cx);
        d.connected();
        d.link_lost(LinkLost::new());
        assert_eq!(d.poll_next(&mut cx), Poll::Pending);
        timer.advance(Duration::from_secs(1));
        assert_eq!(
            d.poll_next(&mut cx),
            Poll::Ready(Next::Connect { attempt: 1 })
        );
        d.connected();
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|s| s == "reconnected (attempt 1)"),
            "{seen:?}"
        );
    }
}

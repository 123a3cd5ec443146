//! The lifecycle of a supervised connection, as a sans-IO state machine.
//!
//! [`Lifecycle`] knows nothing of sockets, tasks or clocks. A driver (a `Connection` task, a `Reconnect` service) feeds
//! it what happened, each input with the current instant, and carries out the [`Action`] it returns: start a connect,
//! wait until an instant, cancel a connect in flight, tear a connection down. [`Event`]s describe what happened for
//! users and are taken with [`Lifecycle::poll_event`]. Every crate of connman that reconnects drives this one machine.
//!
//! ```text
//!            start            connected
//!   Idle ───────────▶ Connecting ───────▶ Up
//!                      ▲    │ failed        │ link lost
//!          timer fired │    ▼               ▼
//!                      Backoff ◀────────────┘
//!
//!   close: any state ──▶ Closed   (give-up and fatal failures too)
//! ```
//!
//! ```
//! use connman_core::backoff::Constant;
//! use connman_core::lifecycle::{Action, Event, FailureKind, Lifecycle, State};
//! use std::time::{Duration, Instant};
//!
//! let now = Instant::now();
//! let mut lc = Lifecycle::new(Constant::new(Duration::from_secs(1)));
//! assert_eq!(lc.start(now), Some(Action::Connect { attempt: 1 }));
//!
//! // The connect fails: wait one second.
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! let action = lc.connect_failed(now, refused, FailureKind::Retriable);
//! assert_eq!(action, Some(Action::Wait { until: now + Duration::from_secs(1) }));
//!
//! // The timer fires: try again, and this time it works.
//! let later = now + Duration::from_secs(1);
//! assert_eq!(lc.timer_fired(later), Some(Action::Connect { attempt: 2 }));
//! assert_eq!(lc.connected(later), None);
//! assert!(matches!(lc.state(), State::Up { .. }));
//!
//! // Close works in every state and emits exactly one `Closed`.
//! assert_eq!(lc.close(later), Some(Action::TearDown));
//! let events: Vec<_> = std::iter::from_fn(|| lc.poll_event()).collect();
//! assert!(matches!(events.last(), Some(Event::Closed { .. })));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::error::{BoxError, SharedError};

/// Where a supervised connection stands: the snapshot runtime crates publish through a watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Not started yet.
    Idle,
    /// A connect attempt is in flight; `attempt` counts from 1 since the last good connection.
    Connecting {
        /// The attempt number.
        attempt: u32,
    },
    /// The connection is established.
    Up {
        /// When it came up.
        since: Instant,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// The attempt that will start when the wait is over.
        attempt: u32,
        /// When the wait is over.
        until: Instant,
    },
    /// Closed for good: by request, by a fatal failure, or because the backoff gave up.
    Closed,
}

impl State {
    /// Whether the connection is established.
    pub const fn is_up(&self) -> bool {
        matches!(self, State::Up { .. })
    }

    /// Whether the connection is closed for good.
    pub const fn is_closed(&self) -> bool {
        matches!(self, State::Closed)
    }
}

/// What a driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Start connect attempt number `attempt`.
    Connect {
        /// The attempt number, from 1.
        attempt: u32,
    },
    /// Call [`Lifecycle::timer_fired`] at `until`.
    Wait {
        /// When to call back.
        until: Instant,
    },
    /// Abandon the connect in flight; should it still complete, report it and the machine asks for a tear-down.
    CancelConnect,
    /// Stop waiting: the pending timer is void.
    CancelTimer,
    /// Tear the established (or late) connection down.
    TearDown,
}

/// Whether a failed connect is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient: back off and try again.
    Retriable,
    /// Permanent (bad credentials, a protocol mismatch): close for good.
    Fatal,
}

/// Why a connection closed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its owner asked for it.
    Requested,
    /// A connect attempt failed in a way that is not worth retrying.
    Fatal,
    /// The backoff policy gave up.
    GaveUp,
}

/// What happened, for users: logs, metrics, callbacks.
///
/// A failed attempt is a [`Event::ConnectFailed`], never a [`Event::Disconnected`]: only the loss of an established link
/// is a disconnect (this fixes connman's `onReset` firing once per failed retry, CN-05).
#[derive(Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connect attempt started.
    Connecting {
        /// The attempt number, from 1 since the last good connection.
        attempt: u32,
    },
    /// A connect attempt succeeded.
    Connected {
        /// The attempt that succeeded.
        attempt: u32,
        /// Whether this is the first connection ever (else a reconnect).
        first: bool,
    },
    /// A connect attempt failed.
    ConnectFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: SharedError,
        /// How long until the next attempt; `None` when there will be none.
        next_delay: Option<Duration>,
    },
    /// An established link was lost.
    Disconnected {
        /// Why it was lost.
        reason: SharedError,
    },
    /// Closed for good; emitted exactly once.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connecting { attempt } => f
                .debug_struct("Connecting")
                .field("attempt", attempt)
                .finish(),
            Event::Connected { attempt, first } => f
                .debug_struct("Connected")
                .field("attempt", attempt)
                .field("first", first)
                .finish(),
            Event::ConnectFailed {
                attempt,
                error,
                next_delay,
            } => f
                .debug_struct("ConnectFailed")
                .field("attempt", attempt)
                .field("error", &format_args!("{error}"))
                .field("next_delay", next_delay)
                .finish(),
            Event::Disconnected { reason } => f
                .debug_struct("Disconnected")
                .field("reason", &format_args!("{reason}"))
                .finish(),
            Event::Closed { reason } => f.debug_struct("Closed").field("reason", reason).finish(),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            Event::Connected {
                attempt,
                first: true,
            } => write!(f, "connected (attempt {attempt})"),
            Event::Connected {
                attempt,
                first: false,
            } => write!(f, "reconnected (attempt {attempt})"),
            Event::ConnectFailed {
                attempt,
                error,
                next_delay: Some(d),
            } => write!(
                f,
                "connect attempt {attempt} failed: {error}; retrying in {d:?}"
            ),
            Event::ConnectFailed {
                attempt,
                error,
                next_delay: None,
            } => write!(f, "connect attempt {attempt} failed: {error}; giving up"),
            Event::Disconnected { reason } => write!(f, "disconnected: {reason}"),
            Event::Closed { reason } => write!(f, "closed ({reason:?})"),
        }
    }
}

/// Lossless counts of a lifecycle's events, beside the bounded event stream (which drops the oldest past its
/// capacity): what a metrics exporter polls.
///
/// ```
/// use connman_core::lifecycle::{Counters, Event};
///
/// let mut counters = Counters::default();
/// counters.count(&Event::Connecting { attempt: 1 });
/// counters.count(&Event::Connected { attempt: 1, first: false });
/// assert_eq!((counters.attempts, counters.reconnects), (1, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Connect attempts started.
    pub attempts: u64,
    /// First connections (one, unless the machine was rebuilt).
    pub connects: u64,
    /// Connections after a lost link.
    pub reconnects: u64,
    /// Connect attempts that failed.
    pub failed_attempts: u64,
    /// Established links lost.
    pub links_lost: u64,
    /// Closes for good (zero or one).
    pub closes: u64,
}

impl Counters {
    /// Counts one event.
    pub fn count(&mut self, event: &Event) {
        let field = match event {
            Event::Connecting { .. } => &mut self.attempts,
            Event::Connected { first: true, .. } => &mut self.connects,
            Event::Connected { first: false, .. } => &mut self.reconnects,
            Event::ConnectFailed { .. } => &mut self.failed_attempts,
            Event::Disconnected { .. } => &mut self.links_lost,
            Event::Closed { .. } => &mut self.closes,
        };
        *field += 1;
    }
}

/// Settings of a [`Lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Reset the backoff after a lost link only if the link had stayed up this long (flap-aware reset).
    ///
    /// Zero (the default) resets on every successful connect, as connman, upnode and tower do. With, say, 5 s, a server
    /// that accepts and drops at once keeps the client backing off instead of reconnecting in a hot loop.
    pub min_uptime: Duration,
    /// Whether a failed attempt before the first successful connect closes for good (default `false`).
    ///
    /// With it, a connection that never came up fails fast ([`CloseReason::Fatal`]) instead of backing off, as a
    /// registry's first connect must, so that its caller hears of a wrong address or bad credentials at once. The
    /// [`Event::ConnectFailed`] before the [`Event::Closed`] carries the real error. Once a connection has been up,
    /// failures are retried as the [`FailureKind`] says.
    pub first_attempt_fatal: bool,
}

impl Config {
    /// The default settings: reset on every successful connect, retry a failed first attempt.
    pub const fn new() -> Self {
        Self {
            min_uptime: Duration::ZERO,
            first_attempt_fatal: false,
        }
    }

    /// Sets [`Config::first_attempt_fatal`].
    #[must_use]
    pub const fn first_attempt_fatal(mut self, fatal: bool) -> Self {
        self.first_attempt_fatal = fatal;
        self
    }

    /// Sets [`Config::min_uptime`].
    #[must_use]
    pub const fn min_uptime(mut self, min_uptime: Duration) -> Self {
        self.min_uptime = min_uptime;
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Events not yet taken are bounded: past this many, the oldest are dropped.
const MAX_PENDING_EVENTS: usize = 64;

/// The state machine of one supervised connection. See the [module docs](self).
pub struct Lifecycle<B> {
    backoff: B,
    config: Config,
    state: State,
    /// The attempt number of the connect in flight, or of the one to come after a wait.
    attempt: u32,
    connected_once: bool,
    /// Why the machine closed, once it has.
    close_reason: Option<CloseReason>,
    /// The error of the last failed attempt or lost link.
    last_error: Option<SharedError>,
    events: VecDeque<Event>,
}

impl<B: Backoff> Lifecycle<B> {
    /// A machine in [`State::Idle`] with default settings.
    pub fn new(backoff: B) -> Self {
        Self::with_config(backoff, Config::new())
    }

    /// A machine in [`State::Idle`].
    pub fn with_config(backoff: B, config: Config) -> Self {
        Self {
            backoff,
            config,
            state: State::Idle,
            attempt: 0,
            connected_once: false,
            close_reason: None,
            last_error: None,
            events: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Why the machine closed; `None` while it is not closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// The error of the last failed connect attempt or lost link, if any: what a caller told of a
    /// [`CloseReason::Fatal`] or [`CloseReason::GaveUp`] close should see.
    pub fn last_error(&self) -> Option<&SharedError> {
        self.last_error.as_ref()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a connection has ever been established.
    pub fn has_connected(&self) -> bool {
        self.connected_once
    }

    /// The backoff policy.
    pub fn backoff(&self) -> &B {
        &self.backoff
    }

    /// The next event not yet taken.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Starts the first connect attempt. Only acts in [`State::Idle`].
    pub fn start(&mut self, _now: Instant) -> Option<Action> {
        match self.state {
            State::Idle => Some(self.begin_attempt(1)),
            _ => None,
        }
    }

    /// The connect in flight succeeded.
    ///
    /// After a close, a connection that still arrives gets [`Action::TearDown`] and no event.
    pub fn connected(&mut self, now: Instant) -> Option<Action> {
        match self.state {
            State::Connecting { attempt } => {
                let first = !self.connected_once;
                self.connected_once = true;
                self.state = State::Up { since: now };
                self.attempt = 0;
                if self.config.min_uptime.is_zero() {
                    self.backoff.reset();
                }
                self.emit(Event::Connected { attempt, first });
                None
            }
            State::Closed => Some(Action::TearDown),
            _ => None,
        }
    }

    /// The connect in flight failed.
    pub fn connect_failed(
        &mut self,
        now: Instant,
        error: impl Into<BoxError>,
        kind: FailureKind,
    ) -> Option<Action> {
        let State::Connecting { attempt } = self.state else {
            return None;
        };
        let error = SharedError::from(error.into());
        self.last_error = Some(error.clone());
        let kind = if self.config.first_attempt_fatal && !self.connected_once {
            FailureKind::Fatal
        } else {
            kind
        };
        let next_delay = match kind {
            FailureKind::Retriable => self.backoff.next_delay(),
            FailureKind::Fatal => None,
        };
        self.emit(Event::ConnectFailed {
            attempt,
            error,
            next_delay,
        });
        match next_delay {
            Some(delay) => Some(self.wait(now, attempt.saturating_add(1), delay)),
            None => {
                let reason = match kind {
                    FailureKind::Fatal => CloseReason::Fatal,
                    FailureKind::Retriable => CloseReason::GaveUp,
                };
                self.finish(reason);
                None
            }
        }
    }

    /// The established link was lost.
    pub fn link_lost(&mut self, now: Instant, reason: impl Into<BoxError>) -> Option<Action> {
        let State::Up { since } = self.state else {
            return None;
        };
        let reason = SharedError::from(reason.into());
        self.last_error = Some(reason.clone());
        self.emit(Event::Disconnected { reason });
        if !self.config.min_uptime.is_zero()
            && now.saturating_duration_since(since) >= self.config.min_uptime
        {
            self.backoff.reset();
        }
        match self.backoff.next_delay() {
            Some(delay) => Some(self.wait(now, 1, delay)),
            None => {
                self.finish(CloseReason::GaveUp);
                None
            }
        }
    }

    /// The wait asked for by [`Action::Wait`] is over.
    ///
    /// Early or stale calls are harmless: before the instant it asks to wait again; in any other state it does nothing.
    pub fn timer_fired(&mut self, now: Instant) -> Option<Action> {
        let State::Backoff { attempt, until } = self.state else {
            return None;
        };
        if now < until {
            return Some(Action::Wait { until });
        }
        Some(self.begin_attempt(attempt))
    }

    /// Closes for good, from any state. Idempotent: a second close does nothing and emits nothing.
    pub fn close(&mut self, _now: Instant) -> Option<Action> {
        let action = match self.state {
            State::Closed => return None,
            State::Idle => None,
            State::Connecting { .. } => Some(Action::CancelConnect),
            State::Up { .. } => Some(Action::TearDown),
            State::Backoff { .. } => Some(Action::CancelTimer),
        };
        self.finish(CloseReason::Requested);
        action
    }

    fn begin_attempt(&mut self, attempt: u32) -> Action {
        self.attempt = attempt;
        self.state = State::Connecting { attempt };
        self.emit(Event::Connecting { attempt });
        Action::Connect { attempt }
    }

    fn wait(&mut self, now: Instant, attempt: u32, delay: Duration) -> Action {
        let until = saturating_add(now, delay);
        self.attempt = attempt;
        self.state = State::Backoff { attempt, until };
        Action::Wait { until }
    }

    fn finish(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.close_reason = Some(reason);
        self.emit(Event::Closed { reason });
    }

    fn emit(&mut self, event: Event) {
        if self.events.len() == MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// `now + delay`, or the latest instant this platform can represent on the way there: a delay too long to add never
/// turns into an immediate retry.
fn saturating_add(now: Instant, delay: Duration) -> Instant {
    let mut delay = delay;
    loop {
        if let Some(until) = now.checked_add(delay) {
            return until;
        }
        // Halving reaches zero after at most 128 steps, and `now + 0` always exists.
        delay /= 2;
    }
}

impl<B> fmt::Debug for Lifecycle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("state", &self.state)
            .field("attempt", &self.attempt)
            .field("connected_once", &self.connected_once)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{Constant, Exponential, presets};
    use crate::error::LinkLost;

    fn refused() -> std::io::Error {
        std::io::ErrorKind::ConnectionRefused.into()
    }

    fn events<B: Backoff>(lc: &mut Lifecycle<B>) -> Vec<Event> {
        std::iter::from_fn(|| lc.poll_event()).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn cn_05_failed_attempt_is_connect_failed_not_disconnect() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(presets::connman());
        lc.start(t0);
        assert_eq!(
            lc.connect_failed(t0, refused(), FailureKind::Retriable),
            Some(Action::Wait { until: t0 + ms(20) })
        );
        let ev = events(&mut lc);
        assert!(matches!(ev[0], Event::Connecting { attempt: 1 }));
        assert!(matches!(
            ev[1],
            Event::ConnectFailed {
                attempt: 1,
                next_delay: Some(d),
                ..
            } if d == ms(20)
        ));
        assert!(!ev.iter().any(|e| matches!(e, Event::Disconnected { .. })));
    }

    #[test]
    fn cn_03_first_connect_then_reconnects() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(ms(5)));
        lc.start(t0);
        lc.connected(t0);
        assert_eq!(
            lc.link_lost(t0, LinkLost::new()),
            Some(Action::Wait { until: t0 + ms(5) })
        );
        assert_eq!(
            lc.timer_fired(t0 + ms(5)),
            Some(Action::Connect { attempt: 1 })
        );
        lc.connected(t0 + ms(5));
        let firsts: Vec<bool> = events(&mut lc)
            .into_iter()
            .filter_map(|e| match e {
                Event::Connected { first, .. } => Some(first),
                _ => None,
            })
            .collect();
        assert_eq!(firsts, [true, false]);
    }

    #[test]
    fn cn_08_schedule_to_the_instant() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(presets::connman());
        let mut now = t0;
        lc.start(now);
        let mut waits = Vec::new();
        for _ in 0..5 {
            match lc.connect_failed(now, refused(), FailureKind::Retriable) {
                Some(Action::Wait { until }) => {
                    waits.push(until - now);
                    assert_eq!(lc.timer_fired(until - ms(1)), Some(Action::Wait { until }));
                    now = until;
                    assert!(matches!(lc.timer_fired(now), Some(Action::Connect { .. })));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(waits, [20, 40, 80, 160, 320].map(ms));
        // A success resets the schedule (CN-09).
        lc.connected(now);
        assert_eq!(
            lc.link_lost(now, LinkLost::new()),
            Some(Action::Wait {
                until: now + ms(20)
            })
        );
    }

    #[test]
    fn flap_aware_reset_needs_min_uptime() {
        let t0 = Instant::now();
        let backoff = Exponential::builder().initial(ms(100)).build().unwrap();
        let mut lc =
            Lifecycle::with_config(backoff, Config::new().min_uptime(Duration::from_secs(5)));
        lc.start(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        // A server that accepts and drops at once: the delay keeps growing.
        for _ in 0..3 {
            lc.connected(now);
            let Some(Action::Wait { until }) = lc.link_lost(now + ms(10), LinkLost::new()) else {
                panic!("expected a wait")
            };
            waits.push(until - (now + ms(10)));
            now = until;
            lc.timer_fired(now);
        }
        assert_eq!(waits, [100, 200, 400].map(ms));
        // A link that stays up for 5 s earns a reset.
        lc.connected(now);
        let lost = now + Duration::from_secs(5);
        assert_eq!(
            lc.link_lost(lost, LinkLost::new()),
            Some(Action::Wait {
                until: lost + ms(100)
            })
        );
    }

    #[test]
    fn cn_12_close_works_in_every_state() {
        let t0 = Instant::now();
        // Idle.
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        assert_eq!(lc.close(t0), None);
        assert_eq!(lc.start(t0), None);
        // Connecting: cancel, and a late connection is torn down.
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        lc.start(t0);
        assert_eq!(lc.close(t0), Some(Action::CancelConnect));
        assert_eq!(lc.connected(t0), Some(Action::TearDown));
        // Up.
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        lc.start(t0);
        lc.connected(t0);
        assert_eq!(lc.close(t0), Some(Action::TearDown));
        assert_eq!(lc.link_lost(t0, LinkLost::new()), None);
    }

    #[test]
    fn cn_13_close_during_backoff_never_reconnects() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(ms(10)));
        lc.start(t0);
        lc.connect_failed(t0, refused(), FailureKind::Retriable);
        assert_eq!(lc.close(t0), Some(Action::CancelTimer));
        assert_eq!(lc.timer_fired(t0 + ms(10)), None);
        assert_eq!(lc.state(), State::Closed);
        // Exactly one Closed, and a second close is a no-op.
        assert_eq!(lc.close(t0), None);
        let closed = events(&mut lc)
            .iter()
            .filter(|e| matches!(e, Event::Closed { .. }))
            .count();
        assert_eq!(closed, 1);
    }

    #[test]
    fn fatal_and_give_up_close() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        lc.start(t0);
        assert_eq!(lc.connect_failed(t0, refused(), FailureKind::Fatal), None);
        assert!(matches!(
            events(&mut lc).last(),
            Some(Event::Closed {
                reason: CloseReason::Fatal
            })
        ));
        let mut lc = Lifecycle::new(Constant::new(ms(1)).with_max_attempts(1).unwrap());
        lc.start(t0);
        lc.connect_failed(t0, refused(), FailureKind::Retriable);
        lc.timer_fired(t0 + ms(1));
        assert_eq!(
            lc.connect_failed(t0, refused(), FailureKind::Retriable),
            None
        );
        assert!(matches!(
            events(&mut lc).last(),
            Some(Event::Closed {
                reason: CloseReason::GaveUp
            })
        ));
    }

    #[test]
    fn stale_inputs_are_ignored() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        assert_eq!(lc.connected(t0), None);
        assert_eq!(
            lc.connect_failed(t0, refused(), FailureKind::Retriable),
            None
        );
        assert_eq!(lc.timer_fired(t0), None);
        assert_eq!(lc.state(), State::Idle);
    }

    #[test]
    fn overflowing_delay_saturates_instead_of_retrying_at_once() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(Duration::MAX));
        lc.start(t0);
        let Some(Action::Wait { until }) = lc.connect_failed(t0, refused(), FailureKind::Retriable)
        else {
            panic!("expected a wait")
        };
        // Far in the future (at least a century), never `t0`.
        assert!(until > t0 + Duration::from_secs(100 * 365 * 24 * 3600));
        assert_eq!(lc.timer_fired(t0), Some(Action::Wait { until }));
        // The same for a lost link.
        assert_eq!(lc.timer_fired(until), Some(Action::Connect { attempt: 2 }));
        lc.connected(until);
        let Some(Action::Wait { until: again }) = lc.link_lost(until, LinkLost::new()) else {
            panic!("expected a wait")
        };
        assert!(again > until);
    }

    #[test]
    fn first_attempt_fatal_closes_with_the_real_error() {
        let t0 = Instant::now();
        let config = Config::new().first_attempt_fatal(true);
        let mut lc = Lifecycle::with_config(Constant::new(ms(1)), config);
        lc.start(t0);
        assert_eq!(
            lc.connect_failed(t0, refused(), FailureKind::Retriable),
            None
        );
        assert_eq!(lc.close_reason(), Some(CloseReason::Fatal));
        let ev = events(&mut lc);
        let Event::ConnectFailed {
            error, next_delay, ..
        } = &ev[1]
        else {
            panic!("expected a failed attempt, got {ev:?}")
        };
        assert!(next_delay.is_none());
        assert!(error.is::<std::io::Error>());
        assert!(lc.last_error().is_some_and(|e| e.is::<std::io::Error>()));
        // Once up, later failures are retried.
        let mut lc = Lifecycle::with_config(Constant::new(ms(1)), config);
        lc.start(t0);
        lc.connected(t0);
        lc.link_lost(t0, LinkLost::new());
        lc.timer_fired(t0 + ms(1));
        assert_eq!(
            lc.connect_failed(t0 + ms(1), refused(), FailureKind::Retriable),
            Some(Action::Wait { until: t0 + ms(2) })
        );
    }

    #[test]
    fn pending_events_are_bounded() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(Constant::new(ms(1)));
        lc.start(t0);
        for _ in 0..1000 {
            lc.connect_failed(t0, refused(), FailureKind::Retriable);
            lc.timer_fired(t0 + ms(1));
        }
        assert_eq!(events(&mut lc).len(), MAX_PENDING_EVENTS);
    }
}

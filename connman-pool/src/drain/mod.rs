//! Draining a group: stop admitting, then close every member at a global rate or over a window.
//!
//! [`Group::drain`] first stops admitting (a new [`Group::add`] fails with
//! [`Draining`](connman_core::error::Draining), and every [`DrainSignal`] of the group fires), then closes members:
//!
//! * [`DrainConfig::max_per_second`]`(r)`: one close every `1/r` seconds, across all namespaces together: the close
//!   of the `k`-th member (from 0) begins `k/r` seconds after the drain starts. `n` members take `(n − 1)/r` seconds
//!   (at least `⌈n/r⌉ − 1`), and no 1-second window ever sees more than `r` closes begin. The cap is kept on the
//!   instants the closes really began: a drain polled late, or a timer that fired late, spreads the overdue closes
//!   out instead of starting them in a burst. Evenly spaced closes, rather
//!   than batches of `r` on the second, also keep their completions (and the clients' reconnects) from bunching up
//!   when a close takes a little longer than usual.
//! * [`DrainConfig::over`]`(window)`: spread evenly over the window (Envoy's gradual drain): member `i` of `n` is
//!   closed at `i · window / n`.
//!
//! Members are closed oldest first, by the time they joined, whatever their namespace: the order is the same on every
//! run, and each namespace is drained in proportion to its size (round-robin across namespaces would close a small
//! namespace's members much sooner than a large one's). The default close code is
//! [`CloseCode::RECONNECT`] (4200, "reconnect shortly"), as soketi uses when it shuts down.
//!
//! The [`Drain`] future resolves when the last member has left the group; [`Drain::progress`] watches it.
//!
//! ```
//! use connman_pool::drain::DrainConfig;
//! use connman_pool::group::{Group, channel};
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let group = Group::new();
//! let mut peers = Vec::new();
//! for i in 0..5 {
//!     let (member, peer) = channel(4);
//!     let ns = if i % 2 == 0 { "even" } else { "odd" };
//!     group.add(ns, i.to_string(), member).unwrap();
//!     peers.push(peer);
//! }
//!
//! let start = Instant::now();
//! let drain = group.drain(DrainConfig::max_per_second(2).unwrap()).unwrap();
//! let progress = drain.progress();
//! // Already draining: no one joins any more.
//! let (late, _peer) = channel(4);
//! assert!(group.add("even", "late", late).is_err());
//!
//! let report = drain.await;
//! // 5 members at 2 per second: closes at 0, 0.5, 1, 1.5 and 2 s.
//! assert_eq!(start.elapsed(), Duration::from_secs(2));
//! assert_eq!((report.total, report.closed), (5, 5));
//! assert_eq!(progress.borrow().closed, 5);
//! assert!(group.is_empty());
//! # }
//! ```
//!
//! What soketi does around its drain, and where it lives here:
//!
//! * **SS-01**: new connections are refused first; [`Group::add`] fails with `Draining` from the moment
//!   [`Group::drain`] returns, and [`DrainSignal`] tells the accept loop to answer newcomers with 4200 at once.
//! * **SS-02**: soketi closes every socket at once; [`Group::close_all`] does that when you mean it, and the drain is
//!   the paced alternative.
//! * **SS-03** (wait a shutdown grace period, then close queues, caches and listen sockets) is the server's own
//!   sequence, not the group's: await the [`Drain`] (it resolves when the last close is done), then close the
//!   rest. No grace period has to be guessed.
//! * **SS-05** (asking other nodes for their sockets, with partial data after a timeout) needs a broker between
//!   nodes and is left for the multi-node work; a [`Remote`] (`{id, namespace}`) is the
//!   serialisable view it will use.
//!
//! [`DrainLayer`] puts the same signal in front of any tower service: once draining has begun it rejects new requests
//! with [`Draining`](connman_core::error::Draining).

mod future;
mod layer;
mod service;

use connman_core::rt::tokio::later;
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::error::{Draining as DrainingError, InvalidConfig};
use connman_core::member::{CloseCode, ComeBack};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::group::{Group, Remote};

pub use future::ResponseFuture;
pub use layer::DrainLayer;
pub use service::Draining;

/// How fast a drain closes members, with which code and reason.
///
/// ```
/// use connman_core::error::InvalidConfig;
/// use connman_core::member::CloseCode;
/// use connman_pool::drain::DrainConfig;
/// use std::time::Duration;
///
/// let paced = DrainConfig::max_per_second(1000).unwrap().with_code(CloseCode::GOING_AWAY);
/// assert_eq!(paced.code(), CloseCode::GOING_AWAY);
/// let gradual = DrainConfig::over(Duration::from_secs(30)).unwrap();
/// assert_eq!(gradual.reason(), "server closing, reconnect shortly");
/// assert!(DrainConfig::max_per_second(0).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct DrainConfig {
    pace: Pace,
    code: CloseCode,
    reason: String,
    come_back: Option<ComeBack>,
}

#[derive(Debug, Clone, Copy)]
enum Pace {
    PerSecond(NonZeroU32),
    Over(Duration),
}

impl DrainConfig {
    /// Closes at most `max_per_second` members in any 1-second window, across all namespaces. Zero is rejected.
    pub fn max_per_second(max_per_second: u32) -> Result<Self, InvalidConfig> {
        let rate = NonZeroU32::new(max_per_second)
            .ok_or(InvalidConfig::new("max_per_second must be at least 1"))?;
        Ok(Self::with_pace(Pace::PerSecond(rate)))
    }

    /// Spreads the closes evenly over `window` (Envoy's gradual drain). A zero window is rejected: use
    /// [`Group::close_all`] to close everything at once.
    pub fn over(window: Duration) -> Result<Self, InvalidConfig> {
        if window.is_zero() {
            return Err(InvalidConfig::new(
                "the drain window must be longer than zero",
            ));
        }
        Ok(Self::with_pace(Pace::Over(window)))
    }

    /// Closes with `code` instead of [`CloseCode::RECONNECT`].
    pub fn with_code(mut self, code: CloseCode) -> Self {
        self.code = code;
        self
    }

    /// Closes with `reason` instead of `"server closing, reconnect shortly"`.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Advises each closed member's client to come back within `within` (default: at once, zero).
    ///
    /// The drain already spreads its closes out at the pace it was given, so by default it tells the clients so:
    /// the close reason ends with [`ComeBack`] advice of zero, and a connman `WsClient` then comes back as soon as it
    /// is closed instead of after its own random delay, and the next server sees the drain's pace instead of that
    /// pace blurred by random delays. Other clients see a readable reason. A longer advice widens the spread; the
    /// client never waits longer than its own bound.
    ///
    /// ```
    /// use connman_pool::drain::DrainConfig;
    /// use std::time::Duration;
    ///
    /// let drain = DrainConfig::max_per_second(500).unwrap();
    /// assert_eq!(drain.close_reason(), "server closing, reconnect shortly; come back within 0 ms");
    /// let wider = drain.come_back_within(Duration::from_secs(1));
    /// assert_eq!(wider.close_reason(), "server closing, reconnect shortly; come back within 1000 ms");
    /// assert_eq!(wider.without_come_back_advice().close_reason(), "server closing, reconnect shortly");
    /// ```
    pub fn come_back_within(mut self, within: Duration) -> Self {
        self.come_back = Some(ComeBack::within(within));
        self
    }

    /// Gives no come-back advice: each client waits as its own settings say.
    pub fn without_come_back_advice(mut self) -> Self {
        self.come_back = None;
        self
    }

    /// The reason each close carries: the reason with the come-back advice, if any, at its end.
    pub fn close_reason(&self) -> String {
        match self.come_back {
            Some(advice) => advice.advise(&self.reason),
            None => self.reason.clone(),
        }
    }

    /// The `max_per_second` of a paced drain; `None` for one spread [`over`](DrainConfig::over) a window.
    pub fn get_max_per_second(&self) -> Option<u32> {
        match self.pace {
            Pace::PerSecond(max_per_second) => Some(max_per_second.get()),
            Pace::Over(_) => None,
        }
    }

    /// The close code.
    pub fn code(&self) -> CloseCode {
        self.code
    }

    /// The close reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn with_pace(pace: Pace) -> Self {
        Self {
            pace,
            code: CloseCode::RECONNECT,
            reason: "server closing, reconnect shortly".to_owned(),
            come_back: Some(ComeBack::within(Duration::ZERO)),
        }
    }

    /// The cap of a rate-limited drain, as a count of closes per second.
    fn per_second(&self) -> Option<usize> {
        match self.pace {
            Pace::PerSecond(rate) => Some(usize::try_from(rate.get()).unwrap_or(usize::MAX)),
            Pace::Over(_) => None,
        }
    }

    /// When the close of the member at `index` (of `total`) is due, `started` closes having been started.
    fn due(&self, start: Instant, index: usize, started: u64, total: usize) -> Instant {
        match self.pace {
            Pace::PerSecond(rate) => {
                // Evenly spaced, one close every 1/rate seconds: any 1-second window holds at most `rate` close
                // starts, and a little jitter in when each one completes cannot bunch two batches into one window.
                let nanos = u128::from(started) * 1_000_000_000 / u128::from(rate.get());
                later(
                    start,
                    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
                )
            }
            Pace::Over(window) => {
                // Exact integer arithmetic: index < total, so the result is below the window.
                let nanos = window.as_nanos() * index as u128 / total.max(1) as u128;
                later(
                    start,
                    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
                )
            }
        }
    }
}

/// How far a drain is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainProgress {
    /// Members in the group when the drain began.
    pub total: usize,
    /// Closes the drain started (members already closing are not counted).
    pub started: usize,
    /// Members that have left the group since, by the drain's close or otherwise.
    pub closed: usize,
}

/// A drain under way: resolves with the final [`DrainProgress`] once every member has left the group.
///
/// The drain runs as a task of its own from the moment [`Group::drain`] returns (admission stopped already then):
/// awaiting it only waits for the end, and **dropping it lets the drain go on by itself** to the last close. Giving
/// up on the wait (a shutdown's timeout) never leaves a group that admits no one and closes no one. Outside a tokio
/// runtime, where no task can be spawned (and no member can have joined), the drain runs while it is polled.
pub struct Drain {
    run: Pin<Box<dyn Future<Output = DrainProgress> + Send>>,
    progress: watch::Receiver<DrainProgress>,
}

impl Drain {
    /// Watches the drain's progress.
    pub fn progress(&self) -> watch::Receiver<DrainProgress> {
        self.progress.clone()
    }
}

impl Future for Drain {
    type Output = DrainProgress;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DrainProgress> {
        self.run.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Stops admitting members at once, and returns the drain that closes them as `config` says, in a task of its
    /// own (see [`Drain`]).
    ///
    /// Fails with [`Draining`](connman_core::error::Draining) if a drain already began: two drains would together
    /// exceed `max_per_second`.
    pub fn drain(&self, config: DrainConfig) -> Result<Drain, DrainingError> {
        let members = self.stop_admitting().ok_or(DrainingError::new())?;
        let (tx, rx) = watch::channel(DrainProgress {
            total: members.len(),
            ..DrainProgress::default()
        });
        let run = run(self.clone(), members, config, tx);
        let run: Pin<Box<dyn Future<Output = DrainProgress> + Send>> =
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let task = runtime.spawn(run);
                    let last = rx.clone();
                    // A task that cannot finish (its runtime shut down) ends the wait with the progress it made.
                    Box::pin(async move { task.await.unwrap_or_else(|_| *last.borrow()) })
                }
                Err(_) => Box::pin(run),
            };
        Ok(Drain { run, progress: rx })
    }

    /// A signal that fires when this group starts draining, for [`DrainLayer`].
    pub fn drain_signal(&self) -> DrainSignal {
        DrainSignal {
            rx: self.watch_draining(),
        }
    }
}

/// Stops a group's admissions: the sending half of a [`DrainSignal`].
#[derive(Debug)]
pub struct DrainTrigger {
    tx: watch::Sender<bool>,
}

impl DrainTrigger {
    /// Starts draining: every signal fires. Calling it again does nothing more.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

/// Tells whether draining has begun. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DrainSignal {
    rx: watch::Receiver<bool>,
}

impl DrainSignal {
    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once draining has begun, or once its trigger is gone without starting (it never will then).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone: nothing will change any more.
        let _ = rx.wait_for(|draining| *draining).await;
    }
}

/// A trigger and its signal, for putting [`DrainLayer`] in front of services without a group.
///
/// ```
/// let (trigger, signal) = connman_pool::drain::signal();
/// assert!(!signal.is_draining());
/// trigger.start();
/// assert!(signal.is_draining());
/// ```
pub fn signal() -> (DrainTrigger, DrainSignal) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger { tx }, DrainSignal { rx })
}

async fn run(
    group: Group,
    members: Vec<Remote>,
    config: DrainConfig,
    progress: watch::Sender<DrainProgress>,
) -> DrainProgress {
    let start = Instant::now();
    let total = members.len();
    let mut state = DrainProgress {
        total,
        ..DrainProgress::default()
    };
    let mut left = FuturesUnordered::new();
    let mut next = 0;
    let mut started = 0u64;
    // With `max_per_second`, the instants the last `max_per_second` closes began: the next one waits until the
    // oldest of them is a full second old. The schedule alone would let a drain that was not polled for a while (or
    // a late timer) start every overdue close at once; this window keeps the cap true for the closes as they really
    // began.
    let window = config
        .per_second()
        .map(|max_per_second| max_per_second.min(total.max(1)));
    let reason = config.close_reason();
    let mut recent: VecDeque<Instant> = VecDeque::with_capacity(window.unwrap_or(0));
    let due = |next: usize, started: u64, recent: &VecDeque<Instant>| {
        let scheduled = config.due(start, next, started, total);
        match window {
            Some(cap) if recent.len() >= cap => {
                scheduled.max(later(recent[recent.len() - cap], Duration::from_secs(1)))
            }
            _ => scheduled,
        }
    };
    loop {
        let now = Instant::now();
        while next < total && due(next, started, &recent) <= now {
            let member = &members[next];
            next += 1;
            let Ok(closing) = group.close(&member.namespace, &member.id, config.code, &reason)
            else {
                // It left the group by itself meanwhile.
                state.closed += 1;
                continue;
            };
            if closing.began() {
                started += 1;
                state.started += 1;
                if let Some(cap) = window {
                    if recent.len() == cap {
                        recent.pop_front();
                    }
                    recent.push_back(now);
                }
            }
            left.push(closing);
        }
        progress.send_replace(state);
        if next == total && left.is_empty() {
            return state;
        }
        let wake = (next < total).then(|| due(next, started, &recent));
        tokio::select! {
            Some(()) = left.next(), if !left.is_empty() => state.closed += 1,
            () = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
        }
    }
}

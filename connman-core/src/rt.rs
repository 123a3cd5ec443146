//! The runtime behind small traits: a clock and sleeps, as hyper's `rt::Timer` keeps tokio out of hyper.
//!
//! The [`Driver`](crate::driver::Driver) of a [`Lifecycle`](crate::Lifecycle) reads the time and waits through a
//! [`Timer`]; this crate implements none for a runtime by default, so it builds without one. The `tokio` feature adds
//! `rt::tokio::TokioTimer`, which follows tokio's clock (so paused time in tests) and is what every connman runtime
//! crate uses.
//!
//! A timer for a test or another runtime is a few lines:
//!
//! ```
//! use connman_core::rt::{Sleep, Timer};
//! use std::future::Future;
//! use std::pin::Pin;
//! use std::task::{Context, Poll};
//! use std::time::Instant;
//!
//! /// A timer whose sleeps never end: enough for a driver that only ever connects.
//! #[derive(Debug, Clone)]
//! struct Never;
//!
//! struct Forever;
//! impl Future for Forever {
//!     type Output = ();
//!     fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
//!         Poll::Pending
//!     }
//! }
//! impl Sleep for Forever {}
//!
//! impl Timer for Never {
//!     fn now(&self) -> Instant {
//!         Instant::now()
//!     }
//!     fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn Sleep>> {
//!         Box::pin(Forever)
//!     }
//! }
//! # let _ = Never.now();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// A clock and a source of sleeps.
pub trait Timer {
    /// The current instant on this timer's clock. Every instant a [`Lifecycle`](crate::Lifecycle) is given comes from
    /// here, so a timer with a paused or simulated clock makes the whole machine follow it.
    fn now(&self) -> Instant;

    /// A future that resolves at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>>;
}

/// A sleep from a [`Timer`]: a future that resolves once its deadline has passed.
pub trait Sleep: Future<Output = ()> + Send + Sync {}

impl<T: Timer + ?Sized> Timer for &T {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        (**self).sleep_until(deadline)
    }
}

impl<T: Timer + ?Sized> Timer for std::sync::Arc<T> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        (**self).sleep_until(deadline)
    }
}

/// The [`Timer`] of the tokio runtime (feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio {
    use std::pin::Pin;
    use std::time::{Duration, Instant};

    use super::{Sleep, Timer};

    /// `at + by` on tokio's clock, or a point about 30 years after `at` when the sum is past what an instant can
    /// hold: a timeout or interval near `Duration::MAX` (which settings accept, meaning "never") waits instead of
    /// overflowing the clock or firing at once.
    ///
    /// ```
    /// use connman_core::rt::tokio::later;
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let now = Instant::now();
    /// assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    /// assert!(later(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 60 * 60));
    /// ```
    pub fn later(at: ::tokio::time::Instant, by: Duration) -> ::tokio::time::Instant {
        const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
        at.checked_add(by)
            .or_else(|| at.checked_add(FAR))
            .unwrap_or(at)
    }

    /// tokio's clock and sleeps: follows paused time (`tokio::time::pause`, `start_paused = true`).
    ///
    /// ```
    /// use connman_core::rt::Timer;
    /// use connman_core::rt::tokio::TokioTimer;
    ///
    /// let timer = TokioTimer::new();
    /// let t0 = timer.now();
    /// assert!(timer.now() >= t0);
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    #[non_exhaustive]
    pub struct TokioTimer;

    impl TokioTimer {
        /// The timer.
        pub const fn new() -> Self {
            Self
        }
    }

    impl Timer for TokioTimer {
        fn now(&self) -> Instant {
            ::tokio::time::Instant::now().into_std()
        }

        fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
            Box::pin(TokioSleep {
                inner: ::tokio::time::sleep_until(deadline.into()),
            })
        }
    }

    #[pin_project::pin_project]
    struct TokioSleep {
        #[pin]
        inner: ::tokio::time::Sleep,
    }

    impl std::future::Future for TokioSleep {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            self.project().inner.poll(cx)
        }
    }

    impl Sleep for TokioSleep {}

    /// An [`Observer`](crate::driver::Observer) that publishes: every event to a bounded broadcast (a subscriber
    /// that falls behind loses the oldest), every state to a watch. No subscriber is fine.
    ///
    /// ```
    /// use connman_core::driver::Observer;
    /// use connman_core::lifecycle::{Event, State};
    /// use connman_core::rt::tokio::Publish;
    ///
    /// let publish = Publish::new(64);
    /// let mut events = publish.subscribe();
    /// let state = publish.state();
    /// let mut observer = publish.clone();
    /// observer.on_event(Event::Connecting { attempt: 1 });
    /// observer.on_state(State::Connecting { attempt: 1 });
    /// assert!(matches!(events.try_recv(), Ok(Event::Connecting { attempt: 1 })));
    /// assert_eq!(*state.borrow(), State::Connecting { attempt: 1 });
    /// ```
    ///
    /// Beside the lossy stream it keeps lossless [`Counters`](crate::lifecycle::Counters), shared by its clones.
    #[derive(Debug, Clone)]
    pub struct Publish {
        state: ::tokio::sync::watch::Sender<crate::State>,
        events: ::tokio::sync::broadcast::Sender<crate::Event>,
        counters: std::sync::Arc<std::sync::Mutex<crate::lifecycle::Counters>>,
    }

    impl Publish {
        /// Channels for `capacity` events per subscriber (at least one), and a state watch starting at `Idle`.
        pub fn new(capacity: usize) -> Self {
            let (state, _) = ::tokio::sync::watch::channel(crate::State::Idle);
            let (events, _) = ::tokio::sync::broadcast::channel(capacity.max(1));
            Self {
                state,
                events,
                counters: std::sync::Arc::default(),
            }
        }

        /// The counts of every event published so far: none is lost, however far subscribers fall behind.
        pub fn counters(&self) -> crate::lifecycle::Counters {
            *self
                .counters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// The events from now on.
        pub fn subscribe(&self) -> ::tokio::sync::broadcast::Receiver<crate::Event> {
            self.events.subscribe()
        }

        /// A watch of the state.
        pub fn state(&self) -> ::tokio::sync::watch::Receiver<crate::State> {
            self.state.subscribe()
        }
    }

    impl crate::driver::Observer for Publish {
        fn on_event(&mut self, event: crate::Event) {
            tracing::debug!(%event, "lifecycle");
            // Events are rare (connects, failures): a lock here costs nothing a request pays.
            self.counters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .count(&event);
            // Nobody listening is fine: events are for whoever cares.
            let _ = self.events.send(event);
        }

        fn on_state(&mut self, state: crate::State) {
            self.state.send_if_modified(|s| {
                let changed = *s != state;
                *s = state;
                changed
            });
        }
    }
}

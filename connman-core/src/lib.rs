//! The runtime-free vocabulary of connman.
//!
//! connman keeps network connections alive, shared and drained. This crate holds what every other connman crate
//! speaks, and no async runtime: it compiles without tokio, and its logic takes the current instant as an argument
//! instead of reading a clock.
//!
//! * [`backoff`]: pure schedules of delays between attempts, with presets of well-known systems.
//! * [`lifecycle`]: the one state machine of a supervised connection; every crate that reconnects drives it.
//! * [`driver`]: the one async driver of that machine (clock, waits, events), generic over a [`rt::Timer`].
//! * [`rt`]: the runtime behind small traits; feature `tokio` adds `rt::tokio::TokioTimer`.
//! * [`refhandle`]: handles that count their holders and tell the owner when the last one is gone.
//! * [`generation`]: a generation that tells a remembered answer whether it still holds, for lock-free cached lookups.
//! * [`transport`]: how to connect, as any `tower_service::Service<Target>`.
//! * [`heartbeat`]: the rule every heartbeat schedule follows (the answer is due before the next ping).
//! * [`outcome`]: [`Outcome::of`](outcome::Outcome::of) names what became of a request from its error.
//! * [`error`]: one small type per failure mode, carried as [`error::BoxError`] between layers.
//!
//! Where it sits:
//!
//! ```text
//! connman-core    (this crate: no runtime)
//!  ├─ connman-tcp    TCP connector, supervised Connection, pipelined client
//!  │   └─ connman-ws  WebSocket over any IO transport
//!  ├─ connman-queue  Reconnect, Queue, Heartbeat tower layers
//!  └─ connman-pool   Registry, Pool, Group, Drain
//! ```
//!
//! A lifecycle driven by hand, as a runtime crate drives it:
//!
//! ```
//! use connman_core::backoff::presets;
//! use connman_core::lifecycle::{Action, FailureKind, Lifecycle};
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let mut lc = Lifecycle::new(presets::connman());
//! lc.start(t0);
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! // connman waits 20 ms after the first failure.
//! assert_eq!(
//!     lc.connect_failed(t0, refused, FailureKind::Retriable),
//!     Some(Action::Wait { until: t0 + Duration::from_millis(20) })
//! );
//! ```

pub mod backoff;
pub mod capacity;
pub mod driver;
pub mod error;
pub mod generation;
pub mod heartbeat;
pub mod lifecycle;
pub mod member;
pub mod outcome;
pub mod refhandle;
pub mod rt;
pub mod supervise;
pub mod transport;

pub use backoff::Backoff;
pub use error::BoxError;
pub use lifecycle::{Event, Lifecycle, State};
pub use refhandle::{RefCounted, RefHandle};
pub use transport::Transport;

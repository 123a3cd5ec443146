//! [`CloseHandle`] and the channels every [`Reconnect`](super::Reconnect) of one config shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use connman_core::rt::tokio::Publish;
use connman_core::supervise::Disconnect;
use tokio_util::sync::CancellationToken;

/// The channels shared by every [`Reconnect`](super::Reconnect) of one config.
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    pub(crate) publish: Publish,
    pub(crate) close: Closer,
    /// On-up hooks started.
    pub(crate) hook_runs: Arc<AtomicU64>,
}

impl Observe {
    pub(crate) fn stats(&self) -> ReconnectStats {
        ReconnectStats {
            lifecycle: self.publish.counters(),
            hook_runs: self.hook_runs.load(Ordering::Relaxed),
        }
    }
}

/// Lossless counts of one link, beside its event stream (which drops the oldest past
/// [`EVENT_CAPACITY`](super::EVENT_CAPACITY)): cheap to poll from a metrics exporter.
///
/// ```
/// use connman_queue::reconnect::{Reconnect, ReconnectConfig};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), connman_core::error::BoxError> {
/// let connect = service_fn(|_: ()| async {
///     Ok::<_, std::io::Error>(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }))
/// });
/// let config = ReconnectConfig::new(());
/// let stats = config.clone();
/// Reconnect::new(connect, config).oneshot(1).await?;
/// let s = stats.stats();
/// assert_eq!((s.lifecycle.attempts, s.lifecycle.connects, s.hook_runs), (1, 1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectStats {
    /// Attempts, connects, reconnects, failed attempts, lost links.
    pub lifecycle: connman_core::lifecycle::Counters,
    /// On-up hooks started (one per connection made; a hook that fails or times out counts a failed attempt too).
    pub hook_runs: u64,
}

/// Closes a link: a flag every request reads (one load, no lock) and a token the parked slow path waits on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Closer {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Closer {
    pub(crate) fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Closes a [`Reconnect`](super::Reconnect) for good from anywhere: a connect in progress is cancelled, a pending backoff timer is
/// dropped, an established connection is torn down, and every later `poll_ready` fails with
/// [`Closed`](connman_core::error::Closed).
#[derive(Debug, Clone)]
pub struct CloseHandle(Closer);

impl CloseHandle {
    pub(crate) fn new(closer: Closer) -> Self {
        Self(closer)
    }

    /// Closes the link. Idempotent.
    pub fn close(&self) {
        self.0.close();
    }

    /// Whether the link was closed through this handle.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Disconnect for CloseHandle {
    fn disconnect(&self) {
        self.close();
    }
}

//! [`CloseHandle`] and the channels every [`Reconnect`](super::Reconnect) of one config shares.

use connman_core::rt::tokio::Publish;
use connman_core::supervise::Disconnect;
use tokio_util::sync::CancellationToken;

/// The channels shared by every [`Reconnect`](super::Reconnect) of one config.
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    pub(crate) publish: Publish,
    pub(crate) close: CancellationToken,
}

/// Closes a [`Reconnect`](super::Reconnect) for good from anywhere: a connect in progress is cancelled, a pending backoff timer is
/// dropped, an established connection is torn down, and every later `poll_ready` fails with
/// [`Closed`](connman_core::error::Closed).
#[derive(Debug, Clone)]
pub struct CloseHandle(CancellationToken);

impl CloseHandle {
    pub(crate) fn from_token(token: CancellationToken) -> Self {
        Self(token)
    }

    /// Closes the link. Idempotent.
    pub fn close(&self) {
        self.0.cancel();
    }

    /// Whether the link was closed through this handle.
    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl Disconnect for CloseHandle {
    fn disconnect(&self) {
        self.close();
    }
}

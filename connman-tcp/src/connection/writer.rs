//! The [`Writer`]: writes straight to the current socket of a [`Connection`](crate::Connection).

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

/// Writes to the current socket of a supervised connection.
///
/// There is no queue: each write goes straight to the socket that is up now, and waits only for the socket to take the
/// bytes. A `Writer` outlives reconnects: after a reconnect the same `Writer` (and every clone) writes to the new
/// socket, as connman reuses its socket object. While the link is down a write fails at once with
/// [`WriteError::is_not_connected`]; after the connection closed for good, with [`WriteError::is_closed`]. Clones are
/// cheap and share the socket; concurrent writes are serialised, each `write_all` whole.
///
/// A failed write drops the link: the connection reports it lost and reconnects.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Writes all of `data` to the current socket.
    ///
    /// # Errors
    ///
    /// [`WriteError`]: not connected, closed, or the I/O error that broke the link.
    pub async fn write_all(&self, data: &[u8]) -> Result<(), WriteError> {
        self.with_link(Op::Write(data)).await
    }

    /// Flushes the current socket.
    ///
    /// # Errors
    ///
    /// As [`Writer::write_all`].
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.with_link(Op::Flush).await
    }

    /// Half-closes the current socket: sends FIN and writes no more on this link.
    ///
    /// The connection stays supervised. When the peer then closes its side, that is the loss of an established link and
    /// the connection reconnects, as connman treats a user's `socket.end()` (CN-15). To end for good, use
    /// [`Writer::disconnect`] or [`Connection::disconnect`](crate::Connection::disconnect).
    ///
    /// # Errors
    ///
    /// As [`Writer::write_all`].
    pub async fn shutdown(&self) -> Result<(), WriteError> {
        self.with_link(Op::Shutdown).await
    }

    /// Whether a socket is up to write to right now.
    pub fn is_connected(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Asks the connection to close for good, as [`Connection::disconnect`](crate::Connection::disconnect) does.
    ///
    /// Handy from inside a [`Handler`](crate::Handler), which holds a `Writer` but not the connection.
    pub fn disconnect(&self) {
        self.shared.stop.send_replace(true);
    }

    pub(crate) fn new(stop: Arc<watch::Sender<bool>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot::Down),
                up: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                lost: Notify::new(),
                stop,
            }),
        }
    }

    /// Makes `io` the socket to write to.
    pub(crate) async fn install(
        &self,
        io: Box<dyn AsyncWrite + Send + Unpin>,
        cancel: CancellationToken,
    ) {
        let mut slot = self.shared.slot.lock().await;
        *slot = Slot::Up(Link { io, cancel });
        self.shared.failed.store(false, Ordering::Release);
        self.shared.up.store(true, Ordering::Release);
    }

    /// Resolves when a write failed; the failure is then taken with [`Writer::take_failure`].
    pub(crate) async fn lost(&self) {
        loop {
            if self.shared.failed.load(Ordering::Acquire) {
                return;
            }
            self.shared.lost.notified().await;
        }
    }

    /// The error of a failed write, if one broke the current link.
    pub(crate) async fn take_failure(&self) -> Option<io::Error> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        // Once a write failed, no writer holds the lock for long: each sees the failure and returns at once.
        let mut slot = self.shared.slot.lock().await;
        self.shared.failed.store(false, Ordering::Release);
        match std::mem::replace(&mut *slot, Slot::Down) {
            Slot::Failed(e) => Some(e),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Takes the socket away: writes in progress are cancelled first so the lock is free. With `graceful`, the socket
    /// gets a FIN (bounded by a short timeout) before it is dropped. With `closed`, later writes fail as closed.
    pub(crate) async fn clear(&self, cancel: &CancellationToken, graceful: bool, closed: bool) {
        self.shared.up.store(false, Ordering::Release);
        cancel.cancel();
        let mut slot = self.shared.slot.lock().await;
        let next = if closed { Slot::Closed } else { Slot::Down };
        if let Slot::Up(mut link) = std::mem::replace(&mut *slot, next)
            && graceful
        {
            // A peer that stops reading must not hold a close up: the FIN is best effort.
            let _ = tokio::time::timeout(GRACEFUL_SHUTDOWN, link.io.shutdown()).await;
        }
        self.shared.failed.store(false, Ordering::Release);
    }

    /// Marks the connection closed for good.
    pub(crate) async fn close(&self) {
        self.shared.up.store(false, Ordering::Release);
        *self.shared.slot.lock().await = Slot::Closed;
    }

    /// Closes without waiting, for a supervisor that goes away: the slot is closed if it is free. (A link still in it
    /// had its token cancelled by the supervisor's drop guard, so every write on it fails at once.)
    pub(crate) fn abandon(&self) {
        self.shared.up.store(false, Ordering::Release);
        if let Ok(mut slot) = self.shared.slot.try_lock() {
            *slot = Slot::Closed;
        }
    }

    async fn with_link(&self, op: Op<'_>) -> Result<(), WriteError> {
        let mut slot = self.shared.slot.lock().await;
        let link = match &mut *slot {
            Slot::Up(link) => link,
            Slot::Closed => return Err(WriteError::new(WriteErrorKind::Closed, None)),
            Slot::Down | Slot::Failed(_) => {
                return Err(WriteError::new(WriteErrorKind::NotConnected, None));
            }
        };
        let cancel = link.cancel.clone();
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(WriteError::new(WriteErrorKind::NotConnected, None)),
            result = op.run(&mut link.io) => result,
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = WriteError::new(WriteErrorKind::Io, Some(clone_io(&e)));
                tracing::debug!(error = %e, "write failed; dropping the link");
                *slot = Slot::Failed(e);
                self.shared.up.store(false, Ordering::Release);
                self.shared.failed.store(true, Ordering::Release);
                self.shared.lost.notify_one();
                Err(err)
            }
        }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteErrorKind {
    /// No socket is up right now; the connection is connecting or backing off.
    NotConnected,
    /// The connection is closed for good.
    Closed,
    /// The socket failed; the link is dropped and the connection reconnects.
    Io,
}

/// A write through a [`Writer`] failed.
#[derive(Debug)]
pub struct WriteError {
    kind: WriteErrorKind,
    source: Option<io::Error>,
}

impl WriteError {
    /// Why the write failed.
    pub const fn kind(&self) -> WriteErrorKind {
        self.kind
    }

    /// Whether no socket was up: connecting or backing off.
    pub const fn is_not_connected(&self) -> bool {
        matches!(self.kind, WriteErrorKind::NotConnected)
    }

    /// Whether the connection is closed for good.
    pub const fn is_closed(&self) -> bool {
        matches!(self.kind, WriteErrorKind::Closed)
    }

    /// Whether the socket itself failed.
    pub const fn is_io(&self) -> bool {
        matches!(self.kind, WriteErrorKind::Io)
    }

    const fn new(kind: WriteErrorKind, source: Option<io::Error>) -> Self {
        Self { kind, source }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            WriteErrorKind::NotConnected => "not connected",
            WriteErrorKind::Closed => "connection closed",
            WriteErrorKind::Io => "write failed",
        })
    }
}

impl Error for WriteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn Error + 'static))
    }
}

/// How long a controlled close waits for the FIN to go out.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(1);

struct Shared {
    slot: Mutex<Slot>,
    /// Mirrors `Slot::Up` for the lock-free [`Writer::is_connected`].
    up: AtomicBool,
    /// Set when a write failed and the supervisor has not taken the failure yet.
    failed: AtomicBool,
    lost: Notify,
    stop: Arc<watch::Sender<bool>>,
}

/// One operation on the socket, run under the slot lock.
enum Op<'a> {
    Write(&'a [u8]),
    Flush,
    Shutdown,
}

impl Op<'_> {
    async fn run(self, io: &mut Box<dyn AsyncWrite + Send + Unpin>) -> io::Result<()> {
        match self {
            Op::Write(data) => io.write_all(data).await,
            Op::Flush => io.flush().await,
            Op::Shutdown => io.shutdown().await,
        }
    }
}

enum Slot {
    Down,
    Up(Link),
    Failed(io::Error),
    Closed,
}

struct Link {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    /// Cancelled when the link is torn down, so a write stuck on a peer that stopped reading lets go.
    cancel: CancellationToken,
}

/// `io::Error` is not `Clone`; keep its kind and message for the caller while the original goes to the supervisor.
fn clone_io(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

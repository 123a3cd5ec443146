//! The [`Handler`]: what a [`Connection`](crate::Connection) calls as things happen.

use bytes::Bytes;
use connman_core::Event;

use super::Writer;

/// Callbacks of a supervised connection, the connman handler done right. Every method has a default that does nothing.
///
/// The callbacks run on the connection's task, one at a time and in order, so a handler needs no locking of its own.
/// They are plain functions: to write from one, spawn a task with the [`Writer`] (it is cheap to clone). A callback that
/// blocks holds up reading; keep them short. A callback that panics ends the connection's task: the socket is dropped
/// and [`Connection::closed`](crate::Connection::closed) resolves with `CloseReason::Fatal`.
///
/// For a connection that comes up, drops, comes back and is then disconnected, the calls are:
///
/// ```text
/// on_event(Connecting) on_event(Connected{first}) on_connect(writer) on_data(..)…
/// on_event(Disconnected) on_reset()                    // the established link was lost
/// on_event(Connecting) on_event(ConnectFailed)…          // failed attempts are events, not resets (CN-05)
/// on_event(Connected) on_reconnect() on_data(..)…
/// on_event(Closed) on_close()                          // disconnect(): no on_reset (CN-14)
/// ```
pub trait Handler: Send + 'static {
    /// The first connection came up; called exactly once. The [`Writer`] stays valid across reconnects.
    fn on_connect(&mut self, writer: Writer) {
        let _ = writer;
    }

    /// A later connection came up (after [`Handler::on_reset`]).
    fn on_reconnect(&mut self) {}

    /// An established link was lost; a reconnect follows unless the backoff gives up.
    ///
    /// Not called for failed connect attempts (those are [`Event::ConnectFailed`]) nor for a controlled disconnect.
    fn on_reset(&mut self) {}

    /// A chunk of bytes arrived, as read from the socket: no framing (CN-07).
    fn on_data(&mut self, data: Bytes) {
        let _ = data;
    }

    /// Every lifecycle event, before the matching specific callback.
    fn on_event(&mut self, event: &Event) {
        let _ = event;
    }

    /// The connection closed for good; called exactly once, last.
    fn on_close(&mut self) {}
}

/// A handler that ignores everything, for connections driven only through the [`Writer`] and events.
impl Handler for () {}

//! Supervised connections that can be told to stop for good.
//!
//! [`Disconnect`] is the one thing a named pool needs from its members: a way to end a supervised connection so that
//! it never reconnects. It is runtime-free, so any connection type (a TCP `Connection`, a WebSocket, a test double)
//! can implement it.
//!
//! ```
//! use connman_core::supervise::Disconnect;
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! #[derive(Default)]
//! struct Flag(AtomicBool);
//!
//! impl Disconnect for Flag {
//!     fn disconnect(&self) {
//!         self.0.store(true, Ordering::SeqCst);
//!     }
//! }
//!
//! let conn = std::sync::Arc::new(Flag::default());
//! conn.disconnect();
//! assert!(conn.0.load(Ordering::SeqCst));
//! ```

use std::sync::Arc;

/// A supervised connection that can be told to stop for good.
///
/// After `disconnect` the connection closes (or, while connecting or backing off, never comes up) and never
/// reconnects. Calling it again does nothing: implementations must be idempotent.
pub trait Disconnect {
    /// Stops the connection for good.
    fn disconnect(&self);
}

impl<T: Disconnect + ?Sized> Disconnect for &T {
    fn disconnect(&self) {
        (**self).disconnect()
    }
}

impl<T: Disconnect + ?Sized> Disconnect for Box<T> {
    fn disconnect(&self) {
        (**self).disconnect()
    }
}

impl<T: Disconnect + ?Sized> Disconnect for Arc<T> {
    fn disconnect(&self) {
        (**self).disconnect()
    }
}

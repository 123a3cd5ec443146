//! How to connect: any [`Service`] from a target to a connection.
//!
//! [`Transport`] is a sealed alias: users implement plain `tower_service::Service<Target>` and get `Transport` for free,
//! as with tower's `MakeConnection`. The connection type is left open (no runtime here), so a TCP stream, a TLS
//! stream, an in-memory duplex or a WebSocket all qualify.
//!
//! ```
//! use connman_core::transport::Transport;
//! use std::future::{Ready, ready};
//! use std::task::{Context, Poll};
//!
//! /// Connects to nothing: hands out the target back as the "connection".
//! struct Echo;
//!
//! impl tower_service::Service<u16> for Echo {
//!     type Response = u16;
//!     type Error = std::io::Error;
//!     type Future = Ready<Result<u16, std::io::Error>>;
//!     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, port: u16) -> Self::Future {
//!         ready(Ok(port))
//!     }
//! }
//!
//! fn connects<T: Transport<u16>>(_: &T) {}
//! connects(&Echo);
//! ```

use std::future::Future;
use std::task::{Context, Poll};

use tower_service::Service;

/// Something that connects to a `Target` and yields a connection. Implemented for every matching [`Service`].
pub trait Transport<Target>: sealed::Sealed<Target> {
    /// The connection it yields.
    type Connection;
    /// Why a connect failed.
    type Error;
    /// The connect in flight.
    type Future: Future<Output = Result<Self::Connection, Self::Error>>;

    /// Whether a connect can start now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// Starts connecting to `target`.
    fn connect(&mut self, target: Target) -> Self::Future;
}

impl<S, Target> Transport<Target> for S
where
    S: Service<Target>,
{
    type Connection = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(self, cx)
    }

    fn connect(&mut self, target: Target) -> Self::Future {
        Service::call(self, target)
    }
}

mod sealed {
    pub trait Sealed<T> {}

    impl<S, T> Sealed<T> for S where S: tower_service::Service<T> {}
}

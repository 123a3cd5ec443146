//! The on-up hook: what runs on each new connection before it is considered up.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};

use connman_core::error::BoxError;

/// Runs on each new connection before it serves requests: re-authenticate, resubscribe (upnode's
/// `conn.emit('up', obj)`, UP-05).
///
/// What the hook yields is what requests are served through. A hook failure counts as a failed connect attempt.
/// The hook talks to the connection it is given, never to a [`Queue`](crate::queue::Queue) above: the queue is
/// driving the hook at that moment, so a request through it would wait for itself.
/// Implemented for every `FnMut(S) -> impl Future<Output = Result<S2, E>>`, and by [`Identity`], the default.
pub trait OnUp<S> {
    /// The service that requests go through once the hook is done.
    type Service;
    /// Why the hook failed.
    type Error: Into<BoxError>;
    /// The hook in progress.
    type Future: Future<Output = Result<Self::Service, Self::Error>>;

    /// Starts the hook on a fresh connection.
    fn on_up(&mut self, conn: S) -> Self::Future;
}

/// The default hook: the connection is up as soon as it is made (upnode's default `conn.emit('up', remote)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<S> OnUp<S> for Identity {
    type Service = S;
    type Error = Infallible;
    type Future = Ready<Result<S, Infallible>>;

    fn on_up(&mut self, conn: S) -> Self::Future {
        ready(Ok(conn))
    }
}

impl<S, S2, E, F, Fut> OnUp<S> for F
where
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Result<S2, E>>,
    E: Into<BoxError>,
{
    type Service = S2;
    type Error = E;
    type Future = Fut;

    fn on_up(&mut self, conn: S) -> Self::Future {
        self(conn)
    }
}

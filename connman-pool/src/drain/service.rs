//! The service that rejects new work once draining has begun.

use std::task::{Context, Poll};

use connman_core::error::{BoxError, Draining as DrainingError};
use tower_service::Service;

use super::{DrainSignal, ResponseFuture};

/// Passes requests to the inner service until draining begins, then fails new ones with
/// [`Draining`](connman_core::error::Draining). Requests already passed on complete normally.
///
/// The check is made in `call`, so a request that was admitted by `poll_ready` before the drain is still rejected if
/// the drain begins before its `call`.
#[derive(Debug, Clone)]
pub struct Draining<S> {
    inner: S,
    signal: DrainSignal,
}

impl<S> Draining<S> {
    /// Wraps `inner`, rejecting new work once `signal` fires.
    pub fn new(inner: S, signal: DrainSignal) -> Self {
        Self { inner, signal }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for Draining<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if self.signal.is_draining() {
            ResponseFuture::rejected(DrainingError::new())
        } else {
            ResponseFuture::new(self.inner.call(req))
        }
    }
}

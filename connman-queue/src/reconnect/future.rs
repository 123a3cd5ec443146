//! The response future of [`Reconnect`](super::Reconnect).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use connman_core::error::BoxError;
use pin_project::pin_project;

use super::barrier::OpenCall;

/// The response of a request sent through [`Reconnect`](super::Reconnect).
#[pin_project(project = Proj)]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: Inner<F>,
    /// Counts this call among its connection's open calls until the future is dropped: the
    /// [replay barrier](super::barrier).
    call: Option<OpenCall>,
}

#[pin_project(project = InnerProj)]
#[derive(Debug)]
enum Inner<F> {
    Called(#[pin] F),
    Failed(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(fut: F, call: OpenCall) -> Self {
        Self {
            inner: Inner::Called(fut),
            call: Some(call),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            inner: Inner::Failed(Some(error)),
            call: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Called(fut) => fut.poll(cx).map_err(Into::into),
            InnerProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| connman_core::error::Closed::new().into()))),
        }
    }
}

//! The response future of [`Reconnect`](super::Reconnect).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use connman_core::error::BoxError;
use pin_project::pin_project;

/// The response of a request sent through [`Reconnect`](super::Reconnect).
#[pin_project(project = Proj)]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: Inner<F>,
}

#[pin_project(project = InnerProj)]
#[derive(Debug)]
enum Inner<F> {
    Called(#[pin] F),
    Failed(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(fut: F) -> Self {
        Self {
            inner: Inner::Called(fut),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            inner: Inner::Failed(Some(error)),
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

//! The response future of [`Draining`](super::Draining).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use connman_core::error::{BoxError, Draining as DrainingError};
use pin_project::pin_project;

/// The inner service's response, or the [`Draining`](connman_core::error::Draining) rejection.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Called(#[pin] F),
    Rejected(Option<DrainingError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(fut: F) -> Self {
        Self {
            state: State::Called(fut),
        }
    }

    pub(crate) fn rejected(err: DrainingError) -> Self {
        Self {
            state: State::Rejected(Some(err)),
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
        match self.project().state.project() {
            StateProj::Called(fut) => fut.poll(cx).map_err(Into::into),
            StateProj::Rejected(err) => Poll::Ready(Err(err.take().unwrap_or_default().into())),
        }
    }
}

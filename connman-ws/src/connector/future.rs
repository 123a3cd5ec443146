use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use connman_core::error::BoxError;

use crate::stream::WsStream;

/// A connect and handshake in flight; resolves to the established [`WsStream`].
///
/// It is boxed: a connect happens once per connection, never per message.
#[must_use = "futures do nothing unless polled"]
pub struct WsConnectFuture<IO> {
    inner: Pin<Box<dyn Future<Output = Result<WsStream<IO>, BoxError>> + Send>>,
}

impl<IO> WsConnectFuture<IO> {
    pub(crate) fn new(
        inner: impl Future<Output = Result<WsStream<IO>, BoxError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl<IO> Future for WsConnectFuture<IO> {
    type Output = Result<WsStream<IO>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<IO> fmt::Debug for WsConnectFuture<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnectFuture").finish_non_exhaustive()
    }
}

//! A pipelined client: a [`Service`] with in-order responses over a framed stream.
//!
//! A [`Pipeline`] owns nothing but a channel: a background task owns the [`Framed`](tokio_util::codec::Framed) stream, writes requests in the
//! order they were called, and matches each frame that comes back to the oldest request still waiting (FIFO
//! correlation, as Redis or memcached clients do). At most `max_in_flight` requests are between `call` and their
//! response; past that, [`Service::poll_ready`] is pending.
//!
//! Every request gets exactly one outcome:
//!
//! * its response;
//! * [`NotSent`] when no byte of it reached the socket (safe to retry), including when its encoding failed;
//! * [`MaybeDelivered`] when it was written, in part or whole, and then the link was lost or the peer misbehaved.
//!
//! A decode error, a frame over the codec's limit or a response nobody asked for closes that connection with a typed
//! [`PipelineError`] and fails the requests as above; nothing hangs. Once the connection is dead,
//! [`Service::poll_ready`] returns the `PipelineError`: the service is spent, and a `Reconnect` layer (connman-queue)
//! makes a new one with a [`PipelineConnector`]. When every handle is dropped and no caller waits for a response, the
//! task closes the connection.
//!
//! ```
//! use connman_tcp::pipeline::Pipeline;
//! use tokio_util::codec::LinesCodec;
//! use tower_service::Service;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An in-memory peer that answers each line with its upper-case form.
//! let (client, server) = tokio::io::duplex(1024);
//! tokio::spawn(async move {
//!     use futures_util::{SinkExt, StreamExt};
//!     let mut lines = tokio_util::codec::Framed::new(server, LinesCodec::new());
//!     while let Some(Ok(line)) = lines.next().await {
//!         let _ = lines.send(line.to_uppercase()).await;
//!     }
//! });
//!
//! let mut pipeline: Pipeline<String, String> =
//!     Pipeline::new(client, LinesCodec::new_with_max_length(1024));
//! std::future::poll_fn(|cx| pipeline.poll_ready(cx)).await?;
//! let a = pipeline.call("hello".to_string());
//! std::future::poll_fn(|cx| pipeline.poll_ready(cx)).await?;
//! let b = pipeline.call("world".to_string());
//! assert_eq!(a.await?, "HELLO");
//! assert_eq!(b.await?, "WORLD");
//! # Ok(())
//! # }
//! ```

mod connector;
mod driver;
mod error;

pub use connector::{ConnectPipeline, PipelineConnector};
pub use error::{PipelineError, PipelineErrorKind};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use connman_core::error::{BoxError, MaybeDelivered, NotSent};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

/// How many requests may be in flight by default: 100, the least number of concurrent streams HTTP/2 recommends a peer
/// allow (RFC 9113, section 6.5.2).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 100;

/// A pipelined client over one framed connection. See the [module docs](self).
///
/// `Req` is what the codec encodes, `Resp` what it decodes. Clones share the connection and its in-flight limit; as
/// with every tower service, a clone is not ready until its own `poll_ready` says so.
pub struct Pipeline<Req, Resp> {
    tx: mpsc::Sender<Request<Req, Resp>>,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    failure: Arc<OnceLock<PipelineError>>,
}

impl<Req, Resp> Pipeline<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Spawns the task that owns `io` framed by `codec`, with [`DEFAULT_MAX_IN_FLIGHT`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    pub fn new<T, C>(io: T, codec: C) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
        C: Encoder<Req> + Decoder<Item = Resp> + Send + Unpin + 'static,
        <C as Encoder<Req>>::Error: Into<BoxError>,
        <C as Decoder>::Error: Into<BoxError>,
    {
        Self::with_max_in_flight(io, codec, DEFAULT_MAX_IN_FLIGHT)
    }

    /// As [`Pipeline::new`], with at most `max_in_flight` requests in flight (at least 1).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    pub fn with_max_in_flight<T, C>(io: T, codec: C, max_in_flight: usize) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
        C: Encoder<Req> + Decoder<Item = Resp> + Send + Unpin + 'static,
        <C as Encoder<Req>>::Error: Into<BoxError>,
        <C as Decoder>::Error: Into<BoxError>,
    {
        let max = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let semaphore = Arc::new(Semaphore::new(max));
        // Every request in the channel holds a permit, so the channel never holds more than `max`.
        let (tx, rx) = mpsc::channel(max);
        let failure = Arc::new(OnceLock::new());
        let driver = driver::Driver::new(io, codec, rx, semaphore.clone(), failure.clone());
        tokio::spawn(driver.run());
        Self {
            tx,
            semaphore: PollSemaphore::new(semaphore),
            permit: None,
            failure,
        }
    }
}

impl<Req, Resp> Pipeline<Req, Resp> {
    /// Why the connection died, once it has.
    pub fn failure(&self) -> Option<&PipelineError> {
        self.failure.get()
    }

    fn dead(&self) -> PipelineError {
        self.failure
            .get()
            .cloned()
            .unwrap_or_else(PipelineError::closed)
    }
}

impl<Req, Resp> Service<Req> for Pipeline<Req, Resp> {
    type Response = Resp;
    type Error = BoxError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(failure) = self.failure.get() {
            self.permit = None;
            return Poll::Ready(Err(failure.clone().into()));
        }
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.semaphore.poll_acquire(cx)) {
            Some(permit) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            // The driver closes the semaphore when the connection dies.
            None => Poll::Ready(Err(self.dead().into())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(permit) = self.permit.take() else {
            // The caller skipped `poll_ready`: refuse without writing rather than exceed the limit.
            return ResponseFuture::failed(NotSent::with_source(PipelineError::not_ready()).into());
        };
        let (reply, rx) = oneshot::channel();
        let request = Request { req, reply, permit };
        match self.tx.try_send(request) {
            Ok(()) => ResponseFuture::waiting(rx),
            Err(_) => ResponseFuture::failed(NotSent::with_source(self.dead()).into()),
        }
    }
}

impl<Req, Resp> Clone for Pipeline<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
            failure: self.failure.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for Pipeline<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("ready", &self.permit.is_some())
            .field("failure", &self.failure.get())
            .finish_non_exhaustive()
    }
}

/// The response to one request of a [`Pipeline`].
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<Resp> {
    state: ResponseState<Resp>,
}

enum ResponseState<Resp> {
    Waiting(oneshot::Receiver<Result<Resp, BoxError>>),
    Failed(Option<BoxError>),
}

impl<Resp> ResponseFuture<Resp> {
    fn waiting(rx: oneshot::Receiver<Result<Resp, BoxError>>) -> Self {
        Self {
            state: ResponseState::Waiting(rx),
        }
    }

    fn failed(error: BoxError) -> Self {
        Self {
            state: ResponseState::Failed(Some(error)),
        }
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both states are `Unpin`: no projection needed.
        let this = self.get_mut();
        match &mut this.state {
            ResponseState::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(outcome) => outcome,
                // The driver answers every request before it lets go; only a runtime shutting down drops one unanswered,
                // and then whether it was written is unknown.
                Err(_) => Err(MaybeDelivered::with_source(PipelineError::closed()).into()),
            }),
            ResponseState::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| PipelineError::closed().into()))),
        }
    }
}

impl<Resp> fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ResponseState::Waiting(_) => "waiting",
            ResponseState::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// A request on its way to the driver, with where to answer and its share of the in-flight limit.
struct Request<Req, Resp> {
    req: Req,
    reply: oneshot::Sender<Result<Resp, BoxError>>,
    permit: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests;

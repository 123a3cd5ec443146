//! [`PipelineConnector`]: connects with any transport and hands out a fresh [`Pipeline`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use connman_core::error::BoxError;
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};
use tower_service::Service;

use super::{DEFAULT_MAX_IN_FLIGHT, Pipeline};

/// A `Service<Target>` (a make-service) that connects with `C` and frames each new connection with a clone of the
/// codec, yielding a fresh [`Pipeline`]. Wrap it in a `Reconnect` layer to get a client that survives lost links.
///
/// `Req` is the request type the pipelines take; name it where the compiler cannot infer it.
///
/// ```
/// use connman_tcp::TcpConnector;
/// use connman_tcp::pipeline::PipelineConnector;
/// use tokio_util::codec::LinesCodec;
///
/// let make: PipelineConnector<_, _, String> =
///     PipelineConnector::new(TcpConnector::new(), LinesCodec::new_with_max_length(64 * 1024));
/// # let _ = make;
/// ```
pub struct PipelineConnector<C, Codec, Req> {
    connector: C,
    codec: Codec,
    max_in_flight: usize,
    _req: PhantomData<fn(Req)>,
}

impl<C, Codec, Req> PipelineConnector<C, Codec, Req> {
    /// Connects with `connector`, frames with clones of `codec`, allows [`DEFAULT_MAX_IN_FLIGHT`] requests in flight.
    pub const fn new(connector: C, codec: Codec) -> Self {
        Self {
            connector,
            codec,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            _req: PhantomData,
        }
    }

    /// Sets how many requests each pipeline lets be in flight (at least 1).
    #[must_use]
    pub const fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// The connector.
    pub const fn get_ref(&self) -> &C {
        &self.connector
    }

    /// The connector, mutably.
    pub const fn get_mut(&mut self) -> &mut C {
        &mut self.connector
    }

    /// The connector, unwrapped.
    pub fn into_inner(self) -> C {
        self.connector
    }
}

impl<C, Codec, Req, Target> Service<Target> for PipelineConnector<C, Codec, Req>
where
    C: Service<Target>,
    C::Response: AsyncRead + AsyncWrite + Send + 'static,
    C::Error: Into<BoxError>,
    Codec: Encoder<Req> + Decoder + Clone + Send + Unpin + 'static,
    <Codec as Encoder<Req>>::Error: Into<BoxError>,
    <Codec as Decoder>::Error: Into<BoxError>,
    <Codec as Decoder>::Item: Send + 'static,
    Req: Send + 'static,
{
    type Response = Pipeline<Req, <Codec as Decoder>::Item>;
    type Error = BoxError;
    type Future = ConnectPipeline<C::Future, Codec, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Target) -> Self::Future {
        ConnectPipeline {
            connect: self.connector.call(target),
            codec: Some(self.codec.clone()),
            max_in_flight: self.max_in_flight,
            _req: PhantomData,
        }
    }
}

impl<C: Clone, Codec: Clone, Req> Clone for PipelineConnector<C, Codec, Req> {
    fn clone(&self) -> Self {
        Self {
            connector: self.connector.clone(),
            codec: self.codec.clone(),
            max_in_flight: self.max_in_flight,
            _req: PhantomData,
        }
    }
}

impl<C: fmt::Debug, Codec: fmt::Debug, Req> fmt::Debug for PipelineConnector<C, Codec, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineConnector")
            .field("connector", &self.connector)
            .field("codec", &self.codec)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// The connect in flight of a [`PipelineConnector`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ConnectPipeline<F, Codec, Req> {
    #[pin]
    connect: F,
    codec: Option<Codec>,
    max_in_flight: usize,
    _req: PhantomData<fn(Req)>,
}

impl<F, IO, E, Codec, Req> Future for ConnectPipeline<F, Codec, Req>
where
    F: Future<Output = Result<IO, E>>,
    E: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Send + 'static,
    Codec: Encoder<Req> + Decoder + Send + Unpin + 'static,
    <Codec as Encoder<Req>>::Error: Into<BoxError>,
    <Codec as Decoder>::Error: Into<BoxError>,
    <Codec as Decoder>::Item: Send + 'static,
    Req: Send + 'static,
{
    type Output = Result<Pipeline<Req, <Codec as Decoder>::Item>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let io = ready!(this.connect.poll(cx)).map_err(Into::into)?;
        let Some(codec) = this.codec.take() else {
            return Poll::Ready(Err(super::PipelineError::closed().into()));
        };
        Poll::Ready(Ok(Pipeline::with_max_in_flight(
            io,
            codec,
            *this.max_in_flight,
        )))
    }
}

impl<F, Codec, Req> fmt::Debug for ConnectPipeline<F, Codec, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectPipeline").finish_non_exhaustive()
    }
}

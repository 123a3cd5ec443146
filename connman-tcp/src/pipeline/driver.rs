//! The task that owns a pipelined connection: it writes requests, matches responses, and fails what is left when the
//! connection dies.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::BytesMut;
use connman_core::error::{BoxError, MaybeDelivered, NotSent};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::{PipelineError, PipelineErrorKind, Request};

pub(super) struct Driver<T, C, Req, Resp> {
    framed: Framed<Pin<Box<T>>, CompleteFrames<C>>,
    rx: mpsc::Receiver<Request<Req, Resp>>,
    rx_open: bool,
    in_flight: VecDeque<InFlight<Resp>>,
    /// Bytes ever encoded into the write buffer; what is still buffered was not written yet.
    encoded: u64,
    semaphore: Arc<Semaphore>,
    failure: Arc<OnceLock<PipelineError>>,
}

/// A request handed to the codec, waiting for its response.
struct InFlight<Resp> {
    reply: oneshot::Sender<Result<Resp, BoxError>>,
    /// Where its bytes start in the stream of everything encoded.
    start: u64,
    _permit: OwnedSemaphorePermit,
}

impl<T, C, Req, Resp> Driver<T, C, Req, Resp>
where
    T: AsyncRead + AsyncWrite,
    C: Encoder<Req> + Decoder<Item = Resp> + Unpin,
    <C as Encoder<Req>>::Error: Into<BoxError>,
    <C as Decoder>::Error: Into<BoxError>,
{
    pub(super) fn new(
        io: T,
        codec: C,
        rx: mpsc::Receiver<Request<Req, Resp>>,
        semaphore: Arc<Semaphore>,
        failure: Arc<OnceLock<PipelineError>>,
    ) -> Self {
        Self {
            framed: Framed::new(Box::pin(io), CompleteFrames(codec)),
            rx,
            rx_open: true,
            in_flight: VecDeque::new(),
            encoded: 0,
            semaphore,
            failure,
        }
    }

    pub(super) async fn run(mut self) {
        let outcome = poll_fn(|cx| self.poll_drive(cx)).await;
        match outcome {
            Ok(()) => tracing::debug!("pipeline finished"),
            Err(error) => {
                tracing::debug!(%error, kind = ?error.kind(), "pipeline connection died");
                self.fail(error);
            }
        }
    }

    /// Drives reads, writes and flushes; ready once every handle is gone and every request answered, or on failure.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        // Read every response available.
        loop {
            match Pin::new(&mut self.framed).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => match self.in_flight.pop_front() {
                    // A caller that gave up has dropped its receiver; the response is discarded.
                    Some(waiting) => {
                        let _ = waiting.reply.send(Ok(frame));
                    }
                    None => {
                        return Poll::Ready(Err(PipelineError::new(
                            PipelineErrorKind::Unsolicited,
                            None,
                        )));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(PipelineError::from_decode(e.into())));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(PipelineError::new(PipelineErrorKind::LinkLost, None)));
                }
                Poll::Pending => break,
            }
        }
        // Encode every request waiting, as long as the write buffer has room.
        while self.rx_open {
            match Sink::<Req>::poll_ready(Pin::new(&mut self.framed), cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(link_lost(e.into()))),
                Poll::Pending => break,
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(request)) => self.encode(request),
                Poll::Ready(None) => self.rx_open = false,
                Poll::Pending => break,
            }
        }
        // Write out what was encoded.
        if !self.framed.write_buffer().is_empty() {
            match Sink::<Req>::poll_flush(Pin::new(&mut self.framed), cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(link_lost(e.into()))),
            }
        }
        if !self.rx_open && self.nobody_waits(cx) {
            // Every handle is gone and no caller waits for an answer: close politely. A failed close loses nothing.
            let _ = std::task::ready!(Sink::<Req>::poll_close(Pin::new(&mut self.framed), cx));
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Whether every request in flight was answered or given up by its caller; registers for the give-ups otherwise.
    fn nobody_waits(&mut self, cx: &mut Context<'_>) -> bool {
        let mut nobody = true;
        for waiting in &mut self.in_flight {
            nobody &= waiting.reply.poll_closed(cx).is_ready();
        }
        nobody
    }

    fn encode(&mut self, request: Request<Req, Resp>) {
        let Request { req, reply, permit } = request;
        if reply.is_closed() {
            // Its caller gave up before a byte was written: it is never sent.
            return;
        }
        let before = self.framed.write_buffer().len();
        match Pin::new(&mut self.framed).start_send(req) {
            Ok(()) => {
                let after = self.framed.write_buffer().len();
                let start = self.encoded;
                self.encoded += after.saturating_sub(before) as u64;
                self.in_flight.push_back(InFlight {
                    reply,
                    start,
                    _permit: permit,
                });
            }
            Err(e) => {
                // Whatever the codec managed to put in the buffer goes: the stream stays whole for the others.
                self.framed.write_buffer_mut().truncate(before);
                let error = PipelineError::new(PipelineErrorKind::Encode, Some(e.into()));
                let _ = reply.send(Err(NotSent::with_source(error).into()));
            }
        }
    }

    /// Fails every request left: written ones (in part or whole) as maybe delivered, the others as not sent.
    fn fail(&mut self, error: PipelineError) {
        let _ = self.failure.set(error.clone());
        self.semaphore.close();
        self.rx.close();
        let written = self.encoded - self.framed.write_buffer().len() as u64;
        for waiting in self.in_flight.drain(..) {
            let outcome: BoxError = if waiting.start < written {
                MaybeDelivered::with_source(error.clone()).into()
            } else {
                NotSent::with_source(error.clone()).into()
            };
            let _ = waiting.reply.send(Err(outcome));
        }
        while let Ok(request) = self.rx.try_recv() {
            let _ = request
                .reply
                .send(Err(NotSent::with_source(error.clone()).into()));
        }
    }
}

fn link_lost(source: BoxError) -> PipelineError {
    PipelineError::new(PipelineErrorKind::LinkLost, Some(source))
}

/// A codec that yields only whole frames: bytes left over when the stream ends are an error, not a last frame.
///
/// Some codecs (`LinesCodec`, `AnyDelimiterCodec`) hand out whatever is left at the end of the stream as a final
/// frame. For a request/response protocol that would answer a caller with a response cut short by a lost link, as if
/// it were whole; here it fails the connection as a lost link instead.
pub(super) struct CompleteFrames<C>(pub(super) C);

impl<C: Decoder> Decoder for CompleteFrames<C> {
    type Item = C::Item;
    type Error = C::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        self.0.decode(buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        match self.0.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "frame cut short by the end of the stream",
            )
            .into()),
        }
    }
}

impl<C: Encoder<Req>, Req> Encoder<Req> for CompleteFrames<C> {
    type Error = C::Error;

    fn encode(&mut self, item: Req, dst: &mut BytesMut) -> Result<(), C::Error> {
        self.0.encode(item, dst)
    }
}

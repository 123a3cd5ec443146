//! An established WebSocket connection, whole or split into a [`Member`] half and a receive half.

use connman_core::rt::tokio::later;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, Closed, LinkLost, Overloaded};
use connman_core::member::{CloseCode, Member};
use futures_core::Stream;
use futures_sink::Sink;
use futures_util::future::poll_fn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::config::{MessageKind, WsConfig};
use crate::error::{InvalidUtf8, MessageTooBig, PongTimeout, ProtocolViolation, close_code_for};
use crate::watch::Watched;

/// What the receive half yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A text message (valid UTF-8, checked by tungstenite).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// The peer's close frame, if it carried one. A reply to it has been queued; the stream ends after it.
    Close(Option<PeerClose>),
    /// A pong and its payload; yielded only after [`WsReceiver::yield_pongs`].
    Pong(Bytes),
}

impl Received {
    /// The payload of a message, or `None` for a close.
    pub fn into_bytes(self) -> Option<Bytes> {
        match self {
            Self::Text(text) => Some(text.into()),
            Self::Binary(bytes) => Some(bytes),
            Self::Close(_) | Self::Pong(_) => None,
        }
    }

    /// The same message to send back, as the same frame kind (an echo); `None` for a close or a pong.
    pub fn into_outgoing(self) -> Option<Outgoing> {
        match self {
            Self::Text(text) => Some(Outgoing::Text(text)),
            Self::Binary(bytes) => Some(Outgoing::Binary(bytes)),
            Self::Close(_) | Self::Pong(_) => None,
        }
    }
}

/// The code and reason of a close frame the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    /// The close code.
    pub code: CloseCode,
    /// The reason, possibly empty.
    pub reason: String,
}

/// A message to send as the frame kind it names, whatever the connection's [`MessageKind`] for [`Bytes`].
///
/// [`WsStream`] and [`WsMember`] are sinks of [`Bytes`], which go out as the configured kind (what a group sends);
/// their [`frames`](WsStream::frames) sink takes `Outgoing`, which goes out as the kind it names, so one connection
/// carries text and binary and an echo of text is text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outgoing {
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl From<Utf8Bytes> for Outgoing {
    fn from(text: Utf8Bytes) -> Self {
        Self::Text(text)
    }
}

impl From<String> for Outgoing {
    fn from(text: String) -> Self {
        Self::Text(text.into())
    }
}

impl From<Bytes> for Outgoing {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

impl From<Outgoing> for Message {
    fn from(msg: Outgoing) -> Self {
        match msg {
            Outgoing::Text(text) => Self::Text(text),
            Outgoing::Binary(bytes) => Self::Binary(bytes),
        }
    }
}

/// An established WebSocket connection: a [`Stream`] of [`Received`] messages and a [`Member`] (a [`Sink`] of
/// [`Bytes`] with a close code), with [`WsStream::frames`] for
/// messages of either frame kind ([`Outgoing`]).
///
/// Pings from the peer are answered while the stream is polled; with a heartbeat configured, the stream pings the peer
/// and closes with 4201 ([`PongTimeout`]) when nothing comes back in time. A message over the size limit closes with
/// 1009 ([`MessageTooBig`]), invalid UTF-8 in a text message with 1007 ([`InvalidUtf8`]), a protocol violation with
/// 1002 ([`ProtocolViolation`]); the error is yielded once the close frame has gone out, and the stream ends.
///
/// [`WsStream::split`] gives the two halves to two owners: the member to a `connman_pool::group::Group`, the
/// receiver to the task that reads.
pub struct WsStream<IO> {
    member: WsMember<IO>,
    receiver: WsReceiver<IO>,
    subprotocol: Option<String>,
}

impl<IO> WsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        ws: WebSocketStream<Watched<IO>>,
        config: &WsConfig,
        subprotocol: Option<String>,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            ws,
            writer_waker: None,
            reader_waker: None,
            ended_waker: None,
            close_sent: false,
            ended: false,
            last_heard: Instant::now(),
        }));
        Self {
            member: WsMember {
                shared: shared.clone(),
                kind: config.message_kind(),
                close: None,
            },
            receiver: WsReceiver::new(shared, config),
            subprotocol,
        }
    }

    /// The subprotocol both sides agreed on in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// A sink of [`Outgoing`] messages, for text and binary frames on one connection; see [`Frames`].
    pub fn frames(&mut self) -> Frames<'_, IO> {
        self.member.frames()
    }

    /// Splits the connection into the half that sends and the half that receives.
    ///
    /// The receive half must be polled for pings to be answered, the heartbeat to run and the close handshake to
    /// finish; the socket is released once both halves are dropped.
    pub fn split(self) -> (WsMember<IO>, WsReceiver<IO>) {
        (self.member, self.receiver)
    }

    /// Sends a close frame with `code` and `reason` and flushes it.
    ///
    /// The peer's answer arrives on the stream as [`Received::Close`].
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        self.member.close(code, reason).await
    }
}

impl<IO> fmt::Debug for WsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsStream")
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

impl<IO> Stream for WsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Received, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().receiver).poll_next(cx)
    }
}

impl<IO> Sink<Bytes> for WsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Error = BoxError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.get_mut().member).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Bytes) -> Result<(), BoxError> {
        Pin::new(&mut self.get_mut().member).start_send(msg)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.get_mut().member).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.get_mut().member).poll_close(cx)
    }
}

impl<IO> Member for WsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn start_close(self: Pin<&mut Self>, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        Pin::new(&mut self.get_mut().member).start_close(code, reason)
    }

    fn poll_ended(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().member).poll_ended(cx)
    }

    fn last_heard(&self) -> Option<std::time::Instant> {
        self.member.last_heard()
    }
}

/// The sending half of a [`WsStream`]: a [`Member`] for a group.
///
/// Each [`Bytes`] message becomes one binary or one text frame, as [`WsConfig::message_kind`] says; an [`Outgoing`]
/// becomes the kind it names. `poll_close` sends the
/// close frame recorded by [`Member::start_close`] (1000 without one) and flushes it. A send after the close, or
/// after the connection ended, fails with [`Closed`]; a socket error with [`LinkLost`]; a full write buffer with
/// [`Overloaded`].
pub struct WsMember<IO> {
    shared: Arc<Mutex<Shared<IO>>>,
    kind: MessageKind,
    close: Option<(CloseCode, String)>,
}

impl<IO> WsMember<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends a close frame with `code` and `reason` and flushes it.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        Pin::new(&mut *self).start_close(code, reason)?;
        poll_fn(|cx| Pin::new(&mut *self).poll_close(cx)).await
    }

    /// Queues a frame of any kind (text or binary, whatever [`WsConfig::message_kind`] says, or a ping), after a
    /// successful [`Sink::poll_ready`]; it goes out with the next flush, as with [`Sink::start_send`].
    ///
    /// A close frame sent this way is not recorded as our close: use [`WsMember::close`] for that.
    pub fn start_send_message(&mut self, msg: Message) -> Result<(), BoxError> {
        let mut shared = lock(&self.shared);
        if shared.close_sent {
            return Err(Closed::new().into());
        }
        Pin::new(&mut shared.ws)
            .start_send(msg)
            .map_err(write_error)
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(
            Pin<&mut WebSocketStream<Watched<IO>>>,
            &mut Context<'_>,
        ) -> Poll<Result<(), WsError>>,
    ) -> Poll<Result<(), BoxError>> {
        let mut shared = lock(&self.shared);
        let poll = op(Pin::new(&mut shared.ws), cx);
        if poll.is_pending() {
            // The receive half may take over the write waker when it flushes a ping; it wakes this one then.
            store_waker(&mut shared.writer_waker, cx.waker());
        }
        poll.map_err(write_error)
    }
}

impl<IO> fmt::Debug for WsMember<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsMember")
            .field("kind", &self.kind)
            .field("close", &self.close)
            .finish_non_exhaustive()
    }
}

impl<IO> Sink<Bytes> for WsMember<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Error = BoxError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let this = self.get_mut();
        if lock(&this.shared).close_sent {
            return Poll::Ready(Err(Closed::new().into()));
        }
        this.poll_write(cx, |ws, cx| ws.poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, msg: Bytes) -> Result<(), BoxError> {
        let msg = match self.kind {
            MessageKind::Binary => Outgoing::Binary(msg),
            MessageKind::Text => {
                Outgoing::Text(Utf8Bytes::try_from(msg).map_err(|_| InvalidUtf8::new())?)
            }
        };
        self.get_mut().start_send_outgoing(msg)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.get_mut().poll_write(cx, |ws, cx| ws.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.get_mut().poll_close_frame(cx)
    }
}

/// A [`Sink`] of [`Outgoing`] over a connection's sending half: each message goes out as the frame kind it names.
/// Made by [`WsMember::frames`] and [`WsStream::frames`].
pub struct Frames<'a, IO> {
    member: &'a mut WsMember<IO>,
}

impl<IO> fmt::Debug for Frames<'_, IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames").finish_non_exhaustive()
    }
}

impl<IO> Sink<Outgoing> for Frames<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Error = BoxError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut *self.get_mut().member).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Outgoing) -> Result<(), BoxError> {
        self.get_mut().member.start_send_outgoing(msg)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut *self.get_mut().member).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut *self.get_mut().member).poll_close(cx)
    }
}

impl<IO> WsMember<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// A sink of [`Outgoing`] messages over this half, for text and binary frames on one connection.
    pub fn frames(&mut self) -> Frames<'_, IO> {
        Frames { member: self }
    }

    fn start_send_outgoing(&mut self, msg: Outgoing) -> Result<(), BoxError> {
        let mut shared = lock(&self.shared);
        if shared.close_sent {
            return Err(Closed::new().into());
        }
        Pin::new(&mut shared.ws)
            .start_send(msg.into())
            .map_err(write_error)
    }

    fn poll_close_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let this = self;
        let (code, reason) = this
            .close
            .clone()
            .unwrap_or((CloseCode::NORMAL, String::new()));
        let mut shared = lock(&this.shared);
        let first = !shared.close_sent;
        if let Err(err) = shared.send_close(code, &reason) {
            return Poll::Ready(Err(err));
        }
        if first {
            if let Some(waker) = shared.reader_waker.take() {
                waker.wake();
            }
        }
        drop(shared);
        match this.poll_write(cx, |ws, cx| ws.poll_flush(cx)) {
            // The connection ended already: there is nothing left to close.
            Poll::Ready(Err(err)) if err.is::<Closed>() => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<IO> Member for WsMember<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn start_close(self: Pin<&mut Self>, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        self.get_mut().close = Some((code, reason.to_owned()));
        Ok(())
    }

    /// Ready once the receiving half has ended (the peer closed, the connection failed or timed out) or was dropped.
    fn poll_ended(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = lock(&self.shared);
        if shared.ended {
            return Poll::Ready(());
        }
        store_waker(&mut shared.ended_waker, cx.waker());
        Poll::Pending
    }

    /// The last frame of any kind from the peer, pongs included.
    fn last_heard(&self) -> Option<std::time::Instant> {
        Some(lock(&self.shared).last_heard.into_std())
    }
}

/// The receiving half of a [`WsStream`]: a [`Stream`] of [`Received`] messages.
///
/// Polling it answers pings, runs the heartbeat and finishes the close handshake; see [`WsStream`] for the errors it
/// yields and the close codes it sends. It ends after the peer's close frame, after an error, or when the peer has not
/// answered our close within [`WsConfig::close_timeout`].
///
/// When it closes the connection because of an error (1009, 1007, 1002, 4201), it goes on reading and discarding
/// until the peer's close frame arrives, the peer ends the stream, or the close timeout passes, so that the peer reads
/// our close frame instead of a reset. Every way of ending shuts the socket's sending side down (a FIN), and tells
/// the [`WsMember`] ([`Member::poll_ended`]), so that a group drops it; dropping the receiver does the same.
pub struct WsReceiver<IO> {
    shared: Arc<Mutex<Shared<IO>>>,
    heartbeat: Option<(Duration, Duration)>,
    close_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    beat: Beat,
    ping_unflushed: bool,
    /// The peer's close, held back until the reply to it has been flushed.
    peer_close: Option<Option<PeerClose>>,
    ending: Option<BoxError>,
    end: End,
    pongs: bool,
}

/// How far the receiver is in ending the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Reading messages.
    Running,
    /// Our close frame for an error is going out (`ending` holds the error).
    Flushing,
    /// Our close frame is out; reading and discarding until the peer's close, its end of stream, or the timer.
    Discarding,
    /// Shutting the socket's sending side down, within the timer.
    ShuttingDown,
    /// Over: the stream yields `None`.
    Done,
}

impl<IO> WsReceiver<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn new(shared: Arc<Mutex<Shared<IO>>>, config: &WsConfig) -> Self {
        let now = Instant::now();
        let (beat, deadline) = match config.heartbeat() {
            Some((interval, _)) => (Beat::Idle, later(now, interval)),
            None => (Beat::Off, now),
        };
        Self {
            shared,
            heartbeat: config.heartbeat(),
            close_timeout: config.close_timeout(),
            timer: Box::pin(sleep_until(deadline)),
            beat,
            ping_unflushed: false,
            peer_close: None,
            ending: None,
            end: End::Running,
            pongs: false,
        }
    }

    /// Yields pongs as [`Received::Pong`] from now on, so that their owner can time its own pings.
    pub fn yield_pongs(&mut self) {
        self.pongs = true;
    }

    /// Runs when the timer fires: a ping is due, or the pong is late.
    fn on_timer(&mut self) {
        let timeout = self
            .heartbeat
            .map_or(self.close_timeout, |(_, timeout)| timeout);
        let now = Instant::now();
        match self.beat {
            Beat::Idle => {
                let mut shared = lock(&self.shared);
                if shared.close_sent {
                    drop(shared);
                    return self.await_close_reply(now);
                }
                match Pin::new(&mut shared.ws).start_send(Message::Ping(Bytes::new())) {
                    Ok(()) => self.ping_unflushed = true,
                    Err(err) => {
                        drop(shared);
                        return self.fail(read_error(err));
                    }
                }
                drop(shared);
                self.beat = Beat::Awaiting { sent: now };
                self.timer.as_mut().reset(later(now, timeout));
            }
            Beat::Awaiting { .. } => self.fail(PongTimeout::new(timeout).into()),
            // The peer did not answer our close in time: the connection is over.
            Beat::Closing => self.finish(None),
            Beat::Off => {}
        }
    }

    /// Our close frame is out: stop pinging, and give the peer the close timeout to answer it.
    fn await_close_reply(&mut self, now: Instant) {
        self.beat = Beat::Closing;
        self.ping_unflushed = false;
        self.timer.as_mut().reset(later(now, self.close_timeout));
    }

    /// Something arrived from the peer: it is alive.
    fn on_traffic(&mut self) {
        if let (Beat::Awaiting { sent }, Some((interval, _))) = (self.beat, self.heartbeat) {
            self.beat = Beat::Idle;
            self.timer.as_mut().reset(later(sent, interval));
        }
    }

    /// Ends the connection because of `err`: sends the close frame its code calls for, waits for the peer's close
    /// while discarding what it sends, then yields `err`.
    fn fail(&mut self, err: BoxError) {
        let Some(code) = close_code_for(&err) else {
            return self.finish(Some(err));
        };
        let reason = match code {
            CloseCode::TOO_BIG => "message too big",
            CloseCode::IDLE_TIMEOUT => "pong timeout",
            CloseCode(1007) => "invalid utf-8",
            _ => "protocol error",
        };
        // A failure to queue the close frame only means the connection is already gone; the error still reaches
        // the owner.
        let _ = lock(&self.shared).send_close(code, reason);
        self.ending = Some(err);
        self.end = End::Flushing;
        self.timer
            .as_mut()
            .reset(later(Instant::now(), self.close_timeout));
    }

    /// Shuts the sending side down (within the close timeout), then ends, yielding `err` if there is one.
    fn finish(&mut self, err: Option<BoxError>) {
        if err.is_some() {
            self.ending = err;
        }
        self.end = End::ShuttingDown;
        self.timer
            .as_mut()
            .reset(later(Instant::now(), self.close_timeout));
    }

    fn poll_flush_own(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut shared = lock(&self.shared);
        let poll = Pin::new(&mut shared.ws).poll_flush(cx);
        // Flushing registered this task as the write waker; the sending half gets its turn back.
        if let Some(waker) = shared.writer_waker.take() {
            waker.wake();
        }
        poll
    }

    /// Reads and drops whatever the peer sends until its close frame has arrived whole or the stream ends.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = lock(&self.shared);
        let mut scratch = [0u8; 2048];
        loop {
            if shared.ws.get_ref().peer_close_seen() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(shared.ws.get_mut()).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = lock(&self.shared);
        Pin::new(shared.ws.get_mut()).poll_shutdown(cx).map(|_| ())
    }

    /// Tells the sending half that the connection is over.
    fn mark_ended(&self) {
        let mut shared = lock(&self.shared);
        shared.ended = true;
        if let Some(waker) = shared.ended_waker.take() {
            waker.wake();
        }
    }
}

impl<IO> Drop for WsReceiver<IO> {
    fn drop(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.ended = true;
        if let Some(waker) = shared.ended_waker.take() {
            waker.wake();
        }
    }
}

impl<IO> fmt::Debug for WsReceiver<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsReceiver")
            .field("heartbeat", &self.heartbeat)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<IO> Stream for WsReceiver<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Received, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.end {
                End::Running => {}
                End::Done => return Poll::Ready(None),
                End::Flushing => {
                    // The close frame goes out, or the close timeout passes.
                    if this.poll_flush_own(cx).is_ready() {
                        this.end = End::Discarding;
                        continue;
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        this.finish(None);
                        continue;
                    }
                    return Poll::Pending;
                }
                End::Discarding => {
                    if this.poll_discard(cx).is_ready() || this.timer.as_mut().poll(cx).is_ready() {
                        this.finish(None);
                        continue;
                    }
                    return Poll::Pending;
                }
                End::ShuttingDown => {
                    if this.poll_shutdown(cx).is_pending()
                        && this.timer.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    this.end = End::Done;
                    this.mark_ended();
                    return Poll::Ready(this.ending.take().map(Err));
                }
            }
            if this.peer_close.is_some() {
                // The reply to the peer's close goes out before the owner sees the close and perhaps drops the
                // connection; a failure here only means the peer is gone already.
                if this.poll_flush_own(cx).is_pending() {
                    return Poll::Pending;
                }
                // The close ends the connection: whatever the peer sends after it is not read (RFC 6455 5.5.1),
                // and the stream ends after yielding it.
                let close = this.peer_close.take();
                this.finish(None);
                return Poll::Ready(close.map(|close| Ok(Received::Close(close))));
            }
            if this.beat != Beat::Closing && lock(&this.shared).close_sent {
                this.await_close_reply(Instant::now());
            }
            if this.beat != Beat::Off && this.timer.as_mut().poll(cx).is_ready() {
                this.on_timer();
                continue;
            }
            if this.ping_unflushed {
                match this.poll_flush_own(cx) {
                    Poll::Ready(Ok(())) => this.ping_unflushed = false,
                    Poll::Ready(Err(err)) => {
                        this.ping_unflushed = false;
                        this.fail(read_error(err));
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            let mut shared = lock(&this.shared);
            let next = Pin::new(&mut shared.ws).poll_next(cx);
            match &next {
                // The sending half wakes this task when it sends a close, so that the close timeout starts.
                Poll::Pending => store_waker(&mut shared.reader_waker, cx.waker()),
                Poll::Ready(Some(Ok(_))) => shared.last_heard = Instant::now(),
                Poll::Ready(_) => {}
            }
            drop(shared);
            match next {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.finish(None),
                Poll::Ready(Some(Err(err))) => this.fail(read_error(err)),
                Poll::Ready(Some(Ok(msg))) => {
                    this.on_traffic();
                    match msg {
                        Message::Text(text) => return Poll::Ready(Some(Ok(Received::Text(text)))),
                        Message::Binary(bytes) => {
                            return Poll::Ready(Some(Ok(Received::Binary(bytes))));
                        }
                        Message::Close(frame) => {
                            let frame = frame.map(|f| PeerClose {
                                code: CloseCode(f.code.into()),
                                reason: f.reason.as_str().to_owned(),
                            });
                            this.peer_close = Some(frame);
                        }
                        // Pings are answered by tungstenite; pongs (unless asked for) and raw frames only prove the
                        // peer is alive.
                        Message::Pong(payload) if this.pongs => {
                            return Poll::Ready(Some(Ok(Received::Pong(payload))));
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }
}

/// Where the heartbeat stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// No heartbeat configured.
    Off,
    /// The next ping goes out when the timer fires.
    Idle,
    /// A ping went out at `sent`; the peer is late when the timer fires.
    Awaiting { sent: Instant },
    /// Our close frame went out; the peer has until the timer fires to answer it.
    Closing,
}

/// The connection both halves use. Each half holds the lock only for one non-blocking poll.
struct Shared<IO> {
    ws: WebSocketStream<Watched<IO>>,
    /// The sending half's waker, while it waits on the socket.
    writer_waker: Option<Waker>,
    /// The receiving half's waker, while it waits for a message.
    reader_waker: Option<Waker>,
    /// The member's waker, while it waits for the connection to end.
    ended_waker: Option<Waker>,
    /// Whether a close frame was queued by either half.
    close_sent: bool,
    /// Whether the receiving half has ended or is gone.
    ended: bool,
    /// When the last frame of any kind arrived (the handshake, at first).
    last_heard: Instant,
}

impl<IO> Shared<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Queues a close frame once; it goes out with the next flush.
    fn send_close(&mut self, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        let frame = CloseFrame {
            code: code.get().into(),
            reason: reason.into(),
        };
        match Pin::new(&mut self.ws).start_send(Message::Close(Some(frame))) {
            Ok(()) => Ok(()),
            // The peer closed first, or the connection ended: the close is already under way or done.
            Err(WsError::Protocol(ProtocolError::SendAfterClosing))
            | Err(WsError::AlreadyClosed)
            | Err(WsError::ConnectionClosed) => Ok(()),
            Err(err) => Err(write_error(err)),
        }
    }
}

fn lock<IO>(shared: &Mutex<Shared<IO>>) -> MutexGuard<'_, Shared<IO>> {
    // No code panics while holding the lock, and the state stays consistent between polls even if one did.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn store_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// Maps an error on the sending path.
fn write_error(err: WsError) -> BoxError {
    match err {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::SendAfterClosing) => Closed::new().into(),
        WsError::Io(io) => LinkLost::with_source(io).into(),
        WsError::WriteBufferFull(_) => Overloaded::new().into(),
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            MessageTooBig::new(size, max_size).into()
        }
        other => ProtocolViolation::new(other).into(),
    }
}

fn read_error(err: WsError) -> BoxError {
    match err {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            MessageTooBig::new(size, max_size).into()
        }
        WsError::Utf8(_) => InvalidUtf8::new().into(),
        WsError::Io(io) => LinkLost::with_source(io).into(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Closed::new().into(),
        other => ProtocolViolation::new(other).into(),
    }
}

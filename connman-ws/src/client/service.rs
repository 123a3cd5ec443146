//! [`WsClient`] and [`Incoming`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use connman_core::State;
use connman_core::error::{BoxError, Closed, Elapsed};
use connman_core::member::CloseCode;
use connman_queue::queue::{CallOptions, QueueHandle, QueueStats};
use connman_tcp::TcpConnector;
use futures_core::Stream;
use tokio::sync::{broadcast, mpsc, watch};
use tower_service::Service;

use super::builder::WsClientBuilder;
use super::control::{ClientEvent, Control, Terminal};
use super::error::NoRequestId;
use super::error::NotConnected;
use super::message::{Correlate, Message, Outgoing};
use super::stack::Stack;
use crate::error::MessageTooBig;

/// One logical WebSocket connection over as many sockets as it takes: sends wait out an outage in a bounded queue,
/// received messages arrive on one [`Incoming`] stream that outlives every socket. See the [module docs](super).
///
/// A clone is another handle to the same client (each reserves its own place in the queue, as
/// `tower::buffer::Buffer` does). The client ends when [`WsClient::close`] is called, when the server closes with a
/// fatal code, when the connect classifier calls a failure fatal, when the backoff gives up, or when the last handle is
/// dropped.
pub struct WsClient {
    queue: Stack,
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<Control>,
    queue: QueueHandle,
    state: watch::Receiver<State>,
    max_send_size: usize,
    ping_timeout: Duration,
    close_timeout: Duration,
    correlate: Option<Correlate>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can send or close any more.
        self.control.finish(Terminal::Requested);
    }
}

impl WsClient {
    /// A builder for a client of `url` (`ws://host:port/path`) over TCP, with the defaults of [`WsClientBuilder`].
    pub fn builder(url: &str) -> WsClientBuilder<TcpConnector> {
        WsClientBuilder::new(url, TcpConnector::new())
    }
}

impl WsClient {
    pub(crate) fn from_parts(
        queue: Stack,
        control: Arc<Control>,
        handle: QueueHandle,
        state: watch::Receiver<State>,
        (max_send_size, ping_timeout, close_timeout): (usize, Duration, Duration),
        correlate: Option<Correlate>,
    ) -> Self {
        Self {
            queue,
            inner: Arc::new(Inner {
                control,
                queue: handle,
                state,
                max_send_size,
                ping_timeout,
                close_timeout,
                correlate,
            }),
        }
    }

    /// Sends `msg`: waits for room in the queue, then resolves once the frame was written to a socket.
    ///
    /// Outcomes: `Ok` (written; WebSocket has no receipt); [`NotSent`](connman_core::error::NotSent) once its
    /// replays ran out; [`MaybeDelivered`](connman_core::error::MaybeDelivered) (written to a socket that then failed);
    /// [`Elapsed`] (waited longer than the queue's max wait, never sent);
    /// [`Overloaded`](connman_core::error::Overloaded) (queue full, with
    /// [`reject_when_full`](WsClientBuilder::reject_when_full)); [`MessageTooBig`] (over the send limit, never
    /// queued); and once the client ended: [`ClosedByPeer`](super::ClosedByPeer) (a fatal close code),
    /// [`FatalConnect`](connman_queue::reconnect::FatalConnect), [`GaveUp`](connman_queue::reconnect::GaveUp), or
    /// [`Closed`] (closed by its owner).
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<(), BoxError> {
        let msg = msg.into();
        std::future::poll_fn(|cx| Service::<Message>::poll_ready(self, cx)).await?;
        Service::call(self, msg).await
    }

    /// Request mode: sends the request `msg` and resolves with its reply, the received message whose id (as the
    /// [`correlate`](WsClientBuilder::correlate) function reads it) is the request's own, as socket.io's
    /// `emitWithAck` does. The reply does not appear on [`Incoming`].
    ///
    /// A request is completed only when answered. One written to a socket that failed before its reply ends
    /// [`MaybeDelivered`](connman_core::error::MaybeDelivered) (it may have been handled); one never written is
    /// replayed, as a send is; one unanswered within the [request timeout](WsClientBuilder::request_timeout) on a
    /// live socket was written too, so it ends `MaybeDelivered` with [`Elapsed`] as its source. Without an id (or a `correlate` function) it fails with [`NoRequestId`] and is
    /// never sent. The other outcomes are those of [`send`](Self::send).
    pub async fn request(&mut self, msg: impl Into<Message>) -> Result<Message, BoxError> {
        self.request_with(msg.into(), CallOptions::new()).await
    }

    /// As [`request`](Self::request), for a request that is safe to handle twice: one lost with its socket before
    /// the reply is sent again on the next socket, and one unanswered within the request timeout is sent again,
    /// instead of ending `MaybeDelivered` (at-least-once, up to the queue's
    /// [max replays](WsClientBuilder::max_replays)).
    pub async fn request_idempotent(
        &mut self,
        msg: impl Into<Message>,
    ) -> Result<Message, BoxError> {
        self.request_with(msg.into(), CallOptions::new().idempotent())
            .await
    }

    async fn request_with(
        &mut self,
        msg: Message,
        options: CallOptions,
    ) -> Result<Message, BoxError> {
        let id = self
            .inner
            .correlate
            .as_ref()
            .and_then(|correlate| correlate(&msg))
            .ok_or_else(NoRequestId::new)?;
        if msg.len() > self.inner.max_send_size {
            return Err(MessageTooBig::new(msg.len(), self.inner.max_send_size).into());
        }
        std::future::poll_fn(|cx| Service::<Message>::poll_ready(self, cx)).await?;
        let reply = self
            .queue
            .call_with(
                Outgoing {
                    msg,
                    reply: Some(id),
                },
                options,
            )
            .await
            .map_err(|e| self.inner.map_error(e))?;
        reply.ok_or_else(|| NoRequestId::new().into())
    }

    /// The state of the link, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// The client's events from now on, through a bounded channel
    /// ([`EVENT_CAPACITY`](super::EVENT_CAPACITY)).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.control.subscribe()
    }

    /// The round trip time of the last answered ping, heartbeat or manual.
    pub fn rtt(&self) -> Option<Duration> {
        self.inner.control.rtt()
    }

    /// Pings the server on the current socket now; resolves with the round trip time. Fails with
    /// [`NotConnected`] when no socket is up, and with [`Elapsed`] when no pong comes within the pong timeout.
    pub async fn ping(&self) -> Result<Duration, BoxError> {
        let link = self.inner.control.current().ok_or_else(NotConnected::new)?;
        match tokio::time::timeout(self.inner.ping_timeout, link.ping()).await {
            Ok(result) => result,
            Err(_) => Err(Elapsed::new().into()),
        }
    }

    /// Closes the client: a close frame (1000) goes out on the current socket after the frames already written, the
    /// server's answer is awaited (at most the close timeout), and the client ends. Queued sends fail with
    /// [`Closed`]; no reconnect follows.
    pub async fn close(&self) {
        let control = &self.inner.control;
        control.start_closing();
        if control.terminal().is_none() {
            if let Some(link) = control.current() {
                link.close(CloseCode::NORMAL, "", self.inner.close_timeout)
                    .await;
            }
        }
        control.finish(Terminal::Requested);
    }

    /// Whether the client has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.control.terminal().is_some()
    }

    /// The queue's gauges and counters now: waiting sends, replays, maybe-delivered, expired, rejected.
    pub fn stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }
}

impl Service<Message> for WsClient {
    type Response = ();
    type Error = BoxError;
    type Future = ClientFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.queue
            .poll_ready(cx)
            .map_err(|e| self.inner.map_error(e))
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        if msg.len() > self.inner.max_send_size {
            return ClientFuture {
                inner: None,
                refused: Some(MessageTooBig::new(msg.len(), self.inner.max_send_size).into()),
                client: self.inner.clone(),
            };
        }
        ClientFuture {
            inner: Some(Box::pin(self.queue.call(Outgoing { msg, reply: None }))),
            refused: None,
            client: self.inner.clone(),
        }
    }
}

impl Inner {
    /// A send that failed because the client ended reports why it ended.
    fn map_error(&self, error: BoxError) -> BoxError {
        if error.is::<Closed>() {
            if let Some(terminal) = self.control.terminal() {
                return terminal.error();
            }
        }
        error
    }
}

impl Clone for WsClient {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for WsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClient")
            .field("state", &*self.inner.state.borrow())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The response of a [`WsClient`] send; see [`WsClient::send`] for its outcomes.
#[must_use = "futures do nothing unless polled"]
pub struct ClientFuture {
    inner: Option<Pin<Box<QueueFuture>>>,
    refused: Option<BoxError>,
    client: Arc<Inner>,
}

type QueueFuture = <Stack as Service<Outgoing>>::Future;

impl Future for ClientFuture {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(Err(this
                .refused
                .take()
                .unwrap_or_else(|| Closed::new().into())));
        };
        let result = ready!(inner.as_mut().poll(cx));
        Poll::Ready(result.map(drop).map_err(|e| this.client.map_error(e)))
    }
}

impl fmt::Debug for ClientFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}

/// The messages a [`WsClient`] receives, over every socket it uses, in the order each socket delivered them.
///
/// Bounded ([`WsClientBuilder::inbound_capacity`]): while it is full, the current socket is not read, so the server
/// feels the backpressure. Ends after the client ended and the last socket's messages were taken.
pub struct Incoming {
    rx: mpsc::Receiver<Message>,
}

impl Incoming {
    pub(crate) fn new(rx: mpsc::Receiver<Message>) -> Self {
        Self { rx }
    }

    /// The next message, or `None` once the client ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Stream for Incoming {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

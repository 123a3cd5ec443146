//! [`WsLink`]: one socket of a client, as a `tower_service::Service<Message, Response = ()>`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{
    BoxError, Closed, LinkLost, MaybeDelivered, NotSent, Overloaded, SharedError,
};
use connman_core::member::CloseCode;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_service::Service;

use super::control::{ClientEvent, CloseAction, Control, lock};
use super::error::{ClosedByPeer, NoRequestId, NotConnected};
use super::message::{Correlate, Message, Outgoing};
use crate::error::PongTimeout;
use connman_core::rt::tokio::later;

use crate::stream::{Received, WsMember, WsReceiver, WsStream};

/// Most frames a writer feeds before it flushes them together.
const MAX_BATCH: usize = 64;

/// One socket of a [`WsClient`](super::WsClient): a `Service<Message, Response = ()>` whose response resolves once
/// the frame was written to the socket.
///
/// `Ok` means written: the bytes were handed to the socket. WebSocket has no receipt, so a frame written just before
/// the link failed may or may not have reached the server; request mode (a reply matched by id) is how an application
/// learns more. A frame that never reached the socket fails with [`NotSent`]; frames fed to the socket whose flush
/// failed, or that were in flight when the socket ended, fail with [`MaybeDelivered`]. Once the socket ended,
/// `poll_ready` fails with [`LinkLost`], its source saying why ([`ClosedByPeer`], [`PongTimeout`],
/// [`MessageTooBig`](crate::error::MessageTooBig), an IO error …).
///
/// A client hands a clone to its on-up hook, to re-authenticate or re-subscribe before queued sends go out. Dropping
/// the last clone closes the socket.
#[derive(Clone)]
pub struct WsLink {
    handle: LinkHandle,
    _guard: Arc<DropGuard>,
}

/// What the client keeps of its current socket: enough to close it or ping it, without keeping it alive.
#[derive(Clone)]
pub(crate) struct LinkHandle {
    tx: mpsc::Sender<Cmd>,
    state: Arc<LinkState>,
}

struct LinkState {
    /// Cancelled once the socket ended; `reason` says why.
    dead: CancellationToken,
    reason: OnceLock<SharedError>,
    /// Cancelled when the last [`WsLink`] is dropped.
    stop: CancellationToken,
    /// Pings written and not yet answered: id, when written, who waits.
    pings: Mutex<VecDeque<Ping>>,
    /// Requests waiting for their reply, by id (request mode).
    replies: Mutex<HashMap<u64, oneshot::Sender<Message>>>,
    correlate: Option<Correlate>,
    request_timeout: Duration,
}

impl LinkState {
    fn declare_dead(&self, reason: BoxError) {
        let _ = self.reason.set(SharedError::from(reason));
        self.dead.cancel();
    }

    fn reason(&self) -> Option<SharedError> {
        self.reason.get().cloned()
    }

    fn lost(&self) -> LinkLost {
        match self.reason() {
            Some(reason) => LinkLost::with_source(SharedSource(reason)),
            None => LinkLost::new(),
        }
    }
}

/// A ping written and not yet answered: its id, when it was written, who waits for the pong (none for the
/// heartbeat's own).
type Ping = (u64, Instant, Option<oneshot::Sender<Duration>>);

enum Cmd {
    Send(Message, oneshot::Sender<Result<(), BoxError>>),
    Ping(u64),
    Close(CloseCode, String),
}

static PING_IDS: AtomicU64 = AtomicU64::new(1);

impl WsLink {
    /// Takes over an established socket: a writer task writes the frames given to the service, in order, feeding up
    /// to 64 before one flush; a reader task forwards received messages to the client's stream, answers pings, pings
    /// on the client's schedule and ends the socket on a close frame, an error or a missing pong.
    pub(crate) fn start<IO>(stream: WsStream<IO>, control: Arc<Control>, capacity: usize) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (member, mut receiver) = stream.split();
        receiver.yield_pongs();
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let state = Arc::new(LinkState {
            dead: CancellationToken::new(),
            reason: OnceLock::new(),
            stop: CancellationToken::new(),
            pings: Mutex::new(VecDeque::new()),
            replies: Mutex::new(HashMap::new()),
            correlate: control.settings.correlate.clone(),
            request_timeout: control.settings.request_timeout,
        });
        let handle = LinkHandle { tx, state };
        tokio::spawn(writer(member, rx, handle.state.clone()));
        tokio::spawn(reader(receiver, handle.clone(), control));
        let guard = Arc::new(handle.state.stop.clone().drop_guard());
        Self {
            handle,
            _guard: guard,
        }
    }

    pub(crate) fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    /// Sends `msg` on this socket, bypassing the client's queue; resolves once it was written.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<(), BoxError> {
        let msg = msg.into();
        std::future::poll_fn(|cx| Service::<Message>::poll_ready(self, cx)).await?;
        Service::call(self, msg).await
    }

    /// Sends the request `msg` on this socket, bypassing the client's queue, and resolves with the reply whose id
    /// (as the client's [`correlate`](super::WsClientBuilder::correlate) function reads it) matches: an
    /// acknowledged re-authentication in an on-up hook.
    pub async fn request(&mut self, msg: impl Into<Message>) -> Result<Message, BoxError> {
        let msg = msg.into();
        let id = self.handle.request_id(&msg)?;
        std::future::poll_fn(|cx| Service::<Message>::poll_ready(self, cx)).await?;
        let reply = Service::call(
            self,
            Outgoing {
                msg,
                reply: Some(id),
            },
        )
        .await?;
        reply.ok_or_else(|| NoRequestId::new().into())
    }

    /// Pings the server on this socket and resolves with the round trip time when the pong comes back; fails with
    /// [`Elapsed`](connman_core::error::Elapsed) after the request timeout.
    pub async fn ping(&self) -> Result<Duration, BoxError> {
        match tokio::time::timeout(self.handle.state.request_timeout, self.handle.ping()).await {
            Ok(result) => result,
            Err(_) => Err(connman_core::error::Elapsed::new().into()),
        }
    }

    /// Whether the socket has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.state.dead.is_cancelled()
    }
}

impl LinkHandle {
    /// The id of a request, for request mode.
    pub(crate) fn request_id(&self, msg: &Message) -> Result<u64, BoxError> {
        self.state
            .correlate
            .as_ref()
            .and_then(|correlate| correlate(msg))
            .ok_or_else(|| NoRequestId::new().into())
    }

    pub(crate) fn dead(&self) -> CancellationToken {
        self.state.dead.clone()
    }

    /// Whether the socket has ended.
    pub(crate) fn is_dead(&self) -> bool {
        self.state.dead.is_cancelled()
    }

    pub(crate) async fn ping(&self) -> Result<Duration, BoxError> {
        if self.state.dead.is_cancelled() {
            return Err(NotConnected::new().into());
        }
        let id = PING_IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.state.pings).push_back((id, Instant::now(), Some(tx)));
        self.tx
            .send(Cmd::Ping(id))
            .await
            .map_err(|_| NotConnected::new())?;
        tokio::select! {
            rtt = rx => rtt.map_err(|_| self.state.lost().into()),
            () = self.state.dead.cancelled() => Err(self.state.lost().into()),
        }
    }

    /// Sends a close frame after the frames already given to the writer and waits, at most `timeout`, for the socket
    /// to end (the server's answer).
    pub(crate) async fn close(&self, code: CloseCode, reason: &str, timeout: Duration) {
        if self
            .tx
            .send(Cmd::Close(code, reason.to_owned()))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, self.state.dead.cancelled()).await;
        }
        self.state.stop.cancel();
    }
}

impl Service<Message> for WsLink {
    type Response = ();
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.handle.state.dead.is_cancelled() {
            return Poll::Ready(Err(self.handle.state.lost().into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Message) -> SendFuture {
        let (tx, rx) = oneshot::channel();
        let state = &self.handle.state;
        let refused: BoxError = match self.handle.tx.try_send(Cmd::Send(msg, tx)) {
            Ok(()) => return SendFuture { inner: Ok(rx) },
            // The queue above bounds what is in flight below the writer's capacity; a full writer means a caller
            // without a queue went past it.
            Err(mpsc::error::TrySendError::Full(_)) => {
                NotSent::with_source(Overloaded::new()).into()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => NotSent::with_source(state.lost()).into(),
        };
        SendFuture {
            inner: Err(Some(refused)),
        }
    }
}

/// The response of a request or a send below the client's queue.
pub(crate) type OutgoingFuture =
    Pin<Box<dyn Future<Output = Result<Option<Message>, BoxError>> + Send>>;

/// The client's own requests: a plain send resolves with `None` once written; a request with an id resolves with its
/// reply. A request written to a socket that then ends before its reply fails with [`MaybeDelivered`]; one whose
/// reply does not come within the request timeout with [`Elapsed`](connman_core::error::Elapsed).
impl Service<Outgoing> for WsLink {
    type Response = Option<Message>;
    type Error = BoxError;
    type Future = OutgoingFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<Message>::poll_ready(self, cx)
    }

    fn call(&mut self, out: Outgoing) -> OutgoingFuture {
        let Some(id) = out.reply else {
            let written = Service::<Message>::call(self, out.msg);
            return Box::pin(async move { written.await.map(|()| None) });
        };
        let state = self.handle.state.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut replies = lock(&state.replies);
            if replies.get(&id).is_some_and(|waiting| !waiting.is_closed()) {
                return Box::pin(std::future::ready(Err(NoRequestId::new().into())));
            }
            replies.insert(id, tx);
        }
        let written = Service::<Message>::call(self, out.msg);
        Box::pin(async move {
            let forget = |state: &LinkState| {
                lock(&state.replies).remove(&id);
            };
            if let Err(e) = written.await {
                forget(&state);
                return Err(e);
            }
            let answer = tokio::select! {
                reply = rx => reply.map_err(|_| BoxError::from(MaybeDelivered::with_source(state.lost()))),
                () = state.dead.cancelled() => Err(MaybeDelivered::with_source(state.lost()).into()),
                // Written, and no reply in time: the server may have handled it.
                () = tokio::time::sleep(state.request_timeout) => {
                    Err(MaybeDelivered::with_source(connman_core::error::Elapsed::new()).into())
                }
            };
            forget(&state);
            answer.map(Some)
        })
    }
}

impl fmt::Debug for WsLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsLink")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The response of [`WsLink`]: resolves once the frame was written, or with why it was not.
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture {
    inner: Result<oneshot::Receiver<Result<(), BoxError>>, Option<BoxError>>,
}

impl Future for SendFuture {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Ok(rx) => Pin::new(rx).poll(cx).map(|answer| match answer {
                Ok(result) => result,
                // The writer went away without an answer: it may have written the frame.
                Err(_) => Err(MaybeDelivered::new().into()),
            }),
            Err(error) => Poll::Ready(Err(error.take().unwrap_or_else(|| Closed::new().into()))),
        }
    }
}

impl fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture").finish_non_exhaustive()
    }
}

/// An error shared by several waiters, as a source.
#[derive(Debug)]
struct SharedSource(SharedError);

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Transparent: the shared error is its source, so that a walk down the chain finds its type.
impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Runs `fut` until the socket ends or the link is dropped.
async fn guarded<T>(
    state: &LinkState,
    fut: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::select! {
        biased;
        result = fut => result,
        () = state.dead.cancelled() => Err(state.lost().into()),
        () = state.stop.cancelled() => Err(Closed::new().into()),
    }
}

async fn write_frame<IO>(
    member: &mut WsMember<IO>,
    frame: tungstenite::Message,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| futures_sink::Sink::<Bytes>::poll_ready(Pin::new(&mut *member), cx))
        .await?;
    member.start_send_message(frame)
}

async fn writer<IO>(mut member: WsMember<IO>, mut rx: mpsc::Receiver<Cmd>, state: Arc<LinkState>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut fed: Vec<oneshot::Sender<Result<(), BoxError>>> = Vec::with_capacity(MAX_BATCH);
    let stopped = 'run: loop {
        let first = tokio::select! {
            biased;
            () = state.dead.cancelled() => break 'run Stop::Quiet,
            () = state.stop.cancelled() => break 'run Stop::Dropped,
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => break 'run Stop::Dropped,
            },
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let mut stop = None;
        for cmd in batch.drain(..) {
            if stop.is_some() {
                if let Cmd::Send(_, tx) = cmd {
                    let _ = tx.send(Err(not_sent(&state)));
                }
                continue;
            }
            match cmd {
                Cmd::Send(msg, tx) => {
                    match guarded(&state, write_frame(&mut member, msg.into_frame())).await {
                        Ok(()) => fed.push(tx),
                        Err(error) => {
                            let error = SharedError::from(error);
                            let _ = tx.send(Err(
                                NotSent::with_source(SharedSource(error.clone())).into()
                            ));
                            stop = Some(Stop::Failed(error));
                        }
                    }
                }
                Cmd::Ping(id) => {
                    let frame =
                        tungstenite::Message::Ping(Bytes::copy_from_slice(&id.to_be_bytes()));
                    if let Err(error) = guarded(&state, write_frame(&mut member, frame)).await {
                        stop = Some(Stop::Failed(SharedError::from(error)));
                    }
                }
                Cmd::Close(code, reason) => {
                    // The frames fed before the close go out with it; nothing after it is written. The server's
                    // answer ends the socket, seen by the reader.
                    match guarded(&state, member.close(code, &reason)).await {
                        Ok(()) => {
                            for tx in fed.drain(..) {
                                let _ = tx.send(Ok(()));
                            }
                            stop = Some(Stop::Quiet);
                        }
                        Err(error) => stop = Some(Stop::Failed(SharedError::from(error))),
                    }
                }
            }
        }
        let flushed = match stop {
            Some(Stop::Failed(ref error)) => Err(error.clone()),
            Some(Stop::Quiet | Stop::Dropped) => Ok(()),
            None => guarded(&state, async { member.flush().await })
                .await
                .map_err(SharedError::from),
        };
        match flushed {
            Ok(()) => {
                for tx in fed.drain(..) {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(error) => {
                for tx in fed.drain(..) {
                    let _ = tx.send(Err(MaybeDelivered::with_source(SharedSource(
                        error.clone(),
                    ))
                    .into()));
                }
                break 'run Stop::Failed(error);
            }
        }
        if let Some(stop) = stop {
            break 'run stop;
        }
    };
    match stopped {
        Stop::Failed(error) => {
            if !state.dead.is_cancelled() && !state.stop.is_cancelled() {
                state.declare_dead(LinkLost::with_source(SharedSource(error)).into());
            }
        }
        // The client let go of a live socket (it ended, or the socket was replaced): say goodbye with 1001 rather
        // than a bare reset, for at most a second.
        Stop::Dropped if !state.dead.is_cancelled() => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                member.close(CloseCode::GOING_AWAY, ""),
            )
            .await;
        }
        Stop::Dropped | Stop::Quiet => {}
    }
    // Nothing more is written on this socket: whatever still waits was never written.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Cmd::Send(_, tx) = cmd {
            let _ = tx.send(Err(not_sent(&state)));
        }
    }
}

/// Why a writer stopped.
enum Stop {
    /// The socket ended, or we closed it: nothing to declare.
    Quiet,
    /// The link was dropped while the socket may still be open.
    Dropped,
    /// Writing failed: the socket is lost.
    Failed(SharedError),
}

fn not_sent(state: &LinkState) -> BoxError {
    match state.reason() {
        Some(reason) => NotSent::with_source(SharedSource(reason)).into(),
        None => NotSent::with_source(Closed::new()).into(),
    }
}

/// What ended a socket, seen from its reader.
enum End {
    /// The link was dropped: nothing to report.
    Dropped,
    /// The socket ended for this reason.
    Lost(BoxError),
}

async fn reader<IO>(mut receiver: WsReceiver<IO>, link: LinkHandle, control: Arc<Control>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let state = &link.state;
    let heartbeat = control.settings.heartbeat;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next_beat = heartbeat.map_or(far, |(interval, _)| later(Instant::now(), interval));
    // The heartbeat's own ping in flight: its id and when it was written.
    let mut awaiting: Option<(u64, Instant)> = None;
    let inbound = control.inbound();
    let end = loop {
        let item = tokio::select! {
            biased;
            () = state.stop.cancelled() => break End::Dropped,
            () = state.dead.cancelled() => break End::Dropped,
            () = sleep_until(next_beat) => {
                let Some((interval, timeout)) = heartbeat else {
                    next_beat = far;
                    continue;
                };
                if awaiting.is_some() {
                    control.emit(ClientEvent::PongTimeout { after: timeout });
                    break End::Lost(PongTimeout::new(timeout).into());
                }
                let id = PING_IDS.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                lock(&state.pings).push_back((id, now, None));
                if link.tx.try_send(Cmd::Ping(id)).is_err() {
                    // The writer is busy with a full channel: that traffic proves nothing about the peer; try
                    // again at the next interval.
                    lock(&state.pings).retain(|(p, _, _)| *p != id);
                    next_beat = later(now, interval);
                    continue;
                }
                awaiting = Some((id, now));
                next_beat = later(now, timeout);
                continue;
            }
            item = receiver.next() => item,
        };
        let received = match item {
            None => break End::Lost(LinkLost::new().into()),
            Some(Err(error)) => break End::Lost(error),
            Some(Ok(received)) => received,
        };
        let msg = match received {
            Received::Text(text) => Message::Text(text),
            Received::Binary(bytes) => Message::Binary(bytes),
            Received::Pong(payload) => {
                let Ok(id) = <[u8; 8]>::try_from(payload.as_ref()).map(u64::from_be_bytes) else {
                    continue;
                };
                let answered = answer_pings(state, id);
                if let Some(rtt) = answered {
                    control.set_rtt(rtt);
                }
                if awaiting.is_some_and(|(ping, _)| ping <= id) {
                    if let (Some((_, sent)), Some((interval, _))) = (awaiting.take(), heartbeat) {
                        next_beat = later(sent, interval);
                    }
                }
                continue;
            }
            Received::Close(frame) => {
                let close = match frame {
                    Some(frame) => ClosedByPeer::new(frame.code, frame.reason),
                    None => ClosedByPeer::new(CloseCode(1005), ""),
                };
                let action = control.on_peer_close(close.clone());
                break match action {
                    CloseAction::Requested => End::Lost(Closed::new().into()),
                    _ => End::Lost(close.into()),
                };
            }
        };
        // Any message proves the peer alive, as a pong does.
        if let (Some((_, sent)), Some((interval, _))) = (awaiting.take(), heartbeat) {
            lock(&state.pings).retain(|(_, _, waiter)| waiter.is_some());
            next_beat = later(sent, interval).max(Instant::now());
        }
        // Request mode: a reply goes to its request, not to the stream.
        let msg = match deliver_reply(state, msg) {
            Some(msg) => msg,
            None => continue,
        };
        let Some(inbound) = &inbound else { continue };
        let delivered = tokio::select! {
            biased;
            () = state.stop.cancelled() => break End::Dropped,
            sent = inbound.send(msg) => sent.is_ok(),
        };
        if !delivered {
            // The client is gone: nobody reads any more.
            break End::Dropped;
        }
    };
    match end {
        End::Dropped => state.stop.cancel(),
        End::Lost(reason) => state.declare_dead(reason),
    }
    lock(&state.pings).clear();
    lock(&state.replies).clear();
}

/// Hands `msg` to the request waiting for it, if it is a reply to one; gives it back otherwise.
fn deliver_reply(state: &LinkState, msg: Message) -> Option<Message> {
    let Some(id) = state
        .correlate
        .as_ref()
        .and_then(|correlate| correlate(&msg))
    else {
        return Some(msg);
    };
    let waiting = lock(&state.replies).remove(&id);
    match waiting {
        // A request that gave up waiting gives the reply back: an ordinary message now.
        Some(tx) => tx.send(msg).err(),
        None => Some(msg),
    }
}

/// Resolves the pings up to `id` (a pong answers the latest ping); the round trip time of `id` itself, if it was
/// ours.
fn answer_pings(state: &LinkState, id: u64) -> Option<Duration> {
    let mut pings = lock(&state.pings);
    if !pings.iter().any(|(p, _, _)| *p == id) {
        return None;
    }
    let mut rtt = None;
    while let Some((p, sent, tx)) = pings.pop_front() {
        if p == id {
            let elapsed = sent.elapsed();
            rtt = Some(elapsed);
            if let Some(tx) = tx {
                let _ = tx.send(elapsed);
            }
            break;
        }
    }
    rtt
}

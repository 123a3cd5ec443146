//! [`WsClientBuilder`]: the settings of a [`WsClient`], every default finite.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use connman_core::backoff::{Backoff, Exponential, Jitter};
use connman_core::error::{BoxError, InvalidConfig};
use connman_core::lifecycle::FailureKind;
use connman_tcp::HostPort;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::http::Uri;
use tower_service::Service;

use super::control::{Control, LinkSettings};
use super::error::ClosedByPeer;
use super::link::WsLink;
use super::make::MakeLink;
use super::message::{Correlate, Message};
use super::service::{Incoming, WsClient};
use super::stack::{self, BackoffFactory, QueueSettings, StackSettings, UserHook};
use crate::config::WsConfig;
use crate::connector::WsConnector;
use crate::error::HttpRejected;

/// Settings of a [`WsClient`]. Every default is finite:
///
/// | setting | default |
/// |---|---|
/// | [`ping`](Self::ping) | every 25 s, 20 s for the pong (socket.io's numbers) |
/// | [`backoff`](Self::backoff) | 100 ms doubling to 10 s, full jitter ([`DEFAULT_MAX_BACKOFF`](Self::DEFAULT_MAX_BACKOFF)) |
/// | [`come_back_within`](Self::come_back_within) | 2 s ([`DEFAULT_COME_BACK`](Self::DEFAULT_COME_BACK)) |
/// | [`queue_capacity`](Self::queue_capacity) | 1024 sends, backpressure when full |
/// | [`max_wait`](Self::max_wait) | 30 s in the queue |
/// | [`max_replays`](Self::max_replays) | 8 per send |
/// | [`inbound_capacity`](Self::inbound_capacity) | 1024 received messages |
/// | [`max_message_size`](Self::max_message_size) | 1 MiB, received and sent |
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s |
/// | [`hook_timeout`](Self::hook_timeout) | 10 s |
/// | [`close_timeout`](Self::close_timeout) | 5 s |
/// | [`request_timeout`](Self::request_timeout) | 30 s |
///
/// Close codes: 1001, 1012 and 4200 reconnect after a random delay in `[0, come_back_within]` (narrowed by the
/// server's [`ComeBack`](connman_core::member::ComeBack) advice, if its reason carries one); 1008 and 4009 end the
/// client; any other code goes to [`classify_close`](Self::classify_close) (default: reconnect with the backoff).
/// Connect failures go to [`classify_connect`](Self::classify_connect) (default: an HTTP 401 or 403 answer to the
/// handshake ends the client, anything else is retried).
#[must_use]
pub struct WsClientBuilder<C> {
    target: Result<ClientRequestBuilder, InvalidConfig>,
    transport: C,
    heartbeat: Option<(Duration, Duration)>,
    backoff: BackoffFactory,
    come_back: Duration,
    classify_close: Arc<dyn Fn(&ClosedByPeer) -> FailureKind + Send + Sync>,
    classify_connect: Arc<dyn Fn(&BoxError) -> FailureKind + Send + Sync>,
    hook: Option<UserHook>,
    hook_timeout: Duration,
    min_uptime: Duration,
    queue_capacity: usize,
    max_wait: Duration,
    max_replays: u32,
    reject_when_full: bool,
    inbound_capacity: usize,
    max_message_size: usize,
    handshake_timeout: Duration,
    close_timeout: Duration,
    correlate: Option<Correlate>,
    request_timeout: Duration,
}

impl<C> WsClientBuilder<C> {
    /// The longest backoff delay by default: 10 s.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
    /// The default spread of reconnects after a "come back" close: 2 s, so 10 000 clients closed at once come back at
    /// about 5000 per second.
    pub const DEFAULT_COME_BACK: Duration = Duration::from_secs(2);
    /// How long a written request waits for its reply by default: 30 s, the queue's max wait.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default number of received messages held for the reader: 1024.
    pub const DEFAULT_INBOUND_CAPACITY: usize = 1024;

    pub(crate) fn new(url: &str, transport: C) -> Self {
        let target = url
            .parse::<Uri>()
            .map(ClientRequestBuilder::new)
            .map_err(|_| InvalidConfig::new("invalid websocket url"));
        Self::with_target(target, transport)
    }

    fn with_target(target: Result<ClientRequestBuilder, InvalidConfig>, transport: C) -> Self {
        Self {
            target,
            transport,
            heartbeat: Some((
                WsConfig::DEFAULT_PING_INTERVAL,
                WsConfig::DEFAULT_PONG_TIMEOUT,
            )),
            backoff: Arc::new(|| Box::new(default_backoff())),
            come_back: Self::DEFAULT_COME_BACK,
            classify_close: Arc::new(|_| FailureKind::Retriable),
            classify_connect: Arc::new(default_classify_connect),
            hook: None,
            hook_timeout: connman_queue::reconnect::DEFAULT_HOOK_TIMEOUT,
            min_uptime: Duration::ZERO,
            queue_capacity: connman_queue::queue::DEFAULT_CAPACITY,
            max_wait: connman_queue::queue::DEFAULT_MAX_WAIT,
            max_replays: connman_queue::queue::DEFAULT_MAX_REPLAYS,
            reject_when_full: false,
            inbound_capacity: Self::DEFAULT_INBOUND_CAPACITY,
            max_message_size: WsConfig::DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: WsConfig::DEFAULT_HANDSHAKE_TIMEOUT,
            close_timeout: WsConfig::DEFAULT_CLOSE_TIMEOUT,
            correlate: None,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The handshake request: the URL with headers and subprotocols (replaces the URL given to the builder).
    pub fn request(mut self, request: ClientRequestBuilder) -> Self {
        self.target = Ok(request);
        self
    }

    /// The transport the sockets are made with: any `Service<HostPort>` answering with an IO stream (a TLS
    /// connector, an in-memory duplex in tests).
    pub fn transport<C2>(self, transport: C2) -> WsClientBuilder<C2> {
        WsClientBuilder {
            target: self.target,
            transport,
            heartbeat: self.heartbeat,
            backoff: self.backoff,
            come_back: self.come_back,
            classify_close: self.classify_close,
            classify_connect: self.classify_connect,
            hook: self.hook,
            hook_timeout: self.hook_timeout,
            min_uptime: self.min_uptime,
            queue_capacity: self.queue_capacity,
            max_wait: self.max_wait,
            max_replays: self.max_replays,
            reject_when_full: self.reject_when_full,
            inbound_capacity: self.inbound_capacity,
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            correlate: self.correlate,
            request_timeout: self.request_timeout,
        }
    }

    /// Ping every `interval`; a socket whose pong does not come within `timeout` is taken for dead and replaced. The
    /// timeout must be shorter than the interval (checked at [`build`](Self::build)). `None` turns pings off.
    pub fn ping(mut self, heartbeat: Option<(Duration, Duration)>) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The backoff between connect attempts, and after a lost socket (except after a "come back" close).
    pub fn backoff<B>(mut self, backoff: B) -> Self
    where
        B: Backoff + Clone + Send + Sync + 'static,
    {
        self.backoff = Arc::new(move || Box::new(backoff.clone()));
        self
    }

    /// After a close with 1001, 1012 or 4200, reconnect after a random delay in `[0, spread]`, or in `[0, advice]`
    /// when the close reason ends with a shorter [`ComeBack`](connman_core::member::ComeBack) advice.
    pub fn come_back_within(mut self, spread: Duration) -> Self {
        self.come_back = spread;
        self
    }

    /// Decides what a close code other than 1001, 1012, 4200, 1008 and 4009 means: `Fatal` ends the client,
    /// `Retriable` reconnects with the backoff.
    pub fn classify_close<F>(mut self, classify: F) -> Self
    where
        F: Fn(&ClosedByPeer) -> FailureKind + Send + Sync + 'static,
    {
        self.classify_close = Arc::new(classify);
        self
    }

    /// Decides whether a failed connect (or a failed on-up hook) is worth retrying.
    pub fn classify_connect<F>(mut self, classify: F) -> Self
    where
        F: Fn(&BoxError) -> FailureKind + Send + Sync + 'static,
    {
        self.classify_connect = Arc::new(classify);
        self
    }

    /// Runs on each new socket before queued sends go out on it: re-authenticate, re-subscribe. Sends through the
    /// [`WsLink`] it is given go out before anything queued. A failure (or the [hook timeout](Self::hook_timeout))
    /// counts as a failed connect.
    pub fn on_up<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(WsLink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |link| Box::pin(hook(link))));
        self
    }

    /// How long the on-up hook may take (above zero).
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    /// Reset the backoff after a lost socket only if it had stayed up this long (default zero: always).
    pub fn min_uptime(mut self, min_uptime: Duration) -> Self {
        self.min_uptime = min_uptime;
        self
    }

    /// How many sends the client answers for at once, waiting or written and unanswered (above zero).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// The longest a send may wait in the queue (above zero); past it, it fails with
    /// [`Elapsed`](connman_core::error::Elapsed) and is never sent.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How many times one send may be replayed after it proved unsent.
    pub fn max_replays(mut self, max_replays: u32) -> Self {
        self.max_replays = max_replays;
        self
    }

    /// When the queue is full, fail sends at once with [`Overloaded`](connman_core::error::Overloaded) instead of
    /// waiting for room.
    pub fn reject_when_full(mut self) -> Self {
        self.reject_when_full = true;
        self
    }

    /// How many received messages wait for the reader: above zero, and at most `usize::MAX >> 3` (the most a tokio
    /// channel holds; memory is taken as messages arrive, not up front).
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.inbound_capacity = capacity;
        self
    }

    /// The largest message received (larger closes the socket with 1009) and sent (larger fails with
    /// [`MessageTooBig`](crate::error::MessageTooBig) before it is queued).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Request mode: how to read the id of a request and of its reply (`None` for a message that is neither), for
    /// [`WsClient::request`]. Replies are matched on the socket their request went out on.
    pub fn correlate<F>(mut self, correlate: F) -> Self
    where
        F: Fn(&Message) -> Option<u64> + Send + Sync + 'static,
    {
        self.correlate = Some(Arc::new(correlate));
        self
    }

    /// How long a written request waits for its reply (above zero); then it ends `MaybeDelivered`, with
    /// [`Elapsed`](connman_core::error::Elapsed) as its source.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time allowed for the opening handshake (above zero).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Time allowed for the server to answer our close (above zero).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Checks the settings, starts the client and gives its handle and its stream of received messages.
    ///
    /// The client connects at once and stays connected until it ends.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the client runs a few small tasks.
    pub fn build<IO>(self) -> Result<(WsClient, Incoming), InvalidConfig>
    where
        C: Service<HostPort, Response = IO> + Send + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = self.target?;
        let config = WsConfig::builder()
            .max_message_size(self.max_message_size)
            .handshake_timeout(self.handshake_timeout)
            .close_timeout(self.close_timeout)
            .heartbeat(None)
            .build()?;
        if let Some((interval, timeout)) = self.heartbeat {
            if timeout.is_zero() || timeout >= interval {
                return Err(InvalidConfig::new(
                    "pong timeout must be above zero and shorter than the ping interval",
                ));
            }
        }
        if self.request_timeout.is_zero() {
            return Err(InvalidConfig::new("request timeout must be above zero"));
        }
        if self.inbound_capacity == 0 {
            return Err(InvalidConfig::new("inbound capacity must be above zero"));
        }
        if self.inbound_capacity > MAX_INBOUND_CAPACITY {
            return Err(InvalidConfig::new(
                "inbound capacity must be at most usize::MAX >> 3",
            ));
        }
        let (inbound, incoming) = mpsc::channel(self.inbound_capacity);
        let ping_timeout = self
            .heartbeat
            .map_or(WsConfig::DEFAULT_PONG_TIMEOUT, |(_, timeout)| timeout);
        let control = Arc::new(Control::new(
            LinkSettings {
                heartbeat: self.heartbeat,
                come_back: self.come_back,
                classify_close: self.classify_close,
                correlate: self.correlate.clone(),
                request_timeout: self.request_timeout,
            },
            inbound,
        ));
        // Room for every send the queue answers for, plus pings and the close.
        let writer_capacity = self.queue_capacity.saturating_add(16);
        let make = MakeLink::new(
            WsConnector::new(self.transport, config),
            control.clone(),
            writer_capacity,
        );
        let built = stack::build(
            make,
            control.clone(),
            StackSettings {
                target,
                backoff: self.backoff,
                classify_connect: self.classify_connect,
                hook: self.hook,
                hook_timeout: self.hook_timeout,
                min_uptime: self.min_uptime,
                queue: QueueSettings {
                    capacity: self.queue_capacity,
                    max_wait: self.max_wait,
                    max_replays: self.max_replays,
                    reject_when_full: self.reject_when_full,
                },
            },
        )?;
        let client = WsClient::from_parts(
            built.queue,
            control,
            built.handle,
            built.state,
            (self.max_message_size, ping_timeout, self.close_timeout),
            self.correlate,
        );
        Ok((client, Incoming::new(incoming)))
    }
}

impl<C: fmt::Debug> fmt::Debug for WsClientBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClientBuilder")
            .field("target", &self.target)
            .field("transport", &self.transport)
            .field("heartbeat", &self.heartbeat)
            .field("come_back", &self.come_back)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// The most messages a tokio channel can hold (its semaphore's bound): a larger capacity would panic in
/// `mpsc::channel`.
const MAX_INBOUND_CAPACITY: usize = usize::MAX >> 3;

/// 100 ms doubling to 10 s, full jitter, never giving up.
fn default_backoff() -> Exponential {
    Exponential::builder()
        .initial(Duration::from_millis(100))
        .factor(2.0)
        .max(WsClientBuilder::<()>::DEFAULT_MAX_BACKOFF)
        .jitter(Jitter::Full)
        .build()
        .unwrap_or_else(|e| unreachable!("invalid default backoff: {e}"))
}

/// An HTTP 401 or 403 answer to the handshake is fatal; everything else is retried.
fn default_classify_connect(error: &BoxError) -> FailureKind {
    match error.downcast_ref::<HttpRejected>() {
        Some(rejected) if matches!(rejected.status(), 401 | 403) => FailureKind::Fatal,
        _ => FailureKind::Retriable,
    }
}

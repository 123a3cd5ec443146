//! The stack of a client, assembled from connman-queue: `Queue` → `Driven` → `Reconnect` → [`MakeLink`], and the
//! task that drives the `Reconnect` while nothing is queued.
//!
//! Every use of connman-queue by the client is in this file.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::backoff::Backoff;
use connman_core::error::BoxError;
use connman_core::lifecycle::FailureKind;
use connman_queue::queue::{Queue, QueueConfig, QueueHandle};
use connman_queue::reconnect::{CloseHandle, OnUp, Reconnect, ReconnectConfig, ReconnectLayer};
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::ClientRequestBuilder;
use tower_layer::Layer;
use tower_service::Service;

use super::control::{ClientEvent, Control, Terminal, lock};
use super::link::WsLink;
use super::make::MakeLink;
use super::message::{Message, Outgoing};

/// The user's on-up hook.
pub(crate) type UserHook =
    Arc<dyn Fn(WsLink) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// A source of backoffs, one per client.
pub(crate) type BackoffFactory = Arc<dyn Fn() -> Box<dyn Backoff + Send + Sync> + Send + Sync>;

pub(crate) type ConnectClassifier = Arc<dyn Fn(&BoxError) -> FailureKind + Send + Sync>;

/// The queue in front of the reconnecting service: what a [`WsClient`](super::WsClient) handle holds.
pub(crate) type Stack = Queue<Driven, Outgoing>;

/// A future of a send below the queue.
pub(crate) type SendBox = Pin<Box<dyn Future<Output = Result<Option<Message>, BoxError>> + Send>>;

/// The reconnecting service, whatever its transport.
pub(crate) trait Erased: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    fn call(&mut self, msg: Outgoing) -> SendBox;
}

impl<R> Erased for R
where
    R: Service<Outgoing, Response = Option<Message>, Error = BoxError> + Send,
    R::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, msg: Outgoing) -> SendBox {
        Box::pin(Service::call(self, msg))
    }
}

type Shared = Arc<Mutex<Box<dyn Erased>>>;

/// The settings of the stack.
pub(crate) struct StackSettings {
    pub(crate) target: ClientRequestBuilder,
    pub(crate) backoff: BackoffFactory,
    pub(crate) classify_connect: ConnectClassifier,
    pub(crate) hook: Option<UserHook>,
    pub(crate) hook_timeout: Duration,
    pub(crate) min_uptime: Duration,
    pub(crate) queue: QueueSettings,
}

/// The settings of the queue.
pub(crate) struct QueueSettings {
    pub(crate) capacity: usize,
    pub(crate) max_wait: Duration,
    pub(crate) max_replays: u32,
    pub(crate) reject_when_full: bool,
}

/// Builds the stack over `make` and spawns its driver.
pub(crate) fn build<C>(
    make: MakeLink<C>,
    control: Arc<Control>,
    settings: StackSettings,
) -> Result<Built, connman_core::error::InvalidConfig>
where
    MakeLink<C>:
        Service<ClientRequestBuilder, Response = WsLink, Error = BoxError> + Send + 'static,
    <MakeLink<C> as Service<ClientRequestBuilder>>::Future: Send,
{
    let backoff = PolicyBackoff {
        inner: (settings.backoff)(),
        factory: settings.backoff.clone(),
        control: control.clone(),
    };
    let classify = settings.classify_connect;
    let config = ReconnectConfig::builder(settings.target)
        .backoff(backoff)
        .classify(move |e| classify(e))
        .min_uptime(settings.min_uptime)
        .hook_timeout(settings.hook_timeout)
        .on_up(UpHook {
            user: settings.hook,
            control: control.clone(),
        })
        .build()?;
    let mut queue = QueueConfig::builder()
        .capacity(settings.queue.capacity)
        .max_wait(settings.queue.max_wait)
        .max_replays(settings.queue.max_replays);
    if settings.queue.reject_when_full {
        queue = queue.reject_when_full();
    }
    let queue_config = queue.build()?;
    let layer = ReconnectLayer::new(config);
    let lifecycle = layer.subscribe();
    let state = layer.state();
    let close = layer.close_handle();
    let reconnect: Reconnect<MakeLink<C>, ClientRequestBuilder, UpHook> = layer.layer(make);
    let reconnect: Shared = Arc::new(Mutex::new(Box::new(reconnect)));
    let driven = Driven {
        inner: reconnect.clone(),
        control: control.clone(),
    };
    let queue = Queue::new(driven, queue_config);
    let handle = queue.handle();
    tokio::spawn(drive(reconnect, control, handle.clone(), close, lifecycle));
    Ok(Built {
        queue,
        handle,
        state,
    })
}

/// A built stack: the queue, its handle, the state watch of the link.
pub(crate) struct Built {
    pub(crate) queue: Stack,
    pub(crate) handle: QueueHandle,
    pub(crate) state: tokio::sync::watch::Receiver<connman_core::State>,
}

/// The queue's view of the reconnecting service: ready while the driver says the link is up, failing once the
/// client ended.
///
/// Only the driver polls the `Reconnect` for readiness, so its timers and connects always wake the same task; the
/// queue calls it while it is up. A call that meets a socket that just ended fails as not sent, and the queue
/// replays it.
#[derive(Clone)]
pub(crate) struct Driven {
    inner: Shared,
    control: Arc<Control>,
}

impl Service<Outgoing> for Driven {
    type Response = Option<Message>;
    type Error = BoxError;
    type Future = SendBox;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(terminal) = self.control.terminal() {
            return Poll::Ready(Err(terminal.error()));
        }
        if self.control.poll_up(cx) {
            return Poll::Ready(Ok(()));
        }
        match self.control.terminal() {
            Some(terminal) => Poll::Ready(Err(terminal.error())),
            None => Poll::Pending,
        }
    }

    fn call(&mut self, msg: Outgoing) -> SendBox {
        // The driver saw the `Reconnect` ready and up; a call on a socket that ended since fails as not sent.
        lock(&self.inner).call(msg)
    }
}

impl fmt::Debug for Driven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driven").finish_non_exhaustive()
    }
}

/// Keeps one client's link up: polls the `Reconnect` until it is up, then waits for its socket to end, and again,
/// until the client ends. Forwards the lifecycle events to the client's events.
async fn drive(
    reconnect: Shared,
    control: Arc<Control>,
    queue: QueueHandle,
    close: CloseHandle,
    mut lifecycle: tokio::sync::broadcast::Receiver<connman_core::Event>,
) {
    let mut events_open = true;
    let mut up: Option<tokio_util::sync::CancellationToken> = None;
    loop {
        let dead = up.clone();
        tokio::select! {
            biased;
            () = control.end.cancelled() => break,
            event = lifecycle.recv(), if events_open => match event {
                Ok(event) => control.emit(ClientEvent::Lifecycle(event)),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => events_open = false,
            },
            ready = poll_fn(|cx| lock(&reconnect).poll_ready(cx)), if up.is_none() => match ready {
                Ok(()) => {
                    let token = control.current().map_or_else(
                        || {
                            let t = tokio_util::sync::CancellationToken::new();
                            t.cancel();
                            t
                        },
                        |link| link.dead(),
                    );
                    up = Some(token);
                    control.set_up(true);
                }
                Err(error) => {
                    control.finish(Terminal::from_error(error));
                    break;
                }
            },
            () = async { if let Some(dead) = dead { dead.cancelled().await } }, if up.is_some() => {
                control.set_up(false);
                up = None;
            }
        }
    }
    control.set_up(false);
    close.close();
    // One more poll publishes the closed state and drops the socket.
    let _ = poll_fn(|cx| Poll::Ready(lock(&reconnect).poll_ready(cx))).await;
    queue.close();
    drop(reconnect);
    while let Ok(event) = lifecycle.try_recv() {
        control.emit(ClientEvent::Lifecycle(event));
    }
    control.close_inbound();
}

/// The client's backoff: after a "come back" close it waits the random delay drawn for it instead of the backoff's.
struct PolicyBackoff {
    inner: Box<dyn Backoff + Send + Sync>,
    factory: BackoffFactory,
    control: Arc<Control>,
}

impl Backoff for PolicyBackoff {
    fn next_delay(&mut self) -> Option<Duration> {
        match self.control.take_come_back() {
            Some(delay) => Some(delay),
            None => self.inner.next_delay(),
        }
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

impl Clone for PolicyBackoff {
    fn clone(&self) -> Self {
        Self {
            inner: (self.factory)(),
            factory: self.factory.clone(),
            control: self.control.clone(),
        }
    }
}

/// The on-up hook of the `Reconnect`: makes the new socket the client's current one, then runs the user's hook on it.
#[derive(Clone)]
pub(crate) struct UpHook {
    user: Option<UserHook>,
    control: Arc<Control>,
}

impl OnUp<WsLink> for UpHook {
    type Service = WsLink;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<WsLink, BoxError>> + Send>>;

    fn on_up(&mut self, link: WsLink) -> Self::Future {
        self.control.set_current(link.handle());
        let user = self.user.clone();
        Box::pin(async move {
            if let Some(user) = user {
                user(link.clone()).await?;
            }
            Ok(link)
        })
    }
}

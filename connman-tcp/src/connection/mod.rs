//! [`Connection`]: one supervised socket that reconnects with backoff and calls a [`Handler`].
//!
//! A connection starts connecting as soon as it is built (CN-02), on a task of its own on the current tokio runtime.
//! The task drives [`connman_core::Lifecycle`]: on a failed attempt or a lost link it waits as the
//! [`Backoff`] says and tries again; [`Connection::disconnect`] ends it for good in every state. Whatever happens is
//! told three ways: the [`Handler`] callbacks, a bounded broadcast of [`Event`]s ([`Connection::events`]) and a watch of
//! the [`State`] ([`Connection::state`]).
//!
//! The connector is any [`Transport`](connman_core::Transport) whose connection reads and writes: [`TcpConnector`] by
//! default, a TLS connector, or a `tower::service_fn` handing out in-memory duplex streams in tests.

mod handler;
mod task;
mod writer;

pub use handler::Handler;
pub use writer::{WriteError, WriteErrorKind, Writer};

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connman_core::backoff::{Backoff, presets};
use connman_core::driver::Driver;
use connman_core::error::{BoxError, NoRuntime};
use connman_core::lifecycle::{CloseReason, Config, FailureKind, Lifecycle};
use connman_core::rt::tokio::TokioTimer;
use connman_core::supervise::Disconnect;
use connman_core::{Event, State};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, watch};
use tower_service::Service;
use tracing::Instrument;

use crate::connector::{ConnectError, DEFAULT_CONNECT_TIMEOUT, TcpConnector};

/// How many events a slow [`Connection::events`] subscriber may fall behind before it misses some.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The size of each read from the socket: 8 KiB, small, as idle connections should be.
pub const DEFAULT_READ_BUFFER: usize = 8 * 1024;

/// A handle to a supervised connection. Cheap to clone; every clone controls the same connection.
///
/// When the last handle is dropped the connection is disconnected, as by [`Connection::disconnect`]; a [`Writer`] does
/// not keep it alive.
///
/// Building one outside a tokio runtime fails with [`NoRuntime`].
#[derive(Clone)]
#[must_use = "dropping the last handle disconnects the connection"]
pub struct Connection {
    inner: Arc<Inner>,
}

impl Connection {
    /// Starts building a connection to `target` over a [`TcpConnector`] with `handler`.
    pub fn builder<T, H>(target: T, handler: H) -> Builder<TcpConnector, T, H> {
        Builder {
            connector: TcpConnector::new().without_timeout(),
            target,
            handler,
            backoff: Box::new(presets::connman()),
            min_uptime: Duration::ZERO,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            classify: default_classify,
            read_buffer: DEFAULT_READ_BUFFER,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Connects to `target` over TCP with the default settings and starts supervising at once.
    ///
    /// ```
    /// use connman_tcp::{Connection, HostPort};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let conn = Connection::connect(HostPort::new("127.0.0.1", 9), ()).expect("inside a runtime");
    /// conn.disconnect();
    /// conn.closed().await;
    /// # }
    /// ```
    ///
    /// Outside a tokio runtime it fails with [`NoRuntime`]:
    ///
    /// ```
    /// use connman_core::error::NoRuntime;
    /// use connman_tcp::{Connection, HostPort};
    ///
    /// let err = Connection::connect(HostPort::new("127.0.0.1", 9), ()).unwrap_err();
    /// assert_eq!(err, NoRuntime::new());
    /// ```
    pub fn connect<T, H>(target: T, handler: H) -> Result<Connection, NoRuntime>
    where
        TcpConnector: Service<T, Response = tokio::net::TcpStream, Error = ConnectError>,
        <TcpConnector as Service<T>>::Future: Send,
        T: Clone + fmt::Debug + Send + 'static,
        H: Handler,
    {
        Self::builder(target, handler).connect()
    }

    /// Closes for good: aborts a connect in flight, closes an established socket, or cancels the backoff wait
    /// (CN-12, CN-13, CN-24). It never reconnects afterwards. Idempotent; returns at once, see [`Connection::closed`].
    ///
    /// A controlled disconnect calls [`Handler::on_close`] only, not [`Handler::on_reset`] (CN-14).
    pub fn disconnect(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Resolves once the connection is closed for good and [`Handler::on_close`] has run, with why it closed.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.inner.state.clone();
        // An error means the task is gone without publishing (a handler panicked): closed all the same.
        let _ = state.wait_for(State::is_closed).await;
        // Without a recorded reason the task ended abnormally, which is not a retriable outcome.
        self.inner
            .reason
            .get()
            .copied()
            .unwrap_or(CloseReason::Fatal)
    }

    /// A watch of the connection's [`State`]: await "up", or show "reconnecting in 3 s".
    ///
    /// Instants in it (`Up::since`, `Backoff::until`) are read from tokio's clock, so they follow paused time in tests.
    pub fn state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// A subscription to the [`Event`]s from now on. Bounded: a subscriber more than the configured capacity behind
    /// misses the oldest (see [`broadcast::error::RecvError::Lagged`]). The [`Handler`] sees every event.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// A [`Writer`] to the current socket (the same one [`Handler::on_connect`] receives).
    pub fn writer(&self) -> Writer {
        self.inner.writer.clone()
    }

    /// Whether the connection is closed for good.
    pub fn is_closed(&self) -> bool {
        self.inner.state.borrow().is_closed()
    }
}

/// A named pool (connman-pool's `Pool`) ends its members through this trait.
///
/// ```
/// use connman_core::supervise::Disconnect;
/// use connman_tcp::{Connection, HostPort};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// fn stop_all<D: Disconnect>(members: &[D]) {
///     members.iter().for_each(Disconnect::disconnect);
/// }
///
/// let conn = Connection::connect(HostPort::new("127.0.0.1", 9), ()).expect("inside a runtime");
/// stop_all(std::slice::from_ref(&conn));
/// conn.closed().await;
/// # }
/// ```
impl Disconnect for Connection {
    fn disconnect(&self) {
        Connection::disconnect(self);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Connection`], from [`Connection::builder`].
///
/// `C` is the connector, `T` the target, `H` the handler.
#[must_use = "a builder does nothing until `connect` is called"]
pub struct Builder<C, T, H> {
    connector: C,
    target: T,
    handler: H,
    backoff: Box<dyn Backoff + Send>,
    min_uptime: Duration,
    connect_timeout: Duration,
    classify: fn(&BoxError) -> FailureKind,
    read_buffer: usize,
    event_capacity: usize,
}

impl<C, T, H> Builder<C, T, H> {
    /// Connects with `connector` instead: any `Service<T>` whose connection reads and writes.
    pub fn connector<C2>(self, connector: C2) -> Builder<C2, T, H> {
        Builder {
            connector,
            target: self.target,
            handler: self.handler,
            backoff: self.backoff,
            min_uptime: self.min_uptime,
            connect_timeout: self.connect_timeout,
            classify: self.classify,
            read_buffer: self.read_buffer,
            event_capacity: self.event_capacity,
        }
    }

    /// The backoff between attempts (default [`presets::connman`]: 20 ms doubling to 128 s, forever).
    ///
    /// A policy with a limit (`max_attempts`, `max_elapsed`) gives up and closes with [`CloseReason::GaveUp`] (CN-10).
    pub fn backoff(mut self, backoff: impl Backoff + Send + 'static) -> Self {
        self.backoff = Box::new(backoff);
        self
    }

    /// Resets the backoff after a lost link only if the link stayed up this long (default zero: always reset, as
    /// connman). See [`Config::min_uptime`].
    pub fn min_uptime(mut self, min_uptime: Duration) -> Self {
        self.min_uptime = min_uptime;
        self
    }

    /// Bounds each connect attempt (default [`DEFAULT_CONNECT_TIMEOUT`], 10 s; connman had none, CN-11). An attempt
    /// that takes longer fails with a [`ConnectError`] whose [`is_timed_out`](ConnectError::is_timed_out) holds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Decides whether a failed attempt is worth retrying. The default retries everything but an invalid target
    /// ([`ConnectError::is_invalid_target`]), which closes with [`CloseReason::Fatal`].
    pub fn classify(mut self, classify: fn(&BoxError) -> FailureKind) -> Self {
        self.classify = classify;
        self
    }

    /// The size of each read, so of the largest chunk [`Handler::on_data`] gets (default [`DEFAULT_READ_BUFFER`]).
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.max(1);
        self
    }

    /// How far behind an [`Connection::events`] subscriber may fall (default [`DEFAULT_EVENT_CAPACITY`]).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// Spawns the connection's task on the current runtime and starts connecting at once (CN-02).
    ///
    /// Outside a tokio runtime it fails with [`NoRuntime`] (and the handler is dropped unused).
    pub fn connect<IO>(self) -> Result<Connection, NoRuntime>
    where
        C: Service<T, Response = IO> + Send + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        T: Clone + fmt::Debug + Send + 'static,
        H: Handler,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime::new())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let (state_tx, state_rx) = watch::channel(State::Idle);
        let (events_tx, _) = broadcast::channel(self.event_capacity);
        let reason = Arc::new(OnceLock::new());
        let writer = Writer::new(stop_tx.clone());
        let span = tracing::info_span!("connection", target = ?self.target);
        let lifecycle =
            Lifecycle::with_config(self.backoff, Config::new().min_uptime(self.min_uptime));
        let observe = task::Observe {
            handler: self.handler,
            writer: writer.clone(),
            state: state_tx,
            events: events_tx.clone(),
            reason: reason.clone(),
        };
        let supervisor = task::Supervisor {
            connector: self.connector,
            target: self.target,
            driver: Driver::new(lifecycle, TokioTimer::new(), observe),
            connect_timeout: self.connect_timeout,
            classify: self.classify,
            read_buffer: self.read_buffer,
            stop: stop_rx,
            writer: writer.clone(),
        };
        runtime.spawn(supervisor.run().instrument(span));
        Ok(Connection {
            inner: Arc::new(Inner {
                stop: stop_tx,
                state: state_rx,
                events: events_tx,
                writer,
                reason,
            }),
        })
    }
}

impl<C, T: fmt::Debug, H> fmt::Debug for Builder<C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("target", &self.target)
            .field("min_uptime", &self.min_uptime)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_buffer", &self.read_buffer)
            .finish_non_exhaustive()
    }
}

/// The default failure classifier: an invalid target is fatal, everything else is worth retrying.
fn default_classify(error: &BoxError) -> FailureKind {
    match error.downcast_ref::<ConnectError>() {
        Some(e) if e.is_invalid_target() => FailureKind::Fatal,
        _ => FailureKind::Retriable,
    }
}

/// What every clone of a [`Connection`] shares.
struct Inner {
    stop: Arc<watch::Sender<bool>>,
    state: watch::Receiver<State>,
    events: broadcast::Sender<Event>,
    writer: Writer,
    reason: Arc<OnceLock<CloseReason>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can disconnect it any more, so disconnect now.
        self.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests;

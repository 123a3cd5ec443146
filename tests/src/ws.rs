//! A WebSocket test server that counts: connman-ws's `accept` into a [`Group`], with the instant of every completed
//! handshake and the number of messages received.
//!
//! The loop is the one of connman-ws's crate docs: accept, split, add the member to the group, read until the
//! connection ends. It never calls `Group::touch` or `Group::remove`: every inbound frame refreshes the member's
//! idleness, and a member leaves the group by itself when its connection ends.
//!
//! [`CountingServer`] runs the loop on a loopback `TcpListener`. [`serve_connection`] is the loop's body for one
//! connection over any IO, for a listener of another kind (turmoil's in the simulated-network tests); [`Counts`] is
//! what it counts into, shared across server restarts.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::member::CloseCode;
use connman_pool::group::Group;
use connman_ws::{AcceptConfig, Received, accept};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Sees every text or binary message a [`serve_connection`] receives: the connection's namespace and id, then the
/// payload.
pub type OnMessage = Arc<dyn Fn(&str, &str, &Bytes) + Send + Sync>;

/// What the servers of a test saw: completed handshakes (with their instants) and received messages. Clones share
/// the counts, so one `Counts` can outlive a server that restarts.
#[derive(Clone, Default)]
pub struct Counts {
    accepts: Arc<Mutex<Vec<Instant>>>,
    received: Arc<AtomicU64>,
    on_message: Option<OnMessage>,
}

impl Counts {
    /// Empty counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also hands every received text or binary message to `hook` (a log of what arrived, for a checker).
    #[must_use]
    pub fn on_message(mut self, hook: impl Fn(&str, &str, &Bytes) + Send + Sync + 'static) -> Self {
        self.on_message = Some(Arc::new(hook));
        self
    }

    /// How many handshakes completed.
    pub fn accepted(&self) -> usize {
        lock(&self.accepts).len()
    }

    /// When each handshake completed, in order.
    pub fn accepts(&self) -> Vec<Instant> {
        lock(&self.accepts).clone()
    }

    /// How many text or binary messages arrived.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counts")
            .field("accepted", &self.accepted())
            .field("received", &self.received())
            .field("on_message", &self.on_message.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection's life on the server: the handshake, the member into `group`, then every message counted until
/// the connection ends (and its member leaves the group by itself).
///
/// A failed handshake, or an id already in the group, ends it quietly.
pub async fn serve_connection<IO>(io: IO, config: &AcceptConfig, group: &Group, counts: &Counts)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(conn) = accept(io, config).await else {
        return;
    };
    lock(&counts.accepts).push(Instant::now());
    let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
    let (member, mut incoming) = conn.split();
    if group.add(ns.clone(), id.clone(), member).is_err() {
        return;
    }
    // Reading answers pings and finishes the close handshake.
    while let Some(Ok(msg)) = incoming.next().await {
        let payload = match msg {
            Received::Text(text) => Bytes::from(text),
            Received::Binary(bytes) => bytes,
            _ => continue,
        };
        counts.received.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = &counts.on_message {
            hook(&ns, &id, &payload);
        }
    }
}

/// A loopback WebSocket server putting every connection into a [`Group`] and counting accepts and messages.
///
/// It can be stopped and started again on the same port (a bounce); dropping it stops its tasks.
///
/// ```
/// use connman_tests::ws::CountingServer;
/// use connman_ws::client::WsClient;
/// use connman_ws::{AcceptConfig, WsConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), connman_core::error::BoxError> {
/// let server = CountingServer::start(AcceptConfig::new(WsConfig::default()).namespace("lobby")).await?;
/// let (mut client, _incoming) = WsClient::builder(&format!("ws://{}/", server.addr())).build()?;
/// client.send("hello").await?;
/// while server.received() == 0 {
///     tokio::task::yield_now().await;
/// }
/// assert_eq!(server.accepted(), 1);
/// assert_eq!(server.group().namespace_len("lobby"), 1);
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CountingServer {
    group: Group,
    addr: SocketAddr,
    config: AcceptConfig,
    counts: Counts,
    running: Mutex<Option<Running>>,
}

/// The accept loop of one listener, and how to stop it.
#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    stop: oneshot::Sender<(CloseCode, Duration)>,
}

impl CountingServer {
    /// Binds `127.0.0.1:0` and serves with `config`.
    pub async fn start(config: AcceptConfig) -> io::Result<Self> {
        Self::with_counts(config, Counts::new()).await
    }

    /// Binds `127.0.0.1:0` and serves with `config`, counting into `counts`.
    pub async fn with_counts(config: AcceptConfig, counts: Counts) -> io::Result<Self> {
        Self::with_group(Group::new(), config, counts).await
    }

    /// Binds `127.0.0.1:0` and serves with `config` into `group` (one built with hooks or settings), counting into
    /// `counts`.
    pub async fn with_group(
        group: Group,
        config: AcceptConfig,
        counts: Counts,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Self {
            group,
            addr,
            config,
            counts,
            running: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let (group, config, counts) =
            (self.group.clone(), self.config.clone(), self.counts.clone());
        let (stop, mut stopped) = oneshot::channel::<(CloseCode, Duration)>();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            let (code, within) = loop {
                tokio::select! {
                    stop = &mut stopped => match stop {
                        Ok(stop) => break stop,
                        // The server was dropped: its connections go with it.
                        Err(_) => return,
                    },
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { return };
                        let (group, config, counts) = (group.clone(), config.clone(), counts.clone());
                        conns.spawn(async move { serve_connection(tcp, &config, &group, &counts).await });
                        while conns.try_join_next().is_some() {}
                    }
                }
            };
            drop(listener);
            // Closes while the connections still read, so that each close handshake completes.
            let mut closing = Vec::new();
            for ns in group.namespaces() {
                closing.extend(group.close_all(&ns, code, "server stopping"));
            }
            let _ = tokio::time::timeout(within, async {
                futures_util::future::join_all(closing).await;
                while conns.join_next().await.is_some() {}
            })
            .await;
        });
        if let Some(old) = lock(&self.running).replace(Running { task, stop }) {
            old.task.abort();
        }
    }

    /// The group every connection joins.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What it counted.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// How many handshakes completed.
    pub fn accepted(&self) -> usize {
        self.counts.accepted()
    }

    /// When each handshake completed, in order.
    pub fn accepts(&self) -> Vec<Instant> {
        self.counts.accepts()
    }

    /// How many text or binary messages arrived.
    pub fn received(&self) -> u64 {
        self.counts.received()
    }

    /// Stops accepting and ends every connection with `code`, as a server going down does; the connections still
    /// open after `within` are dropped.
    pub async fn stop(&self, code: CloseCode, within: Duration) {
        let Some(Running { task, stop }) = lock(&self.running).take() else {
            return;
        };
        if stop.send((code, within)).is_ok() {
            let _ = task.await;
        }
    }

    /// Listens again on the same port, after [`stop`](Self::stop).
    pub async fn restart(&self) -> io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            running.task.abort();
        }
    }
}

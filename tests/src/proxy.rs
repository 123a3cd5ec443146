//! A fault-injecting TCP proxy on loopback.
//!
//! [`FaultProxy`] listens on `127.0.0.1:0` and forwards every connection to an upstream address. Through a cheap,
//! cloneable [`ProxyHandle`] a test changes, at run time, what happens to the bytes:
//!
//! | fault | effect |
//! |---|---|
//! | [`delay`](ProxyHandle::delay) | each chunk is held this long before it is forwarded |
//! | [`slice_writes`](ProxyHandle::slice_writes) | chunks are forwarded in pieces of at most this many bytes |
//! | [`cut_after`](ProxyHandle::cut_after) | each connection is closed once it forwarded this many more bytes, both ways together |
//! | [`blackhole`](ProxyHandle::blackhole) | bytes are read and dropped, nothing is forwarded, sockets stay open: a half-open link |
//! | [`reset_now`](ProxyHandle::reset_now) | every live connection is reset (RST) at once |
//! | [`refuse`](ProxyHandle::refuse) | the listener closes, so connects are refused; [`restore`](ProxyHandle::restore) rebinds the same port |
//! | [`heal`](ProxyHandle::heal) | clean forwarding again (the listener is [`restore`](ProxyHandle::restore)d separately) |
//!
//! Every buffer is bounded (one read buffer per direction and connection, and at most
//! [`ProxyConfig::max_connections`] connections); every task ends when the [`FaultProxy`] is dropped.
//!
//! The proxy is meant for real time: its holds and its upstream connect timeout are tokio timers, so under paused time
//! they would jump ahead whenever the runtime waits on a socket.
//!
//! ```
//! use connman_tests::proxy::FaultProxy;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let upstream = TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = FaultProxy::start(upstream.local_addr()?).await?;
//! let mut client = tokio::net::TcpStream::connect(proxy.addr()).await?;
//! let (mut server, _) = upstream.accept().await?;
//!
//! client.write_all(b"ping").await?;
//! let mut buf = [0; 4];
//! server.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//!
//! // From now on the link is cut after two more bytes.
//! proxy.handle().cut_after(2);
//! server.write_all(b"pong").await?;
//! let mut got = Vec::new();
//! client.read_to_end(&mut got).await?;
//! assert_eq!(got, b"po");
//! assert_eq!(proxy.handle().stats().cuts, 1);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Settings of a [`FaultProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The read buffer of each direction of each connection, in bytes (default 16 KiB).
    pub buffer_size: usize,
    /// The most connections forwarded at once; more are closed at accept (default 1024).
    pub max_connections: usize,
    /// How long to wait for the upstream to accept a connection (default 5 s, like a short client connect timeout).
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    /// The default settings.
    pub const fn new() -> Self {
        Self {
            buffer_size: 16 * 1024,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Sets [`ProxyConfig::buffer_size`] (at least 1).
    #[must_use]
    pub const fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = if bytes == 0 { 1 } else { bytes };
        self
    }

    /// Sets [`ProxyConfig::max_connections`].
    #[must_use]
    pub const fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets [`ProxyConfig::connect_timeout`].
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Totals of a [`FaultProxy`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub live: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
    /// Bytes read and dropped by the blackhole.
    pub bytes_dropped: u64,
    /// Chunks (or slices) held by a delay.
    pub delayed: u64,
    /// Chunks forwarded in more than one piece.
    pub sliced: u64,
    /// Chunks dropped by the blackhole.
    pub blackholed: u64,
    /// Connections cut after their byte budget.
    pub cuts: u64,
    /// Connections reset.
    pub resets: u64,
    /// Times the listener was closed by [`ProxyHandle::refuse`].
    pub refusals: u64,
    /// Connections closed because the upstream could not be reached.
    pub upstream_failures: u64,
    /// Connections closed at accept because [`ProxyConfig::max_connections`] were open.
    pub rejected: u64,
}

impl ProxyStats {
    /// Every fault that acted, all kinds together.
    pub const fn faults_injected(&self) -> u64 {
        self.delayed + self.sliced + self.blackholed + self.cuts + self.resets + self.refusals
    }
}

/// A TCP proxy on `127.0.0.1:0` that injects faults on demand. See the [module docs](self).
///
/// Dropping it ends every task it started and closes every socket; handles left over then do nothing.
#[derive(Debug)]
pub struct FaultProxy {
    handle: ProxyHandle,
    _shutdown: DropGuard,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` with default settings.
    ///
    /// # Errors
    ///
    /// The error of binding the listener.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        Self::with_config(upstream, ProxyConfig::new()).await
    }

    /// Starts a proxy in front of `upstream`.
    ///
    /// # Errors
    ///
    /// The error of binding the listener.
    pub async fn with_config(upstream: SocketAddr, config: ProxyConfig) -> io::Result<Self> {
        let listener = bind_reusable(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            upstream,
            config,
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            listener: tokio::sync::Mutex::new(None),
        });
        *shared.listener.lock().await = Some(spawn_accept(&shared, listener));
        Ok(Self {
            handle: ProxyHandle { shared },
            _shutdown: shutdown.drop_guard(),
        })
    }

    /// The address clients connect to; it stays the same across [`ProxyHandle::refuse`] and
    /// [`ProxyHandle::restore`].
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    /// The handle that injects faults; clone it to share it.
    pub fn handle(&self) -> &ProxyHandle {
        &self.handle
    }
}

/// Controls a [`FaultProxy`] at run time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Holds each chunk this long before forwarding it (each slice, when [`slice_writes`](Self::slice_writes) is on).
    ///
    /// The hold applies backpressure: nothing more is read from that side meanwhile.
    pub fn delay(&self, delay: Duration) {
        self.faults().delay = Some(delay);
    }

    /// Forwards chunks in pieces of at most `max_bytes` (at least 1), each written and flushed on its own.
    pub fn slice_writes(&self, max_bytes: usize) {
        self.faults().slice = Some(max_bytes.max(1));
    }

    /// Closes each connection once it has forwarded `n_bytes` more, counting both directions together.
    ///
    /// The budget counts from this call for live connections and from their accept for new ones; a chunk that would
    /// pass it is forwarded only up to the budget, so the peer sees exactly `n_bytes` and then the end of the stream.
    pub fn cut_after(&self, n_bytes: u64) {
        let mut faults = self.faults();
        faults.cut_after = Some(n_bytes);
        faults.cut_epoch = faults.cut_epoch.wrapping_add(1);
    }

    /// Reads and drops everything, both ways, and keeps every socket open: a half-open link.
    ///
    /// A connection accepted while the blackhole is on never reaches the upstream and stays a blackhole until it is
    /// reset or closed by its client; live connections forward again after [`heal`](Self::heal), minus what was
    /// dropped.
    pub fn blackhole(&self) {
        self.faults().blackhole = true;
    }

    /// Resets every live connection now (`SO_LINGER` zero, then close: both peers get an RST) and returns how many.
    pub fn reset_now(&self) -> usize {
        let live = lock(&self.shared.live);
        for token in live.values() {
            token.cancel();
        }
        let n = live.len();
        self.shared
            .counters
            .resets
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Closes the listener so that connects are refused; live connections carry on. When it returns the port is
    /// closed. Does nothing if already refusing.
    pub async fn refuse(&self) {
        let mut listener = self.shared.listener.lock().await;
        if let Some(running) = listener.take() {
            running.stop.cancel();
            // The accept task ends on cancellation and drops the listener with it.
            let _ = running.task.await;
            self.shared
                .counters
                .refusals
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Listens on the same port again after [`refuse`](Self::refuse). Does nothing if listening.
    ///
    /// # Errors
    ///
    /// The error of binding the port (another socket may have taken it meanwhile), or
    /// [`io::ErrorKind::NotConnected`] once the proxy is dropped.
    pub async fn restore(&self) -> io::Result<()> {
        let mut listener = self.shared.listener.lock().await;
        if self.shared.shutdown.is_cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the proxy is dropped",
            ));
        }
        if listener.is_none() {
            let bound = bind_reusable(self.shared.addr)?;
            *listener = Some(spawn_accept(&self.shared, bound));
        }
        Ok(())
    }

    /// Whether the listener is closed by [`refuse`](Self::refuse).
    pub async fn is_refusing(&self) -> bool {
        self.shared.listener.lock().await.is_none()
    }

    /// Clean forwarding again: no delay, no slicing, no cut, no blackhole. A refused listener stays closed until
    /// [`restore`](Self::restore).
    pub fn heal(&self) {
        let mut faults = self.faults();
        let epoch = faults.cut_epoch;
        *faults = Faults {
            cut_epoch: epoch,
            ..Faults::default()
        };
    }

    /// The totals so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: get(&c.connections),
            live: lock(&self.shared.live).len() as u64,
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            bytes_dropped: get(&c.bytes_dropped),
            delayed: get(&c.delayed),
            sliced: get(&c.sliced),
            blackholed: get(&c.blackholed),
            cuts: get(&c.cuts),
            resets: get(&c.resets),
            refusals: get(&c.refusals),
            upstream_failures: get(&c.upstream_failures),
            rejected: get(&c.rejected),
        }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.shared.faults)
    }
}

/// Binds a listener with `SO_REUSEADDR`, so that the same port can be bound again while old connections linger.
pub(crate) fn bind_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    config: ProxyConfig,
    faults: Mutex<Faults>,
    counters: Counters,
    /// The reset switch of each live connection, by id.
    live: Mutex<HashMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    listener: tokio::sync::Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    delay: Option<Duration>,
    slice: Option<usize>,
    cut_after: Option<u64>,
    /// Bumped by every `cut_after`, so that live connections start a new budget.
    cut_epoch: u64,
    blackhole: bool,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    bytes_dropped: AtomicU64,
    delayed: AtomicU64,
    sliced: AtomicU64,
    blackholed: AtomicU64,
    cuts: AtomicU64,
    resets: AtomicU64,
    refusals: AtomicU64,
    upstream_failures: AtomicU64,
    rejected: AtomicU64,
}

/// The byte budget of one connection, shared by its two directions.
#[derive(Debug, Default)]
struct Budget {
    forwarded: u64,
    since: u64,
    epoch: u64,
}

impl Budget {
    /// How much of `n` bytes may go out, and whether the connection must be cut after them.
    fn take(&mut self, n: u64, faults: &Faults) -> (u64, bool) {
        let Some(limit) = faults.cut_after else {
            self.forwarded += n;
            return (n, false);
        };
        if self.epoch != faults.cut_epoch {
            self.epoch = faults.cut_epoch;
            self.since = self.forwarded;
        }
        let used = self.forwarded - self.since;
        let allowed = n.min(limit.saturating_sub(used));
        self.forwarded += allowed;
        (allowed, used + allowed >= limit)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// How a forwarded connection ended.
enum End {
    Done,
    Cut,
    Reset,
}

/// Removes a connection from the live set when its task ends, however it ends.
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
    }
}

fn spawn_accept(shared: &Arc<Shared>, listener: TcpListener) -> Running {
    let stop = shared.shutdown.child_token();
    let task = tokio::spawn(accept_loop(shared.clone(), listener, stop.clone()));
    Running { stop, task }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => admit(&shared, stream),
                Err(e) => tracing::debug!(error = %e, "proxy accept failed"),
            },
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let reset = shared.shutdown.child_token();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut live = lock(&shared.live);
        if live.len() >= shared.config.max_connections {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        live.insert(id, reset.clone());
    }
    let guard = LiveGuard {
        shared: shared.clone(),
        id,
    };
    tokio::spawn(async move {
        let shared = guard.shared.clone();
        connection(&shared, stream, reset).await;
        drop(guard);
    });
}

async fn connection(shared: &Shared, mut client: TcpStream, reset: CancellationToken) {
    // Small slices must leave as small segments.
    let _ = client.set_nodelay(true);
    if lock(&shared.faults).blackhole {
        let mut buf = vec![0; shared.config.buffer_size];
        tokio::select! {
            () = reset.cancelled() => abort(shared, &client),
            () = sink(shared, &mut client, &mut buf) => {}
        }
        return;
    }
    let connect = tokio::time::timeout(
        shared.config.connect_timeout,
        TcpStream::connect(shared.upstream),
    );
    let mut upstream = tokio::select! {
        () = reset.cancelled() => {
            abort(shared, &client);
            return;
        }
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(_)) | Err(_) => {
                shared.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let _ = upstream.set_nodelay(true);
    let cut = CancellationToken::new();
    let budget = Mutex::new(Budget::default());
    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = pump(
            shared,
            &budget,
            &cut,
            client_read,
            upstream_write,
            Direction::Up,
        );
        let down = pump(
            shared,
            &budget,
            &cut,
            upstream_read,
            client_write,
            Direction::Down,
        );
        tokio::select! {
            () = reset.cancelled() => End::Reset,
            () = cut.cancelled() => End::Cut,
            _ = futures_util::future::join(up, down) => End::Done,
        }
    };
    match end {
        End::Reset => {
            abort(shared, &client);
            abort(shared, &upstream);
        }
        End::Cut => {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        End::Done => {}
    }
}

/// Makes the coming close of `stream` an RST, unless the proxy itself is going away.
fn abort(shared: &Shared, stream: &TcpStream) {
    if !shared.shutdown.is_cancelled() {
        let _ = stream.set_zero_linger();
    }
}

/// Reads and drops everything until the client goes away.
async fn sink(shared: &Shared, client: &mut TcpStream, buf: &mut [u8]) {
    loop {
        match client.read(buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let c = &shared.counters;
                c.blackholed.fetch_add(1, Ordering::Relaxed);
                c.bytes_dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Forwards one direction of a connection until its reader ends or the budget runs out.
async fn pump<R, W>(
    shared: &Shared,
    budget: &Mutex<Budget>,
    cut: &CancellationToken,
    mut reader: R,
    mut writer: W,
    direction: Direction,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let counters = &shared.counters;
    let mut buf = vec![0; shared.config.buffer_size];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = writer.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let faults = *lock(&shared.faults);
        if faults.blackhole {
            counters.blackholed.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        let (allowed, cut_now) = lock(budget).take(n as u64, &faults);
        // `allowed` is at most `n`, a buffer length, so it fits in usize.
        let chunk = &buf[..usize::try_from(allowed).unwrap_or(n)];
        let piece = faults.slice.unwrap_or(chunk.len()).max(1);
        if chunk.len() > piece {
            counters.sliced.fetch_add(1, Ordering::Relaxed);
        }
        for slice in chunk.chunks(piece) {
            if let Some(delay) = faults.delay {
                counters.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
            }
            if writer.write_all(slice).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            let forwarded = match direction {
                Direction::Up => &counters.bytes_up,
                Direction::Down => &counters.bytes_down,
            };
            forwarded.fetch_add(slice.len() as u64, Ordering::Relaxed);
        }
        if cut_now {
            cut.cancel();
            return;
        }
    }
}

/// Locks proxy state; a panic elsewhere leaves these plain values intact, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

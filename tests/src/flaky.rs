//! A flaky echo server, like the connman seed's `runTest.sh` (`esrv.js`).
//!
//! [`FlakyServer`] listens on `127.0.0.1:0`, greets each connection with `hello\r\n`, echoes everything it reads, and
//! ends each connection a set `lifetime` after accepting it (`None`: never). [`FlakyServer::stop`] closes the listener
//! and drops every live connection; [`FlakyServer::restart`] listens again on the same port. Counters tell how many
//! connections were accepted and how many bytes echoed. Dropping the server stops all its tasks.
//!
//! ```
//! use connman_tests::flaky::FlakyServer;
//! use std::time::Duration;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = FlakyServer::builder()
//!     .lifetime(Some(Duration::from_secs(5)))
//!     .start()
//!     .await?;
//! let mut socket = tokio::net::TcpStream::connect(server.addr()).await?;
//! let mut greeting = [0; 7];
//! socket.read_exact(&mut greeting).await?;
//! assert_eq!(&greeting, b"hello\r\n");
//!
//! socket.write_all(b"ping").await?;
//! let mut echo = [0; 4];
//! socket.read_exact(&mut echo).await?;
//! assert_eq!(&echo, b"ping");
//! assert_eq!(server.accepted(), 1);
//!
//! // Stopped, nothing listens; restarted, the same port answers again.
//! server.stop().await;
//! assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
//! server.restart().await?;
//! assert!(tokio::net::TcpStream::connect(server.addr()).await.is_ok());
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::proxy::bind_reusable;

/// The greeting `esrv.js` sends on every connection.
pub const GREETING: &[u8] = b"hello\r\n";

/// Settings of a [`FlakyServer`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct Builder {
    lifetime: Option<Duration>,
    greeting: Bytes,
}

impl Builder {
    /// Ends each connection this long after accepting it; `None` (the default) keeps connections open.
    ///
    /// `esrv.js` used 5 s.
    pub fn lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sends `greeting` first on each connection (default [`GREETING`]); empty for none.
    pub fn greeting(mut self, greeting: impl Into<Bytes>) -> Self {
        self.greeting = greeting.into();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start(self) -> io::Result<FlakyServer> {
        let listener = bind_reusable("127.0.0.1:0".parse().map_err(io::Error::other)?)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            lifetime: self.lifetime,
            greeting: self.greeting,
            accepted: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            live: AtomicU64::new(0),
        });
        let server = FlakyServer {
            addr,
            inner,
            running: Mutex::new(None),
        };
        server.serve(listener).await;
        Ok(server)
    }
}

/// A loopback echo server that greets, echoes, ends connections after a lifetime, and can stop and restart on the
/// same port. See the [module docs](self).
#[derive(Debug)]
pub struct FlakyServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Mutex<Option<Running>>,
}

impl FlakyServer {
    /// Starts building a server: no lifetime, greeting [`GREETING`].
    pub fn builder() -> Builder {
        Builder {
            lifetime: None,
            greeting: Bytes::from_static(GREETING),
        }
    }

    /// Starts a server with the default settings.
    ///
    /// # Errors
    ///
    /// When the listener cannot be bound.
    pub async fn start() -> io::Result<FlakyServer> {
        Self::builder().start().await
    }

    /// The address it listens on (also while stopped: a restart reuses it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted since the start, across restarts.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Bytes echoed back since the start (greetings not counted).
    pub fn bytes_echoed(&self) -> u64 {
        self.inner.echoed.load(Ordering::Relaxed)
    }

    /// Connections open right now.
    pub fn live(&self) -> u64 {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Whether the listener is up.
    pub async fn is_running(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// Closes the listener and drops every live connection; resolves once they are gone. Idempotent.
    pub async fn stop(&self) {
        let running = self.running.lock().await.take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port, after [`FlakyServer::stop`]; a running server is stopped first.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound again (another process took it).
    pub async fn restart(&self) -> io::Result<()> {
        self.stop().await;
        let listener = bind_reusable(self.addr)?;
        self.serve(listener).await;
        Ok(())
    }

    async fn serve(&self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, self.inner.clone(), stopped));
        *self.running.lock().await = Some(Running { stop, task });
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its set of connection tasks, which aborts them too.
        if let Some(running) = self.running.get_mut().take() {
            running.task.abort();
        }
    }
}

#[derive(Debug)]
struct Inner {
    lifetime: Option<Duration>,
    greeting: Bytes,
    accepted: AtomicU64,
    echoed: AtomicU64,
    live: AtomicU64,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    inner.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve(socket, inner.clone()));
                }
                // A failed accept (the peer gave up, descriptors ran out) affects that connection only.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            },
            // Reap finished connections so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve(mut socket: TcpStream, inner: Arc<Inner>) {
    inner.live.fetch_add(1, Ordering::Relaxed);
    let _live = LiveGuard(inner.clone());
    let echo = async {
        if !inner.greeting.is_empty() {
            socket.write_all(&inner.greeting).await?;
        }
        let mut buf = vec![0; 8 * 1024];
        loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            socket.write_all(&buf[..n]).await?;
            inner.echoed.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    match inner.lifetime {
        Some(lifetime) => {
            // Past its lifetime the connection ends, as `esrv.js`'s `setTimeout(() => c.end(), 5000)`.
            let _ = tokio::time::timeout(lifetime, echo).await;
        }
        None => {
            let _ = echo.await;
        }
    }
    let _ = socket.shutdown().await;
}

/// Counts a connection as live for as long as its task runs, including when it is aborted.
struct LiveGuard(Arc<Inner>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

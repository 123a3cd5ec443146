//! [`TcpConnector`]: a [`Transport`](connman_core::Transport) to a socket address or to a host and port.
//!
//! It resolves the host, tries each address in turn, and bounds the whole attempt by a connect timeout (10 s by
//! default, as connection-manager). Every stream it hands out has `TCP_NODELAY` on and TCP keepalive armed. Each way a
//! connect can fail is a distinct [`ConnectErrorKind`] of one [`ConnectError`].
//!
//! ```
//! use connman_tcp::{HostPort, TcpConnector};
//! use tower_service::Service;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let port = listener.local_addr()?.port();
//!
//! let mut connector = TcpConnector::new();
//! let stream = connector.call(HostPort::new("127.0.0.1", port)).await?;
//! assert!(stream.nodelay()?);
//!
//! // Port 0 is not a place to connect to.
//! let err = connector.call(HostPort::new("127.0.0.1", 0)).await.unwrap_err();
//! assert!(err.is_invalid_target());
//! # Ok(())
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::error::{BoxError, Elapsed};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::Instrument;

/// The default connect timeout: 10 s, connection-manager's default (CM-07).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default idle time before TCP keepalive probes start: 15 s, Go's `net.Dialer` default.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// A host name (or IP literal) and a port: a target for [`TcpConnector`].
///
/// ```
/// use connman_tcp::HostPort;
///
/// let a = HostPort::new("localhost", 8124);
/// let b: HostPort = ("localhost", 8124).into();
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), "localhost:8124");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Arc<str>,
    port: u16,
}

impl HostPort {
    /// A target at `host` and `port`.
    ///
    /// Nothing is checked here; an empty host or port 0 fail the connect with [`ConnectErrorKind::InvalidTarget`].
    pub fn new(host: impl AsRef<str>, port: u16) -> Self {
        Self {
            host: Arc::from(host.as_ref()),
            port,
        }
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub const fn port(&self) -> u16 {
        self.port
    }
}

impl From<(&str, u16)> for HostPort {
    fn from((host, port): (&str, u16)) -> Self {
        Self::new(host, port)
    }
}

impl From<(String, u16)> for HostPort {
    fn from((host, port): (String, u16)) -> Self {
        Self::new(host, port)
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Connects TCP streams: a `Service<SocketAddr>` and a `Service<HostPort>`, so a [`Transport`](connman_core::Transport).
///
/// Defaults: connect timeout [`DEFAULT_CONNECT_TIMEOUT`] (covering resolution and every address tried),
/// `TCP_NODELAY` on, keepalive after [`DEFAULT_KEEPALIVE`] of idleness. The service is always ready.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    timeout: Option<Duration>,
    nodelay: bool,
    keepalive: Option<Duration>,
}

impl TcpConnector {
    /// A connector with the default settings.
    pub const fn new() -> Self {
        Self {
            timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            nodelay: true,
            keepalive: Some(DEFAULT_KEEPALIVE),
        }
    }

    /// Sets the connect timeout (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Turns `TCP_NODELAY` on or off (default on).
    #[must_use]
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Sets the idle time before keepalive probes, or `None` to leave keepalive off (default [`DEFAULT_KEEPALIVE`]).
    #[must_use]
    pub const fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.keepalive = idle;
        self
    }

    /// A connector whose timeout is left to its caller, for a [`Connection`](crate::Connection) that bounds every
    /// attempt itself.
    pub(crate) const fn without_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    fn start(&self, target: Target) -> ConnectFuture {
        let settings = self.clone();
        let span = tracing::debug_span!("tcp_connect", target = %target);
        let fut = async move {
            let result = match settings.timeout {
                Some(limit) => match tokio::time::timeout(limit, settings.connect(&target)).await {
                    Ok(result) => result,
                    Err(_) => Err(ConnectError::new(
                        ConnectErrorKind::TimedOut,
                        target.to_string(),
                        Some(Box::new(Elapsed::new())),
                    )),
                },
                None => settings.connect(&target).await,
            };
            match &result {
                Ok(_) => tracing::debug!("connected"),
                Err(e) => tracing::debug!(error = %e, kind = ?e.kind(), "connect failed"),
            }
            result
        };
        ConnectFuture {
            inner: Box::pin(fut.instrument(span)),
        }
    }

    async fn connect(&self, target: &Target) -> Result<TcpStream, ConnectError> {
        let name = target.to_string();
        let addrs: Vec<SocketAddr> = match target {
            Target::Addr(addr) => {
                if addr.port() == 0 {
                    return Err(invalid(name, "port 0"));
                }
                vec![*addr]
            }
            Target::Host(hp) => {
                if hp.port == 0 {
                    return Err(invalid(name, "port 0"));
                }
                if hp.host.is_empty() {
                    return Err(invalid(name, "empty host"));
                }
                match tokio::net::lookup_host((hp.host(), hp.port)).await {
                    Ok(found) => found.collect(),
                    Err(e) => {
                        return Err(ConnectError::new(
                            ConnectErrorKind::Unresolved,
                            name,
                            Some(Box::new(e)),
                        ));
                    }
                }
            }
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    self.configure(&stream)
                        .map_err(|e| ConnectError::from_io(name.clone(), e))?;
                    return Ok(stream);
                }
                Err(e) => last = Some(ConnectError::from_io(name.clone(), e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            ConnectError::new(ConnectErrorKind::Unresolved, name, None).with_note("no address")
        }))
    }

    fn configure(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
        }
        Ok(())
    }
}

impl Default for TcpConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl Service<SocketAddr> for TcpConnector {
    type Response = TcpStream;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        self.start(Target::Addr(addr))
    }
}

impl Service<HostPort> for TcpConnector {
    type Response = TcpStream;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: HostPort) -> Self::Future {
        self.start(Target::Host(target))
    }
}

/// The connect in flight of a [`TcpConnector`].
#[must_use = "futures do nothing unless polled"]
pub struct ConnectFuture {
    // A connect is not a hot path: one allocation per attempt keeps the resolution and the fallback loop readable.
    inner: Pin<Box<dyn Future<Output = Result<TcpStream, ConnectError>> + Send>>,
}

impl Future for ConnectFuture {
    type Output = Result<TcpStream, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

/// How a connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The peer refused: nothing listens there.
    Refused,
    /// The host or network cannot be reached.
    Unreachable,
    /// The host name did not resolve to any address.
    Unresolved,
    /// The connect timeout passed first.
    TimedOut,
    /// The target can never be connected to (port 0, an empty host); retrying is pointless.
    InvalidTarget,
    /// The TLS handshake failed (with the `tls` feature): a certificate that does not verify, a protocol mismatch.
    Tls,
    /// Another I/O failure.
    Io,
}

/// Why a connect failed: a [`ConnectErrorKind`], the target, and the underlying cause as [`Error::source`].
///
/// ```
/// use connman_core::error::BoxError;
/// use connman_tcp::{ConnectError, ConnectErrorKind, TcpConnector};
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let err: BoxError = TcpConnector::new()
///     .call("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
///     .await
///     .unwrap_err()
///     .into();
/// let err = err.downcast_ref::<ConnectError>().unwrap();
/// assert_eq!(err.kind(), ConnectErrorKind::InvalidTarget);
/// # }
/// ```
#[derive(Debug)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    target: String,
    note: Option<String>,
    source: Option<BoxError>,
}

impl ConnectError {
    /// How the connect failed.
    pub const fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// The target, as text.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the peer refused the connection.
    pub const fn is_refused(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Refused)
    }

    /// Whether the host or network was unreachable.
    pub const fn is_unreachable(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Unreachable)
    }

    /// Whether the host name did not resolve.
    pub const fn is_unresolved(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Unresolved)
    }

    /// Whether the connect timed out.
    pub const fn is_timed_out(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::TimedOut)
    }

    /// Whether the TLS handshake failed.
    pub const fn is_tls(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Tls)
    }

    /// Whether the target is invalid (port 0, an empty host): retrying cannot help.
    pub const fn is_invalid_target(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::InvalidTarget)
    }

    pub(crate) fn new(kind: ConnectErrorKind, target: String, source: Option<BoxError>) -> Self {
        Self {
            kind,
            target,
            note: None,
            source,
        }
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn from_io(target: String, e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ConnectErrorKind::Unreachable
            }
            io::ErrorKind::TimedOut => ConnectErrorKind::TimedOut,
            _ => ConnectErrorKind::Io,
        };
        Self::new(kind, target, Some(Box::new(e)))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ConnectErrorKind::Refused => "connection refused",
            ConnectErrorKind::Unreachable => "unreachable",
            ConnectErrorKind::Unresolved => "host did not resolve",
            ConnectErrorKind::TimedOut => "connect timed out",
            ConnectErrorKind::InvalidTarget => "invalid target",
            ConnectErrorKind::Tls => "tls handshake failed",
            ConnectErrorKind::Io => "connect failed",
        };
        write!(f, "{what}: {}", self.target)?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

impl Error for ConnectError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// A target of either kind, for the shared connect path.
#[derive(Debug, Clone)]
enum Target {
    Addr(SocketAddr),
    Host(HostPort),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(addr) => addr.fmt(f),
            Target::Host(hp) => hp.fmt(f),
        }
    }
}

fn invalid(target: String, why: &'static str) -> ConnectError {
    ConnectError::new(ConnectErrorKind::InvalidTarget, target, None).with_note(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call<T>(c: &mut TcpConnector, t: T) -> Result<TcpStream, ConnectError>
    where
        TcpConnector: Service<T, Response = TcpStream, Error = ConnectError>,
    {
        std::future::poll_fn(|cx| Service::<T>::poll_ready(c, cx)).await?;
        c.call(t).await
    }

    #[tokio::test]
    async fn cn_01_port_zero_is_an_invalid_target() {
        let mut c = TcpConnector::new();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let err = call(&mut c, addr).await.unwrap_err();
        assert!(err.is_invalid_target(), "{err}");
        let err = call(&mut c, HostPort::new("localhost", 0))
            .await
            .unwrap_err();
        assert!(err.is_invalid_target(), "{err}");
        let err = call(&mut c, HostPort::new("", 80)).await.unwrap_err();
        assert!(err.is_invalid_target(), "{err}");
    }

    #[tokio::test]
    async fn refused_is_a_typed_error() {
        // Bind, learn the port, and close: nothing listens there any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = call(&mut TcpConnector::new(), addr).await.unwrap_err();
        assert!(err.is_refused(), "{err:?}");
        let boxed: BoxError = err.into();
        assert!(boxed.is::<ConnectError>());
    }

    #[tokio::test]
    async fn unresolvable_host_is_a_typed_error() {
        // `.invalid` is reserved by RFC 2606 and never resolves.
        let target = HostPort::new("no-such-host.invalid", 80);
        let err = tokio::time::timeout(
            Duration::from_secs(20),
            call(&mut TcpConnector::new(), target),
        )
        .await
        .expect("resolution ends")
        .unwrap_err();
        assert!(err.is_unresolved() || err.is_timed_out(), "{err:?}");
    }

    #[tokio::test]
    async fn cn_11_unroutable_address_ends_within_the_timeout() {
        // 192.0.2.0/24 is TEST-NET-1: packets there go nowhere, so the connect hangs until the timeout, or fails at
        // once where a firewall or a missing route answers. Either way it ends within the bound with a typed error.
        let mut c = TcpConnector::new().connect_timeout(Duration::from_millis(50));
        let addr: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), call(&mut c, addr))
            .await
            .expect("bounded by the connect timeout")
            .unwrap_err();
        assert!(
            err.is_timed_out()
                || err.is_unreachable()
                || err.is_refused()
                || err.kind() == ConnectErrorKind::Io,
            "{err:?}"
        );
        if err.is_timed_out() {
            assert!(err.source().is_some_and(|s| s.is::<Elapsed>()));
        }
    }

    #[tokio::test]
    async fn connects_with_nodelay_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = call(&mut TcpConnector::new(), HostPort::from(addr))
            .await
            .unwrap();
        assert!(stream.nodelay().unwrap());
        assert!(SockRef::from(&stream).keepalive().unwrap());
    }

    #[test]
    fn host_port_display_and_conversions() {
        assert_eq!(HostPort::new("::1", 80).to_string(), "[::1]:80");
        let hp: HostPort = (String::from("h"), 1).into();
        assert_eq!((hp.host(), hp.port()), ("h", 1));
    }
}

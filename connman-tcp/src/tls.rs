//! TLS over any connector, through tokio-rustls (the `tls` feature).
//!
//! [`TlsConnector`] wraps a transport (a [`TcpConnector`] by default) and runs a client handshake, bounded by a
//! timeout, over every connection it makes. The server name to verify comes from the target: the host of a
//! [`HostPort`], the address of a [`SocketAddr`]. A failed or timed-out handshake is a [`ConnectError`] of kind
//! [`Tls`](ConnectErrorKind::Tls) or [`TimedOut`](ConnectErrorKind::TimedOut); errors of the inner connector pass
//! through unchanged. The rustls [`ClientConfig`](rustls::ClientConfig) (roots, client certificates, ALPN) is yours
//! to build; `rustls` is re-exported so that its version matches.
//!
//! ```no_run
//! use connman_tcp::tls::{TlsConnector, rustls};
//! use connman_tcp::{Connection, HostPort};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rustls::Error> {
//! # let roots = rustls::RootCertStore::empty();
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let config = rustls::ClientConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//! let conn = Connection::builder(HostPort::new("example.com", 443), ())
//!     .connector(TlsConnector::new(Arc::new(config)))
//!     .connect().expect("inside a runtime");
//! # conn.disconnect();
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use connman_core::error::{BoxError, Elapsed};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::ServerName;
use tower_service::Service;

pub use tokio_rustls::client::TlsStream;
pub use tokio_rustls::rustls;

use crate::connector::{
    ConnectError, ConnectErrorKind, DEFAULT_CONNECT_TIMEOUT, HostPort, TcpConnector,
};

/// The default bound on a TLS handshake: 10 s, the same as the connect timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = DEFAULT_CONNECT_TIMEOUT;

/// A transport that connects with `C` and then runs a TLS client handshake. See the [module docs](self).
#[derive(Clone)]
pub struct TlsConnector<C = TcpConnector> {
    inner: C,
    tls: tokio_rustls::TlsConnector,
    handshake_timeout: Duration,
}

impl TlsConnector<TcpConnector> {
    /// TLS over a default [`TcpConnector`].
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self::with_connector(TcpConnector::new(), config)
    }
}

impl<C> TlsConnector<C> {
    /// TLS over `inner`.
    pub fn with_connector(inner: C, config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            inner,
            tls: tokio_rustls::TlsConnector::from(config),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Bounds each handshake (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The inner connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The inner connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// The inner connector, unwrapped.
    pub fn into_inner(self) -> C {
        self.inner
    }

    fn handshake<F, IO, E>(
        &self,
        connect: F,
        name: Result<ServerName<'static>, ConnectError>,
    ) -> TlsFuture<IO>
    where
        F: Future<Output = Result<IO, E>> + Send + 'static,
        E: Into<BoxError>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = self.tls.clone();
        let limit = self.handshake_timeout;
        let fut = async move {
            let name = name?;
            let target = format!("{name:?}");
            let io = connect.await.map_err(Into::into)?;
            match tokio::time::timeout(limit, tls.connect(name, io)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => {
                    Err(ConnectError::new(ConnectErrorKind::Tls, target, Some(Box::new(e))).into())
                }
                Err(_) => Err(ConnectError::new(
                    ConnectErrorKind::TimedOut,
                    target,
                    Some(Box::new(Elapsed::new())),
                )
                .with_note("TLS handshake")
                .into()),
            }
        };
        TlsFuture {
            inner: Box::pin(fut),
        }
    }
}

impl<C> Service<HostPort> for TlsConnector<C>
where
    C: Service<HostPort>,
    C::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = TlsStream<C::Response>;
    type Error = BoxError;
    type Future = TlsFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: HostPort) -> Self::Future {
        let name = ServerName::try_from(target.host().to_owned()).map_err(|e| {
            ConnectError::new(
                ConnectErrorKind::InvalidTarget,
                target.to_string(),
                Some(Box::new(e)),
            )
            .with_note("not a valid server name")
        });
        let connect = self.inner.call(target);
        self.handshake(connect, name)
    }
}

impl<C> Service<SocketAddr> for TlsConnector<C>
where
    C: Service<SocketAddr>,
    C::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = TlsStream<C::Response>;
    type Error = BoxError;
    type Future = TlsFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        let name = ServerName::IpAddress(addr.ip().into());
        let connect = self.inner.call(addr);
        self.handshake(connect, Ok(name))
    }
}

impl<C: fmt::Debug> fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("inner", &self.inner)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// The connect and handshake in flight of a [`TlsConnector`].
#[must_use = "futures do nothing unless polled"]
pub struct TlsFuture<IO> {
    // Once per connection, not per message: one allocation keeps the two steps readable.
    inner: Pin<Box<dyn Future<Output = Result<TlsStream<IO>, BoxError>> + Send>>,
}

impl<IO> Future for TlsFuture<IO> {
    type Output = Result<TlsStream<IO>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<IO> fmt::Debug for TlsFuture<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use crate::{Connection, Handler, Writer};

    const CERT: &[u8] = include_bytes!("../testdata/test-cert.der");
    const KEY: &[u8] = include_bytes!("../testdata/test-key.der");

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn client_config(trust_test_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        if trust_test_cert {
            roots.add(CertificateDer::from(CERT.to_vec())).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A TLS echo server on loopback.
    async fn tls_echo_server() -> SocketAddr {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(CERT.to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(KEY.to_vec())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut buf = [0; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    struct Echo(mpsc::Sender<Bytes>);

    impl Handler for Echo {
        fn on_connect(&mut self, writer: Writer) {
            tokio::spawn(async move { writer.write_all(b"over tls").await });
        }
        fn on_data(&mut self, data: Bytes) {
            let _ = self.0.try_send(data);
        }
    }

    #[tokio::test]
    async fn connection_over_tls_echoes() {
        let addr = tls_echo_server().await;
        let test = async {
            let (tx, mut rx) = mpsc::channel(16);
            let conn = Connection::builder(HostPort::new("localhost", addr.port()), Echo(tx))
                .connector(TlsConnector::new(client_config(true)))
                .connect()
                .expect("inside a runtime");
            let mut got = Vec::new();
            while got.len() < 8 {
                got.extend_from_slice(&rx.recv().await.unwrap());
            }
            assert_eq!(got, b"over tls");
            conn.disconnect();
            conn.closed().await;
        };
        tokio::time::timeout(Duration::from_secs(5), test)
            .await
            .expect("bounded");
    }

    #[tokio::test]
    async fn ip_address_targets_verify_the_ip() {
        let addr = tls_echo_server().await;
        let mut tls = TlsConnector::new(client_config(true));
        let mut stream = tls.call(addr).await.unwrap();
        stream.write_all(b"ip").await.unwrap();
        let mut buf = [0; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ip");
    }

    #[tokio::test]
    async fn untrusted_certificate_is_a_typed_tls_error() {
        let addr = tls_echo_server().await;
        let mut tls = TlsConnector::new(client_config(false));
        let err = tls
            .call(HostPort::new("localhost", addr.port()))
            .await
            .unwrap_err();
        let err = err.downcast_ref::<ConnectError>().expect("a ConnectError");
        assert!(err.is_tls(), "{err:?}");
    }

    #[tokio::test]
    async fn inner_errors_pass_through() {
        let mut tls = TlsConnector::new(client_config(true));
        let err = tls.call(HostPort::new("localhost", 0)).await.unwrap_err();
        assert!(
            err.downcast_ref::<ConnectError>()
                .unwrap()
                .is_invalid_target()
        );
        let err = tls
            .call(HostPort::new("not a name!", 443))
            .await
            .unwrap_err();
        assert!(
            err.downcast_ref::<ConnectError>()
                .unwrap()
                .is_invalid_target()
        );
    }

    #[tokio::test]
    async fn silent_server_times_the_handshake_out() {
        // Accepts TCP and never answers the ClientHello.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut tls =
            TlsConnector::new(client_config(true)).handshake_timeout(Duration::from_millis(100));
        let err = tokio::time::timeout(Duration::from_secs(5), tls.call(addr))
            .await
            .expect("bounded by the handshake timeout")
            .unwrap_err();
        assert!(err.downcast_ref::<ConnectError>().unwrap().is_timed_out());
    }
}

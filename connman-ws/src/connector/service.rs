use std::task::{Context, Poll};

use connman_core::error::BoxError;
use connman_tcp::HostPort;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tower_service::Service;

use crate::config::WsConfig;
use crate::connector::WsConnectFuture;
use crate::error::{HandshakeTimeout, InvalidRequest, handshake_error};

use crate::stream::WsStream;
use crate::watch::Watched;

/// Connects through the transport `C`, then performs the WebSocket handshake within the configured
/// [handshake timeout](WsConfig::handshake_timeout).
///
/// Errors: the transport's own error when the connect fails, [`HandshakeTimeout`], [`HttpRejected`] when the server
/// answers with another status than 101, [`ProtocolViolation`] for a broken handshake, [`std::io::Error`] when the
/// socket fails during it, and [`InvalidRequest`] for a target without a host.
///
/// [`HttpRejected`]: crate::error::HttpRejected
/// [`ProtocolViolation`]: crate::error::ProtocolViolation
///
/// ```
/// use connman_core::error::BoxError;
/// use connman_tcp::HostPort;
/// use connman_ws::{WsConfig, WsConnector};
/// use futures_util::{SinkExt, StreamExt};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (client_io, server_io) = tokio::io::duplex(4096);
/// let server = tokio::spawn(async move {
///     let mut ws = tokio_tungstenite::accept_async(server_io).await.unwrap();
///     let msg = ws.next().await.unwrap().unwrap();
///     ws.send(msg).await.unwrap();
/// });
///
/// // Any service from a host and port to an IO stream is a transport; here an in-memory pipe.
/// let mut client_io = Some(client_io);
/// let transport = service_fn(move |_: HostPort| {
///     let io = client_io.take();
///     async move { io.ok_or_else(|| BoxError::from("used once")) }
/// });
/// let connector = WsConnector::new(transport, WsConfig::default());
/// let mut ws = connector.oneshot("ws://example.invalid/echo").await.unwrap();
/// ws.send("hello".into()).await.unwrap();
/// let echoed = ws.next().await.unwrap().unwrap();
/// assert_eq!(echoed.into_bytes().unwrap(), "hello");
/// server.await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WsConnector<C> {
    inner: C,
    config: WsConfig,
}

impl<C> WsConnector<C> {
    /// A connector over `inner` with `config`.
    pub const fn new(inner: C, config: WsConfig) -> Self {
        Self { inner, config }
    }

    /// The settings of the connections it makes.
    pub const fn config(&self) -> &WsConfig {
        &self.config
    }

    /// The transport.
    pub const fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The transport, mutably.
    pub const fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C, R, IO> Service<R> for WsConnector<C>
where
    R: IntoClientRequest,
    C: Service<HostPort, Response = IO>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = WsStream<IO>;
    type Error = BoxError;
    type Future = WsConnectFuture<IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: R) -> WsConnectFuture<IO> {
        let request = target
            .into_client_request()
            .map_err(|err| InvalidRequest::new(Some(err.into())))
            .and_then(|request| host_port(&request).map(|target| (request, target)));
        let (request, target) = match request {
            Ok(ok) => ok,
            Err(err) => return WsConnectFuture::new(async move { Err(err.into()) }),
        };
        let connect = self.inner.call(target);
        let config = self.config;
        WsConnectFuture::new(async move {
            let io = connect.await.map_err(Into::into)?;
            let timeout = config.handshake_timeout();
            let handshake = client_async_with_config(
                request,
                Watched::after_http(io),
                Some(config.tungstenite()),
            );
            match tokio::time::timeout(timeout, handshake).await {
                Err(_) => Err(HandshakeTimeout::new(timeout).into()),
                Ok(Err(err)) => Err(handshake_error(err)),
                Ok(Ok((ws, response))) => {
                    let subprotocol = response
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    Ok(WsStream::new(ws, &config, subprotocol))
                }
            }
        })
    }
}

/// Where to connect for `request`: its host, and its port or the scheme's default one.
fn host_port(request: &Request) -> Result<HostPort, InvalidRequest> {
    let uri = request.uri();
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| InvalidRequest::new(None))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some("ws")) => 80,
        (None, Some("wss")) => 443,
        _ => return Err(InvalidRequest::new(None)),
    };
    Ok(HostPort::new(host, port))
}

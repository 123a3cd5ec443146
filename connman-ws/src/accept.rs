//! The server side: [`accept`] performs the handshake on an accepted socket and yields a [`WsConnection`] with an id
//! and a namespace, ready to join a group.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use connman_core::error::{BoxError, NotFound};
use connman_core::member::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::accept_hdr_async_with_config;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::config::WsConfig;
use crate::error::{HandshakeTimeout, handshake_error};
use crate::stream::{WsMember, WsReceiver, WsStream};
use crate::watch::Watched;

/// How [`accept`] names connections: the namespace of each, the subprotocols it speaks and the connection settings.
///
/// By default every connection joins the namespace `"default"`. [`AcceptConfig::route`] picks the namespace from the
/// request instead, for example from a path `/app/<namespace>`, and refuses the connection with HTTP 404 when it
/// returns `None`.
///
/// ```
/// use connman_ws::{AcceptConfig, WsConfig};
///
/// let config = AcceptConfig::new(WsConfig::default())
///     .route(|request| request.uri().path().strip_prefix("/app/").map(str::to_owned))
///     .subprotocols(["chat.v2", "chat.v1"]);
/// assert_eq!(config.ws(), &WsConfig::default());
/// ```
#[derive(Clone)]
pub struct AcceptConfig {
    ws: WsConfig,
    namespace: String,
    router: Option<Arc<Router>>,
    subprotocols: Vec<String>,
}

type Router = dyn Fn(&Request) -> Option<String> + Send + Sync;

impl AcceptConfig {
    /// The namespace of connections when no router is set.
    pub const DEFAULT_NAMESPACE: &'static str = "default";

    /// Connections with `ws` settings, all in the namespace [`AcceptConfig::DEFAULT_NAMESPACE`].
    pub fn new(ws: WsConfig) -> Self {
        Self {
            ws,
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            router: None,
            subprotocols: Vec::new(),
        }
    }

    /// Puts every connection in `namespace` (unless a router is set).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Picks each connection's namespace from its request; `None` refuses it with HTTP 404 and [`accept`] fails with
    /// [`NotFound`].
    pub fn route(
        mut self,
        router: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// The subprotocols the server speaks, best first. The first of them that the client offers is chosen; a client
    /// that offers only others is refused with HTTP 400. Without any, offered subprotocols are ignored.
    pub fn subprotocols(mut self, protocols: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// The connection settings.
    pub const fn ws(&self) -> &WsConfig {
        &self.ws
    }
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self::new(WsConfig::default())
    }
}

impl fmt::Debug for AcceptConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptConfig")
            .field("ws", &self.ws)
            .field("namespace", &self.namespace)
            .field("router", &self.router.is_some())
            .field("subprotocols", &self.subprotocols)
            .finish()
    }
}

/// Performs the server handshake on `io` within the [handshake timeout](WsConfig::handshake_timeout).
///
/// Errors: [`HandshakeTimeout`], [`NotFound`] when the router refuses the request,
/// [`HttpRejected`](crate::error::HttpRejected) with status 400 when the client offers none of the subprotocols,
/// [`ProtocolViolation`](crate::error::ProtocolViolation) for a request that is not a WebSocket handshake,
/// [`std::io::Error`] when the socket fails. Each concerns this socket only.
pub async fn accept<IO>(io: IO, config: &AcceptConfig) -> Result<WsConnection<IO>, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut route: Option<(String, String, Option<String>)> = None;
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let path = request.uri().path().to_owned();
        let namespace = match &config.router {
            Some(router) => router(request),
            None => Some(config.namespace.clone()),
        };
        let Some(namespace) = namespace else {
            return Err(error_response(StatusCode::NOT_FOUND));
        };
        let subprotocol = match choose_subprotocol(request, &config.subprotocols) {
            Ok(chosen) => chosen,
            Err(()) => return Err(error_response(StatusCode::BAD_REQUEST)),
        };
        if let Some(protocol) = &subprotocol {
            if let Ok(value) = HeaderValue::from_str(protocol) {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", value);
            }
        }
        route = Some((path, namespace, subprotocol));
        Ok(response)
    };
    let timeout = config.ws.handshake_timeout();
    let handshake =
        accept_hdr_async_with_config(Watched::new(io), callback, Some(config.ws.tungstenite()));
    let ws = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err(HandshakeTimeout::new(timeout).into()),
        Ok(Err(WsError::Http(response))) if response.status() == StatusCode::NOT_FOUND => {
            return Err(NotFound::new("websocket route").into());
        }
        Ok(Err(err)) => return Err(handshake_error(err)),
        Ok(Ok(ws)) => ws,
    };
    let Some((path, namespace, subprotocol)) = route else {
        // The callback runs before every successful handshake; without it there is no route to give.
        return Err(NotFound::new("websocket route").into());
    };
    Ok(WsConnection {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string(),
        namespace,
        path,
        stream: WsStream::new(ws, &config.ws, subprotocol),
    })
}

/// A connection accepted by [`accept`]: an id unique in this process, a namespace and the stream.
///
/// [`WsConnection::split`] gives the [`WsMember`] to a group and the [`WsReceiver`] to the task that reads; see the
/// [crate docs](crate) for the whole server.
pub struct WsConnection<IO> {
    id: String,
    namespace: String,
    path: String,
    stream: WsStream<IO>,
}

impl<IO> WsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The connection's id: unique in this process, so unique in any namespace.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The path of the handshake request.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The subprotocol chosen in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.stream.subprotocol()
    }

    /// Splits the connection into the half that sends (a `Member`) and the half that receives.
    pub fn split(self) -> (WsMember<IO>, WsReceiver<IO>) {
        self.stream.split()
    }

    /// The whole stream, without the id and namespace.
    pub fn into_stream(self) -> WsStream<IO> {
        self.stream
    }

    /// Sends a close frame with `code` and `reason` and flushes it, for a connection that will not join (a draining
    /// group refuses it: close it with [`CloseCode::RECONNECT`]).
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), BoxError> {
        self.stream.close(code, reason).await
    }
}

impl<IO> fmt::Debug for WsConnection<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnection")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn error_response(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

/// The first of `supported` that the client offers; `Err` if it offers some but none of them.
fn choose_subprotocol(request: &Request, supported: &[String]) -> Result<Option<String>, ()> {
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() || supported.is_empty() {
        return Ok(None);
    }
    supported
        .iter()
        .find(|p| offered.contains(&p.as_str()))
        .map(|p| Some(p.clone()))
        .ok_or(())
}

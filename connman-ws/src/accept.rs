//! The server side: [`accept`] performs the handshake on an accepted socket and yields a [`WsConnection`] with an id
//! and a namespace, ready to join a group.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use connman_core::error::{BoxError, Draining, NotFound};
use connman_core::member::CloseCode;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tokio_tungstenite::{WebSocketStream, accept_hdr_async_with_config};

use crate::config::WsConfig;
use crate::error::{HandshakeTimeout, HttpRejected, Refused, handshake_error};
use crate::stream::{WsMember, WsReceiver, WsStream};
use crate::watch::Watched;

/// What an admission callback sees of a handshake request: its path, query and headers.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl<'a> Handshake<'a> {
    pub(crate) const fn new(uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self { uri, headers }
    }

    /// The request's path, `/app/lobby` in `/app/lobby?token=abc`.
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }

    /// The request's query without the `?`, `token=abc` in `/app/lobby?token=abc`.
    pub fn query(&self) -> Option<&'a str> {
        self.uri.query()
    }

    /// The request's headers.
    pub const fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The whole request target.
    pub const fn uri(&self) -> &'a Uri {
        self.uri
    }
}

/// An admission callback's answer: which namespace and id a connection joins, or how it is refused.
///
/// ```
/// use connman_ws::{AcceptConfig, Admission};
/// use connman_ws::tungstenite::http::StatusCode;
///
/// let config = AcceptConfig::default().admit(|handshake| {
///     let Some(room) = handshake.path().strip_prefix("/rooms/") else {
///         return Admission::refuse(StatusCode::NOT_FOUND);
///     };
///     match handshake.query().and_then(|q| q.strip_prefix("user=")) {
///         Some(user) => Admission::join_as(room, user),
///         None => Admission::unauthorized("who are you?"),
///     }
/// });
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The connection joins `namespace` as `id`, or with a fresh process-unique id when `None`.
    Join {
        /// Its namespace.
        namespace: String,
        /// Its id, unique within the namespace if the application makes it so.
        id: Option<String>,
    },
    /// The handshake is answered with this HTTP status; no upgrade happens.
    Refuse(StatusCode),
    /// The upgrade completes, then the connection is closed at once with 4009 and this reason. Browsers see close
    /// codes but never the status of a refused handshake.
    Unauthorized(String),
}

impl Admission {
    /// Joins `namespace` with a fresh id.
    pub fn join(namespace: impl Into<String>) -> Self {
        Self::Join {
            namespace: namespace.into(),
            id: None,
        }
    }

    /// Joins `namespace` as `id`.
    pub fn join_as(namespace: impl Into<String>, id: impl Into<String>) -> Self {
        Self::Join {
            namespace: namespace.into(),
            id: Some(id.into()),
        }
    }

    /// Refuses the handshake with `status`.
    pub const fn refuse(status: StatusCode) -> Self {
        Self::Refuse(status)
    }

    /// Upgrades, then closes with [`CloseCode::UNAUTHORIZED`] (4009) and `reason`.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::Unauthorized(reason.into())
    }
}

/// How [`accept`] (and `upgrade::upgrade`, with the `hyper` feature) admits connections: the namespace and
/// id of each, the subprotocols it speaks, whether the server is draining, and the connection settings.
///
/// By default every connection joins the namespace `"default"` with a fresh id. [`AcceptConfig::admit`] decides
/// from the request's path, query and headers instead; [`AcceptConfig::route`] is the short form that only picks a
/// namespace (and refuses with HTTP 404 when it returns `None`). [`AcceptConfig::draining`] turns newcomers away with
/// 4200 while a drain runs.
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
    admission: Option<Arc<Admit>>,
    draining: Option<Arc<DrainCheck>>,
    subprotocols: Vec<String>,
}

type Router = dyn Fn(&Request) -> Option<String> + Send + Sync;
type Admit = dyn Fn(&Handshake<'_>) -> Admission + Send + Sync;
type DrainCheck = dyn Fn() -> bool + Send + Sync;

impl AcceptConfig {
    /// The namespace of connections when no router is set.
    pub const DEFAULT_NAMESPACE: &'static str = "default";

    /// The reason of the 4200 close given to newcomers during a drain (soketi's words).
    pub const DRAINING_REASON: &'static str = "Server is closing. Please reconnect shortly.";

    /// Connections with `ws` settings, all in the namespace [`AcceptConfig::DEFAULT_NAMESPACE`].
    pub fn new(ws: WsConfig) -> Self {
        Self {
            ws,
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            router: None,
            admission: None,
            draining: None,
            subprotocols: Vec::new(),
        }
    }

    /// Puts every connection in `namespace` (unless a router or an admission callback is set).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Picks each connection's namespace from its request; `None` refuses it with HTTP 404 and [`accept`] fails with
    /// [`NotFound`]. [`AcceptConfig::admit`] takes precedence.
    pub fn route(
        mut self,
        router: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Decides each connection from its request's path, query and headers: the namespace and id it joins, or a
    /// refusal (an HTTP status before the upgrade, or a 4009 close after it); [`accept`] then fails with
    /// [`Refused`].
    pub fn admit(
        mut self,
        admit: impl Fn(&Handshake<'_>) -> Admission + Send + Sync + 'static,
    ) -> Self {
        self.admission = Some(Arc::new(admit));
        self
    }

    /// While `is_draining` says so, newcomers complete the upgrade and are closed at once with
    /// [`CloseCode::RECONNECT`] (4200, [`AcceptConfig::DRAINING_REASON`]), and [`accept`] fails with [`Draining`]
    /// (SS-01). With a group: `.draining(move || group.is_draining())`.
    pub fn draining(mut self, is_draining: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.draining = Some(Arc::new(is_draining));
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

    /// Decides a handshake: join, close after the upgrade, or refuse with a status.
    pub(crate) fn decide(&self, handshake: &Handshake<'_>) -> Result<Decision, StatusCode> {
        if self.draining.as_ref().is_some_and(|draining| draining()) {
            return Ok(Decision::Close {
                code: CloseCode::RECONNECT,
                reason: Self::DRAINING_REASON.to_owned(),
                error: Draining::new().into(),
            });
        }
        let (namespace, id) = match (&self.admission, &self.router) {
            (Some(admit), _) => match admit(handshake) {
                Admission::Join { namespace, id } => (namespace, id),
                Admission::Refuse(status) => return Err(status),
                Admission::Unauthorized(reason) => {
                    return Ok(Decision::Close {
                        code: CloseCode::UNAUTHORIZED,
                        error: Refused::with_close(CloseCode::UNAUTHORIZED, reason.clone()).into(),
                        reason,
                    });
                }
            },
            (None, Some(router)) => {
                let mut request = Request::new(());
                *request.uri_mut() = handshake.uri().clone();
                *request.headers_mut() = handshake.headers().clone();
                (router(&request).ok_or(StatusCode::NOT_FOUND)?, None)
            }
            (None, None) => (self.namespace.clone(), None),
        };
        let subprotocol = choose_subprotocol(handshake.headers(), &self.subprotocols)
            .map_err(|()| StatusCode::BAD_REQUEST)?;
        Ok(Decision::Join {
            namespace,
            id,
            subprotocol,
        })
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
            .field("admission", &self.admission.is_some())
            .field("draining", &self.draining.is_some())
            .field("subprotocols", &self.subprotocols)
            .finish()
    }
}

/// Performs the server handshake on `io` within the [handshake timeout](WsConfig::handshake_timeout).
///
/// Errors: [`HandshakeTimeout`], [`NotFound`] when the router refuses the request,
/// [`Refused`] when the admission callback refuses it (with an HTTP status, or with a close after the upgrade),
/// [`Draining`] when the config's drain check says so (the client got 4200),
/// [`HttpRejected`](crate::error::HttpRejected) with status 400 when the client offers none of the subprotocols,
/// [`ProtocolViolation`](crate::error::ProtocolViolation) for a request that is not a WebSocket handshake,
/// [`std::io::Error`] when the socket fails. Each concerns this socket only.
pub async fn accept<IO>(io: IO, config: &AcceptConfig) -> Result<WsConnection<IO>, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // The handshake's state (about 2 KB) lives on the heap while it runs: a task that accepts and then serves the
    // connection would otherwise carry it in its own future for the connection's whole life.
    Box::pin(handshake(io, config)).await
}

async fn handshake<IO>(io: IO, config: &AcceptConfig) -> Result<WsConnection<IO>, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut decided: Option<(Decision, Target)> = None;
    let mut refused: Option<StatusCode> = None;
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let handshake = Handshake::new(request.uri(), request.headers());
        match config.decide(&handshake) {
            Err(status) => {
                refused = Some(status);
                Err(error_response(status))
            }
            Ok(decision) => {
                if let Some(protocol) = decision.subprotocol() {
                    if let Ok(value) = HeaderValue::from_str(protocol) {
                        response
                            .headers_mut()
                            .insert("sec-websocket-protocol", value);
                    }
                }
                decided = Some((decision, Target::of(request.uri())));
                Ok(response)
            }
        }
    };
    let timeout = config.ws.handshake_timeout();
    let handshake = accept_hdr_async_with_config(
        Watched::after_http(io),
        callback,
        Some(config.ws.tungstenite()),
    );
    let ws = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err(HandshakeTimeout::new(timeout).into()),
        Ok(Err(WsError::Http(response))) => {
            return Err(refusal(refused.unwrap_or(response.status())));
        }
        Ok(Err(err)) => return Err(handshake_error(err)),
        Ok(Ok(ws)) => ws,
    };
    let Some((decision, target)) = decided else {
        // The callback runs before every successful handshake; without it there is no route to give.
        return Err(NotFound::new("websocket route").into());
    };
    decision.finish(ws, target, &config.ws).await
}

/// The error for a handshake refused with `status` before the upgrade.
pub(crate) fn refusal(status: StatusCode) -> BoxError {
    match status {
        StatusCode::NOT_FOUND => NotFound::new("websocket route").into(),
        StatusCode::BAD_REQUEST => HttpRejected::new(400).into(),
        other => Refused::with_status(other.as_u16()).into(),
    }
}

/// What the admission step decided for an upgraded connection.
pub(crate) enum Decision {
    /// It joins `namespace` as `id` (a fresh id if `None`).
    Join {
        namespace: String,
        id: Option<String>,
        subprotocol: Option<String>,
    },
    /// It is closed at once with `code`; the handshake fails with `error`.
    Close {
        code: CloseCode,
        reason: String,
        error: BoxError,
    },
}

/// The path and query of the handshake request, kept on the connection.
pub(crate) struct Target {
    path: String,
    query: Option<String>,
}

impl Target {
    pub(crate) fn of(uri: &Uri) -> Self {
        Self {
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
        }
    }
}

impl Decision {
    pub(crate) fn subprotocol(&self) -> Option<&str> {
        match self {
            Self::Join { subprotocol, .. } => subprotocol.as_deref(),
            Self::Close { .. } => None,
        }
    }

    /// Makes the connection, or closes it as decided (waiting, within the close timeout, for the peer's answer).
    pub(crate) async fn finish<IO>(
        self,
        ws: WebSocketStream<Watched<IO>>,
        target: Target,
        config: &WsConfig,
    ) -> Result<WsConnection<IO>, BoxError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self {
            Self::Join {
                namespace,
                id,
                subprotocol,
            } => Ok(WsConnection {
                id: id.unwrap_or_else(|| NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string()),
                namespace,
                path: target.path,
                query: target.query,
                stream: WsStream::new(ws, config, subprotocol),
            }),
            Self::Close {
                code,
                reason,
                error,
            } => {
                let mut stream = WsStream::new(ws, config, None);
                // A failure here means the peer is gone already; the refusal is the error either way.
                if stream.close(code, &reason).await.is_ok() {
                    while stream.next().await.is_some() {}
                }
                Err(error)
            }
        }
    }
}

/// A connection accepted by [`accept`]: an id unique in this process, a namespace and the stream.
///
/// [`WsConnection::split`] gives the [`WsMember`] to a group and the [`WsReceiver`] to the task that reads; see the
/// [crate docs](crate) for the whole server.
pub struct WsConnection<IO> {
    id: String,
    namespace: String,
    path: String,
    query: Option<String>,
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

    /// The query of the handshake request, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
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
            .field("query", &self.query)
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
fn choose_subprotocol(headers: &HeaderMap, supported: &[String]) -> Result<Option<String>, ()> {
    let offered: Vec<&str> = headers
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

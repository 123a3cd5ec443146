//! A WebSocket connection from a request that hyper serves (and so axum): the `hyper` feature.
//!
//! [`upgrade`] checks the request, asks the [`AcceptConfig`]'s admission, and gives the response to return (101, or
//! the refusal's status) with an [`Upgrading`] future. That future resolves, once hyper has handed over the
//! connection, to the same [`WsConnection`] as [`accept`](crate::accept) gives: same limits, heartbeat, close codes
//! and group semantics.
//!
//! ```no_run
//! use connman_pool::group::Group;
//! use connman_ws::{AcceptConfig, upgrade::upgrade};
//! use futures_util::StreamExt;
//! use http_body_util::Empty;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::server::conn::http1;
//! use hyper::service::service_fn;
//! use hyper_util::rt::TokioIo;
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let group = Group::new();
//! let config = AcceptConfig::default().draining({
//!     let group = group.clone();
//!     move || group.is_draining()
//! });
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let (group, config) = (group.clone(), config.clone());
//!     let service = service_fn(move |request: hyper::Request<Incoming>| {
//!         let (response, upgrading) = upgrade::<_, Empty<Bytes>>(request, &config);
//!         if let Ok(upgrading) = upgrading {
//!             let group = group.clone();
//!             tokio::spawn(async move {
//!                 let Ok(conn) = upgrading.await else { return };
//!                 let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
//!                 let (member, mut incoming) = conn.split();
//!                 if group.add(ns, id, member).is_ok() {
//!                     while let Some(Ok(_)) = incoming.next().await {}
//!                 }
//!             });
//!         }
//!         async move { Ok::<_, hyper::Error>(response) }
//!     });
//!     tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service).with_upgrades());
//! }
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use connman_core::error::BoxError;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::{
    self, HeaderMap, HeaderValue, Method, StatusCode, header,
};
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::accept::{AcceptConfig, Handshake, Target, WsConnection, refusal};
use crate::error::{HandshakeTimeout, ProtocolViolation};
use crate::watch::Watched;

/// The IO of a connection that hyper upgraded.
pub type UpgradedIo = TokioIo<Upgraded>;

/// Answers a WebSocket handshake that hyper (or axum) received.
///
/// Returns the response to send back (101 Switching Protocols, or the refusal's status with an empty body of type
/// `R`) and, when upgrading, the future of the connection; run that future in a task of its own after returning the
/// response. When not upgrading, the error says why: [`ProtocolViolation`] for a request that is not a WebSocket
/// handshake (answered 400, or 426 for another protocol version), [`NotFound`](connman_core::error::NotFound) or
/// [`Refused`](crate::error::Refused) for an admission that refused it, `HttpRejected` (400) for a client offering
/// none of the subprotocols.
pub fn upgrade<B, R>(
    mut request: http::Request<B>,
    config: &AcceptConfig,
) -> (http::Response<R>, Result<Upgrading, BoxError>)
where
    R: Default,
{
    if let Err((status, why)) = check(request.method(), request.headers()) {
        let mut response = status_response(status);
        if status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        return (response, Err(ProtocolViolation::new(why).into()));
    }
    let handshake = Handshake::new(request.uri(), request.headers());
    let decision = match config.decide(&handshake) {
        Ok(decision) => decision,
        Err(status) => return (status_response(status), Err(refusal(status))),
    };
    let mut response = status_response(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY)
        && let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
    {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = decision.subprotocol()
        && let Ok(value) = HeaderValue::from_str(protocol)
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let target = Target::of(request.uri());
    let on_upgrade = hyper::upgrade::on(&mut request);
    drop(request);
    let ws_config = *config.ws();
    let timeout = ws_config.handshake_timeout();
    let upgrading = async move {
        let upgraded = match tokio::time::timeout(timeout, on_upgrade).await {
            Err(_) => return Err(HandshakeTimeout::new(timeout).into()),
            Ok(Err(err)) => return Err(BoxError::from(err)),
            Ok(Ok(upgraded)) => upgraded,
        };
        let io = Watched::new(TokioIo::new(upgraded));
        let ws =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config.tungstenite())).await;
        decision.finish(ws, target, &ws_config).await
    };
    (
        response,
        Ok(Upgrading {
            inner: Box::pin(upgrading),
        }),
    )
}

/// The connection of an [`upgrade`]d request, once hyper hands it over (within the handshake timeout).
#[must_use = "the connection is made only while this future is polled"]
pub struct Upgrading {
    inner: Pin<Box<dyn Future<Output = Result<WsConnection<UpgradedIo>, BoxError>> + Send>>,
}

impl Future for Upgrading {
    type Output = Result<WsConnection<UpgradedIo>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Upgrading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrading").finish_non_exhaustive()
    }
}

fn status_response<R: Default>(status: StatusCode) -> http::Response<R> {
    let mut response = http::Response::new(R::default());
    *response.status_mut() = status;
    response
}

/// Checks that a request asks for a WebSocket (RFC 6455 section 4.2.1).
fn check(method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if method != Method::GET {
        return Err((
            StatusCode::BAD_REQUEST,
            "a websocket handshake must be a GET",
        ));
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err((StatusCode::BAD_REQUEST, "not a websocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 is required",
        ));
    }
    if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        return Err((StatusCode::BAD_REQUEST, "missing sec-websocket-key"));
    }
    Ok(())
}

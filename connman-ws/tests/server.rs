//! The server side from an existing HTTP stack (hyper, axum), admission, drain refusal and TLS: WS-05 to WS-07.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{Draining, NotFound};
use connman_core::member::CloseCode;
use connman_pool::group::{Group, GroupConfig};
use connman_tcp::TcpConnector;
use connman_tcp::tls::{TlsConnector, rustls};
use connman_ws::error::{ProtocolViolation, Refused};
use connman_ws::tungstenite::ClientRequestBuilder;
use connman_ws::tungstenite::http::StatusCode;
use connman_ws::upgrade::{Upgrading, upgrade};
use connman_ws::{
    AcceptConfig, Admission, PeerClose, Received, WsConfig, WsConnection, WsConnector, accept,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, duplex};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(20);

fn ws_config() -> WsConfig {
    WsConfig::builder()
        .heartbeat(None)
        .max_message_size(1024)
        .build()
        .unwrap()
}

fn by_path() -> AcceptConfig {
    AcceptConfig::new(ws_config()).admit(|h| match h.path().strip_prefix("/app/") {
        Some(ns) => Admission::join(ns),
        None => Admission::refuse(StatusCode::NOT_FOUND),
    })
}

/// The server loop of the crate docs, for any IO.
async fn join<IO>(group: Group, conn: WsConnection<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
    let (member, mut incoming) = conn.split();
    if group.add(ns, id, member).is_ok() {
        while let Some(Ok(_)) = incoming.next().await {}
    }
}

async fn joined(group: &Group, ns: &str, n: usize) {
    timeout(LIMIT, async {
        while group.namespace_len(ns) != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the namespace reached its size");
}

/// A hyper 1 server whose every request is a WebSocket upgrade into `group`.
async fn hyper_server(group: Group, config: AcceptConfig) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (group, config) = (group.clone(), config.clone());
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (response, upgrading) = upgrade::<_, Empty<Bytes>>(request, &config);
                if let Ok(upgrading) = upgrading {
                    tokio::spawn(serve_upgraded(group.clone(), upgrading));
                }
                async move { Ok::<_, hyper::Error>(response) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

async fn serve_upgraded(group: Group, upgrading: Upgrading) {
    if let Ok(conn) = upgrading.await {
        join(group, conn).await;
    }
}

fn client() -> WsConnector<TcpConnector> {
    WsConnector::new(TcpConnector::new(), ws_config())
}

#[tokio::test]
async fn ws_05_a_hyper_server_upgrades_into_a_group_with_the_same_limits_and_semantics() {
    let group = Group::new();
    let addr = hyper_server(group.clone(), by_path()).await;
    let mut a = client()
        .oneshot(format!("ws://{addr}/app/lobby"))
        .await
        .unwrap();
    let mut b = client()
        .oneshot(format!("ws://{addr}/app/lobby"))
        .await
        .unwrap();
    joined(&group, "lobby", 2).await;
    assert_eq!(group.broadcast("lobby", "hello", &[]).delivered, 2);
    for c in [&mut a, &mut b] {
        let got = timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Received::Binary(Bytes::from_static(b"hello")));
    }
    // The message limit holds: 1009, and the member leaves by itself.
    a.send(Bytes::from(vec![0u8; 4096])).await.unwrap();
    let close = timeout(LIMIT, a.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::TOO_BIG,
            ..
        }))
    ));
    joined(&group, "lobby", 1).await;
    // A close of the namespace reaches the other client.
    for closing in group.close_all("lobby", CloseCode::RECONNECT, "bye") {
        closing.await;
    }
    let close = timeout(LIMIT, b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::RECONNECT,
            reason: "bye".into()
        }))
    );
}

#[tokio::test]
async fn ws_05_a_request_that_is_not_an_upgrade_gets_400_and_a_typed_error() {
    let request = hyper::Request::get("/app/lobby").body(()).unwrap();
    let (response, upgrading) = upgrade::<_, Empty<Bytes>>(request, &by_path());
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(upgrading.unwrap_err().is::<ProtocolViolation>());
    // The admission refuses a path it does not serve, before any upgrade.
    let request = hyper::Request::get("/other")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let (response, upgrading) = upgrade::<_, Empty<Bytes>>(request, &by_path());
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(upgrading.unwrap_err().is::<NotFound>());
}

#[tokio::test]
async fn ws_05_an_axum_route_upgrades_into_a_group() {
    use axum::extract::{Request, State};
    use axum::routing::get;

    async fn route(
        State((group, config)): State<(Group, AcceptConfig)>,
        request: Request,
    ) -> axum::response::Response {
        let (response, upgrading) = upgrade::<_, axum::body::Body>(request, &config);
        if let Ok(upgrading) = upgrading {
            tokio::spawn(serve_upgraded(group, upgrading));
        }
        response
    }

    let group = Group::new();
    let app = axum::Router::new()
        .route("/app/{namespace}", get(route))
        .with_state((group.clone(), by_path()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = client()
        .oneshot(format!("ws://{addr}/app/axum"))
        .await
        .unwrap();
    joined(&group, "axum", 1).await;
    group.broadcast("axum", "via axum", &[]);
    let got = timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Received::Binary(Bytes::from_static(b"via axum")));
    drop(c);
    joined(&group, "axum", 0).await;
}

#[tokio::test]
async fn ws_06_admission_sees_path_query_and_headers_and_names_namespace_and_id() {
    let config = AcceptConfig::new(ws_config()).admit(|h| {
        let room = h.path().strip_prefix("/rooms/").unwrap_or("none");
        let user = h
            .query()
            .and_then(|q| q.strip_prefix("user="))
            .unwrap_or("anon");
        let tenant = h
            .headers()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("public");
        Admission::join_as(format!("{tenant}:{room}"), user)
    });
    let (a, b) = duplex(64 * 1024);
    let server = tokio::spawn(async move { accept(b, &config).await });
    let request =
        ClientRequestBuilder::new("ws://test.invalid/rooms/lobby?user=ann".parse().unwrap())
            .with_header("x-tenant", "acme");
    let (_client, _) = tokio_tungstenite::client_async(request, a).await.unwrap();
    let conn = server.await.unwrap().unwrap();
    assert_eq!(conn.namespace(), "acme:lobby");
    assert_eq!(conn.id(), "ann");
    assert_eq!(conn.path(), "/rooms/lobby");
    assert_eq!(conn.query(), Some("user=ann"));
}

#[tokio::test]
async fn ws_06_a_refusal_before_the_upgrade_is_an_http_status() {
    let config = AcceptConfig::new(ws_config()).admit(|_| Admission::refuse(StatusCode::FORBIDDEN));
    let (a, b) = duplex(64 * 1024);
    let server = tokio::spawn(async move { accept(b, &config).await });
    let err = tokio_tungstenite::client_async("ws://test.invalid/", a)
        .await
        .unwrap_err();
    assert!(
        matches!(err, connman_ws::tungstenite::Error::Http(r) if r.status() == StatusCode::FORBIDDEN)
    );
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<Refused>().unwrap().status(), Some(403));
}

#[tokio::test]
async fn ws_06_a_refusal_after_the_upgrade_closes_with_4009() {
    let config = AcceptConfig::new(ws_config()).admit(|h| match h.query() {
        Some("token=good") => Admission::join("app"),
        _ => Admission::unauthorized("bad token"),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, &config).await
    });
    let mut c = client()
        .oneshot(format!("ws://{addr}/app?token=bad"))
        .await
        .unwrap();
    let close = timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::UNAUTHORIZED,
            reason: "bad token".into()
        }))
    );
    let err = timeout(LIMIT, server).await.unwrap().unwrap().unwrap_err();
    let refused = err.downcast_ref::<Refused>().unwrap();
    assert_eq!(refused.close_code(), Some(CloseCode::UNAUTHORIZED));
    assert_eq!(refused.status(), None);
}

#[tokio::test]
async fn ws_06_ss_01_during_a_drain_newcomers_are_closed_with_4200() {
    let group = Group::builder()
        .config(GroupConfig::default())
        .build()
        .unwrap();
    let draining = group.clone();
    let config = by_path().draining(move || draining.is_draining());
    let addr = hyper_server(group.clone(), config.clone()).await;
    let mut early = client()
        .oneshot(format!("ws://{addr}/app/lobby"))
        .await
        .unwrap();
    joined(&group, "lobby", 1).await;
    let drain = group
        .drain(connman_pool::drain::DrainConfig::over(Duration::from_secs(3600)).unwrap())
        .unwrap();
    let drain = tokio::spawn(drain);
    // A newcomer through hyper: upgraded, then 4200.
    let mut late = client()
        .oneshot(format!("ws://{addr}/app/lobby"))
        .await
        .unwrap();
    let close = timeout(LIMIT, late.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::RECONNECT,
            ..
        }))
    ));
    // The same through `accept`, with the typed error.
    let (a, b) = duplex(64 * 1024);
    let server = tokio::spawn(async move { accept(b, &config).await });
    let (mut raw, _) = tokio_tungstenite::client_async("ws://test.invalid/app/lobby", a)
        .await
        .unwrap();
    let frame = timeout(LIMIT, raw.next()).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(frame, connman_ws::tungstenite::Message::Close(Some(f)) if u16::from(f.code) == 4200)
    );
    drop(raw);
    assert!(server.await.unwrap().unwrap_err().is::<Draining>());
    // The first member is drained with 4200 too.
    let close = timeout(LIMIT, early.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::RECONNECT,
            ..
        }))
    ));
    timeout(LIMIT, drain).await.unwrap().unwrap();
}

#[tokio::test]
async fn ws_07_wss_both_ways_with_a_certificate_made_in_the_test() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let group = Group::new();
    let server_group = group.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let conn = accept(tls, &by_path()).await.unwrap();
        join(server_group, conn).await;
    });
    let connector = WsConnector::new(TlsConnector::new(Arc::new(client_tls)), ws_config());
    let mut c = connector
        .oneshot(format!("wss://localhost:{port}/app/secure"))
        .await
        .unwrap();
    joined(&group, "secure", 1).await;
    group.broadcast("secure", "over tls", &[]);
    let got = timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Received::Binary(Bytes::from_static(b"over tls")));
    // Limits hold over TLS: 1009 reaches the client.
    c.send(Bytes::from(vec![1u8; 4096])).await.unwrap();
    let close = timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::TOO_BIG,
            ..
        }))
    ));
    joined(&group, "secure", 0).await;
}

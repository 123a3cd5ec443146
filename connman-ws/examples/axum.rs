//! An axum app whose `/app/{namespace}` route upgrades into a connman `Group`: limits, heartbeat, close codes and
//! groups added to the HTTP server you already run.
//!
//! `cargo run -p connman-ws --example axum` starts it on a free port, connects two clients, broadcasts to them,
//! drains the group (a newcomer during the drain gets 4200), and exits.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use connman_core::member::CloseCode;
use connman_pool::drain::DrainConfig;
use connman_pool::group::Group;
use connman_tcp::TcpConnector;
use connman_ws::tungstenite::http::StatusCode;
use connman_ws::upgrade::upgrade;
use connman_ws::{AcceptConfig, Admission, Received, WsConfig, WsConnector};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tower::ServiceExt;

#[derive(Clone)]
struct App {
    group: Group,
    config: AcceptConfig,
}

async fn websocket(State(app): State<App>, request: Request) -> Response {
    let (response, upgrading) = upgrade::<_, axum::body::Body>(request, &app.config);
    if let Ok(upgrading) = upgrading {
        tokio::spawn(async move {
            let Ok(conn) = upgrading.await else { return };
            let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
            let (member, mut incoming) = conn.split();
            if app.group.add(ns, id, member).is_ok() {
                // The member leaves the group by itself when this connection ends.
                while let Some(Ok(_)) = incoming.next().await {}
            }
        });
    }
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let group = Group::new();
    let draining = group.clone();
    let config = AcceptConfig::new(WsConfig::default())
        .admit(|handshake| match handshake.path().strip_prefix("/app/") {
            Some(namespace) => Admission::join(namespace),
            None => Admission::refuse(StatusCode::NOT_FOUND),
        })
        .draining(move || draining.is_draining());
    let app = axum::Router::new()
        .route("/app/{namespace}", get(websocket))
        .with_state(App {
            group: group.clone(),
            config,
        });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("listening on ws://{addr}/app/<namespace>");

    let connector = WsConnector::new(TcpConnector::new(), WsConfig::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(
            connector
                .clone()
                .oneshot(format!("ws://{addr}/app/lobby"))
                .await?,
        );
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while group.namespace_len("lobby") < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    let summary = group.broadcast("lobby", "hello from axum", &[]);
    println!("broadcast delivered to {}", summary.delivered);
    for client in &mut clients {
        if let Some(Ok(message)) = client.next().await {
            println!("client got {message:?}");
        }
    }

    let drain = tokio::spawn(group.drain(DrainConfig::max_per_second(100)?)?);
    let mut late = connector.oneshot(format!("ws://{addr}/app/lobby")).await?;
    if let Some(Ok(Received::Close(Some(close)))) = late.next().await {
        println!("a newcomer during the drain: {}", close.code);
        assert_eq!(close.code, CloseCode::RECONNECT);
    }
    for client in &mut clients {
        while let Some(Ok(message)) = client.next().await {
            println!("client got {message:?}");
        }
    }
    let report = drain.await?;
    println!("drained {} of {}", report.closed, report.total);
    Ok(())
}

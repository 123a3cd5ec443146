//! `WsClient` against connman-ws's own server side over loopback: a `Group` drained with 4200 sends its clients to a
//! second server, where they all arrive, none before its random delay, with every send accounted for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use connman_pool::drain::DrainConfig;
use connman_tcp::HostPort;
use connman_tests::ws::CountingServer;
use connman_ws::client::{ClientEvent, CloseAction, Message, WsClient};
use connman_ws::{AcceptConfig, WsConfig};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tower::service_fn;

const CLIENTS: usize = 30;
const WAIT: Duration = Duration::from_secs(30);

async fn server() -> CountingServer {
    CountingServer::start(AcceptConfig::new(WsConfig::default()).namespace("clients"))
        .await
        .expect("bind")
}

async fn until(mut done: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !done() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn ws_10_clients_drained_with_4200_come_back_to_another_server_after_their_delay() {
    let first = server().await;
    let second = server().await;
    let target = Arc::new(AtomicU16::new(first.port()));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let target = target.clone();
        let transport = service_fn(move |_: HostPort| {
            let port = target.load(Ordering::SeqCst);
            async move { Ok::<_, BoxError>(TcpStream::connect(("127.0.0.1", port)).await?) }
        });
        let (client, _incoming) = WsClient::builder("ws://test.invalid/clients")
            .transport(transport)
            .come_back_within(Duration::from_millis(500))
            .build()
            .expect("client");
        let events = client.events();
        let sender = {
            let (mut client, ok) = (client.clone(), ok.clone());
            tokio::spawn(async move {
                for n in 0..20 {
                    if client.send(Message::from(format!("{i} {n}"))).await.is_ok() {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    sleep(Duration::from_millis(50)).await;
                }
            })
        };
        clients.push((client, events, sender, _incoming));
    }
    until(|| first.group().namespace_len("clients") == CLIENTS).await;

    target.store(second.port(), Ordering::SeqCst);
    let drained = tokio::spawn(
        first
            .group()
            .drain(DrainConfig::max_per_second(100).expect("rate"))
            .expect("drain"),
    );
    until(|| second.accepted() == CLIENTS).await;
    assert_eq!(drained.await.expect("drain").closed, CLIENTS);

    for (client, mut events, sender, _incoming) in clients {
        timeout(WAIT, sender)
            .await
            .expect("sends done")
            .expect("sender");
        let mut came_back = None;
        while let Ok(event) = events.try_recv() {
            if let ClientEvent::PeerClosed { close, action } = event {
                assert_eq!(close.code(), CloseCode::RECONNECT);
                came_back = Some(action);
            }
        }
        match came_back {
            Some(CloseAction::ComeBack { after }) => assert!(after <= Duration::from_millis(500)),
            other => panic!("expected a come-back, got {other:?}"),
        }
        client.close().await;
    }
    // Every send that was written reached one of the servers.
    let received = || first.received() + second.received();
    until(|| received() >= ok.load(Ordering::SeqCst)).await;
    assert_eq!(ok.load(Ordering::SeqCst), (CLIENTS * 20) as u64);
    assert_eq!(received(), (CLIENTS * 20) as u64);
}

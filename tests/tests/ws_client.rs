//! `WsClient` against connman-ws's own server side over loopback: a `Group` drained with 4200 sends its clients to a
//! second server, where they all arrive, none before its random delay, with every send accounted for.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use connman_pool::drain::DrainConfig;
use connman_pool::group::Group;
use connman_tcp::HostPort;
use connman_ws::client::{ClientEvent, CloseAction, Message, WsClient};
use connman_ws::{AcceptConfig, Received, WsConfig, accept};
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tower::service_fn;

const CLIENTS: usize = 30;
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    group: Group,
    port: u16,
    accepts: Arc<Mutex<Vec<Instant>>>,
    received: Arc<AtomicU64>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let group = Group::new();
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let (g, a, r) = (group.clone(), accepts.clone(), received.clone());
    tokio::spawn(async move {
        let config = AcceptConfig::new(WsConfig::default()).namespace("clients");
        while let Ok((tcp, _)) = listener.accept().await {
            let (group, accepts, received, config) =
                (g.clone(), a.clone(), r.clone(), config.clone());
            tokio::spawn(async move {
                let Ok(conn) = accept(tcp, &config).await else {
                    return;
                };
                accepts.lock().unwrap().push(Instant::now());
                let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
                let (member, mut incoming) = conn.split();
                if group.add(ns.clone(), id.clone(), member).is_err() {
                    return;
                }
                while let Some(Ok(msg)) = incoming.next().await {
                    if matches!(msg, Received::Text(_) | Received::Binary(_)) {
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _ = group.remove(&ns, &id);
            });
        }
    });
    Server {
        group,
        port,
        accepts,
        received,
    }
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
    let target = Arc::new(AtomicU16::new(first.port));
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
    until(|| first.group.namespace_len("clients") == CLIENTS).await;

    target.store(second.port, Ordering::SeqCst);
    let drained = tokio::spawn(
        first
            .group
            .drain(DrainConfig::max_per_second(100).expect("rate"))
            .expect("drain"),
    );
    until(|| second.accepts.lock().unwrap().len() == CLIENTS).await;
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
    let received =
        || first.received.load(Ordering::SeqCst) + second.received.load(Ordering::SeqCst);
    until(|| received() >= ok.load(Ordering::SeqCst)).await;
    assert_eq!(ok.load(Ordering::SeqCst), (CLIENTS * 20) as u64);
    assert_eq!(received(), (CLIENTS * 20) as u64);
}

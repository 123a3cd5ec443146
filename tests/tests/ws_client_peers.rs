//! `WsClient` against real peers: Node `ws` 8.23 and Python `websockets` 17.4 as servers (scripts
//! `tests/peers/*/ws_client_record.*`, which echo and print every message they get).

use std::collections::HashSet;
use std::time::Duration;

use connman_core::error::{MaybeDelivered, NotSent};
use connman_tests::peers::{self, Peer};
use connman_ws::client::{Incoming, Message, WsClient};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::process::Command;
use tokio::time::timeout;
use tower::{Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
enum Kind {
    Node,
    Python,
}

fn script(kind: Kind, port: u16) -> Command {
    let mut cmd = match kind {
        Kind::Node => peers::node("ws_client_record.js"),
        Kind::Python => peers::python("ws_client_record.py"),
    };
    cmd.arg(port.to_string());
    cmd
}

async fn next(incoming: &mut Incoming) -> Message {
    timeout(WAIT, incoming.recv())
        .await
        .expect("an echo in time")
        .expect("client alive")
}

async fn echo_text_and_binary(kind: Kind) {
    let peer = Peer::spawn(script(kind, 0)).await;
    let (mut client, mut incoming) = WsClient::builder(&format!("ws://127.0.0.1:{}/", peer.port()))
        .build()
        .expect("client");
    client.send("hello").await.expect("text sent");
    client
        .send(vec![0u8, 1, 2, 255])
        .await
        .expect("binary sent");
    let big = "x".repeat(512 * 1024);
    client.send(big.as_str()).await.expect("512 KiB sent");
    assert_eq!(next(&mut incoming).await, Message::from("hello"));
    assert_eq!(
        next(&mut incoming).await,
        Message::from(vec![0u8, 1, 2, 255])
    );
    assert_eq!(next(&mut incoming).await, Message::from(big.as_str()));
    let rtt = client.ping().await.expect("the peer answers pings");
    assert!(rtt < WAIT);
    client.close().await;
    peer.kill().await;
}

#[tokio::test]
async fn ws_client_echoes_text_and_binary_with_node_ws() {
    echo_text_and_binary(Kind::Node).await;
}

#[tokio::test]
async fn ws_client_echoes_text_and_binary_with_python_websockets() {
    echo_text_and_binary(Kind::Python).await;
}

/// Reads a peer's `GOT t:m<i>` lines until `got` holds `until` of them or the peer dies; appends the numbers.
async fn read_got(peer: &mut Peer, got: &mut Vec<u32>, until: usize, client: &WsClient) {
    while got.len() < until {
        match timeout(WAIT, peer.next_line()).await {
            Ok(Some(line)) => {
                if let Some(n) = line.strip_prefix("GOT t:m").and_then(|n| n.parse().ok()) {
                    got.push(n);
                }
            }
            Ok(None) => return,
            Err(_) => panic!(
                "the peer went quiet with {} of {until} lines; client {client:?}, {:?}",
                got.len(),
                client.stats()
            ),
        }
    }
}

/// A `WsClient` keeps sending while the peer server is killed (SIGKILL) and started again on the same port, twice:
/// every send ends in one outcome, none ends `NotSent` (what was never written is replayed), what the peers received
/// is in order without duplicates, and what they missed is only what was written to a socket that was then killed.
///
/// `Ok` means written to a socket; a killed server loses what sat unread in its socket. So the sender keeps at most
/// `WINDOW` messages un-echoed (the application's own flow control), which bounds what a kill can take.
async fn restarted_twice_under_load(kind: Kind) {
    const SENDS: u32 = 3000;
    const WINDOW: u32 = 32;
    let mut peer = Peer::spawn(script(kind, 0)).await;
    let port = peer.port();
    let (client, mut incoming) = WsClient::builder(&format!("ws://127.0.0.1:{port}/"))
        .max_wait(Duration::from_secs(60))
        .build()
        .expect("client");
    // The highest echo seen, for the sender's window.
    let (echoed_tx, echoed) = tokio::sync::watch::channel(0u32);
    let drain = tokio::spawn(async move {
        while let Some(msg) = incoming.next().await {
            let n = std::str::from_utf8(msg.as_bytes())
                .ok()
                .and_then(|t| t.strip_prefix('m'))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(n) = n {
                echoed_tx.send_modify(|high| *high = (*high).max(n));
            }
        }
    });

    let sender = {
        let mut client = client.clone();
        let mut echoed = echoed.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(SENDS as usize);
            let mut in_flight = FuturesOrdered::new();
            for i in 0..SENDS {
                if i >= WINDOW {
                    // An echo lost with a killed server never comes: go on after a while.
                    let _ = timeout(
                        Duration::from_secs(1),
                        echoed.wait_for(|high| *high >= i - WINDOW),
                    )
                    .await;
                }
                let ready = timeout(WAIT, client.ready())
                    .await
                    .expect("room in time")
                    .expect("ready");
                in_flight.push_back(ready.call(Message::from(format!("m{i}"))));
                while in_flight.len() > WINDOW as usize {
                    outcomes.push(in_flight.next().await.expect("an outcome"));
                }
            }
            while let Some(outcome) = in_flight.next().await {
                outcomes.push(outcome);
            }
            outcomes
        })
    };

    let mut got = Vec::new();
    for restart in 1..=2u32 {
        read_got(&mut peer, &mut got, (restart * SENDS / 3) as usize, &client).await;
        peer.child().start_kill().expect("kill");
        // What the killed process printed before it died still counts.
        read_got(&mut peer, &mut got, SENDS as usize, &client).await;
        peer = Peer::spawn(script(kind, port)).await;
    }
    let outcomes = timeout(Duration::from_secs(120), sender)
        .await
        .expect("every send answered")
        .expect("sender");
    assert_eq!(outcomes.len(), SENDS as usize, "one outcome per send");
    // The last server has printed what it got once the last echo is back.
    let _ = timeout(WAIT, echoed.clone().wait_for(|high| *high == SENDS - 1)).await;
    let last = SENDS - 1;
    while got.last() != Some(&last) {
        let before = got.len();
        read_got(&mut peer, &mut got, before + 1, &client).await;
    }

    let not_sent = outcomes
        .iter()
        .filter(|o| o.as_ref().is_err_and(|e| e.is::<NotSent>()))
        .count();
    let maybe = outcomes
        .iter()
        .filter(|o| o.as_ref().is_err_and(|e| e.is::<MaybeDelivered>()))
        .count();
    let other: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err())
        .filter(|e| !e.is::<NotSent>() && !e.is::<MaybeDelivered>())
        .map(ToString::to_string)
        .collect();
    assert_eq!(not_sent, 0, "nothing unsent is lost");
    assert!(other.is_empty(), "{other:?}");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "received in order, no duplicates"
    );
    let received: HashSet<u32> = got.iter().copied().collect();
    let missing: Vec<u32> = (0..SENDS).filter(|i| !received.contains(i)).collect();
    // Lost with a killed socket: at most a window per kill, each written (Ok) or in flight (MaybeDelivered).
    assert!(
        missing.len() <= 2 * WINDOW as usize,
        "missing {missing:?}, {maybe} maybe delivered"
    );
    eprintln!(
        "restarted twice: {} of {SENDS} received, {} lost with killed sockets, {maybe} maybe delivered, {} replayed",
        got.len(),
        missing.len(),
        client.stats().replayed
    );
    drop(client);
    drain.abort();
    peer.kill().await;
}

/// Request mode through the same restarts: every message is an idempotent request answered by its echo, so each one
/// is completed only when a server has handled it, and one lost with a killed server is sent again on the next
/// connection. Every request ends answered; the servers together saw every message (some twice).
async fn requests_restarted_twice_under_load(kind: Kind) {
    const SENDS: u32 = 3000;
    const WINDOW: usize = 32;
    let mut peer = Peer::spawn(script(kind, 0)).await;
    let port = peer.port();
    let (client, mut incoming) = WsClient::builder(&format!("ws://127.0.0.1:{port}/"))
        .correlate(|msg| {
            std::str::from_utf8(msg.as_bytes())
                .ok()?
                .strip_prefix('m')?
                .parse()
                .ok()
        })
        .max_wait(Duration::from_secs(60))
        .build()
        .expect("client");
    let drain = tokio::spawn(async move { while incoming.next().await.is_some() {} });
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(WINDOW));
            let mut requests = tokio::task::JoinSet::new();
            for i in 0..SENDS {
                let permit = window.clone().acquire_owned().await.expect("semaphore");
                let mut client = client.clone();
                requests.spawn(async move {
                    let reply = client.request_idempotent(format!("m{i}")).await;
                    drop(permit);
                    (i, reply)
                });
            }
            let mut outcomes = Vec::new();
            while let Some(done) = requests.join_next().await {
                outcomes.push(done.expect("request task"));
            }
            outcomes
        })
    };
    let mut got = Vec::new();
    let distinct = |got: &Vec<u32>| got.iter().copied().collect::<HashSet<u32>>().len();
    for restart in 1..=2u32 {
        while distinct(&got) < (restart * SENDS / 3) as usize {
            let before = got.len();
            read_got(&mut peer, &mut got, before + 1, &client).await;
        }
        peer.child().start_kill().expect("kill");
        read_got(&mut peer, &mut got, usize::MAX, &client).await;
        peer = Peer::spawn(script(kind, port)).await;
    }
    let outcomes = timeout(Duration::from_secs(120), sender)
        .await
        .expect("every request answered in time")
        .expect("sender");
    assert_eq!(outcomes.len(), SENDS as usize, "one outcome per request");
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(i, o)| match o {
            Ok(reply) if reply.as_bytes() == format!("m{i}").as_bytes() => None,
            Ok(reply) => Some(format!("m{i}: wrong reply {reply:?}")),
            Err(e) => Some(format!("m{i}: {e}")),
        })
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    while distinct(&got) < SENDS as usize {
        let before = got.len();
        read_got(&mut peer, &mut got, before + 1, &client).await;
    }
    eprintln!(
        "requests through two restarts: {SENDS} answered, {} handled twice, {} replayed",
        got.len() - SENDS as usize,
        client.stats().replayed
    );
    drop(client);
    drain.abort();
    peer.kill().await;
}

#[tokio::test]
async fn ws_09_node_ws_restarted_twice_every_request_answered() {
    requests_restarted_twice_under_load(Kind::Node).await;
}

#[tokio::test]
async fn ws_09_python_websockets_restarted_twice_every_request_answered() {
    requests_restarted_twice_under_load(Kind::Python).await;
}

#[tokio::test]
async fn ws_09_node_ws_restarted_twice_under_load() {
    restarted_twice_under_load(Kind::Node).await;
}

#[tokio::test]
async fn ws_09_python_websockets_restarted_twice_under_load() {
    restarted_twice_under_load(Kind::Python).await;
}

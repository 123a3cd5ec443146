//! WebSocket connections as members of a `Group`: broadcast, close-all and drain, seen from real clients.

use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, Draining};
use connman_core::member::CloseCode;
use connman_pool::drain::DrainConfig;
use connman_pool::group::Group;
use connman_tcp::{HostPort, TcpConnector};
use connman_ws::{
    AcceptConfig, PeerClose, Received, WsConfig, WsConnection, WsConnector, WsStream, accept,
};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tower::{ServiceExt, service_fn};

const LIMIT: Duration = Duration::from_secs(10);

fn ws_config() -> WsConfig {
    WsConfig::builder().heartbeat(None).build().unwrap()
}

fn accept_config() -> AcceptConfig {
    AcceptConfig::new(ws_config())
        .route(|req| req.uri().path().strip_prefix("/app/").map(str::to_owned))
}

/// Puts an accepted connection in the group and reads from it until it ends, refreshing its idle timer.
async fn join<IO>(group: Group, conn: WsConnection<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
    let (member, mut incoming) = conn.split();
    if let Err(rejected) = group.add(ns.clone(), id.clone(), member) {
        // A draining group admits no one: tell the client to reconnect elsewhere (soketi's 4200).
        assert!(rejected.is::<Draining>());
        let mut member = rejected.into_member();
        member
            .close(CloseCode::RECONNECT, "server closing")
            .await
            .unwrap();
        while incoming.next().await.is_some() {}
        return;
    }
    while let Some(Ok(_)) = incoming.next().await {
        let _ = group.touch(&ns, &id);
    }
}

/// A loopback server feeding `group`; returns its address.
async fn loopback_server(group: Group) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let config = accept_config();
        while let Ok((tcp, _)) = listener.accept().await {
            let group = group.clone();
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(conn) = accept(tcp, &config).await {
                    join(group, conn).await;
                }
            });
        }
    });
    addr
}

async fn loopback_client(
    group: &Group,
    addr: std::net::SocketAddr,
    ns: &str,
) -> WsStream<TcpStream> {
    let before = group.namespace_len(ns);
    let connector = WsConnector::new(TcpConnector::new(), ws_config());
    let client = connector
        .oneshot(format!("ws://{addr}/app/{ns}"))
        .await
        .unwrap();
    while group.namespace_len(ns) == before {
        tokio::task::yield_now().await;
    }
    client
}

/// Reads until the close frame; returns the messages before it and the close.
async fn read_until_close<IO>(client: &mut WsStream<IO>) -> (Vec<Bytes>, Option<PeerClose>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = Vec::new();
    while let Some(item) = client.next().await {
        match item.unwrap() {
            Received::Close(close) => return (messages, close),
            other => messages.push(other.into_bytes().unwrap()),
        }
    }
    panic!("the stream ended without a close frame");
}

#[tokio::test]
async fn sk_05_broadcast_reaches_every_ws_member_of_the_namespace_in_order() {
    timeout(LIMIT, async {
        let group = Group::new();
        let addr = loopback_server(group.clone()).await;
        let mut five = Vec::new();
        for _ in 0..3 {
            five.push(loopback_client(&group, addr, "radio:5ghz").await);
        }
        let mut forty = loopback_client(&group, addr, "radio:40ghz").await;

        for i in 0..200 {
            let summary = group.broadcast("radio:5ghz", format!("m{i}"), &[]);
            assert_eq!(summary.delivered, 3);
        }
        group.broadcast("radio:40ghz", "only-40", &[]);
        for client in &mut five {
            for i in 0..200 {
                let got = client.next().await.unwrap().unwrap();
                assert_eq!(got.into_bytes().unwrap(), format!("m{i}"));
            }
        }
        // The other namespace's first message is its own: none of the 200 reached it.
        let got = forty.next().await.unwrap().unwrap();
        assert_eq!(got.into_bytes().unwrap(), "only-40");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sk_13_ss_04_close_all_gives_each_ws_client_4200_and_empties_the_namespace() {
    timeout(LIMIT, async {
        let group = Group::new();
        let addr = loopback_server(group.clone()).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(loopback_client(&group, addr, "lobby").await);
        }
        let mut other = loopback_client(&group, addr, "elsewhere").await;

        group.broadcast("lobby", "before", &[]);
        for closing in group.close_all("lobby", CloseCode::RECONNECT, "bye") {
            closing.await;
        }
        for client in &mut clients {
            let (messages, close) = read_until_close(client).await;
            assert_eq!(messages, vec![Bytes::from_static(b"before")]);
            assert_eq!(
                close,
                Some(PeerClose {
                    code: CloseCode::RECONNECT,
                    reason: "bye".into()
                })
            );
            // After the close handshake the server lets go of the socket.
            assert!(client.next().await.is_none());
        }
        assert_eq!(group.namespace_len("lobby"), 0);
        group.broadcast("elsewhere", "untouched", &[]);
        let got = other.next().await.unwrap().unwrap();
        assert_eq!(got.into_bytes().unwrap(), "untouched");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sk_19_close_all_with_1000_bye_reaches_each_ws_client() {
    timeout(LIMIT, async {
        let group = Group::new();
        let addr = loopback_server(group.clone()).await;
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(loopback_client(&group, addr, "radio:5ghz").await);
        }
        for closing in group.close_all("radio:5ghz", CloseCode::NORMAL, "bye") {
            closing.await;
        }
        for client in &mut clients {
            let (_, close) = read_until_close(client).await;
            assert_eq!(
                close.map(|c| (c.code, c.reason)),
                Some((CloseCode::NORMAL, "bye".into()))
            );
        }
    })
    .await
    .unwrap();
}

/// A client and a server over an in-memory pipe; the server side joins `group`.
async fn duplex_client(group: &Group, ns: &str) -> WsStream<DuplexStream> {
    let (a, b) = duplex(64 * 1024);
    let server_group = group.clone();
    tokio::spawn(async move {
        let conn = accept(b, &accept_config()).await.unwrap();
        join(server_group, conn).await;
    });
    let mut io = Some(a);
    let transport = service_fn(move |_: HostPort| {
        let io = io.take();
        async move { io.ok_or_else(|| BoxError::from("used once")) }
    });
    WsConnector::new(transport, ws_config())
        .oneshot(format!("ws://test.invalid/app/{ns}"))
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn ss_01_drain_at_a_rate_closes_ws_clients_with_4200_and_refuses_newcomers() {
    let group = Group::new();
    let mut clients = Vec::new();
    for ns in ["a", "b", "a"] {
        let before = group.len();
        clients.push(duplex_client(&group, ns).await);
        while group.len() == before {
            tokio::task::yield_now().await;
        }
    }

    let start = Instant::now();
    let drain = group
        .drain(DrainConfig::max_per_second(2).unwrap())
        .unwrap();
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let (_, close) = read_until_close(&mut client).await;
                (start.elapsed(), close)
            })
        })
        .collect();

    // A newcomer during the drain is refused by the group and told to reconnect with 4200.
    let mut late = duplex_client(&group, "a").await;
    let (_, close) = read_until_close(&mut late).await;
    assert_eq!(close.map(|c| c.code), Some(CloseCode::RECONNECT));

    let report = drain.await;
    assert_eq!((report.total, report.closed), (3, 3));
    let mut times = Vec::new();
    for watcher in watchers {
        let (at, close) = watcher.await.unwrap();
        assert_eq!(close.map(|c| c.code), Some(CloseCode::RECONNECT));
        times.push(at);
    }
    times.sort();
    // Two closes in the first second, the third one second later; never more than 2 in any second.
    assert!(times[1] < Duration::from_secs(1), "{times:?}");
    assert!(times[2] >= Duration::from_secs(1), "{times:?}");
    assert!(group.is_empty());
}

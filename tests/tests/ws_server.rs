//! The WebSocket server as a user writes it (the loop of connman-ws's crate docs), against clients that close,
//! vanish, send garbage, send too much, only answer pings, or mix text and binary: WS-01 to WS-04.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use connman_pool::group::{Departure, Group, GroupConfig};
use connman_ws::tungstenite::protocol::CloseFrame;
use connman_ws::tungstenite::protocol::frame::coding::CloseCode as WireCode;
use connman_ws::tungstenite::{Error as WireError, Message};
use connman_ws::{AcceptConfig, WsConfig, accept};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;

/// A bound on waits for things that happen at once on a quiet machine.
const LIMIT: Duration = Duration::from_secs(20);

type Departures = mpsc::UnboundedReceiver<(String, Departure)>;

/// A group that reports departures and emptied namespaces.
fn watched_group(config: GroupConfig) -> (Group, Departures, Arc<Mutex<Vec<String>>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let emptied = Arc::new(Mutex::new(Vec::new()));
    let seen = emptied.clone();
    let group = Group::builder()
        .config(config)
        .on_remove(move |remote, departure| {
            let _ = tx.send((remote.id.clone(), departure));
        })
        .on_empty(move |ns| seen.lock().unwrap().push(ns.to_owned()))
        .build()
        .unwrap();
    (group, rx, emptied)
}

/// The server loop of the crate docs: accept, join, read until the end. No `remove`, no `touch`.
async fn serve<IO>(io: IO, config: AcceptConfig, group: Group)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(conn) = accept(io, &config).await else {
        return;
    };
    let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
    let (member, mut incoming) = conn.split();
    if group.add(ns, id, member).is_err() {
        return;
    }
    while let Some(Ok(_)) = incoming.next().await {}
}

async fn loopback_server(config: AcceptConfig, group: Group) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, config.clone(), group.clone()));
        }
    });
    addr
}

fn server_config() -> AcceptConfig {
    AcceptConfig::new(WsConfig::builder().heartbeat(None).build().unwrap()).namespace("room")
}

async fn client(addr: std::net::SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap()
        .0
}

async fn joined(group: &Group) {
    timeout(LIMIT, async {
        while group.namespace_len("room") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the client joined");
}

/// Waits for the one member's departure and checks that the group forgot it.
async fn departed(group: &Group, departures: &mut Departures, emptied: &Mutex<Vec<String>>) {
    let (_, how) = timeout(LIMIT, departures.recv())
        .await
        .expect("the member left the group by itself")
        .unwrap();
    assert!(
        matches!(how, Departure::Ended | Departure::Failed),
        "{how:?}"
    );
    assert_eq!(group.namespace_len("room"), 0);
    assert_eq!(emptied.lock().unwrap().as_slice(), ["room"]);
    let summary = group.broadcast("room", "anyone?", &[]);
    assert_eq!(summary.delivered, 0);
}

/// Reads the raw socket until the server's end of stream, which must come as a FIN, not a reset.
async fn reads_to_fin(tcp: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    timeout(LIMIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) => panic!("the server reset the connection: {err}"),
            }
        }
    })
    .await
    .expect("the server closed the socket");
}

#[tokio::test]
async fn ws_01_a_member_whose_peer_closed_leaves_its_group_and_its_socket_closes() {
    let (group, mut departures, emptied) = watched_group(GroupConfig::default());
    let addr = loopback_server(server_config(), group.clone()).await;
    let mut ws = client(addr).await;
    joined(&group).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: WireCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // The server answers the close, then ends the stream.
    assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
    departed(&group, &mut departures, &emptied).await;
    reads_to_fin(ws.get_mut()).await;
}

#[tokio::test]
async fn ws_01_a_member_whose_peer_vanished_leaves_its_group() {
    let (group, mut departures, emptied) = watched_group(GroupConfig::default());
    let addr = loopback_server(server_config(), group.clone()).await;
    let ws = client(addr).await;
    joined(&group).await;
    drop(ws);
    departed(&group, &mut departures, &emptied).await;
}

#[tokio::test]
async fn ws_01_a_member_whose_peer_sent_garbage_leaves_its_group_after_1002() {
    let (group, mut departures, emptied) = watched_group(GroupConfig::default());
    let addr = loopback_server(server_config(), group.clone()).await;
    let mut ws = client(addr).await;
    joined(&group).await;
    // An unmasked frame with a reserved opcode: a protocol violation.
    ws.get_mut().write_all(&[0x83, 0x00]).await.unwrap();
    let mut raw = ws.into_inner();
    departed(&group, &mut departures, &emptied).await;
    // Close frame 1002, then a FIN.
    let mut head = [0u8; 4];
    timeout(LIMIT, raw.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 0x88);
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1002);
    reads_to_fin(&mut raw).await;
}

#[tokio::test(start_paused = true)]
async fn ws_01_a_member_whose_heartbeat_timed_out_leaves_its_group() {
    let (group, mut departures, emptied) = watched_group(GroupConfig::default());
    let config = AcceptConfig::new(
        WsConfig::builder()
            .heartbeat(Some((Duration::from_secs(2), Duration::from_secs(1))))
            .build()
            .unwrap(),
    )
    .namespace("room");
    let (a, b) = duplex(64 * 1024);
    tokio::spawn(serve(b, config, group.clone()));
    // A client that never reads, so it answers no ping.
    let (_silent, _) = tokio_tungstenite::client_async("ws://test.invalid/", a)
        .await
        .unwrap();
    joined(&group).await;
    departed(&group, &mut departures, &emptied).await;
}

/// Sends a message over the server's limit while reading; returns the close code the client saw, or the error.
async fn too_big_once(addr: std::net::SocketAddr) -> Result<u16, String> {
    let ws = client(addr).await;
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        // The server closes while this is being written; whatever the write says then does not matter.
        let _ = tx.send(Message::binary(vec![7u8; 2 << 20])).await;
        tx
    });
    let seen = timeout(LIMIT, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Ok(u16::from(frame.code)),
                Some(Ok(Message::Close(None))) => return Err("a close without a code".to_owned()),
                Some(Ok(_)) => {}
                Some(Err(WireError::ConnectionClosed)) | None => {
                    return Err("the stream ended without a close".to_owned());
                }
                Some(Err(err)) => return Err(err.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no close within the limit".to_owned())??;
    // The client's close reply goes out; then the server ends the stream with a FIN, not a reset.
    let mut tx = writer.await.unwrap();
    let _ = timeout(LIMIT, tx.close()).await;
    let end = timeout(LIMIT, async {
        loop {
            match rx.next().await {
                Some(Ok(_)) => {}
                Some(Err(WireError::ConnectionClosed | WireError::AlreadyClosed)) | None => {
                    return Ok(());
                }
                Some(Err(err)) => return Err(format!("after the close: {err}")),
            }
        }
    })
    .await
    .map_err(|_| "the server did not end the stream".to_owned())?;
    end.map(|()| seen)
}

#[tokio::test]
async fn ws_02_a_message_over_the_limit_is_refused_with_1009_never_a_reset() {
    let (group, _departures, _emptied) = watched_group(GroupConfig::default());
    let config = AcceptConfig::new(
        WsConfig::builder()
            .heartbeat(None)
            .max_message_size(64 * 1024)
            .build()
            .unwrap(),
    )
    .namespace("room");
    let addr = loopback_server(config, group).await;
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        outcomes.push(too_big_once(addr).await);
    }
    let wrong: Vec<_> = outcomes.iter().filter(|o| **o != Ok(1009)).collect();
    assert!(
        wrong.is_empty(),
        "{} of 20 did not see 1009: {wrong:?}",
        wrong.len()
    );
}

#[tokio::test]
async fn ws_02_invalid_utf8_is_refused_with_1007_and_a_fin() {
    let (group, _departures, _emptied) = watched_group(GroupConfig::default());
    let addr = loopback_server(server_config(), group.clone()).await;
    let mut ws = client(addr).await;
    joined(&group).await;
    // A masked text frame with an invalid byte, then more traffic the server must read past.
    let tcp = ws.get_mut();
    tcp.write_all(&[0x81, 0x81, 0, 0, 0, 0, 0xFF])
        .await
        .unwrap();
    tcp.write_all(&[0x82, 0x83, 0, 0, 0, 0, 1, 2, 3])
        .await
        .unwrap();
    let mut head = [0u8; 4];
    timeout(LIMIT, tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 0x88);
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1007);
    // Our close reply: masked, code 1007, then the server ends with a FIN.
    tcp.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xEF])
        .await
        .unwrap();
    reads_to_fin(tcp).await;
}

#[tokio::test(start_paused = true)]
async fn ws_03_a_silent_client_that_answers_pings_is_not_closed_as_idle() {
    let group = Group::builder()
        .config(GroupConfig::default().with_idle_timeout(Some(Duration::from_secs(3))))
        .build()
        .unwrap();
    let config = AcceptConfig::new(
        WsConfig::builder()
            .heartbeat(Some((Duration::from_secs(1), Duration::from_millis(500))))
            .build()
            .unwrap(),
    )
    .namespace("room");
    let (a, b) = duplex(64 * 1024);
    tokio::spawn(serve(b, config, group.clone()));
    let (mut ws, _) = tokio_tungstenite::client_async("ws://test.invalid/", a)
        .await
        .unwrap();
    joined(&group).await;
    let id = group.ids("room").pop().unwrap();
    // Reading answers the pings; the client sends nothing else for ten idle timeouts.
    let mut pings = 0;
    let outcome = timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => return other,
            }
        }
    })
    .await;
    assert!(outcome.is_err(), "the server ended it: {outcome:?}");
    assert!(pings >= 20, "{pings} pings");
    assert!(group.is_open("room", &id));
}

#[tokio::test]
async fn ws_04_one_connection_carries_text_and_binary_and_an_echo_of_text_is_text() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = accept(tcp, &server_config()).await.unwrap().into_stream();
        while let Some(Ok(msg)) = conn.next().await {
            let Some(echo) = msg.into_outgoing() else {
                continue;
            };
            if conn.frames().send(echo).await.is_err() {
                return;
            }
        }
    });
    let mut ws = client(addr).await;
    let sent = [
        Message::text("hello"),
        Message::binary(Bytes::from_static(&[0, 159, 146, 150])),
        Message::text("é"),
        Message::binary(Bytes::from_static(b"plain ascii in a binary frame")),
    ];
    for msg in &sent {
        ws.send(msg.clone()).await.unwrap();
        let echo = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&echo, msg);
    }
}

#[tokio::test]
async fn ws_04_a_text_member_gets_group_messages_as_text() {
    let group = Group::new();
    let config = AcceptConfig::new(
        WsConfig::builder()
            .heartbeat(None)
            .message_kind(connman_ws::MessageKind::Text)
            .build()
            .unwrap(),
    )
    .namespace("room");
    let addr = loopback_server(config, group.clone()).await;
    let mut ws = client(addr).await;
    joined(&group).await;
    group.broadcast("room", "tick", &[]);
    let got = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::text("tick"));
}

#[tokio::test(start_paused = true)]
async fn ws_02_the_server_ends_the_stream_as_soon_as_the_peers_close_reply_arrives() {
    // A client that, like Python `websockets`, waits for the server's FIN after its close reply: the server must see
    // that reply behind the rest of the refused message, not wait out its close timeout.
    let close_timeout = Duration::from_secs(1000);
    let config = AcceptConfig::new(
        WsConfig::builder()
            .heartbeat(None)
            .max_message_size(1024)
            .close_timeout(close_timeout)
            .build()
            .unwrap(),
    );
    let (a, b) = duplex(1 << 20);
    let server = tokio::spawn(async move {
        let (_member, mut incoming) = accept(b, &config).await.unwrap().split();
        incoming.next().await
    });
    let (ws, _) = tokio_tungstenite::client_async("ws://test.invalid/", a)
        .await
        .unwrap();
    let mut raw = ws.into_inner();
    let start = tokio::time::Instant::now();
    // A masked binary frame of 100 000 bytes, in two parts around the server's close.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&100_000u64.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend(std::iter::repeat_n(0u8, 100_000));
    raw.write_all(&frame[..5000]).await.unwrap();
    let mut head = [0u8; 4];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1009);
    raw.write_all(&frame[5000..]).await.unwrap();
    raw.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xF1])
        .await
        .unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(start.elapsed() < close_timeout, "{:?}", start.elapsed());
    let err = server.await.unwrap().unwrap().unwrap_err();
    assert!(err.is::<connman_ws::error::MessageTooBig>());
}

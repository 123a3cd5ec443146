//! Public-API tests of connman-ws: handshakes, echo, limits, heartbeat and close codes.

use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, InvalidConfig, LinkLost, NotFound};
use connman_core::member::{CloseCode, Member};
use connman_tcp::{HostPort, TcpConnector};
use connman_ws::error::{
    HandshakeTimeout, HttpRejected, InvalidUtf8, MessageTooBig, PongTimeout, ProtocolViolation,
};
use connman_ws::tungstenite::protocol::frame::Frame;
use connman_ws::tungstenite::protocol::frame::coding::{Data, OpCode};
use connman_ws::tungstenite::{ClientRequestBuilder, Message};
use connman_ws::{
    AcceptConfig, MessageKind, PeerClose, Received, WsConfig, WsConnection, WsConnector, WsStream,
    accept,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tower::{ServiceExt, service_fn};

/// Small heartbeat used by the heartbeat tests.
const INTERVAL: Duration = Duration::from_secs(10);
const PONG_TIMEOUT: Duration = Duration::from_secs(5);

fn config() -> WsConfig {
    WsConfig::builder().heartbeat(None).build().unwrap()
}

/// A connector whose transport hands out `io` once.
fn duplex_connector(
    io: DuplexStream,
    config: WsConfig,
) -> WsConnector<
    impl tower::Service<
        HostPort,
        Response = DuplexStream,
        Error = BoxError,
        Future = impl Future<Output = Result<DuplexStream, BoxError>> + Send + 'static,
    > + Clone,
> {
    let io = std::sync::Arc::new(std::sync::Mutex::new(Some(io)));
    let transport = service_fn(move |_: HostPort| {
        let io = io.lock().unwrap().take();
        async move { io.ok_or_else(|| BoxError::from("the duplex was used")) }
    });
    WsConnector::new(transport, config)
}

/// Our client and our server over an in-memory pipe.
async fn pair(
    client: WsConfig,
    server: AcceptConfig,
) -> (WsStream<DuplexStream>, WsConnection<DuplexStream>) {
    let (a, b) = duplex(64 * 1024);
    let server = tokio::spawn(async move { accept(b, &server).await.unwrap() });
    let client = duplex_connector(a, client)
        .oneshot("ws://test.invalid/app/room")
        .await
        .unwrap();
    (client, server.await.unwrap())
}

/// A raw tokio-tungstenite client and our server over an in-memory pipe.
async fn raw_pair(
    server: AcceptConfig,
) -> (WebSocketStream<DuplexStream>, WsConnection<DuplexStream>) {
    let (a, b) = duplex(64 * 1024);
    let server = tokio::spawn(async move { accept(b, &server).await.unwrap() });
    let (client, _) = tokio_tungstenite::client_async("ws://test.invalid/", a)
        .await
        .unwrap();
    (client, server.await.unwrap())
}

fn close_of(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> u16 {
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => frame.code.into(),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_over_duplex_both_ways() {
    let (mut client, server) = pair(config(), AcceptConfig::new(config())).await;
    assert_eq!(server.namespace(), "default");
    assert_eq!(server.path(), "/app/room");
    let (mut member, mut incoming) = server.split();
    let echo = tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            match msg {
                Received::Close(_) => break,
                msg => member.send(msg.into_bytes().unwrap()).await.unwrap(),
            }
        }
    });
    for i in 0..100 {
        client.send(Bytes::from(format!("m{i}"))).await.unwrap();
    }
    for i in 0..100 {
        let got = client.next().await.unwrap().unwrap();
        assert_eq!(got, Received::Binary(Bytes::from(format!("m{i}"))));
    }
    client.close(CloseCode::NORMAL, "done").await.unwrap();
    // The server answers the close; the client's stream shows it, then ends.
    let reply = client.next().await.unwrap().unwrap();
    assert!(matches!(
        reply,
        Received::Close(Some(PeerClose {
            code: CloseCode::NORMAL,
            ..
        }))
    ));
    echo.await.unwrap();
}

#[tokio::test]
async fn handshake_over_loopback_with_namespace_route_and_subprotocol() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_config = AcceptConfig::new(config())
        .route(|req| req.uri().path().strip_prefix("/app/").map(str::to_owned))
        .subprotocols(["chat.v2", "chat.v1"]);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, &accept_config).await.unwrap()
    });
    let request = ClientRequestBuilder::new(format!("ws://{addr}/app/radio:5ghz").parse().unwrap())
        .with_header("x-token", "t1")
        .with_sub_protocol("chat.v1");
    let connector = WsConnector::new(TcpConnector::new(), config());
    let client = timeout(Duration::from_secs(5), connector.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    let conn = timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.namespace(), "radio:5ghz");
    assert_eq!(conn.subprotocol(), Some("chat.v1"));
    assert_eq!(client.subprotocol(), Some("chat.v1"));
}

#[tokio::test]
async fn handshake_rejected_by_route_gives_http_404_and_not_found() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_config = AcceptConfig::new(config())
        .route(|req| req.uri().path().strip_prefix("/app/").map(str::to_owned));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, &accept_config).await
    });
    let connector = WsConnector::new(TcpConnector::new(), config());
    let err = timeout(
        Duration::from_secs(5),
        connector.oneshot(format!("ws://{addr}/other")),
    )
    .await
    .unwrap()
    .unwrap_err();
    let rejected = err
        .downcast_ref::<HttpRejected>()
        .expect("an HTTP rejection");
    assert_eq!(rejected.status(), 404);
    let server_err = timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(server_err.is::<NotFound>(), "{server_err}");
}

#[tokio::test(start_paused = true)]
async fn client_handshake_times_out_when_the_server_is_silent() {
    let cfg = WsConfig::builder()
        .heartbeat(None)
        .handshake_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (a, _silent_server) = duplex(1024);
    let start = Instant::now();
    let err = duplex_connector(a, cfg)
        .oneshot("ws://test.invalid/")
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<HandshakeTimeout>().unwrap().after(),
        Duration::from_secs(3)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn server_handshake_times_out_when_the_client_is_silent() {
    let (_silent_client, b) = duplex(1024);
    let start = Instant::now();
    let err = accept(b, &AcceptConfig::default()).await.unwrap_err();
    assert!(err.is::<HandshakeTimeout>());
    assert_eq!(start.elapsed(), WsConfig::DEFAULT_HANDSHAKE_TIMEOUT);
}

#[tokio::test]
async fn a_request_that_is_not_websocket_fails_the_handshake_with_a_typed_error() {
    let (mut a, b) = duplex(4096);
    let server = tokio::spawn(async move { accept(b, &AcceptConfig::new(config())).await });
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(err.is::<ProtocolViolation>(), "{err}");
}

#[tokio::test]
async fn a_failed_connect_passes_the_transport_error_on() {
    // Bind then drop, so the port refuses.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let connector = WsConnector::new(TcpConnector::new(), config());
    let err = timeout(
        Duration::from_secs(5),
        connector.oneshot(format!("ws://{addr}/")),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is::<connman_tcp::ConnectError>(), "{err}");
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server_cfg = WsConfig::builder()
        .heartbeat(None)
        .max_message_size(1024)
        .build()
        .unwrap();
    let (mut client, server) = raw_pair(AcceptConfig::new(server_cfg)).await;
    let (_member, mut incoming) = server.split();
    client
        .send(Message::Binary(vec![7u8; 1000].into()))
        .await
        .unwrap();
    client
        .send(Message::Binary(vec![7u8; 2000].into()))
        .await
        .unwrap();
    assert_eq!(
        incoming
            .next()
            .await
            .unwrap()
            .unwrap()
            .into_bytes()
            .unwrap()
            .len(),
        1000
    );
    let err = incoming.next().await.unwrap().unwrap_err();
    let too_big = err.downcast_ref::<MessageTooBig>().expect("MessageTooBig");
    assert_eq!(too_big.max(), 1024);
    assert!(incoming.next().await.is_none());
    assert_eq!(close_of(client.next().await), 1009);
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let (mut client, server) = raw_pair(AcceptConfig::new(config())).await;
    let (_member, mut incoming) = server.split();
    let bad = Frame::message(
        Bytes::from_static(&[0x66, 0xff, 0xfe]),
        OpCode::Data(Data::Text),
        true,
    );
    client.send(Message::Frame(bad)).await.unwrap();
    let err = incoming.next().await.unwrap().unwrap_err();
    assert!(err.is::<InvalidUtf8>(), "{err}");
    assert_eq!(close_of(client.next().await), 1007);
}

#[tokio::test]
async fn protocol_violation_closes_with_1002_and_spares_other_connections() {
    let (mut healthy_client, healthy) = raw_pair(AcceptConfig::new(config())).await;
    let (client, server) = raw_pair(AcceptConfig::new(config())).await;
    let (_member, mut incoming) = server.split();
    // An unmasked frame from a client breaks RFC 6455.
    let mut io = client.into_inner();
    io.write_all(&[0x82, 0x00]).await.unwrap();
    let err = incoming.next().await.unwrap().unwrap_err();
    assert!(err.is::<ProtocolViolation>(), "{err}");
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1002);

    let (mut member, _incoming) = healthy.split();
    member
        .send(Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(
        healthy_client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"still here"))
    );
}

#[tokio::test]
async fn pings_are_answered_while_the_receiver_is_polled() {
    let (mut client, server) = raw_pair(AcceptConfig::new(config())).await;
    let (_member, mut incoming) = server.split();
    let reader = tokio::spawn(async move { incoming.next().await });
    client
        .send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p1"))
    );
    client.send(Message::Text("after".into())).await.unwrap();
    let got = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(got, Received::Text("after".into()));
}

#[tokio::test(start_paused = true)]
async fn ss_04_missed_pong_closes_with_4201() {
    let server_cfg = WsConfig::builder()
        .heartbeat(Some((INTERVAL, PONG_TIMEOUT)))
        .build()
        .unwrap();
    // The raw client is never polled until the end, so it answers no ping.
    let (mut client, server) = raw_pair(AcceptConfig::new(server_cfg)).await;
    let (_member, mut incoming) = server.split();
    let start = Instant::now();
    let err = incoming.next().await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<PongTimeout>().unwrap().after(),
        PONG_TIMEOUT
    );
    // The close frame went out at once; the error comes when the peer has had the close timeout to answer it.
    assert_eq!(
        start.elapsed(),
        INTERVAL + PONG_TIMEOUT + WsConfig::DEFAULT_CLOSE_TIMEOUT
    );
    assert!(incoming.next().await.is_none());
    assert!(matches!(client.next().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(close_of(client.next().await), CloseCode::IDLE_TIMEOUT.get());
}

#[tokio::test(start_paused = true)]
async fn ss_04_answered_pings_keep_the_connection_open() {
    let heartbeat = WsConfig::builder()
        .heartbeat(Some((INTERVAL, PONG_TIMEOUT)))
        .build()
        .unwrap();
    let (mut client, server) = pair(config(), AcceptConfig::new(heartbeat)).await;
    let (mut member, mut incoming) = server.split();
    // The client's own reader answers the pings.
    let client_reader =
        tokio::spawn(async move { client.next().await.map(|r| r.map_err(|e| e.to_string())) });
    let outcome = timeout(INTERVAL * 10, incoming.next()).await;
    assert!(
        outcome.is_err(),
        "still open after ten intervals: {outcome:?}"
    );
    member.send(Bytes::from_static(b"late")).await.unwrap();
    let got = client_reader.await.unwrap().unwrap().unwrap();
    assert_eq!(got, Received::Binary(Bytes::from_static(b"late")));
}

#[tokio::test(start_paused = true)]
async fn the_client_side_heartbeat_detects_a_silent_server() {
    let heartbeat = WsConfig::builder()
        .heartbeat(Some((INTERVAL, PONG_TIMEOUT)))
        .build()
        .unwrap();
    // The server's receiver is never polled, so it answers no ping.
    let (mut client, _server) = pair(heartbeat, AcceptConfig::new(config())).await;
    let err = client.next().await.unwrap().unwrap_err();
    assert!(err.is::<PongTimeout>());
}

#[tokio::test]
async fn member_close_sends_the_recorded_code_and_reason() {
    let (mut client, server) = raw_pair(AcceptConfig::new(config())).await;
    let (mut member, _incoming) = server.split();
    member.send(Bytes::from_static(b"last")).await.unwrap();
    std::pin::Pin::new(&mut member)
        .start_close(CloseCode::RECONNECT, "bye")
        .unwrap();
    SinkExt::close(&mut member).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"last"))
    );
    match client.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4200);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // A send after the close fails with a typed error and writes nothing.
    let err = member.send(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is::<connman_core::error::Closed>(), "{err}");
}

#[tokio::test]
async fn text_mode_sends_text_frames_and_refuses_invalid_utf8() {
    let text = WsConfig::builder()
        .heartbeat(None)
        .message_kind(MessageKind::Text)
        .build()
        .unwrap();
    let (mut client, server) = raw_pair(AcceptConfig::new(text)).await;
    let (mut member, _incoming) = server.split();
    let err = member.send(Bytes::from_static(&[0xff])).await.unwrap_err();
    assert!(err.is::<InvalidUtf8>());
    member.send(Bytes::from_static(b"hi")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Text("hi".into())
    );
}

#[tokio::test]
async fn a_peer_that_vanishes_gives_link_lost_or_an_end() {
    let (client, server) = raw_pair(AcceptConfig::new(config())).await;
    let (_member, mut incoming) = server.split();
    drop(client);
    match incoming.next().await {
        None => {}
        Some(Err(err)) => assert!(
            err.is::<LinkLost>() || err.is::<ProtocolViolation>(),
            "{err}"
        ),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn defaults_are_small_and_finite() {
    let c = WsConfig::default();
    assert_eq!(c.read_buffer_size(), 1024);
    assert!(c.max_write_buffer_size() > c.write_buffer_size());
    assert_eq!(c.max_message_size(), 1024 * 1024);
    let (interval, timeout) = c.heartbeat().unwrap();
    assert!(timeout < interval);
    assert_eq!(c.message_kind(), MessageKind::Binary);
}

#[test]
fn invalid_settings_are_rejected() {
    let same =
        WsConfig::builder().heartbeat(Some((Duration::from_secs(5), Duration::from_secs(5))));
    let longer =
        WsConfig::builder().heartbeat(Some((Duration::from_secs(5), Duration::from_secs(6))));
    let zero = WsConfig::builder().heartbeat(Some((Duration::from_secs(5), Duration::ZERO)));
    let buffers = WsConfig::builder()
        .write_buffer_size(10)
        .max_write_buffer_size(10);
    let no_read = WsConfig::builder().read_buffer_size(0);
    let no_handshake = WsConfig::builder().handshake_timeout(Duration::ZERO);
    for builder in [same, longer, zero, buffers, no_read, no_handshake] {
        let err: InvalidConfig = builder.build().unwrap_err();
        assert!(!err.reason().is_empty());
    }
}

/// The default read buffer is small (1 KiB, so that an idle connection costs little), and a read takes at most that
/// much: a message near the size limit still arrives whole, and the next one after it.
#[tokio::test]
async fn a_message_far_larger_than_the_read_buffer_arrives_whole() {
    let (mut client, server) = raw_pair(AcceptConfig::new(WsConfig::default())).await;
    let (_member, mut incoming) = server.split();
    let big: Vec<u8> = (0..900 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        client.send(Message::binary(sent)).await.unwrap();
        client.send(Message::binary(vec![1u8; 3])).await.unwrap();
        client
    });
    let first = timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(first.into_bytes().expect("binary"), Bytes::from(big));
    let second = timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(
        second.into_bytes().expect("binary"),
        Bytes::from(vec![1u8; 3])
    );
    let _client = writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_burst_through_a_slow_pipe_arrives_whole_while_pings_flow() {
    let heartbeat = WsConfig::builder()
        .heartbeat(Some((
            Duration::from_millis(100),
            Duration::from_millis(50),
        )))
        .build()
        .unwrap();
    // A pipe far smaller than the burst, so the sending half waits on the socket while the receive half flushes
    // pings through the same connection: neither may miss its wake-up.
    let (a, b) = duplex(512);
    let server =
        tokio::spawn(async move { accept(b, &AcceptConfig::new(heartbeat)).await.unwrap() });
    let mut client = duplex_connector(a, heartbeat)
        .oneshot("ws://test.invalid/")
        .await
        .unwrap();
    let (mut member, mut incoming) = server.await.unwrap().split();
    let reader =
        tokio::spawn(async move { incoming.next().await.map(|r| r.map_err(|e| e.to_string())) });
    let writer = tokio::spawn(async move {
        for i in 0..300u32 {
            member
                .feed(Bytes::from(vec![(i % 251) as u8; 1024]))
                .await
                .unwrap();
        }
        member.flush().await.unwrap();
        member
    });
    let outcome = timeout(Duration::from_secs(60), async {
        for i in 0..300u32 {
            let got = client.next().await.unwrap().unwrap().into_bytes().unwrap();
            assert_eq!(got, Bytes::from(vec![(i % 251) as u8; 1024]));
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the burst stalled");
    let _member = writer.await.unwrap();
    // The server's receive half is still waiting for messages: no pong timeout, no error.
    assert!(!reader.is_finished());
}

#[tokio::test]
async fn a_client_offering_only_unknown_subprotocols_is_refused_with_400() {
    let (a, b) = duplex(64 * 1024);
    let server_config = AcceptConfig::new(config()).subprotocols(["chat.v2"]);
    let server = tokio::spawn(async move { accept(b, &server_config).await });
    let request =
        ClientRequestBuilder::new("ws://test.invalid/".parse().unwrap()).with_sub_protocol("other");
    let err = duplex_connector(a, config())
        .oneshot(request)
        .await
        .unwrap_err();
    assert_eq!(err.downcast_ref::<HttpRejected>().unwrap().status(), 400);
    let server_err = server.await.unwrap().unwrap_err();
    assert_eq!(
        server_err.downcast_ref::<HttpRejected>().unwrap().status(),
        400
    );
}

#[tokio::test(start_paused = true)]
async fn a_close_the_peer_never_answers_ends_the_receiver_after_the_close_timeout() {
    for heartbeat in [None, Some((INTERVAL, PONG_TIMEOUT))] {
        let server_cfg = WsConfig::builder()
            .heartbeat(heartbeat)
            .close_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        // The raw client is never polled, so it never answers the close.
        let (_client, server) = raw_pair(AcceptConfig::new(server_cfg)).await;
        let (mut member, mut incoming) = server.split();
        let reader = tokio::spawn(async move {
            let outcome = incoming.next().await.map(|r| r.map_err(|e| e.to_string()));
            (outcome, Instant::now())
        });
        // Let the receiver park on the socket first.
        tokio::task::yield_now().await;
        let closed_at = Instant::now();
        member.close(CloseCode::RECONNECT, "bye").await.unwrap();
        let (outcome, ended_at) = reader.await.unwrap();
        assert_eq!(outcome, None, "heartbeat {heartbeat:?}");
        assert_eq!(
            ended_at - closed_at,
            Duration::from_secs(2),
            "heartbeat {heartbeat:?}"
        );
    }
}

/// `WsConfig` accepts a ping interval and a close timeout near `Duration::MAX` (pings and the close wait in effect
/// never end): the connection runs and closes instead of overflowing the clock.
#[tokio::test(start_paused = true)]
async fn ws_durations_near_duration_max_do_not_overflow() {
    let far = WsConfig::builder()
        .heartbeat(Some((Duration::MAX, Duration::from_secs(5))))
        .close_timeout(Duration::MAX)
        .build()
        .expect("a valid config");
    let (mut client, server) = pair(far, AcceptConfig::new(far)).await;
    let (mut member, mut incoming) = server.split();
    client.send(Bytes::from_static(b"hi")).await.unwrap();
    let got = incoming.next().await.unwrap().unwrap();
    assert_eq!(got, Received::Binary(Bytes::from_static(b"hi")));
    member.send(Bytes::from_static(b"back")).await.unwrap();
    let got = client.next().await.unwrap().unwrap();
    assert_eq!(got, Received::Binary(Bytes::from_static(b"back")));
    client.close(CloseCode::NORMAL, "done").await.unwrap();
    assert!(matches!(
        incoming.next().await,
        Some(Ok(Received::Close(_)))
    ));
    assert!(matches!(client.next().await, Some(Ok(Received::Close(_)))));
}

/// A read buffer or a message limit larger than a process can allocate is a typed `InvalidConfig`: tungstenite
/// allocates the read buffer whole, and reserves a frame's declared length (up to the limit) as soon as its header
/// arrives, so either would let the connection (or a peer's frame header) abort the process.
#[test]
fn ws_sizes_beyond_what_can_be_allocated_are_invalid_config() {
    for builder in [
        WsConfig::builder().read_buffer_size(usize::MAX - 5),
        WsConfig::builder().max_message_size(usize::MAX),
        WsConfig::builder().max_message_size(WsConfig::MAX_ALLOCATION + 1),
    ] {
        let err: InvalidConfig = builder.build().unwrap_err();
        assert!(!err.reason().is_empty());
    }
    let largest = WsConfig::builder()
        .read_buffer_size(WsConfig::MAX_ALLOCATION)
        .max_message_size(WsConfig::MAX_ALLOCATION)
        .build()
        .expect("the bound itself is allowed");
    assert_eq!(largest.max_message_size(), WsConfig::MAX_ALLOCATION);
}

/// The peer's close ends the stream: a frame the peer sends after it (here an oversized one) is never read, so the
/// owner sees the close and then the end, never an error after the close.
#[tokio::test(start_paused = true)]
async fn ws_nothing_is_read_after_the_peers_close() {
    let (a, mut b) = duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            b.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .or_else(|| {
                request
                    .lines()
                    .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            })
            .unwrap();
        let accept = connman_ws::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        b.write_all(answer.as_bytes()).await.unwrap();
        // A close (1000), then a binary frame that claims 1 MiB + 1.
        b.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
        b.write_all(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0x10, 0, 0x01])
            .await
            .unwrap();
        // Keep the pipe open until the client is done.
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest).await;
    });
    let mut client = duplex_connector(a, config())
        .oneshot("ws://test.invalid/")
        .await
        .unwrap();
    let close = client.next().await.unwrap().unwrap();
    assert_eq!(
        close,
        Received::Close(Some(PeerClose {
            code: CloseCode::NORMAL,
            reason: String::new(),
        }))
    );
    let after = client.next().await;
    assert!(after.is_none(), "read after the close: {after:?}");
    drop(client);
    server.await.unwrap();
}

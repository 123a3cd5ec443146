//! The real peers are installed and answer: Node `ws` and Python `websockets` echo servers through our
//! `WsConnector`, and `redis-server` through the pipelined TCP client. A missing peer fails here, naming
//! `cargo xtask peers`.

use std::time::Duration;

use connman_tcp::TcpConnector;
use connman_tests::peers::{self, Peer};
use connman_ws::{Received, WsConfig, WsConnector};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

async fn echo_through(peer: Peer) {
    let connector = WsConnector::new(TcpConnector::new(), WsConfig::default());
    let url = format!("ws://127.0.0.1:{}/", peer.port());
    let mut ws = timeout(WAIT, connector.oneshot(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    ws.send(bytes::Bytes::from_static(b"hello"))
        .await
        .expect("send");
    let got = timeout(WAIT, ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("no error");
    // The client sends binary by default; the peer echoes it as binary.
    assert_eq!(got, Received::Binary(bytes::Bytes::from_static(b"hello")));
    drop(ws);
    peer.kill().await;
}

#[tokio::test]
async fn node_ws_echo_server_answers() {
    echo_through(Peer::spawn(peers::node("echo_server.js")).await).await;
}

#[tokio::test]
async fn python_websockets_echo_server_answers() {
    echo_through(Peer::spawn(peers::python("echo_server.py")).await).await;
}

#[tokio::test]
async fn redis_server_answers_and_survives_kill_9() {
    let mut redis = peers::Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    assert_eq!(command(redis.port(), b"INCR k\r\n").await, ":1");
    redis.kill9().await;
    redis.restart().await;
    // The append-only file brings the counter back after SIGKILL.
    assert_eq!(command(redis.port(), b"INCR k\r\n").await, ":2");
}

/// Sends one inline command and returns the first reply line.
async fn command(port: u16, cmd: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(cmd).await.expect("write");
    let mut line = String::new();
    timeout(WAIT, BufReader::new(&mut tcp).read_line(&mut line))
        .await
        .expect("reply in time")
        .expect("reply");
    line.trim_end().to_owned()
}

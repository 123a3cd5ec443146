//! connman's WebSocket server (the loop of the crate docs) against real clients: Node `ws` and Python `websockets`.
//! What each peer sees: the close code of a refused message (1009, never 1006, over 20 tries), text echoed as text,
//! a silent client that answers pings left open past the idle timeout, and a closed client gone from its group.
//!
//! The clients are `tests/peers/node/ws_server_client.js` and `tests/peers/python/ws_server_client.py`.

use std::time::Duration;

use connman_pool::group::{Group, GroupConfig};
use connman_tests::peers;
use connman_ws::{AcceptConfig, Admission, WsConfig, accept};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::timeout;

/// A generous bound for a peer run on a loaded machine.
const LIMIT: Duration = Duration::from_secs(120);

/// `/echo` echoes each message as the kind it came in; any other path joins the group's namespace `room`.
async fn server(group: Group, ws: WsConfig) -> std::net::SocketAddr {
    let config = AcceptConfig::new(ws).admit(|h| Admission::join(h.path().trim_start_matches('/')));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (group, config) = (group.clone(), config.clone());
            tokio::spawn(async move {
                let Ok(conn) = accept(tcp, &config).await else {
                    return;
                };
                if conn.namespace() == "echo" {
                    let mut stream = conn.into_stream();
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Some(echo) = msg.into_outgoing()
                            && stream.frames().send(echo).await.is_err()
                        {
                            return;
                        }
                    }
                    return;
                }
                let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
                let (member, mut incoming) = conn.split();
                if group.add(ns, id, member).is_ok() {
                    while let Some(Ok(_)) = incoming.next().await {}
                }
            });
        }
    });
    addr
}

fn config() -> WsConfig {
    WsConfig::builder()
        .heartbeat(None)
        .max_message_size(64 * 1024)
        .build()
        .unwrap()
}

/// Runs a client script to its end and returns its lines.
async fn run(mut cmd: Command) -> Vec<String> {
    cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("the peer starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Vec::new();
    timeout(LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            out.push(line);
        }
    })
    .await
    .expect("the peer finished in time");
    let status = child.wait().await.unwrap();
    assert!(
        status.success(),
        "the peer failed: {status}, printed {out:?}"
    );
    out
}

fn node(addr: std::net::SocketAddr, path: &str, args: &[&str]) -> Command {
    let mut cmd = peers::node("ws_server_client.js");
    cmd.arg(format!("ws://{addr}/{path}")).args(args);
    cmd
}

fn python(addr: std::net::SocketAddr, path: &str, args: &[&str]) -> Command {
    let mut cmd = peers::python("ws_server_client.py");
    cmd.arg(format!("ws://{addr}/{path}")).args(args);
    cmd
}

type Client = fn(std::net::SocketAddr, &str, &[&str]) -> Command;

async fn too_big_is_1009(client: Client) {
    let addr = server(Group::new(), config()).await;
    let lines = run(client(
        addr,
        "room",
        &["too_big", "20", &(2 << 20).to_string()],
    ))
    .await;
    assert_eq!(lines.len(), 20, "{lines:?}");
    let wrong: Vec<_> = lines.iter().filter(|l| *l != "CLOSE 1009").collect();
    assert!(
        wrong.is_empty(),
        "{} of 20 were not 1009: {wrong:?}",
        wrong.len()
    );
}

#[tokio::test]
async fn ws_02_node_sees_1009_not_1006_over_20_tries() {
    too_big_is_1009(node).await;
}

#[tokio::test]
async fn ws_02_python_sees_1009_over_20_tries() {
    too_big_is_1009(python).await;
}

async fn text_stays_text(client: Client) {
    let addr = server(Group::new(), config()).await;
    let lines = run(client(addr, "echo", &["echo"])).await;
    assert_eq!(lines, ["TEXT héllo", "BINARY 010203", "CLOSE 1000"]);
}

#[tokio::test]
async fn ws_04_node_text_echo_stays_text_and_binary_stays_binary() {
    text_stays_text(node).await;
}

#[tokio::test]
async fn ws_04_python_text_echo_stays_text_and_binary_stays_binary() {
    text_stays_text(python).await;
}

async fn silent_but_alive(client: Client) {
    let group = Group::builder()
        .config(GroupConfig::default().with_idle_timeout(Some(Duration::from_millis(1500))))
        .build()
        .unwrap();
    let ws = WsConfig::builder()
        .heartbeat(Some((
            Duration::from_millis(300),
            Duration::from_millis(250),
        )))
        .build()
        .unwrap();
    let addr = server(group.clone(), ws).await;
    // Five idle timeouts of silence, answering pings only.
    let lines = run(client(addr, "room", &["silent", "7500"])).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let pings: u32 = lines[0].strip_prefix("PINGS ").unwrap().parse().unwrap();
    assert!(pings >= 5, "{lines:?}");
    assert_eq!(lines[1], "OPEN", "{lines:?}");
}

#[tokio::test]
async fn ws_03_node_silent_client_answering_pings_is_not_closed_as_idle() {
    silent_but_alive(node).await;
}

#[tokio::test]
async fn ws_03_python_silent_client_answering_pings_is_not_closed_as_idle() {
    silent_but_alive(python).await;
}

async fn closed_client_leaves(client: Client) {
    let (tx, mut emptied) = tokio::sync::mpsc::unbounded_channel();
    let group = Group::builder()
        .on_empty(move |ns| {
            let _ = tx.send(ns.to_owned());
        })
        .build()
        .unwrap();
    let addr = server(group.clone(), config()).await;
    // The script prints its line once the TCP connection has closed, so the server ended it.
    let lines = run(client(addr, "room", &["close"])).await;
    assert_eq!(lines, ["CLOSE 1000"]);
    let ns = timeout(LIMIT, emptied.recv()).await.unwrap().unwrap();
    assert_eq!(ns, "room");
    assert_eq!(group.broadcast("room", "anyone?", &[]).delivered, 0);
}

#[tokio::test]
async fn ws_01_node_client_that_closed_leaves_the_group() {
    closed_client_leaves(node).await;
}

#[tokio::test]
async fn ws_01_python_client_that_closed_leaves_the_group() {
    closed_client_leaves(python).await;
}

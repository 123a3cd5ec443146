//! B7: memory of idle WebSocket connections with heartbeat, each in a `Group`, measured in a server process that
//! holds no clients.
//!
//! The bench re-runs its own binary as the server (the environment variable [`SERVER_ENV`] names the kind); the
//! server prints `LISTENING <port>`, then, once it holds every connection, `RSS <before> <after>` from
//! `/proc/self/status`, and exits when its standard input closes.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use connman_pool::group::Group;
use connman_ws::{AcceptConfig, WsConfig, accept};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, err, runtime,
};

/// Set in the server child: `ours`, `peer-tuned` or `peer-default`, then the number of connections.
pub(crate) const SERVER_ENV: &str = "CONNMAN_BENCH_B7_SERVER";

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B7",
    title: "idle WebSocket connections with heartbeat",
    method: "Two processes on loopback: the bench holds N tokio-tungstenite clients that answer pings and send \
             nothing; a server process of its own (the same binary, run again) accepts them and reports its RSS \
             (VmRSS) once it holds them all, against its RSS after binding; the figure is the difference divided by \
             N. **Ours**: `connman_ws::accept` (default `WsConfig`: 1 KiB read buffer, ping every 25 s), `split`, \
             every member in one `Group` namespace, a task reading each receiver. **Tuned peer**: \
             `tokio_tungstenite::accept_async_with_config` with a 4 KiB read buffer and 16 KiB write buffer, one \
             task per connection that reads and pings on a `tokio::time::interval` of 25 s. **Default peer**: the \
             same with tokio-tungstenite's defaults. The ratio is the peer's bytes per connection over ours.",
    run,
};

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let conns = mode.pick(1000, 5000);
    rt.block_on(async move {
        let mut tuned = Pairs::default();
        let mut default = Pairs::default();
        for _ in 0..mode.rounds().min(3) {
            let o = per_connection("ours", conns).await?;
            let t = per_connection("peer-tuned", conns).await?;
            let d = per_connection("peer-default", conns).await?;
            tuned.push(o, t);
            default.push(o, d);
        }
        let vs_tuned = Stats::of(&tuned.ratios(Better::Lower));
        let vs_default = Stats::of(&default.ratios(Better::Lower));
        Ok(vec![
            Row {
                scenario: format!(
                    "B7 {conns} idle WS connections in a Group, vs a tuned tokio-tungstenite"
                ),
                ours: format!("{:.1} KB per connection", tuned.ours_median() / 1000.0),
                peer: format!(
                    "4 KiB buffers + interval task: {:.1} KB",
                    tuned.peer_median() / 1000.0
                ),
                ratio: vs_tuned,
                reference: String::new(),
                target: "≤ 6 KB per connection".to_owned(),
                met: Some(tuned.ours_median() <= 6000.0),
            },
            Row {
                scenario: format!(
                    "B7 {conns} idle WS connections in a Group, vs tokio-tungstenite defaults"
                ),
                ours: format!("{:.1} KB per connection", default.ours_median() / 1000.0),
                peer: format!(
                    "defaults + interval task: {:.1} KB",
                    default.peer_median() / 1000.0
                ),
                ratio: vs_default,
                reference: String::new(),
                target: "—".to_owned(),
                met: None,
            },
        ])
    })
}

/// Bytes of server RSS per connection for one server kind.
async fn per_connection(kind: &str, conns: usize) -> BenchResult<f64> {
    let exe = std::env::current_exe().map_err(|e| err("own path")(e.to_string()))?;
    let mut child = Command::new(exe)
        .env(SERVER_ENV, format!("{kind} {conns}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| err("server start")(e.to_string()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::new("no stdout"))?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = |l: Option<String>| l.ok_or_else(|| BenchError::new("the server ended early"));
    let bound = Duration::from_secs(120);
    let first = line(
        tokio::time::timeout(bound, lines.recv())
            .await
            .map_err(|_| BenchError::new("no port"))?,
    )?;
    let port: u16 = first
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| BenchError::new(format!("unexpected line {first}")))?;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| err("connect")(e.to_string()))?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), tcp)
            .await
            .map_err(|e| err("handshake")(e.to_string()))?;
        // Reading answers the server's pings.
        clients.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    let report = line(
        tokio::time::timeout(bound, lines.recv())
            .await
            .map_err(|_| BenchError::new("no RSS"))?,
    )?;
    let mut parts = report.split_whitespace();
    let (Some("RSS"), Some(before), Some(after)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(BenchError::new(format!("unexpected line {report}")));
    };
    let before: f64 = before.parse().map_err(|_| BenchError::new("bad RSS"))?;
    let after: f64 = after.parse().map_err(|_| BenchError::new("bad RSS"))?;
    drop(child.stdin.take());
    for c in &clients {
        c.abort();
    }
    let _ = child.wait();
    Ok((after - before) / conns as f64)
}

/// The server process: `spec` is `<kind> <connections>`.
pub(crate) fn serve(spec: &str) -> BenchResult<()> {
    let mut parts = spec.split_whitespace();
    let kind = parts.next().unwrap_or_default().to_owned();
    let conns: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BenchError::new("no connection count"))?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| err("bind")(e.to_string()))?;
        let port = listener.local_addr().map_err(|e| err("addr")(e.to_string()))?.port();
        let group = Group::new();
        let before = rss()?;
        println!("LISTENING {port}");
        let _ = std::io::stdout().flush();
        let tuned = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(16 * 1024);
        let config = AcceptConfig::new(WsConfig::default()).namespace("idle");
        let (joined_tx, mut joined) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..conns {
            let (tcp, _) = listener.accept().await.map_err(|e| err("accept")(e.to_string()))?;
            let done = joined_tx.clone();
            match kind.as_str() {
                "ours" => {
                    let (group, config) = (group.clone(), config.clone());
                    tokio::spawn(async move {
                        let Ok(conn) = accept(tcp, &config).await else { return };
                        let id = conn.id().to_owned();
                        let (member, mut incoming) = conn.split();
                        if group.add("idle", id, member).is_ok() {
                            let _ = done.send(());
                            while let Some(Ok(_)) = incoming.next().await {}
                        }
                    });
                }
                peer => {
                    let config = (peer == "peer-tuned").then_some(tuned);
                    tokio::spawn(async move {
                        let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, config).await else {
                            return;
                        };
                        let _ = done.send(());
                        let mut beat = tokio::time::interval(Duration::from_secs(25));
                        beat.tick().await;
                        loop {
                            tokio::select! {
                                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return },
                                _ = beat.tick() => {
                                    if ws.send(Message::Ping(Bytes::new())).await.is_err() { return }
                                }
                            }
                        }
                    });
                }
            }
        }
        for _ in 0..conns {
            joined.recv().await.ok_or_else(|| BenchError::new("a connection failed"))?;
        }
        // Let every task settle into its idle wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("RSS {before} {}", rss()?);
        let _ = std::io::stdout().flush();
        // Until the bench closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await
        .map_err(|e| err("stdin")(e.to_string()))?;
        Ok(())
    })
}

/// This process's resident set, in bytes.
fn rss() -> BenchResult<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| err("status")(e.to_string()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::new("no VmRSS"))
}

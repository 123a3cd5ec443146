//! B2: echo over 100 WebSocket connections on loopback: connman-ws's server against raw tokio-tungstenite.

use std::time::{Duration, Instant};

use connman_ws::{AcceptConfig, WsConfig, accept};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, err, fmt_ns, fmt_rate,
    runtime, ws_client,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B2",
    title: "WebSocket echo over 100 connections",
    method: "One process, loopback TCP, 100 tokio-tungstenite clients, each sending a 64 B binary message and \
             waiting for its echo before the next (one in flight per connection). **Ours**: `connman_ws::accept` \
             with the default `WsConfig` (4 KiB read buffer, heartbeat on), echoing through \
             `WsStream::frames().send`. **Peer**: `tokio_tungstenite::accept_async` with its defaults, echoing \
             through `send`. Fresh connections for every run. Throughput is echoes per second over all \
             connections; RTT is the median of every round trip; the RTT ratio is the peer's over ours.",
    run,
};

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let bound = Duration::from_secs(120);
    rt.block_on(async move {
        let conns = 100;
        let per_conn = mode.pick(100, 1000);
        let mut throughput = Pairs::default();
        let mut rtt = Pairs::default();
        for _ in 0..mode.rounds() {
            let (ot, or) = tokio::time::timeout(bound, echo(true, conns, per_conn)).await??;
            let (pt, pr) = tokio::time::timeout(bound, echo(false, conns, per_conn)).await??;
            throughput.push(ot, pt);
            rtt.push(or, pr);
        }
        let t = Stats::of(&throughput.ratios(Better::Higher));
        let r = Stats::of(&rtt.ratios(Better::Lower));
        Ok(vec![
            Row {
                scenario: format!("B2 echo, {conns} connections, throughput"),
                ours: format!("connman-ws: {}", fmt_rate(throughput.ours_median())),
                peer: format!("tokio-tungstenite: {}", fmt_rate(throughput.peer_median())),
                ratio: t,
                reference: String::new(),
                target: "≥ 0.95×".to_owned(),
                met: Some(t.is_some_and(|r| r.median >= 0.95)),
            },
            Row {
                scenario: format!("B2 echo, {conns} connections, median RTT"),
                ours: format!("connman-ws: {}", fmt_ns(rtt.ours_median())),
                peer: format!("tokio-tungstenite: {}", fmt_ns(rtt.peer_median())),
                ratio: r,
                reference: String::new(),
                target: "≤ 5 % added (ratio ≥ 0.952)".to_owned(),
                met: Some(r.is_some_and(|r| r.median >= 1.0 / 1.05)),
            },
        ])
    })
}

/// Runs `conns` echo clients of `per_conn` round trips against a fresh server; returns echoes per second and the
/// median round trip in nanoseconds.
async fn echo(ours: bool, conns: usize, per_conn: usize) -> BenchResult<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err("bind")(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("addr")(e.to_string()))?;
    let server = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            if ours {
                conns.spawn(async move {
                    let Ok(conn) = accept(tcp, &AcceptConfig::new(WsConfig::default())).await
                    else {
                        return;
                    };
                    let mut stream = conn.into_stream();
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Some(echo) = msg.into_outgoing()
                            && stream.frames().send(echo).await.is_err()
                        {
                            return;
                        }
                    }
                });
            } else {
                conns.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(ws_client(addr).await?);
    }
    let started = Instant::now();
    let mut runs = JoinSet::new();
    for mut ws in clients {
        runs.spawn(async move {
            let mut rtts = Vec::with_capacity(per_conn);
            let payload = bytes::Bytes::from_static(&[0x2a; 64]);
            for _ in 0..per_conn {
                let t = Instant::now();
                ws.send(Message::Binary(payload.clone()))
                    .await
                    .map_err(|e| err("send")(e.to_string()))?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(_))) => break,
                        Some(Ok(_)) => {}
                        other => return Err(BenchError::new(format!("no echo: {other:?}"))),
                    }
                }
                rtts.push(t.elapsed().as_nanos() as f64);
            }
            Ok::<_, BenchError>(rtts)
        });
    }
    let mut all = Vec::with_capacity(conns * per_conn);
    while let Some(joined) = runs.join_next().await {
        all.extend(joined.map_err(|e| err("client")(e.to_string()))??);
    }
    let elapsed = started.elapsed();
    server.abort();
    all.sort_by(f64::total_cmp);
    let median = all.get(all.len() / 2).copied().unwrap_or(0.0);
    Ok(((conns * per_conn) as f64 / elapsed.as_secs_f64(), median))
}

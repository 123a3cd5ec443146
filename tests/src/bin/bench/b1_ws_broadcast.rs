//! B1: broadcast of 64 B messages to WebSocket clients over loopback sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_pool::group::Group;
use connman_ws::{AcceptConfig, WsConfig, accept};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, err, fmt_rate, runtime,
    ws_client,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B1",
    title: "WebSocket broadcast over loopback",
    method: "One process, loopback TCP: N tokio-tungstenite clients each read in a task of their own and acknowledge \
             every complete burst; the server publishes bursts of 64 messages of 64 B, each burst complete at every \
             client before the next. **Ours**: `connman_ws::accept` + `split`, every member in one `Group` \
             namespace, `Group::broadcast` per message (a writer task per member feeds its queue and flushes once), and \
             in rows of their own `Group::broadcast_many` once per burst. \
             **Feed/flush peer**: `tokio_tungstenite::accept_async` with a `tokio::sync::broadcast<Bytes>` channel \
             and one task per client that feeds what the channel holds, then flushes once. **Naive peer**: the \
             publisher loops over the clients' sinks with `send().await` (a flush per message per client). \
             **Ceiling** (the reference column): the least work any server can do here, with no queue and no \
             encoding: after `accept_async`, the burst, encoded once by tungstenite for all clients before the clock \
             starts, goes to each client's socket in one `write_all`, either from one task per client woken once per \
             burst or from the publisher's own loop over the sockets (no task at all); each round takes the faster \
             of the two. \
             Fresh connections for every run; the figure is deliveries per second; the ratio is ours over the peer's.",
    run,
};

/// Messages per burst.
const BURST: usize = 64;

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let bound = Duration::from_secs(120);
    rt.block_on(async move {
        let mut rows = Vec::new();
        let sizes: &[usize] = mode.pick(&[10, 100], &[10, 100, 1000]);
        for &clients in sizes {
            let bursts = mode.pick(5, 20);
            let mut feed = Pairs::default();
            let mut feed_many = Pairs::default();
            let mut naive = Pairs::default();
            let mut ceiling = Pairs::default();
            let mut ceiling_naive = Pairs::default();
            for _ in 0..mode.rounds() {
                let run = |kind| tokio::time::timeout(bound, fan_out(kind, clients, bursts));
                let o = run(Server::Group).await??;
                let m = run(Server::GroupMany).await??;
                let f = run(Server::FeedFlush).await??;
                let n = run(Server::Naive).await??;
                let c = run(Server::Ceiling).await??;
                let c = c.max(run(Server::CeilingInline).await??);
                ceiling.push(c, f);
                ceiling_naive.push(c, n);
                feed.push(o, f);
                feed_many.push(m, f);
                naive.push(o, n);
            }
            let vs_feed = Stats::of(&feed.ratios(Better::Higher));
            let ceiling_text = |pairs: &Pairs| {
                let r = Stats::of(&pairs.ratios(Better::Higher)).map_or(f64::NAN, |s| s.median);
                format!(
                    "ceiling (one pre-encoded write per client per burst): {}, {r:.2}× the peer",
                    fmt_rate(pairs.ours_median())
                )
            };
            rows.push(Row {
                scenario: format!("B1 broadcast 64 B to {clients} WS clients, vs feed/flush tasks"),
                ours: format!("Group::broadcast: {}", fmt_rate(feed.ours_median())),
                peer: format!(
                    "tokio broadcast + feed/flush: {}",
                    fmt_rate(feed.peer_median())
                ),
                ratio: vs_feed,
                reference: ceiling_text(&ceiling),
                target: "≥ 1.5×".to_owned(),
                met: Some(vs_feed.is_some_and(|r| r.median >= 1.5)),
            });
            let many = Stats::of(&feed_many.ratios(Better::Higher));
            rows.push(Row {
                scenario: format!(
                    "B1 bursts of 64 B to {clients} WS clients, one call per burst, vs feed/flush tasks"
                ),
                ours: format!("Group::broadcast_many: {}", fmt_rate(feed_many.ours_median())),
                peer: format!("tokio broadcast + feed/flush: {}", fmt_rate(feed_many.peer_median())),
                ratio: many,
                reference: ceiling_text(&ceiling),
                target: "≥ 1.5×".to_owned(),
                met: Some(many.is_some_and(|r| r.median >= 1.5)),
            });
            let vs_naive = Stats::of(&naive.ratios(Better::Higher));
            rows.push(Row {
                scenario: format!(
                    "B1 broadcast 64 B to {clients} WS clients, vs a naive send loop"
                ),
                ours: format!("Group::broadcast: {}", fmt_rate(naive.ours_median())),
                peer: format!("send().await per client: {}", fmt_rate(naive.peer_median())),
                ratio: vs_naive,
                reference: ceiling_text(&ceiling_naive),
                target: "≥ 20×".to_owned(),
                met: Some(vs_naive.is_some_and(|r| r.median >= 20.0)),
            });
        }
        Ok(rows)
    })
}

#[derive(Debug, Clone, Copy)]
enum Server {
    Group,
    GroupMany,
    FeedFlush,
    Naive,
    /// The least work a server can do: a burst encoded once, one wake and one write per client per burst.
    Ceiling,
    /// The same writes from the publisher's loop, with no task per client.
    CeilingInline,
}

type ServerSink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Connects `clients` clients to a fresh server of the kind given, publishes `bursts` bursts, and returns deliveries
/// per second.
async fn fan_out(kind: Server, clients: usize, bursts: usize) -> BenchResult<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err("bind")(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("addr")(e.to_string()))?;
    let (ack_tx, mut acks) = mpsc::channel(clients);
    let mut readers = JoinSet::new();
    let mut server_tasks = JoinSet::new();
    let group = Group::new();
    let (tx, _) = broadcast::channel::<Bytes>(BURST);
    let mut wakes: Vec<Arc<Notify>> = Vec::new();
    let mut raw: Vec<WebSocketStream<TcpStream>> = Vec::new();
    let encoded = encode_burst()?;
    let mut sinks: Vec<ServerSink> = Vec::with_capacity(clients);
    for _ in 0..clients {
        let connect = tokio::spawn(ws_client(addr));
        let (tcp, _) = listener
            .accept()
            .await
            .map_err(|e| err("accept")(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| err("nodelay")(e.to_string()))?;
        match kind {
            Server::Group | Server::GroupMany => {
                let config = AcceptConfig::new(WsConfig::default()).namespace("bench");
                let conn = accept(tcp, &config)
                    .await
                    .map_err(|e| err("accept ws")(e.to_string()))?;
                let id = conn.id().to_owned();
                let (member, mut incoming) = conn.split();
                group
                    .add("bench", id, member)
                    .map_err(|e| err("group add")(e.reason().to_string()))?;
                server_tasks.spawn(async move { while let Some(Ok(_)) = incoming.next().await {} });
            }
            peer => {
                let ws = tokio_tungstenite::accept_async(tcp)
                    .await
                    .map_err(|e| err("accept ws")(e.to_string()))?;
                match peer {
                    Server::Ceiling => {
                        let wake = Arc::new(Notify::new());
                        wakes.push(wake.clone());
                        server_tasks.spawn(write_bursts(ws, wake, encoded.clone()));
                    }
                    Server::CeilingInline => raw.push(ws),
                    _ => {
                        let (sink, mut stream) = ws.split();
                        server_tasks
                            .spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
                        if let Server::FeedFlush = peer {
                            server_tasks.spawn(feed(tx.subscribe(), sink));
                        } else {
                            sinks.push(sink);
                        }
                    }
                }
            }
        }
        let ws = connect
            .await
            .map_err(|e| err("client task")(e.to_string()))??;
        readers.spawn(count(ws, bursts, ack_tx.clone()));
    }
    let msg = Bytes::from_static(&[0x2a; 64]);
    let burst = vec![msg.clone(); BURST];
    let started = Instant::now();
    for _ in 0..bursts {
        if let Server::GroupMany = kind {
            let summary = group.broadcast_many("bench", &burst, &[]);
            if summary.delivered != clients * BURST {
                return Err(BenchError::new("a burst missed some clients"));
            }
        }
        for _ in 0..BURST {
            match kind {
                Server::Group => {
                    let summary = group.broadcast("bench", msg.clone(), &[]);
                    if summary.delivered != clients {
                        return Err(BenchError::new(format!(
                            "a broadcast reached {} of {clients}",
                            summary.delivered
                        )));
                    }
                }
                Server::GroupMany => break,
                Server::Ceiling => {
                    for wake in &wakes {
                        wake.notify_one();
                    }
                    break;
                }
                Server::CeilingInline => {
                    for ws in &mut raw {
                        ws.get_mut()
                            .write_all(&encoded)
                            .await
                            .map_err(|e| err("write")(e.to_string()))?;
                    }
                    break;
                }
                Server::FeedFlush => {
                    tx.send(msg.clone())
                        .map_err(|_| BenchError::new("every subscriber is gone"))?;
                }
                Server::Naive => {
                    for sink in &mut sinks {
                        sink.send(Message::Binary(msg.clone()))
                            .await
                            .map_err(|e| err("naive send")(e.to_string()))?;
                    }
                }
            }
        }
        let mut acked = 0;
        while acked < clients {
            tokio::select! {
                ack = acks.recv() => {
                    ack.ok_or_else(|| BenchError::new("every reader is gone"))?;
                    acked += 1;
                }
                Some(joined) = readers.join_next() => {
                    joined.map_err(|e| err("reader")(e.to_string()))??;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    drop(tx);
    server_tasks.abort_all();
    readers.abort_all();
    Ok((clients * bursts * BURST) as f64 / elapsed.as_secs_f64())
}

/// Reads `bursts` bursts and acknowledges each.
async fn count(
    mut ws: WebSocketStream<TcpStream>,
    bursts: usize,
    acks: mpsc::Sender<()>,
) -> BenchResult<()> {
    for _ in 0..bursts {
        let mut got = 0;
        while got < BURST {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => got += 1,
                Some(Ok(_)) => {}
                other => {
                    return Err(BenchError::new(format!(
                        "a client stopped early: {other:?}"
                    )));
                }
            }
        }
        acks.send(())
            .await
            .map_err(|_| BenchError::new("the publisher is gone"))?;
    }
    Ok(())
}

/// The ceiling's burst: `BURST` binary frames of the 64-byte message, encoded by tungstenite as a server sends them.
fn encode_burst() -> BenchResult<Bytes> {
    let mut out = Vec::new();
    for _ in 0..BURST {
        Frame::message(
            Bytes::from_static(&[0x2a; 64]),
            OpCode::Data(Data::Binary),
            true,
        )
        .format(&mut out)
        .map_err(|e| err("encode")(e.to_string()))?;
    }
    Ok(Bytes::from(out))
}

/// The ceiling's per-client task: one write of the encoded burst per wake.
async fn write_bursts(mut ws: WebSocketStream<TcpStream>, wake: Arc<Notify>, burst: Bytes) {
    loop {
        wake.notified().await;
        if ws.get_mut().write_all(&burst).await.is_err() {
            return;
        }
    }
}

/// The feed/flush peer's per-client task.
async fn feed(mut rx: broadcast::Receiver<Bytes>, mut sink: ServerSink) {
    while let Ok(msg) = rx.recv().await {
        if sink.feed(Message::Binary(msg)).await.is_err() {
            return;
        }
        while let Ok(msg) = rx.try_recv() {
            if sink.feed(Message::Binary(msg)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

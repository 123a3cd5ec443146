//! B9: broadcast across three nodes through one redis-server, against socket.io with its two Redis adapters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use connman_pool::cluster::{Cluster, ClusterConfig, RedisBroker, RedisConfig};
use connman_tcp::TcpConnector;
use connman_tests::peers::{self, Peer, Redis};
use connman_ws::{AcceptConfig, MessageKind, Received, WsConfig, WsConnector, accept};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tower::ServiceExt;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_rate, runtime,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B9",
    title: "broadcast across 3 nodes through redis",
    method: "One redis-server on loopback, three nodes, M WebSocket clients per node (1000 in a full run, 100 in the \
             smoke mode), all in one namespace; the clients are the same Rust WebSocket clients for every \
             contender (for socket.io they speak Engine.IO 4 over the `websocket` transport). Ours: three \
             `connman_pool::cluster::Cluster` nodes on `RedisBroker` in the bench process, members are connman-ws \
             connections; each node calls `Cluster::broadcast`. The peers: three Node processes of socket.io 4.8.1 \
             with `@socket.io/redis-adapter` 8.3.0 (pub/sub) or `@socket.io/redis-streams-adapter` 0.3.0, each \
             calling `io.emit` (`tests/peers/node/cluster_b9.js`). Every payload is 64 B and carries its publisher, \
             sequence number and send time (µs since the epoch). **Deliveries/s**: every node publishes N messages \
             as fast as it can (N = 100, 30 in the smoke mode), the figure is all deliveries over the time from the \
             start to the last delivery. **Latency**: each node publishes at 10/s (open loop) for 5 s (2 s in the \
             smoke mode); p50 and p99 of send→receive over every delivery of 10 sampled clients per node. \
             **Outage**: the same open-loop load for 6 s (3 s in the smoke mode) with redis-server (append-only, \
             fsync always, for every contender) killed -9 one third in and restarted 2 s later; the figure is the \
             deliveries missing at the end (published messages × clients − distinct deliveries) after the clients \
             went quiet for 3 s. The socket.io nodes count the errors of their redis clients during the outage instead of \
             exiting on them (their default). Contenders interleaved per round (ours, pub/sub, streams); a fresh redis-server and \
             fresh nodes for every run. All processes share the same two cores.",
    run,
};

const NS: &str = "b9";

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    rt.block_on(async move {
        let members = mode.pick(100, 1000);
        let burst = mode.pick(30, 100);
        let (rate, secs) = mode.pick((10, 2), (10, 5));
        let outage_secs = mode.pick(3, 6);
        let contenders = [Who::Ours, Who::SocketIo("pubsub"), Who::SocketIo("streams")];
        let mut thr: [Pairs; 2] = Default::default();
        let mut p50: [Pairs; 2] = Default::default();
        let mut p99: [Pairs; 2] = Default::default();
        for _ in 0..mode.rounds() {
            let mut got = Vec::new();
            for who in contenders {
                let load = Load::Burst(burst);
                let t =
                    timeout(Duration::from_secs(120), measure(who, members, load, false)).await??;
                let load = Load::Rate(rate, Duration::from_secs(secs));
                let l =
                    timeout(Duration::from_secs(120), measure(who, members, load, false)).await??;
                got.push((t.rate(), l.percentile(0.5), l.percentile(0.99)));
            }
            for i in 0..2 {
                thr[i].push(got[0].0, got[i + 1].0);
                p50[i].push(got[0].1, got[i + 1].1);
                p99[i].push(got[0].2, got[i + 1].2);
            }
        }
        let mut missing = Vec::new();
        for who in contenders {
            let load = Load::Rate(rate, Duration::from_secs(outage_secs));
            let o = timeout(Duration::from_secs(180), measure(who, members, load, true)).await??;
            missing.push((o.missing(), o.expected()));
        }
        let mut rows = Vec::new();
        for (i, name) in [
            "socket.io + redis-adapter (pub/sub)",
            "socket.io + redis-streams-adapter",
        ]
        .iter()
        .enumerate()
        {
            let ratio = Stats::of(&thr[i].ratios(Better::Higher));
            rows.push(Row {
                scenario: format!("B9 deliveries/s, 3 × {members} WS members, 64 B"),
                ours: format!("{} deliveries", fmt_rate(thr[i].ours_median())),
                peer: format!("{name}: {} deliveries", fmt_rate(thr[i].peer_median())),
                ratio,
                reference: String::new(),
                target: "≥ 5× the peer's deliveries/s".to_owned(),
                met: Some(ratio.is_some_and(|r| r.median >= 5.0)),
            });
            let ratio = Stats::of(&p99[i].ratios(Better::Lower));
            rows.push(Row {
                scenario: format!("B9 publish→receive at {rate}/s per node"),
                ours: format!(
                    "p50 {} p99 {}",
                    fmt_us(p50[i].ours_median()),
                    fmt_us(p99[i].ours_median())
                ),
                peer: format!(
                    "{name}: p50 {} p99 {}",
                    fmt_us(p50[i].peer_median()),
                    fmt_us(p99[i].peer_median())
                ),
                ratio,
                reference: format!(
                    "p50 ratio {}",
                    Stats::of(&p50[i].ratios(Better::Lower))
                        .map_or("n/a".to_owned(), |s| format!("{:.2}×", s.median))
                ),
                target: "p99 ≤ 0.5× the peer's (ratio ≥ 2)".to_owned(),
                met: Some(ratio.is_some_and(|r| r.median >= 2.0)),
            });
            rows.push(Row {
                scenario: "B9 redis-server killed -9 for 2 s mid-run: deliveries missing"
                    .to_owned(),
                ours: format!("{} of {}", missing[0].0, missing[0].1),
                peer: format!("{name}: {} of {}", missing[i + 1].0, missing[i + 1].1),
                ratio: None,
                reference: String::new(),
                target: "0 missing".to_owned(),
                met: Some(missing[0].0 == 0),
            });
        }
        Ok(rows)
    })
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Ours,
    SocketIo(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Load {
    /// This many messages per node, as fast as it goes.
    Burst(usize),
    /// This many per second per node, for this long.
    Rate(usize, Duration),
}

impl Load {
    fn count(self) -> usize {
        match self {
            Load::Burst(n) => n,
            Load::Rate(r, d) => (r as f64 * d.as_secs_f64()) as usize,
        }
    }

    fn rate(self) -> usize {
        match self {
            Load::Burst(_) => 0,
            Load::Rate(r, _) => r,
        }
    }
}

/// What the clients of one run saw.
#[derive(Debug, Default)]
struct Seen {
    deliveries: u64,
    distinct: u64,
    expected: u64,
    took: Duration,
    latencies_us: Vec<f64>,
}

impl Seen {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.took.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.distinct)
    }

    fn expected(&self) -> u64 {
        self.expected
    }
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "n/a".to_owned()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn payload(tag: usize, seq: usize) -> Bytes {
    let mut text = format!("{tag}:{seq}:{}:", now_us());
    while text.len() < 64 {
        text.push('x');
    }
    Bytes::from(text)
}

/// `tag:seq:micros:…`
fn parse(payload: &[u8]) -> Option<(usize, usize, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// One run: a fresh redis-server and three fresh nodes of `who`, `members` clients on each, then the load.
async fn measure(who: Who, members: usize, load: Load, outage: bool) -> BenchResult<Seen> {
    let args: &[&str] = if outage {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &[]
    };
    let mut redis = Redis::start(args).await;
    let mut nodes = Nodes::start(who, &redis).await?;
    let total_messages = 3 * load.count();
    let received = Arc::new(AtomicU64::new(0));
    // 0: connecting, 1: publish, 2: stop.
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let mut clients = JoinSet::new();
    let mut ready = JoinSet::new();
    for n in 0..3 {
        for m in 0..members {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.spawn(ready_rx);
            clients.spawn(client(
                who,
                nodes.addr(n),
                Place { node: n, member: m },
                load,
                received.clone(),
                phase_rx.clone(),
                ready_tx,
            ));
        }
    }
    while let Some(r) = ready.join_next().await {
        match r {
            Ok(Ok(())) => {}
            _ => return Err(BenchError::new("a client did not connect")),
        }
    }
    nodes.joined(members).await?;
    let start = Instant::now();
    phase_tx.send_replace(1);
    nodes.publish(load).await?;
    if outage {
        let third = match load {
            Load::Rate(_, d) => d / 3,
            Load::Burst(_) => Duration::ZERO,
        };
        sleep(third).await;
        redis.kill9().await;
        sleep(Duration::from_secs(2)).await;
        redis.restart().await;
    }
    nodes.published().await?;
    // Wait until every delivery is in, or the clients have been quiet for 3 s.
    let want = (total_messages * 3 * members) as u64;
    let mut last = received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    let mut last_change = Instant::now();
    loop {
        let now = received.load(Ordering::Relaxed);
        if now >= want {
            last_change = Instant::now();
            break;
        }
        if now != last {
            last = now;
            quiet_since = Instant::now();
            last_change = quiet_since;
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let took = last_change - start;
    phase_tx.send_replace(2);
    let mut seen = Seen {
        took,
        expected: want,
        ..Seen::default()
    };
    while let Some(joined) = clients.join_next().await {
        let report = joined.map_err(|e| BenchError::new(format!("a client task failed: {e}")))?;
        seen.deliveries += report.deliveries;
        seen.distinct += report.distinct;
        seen.latencies_us.extend(report.latencies_us);
    }
    drop(nodes);
    Ok(seen)
}

/// The three nodes of one run.
enum Nodes {
    Ours {
        clusters: Vec<Cluster>,
        addrs: Vec<SocketAddr>,
        publishers: JoinSet<BenchResult<()>>,
    },
    SocketIo {
        peers: Vec<Peer>,
        addrs: Vec<SocketAddr>,
        emitted: usize,
    },
}

impl Nodes {
    async fn start(who: Who, redis: &Redis) -> BenchResult<Self> {
        match who {
            Who::Ours => {
                let mut clusters = Vec::new();
                let mut addrs = Vec::new();
                for _ in 0..3 {
                    let broker = RedisBroker::connect(redis.addr(), RedisConfig::default())
                        .map_err(|e| BenchError::new(format!("redis config: {e}")))?;
                    let cluster = Cluster::start(broker, ClusterConfig::default())
                        .map_err(|e| BenchError::new(format!("cluster config: {e}")))?;
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    addrs.push(listener.local_addr()?);
                    tokio::spawn(serve(listener, cluster.clone()));
                    clusters.push(cluster);
                }
                Ok(Nodes::Ours {
                    clusters,
                    addrs,
                    publishers: JoinSet::new(),
                })
            }
            Who::SocketIo(adapter) => {
                let mut peers = Vec::new();
                let mut addrs = Vec::new();
                for _ in 0..3 {
                    let mut cmd = peers::node("cluster_b9.js");
                    cmd.arg(redis.port().to_string()).arg(adapter);
                    let peer = Peer::spawn(cmd).await;
                    addrs.push(SocketAddr::from(([127, 0, 0, 1], peer.port())));
                    peers.push(peer);
                }
                Ok(Nodes::SocketIo {
                    peers,
                    addrs,
                    emitted: 0,
                })
            }
        }
    }

    fn addr(&self, n: usize) -> SocketAddr {
        match self {
            Nodes::Ours { addrs, .. } | Nodes::SocketIo { addrs, .. } => addrs[n],
        }
    }

    /// Waits until every node has its members in and is subscribed.
    async fn joined(&self, members: usize) -> BenchResult<()> {
        if let Nodes::Ours { clusters, .. } = self {
            for cluster in clusters {
                timeout(Duration::from_secs(30), async {
                    while cluster.group().namespace_len(NS) < members {
                        sleep(Duration::from_millis(5)).await;
                    }
                    cluster.subscribed(NS).await;
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn publish(&mut self, load: Load) -> BenchResult<()> {
        match self {
            Nodes::Ours {
                clusters,
                publishers,
                ..
            } => {
                for (tag, cluster) in clusters.iter().enumerate() {
                    let cluster = cluster.clone();
                    publishers.spawn(async move {
                        let count = load.count();
                        let rate = load.rate();
                        let start = Instant::now();
                        let mut pending = Vec::with_capacity(count);
                        for seq in 0..count {
                            if rate > 0 {
                                tokio::time::sleep_until(
                                    start + Duration::from_secs_f64(seq as f64 / rate as f64),
                                )
                                .await;
                            } else if seq % 64 == 63 {
                                tokio::task::yield_now().await;
                            }
                            pending.push(cluster.broadcast(NS, payload(tag, seq)));
                        }
                        for publish in pending {
                            publish
                                .await
                                .map_err(|e| BenchError::new(format!("publish: {e}")))?;
                        }
                        Ok(())
                    });
                }
                Ok(())
            }
            Nodes::SocketIo { .. } => {
                // The first client of each node asked for the emits when it connected; see `client`.
                Ok(())
            }
        }
    }

    async fn published(&mut self) -> BenchResult<()> {
        match self {
            Nodes::Ours { publishers, .. } => {
                while let Some(done) = publishers.join_next().await {
                    done.map_err(|e| BenchError::new(format!("publisher: {e}")))??;
                }
            }
            Nodes::SocketIo { peers, emitted, .. } => {
                for peer in peers {
                    match timeout(Duration::from_secs(60), peer.next_line()).await? {
                        Some(line) if line.starts_with("EMITTED") => *emitted += 1,
                        other => {
                            return Err(BenchError::new(format!("socket.io node said {other:?}")));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

async fn serve(listener: TcpListener, cluster: Cluster) {
    let config = AcceptConfig::new(WsConfig::default());
    while let Ok((tcp, _)) = listener.accept().await {
        let (cluster, config) = (cluster.clone(), config.clone());
        tokio::spawn(async move {
            let Ok(conn) = accept(tcp, &config).await else {
                return;
            };
            let id = conn
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let (member, mut incoming) = conn.split();
            if cluster.add(NS, id, member).is_err() {
                return;
            }
            while let Some(Ok(_)) = incoming.next().await {}
        });
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Report {
    deliveries: u64,
    distinct: u64,
    latencies_us: Vec<f64>,
}

/// Which client: its node and its number there.
#[derive(Debug, Clone, Copy)]
struct Place {
    node: usize,
    member: usize,
}

async fn client(
    who: Who,
    addr: SocketAddr,
    place: Place,
    load: Load,
    received: Arc<AtomicU64>,
    mut phase: watch::Receiver<u8>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Report {
    let mut report = Report::default();
    let (url, kind) = match who {
        Who::Ours => (
            format!("ws://{addr}/{NS}/n{}m{}", place.node, place.member),
            MessageKind::Binary,
        ),
        Who::SocketIo(_) => (
            format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            MessageKind::Text,
        ),
    };
    let Ok(config) = WsConfig::builder().message_kind(kind).build() else {
        return report;
    };
    let connector = WsConnector::new(TcpConnector::new(), config);
    let Ok(mut ws) = connector.oneshot(url).await else {
        return report;
    };
    if let Who::SocketIo(_) = who {
        // Engine.IO's open packet, then a connect to the main namespace and its answer.
        if !matches!(ws.next().await, Some(Ok(Received::Text(t))) if t.starts_with('0')) {
            return report;
        }
        if ws.send(Bytes::from_static(b"40")).await.is_err() {
            return report;
        }
        if !matches!(ws.next().await, Some(Ok(Received::Text(t))) if t.starts_with("40")) {
            return report;
        }
    }
    let _ = ready.send(());
    let sample = place.member < 10;
    let mut seen: HashMap<usize, Vec<bool>> = HashMap::new();
    loop {
        let next = tokio::select! {
            next = ws.next() => next,
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now >= 2 {
                    break;
                }
                if now == 1 && place.member == 0 && matches!(who, Who::SocketIo(_)) {
                    // The first client of each socket.io node starts its emits.
                    let go = format!(
                        "42[\"go\",{{\"count\":{},\"rate\":{},\"tag\":{}}}]",
                        load.count(),
                        load.rate(),
                        place.node
                    );
                    if ws.send(Bytes::from(go)).await.is_err() {
                        break;
                    }
                }
                continue;
            }
        };
        let Some(Ok(msg)) = next else { break };
        let Some(bytes) = msg.into_bytes() else { break };
        let body: &[u8] = match who {
            Who::Ours => &bytes,
            Who::SocketIo(_) => {
                if &bytes[..] == b"2" {
                    let _ = ws.send(Bytes::from_static(b"3")).await;
                    continue;
                }
                match bytes
                    .strip_prefix(b"42[\"m\",\"")
                    .and_then(|b| b.strip_suffix(b"\"]"))
                {
                    Some(b) => b,
                    None => continue,
                }
            }
        };
        let Some((tag, seq, sent)) = parse(body) else {
            continue;
        };
        report.deliveries += 1;
        received.fetch_add(1, Ordering::Relaxed);
        let slots = seen.entry(tag).or_insert_with(|| vec![false; load.count()]);
        if let Some(slot) = slots.get_mut(seq)
            && !std::mem::replace(slot, true)
        {
            report.distinct += 1;
        }
        if sample {
            report
                .latencies_us
                .push(now_us().saturating_sub(sent) as f64);
        }
    }
    report
}

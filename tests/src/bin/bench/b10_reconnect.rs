//! B10: clients drained off one server at a paced rate come back to a second one, spread out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use connman_core::error::BoxError;
use connman_pool::drain::DrainConfig;
use connman_tcp::HostPort;
use connman_tests::window::most_within;
use connman_tests::ws::CountingServer;
use connman_ws::client::{Message, WsClient};
use connman_ws::{AcceptConfig, WsConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite;
use tower::service_fn;

use crate::harness::{BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, runtime};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B10",
    title: "WsClients drained off one server come back to another",
    method: "In process over loopback. Two servers of connman-ws's server side (`accept` into a `connman_pool::group::\
             Group`, every received message counted). N clients connect to the first (5000 in a full run, 500 in the \
             smoke mode); each sends a numbered text message every 500 ms for the whole run. Then the address the \
             clients connect to is switched to the second server (as a load balancer or DNS would) and the first \
             drains with `Group::drain(DrainConfig::max_per_second(500))`, code 4200, whose reason carries the \
             drain's default come-back advice (`come back within 0 ms`: the drain has spread its closes already). \
             Ours: `WsClient` with its defaults (a 4200 reconnects after a random delay in [0, 2 s], narrowed by the \
             server's advice, here to 0; sends wait in its queue). Peer: the same clients as a tokio-tungstenite loop \
             that reconnects after a fixed 1 s and keeps the messages made while disconnected in a buffer of its own, \
             writing them on the next connection. Reference: `WsClient` with the same defaults against a drain that \
             gives no advice (`without_come_back_advice`), so each client waits its own random delay. Figures: the \
             most handshakes the second server completed in any 100 ms (sliding), as a multiple of the drain's 50 \
             per 100 ms; the time from the drain's start until the last client is back; messages lost (made, and \
             never counted by a server). Ours, the peer and the reference alternate, one round each. Random delays \
             add variance without pacing: with 500/s closes and uniform delays over 2 s, the count in a 100 ms window \
             has a mean of 50 and a standard deviation near 7, so the reference's peak sits near 1.3× even on an idle \
             machine; the random spread is what a client needs after a close-all (1012, 4200 to everyone at once), \
             and the advice keeps it from blurring a pace the server already keeps.",
    run,
};

/// The drain rate.
const RATE: u32 = 500;
/// The come-back spread of `WsClient` after a 4200 (its default).
const COME_BACK: Duration = Duration::from_secs(2);
/// The peer's fixed retry.
const PEER_RETRY: Duration = Duration::from_secs(1);
/// How often every client sends.
const EVERY: Duration = Duration::from_millis(500);

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let clients = mode.pick(500, 5_000);
    rt.block_on(async move {
        let mut peak = Pairs::default();
        let mut back = Pairs::default();
        let mut lost = Pairs::default();
        let mut failed = Pairs::default();
        let mut after = Pairs::default();
        let mut unadvised = Vec::new();
        for _ in 0..mode.rounds() {
            let o = switch(Kind::Ours { advice: true }, clients).await?;
            let p = switch(Kind::Peer, clients).await?;
            let r = switch(Kind::Ours { advice: false }, clients).await?;
            unadvised.push(r.peak as f64);
            peak.push(o.peak as f64, p.peak as f64);
            back.push(o.back.as_secs_f64(), p.back.as_secs_f64());
            after.push(o.after_drain.as_secs_f64(), p.after_drain.as_secs_f64());
            lost.push(o.lost as f64, p.lost as f64);
            failed.push(o.failed as f64, p.failed as f64);
        }
        let drain_time = Duration::from_secs_f64(clients as f64 / f64::from(RATE));
        let per_100ms = f64::from(RATE) / 10.0;
        let peak_ratio = Stats::of(&peak.ratios(Better::Lower));
        let back_ratio = Stats::of(&back.ratios(Better::Lower));
        let ours_peak = peak.ours.iter().copied().fold(0.0, f64::max);
        let ours_after = after.ours.iter().copied().fold(0.0, f64::max);
        let ours_lost = lost.ours.iter().sum::<f64>();
        let rounds = mode.rounds();
        Ok(vec![
            Row {
                scenario: format!(
                    "B10 peak accepts per 100 ms at the second server, {clients} clients"
                ),
                ours: format!(
                    "WsClient: {:.0} ({:.2}× the drain's {per_100ms:.0})",
                    peak.ours_median(),
                    peak.ours_median() / per_100ms
                ),
                peer: format!(
                    "tokio-tungstenite, fixed 1 s retry: {:.0} ({:.2}×)",
                    peak.peer_median(),
                    peak.peer_median() / per_100ms
                ),
                ratio: peak_ratio,
                reference: format!(
                    "drain at {RATE}/s: {per_100ms:.0} per 100 ms; WsClient, drain without advice: {:.0} ({:.2}×)",
                    Stats::of(&unadvised).map_or(f64::NAN, |s| s.median),
                    Stats::of(&unadvised).map_or(f64::NAN, |s| s.median) / per_100ms
                ),
                target: "≤ 1.2× the drain rate in every round".to_owned(),
                met: Some(ours_peak <= 1.2 * per_100ms),
            },
            Row {
                scenario: format!("B10 all back after the drain started, {clients} clients"),
                ours: format!(
                    "WsClient: {:.2} s ({:.2} s after the drain's last close)",
                    back.ours_median(),
                    after.ours_median()
                ),
                peer: format!(
                    "tokio-tungstenite, fixed 1 s retry: {:.2} s ({:.2} s after)",
                    back.peer_median(),
                    after.peer_median()
                ),
                ratio: back_ratio,
                reference: format!(
                    "drain time {:.1} s at an even pace + come-back spread {:.0} s",
                    drain_time.as_secs_f64(),
                    COME_BACK.as_secs_f64()
                ),
                target: "every round: back within the come-back spread (+ 0.25 s to connect) of the drain's end"
                    .to_owned(),
                met: Some(ours_after <= COME_BACK.as_secs_f64() + 0.25),
            },
            Row {
                scenario: format!("B10 messages lost, {clients} clients"),
                ours: format!(
                    "WsClient: {ours_lost:.0} over {rounds} rounds ({:.0} reported failed to the sender)",
                    failed.ours.iter().sum::<f64>()
                ),
                peer: format!(
                    "tokio-tungstenite, fixed 1 s retry: {:.0} over {rounds} rounds ({:.0} reported failed)",
                    lost.peer.iter().sum::<f64>(),
                    failed.peer.iter().sum::<f64>()
                ),
                ratio: None,
                reference: String::new(),
                target: "0".to_owned(),
                met: Some(ours_lost == 0.0),
            },
        ])
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `WsClient` with its defaults, drained with the drain's come-back advice or without it.
    Ours {
        advice: bool,
    },
    Peer,
}

/// What one round measured.
#[derive(Debug)]
struct Switched {
    peak: usize,
    back: Duration,
    /// From the drain's end (its last close) to the last client back.
    after_drain: Duration,
    lost: u64,
    /// Of the lost, those whose sender was told of a failure.
    failed: u64,
}

/// One server: connman-ws's `accept` into a group, counting handshakes and messages.
async fn server() -> BenchResult<CountingServer> {
    Ok(CountingServer::start(AcceptConfig::new(WsConfig::default()).namespace("bench")).await?)
}

/// Counts of one kind of client.
#[derive(Default)]
struct Counts {
    /// Messages made.
    made: AtomicU64,
    /// Messages whose send reported a failure (ours: any error outcome; the peer: a failed write).
    failed: AtomicU64,
}

/// Connects `clients` clients of `kind` to a first server, switches them to a second by draining the first, and
/// measures the second's accepts.
async fn switch(kind: Kind, clients: usize) -> BenchResult<Switched> {
    let first = server().await?;
    let second = server().await?;
    let target = Arc::new(AtomicU16::new(first.port()));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut running = JoinSet::new();
    for i in 0..clients {
        let (target, stop, counts) = (target.clone(), stop.clone(), counts.clone());
        match kind {
            Kind::Ours { .. } => running.spawn(ours(target, stop, counts, COME_BACK)),
            Kind::Peer => running.spawn(peer(target, stop, counts)),
        };
        // Connects in steps, so that the listener's backlog never overflows.
        if i % 250 == 249 {
            wait_until("the first connects", Duration::from_secs(30), || {
                first.accepted() > i - 50
            })
            .await?;
        }
    }
    wait_until(
        "every client in the first group",
        Duration::from_secs(60),
        || first.group().namespace_len("bench") == clients,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    target.store(second.port(), Ordering::SeqCst);
    let mut config =
        DrainConfig::max_per_second(RATE).map_err(|e| BenchError::new(format!("drain: {e}")))?;
    if kind == (Kind::Ours { advice: false }) {
        config = config.without_come_back_advice();
    }
    let started = Instant::now();
    let draining = first
        .group()
        .drain(config)
        .map_err(|e| BenchError::new(format!("drain: {e}")))?;
    let drain = tokio::spawn(async move {
        let report = draining.await;
        (report, started.elapsed())
    });
    let drain_time = Duration::from_secs_f64(clients as f64 / f64::from(RATE));
    let bound = drain_time + COME_BACK + PEER_RETRY + Duration::from_secs(30);
    if let Err(e) = wait_until("every client at the second server", bound, || {
        second.accepted() >= clients
    })
    .await
    {
        return Err(BenchError::new(format!(
            "{kind:?}: {e}: {} of {clients} back, {} left in the first",
            second.accepted(),
            first.group().namespace_len("bench")
        )));
    }
    let (report, drain_took) = drain
        .await
        .map_err(|e| BenchError::new(format!("the drain failed: {e}")))?;
    if report.closed != clients {
        return Err(BenchError::new(format!(
            "the drain closed {} of {clients}",
            report.closed
        )));
    }
    let mut at: Vec<Duration> = second
        .accepts()
        .iter()
        .map(|t| t.into_std().saturating_duration_since(started))
        .collect();
    at.sort();
    let back = at.last().copied().unwrap_or_default();
    let after_drain = back.saturating_sub(drain_took);
    let peak = most_within(&at, Duration::from_millis(100));

    // Let every client send a little on the second server, then stop and count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = running.join_next().await {
        done.map_err(|e| BenchError::new(format!("a client task failed: {e}")))?;
    }
    // What was written reaches the server's counter within moments.
    let made = counts.made.load(Ordering::SeqCst);
    let received = || first.received() + second.received();
    let _ = wait_until("the last messages", Duration::from_secs(5), || {
        received() >= made
    })
    .await;
    let lost = made.saturating_sub(received());
    let failed = counts.failed.load(Ordering::SeqCst);
    drop(second);
    drop(first);
    Ok(Switched {
        peak,
        back,
        after_drain,
        lost,
        failed,
    })
}

async fn wait_until(
    what: &str,
    bound: Duration,
    mut done: impl FnMut() -> bool,
) -> BenchResult<()> {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() >= deadline {
            return Err(BenchError::new(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A transport that connects wherever `target` points now.
fn transport(
    target: Arc<AtomicU16>,
) -> impl tower::Service<HostPort, Response = TcpStream, Error = BoxError, Future: Send + 'static>
+ Send
+ 'static {
    service_fn(move |_: HostPort| {
        let port = target.load(Ordering::SeqCst);
        async move { Ok::<_, BoxError>(TcpStream::connect(("127.0.0.1", port)).await?) }
    })
}

/// Our client: `WsClient` with its defaults (the come-back spread named, at its default), one send every 500 ms, each
/// awaited (waiting in the queue while down).
async fn ours(
    target: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    spread: Duration,
) {
    let Ok((mut client, mut incoming)) = WsClient::builder("ws://bench.invalid/app")
        .transport(transport(target))
        .come_back_within(spread)
        .build()
    else {
        return;
    };
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let mut tick = tokio::time::interval(EVERY);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        counts.made.fetch_add(1, Ordering::Relaxed);
        if client.send(Message::from(n.to_string())).await.is_err() {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
    }
    client.close().await;
}

/// The peer: a tokio-tungstenite loop with a fixed retry, buffering what it makes while disconnected.
async fn peer(target: Arc<AtomicU16>, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut pending: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let port = target.load(Ordering::SeqCst);
        let connected = async {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            tokio_tungstenite::client_async("ws://bench.invalid/app", tcp)
                .await
                .ok()
        }
        .await;
        let Some((ws, _)) = connected else {
            tokio::time::sleep(PEER_RETRY).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        'conn: while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    counts.made.fetch_add(1, Ordering::Relaxed);
                    pending.push_back(n.to_string());
                    n += 1;
                    while let Some(msg) = pending.pop_front() {
                        // A failed send is gone: the loop cannot tell whether it was written.
                        if sink.send(tungstenite::Message::Text(msg.into())).await.is_err() {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            break 'conn;
                        }
                    }
                }
                msg = stream.next() => match msg {
                    Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_)) | None => break 'conn,
                    Some(Ok(_)) => {}
                },
            }
        }
        if stop.load(Ordering::Relaxed) {
            let _ = sink.close().await;
            return;
        }
        tokio::time::sleep(PEER_RETRY).await;
    }
}

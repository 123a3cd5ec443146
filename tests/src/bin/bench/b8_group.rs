//! B8: close-all, paced drain and broadcast of a `Group` of in-process channel members.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connman_core::member::{CloseCode, Member};
use connman_pool::drain::DrainConfig;
use connman_pool::group::{ChannelMember, ChannelPeer, Frame, Group, channel};
use connman_tests::window::most_within;
use futures_util::SinkExt;
use futures_util::future::join_all;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, fmt_rate, runtime,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B8",
    title: "group close-all, drain and broadcast",
    method: "In process, no sockets: every member is a `connman_pool::group::channel` member whose peer end is read \
             by a task of its own, which records when it sees the close frame. **Close-all**: the time from the \
             start until every peer has seen its close; ours is `Group::close_all` on one namespace, the peer is \
             `futures::future::join_all` of `start_close` + `SinkExt::close` over the same kind of members held in \
             a `Vec`. **Drain**: `Group::drain(DrainConfig::max_per_second(R))` over members spread across two \
             namespaces, in real time (5000 members at 1000/s in a full run, 300 at 100/s in the smoke mode), \
             measured once: the rate error is the largest deviation from R of the closes seen in each 1 s window \
             counted from the first close (the last, partial window left out), and the largest number of closes \
             seen in any sliding 1 s window; no peer was named for it. Closes are timed where the members' readers \
             see them, on the same two cores as the group, so the delay from a close's start to its sighting (some \
             milliseconds under load) can move it from one window to the next. **Broadcast**: 1000 members, bursts of 64 \
             messages of 64 B, each burst complete at every member before the next; ours is `Group::broadcast` per \
             message, and `Group::broadcast_many` once per burst in a row of its own, \
             the peer is a `tokio::sync::broadcast<Bytes>` channel with one task per member that feeds the same \
             kind of channel member until the channel is empty, then flushes once; the figure is deliveries per \
             second. **Ceiling** (the reference column): the least work any fan-out can do with these members, with \
             no queue: one task per member woken once per burst feeds the 64 messages and flushes once, or the \
             publisher's own loop feeds every member (no task at all); each round takes the faster of the two.",
    run,
};

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let bound = Duration::from_secs(30);
    rt.block_on(async move {
        let mut rows = Vec::new();

        let members = mode.pick(1_000, 5_000);
        let mut close = Pairs::default();
        for _ in 0..mode.rounds() {
            let o = tokio::time::timeout(bound, close_all_ours(members)).await??;
            let p = tokio::time::timeout(bound, close_all_peer(members)).await??;
            close.push(ns(o), ns(p));
        }
        let ratio = Stats::of(&close.ratios(Better::Lower));
        rows.push(Row {
            scenario: format!("B8 close-all, {members} members"),
            ours: format!("close_all: {}", fmt_ns(close.ours_median())),
            peer: format!("join_all(close): {}", fmt_ns(close.peer_median())),
            ratio,
            reference: String::new(),
            target: "≤ 1.0× the peer's time (ratio ≥ 1)".to_owned(),
            met: Some(ratio.is_some_and(|r| r.median >= 1.0)),
        });

        let (members, rate) = mode.pick((300, 100), (5_000, 1_000));
        let drained = tokio::time::timeout(bound, drain_ours(members, rate)).await??;
        rows.push(drained.row(members, rate));

        let (members, bursts) = (1_000, mode.pick(5, 40));
        let mut fan_out = Pairs::default();
        let mut fan_out_many = Pairs::default();
        let mut ceiling = Pairs::default();
        for _ in 0..mode.rounds() {
            let o = tokio::time::timeout(bound, broadcast_ours(members, bursts, false)).await??;
            let m = tokio::time::timeout(bound, broadcast_ours(members, bursts, true)).await??;
            let p = tokio::time::timeout(bound, broadcast_peer(members, bursts)).await??;
            let c = tokio::time::timeout(bound, ceiling_tasks(members, bursts)).await??;
            let c = c.max(tokio::time::timeout(bound, ceiling_inline(members, bursts)).await??);
            ceiling.push(c, p);
            fan_out.push(o, p);
            fan_out_many.push(m, p);
        }
        rows.push(broadcast_row(
            format!("B8 broadcast to {members} channel members"),
            "Group::broadcast",
            &fan_out,
            &ceiling,
        ));
        rows.push(broadcast_row(
            format!("B8 broadcast bursts to {members} channel members, one call per burst"),
            "Group::broadcast_many",
            &fan_out_many,
            &ceiling,
        ));
        Ok(rows)
    })
}

/// A row of the broadcast test: `ours` against the tokio broadcast fan-out, in deliveries per second.
fn broadcast_row(scenario: String, ours: &str, pairs: &Pairs, ceiling: &Pairs) -> Row {
    let ratio = Stats::of(&pairs.ratios(Better::Higher));
    let reach = Stats::of(&ceiling.ratios(Better::Higher)).map_or(f64::NAN, |s| s.median);
    Row {
        scenario,
        ours: format!("{ours}: {} deliveries", fmt_rate(pairs.ours_median())),
        peer: format!(
            "tokio broadcast + feed/flush tasks: {} deliveries",
            fmt_rate(pairs.peer_median())
        ),
        ratio,
        reference: format!(
            "ceiling (no queue, one wake or none per member per burst): {} deliveries, {reach:.2}× the peer",
            fmt_rate(ceiling.ours_median())
        ),
        target: "≥ 1.5×".to_owned(),
        met: Some(ratio.is_some_and(|r| r.median >= 1.5)),
    }
}

const NAMESPACE: &str = "bench";

/// The burst size of the broadcast test, and the capacity of every member's channel.
const BURST: usize = 64;

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Reads a peer end until the close frame and returns when it came.
async fn saw_close(mut peer: ChannelPeer) -> BenchResult<Instant> {
    loop {
        match peer.recv().await {
            Some(Frame::Close(..)) => return Ok(Instant::now()),
            Some(Frame::Message(_)) => {}
            None => return Err(BenchError::new("a member ended without a close frame")),
        }
    }
}

async fn all_closed(mut seen: JoinSet<BenchResult<Instant>>) -> BenchResult<Vec<Instant>> {
    let mut at = Vec::with_capacity(seen.len());
    while let Some(joined) = seen.join_next().await {
        at.push(joined.map_err(|e| BenchError::new(format!("a peer task failed: {e}")))??);
    }
    Ok(at)
}

fn add(group: &Group, namespace: &str, id: usize, member: ChannelMember) -> BenchResult<()> {
    group
        .add(namespace.to_owned(), id.to_string(), member)
        .map_err(|e| BenchError::new(format!("group add: {}", e.reason())))
}

async fn close_all_ours(members: usize) -> BenchResult<Duration> {
    let group = Group::new();
    let mut seen = JoinSet::new();
    for id in 0..members {
        let (member, peer) = channel(4);
        add(&group, NAMESPACE, id, member)?;
        seen.spawn(saw_close(peer));
    }
    let started = Instant::now();
    join_all(group.close_all(NAMESPACE, CloseCode::GOING_AWAY, "bye")).await;
    all_closed(seen).await?;
    Ok(started.elapsed())
}

async fn close_all_peer(members: usize) -> BenchResult<Duration> {
    let mut held = Vec::with_capacity(members);
    let mut seen = JoinSet::new();
    for _ in 0..members {
        let (member, peer) = channel(4);
        held.push(member);
        seen.spawn(saw_close(peer));
    }
    let started = Instant::now();
    let closes = held.iter_mut().map(|member| async move {
        Pin::new(&mut *member).start_close(CloseCode::GOING_AWAY, "bye")?;
        member.close().await
    });
    for closed in join_all(closes).await {
        closed.map_err(|e| BenchError::new(format!("a close failed: {e}")))?;
    }
    all_closed(seen).await?;
    Ok(started.elapsed())
}

/// What a drain did, as its members saw it.
#[derive(Debug)]
struct Drained {
    /// When each close was seen, from the start of the drain, sorted.
    closes: Vec<Duration>,
}

impl Drained {
    fn row(&self, members: usize, rate: usize) -> Row {
        let first = self.closes.first().copied().unwrap_or_default();
        let last = self.closes.last().copied().unwrap_or_default();
        // Closes per 1 s window counted from the first close; the last window is partial.
        let mut windows = vec![0usize; (last - first).as_secs() as usize + 1];
        for at in &self.closes {
            windows[(*at - first).as_secs() as usize] += 1;
        }
        windows.pop();
        let error = windows
            .iter()
            .map(|&n| (n as f64 - rate as f64) / rate as f64)
            .fold(
                0.0f64,
                |worst, e| if e.abs() > worst.abs() { e } else { worst },
            );
        let max_window = most_within(&self.closes, Duration::from_secs(1));
        // At an even pace of one close every 1/R s, the last one begins (N − 1)/R s after the first.
        let ideal = Duration::from_secs_f64((members - 1) as f64 / rate as f64);
        let error_text = if windows.is_empty() {
            "n/a (one window)".to_owned()
        } else {
            format!("{:+.1} %", error * 100.0)
        };
        Row {
            scenario: format!("B8 drain {members} members at {rate}/s"),
            ours: format!(
                "rate error {error_text}, max {max_window} closes in any 1 s, last close at {}",
                fmt_ns(ns(last))
            ),
            peer: "—".to_owned(),
            ratio: None,
            reference: format!("even pace: last close due at {}", fmt_ns(ns(ideal))),
            target: format!("within ±5 % of {rate}/s, never above {rate} in any 1 s window"),
            met: Some(error.abs() <= 0.05 && max_window <= rate),
        }
    }
}

async fn drain_ours(members: usize, rate: usize) -> BenchResult<Drained> {
    let group = Group::new();
    let mut seen = JoinSet::new();
    for id in 0..members {
        let (member, peer) = channel(4);
        let namespace = if id % 2 == 0 { "even" } else { "odd" };
        add(&group, namespace, id, member)?;
        seen.spawn(saw_close(peer));
    }
    let config = u32::try_from(rate)
        .map_err(|_| BenchError::new("drain rate out of range"))
        .and_then(|r| {
            DrainConfig::max_per_second(r)
                .map_err(|e| BenchError::new(format!("drain config: {e}")))
        })?;
    let started = Instant::now();
    let drain = group
        .drain(config)
        .map_err(|e| BenchError::new(format!("drain: {e}")))?;
    let report = drain.await;
    if report.closed != members {
        return Err(BenchError::new(format!(
            "the drain closed {} of {members} members",
            report.closed
        )));
    }
    let mut closes: Vec<Duration> = all_closed(seen)
        .await?
        .into_iter()
        .map(|at| at - started)
        .collect();
    closes.sort();
    Ok(Drained { closes })
}

/// One 64-byte message.
fn message() -> Bytes {
    Bytes::from_static(&[0x2a; 64])
}

/// Reads `bursts` bursts of messages from a peer end and acknowledges each complete burst.
async fn count(mut peer: ChannelPeer, bursts: usize, acks: mpsc::Sender<()>) -> BenchResult<()> {
    for _ in 0..bursts {
        for _ in 0..BURST {
            match peer.recv().await {
                Some(Frame::Message(_)) => {}
                _ => return Err(BenchError::new("a member stopped before the last message")),
            }
        }
        acks.send(())
            .await
            .map_err(|_| BenchError::new("the publisher is gone"))?;
    }
    Ok(())
}

/// Waits for every member to acknowledge the burst, or for a reader to fail.
async fn burst_done(
    acks: &mut mpsc::Receiver<()>,
    readers: &mut JoinSet<BenchResult<()>>,
    members: usize,
) -> BenchResult<()> {
    let mut acked = 0;
    while acked < members {
        tokio::select! {
            ack = acks.recv() => {
                ack.ok_or_else(|| BenchError::new("every reader is gone"))?;
                acked += 1;
            }
            // A reader ends after its last acknowledgement, or early with an error.
            Some(joined) = readers.join_next() => {
                joined.map_err(|e| BenchError::new(format!("a reader failed: {e}")))??;
            }
        }
    }
    Ok(())
}

/// Deliveries per second through `Group::broadcast`, or `Group::broadcast_many` once per burst.
async fn broadcast_ours(members: usize, bursts: usize, many: bool) -> BenchResult<f64> {
    let group = Group::new();
    let (ack_tx, mut acks) = mpsc::channel(members);
    let mut readers = JoinSet::new();
    for id in 0..members {
        let (member, peer) = channel(BURST);
        add(&group, NAMESPACE, id, member)?;
        readers.spawn(count(peer, bursts, ack_tx.clone()));
    }
    let msg = message();
    let burst = vec![msg.clone(); BURST];
    let started = Instant::now();
    for _ in 0..bursts {
        if many {
            let summary = group.broadcast_many(NAMESPACE, &burst, &[]);
            if summary.delivered != members * BURST {
                return Err(BenchError::new(format!(
                    "a burst reached {} of {} deliveries",
                    summary.delivered,
                    members * BURST
                )));
            }
        }
        for _ in 0..if many { 0 } else { BURST } {
            let summary = group.broadcast(NAMESPACE, msg.clone(), &[]);
            if summary.delivered != members {
                return Err(BenchError::new(format!(
                    "a broadcast reached {} of {members} members",
                    summary.delivered
                )));
            }
        }
        burst_done(&mut acks, &mut readers, members).await?;
    }
    let elapsed = started.elapsed();
    Ok((members * bursts * BURST) as f64 / elapsed.as_secs_f64())
}

/// Deliveries per second through a `tokio::sync::broadcast` channel and one feed/flush task per member.
async fn broadcast_peer(members: usize, bursts: usize) -> BenchResult<f64> {
    let (tx, _) = broadcast::channel::<Bytes>(BURST);
    let (ack_tx, mut acks) = mpsc::channel(members);
    let mut readers = JoinSet::new();
    let mut writers = JoinSet::new();
    for _ in 0..members {
        let (member, peer) = channel(BURST);
        writers.spawn(feed(tx.subscribe(), member));
        readers.spawn(count(peer, bursts, ack_tx.clone()));
    }
    let msg = message();
    let started = Instant::now();
    for _ in 0..bursts {
        for _ in 0..BURST {
            tx.send(msg.clone())
                .map_err(|_| BenchError::new("every subscriber is gone"))?;
        }
        burst_done(&mut acks, &mut readers, members).await?;
    }
    let elapsed = started.elapsed();
    drop(tx);
    while let Some(joined) = writers.join_next().await {
        joined.map_err(|e| BenchError::new(format!("a writer failed: {e}")))??;
    }
    Ok((members * bursts * BURST) as f64 / elapsed.as_secs_f64())
}

/// Feeds one burst of `msg` to `member`, then flushes it once: the whole of a ceiling's work per member and burst.
async fn feed_burst(member: &mut ChannelMember, msg: &Bytes) -> BenchResult<()> {
    for _ in 0..BURST {
        member
            .feed(msg.clone())
            .await
            .map_err(|e| BenchError::new(format!("feed: {e}")))?;
    }
    member
        .flush()
        .await
        .map_err(|e| BenchError::new(format!("flush: {e}")))
}

/// The ceiling with a task per member: each is woken once per burst and feeds the burst, then flushes once.
async fn ceiling_tasks(members: usize, bursts: usize) -> BenchResult<f64> {
    let (ack_tx, mut acks) = mpsc::channel(members);
    let mut readers = JoinSet::new();
    let mut writers = JoinSet::new();
    let mut wakes = Vec::with_capacity(members);
    for _ in 0..members {
        let (mut member, peer) = channel(BURST);
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        wakes.push(wake.clone());
        writers.spawn(async move {
            let msg = message();
            for _ in 0..bursts {
                wake.notified().await;
                feed_burst(&mut member, &msg).await?;
            }
            Ok::<(), BenchError>(())
        });
        readers.spawn(count(peer, bursts, ack_tx.clone()));
    }
    let started = Instant::now();
    for _ in 0..bursts {
        for wake in &wakes {
            wake.notify_one();
        }
        burst_done(&mut acks, &mut readers, members).await?;
    }
    let elapsed = started.elapsed();
    while let Some(joined) = writers.join_next().await {
        joined.map_err(|e| BenchError::new(format!("a writer failed: {e}")))??;
    }
    Ok((members * bursts * BURST) as f64 / elapsed.as_secs_f64())
}

/// The ceiling with no task: the publisher feeds every member the burst, then flushes it once.
async fn ceiling_inline(members: usize, bursts: usize) -> BenchResult<f64> {
    let (ack_tx, mut acks) = mpsc::channel(members);
    let mut readers = JoinSet::new();
    let mut held = Vec::with_capacity(members);
    for _ in 0..members {
        let (member, peer) = channel(BURST);
        held.push(member);
        readers.spawn(count(peer, bursts, ack_tx.clone()));
    }
    let msg = message();
    let started = Instant::now();
    for _ in 0..bursts {
        for member in &mut held {
            feed_burst(member, &msg).await?;
        }
        burst_done(&mut acks, &mut readers, members).await?;
    }
    Ok((members * bursts * BURST) as f64 / started.elapsed().as_secs_f64())
}

/// The peer's per-member task: feed what the channel holds, then flush once.
async fn feed(mut rx: broadcast::Receiver<Bytes>, mut member: ChannelMember) -> BenchResult<()> {
    let lagged = |n| BenchError::new(format!("a subscriber lagged by {n} messages"));
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
            Err(broadcast::error::RecvError::Lagged(n)) => return Err(lagged(n)),
        };
        member
            .feed(msg)
            .await
            .map_err(|e| BenchError::new(format!("feed: {e}")))?;
        loop {
            match rx.try_recv() {
                Ok(msg) => member
                    .feed(msg)
                    .await
                    .map_err(|e| BenchError::new(format!("feed: {e}")))?,
                Err(broadcast::error::TryRecvError::Lagged(n)) => return Err(lagged(n)),
                Err(_) => break,
            }
        }
        member
            .flush()
            .await
            .map_err(|e| BenchError::new(format!("flush: {e}")))?;
    }
}

//! `Group`: the behaviours of @soketi/connections (SK-xx), fixed where the original is wrong.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, Closed, Duplicate, InvalidConfig, NotFound, Overloaded};
use connman_core::member::{CloseCode, Member};
use connman_pool::group::{
    ChannelPeer, Frame, Group, GroupConfig, MemberStats, NoRuntime, Remote, SlowConsumer, channel,
};
use futures_util::Sink;
use tokio::time::{Instant, advance, sleep};

type Log = Arc<Mutex<Vec<String>>>;

/// Lets every task run: on paused time the clock only moves once everything else is idle.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

fn msg(frame: Option<Frame>) -> Bytes {
    match frame {
        Some(Frame::Message(b)) => b,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn drain_peer(peer: &mut ChannelPeer) -> Vec<Frame> {
    std::iter::from_fn(|| peer.try_recv()).collect()
}

/// A group whose hooks write to a log.
fn logged_group(config: GroupConfig) -> (Group, Log) {
    let log: Log = Arc::default();
    let (l1, l2) = (log.clone(), log.clone());
    let group = Group::builder()
        .config(config)
        .on_remove(move |r, why| {
            l1.lock()
                .unwrap()
                .push(format!("remove {}/{} {why:?}", r.namespace, r.id))
        })
        .on_empty(move |ns| l2.lock().unwrap().push(format!("empty {ns}")))
        .build()
        .unwrap();
    (group, log)
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn sk_01_ids_are_unique_per_namespace_only() {
    let group = Group::new();
    let (a, _pa) = channel(4);
    let (b, _pb) = channel(4);
    let (c, _pc) = channel(4);
    group.add("ns1", "1", a).unwrap();
    group.add("ns2", "1", b).unwrap();
    let rejected = group.add("ns1", "1", c).unwrap_err();
    assert!(rejected.is::<Duplicate>());
    assert_eq!(group.ids("ns1"), ["1"]);
    assert_eq!(group.ids("ns2"), ["1"]);
    assert_eq!(group.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn sk_02_duplicate_is_rejected_and_replace_closes_the_old_member() {
    let (group, log) = logged_group(GroupConfig::default());
    let (old, mut old_peer) = channel(4);
    group.add("ns", "1", old).unwrap();

    // A duplicate is handed back untouched, and the old member keeps working.
    let (dup, mut dup_peer) = channel(4);
    let dup = group.add("ns", "1", dup).unwrap_err().into_member();
    group.send("ns", "1", "to old").unwrap();
    assert_eq!(msg(old_peer.recv().await), "to old");

    // An explicit replace closes the old one and leaves the id to the new one.
    assert!(group.replace("ns", "1", dup).unwrap());
    assert_eq!(
        old_peer.recv().await,
        Some(Frame::Close(CloseCode::NORMAL, "replaced".into()))
    );
    group.send("ns", "1", "to new").unwrap();
    assert_eq!(msg(dup_peer.recv().await), "to new");
    settle().await;
    assert_eq!(entries(&log), ["remove ns/1 Replaced"]);
    assert_eq!(group.ids("ns"), ["1"]);
    assert!(group.is_open("ns", "1"));
}

#[tokio::test(start_paused = true)]
async fn sk_03_lookups_never_create_a_namespace() {
    let (group, log) = logged_group(GroupConfig::default());
    assert!(group.send("ghost", "1", "x").is_err());
    assert_eq!(group.broadcast("ghost", "x", &[]).delivered, 0);
    assert!(group.close_all("ghost", CloseCode::NORMAL, "").is_empty());
    assert!(group.close("ghost", "1", CloseCode::NORMAL, "").is_err());
    assert!(group.touch("ghost", "1").is_err());
    assert!(group.stats("ghost", "1").is_none());
    assert!(group.to_remote("ghost", "1").is_none());
    assert!(group.ids("ghost").is_empty());
    assert_eq!(group.namespace_len("ghost"), 0);
    assert!(!group.contains("ghost", "1"));
    assert!(group.remove("ghost", "1").is_err());
    assert!(group.namespaces().is_empty());
    assert!(group.is_empty());
    assert!(entries(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn sk_04_send_to_a_missing_id_or_namespace_is_not_found() {
    let group = Group::new();
    let (a, _pa) = channel(4);
    group.add("ns", "a", a).unwrap();
    let missing_id = group.send("ns", "b", "x").unwrap_err();
    assert_eq!(
        missing_id.downcast_ref::<NotFound>().unwrap().what(),
        "ns/b"
    );
    let missing_ns = group.send("other", "a", "x").unwrap_err();
    assert!(missing_ns.is::<NotFound>());
}

#[tokio::test(start_paused = true)]
async fn sk_05_broadcast_reaches_its_namespace_in_order_and_shares_one_buffer() {
    let group = Group::new();
    let mut peers = Vec::new();
    for id in ["a", "b", "c"] {
        let (m, p) = channel(8);
        group.add("5ghz", id, m).unwrap();
        peers.push(p);
    }
    let (other, mut other_peer) = channel(8);
    group.add("40ghz", "z", other).unwrap();

    let payload = Bytes::from(vec![7u8; 64]);
    let summary = group.broadcast("5ghz", payload.clone(), &["b"]);
    assert_eq!(
        (summary.delivered, summary.dropped, summary.skipped),
        (1 + 1, 0, 0)
    );
    settle().await;

    let got_a = msg(peers[0].try_recv());
    let got_c = msg(peers[2].try_recv());
    assert!(peers[1].try_recv().is_none(), "excluded");
    assert!(other_peer.try_recv().is_none(), "another namespace");
    // Encoded once: every member got the same buffer.
    assert_eq!(got_a.as_ptr(), payload.as_ptr());
    assert_eq!(got_c.as_ptr(), payload.as_ptr());
    assert_eq!(group.ids("5ghz"), ["a", "b", "c"], "insertion order");
}

#[tokio::test(start_paused = true)]
async fn sk_06_broadcast_skips_members_that_are_closing() {
    let group = Group::new();
    // A peer that never reads: its channel of one fills, so its close cannot finish yet.
    let (stuck, _stuck_peer) = channel(1);
    let (open, mut open_peer) = channel(8);
    group.add("ns", "stuck", stuck).unwrap();
    group.add("ns", "open", open).unwrap();
    group.send("ns", "stuck", "fills the channel").unwrap();
    settle().await;
    let _closing = group
        .close("ns", "stuck", CloseCode::NORMAL, "bye")
        .unwrap();
    settle().await;
    assert!(
        group.contains("ns", "stuck"),
        "still listed while it closes"
    );
    assert!(!group.is_open("ns", "stuck"));

    let summary = group.broadcast("ns", "hello", &[]);
    assert_eq!((summary.delivered, summary.skipped), (1, 1));
    assert!(group.send("ns", "stuck", "x").unwrap_err().is::<Closed>());
    assert_eq!(msg(open_peer.recv().await), "hello");
}

#[tokio::test(start_paused = true)]
async fn sk_08_close_is_idempotent() {
    let (group, log) = logged_group(GroupConfig::default());
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    let first = group.close("ns", "1", CloseCode::NORMAL, "first").unwrap();
    let second = group
        .close("ns", "1", CloseCode::GOING_AWAY, "second")
        .unwrap();
    first.await;
    second.await;
    assert_eq!(
        drain_peer(&mut peer),
        [Frame::Close(CloseCode::NORMAL, "first".into())]
    );
    assert!(peer.recv().await.is_none());
    assert_eq!(
        entries(&log),
        ["remove ns/1 Closed(CloseCode(1000))", "empty ns"]
    );
    // Once it has left, the id is free and a close is NotFound.
    assert!(group.close("ns", "1", CloseCode::NORMAL, "").is_err());
}

#[tokio::test(start_paused = true)]
async fn sk_09_close_flushes_what_was_queued_then_closes_without_a_fixed_delay() {
    let group = Group::new();
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    for i in 0..3 {
        group.send("ns", "1", format!("m{i}")).unwrap();
    }
    let start = Instant::now();
    group
        .close("ns", "1", CloseCode::NORMAL, "bye")
        .unwrap()
        .await;
    // No 100 ms guess: the close follows the flush.
    assert_eq!(start.elapsed(), Duration::ZERO);
    let frames = drain_peer(&mut peer);
    assert_eq!(
        frames,
        [
            Frame::Message("m0".into()),
            Frame::Message("m1".into()),
            Frame::Message("m2".into()),
            Frame::Close(CloseCode::NORMAL, "bye".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sk_10_idle_member_is_closed_with_4201_after_120_s() {
    let (group, log) = logged_group(GroupConfig::default());
    let (m, mut peer) = channel(8);
    let joined = Instant::now();
    group.add("ns", "1", m).unwrap();
    // The timer runs from the join, without any send.
    let frame = peer.recv().await;
    assert_eq!(
        frame,
        Some(Frame::Close(CloseCode::IDLE_TIMEOUT, "idle timeout".into()))
    );
    assert_eq!(joined.elapsed(), Duration::from_secs(120));
    settle().await;
    assert_eq!(
        entries(&log),
        ["remove ns/1 Closed(CloseCode(4201))", "empty ns"]
    );
}

#[tokio::test(start_paused = true)]
async fn sk_10_inbound_touch_and_outbound_sends_refresh_the_idle_timer() {
    let group = Group::new();
    let (m, mut peer) = channel(8);
    let start = Instant::now();
    group.add("ns", "1", m).unwrap();
    advance(Duration::from_secs(100)).await;
    group.touch("ns", "1").unwrap();
    advance(Duration::from_secs(100)).await;
    group.send("ns", "1", "out").unwrap();
    assert_eq!(msg(peer.recv().await), "out");
    advance(Duration::from_secs(119)).await;
    settle().await;
    assert!(group.is_open("ns", "1"), "119 s after the last traffic");
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(CloseCode::IDLE_TIMEOUT, "idle timeout".into()))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(320));
}

#[tokio::test(start_paused = true)]
async fn sk_10_idle_timeout_is_configurable_and_can_be_off() {
    let group =
        Group::with_config(GroupConfig::default().with_idle_timeout(Some(Duration::from_secs(5))))
            .unwrap();
    let (m, mut peer) = channel(8);
    let start = Instant::now();
    group.add("ns", "1", m).unwrap();
    assert!(
        matches!(peer.recv().await, Some(Frame::Close(code, _)) if code == CloseCode::IDLE_TIMEOUT)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    let never = Group::with_config(GroupConfig::default().with_idle_timeout(None)).unwrap();
    let (m, mut peer) = channel(8);
    never.add("ns", "1", m).unwrap();
    advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(peer.try_recv().is_none());
    assert!(never.is_open("ns", "1"));
}

#[tokio::test(start_paused = true)]
async fn sk_11_removing_the_last_member_deletes_the_namespace_and_fires_on_empty() {
    let (group, log) = logged_group(GroupConfig::default());
    let (a, _pa) = channel(4);
    let (b, _pb) = channel(4);
    group.add("ns", "a", a).unwrap();
    group.add("ns", "b", b).unwrap();
    group.remove("ns", "a").unwrap();
    assert_eq!(entries(&log), ["remove ns/a Removed"]);
    group.remove("ns", "b").unwrap();
    assert_eq!(
        entries(&log),
        ["remove ns/a Removed", "remove ns/b Removed", "empty ns"]
    );
    assert!(group.namespaces().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sk_12_remove_from_a_missing_namespace_or_id_fires_nothing() {
    let (group, log) = logged_group(GroupConfig::default());
    assert!(group.remove("never", "1").is_err());
    let (a, _pa) = channel(4);
    group.add("ns", "a", a).unwrap();
    assert!(group.remove("ns", "zzz").is_err());
    group.remove("ns", "a").unwrap();
    assert!(group.remove("ns", "a").is_err(), "second remove");
    assert_eq!(entries(&log), ["remove ns/a Removed", "empty ns"]);
    assert!(group.namespaces().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sk_13_close_all_closes_every_member_of_the_namespace_only() {
    let group = Group::new();
    let (a, mut pa) = channel(4);
    let (b, mut pb) = channel(4);
    let (c, mut pc) = channel(4);
    group.add("ns", "a", a).unwrap();
    group.add("ns", "b", b).unwrap();
    group.add("other", "c", c).unwrap();
    let closing = group.close_all("ns", CloseCode::GOING_AWAY, "shutdown");
    assert_eq!(closing.len(), 2);
    for done in closing {
        done.await;
    }
    for peer in [&mut pa, &mut pb] {
        assert_eq!(
            peer.recv().await,
            Some(Frame::Close(CloseCode::GOING_AWAY, "shutdown".into()))
        );
    }
    assert!(pc.try_recv().is_none());
    assert_eq!(group.namespaces(), ["other"]);
}

#[tokio::test(start_paused = true)]
async fn sk_18_to_remote_is_the_id_and_namespace() {
    let group = Group::new();
    let (a, _pa) = channel(4);
    group.add("app-1", "socket-9", a).unwrap();
    assert_eq!(
        group.to_remote("app-1", "socket-9"),
        Some(Remote::new("app-1", "socket-9"))
    );
}

#[tokio::test(start_paused = true)]
async fn sk_20_send_then_close_sends_once_then_closes_once() {
    let group = Group::new();
    let (m, mut peer) = channel(4);
    group.add("ns", "1", m).unwrap();
    group
        .send_then_close("ns", "1", "hello", CloseCode::NORMAL, "bye")
        .unwrap()
        .await;
    assert_eq!(
        drain_peer(&mut peer),
        [
            Frame::Message("hello".into()),
            Frame::Close(CloseCode::NORMAL, "bye".into())
        ]
    );
    assert!(peer.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn sk_21_on_add_check_rejects_and_on_remove_sees_every_departure() {
    let log: Log = Arc::default();
    let l = log.clone();
    let group = Group::builder()
        .on_add(|r| {
            if r.namespace == "known-app" {
                Ok(())
            } else {
                Err(NotFound::new(r.namespace.clone()).into())
            }
        })
        .on_remove(move |r, why| l.lock().unwrap().push(format!("{} {why:?}", r.id)))
        .build()
        .unwrap();
    let (m, _p) = channel(4);
    let rejected = group.add("unknown-app", "1", m).unwrap_err();
    assert!(rejected.is::<NotFound>());
    // The caller gets the member back to tell its peer (Pusher sends 4009, then closes).
    let (_member, reason) = rejected.into_parts();
    assert_eq!(reason.to_string(), "not found: unknown-app");
    assert!(group.namespaces().is_empty());

    let (a, _pa) = channel(4);
    let (b, _pb) = channel(4);
    group.add("known-app", "a", a).unwrap();
    group.add("known-app", "b", b).unwrap();
    group.remove("known-app", "a").unwrap();
    group
        .close("known-app", "b", CloseCode::UNAUTHORIZED, "")
        .unwrap()
        .await;
    assert_eq!(entries(&log), ["a Removed", "b Closed(CloseCode(4009))"]);
}

#[tokio::test(start_paused = true)]
async fn coalesced_writes_flush_far_less_often_than_once_per_message() {
    let group = Group::new();
    let (m, mut peer) = channel(256);
    group.add("ns", "1", m).unwrap();
    for i in 0..100u32 {
        group.broadcast("ns", i.to_be_bytes().to_vec(), &[]);
    }
    settle().await;
    let frames = drain_peer(&mut peer);
    assert_eq!(frames.len(), 100);
    assert!(
        peer.flushes() <= 2,
        "{} flushes for 100 messages",
        peer.flushes()
    );
    assert_eq!(
        group.stats("ns", "1"),
        Some(stats(100, 0, 0)),
        "sent, dropped, queued"
    );
}

fn stats(sent: u64, dropped: u64, queued: u64) -> MemberStats {
    let mut s = MemberStats::default();
    s.sent = sent;
    s.dropped = dropped;
    s.queued = queued;
    s
}

/// A group whose members queue at most 3 messages, with a member whose peer does not read yet.
async fn slow(policy: SlowConsumer) -> (Group, ChannelPeer) {
    let config = GroupConfig::default()
        .with_max_queued_messages(3)
        .with_slow_consumer(policy);
    let group = Group::with_config(config).unwrap();
    // The writer holds one message waiting for the channel of one, the queue holds three.
    let (m, peer) = channel(1);
    group.add("ns", "1", m).unwrap();
    group.send("ns", "1", "m0").unwrap();
    group.send("ns", "1", "m1").unwrap();
    settle().await;
    for i in 2..5 {
        group.send("ns", "1", format!("m{i}")).unwrap();
    }
    (group, peer)
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_drop_newest_keeps_the_queue_and_counts_the_drop() {
    let (group, mut peer) = slow(SlowConsumer::DropNewest).await;
    let err = group.send("ns", "1", "m5").unwrap_err();
    assert!(err.is::<Overloaded>());
    assert_eq!(group.broadcast("ns", "m6", &[]).dropped, 1);
    // m0 is in the channel, m1 waits in the writer, m2..m4 are queued.
    assert_eq!(group.stats("ns", "1"), Some(stats(1, 2, 3)));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(msg(peer.recv().await));
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_drop_oldest_keeps_the_latest() {
    let (group, mut peer) = slow(SlowConsumer::DropOldest).await;
    group.send("ns", "1", "m5").unwrap();
    group.send("ns", "1", "m6").unwrap();
    assert_eq!(group.stats("ns", "1").map(|s| s.dropped), Some(2));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(msg(peer.recv().await));
    }
    assert_eq!(got, ["m0", "m1", "m4", "m5", "m6"]);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_close_discards_the_queue_and_closes_with_the_code() {
    let (group, mut peer) = slow(SlowConsumer::Close(CloseCode::OVER_LIMIT)).await;
    assert!(group.send("ns", "1", "m5").unwrap_err().is::<Overloaded>());
    assert!(group.send("ns", "1", "m6").unwrap_err().is::<Closed>());
    let frames: Vec<Frame> = {
        let mut v = Vec::new();
        while let Some(f) = peer.recv().await {
            v.push(f);
        }
        v
    };
    assert_eq!(
        frames,
        [
            Frame::Message("m0".into()),
            Frame::Message("m1".into()),
            Frame::Close(CloseCode::OVER_LIMIT, "slow consumer".into())
        ]
    );
    settle().await;
    assert!(!group.contains("ns", "1"));
}

#[tokio::test(start_paused = true)]
async fn max_queued_bytes_bounds_the_queue() {
    let config = GroupConfig::default()
        .with_max_queued_bytes(10)
        .with_slow_consumer(SlowConsumer::DropOldest);
    let group = Group::with_config(config).unwrap();
    let (m, _peer) = channel(1);
    group.add("ns", "1", m).unwrap();
    // Larger than the whole bound: never queued, whatever the policy.
    assert!(
        group
            .send("ns", "1", vec![0u8; 11])
            .unwrap_err()
            .is::<Overloaded>()
    );
    group.send("ns", "1", vec![0u8; 6]).unwrap();
    group.send("ns", "1", vec![0u8; 6]).unwrap();
    assert_eq!(group.stats("ns", "1"), Some(stats(0, 2, 1)));
}

/// A member whose sink fails at the first message.
struct Broken;

impl Sink<Bytes> for Broken {
    type Error = BoxError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("connection reset".into()))
    }
    fn start_send(self: Pin<&mut Self>, _: Bytes) -> Result<(), BoxError> {
        Err("connection reset".into())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
}

impl Member for Broken {
    fn start_close(self: Pin<&mut Self>, _: CloseCode, _: &str) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn failing_member_leaves_without_disturbing_the_others() {
    let (group, log) = logged_group(GroupConfig::default());
    let (good, mut good_peer) = channel(8);
    let (gone, gone_peer) = channel(8);
    group.add("ns", "broken", Broken).unwrap();
    group.add("ns", "good", good).unwrap();
    group.add("ns", "gone", gone).unwrap();
    drop(gone_peer);
    let summary = group.broadcast("ns", "x", &[]);
    assert_eq!(summary.delivered, 3);
    assert_eq!(msg(good_peer.recv().await), "x");
    settle().await;
    assert_eq!(group.ids("ns"), ["good"]);
    let mut seen = entries(&log);
    seen.sort();
    assert_eq!(seen, ["remove ns/broken Failed", "remove ns/gone Failed"]);
    assert_eq!(group.broadcast("ns", "y", &[]).delivered, 1);
}

/// A member that never finishes its close.
struct NeverCloses;

impl Sink<Bytes> for NeverCloses {
    type Error = Infallible;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: Bytes) -> Result<(), Infallible> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }
}

impl Member for NeverCloses {
    fn start_close(self: Pin<&mut Self>, _: CloseCode, _: &str) -> Result<(), Infallible> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_that_never_finishes_is_cut_at_the_close_timeout() {
    let (group, log) = logged_group(GroupConfig::default());
    group.add("ns", "1", NeverCloses).unwrap();
    let start = Instant::now();
    group.close("ns", "1", CloseCode::NORMAL, "").unwrap().await;
    assert_eq!(start.elapsed(), GroupConfig::DEFAULT_CLOSE_TIMEOUT);
    assert_eq!(entries(&log), ["remove ns/1 CloseTimedOut", "empty ns"]);
}

#[tokio::test(start_paused = true)]
async fn remove_drops_the_member_without_a_close() {
    let group = Group::new();
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    group.remove("ns", "1").unwrap();
    assert!(peer.recv().await.is_none(), "dropped, no close frame");
}

#[test]
fn adding_outside_a_runtime_is_a_typed_error() {
    let group = Group::new();
    let (m, _peer) = channel(1);
    assert!(group.add("ns", "1", m).unwrap_err().is::<NoRuntime>());
    assert!(group.is_empty());
}

#[test]
fn settings_that_cannot_work_are_rejected() {
    let bad = [
        GroupConfig::default().with_max_queued_messages(0),
        GroupConfig::default().with_max_queued_bytes(0),
        GroupConfig::default().with_idle_timeout(Some(Duration::ZERO)),
        GroupConfig::default().with_close_timeout(Duration::ZERO),
    ];
    for config in bad {
        let err: BoxError = Group::with_config(config).unwrap_err().into();
        assert!(err.is::<InvalidConfig>());
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_every_writer() {
    let group = Group::new();
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    let clone = group.clone();
    drop(group);
    settle().await;
    assert!(clone.is_open("ns", "1"), "a clone keeps the group alive");
    drop(clone);
    assert!(peer.recv().await.is_none(), "the member was dropped");
}

#[tokio::test(start_paused = true)]
async fn huge_timeouts_do_not_overflow() {
    let config = GroupConfig::default()
        .with_idle_timeout(Some(Duration::MAX))
        .with_close_timeout(Duration::MAX);
    let group = Group::with_config(config).unwrap();
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    group.send("ns", "1", "x").unwrap();
    group.close("ns", "1", CloseCode::NORMAL, "").unwrap().await;
    assert_eq!(msg(peer.recv().await), "x");
    assert!(matches!(peer.recv().await, Some(Frame::Close(..))));
}

#[tokio::test(start_paused = true)]
async fn hooks_may_call_the_group() {
    let seen: Log = Arc::default();
    let s = seen.clone();
    let slot: Arc<Mutex<Option<Group>>> = Arc::default();
    let g = slot.clone();
    let group = Group::builder()
        .on_empty(move |ns| {
            let group = g.lock().unwrap().clone().unwrap();
            s.lock()
                .unwrap()
                .push(format!("{ns} empty, {} left", group.len()));
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(group.clone());
    let (a, _pa) = channel(4);
    let (b, _pb) = channel(4);
    group.add("x", "a", a).unwrap();
    group.add("y", "b", b).unwrap();
    group.remove("x", "a").unwrap();
    group.close("y", "b", CloseCode::NORMAL, "").unwrap().await;
    assert_eq!(entries(&seen), ["x empty, 1 left", "y empty, 0 left"]);
    slot.lock().unwrap().take();
}

#[tokio::test]
async fn broadcast_many_is_k_broadcasts_with_one_wake_and_one_flush_per_member() {
    let config = GroupConfig::default()
        .with_max_queued_messages(3)
        .with_slow_consumer(SlowConsumer::DropNewest);
    let group = Group::with_config(config).unwrap();
    let (a, mut pa) = channel(16);
    let (b, mut pb) = channel(16);
    let (c, mut pc) = channel(16);
    group.add("ns", "a", a).unwrap();
    group.add("ns", "b", b).unwrap();
    group.add("ns", "c", c).unwrap();
    settle().await;
    let burst: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i}"))).collect();
    // Nothing is taken while the burst is queued: each queue holds 3 of the 5, the rest are dropped by the policy.
    let summary = group.broadcast_many("ns", &burst, &["c"]);
    assert_eq!(
        (summary.delivered, summary.dropped, summary.skipped),
        (6, 4, 0)
    );
    settle().await;
    for peer in [&mut pa, &mut pb] {
        let got: Vec<Bytes> = drain_peer(peer).into_iter().map(|f| msg(Some(f))).collect();
        assert_eq!(got, burst[..3]);
        assert_eq!(peer.flushes(), 1, "one flush for the burst");
    }
    assert!(pc.try_recv().is_none(), "an excluded member gets nothing");
    assert_eq!(group.broadcast_many("none", &burst, &[]).delivered, 0);
}

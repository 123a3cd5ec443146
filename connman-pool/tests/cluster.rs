//! The cluster module over the in-process broker, on paused time: CL-01, CL-02, CL-03, CL-04 and CL-06.
#![cfg(feature = "redis")]

use std::time::Duration;

use bytes::Bytes;
use connman_core::error::NotFound;
use connman_core::member::CloseCode;
use connman_pool::cluster::{Answer, Cluster, ClusterConfig, ClusterEvent, MemoryHub, Partial};
use connman_pool::group::{ChannelPeer, Frame, channel};
use tokio::time::{Instant, sleep};

fn config() -> ClusterConfig {
    ClusterConfig::default()
}

fn start(hub: &MemoryHub, config: ClusterConfig) -> Cluster {
    Cluster::start(hub.connect(), config).expect("valid config")
}

/// Every frame a peer has now, without waiting for more.
fn drain_now(peer: &mut ChannelPeer) -> Vec<Bytes> {
    let mut got = Vec::new();
    while let Some(frame) = peer.try_recv() {
        match frame {
            Frame::Message(b) => got.push(b),
            Frame::Close(..) => {}
        }
    }
    got
}

/// Lets every task run; on paused time the clock moves only once everything is idle.
async fn settle() {
    sleep(Duration::from_millis(10)).await;
}

async fn nodes_with_members(
    hub: &MemoryHub,
    per_node: usize,
) -> (Vec<Cluster>, Vec<Vec<ChannelPeer>>) {
    let nodes: Vec<Cluster> = (0..3).map(|_| start(hub, config())).collect();
    let mut peers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut mine = Vec::new();
        for m in 0..per_node {
            let (member, peer) = channel(1024);
            node.add("chat", format!("n{n}m{m}"), member)
                .expect("added");
            mine.push(peer);
        }
        node.subscribed("chat").await;
        peers.push(mine);
    }
    for node in &nodes {
        node.wait_nodes(3).await;
    }
    (nodes, peers)
}

/// Checks that `got` holds each of `publishers × count` messages once, in each publisher's order.
fn assert_once_in_order(got: &[Bytes], publishers: usize, count: usize) {
    let mut seen = vec![Vec::new(); publishers];
    for msg in got {
        let text = std::str::from_utf8(msg).expect("utf-8");
        let (p, i) = text.split_once(':').expect("p:i");
        seen[p.parse::<usize>().expect("publisher")].push(i.parse::<usize>().expect("index"));
    }
    for (p, list) in seen.iter().enumerate() {
        assert_eq!(
            *list,
            (0..count).collect::<Vec<_>>(),
            "publisher {p}: each once, in order"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cl_01_broadcast_reaches_every_member_on_every_node_exactly_once() {
    let hub = MemoryHub::new();
    let (nodes, mut peers) = nodes_with_members(&hub, 3).await;
    for i in 0..50 {
        for (p, node) in nodes.iter().enumerate() {
            let publish = node.broadcast("chat", format!("{p}:{i}"));
            assert_eq!(
                publish.local().delivered,
                3,
                "the publisher's own members at once"
            );
            publish.await.expect("published");
        }
        // Let the nodes take the round from their inboxes, as they would on a real link.
        settle().await;
    }
    for mine in &mut peers {
        for peer in mine {
            assert_once_in_order(&drain_now(peer), 3, 50);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cl_01_publishing_node_serves_its_members_without_the_broker() {
    let hub = MemoryHub::new();
    let (nodes, mut peers) = nodes_with_members(&hub, 1).await;
    // Node 0 hears nothing from the broker any more: its member still gets node 0's broadcasts, at once, once.
    hub.cut(nodes[0].node());
    let publish = nodes[0].broadcast("chat", "0:0");
    assert_eq!(publish.local().delivered, 1);
    assert_eq!(
        peers[0][0].recv().await,
        Some(Frame::Message(Bytes::from("0:0")))
    );
    publish.await.expect("published");
    settle().await;
    assert!(drain_now(&mut peers[0][0]).is_empty(), "no second copy");
    assert_eq!(drain_now(&mut peers[1][0]), [Bytes::from("0:0")]);
    assert_eq!(drain_now(&mut peers[2][0]), [Bytes::from("0:0")]);
}

#[tokio::test(start_paused = true)]
async fn cl_02_subscribes_on_first_join_and_unsubscribes_on_last_leave() {
    let hub = MemoryHub::new();
    let node = start(&hub, config());
    assert!(hub.subscribers("room").is_empty());
    let (a, _pa) = channel(4);
    let (b, _pb) = channel(4);
    node.add("room", "a", a).expect("a");
    node.group()
        .add("room", "b", b)
        .expect("b added through the group itself");
    settle().await;
    assert_eq!(hub.subscribers("room"), [node.node().clone()]);
    node.group().remove("room", "a").expect("a");
    settle().await;
    assert_eq!(hub.subscribers("room").len(), 1, "b is still there");
    node.group().remove("room", "b").expect("b");
    settle().await;
    assert!(
        hub.subscribers("room").is_empty(),
        "the real last leave unsubscribes"
    );
    // And a member whose close is done leaves by itself, which unsubscribes too.
    let (c, mut pc) = channel(4);
    node.add("room", "c", c).expect("c");
    node.subscribed("room").await;
    assert_eq!(hub.subscribers("room").len(), 1);
    node.group()
        .close("room", "c", CloseCode::NORMAL, "bye")
        .expect("c")
        .await;
    assert!(matches!(pc.recv().await, Some(Frame::Close(..))));
    settle().await;
    assert!(hub.subscribers("room").is_empty());
}

#[tokio::test(start_paused = true)]
async fn cl_02_gap_is_filled_from_history_in_order() {
    let hub = MemoryHub::new();
    let (nodes, mut peers) = nodes_with_members(&hub, 1).await;
    for i in 0..5 {
        nodes[0]
            .broadcast("chat", format!("0:{i}"))
            .await
            .expect("published");
    }
    settle().await;
    // Node 2's link blinks: what is published meanwhile never reaches it by pub/sub.
    hub.cut(nodes[2].node());
    for i in 5..15 {
        nodes[0]
            .broadcast("chat", format!("0:{i}"))
            .await
            .expect("published");
    }
    settle().await;
    hub.heal(nodes[2].node());
    for i in 15..20 {
        nodes[0]
            .broadcast("chat", format!("0:{i}"))
            .await
            .expect("published");
    }
    settle().await;
    assert_once_in_order(&drain_now(&mut peers[2][0]), 1, 20);
    assert_once_in_order(&drain_now(&mut peers[1][0]), 1, 20);
}

#[tokio::test(start_paused = true)]
async fn cl_02_full_inbox_loses_nothing() {
    let hub = MemoryHub::new();
    let publisher = start(&hub, config());
    let small = start(&hub, config().with_inbox_capacity(4).with_history_batch(7));
    let (member, mut peer) = channel(4096);
    small.add("chat", "m", member).expect("added");
    small.subscribed("chat").await;
    // 500 messages in one go: the inbox takes 4, the rest is read back from the history.
    for i in 0..500 {
        drop(publisher.broadcast("chat", format!("0:{i}")));
    }
    settle().await;
    assert_once_in_order(&drain_now(&mut peer), 1, 500);
}

#[tokio::test(start_paused = true)]
async fn cl_02_epoch_change_is_reported_when_history_is_gone() {
    let hub = MemoryHub::new();
    let (nodes, mut peers) = nodes_with_members(&hub, 1).await;
    let mut events = nodes[2].events();
    let first = nodes[0].broadcast("chat", "0:0").await.expect("published");
    settle().await;
    hub.cut(nodes[2].node());
    nodes[0].broadcast("chat", "lost").await.expect("published");
    // The broker loses the namespace's history; the next publish starts a new epoch.
    hub.forget("chat");
    let after = nodes[0]
        .broadcast("chat", "new:0")
        .await
        .expect("published");
    assert_ne!(after.epoch, first.epoch);
    assert_eq!(after.offset, 1);
    hub.heal(nodes[2].node());
    nodes[0]
        .broadcast("chat", "new:1")
        .await
        .expect("published");
    settle().await;
    let got = drain_now(&mut peers[2][0]);
    assert_eq!(got, ["0:0", "new:0", "new:1"].map(Bytes::from));
    let mut changed = None;
    while let Ok(event) = events.try_recv() {
        if let ClusterEvent::EpochChanged {
            old,
            new,
            delivered,
            ..
        } = event
        {
            changed = Some((old, new, delivered));
        }
    }
    assert_eq!(
        changed,
        Some((first.epoch, Some(after.epoch), 1)),
        "the application is told"
    );
}

#[tokio::test(start_paused = true)]
async fn cl_02_trimmed_history_is_reported_as_missed() {
    let hub = MemoryHub::with_history(5);
    let (nodes, mut peers) = nodes_with_members(&hub, 1).await;
    let mut events = nodes[1].events();
    hub.cut(nodes[1].node());
    for i in 0..20 {
        nodes[0]
            .broadcast("chat", format!("0:{i}"))
            .await
            .expect("published");
    }
    hub.heal(nodes[1].node());
    settle().await;
    let got = drain_now(&mut peers[1][0]);
    assert_eq!(
        got,
        (15..20)
            .map(|i| Bytes::from(format!("0:{i}")))
            .collect::<Vec<_>>()
    );
    let mut missed = None;
    while let Ok(event) = events.try_recv() {
        if let ClusterEvent::Missed { first, last, .. } = event {
            missed = Some((first, last));
        }
    }
    assert_eq!(missed, Some((1, 15)));
}

#[tokio::test(start_paused = true)]
async fn cl_03_dead_node_leaves_after_timeout_and_restarts_with_a_new_id() {
    let hub = MemoryHub::new();
    let a = start(&hub, config());
    let b = start(&hub, config());
    a.wait_nodes(2).await;
    let mut events = a.events();
    let old = b.node().clone();
    drop(b);
    let dropped = Instant::now();
    sleep(Duration::from_secs(3)).await;
    assert_eq!(a.nodes().len(), 2, "still within the node timeout");
    a.wait_nodes(1).await;
    let gone = dropped.elapsed();
    assert!(
        gone >= ClusterConfig::DEFAULT_NODE_TIMEOUT,
        "left after {gone:?}"
    );
    assert!(
        gone <= ClusterConfig::DEFAULT_NODE_TIMEOUT + Duration::from_secs(2),
        "left after {gone:?}"
    );
    assert_eq!(
        events.recv().await.ok(),
        Some(ClusterEvent::NodeLeft(old.clone()))
    );
    let again = start(&hub, config());
    assert_ne!(again.node(), &old);
    a.wait_nodes(2).await;
    assert!(a.nodes().contains(again.node()));
    // A node that shuts down leaves at once.
    again.shutdown().await;
    sleep(ClusterConfig::DEFAULT_HEARTBEAT_INTERVAL * 2).await;
    assert_eq!(a.nodes(), [a.node().clone()]);
}

#[tokio::test(start_paused = true)]
async fn cl_04_cross_node_queries_answer_and_say_when_partial() {
    let hub = MemoryHub::new();
    let (mut nodes, mut peers) = nodes_with_members(&hub, 2).await;
    let a = &nodes[0];
    assert_eq!(a.count("chat").await, Answer::Complete(6));
    let mut members = a.members("chat").await.into_result().expect("complete");
    members.sort();
    assert_eq!(members, ["n0m0", "n0m1", "n1m0", "n1m1", "n2m0", "n2m1"]);
    assert_eq!(a.is_member("chat", "n2m1").await, Answer::Complete(true));
    assert_eq!(a.is_member("chat", "nobody").await, Answer::Complete(false));
    a.send_to("chat", "n1m0", "just you").await.expect("sent");
    settle().await;
    assert_eq!(drain_now(&mut peers[1][0]), [Bytes::from("just you")]);
    assert!(drain_now(&mut peers[1][1]).is_empty());
    let err = a
        .send_to("chat", "nobody", "x")
        .await
        .expect_err("no such member");
    assert!(err.is::<NotFound>());

    // Node 2 stops without a word: until its heartbeats are missed, questions come back partial, within the timeout.
    let stopped = nodes.pop().expect("three nodes");
    drop(stopped);
    let a = &nodes[0];
    let asked = Instant::now();
    let answer = a.count("chat").await;
    assert_eq!(
        answer,
        Answer::Partial {
            value: 4,
            answered: 2,
            expected: 3
        }
    );
    assert!(asked.elapsed() <= ClusterConfig::DEFAULT_QUERY_TIMEOUT + Duration::from_millis(50));
    assert!(!a.is_member("chat", "n2m0").await.is_complete());
    let err = a
        .send_to("chat", "n2m0", "x")
        .await
        .expect_err("not reachable");
    assert_eq!(
        err.downcast_ref::<Partial>()
            .map(|p| (p.answered(), p.expected())),
        Some((2, 3))
    );
    // Once the registry has dropped it, answers are complete again.
    a.wait_nodes(2).await;
    assert_eq!(a.count("chat").await, Answer::Complete(4));
}

#[tokio::test(start_paused = true)]
async fn cl_06_close_all_reaches_every_node() {
    let hub = MemoryHub::new();
    let (nodes, mut peers) = nodes_with_members(&hub, 2).await;
    assert_eq!(
        nodes[1]
            .close_all("chat", CloseCode::GOING_AWAY, "bye")
            .await,
        Answer::Complete(6)
    );
    for mine in &mut peers {
        for peer in mine {
            assert_eq!(
                peer.recv().await,
                Some(Frame::Close(CloseCode::GOING_AWAY, "bye".into()))
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cl_06_cluster_drain_holds_the_cluster_wide_rate() {
    let hub = MemoryHub::new();
    let (nodes, peers) = nodes_with_members(&hub, 12).await;
    let start = Instant::now();
    let mut closes = Vec::new();
    for mine in peers {
        for mut peer in mine {
            closes.push(tokio::spawn(async move {
                while let Some(frame) = peer.recv().await {
                    if let Frame::Close(code, _) = frame {
                        return Some((Instant::now(), code));
                    }
                }
                None
            }));
        }
    }
    assert!(
        nodes[0].drain(2).await.is_err(),
        "below one per second per node"
    );
    // 6 per second for the cluster: 2 per second on each of the 3 nodes.
    assert_eq!(nodes[0].drain(6).await, Ok(Answer::Complete(36)));
    let mut at = Vec::new();
    for close in closes {
        let (when, code) = close.await.expect("task").expect("closed");
        assert_eq!(code, CloseCode::RECONNECT);
        at.push(when - start);
    }
    at.sort();
    // No 1-second window sees more than 6 closes, and 36 closes at 6/s take about 6 s.
    for (i, t) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(within <= 6, "{within} closes within 1 s from {t:?}");
    }
    let last = *at.last().expect("closes");
    assert!(
        last >= Duration::from_millis(5400) && last <= Duration::from_secs(7),
        "took {last:?}"
    );
}

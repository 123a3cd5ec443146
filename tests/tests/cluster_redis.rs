//! The cluster module against a real redis-server: three nodes on loopback, real faults (CL-01 … CL-06).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{Elapsed, Overloaded};
use connman_core::member::CloseCode;
use connman_pool::cluster::{
    Answer, Cluster, ClusterConfig, ClusterEvent, Position, RedisBroker, RedisConfig,
};
use connman_pool::group::{ChannelPeer, Frame, channel};
use connman_tests::peers::Redis;
use tokio::time::{Instant, timeout};

/// The longest any outcome below may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn cluster_config() -> ClusterConfig {
    ClusterConfig::default()
        .with_heartbeat_interval(Duration::from_millis(200))
        .with_node_timeout(Duration::from_millis(1500))
        .with_query_timeout(Duration::from_millis(1000))
}

fn node(redis: &Redis, config: RedisConfig) -> Cluster {
    let broker = RedisBroker::connect(redis.addr(), config).expect("valid redis config");
    Cluster::start(broker, cluster_config()).expect("valid cluster config")
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match timeout(PATIENCE, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} took longer than {PATIENCE:?}"),
    }
}

/// Three nodes, each with `per_node` members of "chat", all subscribed and knowing each other.
async fn three_nodes(redis: &Redis, per_node: usize) -> (Vec<Cluster>, Vec<Vec<ChannelPeer>>) {
    let nodes: Vec<Cluster> = (0..3)
        .map(|_| node(redis, RedisConfig::default()))
        .collect();
    let mut peers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut mine = Vec::new();
        for m in 0..per_node {
            let (member, peer) = channel(8192);
            node.add("chat", format!("n{n}m{m}"), member)
                .expect("added");
            mine.push(peer);
        }
        peers.push(mine);
    }
    for node in &nodes {
        within("subscribing", node.subscribed("chat")).await;
        within("meeting the other nodes", node.wait_nodes(3)).await;
    }
    (nodes, peers)
}

/// Reads `n` messages from a peer.
async fn take(peer: &mut ChannelPeer, n: usize) -> Vec<Bytes> {
    let mut got = Vec::with_capacity(n);
    within("the messages to arrive", async {
        while got.len() < n {
            match peer.recv().await {
                Some(Frame::Message(b)) => got.push(b),
                other => panic!("expected a message, got {other:?}"),
            }
        }
    })
    .await;
    got
}

/// Splits `p:i` messages by publisher.
fn by_publisher(got: &[Bytes]) -> HashMap<usize, Vec<usize>> {
    let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
    for msg in got {
        let text = std::str::from_utf8(msg).expect("utf-8");
        let (p, i) = text.split_once(':').expect("p:i");
        seen.entry(p.parse().expect("publisher"))
            .or_default()
            .push(i.parse().expect("index"));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_01_broadcasts_from_every_node_reach_every_member_once_in_order() {
    let redis = Redis::start(&[]).await;
    let (nodes, mut peers) = three_nodes(&redis, 3).await;
    const EACH: usize = 200;
    let mut publishers = Vec::new();
    for (p, node) in nodes.iter().enumerate() {
        let node = node.clone();
        publishers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..EACH {
                pending.push(node.broadcast("chat", format!("{p}:{i}")));
            }
            for publish in pending {
                publish.await.expect("published");
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    for mine in &mut peers {
        for peer in mine {
            let got = take(peer, 3 * EACH).await;
            let seen = by_publisher(&got);
            for p in 0..3 {
                assert_eq!(
                    seen[&p],
                    (0..EACH).collect::<Vec<_>>(),
                    "publisher {p}: once each, in order"
                );
            }
        }
    }
}

/// redis-server is killed -9 for 2 s while every node publishes, then restarted with its append-only file: every
/// member gets every message, once, in each publisher's order, and no history was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_02_cl_05_broker_killed_under_load_loses_nothing_with_aof() {
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let (nodes, mut peers) = three_nodes(&redis, 2).await;
    let mut events: Vec<_> = nodes.iter().map(Cluster::events).collect();
    const EACH: usize = 300;
    let mut publishers = Vec::new();
    for (p, node) in nodes.iter().enumerate() {
        let node = node.clone();
        publishers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..EACH {
                pending.push(node.broadcast("chat", format!("{p}:{i}")));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut outcomes = Vec::new();
            for publish in pending {
                outcomes.push(publish.await);
            }
            outcomes
        }));
    }
    // Under load: kill it, keep it down for 2 s, bring it back on the same port and folder.
    let early = take(&mut peers[1][0], 30).await;
    redis.kill9().await;
    let killed = Instant::now();
    // The publishing nodes' own members go on getting their broadcasts while the broker is down (CL-05).
    let before = take(&mut peers[0][1], 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = take(&mut peers[0][1], 20).await;
    assert!(killed.elapsed() >= Duration::from_secs(2));
    assert!(!before.is_empty() && during.len() == 20);
    redis.restart().await;
    for publisher in publishers {
        let outcomes = publisher.await.expect("publisher");
        for outcome in outcomes {
            outcome.expect("every publish went out after the reconnect");
        }
    }
    for (n, mine) in peers.iter_mut().enumerate() {
        for (m, peer) in mine.iter_mut().enumerate() {
            let mut got = match (n, m) {
                (1, 0) => early.clone(),
                (0, 1) => [before.clone(), during.clone()].concat(),
                _ => Vec::new(),
            };
            got.extend(take(peer, 3 * EACH - got.len()).await);
            let seen = by_publisher(&got);
            for p in 0..3 {
                let list = seen.get(&p).cloned().unwrap_or_default();
                assert_eq!(
                    list,
                    (0..EACH).collect::<Vec<_>>(),
                    "member {n}/{m}: all of {p}'s, once, in order"
                );
            }
            assert!(peer.try_recv().is_none(), "nothing more");
        }
    }
    for rx in &mut events {
        while let Ok(event) = rx.try_recv() {
            assert!(
                !matches!(
                    event,
                    ClusterEvent::EpochChanged { .. } | ClusterEvent::Missed { .. }
                ),
                "the history survived: {event:?}"
            );
        }
    }
}

/// Without persistence the restarted redis-server has no history: the nodes say so with an epoch change, then
/// deliver the new epoch from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_02_history_lost_with_the_broker_is_reported_as_an_epoch_change() {
    let mut redis = Redis::start(&[]).await;
    let (nodes, mut peers) = three_nodes(&redis, 1).await;
    let mut events = nodes[2].events();
    let first: Position = nodes[0].broadcast("chat", "0:0").await.expect("published");
    assert_eq!(take(&mut peers[2][0], 1).await, ["0:0"]);
    redis.kill9().await;
    redis.restart().await;
    let after = within(
        "a publish after the restart",
        nodes[0].broadcast("chat", "0:1"),
    )
    .await
    .expect("published");
    assert_ne!(after.epoch, first.epoch, "a new epoch");
    assert_eq!(after.offset, 1);
    within("the epoch change", async {
        loop {
            match events.recv().await {
                Ok(ClusterEvent::EpochChanged { old, delivered, .. }) => {
                    assert_eq!((old, delivered), (first.epoch, 1));
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await;
    nodes[1].broadcast("chat", "1:0").await.expect("published");
    let got = take(&mut peers[2][0], 2).await;
    assert_eq!(got, ["0:1", "1:0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_03_dead_node_leaves_after_timeout_and_returns_with_a_new_id() {
    let redis = Redis::start(&[]).await;
    let a = node(&redis, RedisConfig::default());
    let b = node(&redis, RedisConfig::default());
    within("meeting", a.wait_nodes(2)).await;
    let old = b.node().clone();
    // b stops without leaving: a sees it go once its heartbeats are overdue, not before.
    drop(b);
    let stopped = Instant::now();
    within("the dead node to leave", a.wait_nodes(1)).await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1000),
        "left after {:?}",
        stopped.elapsed()
    );
    let again = node(&redis, RedisConfig::default());
    assert_ne!(again.node(), &old);
    within("the restarted node to join", a.wait_nodes(2)).await;
    assert!(a.nodes().contains(again.node()));
    assert!(!a.nodes().contains(&old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_04_queries_across_nodes_and_partial_when_a_node_stops() {
    let redis = Redis::start(&[]).await;
    let (mut nodes, mut peers) = three_nodes(&redis, 2).await;
    assert_eq!(nodes[0].count("chat").await, Answer::Complete(6));
    assert_eq!(
        nodes[0].is_member("chat", "n2m1").await,
        Answer::Complete(true)
    );
    let mut members = nodes[1]
        .members("chat")
        .await
        .into_result()
        .expect("complete");
    members.sort();
    assert_eq!(members, ["n0m0", "n0m1", "n1m0", "n1m1", "n2m0", "n2m1"]);
    nodes[0]
        .send_to("chat", "n2m1", "just you")
        .await
        .expect("sent");
    assert_eq!(take(&mut peers[2][1], 1).await, ["just you"]);

    let stopped = nodes.pop().expect("three");
    drop(stopped);
    let asked = Instant::now();
    let answer = nodes[0].count("chat").await;
    assert_eq!(
        answer,
        Answer::Partial {
            value: 4,
            answered: 2,
            expected: 3
        }
    );
    assert!(
        asked.elapsed() < Duration::from_millis(1000) + Duration::from_secs(1),
        "within the timeout"
    );
    within("the registry to drop it", nodes[0].wait_nodes(2)).await;
    assert_eq!(nodes[0].count("chat").await, Answer::Complete(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_05_publishes_wait_for_the_broker_or_fail_typed() {
    let mut redis = Redis::start(&[]).await;
    let (nodes, mut peers) = three_nodes(&redis, 1).await;
    redis.kill9().await;
    // Local delivery goes on; the publish waits in the bounded queue.
    let publish = nodes[0].broadcast("chat", "0:0");
    assert_eq!(publish.local().delivered, 1);
    assert_eq!(take(&mut peers[0][0], 1).await, ["0:0"]);
    let waiting = tokio::spawn(publish);
    redis.restart().await;
    within("the queued publish", waiting)
        .await
        .expect("task")
        .expect("went out after the reconnect");
    assert_eq!(take(&mut peers[1][0], 1).await, ["0:0"]);
    assert_eq!(take(&mut peers[2][0], 1).await, ["0:0"]);

    // A broker down past the max wait fails the publish with `Elapsed`; a full queue with `Overloaded`.
    let short = RedisConfig::default()
        .with_max_wait(Duration::from_millis(300))
        .with_queue_capacity(4);
    let lonely = node(&redis, short);
    redis.kill9().await;
    let mut outcomes = Vec::new();
    for i in 0..12 {
        outcomes.push(lonely.broadcast("chat", format!("x{i}")));
    }
    let mut elapsed = 0;
    let mut overloaded = 0;
    for outcome in outcomes {
        let err = within("a typed failure", outcome)
            .await
            .expect_err("broker down");
        if err.is::<Elapsed>() {
            elapsed += 1;
        } else if err.is::<Overloaded>() {
            overloaded += 1;
        } else {
            panic!("untyped failure: {err}");
        }
    }
    assert!(
        elapsed >= 1 && overloaded >= 1,
        "{elapsed} elapsed, {overloaded} overloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_06_close_all_and_drain_across_the_cluster() {
    let redis = Redis::start(&[]).await;
    let (nodes, mut peers) = three_nodes(&redis, 2).await;
    assert_eq!(
        nodes[0]
            .close_all("chat", CloseCode::GOING_AWAY, "bye")
            .await,
        Answer::Complete(6)
    );
    for mine in &mut peers {
        for peer in mine {
            let frame = within("the close", peer.recv()).await;
            assert_eq!(
                frame,
                Some(Frame::Close(CloseCode::GOING_AWAY, "bye".into()))
            );
        }
    }
    // 5 members per node, 15 per second for the cluster: 5 per second per node, so about 0.8 s in all.
    let mut peers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for m in 0..5 {
            let (member, peer) = channel(16);
            node.add("room", format!("n{n}m{m}"), member)
                .expect("added");
            peers.push(peer);
        }
    }
    let start = Instant::now();
    assert_eq!(nodes[1].drain(15).await, Ok(Answer::Complete(15)));
    for peer in &mut peers {
        let frame = within("the drain's close", peer.recv()).await;
        assert!(
            matches!(frame, Some(Frame::Close(CloseCode::RECONNECT, _))),
            "{frame:?}"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "paced: {:?}",
        start.elapsed()
    );
}

//! A group across three nodes: each node has members of one namespace and broadcasts to it; every member gets every
//! node's broadcasts, once and in order, through a broker fault in the middle.
//!
//! With `redis-server` on the machine, the nodes go through a real one (append-only, fsync always) which is killed -9
//! for 2 s and restarted; without it, through the in-process broker, whose link to one node is cut for 2 s. The section
//! says which.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use connman_pool::cluster::{
    Answer, Broker, Cluster, ClusterConfig, ClusterEvent, MemoryHub, RedisBroker, RedisConfig,
};
use connman_pool::group::{ChannelPeer, Frame, channel};
use connman_tests::peers::Redis;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use crate::report::{Clock, Row};

const NS: &str = "lobby";
const NODES: usize = 3;
const MEMBERS: usize = 2;

/// Where redis-server is, if it is on the machine.
fn redis_on_machine() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"));
    let usual = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].map(PathBuf::from);
    on_path.chain(usual).find(|p| p.is_file())
}

pub(crate) async fn run(clock: Clock, total: Duration) -> Result<Vec<Row>, String> {
    let config = ClusterConfig::default()
        .with_heartbeat_interval(Duration::from_millis(250))
        .with_node_timeout(Duration::from_secs(2));
    let mut redis = None;
    let hub = MemoryHub::new();
    let mut nodes = Vec::new();
    if redis_on_machine().is_some() {
        let server = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
        clock.say(
            "cluster",
            &format!(
                "3 nodes through redis-server on port {} (append-only)",
                server.port()
            ),
        );
        for _ in 0..NODES {
            let broker = RedisBroker::connect(server.addr(), RedisConfig::default())
                .map_err(|e| e.to_string())?;
            nodes.push(start(broker, config.clone())?);
        }
        redis = Some(server);
    } else {
        clock.say(
            "cluster",
            "no redis-server here: 3 nodes through the in-process broker",
        );
        for _ in 0..NODES {
            nodes.push(start(hub.connect(), config.clone())?);
        }
    }
    let name = if redis.is_some() {
        "cluster (redis)"
    } else {
        "cluster (in-process)"
    };

    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut events = node.events();
        let (c, who) = (clock.clone(), format!("node {n}"));
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let what = match event {
                    ClusterEvent::BrokerDown => "broker link down".to_owned(),
                    ClusterEvent::BrokerUp => "broker link up".to_owned(),
                    ClusterEvent::EpochChanged { .. } => format!("history lost: {event:?}"),
                    ClusterEvent::Missed { .. } => format!("history trimmed: {event:?}"),
                    _ => continue,
                };
                c.say(&who, &what);
            }
        });
        for m in 0..MEMBERS {
            let (member, peer) = channel(4096);
            node.add(NS, format!("n{n}m{m}"), member)
                .map_err(|r| r.to_string())?;
            readers.spawn(read(peer, done_rx.clone()));
        }
    }
    for node in &nodes {
        timeout(Duration::from_secs(20), async {
            node.subscribed(NS).await;
            node.wait_nodes(NODES).await;
        })
        .await
        .map_err(|_| "the nodes did not meet within 20 s".to_owned())?;
    }
    clock.say(
        "cluster",
        &format!("{NODES} nodes up, {} members in {NS:?}", NODES * MEMBERS),
    );
    match nodes[0].count(NS).await {
        Answer::Complete(n) => clock.say(
            "cluster",
            &format!("node 0 counts {n} members across the cluster"),
        ),
        partial => clock.say("cluster", &format!("node 0 counts {partial:?}")),
    }

    // Every node broadcasts every 100 ms for half the run; the fault comes a third of the way in.
    let run_for = (total / 2).max(Duration::from_secs(4));
    let mut publishers = JoinSet::new();
    for (n, node) in nodes.iter().enumerate() {
        let node = node.clone();
        publishers.spawn(async move {
            let start = Instant::now();
            let mut pending = Vec::new();
            let mut seq = 0u64;
            while start.elapsed() < run_for {
                pending.push(node.broadcast(NS, format!("{n}:{seq}")));
                seq += 1;
                sleep(Duration::from_millis(100)).await;
            }
            let mut ok = 0u64;
            for publish in pending {
                if publish.await.is_ok() {
                    ok += 1;
                }
            }
            (seq, ok)
        });
    }
    sleep(run_for / 3).await;
    if let Some(server) = redis.as_mut() {
        clock.say("cluster", "redis-server killed -9 for 2 s");
        server.kill9().await;
        sleep(Duration::from_secs(2)).await;
        server.restart().await;
        clock.say(
            "cluster",
            "redis-server restarted from its append-only file",
        );
    } else {
        clock.say("cluster", "node 2's link to the broker cut for 2 s");
        hub.cut(nodes[2].node());
        sleep(Duration::from_secs(2)).await;
        hub.heal(nodes[2].node());
    }
    let mut row = Row::new(name);
    while let Some(done) = publishers.join_next().await {
        let (sent, ok) = done.map_err(|e| e.to_string())?;
        row.sent += sent;
        row.ok += ok;
    }
    // Every member should get `row.ok` messages; the readers stop once nothing came for 2 s.
    done_tx.send_replace(true);
    let expected = row.ok;
    while let Some(done) = readers.join_next().await {
        let seen = done.map_err(|e| e.to_string())?;
        row.lost += expected.saturating_sub(seen.distinct);
        row.mismatched += seen.out_of_order + seen.duplicates;
    }
    row.note = format!(
        "{NODES} nodes × {MEMBERS} members; {} broadcasts from all nodes, each to every member",
        row.ok
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(vec![row])
}

fn start(broker: impl Broker, config: ClusterConfig) -> Result<Cluster, String> {
    Cluster::start(broker, config).map_err(|e| e.to_string())
}

#[derive(Debug, Default)]
struct Seen {
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// Reads one member's messages until the publishers are done and none came for 2 s.
async fn read(mut peer: ChannelPeer, mut done: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut last: HashMap<u64, u64> = HashMap::new();
    loop {
        let frame = if *done.borrow() {
            match timeout(Duration::from_secs(2), peer.recv()).await {
                Ok(frame) => frame,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                frame = peer.recv() => frame,
                _ = done.changed() => continue,
            }
        };
        let Some(Frame::Message(msg)) = frame else {
            break;
        };
        let Some((n, seq)) = std::str::from_utf8(&msg)
            .ok()
            .and_then(|t| t.split_once(':'))
            .and_then(|(n, s)| Some((n.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        else {
            seen.out_of_order += 1;
            continue;
        };
        match last.get(&n) {
            Some(&prev) if seq == prev + 1 => seen.distinct += 1,
            None if seq == 0 => seen.distinct += 1,
            Some(&prev) if seq <= prev => seen.duplicates += 1,
            _ => seen.out_of_order += 1,
        }
        last.insert(n, seq);
    }
    seen
}

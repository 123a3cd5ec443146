//! A model of the cluster over the in-process broker: random broadcasts from three nodes, links cut and healed at
//! random, small inboxes and histories long enough to hold everything. Whatever the sequence, once every link is back
//! every member has every broadcast exactly once, in each publisher's order (CL-01, CL-02).
#![cfg(feature = "redis")]

use std::time::Duration;

use connman_pool::cluster::{Cluster, ClusterConfig, MemoryHub};
use connman_pool::group::{ChannelPeer, Frame, channel};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Broadcast(usize),
    Cut(usize),
    Heal(usize),
    /// Let the nodes run for this many ms.
    Run(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize).prop_map(Op::Broadcast),
        1 => (0..3usize).prop_map(Op::Cut),
        1 => (0..3usize).prop_map(Op::Heal),
        2 => (0..20u64).prop_map(Op::Run),
    ]
}

fn received(peer: &mut ChannelPeer) -> Vec<(usize, usize)> {
    let mut got = Vec::new();
    while let Some(Frame::Message(msg)) = peer.try_recv() {
        let text = String::from_utf8(msg.to_vec()).expect("utf-8");
        let (p, i) = text.split_once(':').expect("p:i");
        got.push((p.parse().expect("publisher"), i.parse().expect("index")));
    }
    got
}

async fn check(ops: Vec<Op>, inbox: usize) {
    let hub = MemoryHub::new();
    let config = ClusterConfig::default()
        .with_inbox_capacity(inbox)
        .with_history_batch(3);
    let nodes: Vec<Cluster> = (0..3)
        .map(|_| Cluster::start(hub.connect(), config.clone()).expect("config"))
        .collect();
    let mut peers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for m in 0..2 {
            let (member, peer) = channel(4096);
            node.add("m", format!("{n}.{m}"), member).expect("added");
            peers.push(peer);
        }
        node.subscribed("m").await;
    }
    let mut sent = [0usize; 3];
    for op in ops {
        match op {
            Op::Broadcast(n) => {
                drop(nodes[n].broadcast("m", format!("{n}:{}", sent[n])));
                sent[n] += 1;
            }
            Op::Cut(n) => hub.cut(nodes[n].node()),
            Op::Heal(n) => hub.heal(nodes[n].node()),
            Op::Run(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    for node in &nodes {
        hub.heal(node.node());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (k, peer) in peers.iter_mut().enumerate() {
        let got = received(peer);
        for (p, &count) in sent.iter().enumerate() {
            let mine: Vec<usize> = got
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(
                mine,
                (0..count).collect::<Vec<_>>(),
                "member {k}, publisher {p}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cl_01_cl_02_every_member_gets_every_broadcast_once_in_order(
        ops in proptest::collection::vec(op(), 1..120),
        inbox in 1usize..16,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(check(ops, inbox));
    }
}

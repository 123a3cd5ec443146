//! `Group` against a plain model: a map of namespace → ids in join order, and the frames each member must receive.
//!
//! Adds, replaces, removes, sends, broadcasts, closes and close-alls run across three namespaces. After each step the
//! runtime runs until idle, so every close has finished and every queued message was delivered; then the group's
//! namespaces, ids and order must equal the model's, and every peer must have received exactly the model's frames.

use std::collections::BTreeMap;
use std::time::Duration;

use connman_core::error::{Closed, Duplicate, NotFound};
use connman_core::member::CloseCode;
use connman_pool::group::{ChannelPeer, Frame, Group, GroupConfig, channel};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use tokio::runtime::Runtime;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const IDS: [&str; 3] = ["1", "2", "3"];

#[derive(Debug, Clone)]
enum Op {
    Add(&'static str, &'static str),
    Replace(&'static str, &'static str),
    Remove(&'static str, &'static str),
    Send(&'static str, &'static str),
    Broadcast(&'static str, Option<&'static str>),
    Close(&'static str, &'static str),
    CloseAll(&'static str),
}

#[derive(Debug, Clone)]
struct Entry {
    id: &'static str,
    /// One per member ever added, to tell a replaced member from its successor.
    key: u64,
}

#[derive(Debug, Clone, Default)]
struct Model {
    namespaces: BTreeMap<&'static str, Vec<Entry>>,
    /// The frames each member must have received, by key, including members that have left.
    expected: BTreeMap<u64, Vec<Frame>>,
    next_key: u64,
    next_msg: u32,
}

impl Model {
    fn find(&self, ns: &str, id: &str) -> Option<&Entry> {
        self.namespaces.get(ns)?.iter().find(|e| e.id == id)
    }

    /// Takes a member out of the model; a closed member's last frame is its close.
    fn take_out(&mut self, ns: &'static str, id: &str, close: Option<Frame>) -> Option<u64> {
        let list = self.namespaces.get_mut(ns)?;
        let pos = list.iter().position(|e| e.id == id)?;
        let key = list.remove(pos).key;
        if list.is_empty() {
            self.namespaces.remove(ns);
        }
        if let Some(frame) = close {
            self.expected.entry(key).or_default().push(frame);
        }
        Some(key)
    }

    fn message(&self) -> Frame {
        Frame::Message(format!("m{}", self.next_msg).into())
    }
}

fn bye() -> Frame {
    Frame::Close(CloseCode::NORMAL, "bye".into())
}

struct GroupModel;

impl ReferenceStateMachine for GroupModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Op> {
        let ns = || proptest::sample::select(NAMESPACES.to_vec());
        let id = || proptest::sample::select(IDS.to_vec());
        prop_oneof![
            4 => (ns(), id()).prop_map(|(n, i)| Op::Add(n, i)),
            1 => (ns(), id()).prop_map(|(n, i)| Op::Replace(n, i)),
            1 => (ns(), id()).prop_map(|(n, i)| Op::Remove(n, i)),
            2 => (ns(), id()).prop_map(|(n, i)| Op::Send(n, i)),
            2 => (ns(), proptest::option::of(id())).prop_map(|(n, e)| Op::Broadcast(n, e)),
            1 => (ns(), id()).prop_map(|(n, i)| Op::Close(n, i)),
            1 => ns().prop_map(Op::CloseAll),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match *op {
            Op::Add(ns, id) | Op::Replace(ns, id) => {
                let taken = state.find(ns, id).is_some();
                if taken && matches!(op, Op::Add(..)) {
                    return state;
                }
                if taken {
                    let replaced = Frame::Close(CloseCode::NORMAL, "replaced".into());
                    state.take_out(ns, id, Some(replaced));
                }
                let key = state.next_key;
                state.next_key += 1;
                state.expected.insert(key, Vec::new());
                state
                    .namespaces
                    .entry(ns)
                    .or_default()
                    .push(Entry { id, key });
            }
            Op::Remove(ns, id) => {
                state.take_out(ns, id, None);
            }
            Op::Send(ns, id) => {
                let frame = state.message();
                state.next_msg += 1;
                if let Some(key) = state.find(ns, id).map(|e| e.key) {
                    state.expected.entry(key).or_default().push(frame);
                }
            }
            Op::Broadcast(ns, except) => {
                let frame = state.message();
                state.next_msg += 1;
                let keys: Vec<u64> = state
                    .namespaces
                    .get(ns)
                    .into_iter()
                    .flatten()
                    .filter(|e| Some(e.id) != except)
                    .map(|e| e.key)
                    .collect();
                for key in keys {
                    state.expected.entry(key).or_default().push(frame.clone());
                }
            }
            Op::Close(ns, id) => {
                state.take_out(ns, id, Some(bye()));
            }
            Op::CloseAll(ns) => {
                let ids: Vec<&'static str> = state
                    .namespaces
                    .get(ns)
                    .into_iter()
                    .flatten()
                    .map(|e| e.id)
                    .collect();
                for id in ids {
                    state.take_out(ns, id, Some(bye()));
                }
            }
        }
        state
    }
}

struct Sut {
    rt: Runtime,
    group: Group,
    peers: BTreeMap<u64, ChannelPeer>,
    received: BTreeMap<u64, Vec<Frame>>,
    /// The model before the step being applied.
    before: Model,
}

impl Sut {
    fn add_peer(
        &mut self,
        after: &Model,
        ns: &str,
        id: &str,
    ) -> connman_pool::group::ChannelMember {
        let key = after.find(ns, id).expect("the model has it").key;
        let (member, peer) = channel(64);
        self.peers.insert(key, peer);
        member
    }

    /// Runs every task until idle (paused time moves only then), then collects what the peers received.
    fn settle(&mut self) {
        self.rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
        });
        for (key, peer) in &mut self.peers {
            while let Some(frame) = peer.try_recv() {
                self.received.entry(*key).or_default().push(frame);
            }
        }
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = GroupModel;

    fn init_test(ref_state: &Model) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let config = GroupConfig::default().with_idle_timeout(None);
        let group = Group::with_config(config).expect("valid config");
        Self {
            rt,
            group,
            peers: BTreeMap::new(),
            received: BTreeMap::new(),
            before: ref_state.clone(),
        }
    }

    fn apply(mut sut: Self, after: &Model, op: Op) -> Self {
        let before = std::mem::take(&mut sut.before);
        let present = |ns: &str, id: &str| before.find(ns, id).is_some();
        let handle = sut.rt.handle().clone();
        let guard = handle.enter();
        match op {
            Op::Add(ns, id) if present(ns, id) => {
                let (member, _unregistered) = channel(1);
                let rejected = sut.group.add(ns, id, member).unwrap_err();
                assert!(rejected.is::<Duplicate>());
            }
            Op::Add(ns, id) => {
                let member = sut.add_peer(after, ns, id);
                sut.group.add(ns, id, member).expect("admitted");
            }
            Op::Replace(ns, id) => {
                let member = sut.add_peer(after, ns, id);
                let replaced = sut.group.replace(ns, id, member).expect("admitted");
                assert_eq!(replaced, present(ns, id));
            }
            Op::Remove(ns, id) => {
                let result = sut.group.remove(ns, id);
                assert_eq!(result.is_ok(), present(ns, id), "{result:?}");
            }
            Op::Send(ns, id) => {
                let Frame::Message(msg) = before.message() else {
                    unreachable!()
                };
                match sut.group.send(ns, id, msg) {
                    Ok(()) => assert!(present(ns, id)),
                    Err(e) => {
                        assert!(!present(ns, id));
                        assert!(e.is::<NotFound>() && !e.is::<Closed>());
                    }
                }
            }
            Op::Broadcast(ns, except) => {
                let Frame::Message(msg) = before.message() else {
                    unreachable!()
                };
                let except: Vec<&str> = except.into_iter().collect();
                let summary = sut.group.broadcast(ns, msg, &except);
                let expected = before
                    .namespaces
                    .get(ns)
                    .into_iter()
                    .flatten()
                    .filter(|e| !except.contains(&e.id))
                    .count();
                assert_eq!(
                    (summary.delivered, summary.dropped, summary.skipped),
                    (expected, 0, 0)
                );
            }
            Op::Close(ns, id) => {
                let result = sut.group.close(ns, id, CloseCode::NORMAL, "bye");
                assert_eq!(result.is_ok(), present(ns, id));
            }
            Op::CloseAll(ns) => {
                let closing = sut.group.close_all(ns, CloseCode::NORMAL, "bye");
                assert_eq!(closing.len(), before.namespaces.get(ns).map_or(0, Vec::len));
            }
        }
        drop(guard);
        sut.settle();
        sut.before = after.clone();
        sut
    }

    fn check_invariants(sut: &Self, model: &Model) {
        let names: Vec<String> = model.namespaces.keys().map(|s| s.to_string()).collect();
        assert_eq!(sut.group.namespaces(), names);
        for (ns, entries) in &model.namespaces {
            let ids: Vec<&str> = entries.iter().map(|e| e.id).collect();
            assert_eq!(sut.group.ids(ns), ids, "join order in {ns}");
        }
        let total: usize = model.namespaces.values().map(Vec::len).sum();
        assert_eq!(sut.group.len(), total);
        for (key, frames) in &model.expected {
            let got = sut.received.get(key).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(got, frames.as_slice(), "frames of member {key}");
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn group_behaves_like_the_model(sequential 1..40 => Sut);
}

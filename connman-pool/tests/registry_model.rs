//! The registry against a plain model: a map of id → holding scopes, with the grace period on a virtual clock.
//!
//! Random sequences of create, get-or-create, get, remove, remove-all and clock advances run against a real
//! [`Registry`] on paused tokio time; after every step the reference counts, the ids present, and the number of
//! connects and disconnects must match the model.

#[path = "registry_support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use connman_core::error::Duplicate;
use connman_pool::registry::{DEFAULT_GRACE, Get, Manager, Registry, Removed};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use support::{Conn, Creds, Plan, Probe, creds, scope};
use tokio::runtime::Runtime;

const SCOPES: [&str; 3] = ["a", "b", "c"];
const IDS: [&str; 2] = ["x", "y"];

#[derive(Debug, Clone)]
enum Op {
    Create(&'static str, &'static str),
    GetOrCreate(&'static str, &'static str),
    Get(&'static str, &'static str),
    Remove(&'static str, &'static str),
    RemoveAll(&'static str),
    Advance(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Nothing,
    Created,
    Duplicate,
    Found,
    Absent,
    Removed(Removed),
    RemovedAll(usize),
}

#[derive(Debug, Clone)]
struct Rec {
    holders: BTreeSet<&'static str>,
    /// When the last holder let go, in ms of the virtual clock.
    zero_since: Option<u64>,
}

#[derive(Debug, Clone)]
struct Model {
    now_ms: u64,
    records: BTreeMap<&'static str, Rec>,
    connects: usize,
    disconnects: usize,
    expect: Expect,
}

struct RegistryModel;

impl ReferenceStateMachine for RegistryModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            now_ms: 0,
            records: BTreeMap::new(),
            connects: 0,
            disconnects: 0,
            expect: Expect::Nothing,
        })
        .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Op> {
        let s = proptest::sample::select(SCOPES.to_vec());
        let id = proptest::sample::select(IDS.to_vec());
        prop_oneof![
            1 => (s.clone(), id.clone()).prop_map(|(s, i)| Op::Create(s, i)),
            1 => (s.clone(), id.clone()).prop_map(|(s, i)| Op::GetOrCreate(s, i)),
            2 => (s.clone(), id.clone()).prop_map(|(s, i)| Op::Get(s, i)),
            2 => (s.clone(), id).prop_map(|(s, i)| Op::Remove(s, i)),
            1 => s.prop_map(Op::RemoveAll),
            2 => proptest::sample::select(vec![1u64, 5, 10, 19, 20, 21]).prop_map(Op::Advance),
        ]
        .boxed()
    }

    fn apply(mut m: Model, op: &Op) -> Model {
        m.expect = match *op {
            Op::Create(s, id) => {
                if m.records.contains_key(id) {
                    Expect::Duplicate
                } else {
                    m.connects += 1;
                    m.records.insert(id, held_by(s));
                    Expect::Created
                }
            }
            Op::GetOrCreate(s, id) => match m.records.get_mut(id) {
                Some(rec) => {
                    hold(rec, s);
                    Expect::Found
                }
                None => {
                    m.connects += 1;
                    m.records.insert(id, held_by(s));
                    Expect::Created
                }
            },
            Op::Get(s, id) => match m.records.get_mut(id) {
                Some(rec) => {
                    hold(rec, s);
                    Expect::Found
                }
                None => Expect::Absent,
            },
            Op::Remove(s, id) => {
                let now = m.now_ms;
                Expect::Removed(match m.records.get_mut(id) {
                    None => Removed::Unknown,
                    Some(rec) => {
                        if release(rec, s, now) {
                            Removed::Released {
                                remaining: rec.holders.len(),
                            }
                        } else {
                            Removed::NotHeld
                        }
                    }
                })
            }
            Op::RemoveAll(s) => {
                let now = m.now_ms;
                let n = m
                    .records
                    .values_mut()
                    .filter_map(|rec| release(rec, s, now).then_some(()))
                    .count();
                Expect::RemovedAll(n)
            }
            Op::Advance(secs) => {
                m.now_ms += secs * 1000;
                let grace = DEFAULT_GRACE.as_millis() as u64;
                let now = m.now_ms;
                let before = m.records.len();
                m.records
                    .retain(|_, rec| rec.zero_since.is_none_or(|t| t + grace > now));
                m.disconnects += before - m.records.len();
                Expect::Nothing
            }
        };
        m
    }
}

fn held_by(s: &'static str) -> Rec {
    Rec {
        holders: BTreeSet::from([s]),
        zero_since: None,
    }
}

fn hold(rec: &mut Rec, s: &'static str) {
    rec.holders.insert(s);
    rec.zero_since = None;
}

fn release(rec: &mut Rec, s: &'static str, now: u64) -> bool {
    let held = rec.holders.remove(s);
    if held && rec.holders.is_empty() {
        rec.zero_since = Some(now);
    }
    held
}

struct Sut {
    rt: Runtime,
    probe: Probe,
    managers: HashMap<&'static str, Manager<Conn, Creds, &'static str>>,
    elsewhere: Manager<Conn, Creds, &'static str>,
    registry: Registry<Conn, Creds, &'static str>,
}

impl Sut {
    /// Runs `f` on the runtime, then lets every task that became ready at the current instant run.
    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(async {
            let out = f.await;
            support::settle().await;
            out
        })
    }
}

struct RegistryTest;

impl StateMachineTest for RegistryTest {
    type SystemUnderTest = Sut;
    type Reference = RegistryModel;

    fn init_test(_: &Model) -> Sut {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (registry, managers, elsewhere) = rt.block_on(async {
            let registry: Registry<Conn, Creds, &'static str> = Registry::new();
            let managers = SCOPES
                .iter()
                .map(|&s| (s, registry.manager("ns", scope(s, s))))
                .collect();
            let elsewhere = registry.manager("other", scope("a", "a"));
            (registry, managers, elsewhere)
        });
        Sut {
            rt,
            probe: Probe::new(vec![Plan::Ok(Duration::ZERO)]),
            managers,
            elsewhere,
            registry,
        }
    }

    fn apply(sut: Sut, model: &Model, op: Op) -> Sut {
        let got = match op {
            Op::Create(s, id) => {
                let spec = sut.probe.spec(id, creds());
                match sut.run(sut.managers[s].create(spec)) {
                    Ok(_) => Expect::Created,
                    Err(e) if e.is::<Duplicate>() => Expect::Duplicate,
                    Err(e) => panic!("create failed: {e}"),
                }
            }
            Op::GetOrCreate(s, id) => {
                let before = sut.probe.connects();
                let spec = sut.probe.spec(id, creds());
                sut.run(sut.managers[s].get_or_create(spec))
                    .expect("get_or_create");
                if sut.probe.connects() > before {
                    Expect::Created
                } else {
                    Expect::Found
                }
            }
            Op::Get(s, id) => match sut.managers[s].get(id, &creds()) {
                Get::Found(_) => Expect::Found,
                Get::Absent => Expect::Absent,
                Get::Mismatch => panic!("credentials never differ here"),
            },
            Op::Remove(s, id) => Expect::Removed(sut.managers[s].remove(id)),
            Op::RemoveAll(s) => Expect::RemovedAll(sut.managers[s].remove_all()),
            Op::Advance(secs) => {
                sut.run(async move { tokio::time::sleep(Duration::from_secs(secs)).await });
                Expect::Nothing
            }
        };
        // Let the supervisors see what a synchronous step did before the next step.
        sut.run(async {});
        assert_eq!(got, model.expect, "after {op:?}");
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let cm = &sut.managers["a"];
        for id in IDS {
            let expected = model.records.get(id).map_or(0, |r| r.holders.len());
            assert_eq!(cm.reference_count(id), expected, "references of {id}");
            assert_eq!(cm.exists(id), model.records.contains_key(id), "{id} exists");
            assert!(matches!(sut.elsewhere.get(id, &creds()), Get::Absent));
        }
        let keys: Vec<String> = model.records.keys().map(|k| k.to_string()).collect();
        assert_eq!(cm.keys(), keys);
        assert_eq!(sut.probe.connects(), model.connects, "connects");
        assert_eq!(sut.probe.disconnects(), model.disconnects, "disconnects");
        // The tables hold the live managers' scopes and the model's connections, and nothing else.
        let stats = sut.registry.stats();
        assert_eq!(stats.namespaces, 2, "namespaces");
        assert_eq!(stats.scopes, SCOPES.len() + 1, "scopes");
        assert_eq!(stats.connections, model.records.len(), "connections");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn cm_19_22_23_27_registry_matches_the_model(sequential 1..40 => RegistryTest);
}

//! The queue against a plain FIFO model (proptest-state-machine): whatever the order of calls, cancellations, expiring
//! deadlines and link changes, requests go out exactly once, in call order, and cancelled or expired ones never.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use connman_queue::queue::{CallOptions, Queue, QueueConfig, ResponseFuture};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use tower::Service;
use tower_test::mock;

type Mock = mock::Mock<u32, u32>;

/// The deadline of requests made with [`Op::CallWithDeadline`]; [`Op::Advance`] moves time past it.
const DEADLINE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Default)]
struct Model {
    up: bool,
    /// Waiting requests, and whether each has a deadline that has not passed yet.
    waiting: VecDeque<(u32, bool)>,
    sent: Vec<u32>,
    next_id: u32,
}

#[derive(Debug, Clone)]
enum Op {
    Call,
    CallWithDeadline,
    Advance,
    Cancel(usize),
    Up,
    Down,
}

struct Fifo;

impl ReferenceStateMachine for Fifo {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Op> {
        prop_oneof![
            4 => Just(Op::Call),
            2 => Just(Op::CallWithDeadline),
            1 => Just(Op::Advance),
            2 => any::<usize>().prop_map(Op::Cancel),
            1 => Just(Op::Up),
            1 => Just(Op::Down),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        !matches!(op, Op::Cancel(_)) || !state.waiting.is_empty()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match op {
            Op::Call | Op::CallWithDeadline => {
                let id = state.next_id;
                state.next_id += 1;
                if state.up {
                    state.sent.push(id);
                } else {
                    state
                        .waiting
                        .push_back((id, matches!(op, Op::CallWithDeadline)));
                }
            }
            Op::Advance => state.waiting.retain(|&(_, deadline)| !deadline),
            Op::Cancel(i) => {
                let i = i % state.waiting.len();
                state.waiting.remove(i);
            }
            Op::Up => {
                state.up = true;
                let flushed: Vec<u32> = state.waiting.drain(..).map(|(id, _)| id).collect();
                state.sent.extend(flushed);
            }
            Op::Down => state.up = false,
        }
        state
    }
}

struct Sut {
    rt: tokio::runtime::Runtime,
    queue: Queue<Mock, u32>,
    handle: mock::Handle<u32, u32>,
    futures: HashMap<u32, ResponseFuture<Mock, u32>>,
    waiting: Vec<u32>,
    /// Waiting requests with a deadline that has not passed yet.
    deadlines: HashSet<u32>,
    sent: Vec<u32>,
    next_id: u32,
}

impl Sut {
    /// Lets the worker run, then answers whatever reached the mock.
    fn settle(&mut self) {
        self.rt.block_on(async {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        });
        while let Poll::Ready(Some((req, send))) = self.handle.poll_request() {
            self.sent.push(req);
            self.waiting.retain(|&id| id != req);
            self.deadlines.remove(&req);
            send.send_response(req);
        }
    }
}

struct QueueTest;

impl StateMachineTest for QueueTest {
    type SystemUnderTest = Sut;
    type Reference = Fifo;

    fn init_test(_: &Model) -> Sut {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (service, mut handle) = mock::pair();
        handle.allow(0);
        let queue = rt.block_on(async { Queue::new(service, QueueConfig::default()) });
        Sut {
            rt,
            queue,
            handle,
            futures: HashMap::new(),
            waiting: Vec::new(),
            deadlines: HashSet::new(),
            sent: Vec::new(),
            next_id: 0,
        }
    }

    fn apply(mut sut: Sut, _: &Model, op: Op) -> Sut {
        match op {
            Op::Call | Op::CallWithDeadline => {
                let id = sut.next_id;
                sut.next_id += 1;
                let queue = &mut sut.queue;
                sut.rt
                    .block_on(poll_fn(|cx| Service::poll_ready(queue, cx)))
                    .expect("ready");
                let _guard = sut.rt.enter();
                let options = match op {
                    Op::CallWithDeadline => CallOptions::new().deadline(DEADLINE),
                    _ => CallOptions::new(),
                };
                let fut = sut.queue.call_with(id, options);
                sut.futures.insert(id, fut);
                sut.waiting.push(id);
                if matches!(op, Op::CallWithDeadline) {
                    sut.deadlines.insert(id);
                }
            }
            Op::Cancel(i) => {
                let id = sut.waiting.remove(i % sut.waiting.len());
                sut.futures.remove(&id);
                sut.deadlines.remove(&id);
            }
            Op::Advance => {
                // The futures are not polled: the queue itself must keep expired requests from going out.
                sut.rt
                    .block_on(tokio::time::advance(DEADLINE + Duration::from_millis(1)));
                let expired: Vec<u32> = sut.deadlines.drain().collect();
                sut.waiting.retain(|id| !expired.contains(id));
            }
            Op::Up => sut.handle.allow(u64::MAX),
            Op::Down => sut.handle.allow(0),
        }
        sut.settle();
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        assert_eq!(sut.sent, model.sent, "sent exactly once, in call order");
        // Expired requests whose callers were not polled leave the queue when the worker next looks at it.
        let len = sut.queue.stats().len;
        if model.up {
            assert_eq!(len, model.waiting.len());
        } else {
            assert!(len >= model.waiting.len());
        }
        let waiting: Vec<u32> = model.waiting.iter().map(|&(id, _)| id).collect();
        assert_eq!(sut.waiting, waiting);
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_fifo_model(sequential 1..40 => QueueTest);
}

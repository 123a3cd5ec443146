//! The lifecycle against a plain reference model, over random sequences of inputs (proptest-state-machine).
//!
//! The model is a handful of match arms over a plain enum, with its own copy of the same seeded backoff. After every
//! input the machine's action, events and state must equal the model's, and the whole history must keep these
//! invariants: exactly one `Closed` event ever and nothing but `TearDown` after it (CN-12, CN-13, CN-14, UP-17, UP-18);
//! `Disconnected` only after a `Connected`, and a failed attempt is never a disconnect (CN-05); `Connected { first:
//! true }` at most once, and before any other `Connected` (CN-03); attempt numbers count from 1 and go up by one per
//! failed attempt; every `Wait` is at `now + delay`, the delay of the `ConnectFailed` event and of the same backoff,
//! which a good connection resets (CN-09); close works in every state.

use std::time::{Duration, Instant};

use connman_core::backoff::{Backoff, Exponential, Jitter};
use connman_core::error::LinkLost;
use connman_core::lifecycle::{Action, CloseReason, Config, Event, FailureKind, Lifecycle, State};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// One input of the machine. Time only moves forward, by `TimerFired::advance`.
#[derive(Debug, Clone, Copy)]
enum Input {
    Start,
    Connected,
    ConnectFailed(FailureKind),
    LinkLost,
    TimerFired { advance: Duration },
    Close,
}

/// Where the model stands; instants are offsets from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting { attempt: u32 },
    Up { since: Duration },
    Backoff { attempt: u32, until: Duration },
    Closed,
}

/// What the model expects of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Connect { attempt: u32 },
    Wait { until: Duration },
    CancelConnect,
    CancelTimer,
    TearDown,
}

/// What the model expects of an event (errors are left out: they are the inputs' own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Connecting {
        attempt: u32,
    },
    Connected {
        attempt: u32,
        first: bool,
    },
    ConnectFailed {
        attempt: u32,
        next_delay: Option<Duration>,
    },
    Disconnected,
    Closed(CloseReason),
}

#[derive(Debug, Clone)]
struct Model {
    phase: Phase,
    now: Duration,
    /// The model's own copy of the backoff, drawn from in the same order as the machine's.
    backoff: Exponential,
    /// The backoff as it was at the start, for the machine under test.
    initial_backoff: Exponential,
    min_uptime: Duration,
    connected_once: bool,
    /// The action and events of the last input.
    action: Option<Expected>,
    events: Vec<Ev>,
}

impl Model {
    fn wait(&mut self, attempt: u32, delay: Duration) {
        let until = self.now + delay;
        self.phase = Phase::Backoff { attempt, until };
        self.action = Some(Expected::Wait { until });
    }

    fn close_for_good(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.events.push(Ev::Closed(reason));
    }
}

struct LifecycleModel;

impl ReferenceStateMachine for LifecycleModel {
    type State = Model;
    type Transition = Input;

    fn init_state() -> BoxedStrategy<Model> {
        let jitter = prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            (0.0..=1.0f64).prop_map(Jitter::Proportional),
        ];
        (
            1u64..=500,
            1.0..=3.0f64,
            0u64..=5_000,
            jitter,
            proptest::option::of(1u32..=8),
            any::<u64>(),
            prop_oneof![Just(0u64), 1u64..=2_000],
        )
            .prop_map(|(initial, factor, extra, jitter, attempts, seed, uptime)| {
                let initial = Duration::from_millis(initial);
                let builder = Exponential::builder()
                    .initial(initial)
                    .factor(factor)
                    .max(initial + Duration::from_millis(extra))
                    .jitter(jitter)
                    .seed(seed);
                let builder = match attempts {
                    Some(n) => builder.max_attempts(n),
                    None => builder,
                };
                let backoff = builder.build().expect("valid settings");
                Model {
                    phase: Phase::Idle,
                    now: Duration::ZERO,
                    initial_backoff: backoff.clone(),
                    backoff,
                    min_uptime: Duration::from_millis(uptime),
                    connected_once: false,
                    action: None,
                    events: Vec::new(),
                }
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Input> {
        // Timer inputs aimed at the pending wait: on time, late, or early.
        let timer = match state.phase {
            Phase::Backoff { until, .. } => {
                let due = until.saturating_sub(state.now);
                prop_oneof![
                    3 => (0u64..=50).prop_map(move |late| due + Duration::from_millis(late)),
                    1 => (0..=due.as_nanos().min(u128::from(u64::MAX)) as u64).prop_map(Duration::from_nanos),
                ]
                .boxed()
            }
            _ => (0u64..=3_000).prop_map(Duration::from_millis).boxed(),
        };
        // Mostly inputs that move the current phase on, with some stale ones and a rare close or fatal failure.
        let [start, connected, retriable, fatal, lost, fired, close] = match state.phase {
            Phase::Idle => [8, 1, 1, 1, 1, 1, 1],
            Phase::Connecting { .. } => [1, 6, 6, 1, 1, 1, 1],
            Phase::Up { .. } => [1, 1, 1, 1, 8, 2, 1],
            Phase::Backoff { .. } => [1, 1, 1, 1, 1, 10, 1],
            Phase::Closed => [1, 3, 1, 1, 1, 1, 1],
        };
        prop_oneof![
            start => Just(Input::Start),
            connected => Just(Input::Connected),
            retriable => Just(Input::ConnectFailed(FailureKind::Retriable)),
            fatal => Just(Input::ConnectFailed(FailureKind::Fatal)),
            lost => Just(Input::LinkLost),
            fired => timer.prop_map(|advance| Input::TimerFired { advance }),
            close => Just(Input::Close),
        ]
        .boxed()
    }

    fn apply(mut m: Model, input: &Input) -> Model {
        m.action = None;
        m.events.clear();
        match (*input, m.phase) {
            (Input::Start, Phase::Idle) => {
                m.phase = Phase::Connecting { attempt: 1 };
                m.events.push(Ev::Connecting { attempt: 1 });
                m.action = Some(Expected::Connect { attempt: 1 });
            }
            (Input::Connected, Phase::Connecting { attempt }) => {
                let first = !m.connected_once;
                m.connected_once = true;
                m.phase = Phase::Up { since: m.now };
                if m.min_uptime.is_zero() {
                    m.backoff.reset();
                }
                m.events.push(Ev::Connected { attempt, first });
            }
            (Input::Connected, Phase::Closed) => m.action = Some(Expected::TearDown),
            (Input::ConnectFailed(kind), Phase::Connecting { attempt }) => {
                let next_delay = match kind {
                    FailureKind::Retriable => m.backoff.next_delay(),
                    FailureKind::Fatal => None,
                };
                m.events.push(Ev::ConnectFailed {
                    attempt,
                    next_delay,
                });
                match (next_delay, kind) {
                    (Some(delay), _) => m.wait(attempt + 1, delay),
                    (None, FailureKind::Fatal) => m.close_for_good(CloseReason::Fatal),
                    (None, FailureKind::Retriable) => m.close_for_good(CloseReason::GaveUp),
                }
            }
            (Input::LinkLost, Phase::Up { since }) => {
                m.events.push(Ev::Disconnected);
                if !m.min_uptime.is_zero() && m.now - since >= m.min_uptime {
                    m.backoff.reset();
                }
                match m.backoff.next_delay() {
                    Some(delay) => m.wait(1, delay),
                    None => m.close_for_good(CloseReason::GaveUp),
                }
            }
            (Input::TimerFired { advance }, phase) => {
                m.now += advance;
                if let Phase::Backoff { attempt, until } = phase {
                    if m.now < until {
                        m.action = Some(Expected::Wait { until });
                    } else {
                        m.phase = Phase::Connecting { attempt };
                        m.events.push(Ev::Connecting { attempt });
                        m.action = Some(Expected::Connect { attempt });
                    }
                }
            }
            (Input::Close, phase) if phase != Phase::Closed => {
                m.action = match phase {
                    Phase::Connecting { .. } => Some(Expected::CancelConnect),
                    Phase::Up { .. } => Some(Expected::TearDown),
                    Phase::Backoff { .. } => Some(Expected::CancelTimer),
                    Phase::Idle | Phase::Closed => None,
                };
                m.close_for_good(CloseReason::Requested);
            }
            // Every other input is stale in this phase and changes nothing.
            _ => {}
        }
        m
    }
}

/// The machine under test, its clock and what its history has shown so far.
struct Sut {
    lc: Lifecycle<Exponential>,
    t0: Instant,
    now: Instant,
    closed_events: u32,
    connected_events: u32,
    first_connects: u32,
    /// The attempt number the next `Connecting` event must carry.
    next_attempt: Option<u32>,
    /// The attempt in flight, as announced by the last `Connecting`.
    in_flight: Option<u32>,
}

impl Sut {
    fn at(&self, offset: Duration) -> Instant {
        self.t0 + offset
    }

    /// Checks one input's output against the history-wide invariants, then folds it into the history.
    fn observe(&mut self, input: &Input, action: Option<Action>, events: &[Event]) {
        if self.closed_events > 0 {
            assert!(
                matches!(action, None | Some(Action::TearDown)),
                "{action:?} after Closed"
            );
            assert!(events.is_empty(), "{events:?} after Closed");
        }
        let mut failed_delay = None;
        for event in events {
            match *event {
                Event::Connecting { attempt } => {
                    assert!(attempt >= 1);
                    assert_eq!(Some(attempt), self.next_attempt, "attempt numbering");
                    self.in_flight = Some(attempt);
                    self.next_attempt = None;
                }
                Event::Connected { attempt, first } => {
                    assert_eq!(Some(attempt), self.in_flight);
                    assert_eq!(first, self.connected_events == 0, "first means first");
                    self.connected_events += 1;
                    self.first_connects += u32::from(first);
                    assert!(self.first_connects <= 1);
                    self.in_flight = None;
                }
                Event::ConnectFailed {
                    attempt,
                    next_delay,
                    ..
                } => {
                    assert_eq!(Some(attempt), self.in_flight);
                    self.next_attempt = next_delay.map(|_| attempt + 1);
                    failed_delay = Some(next_delay);
                    self.in_flight = None;
                }
                Event::Disconnected { .. } => {
                    assert!(
                        self.connected_events > 0,
                        "Disconnected before any Connected"
                    );
                    assert!(
                        matches!(input, Input::LinkLost),
                        "only a lost link disconnects"
                    );
                    self.next_attempt = Some(1);
                }
                Event::Closed { .. } => {
                    self.closed_events += 1;
                    assert_eq!(self.closed_events, 1, "exactly one Closed");
                }
                ref other => panic!("an event this test does not know: {other:?}"),
            }
        }
        if let (Some(Some(delay)), Some(Action::Wait { until })) = (failed_delay, action) {
            assert_eq!(
                until,
                self.now + delay,
                "the wait is now + the announced delay"
            );
        }
        if let Some(Action::Wait { until }) = action {
            assert!(until >= self.now, "a wait in the past");
        }
        if matches!(input, Input::Close) {
            assert_eq!(self.lc.state(), State::Closed, "close works in every state");
        }
    }
}

struct LifecycleTest;

impl StateMachineTest for LifecycleTest {
    type SystemUnderTest = Sut;
    type Reference = LifecycleModel;

    fn init_test(model: &Model) -> Sut {
        let t0 = Instant::now();
        let config = Config::new().min_uptime(model.min_uptime);
        Sut {
            lc: Lifecycle::with_config(model.initial_backoff.clone(), config),
            t0,
            now: t0,
            closed_events: 0,
            connected_events: 0,
            first_connects: 0,
            next_attempt: Some(1),
            in_flight: None,
        }
    }

    fn apply(mut sut: Sut, model: &Model, input: Input) -> Sut {
        let now = sut.now;
        let action = match input {
            Input::Start => sut.lc.start(now),
            Input::Connected => sut.lc.connected(now),
            Input::ConnectFailed(kind) => {
                let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                sut.lc.connect_failed(now, refused, kind)
            }
            Input::LinkLost => sut.lc.link_lost(now, LinkLost::new()),
            Input::TimerFired { advance } => {
                sut.now += advance;
                sut.lc.timer_fired(sut.now)
            }
            Input::Close => sut.lc.close(now),
        };
        let events: Vec<Event> = std::iter::from_fn(|| sut.lc.poll_event()).collect();
        sut.observe(&input, action, &events);

        // The machine agrees with the model, action by action and event by event.
        let expected = model.action.map(|a| match a {
            Expected::Connect { attempt } => Action::Connect { attempt },
            Expected::Wait { until } => Action::Wait {
                until: sut.at(until),
            },
            Expected::CancelConnect => Action::CancelConnect,
            Expected::CancelTimer => Action::CancelTimer,
            Expected::TearDown => Action::TearDown,
        });
        assert_eq!(action, expected, "action after {input:?}");
        let got: Vec<Ev> = events.iter().map(plain).collect();
        assert_eq!(got, model.events, "events after {input:?}");
        sut
    }

    /// Whatever the run did, one more close leaves exactly one `Closed` event in the whole history.
    fn teardown(mut sut: Sut) {
        let action = sut.lc.close(sut.now);
        let events: Vec<Event> = std::iter::from_fn(|| sut.lc.poll_event()).collect();
        sut.observe(&Input::Close, action, &events);
        assert_eq!(sut.closed_events, 1, "exactly one Closed ever");
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let want = match model.phase {
            Phase::Idle => State::Idle,
            Phase::Connecting { attempt } => State::Connecting { attempt },
            Phase::Up { since } => State::Up {
                since: sut.at(since),
            },
            Phase::Backoff { attempt, until } => State::Backoff {
                attempt,
                until: sut.at(until),
            },
            Phase::Closed => State::Closed,
        };
        assert_eq!(sut.lc.state(), want);
        assert_eq!(sut.lc.has_connected(), model.connected_once);
        assert_eq!(sut.now, sut.at(model.now));
    }
}

fn plain(event: &Event) -> Ev {
    match *event {
        Event::Connecting { attempt } => Ev::Connecting { attempt },
        Event::Connected { attempt, first } => Ev::Connected { attempt, first },
        Event::ConnectFailed {
            attempt,
            next_delay,
            ..
        } => Ev::ConnectFailed {
            attempt,
            next_delay,
        },
        Event::Disconnected { .. } => Ev::Disconnected,
        Event::Closed { reason } => Ev::Closed(reason),
        ref other => panic!("an event this test does not know: {other:?}"),
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        .. ProptestConfig::default()
    })]

    /// CN-03, CN-05, CN-09, CN-12, CN-13, CN-14, UP-17, UP-18: see the module docs.
    #[test]
    fn cn_03_cn_05_cn_09_cn_12_cn_13_up_17_up_18_lifecycle_matches_the_model(sequential 1..80 => LifecycleTest);
}

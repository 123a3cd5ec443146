//! Properties of the backoff policies, over random valid (and invalid) settings.

use std::time::Duration;

use connman_core::backoff::{Backoff, Constant, Exponential, ExponentialBuilder, Jitter, Steps};
use connman_core::error::InvalidConfig;
use proptest::prelude::*;

/// Float and nanosecond rounding slack when comparing a delay with a bound computed in seconds.
const EPS: f64 = 1e-6;

/// Random valid settings of an exponential backoff, kept as plain values for the bounds.
#[derive(Debug, Clone, Copy)]
struct Settings {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
    unclamped: bool,
    seed: u64,
}

impl Settings {
    fn builder(&self) -> ExponentialBuilder {
        let b = Exponential::builder()
            .initial(self.initial)
            .factor(self.factor)
            .max(self.max)
            .jitter(self.jitter)
            .seed(self.seed);
        if self.unclamped {
            b.jitter_unclamped()
        } else {
            b
        }
    }

    fn build(&self) -> Exponential {
        self.builder().build().expect("valid settings")
    }

    /// `initial · factor^n` before the clamp, in seconds (infinite once it overflows).
    fn unclamped_nominal(&self, n: u32) -> f64 {
        self.initial.as_secs_f64() * self.factor.powi(i32::try_from(n).unwrap())
    }

    fn nominal(&self, n: u32) -> f64 {
        self.unclamped_nominal(n).min(self.max.as_secs_f64())
    }

    /// The range a delay of attempt `n` must fall in, given the previous delay.
    fn bounds(&self, n: u32, previous: f64) -> (f64, f64) {
        let max = self.max.as_secs_f64();
        let nominal = self.nominal(n);
        match self.jitter {
            Jitter::None => (nominal, nominal),
            Jitter::Full => (0.0, nominal),
            Jitter::Equal => (nominal / 2.0, nominal),
            Jitter::Decorrelated => {
                let low = self.initial.as_secs_f64();
                (low, (previous * 3.0).max(low).min(max))
            }
            Jitter::Proportional(f) => {
                let base = if self.unclamped {
                    self.unclamped_nominal(n)
                } else {
                    nominal
                };
                if base.is_finite() {
                    ((base * (1.0 - f)).min(max), (base * (1.0 + f)).min(max))
                } else {
                    (max, max)
                }
            }
            other => panic!("a jitter mode this test does not know: {other:?}"),
        }
    }
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        (0.0..=1.0f64).prop_map(Jitter::Proportional),
    ]
}

/// Initial delays from 1 µs to 10 s, factors from 1 to 10, `max` up to a day above `initial`.
fn settings() -> impl Strategy<Value = Settings> {
    (
        1_000u64..=10_000_000_000,
        1.0..=10.0f64,
        0u64..=86_400_000_000_000,
        jitter(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(initial, factor, extra, jitter, unclamped, seed)| {
            let initial = Duration::from_nanos(initial);
            Settings {
                initial,
                factor,
                max: initial + Duration::from_nanos(extra),
                jitter,
                unclamped,
                seed,
            }
        })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

proptest! {
    #[test]
    fn every_delay_is_within_its_mode_bounds_and_never_above_max(s in settings(), attempts in 1u32..200) {
        let mut backoff = s.build();
        let mut previous = secs(s.initial);
        for n in 0..attempts {
            let delay = backoff.next_delay().expect("no limits were set");
            prop_assert!(delay <= s.max, "attempt {n}: {delay:?} above max {:?}", s.max);
            let (low, high) = s.bounds(n, previous);
            let d = secs(delay);
            prop_assert!(
                d >= low - EPS && d <= high + EPS,
                "attempt {n}: {d} outside [{low}, {high}] for {s:?}"
            );
            previous = d;
        }
    }

    #[test]
    fn jitter_is_really_applied(
        initial in 1_000_000u64..=1_000_000_000,
        factor in 1.0..=4.0f64,
        proportion in 0.05..=1.0f64,
    ) {
        let initial = Duration::from_nanos(initial);
        let modes = [
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::Proportional(proportion),
        ];
        for jitter in modes {
            // Room above `initial`, so that every mode has a range to draw the first delay from.
            let max = initial * 10;
            let firsts: Vec<Duration> = (0..32)
                .map(|seed| {
                    Settings { initial, factor, max, jitter, unclamped: false, seed }
                        .build()
                        .next_delay()
                        .expect("no limits were set")
                })
                .collect();
            prop_assert!(
                firsts.iter().any(|&d| d != initial),
                "{jitter:?}: every first delay is the nominal {initial:?}"
            );
            prop_assert!(
                firsts.iter().any(|&d| d != firsts[0]),
                "{jitter:?}: every seed gave {:?}", firsts[0]
            );
        }
    }

    #[test]
    fn reset_returns_to_the_initial_delay(s in settings(), before in 0usize..50) {
        let mut backoff = s.build();
        for _ in 0..before {
            backoff.next_delay();
        }
        backoff.reset();
        let first = backoff.next_delay().expect("no limits were set");
        if s.jitter == Jitter::None {
            prop_assert_eq!(first, s.initial);
        } else {
            let (low, high) = s.bounds(0, secs(s.initial));
            let d = secs(first);
            prop_assert!(d >= low - EPS && d <= high + EPS, "{d} outside [{low}, {high}] for {s:?}");
        }
    }

    #[test]
    fn max_attempts_gives_up_and_reset_starts_over(s in settings(), limit in 1u32..20) {
        let mut backoff = s.builder().max_attempts(limit).build().expect("valid settings");
        for round in 0..2 {
            let handed = std::iter::from_fn(|| backoff.next_delay()).take(100).count();
            prop_assert_eq!(handed, limit as usize, "round {}", round);
            prop_assert_eq!(backoff.next_delay(), None);
            backoff.reset();
        }
    }

    #[test]
    fn max_elapsed_bounds_the_sum_of_delays(s in settings(), budget_ms in 1u64..100_000) {
        let budget = Duration::from_millis(budget_ms);
        let mut backoff = s.builder().max_elapsed(budget).build().expect("valid settings");
        // Full jitter may hand out zero delays, which never use up the budget, so the walk is capped.
        let total: Duration = std::iter::from_fn(|| backoff.next_delay()).take(10_000).sum();
        prop_assert!(total <= budget, "{total:?} > {budget:?}");
    }

    #[test]
    fn constant_hands_out_the_same_delay_up_to_its_limit(ms in 0u64..100_000, limit in 1u32..50) {
        let delay = Duration::from_millis(ms);
        let mut forever = Constant::new(delay);
        prop_assert!((0..500).all(|_| forever.next_delay() == Some(delay)));
        let mut limited = Constant::new(delay).with_max_attempts(limit).expect("limit is at least 1");
        for _ in 0..2 {
            let handed: Vec<_> = std::iter::from_fn(|| limited.next_delay()).take(100).collect();
            prop_assert_eq!(handed, vec![delay; limit as usize]);
            limited.reset();
        }
    }

    #[test]
    fn steps_hand_out_the_table_then_the_flat_delay(
        table in prop::collection::vec(0u64..100_000, 1..20),
        then in proptest::option::of(0u64..100_000),
        extra in 0usize..20,
    ) {
        let table: Vec<Duration> = table.into_iter().map(Duration::from_millis).collect();
        let mut steps = Steps::new(table.clone()).expect("a non-empty table");
        let flat = match then {
            Some(ms) => {
                steps = steps.then(Duration::from_millis(ms));
                Duration::from_millis(ms)
            }
            None => *table.last().expect("non-empty"),
        };
        for _ in 0..2 {
            let handed: Vec<_> = (0..table.len() + extra).map(|_| steps.next_delay()).collect();
            let mut want: Vec<_> = table.iter().copied().map(Some).collect();
            want.extend(std::iter::repeat_n(Some(flat), extra));
            prop_assert_eq!(handed, want);
            steps.reset();
        }
    }

    #[test]
    fn invalid_exponential_settings_are_rejected(
        s in settings(),
        bad in 0usize..6,
        factor in prop_oneof![-10.0..1.0f64, Just(f64::NAN), Just(f64::INFINITY)],
        proportion in prop_oneof![1.0001..10.0f64, -10.0..-0.0001f64, Just(f64::NAN)],
    ) {
        let builder = s.builder();
        let builder = match bad {
            0 => builder.initial(Duration::ZERO),
            1 => builder.factor(factor),
            2 => builder.max(s.initial - Duration::from_nanos(1)),
            3 => builder.jitter(Jitter::Proportional(proportion)),
            4 => builder.max_attempts(0),
            _ => builder.max_elapsed(Duration::ZERO),
        };
        let result: Result<Exponential, InvalidConfig> = builder.build();
        let err = result.expect_err("invalid settings must be rejected");
        prop_assert!(!err.reason().is_empty());
        // The same settings without the bad one are fine.
        prop_assert!(s.builder().build().is_ok());
    }
}

#[test]
fn invalid_constant_and_steps_are_rejected() {
    assert!(
        Constant::new(Duration::from_secs(1))
            .with_max_attempts(0)
            .is_err()
    );
    assert!(Steps::new(Vec::<Duration>::new()).is_err());
}

#[test]
fn a_million_attempts_never_overflow_or_panic() {
    let day = Duration::from_secs(86_400);
    let modes = [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::Proportional(1.0),
    ];
    for jitter in modes {
        // A steep factor and an unclamped spread push the nominal delay to infinity within a few hundred attempts.
        let mut backoff = Exponential::builder()
            .initial(Duration::from_nanos(1))
            .factor(1000.0)
            .max(day)
            .jitter(jitter)
            .jitter_unclamped()
            .seed(1)
            .build()
            .expect("valid settings");
        for attempt in 0..1_000_000u32 {
            let delay = backoff.next_delay().expect("no limits were set");
            assert!(delay <= day, "{jitter:?}, attempt {attempt}: {delay:?}");
        }
    }
}

/// A `max` near `Duration::MAX` is a valid setting, so it must not panic either.
#[test]
fn a_max_near_duration_max_never_panics() {
    let mut backoff = Exponential::builder()
        .max(Duration::MAX)
        .build()
        .expect("valid settings");
    for _ in 0..200 {
        assert!(backoff.next_delay().is_some());
    }
}

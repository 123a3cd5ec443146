//! Backoff settings from the fuzzer: building either fails with `InvalidConfig` or gives a policy whose delays never
//! pass `max` (a true clamp, whatever the jitter), that gives up after `max_attempts`, and that never panics, even for
//! durations near `Duration::MAX`.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use connman_core::backoff::{Backoff, Constant, Exponential, Jitter, Steps};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum JitterKind {
    None,
    Full,
    Equal,
    Decorrelated,
    Proportional(f64),
}

#[derive(Debug, Arbitrary)]
struct Input {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: JitterKind,
    unclamped: bool,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    seed: u64,
    steps: Vec<Duration>,
    then: Option<Duration>,
    constant: Duration,
    pulls: u8,
}

fuzz_target!(|input: Input| {
    let jitter = match input.jitter {
        JitterKind::None => Jitter::None,
        JitterKind::Full => Jitter::Full,
        JitterKind::Equal => Jitter::Equal,
        JitterKind::Decorrelated => Jitter::Decorrelated,
        JitterKind::Proportional(f) => Jitter::Proportional(f),
    };
    let mut builder = Exponential::builder()
        .initial(input.initial)
        .factor(input.factor)
        .max(input.max)
        .jitter(jitter)
        .seed(input.seed);
    if input.unclamped {
        builder = builder.jitter_unclamped();
    }
    if let Some(n) = input.max_attempts {
        builder = builder.max_attempts(n);
    }
    if let Some(d) = input.max_elapsed {
        builder = builder.max_elapsed(d);
    }
    if let Ok(mut policy) = builder.build() {
        let mut handed = 0u32;
        for _ in 0..input.pulls {
            let Some(delay) = policy.next_delay() else {
                break;
            };
            handed += 1;
            assert!(
                delay <= input.max,
                "{delay:?} above the clamp {:?}",
                input.max
            );
        }
        if let Some(n) = input.max_attempts {
            assert!(handed <= n, "{handed} delays for {n} attempts");
        }
        policy.reset();
        let _ = policy.next_delay();
    }
    if let Ok(steps) = Steps::new(input.steps.clone()) {
        let mut steps = match input.then {
            Some(then) => steps.then(then),
            None => steps,
        };
        for _ in 0..input.pulls {
            if steps.next_delay().is_none() {
                break;
            }
        }
    }
    let mut constant = Constant::new(input.constant);
    if let Some(n) = input.max_attempts {
        if let Ok(limited) = constant.clone().with_max_attempts(n) {
            constant = limited;
        }
    }
    for _ in 0..input.pulls {
        match constant.next_delay() {
            Some(d) => assert_eq!(d, input.constant),
            None => break,
        }
    }
});

//! Test support for connman's cross-crate scenarios: a flaky echo server, a fault-injecting proxy and the
//! "nothing lost" checker. Not published.

pub mod checker;
pub mod flaky;
pub mod proxy;

/// The README's examples, run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

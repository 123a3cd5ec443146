//! Test support for connman's cross-crate scenarios: a flaky echo server, a fault-injecting proxy, the
//! "nothing lost" checker, a counting WebSocket server, a sliding-window count and the real peers (Node `ws`, Python `websockets`,
//! redis-server). Not published.

pub mod checker;
pub mod flaky;
pub mod peers;
pub mod proxy;
pub mod window;
pub mod ws;

/// The README's examples, run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

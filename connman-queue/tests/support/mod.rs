//! What the tests of connman-queue share: short durations, readiness as a future, letting the worker run.

#![allow(dead_code)] // Each test file uses the part it needs.

use std::future::{Future, poll_fn};
use std::time::Duration;

use tower::Service;

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Resolves once `svc` is ready for a request of type `R` (name `R` when the service takes several).
pub(crate) fn ready<S, R>(svc: &mut S) -> impl Future<Output = Result<(), S::Error>> + '_
where
    S: Service<R>,
{
    poll_fn(move |cx| svc.poll_ready(cx))
}

/// Lets spawned tasks (a queue's worker) run.
pub(crate) async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

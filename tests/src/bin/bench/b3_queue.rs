//! B3: the queue layer while connected, 1 / 16 / 256 concurrent callers, against `tower::buffer::Buffer`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use connman_queue::queue::{Queue, QueueConfig};
use connman_queue::reconnect::{Reconnect, ReconnectConfig};
use tower::buffer::Buffer;
use tower::reconnect::Reconnect as TowerReconnect;
use tower::util::ServiceFn;
use tower::{Service, ServiceExt, service_fn};

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, ns_per_op, runtime,
    spread,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B3",
    title: "queue layer while connected",
    method: "1, 16 and 256 tokio tasks (multi-thread runtime, 2 workers) each call `ready().await` then \
             `call(n).await` in a loop on their own clone of the service; the figure is wall time over all \
             requests. The connection is a no-op `tower::service_fn` that answers at once. Alone: ours is `Queue` \
             (default settings) over it, the peer `tower::buffer::Buffer` with bound 1024 over it. Stacked as users \
             stack it, with the link up: ours is `Queue` over connman's `Reconnect` over a make service handing out \
             that connection, the peer `Buffer(1024)` over tower's `Reconnect` over the same make service. The \
             reference is the direct call of the connection.",
    run,
};

const CALLERS: [usize; 3] = [1, 16, 256];

/// The response future of the inner service.
type Answer = Ready<Result<u64, Infallible>>;

/// The inner service of every contender: answers at once.
type Noop = ServiceFn<fn(u64) -> Answer>;

fn noop() -> Noop {
    service_fn(answer as fn(u64) -> Answer)
}

fn answer(n: u64) -> Answer {
    ready(Ok(n))
}

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let requests: u64 = mode.pick(20_000, 400_000);
    let bound = Duration::from_secs(mode.pick(10, 60));
    rt.block_on(async move {
        let mut rows = Vec::new();
        for callers in CALLERS {
            let per_caller = requests / callers as u64;
            let total = per_caller * callers as u64;
            let mut pairs = Pairs::default();
            let mut stacked = Pairs::default();
            let mut direct = Vec::new();
            for _ in 0..mode.rounds() {
                let o = tokio::time::timeout(bound, drive(ours(), callers, per_caller)).await??;
                let b = tokio::time::timeout(bound, drive(buffer(), callers, per_caller)).await??;
                let os = tokio::time::timeout(bound, drive(ours_stacked(), callers, per_caller))
                    .await??;
                let bs = tokio::time::timeout(bound, drive(buffer_stacked(), callers, per_caller))
                    .await??;
                let d = tokio::time::timeout(bound, drive(noop(), callers, per_caller)).await??;
                pairs.push(ns_per_op(o, total), ns_per_op(b, total));
                stacked.push(ns_per_op(os, total), ns_per_op(bs, total));
                direct.push(ns_per_op(d, total));
            }
            let direct = Stats::of(&direct).map_or(f64::NAN, |s| s.median);
            let plural = if callers == 1 { "" } else { "s" };
            let ratio = Stats::of(&pairs.ratios(Better::Lower));
            rows.push(Row {
                scenario: format!("B3 queue, {callers} caller{plural}"),
                ours: format!("Queue: {}/req", fmt_ns(pairs.ours_median())),
                peer: format!("Buffer(1024): {}/req", fmt_ns(pairs.peer_median())),
                ratio,
                reference: format!("direct call: {}/req", fmt_ns(direct)),
                target: "≥ 10× faster than Buffer".to_owned(),
                met: Some(ratio.is_some_and(|r| r.median >= 10.0)),
            });
            let ratio = Stats::of(&stacked.ratios(Better::Lower));
            rows.push(Row {
                scenario: format!("B3 queue over reconnect, {callers} caller{plural}"),
                ours: format!("Queue(Reconnect): {}/req", fmt_ns(stacked.ours_median())),
                peer: format!(
                    "Buffer(1024, tower Reconnect): {}/req",
                    fmt_ns(stacked.peer_median())
                ),
                ratio,
                reference: format!("direct call: {}/req", fmt_ns(direct)),
                target: "≥ 10× faster than Buffer(Reconnect)".to_owned(),
                met: Some(ratio.is_some_and(|r| r.median >= 10.0)),
            });
        }
        Ok(rows)
    })
}

/// Ours: a `Queue` with the default settings over the no-op service; it must be made inside the runtime.
fn ours() -> Queue<Noop, u64> {
    Queue::new(noop(), QueueConfig::default())
}

/// `tower::buffer::Buffer` with bound 1024 over the no-op service; it must be made inside the runtime.
fn buffer() -> Buffer<u64, Answer> {
    Buffer::new(noop(), 1024)
}

/// The make service of the stacked contenders: every connect succeeds at once with the no-op connection.
type MakeNoop = ServiceFn<fn(()) -> Ready<Result<Noop, Infallible>>>;

fn make_noop() -> MakeNoop {
    service_fn(connect as fn(()) -> Ready<Result<Noop, Infallible>>)
}

fn connect((): ()) -> Ready<Result<Noop, Infallible>> {
    ready(Ok(noop()))
}

/// Ours as users stack it: `Queue` over connman's `Reconnect` over the make service.
fn ours_stacked() -> Queue<Reconnect<MakeNoop, ()>, u64> {
    Queue::new(
        Reconnect::new(make_noop(), ReconnectConfig::new(())),
        QueueConfig::default(),
    )
}

/// The usual tower assembly: `Buffer(1024)` over tower's `Reconnect` over the same make service.
fn buffer_stacked() -> Buffer<u64, <TowerReconnect<MakeNoop, ()> as Service<u64>>::Future> {
    Buffer::new(TowerReconnect::new(make_noop(), ()), 1024)
}

/// Each of `callers` tasks makes `per_caller` requests on its own clone of `svc`.
async fn drive<S>(svc: S, callers: usize, per_caller: u64) -> BenchResult<Duration>
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
{
    spread(callers, || {
        let mut svc = svc.clone();
        async move {
            for n in 0..per_caller {
                let ready = svc
                    .ready()
                    .await
                    .map_err(|e| BenchError::new(format!("poll_ready failed: {e}")))?;
                let answer = ready
                    .call(n)
                    .await
                    .map_err(|e| BenchError::new(format!("call failed: {e}")))?;
                black_box(answer);
            }
            Ok(())
        }
    })
    .await
}

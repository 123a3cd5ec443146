//! B6: a shared handle's get + drop from 1, 16 and 64 tasks, against deadpool and bb8 with no-op managers.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connman_pool::registry::{Get, Listen, Listener, ListenerId, Registry, Scope, Spec};

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, ns_per_op, runtime,
    spread,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B6",
    title: "shared handle get + drop",
    method: "Each of 1, 16 and 64 tokio tasks (multi-thread runtime, 2 workers) runs get + drop in a loop; the \
             figure is wall time over all operations. Ours gets the handle of one shared connection through \
             `Manager::get` (each task is a scope with a `Manager` of its own) and drops it; the registry answers \
             a repeated `get` from the manager's cached result while the tables are unchanged, so this is the \
             figure of that path. The peers are a deadpool 0.12 managed pool and a bb8 0.9 pool, each with \
             a manager whose connect and recycle do nothing, `max_size` 64 so that no task ever waits for an object \
             (bb8 keeps its default check on checkout). Every round of every contender runs under a time bound: a \
             run that does not finish is a liveness failure.",
    run,
};

const TASKS: [usize; 3] = [1, 16, 64];

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let ops: u64 = mode.pick(20_000, 400_000);
    let bound = Duration::from_secs(mode.pick(10, 60));
    rt.block_on(async move {
        let deadpool = deadpool_pool()?;
        let bb8 = bb8::Pool::builder()
            .max_size(64)
            .build(NoopBb8)
            .await
            .map_err(|e| BenchError::new(format!("bb8: {e:?}")))?;
        let ours = Ours::new().await?;
        let mut rows = Vec::new();
        for tasks in TASKS {
            let per_task = ops / tasks as u64;
            let total = per_task * tasks as u64;
            let mut vs_deadpool = Pairs::default();
            let mut vs_bb8 = Pairs::default();
            // One unmeasured warm-up of each, so that pools hold their objects before the first timed round.
            ours.run(tasks, per_task.min(100)).await?;
            run_deadpool(&deadpool, tasks, per_task.min(100)).await?;
            run_bb8(&bb8, tasks, per_task.min(100)).await?;
            for _ in 0..mode.rounds() {
                let o = tokio::time::timeout(bound, ours.run(tasks, per_task)).await??;
                let d =
                    tokio::time::timeout(bound, run_deadpool(&deadpool, tasks, per_task)).await??;
                let b = tokio::time::timeout(bound, run_bb8(&bb8, tasks, per_task)).await??;
                let o = ns_per_op(o, total);
                vs_deadpool.push(o, ns_per_op(d, total));
                vs_bb8.push(o, ns_per_op(b, total));
            }
            rows.push(row(tasks, "deadpool", &vs_deadpool, 5.0));
            rows.push(row(tasks, "bb8", &vs_bb8, 0.0));
        }
        Ok(rows)
    })
}

fn row(tasks: usize, peer: &str, pairs: &Pairs, target: f64) -> Row {
    let ratio = Stats::of(&pairs.ratios(Better::Lower));
    let (target, met) = if target > 0.0 {
        (
            format!("≥ {target:.0}× faster than {peer} at every point"),
            Some(ratio.is_some_and(|r| r.median >= target)),
        )
    } else {
        ("none (finishes: liveness)".to_owned(), None)
    };
    Row {
        scenario: format!(
            "B6 get+drop, {tasks} task{}, vs {peer}",
            if tasks == 1 { "" } else { "s" }
        ),
        ours: format!("{}/op", fmt_ns(pairs.ours_median())),
        peer: format!("{peer}: {}/op", fmt_ns(pairs.peer_median())),
        ratio,
        reference: String::new(),
        target,
        met,
    }
}

/// A deadpool manager whose objects cost nothing.
#[derive(Debug)]
struct NoopDeadpool;

impl deadpool::managed::Manager for NoopDeadpool {
    type Type = ();
    type Error = Infallible;

    async fn create(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn recycle(
        &self,
        _: &mut (),
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

/// A bb8 manager whose connections cost nothing.
#[derive(Debug)]
struct NoopBb8;

impl bb8::ManageConnection for NoopBb8 {
    type Connection = ();
    type Error = Infallible;

    async fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut ()) -> bool {
        false
    }
}

fn deadpool_pool() -> BenchResult<deadpool::managed::Pool<NoopDeadpool>> {
    deadpool::managed::Pool::builder(NoopDeadpool)
        .max_size(64)
        .build()
        .map_err(|e| BenchError::new(format!("deadpool: {e}")))
}

async fn run_deadpool(
    pool: &deadpool::managed::Pool<NoopDeadpool>,
    tasks: usize,
    per_task: u64,
) -> BenchResult<Duration> {
    spread(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..per_task {
                let object = pool
                    .get()
                    .await
                    .map_err(|e| BenchError::new(format!("deadpool get: {e}")))?;
                drop(black_box(object));
            }
            Ok(())
        }
    })
    .await
}

async fn run_bb8(pool: &bb8::Pool<NoopBb8>, tasks: usize, per_task: u64) -> BenchResult<Duration> {
    spread(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..per_task {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| BenchError::new(format!("bb8 get: {e:?}")))?;
                drop(black_box(conn));
            }
            Ok(())
        }
    })
    .await
}

/// A connection that does nothing, for our registry.
#[derive(Debug)]
struct NoopConn;

impl Listen for NoopConn {
    type Event = ();

    fn add_listener(&self, _: &str, _: Listener<()>) {}

    fn remove_listener(&self, _: &str, _: &ListenerId) {}
}

/// Ours: one shared connection in a `Registry`, looked up by id and credentials.
#[derive(Debug)]
struct Ours {
    registry: Registry<NoopConn, u64, ()>,
}

/// The id and credentials of the shared connection.
const ID: &str = "bench";
const CREDENTIALS: u64 = 7;

impl Ours {
    async fn new() -> BenchResult<Self> {
        let registry = Registry::new();
        let creator = registry.manager("bench", Scope::new("creator", ()));
        let spec = Spec::new(ID, CREDENTIALS, |_| async { Ok::<_, Infallible>(NoopConn) });
        creator
            .create(spec)
            .await
            .map_err(|e| BenchError::new(format!("registry create: {e}")))?;
        Ok(Self { registry })
    }

    /// Each task is its own scope of the namespace, as components of a program are.
    async fn run(&self, tasks: usize, per_task: u64) -> BenchResult<Duration> {
        let scope = AtomicUsize::new(0);
        spread(tasks, || {
            let n = scope.fetch_add(1, Ordering::Relaxed);
            let manager = self
                .registry
                .manager("bench", Scope::new(format!("task-{n}"), ()));
            async move {
                for _ in 0..per_task {
                    match manager.get(ID, &CREDENTIALS) {
                        Get::Found(client) => drop(black_box(client)),
                        other => {
                            return Err(BenchError::new(format!(
                                "registry get found no connection: {other:?}"
                            )));
                        }
                    }
                }
                Ok(())
            }
        })
        .await
    }
}

//! B6: a shared handle, like with like. (a) a new holder takes a reference and lets go, (b) get + use across an
//! `.await` + let go, (c) the cached repeat `get`; from 1, 16 and 64 tasks, against deadpool and bb8 with no-op
//! managers and, for (c), `Arc::clone` as the floor. Then the memory after 10^6 scopes came and went.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connman_pool::registry::{Get, Manager, Registry, Removed, Scope, Spec, Stats};
use connman_pool::singleton::Singleton;
use tower::ServiceExt;
use tower_service::Service;

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, fmt_ns, ns_per_op, runtime, spread,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B6",
    title: "shared handle: take and let go, use across an await, cached get",
    method: "Each of 1, 16 and 64 tokio tasks (multi-thread runtime, 2 workers) runs one operation in a loop; the \
             figure is wall time over all operations. Ours is one shared connection in a `Registry` with no \
             listeners; each task is a scope of the namespace with a `Manager` of its own. \
             **(a) take and let go**: ours is `get` from a scope that does not hold the connection (it takes a \
             reference) then `remove` (it lets go), the refcount path; the peers are a deadpool 0.12 managed pool \
             and a bb8 0.9 pool, each with a manager whose create and recycle do nothing and `max_size` 64 so that \
             no task ever waits for an object (bb8 keeps its default check on checkout), `get` then drop. \
             **(b) under contention across an await**: the same operations with the handle (ours: the `Client`; \
             the peers: the pooled object) held across a `tokio::task::yield_now().await` in the middle, so that \
             every task holds it at once; the reference column is the `yield_now().await` alone, measured in the same rounds, \
             which every contender pays once per operation and which bounds the ratio from above: \
             (await + peer) / await. **(c) cached get**: ours is a repeated `get` of a connection the scope \
             already holds (answered from the manager's memory, no lock), then the client is dropped; beside the \
             same deadpool and bb8 get + drop, and the floor: `Arc::clone` + drop of a handle each task owns (an \
             `Arc` around an `Arc` of the connection, as a `Client` is), the cheapest way to hand out a shared \
             handle. A `Singleton` row shows the tower-layer way to share one made connection for the same (c) path: `ready` + \
             `call` + drop of the `RefHandle` on each task's clone of the service, beside deadpool. The old headline of this benchmark (15–50× faster than deadpool) was (c) against a checkout: \
             a path that takes no reference against one that takes an object; (a) and (b) are the like-with-like \
             figures. **Memory**: in the same process, RSS (`/proc/self/statm`) before and after 10^6 scopes \
             (10^5 in the smoke mode) each made a manager, took the connection, let go and dropped the manager, \
             with the registry's own count of its table rows; the target is RSS back to baseline (within 1 MiB) \
             and the tables at their size. Every round of every contender runs under a time bound: a run that \
             does not finish is a liveness failure.",
    run,
};

const TASKS: [usize; 3] = [1, 16, 64];

/// The id and credentials of the shared connection.
const ID: &str = "bench";
const CREDENTIALS: u64 = 7;

type Reg = Registry<NoopConn, u64, ()>;

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
        let make: fn(()) -> std::future::Ready<Result<NoopConn, Infallible>> =
            |()| std::future::ready(Ok(NoopConn));
        let singleton: NoopSingleton = Singleton::new(tower::service_fn(make));
        let mut rows = Vec::new();
        for tasks in TASKS {
            let per_task = ops / tasks as u64;
            let total = per_task * tasks as u64;
            // (b) yields once per operation: fewer of them keep the run short.
            let per_task_b = (ops / 4) / tasks as u64;
            let total_b = per_task_b * tasks as u64;
            let mut a = [Pairs::default(), Pairs::default()];
            let mut b = [Pairs::default(), Pairs::default()];
            let mut c = [
                Pairs::default(),
                Pairs::default(),
                Pairs::default(),
                Pairs::default(),
            ];
            let mut yields = Vec::new();
            // One unmeasured warm-up of each, so that pools hold their objects before the first timed round.
            let warm = per_task.min(100);
            ours.take_and_let_go(tasks, warm, false).await?;
            ours.cached(tasks, warm).await?;
            run_singleton(&singleton, tasks, warm).await?;
            run_deadpool(&deadpool, tasks, warm, false).await?;
            run_bb8(&bb8, tasks, warm, false).await?;
            for _ in 0..mode.rounds() {
                let oa = timed(bound, ours.take_and_let_go(tasks, per_task, false)).await?;
                let oc = timed(bound, ours.cached(tasks, per_task)).await?;
                let floor = timed(bound, run_arc(tasks, per_task)).await?;
                let single = timed(bound, run_singleton(&singleton, tasks, per_task)).await?;
                let d = timed(bound, run_deadpool(&deadpool, tasks, per_task, false)).await?;
                let p = timed(bound, run_bb8(&bb8, tasks, per_task, false)).await?;
                let ob = timed(bound, ours.take_and_let_go(tasks, per_task_b, true)).await?;
                let db = timed(bound, run_deadpool(&deadpool, tasks, per_task_b, true)).await?;
                let pb = timed(bound, run_bb8(&bb8, tasks, per_task_b, true)).await?;
                let y = timed(bound, run_yield(tasks, per_task_b)).await?;
                yields.push(ns_per_op(y, total_b));
                let (oa, oc, floor) = (
                    ns_per_op(oa, total),
                    ns_per_op(oc, total),
                    ns_per_op(floor, total),
                );
                let (d, p) = (ns_per_op(d, total), ns_per_op(p, total));
                let (ob, db, pb) = (
                    ns_per_op(ob, total_b),
                    ns_per_op(db, total_b),
                    ns_per_op(pb, total_b),
                );
                a[0].push(oa, d);
                a[1].push(oa, p);
                b[0].push(ob, db);
                b[1].push(ob, pb);
                c[0].push(oc, d);
                c[1].push(oc, p);
                c[2].push(oc, floor);
                c[3].push(ns_per_op(single, total), d);
            }
            let what = "(a) take + let go";
            rows.push(row(what, tasks, "deadpool", &a[0], Target::ThreeTimes));
            rows.push(row(what, tasks, "bb8", &a[1], Target::None));
            let what = "(b) get + await + let go";
            let yield_alone = crate::harness::Stats::of(&yields).map_or(f64::NAN, |s| s.median);
            let reference = format!("the await alone: {}/op", fmt_ns(yield_alone));
            let mut with_reference = |mut r: Row| {
                r.reference = reference.clone();
                rows.push(r);
            };
            with_reference(row(what, tasks, "deadpool", &b[0], Target::ThreeTimes));
            with_reference(row(what, tasks, "bb8", &b[1], Target::None));
            let what = "(c) cached get";
            rows.push(row(what, tasks, "deadpool", &c[0], Target::None));
            rows.push(row(what, tasks, "bb8", &c[1], Target::None));
            rows.push(row(what, tasks, "Arc::clone", &c[2], Target::Floor));
            let mut single = row(
                "(c) Singleton call, made",
                tasks,
                "deadpool",
                &c[3],
                Target::None,
            );
            single.ours = format!("Singleton: {}", single.ours);
            rows.push(single);
        }
        rows.push(memory(mode.pick(100_000, 1_000_000)).await?);
        Ok(rows)
    })
}

/// Runs `f` under `bound`: a run that does not finish is a liveness failure.
async fn timed(
    bound: Duration,
    f: impl Future<Output = BenchResult<Duration>>,
) -> BenchResult<Duration> {
    tokio::time::timeout(bound, f)
        .await
        .map_err(|_| BenchError::new("B6: a run did not finish in time"))?
}

#[derive(Debug, Clone, Copy)]
enum Target {
    ThreeTimes,
    Floor,
    None,
}

fn row(what: &str, tasks: usize, peer: &str, pairs: &Pairs, target: Target) -> Row {
    let ratio = crate::harness::Stats::of(&pairs.ratios(Better::Lower));
    let (target, met) = match target {
        Target::ThreeTimes => (
            format!("≥ 3× faster than {peer} at every point"),
            Some(ratio.is_some_and(|r| r.median >= 3.0)),
        ),
        // Within 1.5× of the floor: our time at most 1.5 times its, a ratio (floor / ours) of at least 1 / 1.5.
        Target::Floor => (
            "within 1.5× of Arc::clone (ratio ≥ 0.67)".to_owned(),
            Some(ratio.is_some_and(|r| r.median >= 1.0 / 1.5)),
        ),
        Target::None => ("none (finishes: liveness)".to_owned(), None),
    };
    Row {
        scenario: format!(
            "B6 {what}, {tasks} task{}, vs {peer}",
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

/// RSS and table rows before and after `scopes` scopes came and went.
async fn memory(scopes: usize) -> BenchResult<Row> {
    let ours = Ours::new().await?;
    let before_stats = ours.registry.stats();
    let before = rss()?;
    let workers = 16;
    let next = Arc::new(AtomicUsize::new(0));
    spread(workers, || {
        let registry = ours.registry.clone();
        let next = next.clone();
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= scopes {
                    return Ok(());
                }
                let manager = registry.manager("bench", Scope::new(format!("scope-{n}"), ()));
                take(&manager)?;
                let_go(&manager)?;
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await?;
    let after = rss()?;
    let after_stats = ours.registry.stats();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let grown = after.saturating_sub(before);
    let fmt_stats = |s: Stats| {
        format!(
            "{} ns / {} scopes / {} conns",
            s.namespaces, s.scopes, s.connections
        )
    };
    Ok(Row {
        scenario: format!("B6 memory after {scopes} scopes came and went"),
        ours: format!(
            "RSS {:.1} MiB → {:.1} MiB; tables {} → {}",
            mib(before),
            mib(after),
            fmt_stats(before_stats),
            fmt_stats(after_stats)
        ),
        peer: "—".to_owned(),
        ratio: None,
        reference: String::new(),
        target: "RSS back to baseline (≤ 1 MiB more), tables at their size".to_owned(),
        met: Some(grown <= 1024 * 1024 && after_stats == before_stats),
    })
}

/// This process's resident set, in bytes.
fn rss() -> BenchResult<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| BenchError::new("cannot read /proc/self/statm"))?;
    Ok(pages * 4096)
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

/// deadpool get + drop; with `across_await`, the object is held across a yield.
async fn run_deadpool(
    pool: &deadpool::managed::Pool<NoopDeadpool>,
    tasks: usize,
    per_task: u64,
    across_await: bool,
) -> BenchResult<Duration> {
    spread(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..per_task {
                let object = pool
                    .get()
                    .await
                    .map_err(|e| BenchError::new(format!("deadpool get: {e}")))?;
                black_box(&object);
                if across_await {
                    tokio::task::yield_now().await;
                }
                drop(object);
            }
            Ok(())
        }
    })
    .await
}

/// bb8 get + drop; with `across_await`, the connection is held across a yield.
async fn run_bb8(
    pool: &bb8::Pool<NoopBb8>,
    tasks: usize,
    per_task: u64,
    across_await: bool,
) -> BenchResult<Duration> {
    spread(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..per_task {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| BenchError::new(format!("bb8 get: {e:?}")))?;
                black_box(&conn);
                if across_await {
                    tokio::task::yield_now().await;
                }
                drop(conn);
            }
            Ok(())
        }
    })
    .await
}

type NoopSingleton = Singleton<
    tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<NoopConn, Infallible>>>,
    (),
>;

/// `Singleton`'s repeated call once its connection is made: `ready` + `call` + drop of the handle, each task on its
/// own clone of the service.
async fn run_singleton(
    singleton: &NoopSingleton,
    tasks: usize,
    per_task: u64,
) -> BenchResult<Duration> {
    spread(tasks, || {
        let mut service = singleton.clone();
        async move {
            for _ in 0..per_task {
                let handle = service
                    .ready()
                    .await
                    .map_err(|e| BenchError::new(format!("singleton ready: {e}")))?
                    .call(())
                    .await
                    .map_err(|e| BenchError::new(format!("singleton call: {e}")))?;
                drop(black_box(handle));
            }
            Ok(())
        }
    })
    .await
}

/// The reference of (b): the `yield_now().await` alone, which every contender of (b) pays once per operation.
async fn run_yield(tasks: usize, per_task: u64) -> BenchResult<Duration> {
    spread(tasks, || async move {
        for _ in 0..per_task {
            tokio::task::yield_now().await;
        }
        Ok(())
    })
    .await
}

/// The floor of (c): each task clones and drops a handle of its own to the shared connection.
async fn run_arc(tasks: usize, per_task: u64) -> BenchResult<Duration> {
    let shared = Arc::new(NoopConn);
    spread(tasks, || {
        let handle = Arc::new(shared.clone());
        async move {
            for _ in 0..per_task {
                drop(black_box(handle.clone()));
            }
            Ok(())
        }
    })
    .await
}

/// A connection that does nothing, for our registry. It has no events, so it needs no `Listen`.
#[derive(Debug)]
struct NoopConn;

/// Ours: one shared connection in a `Registry`, looked up by id and credentials.
#[derive(Debug)]
struct Ours {
    registry: Reg,
    /// Scope names are never reused between runs, so that every run starts from scopes that hold nothing.
    next_scope: AtomicUsize,
    /// The creator keeps the connection referenced, so that no grace period starts between runs.
    _creator: Manager<NoopConn, u64, ()>,
}

impl Ours {
    async fn new() -> BenchResult<Self> {
        let registry = Registry::new();
        let creator = registry.manager("bench", Scope::new("creator", ()));
        let spec = Spec::new(ID, CREDENTIALS, |_| async { Ok::<_, Infallible>(NoopConn) });
        creator
            .create(spec)
            .await
            .map_err(|e| BenchError::new(format!("registry create: {e}")))?;
        Ok(Self {
            registry,
            next_scope: AtomicUsize::new(0),
            _creator: creator,
        })
    }

    fn manager(&self) -> Manager<NoopConn, u64, ()> {
        let n = self.next_scope.fetch_add(1, Ordering::Relaxed);
        self.registry
            .manager("bench", Scope::new(format!("task-{n}"), ()))
    }

    /// (a) and (b): each task's scope takes a reference and lets go, `per_task` times.
    async fn take_and_let_go(
        &self,
        tasks: usize,
        per_task: u64,
        across_await: bool,
    ) -> BenchResult<Duration> {
        spread(tasks, || {
            let manager = self.manager();
            async move {
                for _ in 0..per_task {
                    let client = take(&manager)?;
                    black_box(&client);
                    if across_await {
                        tokio::task::yield_now().await;
                    }
                    drop(client);
                    let_go(&manager)?;
                }
                Ok(())
            }
        })
        .await
    }

    /// (c): each task's scope holds the connection and asks for it again, `per_task` times.
    async fn cached(&self, tasks: usize, per_task: u64) -> BenchResult<Duration> {
        spread(tasks, || {
            let manager = self.manager();
            async move {
                drop(take(&manager)?);
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
                let_go(&manager)?;
                Ok(())
            }
        })
        .await
    }
}

/// Takes the connection; the scope must not have held it.
fn take(
    manager: &Manager<NoopConn, u64, ()>,
) -> BenchResult<connman_pool::registry::Client<NoopConn, u64>> {
    match manager.get(ID, &CREDENTIALS) {
        Get::Found(client) => Ok(client),
        other => Err(BenchError::new(format!(
            "registry get found no connection: {other:?}"
        ))),
    }
}

/// Lets go of the connection; the scope must have held it.
fn let_go(manager: &Manager<NoopConn, u64, ()>) -> BenchResult<()> {
    match manager.remove(ID) {
        Removed::Released { .. } => Ok(()),
        other => Err(BenchError::new(format!(
            "registry remove took no reference away: {other:?}"
        ))),
    }
}

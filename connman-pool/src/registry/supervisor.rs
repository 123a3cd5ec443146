//! The task that owns one connection: the first connect, reconnects, the grace period and teardown.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};
use std::time::Duration;

use connman_core::backoff::Backoff;
use connman_core::driver::{Driver, Next};
use connman_core::error::{BoxError, Closed, Elapsed, LinkLost, SharedError};
use connman_core::lifecycle::{Config as LifecycleConfig, FailureKind, Lifecycle};
use connman_core::rt::tokio::{Publish, TokioTimer};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use super::manager::Scope;
use super::spec::{DisconnectFn, SpecFns};
use super::table::{Entry, Namespace, Record, Signals};
use crate::error::{ConnectFailed, Panicked};

/// How the first connect ended, shared by every waiter.
#[derive(Clone)]
pub(super) enum Failure {
    Connect(SharedError),
    Elapsed,
    Panicked,
}

impl Failure {
    pub(super) fn to_error(&self) -> BoxError {
        match self {
            Failure::Connect(source) => ConnectFailed::new(source.clone()).into(),
            Failure::Elapsed => Elapsed::new().into(),
            Failure::Panicked => Panicked::default().into(),
        }
    }
}

/// How one connect attempt failed, before the error is shared.
enum AttemptError {
    Connect(BoxError),
    Panicked,
}

pub(super) type Outcome = Result<(), Failure>;

/// One connection's supervisor: the connect in flight, the grace period and teardown, beside the core's [`Driver`],
/// which owns the lifecycle, its backoff waits and the events. It holds its entry and namespace weakly: when the
/// registry is gone, so is the work.
pub(super) struct Supervisor<C, K, D> {
    namespace: Weak<Namespace<C, K, D>>,
    entry: Weak<Entry<C, K, D>>,
    record: Arc<Record<C, K>>,
    fns: Arc<SpecFns<C, K, D>>,
    signals: Arc<Signals>,
    creator: Arc<Scope<D>>,
    connect_timeout: Duration,
    grace: Duration,
    teardown_timeout: Duration,
    driver: Driver<Box<dyn Backoff + Send>, TokioTimer, Publish>,
    /// The first connect's waiters; `None` once they have their outcome.
    outcome: Option<watch::Sender<Option<Outcome>>>,
}

/// What a supervisor is started with.
pub(super) struct Start<C, K, D> {
    pub(super) namespace: Weak<Namespace<C, K, D>>,
    pub(super) entry: Weak<Entry<C, K, D>>,
    pub(super) creator: Arc<Scope<D>>,
    pub(super) connect_timeout: Duration,
    pub(super) grace: Duration,
    pub(super) teardown_timeout: Duration,
    pub(super) backoff: Box<dyn Backoff + Send>,
    /// Where the lifecycle's events go; the entry keeps a clone for subscribers.
    pub(super) events: Publish,
    pub(super) outcome: watch::Sender<Option<Outcome>>,
}

/// A connect in flight and when it times out.
struct Attempt<C> {
    future: BoxFuture<'static, Result<C, AttemptError>>,
    deadline: Instant,
}

enum Step<C> {
    Attempt(Result<Result<C, AttemptError>, tokio::time::error::Elapsed>),
    Next(Next),
    Zero,
    Grace,
    Lost,
}

impl<C, K, D> Supervisor<C, K, D>
where
    C: Send + Sync + 'static,
    K: Clone + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    /// Spawns the supervisor of `entry`, which starts connecting at once.
    pub(super) fn spawn(entry: &Entry<C, K, D>, start: Start<C, K, D>) {
        let supervisor = Self {
            namespace: start.namespace,
            entry: start.entry,
            record: entry.record.clone(),
            fns: entry.fns.clone(),
            signals: entry.signals.clone(),
            creator: start.creator,
            connect_timeout: start.connect_timeout,
            grace: start.grace,
            teardown_timeout: start.teardown_timeout,
            // A failed first connect fails the create: the machine closes with the connect's own error.
            driver: Driver::new(
                Lifecycle::with_config(
                    start.backoff,
                    LifecycleConfig::new().first_attempt_fatal(true),
                ),
                TokioTimer::new(),
                start.events,
            ),
            outcome: Some(start.outcome),
        };
        tokio::spawn(supervisor.run());
    }

    async fn run(mut self) {
        let mut attempt = None;
        let mut grace_until: Option<Instant> = None;
        let signals = self.signals.clone();
        self.driver.start();
        loop {
            let step = tokio::select! {
                r = poll_attempt(attempt.as_mut()) => Step::Attempt(r),
                next = self.driver.next() => Step::Next(next),
                () = signals.zero.notified() => Step::Zero,
                () = sleep_opt(grace_until) => Step::Grace,
                () = signals.lost.notified() => Step::Lost,
            };
            match step {
                Step::Attempt(result) => {
                    let Some(done) = attempt.take() else { continue };
                    // `None` for a connect error: the error itself is shared by the lifecycle below.
                    let (failure, error): (Option<Failure>, BoxError) = match result {
                        Ok(Ok(conn)) => {
                            if !self.connected(conn) {
                                return;
                            }
                            continue;
                        }
                        Ok(Err(AttemptError::Connect(error))) => (None, error),
                        Ok(Err(AttemptError::Panicked)) => {
                            (Some(Failure::Panicked), Panicked::default().into())
                        }
                        Err(_) => {
                            self.reap_late(done.future);
                            (Some(Failure::Elapsed), Elapsed::new().into())
                        }
                    };
                    // Before the first success the machine closes with this error (and the events carry it); after,
                    // it waits out the backoff and asks for the next attempt, or gives up.
                    self.driver.connect_failed(error, FailureKind::Retriable);
                    if self.outcome.is_some() {
                        // Every waiter gets the error once (the very error the events carry), and the record goes.
                        let failure = failure.unwrap_or_else(|| {
                            let shared = self.driver.lifecycle().last_error().cloned();
                            // The machine was connecting, so it kept the error; `Closed` only if that ever changes.
                            Failure::Connect(shared.unwrap_or_else(|| Arc::new(Closed::new())))
                        });
                        self.forget();
                        self.finish(Err(failure));
                        return;
                    }
                }
                Step::Next(Next::Connect { .. }) => {
                    let scope = if self.outcome.is_some() {
                        self.creator.clone()
                    } else {
                        self.reconnect_scope()
                    };
                    attempt = Some(self.begin_attempt(scope));
                }
                Step::Next(Next::CancelConnect) => attempt = None,
                Step::Next(Next::TearDown) => {
                    let conn = self.record.lock().connection.take();
                    if let Some(conn) = conn {
                        self.spawn_teardown(conn);
                    }
                }
                // The backoff gave up.
                Step::Next(_) => break,
                Step::Zero => grace_until = Some(Instant::now() + self.grace),
                Step::Grace => {
                    grace_until = None;
                    if self.retire() {
                        break;
                    }
                }
                Step::Lost => {
                    if !self.driver.state().is_up() {
                        continue;
                    }
                    // The old connection is dead: its listeners go with it.
                    self.record.lock().connection = None;
                    self.driver.link_lost(LinkLost::new());
                }
            }
        }
        // Closed for good: by the grace period, or because the backoff gave up.
        self.driver.close();
        drop(attempt);
        self.forget();
        let conn = self.record.lock().connection.take();
        if let Some(conn) = conn {
            teardown(conn, self.fns.disconnect.clone(), self.teardown_timeout).await;
        }
    }

    /// Starts a connect on behalf of `scope`, with panics turned into a [`Failure`].
    fn begin_attempt(&self, scope: Arc<Scope<D>>) -> Attempt<C> {
        let ctx = self.record.context(scope);
        let connect = self.fns.connect.clone();
        let future = async move {
            let started = catch_unwind(AssertUnwindSafe(|| connect(ctx)));
            match started {
                Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(e)) => Err(AttemptError::Connect(e)),
                    Err(_) => Err(AttemptError::Panicked),
                },
                Err(_) => Err(AttemptError::Panicked),
            }
        }
        .boxed();
        Attempt {
            future,
            deadline: Instant::now() + self.connect_timeout,
        }
    }

    /// A connect succeeded; false if there is nothing left to supervise.
    fn connected(&mut self, conn: C) -> bool {
        let conn = Arc::new(conn);
        let Some(entry) = self.entry.upgrade() else {
            self.spawn_teardown(conn);
            return false;
        };
        let mut state = entry.lock();
        if !state.live {
            drop(state);
            self.spawn_teardown(conn);
            return false;
        }
        self.driver.connected();
        self.record.lock().connection = Some(conn.clone());
        if self.outcome.is_some() {
            // First connect: every scope still waiting becomes a holder.
            state.ready = true;
            let joiners = std::mem::take(&mut state.joiners);
            for (scope, _) in &joiners {
                let _ = entry.hold(&mut state, scope, None);
            }
            let nobody = self.record.references() == 0;
            drop(state);
            // Outside the lock: the last reference to a scope drops its table row, which takes the namespace's lock.
            drop(joiners);
            if nobody {
                // Every waiter was cancelled: nobody holds it, so the grace period starts now.
                self.signals.zero.notify_one();
            }
            self.finish(Ok(()));
        } else {
            // A reconnect: every holding scope's listeners go onto the new connection (CM-39 fixed).
            entry.reattach(&state, &conn);
        }
        true
    }

    /// The scope a reconnect runs for: the first holder, else the creator.
    fn reconnect_scope(&self) -> Arc<Scope<D>> {
        self.entry
            .upgrade()
            .and_then(|entry| {
                let state = entry.lock();
                state.holders.first().map(|h| h.scope.scope.clone())
            })
            .unwrap_or_else(|| self.creator.clone())
    }

    /// At the end of the grace period: removes the record if still nobody holds it (CM-23).
    fn retire(&self) -> bool {
        self.take_out(false)
    }

    /// Removes the record from the table, if it is still there.
    fn forget(&self) {
        self.take_out(true);
    }

    /// Takes the entry out of its namespace's table, unless `always` is false and it is spoken for; returns whether
    /// it is out. Holders and joiners are dropped after every lock is released.
    fn take_out(&self, always: bool) -> bool {
        let (Some(ns), Some(entry)) = (self.namespace.upgrade(), self.entry.upgrade()) else {
            return true;
        };
        let mut tables = ns.lock();
        let mut state = entry.lock();
        if !state.live {
            return true;
        }
        if !always && (self.record.references() > 0 || !state.joiners.is_empty()) {
            return false;
        }
        state.live = false;
        Entry::bump_holders(&state);
        let holders = std::mem::take(&mut state.holders);
        self.record.set_references(0);
        let joiners = std::mem::take(&mut state.joiners);
        let id = state.id.clone();
        drop(state);
        if tables.ids.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            tables.ids.remove(&id);
        }
        let empty = tables.is_empty();
        drop(tables);
        drop((holders, joiners, entry));
        if empty {
            Namespace::let_go(ns);
        }
        true
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(tx) = self.outcome.take() {
            // No receiver left is fine: every waiter was cancelled.
            let _ = tx.send(Some(outcome));
        }
    }

    /// Watches a connect that timed out for a late connection, and tears it down (CM-14).
    fn reap_late(&self, future: BoxFuture<'static, Result<C, AttemptError>>) {
        let bound = self.teardown_timeout;
        let disconnect = self.fns.disconnect.clone();
        tokio::spawn(async move {
            if let Ok(Ok(conn)) = tokio::time::timeout(bound, future).await {
                tracing::debug!("tearing down a connection that arrived after the connect timeout");
                teardown(Arc::new(conn), disconnect, bound).await;
            }
        });
    }

    fn spawn_teardown(&self, conn: Arc<C>) {
        tokio::spawn(teardown(
            conn,
            self.fns.disconnect.clone(),
            self.teardown_timeout,
        ));
    }
}

/// Runs `disconnect` once in its own task, bounded by `bound`; a panic or a hang is logged (CM-25, CM-26).
async fn teardown<C: Send + Sync + 'static>(
    conn: Arc<C>,
    disconnect: Option<DisconnectFn<C>>,
    bound: Duration,
) {
    let Some(disconnect) = disconnect else {
        return;
    };
    let task = tokio::spawn(async move { disconnect(conn).await });
    let abort = task.abort_handle();
    match tokio::time::timeout(bound, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "disconnect failed"),
        Err(_) => {
            abort.abort();
            tracing::warn!(timeout = ?bound, "disconnect timed out");
        }
    }
}

async fn poll_attempt<C>(
    attempt: Option<&mut Attempt<C>>,
) -> Result<Result<C, AttemptError>, tokio::time::error::Elapsed> {
    match attempt {
        Some(a) => tokio::time::timeout_at(a.deadline, &mut a.future).await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

//! One shared connection behind a tower service: made once, handed out as counted handles, remade after a loss.
//!
//! [`Singleton`] wraps a make-service `M: Service<Target>` (a connector, a [`Transport`]). Every call returns a
//! [`RefHandle`] to the same made connection, so the connection type need not be `Clone`, and
//! [`RefHandle::references`] tells how many holders it has. It plays the role of hyper-util's
//! `client::pool::Singleton`, with three differences:
//!
//! * **Single-flight, cancel-safe.** Concurrent calls while nothing is made share one make, which runs in its own
//!   task: a caller that drops its future takes nothing with it, and every waiter gets the same connection or the same
//!   error.
//! * **Remade with backoff.** The made connection is kept until [`Singleton::report_lost`]; the next call then makes a
//!   new one, after the delay the backoff asks for. A failed make does the same. The delays come from the one
//!   [`Lifecycle`] every connman crate drives; its [`Event`]s are published to [`Singleton::subscribe`].
//! * **Closable.** [`Singleton::close`] fails waiting and later calls with [`Closed`].
//!
//! Handles taken before a loss keep the old connection alive until they are dropped; new calls get the new one.
//! During a backoff delay the make-service is called at once (after `poll_ready`, as tower requires), but the future it
//! returns is polled only once the delay is over: a connector whose future does the work (as tower's do) connects
//! after the delay.
//!
//! ```
//! use connman_pool::singleton::SingletonLayer;
//! use std::convert::Infallible;
//! use std::future::{Ready, ready};
//! use std::task::{Context, Poll};
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! /// A "connector" that makes a numbered connection per call.
//! struct Numbered(u32);
//!
//! impl Service<&'static str> for Numbered {
//!     type Response = String;
//!     type Error = Infallible;
//!     type Future = Ready<Result<String, Infallible>>;
//!     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, target: &'static str) -> Self::Future {
//!         self.0 += 1;
//!         ready(Ok(format!("{target} #{}", self.0)))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), connman_core::BoxError> {
//! let mut singleton = SingletonLayer::new().layer(Numbered(0));
//!
//! std::future::poll_fn(|cx| singleton.poll_ready(cx)).await?;
//! let a = singleton.call("db:5432").await?;
//! std::future::poll_fn(|cx| singleton.poll_ready(cx)).await?;
//! let b = singleton.call("db:5432").await?;
//! assert_eq!(*a, "db:5432 #1");
//! assert_eq!(*b, "db:5432 #1");
//! assert_eq!(b.references(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! [`Transport`]: connman_core::Transport

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use connman_core::backoff::{Backoff, presets};
use connman_core::driver::{Driver, Next};
use connman_core::error::{BoxError, Closed, LinkLost, SharedError};
use connman_core::lifecycle::{Counters, Event, FailureKind, Lifecycle, State};
use connman_core::refhandle::{RefCounted, RefHandle};
use connman_core::rt::tokio::{Publish, TokioTimer};
use futures_util::FutureExt;
use pin_project::pin_project;
use tokio::sync::{broadcast, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use crate::registry::{ConnectFailed, Panicked};

/// How many lifecycle events a slow subscriber may fall behind before it misses some.
pub const EVENT_CAPACITY: usize = 64;

/// Wraps a make-service in a [`Singleton`]. A small, cloneable config value.
pub struct SingletonLayer<T> {
    backoff: BackoffFactory,
    _target: PhantomData<fn(T)>,
}

type BackoffFactory = Arc<dyn Fn() -> Box<dyn Backoff + Send> + Send + Sync>;

impl<T> SingletonLayer<T> {
    /// Remakes follow connman's backoff ([`presets::connman`]: 20 ms doubling to 128 s).
    pub fn new() -> Self {
        Self {
            backoff: Arc::new(|| Box::new(presets::connman())),
            _target: PhantomData,
        }
    }

    /// Sets how remakes back off: `make` builds a fresh policy for each service the layer wraps.
    #[must_use]
    pub fn backoff<B>(mut self, make: impl Fn() -> B + Send + Sync + 'static) -> Self
    where
        B: Backoff + Send + 'static,
    {
        self.backoff = Arc::new(move || Box::new(make()));
        self
    }
}

impl<T> Default for SingletonLayer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SingletonLayer<T> {
    fn clone(&self) -> Self {
        Self {
            backoff: self.backoff.clone(),
            _target: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SingletonLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingletonLayer").finish_non_exhaustive()
    }
}

impl<M, T> Layer<M> for SingletonLayer<T>
where
    M: Service<T>,
{
    type Service = Singleton<M, T>;

    fn layer(&self, inner: M) -> Self::Service {
        Singleton::with_backoff(inner, (self.backoff)())
    }
}

/// A service that hands out [`RefHandle`]s to one made connection. See the [module docs](self).
///
/// Clones share the connection, the lifecycle and the events (the make-service is cloned).
pub struct Singleton<M, T>
where
    M: Service<T>,
{
    make: M,
    shared: Arc<Mutex<Inner<M::Response>>>,
    _target: PhantomData<fn(T)>,
}

impl<M, T> Singleton<M, T>
where
    M: Service<T>,
{
    /// Wraps `make`; remakes follow connman's backoff.
    pub fn new(make: M) -> Self {
        Self::with_backoff(make, Box::new(presets::connman()))
    }

    /// Wraps `make`; remakes follow `backoff`.
    pub fn with_backoff(make: M, backoff: Box<dyn Backoff + Send>) -> Self {
        let publish = Publish::new(EVENT_CAPACITY);
        Self {
            make,
            shared: Arc::new(Mutex::new(Inner {
                made: Made::Empty,
                driver: Driver::new(Lifecycle::new(backoff), TokioTimer::new(), publish),
            })),
            _target: PhantomData,
        }
    }

    /// Reports the made connection lost: it is forgotten, and the next call makes a new one after the backoff delay.
    /// Does nothing unless a connection is made.
    pub fn report_lost(&self) {
        let mut inner = lock(&self.shared);
        if matches!(inner.made, Made::Ready(_)) {
            inner.made = Made::Empty;
            inner.driver.link_lost(LinkLost::new());
        }
    }

    /// Closes for good: waiting and later calls fail with [`Closed`]; the made connection is forgotten.
    pub fn close(&self) {
        let mut inner = lock(&self.shared);
        // A make task waiting out the backoff or making is woken by the driver and finds it closed.
        inner.driver.close();
        if let Made::Making(waiters) = std::mem::replace(&mut inner.made, Made::Empty) {
            for waiter in waiters {
                // A waiter that is gone needs no answer.
                let _ = waiter.send(Err(Failure::Closed));
            }
        }
    }

    /// The lifecycle's state: idle, connecting, up, backing off or closed.
    pub fn state(&self) -> State {
        lock(&self.shared).driver.state()
    }

    /// Lossless counts of the lifecycle's events so far (makes, remakes, failures, losses), beside the bounded
    /// [`Singleton::subscribe`] stream.
    pub fn counters(&self) -> Counters {
        lock(&self.shared).driver.observer().counters()
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        lock(&self.shared).driver.observer().subscribe()
    }

    /// The make-service.
    pub fn get_ref(&self) -> &M {
        &self.make
    }

    /// The make-service, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.make
    }

    /// Unwraps the make-service.
    pub fn into_inner(self) -> M {
        self.make
    }
}

impl<M, T> Clone for Singleton<M, T>
where
    M: Service<T> + Clone,
{
    fn clone(&self) -> Self {
        Self {
            make: self.make.clone(),
            shared: self.shared.clone(),
            _target: PhantomData,
        }
    }
}

impl<M, T> fmt::Debug for Singleton<M, T>
where
    M: Service<T>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Singleton")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<M, T> Service<T> for Singleton<M, T>
where
    M: Service<T>,
    M::Response: Send + Sync + 'static,
    M::Error: Into<BoxError> + Send + 'static,
    M::Future: Send + 'static,
{
    type Response = RefHandle<M::Response>;
    type Error = BoxError;
    type Future = SingletonFuture<M::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if lock(&self.shared).driver.state().is_closed() {
            return Poll::Ready(Err(Closed::new().into()));
        }
        // Always asked, so that `call` may use the make-service whatever the shared state has become meanwhile.
        self.make.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> Self::Future {
        let mut inner = lock(&self.shared);
        if inner.driver.state().is_closed() {
            return SingletonFuture::ready(Err(Closed::new().into()));
        }
        match &mut inner.made {
            Made::Ready(counted) => SingletonFuture::ready(Ok(counted.acquire())),
            Made::Making(waiters) => {
                let (tx, rx) = oneshot::channel();
                // Waiters that gave up are dropped here, so the list holds only live ones.
                waiters.retain(|w| !w.is_closed());
                waiters.push(tx);
                SingletonFuture::waiting(rx)
            }
            Made::Empty => {
                let (tx, rx) = oneshot::channel();
                inner.made = Made::Making(vec![tx]);
                // Idle: the first attempt starts now. Backing off: the make task waits the delay out first.
                inner.driver.start();
                drop(inner);
                let future = self.make.call(target);
                tokio::spawn(make(self.shared.clone(), future));
                SingletonFuture::waiting(rx)
            }
        }
    }
}

/// The response future of [`Singleton`].
#[pin_project]
pub struct SingletonFuture<R> {
    #[pin]
    kind: Kind<R>,
}

#[pin_project(project = KindProj)]
enum Kind<R> {
    Ready(Option<Result<RefHandle<R>, BoxError>>),
    Waiting(#[pin] oneshot::Receiver<Result<RefHandle<R>, Failure>>),
}

impl<R> SingletonFuture<R> {
    fn ready(result: Result<RefHandle<R>, BoxError>) -> Self {
        Self {
            kind: Kind::Ready(Some(result)),
        }
    }

    fn waiting(rx: oneshot::Receiver<Result<RefHandle<R>, Failure>>) -> Self {
        Self {
            kind: Kind::Waiting(rx),
        }
    }
}

impl<R> Future for SingletonFuture<R> {
    type Output = Result<RefHandle<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(Closed::new().into())))
            }
            KindProj::Waiting(rx) => rx.poll(cx).map(|r| match r {
                Ok(Ok(handle)) => Ok(handle),
                Ok(Err(failure)) => Err(failure.into_error()),
                // The make task ended without an answer: only a runtime shutting down does that.
                Err(_) => Err(Closed::new().into()),
            }),
        }
    }
}

impl<R> fmt::Debug for SingletonFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Ready(_) => "ready",
            Kind::Waiting(_) => "waiting",
        };
        f.debug_struct("SingletonFuture")
            .field("kind", &kind)
            .finish()
    }
}

struct Inner<R> {
    made: Made<R>,
    driver: Driver<Box<dyn Backoff + Send>, TokioTimer, Publish>,
}

enum Made<R> {
    Empty,
    Making(Vec<oneshot::Sender<Result<RefHandle<R>, Failure>>>),
    Ready(RefCounted<R>),
}

#[derive(Clone)]
enum Failure {
    Connect(SharedError),
    Panicked,
    Closed,
}

impl Failure {
    fn into_error(self) -> BoxError {
        match self {
            Failure::Connect(source) => ConnectFailed::new(source).into(),
            Failure::Panicked => Panicked::default().into(),
            Failure::Closed => Closed::new().into(),
        }
    }
}

/// Waits out the backoff, runs the make, and answers every waiter.
async fn make<R, F, E>(shared: Arc<Mutex<Inner<R>>>, future: F)
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    // The driver says when: at once after a start, after the delay while backing off.
    let next = std::future::poll_fn(|cx| lock(&shared).driver.poll_next(cx)).await;
    if !matches!(next, Next::Connect { .. }) {
        // Closed while waiting: `close` already answered the waiters.
        return;
    }
    let result = AssertUnwindSafe(future).catch_unwind().await;
    let mut inner = lock(&shared);
    let failure = match result {
        Ok(Ok(made)) => {
            inner.driver.connected();
            if inner.driver.state().is_closed() {
                // Closed while making: the late connection is dropped here, which tears it down.
                return;
            }
            let counted = RefCounted::new(made, || {});
            if let Made::Making(waiters) = std::mem::replace(&mut inner.made, Made::Empty) {
                for waiter in waiters {
                    let _ = waiter.send(Ok(counted.acquire()));
                }
            }
            inner.made = Made::Ready(counted);
            return;
        }
        Ok(Err(e)) => Failure::Connect(SharedError::from(e.into())),
        Err(_) => Failure::Panicked,
    };
    // The driver keeps the wait the machine asks for; the next call's make task waits it out.
    let error: BoxError = failure.clone().into_error();
    inner.driver.connect_failed(error, FailureKind::Retriable);
    if let Made::Making(waiters) = std::mem::replace(&mut inner.made, Made::Empty) {
        for waiter in waiters {
            let _ = waiter.send(Err(failure.clone()));
        }
    }
}

fn lock<R>(shared: &Mutex<Inner<R>>) -> MutexGuard<'_, Inner<R>> {
    // No user code runs under this lock, so it is never poisoned by a callback.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use connman_core::backoff::Constant;
    use std::time::Duration;
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
    use tower_test::mock;

    type Mock = mock::Mock<&'static str, String>;
    type Handle = mock::Handle<&'static str, String>;

    fn singleton(delay: Duration) -> (Singleton<Mock, &'static str>, Handle) {
        let (mk, handle) = mock::pair();
        let layer = SingletonLayer::new().backoff(move || Constant::new(delay));
        (layer.layer(mk), handle)
    }

    async fn ready(svc: &mut Singleton<Mock, &'static str>) {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
    }

    fn events(rx: &mut broadcast::Receiver<Event>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e {
                Event::Connecting { attempt } => format!("connecting {attempt}"),
                Event::Connected { first, .. } => format!("connected first={first}"),
                Event::ConnectFailed { attempt, .. } => format!("failed {attempt}"),
                Event::Disconnected { .. } => "disconnected".to_string(),
                Event::Closed { .. } => "closed".to_string(),
                _ => "other".to_string(),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_share_one_make() {
        let (mut svc, mut handle) = singleton(Duration::from_secs(1));
        ready(&mut svc).await;
        let mut a = task::spawn(svc.call("db"));
        ready(&mut svc).await;
        let mut b = task::spawn(svc.call("db"));
        let (target, send) = handle.next_request().await.expect("one make");
        assert_eq!(target, "db");
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        send.send_response("conn".to_string());
        tokio::task::yield_now().await;
        let a = assert_ready_ok!(a.poll());
        let b = assert_ready_ok!(b.poll());
        assert_eq!(*a, "conn");
        assert_eq!(b.references(), 2);
        // Made: later calls are answered at once, without a second make.
        ready(&mut svc).await;
        let c = svc.call("db").await.expect("shared");
        assert_eq!(c.references(), 3);
        assert!(handle.poll_request().is_pending());
        assert!(svc.state().is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_caller_hands_the_make_on() {
        let (mut svc, mut handle) = singleton(Duration::from_secs(1));
        ready(&mut svc).await;
        let first = svc.call("db");
        ready(&mut svc).await;
        let second = svc.call("db");
        drop(first);
        let (_, send) = handle.next_request().await.expect("make");
        send.send_response("conn".to_string());
        let second = second.await.expect("made for the one left");
        assert_eq!(second.references(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_make_reaches_every_waiter_then_backs_off() {
        let (mut svc, mut handle) = singleton(Duration::from_secs(1));
        let mut rx = svc.subscribe();
        ready(&mut svc).await;
        let a = svc.call("db");
        ready(&mut svc).await;
        let b = svc.call("db");
        let (_, send) = handle.next_request().await.expect("make");
        send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let (a, b) = tokio::join!(a, b);
        for err in [a.unwrap_err(), b.unwrap_err()] {
            let failed = err.downcast_ref::<ConnectFailed>().expect("typed");
            assert!(failed.error().is::<std::io::Error>());
        }
        assert_eq!(events(&mut rx), ["connecting 1", "failed 1"]);

        // The next call waits out the backoff before the make runs.
        let t0 = tokio::time::Instant::now();
        ready(&mut svc).await;
        let mut c = task::spawn(svc.call("db"));
        let (_, send) = handle.next_request().await.expect("remake");
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_pending!(c.poll());
        send.send_response("conn 2".to_string());
        let c = c.await.expect("made after the backoff");
        assert_eq!(*c, "conn 2");
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(events(&mut rx), ["connecting 2", "connected first=true"]);
    }

    #[tokio::test(start_paused = true)]
    async fn report_lost_remakes_after_the_backoff() {
        let (mut svc, mut handle) = singleton(Duration::from_millis(100));
        let mut rx = svc.subscribe();
        ready(&mut svc).await;
        let call = svc.call("db");
        let (_, send) = handle.next_request().await.expect("make");
        send.send_response("conn 1".to_string());
        let old = call.await.expect("made");

        svc.report_lost();
        assert!(matches!(svc.state(), State::Backoff { .. }));
        ready(&mut svc).await;
        let call = svc.call("db");
        let (_, send) = handle.next_request().await.expect("remake");
        send.send_response("conn 2".to_string());
        let new = call.await.expect("remade");
        assert_eq!(*new, "conn 2");
        // The old handle still holds the old connection; the new one is counted on its own.
        assert_eq!(*old, "conn 1");
        assert_eq!(new.references(), 1);
        assert_eq!(
            events(&mut rx),
            [
                "connecting 1",
                "connected first=true",
                "disconnected",
                "connecting 1",
                "connected first=false"
            ]
        );
        let counters = svc.counters();
        assert_eq!(
            (
                counters.attempts,
                counters.connects,
                counters.reconnects,
                counters.links_lost
            ),
            (2, 1, 1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_fails_waiting_and_later_calls() {
        let (mut svc, mut handle) = singleton(Duration::from_secs(1));
        ready(&mut svc).await;
        let waiting = svc.call("db");
        let (_, send) = handle.next_request().await.expect("make");
        svc.close();
        assert!(waiting.await.unwrap_err().is::<Closed>());
        // A connection that arrives after the close is dropped, never handed out.
        send.send_response("late".to_string());
        tokio::task::yield_now().await;
        let mut ready_after = task::spawn(std::future::poll_fn(|cx| svc.poll_ready(cx)));
        assert!(
            assert_ready!(ready_after.poll())
                .unwrap_err()
                .is::<Closed>()
        );
        drop(ready_after);
        assert!(svc.call("db").await.unwrap_err().is::<Closed>());
        assert!(svc.state().is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn make_that_panics_is_a_typed_error() {
        struct Boom;
        impl Service<()> for Boom {
            type Response = ();
            type Error = std::io::Error;
            type Future =
                std::pin::Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: ()) -> Self::Future {
                Box::pin(async { panic!("make blew up") })
            }
        }
        let mut svc = Singleton::new(Boom);
        let err = svc.call(()).await.unwrap_err();
        assert!(err.is::<Panicked>());
        assert!(matches!(svc.state(), State::Backoff { .. }));
    }
}

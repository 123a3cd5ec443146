//! The on-up hook: what runs on each new connection before it is considered up.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};

use connman_core::error::BoxError;

/// Runs on each new connection before it serves requests: re-authenticate, resubscribe (upnode's
/// `conn.emit('up', obj)`, UP-05).
///
/// What the hook yields is what requests are served through. A hook failure counts as a failed connect attempt.
/// The hook talks to the connection it is given, never to a [`Queue`](crate::queue::Queue) above: the queue is
/// driving the hook at that moment, so a request through it would wait for itself.
/// Implemented for every `FnMut(S) -> impl Future<Output = Result<S2, E>>`, and by [`Identity`], the default.
pub trait OnUp<S> {
    /// The service that requests go through once the hook is done.
    type Service;
    /// Why the hook failed.
    type Error: Into<BoxError>;
    /// The hook in progress.
    type Future: Future<Output = Result<Self::Service, Self::Error>>;

    /// Starts the hook on a fresh connection.
    fn on_up(&mut self, conn: S) -> Self::Future;
}

/// The default hook: the connection is up as soon as it is made (upnode's default `conn.emit('up', remote)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<S> OnUp<S> for Identity {
    type Service = S;
    type Error = Infallible;
    type Future = Ready<Result<S, Infallible>>;

    fn on_up(&mut self, conn: S) -> Self::Future {
        ready(Ok(conn))
    }
}

impl<S, S2, E, F, Fut> OnUp<S> for F
where
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Result<S2, E>>,
    E: Into<BoxError>,
{
    type Service = S2;
    type Error = E;
    type Future = Fut;

    fn on_up(&mut self, conn: S) -> Self::Future {
        self(conn)
    }
}

/// The future of a [`BoxOnUp`] hook.
pub type BoxHookFuture<S2> =
    std::pin::Pin<Box<dyn Future<Output = Result<S2, BoxError>> + Send + 'static>>;

/// An on-up hook behind a box: a stack with a hook (a closure, an `async fn`) gets a type that can be written down,
/// so that it can leave the function that built it.
///
/// ```
/// use connman_core::error::BoxError;
/// use connman_queue::queue::{Queue, QueueConfig};
/// use connman_queue::reconnect::{BoxOnUp, Reconnect, ReconnectConfig};
/// use tower::util::ServiceFn;
/// use tower::{Service, ServiceExt, service_fn};
///
/// type Conn = ServiceFn<fn(String) -> std::future::Ready<Result<String, BoxError>>>;
/// type Connect = ServiceFn<fn(&'static str) -> std::future::Ready<Result<Conn, BoxError>>>;
/// /// The whole stack, named: it can be returned, stored in a struct, passed around.
/// type Stack = Queue<Reconnect<Connect, &'static str, BoxOnUp<Conn, Conn>>, String>;
///
/// fn echo(req: String) -> std::future::Ready<Result<String, BoxError>> {
///     std::future::ready(Ok(req))
/// }
/// fn connect(_: &'static str) -> std::future::Ready<Result<Conn, BoxError>> {
///     std::future::ready(Ok(service_fn(echo as fn(String) -> _)))
/// }
///
/// fn stack() -> Result<Stack, BoxError> {
///     // The hook re-authenticates on every new connection before it serves requests.
///     let hook = BoxOnUp::new(|mut conn: Conn| async move {
///         conn.ready().await?.call("auth".to_string()).await?;
///         Ok::<_, BoxError>(conn)
///     });
///     let config = ReconnectConfig::builder("db:6379").on_up(hook).build()?;
///     let connector: Connect = service_fn(connect as fn(&'static str) -> _);
///     Ok(Queue::new(Reconnect::new(connector, config), QueueConfig::default()))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let stack = stack()?;
/// assert_eq!(stack.oneshot("hi".to_string()).await?, "hi");
/// # Ok(()) }
/// ```
pub struct BoxOnUp<S, S2> {
    hook: std::sync::Arc<dyn Fn(S) -> BoxHookFuture<S2> + Send + Sync>,
}

impl<S, S2> BoxOnUp<S, S2> {
    /// Boxes `hook`; each run gets its own clone of it.
    pub fn new<H>(hook: H) -> Self
    where
        H: OnUp<S, Service = S2> + Clone + Send + Sync + 'static,
        H::Future: Send + 'static,
    {
        Self {
            hook: std::sync::Arc::new(move |conn| {
                let fut = hook.clone().on_up(conn);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }),
        }
    }
}

impl<S, S2> Clone for BoxOnUp<S, S2> {
    fn clone(&self) -> Self {
        Self {
            hook: self.hook.clone(),
        }
    }
}

impl<S, S2> std::fmt::Debug for BoxOnUp<S, S2> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxOnUp").finish_non_exhaustive()
    }
}

impl<S, S2> OnUp<S> for BoxOnUp<S, S2> {
    type Service = S2;
    type Error = BoxError;
    type Future = BoxHookFuture<S2>;

    fn on_up(&mut self, conn: S) -> Self::Future {
        (self.hook)(conn)
    }
}

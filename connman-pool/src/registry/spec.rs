//! How to make, share and end one connection: the [`Spec`], and the [`Context`] its callbacks see.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use connman_core::error::BoxError;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::listeners::{Listen, Named};
use super::manager::Scope;

/// What `connect` and listeners see: connection-manager's `this` (CM-08, CM-11).
#[derive(Debug, Clone)]
pub struct Context<K, D> {
    pub(super) id: String,
    pub(super) credentials: K,
    pub(super) scope: Arc<Scope<D>>,
}

impl<K, D> Context<K, D> {
    /// The connection's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection's credentials.
    pub fn credentials(&self) -> &K {
        &self.credentials
    }

    /// The scope this runs for: the creating scope for a first connect, the first holding scope for a reconnect, the
    /// listener's own scope for a listener.
    pub fn scope(&self) -> &Scope<D> {
        &self.scope
    }
}

/// How to make, share and end one connection.
///
/// `C` needs no trait of its own: only [`Spec::listener`] asks for [`Listen`].
pub struct Spec<C, K, D> {
    pub(super) id: String,
    pub(super) credentials: K,
    pub(super) timeout: Option<Duration>,
    pub(super) fns: SpecFns<C, K, D>,
}

pub(super) type ConnectFn<C, K, D> =
    Arc<dyn Fn(Context<K, D>) -> BoxFuture<'static, Result<C, BoxError>> + Send + Sync>;
pub(super) type DisconnectFn<C> = Arc<dyn Fn(Arc<C>) -> BoxFuture<'static, ()> + Send + Sync>;

/// The callbacks of a spec, shared by its connection's supervisor and entry.
pub(super) struct SpecFns<C, K, D> {
    pub(super) connect: ConnectFn<C, K, D>,
    pub(super) disconnect: Option<DisconnectFn<C>>,
    pub(super) listeners: Vec<Named<C, K, D>>,
}

impl<C, K, D> Spec<C, K, D>
where
    C: Send + 'static,
{
    /// A connection called `id`, made with `credentials` by `connect`.
    pub fn new<F, Fut, E>(id: impl Into<String>, credentials: K, connect: F) -> Self
    where
        F: Fn(Context<K, D>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self {
            id: id.into(),
            credentials,
            timeout: None,
            fns: SpecFns {
                connect: Arc::new(move |ctx| connect(ctx).map(|r| r.map_err(Into::into)).boxed()),
                disconnect: None,
                listeners: Vec::new(),
            },
        }
    }

    /// Ends the connection at teardown. Without it, the registry's last reference to the connection is dropped.
    #[must_use]
    pub fn disconnect<F, Fut>(mut self, disconnect: F) -> Self
    where
        F: Fn(Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.fns.disconnect = Some(Arc::new(move |conn| disconnect(conn).boxed()));
        self
    }
}

impl<C, K, D> Spec<C, K, D>
where
    C: Listen,
    K: Clone + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    /// Adds a listener for the events called `name`, attached once for every scope that holds the connection.
    #[must_use]
    pub fn listener(
        mut self,
        name: impl Into<String>,
        listener: impl Fn(&Context<K, D>, &C::Event) + Send + Sync + 'static,
    ) -> Self {
        self.fns.listeners.push(Named::new(name.into(), listener));
        self
    }
}

impl<C, K, D> Spec<C, K, D> {
    /// Bounds the connect; [`Config::connect_timeout`](super::Config::connect_timeout) otherwise.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The connection's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<C, K: fmt::Debug, D> fmt::Debug for Spec<C, K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("id", &self.id)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .field(
                "listeners",
                &self
                    .fns
                    .listeners
                    .iter()
                    .map(Named::name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

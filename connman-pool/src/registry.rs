//! Shared, reference-counted connections by id (connection-manager, done right).
//!
//! A [`Registry`] maps a namespace to a table of connections keyed by id. Code asks for a [`Manager`]: the facade of
//! one namespace seen from one [`Scope`] (a component of your program, with an id and your data). Every scope of a
//! namespace shares the namespace's table; namespaces never see each other (CM-03, CM-04).
//!
//! A connection is described by a [`Spec`]: an id, credentials (any `Clone + PartialEq` type), an async `connect`
//! function, an optional async `disconnect` function and named listeners. [`Manager::create`] connects;
//! [`Manager::get`] shares an existing connection with another scope; [`Manager::remove`] lets go of it. The
//! reference count is the number of distinct scopes holding the connection (CM-19): each holding scope owns one
//! [`RefHandle`], so [`Manager::reference_count`] is the count of a
//! [`RefCounted`]. When it falls to zero a grace period starts (20 s by default, CM-22);
//! a `get` before it ends keeps the connection (CM-23); otherwise `disconnect` runs once, bounded by a timeout, and the
//! record is gone whatever `disconnect` does (CM-25, CM-26).
//!
//! ```
//! use connman_pool::registry::{Get, Listen, Listener, ListenerId, Registry, Scope, Spec};
//! use std::sync::{Arc, Mutex};
//!
//! /// A connection that fires string events at its listeners.
//! #[derive(Default)]
//! struct Conn {
//!     listeners: Mutex<Vec<(String, Listener<String>)>>,
//! }
//!
//! impl Conn {
//!     fn fire(&self, name: &str, event: &str) {
//!         let listeners = self.listeners.lock().unwrap().clone();
//!         for (n, l) in listeners.iter().filter(|(n, _)| n == name) {
//!             l.call(&event.to_string());
//!         }
//!     }
//! }
//!
//! impl Listen for Conn {
//!     type Event = String;
//!     fn add_listener(&self, name: &str, listener: Listener<String>) {
//!         self.listeners.lock().unwrap().push((name.to_string(), listener));
//!     }
//!     fn remove_listener(&self, name: &str, id: &ListenerId) {
//!         self.listeners.lock().unwrap().retain(|(n, l)| !(n == name && l.id() == id));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), connman_core::BoxError> {
//! let registry: Registry<Conn, String, &str> = Registry::new();
//! let irc = registry.manager("apps", Scope::new("irc-ui", "ui"));
//! let logger = registry.manager("apps", Scope::new("logger", "log"));
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let spec = Spec::new("irc://user@example", "secret".to_string(), |_ctx| async {
//!     Ok::<_, std::io::Error>(Conn::default())
//! })
//! .listener("join", move |ctx, event: &String| {
//!     log.lock().unwrap().push(format!("{} saw {event}", ctx.scope().data()));
//! });
//!
//! let client = irc.create(spec).await?;
//! assert_eq!(client.references(), 1);
//!
//! // Another component shares it, with the right credentials.
//! let Get::Found(shared) = logger.get("irc://user@example", &"secret".to_string()) else {
//!     panic!("expected the connection");
//! };
//! assert_eq!(shared.references(), 2);
//! assert!(matches!(logger.get("irc://user@example", &"wrong".to_string()), Get::Mismatch));
//!
//! // Each holding scope's listeners see the event, each with its own scope.
//! shared.connection().unwrap().fire("join", "#rust");
//! let mut lines = seen.lock().unwrap().clone();
//! lines.sort();
//! assert_eq!(lines, ["log saw #rust", "ui saw #rust"]);
//! # Ok(())
//! # }
//! ```
//!
//! # What differs from connection-manager
//!
//! * **Validation is the type system** (CM-01, CM-05, CM-06). A namespace is a `&str`, an id a `String`, credentials
//!   a `K`, and [`Spec::new`] cannot be called without a `connect` function (the original forgot to check that one).
//!   Listeners are typed closures, and add/remove listener are the [`Listen`] trait of the connection type.
//! * **Scopes** (CM-02): the first [`Scope`] registered for an id in a namespace wins; a later `Scope` value with the
//!   same id gets a `Manager` bound to the first one, and its own data is dropped. [`Manager::scope`] tells which.
//! * **Single-flight create** (CM-16, CM-31). Concurrent creates of one id run one `connect`; every waiter gets the
//!   same connection (and its scope a reference) or the same error. The connect runs in the connection's own
//!   supervisor task, so a waiter that is dropped takes nothing with it: the connect goes on for the others, and if
//!   nobody is left, the connection idles through the grace period and is torn down. A waiter dropped *after* the
//!   connect completed leaves its scope holding a reference, like any other holder: let go with [`Manager::remove`].
//!   [`Manager::create`] of an id that is already up is a [`Duplicate`] error;
//!   [`Manager::get_or_create`] returns it instead. Credentials that do not match are a [`Mismatch`] error, never a
//!   second connection under the same id.
//! * **Connect timeout** (CM-07, CM-13 … CM-15): 10 s by default; the create completes exactly once, with the first
//!   of success, error and timeout. A connect still running at the timeout is kept for up to the teardown timeout so
//!   that a connection arriving late is disconnected, never leaked; a late failure is ignored.
//! * **Errors** are typed (CM-40): [`ConnectFailed`] (with the connect function's error as its source),
//!   [`Elapsed`], [`Mismatch`], [`Duplicate`], [`NotFound`], [`Closed`], [`Panicked`], carried as a
//!   [`BoxError`] to downcast.
//! * **Removal** detaches the removing scope's listeners (CM-28), and [`Manager::remove_listeners`] detaches only the
//!   calling scope's, passing the event name (CM-29). Removing an unknown id says so with [`Removed::Unknown`] (CM-21).
//! * **Teardown** (CM-24 … CM-27): at the end of the grace period the record leaves the table first, then
//!   `disconnect` runs once, in its own task, bounded by [`Config::teardown_timeout`] (3 s by default). A panic or a
//!   hang in `disconnect` is logged and changes nothing. Several scopes letting go within the grace period start it
//!   over: teardown comes one grace period after the last release.
//! * **`move_to`** (CM-32 … CM-34) re-keys a connection and keeps its connect function, credentials (the new ones if
//!   given), references and listeners; it adds no reference.
//! * **Health is event-driven** (CM-35 … CM-39). There is no 60 s poll of `isConnected`, whose default of `true` meant
//!   dead connections were never noticed. Each connection has its own supervisor task (not one global flag shared by
//!   every namespace): call [`Manager::report_lost`] when the connection tells you it is gone, and the supervisor
//!   reconnects by driving [`connman_core::Lifecycle`] with the configured backoff, using the stored credentials and
//!   the first holding scope. After every reconnect, every holding scope's listeners are attached to the new
//!   connection. While it reconnects, [`Client::connection`] is `None`. If the backoff gives up, the record is removed.
//! * **User callbacks cannot take the registry down.** Listeners, `add_listener`, `remove_listener`, `connect` and
//!   `disconnect` run under `catch_unwind` or in their own task; a panic is logged (and a panicking connect is a
//!   [`Panicked`] error). `add_listener` and `remove_listener` run while the registry's table is locked: they must
//!   not call back into the registry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use connman_core::backoff::{Backoff, presets};
use connman_core::error::{
    BoxError, Closed, Duplicate, Elapsed, InvalidConfig, LinkLost, NotFound, SharedError,
};
use connman_core::lifecycle::{Action, FailureKind, Lifecycle};
use connman_core::refhandle::{RefCounted, RefHandle};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The default connect timeout: connection-manager's 10 000 ms (CM-07).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default grace period after the last reference is gone: connection-manager's 20 000 ms "page refresh" (CM-22).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// The default bound on `disconnect`: soketi's 3 000 ms shutdown grace period (the original has none, CM-26).
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections shared by id, per namespace. Cheap to clone: clones share the tables. See the [module docs](self).
///
/// `C` is the connection type, `K` the credentials, `D` the data a [`Scope`] carries.
pub struct Registry<C: Listen, K, D> {
    shared: Arc<Shared<C, K, D>>,
}

impl<C, K, D> Registry<C, K, D>
where
    C: Listen,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    /// An empty registry with the default [`Config`].
    pub fn new() -> Self {
        Self::from_config(Config::new())
    }

    /// An empty registry.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the connect timeout or the teardown timeout is zero.
    pub fn with_config(config: Config) -> Result<Self, InvalidConfig> {
        if config.connect_timeout.is_zero() {
            return Err(InvalidConfig::new("connect timeout must be more than zero"));
        }
        if config.teardown_timeout.is_zero() {
            return Err(InvalidConfig::new(
                "teardown timeout must be more than zero",
            ));
        }
        Ok(Self::from_config(config))
    }

    /// The facade of `namespace` seen from `scope` (CM-02: the first scope registered for an id wins).
    pub fn manager(&self, namespace: &str, scope: Scope<D>) -> Manager<C, K, D> {
        let mut tables = self.shared.lock_adding();
        let ns = tables.namespaces.entry(namespace.to_string()).or_default();
        let scope = match ns.scopes.get(&scope.id) {
            Some(first) => first.clone(),
            None => {
                let scope = Arc::new(scope);
                ns.scopes.insert(scope.id.clone(), scope.clone());
                scope
            }
        };
        // A new manager of a scope starts from what the scope's last `get` found, if the tables are unchanged since.
        let generation = self.shared.generation();
        let first = match ns.held.get(&scope.id) {
            Some(held) if held.generation() == generation => OnceLock::from(held.fork()),
            Some(_) => {
                ns.held.remove(&scope.id);
                OnceLock::new()
            }
            None => OnceLock::new(),
        };
        Manager {
            shared: self.shared.clone(),
            namespace: namespace.to_string(),
            scope,
            first,
            last: Mutex::new(None),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    fn from_config(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                tables: Mutex::new(Tables {
                    namespaces: HashMap::new(),
                }),
                next_key: AtomicU64::new(1),
                generation: Generation::default(),
            }),
        }
    }
}

impl<C, K, D> Default for Registry<C, K, D>
where
    C: Listen,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Listen, K, D> Clone for Registry<C, K, D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Listen, K, D> fmt::Debug for Registry<C, K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Registry`]. Every default is finite.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// How long a connect may take: [`DEFAULT_CONNECT_TIMEOUT`] unless a [`Spec`] says otherwise.
    pub connect_timeout: Duration,
    /// How long a connection with no reference is kept: [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// How long `disconnect` may take, and how long a connect that timed out is watched for a late connection:
    /// [`DEFAULT_TEARDOWN_TIMEOUT`].
    pub teardown_timeout: Duration,
    backoff: BackoffFactory,
}

type BackoffFactory = Arc<dyn Fn() -> Box<dyn Backoff + Send> + Send + Sync>;

impl Config {
    /// The defaults; reconnects follow connman's backoff ([`presets::connman`]: 20 ms doubling to 128 s).
    pub fn new() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            grace: DEFAULT_GRACE,
            teardown_timeout: DEFAULT_TEARDOWN_TIMEOUT,
            backoff: Arc::new(|| Box::new(presets::connman())),
        }
    }

    /// Sets [`Config::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Config::grace`].
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`Config::teardown_timeout`].
    #[must_use]
    pub fn teardown_timeout(mut self, timeout: Duration) -> Self {
        self.teardown_timeout = timeout;
        self
    }

    /// Sets how reconnects back off: `make` builds a fresh policy for each connection.
    #[must_use]
    pub fn backoff<B>(mut self, make: impl Fn() -> B + Send + Sync + 'static) -> Self
    where
        B: Backoff + Send + 'static,
    {
        self.backoff = Arc::new(move || Box::new(make()));
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("connect_timeout", &self.connect_timeout)
            .field("grace", &self.grace)
            .field("teardown_timeout", &self.teardown_timeout)
            .finish_non_exhaustive()
    }
}

/// A component that holds connections: an id unique in its namespace, and your data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<D> {
    id: String,
    data: D,
}

impl<D> Scope<D> {
    /// A scope called `id`, carrying `data` to the callbacks that run on its behalf.
    pub fn new(id: impl Into<String>, data: D) -> Self {
        Self {
            id: id.into(),
            data,
        }
    }

    /// The scope's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The scope's data.
    pub fn data(&self) -> &D {
        &self.data
    }
}

/// How a connection takes and drops listeners: the `addListener`/`removeListener` of connection-manager.
///
/// The registry calls these with the table locked: they must be short and must not call the registry.
pub trait Listen: Send + Sync + 'static {
    /// What the connection's events carry.
    type Event: 'static;

    /// Attaches `listener` to the events called `name`.
    fn add_listener(&self, name: &str, listener: Listener<Self::Event>);

    /// Detaches the listener with `id` from the events called `name`.
    fn remove_listener(&self, name: &str, id: &ListenerId);
}

/// One scope's listener for one event name, attached to a live connection. Cheap to clone.
pub struct Listener<E> {
    id: ListenerId,
    call: Arc<dyn Fn(&E) + Send + Sync>,
}

impl<E> Listener<E> {
    /// Which (connection, scope) pair this listener belongs to.
    pub fn id(&self) -> &ListenerId {
        &self.id
    }

    /// Runs the listener. A panic inside it is caught and logged, and reaches neither the caller nor the registry.
    pub fn call(&self, event: &E) {
        if catch_unwind(AssertUnwindSafe(|| (self.call)(event))).is_err() {
            tracing::warn!(scope = %self.id.scope, "a listener panicked");
        }
    }
}

impl<E> Clone for Listener<E> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            call: self.call.clone(),
        }
    }
}

impl<E> fmt::Debug for Listener<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Identifies the listeners one scope attached to one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerId {
    connection: u64,
    scope: Arc<str>,
}

impl ListenerId {
    /// The id of the scope the listener runs for.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// What `connect` and listeners see: connection-manager's `this` (CM-08, CM-11).
#[derive(Debug, Clone)]
pub struct Context<K, D> {
    id: String,
    credentials: K,
    scope: Arc<Scope<D>>,
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
pub struct Spec<C: Listen, K, D> {
    id: String,
    credentials: K,
    timeout: Option<Duration>,
    fns: SpecFns<C, K, D>,
}

type ConnectFn<C, K, D> =
    Arc<dyn Fn(Context<K, D>) -> BoxFuture<'static, Result<C, BoxError>> + Send + Sync>;
type DisconnectFn<C> = Arc<dyn Fn(Arc<C>) -> BoxFuture<'static, ()> + Send + Sync>;
type ListenerFn<E, K, D> = Arc<dyn Fn(&Context<K, D>, &E) + Send + Sync>;
type NamedListener<E, K, D> = (String, ListenerFn<E, K, D>);

impl<C, K, D> Spec<C, K, D>
where
    C: Listen,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
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

    /// Adds a listener for the events called `name`, attached once for every scope that holds the connection.
    #[must_use]
    pub fn listener(
        mut self,
        name: impl Into<String>,
        listener: impl Fn(&Context<K, D>, &C::Event) + Send + Sync + 'static,
    ) -> Self {
        self.fns.listeners.push((name.into(), Arc::new(listener)));
        self
    }

    /// Bounds the connect; [`Config::connect_timeout`] otherwise.
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

impl<C: Listen, K: fmt::Debug, D> fmt::Debug for Spec<C, K, D> {
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
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A shared connection, as handed out to a scope. Cheap to clone; holding it adds no reference.
pub struct Client<C, K> {
    /// Every client made by the registry has its own count on top of the record's: clones of one client (a
    /// [`Manager`]'s cached `get` result among them) then never touch a count that other threads touch.
    handle: Arc<Handle<C, K>>,
}

impl<C, K> Client<C, K> {
    fn new(record: Arc<Record<C, K>>) -> Self {
        Self {
            handle: Arc::new(Handle { record }),
        }
    }

    fn record(&self) -> &Record<C, K> {
        &self.handle.record
    }
}

impl<C, K: Clone> Client<C, K> {
    /// The connection's id (the new one after a move).
    pub fn id(&self) -> String {
        self.record().lock().id.clone()
    }

    /// The connection's credentials.
    pub fn credentials(&self) -> K {
        self.record().lock().credentials.clone()
    }

    /// The live connection, or `None` while it reconnects or after teardown.
    pub fn connection(&self) -> Option<Arc<C>> {
        self.record().lock().connection.clone()
    }

    /// How many distinct scopes hold the connection.
    pub fn references(&self) -> usize {
        self.record().counted.references()
    }
}

impl<C, K> Clone for Client<C, K> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<C, K> fmt::Debug for Client<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.record().lock().id)
            .field("references", &self.record().counted.references())
            .finish_non_exhaustive()
    }
}

/// The three outcomes of [`Manager::get`] (CM-17).
#[derive(Debug)]
#[must_use]
pub enum Get<C, K> {
    /// No connection under that id (or it is still connecting).
    Absent,
    /// A connection exists, but the credentials differ.
    Mismatch,
    /// The connection; the calling scope now holds a reference.
    Found(Client<C, K>),
}

/// What [`Manager::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// No connection under that id (CM-21).
    Unknown,
    /// The connection exists but the calling scope held no reference.
    NotHeld,
    /// The calling scope's reference is gone.
    Released {
        /// The references left.
        remaining: usize,
    },
}

/// The credentials given do not match the connection's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    _private: (),
}

impl Mismatch {
    /// Creates the error.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("credentials do not match")
    }
}

impl std::error::Error for Mismatch {}

/// The connect function failed; every waiter of a single-flight create gets a clone.
#[derive(Debug, Clone)]
pub struct ConnectFailed {
    source: SharedError,
}

impl ConnectFailed {
    pub(crate) fn new(source: SharedError) -> Self {
        Self { source }
    }

    /// The connect function's error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect failed")
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A user callback panicked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Panicked {
    _private: (),
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("callback panicked")
    }
}

impl std::error::Error for Panicked {}

/// One namespace seen from one scope: connection-manager's scoped facade. Cheap to clone.
pub struct Manager<C: Listen, K, D> {
    shared: Arc<Shared<C, K, D>>,
    namespace: String,
    scope: Arc<Scope<D>>,
    /// The first connection `get` found this scope holding (or the one the scope's last `get` found when this
    /// manager was made). Reading it takes no lock, and a later `get` of the same connection makes it valid again.
    first: OnceLock<Held<C, K>>,
    /// The last other connection `get` found this scope holding.
    last: Mutex<Option<Held<C, K>>>,
}

impl<C, K, D> Manager<C, K, D>
where
    C: Listen,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The scope this manager acts for: the first one registered for its id (CM-02).
    pub fn scope(&self) -> &Scope<D> {
        &self.scope
    }

    /// Connects `spec`, or joins a connect of the same id in flight (CM-16).
    ///
    /// On success the calling scope holds a reference and its listeners are attached.
    ///
    /// # Errors
    ///
    /// [`ConnectFailed`], [`Elapsed`] or [`Panicked`] from the connect (shared by every waiter); [`Mismatch`] if a
    /// connect of that id is in flight with other credentials; [`Duplicate`] if the id is already connected;
    /// [`Closed`] if the registry went away.
    pub async fn create(&self, spec: Spec<C, K, D>) -> Result<Client<C, K>, BoxError> {
        self.create_or_join(spec, false).await
    }

    /// Returns the connection of `spec`'s id if it exists with the same credentials (taking a reference), joins a
    /// connect in flight, or connects (CM-31).
    ///
    /// # Errors
    ///
    /// As [`Manager::create`], except that an existing connection is no error; different credentials are a
    /// [`Mismatch`].
    pub async fn get_or_create(&self, spec: Spec<C, K, D>) -> Result<Client<C, K>, BoxError> {
        self.create_or_join(spec, true).await
    }

    /// The connection under `id` if `credentials` match; the calling scope then holds a reference and its listeners
    /// are attached, once per scope (CM-17, CM-19).
    ///
    /// Asking again for a connection the scope already holds changes nothing, and is answered from the manager's
    /// own memory without locking the registry, as long as nothing in the registry was released, detached, removed
    /// or moved since.
    pub fn get(&self, id: &str, credentials: &K) -> Get<C, K> {
        if let Some(client) = self.cached(id, credentials) {
            return Get::Found(client);
        }
        let mut tables = self.shared.lock_adding();
        let generation = self.shared.generation();
        let Some(ns) = tables.namespaces.get_mut(&self.namespace) else {
            return Get::Absent;
        };
        let Some(entry) = ns.ids.get(id).and_then(|key| ns.entries.get_mut(key)) else {
            return Get::Absent;
        };
        if !entry.ready {
            return Get::Absent;
        }
        if entry.record.lock().credentials != *credentials {
            return Get::Mismatch;
        }
        entry.hold(&self.scope);
        // The scope now holds the connection with its listeners attached: until the tables change, asking again
        // changes nothing and finds the same connection. This manager remembers it, and so does the scope for the
        // managers made after.
        let held = Held {
            generation: AtomicU64::new(generation),
            id: id.into(),
            credentials: credentials.clone(),
            client: Client::new(entry.record.clone()),
        };
        ns.held.insert(self.scope.id.clone(), held.fork());
        Get::Found(self.remember(held))
    }

    /// Lets go of the calling scope's reference to `id` and detaches its listeners (CM-19, CM-28).
    pub fn remove(&self, id: &str) -> Removed {
        let mut tables = self.shared.lock();
        let Some(entry) = tables.entry_mut(&self.namespace, id) else {
            return Removed::Unknown;
        };
        if entry.release(&self.scope.id) {
            Removed::Released {
                remaining: entry.record.counted.references(),
            }
        } else {
            Removed::NotHeld
        }
    }

    /// Lets go of the calling scope's reference to every connection of the namespace; returns how many (CM-30).
    pub fn remove_all(&self) -> usize {
        let mut tables = self.shared.lock();
        let Some(ns) = tables.namespaces.get_mut(&self.namespace) else {
            return 0;
        };
        ns.entries
            .values_mut()
            .filter_map(|e| e.release(&self.scope.id).then_some(()))
            .count()
    }

    /// Detaches the calling scope's listeners from `id` and keeps its reference; a later `get` attaches them again
    /// (CM-29 fixed: only this scope's, by event name). Returns whether there was anything to detach.
    pub fn remove_listeners(&self, id: &str) -> bool {
        let mut tables = self.shared.lock();
        let Some(entry) = tables.entry_mut(&self.namespace, id) else {
            return false;
        };
        let conn = entry.record.lock().connection.clone();
        let Some(holder) = entry
            .holders
            .iter_mut()
            .find(|h| h.scope.id == self.scope.id)
        else {
            return false;
        };
        if !holder.attached {
            return false;
        }
        holder.attached = false;
        if let Some(conn) = conn {
            detach(&*conn, entry.record.key, &holder.scope, &entry.fns);
        }
        true
    }

    /// Re-keys `old_id` (if `old_credentials` match) as `new_id`, with `new_credentials` or the old ones. Keeps the
    /// connect function, references and listeners, and adds no reference (CM-32 … CM-34).
    ///
    /// # Errors
    ///
    /// [`NotFound`] if `old_id` is not connected; [`Mismatch`] if the credentials differ; [`Duplicate`] if `new_id`
    /// is taken.
    pub fn move_to(
        &self,
        old_id: &str,
        old_credentials: &K,
        new_id: &str,
        new_credentials: Option<K>,
    ) -> Result<Client<C, K>, BoxError> {
        let mut tables = self.shared.lock();
        let Some(ns) = tables.namespaces.get_mut(&self.namespace) else {
            return Err(NotFound::new(old_id).into());
        };
        let Some(&key) = ns.ids.get(old_id) else {
            return Err(NotFound::new(old_id).into());
        };
        let Some(entry) = ns.entries.get(&key).filter(|e| e.ready) else {
            return Err(NotFound::new(old_id).into());
        };
        if entry.record.lock().credentials != *old_credentials {
            return Err(Mismatch::new().into());
        }
        if old_id != new_id && ns.ids.contains_key(new_id) {
            return Err(Duplicate::new(new_id).into());
        }
        let record = entry.record.clone();
        ns.ids.remove(old_id);
        ns.ids.insert(new_id.to_string(), key);
        let mut state = record.lock();
        state.id = new_id.to_string();
        if let Some(creds) = new_credentials {
            state.credentials = creds;
        }
        drop(state);
        Ok(Client::new(record))
    }

    /// How many distinct scopes hold `id`; 0 for an unknown id (CM-20).
    pub fn reference_count(&self, id: &str) -> usize {
        let mut tables = self.shared.lock_adding();
        tables
            .entry_mut(&self.namespace, id)
            .map_or(0, |e| e.record.counted.references())
    }

    /// Whether a connection (or a connect in flight) exists under `id`.
    pub fn exists(&self, id: &str) -> bool {
        let mut tables = self.shared.lock_adding();
        tables.entry_mut(&self.namespace, id).is_some()
    }

    /// The ids of the namespace's connections and connects in flight, sorted.
    pub fn keys(&self) -> Vec<String> {
        let tables = self.shared.lock_adding();
        let mut keys: Vec<String> = tables
            .namespaces
            .get(&self.namespace)
            .map(|ns| ns.ids.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Tells `id`'s supervisor that the connection is gone: it reconnects with backoff and re-attaches every holding
    /// scope's listeners (CM-35 … CM-39). Returns whether `id` exists. A report while not connected is ignored.
    pub fn report_lost(&self, id: &str) -> bool {
        let mut tables = self.shared.lock_adding();
        match tables.entry_mut(&self.namespace, id) {
            Some(entry) => {
                entry.signals.lost.notify_one();
                true
            }
            None => false,
        }
    }

    async fn create_or_join(
        &self,
        spec: Spec<C, K, D>,
        existing_ok: bool,
    ) -> Result<Client<C, K>, BoxError> {
        let (record, mut outcome) = {
            let mut tables = self.shared.lock_adding();
            let ns = tables.namespaces.entry(self.namespace.clone()).or_default();
            if let Some(entry) = ns.ids.get(&spec.id).and_then(|k| ns.entries.get_mut(k)) {
                if entry.record.lock().credentials != spec.credentials {
                    return Err(Mismatch::new().into());
                }
                if entry.ready {
                    if !existing_ok {
                        return Err(Duplicate::new(spec.id).into());
                    }
                    entry.hold(&self.scope);
                    return Ok(Client::new(entry.record.clone()));
                }
                *entry.joiners.entry(self.scope.id.clone()).or_insert(0) += 1;
                (entry.record.clone(), entry.outcome.clone())
            } else {
                let (record, outcome) = self.start(ns, spec);
                (record, outcome)
            }
        };
        let mut guard = JoinGuard {
            shared: Arc::downgrade(&self.shared),
            namespace: &self.namespace,
            key: record.key,
            scope: &self.scope.id,
            armed: true,
        };
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => match &*done {
                Some(Ok(())) => Ok(Client::new(record)),
                Some(Err(failure)) => Err(failure.to_error()),
                None => Err(Closed::new().into()),
            },
            // The supervisor is gone without an outcome: the registry was dropped.
            Err(_) => Err(Closed::new().into()),
        };
        guard.armed = false;
        result
    }

    /// A connection an earlier `get` found, if `id` and `credentials` are the same and the tables have not changed
    /// since.
    ///
    /// Every change to the tables that could undo a `get` (a release, a detach, a removal, a re-key) happens under
    /// their lock and moves the generation on first; an unchanged generation therefore means the scope still holds
    /// the connection with its listeners attached, and `get` would change nothing. A `last` cache that another
    /// thread is using, or that a panicking credentials comparison poisoned, is a miss.
    fn cached(&self, id: &str, credentials: &K) -> Option<Client<C, K>> {
        let generation = self.shared.generation();
        if let Some(first) = self.first.get()
            && first.answers(generation, id, credentials)
        {
            return Some(first.client.clone());
        }
        let mut last = self.last.try_lock().ok()?;
        let held = last.as_ref()?;
        if held.generation() != generation {
            // Stale for good: let go of the record now rather than at the next `get`.
            *last = None;
            return None;
        }
        held.answers(generation, id, credentials)
            .then(|| held.client.clone())
    }

    /// Keeps what a `get` found, with the tables locked; returns its client.
    ///
    /// The first finding of a manager stays for its lifetime: a later `get` of the same connection only moves its
    /// generation on. Any other finding replaces `last`, unless another thread is reading it.
    fn remember(&self, held: Held<C, K>) -> Client<C, K> {
        let client = held.client.clone();
        match self.first.get() {
            Some(first) if first.same(&held) => {
                first.generation.store(held.generation(), Ordering::Release)
            }
            Some(_) => {
                if let Ok(mut last) = self.last.try_lock() {
                    *last = Some(held);
                }
            }
            None => {
                // Only `get` sets it, with the tables locked: it cannot have been set since `get` above.
                let _ = self.first.set(held);
            }
        }
        client
    }

    /// Inserts a pending entry for `spec` with the calling scope as its first joiner, and spawns its supervisor.
    fn start(
        &self,
        ns: &mut Namespace<C, K, D>,
        spec: Spec<C, K, D>,
    ) -> (Arc<Record<C, K>>, watch::Receiver<Option<Outcome>>) {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        let on_zero = signals.clone();
        let record = Arc::new(Record {
            key,
            counted: RefCounted::new((), move || on_zero.zero.notify_one()),
            state: Mutex::new(RecordState {
                id: spec.id.clone(),
                credentials: spec.credentials,
                connection: None,
            }),
        });
        let (tx, rx) = watch::channel(None);
        let fns = Arc::new(spec.fns);
        let mut joiners = HashMap::new();
        joiners.insert(self.scope.id.clone(), 1);
        ns.ids.insert(spec.id, key);
        ns.entries.insert(
            key,
            Entry {
                record: record.clone(),
                fns: fns.clone(),
                signals: signals.clone(),
                holders: Vec::new(),
                joiners,
                ready: false,
                outcome: rx.clone(),
            },
        );
        let config = &self.shared.config;
        let supervisor = Supervisor {
            shared: Arc::downgrade(&self.shared),
            namespace: self.namespace.clone(),
            record: record.clone(),
            fns,
            signals,
            creator: self.scope.clone(),
            connect_timeout: spec.timeout.unwrap_or(config.connect_timeout),
            grace: config.grace,
            teardown_timeout: config.teardown_timeout,
            lifecycle: Lifecycle::new((config.backoff)()),
            outcome: Some(tx),
        };
        tokio::spawn(supervisor.run());
        (record, rx)
    }
}

impl<C: Listen, K, D> Clone for Manager<C, K, D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            namespace: self.namespace.clone(),
            scope: self.scope.clone(),
            first: OnceLock::new(),
            last: Mutex::new(None),
        }
    }
}

impl<C: Listen, K, D> fmt::Debug for Manager<C, K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("namespace", &self.namespace)
            .field("scope", &self.scope.id)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Private state.

struct Shared<C: Listen, K, D> {
    config: Config,
    tables: Mutex<Tables<C, K, D>>,
    next_key: AtomicU64,
    /// How many times the tables were locked for a change that can undo a `get`: the version that [`Manager`]s'
    /// cached `get` results belong to.
    generation: Generation,
}

impl<C: Listen, K, D> Shared<C, K, D> {
    /// Locks the tables. User callbacks run under `catch_unwind`, so a poisoned lock can only come from a bug here;
    /// the tables stay consistent between statements, so carrying on is sound.
    ///
    /// Whoever takes this lock may release, detach, remove or re-key, so the generation moves on before the guard is
    /// handed out: every cached `get` result is stale from then on.
    fn lock(&self) -> MutexGuard<'_, Tables<C, K, D>> {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.0.fetch_add(1, Ordering::Release);
        tables
    }

    /// Locks the tables to read them, or for changes that only add: scopes, entries, joiners, holders and attached
    /// listeners. Such changes leave every cached `get` result true (a scope that holds a connection still does), so
    /// the generation stays. Anything that releases, detaches, removes or re-keys takes [`Shared::lock`].
    fn lock_adding(&self) -> MutexGuard<'_, Tables<C, K, D>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current generation; under the lock, the one the caller's own changes belong to.
    fn generation(&self) -> u64 {
        self.generation.0.load(Ordering::Acquire)
    }
}

/// The generation counter, on a cache line of its own: `get` reads it on every call, and nothing writes it while the
/// tables are left alone.
#[derive(Default)]
#[repr(align(128))]
struct Generation(AtomicU64);

/// A [`Client`]'s way to its record: one per client the registry makes, shared by that client's clones only.
struct Handle<C, K> {
    record: Arc<Record<C, K>>,
}

/// What a successful `get` found, valid while the tables stay at `generation`.
struct Held<C, K> {
    /// Moved on, with the tables locked, when a later `get` finds the same connection again.
    generation: AtomicU64,
    id: Box<str>,
    credentials: K,
    client: Client<C, K>,
}

impl<C, K: Clone + PartialEq> Held<C, K> {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether this is the answer to a `get` of `id` with `credentials` in `generation`.
    fn answers(&self, generation: u64, id: &str, credentials: &K) -> bool {
        self.generation() == generation && *self.id == *id && self.credentials == *credentials
    }

    /// Whether `other` found the same connection under the same id and credentials.
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.client.handle.record, &other.client.handle.record)
            && self.id == other.id
            && self.credentials == other.credentials
    }

    /// The same finding with a client of its own, so that the two copies' users never share a count.
    fn fork(&self) -> Self {
        Self {
            generation: AtomicU64::new(self.generation()),
            id: self.id.clone(),
            credentials: self.credentials.clone(),
            client: Client::new(self.client.handle.record.clone()),
        }
    }
}

struct Tables<C: Listen, K, D> {
    namespaces: HashMap<String, Namespace<C, K, D>>,
}

impl<C: Listen, K, D> Tables<C, K, D> {
    fn entry_mut(&mut self, namespace: &str, id: &str) -> Option<&mut Entry<C, K, D>> {
        let ns = self.namespaces.get_mut(namespace)?;
        let key = ns.ids.get(id)?;
        ns.entries.get_mut(key)
    }
}

struct Namespace<C: Listen, K, D> {
    scopes: HashMap<String, Arc<Scope<D>>>,
    ids: HashMap<String, u64>,
    entries: HashMap<u64, Entry<C, K, D>>,
    /// What each scope's last successful `get` found, by scope id: where a new [`Manager`]'s cache starts.
    held: HashMap<String, Held<C, K>>,
}

impl<C: Listen, K, D> Default for Namespace<C, K, D> {
    fn default() -> Self {
        Self {
            scopes: HashMap::new(),
            ids: HashMap::new(),
            entries: HashMap::new(),
            held: HashMap::new(),
        }
    }
}

struct Entry<C: Listen, K, D> {
    record: Arc<Record<C, K>>,
    fns: Arc<SpecFns<C, K, D>>,
    signals: Arc<Signals>,
    /// Scopes holding a reference, in the order they took it.
    holders: Vec<Holder<D>>,
    /// Scopes waiting for the connect in flight, with how many waiters each.
    joiners: HashMap<String, usize>,
    /// Whether the first connect succeeded.
    ready: bool,
    outcome: watch::Receiver<Option<Outcome>>,
}

impl<C: Listen, K: Clone + Send + Sync + 'static, D: Send + Sync + 'static> Entry<C, K, D> {
    /// Gives `scope` a reference, once, and attaches its listeners if they are not.
    fn hold(&mut self, scope: &Arc<Scope<D>>) {
        let conn = self.record.lock().connection.clone();
        let idx = match self.holders.iter().position(|h| h.scope.id == scope.id) {
            Some(idx) => idx,
            None => {
                self.holders.push(Holder {
                    scope: scope.clone(),
                    _reference: self.record.counted.acquire(),
                    attached: false,
                });
                self.holders.len() - 1
            }
        };
        let holder = &mut self.holders[idx];
        if !holder.attached {
            holder.attached = true;
            if let Some(conn) = conn {
                attach(&*conn, &self.record, scope, &self.fns);
            }
        }
    }

    /// Drops `scope`'s reference and detaches its listeners; false if it held none.
    fn release(&mut self, scope: &str) -> bool {
        let Some(idx) = self.holders.iter().position(|h| &*h.scope.id == scope) else {
            return false;
        };
        let holder = self.holders.remove(idx);
        if holder.attached {
            if let Some(conn) = self.record.lock().connection.clone() {
                detach(&*conn, self.record.key, &holder.scope, &self.fns);
            }
        }
        // Dropping the holder drops its `RefHandle`: the last one wakes the supervisor for the grace period.
        drop(holder);
        true
    }
}

struct Holder<D> {
    scope: Arc<Scope<D>>,
    _reference: RefHandle<()>,
    attached: bool,
}

struct SpecFns<C: Listen, K, D> {
    connect: ConnectFn<C, K, D>,
    disconnect: Option<DisconnectFn<C>>,
    listeners: Vec<NamedListener<C::Event, K, D>>,
}

struct Record<C, K> {
    key: u64,
    counted: RefCounted<()>,
    state: Mutex<RecordState<C, K>>,
}

impl<C, K> Record<C, K> {
    fn lock(&self) -> MutexGuard<'_, RecordState<C, K>> {
        // No user code runs under this lock, so it cannot be poisoned by a callback.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct RecordState<C, K> {
    id: String,
    credentials: K,
    connection: Option<Arc<C>>,
}

#[derive(Default)]
struct Signals {
    /// The last reference is gone.
    zero: Notify,
    /// The user reported the connection lost.
    lost: Notify,
}

/// How the first connect ended, shared by every waiter.
#[derive(Clone)]
enum Failure {
    Connect(SharedError),
    Elapsed,
    Panicked,
}

impl Failure {
    fn to_error(&self) -> BoxError {
        match self {
            Failure::Connect(source) => ConnectFailed {
                source: source.clone(),
            }
            .into(),
            Failure::Elapsed => Elapsed::new().into(),
            Failure::Panicked => Panicked::default().into(),
        }
    }
}

type Outcome = Result<(), Failure>;

/// Withdraws a waiter from the joiners if its create future is dropped before the outcome.
struct JoinGuard<'a, C: Listen, K, D> {
    shared: Weak<Shared<C, K, D>>,
    namespace: &'a str,
    key: u64,
    scope: &'a str,
    armed: bool,
}

impl<C: Listen, K, D> Drop for JoinGuard<'_, C, K, D> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut tables = shared.lock_adding();
        let Some(entry) = tables
            .namespaces
            .get_mut(self.namespace)
            .and_then(|ns| ns.entries.get_mut(&self.key))
        else {
            return;
        };
        if let Some(n) = entry.joiners.get_mut(self.scope) {
            *n -= 1;
            if *n == 0 {
                entry.joiners.remove(self.scope);
            }
        }
    }
}

fn listener_id(key: u64, scope: &Scope<impl Sized>) -> ListenerId {
    ListenerId {
        connection: key,
        scope: Arc::from(scope.id.as_str()),
    }
}

/// Attaches `scope`'s listeners to `conn` (CM-10, CM-11).
fn attach<C, K, D>(
    conn: &C,
    record: &Arc<Record<C, K>>,
    scope: &Arc<Scope<D>>,
    fns: &SpecFns<C, K, D>,
) where
    C: Listen,
    K: Clone + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    for (name, f) in &fns.listeners {
        // The listener holds the record weakly: the connection holds the listener, and the record the connection.
        let weak = Arc::downgrade(record);
        let scope_for_call = scope.clone();
        let f = f.clone();
        let listener = Listener {
            id: listener_id(record.key, scope),
            call: Arc::new(move |event: &C::Event| {
                let Some(record) = weak.upgrade() else { return };
                let ctx = {
                    let state = record.lock();
                    Context {
                        id: state.id.clone(),
                        credentials: state.credentials.clone(),
                        scope: scope_for_call.clone(),
                    }
                };
                f(&ctx, event);
            }),
        };
        if catch_unwind(AssertUnwindSafe(|| conn.add_listener(name, listener))).is_err() {
            tracing::warn!(scope = %scope.id, listener = %name, "add_listener panicked");
        }
    }
}

/// Detaches `scope`'s listeners from `conn`, by event name (CM-29 fixed).
fn detach<C: Listen, K, D>(conn: &C, key: u64, scope: &Arc<Scope<D>>, fns: &SpecFns<C, K, D>) {
    let id = listener_id(key, scope);
    for (name, _) in &fns.listeners {
        if catch_unwind(AssertUnwindSafe(|| conn.remove_listener(name, &id))).is_err() {
            tracing::warn!(scope = %scope.id, listener = %name, "remove_listener panicked");
        }
    }
}

/// The task that owns one connection: first connect, reconnects, grace period and teardown.
struct Supervisor<C: Listen, K, D> {
    shared: Weak<Shared<C, K, D>>,
    namespace: String,
    record: Arc<Record<C, K>>,
    fns: Arc<SpecFns<C, K, D>>,
    signals: Arc<Signals>,
    creator: Arc<Scope<D>>,
    connect_timeout: Duration,
    grace: Duration,
    teardown_timeout: Duration,
    lifecycle: Lifecycle<Box<dyn Backoff + Send>>,
    /// The first connect's waiters; `None` once they have their outcome.
    outcome: Option<watch::Sender<Option<Outcome>>>,
}

/// A connect in flight and when it times out.
struct Attempt<C> {
    future: BoxFuture<'static, Result<C, Failure>>,
    deadline: Instant,
}

enum Step<C> {
    Attempt(Result<Result<C, Failure>, tokio::time::error::Elapsed>),
    Timer,
    Zero,
    Grace,
    Lost,
}

impl<C, K, D> Supervisor<C, K, D>
where
    C: Listen,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    async fn run(mut self) {
        let mut attempt = None;
        let mut wait_until: Option<Instant> = None;
        let mut grace_until: Option<Instant> = None;
        let signals = self.signals.clone();
        if let Some(Action::Connect { .. }) = self.lifecycle.start(now()) {
            attempt = Some(self.begin_attempt(self.creator.clone()));
        }
        loop {
            self.log_events();
            let step = tokio::select! {
                r = poll_attempt(attempt.as_mut()) => Step::Attempt(r),
                () = sleep_opt(wait_until) => Step::Timer,
                () = signals.zero.notified() => Step::Zero,
                () = sleep_opt(grace_until) => Step::Grace,
                () = signals.lost.notified() => Step::Lost,
            };
            match step {
                Step::Attempt(result) => {
                    let Some(done) = attempt.take() else { continue };
                    let failure = match result {
                        Ok(Ok(conn)) => {
                            if !self.connected(conn) {
                                return;
                            }
                            continue;
                        }
                        Ok(Err(failure)) => failure,
                        Err(_) => {
                            self.reap_late(done.future);
                            Failure::Elapsed
                        }
                    };
                    if self.outcome.is_some() {
                        // The first connect failed: every waiter gets the error once, and the record goes.
                        self.lifecycle
                            .connect_failed(now(), Closed::new(), FailureKind::Fatal);
                        self.log_events();
                        self.forget();
                        self.finish(Err(failure));
                        return;
                    }
                    let error: BoxError = failure.to_error();
                    match self
                        .lifecycle
                        .connect_failed(now(), error, FailureKind::Retriable)
                    {
                        Some(Action::Wait { until }) => wait_until = Some(Instant::from_std(until)),
                        _ => break,
                    }
                }
                Step::Timer => {
                    wait_until = None;
                    match self.lifecycle.timer_fired(now()) {
                        Some(Action::Connect { .. }) => {
                            let scope = self.reconnect_scope();
                            attempt = Some(self.begin_attempt(scope));
                        }
                        Some(Action::Wait { until }) => wait_until = Some(Instant::from_std(until)),
                        _ => {}
                    }
                }
                Step::Zero => grace_until = Some(Instant::now() + self.grace),
                Step::Grace => {
                    grace_until = None;
                    if self.retire() {
                        break;
                    }
                }
                Step::Lost => {
                    if !self.lifecycle.state().is_up() {
                        continue;
                    }
                    // The old connection is dead: its listeners go with it.
                    self.record.lock().connection = None;
                    match self.lifecycle.link_lost(now(), LinkLost::new()) {
                        Some(Action::Wait { until }) => wait_until = Some(Instant::from_std(until)),
                        _ => break,
                    }
                }
            }
        }
        // Closed for good: by the grace period, or because the backoff gave up.
        self.lifecycle.close(now());
        self.log_events();
        drop(attempt);
        self.forget();
        let conn = self.record.lock().connection.take();
        if let Some(conn) = conn {
            teardown(conn, self.fns.disconnect.clone(), self.teardown_timeout).await;
        }
    }

    /// Starts a connect on behalf of `scope`, with panics turned into a [`Failure`].
    fn begin_attempt(&self, scope: Arc<Scope<D>>) -> Attempt<C> {
        let ctx = {
            let state = self.record.lock();
            Context {
                id: state.id.clone(),
                credentials: state.credentials.clone(),
                scope,
            }
        };
        let connect = self.fns.connect.clone();
        let future = async move {
            let started = catch_unwind(AssertUnwindSafe(|| connect(ctx)));
            match started {
                Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(e)) => Err(Failure::Connect(SharedError::from(e))),
                    Err(_) => Err(Failure::Panicked),
                },
                Err(_) => Err(Failure::Panicked),
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
        let Some(shared) = self.shared.upgrade() else {
            self.spawn_teardown(conn);
            return false;
        };
        let mut tables = shared.lock_adding();
        let Some(entry) = tables
            .namespaces
            .get_mut(&self.namespace)
            .and_then(|ns| ns.entries.get_mut(&self.record.key))
        else {
            drop(tables);
            self.spawn_teardown(conn);
            return false;
        };
        self.lifecycle.connected(now());
        self.record.lock().connection = Some(conn.clone());
        if self.outcome.is_some() {
            // First connect: every scope still waiting becomes a holder.
            entry.ready = true;
            let ns_scopes: Vec<String> = entry.joiners.drain().map(|(s, _)| s).collect();
            for scope_id in ns_scopes {
                let scope = tables
                    .namespaces
                    .get(&self.namespace)
                    .and_then(|ns| ns.scopes.get(&scope_id).cloned());
                let entry = tables
                    .namespaces
                    .get_mut(&self.namespace)
                    .and_then(|ns| ns.entries.get_mut(&self.record.key));
                if let (Some(scope), Some(entry)) = (scope, entry) {
                    entry.hold(&scope);
                }
            }
            if self.record.counted.references() == 0 {
                // Every waiter was cancelled: nobody holds it, so the grace period starts now.
                self.signals.zero.notify_one();
            }
            drop(tables);
            self.finish(Ok(()));
        } else {
            // A reconnect: every holding scope's listeners go onto the new connection (CM-39 fixed).
            for holder in entry.holders.iter().filter(|h| h.attached) {
                attach(&*conn, &self.record, &holder.scope, &self.fns);
            }
        }
        true
    }

    /// The scope a reconnect runs for: the first holder, else the creator.
    fn reconnect_scope(&self) -> Arc<Scope<D>> {
        self.shared
            .upgrade()
            .and_then(|shared| {
                let mut tables = shared.lock_adding();
                tables
                    .namespaces
                    .get_mut(&self.namespace)
                    .and_then(|ns| ns.entries.get_mut(&self.record.key))
                    .and_then(|e| e.holders.first().map(|h| h.scope.clone()))
            })
            .unwrap_or_else(|| self.creator.clone())
    }

    /// At the end of the grace period: removes the record if still nobody holds it.
    fn retire(&mut self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return true;
        };
        let mut tables = shared.lock();
        let Some(ns) = tables.namespaces.get_mut(&self.namespace) else {
            return true;
        };
        let Some(entry) = ns.entries.get(&self.record.key) else {
            return true;
        };
        if self.record.counted.references() > 0 || !entry.joiners.is_empty() {
            // Spoken for (CM-23).
            return false;
        }
        ns.entries.remove(&self.record.key);
        ns.ids.retain(|_, k| *k != self.record.key);
        true
    }

    /// Removes the record from the table, if it is still there.
    fn forget(&self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut tables = shared.lock();
            if let Some(ns) = tables.namespaces.get_mut(&self.namespace) {
                ns.entries.remove(&self.record.key);
                ns.ids.retain(|_, k| *k != self.record.key);
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(tx) = self.outcome.take() {
            // No receiver left is fine: every waiter was cancelled.
            let _ = tx.send(Some(outcome));
        }
    }

    /// Watches a connect that timed out for a late connection, and tears it down (CM-14).
    fn reap_late(&self, future: BoxFuture<'static, Result<C, Failure>>) {
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

    fn log_events(&mut self) {
        while let Some(event) = self.lifecycle.poll_event() {
            tracing::debug!(namespace = %self.namespace, connection = self.record.key, %event);
        }
    }
}

/// Runs `disconnect` once in its own task, bounded by `bound`; a panic or a hang is logged (CM-25, CM-26).
async fn teardown<C: Listen>(conn: Arc<C>, disconnect: Option<DisconnectFn<C>>, bound: Duration) {
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

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn poll_attempt<C>(
    attempt: Option<&mut Attempt<C>>,
) -> Result<Result<C, Failure>, tokio::time::error::Elapsed> {
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

#[cfg(test)]
mod tests {
    //! The cached `get`: whatever changes the tables, a repeated `get` must answer as the locked path would.

    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A connection that counts its listeners and every add and remove.
    #[derive(Debug, Default)]
    struct Conn {
        attached: AtomicUsize,
        adds: AtomicUsize,
        removes: AtomicUsize,
    }

    impl Listen for Conn {
        type Event = ();

        fn add_listener(&self, _: &str, _: Listener<()>) {
            self.attached.fetch_add(1, Ordering::SeqCst);
            self.adds.fetch_add(1, Ordering::SeqCst);
        }

        fn remove_listener(&self, _: &str, _: &ListenerId) {
            self.attached.fetch_sub(1, Ordering::SeqCst);
            self.removes.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Reg = Registry<Conn, u64, &'static str>;

    fn spec(id: &str, credentials: u64) -> Spec<Conn, u64, &'static str> {
        Spec::new(id, credentials, |_| async {
            Ok::<_, Closed>(Conn::default())
        })
        .listener("event", |_, _: &()| {})
    }

    fn found(get: Get<Conn, u64>) -> Client<Conn, u64> {
        match get {
            Get::Found(client) => client,
            other => panic!("expected Found, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn cm_19_repeated_get_holds_once_and_a_get_after_remove_holds_again() {
        let reg = Reg::new();
        let creator = reg.manager("ns", Scope::new("creator", "c"));
        let user = reg.manager("ns", Scope::new("user", "u"));
        creator.create(spec("x", 1)).await.unwrap();
        for _ in 0..3 {
            assert_eq!(found(user.get("x", &1)).references(), 2);
        }
        assert_eq!(user.remove("x"), Removed::Released { remaining: 1 });
        assert_eq!(user.remove("x"), Removed::NotHeld);
        // The cache of the first gets must not answer for a scope that let go.
        assert_eq!(found(user.get("x", &1)).references(), 2);
        assert_eq!(user.remove("x"), Removed::Released { remaining: 1 });
    }

    #[tokio::test]
    async fn cm_30_get_after_remove_all_holds_again() {
        let reg = Reg::new();
        let user = reg.manager("ns", Scope::new("user", "u"));
        user.create(spec("x", 1)).await.unwrap();
        found(user.get("x", &1));
        assert_eq!(user.remove_all(), 1);
        assert_eq!(found(user.get("x", &1)).references(), 1);
    }

    #[tokio::test]
    async fn cm_29_get_after_remove_listeners_attaches_them_again() {
        let reg = Reg::new();
        let user = reg.manager("ns", Scope::new("user", "u"));
        let client = user.create(spec("x", 1)).await.unwrap();
        let conn = client.connection().unwrap();
        found(user.get("x", &1));
        assert_eq!(conn.attached.load(Ordering::SeqCst), 1);
        assert!(user.remove_listeners("x"));
        assert_eq!(conn.attached.load(Ordering::SeqCst), 0);
        found(user.get("x", &1));
        assert_eq!(conn.attached.load(Ordering::SeqCst), 1, "attached again");
        found(user.get("x", &1));
        assert_eq!(conn.adds.load(Ordering::SeqCst), 2, "and only once");
    }

    #[tokio::test]
    async fn cm_19_alternating_gets_of_two_connections_hold_each_once() {
        let reg = Reg::new();
        let creator = reg.manager("ns", Scope::new("creator", "c"));
        let user = reg.manager("ns", Scope::new("user", "u"));
        creator.create(spec("x", 1)).await.unwrap();
        creator.create(spec("y", 1)).await.unwrap();
        for _ in 0..3 {
            assert_eq!(found(user.get("x", &1)).references(), 2);
            assert_eq!(found(user.get("y", &1)).references(), 2);
        }
        // The second connection lives in the other cache: letting go of it must be seen there too.
        assert_eq!(user.remove("y"), Removed::Released { remaining: 1 });
        assert_eq!(found(user.get("x", &1)).references(), 2);
        assert_eq!(found(user.get("y", &1)).references(), 2);
        assert_eq!(user.remove("x"), Removed::Released { remaining: 1 });
        assert_eq!(found(user.get("y", &1)).references(), 2);
        assert_eq!(found(user.get("x", &1)).references(), 2);
        assert_eq!(user.remove_all(), 2);
    }

    #[tokio::test]
    async fn cm_17_cached_get_with_other_credentials_is_a_mismatch() {
        let reg = Reg::new();
        let user = reg.manager("ns", Scope::new("user", "u"));
        user.create(spec("x", 1)).await.unwrap();
        found(user.get("x", &1));
        assert!(matches!(user.get("x", &2), Get::Mismatch));
        assert!(matches!(user.get("y", &1), Get::Absent));
        found(user.get("x", &1));
    }

    #[tokio::test]
    async fn cm_32_cached_get_follows_a_move() {
        let reg = Reg::new();
        let user = reg.manager("ns", Scope::new("user", "u"));
        user.create(spec("old", 1)).await.unwrap();
        found(user.get("old", &1));
        user.move_to("old", &1, "new", Some(2)).unwrap();
        assert!(matches!(user.get("old", &1), Get::Absent));
        assert!(matches!(user.get("new", &1), Get::Mismatch));
        let client = found(user.get("new", &2));
        assert_eq!((client.id(), client.credentials()), ("new".to_string(), 2));
    }

    #[tokio::test]
    async fn cm_02_another_manager_of_the_scope_letting_go_is_seen() {
        let reg = Reg::new();
        let first = reg.manager("ns", Scope::new("user", "u"));
        first.create(spec("x", 1)).await.unwrap();
        found(first.get("x", &1));
        // A manager made now starts from the scope's last finding; one made after a release must not.
        let warm = reg.manager("ns", Scope::new("user", "other data"));
        assert_eq!(found(warm.get("x", &1)).references(), 1);
        let second = reg.manager("ns", Scope::new("user", "other data"));
        assert_eq!(second.remove("x"), Removed::Released { remaining: 0 });
        let late = reg.manager("ns", Scope::new("user", "other data"));
        assert_eq!(found(late.get("x", &1)).references(), 1);
        assert_eq!(first.remove("x"), Removed::Released { remaining: 0 });
        assert_eq!(found(warm.get("x", &1)).references(), 1);
        assert_eq!(first.remove("x"), Removed::Released { remaining: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn cm_22_cached_get_after_teardown_is_absent_then_finds_the_new_connection() {
        let reg = Reg::new();
        let user = reg.manager("ns", Scope::new("user", "u"));
        let old = user.create(spec("x", 1)).await.unwrap();
        found(user.get("x", &1));
        assert_eq!(user.remove("x"), Removed::Released { remaining: 0 });
        tokio::time::sleep(DEFAULT_GRACE + Duration::from_secs(1)).await;
        assert!(!user.exists("x"));
        assert!(matches!(user.get("x", &1), Get::Absent));
        let new = user.create(spec("x", 1)).await.unwrap();
        let got = found(user.get("x", &1));
        // Asked again, the manager's first finding (the old connection) must not answer for the new one.
        let again = found(user.get("x", &1));
        assert_eq!(again.references(), 1);
        let (old, new) = (old.connection(), new.connection().unwrap());
        assert!(old.is_none(), "the old connection was taken at teardown");
        assert!(Arc::ptr_eq(&new, &got.connection().unwrap()));
        assert!(Arc::ptr_eq(&new, &again.connection().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn cm_38_cached_get_after_the_backoff_gave_up_is_absent() {
        let backoff = || {
            connman_core::backoff::Constant::new(Duration::from_millis(10))
                .with_max_attempts(2)
                .unwrap()
        };
        let reg = Reg::with_config(Config::new().backoff(backoff)).unwrap();
        let user = reg.manager("ns", Scope::new("user", "u"));
        let connects = Arc::new(AtomicUsize::new(0));
        let counter = connects.clone();
        let spec = Spec::new("x", 1, move |_| {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Ok(Conn::default())
                } else {
                    Err(Closed::new())
                }
            }
        });
        user.create(spec).await.unwrap();
        found(user.get("x", &1));
        assert!(user.report_lost("x"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            connects.load(Ordering::SeqCst),
            3,
            "the connect and two retries"
        );
        // The scope still held it when the record went: only the lock taken to remove it says so.
        assert!(matches!(user.get("x", &1), Get::Absent));
    }

    /// Many scopes on two threads get, release and get again: every release must find the reference its `get`
    /// took, which a stale cache would not have taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cm_19_concurrent_gets_and_removes_keep_the_count() {
        let reg = Reg::new();
        let creator = reg.manager("ns", Scope::new("creator", "c"));
        let conn = creator
            .create(spec("x", 1))
            .await
            .unwrap()
            .connection()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..8 {
            let manager = reg.manager("ns", Scope::new(format!("task-{n}"), "t"));
            tasks.spawn(async move {
                for round in 0..200 {
                    for _ in 0..3 {
                        assert!(found(manager.get("x", &1)).references() >= 2);
                    }
                    assert!(
                        matches!(manager.remove("x"), Removed::Released { .. }),
                        "round {round}: the get took no reference"
                    );
                    tokio::task::yield_now().await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(creator.reference_count("x"), 1);
        assert_eq!(
            conn.attached.load(Ordering::SeqCst),
            1,
            "only the creator's"
        );
    }
}

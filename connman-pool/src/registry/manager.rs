//! The public faces of the registry: [`Registry`], the [`Scope`]s that hold connections, and the [`Manager`] of one
//! namespace seen from one scope, with the cache that answers a repeated `get`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use connman_core::error::{BoxError, Closed, Duplicate, InvalidConfig, NotFound};
use connman_core::generation::{Cached, Stamp};
use connman_core::lifecycle::Event;
use connman_core::rt::tokio::Publish;
use tokio::sync::{broadcast, watch};

use super::client::{Client, Get, Removed};
use super::config::Config;
use super::spec::Spec;
use super::supervisor::{Outcome, Start, Supervisor};
use super::table::{
    Entry, EntryState, Holders, Namespace, Record, RecordState, ScopeCell, Shared, Signals, Stats,
    Tables,
};
use crate::error::Mismatch;

/// How many lifecycle events a connection's subscribers may fall behind before they miss the oldest.
pub const EVENT_CAPACITY: usize = 16;

/// Connections shared by id, per namespace. Cheap to clone: clones share the tables. See the [module docs](super).
///
/// `C` is the connection type, `K` the credentials, `D` the data a [`Scope`] carries. `C` needs no trait of its own
/// unless a [`Spec`] gives it listeners.
pub struct Registry<C, K, D> {
    shared: Arc<Shared<C, K, D>>,
}

impl<C, K, D> Registry<C, K, D> {
    /// An empty registry with the default [`Config`].
    pub fn new() -> Self {
        Self {
            shared: Shared::new(Config::new()),
        }
    }

    /// An empty registry.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the connect timeout or the teardown timeout is zero.
    pub fn with_config(config: Config) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(Self {
            shared: Shared::new(config),
        })
    }

    /// The facade of `namespace` seen from `scope`.
    ///
    /// The first scope registered for an id wins while it lives (CM-02): while a manager of it exists or it holds a
    /// connection, a later `Scope` value with the same id gets a manager bound to the first, and its own data is
    /// dropped. A scope with neither leaves no trace in the registry.
    pub fn manager(&self, namespace: &str, scope: Scope<D>) -> Manager<C, K, D> {
        let namespace = self.shared.namespace(namespace);
        let scope = namespace.scope(scope);
        Manager {
            shared: self.shared.clone(),
            namespace,
            first: OnceLock::new(),
            last: Mutex::new(None),
            has_last: AtomicBool::new(false),
            scope,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// How many namespaces, scopes and connections the tables hold now. Scopes and namespaces that nothing uses any
    /// more are gone from them.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

impl<C, K, D> Default for Registry<C, K, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, K, D> Clone for Registry<C, K, D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, K, D> fmt::Debug for Registry<C, K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.shared.config)
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

/// One namespace seen from one scope: connection-manager's scoped facade. Cheap to clone (a clone starts with an
/// empty cache).
pub struct Manager<C, K, D> {
    shared: Arc<Shared<C, K, D>>,
    namespace: Arc<Namespace<C, K, D>>,
    /// The first connection `get` found this scope holding. Reading it takes no lock, and a later `get` of the same
    /// connection makes it valid again.
    first: OnceLock<Held<C, K, D>>,
    /// The last other connection `get` found this scope holding.
    last: Mutex<Option<Held<C, K, D>>>,
    /// Whether `last` was ever filled: until then a `get` skips its lock.
    has_last: AtomicBool,
    /// Dropped last, after the namespace handle: a scope's last reference takes its row out of the tables.
    scope: Arc<ScopeCell<C, K, D>>,
}

/// What a successful `get` found, stamped with the scope's generation read under the entry's lock while the scope
/// held it: fresh while that generation is still there.
type Held<C, K, D> = Cached<Found<C, K, D>>;

struct Found<C, K, D> {
    entry: Arc<Entry<C, K, D>>,
    id: Box<str>,
    credentials: K,
    client: Client<C, K>,
}

impl<C, K: PartialEq, D> Found<C, K, D> {
    /// Whether this answers a `get` of `id` with `credentials`.
    fn answers(&self, id: &str, credentials: &K) -> bool {
        *self.id == *id && self.credentials == *credentials
    }

    /// Whether this found `entry` under `id` with `credentials`.
    fn is(&self, entry: &Arc<Entry<C, K, D>>, id: &str, credentials: &K) -> bool {
        Arc::ptr_eq(&self.entry, entry) && self.answers(id, credentials)
    }
}

impl<C, K, D> Manager<C, K, D> {
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace.name
    }

    /// The scope this manager acts for: the first one registered for its id (CM-02).
    pub fn scope(&self) -> &Scope<D> {
        &self.scope.scope
    }

    /// Lets go of the calling scope's reference to `id` and detaches its listeners (CM-19, CM-28).
    pub fn remove(&self, id: &str) -> Removed {
        self.with_entry(id, |entry, state| {
            if entry.release(state, &self.scope) {
                Removed::Released {
                    remaining: entry.record.references(),
                }
            } else {
                Removed::NotHeld
            }
        })
        .unwrap_or(Removed::Unknown)
    }

    /// Lets go of the calling scope's reference to every connection of the namespace; returns how many (CM-30).
    pub fn remove_all(&self) -> usize {
        let entries: Vec<_> = self.namespace.lock().ids.values().cloned().collect();
        entries
            .iter()
            .filter(|entry| {
                let mut state = entry.lock();
                state.live && entry.release(&mut state, &self.scope)
            })
            .count()
    }

    /// Detaches the calling scope's listeners from `id` and keeps its reference; a later `get` attaches them again
    /// (CM-29 fixed: only this scope's, by event name). Returns whether there was anything to detach.
    pub fn remove_listeners(&self, id: &str) -> bool {
        self.with_entry(id, |entry, state| entry.detach(state, &self.scope))
            .unwrap_or(false)
    }

    /// How many distinct scopes hold `id`; 0 for an unknown id (CM-20).
    pub fn reference_count(&self, id: &str) -> usize {
        self.with_entry(id, |entry, _| entry.record.references())
            .unwrap_or(0)
    }

    /// Whether a connection (or a connect in flight) exists under `id`.
    pub fn exists(&self, id: &str) -> bool {
        self.with_entry(id, |_, _| ()).is_some()
    }

    /// The ids of the namespace's connections and connects in flight, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .namespace
            .lock()
            .ids
            .keys()
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// Tells `id`'s supervisor that the connection is gone: it reconnects with backoff and re-attaches every holding
    /// scope's listeners (CM-35 … CM-39). Returns whether `id` exists. A report while not connected is ignored.
    pub fn report_lost(&self, id: &str) -> bool {
        self.with_entry(id, |entry, _| entry.signals.lost.notify_one())
            .is_some()
    }

    /// The lifecycle events of `id`'s connection from now on (connecting, connected, connect failed with the connect
    /// function's own error, disconnected, closed), or `None` for an unknown id. A subscriber that falls more than
    /// [`EVENT_CAPACITY`] events behind misses the oldest and is told so by the receiver.
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<Event>> {
        self.with_entry(id, |entry, _| entry.record.events.subscribe())
    }

    /// Runs `f` on `id`'s entry, locked; `None` if the namespace has no such entry.
    ///
    /// The entry this manager's first `get` found is locked directly, without the namespace, if it still goes by
    /// `id`; any other is looked up with the namespace locked, and locked before the namespace is let go, so that it
    /// cannot leave the table in between.
    fn with_entry<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Arc<Entry<C, K, D>>, &mut EntryState<C, K, D>) -> R,
    ) -> Option<R> {
        if let Some(first) = self.first.get().map(Cached::value)
            && *first.id == *id
        {
            let mut state = first.entry.lock();
            if state.live && *state.id == *id {
                return Some(f(&first.entry, &mut state));
            }
        }
        let tables = self.namespace.lock();
        let entry = tables.ids.get(id)?.clone();
        let mut state = entry.lock();
        drop(tables);
        Some(f(&entry, &mut state))
    }
}

impl<C, K, D> Manager<C, K, D>
where
    C: Send + Sync + 'static,
    K: Clone + PartialEq + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    /// Connects `spec`, or joins a connect of the same id in flight (CM-16).
    ///
    /// On success the calling scope holds a reference and its listeners are attached.
    ///
    /// # Errors
    ///
    /// [`ConnectFailed`](crate::error::ConnectFailed), [`Elapsed`](crate::error::Elapsed) or
    /// [`Panicked`](crate::error::Panicked) from the connect (shared by every waiter); [`Mismatch`] if a connect of
    /// that id is in flight with other credentials; [`Duplicate`] if the id is already connected; [`Closed`] if the
    /// registry went away.
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
    /// own memory without a lock, as long as the scope let go of nothing (no release, no detach) and nothing it holds
    /// was re-keyed or removed since. Other scopes letting go do not count. A scope that holds the connection already
    /// allocates nothing.
    pub fn get(&self, id: &str, credentials: &K) -> Get<C, K> {
        let generation = self.scope.generation();
        if let Some(first) = self.first.get().and_then(|first| first.fresh(generation))
            && first.answers(id, credentials)
        {
            return Get::Found(first.client.clone());
        }
        if let Some(client) = self.cached_last(generation, id, credentials) {
            return Get::Found(client);
        }
        self.with_entry(id, |entry, state| {
            if !state.ready {
                return Get::Absent;
            }
            if state.credentials != *credentials {
                return Get::Mismatch;
            }
            let reuse = self.first.get().map(|first| &first.value().client);
            let client = entry.hold(state, &self.scope, reuse);
            // Read with the entry locked while the scope holds it: until the generation moves, it still does.
            let generation = self.scope.generation();
            self.remember(entry, id, credentials, &client, generation);
            Get::Found(client)
        })
        .unwrap_or(Get::Absent)
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
        let mut tables = self.namespace.lock();
        let Some(entry) = tables.ids.get(old_id).cloned() else {
            return Err(NotFound::new(old_id).into());
        };
        let mut state = entry.lock();
        if !state.ready {
            return Err(NotFound::new(old_id).into());
        }
        if state.credentials != *old_credentials {
            return Err(Mismatch::new().into());
        }
        if old_id != new_id && tables.ids.contains_key(new_id) {
            return Err(Duplicate::new(new_id).into());
        }
        tables.ids.remove(old_id);
        tables.ids.insert(new_id.into(), entry.clone());
        state.id = new_id.into();
        let mut record = entry.record.lock();
        record.id = new_id.to_string();
        if let Some(credentials) = new_credentials {
            state.credentials = credentials.clone();
            record.credentials = credentials;
        }
        drop(record);
        // Every holder's cached `get` answered for the old id and credentials.
        Entry::bump_holders(&state);
        Ok(Client::new(entry.record.clone()))
    }

    async fn create_or_join(
        &self,
        spec: Spec<C, K, D>,
        existing_ok: bool,
    ) -> Result<Client<C, K>, BoxError> {
        let (entry, mut outcome) = {
            let mut tables = self.namespace.lock();
            match tables.ids.get(spec.id.as_str()).cloned() {
                Some(entry) => {
                    let mut state = entry.lock();
                    if state.credentials != spec.credentials {
                        return Err(Mismatch::new().into());
                    }
                    if state.ready {
                        if !existing_ok {
                            return Err(Duplicate::new(spec.id).into());
                        }
                        return Ok(entry.hold(&mut state, &self.scope, None));
                    }
                    match state
                        .joiners
                        .iter_mut()
                        .find(|(scope, _)| Arc::ptr_eq(scope, &self.scope))
                    {
                        Some((_, waiters)) => *waiters += 1,
                        None => state.joiners.push((self.scope.clone(), 1)),
                    }
                    let outcome = state.outcome.clone();
                    drop(state);
                    (entry, outcome)
                }
                None => self.start(&mut tables, spec),
            }
        };
        let mut guard = JoinGuard {
            entry: &entry,
            scope: &self.scope,
            armed: true,
        };
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => match &*done {
                Some(Ok(())) => Ok(Client::new(entry.record.clone())),
                Some(Err(failure)) => Err(failure.to_error()),
                None => Err(Closed::new().into()),
            },
            // The supervisor is gone without an outcome: the registry was dropped.
            Err(_) => Err(Closed::new().into()),
        };
        guard.armed = false;
        result
    }

    /// Inserts a pending entry for `spec` with the calling scope as its first joiner, and spawns its supervisor.
    fn start(&self, tables: &mut Tables<C, K, D>, spec: Spec<C, K, D>) -> Started<C, K, D> {
        let config = &self.shared.config;
        let signals = Arc::new(Signals::default());
        let events = Publish::new(EVENT_CAPACITY);
        let record = Arc::new(Record::new(
            self.shared.next_key(),
            events.clone(),
            RecordState {
                id: spec.id.clone(),
                credentials: spec.credentials.clone(),
                connection: None,
            },
        ));
        let (tx, rx) = watch::channel(None);
        let entry = Arc::new(Entry::new(
            record,
            Arc::new(spec.fns),
            signals,
            EntryState {
                id: spec.id.as_str().into(),
                credentials: spec.credentials,
                holders: Holders::default(),
                joiners: vec![(self.scope.clone(), 1)],
                ready: false,
                live: true,
                outcome: rx.clone(),
            },
        ));
        tables.ids.insert(spec.id.into(), entry.clone());
        Supervisor::spawn(
            &entry,
            Start {
                namespace: Arc::downgrade(&self.namespace),
                entry: Arc::downgrade(&entry),
                creator: self.scope.scope.clone(),
                connect_timeout: spec.timeout.unwrap_or(config.connect_timeout),
                grace: config.grace,
                teardown_timeout: config.teardown_timeout,
                backoff: config.make_backoff(),
                events,
                outcome: tx,
            },
        );
        (entry, rx)
    }

    /// The client of the `last` cache if it answers; a `last` that another thread is using, or that a panicking
    /// credentials comparison poisoned, is a miss.
    fn cached_last(&self, generation: Stamp, id: &str, credentials: &K) -> Option<Client<C, K>> {
        if !self.has_last.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last.try_lock().ok()?;
        let found = last.as_ref()?.fresh(generation)?;
        found.answers(id, credentials).then(|| found.client.clone())
    }

    /// Keeps what a `get` found, with its entry locked.
    ///
    /// The first finding of a manager stays for its lifetime: a later `get` of the same connection only moves its
    /// generation on. Any other finding goes into `last`, unless another thread is using it.
    fn remember(
        &self,
        entry: &Arc<Entry<C, K, D>>,
        id: &str,
        credentials: &K,
        client: &Client<C, K>,
        generation: Stamp,
    ) {
        let held = || {
            Cached::new(
                Found {
                    entry: entry.clone(),
                    id: id.into(),
                    credentials: credentials.clone(),
                    client: client.clone(),
                },
                generation,
            )
        };
        match self.first.get() {
            Some(first) if first.value().is(entry, id, credentials) => {
                first.renew(generation);
            }
            Some(_) => {
                if let Ok(mut last) = self.last.try_lock() {
                    match &*last {
                        Some(l) if l.value().is(entry, id, credentials) => {
                            l.renew(generation);
                        }
                        _ => {
                            *last = Some(held());
                            self.has_last.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            None => {
                // Another thread of this manager may have set it since: then this finding is simply not kept.
                let _ = self.first.set(held());
            }
        }
    }
}

impl<C, K, D> Clone for Manager<C, K, D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            namespace: self.namespace.clone(),
            first: OnceLock::new(),
            last: Mutex::new(None),
            has_last: AtomicBool::new(false),
            scope: self.scope.clone(),
        }
    }
}

impl<C, K, D> fmt::Debug for Manager<C, K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("namespace", &self.namespace.name)
            .field("scope", &self.scope.scope.id())
            .finish_non_exhaustive()
    }
}

/// A new entry and the receiver of its first connect's outcome.
type Started<C, K, D> = (Arc<Entry<C, K, D>>, watch::Receiver<Option<Outcome>>);

/// Withdraws a waiter from the joiners if its create future is dropped before the outcome.
struct JoinGuard<'a, C, K, D> {
    entry: &'a Entry<C, K, D>,
    scope: &'a Arc<ScopeCell<C, K, D>>,
    armed: bool,
}

impl<C, K, D> Drop for JoinGuard<'_, C, K, D> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.entry.lock();
        if let Some(idx) = state
            .joiners
            .iter()
            .position(|(scope, _)| Arc::ptr_eq(scope, self.scope))
        {
            state.joiners[idx].1 -= 1;
            if state.joiners[idx].1 == 0 {
                state.joiners.remove(idx);
            }
        }
    }
}

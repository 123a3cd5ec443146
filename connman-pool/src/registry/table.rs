//! The tables and the cache they keep true.
//!
//! A registry maps namespace names to [`Namespace`]s, each with its own lock over two maps: scope ids to the live
//! [`ScopeCell`]s, and connection ids to [`Entry`]s. Each entry has its own lock over its holders and joiners, so a
//! scope that takes and lets go of a connection it already knows locks that entry only, and namespaces and entries
//! never wait for each other. Locks are taken in one order: the registry's map, a namespace, an entry, a record.
//!
//! Nothing outlives its users. A namespace holds its scopes weakly: a scope with no manager and no holding is dropped,
//! and takes its table row with it; a namespace with no scope, no connection and no manager leaves the registry.
//!
//! # The cache
//!
//! Each scope has a generation that moves on, with the entry's lock held, whenever the scope lets go of a connection
//! or of its listeners, and whenever a connection it holds is re-keyed or removed. A [`Manager`](super::Manager)
//! remembers what its `get` found with the scope's generation read under the entry's lock while the scope held it;
//! as long as the generation is the same, the scope still holds that connection with its listeners attached, and a
//! repeated `get` would change nothing. Other scopes letting go never touch it.
//!
//! The generation and the remembered answer are [`connman_core::generation`]'s types, and the steps around them are
//! its protocol: [`Entry::release`], [`Entry::detach`] and [`Entry::bump_holders`] bump with the entry locked, after
//! the change and before the references count is published; `Manager::get` reads its stamp with the entry locked,
//! after [`Entry::hold`]. That module's loom models play these steps and fail when one of them moves.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use connman_core::generation::{Generation, Stamp};
use connman_core::rt::tokio::Publish;
use tokio::sync::{Notify, watch};

use super::client::Client;
use super::config::Config;
use super::listeners::{attach, detach};
use super::manager::Scope;
use super::spec::{Context, SpecFns};
use super::supervisor::Outcome;

/// Locks `mutex`. User callbacks run under `catch_unwind`, so a poisoned lock can only come from a bug here; the
/// tables stay consistent between statements, so carrying on is sound.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many rows the registry's tables hold: what [`Registry::stats`](super::Registry::stats) returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Namespaces with a scope, a connection or a manager.
    pub namespaces: usize,
    /// Scopes with a manager or a held connection.
    pub scopes: usize,
    /// Connections, connected or connecting.
    pub connections: usize,
}

type NamespaceMap<C, K, D> = HashMap<Box<str>, Arc<Namespace<C, K, D>>>;

/// A scope waiting for a connect in flight, with how many of its waiters wait.
pub(super) type Joiner<C, K, D> = (Arc<ScopeCell<C, K, D>>, usize);

/// What every handle of a registry shares.
pub(super) struct Shared<C, K, D> {
    pub(super) config: Config,
    namespaces: Mutex<NamespaceMap<C, K, D>>,
    next_key: AtomicU64,
}

impl<C, K, D> Shared<C, K, D> {
    pub(super) fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            namespaces: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        })
    }

    /// The namespace called `name`, made if it is new.
    pub(super) fn namespace(self: &Arc<Self>, name: &str) -> Arc<Namespace<C, K, D>> {
        let mut map = lock(&self.namespaces);
        if let Some(ns) = map.get(name) {
            return ns.clone();
        }
        let ns = Arc::new(Namespace {
            name: name.into(),
            shared: Arc::downgrade(self),
            tables: Mutex::new(Tables {
                scopes: HashMap::new(),
                ids: HashMap::new(),
            }),
        });
        map.insert(name.into(), ns.clone());
        ns
    }

    /// A key no other connection of the registry has, for listener ids.
    pub(super) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops the namespace called `name` if nothing uses it any more.
    ///
    /// Only the map hands out new strong references to a namespace (managers clone theirs, and weak ones are
    /// upgraded only by a scope or a connection still in its tables), so a count of one under the map's lock, with
    /// empty tables, means nobody can reach it but through the map.
    fn prune(&self, name: &str) {
        let mut map = lock(&self.namespaces);
        let Some(ns) = map.get(name) else { return };
        if Arc::strong_count(ns) == 1 && lock(&ns.tables).is_empty() {
            map.remove(name);
        }
    }

    pub(super) fn stats(&self) -> Stats {
        let map = lock(&self.namespaces);
        let mut stats = Stats {
            namespaces: map.len(),
            ..Stats::default()
        };
        for ns in map.values() {
            let tables = lock(&ns.tables);
            stats.scopes += tables.scopes.len();
            stats.connections += tables.ids.len();
        }
        stats
    }
}

/// One namespace's scopes and connections.
pub(super) struct Namespace<C, K, D> {
    pub(super) name: Box<str>,
    shared: Weak<Shared<C, K, D>>,
    tables: Mutex<Tables<C, K, D>>,
}

pub(super) struct Tables<C, K, D> {
    /// The live scopes by id: the first registered wins while it lives (CM-02).
    scopes: HashMap<Box<str>, Weak<ScopeCell<C, K, D>>>,
    /// The connections and connects in flight by id.
    pub(super) ids: HashMap<Box<str>, Arc<Entry<C, K, D>>>,
}

impl<C, K, D> Tables<C, K, D> {
    pub(super) fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.ids.is_empty()
    }
}

impl<C, K, D> Namespace<C, K, D> {
    pub(super) fn lock(&self) -> MutexGuard<'_, Tables<C, K, D>> {
        lock(&self.tables)
    }

    /// The live scope with `scope`'s id, or `scope` registered as it (CM-02).
    pub(super) fn scope(self: &Arc<Self>, scope: Scope<D>) -> Arc<ScopeCell<C, K, D>> {
        let mut tables = self.lock();
        if let Some(first) = tables.scopes.get(scope.id()).and_then(Weak::upgrade) {
            return first;
        }
        let id: Box<str> = scope.id().into();
        let cell = Arc::new(ScopeCell {
            scope: Arc::new(scope),
            namespace: Arc::downgrade(self),
            generation: Generation::new(),
        });
        tables.scopes.insert(id, Arc::downgrade(&cell));
        cell
    }

    /// Lets go of `this` and takes the namespace out of the registry if nothing uses it any more.
    pub(super) fn let_go(this: Arc<Self>) {
        let shared = this.shared.clone();
        let name = this.name.clone();
        drop(this);
        if let Some(shared) = shared.upgrade() {
            shared.prune(&name);
        }
    }
}

/// A scope of a namespace while a manager or a holding uses it.
pub(super) struct ScopeCell<C, K, D> {
    pub(super) scope: Arc<Scope<D>>,
    namespace: Weak<Namespace<C, K, D>>,
    /// Moves on when the scope lets go of a connection or its listeners, or a connection it holds is re-keyed or
    /// removed: what a manager's cached `get` is checked against.
    generation: Generation,
}

impl<C, K, D> ScopeCell<C, K, D> {
    #[inline]
    pub(super) fn generation(&self) -> Stamp {
        self.generation.now()
    }

    /// Makes every cached `get` of this scope stale. Called with the entry concerned locked, after the change and
    /// before the references count is published.
    pub(super) fn bump(&self) {
        self.generation.bump();
    }
}

impl<C, K, D> Drop for ScopeCell<C, K, D> {
    fn drop(&mut self) {
        let Some(ns) = self.namespace.upgrade() else {
            return;
        };
        let mut tables = ns.lock();
        // A scope registered under the same id since this one died is alive, and stays.
        if tables
            .scopes
            .get(self.scope.id())
            .is_some_and(|w| w.strong_count() == 0)
        {
            tables.scopes.remove(self.scope.id());
        }
        let empty = tables.is_empty();
        drop(tables);
        if empty {
            Namespace::let_go(ns);
        }
    }
}

/// One connection of a namespace, connected or connecting.
pub(super) struct Entry<C, K, D> {
    pub(super) record: Arc<Record<C, K>>,
    pub(super) fns: Arc<SpecFns<C, K, D>>,
    pub(super) signals: Arc<Signals>,
    state: Mutex<EntryState<C, K, D>>,
}

pub(super) struct EntryState<C, K, D> {
    /// The id and credentials the entry is found by; the record keeps a copy for its clients.
    pub(super) id: Box<str>,
    pub(super) credentials: K,
    /// Scopes holding a reference.
    pub(super) holders: Holders<C, K, D>,
    /// Scopes waiting for the connect in flight, with how many waiters each.
    pub(super) joiners: Vec<Joiner<C, K, D>>,
    /// Whether the first connect succeeded.
    pub(super) ready: bool,
    /// Whether the entry is in its namespace's table.
    pub(super) live: bool,
    pub(super) outcome: watch::Receiver<Option<Outcome>>,
}

/// A scope's reference to a connection.
pub(super) struct Holder<C, K, D> {
    pub(super) scope: Arc<ScopeCell<C, K, D>>,
    attached: bool,
    /// When it took the reference, among the entry's holders: the first holder is the one with the lowest.
    seq: u64,
}

/// The holders of one connection, by the address of their scope: a scope is in the table once, and a scope cell
/// keeps its address while anyone holds it, so the address identifies it. Finding and removing a holder costs the
/// same with 64 holders as with one.
pub(super) struct Holders<C, K, D> {
    by_scope: HashMap<usize, Holder<C, K, D>, BuildHasherDefault<AddrHasher>>,
    next_seq: u64,
}

impl<C, K, D> Default for Holders<C, K, D> {
    fn default() -> Self {
        Self {
            by_scope: HashMap::default(),
            next_seq: 0,
        }
    }
}

impl<C, K, D> Holders<C, K, D> {
    fn key(scope: &ScopeCell<C, K, D>) -> usize {
        std::ptr::from_ref(scope) as usize
    }

    pub(super) fn len(&self) -> usize {
        self.by_scope.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_scope.is_empty()
    }

    fn get_mut(&mut self, scope: &ScopeCell<C, K, D>) -> Option<&mut Holder<C, K, D>> {
        self.by_scope.get_mut(&Self::key(scope))
    }

    fn remove(&mut self, scope: &ScopeCell<C, K, D>) -> Option<Holder<C, K, D>> {
        self.by_scope.remove(&Self::key(scope))
    }

    /// The holder of `scope`, added (not attached) if it held nothing; and whether it was added.
    fn entry(&mut self, scope: &Arc<ScopeCell<C, K, D>>) -> (&mut Holder<C, K, D>, bool) {
        let seq = self.next_seq;
        let mut added = false;
        let holder = self.by_scope.entry(Self::key(scope)).or_insert_with(|| {
            added = true;
            Holder {
                scope: scope.clone(),
                attached: false,
                seq,
            }
        });
        if added {
            self.next_seq += 1;
        }
        (holder, added)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Holder<C, K, D>> {
        self.by_scope.values()
    }

    /// The scope that has held the connection longest.
    pub(super) fn first(&self) -> Option<&Holder<C, K, D>> {
        self.by_scope.values().min_by_key(|h| h.seq)
    }
}

/// Hashes a scope cell's address: a multiplicative hash of its bits above the alignment.
#[derive(Default)]
pub(super) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `usize` keys are hashed here; this keeps any other input correct, if slow.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl<C, K, D> Entry<C, K, D> {
    pub(super) fn new(
        record: Arc<Record<C, K>>,
        fns: Arc<SpecFns<C, K, D>>,
        signals: Arc<Signals>,
        state: EntryState<C, K, D>,
    ) -> Self {
        Self {
            record,
            fns,
            signals,
            state: Mutex::new(state),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, EntryState<C, K, D>> {
        lock(&self.state)
    }

    /// Gives `scope` a reference, once, and attaches its listeners if they are not; returns a client, `reuse` if that
    /// is a client of this connection (the manager's own, so that nothing is allocated), else a new one.
    pub(super) fn hold(
        &self,
        state: &mut EntryState<C, K, D>,
        scope: &Arc<ScopeCell<C, K, D>>,
        reuse: Option<&Client<C, K>>,
    ) -> Client<C, K> {
        let (holder, added) = state.holders.entry(scope);
        if !holder.attached {
            holder.attached = true;
            if !self.fns.listeners.is_empty()
                && let Some(conn) = self.record.connection()
            {
                attach(&*conn, &self.record, scope, &self.fns.listeners);
            }
        }
        if added {
            self.record.set_references(state.holders.len());
        }
        match reuse {
            Some(client) if client.is_of(&self.record) => client.clone(),
            _ => Client::new(self.record.clone()),
        }
    }

    /// Drops `scope`'s reference and detaches its listeners; false if it held none.
    pub(super) fn release(
        &self,
        state: &mut EntryState<C, K, D>,
        scope: &ScopeCell<C, K, D>,
    ) -> bool {
        let Some(holder) = state.holders.remove(scope) else {
            return false;
        };
        scope.bump();
        if holder.attached
            && !self.fns.listeners.is_empty()
            && let Some(conn) = self.record.connection()
        {
            detach(&*conn, self.record.key, scope, &self.fns.listeners);
        }
        self.record.set_references(state.holders.len());
        if state.holders.is_empty() {
            // The last reference is gone: the supervisor starts the grace period.
            self.signals.zero.notify_one();
        }
        drop(holder);
        true
    }

    /// Detaches `scope`'s listeners and keeps its reference; false if there was nothing to detach.
    pub(super) fn detach(
        &self,
        state: &mut EntryState<C, K, D>,
        scope: &ScopeCell<C, K, D>,
    ) -> bool {
        let Some(holder) = state.holders.get_mut(scope) else {
            return false;
        };
        if !holder.attached {
            return false;
        }
        holder.attached = false;
        scope.bump();
        if let Some(conn) = self.record.connection() {
            detach(&*conn, self.record.key, scope, &self.fns.listeners);
        }
        true
    }

    /// Attaches every attached holder's listeners to a new connection (after a reconnect, CM-39).
    pub(super) fn reattach(&self, state: &EntryState<C, K, D>, conn: &C) {
        if self.fns.listeners.is_empty() {
            return;
        }
        for holder in state.holders.iter().filter(|h| h.attached) {
            attach(conn, &self.record, &holder.scope, &self.fns.listeners);
        }
    }

    /// Makes every holder's cached `get` of this entry stale: the entry was re-keyed or is leaving.
    pub(super) fn bump_holders(state: &EntryState<C, K, D>) {
        for holder in state.holders.iter() {
            holder.scope.bump();
        }
    }
}

impl<C, K, D> Drop for Entry<C, K, D> {
    /// An entry dropped with holders is one whose registry is gone: nobody can let go of it any more, so its
    /// supervisor is told that the last reference went, and tears the connection down after the grace period.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !state.holders.is_empty() {
            self.record.set_references(0);
            self.signals.zero.notify_one();
        }
    }
}

/// What a [`Client`] reaches: the connection and what can be read of it without the tables.
pub(super) struct Record<C, K> {
    pub(super) key: u64,
    /// How many scopes hold the connection: the length of the entry's holders, written with the entry locked so that
    /// clients read it without a lock.
    references: AtomicUsize,
    /// The lifecycle's events, published by the supervisor's driver.
    pub(super) events: Publish,
    state: Mutex<RecordState<C, K>>,
}

pub(super) struct RecordState<C, K> {
    pub(super) id: String,
    pub(super) credentials: K,
    pub(super) connection: Option<Arc<C>>,
}

impl<C, K> Record<C, K> {
    pub(super) fn new(key: u64, events: Publish, state: RecordState<C, K>) -> Self {
        Self {
            key,
            references: AtomicUsize::new(0),
            events,
            state: Mutex::new(state),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RecordState<C, K>> {
        // No user code runs under this lock.
        lock(&self.state)
    }

    /// How many distinct scopes hold the connection.
    pub(super) fn references(&self) -> usize {
        self.references.load(Ordering::Acquire)
    }

    /// Sets the count, with the entry locked.
    pub(super) fn set_references(&self, n: usize) {
        self.references.store(n, Ordering::Release);
    }

    pub(super) fn connection(&self) -> Option<Arc<C>> {
        self.lock().connection.clone()
    }
}

impl<C, K: Clone> Record<C, K> {
    /// What a callback running for `scope` sees.
    pub(super) fn context<D>(&self, scope: Arc<Scope<D>>) -> Context<K, D> {
        let state = self.lock();
        Context {
            id: state.id.clone(),
            credentials: state.credentials.clone(),
            scope,
        }
    }
}

/// What wakes a connection's supervisor.
#[derive(Default)]
pub(super) struct Signals {
    /// The last reference is gone.
    pub(super) zero: Notify,
    /// The user reported the connection lost.
    pub(super) lost: Notify,
}

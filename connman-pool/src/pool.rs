//! Named pools of supervised connections (connman's `createPool` and `connect`, done right).
//!
//! [`Pools`] holds named [`Pool`]s and single connections keyed by a name (connman keys them `"host:port"`). Members are
//! anything that implements [`Disconnect`], such as a supervised TCP `Connection`.
//!
//! What differs from connman:
//!
//! * A pool name or single-connection key that is already taken is a [`Duplicate`] error (CN-16, CN-18). The original
//!   overwrote the entry and orphaned the first, still connected. Here a single connection is made by a closure that
//!   runs only once the key is known to be free, so a rejected key never leaves a live socket behind.
//! * Index access returns `Option` instead of throwing out of range (CN-19).
//! * [`Pool::disconnect`] reaches every member, [`Pools::disconnect_all`] every pool and every single connection
//!   (CN-20, CN-21). Entries stay in place after a disconnect, as in connman, so they can still be inspected.
//!
//! [`Pools`] and [`Pool`] are handles: cheap to clone, every method takes `&self`, and clones share one set of pools,
//! so tasks share them without an outer lock. Members are kept as `Arc<C>`. A single connection is made outside
//! the lock: while `make` runs its key is reserved (a second `connect` of it is a [`Duplicate`]) and
//! [`Pools::connection`] does not see it yet; if `make` panics, the key is free again.
//!
//! ```
//! use connman_core::error::Duplicate;
//! use connman_core::supervise::Disconnect;
//! use connman_pool::pool::Pools;
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! #[derive(Debug, Default)]
//! struct Conn {
//!     stopped: AtomicBool,
//! }
//!
//! impl Disconnect for Conn {
//!     fn disconnect(&self) {
//!         self.stopped.store(true, Ordering::SeqCst);
//!     }
//! }
//!
//! let pools = Pools::new();
//! let pool = pools.create_pool("echo")?;
//! pool.add(Conn::default());
//! pool.add(Conn::default());
//! assert_eq!(pool.len(), 2);
//! assert!(pool.get(2).is_none());
//!
//! // A name that is taken is an error, and the existing pool is left alone.
//! assert!(pools.create_pool("echo").is_err());
//!
//! // Another task adds through its own clone: no outer lock.
//! let shared = pools.clone();
//! std::thread::spawn(move || {
//!     shared.pool("echo").map(|pool| pool.add(Conn::default()));
//! })
//! .join()
//! .unwrap();
//! assert_eq!(pool.len(), 3);
//!
//! pools.connect("127.0.0.1:8124", Conn::default)?;
//! let second = pools.connect("127.0.0.1:8124", || unreachable!("never made for a taken key"));
//! assert_eq!(second.unwrap_err(), Duplicate::new("127.0.0.1:8124"));
//!
//! pools.disconnect_all();
//! assert!(pools.pool("echo").unwrap().iter().all(|c| c.stopped.load(Ordering::SeqCst)));
//! assert!(pools.connection("127.0.0.1:8124").unwrap().stopped.load(Ordering::SeqCst));
//! # Ok::<(), Duplicate>(())
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use connman_core::error::Duplicate;
pub use connman_core::supervise::Disconnect;

/// Named pools and single connections, shared by every clone. See the [module docs](self).
pub struct Pools<C> {
    inner: Arc<Mutex<Tables<C>>>,
}

struct Tables<C> {
    pools: HashMap<String, Pool<C>>,
    /// Pool names in the order they were created.
    pool_order: Vec<String>,
    singles: HashMap<String, Single<C>>,
    /// Single-connection keys in the order they were reserved, so `disconnect_all` is deterministic.
    single_order: Vec<String>,
}

enum Single<C> {
    /// `make` is running for this key.
    Making,
    Made(Arc<C>),
}

/// No user code runs under these locks, so a poisoned one can only come from a bug here; the tables stay consistent
/// between statements, so carrying on is sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C> Pools<C> {
    /// No pools and no single connections.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Tables {
                pools: HashMap::new(),
                pool_order: Vec::new(),
                singles: HashMap::new(),
                single_order: Vec::new(),
            })),
        }
    }

    /// Creates an empty pool called `name` and returns a handle to it.
    ///
    /// # Errors
    ///
    /// [`Duplicate`] if a pool of that name exists; the existing pool is not touched (CN-18).
    pub fn create_pool(&self, name: impl Into<String>) -> Result<Pool<C>, Duplicate> {
        let mut tables = lock(&self.inner);
        let tables = &mut *tables;
        match tables.pools.entry(name.into()) {
            Entry::Occupied(e) => Err(Duplicate::new(e.key().clone())),
            Entry::Vacant(e) => {
                tables.pool_order.push(e.key().clone());
                let pool = Pool::new(e.key().clone());
                Ok(e.insert(pool).clone())
            }
        }
    }

    /// A handle to the pool called `name`.
    pub fn pool(&self, name: &str) -> Option<Pool<C>> {
        lock(&self.inner).pools.get(name).cloned()
    }

    /// Adds a single connection under `key`, made by `make` only if the key is free.
    ///
    /// `make` runs without any lock held, with the key reserved.
    ///
    /// # Errors
    ///
    /// [`Duplicate`] if `key` is taken or being made; `make` is then not called, so no second connection is ever
    /// started (CN-16).
    pub fn connect(
        &self,
        key: impl Into<String>,
        make: impl FnOnce() -> C,
    ) -> Result<Arc<C>, Duplicate> {
        let key = key.into();
        {
            let mut tables = lock(&self.inner);
            let tables = &mut *tables;
            match tables.singles.entry(key.clone()) {
                Entry::Occupied(e) => return Err(Duplicate::new(e.key().clone())),
                Entry::Vacant(e) => {
                    tables.single_order.push(e.key().clone());
                    e.insert(Single::Making);
                }
            }
        }
        let mut reservation = Reservation {
            tables: &self.inner,
            key: &key,
            armed: true,
        };
        let conn = Arc::new(make());
        reservation.armed = false;
        drop(reservation);
        lock(&self.inner)
            .singles
            .insert(key, Single::Made(conn.clone()));
        Ok(conn)
    }

    /// The single connection under `key`, once made.
    pub fn connection(&self, key: &str) -> Option<Arc<C>> {
        match lock(&self.inner).singles.get(key) {
            Some(Single::Made(conn)) => Some(conn.clone()),
            _ => None,
        }
    }

    /// The names of the pools, in creation order.
    pub fn pool_names(&self) -> Vec<String> {
        lock(&self.inner).pool_order.clone()
    }

    /// The keys of the single connections, made or being made, in the order they were added.
    pub fn connection_keys(&self) -> Vec<String> {
        lock(&self.inner).single_order.clone()
    }
}

impl<C: Disconnect> Pools<C> {
    /// Disconnects every member of every pool, then every single connection (CN-20, CN-21). The connections are
    /// told outside the lock, so `disconnect` may use the pools.
    pub fn disconnect_all(&self) {
        let (pools, singles): (Vec<Pool<C>>, Vec<Arc<C>>) = {
            let tables = lock(&self.inner);
            (
                tables
                    .pool_order
                    .iter()
                    .filter_map(|name| tables.pools.get(name).cloned())
                    .collect(),
                tables
                    .single_order
                    .iter()
                    .filter_map(|key| match tables.singles.get(key) {
                        Some(Single::Made(conn)) => Some(conn.clone()),
                        _ => None,
                    })
                    .collect(),
            )
        };
        for pool in pools {
            pool.disconnect();
        }
        for conn in singles {
            conn.disconnect();
        }
    }
}

impl<C> Clone for Pools<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> Default for Pools<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> fmt::Debug for Pools<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables = lock(&self.inner);
        f.debug_struct("Pools")
            .field("pools", &tables.pool_order)
            .field("connections", &tables.single_order)
            .finish()
    }
}

/// Frees a reserved key if `make` panicked.
struct Reservation<'a, C> {
    tables: &'a Mutex<Tables<C>>,
    key: &'a str,
    armed: bool,
}

impl<C> Drop for Reservation<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            let mut tables = lock(self.tables);
            tables.singles.remove(self.key);
            tables.single_order.retain(|k| k != self.key);
        }
    }
}

/// A named pool: connections in insertion order. A handle: clones share the pool.
pub struct Pool<C> {
    inner: Arc<PoolInner<C>>,
}

struct PoolInner<C> {
    name: String,
    members: Mutex<Vec<Arc<C>>>,
}

impl<C> Pool<C> {
    /// An empty pool called `name`, of its own.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                name: name.into(),
                members: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Adds a connection at the end and returns its index.
    pub fn add(&self, conn: C) -> usize {
        let mut members = lock(&self.inner.members);
        members.push(Arc::new(conn));
        members.len() - 1
    }

    /// The connection at `index` in insertion order, or `None` out of range (CN-19).
    pub fn get(&self, index: usize) -> Option<Arc<C>> {
        lock(&self.inner.members).get(index).cloned()
    }

    /// The connections in insertion order, as they are now.
    pub fn iter(&self) -> std::vec::IntoIter<Arc<C>> {
        lock(&self.inner.members).clone().into_iter()
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        lock(&self.inner.members).len()
    }

    /// Whether the pool holds no connection.
    pub fn is_empty(&self) -> bool {
        lock(&self.inner.members).is_empty()
    }
}

impl<C: Disconnect> Pool<C> {
    /// Disconnects every member (CN-21), outside the pool's lock.
    pub fn disconnect(&self) {
        for conn in self.iter() {
            conn.disconnect();
        }
    }
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .finish()
    }
}

impl<C> IntoIterator for &Pool<C> {
    type Item = Arc<C>;
    type IntoIter = std::vec::IntoIter<Arc<C>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

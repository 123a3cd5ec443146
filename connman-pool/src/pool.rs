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
//! The types take `&mut self` to change: share them behind a `Mutex` if several tasks need them.
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
//! let mut pools = Pools::new();
//! let pool = pools.create_pool("echo")?;
//! pool.add(Conn::default());
//! pool.add(Conn::default());
//! assert_eq!(pool.len(), 2);
//! assert!(pool.get(2).is_none());
//!
//! // A name that is taken is an error, and the existing pool is left alone.
//! assert!(pools.create_pool("echo").is_err());
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

pub use connman_core::error::Duplicate;
pub use connman_core::supervise::Disconnect;

/// Named pools and single connections. See the [module docs](self).
#[derive(Debug)]
pub struct Pools<C> {
    pools: HashMap<String, Pool<C>>,
    singles: HashMap<String, C>,
    /// Single-connection keys in the order they were added, so `disconnect_all` is deterministic.
    single_order: Vec<String>,
    /// Pool names in the order they were created.
    pool_order: Vec<String>,
}

impl<C> Pools<C> {
    /// No pools and no single connections.
    pub fn new() -> Self {
        Self {
            pools: HashMap::new(),
            singles: HashMap::new(),
            single_order: Vec::new(),
            pool_order: Vec::new(),
        }
    }

    /// Creates an empty pool called `name`.
    ///
    /// # Errors
    ///
    /// [`Duplicate`] if a pool of that name exists; the existing pool is not touched (CN-18).
    pub fn create_pool(&mut self, name: impl Into<String>) -> Result<&mut Pool<C>, Duplicate> {
        let name = name.into();
        match self.pools.entry(name) {
            Entry::Occupied(e) => Err(Duplicate::new(e.key().clone())),
            Entry::Vacant(e) => {
                self.pool_order.push(e.key().clone());
                let name = e.key().clone();
                Ok(e.insert(Pool::new(name)))
            }
        }
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool<C>> {
        self.pools.get(name)
    }

    /// The pool called `name`, to add to it.
    pub fn pool_mut(&mut self, name: &str) -> Option<&mut Pool<C>> {
        self.pools.get_mut(name)
    }

    /// Adds a single connection under `key`, made by `make` only if the key is free.
    ///
    /// # Errors
    ///
    /// [`Duplicate`] if `key` is taken; `make` is then not called, so no second connection is ever started (CN-16).
    pub fn connect(
        &mut self,
        key: impl Into<String>,
        make: impl FnOnce() -> C,
    ) -> Result<&C, Duplicate> {
        let key = key.into();
        match self.singles.entry(key) {
            Entry::Occupied(e) => Err(Duplicate::new(e.key().clone())),
            Entry::Vacant(e) => {
                self.single_order.push(e.key().clone());
                Ok(e.insert(make()))
            }
        }
    }

    /// The single connection under `key`.
    pub fn connection(&self, key: &str) -> Option<&C> {
        self.singles.get(key)
    }

    /// The names of the pools, in creation order.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pool_order.iter().map(String::as_str)
    }

    /// The keys of the single connections, in the order they were added.
    pub fn connection_keys(&self) -> impl Iterator<Item = &str> {
        self.single_order.iter().map(String::as_str)
    }
}

impl<C: Disconnect> Pools<C> {
    /// Disconnects every member of every pool, then every single connection (CN-20, CN-21).
    pub fn disconnect_all(&self) {
        for name in &self.pool_order {
            if let Some(pool) = self.pools.get(name) {
                pool.disconnect();
            }
        }
        for key in &self.single_order {
            if let Some(conn) = self.singles.get(key) {
                conn.disconnect();
            }
        }
    }
}

impl<C> Default for Pools<C> {
    fn default() -> Self {
        Self::new()
    }
}

/// A named pool: connections in insertion order.
#[derive(Debug)]
pub struct Pool<C> {
    name: String,
    members: Vec<C>,
}

impl<C> Pool<C> {
    /// An empty pool called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            members: Vec::new(),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a connection at the end and returns its index.
    pub fn add(&mut self, conn: C) -> usize {
        self.members.push(conn);
        self.members.len() - 1
    }

    /// The connection at `index` in insertion order, or `None` out of range (CN-19).
    pub fn get(&self, index: usize) -> Option<&C> {
        self.members.get(index)
    }

    /// The connections in insertion order.
    pub fn iter(&self) -> std::slice::Iter<'_, C> {
        self.members.iter()
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool holds no connection.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl<C: Disconnect> Pool<C> {
    /// Disconnects every member (CN-21).
    pub fn disconnect(&self) {
        for conn in &self.members {
            conn.disconnect();
        }
    }
}

impl<'a, C> IntoIterator for &'a Pool<C> {
    type Item = &'a C;
    type IntoIter = std::slice::Iter<'a, C>;

    fn into_iter(self) -> Self::IntoIter {
        self.members.iter()
    }
}

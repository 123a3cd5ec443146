//! What a scope is handed: a [`Client`] of a shared connection, and the outcomes of `get` and `remove`.

use std::fmt;
use std::sync::Arc;

use super::table::Record;

/// A shared connection, as handed out to a scope. Cheap to clone; holding it adds no reference.
pub struct Client<C, K> {
    /// Every holding has a client of its own on top of the record: clones of one client (a [`Manager`]'s cached `get`
    /// result among them) then never touch a count that other scopes touch.
    ///
    /// [`Manager`]: super::Manager
    handle: Arc<Handle<C, K>>,
}

/// A [`Client`]'s way to its record.
struct Handle<C, K> {
    record: Arc<Record<C, K>>,
}

impl<C, K> Client<C, K> {
    pub(super) fn new(record: Arc<Record<C, K>>) -> Self {
        Self {
            handle: Arc::new(Handle { record }),
        }
    }

    /// Whether this is a client of `record`.
    pub(super) fn is_of(&self, record: &Arc<Record<C, K>>) -> bool {
        Arc::ptr_eq(&self.handle.record, record)
    }

    fn record(&self) -> &Record<C, K> {
        &self.handle.record
    }

    /// The live connection, or `None` while it reconnects or after teardown.
    pub fn connection(&self) -> Option<Arc<C>> {
        self.record().connection()
    }

    /// How many distinct scopes hold the connection.
    pub fn references(&self) -> usize {
        self.record().references()
    }

    /// The connection's lifecycle events from now on, as [`Manager::subscribe`](super::Manager::subscribe).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<connman_core::lifecycle::Event> {
        self.record().events.subscribe()
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
            .field("references", &self.record().references())
            .finish_non_exhaustive()
    }
}

/// The three outcomes of [`Manager::get`](super::Manager::get) (CM-17).
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

/// What [`Manager::remove`](super::Manager::remove) did.
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

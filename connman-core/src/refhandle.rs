//! Shared handles that count their holders.
//!
//! A [`RefCounted`] is held by an owner (a registry, a singleton service). It hands out [`RefHandle`]s; each clone of a
//! handle is one more holder, each drop one fewer. When the last handle goes, the owner's callback runs exactly once
//! for that transition, and the owner decides what to do: start a grace period, tear down. A later
//! [`RefCounted::acquire`] revives the count, so the owner must check [`RefCounted::references`] again before it tears
//! anything down.
//!
//! ```
//! use connman_core::refhandle::RefCounted;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! let released = Arc::new(AtomicUsize::new(0));
//! let counter = released.clone();
//! let shared = RefCounted::new("conn", move || {
//!     counter.fetch_add(1, Ordering::SeqCst);
//! });
//!
//! let a = shared.acquire();
//! let b = a.clone();
//! assert_eq!(shared.references(), 2);
//! assert_eq!(*b, "conn");
//! drop(a);
//! drop(b);
//! assert_eq!(shared.references(), 0);
//! assert_eq!(released.load(Ordering::SeqCst), 1);
//! ```

use std::fmt;
use std::ops::Deref;

#[cfg(loom)]
use loom::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering, fence},
};
#[cfg(not(loom))]
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering, fence},
};

type OnLastDrop = Box<dyn Fn() + Send + Sync>;

struct Inner<T> {
    value: T,
    holders: AtomicUsize,
    on_last_drop: OnLastDrop,
}

/// The owner's side of a shared value: hands out [`RefHandle`]s and hears when the last one is gone.
pub struct RefCounted<T> {
    inner: Arc<Inner<T>>,
}

impl<T> RefCounted<T> {
    /// Shares `value` with no holders yet. `on_last_drop` runs each time the number of holders falls to zero.
    ///
    /// The callback runs on the thread of the dropping holder: keep it short and non-blocking (send on a channel, wake
    /// a task).
    pub fn new(value: T, on_last_drop: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                value,
                holders: AtomicUsize::new(0),
                on_last_drop: Box::new(on_last_drop),
            }),
        }
    }

    /// Adds a holder.
    pub fn acquire(&self) -> RefHandle<T> {
        self.inner.holders.fetch_add(1, Ordering::Relaxed);
        RefHandle {
            inner: self.inner.clone(),
        }
    }

    /// The number of holders now.
    pub fn references(&self) -> usize {
        self.inner.holders.load(Ordering::Acquire)
    }

    /// The shared value.
    pub fn get(&self) -> &T {
        &self.inner.value
    }
}

impl<T> Clone for RefCounted<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for RefCounted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefCounted")
            .field("value", &self.inner.value)
            .field("references", &self.references())
            .finish()
    }
}

/// One holder of a shared value. Clone to add a holder; drop to let go.
pub struct RefHandle<T> {
    inner: Arc<Inner<T>>,
}

impl<T> RefHandle<T> {
    /// The number of holders now.
    pub fn references(&self) -> usize {
        self.inner.holders.load(Ordering::Acquire)
    }
}

impl<T> Deref for RefHandle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner.value
    }
}

impl<T> Clone for RefHandle<T> {
    fn clone(&self) -> Self {
        // As in `Arc::clone`: a new holder is made from an existing one, so no ordering is needed here.
        self.inner.holders.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Drop for RefHandle<T> {
    fn drop(&mut self) {
        if self.inner.holders.fetch_sub(1, Ordering::Release) == 1 {
            // Pairs with the release above in every other holder's drop, as in `Arc::drop`.
            fence(Ordering::Acquire);
            (self.inner.on_last_drop)();
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for RefHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefHandle")
            .field("value", &self.inner.value)
            .field("references", &self.references())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomic;

    #[test]
    fn last_drop_notifies_once_per_transition() {
        let calls = std::sync::Arc::new(StdAtomic::new(0));
        let c = calls.clone();
        let shared = RefCounted::new(1u8, move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let a = shared.acquire();
        let b = a.clone();
        drop(a);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        drop(b);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Revived by the owner, released again: a second transition, a second call.
        let c = shared.acquire();
        assert_eq!(c.references(), 1);
        drop(c);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    fn counted() -> (RefCounted<()>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let shared = RefCounted::new((), move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        (shared, calls)
    }

    #[test]
    fn last_drop_releases_exactly_once() {
        loom::model(|| {
            let (shared, calls) = counted();
            let a = shared.acquire();
            let b = a.clone();
            let t = loom::thread::spawn(move || drop(a));
            drop(b);
            t.join().expect("thread");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(shared.references(), 0);
        });
    }

    #[test]
    fn clone_racing_the_last_drop() {
        loom::model(|| {
            let (shared, calls) = counted();
            let a = shared.acquire();
            let b = a.clone();
            let t = loom::thread::spawn(move || {
                let c = b.clone();
                drop(b);
                c
            });
            drop(a);
            let c = t.join().expect("thread");
            // `c` still holds: nothing released yet.
            assert_eq!(calls.load(Ordering::SeqCst), 0);
            drop(c);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn owner_acquire_racing_the_last_drop() {
        loom::model(|| {
            let (shared, calls) = counted();
            let a = shared.acquire();
            let owner = shared.clone();
            let t = loom::thread::spawn(move || owner.acquire());
            drop(a);
            let revived = t.join().expect("thread");
            // Either the drop came first (one release, then revived) or not (no release yet).
            let released = calls.load(Ordering::SeqCst);
            assert!(released <= 1);
            assert_eq!(shared.references(), 1);
            drop(revived);
            assert_eq!(calls.load(Ordering::SeqCst), released + 1);
        });
    }
}

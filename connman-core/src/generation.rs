//! A generation that tells a remembered answer whether it still holds.
//!
//! Some answers cost a lock to find and nothing to keep: a registry's `get` of a connection its scope already holds
//! changes nothing, so a repeated one can be answered from memory. The owner of the state keeps a [`Generation`]
//! beside it; a reader keeps its answer in a [`Cached`] with the [`Stamp`] it read, and the answer is fresh while the
//! generation has not moved since.
//!
//! # The protocol
//!
//! The types keep no lock of their own; the answer is only as true as the order of the steps around them:
//!
//! 1. Whoever takes away what an answer relies on (lets go of a connection, re-keys it) calls [`Generation::bump`]
//!    with the state's lock held, after the change, and before anything publishes the change to readers that take
//!    no lock (a count read without the lock). A bump before the change lets a reader stamp an answer that the
//!    change then makes false; a bump after the lock is let go lets a reader that saw the change still be answered
//!    from memory.
//! 2. A reader that finds an answer under the lock reads its stamp with [`Generation::now`] with the lock still held,
//!    after it made the answer true (took its reference). It may keep the stamp after letting the lock go: a
//!    generation never comes back to a value it left, so an old stamp is only ever stale, never wrongly fresh.
//! 3. A reader asks [`Cached::fresh`] with the generation's [`now`](Generation::now), and takes the lock when it is
//!    not.
//!
//! The generation counts in a `u64` by one: at one bump per nanosecond it would wrap after 584 years, so a stamp
//! cannot be revived by a wrap.
//!
//! The loom models of this module (`cargo xtask ci` runs them) play the registry's entries, scopes and managers
//! through these steps, and fail when a bump moves before the change, after the count is published or after the
//! lock, when a stamp is read after the lock, or when a generation can come back to a value it left.
//!
//! ```
//! use connman_core::generation::{Cached, Generation};
//! use std::sync::Mutex;
//!
//! // What the lock guards: whether the scope holds the connection.
//! let holds = Mutex::new(false);
//! let generation = Generation::new();
//!
//! // A first lookup under the lock makes the answer true, then reads its stamp.
//! let mut held = holds.lock().unwrap();
//! *held = true;
//! let answer = Cached::new("conn-a", generation.now());
//! drop(held);
//!
//! // Repeated lookups take no lock while nothing was let go.
//! assert_eq!(answer.fresh(generation.now()), Some(&"conn-a"));
//!
//! // Letting go bumps the generation under the lock, after the change: the answer is stale.
//! let mut held = holds.lock().unwrap();
//! *held = false;
//! generation.bump();
//! drop(held);
//! assert_eq!(answer.fresh(generation.now()), None);
//!
//! // Taking it again under the lock makes it fresh again, with a new stamp.
//! let mut held = holds.lock().unwrap();
//! *held = true;
//! answer.renew(generation.now());
//! drop(held);
//! assert_eq!(answer.fresh(generation.now()), Some(&"conn-a"));
//! ```

use std::fmt;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter that moves on whenever something a remembered answer relies on is taken away. See the
/// [module docs](self) for the order of the steps around it.
pub struct Generation {
    now: AtomicU64,
}

impl Generation {
    /// A generation at its start.
    pub fn new() -> Self {
        Self {
            now: AtomicU64::new(0),
        }
    }

    /// The generation now: a stamp to keep with an answer found under the lock, or to check one against.
    #[inline]
    pub fn now(&self) -> Stamp {
        Stamp(self.now.load(Ordering::Acquire))
    }

    /// Makes every answer stamped before stale. Call it with the lock of the state held, after the change and before
    /// the change is published to readers that take no lock.
    #[inline]
    pub fn bump(&self) {
        self.now.fetch_add(1, Ordering::AcqRel);
    }
}

impl Default for Generation {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Generation").field(&self.now()).finish()
    }
}

/// A [`Generation`] as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

/// An answer with the stamp of the generation it was found at: fresh while the generation is still there.
pub struct Cached<T> {
    value: T,
    stamp: AtomicU64,
}

impl<T> Cached<T> {
    /// Keeps `value`, found at `stamp`.
    pub fn new(value: T, stamp: Stamp) -> Self {
        Self {
            value,
            stamp: AtomicU64::new(stamp.0),
        }
    }

    /// The answer if it was found at `now`, the generation read just before; `None` if the generation moved since.
    #[inline]
    pub fn fresh(&self, now: Stamp) -> Option<&T> {
        (self.stamp.load(Ordering::Acquire) == now.0).then_some(&self.value)
    }

    /// Marks the answer as found again at `stamp`, read under the lock after the answer was made true.
    #[inline]
    pub fn renew(&self, stamp: Stamp) {
        self.stamp.store(stamp.0, Ordering::Release);
    }

    /// The answer, fresh or not: to tell which answer this is, or to use it under the lock, where the reader makes
    /// it true again before it renews the stamp. Never to hand it out without the lock when it is not fresh.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Cached<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("value", &self.value)
            .field("stamp", &Stamp(self.stamp.load(Ordering::Acquire)))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_bump_makes_every_older_stamp_stale_and_a_renewal_fresh() {
        let generation = Generation::new();
        let a = Cached::new(1u8, generation.now());
        let b = Cached::new(2u8, generation.now());
        assert_eq!(a.fresh(generation.now()), Some(&1));
        generation.bump();
        assert_eq!(a.fresh(generation.now()), None);
        assert_eq!(b.fresh(generation.now()), None);
        b.renew(generation.now());
        assert_eq!(b.fresh(generation.now()), Some(&2));
        assert_eq!(a.fresh(generation.now()), None);
        assert_eq!(*a.value(), 1);
    }
}

/// The registry's cache as loom sees it. The entry, scope and manager below do what `connman-pool`'s registry does
/// (`registry/table.rs`: `Entry::hold`, `Entry::release`, `Entry::bump_holders`; `registry/manager.rs`:
/// `Manager::get`, `Manager::move_to`), step for step, with the registry's types reduced to what the cache reads.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Mutex};

    const A: u8 = b'a';
    const B: u8 = b'b';

    /// One connection: who holds it and its id under its lock, and the count of holders that clients read without
    /// the lock.
    struct Entry {
        state: Mutex<State>,
        references: AtomicUsize,
    }

    struct State {
        id: u8,
        holders: [bool; 2],
    }

    impl State {
        fn count(&self) -> usize {
            self.holders.iter().filter(|h| **h).count()
        }
    }

    /// A namespace with one connection and two scopes.
    struct World {
        entry: Entry,
        scopes: [Generation; 2],
    }

    /// A manager of scope `scope`, whose first `get` found the connection under `cache`'s id.
    struct Manager {
        world: Arc<World>,
        scope: usize,
        cache: Cached<u8>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Got {
        /// From the manager's memory, without the lock.
        Cached,
        /// Under the entry's lock; the scope holds the connection.
        Locked,
        /// No connection under that id.
        Absent,
    }

    impl World {
        /// A world where every scope in `holding` holds the connection, under id `a`.
        fn new(holding: &[usize]) -> Arc<Self> {
            let mut holders = [false; 2];
            for &s in holding {
                holders[s] = true;
            }
            let world = Self {
                entry: Entry {
                    state: Mutex::new(State { id: A, holders }),
                    references: AtomicUsize::new(0),
                },
                scopes: [Generation::new(), Generation::new()],
            };
            let count = world.lock().count();
            world.entry.references.store(count, Ordering::Release);
            Arc::new(world)
        }

        fn lock(&self) -> loom::sync::MutexGuard<'_, State> {
            self.entry.state.lock().expect("lock")
        }

        /// `Entry::release`: the holder goes, the scope's generation moves, the count is published.
        fn release(&self, scope: usize) -> bool {
            let mut state = self.lock();
            if !state.holders[scope] {
                return false;
            }
            state.holders[scope] = false;
            self.scopes[scope].bump();
            self.entry
                .references
                .store(state.count(), Ordering::Release);
            true
        }

        /// `Manager::move_to` and `Entry::bump_holders`: a new id, and every holder's generation moves.
        fn rekey(&self, id: u8) {
            let mut state = self.lock();
            state.id = id;
            for (scope, held) in state.holders.iter().enumerate() {
                if *held {
                    self.scopes[scope].bump();
                }
            }
        }

        /// Whether `scope` holds the connection now.
        fn holds(&self, scope: usize) -> bool {
            self.lock().holders[scope]
        }

        /// The id the connection goes by now.
        fn id(&self) -> u8 {
            self.lock().id
        }

        /// A manager of `scope` after its first `get` of `a`, as `Manager::get` leaves it.
        fn manager(world: &Arc<Self>, scope: usize) -> Manager {
            let m = Manager {
                world: world.clone(),
                scope,
                cache: Cached::new(A, world.scopes[scope].now()),
            };
            assert_eq!(m.get(A), Got::Cached);
            m
        }
    }

    impl Manager {
        fn generation(&self) -> &Generation {
            &self.world.scopes[self.scope]
        }

        /// `Manager::get`: from memory while the scope's generation holds, else under the entry's lock, where the
        /// scope takes a reference and the stamp is read.
        fn get(&self, id: u8) -> Got {
            let now = self.generation().now();
            if self.cache.fresh(now).is_some_and(|cached| *cached == id) {
                return Got::Cached;
            }
            let mut state = self.world.lock();
            if state.id != id {
                return Got::Absent;
            }
            if !state.holders[self.scope] {
                state.holders[self.scope] = true;
                self.world
                    .entry
                    .references
                    .store(state.count(), Ordering::Release);
            }
            let stamp = self.generation().now();
            if *self.cache.value() == id {
                self.cache.renew(stamp);
            }
            Got::Locked
        }

        /// What the cache promises, checked when no thread runs: if it would answer, its scope holds the connection
        /// under the cached id.
        fn check(&self) {
            if let Some(id) = self.cache.fresh(self.generation().now()) {
                let state = self.world.lock();
                assert!(
                    state.holders[self.scope],
                    "a fresh cache for a scope that let go"
                );
                assert_eq!(state.id, *id, "a fresh cache for an id the connection left");
            }
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        // Bounded by `LOOM_MAX_PREEMPTIONS` when it is set (`cargo xtask ci` sets 2).
        loom::model(f);
    }

    /// A cached `get` racing a let-go of the same scope (through another manager): once the let-go is seen (the
    /// count a client reads fell to zero), the `get` must not be answered from memory, and must leave the scope
    /// holding; and a cache that would answer afterwards belongs to a scope that holds.
    #[test]
    fn loom_a_cached_get_racing_a_let_go_never_answers_for_a_connection_let_go() {
        model(|| {
            let world = World::new(&[0]);
            let m = World::manager(&world, 0);
            let w = world.clone();
            let t = loom::thread::spawn(move || assert!(w.release(0)));
            let seen_gone = world.entry.references.load(Ordering::Acquire) == 0;
            let got = m.get(A);
            assert_ne!(got, Got::Absent);
            if seen_gone {
                assert_eq!(got, Got::Locked, "answered from memory after the let-go");
                assert!(world.holds(0));
            }
            t.join().expect("thread");
            m.check();
        });
    }

    /// A cached `get` racing a re-key: once the new id is seen, a `get` of the old id finds nothing, from memory or
    /// not; a `get` of the new id takes the lock.
    #[test]
    fn loom_a_cached_get_racing_a_rekey_never_answers_for_the_old_id() {
        model(|| {
            let world = World::new(&[0]);
            let m = World::manager(&world, 0);
            let w = world.clone();
            let t = loom::thread::spawn(move || w.rekey(B));
            let seen_moved = world.id() == B;
            let got = m.get(A);
            if seen_moved {
                assert_eq!(got, Got::Absent, "answered for the old id after the re-key");
            }
            t.join().expect("thread");
            m.check();
        });
    }

    /// A `get` that takes the lock (its cache is stale: the scope let go) racing a new let-go: whatever the order,
    /// a cache that would answer afterwards belongs to a scope that holds, so the stamp must be read before the lock
    /// goes.
    #[test]
    fn loom_a_get_under_the_lock_racing_a_let_go_keeps_no_stamp_the_let_go_made_false() {
        model(|| {
            let world = World::new(&[0]);
            let m = World::manager(&world, 0);
            assert!(world.release(0));
            let w = world.clone();
            let t = loom::thread::spawn(move || w.release(0));
            assert_eq!(m.get(A), Got::Locked);
            let released = t.join().expect("thread");
            assert_eq!(world.holds(0), !released);
            m.check();
        });
    }

    /// Two scopes hold the connection; one lets go and takes it again while the other asks from memory. The other's
    /// cache never goes stale for it (other scopes' let-gos do not count), and neither cache ever answers for a scope
    /// that does not hold.
    #[test]
    fn loom_two_holders_one_lets_go_and_takes_again_while_the_other_asks() {
        model(|| {
            let world = World::new(&[0, 1]);
            let m0 = World::manager(&world, 0);
            let m1 = World::manager(&world, 1);
            let t = loom::thread::spawn(move || {
                assert!(m1.world.release(1));
                assert_eq!(m1.get(A), Got::Locked);
                m1
            });
            assert_eq!(m0.get(A), Got::Cached);
            let m1 = t.join().expect("thread");
            m0.check();
            m1.check();
            assert!(world.holds(0) && world.holds(1));
            assert_eq!(world.entry.references.load(Ordering::Acquire), 2);
        });
    }

    /// A let-go, a new take and a second let-go through one manager, while another manager of the same scope asks:
    /// the holding came back in between, but the asking manager's old stamp never becomes fresh again (no ABA).
    #[test]
    fn loom_a_let_go_and_a_new_take_never_revive_an_old_stamp() {
        model(|| {
            let world = World::new(&[0]);
            let first = World::manager(&world, 0);
            let other = World::manager(&world, 0);
            let t = loom::thread::spawn(move || {
                assert!(other.world.release(0));
                assert_eq!(other.get(A), Got::Locked);
                assert!(other.world.release(0));
                other
            });
            let got = first.get(A);
            let other = t.join().expect("thread");
            if got == Got::Cached {
                // Answered before the first let-go; both let-gos came after and left the stamp stale for good.
                assert!(!world.holds(0));
                assert_eq!(
                    first.cache.fresh(world.scopes[0].now()),
                    None,
                    "an old stamp revived"
                );
            }
            first.check();
            other.check();
        });
    }
}

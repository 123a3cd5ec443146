//! Named pools and single connections (connman CN-16 … CN-21).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use connman_core::error::Duplicate;
use connman_core::supervise::Disconnect;
use connman_pool::pool::{Pool, Pools};

/// A supervised connection double that counts how often it was told to stop, and how many were made.
#[derive(Debug)]
struct Mock {
    id: usize,
    disconnects: AtomicUsize,
}

#[derive(Debug, Default, Clone)]
struct Factory {
    made: Arc<AtomicUsize>,
}

impl Factory {
    fn make(&self) -> Mock {
        Mock {
            id: self.made.fetch_add(1, Ordering::SeqCst),
            disconnects: AtomicUsize::new(0),
        }
    }

    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }
}

impl Disconnect for Mock {
    fn disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

fn stops(c: &Mock) -> usize {
    c.disconnects.load(Ordering::SeqCst)
}

#[test]
fn cn_16_duplicate_single_key_is_rejected_without_making_a_connection() {
    let f = Factory::default();
    let pools = Pools::new();
    // Like connman's test: two spellings of one host are two keys.
    pools.connect("localhost:8124", || f.make()).unwrap();
    pools.connect("127.0.0.1:8124", || f.make()).unwrap();
    assert_eq!(f.made(), 2);

    let err = pools.connect("localhost:8124", || f.make()).unwrap_err();
    assert_eq!(err, Duplicate::new("localhost:8124"));
    // Nothing was made for the rejected key, and the first connection is still reachable.
    assert_eq!(f.made(), 2);
    assert_eq!(pools.connection("localhost:8124").map(|c| c.id), Some(0));
    pools.disconnect_all();
    assert_eq!(
        pools.connection("localhost:8124").map(|c| stops(&c)),
        Some(1)
    );
    assert_eq!(
        pools.connection_keys(),
        ["localhost:8124", "127.0.0.1:8124"]
    );
}

#[test]
fn cn_18_duplicate_pool_name_is_an_error_and_keeps_the_old_pool() {
    let f = Factory::default();
    let pools = Pools::new();
    pools.create_pool("p").unwrap().add(f.make());
    let err = pools.create_pool("p").unwrap_err();
    assert_eq!(err.what(), "p");
    assert!(
        connman_core::error::BoxError::from(err).is::<Duplicate>(),
        "downcastable"
    );
    // The first pool and its member are still there and still reachable by disconnect_all.
    let pool = pools.pool("p").unwrap();
    assert_eq!(pool.len(), 1);
    pools.disconnect_all();
    assert_eq!(pools.pool("p").unwrap().get(0).map(|c| stops(&c)), Some(1));
}

#[test]
fn cn_19_index_access_in_insertion_order_and_out_of_range_is_none() {
    let f = Factory::default();
    let pool = Pool::new("p");
    assert!(pool.is_empty());
    assert_eq!(pool.add(f.make()), 0);
    assert_eq!(pool.add(f.make()), 1);
    assert_eq!(pool.add(f.make()), 2);
    assert_eq!(pool.name(), "p");
    let ids: Vec<_> = pool.iter().map(|c| c.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    assert_eq!(pool.get(1).map(|c| c.id), Some(1));
    assert!(pool.get(3).is_none());
    assert!(pool.get(usize::MAX).is_none());
}

#[test]
fn cn_20_pool_members_are_not_single_connections_but_disconnect_all_reaches_them() {
    let f = Factory::default();
    let pools = Pools::new();
    let pool = pools.create_pool("p").unwrap();
    pool.add(f.make());
    pool.add(f.make());
    assert!(pools.connection_keys().is_empty());
    assert!(pools.connection("p").is_none());
    pools.disconnect_all();
    assert!(pools.pool("p").unwrap().iter().all(|c| stops(&c) == 1));
}

#[test]
fn cn_21_pool_disconnect_reaches_every_member_and_disconnect_all_everything() {
    let f = Factory::default();
    let pools = Pools::new();
    for name in ["a", "b"] {
        let pool = pools.create_pool(name).unwrap();
        pool.add(f.make());
        pool.add(f.make());
    }
    pools.connect("s1", || f.make()).unwrap();
    pools.connect("s2", || f.make()).unwrap();

    // One pool alone.
    pools.pool("a").unwrap().disconnect();
    assert!(pools.pool("a").unwrap().iter().all(|c| stops(&c) == 1));
    assert!(pools.pool("b").unwrap().iter().all(|c| stops(&c) == 0));
    assert_eq!(pools.connection("s1").map(|c| stops(&c)), Some(0));

    // Everything.
    pools.disconnect_all();
    assert!(pools.pool("b").unwrap().iter().all(|c| stops(&c) == 1));
    assert_eq!(pools.connection("s1").map(|c| stops(&c)), Some(1));
    assert_eq!(pools.connection("s2").map(|c| stops(&c)), Some(1));
    assert_eq!(pools.pool_names(), ["a", "b"]);
    assert_eq!(f.made(), 6);
}

#[test]
fn pool_handles_add_to_the_same_pool() {
    let f = Factory::default();
    let pools: Pools<Mock> = Pools::default();
    pools.create_pool("p").unwrap();
    pools.pool("p").unwrap().add(f.make());
    assert!(pools.pool("missing").is_none());
    let pool = pools.pool("p").unwrap();
    assert_eq!(pool.into_iter().count(), 1);
}

/// Pools are shared by clones across threads with no lock of the caller's: every add, connect and create lands once.
#[test]
fn cn_16_18_pools_are_shared_across_threads_without_an_outer_lock() {
    let f = Factory::default();
    let pools: Pools<Mock> = Pools::new();
    pools.create_pool("shared").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pools = pools.clone();
            let f = f.clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for i in 0..100 {
                    pools.pool("shared").unwrap().add(f.make());
                    // Every thread tries the same 100 keys: each is made exactly once.
                    if pools.connect(format!("k{i}"), || f.make()).is_ok() {
                        won += 1;
                    }
                    let _ = pools.create_pool(format!("p{}", (i + t) % 10));
                }
                won
            })
        })
        .collect();
    let won: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(won, 100);
    assert_eq!(pools.pool("shared").unwrap().len(), 400);
    assert_eq!(pools.connection_keys().len(), 100);
    assert_eq!(pools.pool_names().len(), 11);
    assert_eq!(f.made(), 500, "no connection made for a taken key");
}

/// A `make` that panics frees its key: the next connect of it makes the connection.
#[test]
fn cn_16_a_panicking_make_frees_its_key() {
    let f = Factory::default();
    let pools: Pools<Mock> = Pools::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = pools.connect("k", || panic!("make failed"));
    }));
    assert!(panicked.is_err());
    assert!(pools.connection("k").is_none());
    assert!(pools.connection_keys().is_empty());
    assert_eq!(pools.connect("k", || f.make()).unwrap().id, 0);
}

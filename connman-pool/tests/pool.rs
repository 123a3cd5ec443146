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
    let mut pools = Pools::new();
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
    assert_eq!(pools.connection("localhost:8124").map(stops), Some(1));
    assert_eq!(
        pools.connection_keys().collect::<Vec<_>>(),
        ["localhost:8124", "127.0.0.1:8124"]
    );
}

#[test]
fn cn_18_duplicate_pool_name_is_an_error_and_keeps_the_old_pool() {
    let f = Factory::default();
    let mut pools = Pools::new();
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
    assert_eq!(pools.pool("p").unwrap().get(0).map(stops), Some(1));
}

#[test]
fn cn_19_index_access_in_insertion_order_and_out_of_range_is_none() {
    let f = Factory::default();
    let mut pool = Pool::new("p");
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
    let mut pools = Pools::new();
    let pool = pools.create_pool("p").unwrap();
    pool.add(f.make());
    pool.add(f.make());
    assert_eq!(pools.connection_keys().count(), 0);
    assert!(pools.connection("p").is_none());
    pools.disconnect_all();
    assert!(pools.pool("p").unwrap().iter().all(|c| stops(c) == 1));
}

#[test]
fn cn_21_pool_disconnect_reaches_every_member_and_disconnect_all_everything() {
    let f = Factory::default();
    let mut pools = Pools::new();
    for name in ["a", "b"] {
        let pool = pools.create_pool(name).unwrap();
        pool.add(f.make());
        pool.add(f.make());
    }
    pools.connect("s1", || f.make()).unwrap();
    pools.connect("s2", || f.make()).unwrap();

    // One pool alone.
    pools.pool("a").unwrap().disconnect();
    assert!(pools.pool("a").unwrap().iter().all(|c| stops(c) == 1));
    assert!(pools.pool("b").unwrap().iter().all(|c| stops(c) == 0));
    assert_eq!(pools.connection("s1").map(stops), Some(0));

    // Everything.
    pools.disconnect_all();
    assert!(pools.pool("b").unwrap().iter().all(|c| stops(c) == 1));
    assert_eq!(pools.connection("s1").map(stops), Some(1));
    assert_eq!(pools.connection("s2").map(stops), Some(1));
    assert_eq!(pools.pool_names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(f.made(), 6);
}

#[test]
fn pool_mut_adds_to_an_existing_pool() {
    let f = Factory::default();
    let mut pools: Pools<Mock> = Pools::default();
    pools.create_pool("p").unwrap();
    pools.pool_mut("p").unwrap().add(f.make());
    assert!(pools.pool_mut("missing").is_none());
    let pool = pools.pool("p").unwrap();
    assert_eq!(pool.into_iter().count(), 1);
}

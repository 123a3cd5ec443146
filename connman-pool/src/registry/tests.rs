//! The cached `get`: whatever changes the tables, a repeated `get` must answer as the locked path would.

use super::*;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

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

/// Two managers of one scope on two threads: once one has let go (and the other thread knows it), the other's
/// cached `get` must not answer; it takes the reference again, which its own `remove` then finds.
#[test]
fn cm_02_19_a_release_through_another_manager_is_seen_by_a_cached_get_on_another_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let reg = Reg::new();
    let creator = reg.manager("ns", Scope::new("creator", "c"));
    rt.block_on(creator.create(spec("x", 1))).unwrap();
    let first = reg.manager("ns", Scope::new("user", "u"));
    let second = reg.manager("ns", Scope::new("user", "u"));
    let barrier = std::sync::Barrier::new(2);
    // Both threads always reach every barrier: the first records what went wrong instead of panicking.
    let missed = std::thread::scope(|s| {
        let user = s.spawn(|| {
            let mut missed = Vec::new();
            for round in 0..2_000 {
                // Warm the cache, then let the other thread release.
                let _ = first.get("x", &1);
                barrier.wait();
                barrier.wait();
                // Released by the other manager: a get must take the reference again, and `remove` find it.
                let _ = first.get("x", &1);
                if first.remove("x") != (Removed::Released { remaining: 1 }) {
                    missed.push(round);
                }
            }
            missed
        });
        s.spawn(|| {
            for _ in 0..2_000 {
                barrier.wait();
                // NotHeld here is the first thread's miss of the round before, already recorded.
                let _ = second.remove("x");
                barrier.wait();
            }
        });
        user.join().unwrap()
    });
    assert!(
        missed.is_empty(),
        "rounds whose get took no reference: {missed:?}"
    );
    assert_eq!(creator.reference_count("x"), 1);
}

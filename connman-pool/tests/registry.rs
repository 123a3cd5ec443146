//! The registry against connection-manager's behaviour (BEHAVIOUR.md section 1), on paused time.

#[path = "registry_support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use connman_core::backoff::Constant;
use connman_core::error::{BoxError, Closed, Duplicate, Elapsed, InvalidConfig, NotFound};
use connman_pool::registry::{
    Config, ConnectFailed, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE, Get, Mismatch, Panicked,
    Removed, Scope, Spec,
};
use support::{Conn, Creds, Plan, Probe, creds, ms, registry, registry_with, scope, secs, settle};
use tokio::time::{Instant, sleep};

fn found<C, K>(get: Get<C, K>) -> connman_pool::registry::Client<C, K> {
    match get {
        Get::Found(client) => client,
        Get::Absent => panic!("expected Found, got Absent"),
        Get::Mismatch => panic!("expected Found, got Mismatch"),
    }
}

/// connection-manager's `test/basics-suite.js`, with the check its stub never made: `disconnect` runs exactly once.
#[tokio::test(start_paused = true)]
async fn cm_acceptance_basics_suite() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("namespace1", scope("cm1", "bar cm1"));
    let cm2 = reg.manager("namespace1", scope("cm2", "bar cm2"));
    let cm3 = reg.manager("namespace1", scope("cm3", "bar cm3"));
    let cm4 = reg.manager("namespace2", scope("cm4", "bar cm4"));

    // Create via cm1: one reference, connect ran with cm1's scope.
    let client = cm1.create(probe.spec("client1", creds())).await.unwrap();
    assert_eq!(client.references(), 1);
    assert_eq!(probe.log(), ["connect bar cm1 client1"]);

    // Another namespace sees nothing.
    assert!(matches!(cm4.get("client1", &creds()), Get::Absent));
    assert_eq!(cm4.reference_count("client1"), 0);

    // cm2 shares it.
    assert_eq!(found(cm2.get("client1", &creds())).references(), 2);
    // cm1 with `{}`: a mismatch, not an absence.
    assert!(matches!(cm1.get("client1", &Creds::new()), Get::Mismatch));
    // cm3 shares it.
    assert_eq!(found(cm3.get("client1", &creds())).references(), 3);

    // Move keeps the three references under the new id.
    cm1.move_to("client1", &creds(), "client1-moved", None)
        .unwrap();
    assert!(matches!(cm1.get("client1", &creds()), Get::Absent));
    assert_eq!(cm1.reference_count("client1-moved"), 3);

    // A second client: created via cm2, fetched via cm1.
    let second = cm2.create(probe.spec("client2", creds())).await.unwrap();
    found(cm1.get("client2", &creds()));
    assert_eq!(second.references(), 2);

    assert_eq!(cm1.remove("client2"), Removed::Released { remaining: 1 });
    assert_eq!(cm2.remove("client2"), Removed::Released { remaining: 0 });
    assert_eq!(cm1.reference_count("client2"), 0);
    assert!(cm1.exists("client2"), "kept through the grace period");

    sleep(DEFAULT_GRACE + secs(1)).await;
    assert!(!cm1.exists("client2"));
    assert!(matches!(cm1.get("client2", &creds()), Get::Absent));
    assert_eq!(probe.disconnects(), 1, "disconnect called exactly once");
    assert!(cm1.exists("client1-moved"), "the other client is untouched");
}

#[tokio::test(start_paused = true)]
async fn cm_02_first_scope_registered_for_an_id_wins() {
    let reg = registry();
    let first = reg.manager("ns", scope("a", "first"));
    let second = reg.manager("ns", scope("a", "second"));
    assert_eq!(*second.scope().data(), "first");
    assert_eq!(second.scope().id(), "a");
    // Both facades are the same scope: a reference taken through one is the other's.
    let probe = Probe::default();
    first.create(probe.spec("c", creds())).await.unwrap();
    found(second.get("c", &creds()));
    assert_eq!(first.reference_count("c"), 1);
    assert_eq!(second.remove("c"), Removed::Released { remaining: 0 });
    assert_eq!(first.remove("c"), Removed::NotHeld);
}

#[tokio::test(start_paused = true)]
async fn cm_03_namespaces_are_isolated() {
    let reg = registry();
    let probe = Probe::default();
    let a = reg.manager("ns1", scope("s", "a"));
    let b = reg.manager("ns2", scope("s", "b"));
    a.create(probe.spec("c", creds())).await.unwrap();
    assert!(matches!(b.get("c", &creds()), Get::Absent));
    assert_eq!(b.reference_count("c"), 0);
    assert!(!b.exists("c"));
    assert!(b.keys().is_empty());
    assert_eq!(b.remove("c"), Removed::Unknown);
    // The same id in the other namespace is a different connection.
    b.create(probe.spec("c", creds())).await.unwrap();
    assert_eq!(probe.connects(), 2);
}

#[tokio::test(start_paused = true)]
async fn cm_04_scopes_of_a_namespace_share_the_table() {
    let reg = registry();
    let probe = Probe::default();
    let a = reg.manager("ns", scope("a", "a"));
    let b = reg.manager("ns", scope("b", "b"));
    a.create(probe.spec("c1", creds())).await.unwrap();
    b.create(probe.spec("c2", creds())).await.unwrap();
    assert_eq!(a.keys(), ["c1", "c2"]);
    assert_eq!(b.keys(), ["c1", "c2"]);
    assert_eq!(b.reference_count("c1"), 1);
}

#[test]
fn cm_06_invalid_config_is_rejected_and_spec_needs_connect() {
    // Everything else CM-06 validates is a type here; `Spec::new` takes `connect` as an argument.
    let err = support::Reg::with_config(Config::new().connect_timeout(ms(0))).unwrap_err();
    assert!(BoxError::from(err).is::<InvalidConfig>());
    assert!(support::Reg::with_config(Config::new().teardown_timeout(ms(0))).is_err());
}

#[tokio::test(start_paused = true)]
async fn cm_07_default_connect_timeout_is_ten_seconds() {
    assert_eq!(DEFAULT_CONNECT_TIMEOUT, secs(10));
    let reg = registry();
    let probe = Probe::new(vec![Plan::Hang]);
    let cm = reg.manager("ns", scope("s", "s"));
    let started = Instant::now();
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(started.elapsed(), secs(10));
    assert!(!cm.exists("c"), "a failed create leaves no record");
}

#[tokio::test(start_paused = true)]
async fn cm_07_spec_timeout_overrides_the_default() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Hang]);
    let cm = reg.manager("ns", scope("s", "s"));
    let started = Instant::now();
    let err = cm
        .create(probe.spec("c", creds()).timeout(secs(2)))
        .await
        .unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(started.elapsed(), secs(2));
}

#[tokio::test(start_paused = true)]
async fn cm_08_connect_sees_id_credentials_and_creating_scope() {
    let reg = registry();
    let cm1 = reg.manager("ns", scope("cm1", "bar cm1"));
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let spec = Spec::new("c", creds(), move |ctx| {
        *s.lock().unwrap() = Some((
            ctx.id().to_string(),
            ctx.credentials().clone(),
            ctx.scope().id().to_string(),
            *ctx.scope().data(),
        ));
        async { Ok::<_, std::io::Error>(Conn::new(1)) }
    });
    cm1.create(spec).await.unwrap();
    let seen = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen,
        ("c".to_string(), creds(), "cm1".to_string(), "bar cm1")
    );
}

#[tokio::test(start_paused = true)]
async fn cm_09_10_11_listeners_are_attached_per_scope_and_see_their_own_scope() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "one"));
    let cm2 = reg.manager("ns", scope("cm2", "two"));
    let client = cm1.create(probe.spec("c", creds())).await.unwrap();
    let conn = client.connection().unwrap();
    assert_eq!(conn.scopes("*"), ["cm1"]);
    found(cm2.get("c", &creds()));
    // A repeated get from the same scope attaches nothing more.
    found(cm2.get("c", &creds()));
    assert_eq!(conn.scopes("*"), ["cm1", "cm2"]);

    conn.fire("*", "join");
    let mut lines: Vec<_> = probe
        .log()
        .into_iter()
        .filter(|l| !l.starts_with("connect"))
        .collect();
    lines.sort();
    assert_eq!(lines, ["one c join", "two c join"]);
}

#[tokio::test(start_paused = true)]
async fn cm_12_connect_error_reaches_the_caller_typed() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Fail(ms(5))]);
    let cm = reg.manager("ns", scope("s", "s"));
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    let failed = err.downcast_ref::<ConnectFailed>().expect("ConnectFailed");
    let io = failed
        .error()
        .downcast_ref::<std::io::Error>()
        .expect("the connect function's error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(std::error::Error::source(failed).is_some());
    assert!(!cm.exists("c"));
}

#[tokio::test(start_paused = true)]
async fn cm_13_error_completes_once_and_the_timer_is_gone() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Fail(secs(1)), Plan::Ok(ms(10))]);
    let cm = reg.manager("ns", scope("s", "s"));
    let started = Instant::now();
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    assert!(err.is::<ConnectFailed>());
    assert_eq!(started.elapsed(), secs(1));
    // A new create right away is a fresh attempt, and the old timeout (at 10 s) touches nothing.
    let client = cm.create(probe.spec("c", creds())).await.unwrap();
    sleep(secs(30)).await;
    assert_eq!(client.references(), 1);
    assert!(cm.exists("c"));
    assert_eq!(probe.connects(), 2);
    assert_eq!(probe.disconnects(), 0);
}

#[tokio::test(start_paused = true)]
async fn cm_14_late_connection_is_torn_down_and_create_completes_once() {
    let reg = registry();
    // Connects after 12 s; the timeout is 10 s; the teardown bound (3 s) covers the late arrival.
    let probe = Probe::new(vec![Plan::Ok(secs(12))]);
    let cm = reg.manager("ns", scope("s", "s"));
    let started = Instant::now();
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(started.elapsed(), secs(10));
    assert_eq!(probe.disconnects(), 0);
    sleep(secs(3)).await;
    assert_eq!(
        probe.disconnects(),
        1,
        "the late connection was disconnected"
    );
    assert!(!cm.exists("c"), "and never stored");
}

#[tokio::test(start_paused = true)]
async fn cm_15_late_failure_after_timeout_is_ignored() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Fail(secs(11))]);
    let cm = reg.manager("ns", scope("s", "s"));
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    sleep(secs(5)).await;
    assert!(!cm.exists("c"));
    assert_eq!(probe.disconnects(), 0);
    // The id is free for a new create.
    *probe.plans.lock().unwrap() = vec![Plan::Ok(ms(1))];
    cm.create(probe.spec("c", creds())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cm_16_concurrent_create_is_single_flight() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Ok(secs(1))]);
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let cm3 = reg.manager("ns", scope("cm3", "3"));
    let (a, b, c) = tokio::join!(
        cm1.create(probe.spec("c", creds())),
        cm2.create(probe.spec("c", creds())),
        cm3.get_or_create(probe.spec("c", creds())),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(probe.connects(), 1, "one connect for three creates");
    assert_eq!(a.references(), 3);
    let gens: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|x| x.connection().unwrap().generation)
        .collect();
    assert_eq!(gens, [1, 1, 1], "the same connection");
    assert_eq!(a.connection().unwrap().scopes("*"), ["cm1", "cm2", "cm3"]);
    // Nothing orphaned: after everyone lets go, exactly one disconnect.
    for cm in [&cm1, &cm2, &cm3] {
        cm.remove("c");
    }
    sleep(DEFAULT_GRACE + secs(1)).await;
    assert_eq!(probe.disconnects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_16_connect_error_reaches_every_waiter() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Fail(secs(1))]);
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let (a, b) = tokio::join!(
        cm1.create(probe.spec("c", creds())),
        cm2.create(probe.spec("c", creds()))
    );
    assert!(a.unwrap_err().is::<ConnectFailed>());
    assert!(b.unwrap_err().is::<ConnectFailed>());
    assert_eq!(probe.connects(), 1);
    assert!(!cm1.exists("c"));
}

#[tokio::test(start_paused = true)]
async fn cm_16_joiner_with_other_credentials_is_a_mismatch() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Ok(secs(1))]);
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let (a, b) = tokio::join!(cm1.create(probe.spec("c", creds())), async {
        tokio::task::yield_now().await;
        cm2.create(probe.spec("c", Creds::new())).await
    });
    a.unwrap();
    assert!(b.unwrap_err().is::<Mismatch>());
    assert_eq!(probe.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_16_cancelled_waiter_hands_the_connect_on() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Ok(secs(2))]);
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    // The first caller (whose create started the connect) gives up after 1 s.
    let first = tokio::time::timeout(secs(1), cm1.create(probe.spec("c", creds())));
    let (first, second) = tokio::join!(first, cm2.create(probe.spec("c", creds())));
    assert!(first.is_err(), "the first caller was cancelled");
    let client = second.unwrap();
    assert_eq!(probe.connects(), 1);
    assert_eq!(
        client.references(),
        1,
        "only the waiter that stayed holds it"
    );
    assert_eq!(client.connection().unwrap().scopes("*"), ["cm2"]);
}

#[tokio::test(start_paused = true)]
async fn cm_16_connect_nobody_waits_for_idles_through_grace_then_tears_down() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Ok(secs(2))]);
    let cm = reg.manager("ns", scope("cm1", "1"));
    assert!(
        tokio::time::timeout(secs(1), cm.create(probe.spec("c", creds())))
            .await
            .is_err()
    );
    sleep(secs(2)).await;
    assert!(cm.exists("c"));
    assert_eq!(cm.reference_count("c"), 0);
    sleep(DEFAULT_GRACE).await;
    assert!(!cm.exists("c"));
    assert_eq!(probe.disconnects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_16_create_of_a_connected_id_is_duplicate() {
    let reg = registry();
    let probe = Probe::default();
    let cm = reg.manager("ns", scope("s", "s"));
    cm.create(probe.spec("c", creds())).await.unwrap();
    let err = cm.create(probe.spec("c", creds())).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Duplicate>().map(Duplicate::what),
        Some("c")
    );
    assert_eq!(probe.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_17_get_has_three_distinct_outcomes() {
    let reg = registry();
    let probe = Probe::new(vec![Plan::Ok(secs(1))]);
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    assert!(matches!(cm2.get("c", &creds()), Get::Absent));
    let create = cm1.create(probe.spec("c", creds()));
    let (client, during) = tokio::join!(create, async {
        sleep(ms(500)).await;
        // Still connecting: not there yet.
        matches!(cm2.get("c", &creds()), Get::Absent)
    });
    assert!(during);
    client.unwrap();
    assert!(matches!(
        cm2.get("c", &Creds::from([("nick", "other")])),
        Get::Mismatch
    ));
    assert_eq!(cm2.reference_count("c"), 1, "a mismatch takes no reference");
    let client = found(cm2.get("c", &creds()));
    assert_eq!(client.references(), 2);
    assert_eq!(client.id(), "c");
    assert_eq!(client.credentials(), creds());
}

#[tokio::test(start_paused = true)]
async fn cm_18_get_with_empty_credentials_on_credentialed_client_is_mismatch() {
    let reg = registry();
    let probe = Probe::default();
    let cm = reg.manager("ns", scope("s", "s"));
    cm.create(probe.spec("c", creds())).await.unwrap();
    assert!(matches!(cm.get("c", &Creds::new()), Get::Mismatch));
}

#[tokio::test(start_paused = true)]
async fn cm_19_references_count_distinct_scopes() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    cm1.create(probe.spec("c", creds())).await.unwrap();
    for _ in 0..5 {
        found(cm1.get("c", &creds()));
        found(cm2.get("c", &creds()));
    }
    assert_eq!(cm1.reference_count("c"), 2);
    // One remove drops the scope's whole reference.
    assert_eq!(cm2.remove("c"), Removed::Released { remaining: 1 });
    assert_eq!(cm2.remove("c"), Removed::NotHeld);
}

#[tokio::test(start_paused = true)]
async fn cm_20_reference_count_of_unknown_id_is_zero() {
    let reg = registry();
    let cm = reg.manager("ns", scope("s", "s"));
    assert_eq!(cm.reference_count("nope"), 0);
    let other = reg.manager("never-used", scope("s", "s"));
    assert_eq!(other.reference_count("nope"), 0);
}

#[tokio::test(start_paused = true)]
async fn cm_21_remove_of_unknown_id_is_a_no_op_that_says_so() {
    let reg = registry();
    let cm = reg.manager("ns", scope("s", "s"));
    assert_eq!(cm.remove("nope"), Removed::Unknown);
    assert_eq!(cm.remove_all(), 0);
    assert!(!cm.remove_listeners("nope"));
    assert!(!cm.report_lost("nope"));
}

#[tokio::test(start_paused = true)]
async fn cm_22_teardown_waits_twenty_seconds_after_the_last_reference() {
    assert_eq!(DEFAULT_GRACE, secs(20));
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    cm1.create(probe.spec("c", creds())).await.unwrap();
    found(cm2.get("c", &creds()));
    cm1.remove("c");
    // Other references: nothing scheduled.
    sleep(secs(30)).await;
    assert!(cm1.exists("c"));
    cm2.remove("c");
    sleep(secs(20) - ms(1)).await;
    assert!(cm1.exists("c"));
    assert_eq!(probe.disconnects(), 0);
    sleep(ms(2)).await;
    assert!(!cm1.exists("c"));
    assert_eq!(probe.disconnects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_23_get_during_grace_keeps_the_connection() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    cm1.create(probe.spec("c", creds())).await.unwrap();
    cm1.remove("c");
    sleep(secs(10)).await;
    found(cm2.get("c", &creds()));
    sleep(secs(60)).await;
    assert!(cm2.exists("c"));
    assert_eq!(probe.disconnects(), 0);
    // Released again: a new, full grace period.
    cm2.remove("c");
    sleep(secs(19)).await;
    assert!(cm2.exists("c"));
    sleep(secs(2)).await;
    assert!(!cm2.exists("c"));
    assert_eq!(probe.disconnects(), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_25_disconnect_panic_still_removes_the_record() {
    let reg = registry();
    let probe = Probe::default();
    let cm = reg.manager("ns", scope("s", "s"));
    let spec = probe
        .spec("c", creds())
        .disconnect(|_conn| async { panic!("disconnect blew up") });
    cm.create(spec).await.unwrap();
    cm.remove("c");
    sleep(DEFAULT_GRACE + secs(1)).await;
    assert!(!cm.exists("c"));
    // The registry still works.
    cm.create(probe.spec("c", creds())).await.unwrap();
    assert_eq!(cm.reference_count("c"), 1);
}

#[tokio::test(start_paused = true)]
async fn cm_26_disconnect_that_hangs_is_bounded_and_the_record_removed() {
    let reg = registry();
    let probe = Probe::default();
    let cm = reg.manager("ns", scope("s", "s"));
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let spec = probe.spec("c", creds()).disconnect(move |_conn| {
        let guard = DropCount(d.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }
    });
    cm.create(spec).await.unwrap();
    cm.remove("c");
    sleep(DEFAULT_GRACE + ms(1)).await;
    assert!(!cm.exists("c"), "no zombie while disconnect hangs");
    assert!(matches!(cm.get("c", &creds()), Get::Absent));
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    sleep(secs(3)).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the hung disconnect was aborted at the teardown timeout"
    );
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn cm_27_racing_removals_disconnect_once() {
    let reg = registry();
    let probe = Probe::default();
    let scopes: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|s| reg.manager("ns", scope(s, s)))
        .collect();
    scopes[0].create(probe.spec("c", creds())).await.unwrap();
    for cm in &scopes[1..] {
        found(cm.get("c", &creds()));
    }
    // Releases at 0 → re-get → release again, several times within one grace period.
    scopes[0].remove("c");
    for cm in &scopes[1..] {
        cm.remove("c");
        sleep(secs(1)).await;
        found(cm.get("c", &creds()));
        cm.remove("c");
    }
    sleep(secs(60)).await;
    assert_eq!(probe.disconnects(), 1);
    assert!(!scopes[0].exists("c"));
}

#[tokio::test(start_paused = true)]
async fn cm_28_remove_detaches_that_scopes_listeners() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let client = cm1.create(probe.spec("c", creds())).await.unwrap();
    found(cm2.get("c", &creds()));
    let conn = client.connection().unwrap();
    cm1.remove("c");
    assert_eq!(conn.scopes("*"), ["cm2"]);
    assert_eq!(
        *conn.removed.lock().unwrap(),
        [("*".to_string(), "cm1".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn cm_29_remove_listeners_is_scope_limited_and_passes_the_event_name() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let client = cm1.create(probe.spec("c", creds())).await.unwrap();
    found(cm2.get("c", &creds()));
    let conn = client.connection().unwrap();
    assert!(cm1.remove_listeners("c"));
    assert!(!cm1.remove_listeners("c"), "nothing left to detach");
    assert_eq!(conn.scopes("*"), ["cm2"]);
    assert_eq!(
        *conn.removed.lock().unwrap(),
        [("*".to_string(), "cm1".to_string())]
    );
    // The reference stays; a get attaches the listeners again.
    assert_eq!(cm1.reference_count("c"), 2);
    found(cm1.get("c", &creds()));
    assert_eq!(conn.scopes("*"), ["cm1", "cm2"]);
}

#[tokio::test(start_paused = true)]
async fn cm_30_remove_all_drops_the_scopes_references_everywhere() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    for id in ["a", "b", "c"] {
        cm1.create(probe.spec(id, creds())).await.unwrap();
    }
    found(cm2.get("a", &creds()));
    assert_eq!(cm1.remove_all(), 3);
    assert_eq!(cm1.reference_count("a"), 1);
    assert_eq!(cm1.reference_count("b"), 0);
    assert_eq!(cm1.remove_all(), 0);
    sleep(DEFAULT_GRACE + secs(1)).await;
    assert_eq!(cm1.keys(), ["a"]);
    assert_eq!(probe.disconnects(), 2);
}

#[tokio::test(start_paused = true)]
async fn cm_31_get_or_create_returns_existing_or_a_typed_mismatch() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let first = cm1.get_or_create(probe.spec("c", creds())).await.unwrap();
    let again = cm2.get_or_create(probe.spec("c", creds())).await.unwrap();
    assert_eq!(probe.connects(), 1);
    assert_eq!(again.references(), 2);
    assert_eq!(
        first.connection().unwrap().generation,
        again.connection().unwrap().generation
    );
    let err = cm2
        .get_or_create(probe.spec("c", Creds::new()))
        .await
        .unwrap_err();
    assert!(err.is::<Mismatch>());
    assert_eq!(
        probe.connects(),
        1,
        "never a second connection under the same id"
    );
}

#[tokio::test(start_paused = true)]
async fn cm_32_34_move_rekeys_and_keeps_references_and_listeners() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let cm3 = reg.manager("ns", scope("cm3", "3"));
    let client = cm1.create(probe.spec("old", creds())).await.unwrap();
    found(cm2.get("old", &creds()));

    // Failures leave everything as it was.
    assert!(
        cm1.move_to("nope", &creds(), "x", None)
            .unwrap_err()
            .is::<NotFound>()
    );
    assert!(
        cm1.move_to("old", &Creds::new(), "x", None)
            .unwrap_err()
            .is::<Mismatch>()
    );
    cm1.create(probe.spec("taken", creds())).await.unwrap();
    assert!(
        cm1.move_to("old", &creds(), "taken", None)
            .unwrap_err()
            .is::<Duplicate>()
    );

    let new_creds = Creds::from([("nick", "renamed")]);
    // cm3 holds nothing: the move adds no reference for it (CM-33).
    cm3.move_to("old", &creds(), "new", Some(new_creds.clone()))
        .unwrap();
    assert!(matches!(cm1.get("old", &creds()), Get::Absent));
    assert_eq!(cm1.reference_count("new"), 2);
    assert_eq!(client.id(), "new");
    assert_eq!(client.credentials(), new_creds);
    assert!(matches!(cm3.get("new", &creds()), Get::Mismatch));
    // Listeners stay and see the new id.
    client.connection().unwrap().fire("*", "ev");
    let mut lines: Vec<_> = probe
        .log()
        .into_iter()
        .filter(|l| l.ends_with(" ev"))
        .collect();
    lines.sort();
    assert_eq!(lines, ["1 new ev", "2 new ev"]);
}

#[tokio::test(start_paused = true)]
async fn cm_33_move_keeps_connect_and_credentials_for_reconnect() {
    let reg = registry_with(Config::new().backoff(|| Constant::new(ms(100))));
    let probe = Probe::default();
    let cm = reg.manager("ns", scope("cm1", "1"));
    let client = cm.create(probe.spec("old", creds())).await.unwrap();
    cm.move_to("old", &creds(), "new", None).unwrap();
    assert_eq!(
        client.credentials(),
        creds(),
        "old credentials kept when none are given"
    );
    assert!(cm.report_lost("new"));
    sleep(secs(1)).await;
    assert_eq!(
        probe.connects(),
        2,
        "the stored connect function reconnected"
    );
    assert_eq!(
        probe.log().last().map(String::as_str),
        Some("connect 1 new")
    );
    assert_eq!(client.connection().unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn cm_35_36_health_is_event_driven_and_report_lost_reconnects() {
    let reg = registry_with(Config::new().backoff(|| Constant::new(ms(100))));
    let probe = Probe::new(vec![Plan::Ok(ms(10))]);
    let cm = reg.manager("ns", scope("cm1", "1"));
    let client = cm.create(probe.spec("c", creds())).await.unwrap();
    // No polling: nothing happens on its own, however long we wait.
    sleep(secs(600)).await;
    assert_eq!(probe.connects(), 1);
    assert!(cm.report_lost("c"));
    settle().await;
    assert!(
        client.connection().is_none(),
        "no connection while reconnecting"
    );
    // Backoff 100 ms, connect 10 ms.
    sleep(ms(109)).await;
    assert!(client.connection().is_none());
    sleep(ms(2)).await;
    assert_eq!(client.connection().unwrap().generation, 2);
    // A report while already reconnecting or down is ignored; a second loss reconnects again.
    cm.report_lost("c");
    cm.report_lost("c");
    sleep(secs(1)).await;
    assert_eq!(probe.connects(), 3);
}

#[tokio::test(start_paused = true)]
async fn cm_37_every_namespace_is_supervised() {
    let reg = registry_with(Config::new().backoff(|| Constant::new(ms(100))));
    let probe = Probe::default();
    let a = reg.manager("ns1", scope("s", "a"));
    let b = reg.manager("ns2", scope("s", "b"));
    let ca = a.create(probe.spec("c", creds())).await.unwrap();
    let cb = b.create(probe.spec("c", creds())).await.unwrap();
    a.report_lost("c");
    b.report_lost("c");
    sleep(secs(1)).await;
    assert_eq!(probe.connects(), 4);
    assert!(ca.connection().unwrap().generation > 2);
    assert!(cb.connection().unwrap().generation > 2);
}

#[tokio::test(start_paused = true)]
async fn cm_38_reconnect_failures_retry_with_backoff_per_connection() {
    let reg = registry_with(Config::new().backoff(|| Constant::new(secs(1))));
    // First connect works, then two failures, then success.
    let probe = Probe::new(vec![
        Plan::Ok(ms(0)),
        Plan::Fail(ms(0)),
        Plan::Fail(ms(0)),
        Plan::Ok(ms(0)),
    ]);
    let other = Probe::new(vec![Plan::Ok(ms(0))]);
    let cm = reg.manager("ns", scope("s", "s"));
    let client = cm.create(probe.spec("c", creds())).await.unwrap();
    let healthy = cm.create(other.spec("d", creds())).await.unwrap();
    let t0 = Instant::now();
    cm.report_lost("c");
    // A failed connect on one connection does not stall another.
    cm.report_lost("d");
    sleep(ms(1001)).await;
    assert_eq!(healthy.connection().unwrap().generation, 2);
    // Attempts at 1 s (fail), 2 s (fail), 3 s (ok).
    sleep_until_secs(t0, 2).await;
    assert_eq!(probe.connects(), 3);
    assert!(client.connection().is_none());
    sleep_until_secs(t0, 3).await;
    assert_eq!(probe.connects(), 4);
    assert_eq!(client.connection().unwrap().generation, 4);
}

async fn sleep_until_secs(t0: Instant, n: u64) {
    tokio::time::sleep_until(t0 + secs(n) + ms(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cm_38_backoff_that_gives_up_removes_the_record() {
    let backoff = || Constant::new(ms(10)).with_max_attempts(2).unwrap();
    let reg = registry_with(Config::new().backoff(backoff));
    let probe = Probe::new(vec![Plan::Ok(ms(0)), Plan::Fail(ms(0))]);
    let cm = reg.manager("ns", scope("s", "s"));
    cm.create(probe.spec("c", creds())).await.unwrap();
    cm.report_lost("c");
    sleep(secs(1)).await;
    assert!(!cm.exists("c"));
    assert_eq!(probe.connects(), 3);
}

#[tokio::test(start_paused = true)]
async fn cm_39_reconnect_reattaches_every_holding_scopes_listeners() {
    let reg = registry_with(Config::new().backoff(|| Constant::new(ms(100))));
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let cm3 = reg.manager("ns", scope("cm3", "3"));
    let client = cm1.create(probe.spec("c", creds())).await.unwrap();
    found(cm2.get("c", &creds()));
    found(cm3.get("c", &creds()));
    cm3.remove("c");
    cm1.report_lost("c");
    sleep(secs(1)).await;
    let conn = client.connection().unwrap();
    assert_eq!(conn.generation, 2);
    assert_eq!(
        conn.scopes("*"),
        ["cm1", "cm2"],
        "every holder, and only holders"
    );
    // The reconnect ran with the first holding scope.
    assert_eq!(probe.log().last().map(String::as_str), Some("connect 1 c"));
    conn.fire("*", "after");
    let mut lines: Vec<_> = probe
        .log()
        .into_iter()
        .filter(|l| l.ends_with("after"))
        .collect();
    lines.sort();
    assert_eq!(lines, ["1 c after", "2 c after"]);
}

#[tokio::test(start_paused = true)]
async fn cm_40_errors_are_typed_and_downcastable() {
    let reg = registry();
    let cm = reg.manager("ns", scope("s", "s"));
    let panicking: Spec<Conn, Creds, &'static str> = Spec::new("p", creds(), |_ctx| async {
        if true {
            panic!("connect blew up");
        }
        Ok::<_, std::io::Error>(Conn::new(1))
    });
    let err = cm.create(panicking).await.unwrap_err();
    assert!(err.is::<Panicked>());
    let sync_panic: Spec<Conn, Creds, &'static str> = Spec::new(
        "q",
        creds(),
        |_ctx| -> std::future::Ready<Result<Conn, std::io::Error>> {
            panic!("connect blew up before its future")
        },
    );
    assert!(cm.create(sync_panic).await.unwrap_err().is::<Panicked>());
    // Every error type prints a short lowercase message.
    for e in [
        BoxError::from(Mismatch::new()),
        BoxError::from(Panicked::default()),
        BoxError::from(Closed::new()),
    ] {
        let text = e.to_string();
        assert!(
            text.chars().next().is_some_and(char::is_lowercase),
            "{text}"
        );
    }
    assert!(!cm.exists("p"));
}

#[tokio::test(start_paused = true)]
async fn listener_panic_does_not_take_the_registry_down() {
    let reg = registry();
    let probe = Probe::default();
    let cm1 = reg.manager("ns", scope("cm1", "1"));
    let cm2 = reg.manager("ns", scope("cm2", "2"));
    let spec = probe
        .spec("c", creds())
        .listener("*", |ctx, _event: &String| {
            if ctx.scope().id() == "cm1" {
                panic!("listener blew up");
            }
        });
    let client = cm1.create(spec).await.unwrap();
    found(cm2.get("c", &creds()));
    let conn = client.connection().unwrap();
    conn.fire("*", "boom");
    // The other listeners of the event still ran, and the registry still works.
    let lines: Vec<_> = probe
        .log()
        .into_iter()
        .filter(|l| l.ends_with("boom"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(cm1.remove("c"), Removed::Released { remaining: 1 });
    assert_eq!(cm2.reference_count("c"), 1);
    cm1.create(probe.spec("d", creds())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_registry_tears_connections_down() {
    let probe = Probe::default();
    {
        let reg = registry();
        let cm = reg.manager("ns", scope("s", "s"));
        cm.create(probe.spec("c", creds())).await.unwrap();
    }
    sleep(DEFAULT_GRACE + secs(1)).await;
    assert_eq!(probe.disconnects(), 1);
}

/// A scope that takes a connection and lets go of it leaves no trace: 10^5 of them come and go, and the tables are
/// back to their size (the leak of 330 B per scope id that never left `scopes` and `held`).
#[tokio::test(start_paused = true)]
async fn cm_02_scopes_that_come_and_go_leave_no_trace() {
    let reg = registry();
    let probe = Probe::default();
    let creator = reg.manager("ns", scope("creator", "c"));
    creator.create(probe.spec("x", creds())).await.unwrap();
    let baseline = reg.stats();
    assert_eq!(
        (baseline.namespaces, baseline.scopes, baseline.connections),
        (1, 1, 1)
    );
    for n in 0..100_000 {
        let manager = reg.manager("ns", Scope::new(format!("scope-{n}"), "s"));
        found(manager.get("x", &creds()));
        assert_eq!(manager.remove("x"), Removed::Released { remaining: 1 });
    }
    assert_eq!(reg.stats(), baseline);
    // A scope that still holds stays until it lets go, through any manager of it.
    let holder = reg.manager("ns", scope("holder", "h"));
    found(holder.get("x", &creds()));
    drop(holder);
    assert_eq!(reg.stats().scopes, 2);
    let again = reg.manager("ns", scope("holder", "other data"));
    assert_eq!(*again.scope().data(), "h", "the holding scope lived on");
    assert_eq!(again.remove("x"), Removed::Released { remaining: 1 });
    drop(again);
    assert_eq!(reg.stats(), baseline);
    // Gone for good: the next scope of that id is registered afresh, with its own data.
    let fresh = reg.manager("ns", scope("holder", "new"));
    assert_eq!(*fresh.scope().data(), "new");
}

/// A namespace with no scope and no connection leaves the registry, also after its last connection was torn down.
#[tokio::test(start_paused = true)]
async fn cm_03_namespaces_nobody_uses_leave_the_registry() {
    let reg = registry();
    drop(reg.manager("empty", scope("a", "a")));
    assert_eq!(reg.stats().namespaces, 0);

    let probe = Probe::default();
    let manager = reg.manager("ns", scope("a", "a"));
    manager.create(probe.spec("x", creds())).await.unwrap();
    drop(manager);
    // The scope still holds the connection: both stay.
    assert_eq!(reg.stats().scopes, 1);
    let manager = reg.manager("ns", scope("a", "a"));
    assert_eq!(manager.remove("x"), Removed::Released { remaining: 0 });
    drop(manager);
    assert_eq!(reg.stats().connections, 1, "kept through the grace period");
    sleep(DEFAULT_GRACE + secs(1)).await;
    settle().await;
    assert_eq!(reg.stats(), connman_pool::registry::Stats::default());
    assert_eq!(probe.disconnects(), 1);
}

/// A connection type without events needs no `Listen` impl: listeners are optional.
#[tokio::test(start_paused = true)]
async fn registry_without_listeners_needs_no_listen_impl() {
    #[derive(Debug)]
    struct Plain;
    let reg: connman_pool::registry::Registry<Plain, u64, ()> =
        connman_pool::registry::Registry::new();
    let a = reg.manager("ns", connman_pool::registry::Scope::new("a", ()));
    let b = reg.manager("ns", connman_pool::registry::Scope::new("b", ()));
    a.create(Spec::new("x", 7, |_| async { Ok::<_, Closed>(Plain) }))
        .await
        .unwrap();
    assert_eq!(found(b.get("x", &7)).references(), 2);
    assert!(matches!(b.get("x", &8), Get::Mismatch));
    assert_eq!(b.remove("x"), Removed::Released { remaining: 1 });
}

/// A failed first connect fails the create with `ConnectFailed`, and the connection's event stream carries the
/// connect function's own error, then the close: not a fatal `Closed` standing in for it.
#[tokio::test(start_paused = true)]
async fn cm_40_failed_first_connect_reaches_the_event_stream_with_its_error() {
    use connman_core::lifecycle::Event;
    let reg = registry();
    let probe = Probe::new(vec![Plan::Fail(ms(100))]);
    let creator = reg.manager("ns", scope("creator", "c"));
    let watcher = reg.manager("ns", scope("watcher", "w"));
    let create = tokio::spawn({
        let spec = probe.spec("x", creds());
        async move { creator.create(spec).await }
    });
    settle().await;
    let mut events = watcher.subscribe("x").expect("the connect is in flight");
    let err = create.await.unwrap().unwrap_err();
    assert!(err.is::<ConnectFailed>());
    let mut failed = None;
    let mut closed = false;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::ConnectFailed {
                error, next_delay, ..
            } => failed = Some((error, next_delay)),
            Event::Closed { .. } => closed = true,
            _ => {}
        }
    }
    let (error, next_delay) = failed.expect("a ConnectFailed event");
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("the connect function's own error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(next_delay, None, "no retry after a failed first connect");
    assert!(closed, "then the close");
    assert!(!watcher.exists("x"));
    assert!(watcher.subscribe("x").is_none());
}

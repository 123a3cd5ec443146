//! `Drain` and `DrainLayer`: soketi's drain done as intended (SK-14…SK-17) and its shutdown (SS-01, SS-04).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connman_core::error::{Draining as DrainingError, InvalidConfig};
use connman_core::member::CloseCode;
use connman_pool::drain::{DrainConfig, DrainLayer, DrainProgress};
use connman_pool::group::{ChannelPeer, Frame, Group, channel};
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, assert_ready};
use tower_test::mock;

/// Close instants and member names, in the order the peers saw their close.
type Closes = Arc<Mutex<Vec<(Duration, String)>>>;

/// Adds `n` members spread over `namespaces` (round-robin in join order) and records when each sees its close.
fn populate(group: &Group, n: usize, namespaces: &[&str], start: Instant) -> Closes {
    let closes: Closes = Arc::default();
    for i in 0..n {
        let ns = namespaces[i % namespaces.len()];
        let (member, peer) = channel(4);
        let name = format!("{ns}/{i}");
        group.add(ns, i.to_string(), member).unwrap();
        tokio::spawn(watch_close(peer, name, start, closes.clone()));
    }
    closes
}

async fn watch_close(mut peer: ChannelPeer, name: String, start: Instant, closes: Closes) {
    while let Some(frame) = peer.recv().await {
        if let Frame::Close(..) = frame {
            closes.lock().unwrap().push((start.elapsed(), name));
            return;
        }
    }
}

fn times(closes: &Closes) -> Vec<Duration> {
    closes.lock().unwrap().iter().map(|(t, _)| *t).collect()
}

/// The most closes that began in any half-open window `[t, t + 1 s)`.
fn max_in_any_second(times: &[Duration]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut end = 0;
    let mut most = 0;
    for (start, &t) in sorted.iter().enumerate() {
        while end < sorted.len() && sorted[end] < t + Duration::from_secs(1) {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

#[tokio::test(start_paused = true)]
async fn sk_14_drain_paces_max_per_second_across_namespaces() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 10, &["a", "b", "c"], start);
    let report = group
        .drain(DrainConfig::max_per_second(3).unwrap())
        .unwrap()
        .await;
    sleep(Duration::from_millis(1)).await;
    let t = times(&closes);
    assert_eq!(t.len(), 10);
    // One close every 1/3 s: three in each second, the last one (10 − 1)/3 = 3 s after the first, which is
    // ⌈10/3⌉ − 1 as the soketi test vector asks.
    let secs: Vec<u64> = t.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    assert!(*t.last().unwrap() >= Duration::from_secs(3));
    assert!(max_in_any_second(&t) <= 3, "global cap across namespaces");
    assert_eq!((report.total, report.started, report.closed), (10, 10, 10));
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn sk_14_drain_of_5000_at_1000_per_second_never_exceeds_the_rate() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 5000, &["x", "y"], start);
    group
        .drain(DrainConfig::max_per_second(1000).unwrap())
        .unwrap()
        .await;
    // One close every millisecond: the last one begins (5000 − 1)/1000 s after the start.
    assert_eq!(start.elapsed(), Duration::from_millis(4999));
    sleep(Duration::from_millis(1)).await;
    let t = times(&closes);
    assert_eq!(t.len(), 5000);
    // Exactly 1000 closes in each whole second, and never more than 1000 in any sliding 1 s window.
    for k in 0..5 {
        let in_k = t.iter().filter(|d| d.as_secs() == k).count();
        assert_eq!(in_k, 1000, "second {k}");
    }
    assert_eq!(max_in_any_second(&t), 1000);
}

/// The cap holds for the closes as they really begin, not only on the schedule: a drain that nobody polled for a
/// while does not start every overdue close at once when it is polled again.
#[tokio::test(start_paused = true)]
async fn sk_15_a_drain_polled_late_never_bursts_above_the_rate() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 6, &["a", "b"], start);
    let mut drain = tokio_test::task::spawn(
        group
            .drain(DrainConfig::max_per_second(2).unwrap())
            .unwrap(),
    );
    assert_pending!(drain.poll());
    // Nobody polls the drain for 3 s: on the schedule alone, five closes would be overdue by then.
    sleep(Duration::from_secs(3)).await;
    while drain.poll().is_pending() {
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(1)).await;
    let t = times(&closes);
    assert_eq!(t.len(), 6);
    assert!(max_in_any_second(&t) <= 2, "closes began in a burst: {t:?}");
}

#[tokio::test(start_paused = true)]
async fn sk_15_drain_resolves_only_after_the_last_close_is_done() {
    let group = Group::new();
    let start = Instant::now();
    let _closes = populate(&group, 4, &["ns"], start);
    let mut drain = tokio_test::task::spawn(
        group
            .drain(DrainConfig::max_per_second(2).unwrap())
            .unwrap(),
    );
    let progress = drain.progress();
    // Closes begin at 0, 0.5, 1 and 1.5 s; the drain is polled on that schedule.
    assert_pending!(drain.poll());
    sleep(Duration::from_millis(500)).await;
    assert_pending!(drain.poll());
    sleep(Duration::from_millis(1)).await;
    assert_pending!(drain.poll());
    assert_eq!(
        *progress.borrow(),
        progress_of(4, 2, 2),
        "two closed, the third not started"
    );
    assert_eq!(group.len(), 2);
    sleep(Duration::from_millis(499)).await;
    assert_pending!(drain.poll());
    sleep(Duration::from_millis(500)).await;
    // The drain's own task begins the last close at 1.5 s; it is done a moment later.
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        progress.borrow().started,
        4,
        "the last close began at 1.5 s"
    );
    let report = assert_ready!(drain.poll());
    assert_eq!(report, progress_of(4, 4, 4));
    assert!(group.is_empty());
}

fn progress_of(total: usize, started: usize, closed: usize) -> DrainProgress {
    let mut p = DrainProgress::default();
    p.total = total;
    p.started = started;
    p.closed = closed;
    p
}

#[tokio::test(start_paused = true)]
async fn sk_16_drain_order_is_global_fifo_by_join_time() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 6, &["big", "small", "big"], start);
    group
        .drain(DrainConfig::max_per_second(1).unwrap())
        .unwrap()
        .await;
    sleep(Duration::from_millis(1)).await;
    let order: Vec<String> = closes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(
        order,
        ["big/0", "small/1", "big/2", "big/3", "small/4", "big/5"]
    );
    assert_eq!(
        times(&closes),
        (0..6).map(Duration::from_secs).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn sk_17_max_per_second_means_closes_per_second_not_a_timeout() {
    // The parameter is named for what it does: `max_per_second(n)` begins at most n closes in any one second, and
    // n of them in the first; it is not a time limit on the drain (which is as long as the members need).
    for n in [1usize, 4, 25] {
        let group = Group::new();
        let start = Instant::now();
        let closes = populate(&group, 3 * n, &["ns"], start);
        let config = DrainConfig::max_per_second(u32::try_from(n).unwrap()).unwrap();
        assert_eq!(config.get_max_per_second(), Some(n as u32));
        let report = group.drain(config).unwrap().await;
        sleep(Duration::from_millis(1)).await;
        let t = times(&closes);
        assert_eq!(report.closed, 3 * n);
        assert_eq!(max_in_any_second(&t), n, "at most {n} in any second");
        let first_second = t.iter().filter(|t| **t < Duration::from_secs(1)).count();
        assert_eq!(first_second, n, "{n} in the first second");
        // 3n closes at n per second: the last begins (3n − 1)/n seconds in.
        let last = *t.iter().max().unwrap();
        assert_eq!(last, Duration::from_secs_f64((3 * n - 1) as f64 / n as f64));
    }
    let err = DrainConfig::max_per_second(0).unwrap_err();
    assert_eq!(err, InvalidConfig::new("max_per_second must be at least 1"));
    assert_eq!(
        DrainConfig::over(Duration::from_secs(1))
            .unwrap()
            .get_max_per_second(),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_dropped_without_being_awaited_goes_on_by_itself() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 4, &["ns"], start);
    drop(
        group
            .drain(DrainConfig::max_per_second(2).unwrap())
            .unwrap(),
    );
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        times(&closes),
        [0, 500, 1000, 1500].map(Duration::from_millis)
    );
    assert!(group.is_empty());
    // Admission stays stopped: the drain was not called off.
    let (late, _peer) = channel(1);
    assert!(
        group
            .add("ns", "late", late)
            .unwrap_err()
            .is::<DrainingError>()
    );
}

#[tokio::test(start_paused = true)]
async fn ss_01_drain_stops_admission_before_closing_anyone() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 2, &["ns"], start);
    let signal = group.drain_signal();
    assert!(!signal.is_draining());
    let drain = group
        .drain(DrainConfig::max_per_second(1).unwrap())
        .unwrap();
    // Admission stopped before the first close: nobody is closed yet, and nobody may join.
    assert!(times(&closes).is_empty());
    assert!(signal.is_draining());
    assert!(group.is_draining());
    let (late, _peer) = channel(1);
    let rejected = group.add("ns", "late", late).unwrap_err();
    assert!(rejected.is::<DrainingError>());
    let (late, _peer) = channel(1);
    assert!(
        group
            .replace("ns", "0", late)
            .unwrap_err()
            .is::<DrainingError>()
    );
    // A second drain would double the rate.
    assert!(
        group
            .drain(DrainConfig::max_per_second(1).unwrap())
            .is_err()
    );
    drain.await;
    signal.wait().await;
}

#[tokio::test(start_paused = true)]
async fn ss_04_drain_closes_with_4200_reconnect_shortly_by_default() {
    let group = Group::new();
    let (member, mut peer) = channel(4);
    group.add("ns", "1", member).unwrap();
    group.send("ns", "1", "last words").unwrap();
    group
        .drain(DrainConfig::max_per_second(10).unwrap())
        .unwrap()
        .await;
    assert_eq!(peer.recv().await, Some(Frame::Message("last words".into())));
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(
            CloseCode::RECONNECT,
            "server closing, reconnect shortly; come back within 0 ms".into()
        ))
    );

    let group = Group::new();
    let (member, mut peer) = channel(4);
    group.add("ns", "1", member).unwrap();
    let config = DrainConfig::max_per_second(10)
        .unwrap()
        .with_code(CloseCode::RESTART)
        .with_reason("restart");
    group.drain(config.clone()).unwrap().await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(
            CloseCode::RESTART,
            "restart; come back within 0 ms".into()
        ))
    );

    // Without advice, the reason is the one given.
    let group = Group::new();
    let (member, mut peer) = channel(4);
    group.add("ns", "1", member).unwrap();
    group
        .drain(config.without_come_back_advice())
        .unwrap()
        .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(CloseCode::RESTART, "restart".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn drain_over_a_window_spreads_closes_evenly() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 4, &["a", "b"], start);
    group
        .drain(DrainConfig::over(Duration::from_secs(8)).unwrap())
        .unwrap()
        .await;
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        times(&closes),
        [0, 2, 4, 6].map(Duration::from_secs).to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn drain_skips_members_that_left_without_using_the_rate() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 4, &["ns"], start);
    let drain = group
        .drain(DrainConfig::max_per_second(1).unwrap())
        .unwrap();
    let progress = drain.progress();
    group.remove("ns", "1").unwrap();
    let _closing = group
        .close("ns", "2", CloseCode::NORMAL, "own close")
        .unwrap();
    let report = drain.await;
    sleep(Duration::from_millis(1)).await;
    // Members 0 and 3 were closed by the drain, one second apart; 2 closed itself at once and 1 was removed.
    let mut seen = closes.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (Duration::ZERO, "ns/0".to_owned()),
            (Duration::ZERO, "ns/2".to_owned()),
            (Duration::from_secs(1), "ns/3".to_owned()),
        ]
    );
    assert_eq!(report, progress_of(4, 2, 4));
    assert_eq!(*progress.borrow(), report);
}

#[tokio::test(start_paused = true)]
async fn drain_of_an_empty_group_resolves_at_once() {
    let group = Group::new();
    let report = group
        .drain(DrainConfig::max_per_second(1).unwrap())
        .unwrap()
        .await;
    assert_eq!(report, progress_of(0, 0, 0));
}

#[tokio::test]
async fn drain_layer_rejects_new_work_once_draining_and_lets_admitted_work_finish() {
    let group = Group::new();
    let (mut svc, mut handle) =
        mock::spawn_layer::<&'static str, &'static str, _>(DrainLayer::new(group.drain_signal()));

    handle.allow(2);
    assert_ready!(svc.poll_ready()).unwrap();
    let mut admitted = tokio_test::task::spawn(svc.call("before"));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, "before");

    let _drain = group
        .drain(DrainConfig::max_per_second(1).unwrap())
        .unwrap();
    assert_ready!(svc.poll_ready()).unwrap();
    let rejected = svc.call("after").await.unwrap_err();
    assert!(rejected.is::<DrainingError>());

    // The request admitted before the drain still completes.
    assert_pending!(admitted.poll());
    send.send_response("done");
    assert_eq!(assert_ready!(admitted.poll()).unwrap(), "done");
}

#[tokio::test]
async fn drain_layer_passes_inner_errors_through() {
    let (_trigger, signal) = connman_pool::drain::signal();
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(DrainLayer::new(signal));
    handle.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let call = svc.call(());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("inner failed"));
    let err = call.await.unwrap_err();
    assert!(err.is::<std::io::Error>());
}

#[tokio::test(start_paused = true)]
async fn drain_over_a_huge_window_does_not_overflow() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 2, &["ns"], start);
    let drain = group
        .drain(DrainConfig::over(Duration::MAX).unwrap())
        .unwrap();
    let mut drain = tokio_test::task::spawn(drain);
    assert_pending!(drain.poll());
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        times(&closes),
        [Duration::ZERO],
        "the first at once, the second far later"
    );
}

#[tokio::test(start_paused = true)]
async fn ss_02_close_all_with_4200_closes_every_member_at_once() {
    let group = Group::new();
    let start = Instant::now();
    let closes = populate(&group, 50, &["ns"], start);
    for done in group.close_all("ns", CloseCode::RECONNECT, "server closed") {
        done.await;
    }
    sleep(Duration::from_millis(1)).await;
    let t = times(&closes);
    assert_eq!(t.len(), 50);
    assert!(
        t.iter().all(|d| d.is_zero()),
        "no pacing: that is what drain is for"
    );
    assert!(group.is_empty());
}

#[tokio::test]
async fn drain_signal_wait_ends_when_its_trigger_is_gone() {
    let (trigger, signal) = connman_pool::drain::signal();
    let waiter = tokio::spawn({
        let signal = signal.clone();
        async move { signal.wait().await }
    });
    drop(trigger);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(!signal.is_draining());
}

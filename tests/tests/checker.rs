//! The "nothing lost" checker catches each kind of violation, passes a clean run, and the line protocol's echo server
//! logs, answers, survives garbage and restarts on the same port.

use std::io;
use std::time::Duration;

use connman_core::error::{BoxError, Closed, Elapsed, LinkLost, MaybeDelivered, NotSent};
use connman_tests::checker::line::{
    BadLine, EchoServer, parse_reply, parse_request, reply, request,
};
use connman_tests::checker::{ClientLog, Mode, Outcome, ServerLog, Violation, check};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const C: u64 = 1;

fn logs() -> (ServerLog, ClientLog) {
    (ServerLog::new(1000), ClientLog::new(1000))
}

/// Client 1 sent seqs 1..=5: 1-3 acknowledged, 4 lost with the link, 5 never written.
fn clean_run() -> (ServerLog, ClientLog) {
    let (server, client) = logs();
    for seq in 1..=3 {
        client.issue(C, seq);
        server.record(C, seq).unwrap();
        client.resolve(C, seq, Outcome::Ok);
    }
    client.issue(C, 4);
    server.record(C, 4).unwrap();
    client.resolve(C, 4, Outcome::MaybeDelivered);
    client.record(C, 5, Outcome::NotSent);
    client.reconnected(C);
    client.gauge("queue depth", 8, 8);
    (server, client)
}

fn violations(server: &ServerLog, client: &ClientLog, mode: Mode) -> Vec<Violation> {
    check(server, client, mode).violations().to_vec()
}

#[test]
fn a_clean_run_passes_in_both_modes() {
    let (server, client) = clean_run();
    for mode in [Mode::AtMostOnce, Mode::AtLeastOnce] {
        let report = check(&server, &client, mode);
        report.assert_clean();
        let counts = report.counts();
        assert_eq!(counts.requests, 5);
        assert_eq!(counts.ok, 3);
        assert_eq!(counts.maybe_delivered, 1);
        assert_eq!(counts.not_sent, 1);
        assert_eq!(counts.received, 4);
        assert_eq!(counts.duplicates, 0);
        assert_eq!(counts.reconnects, 1);
    }
}

#[test]
fn a_lost_ack_is_caught() {
    let (server, client) = clean_run();
    client.record(C, 6, Outcome::Ok);
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::LostAck { client: C, seq: 6 }]
    );
}

#[test]
fn phantom_sends_are_caught_for_not_sent_cancelled_and_expired() {
    for outcome in [Outcome::NotSent, Outcome::Cancelled, Outcome::Expired] {
        let (server, client) = clean_run();
        client.record(C, 6, outcome.clone());
        server.record(C, 6).unwrap();
        assert_eq!(
            violations(&server, &client, Mode::AtLeastOnce),
            [Violation::Phantom {
                client: C,
                seq: 6,
                outcome
            }]
        );
    }
}

#[test]
fn other_errors_and_maybe_delivered_may_or_may_not_arrive() {
    let (server, client) = clean_run();
    client.record(C, 6, Outcome::Other("closed".into()));
    client.record(C, 7, Outcome::MaybeDelivered);
    server.record(C, 6).unwrap();
    check(&server, &client, Mode::AtMostOnce).assert_clean();
}

#[test]
fn an_arrival_nobody_issued_is_caught() {
    let (server, client) = clean_run();
    server.record(2, 1).unwrap();
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::Unknown { client: 2, seq: 1 }]
    );
}

#[test]
fn any_duplicate_is_caught_in_at_most_once() {
    let (server, client) = clean_run();
    server.record(C, 3).unwrap();
    let report = check(&server, &client, Mode::AtMostOnce);
    assert_eq!(report.counts().duplicates, 1);
    assert_eq!(
        report.violations(),
        [Violation::Duplicate {
            client: C,
            seq: 3,
            received: 2,
            allowed: 0
        }]
    );
}

#[test]
fn at_least_once_allows_one_duplicate_per_retry_of_an_idempotent_request() {
    let (server, client) = logs();
    client.issue_idempotent(C, 1);
    server.record(C, 1).unwrap();
    client.reconnected(C);
    client.retried(C, 1);
    server.record(C, 1).unwrap();
    client.resolve(C, 1, Outcome::Ok);
    check(&server, &client, Mode::AtLeastOnce).assert_clean();
    // The same run breaks at-most-once.
    assert!(!check(&server, &client, Mode::AtMostOnce).is_clean());
}

#[test]
fn at_least_once_catches_duplicates_of_non_idempotent_requests() {
    let (server, client) = logs();
    client.issue(C, 1);
    server.record(C, 1).unwrap();
    client.reconnected(C);
    client.retried(C, 1);
    server.record(C, 1).unwrap();
    client.resolve(C, 1, Outcome::Ok);
    assert_eq!(
        violations(&server, &client, Mode::AtLeastOnce),
        [Violation::Duplicate {
            client: C,
            seq: 1,
            received: 2,
            allowed: 0
        }]
    );
}

#[test]
fn at_least_once_catches_more_duplicates_than_reconnects() {
    let (server, client) = logs();
    client.issue_idempotent(C, 1);
    client.reconnected(C);
    for _ in 0..3 {
        server.record(C, 1).unwrap();
        client.retried(C, 1);
    }
    client.resolve(C, 1, Outcome::Ok);
    // Three retries documented, but only one reconnect: one extra copy at most.
    assert_eq!(
        violations(&server, &client, Mode::AtLeastOnce),
        [Violation::Duplicate {
            client: C,
            seq: 1,
            received: 3,
            allowed: 1
        }]
    );
}

#[test]
fn out_of_order_arrivals_are_caught_per_client() {
    let (server, client) = logs();
    for seq in [1, 3, 2] {
        client.record(C, seq, Outcome::Ok);
        server.record(C, seq).unwrap();
    }
    // Another client's seqs do not interfere.
    client.record(2, 1, Outcome::Ok);
    server.record(2, 1).unwrap();
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::OutOfOrder {
            client: C,
            seq: 2,
            after: 3
        }]
    );
}

#[test]
fn documented_retries_are_exempt_from_the_order_check() {
    let (server, client) = logs();
    client.issue_idempotent(C, 1);
    client.issue_idempotent(C, 2);
    for seq in [1, 2] {
        server.record(C, seq).unwrap();
    }
    client.reconnected(C);
    client.retried(C, 1);
    server.record(C, 1).unwrap();
    client.resolve(C, 1, Outcome::Ok);
    client.resolve(C, 2, Outcome::Ok);
    check(&server, &client, Mode::AtLeastOnce).assert_clean();
}

/// A maybe-delivered request was written on a link that failed; the network may still hand it to the server after a
/// later request went out on the next link. Requests that were answered must still keep their order.
#[test]
fn a_maybe_delivered_request_may_arrive_late_but_answered_ones_keep_their_order() {
    let (server, client) = logs();
    client.record(C, 1, Outcome::MaybeDelivered);
    client.record(C, 2, Outcome::Ok);
    client.record(C, 3, Outcome::Ok);
    client.record(C, 4, Outcome::Ok);
    for seq in [2, 1, 4, 3] {
        server.record(C, seq).unwrap();
    }
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::OutOfOrder {
            client: C,
            seq: 3,
            after: 4
        }],
        "the late maybe-delivered 1 is allowed, the answered 3 after 4 is not"
    );
}

#[test]
fn a_pending_request_is_caught() {
    let (server, client) = clean_run();
    client.issue(C, 6);
    let report = check(&server, &client, Mode::AtMostOnce);
    assert_eq!(report.counts().pending, 1);
    assert_eq!(
        report.violations(),
        [Violation::Pending { client: C, seq: 6 }]
    );
}

#[test]
fn a_second_outcome_is_caught() {
    let (server, client) = clean_run();
    client.resolve(C, 5, Outcome::Cancelled);
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::MultipleOutcomes {
            client: C,
            seq: 5,
            outcomes: 2
        }]
    );
}

#[test]
fn a_gauge_past_its_limit_is_caught() {
    let (server, client) = clean_run();
    client.gauge("queue bytes", 4097, 4096);
    // A later, smaller observation does not hide the peak.
    client.gauge("queue bytes", 10, 4096);
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [Violation::BoundExceeded {
            gauge: "queue bytes".into(),
            observed: 4097,
            limit: 4096
        }]
    );
}

#[test]
fn full_logs_refuse_entries_and_are_reported() {
    let server = ServerLog::new(1);
    let client = ClientLog::new(1);
    client.record(C, 1, Outcome::Ok);
    client.record(C, 2, Outcome::Ok);
    assert_eq!(client.len(), 1);
    server.record(C, 1).unwrap();
    assert!(server.record(C, 2).is_err());
    assert_eq!(server.overflowed(), 1);
    assert_eq!(
        violations(&server, &client, Mode::AtMostOnce),
        [
            Violation::LogOverflow {
                log: "server",
                dropped: 1
            },
            Violation::LogOverflow {
                log: "client",
                dropped: 1
            },
        ]
    );
}

#[test]
fn the_report_prints_a_table_of_counts_and_violations() {
    let (server, client) = clean_run();
    client.record(C, 6, Outcome::Ok);
    let table = check(&server, &client, Mode::AtMostOnce).to_string();
    assert!(table.contains("at-most-once"), "{table}");
    assert!(table.contains("requests"), "{table}");
    assert!(table.contains("lost ack"), "{table}");
    assert!(table.contains("client 1 seq 6"), "{table}");
}

#[test]
#[should_panic(expected = "lost ack")]
fn assert_clean_panics_with_the_table() {
    let (server, client) = clean_run();
    client.record(C, 6, Outcome::Ok);
    check(&server, &client, Mode::AtMostOnce).assert_clean();
}

#[test]
fn logs_are_shared_across_threads() {
    let (server, client) = logs();
    let workers: Vec<_> = (0..4)
        .map(|c| {
            let (server, client) = (server.clone(), client.clone());
            std::thread::spawn(move || {
                for seq in 0..50 {
                    client.issue(c, seq);
                    server.record(c, seq).unwrap();
                    client.resolve(c, seq, Outcome::Ok);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(server.len(), 200);
    check(&server, &client, Mode::AtMostOnce).assert_clean();
}

#[test]
fn outcomes_are_read_from_error_chains() {
    let md: BoxError = MaybeDelivered::with_source(LinkLost::new()).into();
    assert_eq!(Outcome::of_error(md.as_ref()), Outcome::MaybeDelivered);
    let ns: BoxError = NotSent::with_source(Closed::new()).into();
    assert_eq!(Outcome::of_error(ns.as_ref()), Outcome::NotSent);
    // A lost link is maybe delivered, whatever it wraps (the public classifier reads it first).
    let wrapped: BoxError = LinkLost::with_source(Elapsed::new()).into();
    assert_eq!(Outcome::of_error(wrapped.as_ref()), Outcome::MaybeDelivered);
    let elapsed: BoxError = Elapsed::new().into();
    assert_eq!(Outcome::of_error(elapsed.as_ref()), Outcome::Expired);
    let closed: BoxError = Closed::new().into();
    assert_eq!(
        Outcome::of_error(closed.as_ref()),
        Outcome::Other("closed".into())
    );
    assert_eq!(Outcome::of_result::<_, BoxError>(&Ok(())), Outcome::Ok);
}

#[test]
fn line_protocol_round_trips_and_rejects_garbage() {
    let parsed = parse_request(&request(3, 9, "a b c")).unwrap();
    assert_eq!(
        (parsed.client, parsed.seq, parsed.payload.as_str()),
        (3, 9, "a b c")
    );
    assert_eq!(parse_request("3 9").unwrap().payload, "");
    assert_eq!(parse_reply(&reply(3, 9)).unwrap(), (3, 9));
    for garbage in ["", "x 1 p", "1", "1 y", "-1 2 p"] {
        let err: BadLine = parse_request(garbage).unwrap_err();
        assert!(!err.reason().is_empty());
    }
    assert!(parse_reply("3 9 nope").is_err());
    assert!(parse_reply("3 9 ok extra").is_err());
}

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .expect("the test did not finish in time");
}

async fn send(stream: &mut BufReader<TcpStream>, client: u64, seq: u64) -> io::Result<String> {
    stream
        .get_mut()
        .write_all(request(client, seq, "payload").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_line(&mut answer).await?;
    Ok(answer)
}

async fn connect(server: &EchoServer) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(server.addr()).await.unwrap())
}

#[tokio::test]
async fn echo_server_logs_and_answers_each_request() {
    bounded(async {
        let log = ServerLog::new(100);
        let server = EchoServer::start(log.clone()).await.unwrap();
        let mut stream = connect(&server).await;
        for seq in 1..=3 {
            let answer = send(&mut stream, 4, seq).await.unwrap();
            assert_eq!(parse_reply(&answer).unwrap(), (4, seq));
        }
        assert_eq!(log.entries(), [(4, 1), (4, 2), (4, 3)]);
        assert_eq!(server.stats().answered, 3);
    })
    .await;
}

#[tokio::test]
async fn echo_server_closes_only_the_connection_that_sent_garbage() {
    bounded(async {
        let log = ServerLog::new(100);
        let server = EchoServer::with_max_line(log.clone(), 64).await.unwrap();
        let mut good = connect(&server).await;
        send(&mut good, 1, 1).await.unwrap();
        let garbage: [&[u8]; 3] = [b"not a request\n", &[b'7'; 200], b"1 2 \xff\xfe\n"];
        for (i, bytes) in garbage.into_iter().enumerate() {
            let mut bad = connect(&server).await;
            bad.get_mut().write_all(bytes).await.unwrap();
            let mut rest = String::new();
            // The server closes it: an end of stream, or a reset if it left bytes unread.
            let read = bad.read_line(&mut rest).await;
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            assert_eq!(server.stats().garbage, i as u64 + 1);
        }
        // The good connection never noticed.
        let answer = send(&mut good, 1, 2).await.unwrap();
        assert_eq!(parse_reply(&answer).unwrap(), (1, 2));
        assert_eq!(log.entries(), [(1, 1), (1, 2)]);
    })
    .await;
}

#[tokio::test]
async fn echo_server_stops_and_restarts_on_the_same_port() {
    bounded(async {
        let log = ServerLog::new(100);
        let mut server = EchoServer::start(log.clone()).await.unwrap();
        let addr = server.addr();
        let mut stream = connect(&server).await;
        send(&mut stream, 1, 1).await.unwrap();

        server.stop().await;
        assert!(!server.is_running());
        // The live connection is closed and new ones are refused.
        let mut rest = String::new();
        assert!(matches!(stream.read_line(&mut rest).await, Ok(0) | Err(_)));
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

        server.restart().await.unwrap();
        assert_eq!(server.addr(), addr);
        let mut stream = connect(&server).await;
        send(&mut stream, 1, 2).await.unwrap();
        assert_eq!(log.entries(), [(1, 1), (1, 2)]);
    })
    .await;
}

#[tokio::test]
async fn echo_server_feeds_the_checker() {
    bounded(async {
        let (log, client) = logs();
        let server = EchoServer::start(log.clone()).await.unwrap();
        let mut stream = connect(&server).await;
        for seq in 1..=5 {
            client.issue(9, seq);
            let answer = send(&mut stream, 9, seq).await;
            let outcome = match answer.as_deref().map(parse_reply) {
                Ok(Ok(got)) if got == (9, seq) => Outcome::Ok,
                other => Outcome::Other(format!("{other:?}")),
            };
            client.resolve(9, seq, outcome);
        }
        check(&log, &client, Mode::AtMostOnce).assert_clean();
    })
    .await;
}

/// A plain client through the fault proxy: each cut costs the request in flight (maybe delivered), nothing else.
#[tokio::test]
async fn a_cut_link_loses_nothing_the_checker_can_see() {
    use connman_tests::proxy::FaultProxy;

    bounded(async {
        let (log, client) = logs();
        let server = EchoServer::start(log.clone()).await.unwrap();
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        // Every connection is cut after 100 bytes, a few requests and answers in.
        proxy.handle().cut_after(100);
        let mut stream: Option<BufReader<TcpStream>> = None;
        for seq in 1..=40 {
            client.issue(C, seq);
            let link = match stream.as_mut() {
                Some(link) => link,
                None => {
                    if seq > 1 {
                        client.reconnected(C);
                    }
                    let fresh = TcpStream::connect(proxy.addr()).await.unwrap();
                    stream.insert(BufReader::new(fresh))
                }
            };
            let outcome = match send(link, C, seq).await {
                Ok(answer) if parse_reply(&answer) == Ok((C, seq)) => Outcome::Ok,
                // Written, then the link ended before the answer.
                _ => {
                    stream = None;
                    Outcome::MaybeDelivered
                }
            };
            client.resolve(C, seq, outcome);
        }
        let report = check(&log, &client, Mode::AtMostOnce);
        report.assert_clean();
        assert!(report.counts().ok > 0, "{report}");
        assert!(report.counts().maybe_delivered > 0, "{report}");
        assert!(proxy.handle().stats().cuts > 0);
    })
    .await;
}

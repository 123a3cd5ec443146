//! Unit tests of [`Pipeline`] over in-memory duplex streams and a loopback echo server.

use super::*;

use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{MaybeDelivered, NotSent};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, task};
use tokio_util::codec::{Framed, LengthDelimitedCodec, LinesCodec};

use crate::TcpConnector;

type Lines = Pipeline<String, String>;

async fn ready<S: Service<R, Error = BoxError>, R>(svc: &mut S) -> Result<(), BoxError> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await
}

/// A peer that answers each line with its upper-case form.
fn upper_peer(io: DuplexStream) {
    tokio::spawn(async move {
        let mut lines = Framed::new(io, LinesCodec::new());
        while let Some(Ok(line)) = lines.next().await {
            if lines.send(line.to_uppercase()).await.is_err() {
                break;
            }
        }
    });
}

/// The `PipelineError` under a request's outcome.
fn cause(err: &BoxError) -> &PipelineError {
    std::error::Error::source(&**err)
        .and_then(|s| s.downcast_ref::<PipelineError>())
        .expect("a PipelineError as the source")
}

#[tokio::test]
async fn responses_come_back_in_order() {
    let (client, server) = tokio::io::duplex(1024);
    upper_peer(server);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new_with_max_length(64));
    let mut futures = Vec::new();
    for word in ["a", "bb", "ccc", "dddd"] {
        ready(&mut p).await.unwrap();
        futures.push(p.call(word.to_string()));
    }
    let mut got = Vec::new();
    for f in futures {
        got.push(f.await.unwrap());
    }
    assert_eq!(got, ["A", "BB", "CCC", "DDDD"]);
}

#[tokio::test]
async fn poll_ready_is_pending_when_max_in_flight_is_reached() {
    let (client, server) = tokio::io::duplex(1024);
    let mut peer = Framed::new(server, LinesCodec::new());
    let mut p: Lines = Pipeline::with_max_in_flight(client, LinesCodec::new(), 2);
    ready(&mut p).await.unwrap();
    let first = p.call("1".into());
    ready(&mut p).await.unwrap();
    let second = p.call("2".into());
    let mut third = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    assert_pending!(third.poll());
    // One answer frees one slot.
    assert_eq!(peer.next().await.unwrap().unwrap(), "1");
    peer.send("one".to_string()).await.unwrap();
    assert_eq!(first.await.unwrap(), "one");
    assert!(third.is_woken());
    assert_ready!(third.poll()).unwrap();
    drop(third);
    assert_eq!(peer.next().await.unwrap().unwrap(), "2");
    peer.send("two".to_string()).await.unwrap();
    assert_eq!(second.await.unwrap(), "two");
}

#[tokio::test]
async fn link_lost_after_write_is_maybe_delivered_and_the_service_is_dead() {
    let (client, server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let call = p.call("hello".into());
    let mut peer = Framed::new(server, LinesCodec::new());
    assert_eq!(peer.next().await.unwrap().unwrap(), "hello");
    drop(peer);
    let err = call.await.unwrap_err();
    assert!(err.is::<MaybeDelivered>(), "{err}");
    assert!(cause(&err).is_link_lost());
    let err = ready(&mut p).await.unwrap_err();
    assert!(err.downcast_ref::<PipelineError>().unwrap().is_link_lost());
    assert!(p.failure().is_some());
}

#[tokio::test]
async fn requests_never_written_fail_as_not_sent() {
    // A four-byte pipe the peer never reads: the first request is written in part, the second not at all.
    let (client, server) = tokio::io::duplex(4);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let first = p.call("x".repeat(100));
    ready(&mut p).await.unwrap();
    let second = p.call("y".into());
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(server);
    let first = first.await.unwrap_err();
    let second = second.await.unwrap_err();
    assert!(first.is::<MaybeDelivered>(), "{first}");
    assert!(second.is::<NotSent>(), "{second}");
    // A call on the dead service is refused without writing.
    assert!(ready(&mut p).await.is_err());
}

#[tokio::test]
async fn frame_over_the_limit_closes_with_a_typed_error() {
    let (client, mut server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new_with_max_length(8));
    ready(&mut p).await.unwrap();
    let call = p.call("q".into());
    let mut buf = [0; 2];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"far too long a line\n").await.unwrap();
    let err = call.await.unwrap_err();
    assert!(err.is::<MaybeDelivered>(), "{err}");
    assert!(cause(&err).is_codec());
    let err = ready(&mut p).await.unwrap_err();
    assert!(err.downcast_ref::<PipelineError>().unwrap().is_codec());
}

#[tokio::test]
async fn unsolicited_response_closes_with_a_typed_error() {
    let (client, mut server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    server.write_all(b"hello\r\n").await.unwrap();
    let mut poll = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    // The driver reads the greeting nobody asked for and dies; the service reports why.
    let err = loop {
        match poll.poll() {
            std::task::Poll::Ready(Err(e)) => break e,
            _ => tokio::task::yield_now().await,
        }
    };
    assert!(
        err.downcast_ref::<PipelineError>()
            .unwrap()
            .is_unsolicited()
    );
}

#[tokio::test]
async fn encode_error_fails_only_that_request() {
    let (client, server) = tokio::io::duplex(1024);
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(8)
        .new_codec();
    tokio::spawn(async move {
        let mut peer = Framed::new(server, LengthDelimitedCodec::new());
        while let Some(Ok(frame)) = peer.next().await {
            let _ = peer.send(frame.freeze()).await;
        }
    });
    let mut p: Pipeline<Bytes, bytes::BytesMut> = Pipeline::new(client, codec);
    ready(&mut p).await.unwrap();
    let err = p.call(Bytes::from(vec![1; 64])).await.unwrap_err();
    assert!(err.is::<NotSent>(), "{err}");
    assert!(cause(&err).is_encode());
    ready(&mut p).await.unwrap();
    let ok = p.call(Bytes::from_static(b"fine")).await.unwrap();
    assert_eq!(&ok[..], b"fine");
}

#[tokio::test]
async fn call_without_poll_ready_is_refused_unsent() {
    let (client, _server) = tokio::io::duplex(64);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    let err = p.call("x".into()).await.unwrap_err();
    assert!(err.is::<NotSent>());
}

#[tokio::test]
async fn a_clone_is_not_ready_until_polled() {
    let (client, server) = tokio::io::duplex(1024);
    upper_peer(server);
    let mut p: Lines = Pipeline::with_max_in_flight(client, LinesCodec::new(), 1);
    ready(&mut p).await.unwrap();
    let mut q = p.clone();
    // The only slot is held by `p`.
    let mut poll = task::spawn(std::future::poll_fn(|cx| q.poll_ready(cx)));
    assert_pending!(poll.poll());
    assert_eq!(p.call("a".into()).await.unwrap(), "A");
    assert_ready!(poll.poll()).unwrap();
}

#[tokio::test]
async fn dead_service_poll_ready_errs_at_once() {
    let (client, server) = tokio::io::duplex(64);
    drop(server);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    let mut poll = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    // Ready at first (a slot is free), then the driver notices the closed peer.
    let _ = poll.poll();
    drop(poll);
    let err = loop {
        match ready(&mut p).await {
            Err(e) => break e,
            Ok(()) => {
                let _ = p.call("x".into()).await;
            }
        }
    };
    let mut poll = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    assert_ready_err!(poll.poll());
    assert!(err.downcast_ref::<PipelineError>().unwrap().is_link_lost());
}

#[tokio::test]
async fn connector_makes_pipelines_over_loopback_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let test = async {
        let mut make: PipelineConnector<_, _, String> =
            PipelineConnector::new(TcpConnector::new(), LinesCodec::new_with_max_length(1024))
                .max_in_flight(8);
        ready::<_, std::net::SocketAddr>(&mut make).await.unwrap();
        let mut p = make.call(addr).await.unwrap();
        let mut calls = Vec::new();
        for i in 0..20 {
            ready(&mut p).await.unwrap();
            calls.push(p.call(format!("line {i}")));
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), format!("line {i}"));
        }
        // A second connection from the same connector is independent.
        let mut q = make.call(addr).await.unwrap();
        ready(&mut q).await.unwrap();
        assert_eq!(q.call("again".into()).await.unwrap(), "again");
    };
    tokio::time::timeout(Duration::from_secs(5), test)
        .await
        .expect("finishes");
}

#[tokio::test]
async fn connector_reports_connect_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut make: PipelineConnector<_, _, String> =
        PipelineConnector::new(TcpConnector::new(), LinesCodec::new());
    ready::<_, std::net::SocketAddr>(&mut make).await.unwrap();
    let err = make.call(addr).await.unwrap_err();
    assert!(
        err.downcast_ref::<crate::ConnectError>()
            .unwrap()
            .is_refused()
    );
}

#[tokio::test]
async fn a_request_cancelled_before_it_is_written_is_never_sent() {
    // The peer does not read yet: a first request larger than the codec's write backpressure boundary (8 KiB) holds
    // the driver, so the requests after it wait unwritten.
    let (client, server) = tokio::io::duplex(16);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let big = p.call("a".repeat(20_000));
    ready(&mut p).await.unwrap();
    let cancelled = p.call("cancelled".into());
    ready(&mut p).await.unwrap();
    let kept = p.call("kept".into());
    tokio::task::yield_now().await;
    drop(cancelled);
    let mut peer = Framed::new(server, LinesCodec::new());
    assert_eq!(peer.next().await.unwrap().unwrap().len(), 20_000);
    assert_eq!(peer.next().await.unwrap().unwrap(), "kept");
    // The cancelled request took no place in the response order either.
    peer.send("first".to_string()).await.unwrap();
    peer.send("second".to_string()).await.unwrap();
    assert_eq!(big.await.unwrap(), "first");
    assert_eq!(kept.await.unwrap(), "second");
}

#[tokio::test]
async fn the_driver_lets_go_once_nobody_waits() {
    // The peer never answers. Once the handle and the response future are gone, the driver closes the connection.
    let (client, mut server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let call = p.call("unanswered".into());
    drop(p);
    let mut buf = Vec::new();
    let read = tokio::spawn(async move {
        let _ = server.read_to_end(&mut buf).await;
        buf
    });
    tokio::task::yield_now().await;
    drop(call);
    let buf = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the driver closes the stream")
        .unwrap();
    assert_eq!(buf, b"unanswered\n");
}

/// One run of the property below: the outcomes of `n` requests when the peer reads `read` bytes, answers the first
/// `answered` complete requests it saw, and hangs up.
fn outcomes_when_the_peer_hangs_up(
    n: usize,
    answered: usize,
    capacity: usize,
    read: usize,
) -> (Vec<Result<String, BoxError>>, Vec<usize>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let requests: Vec<String> = (0..n).map(|i| format!("request-{i}")).collect();
        let starts: Vec<usize> = requests
            .iter()
            .scan(0, |at, r| {
                let start = *at;
                *at += r.len() + 1;
                Some(start)
            })
            .collect();
        let total: usize = requests.iter().map(|r| r.len() + 1).sum();
        let read = read.min(total);
        let (client, mut server) = tokio::io::duplex(capacity);
        let peer = tokio::spawn(async move {
            let mut seen = vec![0; read];
            server.read_exact(&mut seen).await.unwrap();
            let complete = seen.iter().filter(|b| **b == b'\n').count();
            for i in 0..answered.min(complete) {
                server
                    .write_all(format!("r{i}\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let mut p: Lines = Pipeline::with_max_in_flight(client, LinesCodec::new(), n);
        let mut calls = Vec::new();
        for r in requests {
            ready(&mut p).await.unwrap();
            calls.push(p.call(r));
        }
        let mut outcomes = Vec::new();
        for call in calls {
            let outcome = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("every request gets an outcome");
            outcomes.push(outcome);
        }
        peer.await.unwrap();
        (outcomes, starts, read)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Every request gets exactly one outcome; answers go to the right requests in order; a request the peer saw any
    /// byte of is never reported as not sent.
    #[test]
    fn every_request_has_one_truthful_outcome(
        n in 1usize..24,
        answered in 0usize..24,
        capacity in 1usize..128,
        read in 0usize..400,
    ) {
        let (outcomes, starts, read) = outcomes_when_the_peer_hangs_up(n, answered, capacity, read);
        let mut answers = 0;
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(answer) => {
                    proptest::prop_assert_eq!(answer, &format!("r{i}"));
                    proptest::prop_assert_eq!(answers, i);
                    answers += 1;
                }
                Err(e) => {
                    proptest::prop_assert!(e.is::<MaybeDelivered>() || e.is::<NotSent>(), "{}", e);
                    if starts[i] < read {
                        proptest::prop_assert!(!e.is::<NotSent>(), "request {} was read by the peer", i);
                    }
                }
            }
        }
    }
}

/// A response cut short by the end of the stream is never handed out as a whole one, whatever the codec does with
/// leftover bytes (`LinesCodec` would return them as a last line).
#[tokio::test]
async fn a_response_cut_by_the_end_of_the_stream_is_maybe_delivered_not_ok() {
    let (client, server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let call = p.call("hello".into());
    let (mut read, mut write) = tokio::io::split(server);
    let mut buf = [0; 6];
    read.read_exact(&mut buf).await.unwrap();
    // Half a reply, then the peer goes away.
    write.write_all(b"HEL").await.unwrap();
    drop((read, write));
    let err = call.await.unwrap_err();
    assert!(err.is::<MaybeDelivered>(), "{err}");
    assert!(cause(&err).is_link_lost());
}

/// Invalid UTF-8 from the peer is the codec's complaint about bad bytes, not a lost link.
#[tokio::test]
async fn invalid_utf8_is_a_codec_error_not_a_lost_link() {
    let (client, server) = tokio::io::duplex(1024);
    let mut p: Lines = Pipeline::new(client, LinesCodec::new());
    ready(&mut p).await.unwrap();
    let call = p.call("hello".into());
    let (mut read, mut write) = tokio::io::split(server);
    let mut buf = [0; 6];
    read.read_exact(&mut buf).await.unwrap();
    write.write_all(b"\xff\xfe\n").await.unwrap();
    let err = call.await.unwrap_err();
    assert!(err.is::<MaybeDelivered>(), "{err}");
    assert!(cause(&err).is_codec(), "{:?}", cause(&err));
}

//! The pipelined client over real loopback sockets against a `FlakyServer`: in-order echoes, typed outcomes when the
//! server ends the connection, and a fresh pipeline from the connector afterwards.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use connman_core::error::{BoxError, MaybeDelivered, NotSent};
use connman_tcp::TcpConnector;
use connman_tcp::pipeline::{Pipeline, PipelineConnector, PipelineError};
use connman_tests::flaky::FlakyServer;
use tokio::time::timeout;
use tokio_util::codec::LinesCodec;
use tower_service::Service;

const BOUND: Duration = Duration::from_secs(5);

type Make = PipelineConnector<TcpConnector, LinesCodec, String>;

fn make() -> Make {
    PipelineConnector::new(TcpConnector::new(), LinesCodec::new_with_max_length(1024))
        .max_in_flight(16)
}

async fn ready(p: &mut Pipeline<String, String>) -> Result<(), BoxError> {
    poll_fn(|cx| p.poll_ready(cx)).await
}

async fn connect(make: &mut Make, addr: SocketAddr) -> Pipeline<String, String> {
    poll_fn(|cx| Service::<SocketAddr>::poll_ready(make, cx))
        .await
        .unwrap();
    make.call(addr).await.unwrap()
}

#[tokio::test]
async fn echoes_in_order_over_loopback() {
    let server = FlakyServer::builder()
        .greeting(bytes::Bytes::new())
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let mut make = make();
        let mut p = connect(&mut make, server.addr()).await;
        let mut calls = Vec::new();
        for i in 0..100 {
            ready(&mut p).await.unwrap();
            calls.push(p.call(format!("request {i}")));
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), format!("request {i}"));
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn server_ending_the_connection_gives_typed_outcomes_and_a_dead_service() {
    let server = FlakyServer::builder()
        .greeting(bytes::Bytes::new())
        .lifetime(Some(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let mut make = make();
        let mut p = connect(&mut make, server.addr()).await;
        ready(&mut p).await.unwrap();
        assert_eq!(p.call("before".into()).await.unwrap(), "before");
        // Keep calling until the server ends the connection under us.
        let failure = loop {
            match ready(&mut p).await {
                Err(e) => break e,
                Ok(()) => match p.call("more".into()).await {
                    Ok(echo) => assert_eq!(echo, "more"),
                    // Each failed request is either provably unsent or maybe delivered, never anything else.
                    Err(e) => assert!(e.is::<MaybeDelivered>() || e.is::<NotSent>(), "{e}"),
                },
            }
        };
        assert!(
            failure
                .downcast_ref::<PipelineError>()
                .unwrap()
                .is_link_lost()
        );
        // The connector makes a fresh pipeline that works.
        let mut q = connect(&mut make, server.addr()).await;
        ready(&mut q).await.unwrap();
        assert_eq!(q.call("after".into()).await.unwrap(), "after");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn greeting_nobody_asked_for_is_a_typed_error() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let mut make = make();
        let mut p = connect(&mut make, server.addr()).await;
        // The server's `hello` arrives with no request waiting: the connection is closed with a typed error.
        let err = loop {
            match ready(&mut p).await {
                Err(e) => break e,
                Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        assert!(
            err.downcast_ref::<PipelineError>()
                .unwrap()
                .is_unsolicited()
        );
    })
    .await
    .expect("bounded");
}

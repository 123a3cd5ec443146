//! The fault-injecting proxy over real loopback sockets: one test per fault, each bounded by a timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connman_tests::proxy::{FaultProxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs a test body within a few seconds.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .expect("the test did not finish in time");
}

/// An upstream listener, a proxy in front of it, and one connection through both.
struct Link {
    upstream: TcpListener,
    proxy: FaultProxy,
    client: TcpStream,
    server: TcpStream,
}

async fn link() -> Link {
    link_with(ProxyConfig::new()).await
}

async fn link_with(config: ProxyConfig) -> Link {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::with_config(upstream.local_addr().unwrap(), config)
        .await
        .unwrap();
    let client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (server, _) = upstream.accept().await.unwrap();
    Link {
        upstream,
        proxy,
        client,
        server,
    }
}

async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Whether nothing at all (neither data nor an end of stream) arrives within `wait`.
async fn stays_silent(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0; 64];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_err()
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn unused_addr() -> SocketAddr {
    // Bind a port and free it again: nothing listens there afterwards.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn clean_forwarding_both_ways_is_counted() {
    bounded(async {
        let mut l = link().await;
        l.client.write_all(b"hello").await.unwrap();
        assert_eq!(read_n(&mut l.server, 5).await, b"hello");
        l.server.write_all(b"world!").await.unwrap();
        assert_eq!(read_n(&mut l.client, 6).await, b"world!");
        let stats = l.proxy.handle().stats();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.live, 1);
        assert_eq!((stats.bytes_up, stats.bytes_down), (5, 6));
        assert_eq!(stats.faults_injected(), 0);
        // A half-close travels through.
        l.client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        l.server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .await;
}

#[tokio::test]
async fn delay_holds_each_chunk() {
    bounded(async {
        let mut l = link().await;
        let hold = Duration::from_millis(300);
        l.proxy.handle().delay(hold);
        let started = Instant::now();
        l.client.write_all(b"slow").await.unwrap();
        assert_eq!(read_n(&mut l.server, 4).await, b"slow");
        assert!(started.elapsed() >= hold, "{:?}", started.elapsed());
        assert!(l.proxy.handle().stats().delayed >= 1);

        l.proxy.handle().heal();
        let delayed = l.proxy.handle().stats().delayed;
        l.server.write_all(b"fast").await.unwrap();
        assert_eq!(read_n(&mut l.client, 4).await, b"fast");
        assert_eq!(l.proxy.handle().stats().delayed, delayed);
    })
    .await;
}

#[tokio::test]
async fn slice_writes_forwards_small_pieces_intact() {
    bounded(async {
        let mut l = link().await;
        l.proxy.handle().slice_writes(3);
        // A short hold between the pieces lets the peer see them one by one.
        l.proxy.handle().delay(Duration::from_millis(40));
        l.client.write_all(b"abcdefghijkl").await.unwrap();
        let mut got = Vec::new();
        let mut reads = 0;
        while got.len() < 12 {
            let mut buf = [0; 64];
            let n = l.server.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
            reads += 1;
        }
        assert_eq!(got, b"abcdefghijkl");
        assert!(reads >= 2, "all twelve bytes came in {reads} read");
        let stats = l.proxy.handle().stats();
        assert_eq!(stats.sliced, 1);
        assert_eq!(stats.delayed, 4);
        assert_eq!(stats.bytes_up, 12);
    })
    .await;
}

#[tokio::test]
async fn cut_after_closes_after_exactly_n_bytes() {
    bounded(async {
        let mut l = link().await;
        l.proxy.handle().cut_after(5);
        l.client.write_all(b"0123456789").await.unwrap();
        let mut got = Vec::new();
        l.server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"01234");
        let mut rest = Vec::new();
        // The client side ends too (an end of stream or, with unread data, a reset).
        let _ = l.client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(l.proxy.handle().stats().cuts, 1);
    })
    .await;
}

#[tokio::test]
async fn cut_after_counts_both_directions_and_applies_to_new_connections() {
    bounded(async {
        let mut l = link().await;
        l.proxy.handle().cut_after(6);
        l.client.write_all(b"abcd").await.unwrap();
        assert_eq!(read_n(&mut l.server, 4).await, b"abcd");
        l.server.write_all(b"wxyz").await.unwrap();
        let mut got = Vec::new();
        l.client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"wx");

        // The next connection gets its own budget.
        let mut client = TcpStream::connect(l.proxy.addr()).await.unwrap();
        let (mut server, _) = l.upstream.accept().await.unwrap();
        client.write_all(b"123456789").await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"123456");
        assert_eq!(l.proxy.handle().stats().cuts, 2);
    })
    .await;
}

#[tokio::test]
async fn blackhole_forwards_nothing_and_keeps_sockets_open() {
    bounded(async {
        let mut l = link().await;
        let handle = l.proxy.handle().clone();
        handle.blackhole();
        l.client.write_all(b"lost").await.unwrap();
        l.server.write_all(b"gone").await.unwrap();
        let quiet = Duration::from_millis(300);
        assert!(stays_silent(&mut l.server, quiet).await);
        assert!(stays_silent(&mut l.client, quiet).await);
        wait_for(|| handle.stats().bytes_dropped == 8).await;
        let stats = handle.stats();
        assert_eq!((stats.bytes_up, stats.bytes_down), (0, 0));

        // A new connection is accepted but never reaches the upstream: a half-open link.
        let mut fresh = TcpStream::connect(l.proxy.addr()).await.unwrap();
        fresh.write_all(b"hello?").await.unwrap();
        assert!(
            tokio::time::timeout(quiet, l.upstream.accept())
                .await
                .is_err()
        );
        assert!(stays_silent(&mut fresh, quiet).await);

        // After heal the live connection forwards again.
        handle.heal();
        l.client.write_all(b"back").await.unwrap();
        assert_eq!(read_n(&mut l.server, 4).await, b"back");
    })
    .await;
}

#[tokio::test]
async fn reset_now_resets_both_peers() {
    bounded(async {
        let mut l = link().await;
        l.client.write_all(b"x").await.unwrap();
        assert_eq!(read_n(&mut l.server, 1).await, b"x");
        assert_eq!(l.proxy.handle().reset_now(), 1);
        let mut buf = [0; 8];
        let client = l.client.read(&mut buf).await;
        let server = l.server.read(&mut buf).await;
        for result in [client, server] {
            let err = result.expect_err("a reset, not an end of stream");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        }
        assert_eq!(l.proxy.handle().stats().resets, 1);
        let handle = l.proxy.handle().clone();
        wait_for(|| handle.stats().live == 0).await;
    })
    .await;
}

#[tokio::test]
async fn refuse_then_restore_on_the_same_port() {
    bounded(async {
        let mut l = link().await;
        let handle = l.proxy.handle().clone();
        handle.refuse().await;
        assert!(handle.is_refusing().await);
        let err = TcpStream::connect(l.proxy.addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

        // The live connection carries on.
        l.client.write_all(b"still").await.unwrap();
        assert_eq!(read_n(&mut l.server, 5).await, b"still");

        handle.restore().await.unwrap();
        assert!(!handle.is_refusing().await);
        let mut client = TcpStream::connect(l.proxy.addr()).await.unwrap();
        let (mut server, _) = l.upstream.accept().await.unwrap();
        client.write_all(b"again").await.unwrap();
        assert_eq!(read_n(&mut server, 5).await, b"again");
        assert_eq!(handle.stats().refusals, 1);
    })
    .await;
}

#[tokio::test]
async fn heal_clears_every_fault() {
    bounded(async {
        let mut l = link().await;
        let handle = l.proxy.handle();
        handle.delay(Duration::from_secs(30));
        handle.slice_writes(1);
        handle.cut_after(1);
        handle.blackhole();
        handle.heal();
        l.client.write_all(b"clean").await.unwrap();
        assert_eq!(read_n(&mut l.server, 5).await, b"clean");
        l.server.write_all(b"reply").await.unwrap();
        assert_eq!(read_n(&mut l.client, 5).await, b"reply");
        assert_eq!(handle.stats().faults_injected(), 0);
    })
    .await;
}

#[tokio::test]
async fn unreachable_upstream_closes_the_client() {
    bounded(async {
        let proxy = FaultProxy::start(unused_addr()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        let handle = proxy.handle().clone();
        wait_for(|| handle.stats().upstream_failures == 1).await;
    })
    .await;
}

#[tokio::test]
async fn connections_past_the_maximum_are_closed_at_accept() {
    bounded(async {
        let mut l = link_with(ProxyConfig::new().max_connections(1)).await;
        let mut extra = TcpStream::connect(l.proxy.addr()).await.unwrap();
        let mut rest = Vec::new();
        let _ = extra.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(l.proxy.handle().stats().rejected, 1);
        // The first connection is untouched.
        l.client.write_all(b"ok").await.unwrap();
        assert_eq!(read_n(&mut l.server, 2).await, b"ok");
    })
    .await;
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    bounded(async {
        let mut l = link().await;
        let handle = l.proxy.handle().clone();
        let addr = l.proxy.addr();
        drop(l.proxy);
        // Both peers see their connection end.
        let mut buf = [0; 8];
        assert!(matches!(l.client.read(&mut buf).await, Ok(0) | Err(_)));
        assert!(matches!(l.server.read(&mut buf).await, Ok(0) | Err(_)));
        wait_for(|| handle.stats().live == 0).await;
        // The listener is gone and cannot be brought back.
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(handle.restore().await.is_err());
    })
    .await;
}

//! The `FlakyServer` itself: greeting, echo, lifetime, stop and restart on the same port, counters, drop.

use std::time::Duration;

use connman_tests::flaky::{FlakyServer, GREETING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

const BOUND: Duration = Duration::from_secs(5);

async fn greeted(server: &FlakyServer) -> TcpStream {
    let mut socket = TcpStream::connect(server.addr()).await.unwrap();
    let mut greeting = vec![0; GREETING.len()];
    socket.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, GREETING);
    socket
}

#[tokio::test]
async fn lifetime_ends_each_connection() {
    let server = FlakyServer::builder()
        .lifetime(Some(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let mut socket = greeted(&server).await;
        let mut buf = [0; 16];
        // The server ends the connection: end of stream.
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0);
        while server.live() != 0 {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn echoes_and_counts() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let mut a = greeted(&server).await;
        let mut b = greeted(&server).await;
        a.write_all(b"abc").await.unwrap();
        b.write_all(b"defgh").await.unwrap();
        let mut buf = [0; 5];
        a.read_exact(&mut buf[..3]).await.unwrap();
        assert_eq!(&buf[..3], b"abc");
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"defgh");
        assert_eq!(server.accepted(), 2);
        assert_eq!(server.bytes_echoed(), 8);
        assert_eq!(server.live(), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn stop_drops_live_connections_and_restart_reuses_the_port() {
    let server = FlakyServer::start().await.unwrap();
    timeout(BOUND, async {
        let mut socket = greeted(&server).await;
        let port = server.port();
        server.stop().await;
        assert!(!server.is_running().await);
        // The live connection is gone: end of stream or a reset.
        let mut buf = [0; 1];
        assert!(matches!(socket.read(&mut buf).await, Ok(0) | Err(_)));
        assert!(TcpStream::connect(server.addr()).await.is_err());
        server.stop().await;
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        let _again = greeted(&server).await;
        assert_eq!(server.accepted(), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn no_greeting_when_asked() {
    let server = FlakyServer::builder()
        .greeting(bytes::Bytes::new())
        .start()
        .await
        .unwrap();
    timeout(BOUND, async {
        let mut socket = TcpStream::connect(server.addr()).await.unwrap();
        socket.write_all(b"x").await.unwrap();
        let mut buf = [0; 1];
        socket.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn drop_stops_its_tasks() {
    let server = FlakyServer::start().await.unwrap();
    let addr = server.addr();
    timeout(BOUND, async {
        let mut socket = greeted(&server).await;
        drop(server);
        let mut buf = [0; 1];
        assert!(matches!(socket.read(&mut buf).await, Ok(0) | Err(_)));
        // The listener is gone too (connect is refused once the aborted task let go of it).
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bounded");
}

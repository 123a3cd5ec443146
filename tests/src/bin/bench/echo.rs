//! A loopback echo server that can stop and listen again on the same port.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// An echo server on `127.0.0.1`, on a port chosen by the system at the first start and kept across restarts.
#[derive(Debug)]
pub(crate) struct EchoServer {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `127.0.0.1:0` and serves.
    pub(crate) async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            task: Some(tokio::spawn(serve(listener))),
        })
    }

    /// Where it listens (or listened).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every accepted connection; returns when they are gone.
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The task ends as cancelled; what matters is that it has ended and dropped its sockets.
            let _ = task.await;
        }
    }

    /// Listens again on the same port and returns the instant the listener was bound.
    pub(crate) async fn restart(&mut self) -> io::Result<Instant> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        let listening = Instant::now();
        self.task = Some(tokio::spawn(serve(listener)));
        Ok(listening)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts and echoes until aborted; aborting drops the listener and, through the `JoinSet`, every connection.
async fn serve(listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(echo(stream));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

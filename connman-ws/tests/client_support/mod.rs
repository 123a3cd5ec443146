//! An in-memory network for `WsClient` tests: every connect makes a `tokio::io::duplex` pair whose server end is
//! served by a scripted WebSocket server task, so tests run in paused time without real sockets.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::BoxError;
use connman_tcp::HostPort;
use connman_ws::client::{Incoming, Message, WsClient, WsClientBuilder};
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame};
use tower::service_fn;

/// What a server connection saw from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Bytes),
    /// The client's close frame code.
    Close(Option<u16>),
}

/// What the test tells a server connection to do.
#[derive(Debug)]
pub enum Do {
    Send(tungstenite::Message),
    Close(u16, &'static str),
    /// Drop the socket without a close frame.
    Drop,
}

/// How server connections behave when they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read and report everything.
    Serve,
    /// Accept the handshake, then never read again (pings go unanswered, writes fill up).
    Stall,
    /// Never answer the handshake.
    Mute,
}

pub type Transport = tower::util::BoxCloneSyncService<HostPort, DuplexStream, BoxError>;

/// The network: counts connects, refuses them while down, hands accepted connections to the test.
pub struct Net {
    up: Arc<AtomicBool>,
    mode: Arc<Mutex<Mode>>,
    connects: Arc<Mutex<Vec<Instant>>>,
    accepted: mpsc::UnboundedReceiver<Conn>,
    buffer: Arc<AtomicUsize>,
    http_status: Arc<Mutex<Option<u16>>>,
}

/// One accepted server connection.
pub struct Conn {
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub cmd: mpsc::UnboundedSender<Do>,
}

impl Conn {
    /// The next thing the client sent.
    pub async fn next(&mut self) -> Option<Seen> {
        self.seen.recv().await
    }

    pub fn send(&self, msg: impl Into<tungstenite::Message>) {
        let _ = self.cmd.send(Do::Send(msg.into()));
    }

    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.cmd.send(Do::Close(code, reason));
    }

    pub fn drop_socket(&self) {
        let _ = self.cmd.send(Do::Drop);
    }
}

impl Net {
    pub fn new() -> (Self, Transport) {
        let up = Arc::new(AtomicBool::new(true));
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let connects = Arc::new(Mutex::new(Vec::new()));
        let buffer = Arc::new(AtomicUsize::new(64 * 1024));
        let http_status = Arc::new(Mutex::new(None));
        let (tx, accepted) = mpsc::unbounded_channel();
        let net = Self {
            up: up.clone(),
            mode: mode.clone(),
            connects: connects.clone(),
            accepted,
            buffer: buffer.clone(),
            http_status: http_status.clone(),
        };
        let transport = service_fn(move |_: HostPort| {
            connects.lock().unwrap().push(Instant::now());
            let result = if up.load(Ordering::SeqCst) {
                let (client, server) = tokio::io::duplex(buffer.load(Ordering::SeqCst));
                let mode = *mode.lock().unwrap();
                let status = *http_status.lock().unwrap();
                let tx = tx.clone();
                tokio::spawn(serve(server, mode, status, tx));
                Ok(client)
            } else {
                Err(BoxError::from(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )))
            };
            async move { result }
        });
        (net, tower::util::BoxCloneSyncService::new(transport))
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_buffer(&self, bytes: usize) {
        self.buffer.store(bytes, Ordering::SeqCst);
    }

    /// Answer handshakes with this HTTP status instead of 101.
    pub fn refuse_with(&self, status: u16) {
        *self.http_status.lock().unwrap() = Some(status);
    }

    pub fn connects(&self) -> Vec<Instant> {
        self.connects.lock().unwrap().clone()
    }

    /// The next connection that completed its handshake.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(Duration::from_secs(3600), self.accepted.recv())
            .await
            .expect("a connection within the hour")
            .expect("network alive")
    }

    /// A client on this network with quick, test-friendly settings: no heartbeat unless asked.
    pub fn client(transport: Transport) -> WsClientBuilder<Transport> {
        WsClient::builder("ws://server.test/app")
            .transport(transport)
            .ping(None)
    }
}

#[allow(clippy::result_large_err)] // the handshake callback type is tungstenite's
async fn serve(io: DuplexStream, mode: Mode, status: Option<u16>, tx: mpsc::UnboundedSender<Conn>) {
    if mode == Mode::Mute {
        // Hold the socket open without a word.
        let _io = io;
        std::future::pending::<()>().await;
        return;
    }
    let callback = move |_req: &tungstenite::handshake::server::Request,
                         resp: tungstenite::handshake::server::Response| {
        match status {
            Some(code) => {
                let mut refused = tungstenite::handshake::server::ErrorResponse::new(None);
                *refused.status_mut() = tungstenite::http::StatusCode::from_u16(code).unwrap();
                Err(refused)
            }
            None => Ok(resp),
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(io, callback).await else {
        return;
    };
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (cmd, cmd_rx) = mpsc::unbounded_channel();
    if tx.send(Conn { seen, cmd }).is_err() {
        return;
    }
    if mode == Mode::Stall {
        let mut cmd_rx = cmd_rx;
        let _ws = ws;
        // Keep the socket until told to drop it.
        while let Some(cmd) = cmd_rx.recv().await {
            if matches!(cmd, Do::Drop) {
                return;
            }
        }
        return;
    }
    run(ws, seen_tx, cmd_rx).await;
}

async fn run(
    mut ws: WebSocketStream<DuplexStream>,
    seen: mpsc::UnboundedSender<Seen>,
    mut cmd: mpsc::UnboundedReceiver<Do>,
) {
    loop {
        tokio::select! {
            c = cmd.recv() => match c {
                Some(Do::Send(msg)) => { let _ = ws.send(msg).await; }
                Some(Do::Close(code, reason)) => {
                    let _ = ws.close(Some(CloseFrame { code: code.into(), reason: reason.into() })).await;
                }
                Some(Do::Drop) | None => return,
            },
            msg = ws.next() => match msg {
                Some(Ok(tungstenite::Message::Text(t))) => { let _ = seen.send(Seen::Text(t.as_str().to_owned())); }
                Some(Ok(tungstenite::Message::Binary(b))) => { let _ = seen.send(Seen::Binary(b)); }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let _ = seen.send(Seen::Close(frame.map(|f| f.code.into())));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// Takes the next received message within an hour of paused time.
pub async fn recv(incoming: &mut Incoming) -> Message {
    tokio::time::timeout(Duration::from_secs(3600), incoming.recv())
        .await
        .expect("a message within the hour")
        .expect("client alive")
}

//! Test support (feature `test-util`): a [`Handler`] that records every call, and the test's side of
//! it. Used by connman-tcp's own tests and by the cross-crate tests; not part of the API a connection needs.
//!
//! ```
//! use connman_tcp::testing::{Call, recorder};
//! use connman_tcp::{Connection, HostPort};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (rec, mut probe) = recorder(None);
//! let conn = Connection::connect(HostPort::new("127.0.0.1", 9), rec).expect("inside a runtime");
//! conn.disconnect();
//! probe.until(|c| matches!(c, Call::Close)).await;
//! assert_eq!(probe.count(|c| matches!(c, Call::Connect)), 0);
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::Event;
use tokio::sync::mpsc;

use crate::{Handler, Writer};

/// One call a [`Recorder`] saw.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Call {
    /// `on_connect`.
    Connect,
    /// `on_reconnect`.
    Reconnect,
    /// `on_reset`.
    Reset,
    /// `on_data`, with the chunk.
    Data(Bytes),
    /// `on_event`, with the event.
    Event(Event),
    /// `on_close`.
    Close,
}

/// A handler that records every call and forwards it to its [`Probe`]; optionally it pings through the writer on a
/// schedule once connected (as upnode's `tcho.js` does).
#[derive(Debug)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Call>>>,
    tx: mpsc::Sender<Call>,
    writer: Arc<Mutex<Option<Writer>>>,
    ping_every: Option<Duration>,
}

/// The test's side of a [`Recorder`].
#[derive(Debug)]
pub struct Probe {
    log: Arc<Mutex<Vec<Call>>>,
    rx: mpsc::Receiver<Call>,
    writer: Arc<Mutex<Option<Writer>>>,
}

/// A recorder and its probe; with `ping_every`, the recorder writes `ping` that often once connected.
pub fn recorder(ping_every: Option<Duration>) -> (Recorder, Probe) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel(4096);
    (
        Recorder {
            log: log.clone(),
            tx,
            writer: writer.clone(),
            ping_every,
        },
        Probe { log, rx, writer },
    )
}

impl Recorder {
    fn record(&mut self, call: Call) {
        lock(&self.log).push(call.clone());
        // A probe that stopped listening is fine: the log keeps everything.
        let _ = self.tx.try_send(call);
    }
}

impl Handler for Recorder {
    fn on_connect(&mut self, writer: Writer) {
        *lock(&self.writer) = Some(writer.clone());
        if let Some(every) = self.ping_every {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match writer.write_all(b"ping").await {
                        Err(e) if e.is_closed() => break,
                        // While down (or when a write meets a closing peer) the pinger waits for the next link.
                        _ => {}
                    }
                }
            });
        }
        self.record(Call::Connect);
    }

    fn on_reconnect(&mut self) {
        self.record(Call::Reconnect);
    }

    fn on_reset(&mut self) {
        self.record(Call::Reset);
    }

    fn on_data(&mut self, data: Bytes) {
        self.record(Call::Data(data));
    }

    fn on_event(&mut self, event: &Event) {
        self.record(Call::Event(event.clone()));
    }

    fn on_close(&mut self) {
        self.record(Call::Close);
    }
}

impl Probe {
    /// Waits for the next call that matches `pred`.
    ///
    /// # Panics
    ///
    /// When the connection's task is gone before such a call (a test failure).
    pub async fn until(&mut self, pred: impl Fn(&Call) -> bool) -> Call {
        loop {
            let call = self.rx.recv().await.expect("the connection task is alive");
            if pred(&call) {
                return call;
            }
        }
    }

    /// Collects data until `want` bytes arrived.
    pub async fn data(&mut self, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            if let Call::Data(chunk) = self.until(|c| matches!(c, Call::Data(_))).await {
                got.extend_from_slice(&chunk);
            }
        }
        got
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.log).clone()
    }

    /// How many calls so far match `pred`.
    pub fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        lock(&self.log).iter().filter(|c| pred(c)).count()
    }

    /// The writer `on_connect` received.
    ///
    /// # Panics
    ///
    /// Before `on_connect` ran (a test failure).
    pub fn writer(&self) -> Writer {
        lock(&self.writer).clone().expect("on_connect ran")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding it leaves the log readable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

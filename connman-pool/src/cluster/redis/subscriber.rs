//! The subscriber link: one supervised connection (connman-tcp's `Connection`) in subscribe mode, whose on-up step
//! subscribes again to every channel wanted, and which turns pub/sub frames into [`Incoming`] items.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use connman_core::backoff::Exponential;
use connman_core::error::NoRuntime;
use connman_tcp::{Connection, Handler, Writer};
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::super::broker::{Envelope, Epoch, Inbox, Incoming, NodeId, Position};
use super::super::lock;
use super::codec::RespCodec;
use super::{Keys, command};

/// What the handler, the writer task and the broker share.
pub(crate) struct Wanted {
    pub(crate) keys: Keys,
    pub(crate) inbox: OnceLock<Inbox>,
    /// The node's own channel, once it is open.
    pub(crate) node: OnceLock<String>,
    state: Mutex<SubState>,
    wake: Notify,
}

#[derive(Default)]
struct SubState {
    /// Namespaces wanted.
    namespaces: BTreeSet<String>,
    /// Channels subscribed on the current connection.
    sent: BTreeSet<String>,
    /// Bumped on every new connection.
    generation: u64,
    writer: Option<Writer>,
    last_data: Option<Instant>,
}

impl Wanted {
    pub(crate) fn new(keys: Keys) -> Arc<Self> {
        Arc::new(Self {
            keys,
            inbox: OnceLock::new(),
            node: OnceLock::new(),
            state: Mutex::new(SubState::default()),
            wake: Notify::new(),
        })
    }

    pub(crate) fn open(&self, node: &NodeId, inbox: Inbox) {
        let _ = self.inbox.set(inbox);
        let _ = self.node.set(self.keys.node_channel(node));
        self.wake.notify_one();
    }

    pub(crate) fn subscribe(&self, namespace: &str) {
        if lock(&self.state).namespaces.insert(namespace.to_owned()) {
            self.wake.notify_one();
        }
    }

    pub(crate) fn unsubscribe(&self, namespace: &str) {
        if lock(&self.state).namespaces.remove(namespace) {
            self.wake.notify_one();
        }
    }

    fn push(&self, item: Incoming) {
        if let Some(inbox) = self.inbox.get() {
            inbox.push(item);
        }
    }

    /// A new connection is up: nothing is subscribed on it yet.
    fn fresh(&self, writer: Option<Writer>) {
        let mut state = lock(&self.state);
        state.generation += 1;
        state.sent.clear();
        state.last_data = Some(Instant::now());
        if let Some(writer) = writer {
            state.writer = Some(writer);
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// Starts the subscriber link and its writer task.
pub(crate) fn start(
    addr: SocketAddr,
    wanted: Arc<Wanted>,
    backoff: Exponential,
    ping: Duration,
    max_frame: usize,
    stop: CancellationToken,
) -> Result<Connection, NoRuntime> {
    let handler = SubHandler {
        wanted: wanted.clone(),
        codec: RespCodec::new(max_frame),
        buf: BytesMut::new(),
    };
    let conn = Connection::builder(addr, handler)
        .backoff(backoff)
        .connect()?;
    tokio::spawn(write_subscriptions(wanted, ping, stop));
    Ok(conn)
}

struct SubHandler {
    wanted: Arc<Wanted>,
    codec: RespCodec,
    buf: BytesMut,
}

impl Handler for SubHandler {
    fn on_connect(&mut self, writer: Writer) {
        self.buf.clear();
        self.wanted.fresh(Some(writer));
        self.wanted.push(Incoming::Link(true));
    }

    fn on_reconnect(&mut self) {
        self.buf.clear();
        self.wanted.fresh(None);
        self.wanted.push(Incoming::Link(true));
    }

    fn on_reset(&mut self) {
        self.buf.clear();
        self.wanted.push(Incoming::Link(false));
    }

    fn on_data(&mut self, data: Bytes) {
        lock(&self.wanted.state).last_data = Some(Instant::now());
        self.buf.extend_from_slice(&data);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => self.frame(frame),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "redis sent a frame that cannot be read; dropping the link");
                    self.buf.clear();
                    let writer = lock(&self.wanted.state).writer.clone();
                    if let Some(writer) = writer {
                        tokio::spawn(async move { writer.shutdown().await });
                    }
                    return;
                }
            }
        }
    }
}

impl SubHandler {
    fn frame(&self, frame: BytesFrame) {
        let BytesFrame::Array(parts) = frame else {
            return;
        };
        let [
            BytesFrame::BulkString(kind),
            BytesFrame::BulkString(channel),
            third,
        ] = &parts[..]
        else {
            return;
        };
        let keys = &self.wanted.keys;
        match (&kind[..], third) {
            (b"message", BytesFrame::BulkString(payload)) => {
                if self
                    .wanted
                    .node
                    .get()
                    .is_some_and(|c| c.as_bytes() == &channel[..])
                {
                    self.wanted.push(Incoming::Direct(payload.clone()));
                } else if let Some(namespace) = keys.namespace_of(channel) {
                    match parse_envelope(namespace, payload) {
                        Some(envelope) => self.wanted.push(Incoming::Message(envelope)),
                        None => tracing::debug!("dropped a namespace message that cannot be read"),
                    }
                }
            }
            (b"subscribe", _) => {
                if let Some(namespace) = keys.namespace_of(channel) {
                    self.wanted.push(Incoming::Subscribed(namespace));
                }
            }
            _ => {}
        }
    }
}

/// `epoch:offset:node:payload`, as the publish script writes it.
pub(super) fn parse_envelope(namespace: String, message: &Bytes) -> Option<Envelope> {
    let mut fields = message.splitn(4, |b| *b == b':');
    let epoch = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let origin = NodeId::parse(std::str::from_utf8(fields.next()?).ok()?)?;
    let payload_len = fields.next()?.len();
    let payload = message.slice(message.len() - payload_len..);
    Some(Envelope {
        namespace,
        position: Position {
            epoch: Epoch(epoch),
            offset,
        },
        origin,
        payload,
    })
}

/// Keeps the subscriptions of the current connection in line with what is wanted, and pings it: a link that stays
/// silent past two ping intervals is half-closed, so that the connection takes it for lost and reconnects.
async fn write_subscriptions(wanted: Arc<Wanted>, ping: Duration, stop: CancellationToken) {
    let mut codec = RespCodec::new(usize::MAX);
    let mut next_ping = Instant::now() + ping;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = wanted.wake.notified() => {}
            () = sleep_until(next_ping) => {
                next_ping = Instant::now() + ping;
                let (writer, last) = {
                    let state = lock(&wanted.state);
                    (state.writer.clone(), state.last_data)
                };
                let Some(writer) = writer.filter(Writer::is_connected) else {
                    continue;
                };
                if last.is_some_and(|at| at.elapsed() > ping * 2) {
                    tracing::debug!("redis subscriber link silent; dropping it");
                    let _ = writer.shutdown().await;
                    continue;
                }
                let mut buf = BytesMut::new();
                let _ = codec.encode(command(&[b"PING"]), &mut buf);
                let _ = writer.write_all(&buf).await;
                continue;
            }
        }
        let (writer, generation, add, remove) = {
            let state = lock(&wanted.state);
            let mut want: BTreeSet<String> = state
                .namespaces
                .iter()
                .map(|ns| wanted.keys.channel(ns))
                .collect();
            if let Some(node) = wanted.node.get() {
                want.insert(node.clone());
            }
            let add: Vec<String> = want.difference(&state.sent).cloned().collect();
            let remove: Vec<String> = state.sent.difference(&want).cloned().collect();
            (state.writer.clone(), state.generation, add, remove)
        };
        let Some(writer) = writer.filter(Writer::is_connected) else {
            continue;
        };
        if add.is_empty() && remove.is_empty() {
            continue;
        }
        let mut buf = BytesMut::new();
        for (verb, channels) in [(&b"SUBSCRIBE"[..], &add), (&b"UNSUBSCRIBE"[..], &remove)] {
            if channels.is_empty() {
                continue;
            }
            let mut parts: Vec<&[u8]> = vec![verb];
            parts.extend(channels.iter().map(String::as_bytes));
            let _ = codec.encode(command(&parts), &mut buf);
        }
        if writer.write_all(&buf).await.is_ok() {
            let mut state = lock(&wanted.state);
            if state.generation == generation {
                state.sent.extend(add);
                for channel in &remove {
                    state.sent.remove(channel);
                }
            }
        }
        // Something may have changed while writing.
        wanted.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_keep_colons_in_the_payload() {
        let node = NodeId::random();
        let raw = Bytes::from(format!("42:7:{node}:a:b:c"));
        let env = parse_envelope("ns".into(), &raw).expect("readable");
        assert_eq!(
            env.position,
            Position {
                epoch: Epoch(42),
                offset: 7
            }
        );
        assert_eq!(env.origin, node);
        assert_eq!(&env.payload[..], b"a:b:c");
        assert!(parse_envelope("ns".into(), &Bytes::from_static(b"x:7:n:p")).is_none());
        assert!(parse_envelope("ns".into(), &Bytes::from_static(b"1:2")).is_none());
    }
}

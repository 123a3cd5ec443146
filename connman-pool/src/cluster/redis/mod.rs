//! [`RedisBroker`]: the broker through one redis-server, over connman's own stack.

mod codec;
mod subscriber;

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use connman_core::backoff::Exponential;
use connman_core::error::{BoxError, Closed, InvalidConfig, NoRuntime, Overloaded};
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
use connman_queue::queue::{CallOptions, Queue, QueueConfig, QueueLayer};
use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
use connman_tcp::{Connection, Pipeline, PipelineConnector, TcpConnector};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};

use self::codec::RespCodec;
use self::subscriber::Wanted;
use super::broker::{Broker, BrokerFuture, Entry, Epoch, History, Inbox, NodeId, Position};

/// Settings of a [`RedisBroker`]. Build from [`RedisConfig::default`] with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    prefix: String,
    history: usize,
    queue_capacity: usize,
    max_wait: Duration,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_backoff: Duration,
    max_frame: usize,
}

impl RedisConfig {
    /// The prefix of every key and channel (default `connman`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// About how many entries each namespace's history keeps (`MAXLEN ~`, default 10 000).
    pub fn with_history(mut self, entries: usize) -> Self {
        self.history = entries;
        self
    }

    /// How many calls may wait for redis at once (default 1024); more fail at once with [`Overloaded`].
    pub fn with_queue_capacity(mut self, calls: usize) -> Self {
        self.queue_capacity = calls;
        self
    }

    /// How long a call may wait for redis to come back (default 30 s); then it fails with
    /// [`Elapsed`](connman_core::error::Elapsed) and is never sent.
    pub fn with_max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// How often both links are pinged, and how long a ping may take (defaults 2 s and 1 s; the timeout must be
    /// shorter than the interval).
    pub fn with_ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout;
        self
    }

    /// The longest wait between reconnect attempts (default 1 s; the first is 20 ms).
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// The most bytes one reply from redis may take (default 64 MiB).
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "connman".to_owned(),
            history: 10_000,
            queue_capacity: 1024,
            max_wait: Duration::from_secs(30),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            max_frame: 64 * 1024 * 1024,
        }
    }
}

/// Redis answered with an error, or with something the broker did not expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError {
    message: String,
}

impl RedisError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What redis said (or what was wrong with its answer).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis: {}", self.message)
    }
}

impl Error for RedisError {}

/// The names of keys and channels under a prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn ns_key(&self, namespace: &str, what: &str) -> Bytes {
        Bytes::from(format!("{}:ns:{namespace}:{what}", self.prefix))
    }

    pub(crate) fn channel(&self, namespace: &str) -> String {
        format!("{}:ns:{namespace}", self.prefix)
    }

    pub(crate) fn node_channel(&self, node: &NodeId) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn nodes(&self) -> Bytes {
        Bytes::from(format!("{}:nodes", self.prefix))
    }

    /// The namespace whose channel this is.
    pub(crate) fn namespace_of(&self, channel: &[u8]) -> Option<String> {
        let rest = channel
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":ns:")?;
        String::from_utf8(rest.to_vec()).ok()
    }
}

/// A command: an array of bulk strings.
pub(crate) fn command(parts: &[&[u8]]) -> BytesFrame {
    BytesFrame::Array(
        parts
            .iter()
            .map(|p| BytesFrame::BulkString(Bytes::copy_from_slice(p)))
            .collect(),
    )
}

fn command_bytes(parts: Vec<Bytes>) -> BytesFrame {
    BytesFrame::Array(parts.into_iter().map(BytesFrame::BulkString).collect())
}

/// One Lua script and its SHA-1, as `SCRIPT LOAD` answers it.
struct Script {
    source: &'static str,
}

/// Appends to a namespace: a new epoch if its history is gone, skip a replay of a publish already appended, then
/// `INCR` the offset, `XADD … MAXLEN ~`, `PUBLISH`. Answers `{epoch, offset}`.
const PUBLISH: Script = Script {
    source: r"
local epoch = redis.call('GET', KEYS[3])
if (not epoch) or (redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1) then
  epoch = ARGV[5]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
end
local seen = redis.call('HMGET', KEYS[4], ARGV[2], ARGV[2] .. ':o')
if seen[1] and tonumber(seen[1]) >= tonumber(ARGV[6]) then
  return {epoch, tonumber(seen[2])}
end
local offset = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], offset .. '-0', 'n', ARGV[2], 'p', ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[6], ARGV[2] .. ':o', offset)
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return {epoch, offset}
",
};

/// Reads a namespace's epoch, last offset and up to `ARGV[2]` entries from offset `ARGV[1]`, at one instant.
const HISTORY: Script = Script {
    source: r"
local epoch = redis.call('GET', KEYS[3])
if epoch and redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = false
end
local top = redis.call('GET', KEYS[1]) or '0'
local entries = {}
if epoch and tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch or '', top, entries}
",
};

/// Registers `ARGV[1]` until `ARGV[2]` ms from now on redis's clock (0: takes it out), drops the nodes whose time ran
/// out, and answers the live ones.
const HEARTBEAT: Script = Script {
    source: r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
",
};

impl Script {
    fn sha(&self) -> Bytes {
        use sha1::{Digest, Sha1};
        Bytes::from(format!("{:x}", Sha1::digest(self.source.as_bytes())))
    }

    fn load(&self) -> BytesFrame {
        command(&[b"SCRIPT", b"LOAD", self.source.as_bytes()])
    }
}

const SCRIPTS: [&Script; 3] = [&PUBLISH, &HISTORY, &HEARTBEAT];

/// A call waiting for the command link.
struct Call {
    frame: BytesFrame,
    options: CallOptions,
    reply: oneshot::Sender<Result<BytesFrame, BoxError>>,
}

/// One node's links to a redis-server, over connman's own stack.
///
/// Two links per node:
///
/// * commands (publish, history, heartbeats, messages to one node) go through connman-queue's `Queue` → `Reconnect`
///   → `Heartbeat` (PING) over connman-tcp's pipelined client with a RESP2 codec; the `Reconnect` on-up hook loads
///   the Lua scripts on each new connection, so calls use `EVALSHA`. While redis is down, calls wait in the queue
///   (bounded, with a max wait) and go out in order after the reconnect;
/// * pub/sub goes through a supervised connman-tcp `Connection` whose on-up step subscribes again to every channel
///   wanted; each confirmation tells the node to read what it missed from the history.
///
/// Per namespace `ns` (under the prefix, `connman` by default): `{prefix}:ns:{ns}:offset` (the last offset),
/// `:stream` (the history, `XADD … MAXLEN ~ N` with ids `offset-0`), `:epoch` (renewed when the history is gone) and
/// `:seen` (the last publish of each node, so that a publish replayed after a lost link is not appended twice); the
/// channel `{prefix}:ns:{ns}` carries `epoch:offset:node:payload`. Nodes live in the sorted set `{prefix}:nodes`
/// (score: when their heartbeat runs out, on redis's clock) and hear messages for them on `{prefix}:node:{id}`.
///
/// ```no_run
/// use connman_pool::cluster::{Cluster, ClusterConfig, RedisBroker, RedisConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let broker = RedisBroker::connect("127.0.0.1:6379".parse()?, RedisConfig::default())?;
/// let node = Cluster::start(broker, ClusterConfig::default())?;
/// node.broadcast("chat", "hello").await?;
/// # Ok(()) }
/// ```
pub struct RedisBroker {
    keys: Keys,
    config: RedisConfig,
    calls: mpsc::Sender<Call>,
    wanted: Arc<Wanted>,
    subscriber: Connection,
    shas: [Bytes; 3],
    seq: AtomicU64,
    stop: CancellationToken,
}

impl RedisBroker {
    /// Starts both links to the redis-server at `addr` on the current tokio runtime; they connect (and reconnect)
    /// in the background.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when the settings cannot work, [`NoRuntime`] outside a tokio runtime.
    pub fn connect(addr: SocketAddr, config: RedisConfig) -> Result<Self, BoxError> {
        if config.history == 0 {
            return Err(InvalidConfig::new("the history must keep at least 1 entry").into());
        }
        if config.prefix.is_empty() {
            return Err(InvalidConfig::new("the key prefix must not be empty").into());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NoRuntime::new().into());
        }
        let backoff = Exponential::builder()
            .initial(Duration::from_millis(20))
            .max(config.max_backoff.max(Duration::from_millis(20)))
            .build()?;
        let heartbeat = HeartbeatConfig::builder()
            .interval(config.ping_interval)
            .timeout(config.ping_timeout)
            .build()?;
        let queue = QueueLayer::new(
            QueueConfig::builder()
                .capacity(config.queue_capacity)
                .max_wait(config.max_wait)
                .build()?,
        );
        let connector: PipelineConnector<_, _, BytesFrame> =
            PipelineConnector::new(TcpConnector::new(), RespCodec::new(config.max_frame));
        let reconnect = ReconnectLayer::new(
            ReconnectConfig::builder(addr)
                .backoff(backoff.clone())
                .on_up(load_scripts)
                .build()?,
        );
        let link = ServiceBuilder::new()
            .layer(queue)
            .layer(reconnect)
            .layer(HeartbeatLayer::new(heartbeat, ping as fn() -> BytesFrame))
            .service(connector);
        let (calls, rx) = mpsc::channel(config.queue_capacity);
        let stop = CancellationToken::new();
        tokio::spawn(run_calls(link, rx, stop.clone()));
        let keys = Keys {
            prefix: config.prefix.clone(),
        };
        let wanted = Wanted::new(keys.clone());
        let subscriber = subscriber::start(
            addr,
            wanted.clone(),
            backoff,
            config.ping_interval,
            config.max_frame,
            stop.clone(),
        )?;
        Ok(Self {
            keys,
            config,
            calls,
            wanted,
            subscriber,
            shas: SCRIPTS.map(Script::sha),
            seq: AtomicU64::new(0),
            stop,
        })
    }

    /// Hands a call to the command link now (so calls keep their order), and waits for its answer.
    fn call(&self, frame: BytesFrame, options: CallOptions) -> BrokerFuture<BytesFrame> {
        let (reply, rx) = oneshot::channel();
        let sent = self.calls.try_send(Call {
            frame,
            options,
            reply,
        });
        Box::pin(async move {
            match sent {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Overloaded::new().into()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed::new().into()),
            }
            match rx.await {
                Ok(Ok(BytesFrame::Error(message))) => Err(RedisError::new(&*message).into()),
                Ok(outcome) => outcome,
                Err(_) => Err(Closed::new().into()),
            }
        })
    }

    fn eval(
        &self,
        script: usize,
        keys: Vec<Bytes>,
        args: Vec<Bytes>,
        options: CallOptions,
    ) -> BrokerFuture<BytesFrame> {
        let mut parts = Vec::with_capacity(3 + keys.len() + args.len());
        parts.push(Bytes::from_static(b"EVALSHA"));
        parts.push(self.shas[script].clone());
        parts.push(Bytes::from(keys.len().to_string()));
        parts.extend(keys);
        parts.extend(args);
        self.call(command_bytes(parts), options)
    }

    fn ns_keys(&self, namespace: &str) -> Vec<Bytes> {
        ["offset", "stream", "epoch", "seen"]
            .iter()
            .map(|what| self.keys.ns_key(namespace, what))
            .collect()
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.config)
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
        self.subscriber.disconnect();
    }
}

/// One connection of the command link, as the on-up hook gets it.
type CommandConn = connman_queue::heartbeat::Heartbeat<Pipeline<BytesFrame, BytesFrame>>;

fn ping() -> BytesFrame {
    command(&[b"PING"])
}

/// The on-up hook of the command link: loads the scripts on each new connection, so `EVALSHA` finds them even on a
/// redis-server that restarted.
fn load_scripts(conn: CommandConn) -> BrokerFuture<CommandConn> {
    Box::pin(async move {
        let mut conn = conn;
        for script in SCRIPTS {
            if let BytesFrame::Error(message) = conn.ready().await?.call(script.load()).await? {
                return Err(RedisError::new(&*message).into());
            }
        }
        Ok(conn)
    })
}

/// Feeds calls to the command link in the order they came, and answers each when its response is in.
async fn run_calls<S>(
    mut link: Queue<S, BytesFrame>,
    mut calls: mpsc::Receiver<Call>,
    stop: CancellationToken,
) where
    S: Service<BytesFrame, Response = BytesFrame> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let mut answers = FuturesUnordered::new();
    loop {
        let call = tokio::select! {
            () = stop.cancelled() => break,
            Some(()) = answers.next(), if !answers.is_empty() => continue,
            call = calls.recv() => match call {
                Some(call) => call,
                None => break,
            },
        };
        // Wait for room in the queue while answers keep coming in.
        let ready = loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = call.reply.send(Err(Closed::new().into()));
                    link.close();
                    return;
                }
                ready = std::future::poll_fn(|cx| link.poll_ready(cx)) => break ready,
                Some(()) = answers.next(), if !answers.is_empty() => {}
            }
        };
        if let Err(e) = ready {
            let _ = call.reply.send(Err(e));
            continue;
        }
        let response = link.call_with(call.frame, call.options);
        let reply = call.reply;
        answers.push(async move {
            let _ = reply.send(response.await);
        });
    }
    link.close();
    // Calls still waiting hear that the link is closed.
    while answers.next().await.is_some() {}
}

fn as_text(frame: &BytesFrame) -> Option<&str> {
    match frame {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn as_u64(frame: &BytesFrame) -> Option<u64> {
    match frame {
        BytesFrame::Integer(n) => u64::try_from(*n).ok(),
        other => as_text(other)?.parse().ok(),
    }
}

fn unexpected(what: &str) -> BoxError {
    RedisError::new(format!("unexpected answer to {what}")).into()
}

fn parse_position(frame: BytesFrame) -> Result<Position, BoxError> {
    match &frame {
        BytesFrame::Array(parts) if parts.len() == 2 => {
            let epoch = as_u64(&parts[0]).ok_or_else(|| unexpected("publish"))?;
            let offset = as_u64(&parts[1]).ok_or_else(|| unexpected("publish"))?;
            Ok(Position {
                epoch: Epoch(epoch),
                offset,
            })
        }
        _ => Err(unexpected("publish")),
    }
}

fn parse_history(frame: BytesFrame) -> Result<History, BoxError> {
    let BytesFrame::Array(parts) = frame else {
        return Err(unexpected("history"));
    };
    let [epoch, top, BytesFrame::Array(entries)] = &parts[..] else {
        return Err(unexpected("history"));
    };
    let epoch = match as_text(epoch) {
        Some("") => None,
        Some(text) => Some(Epoch(text.parse().map_err(|_| unexpected("history"))?)),
        None => None,
    };
    let top = as_u64(top).ok_or_else(|| unexpected("history"))?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // [id, [field, value, …]]
        let BytesFrame::Array(pair) = entry else {
            return Err(unexpected("history entry"));
        };
        let [id, BytesFrame::Array(fields)] = &pair[..] else {
            return Err(unexpected("history entry"));
        };
        let offset = as_text(id)
            .and_then(|id| id.split_once('-'))
            .and_then(|(ms, _)| ms.parse().ok())
            .ok_or_else(|| unexpected("history entry id"))?;
        let mut origin = None;
        let mut payload = None;
        for kv in fields.chunks(2) {
            if let [BytesFrame::BulkString(k), BytesFrame::BulkString(v)] = kv {
                match &k[..] {
                    b"n" => origin = std::str::from_utf8(v).ok().and_then(NodeId::parse),
                    b"p" => payload = Some(v.clone()),
                    _ => {}
                }
            }
        }
        let (Some(origin), Some(payload)) = (origin, payload) else {
            return Err(unexpected("history entry fields"));
        };
        out.push(Entry {
            offset,
            origin,
            payload,
        });
    }
    Ok(History {
        epoch,
        top,
        entries: out,
    })
}

fn parse_nodes(frame: BytesFrame) -> Result<Vec<NodeId>, BoxError> {
    let BytesFrame::Array(parts) = frame else {
        return Err(unexpected("heartbeat"));
    };
    Ok(parts
        .iter()
        .filter_map(|p| as_text(p).and_then(NodeId::parse))
        .collect())
}

fn then<T: Send + 'static>(
    call: BrokerFuture<BytesFrame>,
    parse: fn(BytesFrame) -> Result<T, BoxError>,
) -> BrokerFuture<T> {
    Box::pin(async move { parse(call.await?) })
}

impl Broker for RedisBroker {
    fn open(&self, node: &NodeId, inbox: Inbox) {
        self.wanted.open(node, inbox);
    }

    fn subscribe(&self, namespace: &str) {
        self.wanted.subscribe(namespace);
    }

    fn unsubscribe(&self, namespace: &str) {
        self.wanted.unsubscribe(namespace);
    }

    fn publish(&self, origin: &NodeId, namespace: &str, payload: Bytes) -> BrokerFuture<Position> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let args = vec![
            Bytes::from(self.keys.channel(namespace)),
            Bytes::from(origin.as_str().to_owned()),
            payload,
            Bytes::from(self.config.history.to_string()),
            Bytes::from(Epoch::random().0.to_string()),
            Bytes::from(seq.to_string()),
        ];
        // Safe to replay: the script skips a publish of this node it has appended already.
        let call = self.eval(
            0,
            self.ns_keys(namespace),
            args,
            CallOptions::new().idempotent(),
        );
        then(call, parse_position)
    }

    fn history(&self, namespace: &str, from: u64, limit: usize) -> BrokerFuture<History> {
        let keys = self.ns_keys(namespace)[..3].to_vec();
        let args = vec![
            Bytes::from(from.to_string()),
            Bytes::from(limit.to_string()),
        ];
        then(
            self.eval(1, keys, args, CallOptions::new().idempotent()),
            parse_history,
        )
    }

    fn heartbeat(&self, node: &NodeId, ttl: Duration) -> BrokerFuture<Vec<NodeId>> {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let args = vec![
            Bytes::from(node.as_str().to_owned()),
            Bytes::from(ttl.to_string()),
        ];
        then(
            self.eval(
                2,
                vec![self.keys.nodes()],
                args,
                CallOptions::new().idempotent(),
            ),
            parse_nodes,
        )
    }

    fn leave(&self, node: &NodeId) -> BrokerFuture<()> {
        let args = vec![
            Bytes::from(node.as_str().to_owned()),
            Bytes::from_static(b"0"),
        ];
        let call = self.eval(
            2,
            vec![self.keys.nodes()],
            args,
            CallOptions::new().idempotent(),
        );
        Box::pin(async move { call.await.map(|_| ()) })
    }

    fn send(&self, to: &NodeId, payload: Bytes) -> BrokerFuture<()> {
        let frame = command_bytes(vec![
            Bytes::from_static(b"PUBLISH"),
            Bytes::from(self.keys.node_channel(to)),
            payload,
        ]);
        let call = self.call(frame, CallOptions::new());
        Box::pin(async move { call.await.map(|_| ()) })
    }

    fn close(&self) {
        self.stop.cancel();
        self.subscriber.disconnect();
    }
}

/// Reads `data` as a redis-server's bytes, through the parsers the links use: RESP2 frames through the bounded codec,
/// each bulk string of a frame as a published envelope, each frame as a number and as text. For the fuzz targets.
///
/// # Panics
///
/// When the codec holds more than its bound of undecoded bytes: the buffer of a link must stay bounded.
#[cfg(fuzzing)]
pub(crate) fn fuzz_redis_bytes(data: &[u8], max_frame: usize) {
    use tokio_util::codec::Decoder;

    let mut codec = codec::RespCodec::new(max_frame);
    let mut buf = bytes::BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                if let BytesFrame::Array(parts) = &frame {
                    for part in parts {
                        if let BytesFrame::BulkString(b) = part {
                            let _ = subscriber::parse_envelope("ns".to_owned(), b);
                        }
                    }
                }
                let _ = (as_u64(&frame), as_text(&frame));
            }
            Ok(None) => {
                assert!(
                    buf.len() <= max_frame.max(64),
                    "{} undecoded bytes held",
                    buf.len()
                );
                return;
            }
            Err(_) => return,
        }
    }
}

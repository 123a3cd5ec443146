//! [`Cluster`]: one node of a group that spans nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, InvalidConfig, NotFound};
use connman_core::member::{CloseCode, Member};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::broker::{
    Broker, BrokerFuture, Epoch, Inbox, InboxReceiver, Incoming, NodeId, Position,
};
use super::lock;
use super::wire::{Ask, Reply, Wire};
use crate::drain::DrainConfig;
use crate::group::{BroadcastSummary, Group, GroupConfig, Rejected};

/// Settings of a [`Cluster`] node. Build from [`ClusterConfig::default`] with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    group: GroupConfig,
    heartbeat_interval: Duration,
    node_timeout: Duration,
    query_timeout: Duration,
    history_batch: usize,
    max_pending: usize,
    inbox_capacity: usize,
    max_queries: usize,
}

impl ClusterConfig {
    /// Default time between heartbeats: 1 s.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
    /// Default time after its last heartbeat that a node leaves the registry: 5 s.
    pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default time a cross-node question waits for answers: 2 s.
    pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

    /// The settings of the local group.
    pub fn with_group(mut self, group: GroupConfig) -> Self {
        self.group = group;
        self
    }

    /// How often the node says it is alive.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long after its last heartbeat a node leaves the registry.
    pub fn with_node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long a cross-node question (and a history read) waits.
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// How many history entries one read fetches (default 512).
    pub fn with_history_batch(mut self, entries: usize) -> Self {
        self.history_batch = entries;
        self
    }

    /// How many messages per namespace wait for a gap before them to be filled (default 4096); more are dropped and
    /// read back from the history later.
    pub fn with_max_pending(mut self, messages: usize) -> Self {
        self.max_pending = messages;
        self
    }

    /// How many items the inbox from the broker holds (default 8192).
    pub fn with_inbox_capacity(mut self, items: usize) -> Self {
        self.inbox_capacity = items;
        self
    }

    /// How many cross-node questions may wait at once (default 1024); more come back at once as
    /// [`Answer::Partial`] with only this node's part.
    pub fn with_max_queries(mut self, queries: usize) -> Self {
        self.max_queries = queries;
        self
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        if self.heartbeat_interval.is_zero() || self.query_timeout.is_zero() {
            return Err(InvalidConfig::new(
                "heartbeat interval and query timeout must be longer than zero",
            ));
        }
        if self.node_timeout <= self.heartbeat_interval {
            return Err(InvalidConfig::new(
                "the node timeout must be longer than the heartbeat interval",
            ));
        }
        if self.history_batch == 0
            || self.max_pending == 0
            || self.inbox_capacity == 0
            || self.max_queries == 0
        {
            return Err(InvalidConfig::new(
                "history batch, max pending, inbox capacity and max queries must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for ClusterConfig {
    /// The group's defaults, heartbeats every 1 s, nodes gone after 5 s, questions answered within 2 s.
    fn default() -> Self {
        Self {
            group: GroupConfig::default(),
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            node_timeout: Self::DEFAULT_NODE_TIMEOUT,
            query_timeout: Self::DEFAULT_QUERY_TIMEOUT,
            history_batch: 512,
            max_pending: 4096,
            inbox_capacity: 8192,
            max_queries: 1024,
        }
    }
}

/// What a node tells the application about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// The node is subscribed to a namespace and knows where its history stands: broadcasts from now on reach its
    /// members.
    Subscribed {
        /// The namespace.
        namespace: String,
    },
    /// A namespace's history was lost (the broker restarted without it): messages after `delivered` in epoch `old`
    /// may never have reached this node's members. Delivery goes on in epoch `new` (`None` until something is
    /// published in it).
    EpochChanged {
        /// The namespace.
        namespace: String,
        /// The epoch that is gone.
        old: Epoch,
        /// The epoch that replaced it.
        new: Option<Epoch>,
        /// The last offset of `old` delivered here.
        delivered: u64,
    },
    /// Messages `first..=last` of a namespace were trimmed from its bounded history before this node read them.
    Missed {
        /// The namespace.
        namespace: String,
        /// The epoch.
        epoch: Epoch,
        /// The first offset missed.
        first: u64,
        /// The last offset missed.
        last: u64,
    },
    /// A node joined the registry.
    NodeJoined(NodeId),
    /// A node left the registry (it said so, or its heartbeats stopped).
    NodeLeft(NodeId),
    /// The broker link is down.
    BrokerDown,
    /// The broker link is back.
    BrokerUp,
}

/// The answer to a question asked of every node.
///
/// ```
/// use connman_pool::cluster::Answer;
///
/// let answer = Answer::Partial { value: 7, answered: 2, expected: 3 };
/// assert!(!answer.is_complete());
/// assert_eq!(*answer.value(), 7);
/// let partial = answer.into_result().unwrap_err();
/// assert_eq!((partial.answered(), partial.expected()), (2, 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an answer may be partial"]
pub enum Answer<T> {
    /// Every live node answered.
    Complete(T),
    /// Only `answered` of the `expected` live nodes answered in time; `value` is what they said.
    Partial {
        /// What the nodes that answered said.
        value: T,
        /// How many nodes answered (this one included).
        answered: usize,
        /// How many nodes were asked (this one included).
        expected: usize,
    },
}

impl<T> Answer<T> {
    /// Whether every node answered.
    pub fn is_complete(&self) -> bool {
        matches!(self, Answer::Complete(_))
    }

    /// The value, complete or not.
    pub fn value(&self) -> &T {
        match self {
            Answer::Complete(value) | Answer::Partial { value, .. } => value,
        }
    }

    /// The value, complete or not.
    pub fn into_value(self) -> T {
        match self {
            Answer::Complete(value) | Answer::Partial { value, .. } => value,
        }
    }

    /// The value if every node answered, a [`Partial`] error otherwise.
    pub fn into_result(self) -> Result<T, Partial> {
        match self {
            Answer::Complete(value) => Ok(value),
            Answer::Partial {
                answered, expected, ..
            } => Err(Partial { answered, expected }),
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Complete(value) => Answer::Complete(f(value)),
            Answer::Partial {
                value,
                answered,
                expected,
            } => Answer::Partial {
                value: f(value),
                answered,
                expected,
            },
        }
    }
}

/// Some nodes did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    answered: usize,
    expected: usize,
}

impl Partial {
    /// How many nodes answered (the asking one included).
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// How many nodes were asked (the asking one included).
    pub fn expected(&self) -> usize {
        self.expected
    }
}

impl fmt::Display for Partial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "only {} of {} nodes answered in time",
            self.answered, self.expected
        )
    }
}

impl Error for Partial {}

/// A broadcast whose local delivery is done; await it to learn whether the publish to other nodes went out.
///
/// Dropping it does not take the publish back.
pub struct Publish {
    local: BroadcastSummary,
    remote: BrokerFuture<Position>,
}

impl Publish {
    /// What the delivery to this node's members did.
    pub fn local(&self) -> BroadcastSummary {
        self.local
    }
}

impl Future for Publish {
    type Output = Result<Position, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.remote.as_mut().poll(cx)
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// One node of a cluster: a local [`Group`] whose broadcasts, questions and drains reach every node through a
/// [`Broker`]. Cheap to clone; when the last clone is dropped the node stops (without leaving the registry: the
/// other nodes see it go after the node timeout, as for a crash). See the [module docs](super).
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

struct Shared {
    node: NodeId,
    group: Group,
    broker: Arc<dyn Broker>,
    config: ClusterConfig,
    subs: Arc<Subscriptions>,
    ready: watch::Sender<BTreeSet<String>>,
    live: watch::Sender<Vec<NodeId>>,
    events: broadcast::Sender<ClusterEvent>,
    queries: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_query: AtomicU64,
    stop: CancellationToken,
}

/// The namespaces a node is subscribed to; the group's hooks reach it without holding the group.
struct Subscriptions {
    broker: Arc<dyn Broker>,
    namespaces: Mutex<HashSet<String>>,
    maybe_empty: Mutex<HashSet<String>>,
    wake: Arc<Notify>,
}

impl Subscriptions {
    fn joined(&self, namespace: &str) {
        let mut subs = lock(&self.namespaces);
        if subs.insert(namespace.to_owned()) {
            self.broker.subscribe(namespace);
            drop(subs);
            self.wake.notify_one();
        }
    }

    fn emptied(&self, namespace: &str) {
        lock(&self.maybe_empty).insert(namespace.to_owned());
        self.wake.notify_one();
    }
}

impl Cluster {
    /// Starts a node on `broker`: its group, its heartbeats and its inbox, on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(broker: impl Broker, config: ClusterConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let broker: Arc<dyn Broker> = Arc::new(broker);
        let node = NodeId::random();
        let (inbox, receiver) = Inbox::new(config.inbox_capacity);
        let subs = Arc::new(Subscriptions {
            broker: broker.clone(),
            namespaces: Mutex::new(HashSet::new()),
            maybe_empty: Mutex::new(HashSet::new()),
            wake: receiver.wake.clone(),
        });
        let (on_add, on_empty) = (Arc::downgrade(&subs), Arc::downgrade(&subs));
        let group = Group::builder()
            .config(config.group.clone())
            .on_add(move |remote| {
                if let Some(subs) = Weak::upgrade(&on_add) {
                    subs.joined(&remote.namespace);
                }
                Ok(())
            })
            .on_empty(move |namespace| {
                if let Some(subs) = Weak::upgrade(&on_empty) {
                    subs.emptied(namespace);
                }
            })
            .build()?;
        let (events, _) = broadcast::channel(256);
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            node: node.clone(),
            group,
            broker,
            config,
            subs,
            ready: watch::Sender::new(BTreeSet::new()),
            live: watch::Sender::new(vec![node.clone()]),
            events,
            queries: Mutex::new(HashMap::new()),
            next_query: AtomicU64::new(1),
            stop: stop.clone(),
        });
        shared.broker.open(&node, inbox);
        tokio::spawn(Pump::new(shared.clone(), receiver).run());
        tokio::spawn(heartbeats(shared.clone()));
        Ok(Self {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.shared.node
    }

    /// The local group: send to, close, touch and remove local members through it.
    pub fn group(&self) -> &Group {
        &self.shared.group
    }

    /// Adds a local member; the node subscribes to its namespace if it was not already.
    ///
    /// Fails as [`Group::add`].
    pub fn add<M>(
        &self,
        namespace: impl Into<String>,
        id: impl Into<String>,
        member: M,
    ) -> Result<(), Rejected<M>>
    where
        M: Member + Send + 'static,
        M::Error: Into<BoxError>,
    {
        let namespace = namespace.into();
        self.shared.group.add(namespace.clone(), id, member)?;
        // Again after the add: a last leave may have unsubscribed between the `on_add` check and the insert.
        self.shared.subs.joined(&namespace);
        Ok(())
    }

    /// Resolves once the node is subscribed to `namespace` and knows where its history stands: from then on every
    /// broadcast to it reaches this node's members. It waits as long as that takes (a broker that never answers, a
    /// namespace without members): put it under a `tokio::time::timeout`.
    pub async fn subscribed(&self, namespace: &str) {
        let mut ready = self.shared.ready.subscribe();
        let _ = ready.wait_for(|set| set.contains(namespace)).await;
    }

    /// Delivers `msg` to this node's members of `namespace` now and publishes it once for every other node.
    ///
    /// The returned [`Publish`] resolves with the message's [`Position`] once the broker has it, or with why not:
    /// [`Overloaded`](connman_core::error::Overloaded) when the bounded queue of publishes waiting for the broker is
    /// full, [`Elapsed`](connman_core::error::Elapsed) when the broker stayed down past the queue's max wait.
    pub fn broadcast(&self, namespace: &str, msg: impl Into<Bytes>) -> Publish {
        let msg = msg.into();
        let local = self.shared.group.broadcast(namespace, msg.clone(), &[]);
        let remote = self
            .shared
            .broker
            .publish(&self.shared.node, namespace, msg);
        Publish { local, remote }
    }

    /// The events from now on.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.shared.events.subscribe()
    }

    /// The live nodes as of the last heartbeat (this one included), sorted.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.shared.live.borrow().clone()
    }

    /// Resolves once the registry holds exactly `n` live nodes; as [`Cluster::subscribed`], put it under a timeout.
    pub async fn wait_nodes(&self, n: usize) {
        let mut live = self.shared.live.subscribe();
        let _ = live.wait_for(|nodes| nodes.len() == n).await;
    }

    /// The ids of the members of `namespace` on every node (this node's first).
    pub async fn members(&self, namespace: &str) -> Answer<Vec<String>> {
        let local = self.shared.group.ids(namespace);
        let answer = self.ask(Ask::Members(namespace.to_owned())).await;
        answer.map(|replies| {
            let mut ids = local;
            for reply in replies {
                if let Reply::Ids(more) = reply {
                    ids.extend(more);
                }
            }
            ids
        })
    }

    /// How many members `namespace` has on every node.
    pub async fn count(&self, namespace: &str) -> Answer<usize> {
        let local = self.shared.group.namespace_len(namespace);
        self.ask(Ask::Count(namespace.to_owned()))
            .await
            .map(|replies| local + sum(&replies))
    }

    /// Whether any node has member `id` in `namespace`. A `true` is complete even if some nodes did not answer.
    pub async fn is_member(&self, namespace: &str, id: &str) -> Answer<bool> {
        if self.shared.group.contains(namespace, id) {
            return Answer::Complete(true);
        }
        let answer = self
            .ask(Ask::IsMember(namespace.to_owned(), id.to_owned()))
            .await;
        if answer.value().contains(&Reply::Flag(true)) {
            return Answer::Complete(true);
        }
        answer.map(|_| false)
    }

    /// Sends `msg` to member `id` of `namespace`, on whichever node it is.
    ///
    /// Errors: what [`Group::send`] says for a local member; [`NotFound`] when every node answered that it has no
    /// such member; [`Partial`] when it was not found and some nodes did not answer in time.
    pub async fn send_to(
        &self,
        namespace: &str,
        id: &str,
        msg: impl Into<Bytes>,
    ) -> Result<(), BoxError> {
        let msg = msg.into();
        if self.shared.group.contains(namespace, id) {
            return self.shared.group.send(namespace, id, msg);
        }
        let answer = self
            .ask(Ask::SendTo(namespace.to_owned(), id.to_owned(), msg))
            .await;
        if answer.value().contains(&Reply::Flag(true)) {
            return Ok(());
        }
        match answer {
            Answer::Complete(_) => Err(NotFound::new(format!("{namespace}/{id}")).into()),
            Answer::Partial {
                answered, expected, ..
            } => Err(Partial { answered, expected }.into()),
        }
    }

    /// Closes every member of `namespace` on every node; answers how many began to close.
    pub async fn close_all(&self, namespace: &str, code: CloseCode, reason: &str) -> Answer<usize> {
        let local = self.shared.group.close_all(namespace, code, reason).len();
        self.ask(Ask::CloseAll(
            namespace.to_owned(),
            code.get(),
            reason.to_owned(),
        ))
        .await
        .map(|replies| local + sum(&replies))
    }

    /// Drains every node so that the whole cluster closes at most `max_per_second` members per second: each of the
    /// `n` live nodes drains its own members at `max_per_second / n` (CL-06). Answers how many members are draining.
    ///
    /// Fails with [`InvalidConfig`] when the rate is below one per second per live node.
    pub async fn drain(&self, max_per_second: u32) -> Result<Answer<usize>, InvalidConfig> {
        let nodes = u32::try_from(self.nodes().len().max(1)).unwrap_or(u32::MAX);
        let share = max_per_second / nodes;
        let config = DrainConfig::max_per_second(share).map_err(|_| {
            InvalidConfig::new("the cluster drain rate must be at least one per second per node")
        })?;
        let local = start_drain(&self.shared.group, config.clone());
        let answer = self
            .ask(Ask::Drain(
                share,
                config.code().get(),
                config.reason().to_owned(),
            ))
            .await;
        Ok(answer.map(|replies| local + sum(&replies)))
    }

    /// Leaves the registry, then stops the node: the other nodes stop counting it at once.
    pub async fn shutdown(self) {
        let leave = self.shared.broker.leave(&self.shared.node);
        let _ = timeout(self.shared.config.query_timeout, leave).await;
        self.shared.stop.cancel();
        self.shared.broker.close();
    }

    /// Asks every other live node and waits for their answers, at most the query timeout.
    async fn ask(&self, ask: Ask) -> Answer<Vec<Reply>> {
        let shared = &self.shared;
        let others: Vec<NodeId> = shared
            .live
            .borrow()
            .iter()
            .filter(|n| **n != shared.node)
            .cloned()
            .collect();
        let expected = others.len() + 1;
        if others.is_empty() {
            return Answer::Complete(Vec::new());
        }
        let id = shared.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(others.len());
        {
            let mut queries = lock(&shared.queries);
            if queries.len() >= shared.config.max_queries {
                drop(queries);
                tracing::warn!("too many cluster questions waiting; this one goes unanswered");
                return Answer::Partial {
                    value: Vec::new(),
                    answered: 1,
                    expected,
                };
            }
            queries.insert(id, tx);
        }
        let _forget = Forget { shared, id };
        let request = Wire::Request {
            id,
            from: shared.node.clone(),
            ask,
        }
        .encode();
        for node in &others {
            // Sent in order on the broker link; a send that fails leaves that node unanswered.
            drop(shared.broker.send(node, request.clone()));
        }
        let deadline = Instant::now() + shared.config.query_timeout;
        let mut replies = Vec::with_capacity(others.len());
        while replies.len() < others.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) | Err(_) => break,
            }
        }
        if replies.len() == others.len() {
            Answer::Complete(replies)
        } else {
            let answered = replies.len() + 1;
            Answer::Partial {
                value: replies,
                answered,
                expected,
            }
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.shared.node)
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

/// Takes a question out of the waiting table when its asker is done.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.shared.queries).remove(&self.id);
    }
}

fn sum(replies: &[Reply]) -> usize {
    replies
        .iter()
        .map(|r| match r {
            Reply::Count(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            _ => 0,
        })
        .fold(0, usize::saturating_add)
}

/// Starts a drain of the local group in the background; returns how many members it covers.
fn start_drain(group: &Group, config: DrainConfig) -> usize {
    let total = group.len();
    match group.drain(config) {
        Ok(drain) => {
            tokio::spawn(drain);
            total
        }
        Err(_) => 0,
    }
}

/// Says the node is alive every heartbeat interval and follows who else is.
async fn heartbeats(shared: Arc<Shared>) {
    let interval = shared.config.heartbeat_interval;
    let mut next = Instant::now();
    loop {
        let beat = shared
            .broker
            .heartbeat(&shared.node, shared.config.node_timeout);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            beat = timeout(interval.max(shared.config.query_timeout), beat) => match beat {
                Ok(Ok(mut live)) => {
                    if !live.contains(&shared.node) {
                        live.push(shared.node.clone());
                    }
                    live.sort();
                    let old = shared.live.send_replace(live.clone());
                    for n in live.iter().filter(|n| !old.contains(n)) {
                        let _ = shared.events.send(ClusterEvent::NodeJoined(n.clone()));
                    }
                    for n in old.iter().filter(|n| !live.contains(n)) {
                        let _ = shared.events.send(ClusterEvent::NodeLeft(n.clone()));
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            },
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = sleep_until(next) => {}
        }
    }
}

/// Where a node stands in one namespace's history.
#[derive(Debug, Default)]
struct Track {
    epoch: Option<Epoch>,
    /// The next offset to deliver; `None` until the first read of the history.
    next: Option<u64>,
    /// Messages that arrived ahead of a gap, by offset.
    pending: BTreeMap<u64, (Epoch, NodeId, Bytes)>,
    /// The history must be read: a gap, a new subscription, a lost link.
    dirty: bool,
    ready: bool,
}

/// The task that takes what arrives from the broker, in order.
struct Pump {
    shared: Arc<Shared>,
    inbox: InboxReceiver,
    tracks: HashMap<String, Track>,
    retry_at: Option<Instant>,
}

impl Pump {
    fn new(shared: Arc<Shared>, inbox: InboxReceiver) -> Self {
        Self {
            shared,
            inbox,
            tracks: HashMap::new(),
            retry_at: None,
        }
    }

    async fn run(mut self) {
        let stop = self.shared.stop.clone();
        loop {
            if self.inbox.lagged.swap(false, Ordering::AcqRel) {
                self.tracks.values_mut().for_each(|t| t.dirty = true);
            }
            self.reconcile();
            if self.retry_at.is_none_or(|at| at <= Instant::now()) {
                self.retry_at = None;
                self.sync_dirty().await;
            }
            let retry = self.retry_at;
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                item = self.inbox.rx.recv() => match item {
                    Some(item) => self.handle(item),
                    None => return,
                },
                () = self.inbox.wake.notified() => {}
                () = sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {}
            }
        }
    }

    /// Follows the subscriptions: a track for each new one, none for the ones that ended.
    fn reconcile(&mut self) {
        let shared = &self.shared;
        let maybe_empty = std::mem::take(&mut *lock(&shared.subs.maybe_empty));
        let mut subs = lock(&shared.subs.namespaces);
        for ns in maybe_empty {
            if shared.group.namespace_len(&ns) == 0 && subs.remove(&ns) {
                shared.broker.unsubscribe(&ns);
            }
        }
        for ns in subs.iter() {
            self.tracks.entry(ns.clone()).or_insert_with(|| Track {
                dirty: true,
                ..Track::default()
            });
        }
        let gone: Vec<String> = self
            .tracks
            .keys()
            .filter(|ns| !subs.contains(*ns))
            .cloned()
            .collect();
        drop(subs);
        for ns in gone {
            self.tracks.remove(&ns);
            shared.ready.send_modify(|set| {
                set.remove(&ns);
            });
        }
    }

    fn handle(&mut self, item: Incoming) {
        match item {
            Incoming::Message(env) => {
                let max_pending = self.shared.config.max_pending;
                let Some(track) = self.tracks.get_mut(&env.namespace) else {
                    return;
                };
                let offset = env.position.offset;
                match (track.epoch, track.next) {
                    (Some(epoch), Some(next)) if epoch == env.position.epoch => {
                        if offset < next {
                            return;
                        }
                        if offset == next && track.pending.is_empty() {
                            track.next = Some(next + 1);
                            if env.origin != self.shared.node {
                                self.shared
                                    .group
                                    .broadcast(&env.namespace, env.payload, &[]);
                            }
                            return;
                        }
                    }
                    // A new epoch, the first one, or the first read still to come: the history read sorts it out.
                    _ => {}
                }
                if track.pending.len() < max_pending {
                    track
                        .pending
                        .insert(offset, (env.position.epoch, env.origin, env.payload));
                }
                track.dirty = true;
            }
            Incoming::Subscribed(ns) => {
                if let Some(track) = self.tracks.get_mut(&ns) {
                    track.dirty = true;
                }
            }
            Incoming::Direct(bytes) => match Wire::decode(bytes) {
                Ok(Wire::Request { id, from, ask }) => self.answer(id, from, ask),
                Ok(Wire::Response { id, reply }) => {
                    if let Some(tx) = lock(&self.shared.queries).get(&id) {
                        let _ = tx.try_send(reply);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "dropped a message from another node"),
            },
            Incoming::Link(up) => {
                let event = if up {
                    self.tracks.values_mut().for_each(|t| t.dirty = true);
                    ClusterEvent::BrokerUp
                } else {
                    ClusterEvent::BrokerDown
                };
                let _ = self.shared.events.send(event);
            }
        }
    }

    fn answer(&self, id: u64, from: NodeId, ask: Ask) {
        let group = &self.shared.group;
        let reply = match ask {
            Ask::Members(ns) => Reply::Ids(group.ids(&ns)),
            Ask::Count(ns) => Reply::Count(group.namespace_len(&ns) as u64),
            Ask::IsMember(ns, id) => Reply::Flag(group.contains(&ns, &id)),
            Ask::SendTo(ns, id, msg) => Reply::Flag(group.send(&ns, &id, msg).is_ok()),
            Ask::CloseAll(ns, code, reason) => {
                Reply::Count(group.close_all(&ns, CloseCode(code), &reason).len() as u64)
            }
            Ask::Drain(rate, code, reason) => {
                let drained = DrainConfig::max_per_second(rate).map_or(0, |config| {
                    start_drain(group, config.with_code(CloseCode(code)).with_reason(reason))
                });
                Reply::Count(drained as u64)
            }
        };
        let send = self
            .shared
            .broker
            .send(&from, Wire::Response { id, reply }.encode());
        // The future only reports the outcome; the send is under way already.
        drop(send);
    }

    /// Reads the history of every namespace that needs it.
    async fn sync_dirty(&mut self) {
        let dirty: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in dirty {
            if let Err(e) = self.sync(&ns).await {
                tracing::debug!(namespace = %ns, error = %e, "history read failed; retrying");
                self.retry_at = Some(
                    Instant::now()
                        + self
                            .shared
                            .config
                            .heartbeat_interval
                            .min(Duration::from_millis(500)),
                );
                return;
            }
        }
    }

    /// Brings one namespace up to date: delivers what was missed, in order, and reports what cannot be.
    async fn sync(&mut self, ns: &str) -> Result<(), BoxError> {
        let shared = self.shared.clone();
        let batch = shared.config.history_batch;
        loop {
            let Some(track) = self.tracks.get_mut(ns) else {
                return Ok(());
            };
            track.dirty = false;
            let from = track.next.unwrap_or(u64::MAX);
            let limit = if track.next.is_some() { batch } else { 0 };
            let read = shared.broker.history(ns, from, limit);
            let history = match timeout(shared.config.query_timeout, read).await {
                Ok(history) => history?,
                Err(elapsed) => return Err(elapsed.into()),
            };
            // The namespace may have been left meanwhile.
            let Some(track) = self.tracks.get_mut(ns) else {
                return Ok(());
            };
            let Some(next) = track.next else {
                // The first read: start right after what was published so far.
                track.epoch = history.epoch;
                track.next = Some(history.top + 1);
                let top = history.top;
                let epoch = history.epoch;
                track
                    .pending
                    .retain(|offset, (e, _, _)| *offset > top && Some(*e) == epoch);
                if epoch.is_none() {
                    track.pending.clear();
                }
                track.dirty = !track.pending.is_empty();
                if !track.ready {
                    track.ready = true;
                    shared.ready.send_modify(|set| {
                        set.insert(ns.to_owned());
                    });
                    let _ = shared.events.send(ClusterEvent::Subscribed {
                        namespace: ns.to_owned(),
                    });
                }
                if track.dirty {
                    continue;
                }
                return Ok(());
            };
            match (track.epoch, history.epoch) {
                (Some(old), new) if new != Some(old) => {
                    // The history this node was following is gone.
                    let _ = shared.events.send(ClusterEvent::EpochChanged {
                        namespace: ns.to_owned(),
                        old,
                        new,
                        delivered: next - 1,
                    });
                    track.epoch = new;
                    track.next = Some(1);
                    track.pending.retain(|_, (e, _, _)| Some(*e) == new);
                    if new.is_some() {
                        track.dirty = true;
                        continue;
                    }
                    return Ok(());
                }
                (None, None) => {
                    track.pending.clear();
                    return Ok(());
                }
                (None, Some(new)) => {
                    // The first publish of a new epoch, after the old one was found gone: from its start.
                    track.epoch = Some(new);
                    track.next = Some(1);
                    track.pending.retain(|_, (e, _, _)| *e == new);
                    track.dirty = true;
                    continue;
                }
                _ => {}
            }
            let Some(epoch) = track.epoch else {
                return Ok(());
            };
            let mut next = next;
            let full = history.entries.len() >= limit;
            for entry in history.entries {
                if entry.offset < next {
                    continue;
                }
                if entry.offset > next {
                    let _ = shared.events.send(ClusterEvent::Missed {
                        namespace: ns.to_owned(),
                        epoch,
                        first: next,
                        last: entry.offset - 1,
                    });
                }
                if entry.origin != shared.node {
                    shared.group.broadcast(ns, entry.payload, &[]);
                }
                next = entry.offset + 1;
            }
            if !full && next <= history.top {
                // Everything from `next` to the top was trimmed before it could be read.
                let _ = shared.events.send(ClusterEvent::Missed {
                    namespace: ns.to_owned(),
                    epoch,
                    first: next,
                    last: history.top,
                });
                next = history.top + 1;
            }
            // Then what arrived meanwhile, as long as it follows on.
            track
                .pending
                .retain(|offset, (e, _, _)| *offset >= next && *e == epoch);
            while let Some(entry) = track.pending.first_entry() {
                if *entry.key() != next {
                    break;
                }
                let (_, origin, payload) = entry.remove();
                if origin != shared.node {
                    shared.group.broadcast(ns, payload, &[]);
                }
                next += 1;
            }
            track.next = Some(next);
            if full || !track.pending.is_empty() {
                track.dirty = true;
                continue;
            }
            return Ok(());
        }
    }
}

//! Namespaces of members with send, broadcast, close and drain (@soketi/connections done right).
//!
//! A [`Group`] holds members by namespace and id. A member is any [`Member`]: a WebSocket connection, a channel (see
//! [`channel`]), a test double. Ids are unique within a namespace; the same id may live in two namespaces.
//!
//! Each member gets a bounded outbound queue and a writer task. [`Group::send`] and [`Group::broadcast`] only put a
//! message in queues and return at once; the writer feeds the member until its queue is empty and then flushes once,
//! so a burst of messages costs one flush, not one per message. A full queue applies the [`SlowConsumer`] policy.
//! A broadcast shares one [`Bytes`] buffer among all members.
//!
//! ```
//! use bytes::Bytes;
//! use connman_core::member::CloseCode;
//! use connman_pool::group::{Frame, Group, channel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let group = Group::new();
//! let (a, mut pa) = channel(16);
//! let (b, mut pb) = channel(16);
//! let (c, mut pc) = channel(16);
//! group.add("radio:5ghz", "a", a).unwrap();
//! group.add("radio:5ghz", "b", b).unwrap();
//! group.add("radio:40ghz", "c", c).unwrap();
//!
//! // A broadcast reaches one namespace only, in insertion order, minus the excluded ids.
//! let summary = group.broadcast("radio:5ghz", "tick", &["b"]);
//! assert_eq!(summary.delivered, 1);
//! assert_eq!(pa.recv().await, Some(Frame::Message(Bytes::from("tick"))));
//!
//! // Close a whole namespace; each member flushes what it has, then closes, then leaves the group.
//! let closing = group.close_all("radio:5ghz", CloseCode::NORMAL, "bye");
//! for done in closing {
//!     done.await;
//! }
//! assert_eq!(pb.recv().await, Some(Frame::Close(CloseCode::NORMAL, "bye".into())));
//! assert_eq!(group.namespace_len("radio:5ghz"), 0);
//! assert_eq!(group.namespace_len("radio:40ghz"), 1);
//! assert!(pc.try_recv().is_none());
//! # }
//! ```
//!
//! # Decisions
//!
//! * A duplicate id is rejected with [`Duplicate`]; [`Group::replace`] closes the old member explicitly (the original
//!   silently replaced it and left it open).
//! * A closing member stays listed (its id stays taken) until its close is done, then leaves the group by itself: the
//!   owner does not have to call [`Group::remove`] from a close handler. It is skipped by broadcasts and a send to it
//!   fails with [`Closed`]. [`Group::remove`] takes a member out at once, without a close (for a peer that is gone).
//! * Close is flush-then-close: what was queued before the close goes out, then the close frame, all within the close
//!   timeout. This replaces the original's fixed 100 ms delay before the native close, which was a guess at how long
//!   the last frame takes to flush. Closing twice closes once.
//! * The idle timer starts when the member joins (not at its first send) and is refreshed by messages queued for it,
//!   by [`Group::touch`], and by what the member itself reports of its peer ([`Member::last_heard`]: a WebSocket
//!   peer that only answers pings is not idle).
//! * A member whose connection ends by itself ([`Member::poll_ended`]) leaves at once with [`Departure::Ended`]; a
//!   dead member is never counted as delivered for long, and the owner never has to call [`Group::remove`].
//! * Lookups never create a namespace; the namespace goes away with its last member, and `on_empty` fires only then.
//! * Broadcast and close-all take the namespace's member list (a shared snapshot, rebuilt after a join or a leave)
//!   under the group's lock, and fill the queues after letting it go: one namespace's broadcast never holds up
//!   another's, nor a join. A member that joins meanwhile does not get that message (it joined after it); one that
//!   leaves meanwhile is skipped. The lock and each member's queue lock are plain mutexes held for a few
//!   instructions, so there is no hand-written lock-free structure to model-check.
//! * Every way out of the group (a writer's end, [`Group::remove`]) goes through one departure, which runs the
//!   `on_remove` and `on_empty` hooks exactly once.

mod channel;
mod config;
mod error;
#[cfg(feature = "serde")]
mod json;
mod slot;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use connman_core::error::{
    BoxError, Closed, Draining, Duplicate, InvalidConfig, NotFound, Overloaded,
};
use connman_core::member::{CloseCode, Member};
use pin_project::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

pub use channel::{ChannelMember, ChannelPeer, Frame, channel};
pub use config::{GroupConfig, SlowConsumer};
pub use error::{NoRuntime, Rejected};

use slot::{Push, Slot};

/// Namespaces of members. Cheap to clone: clones share the same members.
///
/// See the [module docs](self) for an example and the decisions it makes.
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

/// Where a member lives: its namespace and id. This is what other nodes need to address it (soketi's `toRemote`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Remote {
    /// The member's id, unique in its namespace.
    pub id: String,
    /// The member's namespace.
    pub namespace: String,
}

impl Remote {
    /// A member `id` in `namespace`.
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            namespace: namespace.into(),
        }
    }
}

/// Why a member left the group, as told to the `on_remove` hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Departure {
    /// [`Group::remove`] took it out; it was dropped without a close.
    Removed,
    /// A new member took its id through [`Group::replace`]; it is being closed.
    Replaced,
    /// Its close with this code is done (a close, close-all, drain, idle timeout or slow-consumer close).
    Closed(CloseCode),
    /// Its sink failed; it was dropped.
    Failed,
    /// Its connection ended by itself ([`Member::poll_ended`]: the peer closed or went away); it was dropped.
    Ended,
    /// Its close did not finish within the close timeout; it was dropped.
    CloseTimedOut,
}

/// Counters of one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStats {
    /// Messages handed to the member.
    pub sent: u64,
    /// Messages dropped: by the slow-consumer policy, or still queued when the member failed or was removed.
    pub dropped: u64,
    /// Messages waiting in its queue now.
    pub queued: u64,
}

/// What one broadcast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastSummary {
    /// Members whose queue took the message.
    pub delivered: usize,
    /// Members whose queue was full, so the slow-consumer policy dropped it (or closed the member).
    pub dropped: usize,
    /// Members skipped because they are closing. Excluded ids are not counted.
    pub skipped: usize,
}

/// Resolves once a member has left the group: its close is done, timed out or failed, or it was removed.
#[pin_project]
#[derive(Debug)]
pub struct Closing {
    #[pin]
    done: WaitForCancellationFutureOwned,
    began: bool,
}

impl Closing {
    /// Whether the call that gave this future began the close (`false`: the member was closing already).
    pub fn began(&self) -> bool {
        self.began
    }
}

impl Future for Closing {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().done.poll(cx)
    }
}

/// Builds a [`Group`] with settings and hooks.
///
/// Hooks are how layered crates extend a group (soketi's Pusher pool rejects unknown apps on add and unsubscribes
/// channels on remove). They run outside the group's lock, so they may call the group.
///
/// ```
/// use connman_core::error::NotFound;
/// use connman_pool::group::{Group, channel};
/// use std::sync::{Arc, Mutex};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let emptied = Arc::new(Mutex::new(Vec::new()));
/// let seen = emptied.clone();
/// let group = Group::builder()
///     .on_add(|remote| match remote.namespace.as_str() {
///         "app-1" => Ok(()),
///         _ => Err(NotFound::new("app").into()),
///     })
///     .on_empty(move |ns| seen.lock().unwrap().push(ns.to_owned()))
///     .build()
///     .unwrap();
/// let (a, _pa) = channel(4);
/// group.add("app-1", "a", a).unwrap();
/// let (b, _pb) = channel(4);
/// assert!(group.add("app-2", "b", b).unwrap_err().is::<NotFound>());
/// group.remove("app-1", "a").unwrap();
/// assert_eq!(*emptied.lock().unwrap(), ["app-1"]);
/// # }
/// ```
#[must_use]
pub struct GroupBuilder {
    config: GroupConfig,
    hooks: Hooks,
}

impl GroupBuilder {
    /// Uses these settings instead of the defaults.
    pub fn config(mut self, config: GroupConfig) -> Self {
        self.config = config;
        self
    }

    /// Checks every member before it joins; an `Err` rejects it with that error.
    pub fn on_add(
        mut self,
        check: impl Fn(&Remote) -> Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_add = Some(Box::new(check));
        self
    }

    /// Runs once for every member that leaves, with the reason.
    pub fn on_remove(mut self, hook: impl Fn(&Remote, Departure) + Send + Sync + 'static) -> Self {
        self.hooks.on_remove = Some(Box::new(hook));
        self
    }

    /// Runs when a namespace loses its last member (only then).
    pub fn on_empty(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.hooks.on_empty = Some(Box::new(hook));
        self
    }

    /// Builds the group; fails if the settings cannot work.
    pub fn build(self) -> Result<Group, InvalidConfig> {
        self.config.validate()?;
        Ok(Group {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::default()),
                config: self.config,
                hooks: self.hooks,
                draining: watch::Sender::new(false),
            }),
        })
    }
}

impl fmt::Debug for GroupBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// An empty group with the default settings.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default settings are valid"))
    }

    /// An empty group with `config`; fails if the settings cannot work.
    pub fn with_config(config: GroupConfig) -> Result<Self, InvalidConfig> {
        Self::builder().config(config).build()
    }

    /// Starts building a group with settings and hooks.
    pub fn builder() -> GroupBuilder {
        GroupBuilder {
            config: GroupConfig::default(),
            hooks: Hooks::default(),
        }
    }

    /// The group's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.inner.config
    }

    /// Adds `member` as `id` in `namespace` and starts its writer.
    ///
    /// Fails, handing the member back, if the id is taken in that namespace ([`Duplicate`]), the group is draining
    /// ([`Draining`]), the `on_add` check refuses it, or there is no tokio runtime ([`NoRuntime`]).
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
        self.insert(Remote::new(namespace, id), member, false)
            .map(|_| ())
    }

    /// Adds `member` as `id` in `namespace`; a member already there is closed with [`CloseCode::NORMAL`] and reason
    /// `"replaced"` and leaves at once. Returns whether one was replaced.
    ///
    /// Fails like [`Group::add`], except that a taken id is not an error.
    pub fn replace<M>(
        &self,
        namespace: impl Into<String>,
        id: impl Into<String>,
        member: M,
    ) -> Result<bool, Rejected<M>>
    where
        M: Member + Send + 'static,
        M::Error: Into<BoxError>,
    {
        self.insert(Remote::new(namespace, id), member, true)
    }

    /// Takes a member out at once, without a close: its writer stops and the member is dropped with whatever was
    /// still queued. For a member whose peer is already gone; use [`Group::close`] to close one.
    pub fn remove(&self, namespace: &str, id: &str) -> Result<(), NotFound> {
        let slot = self.slot(namespace, id)?;
        slot.detach();
        // The same departure as a writer's own end; whoever comes first takes the member out, once.
        if self.inner.depart(&slot, Departure::Removed) {
            Ok(())
        } else {
            Err(not_found(namespace, id))
        }
    }

    /// Queues `msg` for one member.
    ///
    /// Errors: [`NotFound`] for a missing namespace or id, [`Closed`] if the member is closing, [`Overloaded`] if its
    /// queue is full and the policy dropped this message or closed the member.
    pub fn send(&self, namespace: &str, id: &str, msg: impl Into<Bytes>) -> Result<(), BoxError> {
        let slot = self.slot(namespace, id)?;
        push_result(slot.push(msg.into(), Instant::now(), &self.inner.config))
    }

    /// Queues `msg` for every open member of `namespace` except the ids in `except`, in the order they joined.
    ///
    /// The message is one shared buffer. A missing namespace is an empty summary (and is not created).
    pub fn broadcast(
        &self,
        namespace: &str,
        msg: impl Into<Bytes>,
        except: &[&str],
    ) -> BroadcastSummary {
        let msg = msg.into();
        let mut summary = BroadcastSummary::default();
        let Some(members) = self.members(namespace) else {
            return summary;
        };
        let now = Instant::now();
        for slot in members.iter() {
            if except.contains(&slot.remote.id.as_str()) {
                continue;
            }
            match slot.push(msg.clone(), now, &self.inner.config) {
                Push::Queued => summary.delivered += 1,
                Push::Dropped => summary.dropped += 1,
                Push::NotOpen => summary.skipped += 1,
            }
        }
        summary
    }

    /// Queues every message of `msgs`, in order, for every open member of `namespace` except the ids in `except`:
    /// a burst. Each member's queue is taken once and its writer woken at most once for the whole burst, so a burst
    /// of `k` messages costs `members` queue locks instead of `k × members`. The summary adds up what `k` calls of
    /// [`Group::broadcast`] would say.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use connman_pool::group::{Frame, Group, channel};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = Group::new();
    /// let (member, mut peer) = channel(16);
    /// group.add("ticks", "a", member).unwrap();
    /// let burst = [Bytes::from("1"), Bytes::from("2"), Bytes::from("3")];
    /// assert_eq!(group.broadcast_many("ticks", &burst, &[]).delivered, 3);
    /// for msg in burst {
    ///     assert_eq!(peer.recv().await, Some(Frame::Message(msg)));
    /// }
    /// # }
    /// ```
    pub fn broadcast_many(
        &self,
        namespace: &str,
        msgs: &[Bytes],
        except: &[&str],
    ) -> BroadcastSummary {
        let mut summary = BroadcastSummary::default();
        let Some(members) = self.members(namespace) else {
            return summary;
        };
        let now = Instant::now();
        for slot in members.iter() {
            if except.contains(&slot.remote.id.as_str()) {
                continue;
            }
            slot.push_many(msgs, now, &self.inner.config, |push| match push {
                Push::Queued => summary.delivered += 1,
                Push::Dropped => summary.dropped += 1,
                Push::NotOpen => summary.skipped += 1,
            });
        }
        summary
    }

    /// Queues `msg` for one member, then closes it: the message goes out before the close.
    ///
    /// The close starts even if the message could not be queued (the error then says why, as for [`Group::send`]);
    /// [`Group::close`] gives its [`Closing`] again.
    pub fn send_then_close(
        &self,
        namespace: &str,
        id: &str,
        msg: impl Into<Bytes>,
        code: CloseCode,
        reason: &str,
    ) -> Result<Closing, BoxError> {
        let slot = self.slot(namespace, id)?;
        let now = Instant::now();
        let pushed = slot.push(msg.into(), now, &self.inner.config);
        let began = slot.begin_close(code, reason, now, self.inner.config.close_timeout());
        push_result(pushed)?;
        Ok(closing(&slot, began))
    }

    /// Closes one member with `code` and `reason`, after what is queued for it. Closing a closing member does nothing
    /// more; either way the returned future resolves once it has left the group.
    pub fn close(
        &self,
        namespace: &str,
        id: &str,
        code: CloseCode,
        reason: &str,
    ) -> Result<Closing, NotFound> {
        let slot = self.slot(namespace, id)?;
        let began = slot.begin_close(
            code,
            reason,
            Instant::now(),
            self.inner.config.close_timeout(),
        );
        Ok(closing(&slot, began))
    }

    /// Closes every member of `namespace` at once and returns one [`Closing`] per member. Members leave the group as
    /// their closes finish. A missing namespace gives nothing.
    pub fn close_all(&self, namespace: &str, code: CloseCode, reason: &str) -> Vec<Closing> {
        let Some(members) = self.members(namespace) else {
            return Vec::new();
        };
        let now = Instant::now();
        let timeout = self.inner.config.close_timeout();
        members
            .iter()
            .map(|slot| {
                let began = slot.begin_close(code, reason, now, timeout);
                closing(slot, began)
            })
            .collect()
    }

    /// Records inbound traffic from a member: its idle timer starts again.
    pub fn touch(&self, namespace: &str, id: &str) -> Result<(), NotFound> {
        self.slot(namespace, id)?.touch(Instant::now());
        Ok(())
    }

    /// The counters of one member.
    pub fn stats(&self, namespace: &str, id: &str) -> Option<MemberStats> {
        self.slot(namespace, id).ok().map(|s| s.stats())
    }

    /// Whether the member is in the group and not closing.
    pub fn is_open(&self, namespace: &str, id: &str) -> bool {
        self.slot(namespace, id).is_ok_and(|s| s.is_open())
    }

    /// Whether the member is in the group (closing members are, until their close is done).
    pub fn contains(&self, namespace: &str, id: &str) -> bool {
        self.slot(namespace, id).is_ok()
    }

    /// The member's address for other nodes: `{id, namespace}`, or `None` if it is not in the group.
    pub fn to_remote(&self, namespace: &str, id: &str) -> Option<Remote> {
        self.slot(namespace, id).ok().map(|s| s.remote.clone())
    }

    /// The ids in `namespace` in the order they joined; empty for a missing namespace.
    pub fn ids(&self, namespace: &str) -> Vec<String> {
        let reg = self.inner.lock();
        reg.namespaces
            .get(namespace)
            .map(|ns| ns.by_seq.values().map(|s| s.remote.id.clone()).collect())
            .unwrap_or_default()
    }

    /// The namespaces that have members, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock().namespaces.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many members `namespace` has.
    pub fn namespace_len(&self, namespace: &str) -> usize {
        let reg = self.inner.lock();
        reg.namespaces.get(namespace).map_or(0, |ns| ns.by_id.len())
    }

    /// How many members the group has, across namespaces.
    pub fn len(&self) -> usize {
        let reg = self.inner.lock();
        reg.namespaces.values().map(|ns| ns.by_id.len()).sum()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().namespaces.is_empty()
    }

    /// Whether a drain has begun (no member is admitted any more).
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Watches whether admission has stopped: `true` from the moment a drain begins.
    pub fn watch_draining(&self) -> watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// Stops admitting members for good (a later [`Group::add`] fails with [`Draining`]) and returns every member at
    /// that moment, oldest first across namespaces; `None` if admission had stopped already.
    ///
    /// This is the first step of [`Group::drain`](crate::drain), for a drain of your own.
    pub fn stop_admitting(&self) -> Option<Vec<Remote>> {
        let mut reg = self.inner.lock();
        if reg.draining {
            return None;
        }
        reg.draining = true;
        self.inner.draining.send_replace(true);
        let mut slots: Vec<&Arc<Slot>> = reg
            .namespaces
            .values()
            .flat_map(|ns| ns.by_seq.values())
            .collect();
        slots.sort_by_key(|s| s.seq);
        Some(slots.into_iter().map(|s| s.remote.clone()).collect())
    }

    /// The members of `namespace` in join order, shared until its membership changes; the lock is held only to
    /// take (or, after a change, rebuild) this list, never while messages are queued.
    fn members(&self, namespace: &str) -> Option<Arc<[Arc<Slot>]>> {
        let mut reg = self.inner.lock();
        let ns = reg.namespaces.get_mut(namespace)?;
        Some(
            ns.snapshot
                .get_or_insert_with(|| ns.by_seq.values().cloned().collect())
                .clone(),
        )
    }

    fn slot(&self, namespace: &str, id: &str) -> Result<Arc<Slot>, NotFound> {
        let reg = self.inner.lock();
        reg.namespaces
            .get(namespace)
            .and_then(|ns| ns.by_id.get(id).and_then(|seq| ns.by_seq.get(seq)))
            .cloned()
            .ok_or_else(|| not_found(namespace, id))
    }

    fn insert<M>(&self, remote: Remote, member: M, replace: bool) -> Result<bool, Rejected<M>>
    where
        M: Member + Send + 'static,
        M::Error: Into<BoxError>,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Rejected::new(member, NoRuntime::new()));
        };
        if self.is_draining() {
            return Err(Rejected::new(member, Draining::new()));
        }
        if let Some(check) = &self.inner.hooks.on_add
            && let Err(e) = check(&remote)
        {
            return Err(Rejected::new(member, e));
        }
        let now = Instant::now();
        let mut guard = self.inner.lock();
        // The drain flag is checked again under the lock: a drain that began meanwhile has taken its snapshot.
        if guard.draining {
            return Err(Rejected::new(member, Draining::new()));
        }
        let reg = &mut *guard;
        let seq = reg.next_seq;
        let ns = reg.namespaces.entry(remote.namespace.clone()).or_default();
        let old = match ns.by_id.get(&remote.id) {
            Some(_) if !replace => {
                drop(guard);
                let what = format!("{}/{}", remote.namespace, remote.id);
                return Err(Rejected::new(member, Duplicate::new(what)));
            }
            Some(old_seq) => ns.by_seq.remove(&old_seq.clone()),
            None => None,
        };
        reg.next_seq += 1;
        let slot = Arc::new(Slot::new(remote.clone(), seq, now));
        ns.by_id.insert(remote.id, seq);
        ns.by_seq.insert(seq, slot.clone());
        ns.snapshot = None;
        runtime.spawn(writer::run(member, slot, Arc::downgrade(&self.inner)));
        drop(guard);
        let replaced = old.is_some();
        if let Some(old) = old {
            old.begin_close(
                CloseCode::NORMAL,
                "replaced",
                now,
                self.inner.config.close_timeout(),
            );
            self.inner.hooks.removed(&old.remote, Departure::Replaced);
        }
        Ok(replaced)
    }
}

impl Default for Group {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("members", &self.len())
            .field("draining", &self.is_draining())
            .field("config", &self.inner.config)
            .finish()
    }
}

pub(crate) struct Inner {
    registry: Mutex<Registry>,
    pub(crate) config: GroupConfig,
    hooks: Hooks,
    /// `true` once admission stopped; what [`Group::watch_draining`] watches.
    draining: watch::Sender<bool>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Hooks run outside this lock and nothing else can panic while it is held.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The one way out of the group: takes the member out, unless it was already taken out or replaced, and runs the
    /// hooks. Returns whether this call took it out.
    fn depart(&self, slot: &Slot, departure: Departure) -> bool {
        let mut reg = self.lock();
        let Some(ns) = reg.namespaces.get_mut(&slot.remote.namespace) else {
            return false;
        };
        if ns.by_id.get(&slot.remote.id) != Some(&slot.seq) {
            return false;
        }
        ns.by_id.remove(&slot.remote.id);
        ns.by_seq.remove(&slot.seq);
        ns.snapshot = None;
        let empty = ns.by_id.is_empty();
        if empty {
            reg.namespaces.remove(&slot.remote.namespace);
        }
        drop(reg);
        self.hooks.removed(&slot.remote, departure);
        if empty {
            self.hooks.emptied(&slot.remote.namespace);
        }
        true
    }
}

impl Drop for Inner {
    /// The last handle to the group is gone: every writer stops and drops its member.
    fn drop(&mut self) {
        let reg = self
            .registry
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for ns in reg.namespaces.values() {
            for slot in ns.by_seq.values() {
                slot.detach();
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    namespaces: HashMap<String, Namespace>,
    next_seq: u64,
    draining: bool,
}

#[derive(Default)]
struct Namespace {
    by_id: HashMap<String, u64>,
    /// Join order.
    by_seq: BTreeMap<u64, Arc<Slot>>,
    /// `by_seq`'s members as one shared list for broadcasts, until the next change.
    snapshot: Option<Arc<[Arc<Slot>]>>,
}

type AddCheck = Box<dyn Fn(&Remote) -> Result<(), BoxError> + Send + Sync>;
type RemoveHook = Box<dyn Fn(&Remote, Departure) + Send + Sync>;
type EmptyHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Hooks {
    on_add: Option<AddCheck>,
    on_remove: Option<RemoveHook>,
    on_empty: Option<EmptyHook>,
}

impl Hooks {
    fn removed(&self, remote: &Remote, departure: Departure) {
        if let Some(hook) = &self.on_remove {
            hook(remote, departure);
        }
    }

    fn emptied(&self, namespace: &str) {
        if let Some(hook) = &self.on_empty {
            hook(namespace);
        }
    }
}

fn not_found(namespace: &str, id: &str) -> NotFound {
    NotFound::new(format!("{namespace}/{id}"))
}

fn closing(slot: &Slot, began: bool) -> Closing {
    Closing {
        done: slot.done.clone().cancelled_owned(),
        began,
    }
}

fn push_result(push: Push) -> Result<(), BoxError> {
    match push {
        Push::Queued => Ok(()),
        Push::Dropped => Err(Overloaded::new().into()),
        Push::NotOpen => Err(Closed::new().into()),
    }
}

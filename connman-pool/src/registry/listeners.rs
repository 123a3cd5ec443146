//! Listeners: the optional [`Listen`] trait of a connection, the [`Listener`] handed to it, and the attaching and
//! detaching of each holding scope's listeners.
//!
//! A [`Spec`](super::Spec) stores its listeners with the connection's event type erased, so that a registry of a
//! connection type without events needs no `Listen` impl: only [`Spec::listener`](super::Spec::listener) asks for it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};

use super::manager::Scope;
use super::spec::Context;
use super::table::{Record, ScopeCell};

/// How a connection takes and drops listeners: the `addListener`/`removeListener` of connection-manager.
///
/// Only a connection type that is given listeners ([`Spec::listener`](super::Spec::listener)) needs it. The registry
/// calls these while the connection's entry is locked: they must be short and must not call the registry.
pub trait Listen: Send + Sync + 'static {
    /// What the connection's events carry.
    type Event: 'static;

    /// Attaches `listener` to the events called `name`.
    fn add_listener(&self, name: &str, listener: Listener<Self::Event>);

    /// Detaches the listener with `id` from the events called `name`.
    fn remove_listener(&self, name: &str, id: &ListenerId);
}

/// One scope's listener for one event name, attached to a live connection. Cheap to clone.
pub struct Listener<E> {
    id: ListenerId,
    call: Arc<dyn Fn(&E) + Send + Sync>,
}

impl<E> Listener<E> {
    /// Which (connection, scope) pair this listener belongs to.
    pub fn id(&self) -> &ListenerId {
        &self.id
    }

    /// Runs the listener. A panic inside it is caught and logged, and reaches neither the caller nor the registry.
    pub fn call(&self, event: &E) {
        if catch_unwind(AssertUnwindSafe(|| (self.call)(event))).is_err() {
            tracing::warn!(scope = %self.id.scope, "a listener panicked");
        }
    }
}

impl<E> Clone for Listener<E> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            call: self.call.clone(),
        }
    }
}

impl<E> fmt::Debug for Listener<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Identifies the listeners one scope attached to one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerId {
    connection: u64,
    scope: Arc<str>,
}

impl ListenerId {
    /// The id of the scope the listener runs for.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// What a listener needs to build its [`Context`] when an event comes: the record (weakly, as the connection holds
/// the listener and the record the connection) and the scope it runs for.
pub(super) struct Target<C, K, D> {
    record: Weak<Record<C, K>>,
    scope: Arc<Scope<D>>,
}

type AttachFn<C, K, D> = Arc<dyn Fn(&C, ListenerId, Target<C, K, D>) + Send + Sync>;

/// One named listener of a spec, with the connection's event type erased.
pub(super) struct Named<C, K, D> {
    name: String,
    attach: AttachFn<C, K, D>,
    detach: fn(&C, &str, &ListenerId),
}

impl<C, K, D> Named<C, K, D>
where
    C: Listen,
    K: Clone + Send + Sync + 'static,
    D: Send + Sync + 'static,
{
    pub(super) fn new(
        name: String,
        listener: impl Fn(&Context<K, D>, &C::Event) + Send + Sync + 'static,
    ) -> Self {
        let listener = Arc::new(listener);
        let event_name = name.clone();
        let attach = move |conn: &C, id: ListenerId, target: Target<C, K, D>| {
            let listener = listener.clone();
            let call = move |event: &C::Event| {
                let Some(record) = target.record.upgrade() else {
                    return;
                };
                let ctx = record.context(target.scope.clone());
                listener(&ctx, event);
            };
            conn.add_listener(
                &event_name,
                Listener {
                    id,
                    call: Arc::new(call),
                },
            );
        };
        Self {
            name,
            attach: Arc::new(attach),
            detach: |conn, name, id| conn.remove_listener(name, id),
        }
    }
}

impl<C, K, D> Named<C, K, D> {
    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

fn listener_id<C, K, D>(key: u64, scope: &ScopeCell<C, K, D>) -> ListenerId {
    ListenerId {
        connection: key,
        scope: Arc::from(scope.scope.id()),
    }
}

/// Attaches `scope`'s listeners to `conn` (CM-10, CM-11). A panicking `add_listener` is logged.
pub(super) fn attach<C, K, D>(
    conn: &C,
    record: &Arc<Record<C, K>>,
    scope: &ScopeCell<C, K, D>,
    listeners: &[Named<C, K, D>],
) {
    for named in listeners {
        let target = Target {
            record: Arc::downgrade(record),
            scope: scope.scope.clone(),
        };
        let id = listener_id(record.key, scope);
        if catch_unwind(AssertUnwindSafe(|| (named.attach)(conn, id, target))).is_err() {
            tracing::warn!(scope = %scope.scope.id(), listener = %named.name, "add_listener panicked");
        }
    }
}

/// Detaches `scope`'s listeners from `conn`, by event name (CM-29 fixed). A panicking `remove_listener` is logged.
pub(super) fn detach<C, K, D>(
    conn: &C,
    key: u64,
    scope: &ScopeCell<C, K, D>,
    listeners: &[Named<C, K, D>],
) {
    if listeners.is_empty() {
        return;
    }
    let id = listener_id(key, scope);
    for named in listeners {
        if catch_unwind(AssertUnwindSafe(|| (named.detach)(conn, &named.name, &id))).is_err() {
            tracing::warn!(scope = %scope.scope.id(), listener = %named.name, "remove_listener panicked");
        }
    }
}

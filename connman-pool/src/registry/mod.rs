//! Shared, reference-counted connections by id (connection-manager, done right).
//!
//! A [`Registry`] maps a namespace to a table of connections keyed by id. Code asks for a [`Manager`]: the facade of
//! one namespace seen from one [`Scope`] (a component of your program, with an id and your data). Every scope of a
//! namespace shares the namespace's table; namespaces never see each other (CM-03, CM-04).
//!
//! A connection is described by a [`Spec`]: an id, credentials (any `Clone + PartialEq` type), an async `connect`
//! function, an optional async `disconnect` function and named listeners. [`Manager::create`] connects;
//! [`Manager::get`] shares an existing connection with another scope; [`Manager::remove`] lets go of it. The
//! reference count is the number of distinct scopes holding the connection (CM-19), kept with the connection's holders
//! under its lock, so [`Manager::reference_count`] and [`Client::references`] read it without one. When it falls to
//! zero a grace period starts (20 s by default, CM-22);
//! a `get` before it ends keeps the connection (CM-23); otherwise `disconnect` runs once, bounded by a timeout, and the
//! record is gone whatever `disconnect` does (CM-25, CM-26).
//!
//! ```
//! use connman_pool::registry::{Get, Listen, Listener, ListenerId, Registry, Scope, Spec};
//! use std::sync::{Arc, Mutex};
//!
//! /// A connection that fires string events at its listeners.
//! #[derive(Default)]
//! struct Conn {
//!     listeners: Mutex<Vec<(String, Listener<String>)>>,
//! }
//!
//! impl Conn {
//!     fn fire(&self, name: &str, event: &str) {
//!         let listeners = self.listeners.lock().unwrap().clone();
//!         for (n, l) in listeners.iter().filter(|(n, _)| n == name) {
//!             l.call(&event.to_string());
//!         }
//!     }
//! }
//!
//! impl Listen for Conn {
//!     type Event = String;
//!     fn add_listener(&self, name: &str, listener: Listener<String>) {
//!         self.listeners.lock().unwrap().push((name.to_string(), listener));
//!     }
//!     fn remove_listener(&self, name: &str, id: &ListenerId) {
//!         self.listeners.lock().unwrap().retain(|(n, l)| !(n == name && l.id() == id));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), connman_core::BoxError> {
//! let registry: Registry<Conn, String, &str> = Registry::new();
//! let irc = registry.manager("apps", Scope::new("irc-ui", "ui"));
//! let logger = registry.manager("apps", Scope::new("logger", "log"));
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let spec = Spec::new("irc://user@example", "secret".to_string(), |_ctx| async {
//!     Ok::<_, std::io::Error>(Conn::default())
//! })
//! .listener("join", move |ctx, event: &String| {
//!     log.lock().unwrap().push(format!("{} saw {event}", ctx.scope().data()));
//! });
//!
//! let client = irc.create(spec).await?;
//! assert_eq!(client.references(), 1);
//!
//! // Another component shares it, with the right credentials.
//! let Get::Found(shared) = logger.get("irc://user@example", &"secret".to_string()) else {
//!     panic!("expected the connection");
//! };
//! assert_eq!(shared.references(), 2);
//! assert!(matches!(logger.get("irc://user@example", &"wrong".to_string()), Get::Mismatch));
//!
//! // Each holding scope's listeners see the event, each with its own scope.
//! shared.connection().unwrap().fire("join", "#rust");
//! let mut lines = seen.lock().unwrap().clone();
//! lines.sort();
//! assert_eq!(lines, ["log saw #rust", "ui saw #rust"]);
//! # Ok(())
//! # }
//! ```
//!
//! # What differs from connection-manager
//!
//! * **Validation is the type system** (CM-01, CM-05, CM-06). A namespace is a `&str`, an id a `String`, credentials
//!   a `K`, and [`Spec::new`] cannot be called without a `connect` function (the original forgot to check that one).
//!   Listeners are typed closures, and add/remove listener are the [`Listen`] trait of the connection type.
//! * **Scopes** (CM-02): the first [`Scope`] registered for an id in a namespace wins; a later `Scope` value with the
//!   same id gets a `Manager` bound to the first one, and its own data is dropped. [`Manager::scope`] tells which.
//! * **Single-flight create** (CM-16, CM-31). Concurrent creates of one id run one `connect`; every waiter gets the
//!   same connection (and its scope a reference) or the same error. The connect runs in the connection's own
//!   supervisor task, so a waiter that is dropped takes nothing with it: the connect goes on for the others, and if
//!   nobody is left, the connection idles through the grace period and is torn down. A waiter dropped *after* the
//!   connect completed leaves its scope holding a reference, like any other holder: let go with [`Manager::remove`].
//!   [`Manager::create`] of an id that is already up is a [`Duplicate`] error;
//!   [`Manager::get_or_create`] returns it instead. Credentials that do not match are a [`Mismatch`] error, never a
//!   second connection under the same id.
//! * **Connect timeout** (CM-07, CM-13 … CM-15): 10 s by default; the create completes exactly once, with the first
//!   of success, error and timeout. A connect still running at the timeout is kept for up to the teardown timeout so
//!   that a connection arriving late is disconnected, never leaked; a late failure is ignored.
//! * **Errors** are typed (CM-40): [`ConnectFailed`] (with the connect function's error as its source),
//!   [`Elapsed`], [`Mismatch`], [`Duplicate`], [`NotFound`], [`Closed`], [`Panicked`], carried as a
//!   [`BoxError`] to downcast. They live in [`crate::error`], with the rest of the crate's.
//! * **Removal** detaches the removing scope's listeners (CM-28), and [`Manager::remove_listeners`] detaches only the
//!   calling scope's, passing the event name (CM-29). Removing an unknown id says so with [`Removed::Unknown`] (CM-21).
//! * **Teardown** (CM-24 … CM-27): at the end of the grace period the record leaves the table first, then
//!   `disconnect` runs once, in its own task, bounded by [`Config::teardown_timeout`] (3 s by default). A panic or a
//!   hang in `disconnect` is logged and changes nothing. Several scopes letting go within the grace period start it
//!   over: teardown comes one grace period after the last release. **`disconnect` gets the connection only**
//!   (CM-24 changed): connection-manager called it with the last remover's scope as `this`, but the connection
//!   outlives that scope by the grace period, and a `get` within it may have come from any other scope, so no scope
//!   is the right one. A `disconnect` that needs scope data must capture it in its closure.
//! * **`move_to`** (CM-32 … CM-34) re-keys a connection and keeps its connect function, credentials (the new ones if
//!   given), references and listeners; it adds no reference.
//! * **Health is event-driven** (CM-35 … CM-39). There is no 60 s poll of `isConnected`, whose default of `true` meant
//!   dead connections were never noticed. Each connection has its own supervisor task (not one global flag shared by
//!   every namespace): call [`Manager::report_lost`] when the connection tells you it is gone, and the supervisor
//!   reconnects through the core's one [`Driver`](connman_core::driver::Driver) of [`connman_core::Lifecycle`], with
//!   the configured backoff, the stored credentials and the first holding scope. Each connection's lifecycle events
//!   ([`Manager::subscribe`], [`Client::subscribe`]) say what happened; a failed first connect fails the create and
//!   closes the machine with the connect function's own error in its `ConnectFailed` event. After every reconnect, every holding scope's listeners are attached to the new
//!   connection. While it reconnects, [`Client::connection`] is `None`. If the backoff gives up, the record is removed.
//! * **User callbacks cannot take the registry down.** Listeners, `add_listener`, `remove_listener`, `connect` and
//!   `disconnect` run under `catch_unwind` or in their own task; a panic is logged (and a panicking connect is a
//!   [`Panicked`] error). `add_listener` and `remove_listener` run while the connection's entry is locked: they must
//!   not call back into the registry.
//!
//! # The refcount path
//!
//! Each namespace has its own lock, and each connection its own. A `get` of a connection the scope already holds is
//! answered from the [`Manager`]'s memory with no lock and no allocation, checked against a generation of the scope
//! that moves only when the scope lets go of something or a connection it holds is re-keyed or removed. A scope that
//! takes and lets go of a connection its manager has seen before locks that connection only.
//!
//! # `Registry` or `Singleton`
//!
//! Take a [`Registry`] when several parts of a program share connections by id and each part's interest should be
//! counted: references per scope, listeners per scope, a grace period after the last one lets go, credentials checked
//! on every `get`. Take a [`Singleton`](crate::singleton::Singleton) when one service value stands for one
//! connection: a tower layer that makes it once, hands out clones, and remakes it with backoff after a failure, with
//! no ids, scopes or teardown of its own.

mod client;
mod config;
mod listeners;
mod manager;
mod spec;
mod supervisor;
mod table;

pub use client::{Client, Get, Removed};
pub use config::{Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE, DEFAULT_TEARDOWN_TIMEOUT};
pub use listeners::{Listen, Listener, ListenerId};
pub use manager::{EVENT_CAPACITY, Manager, Registry, Scope};
pub use spec::{Context, Spec};
pub use table::Stats;

// The errors keep their paths under `registry` for the code that names them there.
pub use crate::error::{ConnectFailed, Mismatch, Panicked};
#[doc(no_inline)]
pub use connman_core::error::{BoxError, Closed, Duplicate, Elapsed, NotFound};

#[cfg(test)]
mod tests;

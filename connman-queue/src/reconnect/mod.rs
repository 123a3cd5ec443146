//! Keep a connection up: [`Reconnect`] drives the connman lifecycle over any make service.
//!
//! The layer wraps a make service (`Service<Target>` answering with a connection that is itself a `Service<Req>`).
//! Requests wait in `poll_ready` while the link is down; a retriable failure is never an error. An optional
//! [`OnUp`] hook runs on every new connection before it is up, and what it yields serves the requests (upnode's
//! re-auth, UP-05/06). Observe the link through [`ReconnectConfig::state`] (a watch of
//! [`State`](connman_core::State)) and [`ReconnectConfig::subscribe`] (a bounded broadcast of
//! [`Event`](connman_core::Event)s); close it with a [`CloseHandle`].

mod barrier;
mod config;
mod error;
mod future;
mod handle;
mod hook;
mod layer;
mod service;

pub use config::{
    DEFAULT_HOOK_TIMEOUT, DEFAULT_SETTLE_TIMEOUT, EVENT_CAPACITY, ReconnectBuilder, ReconnectConfig,
};
pub use error::{FatalConnect, GaveUp};
pub use future::ResponseFuture;
pub use handle::{CloseHandle, ReconnectStats};
pub use hook::{BoxHookFuture, BoxOnUp, Identity, OnUp};
pub use layer::ReconnectLayer;
pub use service::Reconnect;

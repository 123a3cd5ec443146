//! Detect a dead link: [`Heartbeat`] pings each connection and declares it dead after a timeout.

mod config;
mod error;
mod layer;
mod service;

pub use config::{DEFAULT_INTERVAL, DEFAULT_TIMEOUT, HeartbeatConfig};
pub use error::{PingFailed, PingTimeout};
pub use layer::{EVENT_CAPACITY, HeartbeatEvent, HeartbeatLayer, MakeFuture, MakeHeartbeat};
pub use service::{Heartbeat, ResponseFuture};

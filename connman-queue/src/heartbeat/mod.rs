//! Detect a dead link: [`Heartbeat`] pings each connection and declares it dead after a timeout.

mod config;
mod error;
mod layer;
mod service;

pub use config::{DEFAULT_INTERVAL, DEFAULT_TIMEOUT, HeartbeatBuilder, HeartbeatConfig};
pub use error::{PingFailed, PingTimeout};
pub use layer::{HeartbeatLayer, MakeFuture, MakeHeartbeat};
pub use service::{EVENT_CAPACITY, Heartbeat, HeartbeatEvent, HeartbeatStats, ResponseFuture};

//! Hold requests while the link is down: [`Queue`], upnode's transactional queue done right.

mod config;
mod error;
mod future;
mod layer;
mod local;
mod service;
mod shared;
mod stats;

pub use config::{
    DEFAULT_CAPACITY, DEFAULT_MAX_REPLAYS, DEFAULT_MAX_WAIT, DEFAULT_MAX_WEIGHT, QueueBuilder,
    QueueConfig,
};
pub use error::{NotReady, ServiceFailed};
pub use future::ResponseFuture;
pub use layer::QueueLayer;
pub use service::{CallOptions, Queue, QueueHandle};
pub use stats::QueueStats;

//! Hold requests while the link is down: [`Queue`], upnode's transactional queue done right.

mod error;
mod future;
mod layer;
mod service;
mod shared;
mod slots;

pub use error::{NotReady, ServiceFailed};
pub use future::ResponseFuture;
pub use layer::{
    DEFAULT_CAPACITY, DEFAULT_MAX_REPLAYS, DEFAULT_MAX_WAIT, DEFAULT_MAX_WEIGHT, QueueLayer,
};
pub use service::{CallOptions, Queue, QueueHandle, QueueStats};

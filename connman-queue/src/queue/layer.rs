//! [`QueueLayer`]: puts a [`Queue`] with a [`QueueConfig`] in front of a service.

use std::fmt;

use connman_core::error::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::config::QueueConfig;
use super::service::Queue;

/// Puts a [`Queue`] in front of a service: holds a [`QueueConfig`] and calls [`Queue::new`] with it.
///
/// ```
/// use connman_queue::queue::{QueueConfig, QueueLayer};
///
/// let layer = QueueLayer::new(QueueConfig::<Vec<u8>>::builder().capacity(64).build()?);
/// assert_eq!(layer.config().capacity(), 64);
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
pub struct QueueLayer<Req> {
    config: QueueConfig<Req>,
}

impl<Req> QueueLayer<Req> {
    /// A layer with `config`.
    pub fn new(config: QueueConfig<Req>) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &QueueConfig<Req> {
        &self.config
    }
}

impl<Req> Default for QueueLayer<Req> {
    fn default() -> Self {
        Self::new(QueueConfig::default())
    }
}

impl<Req> Clone for QueueLayer<Req> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<Req> fmt::Debug for QueueLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S, Req> Layer<S> for QueueLayer<Req>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Clone + Send + 'static,
{
    type Service = Queue<S, Req>;

    fn layer(&self, service: S) -> Self::Service {
        Queue::new(service, self.config.clone())
    }
}

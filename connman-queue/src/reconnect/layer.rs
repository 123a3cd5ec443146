//! [`ReconnectLayer`]: wraps a make service in a [`Reconnect`] with a [`ReconnectConfig`].

use std::fmt;

use connman_core::lifecycle::{Event, State};
use tokio::sync::{broadcast, watch};
use tower_layer::Layer;
use tower_service::Service;

use super::config::ReconnectConfig;
use super::handle::{CloseHandle, ReconnectStats};
use super::hook::OnUp;
use super::service::Reconnect;

/// Wraps a make service in a [`Reconnect`]: holds a [`ReconnectConfig`] and calls [`Reconnect::new`].
///
/// Every [`Reconnect`] made from one layer (and its clones) shares one state watch, one event channel and one close
/// handle: build one layer per supervised link.
///
/// ```
/// use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
/// use connman_core::backoff::presets;
///
/// let config = ReconnectConfig::builder("127.0.0.1:7000").backoff(presets::upnode()).build()?;
/// let layer = ReconnectLayer::new(config);
/// let state = layer.state();
/// assert!(!state.borrow().is_up());
/// # Ok::<(), connman_core::error::InvalidConfig>(())
/// ```
pub struct ReconnectLayer<Target, H = super::hook::Identity> {
    config: ReconnectConfig<Target, H>,
}

impl<Target, H> ReconnectLayer<Target, H> {
    /// A layer with `config`.
    pub fn new(config: ReconnectConfig<Target, H>) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &ReconnectConfig<Target, H> {
        &self.config
    }

    /// The state of the link, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.config.state()
    }

    /// The lifecycle events from now on, through a bounded channel.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.config.subscribe()
    }

    /// A handle that closes the link for good from anywhere.
    pub fn close_handle(&self) -> CloseHandle {
        self.config.close_handle()
    }

    /// Lossless counts of the link's events so far.
    pub fn stats(&self) -> ReconnectStats {
        self.config.stats()
    }
}

impl<M, Target, H> Layer<M> for ReconnectLayer<Target, H>
where
    M: Service<Target>,
    H: OnUp<M::Response> + Clone,
    Target: Clone,
{
    type Service = Reconnect<M, Target, H>;

    fn layer(&self, mk: M) -> Self::Service {
        Reconnect::new(mk, self.config.clone())
    }
}

impl<Target: Clone, H: Clone> Clone for ReconnectLayer<Target, H> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<Target: fmt::Debug, H> fmt::Debug for ReconnectLayer<Target, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectLayer")
            .field("config", &self.config)
            .finish()
    }
}

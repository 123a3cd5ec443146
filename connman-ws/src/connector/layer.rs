use tower_layer::Layer;

use crate::config::WsConfig;
use crate::connector::WsConnector;

/// Wraps a transport in a [`WsConnector`] with these settings.
///
/// ```
/// use connman_tcp::TcpConnector;
/// use connman_ws::{WsConfig, WsConnectorLayer};
/// use tower_layer::Layer;
///
/// let connector = WsConnectorLayer::new(WsConfig::default()).layer(TcpConnector::new());
/// assert_eq!(connector.config(), &WsConfig::default());
/// ```
#[derive(Debug, Clone, Default)]
pub struct WsConnectorLayer {
    config: WsConfig,
}

impl WsConnectorLayer {
    /// A layer whose connectors use `config`.
    pub const fn new(config: WsConfig) -> Self {
        Self { config }
    }
}

impl<C> Layer<C> for WsConnectorLayer {
    type Service = WsConnector<C>;

    fn layer(&self, inner: C) -> WsConnector<C> {
        WsConnector::new(inner, self.config)
    }
}

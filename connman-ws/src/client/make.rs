//! [`MakeLink`]: the client's make service, a [`WsConnector`] whose sockets become [`WsLink`]s.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use connman_core::error::BoxError;
use connman_tcp::HostPort;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::ClientRequestBuilder;
use tower_service::Service;

use super::control::Control;
use super::link::WsLink;
use crate::connector::WsConnector;

/// A connect in flight through [`MakeLink`].
pub(crate) type MakeFuture = Pin<Box<dyn Future<Output = Result<WsLink, BoxError>> + Send>>;

/// Connects through a [`WsConnector`] (the transport) and starts a [`WsLink`] on each socket.
pub(crate) struct MakeLink<C> {
    connector: WsConnector<C>,
    control: Arc<Control>,
    capacity: usize,
}

impl<C> MakeLink<C> {
    pub(crate) fn new(connector: WsConnector<C>, control: Arc<Control>, capacity: usize) -> Self {
        Self {
            connector,
            control,
            capacity,
        }
    }
}

impl<C, IO> Service<ClientRequestBuilder> for MakeLink<C>
where
    C: Service<HostPort, Response = IO>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = WsLink;
    type Error = BoxError;
    type Future = MakeFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<ClientRequestBuilder>::poll_ready(&mut self.connector, cx)
    }

    fn call(&mut self, target: ClientRequestBuilder) -> MakeFuture {
        let connect = self.connector.call(target);
        let control = self.control.clone();
        let capacity = self.capacity;
        Box::pin(async move {
            let stream = connect.await?;
            Ok(WsLink::start(stream, control, capacity))
        })
    }
}

impl<C: fmt::Debug> fmt::Debug for MakeLink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeLink")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

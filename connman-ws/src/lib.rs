//! WebSocket connections for connman.
//!
//! This crate will hold `WsConnector`, a layer over any IO transport of connman-tcp (TCP, TLS, an in-memory duplex)
//! that performs the WebSocket handshake with a timeout, and the server-side `accept` that yields a connection with an
//! id and a namespace, ready to join a `connman_pool::group::Group`. Messages travel through tokio-tungstenite with a
//! small read buffer, a bounded write buffer, a maximum message size, ping/pong heartbeats and the close codes 1000,
//! 1001, 1009, 1012 and application codes such as 4200 ("reconnect now").
//!
//! It is not implemented yet.

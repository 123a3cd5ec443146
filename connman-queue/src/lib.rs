//! Reconnect, Queue and Heartbeat tower layers for connman.

pub mod heartbeat;
pub mod queue;
pub mod reconnect;

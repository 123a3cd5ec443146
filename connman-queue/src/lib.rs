//! Reconnect, Queue and Heartbeat tower layers for connman.

//! Supervised, reconnecting TCP connections for connman.

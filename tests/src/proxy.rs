//! A fault-injecting TCP proxy on loopback.

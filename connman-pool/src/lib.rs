//! Sharing, groups and drain for connman.

pub mod drain;
pub mod group;
pub mod pool;
pub mod registry;
pub mod singleton;

//! The one rule of every heartbeat: a ping's answer must be due before the next ping.
//!
//! connman pings in two places (the `Heartbeat` layer of connman-queue, the WebSocket heartbeat of connman-ws); both
//! check their schedule with [`check_schedule`], so the rule and its error are written once.
//!
//! ```
//! use connman_core::heartbeat::check_schedule;
//! use std::time::Duration;
//!
//! let s = Duration::from_secs;
//! assert!(check_schedule(s(10), s(5)).is_ok());
//! // upnode's server side waited 100 s for a 10 s ping (UP-11): rejected.
//! assert!(check_schedule(s(10), s(100)).is_err());
//! assert!(check_schedule(s(10), s(10)).is_err());
//! assert!(check_schedule(s(10), Duration::ZERO).is_err());
//! ```

use std::time::Duration;

use crate::error::InvalidConfig;

/// Checks a heartbeat schedule: pings every `interval`, an answer due within `timeout`.
///
/// Both must be greater than zero and the timeout shorter than the interval; otherwise [`InvalidConfig`]. (A caller
/// that lets an interval of zero mean "no pings" checks that case before calling.)
pub const fn check_schedule(interval: Duration, timeout: Duration) -> Result<(), InvalidConfig> {
    if interval.is_zero() {
        return Err(InvalidConfig::new(
            "heartbeat interval must be greater than zero",
        ));
    }
    if timeout.is_zero() {
        return Err(InvalidConfig::new(
            "heartbeat timeout must be greater than zero",
        ));
    }
    if timeout.as_nanos() >= interval.as_nanos() {
        return Err(InvalidConfig::new(
            "heartbeat timeout must be shorter than the interval",
        ));
    }
    Ok(())
}

//! Error types: one small public type per failure mode.
//!
//! Between layers errors travel as [`BoxError`], as in tower. Callers find out what happened by downcasting, never by
//! comparing strings:
//!
//! ```
//! use connman_core::error::{BoxError, Closed, Elapsed};
//!
//! let err: BoxError = Closed::new().into();
//! assert!(err.is::<Closed>());
//! assert!(!err.is::<Elapsed>());
//! ```

use std::error::Error;
use std::fmt;

/// The error type between layers.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// An error that can be shared by several waiters or stored in an event.
pub type SharedError = std::sync::Arc<dyn Error + Send + Sync + 'static>;

macro_rules! unit_error {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct $name {
            _private: (),
        }

        impl $name {
            /// Creates the error.
            pub const fn new() -> Self {
                Self { _private: () }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($msg)
            }
        }

        impl Error for $name {}
    };
}

unit_error!(
    /// The connection, queue or group was closed by its owner; nothing more will be sent.
    Closed,
    "closed"
);

unit_error!(
    /// A deadline passed before the operation completed.
    Elapsed,
    "deadline elapsed"
);

unit_error!(
    /// The service is at capacity and was configured to reject rather than wait.
    Overloaded,
    "overloaded"
);

unit_error!(
    /// The service is draining and admits no new work.
    Draining,
    "draining"
);

unit_error!(
    /// Something that runs a task of its own (a supervised connection, a group member's writer) was started outside
    /// a tokio runtime. The one rule of connman: that is a typed error, never a panic.
    NoRuntime,
    "no tokio runtime to run on"
);

/// A lookup found nothing under that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    what: String,
}

impl NotFound {
    /// Nothing was found under `what` (an id, a name).
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into() }
    }

    /// What was looked for.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not found: {}", self.what)
    }
}

impl Error for NotFound {}

/// A key (a name, an id) is already taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    what: String,
}

impl Duplicate {
    /// `what` is already taken.
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into() }
    }

    /// The key that is taken.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "already exists: {}", self.what)
    }
}

impl Error for Duplicate {}

/// A setting was rejected at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    reason: &'static str,
}

impl InvalidConfig {
    /// A setting is invalid for `reason`.
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the setting was rejected.
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.reason)
    }
}

impl Error for InvalidConfig {}

macro_rules! source_error {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            source: Option<BoxError>,
        }

        impl $name {
            /// Creates the error without a cause.
            pub const fn new() -> Self {
                Self { source: None }
            }

            /// Creates the error with the failure that caused it.
            pub fn with_source(source: impl Into<BoxError>) -> Self {
                Self {
                    source: Some(source.into()),
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($msg)
            }
        }

        impl Error for $name {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                self.source.as_deref().map(|e| e as &(dyn Error + 'static))
            }
        }
    };
}

source_error!(
    /// The request was written, then the link was lost before its response: it may or may not have taken effect.
    ///
    /// Retrying it is safe only if the request is idempotent.
    MaybeDelivered,
    "request may have been delivered"
);

source_error!(
    /// The request was provably never written: retrying it is safe.
    NotSent,
    "request was not sent"
);

source_error!(
    /// The established link was lost.
    LinkLost,
    "link lost"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_downcast_and_keep_their_source() {
        let err: BoxError = MaybeDelivered::with_source(LinkLost::new()).into();
        let md = err
            .downcast_ref::<MaybeDelivered>()
            .expect("is MaybeDelivered");
        assert!(md.source().is_some_and(|s| s.is::<LinkLost>()));
        assert_eq!(err.to_string(), "request may have been delivered");
        let nf: BoxError = NotFound::new("a").into();
        assert_eq!(nf.downcast_ref::<NotFound>().map(NotFound::what), Some("a"));
        assert!(BoxError::from(InvalidConfig::new("x")).is::<InvalidConfig>());
        assert!(BoxError::from(Duplicate::new("x")).is::<Duplicate>());
    }
}

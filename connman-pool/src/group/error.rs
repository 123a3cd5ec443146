//! Errors of the group that core does not already name.

use std::error::Error;
use std::fmt;

use connman_core::error::BoxError;

/// A member that was not admitted, handed back with the reason.
///
/// The reason is one of [`Duplicate`](connman_core::error::Duplicate) (the id is taken in that namespace),
/// [`Draining`](connman_core::error::Draining) (the group is draining), [`NoRuntime`], or the error of the group's
/// `on_add` check. The member comes back untouched, so the caller can tell its peer why (soketi sends
/// `pusher:error` 4009 or 4200 and closes) before dropping it.
///
/// ```
/// use connman_core::error::Duplicate;
/// use connman_pool::group::{Group, channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = Group::new();
/// let (a, _pa) = channel(8);
/// let (b, _pb) = channel(8);
/// group.add("chat", "1", a).unwrap();
/// let rejected = group.add("chat", "1", b).unwrap_err();
/// assert!(rejected.is::<Duplicate>());
/// let (_member, _reason) = rejected.into_parts();
/// # }
/// ```
pub struct Rejected<M> {
    member: M,
    reason: BoxError,
}

impl<M> Rejected<M> {
    pub(crate) fn new(member: M, reason: impl Into<BoxError>) -> Self {
        Self {
            member,
            reason: reason.into(),
        }
    }

    /// Whether the reason is a `T`.
    pub fn is<T: Error + 'static>(&self) -> bool {
        self.reason.is::<T>()
    }

    /// Why the member was not admitted.
    pub fn reason(&self) -> &BoxError {
        &self.reason
    }

    /// The member, untouched.
    pub fn into_member(self) -> M {
        self.member
    }

    /// The member and the reason.
    pub fn into_parts(self) -> (M, BoxError) {
        (self.member, self.reason)
    }
}

impl<M> fmt::Debug for Rejected<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<M> fmt::Display for Rejected<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member rejected: {}", self.reason)
    }
}

impl<M> Error for Rejected<M> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.reason)
    }
}

/// A member was added outside a tokio runtime, so its writer task could not start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NoRuntime {
    _private: (),
}

impl NoRuntime {
    /// Creates the error.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for NoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no tokio runtime to run the member's writer")
    }
}

impl Error for NoRuntime {}

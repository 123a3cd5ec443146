//! What became of a request: the classifier every caller of a connman stack would otherwise write by hand.
//!
//! Errors travel between layers as [`BoxError`](crate::error::BoxError), each layer wrapping the one below, so the
//! delivery verdict (never written, maybe delivered, timed out) sits somewhere along the
//! [`source`](Error::source) chain. [`Outcome::of`] walks it once and names the outcome:
//!
//! ```
//! use connman_core::error::{BoxError, Elapsed, LinkLost, MaybeDelivered, NotSent};
//! use connman_core::outcome::Outcome;
//!
//! let lost: BoxError = MaybeDelivered::with_source(LinkLost::new()).into();
//! assert_eq!(Outcome::of(&lost), Outcome::MaybeDelivered);
//! assert!(!Outcome::of(&lost).is_safe_to_retry());
//!
//! let unsent: BoxError = NotSent::with_source(std::io::Error::other("refused")).into();
//! assert_eq!(Outcome::of(&unsent), Outcome::NotSent);
//! assert!(Outcome::of(&unsent).is_safe_to_retry());
//!
//! let result: Result<u32, BoxError> = Err(Elapsed::new().into());
//! assert_eq!(Outcome::of_result(&result), Outcome::Elapsed);
//! assert_eq!(Outcome::of_result(&Ok::<_, BoxError>(7)), Outcome::Ok);
//! ```

use std::error::Error;

use crate::error::{Closed, Elapsed, LinkLost, MaybeDelivered, NotSent, Overloaded};

/// What became of one request, read from its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It was answered.
    Ok,
    /// It was provably never written ([`NotSent`]): safe to send again.
    NotSent,
    /// It was written and then the link was lost ([`MaybeDelivered`], or a bare [`LinkLost`]): the peer may or may not
    /// have it.
    MaybeDelivered,
    /// A deadline passed first ([`Elapsed`]). A queue never sends a request after its deadline passed while queued.
    Elapsed,
    /// The service was closed ([`Closed`]); nothing more will be sent.
    Closed,
    /// The service refused it at its capacity ([`Overloaded`]); it was not sent.
    Overloaded,
    /// Any other error: the service's own answer, a codec error, a fatal connect.
    Other,
}

impl Outcome {
    /// The outcome of an error (boxed or shared, as connman services return them): the first connman error type found
    /// along its [`source`](Error::source) chain, the top error first.
    pub fn of<E>(error: &E) -> Self
    where
        E: AsRef<dyn Error + Send + Sync + 'static> + ?Sized,
    {
        let error: &(dyn Error + 'static) = error.as_ref();
        Self::of_error(error)
    }

    /// The outcome of any error, see [`Outcome::of`].
    pub fn of_error(error: &(dyn Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<MaybeDelivered>() || e.is::<LinkLost>() {
                return Outcome::MaybeDelivered;
            }
            if e.is::<NotSent>() {
                return Outcome::NotSent;
            }
            if e.is::<Elapsed>() {
                return Outcome::Elapsed;
            }
            if e.is::<Closed>() {
                return Outcome::Closed;
            }
            if e.is::<Overloaded>() {
                return Outcome::Overloaded;
            }
            cause = e.source();
        }
        Outcome::Other
    }

    /// [`Outcome::Ok`] for `Ok`, else the outcome of the error.
    pub fn of_result<T, E>(result: &Result<T, E>) -> Self
    where
        E: AsRef<dyn Error + Send + Sync + 'static>,
    {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Self::of(e),
        }
    }

    /// Whether the request certainly did not reach the peer, so sending it again cannot duplicate it:
    /// [`Outcome::NotSent`] and [`Outcome::Overloaded`]. (An [`Outcome::Elapsed`] from a queue is never sent either,
    /// but the same error from a timeout above a written request is not that promise.)
    pub const fn is_safe_to_retry(&self) -> bool {
        matches!(self, Outcome::NotSent | Outcome::Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BoxError;

    /// An error of one's own wrapping another, as a layer above would.
    #[derive(Debug)]
    struct Wrapper(BoxError);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapper")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_the_verdict_anywhere_in_the_chain() {
        let cases: [(BoxError, Outcome); 7] = [
            (Box::new(Wrapper(NotSent::new().into())), Outcome::NotSent),
            (
                Box::new(Wrapper(MaybeDelivered::with_source(NotSent::new()).into())),
                Outcome::MaybeDelivered,
            ),
            (
                Box::new(Wrapper(LinkLost::new().into())),
                Outcome::MaybeDelivered,
            ),
            (Box::new(Wrapper(Elapsed::new().into())), Outcome::Elapsed),
            (Box::new(Wrapper(Closed::new().into())), Outcome::Closed),
            (
                Box::new(Wrapper(Overloaded::new().into())),
                Outcome::Overloaded,
            ),
            (std::io::Error::other("x").into(), Outcome::Other),
        ];
        for (error, outcome) in cases {
            assert_eq!(Outcome::of(&error), outcome, "{error}");
        }
        let shared: crate::error::SharedError = std::sync::Arc::new(NotSent::new());
        assert_eq!(Outcome::of(&shared), Outcome::NotSent);
    }
}

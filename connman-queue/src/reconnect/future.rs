//! The response future of [`Reconnect`](super::Reconnect).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use connman_core::error::BoxError;
use pin_project::pin_project;

/// The response of a request sent through [`Reconnect`](super::Reconnect).
#[pin_project(project = Proj)]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: Inner<F>,
    /// Counts this call among its connection's open calls until the future is dropped.
    call: Option<OpenCall>,
}

#[pin_project(project = InnerProj)]
#[derive(Debug)]
enum Inner<F> {
    Called(#[pin] F),
    Failed(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(fut: F, call: OpenCall) -> Self {
        Self {
            inner: Inner::Called(fut),
            call: Some(call),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            inner: Inner::Failed(Some(error)),
            call: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Called(fut) => fut.poll(cx).map_err(Into::into),
            InnerProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| connman_core::error::Closed::new().into()))),
        }
    }
}

/// The calls of one connection that are still open: made, and not yet dropped by their owners.
///
/// A call counts until its future is dropped, not merely until it is ready: the owner (a `Queue`) puts a request
/// that was never written back in its place before it drops the future, so once the count is zero every such request
/// is back in line.
///
/// Each handle counts its own calls; the type is aligned to two cache lines so that handles on different threads never
/// write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Calls {
    open: AtomicUsize,
    /// Set once the connection is lost and a new one waits for these calls: only then does closing the last call
    /// wake anyone (a wake is two more read-modify-writes, too many for every request).
    settling: AtomicBool,
    settled: AtomicWaker,
}

impl Calls {
    /// Counts one more open call until the returned guard is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> OpenCall {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenCall(self.clone())
    }

    /// Ready once no call is open.
    pub(crate) fn poll_settled(&self, cx: &mut Context<'_>) -> Poll<()> {
        // The flag and the count are read and written in one total order (SeqCst) with the closing call's, so
        // either the closing call sees the flag and wakes, or this sees the count at zero.
        self.settling.store(true, Ordering::SeqCst);
        if self.open.load(Ordering::SeqCst) == 0 {
            return Poll::Ready(());
        }
        self.settled.register(cx.waker());
        // A call may have closed between the load and the registration.
        if self.open.load(Ordering::SeqCst) == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether any call is open.
    pub(crate) fn any_open(&self) -> bool {
        self.open.load(Ordering::SeqCst) > 0
    }
}

/// One open call of a connection; dropping it closes the call.
#[derive(Debug)]
pub(crate) struct OpenCall(Arc<Calls>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.settling.load(Ordering::SeqCst)
        {
            self.0.settled.wake();
        }
    }
}

//! The layer that puts a drain signal in front of a service.

use tower_layer::Layer;

use super::{DrainSignal, Draining};

/// Wraps services in [`Draining`]: once `signal` fires, new requests fail with
/// [`Draining`](connman_core::error::Draining).
///
/// ```
/// use connman_core::error::Draining as DrainingError;
/// use connman_pool::drain::{DrainLayer, signal};
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (trigger, drain) = signal();
/// let echo = tower_service_fn(|req: u32| async move { Ok::<_, std::convert::Infallible>(req) });
/// let mut svc = DrainLayer::new(drain).layer(echo);
/// assert_eq!(svc.call(1).await.unwrap(), 1);
/// trigger.start();
/// assert!(svc.call(2).await.unwrap_err().is::<DrainingError>());
/// # }
/// # fn tower_service_fn<F, Fut>(f: F) -> Fn_<F> where F: FnMut(u32) -> Fut { Fn_(f) }
/// # struct Fn_<F>(F);
/// # impl<F, Fut, T, E> Service<u32> for Fn_<F> where F: FnMut(u32) -> Fut, Fut: std::future::Future<Output = Result<T, E>> {
/// #     type Response = T; type Error = E; type Future = Fut;
/// #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> { std::task::Poll::Ready(Ok(())) }
/// #     fn call(&mut self, req: u32) -> Fut { (self.0)(req) }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DrainLayer {
    signal: DrainSignal,
}

impl DrainLayer {
    /// A layer that rejects new work once `signal` fires.
    pub fn new(signal: DrainSignal) -> Self {
        Self { signal }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Draining<S>;

    fn layer(&self, inner: S) -> Draining<S> {
        Draining::new(inner, self.signal.clone())
    }
}

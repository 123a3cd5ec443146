//! A quick, criterion-free comparison of the queue's fast path with `tower::buffer::Buffer`, both in front of a
//! service that is always ready, alone and over a reconnecting layer (ours over connman's `Reconnect`, tower's
//! `Buffer` over tower's `Reconnect`), with 1, 16 and 256 concurrent callers on a two-worker runtime:
//! `cargo run --release -p connman-queue --example fastpath`.

use std::time::{Duration, Instant};

use connman_core::error::BoxError;
use connman_queue::queue::QueueLayer;
use connman_queue::reconnect::{Reconnect, ReconnectConfig};
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: u64 = 256_000;
const CALLERS: [u64; 3] = [1, 16, 256];

/// Each of `callers` tasks sends its share of the requests through its own clone of `svc`, one at a time.
async fn drive<S>(svc: S, callers: u64) -> Duration
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let per_caller = REQUESTS / callers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let mut sum = 0;
                for n in 0..per_caller {
                    sum += svc
                        .ready()
                        .await
                        .expect("ready")
                        .call(n)
                        .await
                        .expect("response");
                }
                sum
            })
        })
        .collect();
    for task in tasks {
        std::hint::black_box(task.await.expect("caller"));
    }
    start.elapsed() / u32::try_from(per_caller * callers).expect("few requests")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let echo = service_fn(|n: u64| async move { Ok::<_, BoxError>(n) });
        for callers in CALLERS {
            let queue = drive(QueueLayer::default().layer(echo), callers).await;
            let buffer = drive(tower::buffer::Buffer::new(echo, 1024), callers).await;
            println!(
                "{callers:>3} caller(s): queue {:>6} ns/request, buffer {:>6} ns/request, {:.1}x",
                queue.as_nanos(),
                buffer.as_nanos(),
                buffer.as_secs_f64() / queue.as_secs_f64()
            );
            let connect = service_fn(move |()| std::future::ready(Ok::<_, BoxError>(echo)));
            let ours = Reconnect::new(connect, ReconnectConfig::new(()));
            let queue = drive(QueueLayer::default().layer(ours), callers).await;
            let theirs = tower::reconnect::Reconnect::new(connect, ());
            let buffer = drive(tower::buffer::Buffer::new(theirs, 1024), callers).await;
            println!(
                "{callers:>3} caller(s): queue(reconnect) {:>6} ns/request, buffer(reconnect) {:>6} ns/request, {:.1}x",
                queue.as_nanos(),
                buffer.as_nanos(),
                buffer.as_secs_f64() / queue.as_secs_f64()
            );
        }
    });
}

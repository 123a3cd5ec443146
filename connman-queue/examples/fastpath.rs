//! A quick, criterion-free comparison of the queue's fast path with `tower::buffer::Buffer`, both in front of a
//! service that is always ready: `cargo run --release -p connman-queue --example fastpath`.

use std::time::Instant;

use connman_core::error::BoxError;
use connman_queue::queue::QueueLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: u64 = 200_000;

async fn drive<S>(name: &str, mut svc: S)
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let start = Instant::now();
    let mut sum = 0;
    for i in 0..REQUESTS {
        sum += svc
            .ready()
            .await
            .expect("ready")
            .call(i)
            .await
            .expect("response");
    }
    let elapsed = start.elapsed();
    println!(
        "{name:>8}: {:>8.0} ns/request ({REQUESTS} requests, checksum {sum})",
        elapsed.as_nanos() as f64 / REQUESTS as f64
    );
}

fn main() {
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    for (flavour, rt) in [("current-thread", current), ("multi-thread", multi)] {
        println!("{flavour} runtime:");
        rt.block_on(async {
            let echo = service_fn(|n: u64| async move { Ok::<_, BoxError>(n) });
            drive("queue", QueueLayer::new().layer(echo)).await;
            drive("buffer", tower::buffer::Buffer::new(echo, 1024)).await;
        });
    }
}

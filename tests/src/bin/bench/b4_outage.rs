//! B4: requests issued during an outage, then the server is back; ours against the usual tower assembly.

use std::collections::HashSet;
use std::future::{Ready, ready};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use connman_core::backoff::Constant;
use connman_core::error::{BoxError, LinkLost};
use connman_queue::queue::Queue;
use connman_queue::queue::QueueConfig;
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::ReconnectLayer;
use tower::Layer;
use tower::buffer::Buffer;
use tower::reconnect::Reconnect;
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceExt};

use crate::harness::{
    BenchError, BenchResult, Better, Mode, Pairs, Row, Scenario, Stats, fmt_ns, runtime,
};

/// The scenario.
pub(crate) const SCENARIO: Scenario = Scenario {
    id: "B4",
    title: "requests during an outage",
    method: "In-process mock transports, no sockets: a connector that is refused while the \"server\" is down and a \
             connection that fails once the network was cut after it was made; the server logs every sequence \
             number it receives. Each contender is connected, the network is cut, and one task issues the requests \
             in sequence order, evenly over the outage (one batch per millisecond, each response awaited in its \
             own task); then the network is restored. Reported: lost (never reached the server), duplicated, out \
             of order (adjacent inversions in the server log), each the worst over the rounds, and the time from \
             restore to the last outcome, the median over the rounds. Ours is `Queue` over `Reconnect` with \
             `Constant` backoff of 10 ms; the peer is `Retry(5 attempts)` over `Buffer(1024)` over tower's \
             `Reconnect`, the usual tower assembly. The ratio is delivered requests, ours / peer (∞ when the peer \
             delivers none).",
    run,
};

/// How many times the peer's policy retries a failed request.
const RETRIES: usize = 5;

fn run(mode: Mode) -> BenchResult<Vec<Row>> {
    let rt = runtime()?;
    let requests: u64 = mode.pick(1_000, 10_000);
    let outage = Duration::from_millis(mode.pick(100, 500));
    let bound = Duration::from_secs(10);
    rt.block_on(async move {
        let mut delivered = Pairs::default();
        let mut ours_worst = Outcome::default();
        let mut peer_worst = Outcome::default();
        let mut ours_resolve = Vec::new();
        let mut peer_resolve = Vec::new();
        for _ in 0..mode.rounds() {
            let net = Arc::new(Net::default());
            let o = measure(
                &net,
                ours(Connector::new(&net), requests)?,
                requests,
                outage,
                bound,
            )
            .await?;
            let net = Arc::new(Net::default());
            let p = measure(
                &net,
                peer_stack(Connector::new(&net)),
                requests,
                outage,
                bound,
            )
            .await?;
            delivered.push(o.delivered as f64, p.delivered as f64);
            ours_resolve.push(o.resolve_ns);
            peer_resolve.push(p.resolve_ns);
            ours_worst = ours_worst.worst(&o);
            peer_worst = peer_worst.worst(&p);
        }
        let ours_resolve = median(&ours_resolve);
        let met = ours_worst.lost == 0
            && ours_worst.duplicated == 0
            && ours_worst.out_of_order == 0
            && ours_resolve <= 50e6;
        Ok(vec![Row {
            scenario: format!(
                "B4 {requests} requests in a {} ms outage",
                outage.as_millis()
            ),
            ours: format!("Queue+Reconnect: {}", ours_worst.describe(ours_resolve)),
            peer: format!(
                "Retry({RETRIES})+Buffer(Reconnect): {}",
                peer_worst.describe(median(&peer_resolve))
            ),
            ratio: Stats::of(&delivered.ratios(Better::Higher)),
            reference: String::new(),
            target: "lost 0, dup 0, order kept, all resolved ≤ 50 ms after restore".to_owned(),
            met: Some(met),
        }])
    })
}

/// Ours: a `Queue` as large as the burst over our `Reconnect` with a fixed 10 ms backoff.
fn ours(
    connector: Connector,
    requests: u64,
) -> BenchResult<impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Send + 'static>
{
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder(())
            .backoff(Constant::new(Duration::from_millis(10)))
            .build()
            .map_err(|e| BenchError::new(format!("reconnect settings: {e}")))?,
    )
    .layer(connector);
    let capacity = usize::try_from(requests).map_err(|_| BenchError::new("too many requests"))?;
    let config = QueueConfig::builder()
        .capacity(capacity)
        .build()
        .map_err(|e| BenchError::new(format!("queue settings: {e}")))?;
    Ok(Queue::new(reconnect, config))
}

/// The usual tower assembly: retry a few times over a buffer over tower's `Reconnect`.
fn peer_stack(
    connector: Connector,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Send + 'static {
    Retry::new(
        Attempts(RETRIES),
        Buffer::new(Reconnect::new(connector, ()), 1024),
    )
}

/// What one contender did in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    failed: u64,
    resolve_ns: f64,
}

impl Outcome {
    /// The worst of both for every count.
    fn worst(&self, other: &Self) -> Self {
        Self {
            delivered: self.delivered.min(other.delivered),
            lost: self.lost.max(other.lost),
            duplicated: self.duplicated.max(other.duplicated),
            out_of_order: self.out_of_order.max(other.out_of_order),
            failed: self.failed.max(other.failed),
            resolve_ns: self.resolve_ns.max(other.resolve_ns),
        }
    }

    fn describe(&self, resolve_ns: f64) -> String {
        format!(
            "lost {}, dup {}, out of order {}, failed {}; all resolved {} after restore",
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.failed,
            fmt_ns(resolve_ns)
        )
    }
}

fn median(values: &[f64]) -> f64 {
    Stats::of(values).map_or(f64::NAN, |s| s.median)
}

/// Connects `svc`, cuts the network, issues `requests` over `outage`, restores it and waits for every outcome.
async fn measure<S>(
    net: &Arc<Net>,
    mut svc: S,
    requests: u64,
    outage: Duration,
    bound: Duration,
) -> BenchResult<Outcome>
where
    S: Service<u64, Response = u64, Future: Send + 'static> + Send + 'static,
    S::Error: Into<BoxError>,
{
    // One request while up, so that the link is established before the cut.
    let warm = async {
        svc.ready()
            .await
            .map_err(Into::into)?
            .call(u64::MAX)
            .await
            .map_err(Into::into)
    };
    tokio::time::timeout(bound, warm)
        .await?
        .map_err(|e| BenchError::new(format!("the first request failed: {e}")))?;
    net.log().clear();

    net.cut();
    let cut = Instant::now();
    let ticks = u64::try_from(outage.as_millis()).unwrap_or(1).max(1);
    let per_tick = requests.div_ceil(ticks);
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    let mut outcomes = Vec::with_capacity(usize::try_from(requests).unwrap_or(0));
    let mut seq = 0;
    let issue = async {
        while seq < requests {
            interval.tick().await;
            for _ in 0..per_tick.min(requests - seq) {
                let ready = svc
                    .ready()
                    .await
                    .map_err(|e| BenchError::new(format!("poll_ready failed: {}", e.into())))?;
                let response = ready.call(seq);
                outcomes.push(tokio::spawn(async move {
                    let ok = response.await.is_ok();
                    (ok, Instant::now())
                }));
                seq += 1;
            }
        }
        Ok::<(), BenchError>(())
    };
    tokio::time::timeout(bound, issue).await??;
    tokio::time::sleep_until((cut + outage).into()).await;
    net.restore();
    let restored = Instant::now();

    let mut failed = 0;
    let mut last = restored;
    let collect = async {
        for outcome in outcomes {
            let (ok, at) = outcome
                .await
                .map_err(|e| BenchError::new(format!("a request task failed: {e}")))?;
            failed += u64::from(!ok);
            last = last.max(at);
        }
        Ok::<(), BenchError>(())
    };
    tokio::time::timeout(bound, collect).await.map_err(|_| {
        BenchError::new("liveness: requests still unresolved long after the restore")
    })??;

    let log = net.log().clone();
    let distinct: HashSet<u64> = log.iter().copied().collect();
    Ok(Outcome {
        delivered: distinct.len() as u64,
        lost: requests - distinct.len() as u64,
        duplicated: (log.len() - distinct.len()) as u64,
        out_of_order: log.windows(2).filter(|w| w[1] < w[0]).count() as u64,
        failed,
        resolve_ns: last.duration_since(restored).as_secs_f64() * 1e9,
    })
}

/// The in-process network: whether the server is reachable, and every sequence number it received.
#[derive(Debug, Default)]
struct Net {
    down: AtomicBool,
    epoch: AtomicU64,
    log: Mutex<Vec<u64>>,
}

impl Net {
    /// Cuts every link and refuses new ones.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Accepts new links again.
    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connects to the in-process server: refused while the network is cut.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    net: Arc<Net>,
}

impl Connector {
    fn new(net: &Arc<Net>) -> Self {
        Self { net: net.clone() }
    }
}

impl Service<()> for Connector {
    type Response = Link;
    type Error = io::Error;
    type Future = Ready<Result<Link, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        if self.net.down.load(Ordering::SeqCst) {
            return ready(Err(io::ErrorKind::ConnectionRefused.into()));
        }
        ready(Ok(Link {
            net: self.net.clone(),
            epoch: self.net.epoch.load(Ordering::SeqCst),
        }))
    }
}

/// One in-process connection: broken once the network was cut after it was made. Clones are the same connection.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    net: Arc<Net>,
    epoch: u64,
}

impl Link {
    fn alive(&self) -> bool {
        self.net.epoch.load(Ordering::SeqCst) == self.epoch
    }
}

impl Service<u64> for Link {
    type Response = u64;
    type Error = LinkLost;
    type Future = Ready<Result<u64, LinkLost>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LinkLost>> {
        if self.alive() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(LinkLost::new()))
        }
    }

    fn call(&mut self, seq: u64) -> Self::Future {
        if !self.alive() {
            return ready(Err(LinkLost::new()));
        }
        if seq != u64::MAX {
            self.net.log().push(seq);
        }
        ready(Ok(seq))
    }
}

/// Retries a failed request up to a number of times, at once, as a plain tower policy does.
#[derive(Debug, Clone)]
struct Attempts(usize);

impl<E> Policy<u64, u64, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Ready<()>> {
        if result.is_err() && self.0 > 0 {
            self.0 -= 1;
            Some(ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, seq: &u64) -> Option<u64> {
        Some(*seq)
    }
}

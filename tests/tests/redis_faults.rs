//! A real redis-server under faults, through the full stack: `Queue → Reconnect → Heartbeat → PipelineConnector`
//! over TCP with a line codec (Redis answers the inline command `INCR k` with `:N`, `PING` with `+PONG`).
//!
//! * Killed with SIGKILL under pipelined `INCR` load, with the append-only file fsynced on every write, then
//!   restarted on the same port: every acknowledged increment survives, no increment the client was told was never
//!   sent happened, and no value is acknowledged twice:
//!   `acknowledged ≤ final counter ≤ acknowledged + maybe delivered`.
//! * Frozen with SIGSTOP: the kernel still accepts connections and bytes, so only the heartbeat finds the link dead;
//!   after SIGCONT the stack serves again.
//!
//! These use real time (a real server); every wait is bounded and the assertions are about outcomes, not speed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use connman_core::backoff::Constant;
use connman_core::error::BoxError;
use connman_core::outcome::Outcome;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatLayer, MakeHeartbeat};
use connman_queue::queue::{CallOptions, Queue, QueueConfig, QueueLayer};
use connman_queue::reconnect::{Reconnect, ReconnectConfig, ReconnectLayer};
use connman_tcp::TcpConnector;
use connman_tcp::pipeline::PipelineConnector;
use connman_tests::peers::Redis;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_util::codec::LinesCodec;
use tower::{Layer, ServiceExt};

/// The bound of every single wait on the server or the stack.
const WAIT: Duration = Duration::from_secs(20);

/// The bound on a phase of load: every write is fsynced before its answer, and an fsync on a disk shared with busy
/// builds can take seconds.
const PROGRESS_WAIT: Duration = Duration::from_secs(90);

/// Acknowledged INCRs between two kills.
const PER_PHASE: u64 = 300;

/// The longest reply line accepted.
const MAX_LINE: usize = 512;

type Make = PipelineConnector<TcpConnector, LinesCodec, String>;
type Link = Reconnect<MakeHeartbeat<Make, fn() -> String>, SocketAddr>;
type Stack = Queue<Link, String>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ping() -> String {
    "PING".to_owned()
}

/// The stack to `addr`, with its heartbeat's events.
fn stack(
    addr: SocketAddr,
    interval: Duration,
    ping_timeout: Duration,
) -> (Stack, broadcast::Receiver<HeartbeatEvent>) {
    let config = HeartbeatConfig::builder()
        .interval(interval)
        .timeout(ping_timeout)
        .build()
        .expect("valid heartbeat");
    let heartbeat = HeartbeatLayer::new(config, ping as fn() -> String);
    let beats = heartbeat.subscribe();
    let make: Make = PipelineConnector::new(
        TcpConnector::new().connect_timeout(Duration::from_secs(1)),
        LinesCodec::new_with_max_length(MAX_LINE),
    )
    .max_in_flight(64);
    let link = ReconnectLayer::new(
        ReconnectConfig::builder(addr)
            .backoff(Constant::new(ms(20)))
            .build()
            .expect("valid reconnect config"),
    )
    .layer(heartbeat.layer(make));
    let queue = QueueConfig::builder()
        .capacity(512)
        .max_wait(Duration::from_secs(10))
        .build()
        .expect("valid queue config");
    (QueueLayer::new(queue).layer(link), beats)
}

/// What the `INCR`s of a run came to.
#[derive(Debug, Default)]
struct Tally {
    /// The value of every acknowledged increment.
    acked: Vec<u64>,
    maybe_delivered: u64,
    /// Not sent, or expired in the queue: never executed.
    not_sent: u64,
    /// Answered with a Redis error (`-LOADING` while the file replays): not executed.
    refused: u64,
    /// Anything else: a broken promise.
    other: Vec<String>,
}

impl Tally {
    fn add(&mut self, result: Result<String, BoxError>) {
        match result {
            Ok(reply) => match reply.strip_prefix(':').map(str::parse::<u64>) {
                Some(Ok(n)) => self.acked.push(n),
                _ if reply.starts_with("-LOADING") => self.refused += 1,
                _ => self.other.push(format!("reply {reply:?}")),
            },
            Err(e) => match Outcome::of(&e) {
                Outcome::MaybeDelivered => self.maybe_delivered += 1,
                Outcome::NotSent | Outcome::Elapsed => self.not_sent += 1,
                other => self.other.push(format!("{other:?}: {e}")),
            },
        }
    }
}

/// Issues `INCR k` through `svc`, at most `window` unanswered, until `stop`; then waits for every outcome.
async fn incr_load(
    mut svc: Stack,
    window: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    acked: Arc<AtomicU64>,
) {
    let mut waiting = JoinSet::new();
    while !stop.load(Ordering::Acquire) {
        while waiting.try_join_next().is_some() {}
        if waiting.len() >= window {
            waiting.join_next().await;
            continue;
        }
        if ServiceExt::<String>::ready(&mut svc).await.is_err() {
            break;
        }
        let call = svc.call_with("INCR k".to_owned(), CallOptions::new());
        let (tally, acked) = (tally.clone(), acked.clone());
        waiting.spawn(async move {
            let result = call.await;
            if result.as_ref().is_ok_and(|r| r.starts_with(':')) {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            tally.lock().unwrap().add(result);
        });
    }
    while waiting.join_next().await.is_some() {}
}

/// Sends one inline command on a fresh connection and returns the first reply line, trimmed.
async fn command(addr: SocketAddr, cmd: &str) -> String {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(format!("{cmd}\r\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(&mut tcp).read_line(&mut reply).await?;
        Ok::<_, std::io::Error>(reply.trim_end().to_owned())
    };
    timeout(WAIT, exchange)
        .await
        .expect("redis answers in time")
        .expect("redis answers")
}

/// Waits (bounded) until `counter` reaches `target`.
async fn until_acked(counter: &AtomicU64, target: u64) {
    timeout(PROGRESS_WAIT, async {
        while counter.load(Ordering::Relaxed) < target {
            sleep(ms(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {target} INCRs acknowledged in time",
            counter.load(Ordering::Relaxed)
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_under_pipelined_incr_load_loses_no_acknowledged_incr() {
    const KILLS: u64 = 3;
    const CALLERS: usize = 4;
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let (svc, _beats) = stack(redis.addr(), ms(500), ms(250));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        callers.spawn(incr_load(
            svc.clone(),
            16,
            stop.clone(),
            tally.clone(),
            acked.clone(),
        ));
    }
    let started = StdInstant::now();
    for kill in 1..=KILLS {
        // Load in flight, then SIGKILL: no shutdown, no final write; only what was fsynced survives.
        until_acked(&acked, acked.load(Ordering::Relaxed) + PER_PHASE).await;
        redis.kill9().await;
        sleep(ms(100)).await;
        redis.restart().await;
        println!(
            "kill {kill}: {} acknowledged so far",
            acked.load(Ordering::Relaxed)
        );
    }
    // The stack serves the restarted server.
    until_acked(&acked, acked.load(Ordering::Relaxed) + PER_PHASE).await;
    stop.store(true, Ordering::Release);
    timeout(WAIT, async { while callers.join_next().await.is_some() {} })
        .await
        .expect("every INCR gets an outcome: nothing hangs");
    let stats = svc.stats();
    svc.close();

    let final_value: u64 = command(redis.addr(), "INCRBY k 0")
        .await
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .expect("a counter");
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let acked_n = tally.acked.len() as u64;
    let distinct: HashSet<u64> = tally.acked.iter().copied().collect();
    let highest = tally.acked.iter().copied().max().unwrap_or(0);
    println!(
        "{KILLS} kills in {:?}: {acked_n} acknowledged (highest {highest}), {} maybe delivered, {} not sent, {} refused while loading; final counter {final_value}; queue {stats:?}",
        started.elapsed(),
        tally.maybe_delivered,
        tally.not_sent,
        tally.refused,
    );
    assert!(tally.other.is_empty(), "broken outcomes: {:?}", tally.other);
    assert_eq!(
        distinct.len() as u64,
        acked_n,
        "an INCR value was acknowledged twice"
    );
    assert!(
        acked_n <= final_value,
        "an acknowledged INCR was lost: {acked_n} acknowledged, counter {final_value}"
    );
    assert!(
        highest <= final_value,
        "the counter went back below an acknowledged value"
    );
    assert!(
        final_value <= acked_n + tally.maybe_delivered,
        "an INCR reported never sent was executed: counter {final_value}, {acked_n} acknowledged + {} maybe delivered",
        tally.maybe_delivered
    );
    // The kills hit requests in flight: the run exercised the uncertain outcome, not only the happy path.
    assert!(tally.maybe_delivered > 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigstop_frozen_server_is_detected_by_the_heartbeat() {
    const INTERVAL: Duration = Duration::from_millis(300);
    const TIMEOUT: Duration = Duration::from_millis(150);
    let mut redis = Redis::start(&[]).await;
    let (mut svc, mut beats) = stack(redis.addr(), INTERVAL, TIMEOUT);
    let call = |svc: &mut Stack| {
        let call = svc.call_with("INCR k".to_owned(), CallOptions::new());
        async move { timeout(WAIT, call).await.expect("an outcome in time") }
    };
    for _ in 0..10 {
        ServiceExt::<String>::ready(&mut svc).await.unwrap();
        assert!(call(&mut svc).await.unwrap().starts_with(':'));
    }
    let pid = redis.child().id().expect("redis runs").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid}");
    };

    // Freeze it with a request in flight: the connection stays open and accepts bytes; nothing answers.
    while beats.try_recv().is_ok() {}
    signal("-STOP");
    let frozen = StdInstant::now();
    ServiceExt::<String>::ready(&mut svc).await.unwrap();
    let in_flight = call(&mut svc);
    let detected = timeout(WAIT, async {
        loop {
            match beats.recv().await {
                Ok(HeartbeatEvent::TimedOut { .. }) => return frozen.elapsed(),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the heartbeat stopped"),
            }
        }
    })
    .await
    .expect("the heartbeat finds the frozen server");
    let outcome = Outcome::of_result(&in_flight.await);
    assert_eq!(
        outcome,
        Outcome::MaybeDelivered,
        "the request on the frozen link ends, as maybe delivered"
    );
    println!(
        "frozen server detected after {detected:?} (interval {INTERVAL:?} + timeout {TIMEOUT:?})"
    );

    // Thawed, it answers again through a new connection.
    signal("-CONT");
    let thawed = StdInstant::now();
    let answer = timeout(WAIT, async {
        loop {
            ServiceExt::<String>::ready(&mut svc).await.unwrap();
            match call(&mut svc).await {
                Ok(answer) => return answer,
                // Calls that met a connection made while frozen end like the first one; try again.
                Err(e) => assert!(
                    matches!(
                        Outcome::of(&e),
                        Outcome::MaybeDelivered | Outcome::NotSent | Outcome::Elapsed
                    ),
                    "{e}"
                ),
            }
        }
    })
    .await
    .expect("the stack serves again once the server thaws");
    assert!(answer.starts_with(':'), "{answer}");
    println!("served again {:?} after SIGCONT", thawed.elapsed());
    svc.close();
}

//! `Queue` + `Reconnect` + `Heartbeat` over a pipelined line client, through a fault-injecting proxy.
//!
//! Clients issue numbered requests while faults hit the link: resets, a refusing listener, a server restart, a slow
//! link and a half-open one that only the heartbeat can notice. The on-up hook re-authenticates on every new
//! connection before queued requests go out. At the end the "nothing lost" checker compares what the server logged with
//! every outcome the clients saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use connman_core::Event;
use connman_core::backoff::Exponential;
use connman_core::error::BoxError;
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatLayer};
use connman_queue::queue::QueueConfig;
use connman_queue::queue::QueueLayer;
use connman_queue::reconnect::ReconnectConfig;
use connman_queue::reconnect::ReconnectLayer;
use connman_tcp::TcpConnector;
use connman_tcp::pipeline::PipelineConnector;
use connman_tests::checker::line::{EchoServer, parse_reply, request};
use connman_tests::checker::{ClientLog, Mode, Outcome, ServerLog, Violation, check};
use connman_tests::proxy::{FaultProxy, ProxyHandle};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::LinesCodec;
use tower::{Layer, Service, ServiceExt};

use crate::report::{Clock, Row};

/// Request clients are 1 ..= CLIENTS; client 0 carries the heartbeat's pings and the hook's auth lines.
const CLIENTS: u64 = 4;
const CONTROL_CLIENT: u64 = 0;
/// Requests each client keeps unanswered at most.
const WINDOW: usize = 16;
const MAX_LINE: usize = 1024;
/// Runs of the on-up hook, across reconnects.
static HOOK_RUNS: AtomicU64 = AtomicU64::new(0);

fn ping() -> String {
    request(CONTROL_CLIENT, 0, "ping").trim_end().to_owned()
}

/// The on-up hook: authenticate on the new connection before it serves queued requests.
async fn authenticate<C>(mut conn: C) -> Result<C, BoxError>
where
    C: Service<String, Response = String, Error = BoxError>,
{
    let run = HOOK_RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    let auth = request(CONTROL_CLIENT, run, "auth").trim_end().to_owned();
    conn.ready().await?.call(auth).await?;
    Ok(conn)
}

pub(crate) async fn run(clock: Clock, total: Duration) -> Result<Vec<Row>, String> {
    let server_log = ServerLog::new(4_000_000);
    let server = EchoServer::start(server_log.clone())
        .await
        .map_err(|e| e.to_string())?;
    let proxy = FaultProxy::start(server.addr())
        .await
        .map_err(|e| e.to_string())?;
    let faults = proxy.handle();
    clock.say(
        "stack",
        &format!("line echo server behind a fault proxy on {}", proxy.addr()),
    );

    let heartbeat_config = HeartbeatConfig::builder()
        .interval(Duration::from_millis(300))
        .timeout(Duration::from_millis(150))
        .build()
        .map_err(|e| e.to_string())?;
    let heartbeat = HeartbeatLayer::new(heartbeat_config, ping as fn() -> String);
    let beats = heartbeat.subscribe();
    let backoff = Exponential::builder()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(500))
        .build()
        .map_err(|e| e.to_string())?;
    let reconnect = ReconnectLayer::new(
        ReconnectConfig::builder(proxy.addr())
            .backoff(backoff)
            .on_up(authenticate)
            .build()
            .map_err(|e| e.to_string())?,
    );
    let events = reconnect.subscribe();
    let make = PipelineConnector::new(
        TcpConnector::new().connect_timeout(Duration::from_secs(1)),
        LinesCodec::new_with_max_length(MAX_LINE),
    )
    .max_in_flight(64);
    let queue_layer = QueueLayer::new(
        QueueConfig::builder()
            .capacity(512)
            .max_wait(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?,
    );
    let service = queue_layer.layer(reconnect.layer(heartbeat.layer(make)));
    let handle = service.handle();
    let reconnects = Arc::new(AtomicU64::new(0));
    let printer = tokio::spawn(print_events(clock.clone(), events, reconnects.clone()));

    // Clients.
    let client_log = ClientLog::new(4_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for client in 1..=CLIENTS {
        clients.spawn(run_client(
            service.clone(),
            client,
            client_log.clone(),
            stop.clone(),
        ));
    }

    // Faults, until a few seconds before the end.
    let until = Instant::now() + total.saturating_sub(Duration::from_secs(3));
    let mut injector = Injector {
        clock: clock.clone(),
        faults: faults.clone(),
        server,
        beats,
        done: 0,
    };
    sleep(Duration::from_millis(800)).await;
    while Instant::now() < until {
        injector.next().await;
        sleep(Duration::from_millis(900)).await;
    }
    stop.store(true, Ordering::Release);
    let mut latencies = Vec::new();
    let settled = timeout(Duration::from_secs(15), async {
        while let Some(result) = clients.join_next().await {
            if let Ok(mut l) = result {
                latencies.append(&mut l);
            }
        }
    })
    .await
    .is_ok();
    let stats = handle.stats();
    handle.close();
    printer.abort();

    // The checker: requests only, not the control client's pings and auth lines.
    let requests = ServerLog::new(4_000_000);
    for (client, seq) in server_log.entries() {
        if client != CONTROL_CLIENT {
            let _ = requests.record(client, seq);
        }
    }
    let report = check(&requests, &client_log, Mode::AtMostOnce);
    let counts = report.counts();
    let mut row = Row::new("queue stack");
    row.sent = counts.requests;
    row.ok = counts.ok;
    row.maybe_delivered = counts.maybe_delivered;
    row.not_sent = counts.not_sent + counts.expired + counts.cancelled;
    row.reconnects = reconnects.load(Ordering::Relaxed);
    row.latencies = latencies;
    for v in report.violations() {
        if matches!(v, Violation::LostAck { .. } | Violation::Pending { .. }) {
            row.lost += 1;
        } else {
            row.mismatched += 1;
        }
    }
    row.mismatched += counts.other;
    if !settled {
        row.lost += counts.pending.max(1);
    }
    row.note = format!(
        "{} faults, hook ran {}x, {} queued, {} replayed; checker {}",
        injector.done,
        HOOK_RUNS.load(Ordering::Relaxed),
        stats.queued,
        stats.replayed,
        if report.is_clean() {
            "clean"
        } else {
            "found violations"
        }
    );
    if !report.is_clean() {
        println!("{report}");
    }
    Ok(vec![row])
}

/// Issues numbered requests, at most [`WINDOW`] unanswered, until told to stop; returns the latencies of the answers.
async fn run_client<S>(
    mut svc: S,
    client: u64,
    log: ClientLog,
    stop: Arc<AtomicBool>,
) -> Vec<Duration>
where
    S: Service<String, Response = String, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut waiting = JoinSet::new();
    let mut latencies = Vec::new();
    let mut seq = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while !stop.load(Ordering::Acquire) {
        while let Some(Ok(Some(d))) = waiting.try_join_next() {
            latencies.push(d);
        }
        if waiting.len() >= WINDOW {
            if let Some(Ok(Some(d))) = waiting.join_next().await {
                latencies.push(d);
            }
            continue;
        }
        tick.tick().await;
        if svc.ready().await.is_err() {
            break;
        }
        seq += 1;
        log.issue(client, seq);
        let started = Instant::now();
        let call = svc.call(request(client, seq, "demo").trim_end().to_owned());
        let log = log.clone();
        waiting.spawn(async move {
            let result = call.await;
            let outcome = match &result {
                Ok(reply) if parse_reply(reply).ok() == Some((client, seq)) => Outcome::Ok,
                Ok(reply) => Outcome::Other(format!("wrong reply {reply:?}")),
                Err(_) => Outcome::of_result(&result),
            };
            let ok = outcome == Outcome::Ok;
            log.resolve(client, seq, outcome);
            ok.then(|| started.elapsed())
        });
    }
    while let Some(result) = waiting.join_next().await {
        if let Ok(Some(d)) = result {
            latencies.push(d);
        }
    }
    latencies
}

async fn print_events(
    clock: Clock,
    mut events: broadcast::Receiver<Event>,
    reconnects: Arc<AtomicU64>,
) {
    while let Ok(event) = events.recv().await {
        match &event {
            Event::Connected { first: false, .. } => {
                reconnects.fetch_add(1, Ordering::Relaxed);
                clock.say(
                    "stack",
                    "reconnected; auth hook done, queued requests go out",
                );
            }
            Event::Connected { first: true, .. } => clock.say("stack", "connected; auth hook done"),
            Event::Disconnected { .. } | Event::ConnectFailed { .. } => {
                clock.say("stack", &event.to_string())
            }
            _ => {}
        }
    }
}

/// Injects one fault after another, in a cycle.
struct Injector {
    clock: Clock,
    faults: ProxyHandle,
    server: EchoServer,
    beats: broadcast::Receiver<HeartbeatEvent>,
    done: u64,
}

impl Injector {
    async fn next(&mut self) {
        let say = |what: &str| self.clock.say("stack", &format!("fault: {what}"));
        match self.done % 5 {
            0 => {
                say("reset every connection");
                self.faults.reset_now();
            }
            1 => {
                say("reset every connection and refuse new ones for 500 ms");
                self.faults.refuse().await;
                self.faults.reset_now();
                sleep(Duration::from_millis(500)).await;
                let _ = self.faults.restore().await;
            }
            2 => {
                say("restart the server");
                self.server.stop().await;
                sleep(Duration::from_millis(300)).await;
                let _ = self.server.restart().await;
            }
            3 => {
                say("slow link, 20 ms per chunk, for 1 s");
                self.faults.delay(Duration::from_millis(20));
                sleep(Duration::from_secs(1)).await;
                self.faults.heal();
            }
            _ => {
                say("half-open link: nothing gets through, the socket stays open");
                self.beats = self.beats.resubscribe();
                self.faults.blackhole();
                let noticed = timeout(Duration::from_secs(3), async {
                    loop {
                        match self.beats.recv().await {
                            Ok(HeartbeatEvent::TimedOut { .. }) => break,
                            Err(broadcast::error::RecvError::Closed) => break,
                            _ => {}
                        }
                    }
                })
                .await;
                self.faults.heal();
                if noticed.is_ok() {
                    self.clock.say(
                        "stack",
                        "heartbeat: no pong in time, the link is dead; reconnecting",
                    );
                }
            }
        }
        self.done += 1;
    }
}

//! Reconnecting WebSocket clients (`WsClient`) drained off one server come back to another, spread out.
//!
//! Two servers (connman-ws's `accept` into a `Group`). Forty `WsClient`s connect to the first and each sends a numbered
//! message every 200 ms. A third of the way in, the address they connect to is switched to the second server (as a
//! load balancer would) and the first drains at 20/s with close code 4200, advising its clients to come back at once
//! (the drain's pace spreads them already; a close without that advice makes each client wait a random delay of up
//! to 2 s): the second server sees them arrive at the drain's pace, and sends made meanwhile wait in each client's
//! queue. The servers count what they receive; the summary compares it with what the clients were told.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use connman_core::error::{BoxError, MaybeDelivered, NotSent};
use connman_pool::drain::DrainConfig;
use connman_tcp::HostPort;
use connman_tests::window::most_within;
use connman_tests::ws::CountingServer;
use connman_ws::client::{ClientEvent, CloseAction, Message, WsClient};
use connman_ws::{AcceptConfig, WsConfig};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tower::service_fn;

use crate::report::{Clock, Row};

const CLIENTS: usize = 40;
const DRAIN_PER_SECOND: u32 = 20;
const EVERY: Duration = Duration::from_millis(200);

async fn server() -> Result<CountingServer, String> {
    CountingServer::start(AcceptConfig::new(WsConfig::default()).namespace("clients"))
        .await
        .map_err(|e| e.to_string())
}

/// What the clients were told.
#[derive(Default)]
struct Outcomes {
    sent: AtomicU64,
    ok: AtomicU64,
    maybe: AtomicU64,
    not_sent: AtomicU64,
    other: AtomicU64,
    come_backs: AtomicU64,
}

pub(crate) async fn run(clock: Clock, total: Duration) -> Result<Vec<Row>, String> {
    let first = server().await?;
    let second = server().await?;
    let target = Arc::new(AtomicU16::new(first.port()));
    let outcomes = Arc::new(Outcomes::default());
    let until = Instant::now() + total.saturating_sub(Duration::from_secs(2));

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(client(
            i,
            target.clone(),
            outcomes.clone(),
            until,
            clock.clone(),
        )));
    }
    timeout(Duration::from_secs(10), async {
        while first.group().namespace_len("clients") < CLIENTS {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| "the clients did not connect in time")?;
    clock.say(
        "ws client",
        &format!("{CLIENTS} WsClients connected to server A, sending every {EVERY:?}"),
    );

    sleep(total / 3).await;
    target.store(second.port(), Ordering::SeqCst);
    let config = DrainConfig::max_per_second(DRAIN_PER_SECOND).map_err(|e| e.to_string())?;
    clock.say(
        "ws client",
        &format!(
            "new connections go to server B; A drains at {DRAIN_PER_SECOND}/s with {}",
            config.code()
        ),
    );
    let started = Instant::now();
    let drain = tokio::spawn(first.group().drain(config).map_err(|e| e.to_string())?);
    timeout(Duration::from_secs(20), async {
        while second.accepted() < CLIENTS {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| "the clients did not all come back to server B")?;
    let drained = drain.await.map_err(|e| e.to_string())?;
    let mut back: Vec<Duration> = second
        .accepts()
        .iter()
        .map(|t| t.saturating_duration_since(started))
        .collect();
    back.sort();
    let last = back.last().copied().unwrap_or_default();
    let peak = most_within(&back, Duration::from_millis(100));
    // A line per 500 ms of how many came back, to show the spread.
    let mut spread = String::new();
    for slot in 0..=(last.as_millis() / 500) {
        let n = back.iter().filter(|d| d.as_millis() / 500 == slot).count();
        spread.push_str(&format!(" {n}"));
    }
    clock.say(
        "ws client",
        &format!(
            "A closed {} with 4200; all {CLIENTS} back on B {:.2} s after the drain began; per 500 ms:{spread}",
            drained.closed,
            last.as_secs_f64()
        ),
    );

    for c in clients {
        c.await.map_err(|e| e.to_string())?;
    }
    let received = first.received() + second.received();
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let mut row = Row::new("ws client");
    row.sent = get(&outcomes.sent);
    row.ok = get(&outcomes.ok);
    row.maybe_delivered = get(&outcomes.maybe);
    row.not_sent = get(&outcomes.not_sent);
    // Told written (or maybe) but never counted by a server, or failed for another reason.
    row.lost = (row.ok + row.maybe_delivered)
        .saturating_sub(received)
        .max(get(&outcomes.other));
    row.mismatched = received.saturating_sub(row.ok + row.maybe_delivered);
    row.reconnects = get(&outcomes.come_backs);
    row.note = format!(
        "drained at {DRAIN_PER_SECOND}/s (≤{} per 100 ms), peak {peak} per 100 ms back on B, all back in {:.2} s",
        DRAIN_PER_SECOND.div_ceil(10),
        last.as_secs_f64()
    );
    Ok(vec![row])
}

async fn client(
    i: usize,
    target: Arc<AtomicU16>,
    outcomes: Arc<Outcomes>,
    until: Instant,
    clock: Clock,
) {
    let transport = service_fn(move |_: HostPort| {
        let port = target.load(Ordering::SeqCst);
        async move { Ok::<_, BoxError>(TcpStream::connect(("127.0.0.1", port)).await?) }
    });
    let Ok((mut client, mut incoming)) = WsClient::builder("ws://demo.invalid/clients")
        .transport(transport)
        .build()
    else {
        outcomes.other.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let mut events = client.events();
    let watcher = {
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let ClientEvent::PeerClosed {
                    action: CloseAction::ComeBack { after },
                    close,
                } = event
                {
                    outcomes.come_backs.fetch_add(1, Ordering::Relaxed);
                    if i % 10 == 0 {
                        clock.say(
                            "ws client",
                            &format!(
                                "client {i}: closed with {}, back in {:.0} ms",
                                close.code(),
                                after.as_secs_f64() * 1e3
                            ),
                        );
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(EVERY);
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        outcomes.sent.fetch_add(1, Ordering::Relaxed);
        let counter = match client.send(Message::from(format!("{i} {n}"))).await {
            Ok(()) => &outcomes.ok,
            Err(e) if e.is::<MaybeDelivered>() => &outcomes.maybe,
            Err(e) if e.is::<NotSent>() => &outcomes.not_sent,
            Err(_) => &outcomes.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    client.close().await;
    watcher.abort();
}

//! WebSocket members in namespaces over real loopback sockets: broadcasts, then a drain at a global rate.
//!
//! The server accepts WebSocket connections (connman-ws) and puts each in a `Group` under the namespace and id of its
//! path, `/<namespace>/<id>`. Clients connect through `WsConnector<TcpConnector>`, check that every broadcast arrives,
//! in order, and record when their close arrives and with which code.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::member::CloseCode;
use connman_pool::drain::DrainConfig;
use connman_pool::group::Group;
use connman_tcp::TcpConnector;
use connman_tests::window::most_within;
use connman_tests::ws::{CountingServer, Counts};
use connman_ws::tungstenite::http::StatusCode;
use connman_ws::{AcceptConfig, Admission, PeerClose, Received, WsConfig, WsConnector};
use futures_util::StreamExt;
use tokio::time::{Instant, sleep, timeout};
use tower::ServiceExt;

use crate::report::{Clock, Row};

/// Members per namespace.
const NAMESPACES: [(&str, usize); 2] = [("radio:5ghz", 36), ("radio:40ghz", 24)];
/// The drain rate, across both namespaces.
const DRAIN_PER_SECOND: u32 = 20;

pub(crate) async fn run(clock: Clock, total: Duration) -> Result<Vec<Row>, String> {
    let group = Group::builder()
        .on_empty({
            let clock = clock.clone();
            move |ns| clock.say("group", &format!("namespace {ns} is empty"))
        })
        .build()
        .map_err(|e| e.to_string())?;
    // Each connection joins the namespace and id of its path, `/<namespace>/<id>`.
    let config = AcceptConfig::new(WsConfig::default()).admit(|handshake| {
        let path = handshake.path().strip_prefix('/').unwrap_or_default();
        match path.split_once('/') {
            Some((ns, id)) => Admission::join_as(ns, id),
            None => Admission::refuse(StatusCode::NOT_FOUND),
        }
    });
    let server = CountingServer::with_group(group.clone(), config, Counts::new())
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.addr();

    // Clients join: each sends "<namespace> <id>" first.
    let mut clients = Vec::new();
    for (ns, n) in NAMESPACES {
        for i in 0..n {
            let id = format!("{}-{i}", &ns[6..]);
            clients.push(tokio::spawn(client(addr, ns.to_owned(), id)));
        }
    }
    let members: usize = NAMESPACES.iter().map(|(_, n)| n).sum();
    timeout(Duration::from_secs(5), async {
        while group.len() < members {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| "members did not join in time")?;
    clock.say(
        "group",
        &format!("{members} members joined {} namespaces", NAMESPACES.len()),
    );

    // Broadcast until a few seconds before the end; the first member of each namespace is the sender and is excepted.
    let until = Instant::now() + total.saturating_sub(Duration::from_secs(5));
    let mut rounds = 0u64;
    let mut dropped = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until {
        tick.tick().await;
        rounds += 1;
        for (ns, _) in NAMESPACES {
            let sender = format!("{}-0", &ns[6..]);
            let summary = group.broadcast(
                ns,
                Bytes::from(format!("{ns} {rounds}")),
                &[sender.as_str()],
            );
            dropped += summary.dropped;
        }
    }
    clock.say(
        "group",
        &format!(
            "{rounds} broadcasts to each namespace, {dropped} dropped by slow-consumer policy"
        ),
    );

    // Drain: stop admitting, then close everyone at a global rate.
    let config = DrainConfig::max_per_second(DRAIN_PER_SECOND).map_err(|e| e.to_string())?;
    clock.say(
        "group",
        &format!(
            "drain at {DRAIN_PER_SECOND}/s, close code {}",
            config.code()
        ),
    );
    let drain = group.drain(config).map_err(|e| e.to_string())?;
    let mut progress = drain.progress();
    let printer = {
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut said = 0;
            while progress.changed().await.is_ok() {
                let p = *progress.borrow_and_update();
                if p.closed != said && (p.closed == p.total || p.closed % 20 == 0) {
                    said = p.closed;
                    clock.say("group", &format!("drained {}/{}", p.closed, p.total));
                }
            }
        })
    };
    let started = Instant::now();
    let done = timeout(Duration::from_secs(30), drain)
        .await
        .map_err(|_| "the drain did not finish")?;
    let took = started.elapsed();
    printer.abort();

    let mut row = Row::new("ws group");
    let mut closes: Vec<Instant> = Vec::new();
    for c in clients {
        let report = c.await.map_err(|e| e.to_string())?;
        let expected = if report.sender { 0 } else { rounds };
        row.sent += expected;
        row.ok += report.received.min(expected);
        row.lost += expected.saturating_sub(report.received);
        row.mismatched += report.out_of_order;
        match report.close {
            Some((code, at)) if code == CloseCode::RECONNECT.0 => closes.push(at),
            _ => row.mismatched += 1,
        }
    }
    closes.sort();
    let max_window = most_within(&closes, Duration::from_secs(1));
    let spread = match (closes.first(), closes.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    // The drain begins one close every 1/R s, so N closes span (N − 1)/R seconds.
    let rate = if spread.is_zero() {
        0.0
    } else {
        closes.len().saturating_sub(1) as f64 / spread.as_secs_f64()
    };
    // The schedule begins at most R closes in any 1 s window. The clients see each close a few milliseconds after it
    // begins, and R + 1 closes of the schedule span exactly 1 s, so that jitter can show one more: allow exactly that.
    let rate_error = (rate - f64::from(DRAIN_PER_SECOND)).abs() / f64::from(DRAIN_PER_SECOND);
    if max_window > DRAIN_PER_SECOND as usize + 1 || rate_error > 0.05 {
        row.mismatched += 1;
    }
    row.note = format!(
        "drained {} in {:.2} s at {DRAIN_PER_SECOND}/s (measured {rate:.1}/s, max {max_window} closes in any 1 s)",
        done.closed,
        took.as_secs_f64()
    );
    Ok(vec![row])
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientReport {
    sender: bool,
    received: u64,
    out_of_order: u64,
    close: Option<(u16, Instant)>,
}

async fn client(addr: std::net::SocketAddr, ns: String, id: String) -> ClientReport {
    let mut report = ClientReport {
        sender: id.ends_with("-0"),
        ..ClientReport::default()
    };
    let connector = WsConnector::new(TcpConnector::new(), WsConfig::default());
    let Ok(mut ws) = connector.oneshot(format!("ws://{addr}/{ns}/{id}")).await else {
        return report;
    };
    let last = Arc::new(Mutex::new(0u64));
    while let Some(Ok(received)) = ws.next().await {
        if let Received::Close(close) = received {
            report.close = close.map(|PeerClose { code, .. }| (code.get(), Instant::now()));
            break;
        }
        let seq = received
            .into_bytes()
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| {
                s.rsplit_once(' ')
                    .map(|(n, seq)| (n.to_owned(), seq.to_owned()))
            })
            .filter(|(n, _)| *n == ns)
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        match seq {
            Some(seq) if seq == *last + 1 => {
                *last = seq;
                report.received += 1;
            }
            _ => report.out_of_order += 1,
        }
    }
    report
}

//! Settings from the fuzzer into every config builder but backoff's (`backoff_config` has those): `WsConfig`,
//! `QueueConfig`, `HeartbeatConfig`, `ReconnectConfig`, `DrainConfig` and `WsClientBuilder`.
//!
//! Each build must agree with the rules its documentation states: it fails with `InvalidConfig` exactly when a rule
//! is broken, and otherwise gives a config that holds the values it was given. Then each config is put to use for a
//! moment, with paused time (a connection, a ping, a call, a drain, a client that connects once), and nothing may
//! panic: a value the builder accepts, durations near `Duration::MAX` and sizes near `usize::MAX` included, must be
//! one the code can run with.
#![no_main]

use std::future::{Ready, poll_fn, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::Arbitrary;
use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use connman_fuzz::{ScriptedServer, Transport, run};
use connman_pool::drain::DrainConfig;
use connman_pool::group::{Group, channel};
use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
use connman_queue::queue::{Queue, QueueConfig};
use connman_queue::reconnect::ReconnectConfig;
use connman_ws::{MessageKind, WsClient, WsConfig, WsConnector};
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use tower_service::Service;

/// A size: small, near a bound, or anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Size {
    Small(u8),
    Any(usize),
    NearMax(u8),
}

impl Size {
    fn get(self) -> usize {
        match self {
            Self::Small(n) => usize::from(n),
            Self::Any(n) => n,
            Self::NearMax(n) => usize::MAX - usize::from(n),
        }
    }
}

/// A duration: short, anything, or near `Duration::MAX`.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Span {
    Millis(u16),
    Any(Duration),
    NearMax(u8),
}

impl Span {
    fn get(self) -> Duration {
        match self {
            Self::Millis(ms) => Duration::from_millis(u64::from(ms)),
            Self::Any(d) => d,
            Self::NearMax(n) => Duration::MAX - Duration::from_nanos(u64::from(n)),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Builder {
    Ws {
        read_buffer: Size,
        write_buffer: Size,
        max_write_buffer: Size,
        max_message: Size,
        heartbeat: Option<(Span, Span)>,
        handshake: Span,
        close: Span,
        text: bool,
    },
    Queue {
        capacity: Size,
        max_weight: Size,
        max_wait: Span,
        max_replays: u32,
        reject_when_full: bool,
    },
    Heartbeat {
        interval: Span,
        timeout: Span,
    },
    Reconnect {
        hook_timeout: Span,
        settle_timeout: Span,
        min_uptime: Span,
        first_attempt_fatal: bool,
    },
    Drain {
        per_second: Option<u32>,
        window: Span,
        code: u16,
        reason: String,
        members: u8,
    },
    Client {
        url: bool,
        heartbeat: Option<(Span, Span)>,
        come_back: Span,
        hook_timeout: Span,
        min_uptime: Span,
        queue_capacity: Size,
        max_wait: Span,
        max_replays: u32,
        inbound_capacity: Size,
        max_message: Size,
        handshake: Span,
        close: Span,
        request_timeout: Span,
    },
}

fuzz_target!(|builder: Builder| {
    match builder {
        Builder::Ws {
            read_buffer,
            write_buffer,
            max_write_buffer,
            max_message,
            heartbeat,
            handshake,
            close,
            text,
        } => {
            let (read_buffer, write_buffer, max_write_buffer, max_message) = (
                read_buffer.get(),
                write_buffer.get(),
                max_write_buffer.get(),
                max_message.get(),
            );
            let heartbeat = heartbeat.map(|(i, t)| (i.get(), t.get()));
            let (handshake, close) = (handshake.get(), close.get());
            let kind = if text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            let valid = (1..=WsConfig::MAX_ALLOCATION).contains(&read_buffer)
                && max_write_buffer > write_buffer
                && (1..=WsConfig::MAX_ALLOCATION).contains(&max_message)
                && !handshake.is_zero()
                && !close.is_zero()
                && heartbeat.is_none_or(|(i, t)| !t.is_zero() && t < i);
            let built = WsConfig::builder()
                .read_buffer_size(read_buffer)
                .write_buffer_size(write_buffer)
                .max_write_buffer_size(max_write_buffer)
                .max_message_size(max_message)
                .heartbeat(heartbeat)
                .handshake_timeout(handshake)
                .close_timeout(close)
                .message_kind(kind)
                .build();
            assert_eq!(built.is_ok(), valid, "{built:?}");
            let Ok(config) = built else { return };
            assert_eq!(
                (
                    config.read_buffer_size(),
                    config.write_buffer_size(),
                    config.max_write_buffer_size(),
                    config.max_message_size(),
                    config.max_frame_size(),
                    config.heartbeat(),
                    config.handshake_timeout(),
                    config.close_timeout(),
                    config.message_kind(),
                ),
                (
                    read_buffer,
                    write_buffer,
                    max_write_buffer,
                    max_message,
                    max_message,
                    heartbeat,
                    handshake,
                    close,
                    kind,
                )
            );
            // A connection with it: the handshake, then a server that hangs up at once.
            let mut connector = WsConnector::new(
                Transport(Some(ScriptedServer::new(Vec::new(), Vec::new()))),
                config,
            );
            run(async move {
                let _ = poll_fn(|cx| Service::<&str>::poll_ready(&mut connector, cx)).await;
                if let Ok(mut ws) = connector.call("ws://example.invalid/").await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
        Builder::Queue {
            capacity,
            max_weight,
            max_wait,
            max_replays,
            reject_when_full,
        } => {
            let (capacity, max_weight, max_wait) =
                (capacity.get(), max_weight.get(), max_wait.get());
            // The capacity's documented ceiling: what one handle can count, 2^31 - 1.
            let valid =
                (1..=(1 << 31) - 1).contains(&capacity) && max_weight > 0 && !max_wait.is_zero();
            let mut builder = QueueConfig::<u32>::builder()
                .capacity(capacity)
                .max_weight(max_weight)
                .max_wait(max_wait)
                .max_replays(max_replays);
            if reject_when_full {
                builder = builder.reject_when_full();
            }
            let built = builder.build();
            assert_eq!(built.is_ok(), valid, "{built:?}");
            let Ok(config) = built else { return };
            assert_eq!(
                (
                    config.capacity(),
                    config.max_weight(),
                    config.max_wait(),
                    config.max_replays(),
                    config.rejects_when_full()
                ),
                (
                    capacity,
                    max_weight,
                    max_wait,
                    max_replays,
                    reject_when_full
                )
            );
            run(async move {
                let mut queue = Queue::new(Echo, config);
                poll_fn(|cx| queue.poll_ready(cx))
                    .await
                    .expect("an empty queue is ready");
                assert_eq!(queue.call(7).await.expect("the echo answers"), 7);
            });
        }
        Builder::Heartbeat { interval, timeout } => {
            let (interval, timeout) = (interval.get(), timeout.get());
            let built = HeartbeatConfig::builder()
                .interval(interval)
                .timeout(timeout)
                .build();
            if interval.is_zero() {
                let config = built.expect("an interval of zero turns pings off");
                assert!(!config.is_enabled());
                return;
            }
            assert_eq!(
                built.is_ok(),
                !timeout.is_zero() && timeout < interval,
                "{built:?}"
            );
            let Ok(config) = built else { return };
            assert!(config.is_enabled());
            assert_eq!((config.interval(), config.timeout()), (interval, timeout));
            // A few pings to a link that always answers.
            run(async move {
                let layer = HeartbeatLayer::new(config, || 0u32);
                let link = layer.wrap(Echo);
                tokio::time::sleep(interval.saturating_mul(3).min(Duration::from_secs(600))).await;
                assert!(!link.is_dead(), "a link that answers every ping died");
            });
        }
        Builder::Reconnect {
            hook_timeout,
            settle_timeout,
            min_uptime,
            first_attempt_fatal,
        } => {
            let (hook_timeout, settle_timeout) = (hook_timeout.get(), settle_timeout.get());
            let built = ReconnectConfig::builder("example.invalid:1")
                .hook_timeout(hook_timeout)
                .settle_timeout(settle_timeout)
                .min_uptime(min_uptime.get())
                .first_attempt_fatal(first_attempt_fatal)
                .build();
            assert_eq!(
                built.is_ok(),
                !hook_timeout.is_zero() && !settle_timeout.is_zero(),
                "{built:?}"
            );
        }
        Builder::Drain {
            per_second,
            window,
            code,
            reason,
            members,
        } => {
            let window = window.get();
            let built = match per_second {
                Some(n) => {
                    let built = DrainConfig::max_per_second(n);
                    assert_eq!(built.is_ok(), n > 0);
                    if let Ok(config) = &built {
                        assert_eq!(config.get_max_per_second(), Some(n));
                    }
                    built
                }
                None => {
                    let built = DrainConfig::over(window);
                    assert_eq!(built.is_ok(), !window.is_zero());
                    if let Ok(config) = &built {
                        assert_eq!(config.get_max_per_second(), None);
                    }
                    built
                }
            };
            let Ok(config) = built else { return };
            let config = config
                .with_code(CloseCode(code))
                .with_reason(reason.clone());
            assert_eq!(
                (config.code(), config.reason()),
                (CloseCode(code), reason.as_str())
            );
            // Drain a few members: all close, within the documented time.
            let mut members = usize::from(members % 8);
            let limit = match config.get_max_per_second() {
                // The k-th close (from 0) begins k / r seconds in.
                Some(r) => Duration::from_secs_f64(members.saturating_sub(1) as f64 / f64::from(r)),
                // Member i of n closes at i * window / n: within the window.
                None => window,
            };
            if limit > Duration::from_secs(1800) {
                // Longer than the scenario may take in virtual time: only the first close, due at once.
                members = members.min(1);
            }
            run(async move {
                let group = Group::new();
                let mut peers = Vec::new();
                for i in 0..members {
                    let (member, peer) = channel(4);
                    group
                        .add(if i % 2 == 0 { "a" } else { "b" }, i.to_string(), member)
                        .expect("a new member");
                    peers.push(peer);
                }
                let start = tokio::time::Instant::now();
                let report = group.drain(config.clone()).expect("a first drain").await;
                assert_eq!((report.total, report.closed), (members, members));
                assert!(
                    start.elapsed() <= limit.saturating_add(Duration::from_millis(1)),
                    "{:?} > {limit:?}",
                    start.elapsed()
                );
                assert!(group.is_empty());
            });
        }
        Builder::Client {
            url,
            heartbeat,
            come_back,
            hook_timeout,
            min_uptime,
            queue_capacity,
            max_wait,
            max_replays,
            inbound_capacity,
            max_message,
            handshake,
            close,
            request_timeout,
        } => {
            let heartbeat = heartbeat.map(|(i, t)| (i.get(), t.get()));
            let (hook_timeout, queue_capacity, max_wait, inbound_capacity, max_message) = (
                hook_timeout.get(),
                queue_capacity.get(),
                max_wait.get(),
                inbound_capacity.get(),
                max_message.get(),
            );
            let (handshake, close, request_timeout) =
                (handshake.get(), close.get(), request_timeout.get());
            let valid = url
                && heartbeat.is_none_or(|(i, t)| !t.is_zero() && t < i)
                && !hook_timeout.is_zero()
                && (1..=(1 << 31) - 1).contains(&queue_capacity)
                && !max_wait.is_zero()
                && (1..=usize::MAX >> 3).contains(&inbound_capacity)
                && (1..=WsConfig::MAX_ALLOCATION).contains(&max_message)
                && !handshake.is_zero()
                && !close.is_zero()
                && !request_timeout.is_zero();
            run(async move {
                let built = WsClient::builder(if url {
                    "ws://example.invalid/feed"
                } else {
                    "not a url"
                })
                .transport(Transport(Some(ScriptedServer::new(Vec::new(), Vec::new()))))
                .ping(heartbeat)
                .come_back_within(come_back.get())
                .hook_timeout(hook_timeout)
                .min_uptime(min_uptime.get())
                .queue_capacity(queue_capacity)
                .max_wait(max_wait)
                .max_replays(max_replays)
                .inbound_capacity(inbound_capacity)
                .max_message_size(max_message)
                .handshake_timeout(handshake)
                .close_timeout(close)
                .request_timeout(request_timeout)
                .build();
                assert_eq!(built.is_ok(), valid, "{:?}", built.as_ref().err());
                let Ok((client, _incoming)) = built else {
                    return;
                };
                // It connects once (the server hangs up at once), then every reconnect is refused.
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.close().await;
                assert!(client.is_closed());
            });
        }
    }
});

/// A link that answers every request with itself.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = BoxError;
    type Future = Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        ready(Ok(req))
    }
}

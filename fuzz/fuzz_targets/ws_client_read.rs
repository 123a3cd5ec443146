//! The WebSocket client's read path: after a valid handshake (or, now and then, a broken one), every byte the server
//! sends comes from the fuzzer, as structured frames (fragments, control frames, close payloads, invalid UTF-8,
//! masked or oversized frames, lengths that lie) followed by raw bytes, cut anywhere, delivered in whatever chunks and
//! at whatever moments the script says. Both the plain client stream (`WsConnector` → `WsStream`) and the reconnecting
//! `WsClient` (its `Incoming`) are driven to their end, with paused time.
//!
//! Every item ends typed: a message no larger than the configured limit, the server's close, or one error of a known
//! type after which the stream ends; the reconnecting client ends too (its next connect is refused and fatal), and a
//! send after its end fails with a typed error. Nothing panics and nothing hangs.
#![no_main]

use std::future::poll_fn;
use std::time::Duration;

use arbitrary::Arbitrary;
use connman_core::error::{BoxError, Closed, LinkLost, NotSent};
use connman_core::lifecycle::FailureKind;
use connman_fuzz::{Frame, ScriptedServer, Transport, run};
use connman_queue::reconnect::FatalConnect;
use connman_ws::client::ClosedByPeer;
use connman_ws::error::{InvalidUtf8, MessageTooBig, PongTimeout, ProtocolViolation};
use connman_ws::{Received, WsClient, WsConfig, WsConnector};
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use tower_service::Service;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Drive the reconnecting `WsClient` instead of the plain stream.
    reconnecting: bool,
    /// Below 16: answer the handshake with `answer` instead of a valid `101`.
    handshake: u8,
    answer: Vec<u8>,
    /// The largest message accepted, in bytes (small, so that 1009 is reached).
    max_message_size: u16,
    read_buffer_size: u16,
    /// Ping interval and pong timeout, in milliseconds; the timeout must stay below the interval.
    heartbeat: Option<(u32, u32)>,
    /// Huge durations too: nothing may overflow.
    extreme_heartbeat: bool,
    close_timeout_ms: u32,
    frames: Vec<Frame>,
    tail: Vec<u8>,
    /// Cut the server's bytes here (the connection ends mid-frame).
    cut: Option<u16>,
    script: Vec<u8>,
}

/// Whether a read error is one of the typed errors the receiver documents.
fn typed_read_error(err: &BoxError) -> bool {
    err.is::<MessageTooBig>()
        || err.is::<InvalidUtf8>()
        || err.is::<ProtocolViolation>()
        || err.is::<PongTimeout>()
        || err.is::<LinkLost>()
        || err.is::<Closed>()
}

fuzz_target!(|input: Input| {
    let mut bytes = Vec::new();
    for frame in &input.frames {
        frame.encode(&mut bytes);
    }
    bytes.extend_from_slice(&input.tail);
    if let Some(cut) = input.cut {
        bytes.truncate(usize::from(cut));
    }
    let server = if input.handshake < 16 {
        ScriptedServer::with_answer(input.answer, bytes, input.script)
    } else {
        ScriptedServer::new(bytes, input.script)
    };
    let max = usize::from(input.max_message_size).max(1);
    let heartbeat = input.heartbeat.map(|(interval, timeout)| {
        if input.extreme_heartbeat {
            (Duration::MAX, Duration::from_millis(u64::from(timeout)))
        } else {
            (
                Duration::from_millis(u64::from(interval)),
                Duration::from_millis(u64::from(timeout)),
            )
        }
    });
    let close_timeout = if input.extreme_heartbeat {
        Duration::MAX
    } else {
        Duration::from_millis(u64::from(input.close_timeout_ms))
    };
    if input.reconnecting {
        client(server, max, heartbeat, close_timeout);
    } else {
        stream(
            server,
            max,
            usize::from(input.read_buffer_size),
            heartbeat,
            close_timeout,
        );
    }
});

/// The plain client stream, read to its end.
fn stream(
    server: ScriptedServer,
    max: usize,
    read_buffer: usize,
    heartbeat: Option<(Duration, Duration)>,
    close_timeout: Duration,
) {
    let Ok(config) = WsConfig::builder()
        .max_message_size(max)
        .read_buffer_size(read_buffer)
        .heartbeat(heartbeat)
        .close_timeout(close_timeout)
        .build()
    else {
        return;
    };
    let mut connector = WsConnector::new(Transport(Some(server)), config);
    run(async move {
        if poll_fn(|cx| Service::<&str>::poll_ready(&mut connector, cx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(mut ws) = connector.call("ws://example.invalid/feed").await else {
            return;
        };
        while let Some(item) = ws.next().await {
            match item {
                Ok(Received::Text(text)) => assert!(text.len() <= max, "{} > {max}", text.len()),
                Ok(Received::Binary(bytes)) => {
                    assert!(bytes.len() <= max, "{} > {max}", bytes.len())
                }
                Ok(Received::Close(_)) => {
                    if let Some(after) = ws.next().await {
                        panic!("the stream goes on after the close: {after:?}");
                    }
                    break;
                }
                Ok(other) => panic!("not asked for: {other:?}"),
                Err(err) => {
                    assert!(typed_read_error(&err), "untyped read error: {err:?}");
                    if let Some(after) = ws.next().await {
                        panic!("the stream goes on after {err:?}: {after:?}");
                    }
                    break;
                }
            }
        }
    });
}

/// The reconnecting client: its `Incoming` is read until the client ends (every reconnect is refused, and fatal).
fn client(
    server: ScriptedServer,
    max: usize,
    heartbeat: Option<(Duration, Duration)>,
    close_timeout: Duration,
) {
    run(async move {
        let built = WsClient::builder("ws://example.invalid/feed")
            .transport(Transport(Some(server)))
            .max_message_size(max)
            .ping(heartbeat)
            .close_timeout(close_timeout)
            .come_back_within(Duration::from_millis(100))
            .classify_close(|_| FailureKind::Fatal)
            .classify_connect(|_| FailureKind::Fatal)
            .build();
        let Ok((mut client, mut incoming)) = built else {
            return;
        };
        while let Some(msg) = incoming.next().await {
            assert!(msg.len() <= max, "{} > {max}", msg.len());
        }
        assert!(
            client.is_closed(),
            "the messages ended but the client did not"
        );
        let err = client.send("late").await.expect_err("a send after the end");
        assert!(
            err.is::<Closed>()
                || err.is::<ClosedByPeer>()
                || err.is::<FatalConnect>()
                || err.is::<NotSent>()
                || err.is::<LinkLost>(),
            "untyped end: {err:?}"
        );
    });
}

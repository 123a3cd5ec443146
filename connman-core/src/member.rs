//! Members of a group: anything that takes messages and can be closed with a code and a reason.
//!
//! A [`Member`] is a [`Sink`] of [`Bytes`] plus [`Member::start_close`]. A WebSocket connection, a channel and a test
//! double all qualify. The group that owns a member keeps a bounded outbound queue for it and a writer that drives the
//! sink with the usual sink protocol:
//!
//! 1. `poll_ready` then `start_send` for every queued message, without flushing in between;
//! 2. one `poll_flush` once the queue is empty;
//! 3. to close: the queue is flushed first, then `start_close(code, reason)` and `poll_close`.
//!
//! Why a `Sink` and not a method per message: a flush is what costs (one system call, one TLS record). Feeding many
//! messages and flushing once is what lets a broadcast reach 4–5 M deliveries per second instead of 0.2 M with a flush
//! per message, and `Sink` is the trait that already separates "accept" from "flush": `tokio_util`'s `PollSender`,
//! `futures` channels and tokio-tungstenite's `WebSocketStream` are sinks, so a member is usually a thin wrapper.
//!
//! Messages are [`Bytes`]: a broadcast encodes once and every member gets a cheap clone of the same buffer.
//!
//! The close code travels separately from the close itself, because `Sink::poll_close` takes no argument: a member
//! records the code and reason in [`Member::start_close`] and sends them in its next `poll_close`. A `poll_close`
//! without a `start_close` closes with [`CloseCode::NORMAL`].
//!
//! Two optional methods let a member whose connection has a receiving side tell its owner about it:
//! [`Member::poll_ended`] (the peer went away: leave the group by yourself) and [`Member::last_heard`] (the peer is
//! alive, even when it only answers pings: do not close it as idle). Both default to "unknown".
//!
//! ```
//! use bytes::Bytes;
//! use connman_core::member::{CloseCode, Member};
//! use futures_sink::Sink;
//! use std::convert::Infallible;
//! use std::pin::Pin;
//! use std::task::{Context, Poll};
//!
//! /// Records what it is given, for a test.
//! #[derive(Default)]
//! struct Recorder {
//!     sent: Vec<Bytes>,
//!     flushes: usize,
//!     close: Option<(CloseCode, String)>,
//! }
//!
//! impl Sink<Bytes> for Recorder {
//!     type Error = Infallible;
//!     fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn start_send(self: Pin<&mut Self>, msg: Bytes) -> Result<(), Infallible> {
//!         self.get_mut().sent.push(msg);
//!         Ok(())
//!     }
//!     fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         self.get_mut().flushes += 1;
//!         Poll::Ready(Ok(()))
//!     }
//!     fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         let this = self.get_mut();
//!         this.close.get_or_insert((CloseCode::NORMAL, String::new()));
//!         Poll::Ready(Ok(()))
//!     }
//! }
//!
//! impl Member for Recorder {
//!     fn start_close(self: Pin<&mut Self>, code: CloseCode, reason: &str) -> Result<(), Infallible> {
//!         self.get_mut().close = Some((code, reason.to_owned()));
//!         Ok(())
//!     }
//! }
//!
//! assert_eq!(CloseCode::RECONNECT.get(), 4200);
//! assert_eq!(CloseCode::RECONNECT.meaning(), "server closing, reconnect shortly");
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_sink::Sink;

/// Something that takes messages and can be closed with a code and a reason.
///
/// The [`Sink`] half carries messages; see the [module docs](self) for the order in which an owner drives it.
/// Implementations must not panic on a peer's behaviour: a broken peer is an `Err` from the sink, after which the owner
/// drops the member.
pub trait Member: Sink<Bytes> {
    /// Records the code and reason of the close that the next `poll_close` performs.
    ///
    /// Called at most once per member by a well-behaved owner, after the last message was flushed. It must not block:
    /// the close itself happens in `poll_close`.
    fn start_close(self: Pin<&mut Self>, code: CloseCode, reason: &str) -> Result<(), Self::Error>;

    /// Ready once the member's connection has ended by itself: its peer closed, it failed on its receiving side, or
    /// its heartbeat gave up. The owner polls it while the member has nothing to send, and drops the member (without
    /// a close: there is no one left to tell) when it is ready.
    ///
    /// The default never ends: a member that cannot tell is dropped when a send to it fails. A WebSocket connection
    /// ends when its receiving half ends, so that a member whose peer went away leaves its group by itself.
    fn poll_ended(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Pending
    }

    /// When the peer was last heard from (any inbound frame, pongs included), if the member knows it.
    ///
    /// An owner with an idle timeout counts this as activity, so a peer that only answers pings is not idle. The
    /// default (`None`) leaves the owner to its own bookkeeping.
    fn last_heard(&self) -> Option<Instant> {
        None
    }
}

/// A close code, as in WebSocket close frames (RFC 6455 section 7.4) and the application codes of Pusher and soketi.
///
/// Any `u16` is accepted; the constants name the ones connman uses.
///
/// ```
/// use connman_core::member::CloseCode;
///
/// assert_eq!(CloseCode::from(1000), CloseCode::NORMAL);
/// assert_eq!(CloseCode::IDLE_TIMEOUT.to_string(), "4201 (idle or pong timeout)");
/// assert_eq!(CloseCode(3000).meaning(), "unknown");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure; the purpose of the connection is fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: going away; the endpoint is shutting down or navigating away.
    pub const GOING_AWAY: Self = Self(1001);
    /// 1009: message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1012: service restart; the client may reconnect.
    pub const RESTART: Self = Self(1012);
    /// 4009: unauthorized, or the application was not found (Pusher, soketi).
    pub const UNAUTHORIZED: Self = Self(4009);
    /// 4200: the server is closing; reconnect shortly (soketi's drain and shutdown code).
    pub const RECONNECT: Self = Self(4200);
    /// 4201: idle or pong timeout (soketi closes after 120 s without traffic).
    pub const IDLE_TIMEOUT: Self = Self(4201);
    /// 4301: over a limit: client events disabled, rate or size limits (Pusher, soketi).
    pub const OVER_LIMIT: Self = Self(4301);

    /// The numeric code.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// What the code means, for logs; `"unknown"` for codes without a constant here.
    pub const fn meaning(self) -> &'static str {
        match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1009 => "message too big",
            1012 => "service restart",
            4009 => "unauthorized or application not found",
            4200 => "server closing, reconnect shortly",
            4201 => "idle or pong timeout",
            4301 => "over a limit",
            _ => "unknown",
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.meaning())
    }
}

/// A message: encoded once, shared by every member it goes to.
pub type Message = Bytes;

/// A server's advice, carried in a close reason, on how soon its client should come back: within this long.
///
/// A close with "come back" code (1001, 1012, 4200) makes a reconnecting client wait a random delay before it comes
/// back, so that the clients of a server that closes them all at once do not all arrive at the next server at once.
/// When the server already spreads its closes out (a paced drain), that wait only adds noise to a pace the operator
/// chose: the server then says so at the end of the reason, as `come back within <n> ms`, and a client that knows the
/// advice waits at most that long (and never longer than its own bound). A client that does not know it sees a
/// readable reason. Close reasons are limited to 123 bytes; the advice adds at most 42.
///
/// ```
/// use connman_core::member::ComeBack;
/// use std::time::Duration;
///
/// let reason = ComeBack::within(Duration::ZERO).advise("server closing, reconnect shortly");
/// assert_eq!(reason, "server closing, reconnect shortly; come back within 0 ms");
/// assert_eq!(ComeBack::parse(&reason), Some(ComeBack::within(Duration::ZERO)));
/// assert_eq!(ComeBack::parse("server closing, reconnect shortly"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComeBack {
    within: std::time::Duration,
}

impl ComeBack {
    const PREFIX: &'static str = "come back within ";
    const UNIT: &'static str = " ms";

    /// Advice to come back within `within` (counted in whole milliseconds).
    pub const fn within(within: std::time::Duration) -> Self {
        Self {
            within: std::time::Duration::from_millis(within.as_millis() as u64),
        }
    }

    /// How soon to come back.
    pub const fn get(self) -> std::time::Duration {
        self.within
    }

    /// `reason` with this advice at its end.
    pub fn advise(self, reason: &str) -> String {
        if reason.is_empty() {
            self.to_string()
        } else {
            format!("{reason}; {self}")
        }
    }

    /// The advice at the end of a close reason, if there is one.
    pub fn parse(reason: &str) -> Option<Self> {
        let rest = reason.strip_suffix(Self::UNIT)?;
        let at = rest.rfind(Self::PREFIX)?;
        let before = &rest[..at];
        if !(before.is_empty() || before.ends_with("; ")) {
            return None;
        }
        let digits = &rest[at + Self::PREFIX.len()..];
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let millis = digits.parse::<u64>().ok()?;
        Some(Self {
            within: std::time::Duration::from_millis(millis),
        })
    }
}

impl fmt::Display for ComeBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            Self::PREFIX,
            self.within.as_millis(),
            Self::UNIT
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn come_back_advice_round_trips_and_rejects_lookalikes() {
        use std::time::Duration;
        for ms in [0, 1, 250, 2_000, u64::MAX] {
            let advice = ComeBack::within(Duration::from_millis(ms));
            for reason in ["", "bye", "a; b"] {
                let text = advice.advise(reason);
                assert!(text.len() <= reason.len() + 42, "{text}");
                assert_eq!(ComeBack::parse(&text), Some(advice), "{text:?}");
            }
        }
        for reason in [
            "come back within ms",
            "come back within -1 ms",
            "come back within 1s",
            "xcome back within 5 ms",
            "come back within 99999999999999999999999 ms",
            "come back within 5 ms please",
        ] {
            assert_eq!(ComeBack::parse(reason), None, "{reason:?}");
        }
        assert_eq!(
            ComeBack::within(Duration::from_micros(1_999_999)).get(),
            Duration::from_millis(1_999)
        );
    }

    #[test]
    fn ss_04_close_codes_and_meanings() {
        let codes = [
            (CloseCode::NORMAL, 1000),
            (CloseCode::GOING_AWAY, 1001),
            (CloseCode::TOO_BIG, 1009),
            (CloseCode::RESTART, 1012),
            (CloseCode::UNAUTHORIZED, 4009),
            (CloseCode::RECONNECT, 4200),
            (CloseCode::IDLE_TIMEOUT, 4201),
            (CloseCode::OVER_LIMIT, 4301),
        ];
        for (code, n) in codes {
            assert_eq!(code.get(), n);
            assert_eq!(u16::from(code), n);
            assert_ne!(code.meaning(), "unknown", "{n} has a meaning");
        }
        assert_eq!(
            CloseCode::RECONNECT.meaning(),
            "server closing, reconnect shortly"
        );
        assert_eq!(CloseCode::IDLE_TIMEOUT.meaning(), "idle or pong timeout");
        assert_eq!(CloseCode(1234).meaning(), "unknown");
    }
}

//! The "nothing lost" checker of RELIABILITY.md.
//!
//! Every request a fault test sends carries a `(client, seq)` pair. The test server writes each pair it receives into
//! a [`ServerLog`]; the client writes what became of each request into a [`ClientLog`]. Once the faults stop and the
//! traffic settles, [`check`] compares the two logs and returns a [`Report`]:
//!
//! * no lost acks: every [`Outcome::Ok`] request is in the server log;
//! * no phantom sends: no [`Outcome::NotSent`], [`Outcome::Cancelled`] or [`Outcome::Expired`] request is in it;
//! * duplicates: none in [`Mode::AtMostOnce`]; in [`Mode::AtLeastOnce`] only for idempotent requests, at most one per
//!   documented retry and per reconnect of that client;
//! * order: per client, the server saw seqs in increasing order, except requests the client log marks as retried
//!   and requests whose outcome is [`Outcome::MaybeDelivered`]: those were written on a link that then failed, and
//!   the network may still deliver them after a later request has gone out on the next link (the server reads two
//!   connections independently); their outcome told the caller exactly that;
//! * liveness: nothing is still [`Outcome::Pending`];
//! * bounds: no gauge passed its limit.
//!
//! ```
//! use connman_tests::checker::{check, ClientLog, Mode, Outcome, ServerLog};
//!
//! let server = ServerLog::new(1000);
//! let client = ClientLog::new(1000);
//! // Seq 1 was acknowledged, seq 2 was never written.
//! server.record(7, 1)?;
//! client.record(7, 1, Outcome::Ok);
//! client.record(7, 2, Outcome::NotSent);
//! client.gauge("queue depth", 3, 16);
//! let report = check(&server, &client, Mode::AtMostOnce);
//! report.assert_clean();
//! assert_eq!(report.counts().ok, 1);
//!
//! // The server now claims it saw seq 2: a phantom send.
//! server.record(7, 2)?;
//! assert!(!check(&server, &client, Mode::AtMostOnce).is_clean());
//! # Ok::<(), connman_tests::checker::LogFull>(())
//! ```
//!
//! The [`line`](mod@line) module has a tiny line protocol and an echo server that fills a [`ServerLog`].

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Which delivery promise the run is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default: no request reaches the server twice.
    AtMostOnce,
    /// Idempotent requests may be retried after a reconnect, so the server may see them more than once.
    AtLeastOnce,
}

/// What became of one request, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server acknowledged it.
    Ok,
    /// It was provably never written.
    NotSent,
    /// It was written, then the link was lost before its response.
    MaybeDelivered,
    /// The caller gave up on it while it was queued.
    Cancelled,
    /// Its deadline passed.
    Expired,
    /// No outcome yet.
    Pending,
    /// Any other error, by its message.
    Other(String),
}

impl Outcome {
    /// Classifies an error with the public classifier, [`connman_core::outcome::Outcome::of_error`]:
    /// `MaybeDelivered` (or a bare `LinkLost`), `NotSent` and `Elapsed` (here [`Outcome::Expired`]) are the delivery
    /// verdicts the checker knows; anything else is [`Outcome::Other`] with the top error's message.
    ///
    /// ```
    /// use connman_core::error::{BoxError, LinkLost, MaybeDelivered};
    /// use connman_tests::checker::Outcome;
    ///
    /// let err: BoxError = MaybeDelivered::with_source(LinkLost::new()).into();
    /// assert_eq!(Outcome::of_error(err.as_ref()), Outcome::MaybeDelivered);
    /// ```
    pub fn of_error(error: &(dyn Error + 'static)) -> Self {
        match connman_core::outcome::Outcome::of_error(error) {
            connman_core::outcome::Outcome::MaybeDelivered => Outcome::MaybeDelivered,
            connman_core::outcome::Outcome::NotSent => Outcome::NotSent,
            connman_core::outcome::Outcome::Elapsed => Outcome::Expired,
            _ => Outcome::Other(error.to_string()),
        }
    }

    /// [`Outcome::Ok`] for `Ok`, else the outcome of the error (see [`Outcome::of_error`]).
    pub fn of_result<T, E>(result: &Result<T, E>) -> Self
    where
        E: AsRef<dyn Error + Send + Sync + 'static>,
    {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => {
                let e: &(dyn Error + 'static) = e.as_ref();
                Outcome::of_error(e)
            }
        }
    }

    /// Whether this outcome promises the request never reached the server.
    pub const fn promises_not_sent(&self) -> bool {
        matches!(
            self,
            Outcome::NotSent | Outcome::Cancelled | Outcome::Expired
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::NotSent => f.write_str("not sent"),
            Outcome::MaybeDelivered => f.write_str("maybe delivered"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::Expired => f.write_str("expired"),
            Outcome::Pending => f.write_str("pending"),
            Outcome::Other(msg) => write!(f, "error: {msg}"),
        }
    }
}

/// A log was full and dropped an entry; the check then reports [`Violation::LogOverflow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFull {
    _private: (),
}

impl fmt::Display for LogFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("log full")
    }
}

impl Error for LogFull {}

/// Every `(client, seq)` a test server received, in arrival order. Thread-safe, cheap to clone, bounded.
#[derive(Clone)]
pub struct ServerLog {
    inner: Arc<ServerInner>,
}

impl ServerLog {
    /// A log that keeps at most `max_entries` arrivals.
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                max: max_entries,
                entries: Mutex::new(Vec::new()),
                overflowed: AtomicU64::new(0),
            }),
        }
    }

    /// Records the arrival of `(client, seq)`.
    ///
    /// # Errors
    ///
    /// [`LogFull`] when the log holds its maximum already; the drop is counted and reported by [`check`].
    pub fn record(&self, client: u64, seq: u64) -> Result<(), LogFull> {
        let mut entries = lock(&self.inner.entries);
        if entries.len() >= self.inner.max {
            self.inner.overflowed.fetch_add(1, Ordering::Relaxed);
            return Err(LogFull { _private: () });
        }
        entries.push((client, seq));
        Ok(())
    }

    /// A copy of the arrivals, in order.
    pub fn entries(&self) -> Vec<(u64, u64)> {
        lock(&self.inner.entries).clone()
    }

    /// How many arrivals are recorded.
    pub fn len(&self) -> usize {
        lock(&self.inner.entries).len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `(client, seq)` arrived, for a test's own waits.
    pub fn count(&self, client: u64, seq: u64) -> usize {
        lock(&self.inner.entries)
            .iter()
            .filter(|&&e| e == (client, seq))
            .count()
    }

    /// How many arrivals were dropped because the log was full.
    pub fn overflowed(&self) -> u64 {
        self.inner.overflowed.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ServerLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLog")
            .field("len", &self.len())
            .field("max", &self.inner.max)
            .field("overflowed", &self.overflowed())
            .finish()
    }
}

/// What the client did and saw: each request's outcome, its retries, each client's reconnects and the gauges.
///
/// Thread-safe, cheap to clone and bounded by the number of requests it tracks.
#[derive(Clone)]
pub struct ClientLog {
    inner: Arc<ClientInner>,
}

impl ClientLog {
    /// A log that tracks at most `max_requests` requests.
    pub fn new(max_requests: usize) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                max: max_requests,
                state: Mutex::new(ClientState::default()),
            }),
        }
    }

    /// Registers a request that must reach the server at most once. Its outcome is [`Outcome::Pending`] until resolved.
    pub fn issue(&self, client: u64, seq: u64) {
        self.insert(client, seq, false);
    }

    /// Registers an idempotent request, which may be retried after a reconnect in [`Mode::AtLeastOnce`].
    pub fn issue_idempotent(&self, client: u64, seq: u64) {
        self.insert(client, seq, true);
    }

    /// Notes that the request was written again after a reconnect (a documented retry).
    pub fn retried(&self, client: u64, seq: u64) {
        let mut state = self.state();
        if let Some(request) = self.entry(&mut state, client, seq) {
            request.retries = request.retries.saturating_add(1);
        }
    }

    /// Sets the outcome of a request; a request never issued is registered first (not idempotent).
    ///
    /// A request resolved twice (other than to [`Outcome::Pending`]) is reported as [`Violation::MultipleOutcomes`].
    pub fn resolve(&self, client: u64, seq: u64, outcome: Outcome) {
        let mut state = self.state();
        if let Some(request) = self.entry(&mut state, client, seq) {
            if outcome != Outcome::Pending {
                request.resolutions = request.resolutions.saturating_add(1);
            }
            request.outcome = outcome;
        }
    }

    /// Registers a request (not idempotent) and its outcome at once.
    pub fn record(&self, client: u64, seq: u64, outcome: Outcome) {
        self.resolve(client, seq, outcome);
    }

    /// Notes that `client` reconnected once more.
    pub fn reconnected(&self, client: u64) {
        let mut state = self.state();
        let count = state.reconnects.entry(client).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Notes the largest value a gauge reached and its configured limit; a second call for the same gauge keeps the
    /// larger observation.
    pub fn gauge(&self, name: &str, observed_max: u64, limit: u64) {
        let mut state = self.state();
        let entry = state
            .gauges
            .entry(name.to_owned())
            .or_insert((observed_max, limit));
        entry.0 = entry.0.max(observed_max);
        entry.1 = limit;
    }

    /// The current outcome of a request, if it is tracked.
    pub fn outcome(&self, client: u64, seq: u64) -> Option<Outcome> {
        self.state()
            .requests
            .get(&(client, seq))
            .map(|r| r.outcome.clone())
    }

    /// How many requests are tracked.
    pub fn len(&self) -> usize {
        self.state().requests.len()
    }

    /// Whether no request is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, client: u64, seq: u64, idempotent: bool) {
        let mut state = self.state();
        if let Some(request) = self.entry(&mut state, client, seq) {
            request.idempotent |= idempotent;
        }
    }

    /// The record of `(client, seq)`, created if there is room; `None` (and one more overflow) when the log is full.
    fn entry<'a>(
        &self,
        state: &'a mut ClientState,
        client: u64,
        seq: u64,
    ) -> Option<&'a mut RequestRecord> {
        let len = state.requests.len();
        match state.requests.entry((client, seq)) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) if len < self.inner.max => {
                Some(e.insert(RequestRecord::default()))
            }
            std::collections::btree_map::Entry::Vacant(_) => {
                state.overflowed = state.overflowed.saturating_add(1);
                None
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        lock(&self.inner.state)
    }
}

impl fmt::Debug for ClientLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("ClientLog")
            .field("requests", &state.requests.len())
            .field("max", &self.inner.max)
            .field("overflowed", &state.overflowed)
            .finish_non_exhaustive()
    }
}

/// One broken promise found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The client got `Ok`, yet the server never saw the request.
    LostAck {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
    },
    /// The client was told the request never went out, yet the server saw it.
    Phantom {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
        /// What the client was told.
        outcome: Outcome,
    },
    /// The server saw a request no client issued.
    Unknown {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
    },
    /// The server saw a request more often than the mode allows.
    Duplicate {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
        /// How many times the server saw it.
        received: u64,
        /// How many extra copies were allowed.
        allowed: u64,
    },
    /// The server saw a seq after a higher one of the same client.
    OutOfOrder {
        /// The client.
        client: u64,
        /// The late request.
        seq: u64,
        /// The higher seq seen before it.
        after: u64,
    },
    /// A request has no outcome yet.
    Pending {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
    },
    /// A request was resolved more than once.
    MultipleOutcomes {
        /// The client.
        client: u64,
        /// The request.
        seq: u64,
        /// How many outcomes it got.
        outcomes: u32,
    },
    /// A gauge passed its configured limit.
    BoundExceeded {
        /// The gauge.
        gauge: String,
        /// The largest value seen.
        observed: u64,
        /// The limit.
        limit: u64,
    },
    /// A log was full and dropped entries, so the check saw incomplete evidence.
    LogOverflow {
        /// `"server"` or `"client"`.
        log: &'static str,
        /// How many entries were dropped.
        dropped: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LostAck { client, seq } => {
                write!(
                    f,
                    "lost ack       client {client} seq {seq}: ok but never received"
                )
            }
            Violation::Phantom {
                client,
                seq,
                outcome,
            } => write!(
                f,
                "phantom send   client {client} seq {seq}: {outcome} but received"
            ),
            Violation::Unknown { client, seq } => {
                write!(
                    f,
                    "unknown        client {client} seq {seq}: received but never issued"
                )
            }
            Violation::Duplicate {
                client,
                seq,
                received,
                allowed,
            } => write!(
                f,
                "duplicate      client {client} seq {seq}: received {received} times, {allowed} extra allowed"
            ),
            Violation::OutOfOrder { client, seq, after } => {
                write!(
                    f,
                    "out of order   client {client} seq {seq}: received after {after}"
                )
            }
            Violation::Pending { client, seq } => {
                write!(f, "pending        client {client} seq {seq}: no outcome")
            }
            Violation::MultipleOutcomes {
                client,
                seq,
                outcomes,
            } => write!(
                f,
                "outcomes       client {client} seq {seq}: {outcomes} outcomes"
            ),
            Violation::BoundExceeded {
                gauge,
                observed,
                limit,
            } => write!(f, "bound exceeded {gauge}: {observed} > {limit}"),
            Violation::LogOverflow { log, dropped } => {
                write!(f, "log overflow   {log} log dropped {dropped} entries")
            }
        }
    }
}

/// The totals of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Requests the client log tracks.
    pub requests: u64,
    /// Outcomes [`Outcome::Ok`].
    pub ok: u64,
    /// Outcomes [`Outcome::NotSent`].
    pub not_sent: u64,
    /// Outcomes [`Outcome::MaybeDelivered`].
    pub maybe_delivered: u64,
    /// Outcomes [`Outcome::Cancelled`].
    pub cancelled: u64,
    /// Outcomes [`Outcome::Expired`].
    pub expired: u64,
    /// Outcomes [`Outcome::Other`].
    pub other: u64,
    /// Outcomes [`Outcome::Pending`].
    pub pending: u64,
    /// Arrivals in the server log.
    pub received: u64,
    /// Arrivals beyond the first of the same request.
    pub duplicates: u64,
    /// Documented retries.
    pub retries: u64,
    /// Reconnects, all clients together.
    pub reconnects: u64,
}

/// The result of [`check`]: totals and every violation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    mode: Mode,
    counts: Counts,
    violations: Vec<Violation>,
}

impl Report {
    /// The mode the run was checked against.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The totals.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Every violation, in a stable order.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Whether no promise was broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with the report's table if any promise was broken.
    ///
    /// # Panics
    ///
    /// When [`Report::is_clean`] is false; this is meant for tests.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "the nothing-lost check failed\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let mode = match self.mode {
            Mode::AtMostOnce => "at-most-once",
            Mode::AtLeastOnce => "at-least-once",
        };
        writeln!(f, "nothing-lost check ({mode})")?;
        let rows = [
            ("requests", c.requests),
            ("ok", c.ok),
            ("not sent", c.not_sent),
            ("maybe delivered", c.maybe_delivered),
            ("cancelled", c.cancelled),
            ("expired", c.expired),
            ("other error", c.other),
            ("pending", c.pending),
            ("received", c.received),
            ("duplicates", c.duplicates),
            ("retries", c.retries),
            ("reconnects", c.reconnects),
            ("violations", self.violations.len() as u64),
        ];
        for (name, value) in rows {
            writeln!(f, "  {name:<16}{value:>10}")?;
        }
        for v in self.violations.iter().take(MAX_LISTED_VIOLATIONS) {
            writeln!(f, "  ! {v}")?;
        }
        if self.violations.len() > MAX_LISTED_VIOLATIONS {
            writeln!(
                f,
                "  ! … and {} more",
                self.violations.len() - MAX_LISTED_VIOLATIONS
            )?;
        }
        Ok(())
    }
}

/// Compares what the server received with what the client saw. See the [module docs](self).
pub fn check(server: &ServerLog, client: &ClientLog, mode: Mode) -> Report {
    let arrivals = server.entries();
    let state = client.state();
    let mut counts = Counts {
        requests: state.requests.len() as u64,
        received: arrivals.len() as u64,
        reconnects: state.reconnects.values().sum(),
        ..Counts::default()
    };
    let mut violations = Vec::new();

    if server.overflowed() > 0 {
        violations.push(Violation::LogOverflow {
            log: "server",
            dropped: server.overflowed(),
        });
    }
    if state.overflowed > 0 {
        violations.push(Violation::LogOverflow {
            log: "client",
            dropped: state.overflowed,
        });
    }

    let mut received: HashMap<(u64, u64), u64> = HashMap::new();
    for &key in &arrivals {
        *received.entry(key).or_insert(0) += 1;
    }

    // Per request: outcome, acks, phantoms, duplicates.
    for (&(c, s), request) in &state.requests {
        let times = received.get(&(c, s)).copied().unwrap_or(0);
        counts.retries += u64::from(request.retries);
        match &request.outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::NotSent => counts.not_sent += 1,
            Outcome::MaybeDelivered => counts.maybe_delivered += 1,
            Outcome::Cancelled => counts.cancelled += 1,
            Outcome::Expired => counts.expired += 1,
            Outcome::Pending => counts.pending += 1,
            Outcome::Other(_) => counts.other += 1,
        }
        if request.outcome == Outcome::Ok && times == 0 {
            violations.push(Violation::LostAck { client: c, seq: s });
        }
        if request.outcome.promises_not_sent() && times > 0 {
            violations.push(Violation::Phantom {
                client: c,
                seq: s,
                outcome: request.outcome.clone(),
            });
        }
        if request.outcome == Outcome::Pending {
            violations.push(Violation::Pending { client: c, seq: s });
        }
        if request.resolutions > 1 {
            violations.push(Violation::MultipleOutcomes {
                client: c,
                seq: s,
                outcomes: request.resolutions,
            });
        }
        if times > 1 {
            counts.duplicates += times - 1;
            let allowed = match mode {
                Mode::AtMostOnce => 0,
                Mode::AtLeastOnce if request.idempotent => {
                    let reconnects = state.reconnects.get(&c).copied().unwrap_or(0);
                    u64::from(request.retries).min(reconnects)
                }
                Mode::AtLeastOnce => 0,
            };
            if times - 1 > allowed {
                violations.push(Violation::Duplicate {
                    client: c,
                    seq: s,
                    received: times,
                    allowed,
                });
            }
        }
    }

    // Arrivals nobody issued.
    let mut unknown: Vec<(u64, u64)> = received
        .keys()
        .filter(|key| !state.requests.contains_key(key))
        .copied()
        .collect();
    unknown.sort_unstable();
    violations.extend(
        unknown
            .into_iter()
            .map(|(client, seq)| Violation::Unknown { client, seq }),
    );

    // Order: per client, the first arrival of each request that was never retried comes after every lower seq. A
    // request reported maybe-delivered may arrive late: it neither breaks the order nor sets it.
    let mut highest: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashMap<(u64, u64), ()> = HashMap::new();
    for &(c, s) in &arrivals {
        if seen.insert((c, s), ()).is_some() {
            continue;
        }
        if state
            .requests
            .get(&(c, s))
            .is_some_and(|r| r.retries > 0 || r.outcome == Outcome::MaybeDelivered)
        {
            continue;
        }
        match highest.get(&c) {
            Some(&after) if s <= after => {
                violations.push(Violation::OutOfOrder {
                    client: c,
                    seq: s,
                    after,
                });
            }
            _ => {
                highest.insert(c, s);
            }
        }
    }

    for (gauge, &(observed, limit)) in &state.gauges {
        if observed > limit {
            violations.push(Violation::BoundExceeded {
                gauge: gauge.clone(),
                observed,
                limit,
            });
        }
    }

    Report {
        mode,
        counts,
        violations,
    }
}

/// A tiny line protocol for fault tests, and an echo server that logs what it receives.
///
/// A request is `"<client> <seq> <payload>\n"` (the payload may be empty or absent); the answer is
/// `"<client> <seq> ok\n"`. The server records `(client, seq)` in a [`ServerLog`] before it answers.
///
/// ```
/// use connman_tests::checker::line::{parse_reply, request, EchoServer};
/// use connman_tests::checker::ServerLog;
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let log = ServerLog::new(100);
/// let server = EchoServer::start(log.clone()).await?;
/// let mut stream = BufReader::new(tokio::net::TcpStream::connect(server.addr()).await?);
/// stream.write_all(request(1, 5, "hello").as_bytes()).await?;
/// let mut answer = String::new();
/// stream.read_line(&mut answer).await?;
/// assert_eq!(parse_reply(&answer)?, (1, 5));
/// assert_eq!(log.entries(), [(1, 5)]);
/// # Ok(())
/// # }
/// ```
pub mod line {
    use std::error::Error;
    use std::fmt;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};
    use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
    use tokio_util::sync::CancellationToken;

    use super::{LogFull, ServerLog};
    use crate::proxy::bind_reusable;

    /// The longest line the echo server accepts by default, in bytes.
    pub const DEFAULT_MAX_LINE: usize = 8 * 1024;

    /// The most connections the echo server serves at once; more are closed at accept.
    pub const MAX_CONNECTIONS: usize = 1024;

    /// A line that does not follow the protocol.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BadLine {
        reason: &'static str,
    }

    impl BadLine {
        /// Why the line was rejected.
        pub const fn reason(&self) -> &'static str {
            self.reason
        }
    }

    impl fmt::Display for BadLine {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "bad line: {}", self.reason)
        }
    }

    impl Error for BadLine {}

    /// A parsed request line.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Request {
        /// The client.
        pub client: u64,
        /// The request number.
        pub seq: u64,
        /// The rest of the line.
        pub payload: String,
    }

    /// The request line for `(client, seq)`, newline included.
    pub fn request(client: u64, seq: u64, payload: &str) -> String {
        format!("{client} {seq} {payload}\n")
    }

    /// Parses a request line (with or without its newline).
    ///
    /// # Errors
    ///
    /// [`BadLine`] when the client or the seq is missing or not a number.
    pub fn parse_request(line: &str) -> Result<Request, BadLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        let mut parts = line.splitn(3, ' ');
        let client = number(parts.next(), "client is not a number")?;
        let seq = number(parts.next(), "seq is not a number")?;
        let payload = parts.next().unwrap_or("").to_owned();
        Ok(Request {
            client,
            seq,
            payload,
        })
    }

    /// The answer line for `(client, seq)`, newline included.
    pub fn reply(client: u64, seq: u64) -> String {
        format!("{client} {seq} ok\n")
    }

    /// Parses an answer line (with or without its newline) into `(client, seq)`.
    ///
    /// # Errors
    ///
    /// [`BadLine`] when the line is not `"<client> <seq> ok"`.
    pub fn parse_reply(line: &str) -> Result<(u64, u64), BadLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        let mut parts = line.split(' ');
        let client = number(parts.next(), "client is not a number")?;
        let seq = number(parts.next(), "seq is not a number")?;
        match (parts.next(), parts.next()) {
            (Some("ok"), None) => Ok((client, seq)),
            _ => Err(BadLine {
                reason: "answer is not ok",
            }),
        }
    }

    /// Totals of an [`EchoServer`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct EchoStats {
        /// Connections accepted.
        pub connections: u64,
        /// Requests answered.
        pub answered: u64,
        /// Connections closed for a bad line, an oversized line or invalid UTF-8.
        pub garbage: u64,
    }

    /// An echo server on `127.0.0.1:0` that records each request in a [`ServerLog`] and answers it.
    ///
    /// [`EchoServer::stop`] closes the listener and every connection, like a crash; [`EchoServer::restart`] listens on
    /// the same port again. A bad line closes only its own connection. Dropping the server stops it.
    #[derive(Debug)]
    pub struct EchoServer {
        addr: SocketAddr,
        log: ServerLog,
        max_line: usize,
        stats: Arc<Stats>,
        running: Option<Running>,
    }

    impl EchoServer {
        /// Starts a server with lines of at most [`DEFAULT_MAX_LINE`] bytes.
        ///
        /// # Errors
        ///
        /// The error of binding the listener.
        pub async fn start(log: ServerLog) -> io::Result<Self> {
            Self::with_max_line(log, DEFAULT_MAX_LINE).await
        }

        /// Starts a server with lines of at most `max_line` bytes.
        ///
        /// # Errors
        ///
        /// The error of binding the listener.
        pub async fn with_max_line(log: ServerLog, max_line: usize) -> io::Result<Self> {
            let listener = bind_reusable(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let addr = listener.local_addr()?;
            let mut server = Self {
                addr,
                log,
                max_line,
                stats: Arc::new(Stats::default()),
                running: None,
            };
            server.spawn(listener);
            Ok(server)
        }

        /// The address it listens on, the same across restarts.
        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// The log it records into.
        pub fn log(&self) -> &ServerLog {
            &self.log
        }

        /// Whether it is listening.
        pub fn is_running(&self) -> bool {
            self.running.is_some()
        }

        /// The totals so far.
        pub fn stats(&self) -> EchoStats {
            EchoStats {
                connections: self.stats.connections.load(Ordering::Relaxed),
                answered: self.stats.answered.load(Ordering::Relaxed),
                garbage: self.stats.garbage.load(Ordering::Relaxed),
            }
        }

        /// Stops listening and closes every connection; when it returns the port is free. Does nothing if stopped.
        pub async fn stop(&mut self) {
            if let Some(running) = self.running.take() {
                running.stop.cancel();
                // The task only ends by cancellation or a listener error; either way it is over now.
                let _ = running.task.await;
            }
        }

        /// Listens on the same port again. Does nothing if running.
        ///
        /// # Errors
        ///
        /// The error of binding the port, for instance if another socket took it meanwhile.
        pub async fn restart(&mut self) -> io::Result<()> {
            if self.running.is_none() {
                let listener = bind_reusable(self.addr)?;
                self.spawn(listener);
            }
            Ok(())
        }

        fn spawn(&mut self, listener: TcpListener) {
            let stop = CancellationToken::new();
            let task = tokio::spawn(accept_loop(
                listener,
                stop.clone(),
                self.log.clone(),
                self.max_line,
                self.stats.clone(),
            ));
            self.running = Some(Running { stop, task });
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            if let Some(running) = &self.running {
                running.stop.cancel();
            }
        }
    }

    #[derive(Debug)]
    struct Running {
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    #[derive(Debug, Default)]
    struct Stats {
        connections: AtomicU64,
        answered: AtomicU64,
        garbage: AtomicU64,
    }

    /// Why the server closed a connection.
    #[derive(Debug)]
    enum ConnError {
        Bad(BadLine),
        Codec(LinesCodecError),
        Full(LogFull),
    }

    impl fmt::Display for ConnError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                ConnError::Bad(e) => e.fmt(f),
                ConnError::Codec(e) => e.fmt(f),
                ConnError::Full(e) => e.fmt(f),
            }
        }
    }

    fn number(part: Option<&str>, reason: &'static str) -> Result<u64, BadLine> {
        part.and_then(|p| p.parse().ok()).ok_or(BadLine { reason })
    }

    async fn accept_loop(
        listener: TcpListener,
        stop: CancellationToken,
        log: ServerLog,
        max_line: usize,
        stats: Arc<Stats>,
    ) {
        // The set aborts every connection task when this loop ends, so a stop closes them all.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    connections.shutdown().await;
                    return;
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        if connections.len() >= MAX_CONNECTIONS {
                            continue;
                        }
                        let log = log.clone();
                        let stats = stats.clone();
                        connections.spawn(async move {
                            serve(stream, &log, max_line, &stats).await;
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "echo server accept failed"),
                },
            }
        }
    }

    /// Serves one connection; a bad line is counted before the connection closes.
    async fn serve(stream: TcpStream, log: &ServerLog, max_line: usize, stats: &Stats) {
        let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(max_line));
        if let Err(e) = serve_lines(&mut framed, log, stats).await {
            if !matches!(e, ConnError::Full(_)) {
                stats.garbage.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(error = %e, "echo server closed a connection");
        }
    }

    async fn serve_lines(
        framed: &mut Framed<TcpStream, LinesCodec>,
        log: &ServerLog,
        stats: &Stats,
    ) -> Result<(), ConnError> {
        while let Some(line) = framed.next().await {
            let line = line.map_err(ConnError::Codec)?;
            let req = parse_request(&line).map_err(ConnError::Bad)?;
            log.record(req.client, req.seq).map_err(ConnError::Full)?;
            let answer = reply(req.client, req.seq);
            let answer = answer.trim_end_matches('\n');
            match framed.send(answer).await {
                Ok(()) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                }
                // The peer went away: not garbage, just the end of this connection.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

/// How many violations a report's table lists before it summarises the rest.
const MAX_LISTED_VIOLATIONS: usize = 50;

struct ServerInner {
    max: usize,
    entries: Mutex<Vec<(u64, u64)>>,
    overflowed: AtomicU64,
}

struct ClientInner {
    max: usize,
    state: Mutex<ClientState>,
}

#[derive(Default)]
struct ClientState {
    requests: BTreeMap<(u64, u64), RequestRecord>,
    reconnects: BTreeMap<u64, u64>,
    gauges: BTreeMap<String, (u64, u64)>,
    overflowed: u64,
}

struct RequestRecord {
    idempotent: bool,
    retries: u32,
    outcome: Outcome,
    resolutions: u32,
}

impl Default for RequestRecord {
    fn default() -> Self {
        Self {
            idempotent: false,
            retries: 0,
            outcome: Outcome::Pending,
            resolutions: 0,
        }
    }
}

/// Locks a log; a panic in another test thread leaves the data itself intact, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

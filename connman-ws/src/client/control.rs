//! What every part of one client shares: the inbound channel, the close policy, the readiness flag, the terminal
//! error, the events.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::time::Duration;

use connman_core::error::{BoxError, Closed, SharedError};
use connman_core::lifecycle::{Event, FailureKind};
use connman_core::member::{CloseCode, ComeBack};
use connman_queue::reconnect::{FatalConnect, GaveUp};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::ClosedByPeer;
use super::link::LinkHandle;
use super::message::{Correlate, Message};

/// Most distinct tasks remembered as waiting for the link.
const MAX_WAITERS: usize = 8;

/// How many client events a slow subscriber may fall behind before it loses the oldest.
pub const EVENT_CAPACITY: usize = 64;

/// What the client does after a close frame from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseAction {
    /// "Come back" (1001, 1012, 4200): reconnect after a random delay, so that the clients of a server that closes
    /// many at once (a drain, a restart) spread out; the server's come-back advice, if the reason carries one,
    /// bounds the delay.
    ComeBack {
        /// The delay drawn for this client.
        after: Duration,
    },
    /// Reconnect with the backoff: the close classifier called the code retriable.
    Reconnect,
    /// End the client (1008, 4009, or the classifier said so): every queued and later send fails with
    /// [`ClosedByPeer`].
    Fatal,
    /// We asked for the close: the client ends.
    Requested,
}

/// What a client saw: lifecycle events, close frames, heartbeat results.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A lifecycle event of the connection: connecting, connected, failed attempt, disconnected, closed.
    Lifecycle(Event),
    /// The server closed the socket with a close frame, and what the client does about it.
    PeerClosed {
        /// The close.
        close: ClosedByPeer,
        /// What follows.
        action: CloseAction,
    },
    /// A ping was answered.
    Pong {
        /// The round trip time.
        rtt: Duration,
    },
    /// No pong came within the pong timeout: the socket is taken for dead and replaced.
    PongTimeout {
        /// The timeout that passed.
        after: Duration,
    },
}

/// Why a client ended, kept typed so that sends can report it.
#[derive(Debug, Clone)]
pub(crate) enum Terminal {
    Requested,
    Peer(ClosedByPeer),
    Fatal(FatalConnect),
    GaveUp(GaveUp),
    Other(SharedError),
}

impl Terminal {
    pub(crate) fn error(&self) -> BoxError {
        match self {
            Terminal::Requested => Closed::new().into(),
            Terminal::Peer(close) => close.clone().into(),
            Terminal::Fatal(e) => e.clone().into(),
            Terminal::GaveUp(e) => e.clone().into(),
            Terminal::Other(e) => Box::new(Shared(e.clone())),
        }
    }

    /// Keeps the error that ended the reconnecting service, typed where it is one of the known ones.
    pub(crate) fn from_error(error: BoxError) -> Self {
        if let Some(e) = error.downcast_ref::<FatalConnect>() {
            Terminal::Fatal(e.clone())
        } else if let Some(e) = error.downcast_ref::<GaveUp>() {
            Terminal::GaveUp(e.clone())
        } else if error.is::<Closed>() {
            Terminal::Requested
        } else {
            Terminal::Other(SharedError::from(error))
        }
    }
}

/// An error shared by every send that reports it.
#[derive(Debug)]
struct Shared(SharedError);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

pub(crate) type CloseClassifier = Arc<dyn Fn(&ClosedByPeer) -> FailureKind + Send + Sync>;

/// The settings the sockets of a client need.
#[derive(Clone)]
pub(crate) struct LinkSettings {
    /// Ping interval and pong timeout; `None` turns the heartbeat off.
    pub(crate) heartbeat: Option<(Duration, Duration)>,
    pub(crate) come_back: Duration,
    pub(crate) classify_close: CloseClassifier,
    /// Request mode: the id of a request or a reply.
    pub(crate) correlate: Option<Correlate>,
    /// How long a written request waits for its reply.
    pub(crate) request_timeout: Duration,
}

/// One client's shared state.
pub(crate) struct Control {
    pub(crate) settings: LinkSettings,
    inbound: Mutex<Option<mpsc::Sender<Message>>>,
    /// A delay to use instead of the backoff for the next reconnect, set by a "come back" close.
    come_back_hint: Mutex<Option<Duration>>,
    up: AtomicBool,
    /// The tasks waiting for the link to be up: the queue's worker, and the queue's fast path with its no-op waker.
    ready: Mutex<Vec<Waker>>,
    current: Mutex<Option<LinkHandle>>,
    terminal: OnceLock<Terminal>,
    closing: AtomicBool,
    /// The last round trip time in nanoseconds; 0 before the first pong.
    rtt: AtomicU64,
    events: broadcast::Sender<ClientEvent>,
    /// Ends the client: the driver closes the reconnecting service and the queue when it fires.
    pub(crate) end: CancellationToken,
}

impl Control {
    pub(crate) fn new(settings: LinkSettings, inbound: mpsc::Sender<Message>) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            settings,
            inbound: Mutex::new(Some(inbound)),
            come_back_hint: Mutex::new(None),
            up: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            terminal: OnceLock::new(),
            closing: AtomicBool::new(false),
            rtt: AtomicU64::new(0),
            events,
            end: CancellationToken::new(),
        }
    }

    /// A sender into the stream of received messages, while the client lives.
    pub(crate) fn inbound(&self) -> Option<mpsc::Sender<Message>> {
        lock(&self.inbound).clone()
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        // Nobody listening is fine: events are for whoever cares.
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        // Stored plus one, so that zero can mean "none yet" and a zero round trip (paused time) still counts.
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX - 1);
        self.rtt.store(nanos + 1, Ordering::Relaxed);
        self.emit(ClientEvent::Pong { rtt });
    }

    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos - 1)),
        }
    }

    pub(crate) fn take_come_back(&self) -> Option<Duration> {
        lock(&self.come_back_hint).take()
    }

    /// Decides what a close frame from the server means, and prepares it: a delay for the next reconnect, or the end
    /// of the client. Runs before the socket is declared lost, so the reconnect sees the decision.
    pub(crate) fn on_peer_close(&self, close: ClosedByPeer) -> CloseAction {
        let action = if self.closing.load(Ordering::Acquire) {
            CloseAction::Requested
        } else {
            match close.code() {
                CloseCode(1008) | CloseCode::UNAUTHORIZED => CloseAction::Fatal,
                CloseCode::GOING_AWAY | CloseCode::RESTART | CloseCode::RECONNECT => {
                    // The server's advice, when it gives one, narrows the spread (a paced drain has spread its
                    // closes already); it never widens it past this client's own bound.
                    let spread = ComeBack::parse(close.reason())
                        .map_or(self.settings.come_back, |advice| {
                            advice.get().min(self.settings.come_back)
                        });
                    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
                    let after = Duration::from_nanos(fastrand::u64(0..=nanos));
                    CloseAction::ComeBack { after }
                }
                _ => match (self.settings.classify_close)(&close) {
                    FailureKind::Fatal => CloseAction::Fatal,
                    FailureKind::Retriable => CloseAction::Reconnect,
                },
            }
        };
        match action {
            CloseAction::ComeBack { after } => *lock(&self.come_back_hint) = Some(after),
            CloseAction::Fatal => self.finish(Terminal::Peer(close.clone())),
            CloseAction::Reconnect | CloseAction::Requested => {}
        }
        self.emit(ClientEvent::PeerClosed { close, action });
        action
    }

    /// A new socket is up (its hook is about to run): it is the one to close or ping.
    pub(crate) fn set_current(&self, link: LinkHandle) {
        // A stale hint of a socket that never reached its reconnect is void now.
        lock(&self.come_back_hint).take();
        *lock(&self.current) = Some(link);
    }

    pub(crate) fn current(&self) -> Option<LinkHandle> {
        lock(&self.current).clone()
    }

    /// Whether requests may go straight to the reconnecting service now; registers the queue's worker otherwise.
    pub(crate) fn poll_up(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.is_up() {
            return true;
        }
        {
            let mut waiting = lock(&self.ready);
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                if waiting.len() >= MAX_WAITERS {
                    // Never more than a few distinct tasks poll; should more come, wake the old ones to re-register.
                    for waker in waiting.drain(..) {
                        waker.wake();
                    }
                }
                waiting.push(cx.waker().clone());
            }
        }
        self.is_up()
    }

    /// Up, not closing, and its socket has not ended. The driver marks the client down only when it runs, after the
    /// socket's end; until then a send handed to the ended socket (or to one whose close frame is written) would come
    /// back unsent and be replayed at once, again and again, using up its replays. The driver's `set_up(true)` for
    /// the next socket wakes the waiting tasks; a close ends the client, which fails what waits with `Closed`.
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && !self.closing.load(Ordering::Acquire)
            && lock(&self.current)
                .as_ref()
                .is_none_or(|link| !link.is_dead())
    }

    fn wake_waiting(&self) {
        let waiting = std::mem::take(&mut *lock(&self.ready));
        for waker in waiting {
            waker.wake();
        }
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        if up {
            self.wake_waiting();
        }
    }

    /// Marks a close we asked for: the server's answer to it ends the client instead of a reconnect.
    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Ends the client with `why` (the first reason wins).
    pub(crate) fn finish(&self, why: Terminal) {
        let _ = self.terminal.set(why);
        self.end.cancel();
        self.wake_waiting();
    }

    pub(crate) fn terminal(&self) -> Option<&Terminal> {
        self.terminal.get()
    }

    /// After the end: the stream of received messages ends once the last socket's messages are in.
    pub(crate) fn close_inbound(&self) {
        lock(&self.inbound).take();
        lock(&self.current).take();
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("up", &self.up.load(Ordering::Relaxed))
            .field("terminal", &self.terminal.get())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks, and each value is consistent between statements.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

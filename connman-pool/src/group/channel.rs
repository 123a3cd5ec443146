//! A member over a bounded channel, for tests and in-process subscribers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use connman_core::error::Closed;
use connman_core::member::{CloseCode, Member};
use futures_util::Sink;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// What a [`ChannelPeer`] receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message.
    Message(Bytes),
    /// The close, with its code and reason. Nothing follows it.
    Close(CloseCode, String),
}

/// Creates a member and its peer over a bounded channel of `capacity` frames (0 is taken as 1).
///
/// The member waits (its `poll_ready` is pending) while the channel is full, like a socket whose peer reads slowly,
/// and fails with [`Closed`] once the peer is dropped. It counts its flushes, which shows how writes are coalesced.
///
/// ```
/// use bytes::Bytes;
/// use connman_pool::group::{Frame, Group, channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = Group::new();
/// let (member, mut peer) = channel(16);
/// group.add("lobby", "alice", member).unwrap();
/// group.send("lobby", "alice", "hi").unwrap();
/// assert_eq!(peer.recv().await, Some(Frame::Message(Bytes::from("hi"))));
/// # }
/// ```
pub fn channel(capacity: usize) -> (ChannelMember, ChannelPeer) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let flushes = Arc::new(AtomicU64::new(0));
    (
        ChannelMember {
            tx: PollSender::new(tx),
            close: None,
            flushes: flushes.clone(),
        },
        ChannelPeer { rx, flushes },
    )
}

/// The sending side of [`channel`]: a [`Member`] that a group drives.
#[derive(Debug)]
pub struct ChannelMember {
    tx: PollSender<Frame>,
    close: Option<Frame>,
    flushes: Arc<AtomicU64>,
}

impl Sink<Bytes> for ChannelMember {
    type Error = Closed;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        self.get_mut()
            .tx
            .poll_reserve(cx)
            .map_err(|_| Closed::new())
    }

    fn start_send(self: Pin<&mut Self>, msg: Bytes) -> Result<(), Closed> {
        self.get_mut()
            .tx
            .send_item(Frame::Message(msg))
            .map_err(|_| Closed::new())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let this = self.get_mut();
        if this.tx.is_closed() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.tx.poll_reserve(cx)).map_err(|_| Closed::new())?;
        let frame = this
            .close
            .take()
            .unwrap_or_else(|| Frame::Close(CloseCode::NORMAL, String::new()));
        this.tx.send_item(frame).map_err(|_| Closed::new())?;
        this.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl Member for ChannelMember {
    fn start_close(self: Pin<&mut Self>, code: CloseCode, reason: &str) -> Result<(), Closed> {
        self.get_mut().close = Some(Frame::Close(code, reason.to_owned()));
        Ok(())
    }
}

/// The receiving side of [`channel`]: what the member's peer would read.
#[derive(Debug)]
pub struct ChannelPeer {
    rx: mpsc::Receiver<Frame>,
    flushes: Arc<AtomicU64>,
}

impl ChannelPeer {
    /// The next frame; `None` once the member is closed or dropped and everything was read.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    /// The next frame if one is there now.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }

    /// How many times the member was flushed.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

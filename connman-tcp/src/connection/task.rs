//! The task behind a [`Connection`](super::Connection): it drives the lifecycle and owns the read half of the socket.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use connman_core::backoff::Backoff;
use connman_core::driver::{Driver, Next, Observer};
use connman_core::error::{BoxError, Elapsed, LinkLost};
use connman_core::lifecycle::{CloseReason, FailureKind};
use connman_core::rt::tokio::TokioTimer;
use connman_core::{Event, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::{Handler, Writer};
use crate::connector::{ConnectError, ConnectErrorKind};

pub(super) struct Supervisor<C, T, H> {
    pub(super) connector: C,
    pub(super) target: T,
    pub(super) driver: Driver<Box<dyn Backoff + Send>, TokioTimer, Observe<H>>,
    pub(super) connect_timeout: Duration,
    pub(super) classify: fn(&BoxError) -> FailureKind,
    pub(super) read_buffer: usize,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) writer: Writer,
}

/// Where the lifecycle's events go: the handler, the subscribers, the state watch.
pub(super) struct Observe<H> {
    pub(super) handler: H,
    pub(super) writer: Writer,
    pub(super) state: watch::Sender<State>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) reason: Arc<OnceLock<CloseReason>>,
}

impl<H: Handler> Observer for Observe<H> {
    fn on_event(&mut self, event: Event) {
        tracing::info!(%event, "connection event");
        self.handler.on_event(&event);
        match &event {
            Event::Connected { first: true, .. } => self.handler.on_connect(self.writer.clone()),
            Event::Connected { first: false, .. } => self.handler.on_reconnect(),
            Event::Disconnected { .. } => self.handler.on_reset(),
            Event::Closed { reason } => {
                let _ = self.reason.set(*reason);
            }
            _ => {}
        }
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn on_state(&mut self, state: State) {
        // `Closed` is published by `finish`, once `on_close` has run.
        if !state.is_closed() {
            self.state.send_replace(state);
        }
    }
}

impl<C, T, H, IO> Supervisor<C, T, H>
where
    C: Service<T, Response = IO>,
    C::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    T: Clone + fmt::Debug,
    H: Handler,
{
    pub(super) async fn run(mut self) {
        self.driver.start();
        loop {
            let next = tokio::select! {
                biased;
                next = self.driver.next() => next,
                () = stopped(&mut self.stop) => {
                    self.driver.close();
                    continue;
                }
            };
            match next {
                Next::Connect { .. } => self.attempt().await,
                Next::Closed { .. } => break,
                // A connect in flight or a link is dropped where it is held; nothing is held here.
                _ => {}
            }
        }
        self.finish().await;
    }

    /// One connect attempt, and the life of the link if it comes up.
    async fn attempt(&mut self) {
        let ready: Result<(), BoxError> = tokio::select! {
            biased;
            () = stopped(&mut self.stop) => return self.driver.close(),
            ready = poll_fn(|cx| self.connector.poll_ready(cx)) => ready.map_err(Into::into),
        };
        if let Err(e) = ready {
            return self.failed(e);
        }
        let connect = self.connector.call(self.target.clone());
        let outcome: Result<Result<IO, BoxError>, _> = tokio::select! {
            biased;
            // Dropping the connect future aborts it: a controlled disconnect while connecting never yields a socket.
            () = stopped(&mut self.stop) => return self.driver.close(),
            outcome = tokio::time::timeout(self.connect_timeout, connect) => outcome.map(|r| r.map_err(Into::into)),
        };
        match outcome {
            Ok(Ok(io)) => self.up(io).await,
            Ok(Err(e)) => self.failed(e),
            Err(_) => {
                let timed_out = ConnectError::new(
                    ConnectErrorKind::TimedOut,
                    format!("{:?}", self.target),
                    Some(Box::new(Elapsed::new())),
                );
                self.failed(timed_out.into())
            }
        }
    }

    fn failed(&mut self, error: BoxError) {
        let kind = (self.classify)(&error);
        tracing::debug!(%error, ?kind, "connect attempt failed");
        self.driver.connect_failed(error, kind);
    }

    /// Runs an established link until it is lost or a disconnect is asked for.
    async fn up(&mut self, io: IO) {
        let (mut read, write) = tokio::io::split(io);
        let cancel = CancellationToken::new();
        // Should this task unwind (a handler panicked), writes on this link stop at once.
        let _cancel_on_drop = cancel.clone().drop_guard();
        self.writer.install(Box::new(write), cancel.clone()).await;
        self.driver.connected();
        if self.driver.state().is_closed() {
            // Only a closed machine answers a connection with a tear-down; nothing to run.
            self.writer.clear(&cancel, false, false).await;
            return;
        }
        let mut buf = BytesMut::with_capacity(self.read_buffer);
        let lost: Option<BoxError> = loop {
            // Chunks are split off the front; keep at least half a read's worth of room.
            if buf.capacity() < (self.read_buffer / 2).max(1) {
                buf.reserve(self.read_buffer);
            }
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break None,
                () = self.writer.lost() => {
                    if let Some(e) = self.writer.take_failure().await {
                        break Some(LinkLost::with_source(e).into());
                    }
                }
                read = read.read_buf(&mut buf) => match read {
                    Ok(0) => break Some(LinkLost::new().into()),
                    Ok(_) => self.driver.observer_mut().handler.on_data(buf.split().freeze()),
                    Err(e) => break Some(LinkLost::with_source(e).into()),
                },
            }
        };
        self.writer.clear(&cancel, lost.is_none(), false).await;
        drop(read);
        match lost {
            None => self.driver.close(),
            Some(reason) => {
                tracing::debug!(%reason, "link lost");
                self.driver.link_lost(reason)
            }
        }
    }

    async fn finish(&mut self) {
        // Every path here comes from a closed machine; close again (a no-op) so that no path can end open.
        self.driver.close();
        self.writer.close().await;
        let observe = self.driver.observer_mut();
        observe.handler.on_close();
        observe.state.send_replace(State::Closed);
    }
}

impl<C, T, H> Drop for Supervisor<C, T, H> {
    fn drop(&mut self) {
        // After `finish` this changes nothing; if the task ends any other way (a handler panicked, the runtime shut
        // down), no writer may keep the socket's write half alive.
        self.writer.abandon();
    }
}

/// Resolves once a disconnect is asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means every sender is gone, which cannot happen while the writer lives; treat it as a stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

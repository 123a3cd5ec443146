//! The task behind a [`Connection`](super::Connection): it drives the lifecycle and owns the read half of the socket.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use connman_core::backoff::Backoff;
use connman_core::error::{BoxError, Elapsed, LinkLost};
use connman_core::lifecycle::{Action, CloseReason, FailureKind, Lifecycle};
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
    pub(super) handler: H,
    pub(super) lifecycle: Lifecycle<Box<dyn Backoff + Send>>,
    pub(super) connect_timeout: Duration,
    pub(super) classify: fn(&BoxError) -> FailureKind,
    pub(super) read_buffer: usize,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) state: watch::Sender<State>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) writer: Writer,
    pub(super) reason: Arc<OnceLock<CloseReason>>,
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
        let mut next = self.lifecycle.start(now());
        loop {
            self.dispatch();
            next = match next {
                Some(Action::Connect { .. }) => self.attempt().await,
                Some(Action::Wait { until }) => self.wait(until).await,
                // Cancel and tear-down actions were carried out where they arose; what remains is the end.
                _ => break,
            };
        }
        self.finish().await;
    }

    /// One connect attempt, and the life of the link if it comes up.
    async fn attempt(&mut self) -> Option<Action> {
        let ready: Result<(), BoxError> = tokio::select! {
            biased;
            () = stopped(&mut self.stop) => return self.lifecycle.close(now()),
            ready = poll_fn(|cx| self.connector.poll_ready(cx)) => ready.map_err(Into::into),
        };
        if let Err(e) = ready {
            return self.failed(e);
        }
        let connect = self.connector.call(self.target.clone());
        let outcome: Result<Result<IO, BoxError>, _> = tokio::select! {
            biased;
            // Dropping the connect future aborts it: a controlled disconnect while connecting never yields a socket.
            () = stopped(&mut self.stop) => return self.lifecycle.close(now()),
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

    fn failed(&mut self, error: BoxError) -> Option<Action> {
        let kind = (self.classify)(&error);
        tracing::debug!(%error, ?kind, "connect attempt failed");
        self.lifecycle.connect_failed(now(), error, kind)
    }

    /// Runs an established link until it is lost or a disconnect is asked for.
    async fn up(&mut self, io: IO) -> Option<Action> {
        let (mut read, write) = tokio::io::split(io);
        let cancel = CancellationToken::new();
        // Should this task unwind (a handler panicked), writes on this link stop at once.
        let _cancel_on_drop = cancel.clone().drop_guard();
        self.writer.install(Box::new(write), cancel.clone()).await;
        if let Some(action) = self.lifecycle.connected(now()) {
            // Only a closed machine answers a connection this way; nothing to run.
            self.writer.clear(&cancel, false, false).await;
            return Some(action);
        }
        self.dispatch();
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
                    Ok(_) => self.handler.on_data(buf.split().freeze()),
                    Err(e) => break Some(LinkLost::with_source(e).into()),
                },
            }
        };
        self.writer.clear(&cancel, lost.is_none(), false).await;
        drop(read);
        match lost {
            None => self.lifecycle.close(now()),
            Some(reason) => {
                tracing::debug!(%reason, "link lost");
                self.lifecycle.link_lost(now(), reason)
            }
        }
    }

    async fn wait(&mut self, until: std::time::Instant) -> Option<Action> {
        tokio::select! {
            biased;
            () = stopped(&mut self.stop) => self.lifecycle.close(now()),
            () = tokio::time::sleep_until(until.into()) => self.lifecycle.timer_fired(now()),
        }
    }

    /// Hands the lifecycle's events to the handler and the subscribers, and publishes the state.
    fn dispatch(&mut self) {
        while let Some(event) = self.lifecycle.poll_event() {
            tracing::info!(%event, "connection event");
            self.handler.on_event(&event);
            match &event {
                Event::Connected { first: true, .. } => {
                    self.handler.on_connect(self.writer.clone())
                }
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
        let state = self.lifecycle.state();
        // `Closed` is published by `finish`, once `on_close` has run.
        if !state.is_closed() {
            self.state.send_replace(state);
        }
    }

    async fn finish(&mut self) {
        // Every path here comes from a closed machine; close again (a no-op) so that no path can end open.
        let _ = self.lifecycle.close(now());
        self.dispatch();
        self.writer.close().await;
        self.handler.on_close();
        self.state.send_replace(State::Closed);
    }
}

impl<C, T, H> Drop for Supervisor<C, T, H> {
    fn drop(&mut self) {
        // After `finish` this changes nothing; if the task ends any other way (a handler panicked, the runtime shut
        // down), no writer may keep the socket's write half alive.
        self.writer.abandon();
    }
}

/// The current instant on tokio's clock, which tests can pause.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Resolves once a disconnect is asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means every sender is gone, which cannot happen while the writer lives; treat it as a stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

//! Reconnect, Queue and Heartbeat tower layers for connman: upnode's "calls wait out an outage", done right.
//!
//! Three layers that stack with `tower::ServiceBuilder` over any make service (a connector: `Service<Target>` that
//! answers with a connection that is itself a `Service<Req>`):
//!
//! * [`queue::Queue`]: while the link is down, requests wait in a FIFO bounded by count and by weight; they go out in
//!   order once it is up. While up with nothing waiting, a request goes straight to the service below, with no
//!   channel hop. Per-request deadlines, cancellation, replay, `close()`, counters.
//! * [`reconnect::Reconnect`]: drives the connman [`Lifecycle`](connman_core::Lifecycle) over the make service.
//!   `poll_ready` stays pending through connect attempts and backoff, never fails for a retriable failure, and runs
//!   an on-up hook (re-auth, resubscribe) on each new connection before requests go through it.
//! * [`heartbeat::MakeHeartbeat`]: pings each connection on a schedule; a connection that stops answering is declared
//!   dead, so the `Reconnect` above replaces it.
//!
//! ```text
//! caller ─▶ Queue ─▶ Reconnect ─▶ MakeHeartbeat ─▶ connector (TCP, WebSocket, …)
//!                        │              └─ wraps each connection in a Heartbeat
//!                        └─ state watch, events, close handle
//! ```
//!
//! # The delivery promise
//!
//! Every request the queue accepts ends in exactly one outcome, and is at every moment in one of three states:
//!
//! * **Queued**: no byte written. A queued request is sent at most once, in order. If its caller drops its future, or
//!   its deadline ([`CallOptions::deadline`](queue::CallOptions::deadline), or the queue's
//!   [`max_wait`](queue::QueueBuilder::max_wait)) passes, it is taken out and never sent later; the caller gets
//!   [`Elapsed`](connman_core::error::Elapsed).
//! * **Written**: handed to the service below. If that service reports
//!   [`NotSent`](connman_core::error::NotSent) (provably never written, found also through
//!   [`source`](std::error::Error::source) chains), the request goes back to its place in the queue and is replayed,
//!   at most [`max_replays`](queue::QueueBuilder::max_replays) times (then the caller gets that `NotSent`).
//!   If it reports [`MaybeDelivered`](connman_core::error::MaybeDelivered) (or
//!   [`LinkLost`](connman_core::error::LinkLost)), the caller gets `MaybeDelivered`: at-most-once, as hyper, gRPC and
//!   NATS promise. A request marked [`idempotent`](queue::CallOptions::idempotent) is replayed instead
//!   (at-least-once, opt-in).
//! * **Completed**: the response, or any other error of the service below, as a value.
//!
//! `close()` fails every queued and every later request with [`Closed`](connman_core::error::Closed) (upnode hangs
//! them forever, UP-16) and drops the service below, which cancels a connect in flight (UP-17) and a pending backoff
//! timer (UP-18).
//!
//! # The stack
//!
//! ```
//! use connman_core::backoff::presets;
//! use connman_core::error::BoxError;
//! use connman_queue::heartbeat::{HeartbeatConfig, HeartbeatLayer};
//! use connman_queue::queue::QueueLayer;
//! use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! /// Re-authenticates on every new connection before queued requests go out (upnode's `conn.emit('up', obj)`).
//! async fn auth<C>(mut conn: C) -> Result<C, BoxError>
//! where
//!     C: Service<String, Error = BoxError>,
//! {
//!     conn.ready().await?.call("auth moo hax".to_string()).await?;
//!     Ok(conn)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A connector with no sockets: each "connection" echoes requests back in upper case.
//! let connector = service_fn(|_addr: &'static str| async {
//!     let conn = service_fn(|req: String| async move { Ok::<_, BoxError>(req.to_uppercase()) });
//!     Ok::<_, BoxError>(conn)
//! });
//! let config = ReconnectConfig::builder("127.0.0.1:7000").backoff(presets::upnode()).on_up(auth).build()?;
//! let reconnect = ReconnectLayer::new(config);
//! let state = reconnect.state();
//! let service = ServiceBuilder::new()
//!     .layer(QueueLayer::default())
//!     .layer(reconnect)
//!     .layer(HeartbeatLayer::new(HeartbeatConfig::default(), || "ping".to_string()))
//!     .service(connector);
//! let handle = service.handle();
//!
//! assert_eq!(service.clone().oneshot("beep".to_string()).await?, "BEEP");
//! assert!(state.borrow().is_up());
//! handle.close();
//! assert!(service.oneshot("late".to_string()).await.is_err());
//! # Ok(()) }
//! ```
//!
//! # What a user need not write
//!
//! * **Settings that fail in one place**: [`QueueConfig::builder`](queue::QueueConfig::builder),
//!   [`ReconnectConfig::builder`](reconnect::ReconnectConfig::builder) and
//!   [`HeartbeatConfig::builder`](heartbeat::HeartbeatConfig::builder); setters never fail, `build()` checks all at
//!   once with one error type, [`InvalidConfig`](connman_core::error::InvalidConfig).
//! * **What became of a request**: [`Outcome::of`](connman_core::outcome::Outcome::of) walks the error's `source()`
//!   chain once.
//! * **Counters that lose nothing**, beside the event streams that drop the oldest past 64:
//!   [`QueueStats`](queue::QueueStats) (replays, rejections, expiries, cancels),
//!   [`ReconnectStats`](reconnect::ReconnectStats) (attempts, reconnects, lost links, hook runs),
//!   [`HeartbeatStats`](heartbeat::HeartbeatStats) (pongs, deaths).
//! * **A stack type that can be named**: box the hook with [`BoxOnUp`](reconnect::BoxOnUp), or the whole stack with
//!   `tower::util::BoxCloneService` (every layer here is `Clone`).
//!
//! ```
//! use connman_core::error::BoxError;
//! use connman_core::outcome::Outcome;
//! use connman_queue::queue::{QueueConfig, QueueLayer};
//! use connman_queue::reconnect::{ReconnectConfig, ReconnectLayer};
//! use tower::util::BoxCloneService;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! /// The stack, named, whatever is inside it.
//! type Client = BoxCloneService<String, String, BoxError>;
//!
//! fn client(reconnect: ReconnectLayer<&'static str>) -> Result<Client, BoxError> {
//!     let connector = service_fn(|_addr: &'static str| async {
//!         Ok::<_, BoxError>(service_fn(|req: String| async move { Ok::<_, BoxError>(req) }))
//!     });
//!     let queue = QueueLayer::new(QueueConfig::builder().capacity(64).build()?);
//!     Ok(BoxCloneService::new(ServiceBuilder::new().layer(queue).layer(reconnect).service(connector)))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let reconnect = ReconnectLayer::new(ReconnectConfig::builder("127.0.0.1:7000").build()?);
//! let client = client(reconnect.clone())?;
//! let answer = client.clone().oneshot("hello".to_string()).await;
//! assert_eq!(Outcome::of_result(&answer), Outcome::Ok);
//! assert_eq!(reconnect.stats().lifecycle.connects, 1);
//! # Ok(()) }
//! ```
//!
//! # Decisions
//!
//! * **Heartbeat wraps the make service**, not the reconnecting service: `Queue<Reconnect<MakeHeartbeat<C>>>` rather
//!   than the `Heartbeat<Reconnect<..>>` first sketched in the design. Each connection gets its own pinger, which dies
//!   with it; a dead connection fails its own `poll_ready` with `LinkLost`, which is exactly the signal `Reconnect`
//!   acts on. Pinging above `Reconnect` would ping whichever connection happens to be current and could not tell
//!   the old one from the new. The pinger is a small task that sends pings through a clone of the connection, so
//!   the connection service must be `Clone` (as pipelined clients are); requests in flight on a connection declared
//!   dead fail with `MaybeDelivered`, so a half-open link never hangs them (UP-14).
//! * **`Req: Clone`** for the queue: a request stays with the queue until it is answered, so that one reported
//!   `NotSent` (or an idempotent one reported `MaybeDelivered`) can be replayed whole. Cheap for `Bytes` and `Arc`.
//! * **Capacity counts every request the queue answers for**, queued or written but unanswered (those may come back
//!   for a replay), so the bound holds even through replays. It lives in a `tokio::sync::Semaphore`; each handle takes
//!   permits in batches and gives its spare ones back when another handle waits, so the fast path writes only words of
//!   its own handle. The count bound gives backpressure (`poll_ready`
//!   pending, or [`Overloaded`](connman_core::error::Overloaded) with
//!   [`reject_when_full`](queue::QueueBuilder::reject_when_full)); the weight bound rejects with `Overloaded` at `call`,
//!   the only time a request's weight is known.
//! * **A request's deadline covers its time in the queue**, as upnode's `up(t, cb)` (UP-04): once written, its
//!   outcome comes from the service below. Put a `tower::timeout::Timeout` above the queue to bound whole calls.
//! * Every default is finite: queue capacity 1024, max wait 30 s and 8 replays per request, hook timeout 10 s, pings every 10 s with 5 s to
//!   answer (upnode's numbers), the connman backoff (20 ms doubling to 128 s).

//! * **Replays keep their order across a reconnect.** A new connection serves nothing until the calls of the lost one
//!   have settled (their owners have seen the outcome, at most [`DEFAULT_SETTLE_TIMEOUT`](reconnect::DEFAULT_SETTLE_TIMEOUT)),
//!   so a request the lost link never wrote is back in its place in the queue before anything issued after it goes
//!   out. Requests that end `MaybeDelivered` are the one exception the network imposes: written on a link that then
//!   failed, they may still reach the peer after a later request went out on the next link.
//!
//! # Not carried over from upnode
//!
//! * **UP-21** (connect options passed on to dnode) and **UP-22** (the server calling the client's own methods): there
//!   is no dnode here. The target is handed to the make service on every attempt (UP-20), and a protocol with calls
//!   in both directions sits below these layers as the connection service.
//! * **UP-23** (upnode's server `end()` and its broken peer-level `end()`): these layers are the client side. Ending
//!   every session of a server, and doing it at a rate, is `connman-pool`'s `Group::close_all` and `Drain`.

pub mod heartbeat;
pub mod queue;
pub mod reconnect;

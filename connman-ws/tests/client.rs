//! `WsClient` against a scripted in-memory server, in paused time: WS-08 to WS-12.

mod client_support;

use std::time::Duration;

use client_support::{Mode, Net, Seen, recv};
use connman_core::State;
use connman_core::error::{Closed, Elapsed, MaybeDelivered, NotSent, Overloaded};
use connman_core::lifecycle::{Event, FailureKind};
use connman_core::member::CloseCode;
use connman_queue::reconnect::FatalConnect;
use connman_ws::client::{ClientEvent, CloseAction, ClosedByPeer, Message, NotConnected};
use connman_ws::error::{HandshakeTimeout, HttpRejected, MessageTooBig, PongTimeout};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);

async fn wait_up(state: &mut tokio::sync::watch::Receiver<State>) {
    tokio::time::timeout(HOUR, state.wait_for(State::is_up))
        .await
        .expect("up within the hour")
        .expect("state watch alive");
}

/// The next client event that `pick` keeps.
async fn next_event<T>(
    events: &mut broadcast::Receiver<ClientEvent>,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(HOUR, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events ended"),
            }
        }
    })
    .await
    .expect("event within the hour")
}

/// The first error of type `T` down the chain of `error`.
fn find<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Lets every task run and paused time move on by `d`.
async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn ws_08_received_messages_arrive_on_one_stream_across_sockets() {
    let (mut net, transport) = Net::new();
    let (client, mut incoming) = Net::client(transport)
        .come_back_within(Duration::from_millis(500))
        .build()
        .expect("client");
    let mut state = client.state();

    let first = net.accept().await;
    first.send("one");
    assert_eq!(recv(&mut incoming).await, Message::from("one"));
    first.close(1012, "restart");

    let second = net.accept().await;
    wait_up(&mut state).await;
    second.send(tungstenite_binary(b"two"));
    assert_eq!(recv(&mut incoming).await, Message::from(b"two".to_vec()));
    assert_eq!(net.connects().len(), 2);
    drop(client);
    // The stream ends once the client ended.
    assert_eq!(
        tokio::time::timeout(HOUR, incoming.recv())
            .await
            .expect("ends"),
        None
    );
}

fn tungstenite_binary(bytes: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(bytes.to_vec().into())
}

#[tokio::test(start_paused = true)]
async fn ws_08_state_watch_and_typed_lifecycle_events() {
    let (mut net, transport) = Net::new();
    net.set_up(false);
    let (client, _incoming) = Net::client(transport).build().expect("client");
    let mut events = client.events();
    let mut state = client.state();

    // Refused: a failed attempt, never a disconnect.
    let failed = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::ConnectFailed {
            error, next_delay, ..
        }) => Some((error, next_delay)),
        _ => None,
    })
    .await;
    assert!(failed.0.is::<std::io::Error>());
    assert!(failed.1.is_some());
    assert!(!state.borrow().is_up());

    net.set_up(true);
    let conn = net.accept().await;
    let first = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::Connected { first, .. }) => Some(first),
        _ => None,
    })
    .await;
    assert!(first);
    wait_up(&mut state).await;

    conn.close(4200, "drain");
    let action = next_event(&mut events, |e| match e {
        ClientEvent::PeerClosed { close, action } => Some((close, action)),
        _ => None,
    })
    .await;
    assert_eq!(action.0.code(), CloseCode::RECONNECT);
    assert_eq!(action.0.reason(), "drain");
    assert!(matches!(action.1, CloseAction::ComeBack { .. }));
    let reason = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::Disconnected { reason }) => Some(reason),
        _ => None,
    })
    .await;
    let close = find::<ClosedByPeer>(&*reason).expect("the close frame is the cause");
    assert_eq!(close.code(), CloseCode::RECONNECT);

    let _second = net.accept().await;
    let again = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::Connected { first, .. }) => Some(first),
        _ => None,
    })
    .await;
    assert!(!again);
}

#[tokio::test(start_paused = true)]
async fn ws_09_sends_wait_out_an_outage_and_go_out_in_order_after_the_hook() {
    let (mut net, transport) = Net::new();
    net.set_up(false);
    let (mut client, _incoming) = Net::client(transport)
        .on_up(|mut link| async move { link.send("auth token").await })
        .build()
        .expect("client");

    let mut outcomes = FuturesOrdered::new();
    for i in 0..100 {
        let fut = client
            .ready()
            .await
            .expect("ready")
            .call(Message::from(format!("m{i}")));
        outcomes.push_back(fut);
    }
    settle(Duration::from_secs(5)).await;
    assert_eq!(client.stats().len, 100, "all wait in the queue");

    net.set_up(true);
    let mut conn = net.accept().await;
    let results: Vec<_> = tokio::time::timeout(HOUR, outcomes.collect::<Vec<_>>())
        .await
        .expect("all answered");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(conn.next().await, Some(Seen::Text("auth token".into())));
    for i in 0..100 {
        assert_eq!(conn.next().await, Some(Seen::Text(format!("m{i}"))));
    }
}

#[tokio::test(start_paused = true)]
async fn ws_09_written_then_lost_is_maybe_delivered_and_never_written_is_replayed() {
    let (mut net, transport) = Net::new();
    // A pipe small enough that a large frame cannot be written whole while the server does not read.
    net.set_buffer(2048);
    net.set_mode(Mode::Stall);
    let (mut client, _incoming) = Net::client(transport)
        .come_back_within(Duration::from_millis(100))
        .build()
        .expect("client");
    let stalled = net.accept().await;
    net.set_mode(Mode::Serve);

    let big = client
        .ready()
        .await
        .expect("ready")
        .call(Message::from(vec![7u8; 16 * 1024]));
    let mut big = tokio_test::task::spawn(big);
    settle(Duration::from_millis(10)).await;
    assert!(big.poll().is_pending(), "stuck in the flush");
    let after = client
        .ready()
        .await
        .expect("ready")
        .call(Message::from("after"));

    stalled.drop_socket();
    let err = tokio::time::timeout(HOUR, big)
        .await
        .expect("answered")
        .expect_err("lost");
    assert!(err.is::<MaybeDelivered>(), "{err}");

    let mut conn = net.accept().await;
    tokio::time::timeout(HOUR, after)
        .await
        .expect("answered")
        .expect("replayed and written");
    assert_eq!(conn.next().await, Some(Seen::Text("after".into())));
    let stats = client.stats();
    assert_eq!(stats.maybe_delivered, 1);
    assert!(stats.replayed >= 1);
}

/// A socket the server closed is never handed another send, even before the client's driver has seen the close:
/// each such send would come back unsent and be replayed, and a burst of them used up a send's replays in
/// microseconds (seen as `NotSent` around server restarts in the soak).
#[tokio::test(start_paused = true)]
async fn ws_09_a_send_after_the_server_closed_never_goes_to_the_dead_socket() {
    let (mut net, transport) = Net::new();
    let (mut client, _incoming) = Net::client(transport)
        .come_back_within(Duration::from_millis(100))
        .build()
        .expect("client");
    let mut events = client.events();
    let mut state = client.state();
    let conn = net.accept().await;
    wait_up(&mut state).await;

    // In a task of its own, so that it runs in the order it was woken among the client's tasks.
    let sender = tokio::spawn(async move {
        conn.close(1012, "restarting");
        // The reader saw the close and ended the socket; the client's driver, woken after this task, has not run.
        next_event(&mut events, |e| {
            matches!(e, ClientEvent::PeerClosed { .. }).then_some(())
        })
        .await;
        let sent = client
            .ready()
            .await
            .expect("ready")
            .call(Message::from("after"));
        (client, sent)
    });
    let (client, sent) = sender.await.expect("sender");
    let mut again = net.accept().await;
    tokio::time::timeout(HOUR, sent)
        .await
        .expect("answered")
        .expect("sent on the next socket");
    assert_eq!(again.next().await, Some(Seen::Text("after".into())));
    assert_eq!(
        client.stats().replayed,
        0,
        "the send went to the closed socket: {:?}",
        client.stats()
    );
}

/// A send made while the client closes fails with `Closed`, as the docs say, and never goes to the socket whose
/// close frame is written (where it would come back unsent and be replayed at once until its replays ran out).
#[tokio::test(start_paused = true)]
async fn ws_09_a_send_during_the_close_is_closed_and_never_replayed() {
    let (mut net, transport) = Net::new();
    // A server that never reads, so never answers the close: the close lasts its whole timeout.
    net.set_mode(Mode::Stall);
    let (mut client, _incoming) = Net::client(transport).build().expect("client");
    let mut state = client.state();
    let _conn = net.accept().await;
    wait_up(&mut state).await;

    let closing = client.clone();
    let closer = tokio::spawn(async move { closing.close().await });
    // The close frame is handed to the writer and written; the server's answer never comes.
    settle(Duration::from_millis(10)).await;
    let sent = client
        .ready()
        .await
        .expect("ready")
        .call(Message::from("late"));
    let outcome = tokio::time::timeout(HOUR, sent).await.expect("answered");
    let err = outcome.expect_err("the client closed");
    assert!(err.is::<Closed>(), "{err}");
    assert_eq!(client.stats().replayed, 0, "{:?}", client.stats());
    tokio::time::timeout(HOUR, closer)
        .await
        .expect("closed in time")
        .expect("closer");
}

#[tokio::test(start_paused = true)]
async fn ws_09_a_full_queue_is_backpressure_or_a_typed_rejection() {
    let (net, transport) = Net::new();
    net.set_up(false);
    let (mut client, _incoming) = Net::client(transport.clone())
        .queue_capacity(2)
        .build()
        .expect("client");
    let _a = client.ready().await.expect("room").call(Message::from("a"));
    let _b = client.ready().await.expect("room").call(Message::from("b"));
    let waited = tokio::time::timeout(Duration::from_secs(5), client.ready()).await;
    assert!(waited.is_err(), "a full queue holds poll_ready");

    let (mut rejecting, _incoming) = Net::client(transport)
        .queue_capacity(1)
        .reject_when_full()
        .build()
        .expect("client");
    let _a = rejecting
        .ready()
        .await
        .expect("room")
        .call(Message::from("a"));
    let err = rejecting.send("b").await.expect_err("full");
    assert!(err.is::<Overloaded>());
    assert_eq!(rejecting.stats().overloaded, 1);
}

#[tokio::test(start_paused = true)]
async fn ws_09_a_send_that_waits_too_long_is_elapsed_and_never_sent() {
    let (mut net, transport) = Net::new();
    net.set_up(false);
    let (mut client, _incoming) = Net::client(transport)
        .max_wait(Duration::from_secs(2))
        .build()
        .expect("client");
    let err = client.send("late").await.expect_err("expired");
    assert!(err.is::<Elapsed>());
    net.set_up(true);
    let mut conn = net.accept().await;
    client.send("fresh").await.expect("sent");
    assert_eq!(conn.next().await, Some(Seen::Text("fresh".into())));
}

/// Closes with `code`; gives the delay until the client connected again.
async fn come_back_delay(code: u16, spread: Duration) -> Duration {
    come_back_delay_with(code, "", spread).await
}

/// Closes with `code` and `reason`; gives the delay until the client connected again.
async fn come_back_delay_with(code: u16, reason: &'static str, spread: Duration) -> Duration {
    let (mut net, transport) = Net::new();
    let (client, _incoming) = Net::client(transport)
        .come_back_within(spread)
        .build()
        .expect("client");
    let mut state = client.state();
    let conn = net.accept().await;
    wait_up(&mut state).await;
    let closed_at = Instant::now();
    conn.close(code, reason);
    let _again = net.accept().await;
    let connects = net.connects();
    assert_eq!(connects.len(), 2);
    connects[1] - closed_at
}

#[tokio::test(start_paused = true)]
async fn ws_10_come_back_codes_reconnect_after_a_jittered_delay() {
    let spread = Duration::from_secs(10);
    let mut delays = Vec::new();
    for code in [1001, 1012, 4200] {
        for _ in 0..8 {
            let delay = come_back_delay(code, spread).await;
            assert!(
                delay <= spread + Duration::from_millis(1),
                "{code}: {delay:?}"
            );
            delays.push(delay);
        }
    }
    // Spread out, not all at the same instant: 24 uniform draws over 10 s.
    let min = delays.iter().min().copied().unwrap_or_default();
    let max = delays.iter().max().copied().unwrap_or_default();
    assert!(max - min > Duration::from_secs(3), "{delays:?}");
}

#[tokio::test(start_paused = true)]
async fn ws_10_the_servers_come_back_advice_narrows_the_delay_and_never_widens_it() {
    let spread = Duration::from_secs(10);
    let slack = Duration::from_millis(1);
    // A paced drain advises zero: its closes are spread already, so the client comes straight back.
    for code in [1001, 1012, 4200] {
        let delay = come_back_delay_with(
            code,
            "server closing, reconnect shortly; come back within 0 ms",
            spread,
        )
        .await;
        assert!(delay <= slack, "{code}: {delay:?}");
    }
    // A narrower advice bounds the random delay.
    for _ in 0..8 {
        let delay = come_back_delay_with(4200, "come back within 500 ms", spread).await;
        assert!(delay <= Duration::from_millis(500) + slack, "{delay:?}");
    }
    // A wider one never takes the client past its own bound.
    for _ in 0..8 {
        let delay =
            come_back_delay_with(4200, "come back within 60000 ms", Duration::from_secs(1)).await;
        assert!(delay <= Duration::from_secs(1) + slack, "{delay:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn ws_10_fatal_codes_end_the_client() {
    for code in [1008u16, 4009] {
        let (mut net, transport) = Net::new();
        let (mut client, mut incoming) = Net::client(transport).build().expect("client");
        let mut state = client.state();
        let conn = net.accept().await;
        wait_up(&mut state).await;
        conn.close(code, "go away");
        tokio::time::timeout(HOUR, state.wait_for(State::is_closed))
            .await
            .expect("closed")
            .expect("watch");
        let err = client.send("more").await.expect_err("fatal");
        let close = err.downcast_ref::<ClosedByPeer>().expect("typed close");
        assert_eq!(close.code(), CloseCode(code));
        assert_eq!(close.reason(), "go away");
        settle(Duration::from_secs(60)).await;
        assert_eq!(net.connects().len(), 1, "{code}: no reconnect");
        assert_eq!(
            tokio::time::timeout(HOUR, incoming.recv())
                .await
                .expect("ends"),
            None
        );
        assert!(client.is_closed());
    }
}

#[tokio::test(start_paused = true)]
async fn ws_10_a_close_we_asked_for_ends_it() {
    let (mut net, transport) = Net::new();
    let (mut client, _incoming) = Net::client(transport).build().expect("client");
    let mut conn = net.accept().await;
    client.send("last").await.expect("sent");
    client.close().await;
    assert_eq!(conn.next().await, Some(Seen::Text("last".into())));
    assert_eq!(conn.next().await, Some(Seen::Close(Some(1000))));
    let err = client.send("after").await.expect_err("closed");
    assert!(err.is::<Closed>());
    settle(Duration::from_secs(60)).await;
    assert_eq!(net.connects().len(), 1);
    assert!(client.state().borrow().is_closed());
}

#[tokio::test(start_paused = true)]
async fn ws_10_other_codes_follow_the_classifier() {
    let (mut net, transport) = Net::new();
    let (client, _incoming) = Net::client(transport)
        .classify_close(|close| {
            if close.code() == CloseCode(4500) {
                FailureKind::Fatal
            } else {
                FailureKind::Retriable
            }
        })
        .build()
        .expect("client");
    let mut events = client.events();
    let conn = net.accept().await;
    conn.close(1011, "oops");
    let action = next_event(&mut events, |e| match e {
        ClientEvent::PeerClosed { action, .. } => Some(action),
        _ => None,
    })
    .await;
    assert_eq!(action, CloseAction::Reconnect);
    let conn = net.accept().await;
    conn.close(4500, "banned");
    let action = next_event(&mut events, |e| match e {
        ClientEvent::PeerClosed { action, .. } => Some(action),
        _ => None,
    })
    .await;
    assert_eq!(action, CloseAction::Fatal);
    settle(Duration::from_secs(60)).await;
    assert_eq!(net.connects().len(), 2);
    assert!(client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn ws_11_pings_on_an_interval_shows_rtt_and_pings_on_demand() {
    let (mut net, transport) = Net::new();
    let (client, _incoming) = Net::client(transport)
        .ping(Some((Duration::from_secs(10), Duration::from_secs(5))))
        .build()
        .expect("client");
    let mut events = client.events();
    let _conn = net.accept().await;
    assert_eq!(client.rtt(), None);
    let rtt = next_event(&mut events, |e| match e {
        ClientEvent::Pong { rtt } => Some(rtt),
        _ => None,
    })
    .await;
    assert!(rtt < Duration::from_secs(5));
    assert_eq!(client.rtt(), Some(rtt));
    let manual = client.ping().await.expect("pong");
    assert!(manual < Duration::from_secs(5));
    assert_eq!(net.connects().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn ws_11_a_missing_pong_replaces_the_socket() {
    let (mut net, transport) = Net::new();
    net.set_mode(Mode::Stall);
    let (client, _incoming) = Net::client(transport)
        .ping(Some((Duration::from_secs(10), Duration::from_secs(5))))
        .build()
        .expect("client");
    let mut events = client.events();
    let _stalled = net.accept().await;
    let started = Instant::now();
    net.set_mode(Mode::Serve);
    let after = next_event(&mut events, |e| match e {
        ClientEvent::PongTimeout { after } => Some(after),
        _ => None,
    })
    .await;
    assert_eq!(after, Duration::from_secs(5));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
        "{waited:?}"
    );
    let reason = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::Disconnected { reason }) => Some(reason),
        _ => None,
    })
    .await;
    assert!(find::<PongTimeout>(&*reason).is_some());
    let _fresh = net.accept().await;
    assert_eq!(net.connects().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn ws_11_the_pong_timeout_must_be_shorter_than_the_interval() {
    let (_net, transport) = Net::new();
    let err = Net::client(transport.clone())
        .ping(Some((Duration::from_secs(5), Duration::from_secs(5))))
        .build()
        .expect_err("rejected");
    assert!(!err.reason().is_empty());
    let (client, _incoming) = Net::client(transport).build().expect("no heartbeat");
    // No socket yet may be up: a manual ping says so, typed.
    let (down, _net) = {
        let (net, transport) = Net::new();
        net.set_up(false);
        (Net::client(transport).build().expect("client").0, net)
    };
    let err = down.ping().await.expect_err("down");
    assert!(err.is::<NotConnected>());
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn ws_12_errors_are_typed() {
    // A handshake that never finishes.
    let (net, transport) = Net::new();
    net.set_mode(Mode::Mute);
    let (client, _incoming) = Net::client(transport)
        .handshake_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut events = client.events();
    let error = next_event(&mut events, |e| match e {
        ClientEvent::Lifecycle(Event::ConnectFailed { error, .. }) => Some(error),
        _ => None,
    })
    .await;
    let timeout = error.downcast_ref::<HandshakeTimeout>().expect("typed");
    assert_eq!(timeout.after(), Duration::from_secs(2));

    // A 401 answer to the handshake ends the client with the status as the source.
    let (net, transport) = Net::new();
    net.refuse_with(401);
    let (mut client, _incoming) = Net::client(transport).build().expect("client");
    let err = client.send("x").await.expect_err("fatal");
    let fatal = err.downcast_ref::<FatalConnect>().expect("typed");
    let status = std::error::Error::source(fatal).and_then(|s| s.downcast_ref::<HttpRejected>());
    assert_eq!(status.map(HttpRejected::status), Some(401));

    // A message over the send limit is refused before it is queued.
    let (mut net, transport) = Net::new();
    let (mut client, _incoming) = Net::client(transport)
        .max_message_size(1024)
        .build()
        .expect("client");
    let _conn = net.accept().await;
    let err = client.send(vec![0u8; 2048]).await.expect_err("too big");
    let too_big = err.downcast_ref::<MessageTooBig>().expect("typed");
    assert_eq!((too_big.size(), too_big.max()), (2048, 1024));
    assert_eq!(client.stats().queued + client.stats().direct, 0);

    // Replays run out: the last error is `NotSent`, never a silent drop.
    let (mut net, transport) = Net::new();
    net.set_mode(Mode::Stall);
    net.set_buffer(1024);
    let (mut client, _incoming) = Net::client(transport)
        .max_replays(0)
        .come_back_within(Duration::from_millis(10))
        .build()
        .expect("client");
    let stalled = net.accept().await;
    let first = client
        .ready()
        .await
        .expect("ready")
        .call(Message::from(vec![1u8; 8192]));
    let mut first = tokio_test::task::spawn(first);
    settle(Duration::from_millis(10)).await;
    assert!(first.poll().is_pending(), "stuck in the flush");
    let second = client
        .ready()
        .await
        .expect("ready")
        .call(Message::from("queued behind"));
    settle(Duration::from_millis(10)).await;
    stalled.drop_socket();
    let (first, second) = tokio::join!(first, second);
    assert!(first.expect_err("lost").is::<MaybeDelivered>());
    let second = second.expect_err("not sent");
    assert!(second.is::<NotSent>(), "{second:?}");
}

/// Request mode's codec for these tests: `req:<id> …` and `rep:<id> …` carry their id.
fn correlate(msg: &Message) -> Option<u64> {
    let text = std::str::from_utf8(msg.as_bytes()).ok()?;
    let rest = text
        .strip_prefix("req:")
        .or_else(|| text.strip_prefix("rep:"))?;
    rest.split(' ').next()?.parse().ok()
}

#[tokio::test(start_paused = true)]
async fn ws_09_a_request_is_completed_only_when_answered() {
    let (mut net, transport) = Net::new();
    let (mut client, mut incoming) = Net::client(transport)
        .correlate(correlate)
        .build()
        .expect("client");
    let mut conn = net.accept().await;
    let request = tokio::spawn(async move {
        let reply = client.request("req:7 balance").await;
        (client, reply)
    });
    assert_eq!(conn.next().await, Some(Seen::Text("req:7 balance".into())));
    settle(Duration::from_secs(1)).await;
    assert!(!request.is_finished(), "written is not answered");
    conn.send("news of the day");
    conn.send("rep:7 42");
    let (mut client, reply) = request.await.expect("task");
    assert_eq!(reply.expect("answered"), Message::from("rep:7 42"));
    // The reply went to its request; other messages to the stream.
    assert_eq!(recv(&mut incoming).await, Message::from("news of the day"));

    // No id: refused, never sent.
    let err = client.request("no id here").await.expect_err("no id");
    assert!(err.is::<connman_ws::client::NoRequestId>());
    // No answer in time on a live socket.
    let (mut net, transport) = Net::new();
    let (mut slow, _incoming) = Net::client(transport)
        .correlate(correlate)
        .request_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let _conn = net.accept().await;
    let err = slow.request("req:1 ping").await.expect_err("unanswered");
    // It was written: the server may have handled it.
    let maybe = err
        .downcast_ref::<MaybeDelivered>()
        .expect("unanswered is maybe delivered");
    assert!(
        std::error::Error::source(maybe).is_some_and(|source| source.is::<Elapsed>()),
        "{maybe:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ws_09_a_request_lost_with_its_link_is_maybe_delivered_or_replayed_when_idempotent() {
    let (mut net, transport) = Net::new();
    let (client, _incoming) = Net::client(transport)
        .correlate(correlate)
        .come_back_within(Duration::from_millis(100))
        .build()
        .expect("client");

    let mut plain = client.clone();
    let lost = tokio::spawn(async move { plain.request("req:1 transfer").await });
    let mut conn = net.accept().await;
    assert_eq!(conn.next().await, Some(Seen::Text("req:1 transfer".into())));
    conn.drop_socket();
    let err = lost.await.expect("task").expect_err("lost with its link");
    assert!(err.is::<MaybeDelivered>(), "{err}");

    let mut idempotent = client.clone();
    let replayed = tokio::spawn(async move { idempotent.request_idempotent("req:2 read").await });
    let mut conn = net.accept().await;
    assert_eq!(conn.next().await, Some(Seen::Text("req:2 read".into())));
    conn.drop_socket();
    let mut again = net.accept().await;
    assert_eq!(again.next().await, Some(Seen::Text("req:2 read".into())));
    again.send("rep:2 done");
    let reply = replayed
        .await
        .expect("task")
        .expect("answered on the next socket");
    assert_eq!(reply, Message::from("rep:2 done"));
}

/// The builder accepts a ping interval near `Duration::MAX` (pings in effect never): the socket's reader waits for
/// it instead of overflowing the clock and dying, so messages still arrive.
#[tokio::test(start_paused = true)]
async fn ws_client_ping_interval_near_duration_max_keeps_reading() {
    let (mut net, transport) = Net::new();
    let (_client, mut incoming) = Net::client(transport)
        .ping(Some((Duration::MAX, Duration::from_secs(5))))
        .build()
        .expect("client");
    let conn = net.accept().await;
    conn.send("one");
    assert_eq!(recv(&mut incoming).await, Message::from("one"));
    settle(Duration::from_secs(3600)).await;
    conn.send("two");
    assert_eq!(recv(&mut incoming).await, Message::from("two"));
}

/// An inbound capacity beyond what a channel can hold is a typed `InvalidConfig`, not a panic in `build`.
#[tokio::test]
async fn ws_client_inbound_capacity_beyond_a_channel_is_invalid_config() {
    let (_net, transport) = Net::new();
    let built = Net::client(transport).inbound_capacity(usize::MAX).build();
    let Err(err) = built else {
        panic!("usize::MAX messages accepted")
    };
    assert!(!err.reason().is_empty());
    let (_net, transport) = Net::new();
    assert!(
        Net::client(transport)
            .inbound_capacity(usize::MAX >> 3)
            .build()
            .is_ok()
    );
}

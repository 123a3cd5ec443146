//! `Group`'s JSON helpers (feature `serde`) and the ported soketi specs (SK-19, SK-20).

use std::time::Duration;

use bytes::Bytes;
use connman_core::member::CloseCode;
use connman_pool::group::{ChannelPeer, Frame, Group, Remote, channel};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

fn json_of(frame: Option<Frame>) -> Value {
    match frame {
        Some(Frame::Message(b)) => serde_json::from_slice(&b).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A value that serde_json cannot encode: a map with non-string keys.
fn unencodable() -> std::collections::HashMap<(u8, u8), u8> {
    [((1, 2), 3)].into_iter().collect()
}

#[tokio::test(start_paused = true)]
async fn sk_07_send_json_and_broadcast_json_encode_once() {
    let group = Group::new();
    let (a, mut pa) = channel(4);
    let (b, mut pb) = channel(4);
    group.add("ns", "a", a).unwrap();
    group.add("ns", "b", b).unwrap();
    group
        .send_json("ns", "a", &json!({"event": "hello"}))
        .unwrap();
    assert_eq!(json_of(pa.recv().await), json!({"event": "hello"}));

    let summary = group
        .broadcast_json("ns", &json!({"event": "all"}), &[])
        .unwrap();
    assert_eq!(summary.delivered, 2);
    let (Some(Frame::Message(x)), Some(Frame::Message(y))) = (pa.recv().await, pb.recv().await)
    else {
        panic!("both get the broadcast");
    };
    assert_eq!(x.as_ptr(), y.as_ptr(), "one encoding, shared");

    // A value that cannot be encoded is a typed error, and nothing is sent.
    let err = group.send_json("ns", "a", &unencodable()).unwrap_err();
    assert!(err.is::<serde_json::Error>());
    assert!(group.broadcast_json("ns", &unencodable(), &[]).is_err());
    sleep(Duration::from_millis(1)).await;
    assert!(pa.try_recv().is_none());
}

#[tokio::test(start_paused = true)]
async fn sk_08_send_error_then_close_closes_exactly_once() {
    let group = Group::new();
    let (m, mut peer) = channel(4);
    group.add("app", "1", m).unwrap();
    let error =
        json!({"event": "pusher:error", "data": {"code": 4009, "message": "App not found"}});
    group
        .send_error_then_close("app", "1", &error, CloseCode::UNAUTHORIZED, "app not found")
        .unwrap()
        .await;
    assert_eq!(json_of(peer.recv().await), error);
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(
            CloseCode::UNAUTHORIZED,
            "app not found".into()
        ))
    );
    assert_eq!(peer.recv().await, None, "one close, nothing after it");
}

#[tokio::test(start_paused = true)]
async fn sk_18_to_remote_serialises_as_id_and_namespace() {
    let group = Group::new();
    let (m, _peer) = channel(4);
    group.add("app-1", "socket-9", m).unwrap();
    let remote = group.to_remote("app-1", "socket-9").unwrap();
    assert_eq!(
        serde_json::to_value(&remote).unwrap(),
        json!({"id": "socket-9", "namespace": "app-1"})
    );
    let back: Remote =
        serde_json::from_value(json!({"id": "socket-9", "namespace": "app-1"})).unwrap();
    assert_eq!(back, remote);
}

/// Port of soketi's `connections-pool.spec`: two connections in `radio:5ghz`, one in `radio:40ghz`.
#[tokio::test(start_paused = true)]
async fn sk_19_connections_pool_spec() {
    let group = Group::new();
    let mut peers: Vec<ChannelPeer> = Vec::new();
    for (ns, id) in [
        ("radio:5ghz", "1"),
        ("radio:5ghz", "2"),
        ("radio:40ghz", "3"),
    ] {
        let (m, p) = channel(8);
        group.add(ns, id, m).unwrap();
        peers.push(p);
    }
    let summary = group
        .broadcast_json("radio:5ghz", &json!({"frequency": "5ghz"}), &[])
        .unwrap();
    assert_eq!(summary.delivered, 2);
    assert_eq!(group.ids("radio:5ghz"), ["1", "2"], "insertion order");
    for peer in &mut peers[..2] {
        assert_eq!(json_of(peer.recv().await), json!({"frequency": "5ghz"}));
    }
    sleep(Duration::from_millis(1)).await;
    assert!(peers[2].try_recv().is_none(), "40ghz hears nothing");

    let start = Instant::now();
    for done in group.close_all("radio:5ghz", CloseCode::NORMAL, "bye") {
        done.await;
    }
    for peer in &mut peers[..2] {
        assert_eq!(
            peer.recv().await,
            Some(Frame::Close(CloseCode::NORMAL, "bye".into()))
        );
    }
    // The close follows the flush at once: no fixed 100 ms wait (SK-09).
    assert!(start.elapsed() < Duration::from_millis(100));
    assert!(peers[2].try_recv().is_none());
    assert_eq!(group.namespaces(), ["radio:40ghz"]);
}

/// Port of soketi's `connection.spec`: `sendThenClose('hello', 1000, 'bye')`.
#[tokio::test(start_paused = true)]
async fn sk_20_connection_spec_send_then_close() {
    let group = Group::new();
    let (m, mut peer) = channel(8);
    group.add("ns", "1", m).unwrap();
    group
        .send_json_then_close("ns", "1", "hello", CloseCode::NORMAL, "bye")
        .unwrap()
        .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::Message(Bytes::from_static(b"\"hello\"")))
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::Close(CloseCode::NORMAL, "bye".into()))
    );
    assert_eq!(peer.recv().await, None);
}

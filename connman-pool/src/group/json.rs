//! JSON helpers (feature `serde`): encode once with serde_json, then send or broadcast the bytes.
//!
//! soketi's `sendJson` fell back to sending the raw value when stringify threw; here a value that cannot be encoded
//! is a `serde_json::Error` and nothing is sent.

use bytes::Bytes;
use connman_core::error::BoxError;
use connman_core::member::CloseCode;
use serde::Serialize;

use super::{BroadcastSummary, Closing, Group};

impl Group {
    /// Encodes `value` as JSON and queues it for one member, as [`Group::send`] does.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use connman_pool::group::{Frame, Group, channel};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = Group::new();
    /// let (member, mut peer) = channel(4);
    /// group.add("ns", "1", member).unwrap();
    /// group.send_json("ns", "1", &serde_json::json!({"event": "hi"})).unwrap();
    /// assert_eq!(peer.recv().await, Some(Frame::Message(Bytes::from(r#"{"event":"hi"}"#))));
    /// # }
    /// ```
    pub fn send_json<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        id: &str,
        value: &T,
    ) -> Result<(), BoxError> {
        self.send(namespace, id, encode(value)?)
    }

    /// Encodes `value` as JSON once and broadcasts it, as [`Group::broadcast`] does.
    pub fn broadcast_json<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        value: &T,
        except: &[&str],
    ) -> Result<BroadcastSummary, serde_json::Error> {
        Ok(self.broadcast(namespace, encode(value)?, except))
    }

    /// Encodes `value` as JSON, queues it, then closes the member, as [`Group::send_then_close`] does.
    pub fn send_json_then_close<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        id: &str,
        value: &T,
        code: CloseCode,
        reason: &str,
    ) -> Result<Closing, BoxError> {
        self.send_then_close(namespace, id, encode(value)?, code, reason)
    }

    /// Sends an error object as JSON, then closes the member once (soketi's `sendError`, whose
    /// `sendErrorThenClose` closed twice).
    pub fn send_error_then_close<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        id: &str,
        error: &T,
        code: CloseCode,
        reason: &str,
    ) -> Result<Closing, BoxError> {
        self.send_json_then_close(namespace, id, error, code, reason)
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(value).map(Bytes::from)
}

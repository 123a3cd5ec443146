//! The messages nodes send each other for cross-node queries and commands, in a small binary form.
//!
//! A message is a tag byte, then fields: integers as 8 bytes big-endian, text and bytes as a 4-byte big-endian length
//! and the bytes. Anything malformed is a [`Malformed`] error and the message is dropped.

use std::error::Error;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::broker::NodeId;

/// A message from another node could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    what: &'static str,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed cluster message: {}", self.what)
    }
}

impl Error for Malformed {}

/// A question or command for other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ask {
    Members(String),
    Count(String),
    IsMember(String, String),
    SendTo(String, String, Bytes),
    CloseAll(String, u16, String),
    Drain(u32, u16, String),
}

/// An answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Ids(Vec<String>),
    Count(u64),
    Flag(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire {
    Request { id: u64, from: NodeId, ask: Ask },
    Response { id: u64, reply: Reply },
}

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

impl Wire {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Wire::Request { id, from, ask } => {
                out.put_u8(REQUEST);
                out.put_u64(*id);
                put_str(&mut out, from.as_str());
                match ask {
                    Ask::Members(ns) => {
                        out.put_u8(1);
                        put_str(&mut out, ns);
                    }
                    Ask::Count(ns) => {
                        out.put_u8(2);
                        put_str(&mut out, ns);
                    }
                    Ask::IsMember(ns, id) => {
                        out.put_u8(3);
                        put_str(&mut out, ns);
                        put_str(&mut out, id);
                    }
                    Ask::SendTo(ns, id, msg) => {
                        out.put_u8(4);
                        put_str(&mut out, ns);
                        put_str(&mut out, id);
                        put_bytes(&mut out, msg);
                    }
                    Ask::CloseAll(ns, code, reason) => {
                        out.put_u8(5);
                        put_str(&mut out, ns);
                        out.put_u64(u64::from(*code));
                        put_str(&mut out, reason);
                    }
                    Ask::Drain(rate, code, reason) => {
                        out.put_u8(6);
                        out.put_u64(u64::from(*rate));
                        out.put_u64(u64::from(*code));
                        put_str(&mut out, reason);
                    }
                }
            }
            Wire::Response { id, reply } => {
                out.put_u8(RESPONSE);
                out.put_u64(*id);
                match reply {
                    Reply::Ids(ids) => {
                        out.put_u8(1);
                        out.put_u64(ids.len() as u64);
                        for id in ids {
                            put_str(&mut out, id);
                        }
                    }
                    Reply::Count(n) => {
                        out.put_u8(2);
                        out.put_u64(*n);
                    }
                    Reply::Flag(b) => {
                        out.put_u8(3);
                        out.put_u8(u8::from(*b));
                    }
                }
            }
        }
        out.freeze()
    }

    pub(crate) fn decode(mut buf: Bytes) -> Result<Self, Malformed> {
        let buf = &mut buf;
        match get_u8(buf)? {
            REQUEST => {
                let id = get_u64(buf)?;
                let from = NodeId::parse(&get_str(buf)?).ok_or(Malformed { what: "node id" })?;
                let ask = match get_u8(buf)? {
                    1 => Ask::Members(get_str(buf)?),
                    2 => Ask::Count(get_str(buf)?),
                    3 => Ask::IsMember(get_str(buf)?, get_str(buf)?),
                    4 => Ask::SendTo(get_str(buf)?, get_str(buf)?, get_bytes(buf)?),
                    5 => Ask::CloseAll(get_str(buf)?, get_u16(buf)?, get_str(buf)?),
                    6 => {
                        let rate =
                            u32::try_from(get_u64(buf)?).map_err(|_| Malformed { what: "rate" })?;
                        Ask::Drain(rate, get_u16(buf)?, get_str(buf)?)
                    }
                    _ => return Err(Malformed { what: "question" }),
                };
                Ok(Wire::Request { id, from, ask })
            }
            RESPONSE => {
                let id = get_u64(buf)?;
                let reply = match get_u8(buf)? {
                    1 => {
                        let n = get_u64(buf)?;
                        // Each id takes at least its 4-byte length: a count beyond that is a lie.
                        if n > (buf.remaining() / 4) as u64 {
                            return Err(Malformed { what: "id count" });
                        }
                        let mut ids = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            ids.push(get_str(buf)?);
                        }
                        Reply::Ids(ids)
                    }
                    2 => Reply::Count(get_u64(buf)?),
                    3 => Reply::Flag(get_u8(buf)? != 0),
                    _ => return Err(Malformed { what: "answer" }),
                };
                Ok(Wire::Response { id, reply })
            }
            _ => Err(Malformed { what: "tag" }),
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(&b[..b.len().min(u32::MAX as usize)]);
}

fn get_u8(buf: &mut Bytes) -> Result<u8, Malformed> {
    buf.try_get_u8().map_err(|_| Malformed { what: "short" })
}

fn get_u64(buf: &mut Bytes) -> Result<u64, Malformed> {
    buf.try_get_u64().map_err(|_| Malformed { what: "short" })
}

fn get_u16(buf: &mut Bytes) -> Result<u16, Malformed> {
    u16::try_from(get_u64(buf)?).map_err(|_| Malformed { what: "close code" })
}

fn get_bytes(buf: &mut Bytes) -> Result<Bytes, Malformed> {
    let len = buf.try_get_u32().map_err(|_| Malformed { what: "short" })? as usize;
    if buf.remaining() < len {
        return Err(Malformed { what: "short" });
    }
    Ok(buf.split_to(len))
}

fn get_str(buf: &mut Bytes) -> Result<String, Malformed> {
    String::from_utf8(get_bytes(buf)?.to_vec()).map_err(|_| Malformed { what: "utf-8" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_cut_ones_are_malformed() {
        let from = NodeId::random();
        let all = [
            Wire::Request {
                id: 1,
                from: from.clone(),
                ask: Ask::Members("a".into()),
            },
            Wire::Request {
                id: 2,
                from: from.clone(),
                ask: Ask::Count("a".into()),
            },
            Wire::Request {
                id: 3,
                from: from.clone(),
                ask: Ask::IsMember("a".into(), "x".into()),
            },
            Wire::Request {
                id: 4,
                from: from.clone(),
                ask: Ask::SendTo("a".into(), "x".into(), Bytes::from_static(b"\0hi")),
            },
            Wire::Request {
                id: 5,
                from: from.clone(),
                ask: Ask::CloseAll("a".into(), 4200, "bye".into()),
            },
            Wire::Request {
                id: 6,
                from,
                ask: Ask::Drain(7, 4200, "go".into()),
            },
            Wire::Response {
                id: 7,
                reply: Reply::Ids(vec!["x".into(), "y".into()]),
            },
            Wire::Response {
                id: 8,
                reply: Reply::Count(9),
            },
            Wire::Response {
                id: 9,
                reply: Reply::Flag(true),
            },
        ];
        for wire in all {
            let bytes = wire.encode();
            assert_eq!(Wire::decode(bytes.clone()), Ok(wire));
            for cut in 0..bytes.len() {
                assert!(Wire::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
            }
        }
    }
}

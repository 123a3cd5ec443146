//! A RESP2 codec (the `redis-protocol` crate's) with a bound on the bytes one frame may take.

use std::io;

use bytes::BytesMut;
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio_util::codec::{Decoder, Encoder};

/// RESP2 frames, at most `max_frame` bytes each: a longer one fails the connection instead of growing the buffer.
#[derive(Debug, Clone)]
pub(crate) struct RespCodec {
    inner: Resp2,
    max_frame: usize,
}

impl RespCodec {
    pub(crate) fn new(max_frame: usize) -> Self {
        Self {
            inner: Resp2::default(),
            max_frame: max_frame.max(64),
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Decoder for RespCodec {
    type Item = BytesFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesFrame>, io::Error> {
        match self.inner.decode(src).map_err(invalid)? {
            Some(frame) => Ok(Some(frame)),
            None if src.len() > self.max_frame => Err(invalid(format!(
                "a RESP frame over {} bytes",
                self.max_frame
            ))),
            None => Ok(None),
        }
    }
}

impl Encoder<BytesFrame> for RespCodec {
    type Error = io::Error;

    fn encode(&mut self, item: BytesFrame, dst: &mut BytesMut) -> Result<(), io::Error> {
        self.inner.encode(item, dst).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_an_endless_one_is_refused() {
        let mut codec = RespCodec::new(64);
        let mut buf = BytesMut::new();
        let frame = BytesFrame::Array(vec![
            BytesFrame::BulkString("PING".into()),
            BytesFrame::Integer(7),
        ]);
        codec.encode(frame.clone(), &mut buf).expect("encoded");
        assert_eq!(codec.decode(&mut buf).expect("decoded"), Some(frame));
        let mut endless = BytesMut::from(&b"$1000\r\n"[..]);
        endless.extend_from_slice(&[b'x'; 100]);
        let err = codec.decode(&mut endless).expect_err("over the bound");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut garbage = BytesMut::from(&b"?what\r\n"[..]);
        assert!(codec.decode(&mut garbage).is_err());
    }
}

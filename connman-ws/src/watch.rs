//! The socket under tungstenite, watched: where the peer's frames begin and end, so that a connection that stopped
//! reading through tungstenite (after a frame over the size limit, tungstenite cannot find the next frame) can still
//! see the peer's close frame while it discards the rest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `IO` with a [`FrameWatch`] over the bytes read from it. Writes pass straight through.
#[derive(Debug)]
pub(crate) struct Watched<IO> {
    io: IO,
    frames: FrameWatch,
}

impl<IO> Watched<IO> {
    /// `io` whose first bytes are frames (hyper has read the HTTP request already).
    #[cfg(feature = "hyper")]
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            frames: FrameWatch::default(),
        }
    }

    /// `io` that starts with an HTTP request or response: frames begin after its blank line.
    pub(crate) fn after_http(io: IO) -> Self {
        Self {
            io,
            frames: FrameWatch {
                in_http: true,
                ..FrameWatch::default()
            },
        }
    }

    /// Whether a whole close frame from the peer has been read from the socket (by tungstenite or by a discard).
    pub(crate) fn peer_close_seen(&self) -> bool {
        self.frames.close_seen
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.frames.scan(&buf.filled()[before..]);
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Follows frame boundaries in a byte stream (RFC 6455 section 5.2): collects each header, skips its payload by
/// count, and notes when a close frame (opcode 8) has been read whole. Garbage only makes it skip wrong amounts.
#[derive(Debug, Default)]
struct FrameWatch {
    /// Still in the HTTP head of the handshake; `crlf` counts how much of its closing `\r\n\r\n` was seen.
    in_http: bool,
    crlf: u8,
    header: [u8; 14],
    have: usize,
    skip: u64,
    in_close: bool,
    close_seen: bool,
}

impl FrameWatch {
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_http {
                let byte = data[0];
                data = &data[1..];
                self.crlf = match (self.crlf, byte) {
                    (0 | 2, b'\r') => self.crlf + 1,
                    (1 | 3, b'\n') => self.crlf + 1,
                    (_, b'\r') => 1,
                    _ => 0,
                };
                if self.crlf == 4 {
                    self.in_http = false;
                }
                continue;
            }
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 && self.in_close {
                    self.close_seen = true;
                }
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7F;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let len = match ext {
                0 => u64::from(len7),
                n => self.header[2..2 + n]
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            };
            self.in_close = self.header[0] & 0x0F == 8;
            self.have = 0;
            self.skip = len;
            if len == 0 && self.in_close {
                self.close_seen = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameWatch;

    #[test]
    fn finds_a_close_after_a_long_frame_fed_in_pieces() {
        let mut watch = FrameWatch::default();
        // A masked binary frame of 70 000 bytes (64-bit length), then a masked close with code 1000.
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&70_000u64.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend(std::iter::repeat_n(0x88u8, 70_000));
        bytes.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
        let (last, rest) = bytes.split_last().unwrap();
        for chunk in rest.chunks(1000) {
            watch.scan(chunk);
            assert!(!watch.close_seen);
        }
        watch.scan(&[*last]);
        assert!(watch.close_seen);
    }

    #[test]
    fn frames_begin_after_the_http_head() {
        let mut watch = FrameWatch {
            in_http: true,
            ..FrameWatch::default()
        };
        // A request whose bytes would read as frames, then a close frame in the same chunk.
        let mut bytes = b"GET /\r\r\nHost: x\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0x88, 0x80, 1, 2, 3, 4]);
        watch.scan(&bytes[..10]);
        watch.scan(&bytes[10..]);
        assert!(watch.close_seen);
    }

    #[test]
    fn an_empty_close_counts_and_a_ping_does_not() {
        let mut watch = FrameWatch::default();
        watch.scan(&[0x89, 0x00, 0x8A, 0x02, b'h', b'i']);
        assert!(!watch.close_seen);
        watch.scan(&[0x88, 0x00]);
        assert!(watch.close_seen);
    }
}

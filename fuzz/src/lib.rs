//! Support for connman's fuzz targets: an IO whose readiness, chunk sizes and contents are all chosen by the fuzzer,
//! in the shape of h2's `fuzz_e2e` mock IO, and a runtime with paused time so that a hang shows as a failed deadline
//! instead of a stuck run.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a target's scenario may take in virtual time before it counts as a hang. Every connman default timeout is
/// well below this, so anything still pending at the deadline never resolves.
pub const HANG: Duration = Duration::from_secs(3600);

/// A transport whose every step is scripted: each `poll_read` and `poll_write` takes the next script byte to decide
/// whether to be pending (waking itself at once, as a socket that was not ready), how many bytes to move, or (for
/// writes) to fail. Reads deliver `input`; when it is used up, reads see the end of the stream.
#[derive(Debug)]
pub struct ScriptedIo {
    input: Vec<u8>,
    read_at: usize,
    script: Vec<u8>,
    step: usize,
    /// Every byte written, to check what went out.
    pub written: Vec<u8>,
}

impl ScriptedIo {
    /// A transport that delivers `input` in the chunks and at the moments that `script` says.
    pub fn new(input: Vec<u8>, script: Vec<u8>) -> Self {
        Self {
            input,
            read_at: 0,
            script,
            step: 0,
            written: Vec::new(),
        }
    }

    /// The next script byte; after the script, every step moves as much as it can.
    fn next(&mut self) -> u8 {
        let b = self.script.get(self.step).copied().unwrap_or(u8::MAX);
        self.step += 1;
        b
    }
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let step = self.next();
        if step < 32 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let left = self.input.len() - self.read_at;
        let chunk = if step == u8::MAX {
            left
        } else {
            usize::from(step - 31)
        };
        let n = chunk.min(left).min(buf.remaining());
        let start = self.read_at;
        buf.put_slice(&self.input[start..start + n]);
        self.read_at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let step = self.next();
        match step {
            0..=15 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            16 => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            _ => {
                let n = if step == u8::MAX {
                    data.len()
                } else {
                    data.len().min(usize::from(step - 16))
                };
                self.written.extend_from_slice(&data[..n]);
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server's side of a WebSocket connection for a client under test: once the client's handshake request has been
/// written whole, reads deliver a `101 Switching Protocols` answer carrying the `Sec-WebSocket-Accept` derived from
/// the request's key (whatever key the client chose), then `frames`. Readiness and chunk sizes of both directions
/// come from `script`, as for [`ScriptedIo`]. A read before the request is whole sees the end of the stream, as from
/// a server that hung up.
#[derive(Debug)]
pub struct ScriptedServer {
    io: ScriptedIo,
    /// `Some` until the answer to the handshake has been put in front of the frames.
    frames: Option<Vec<u8>>,
    /// Answer with these bytes instead of a valid `101` (a broken or refused handshake).
    answer: Option<Vec<u8>>,
}

impl ScriptedServer {
    /// A server that answers the handshake with a valid `101`, then sends `frames`.
    pub fn new(frames: Vec<u8>, script: Vec<u8>) -> Self {
        Self {
            io: ScriptedIo::new(Vec::new(), script),
            frames: Some(frames),
            answer: None,
        }
    }

    /// A server that answers the handshake with `answer` (anything, valid or not), then sends `frames`.
    pub fn with_answer(answer: Vec<u8>, frames: Vec<u8>, script: Vec<u8>) -> Self {
        Self {
            answer: Some(answer),
            ..Self::new(frames, script)
        }
    }

    /// Every byte the client wrote.
    pub fn written(&self) -> &[u8] {
        &self.io.written
    }

    /// Once the request is whole, puts the answer and the frames in the read buffer.
    fn respond(&mut self) {
        let Some(request_end) = find(&self.io.written, b"\r\n\r\n") else {
            return;
        };
        let Some(frames) = self.frames.take() else {
            return;
        };
        let mut input = match self.answer.take() {
            Some(answer) => answer,
            None => {
                let key = header(&self.io.written[..request_end], "sec-websocket-key")
                    .unwrap_or_default();
                let accept = connman_ws::tungstenite::handshake::derive_accept_key(key.as_bytes());
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes()
            }
        };
        input.extend_from_slice(&frames);
        self.io.input = input;
        self.io.read_at = 0;
    }
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the header `name` (lower case) in an HTTP head.
fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

impl AsyncRead for ScriptedServer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.respond();
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ScriptedServer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One WebSocket frame as a server sends it, every field chosen by the fuzzer (opcodes, reserved bits and masks
/// included, so invalid frames too); [`Frame::encode`] writes it on the wire.
#[derive(Debug, Clone, arbitrary::Arbitrary)]
pub struct Frame {
    /// The FIN bit: the last frame of a message.
    pub fin: bool,
    /// The three reserved bits (must be zero without an extension).
    pub rsv: u8,
    /// The opcode (low four bits): 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong, others reserved.
    pub opcode: u8,
    /// A masking key (a server must not mask).
    pub mask: Option<[u8; 4]>,
    /// Claim this length instead of the payload's (a frame longer or shorter than it says).
    pub claimed_len: Option<u64>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A valid unmasked frame.
    pub fn new(fin: bool, opcode: u8, payload: &[u8]) -> Self {
        Self {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            claimed_len: None,
            payload: payload.to_vec(),
        }
    }

    /// The frame on the wire (RFC 6455 section 5.2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | (self.opcode & 0xf));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self
            .claimed_len
            .unwrap_or(u64::try_from(self.payload.len()).unwrap_or(u64::MAX));
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
    }
}

/// Runs `scenario` on a current-thread runtime with paused time and fails if it is still pending after [`HANG`].
///
/// # Panics
///
/// When the scenario hangs: with paused time the clock jumps ahead as soon as every task waits, so only a future that
/// nothing will ever wake reaches the deadline.
pub fn run<F: Future>(scenario: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async {
        match tokio::time::timeout(HANG, scenario).await {
            Ok(out) => out,
            Err(_) => panic!("the scenario hung: still pending after {HANG:?} of virtual time"),
        }
    })
}

/// A transport that hands out one scripted server, then refuses every later connect.
#[derive(Debug)]
pub struct Transport(pub Option<ScriptedServer>);

impl tower_service::Service<connman_tcp::HostPort> for Transport {
    type Response = ScriptedServer;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<ScriptedServer>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: connman_tcp::HostPort) -> Self::Future {
        std::future::ready(
            self.0
                .take()
                .ok_or_else(|| io::ErrorKind::ConnectionRefused.into()),
        )
    }
}

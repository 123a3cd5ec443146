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

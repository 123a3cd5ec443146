//! The WebSocket server path: the handshake request and every frame after it come from the fuzzer, in whatever chunks
//! and at whatever moments. `accept` either refuses with an error or gives a connection whose receiver ends, each
//! without a panic and without hanging.
#![no_main]

use arbitrary::Arbitrary;
use connman_fuzz::{ScriptedIo, run};
use connman_ws::{AcceptConfig, WsConfig, accept};
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;

const HANDSHAKE: &[u8] = b"GET /app/lobby?x=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[derive(Debug, Arbitrary)]
struct Input {
    /// Start from a valid handshake (so the frames are reached) or send only the fuzzer's bytes.
    valid_handshake: bool,
    /// The largest message accepted, in KiB (small, so the 1009 path is reached).
    max_message_kib: u8,
    bytes: Vec<u8>,
    script: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut bytes = if input.valid_handshake {
        HANDSHAKE.to_vec()
    } else {
        Vec::new()
    };
    bytes.extend_from_slice(&input.bytes);
    let io = ScriptedIo::new(bytes, input.script);
    let max = (usize::from(input.max_message_kib) + 1) * 1024;
    let Ok(ws) = WsConfig::builder().max_message_size(max).build() else {
        return;
    };
    let config = AcceptConfig::new(ws).route(|req| Some(req.uri().path().to_owned()));
    run(async move {
        let Ok(conn) = accept(io, &config).await else {
            return;
        };
        let (_member, mut incoming) = conn.split();
        while let Some(Ok(_)) = incoming.next().await {}
    });
});

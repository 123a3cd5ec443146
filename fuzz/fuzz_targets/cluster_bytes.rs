//! The cluster's parsers, fed what a redis-server or another node may send: RESP2 frames through the bounded codec
//! and the published envelopes inside them (the codec must never hold more than its bound), and the cross-node
//! request and reply format (what decodes must encode back to itself). Nothing may panic.
#![no_main]

use arbitrary::Arbitrary;
use connman_pool::cluster::fuzzing;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// The largest RESP frame the codec accepts, in bytes.
    max_frame: u16,
    redis: Vec<u8>,
    wire: Vec<u8>,
}

fuzz_target!(|input: Input| {
    fuzzing::redis_bytes(&input.redis, usize::from(input.max_frame));
    fuzzing::wire_bytes(&input.wire);
});

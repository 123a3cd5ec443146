//! The pipelined client over a line codec, fed whatever a peer may send, in whatever chunks and at whatever moments:
//! every request must get exactly one outcome (a response, `NotSent`, `MaybeDelivered` or a pipeline error), nothing
//! may hang and nothing may panic.
#![no_main]

use arbitrary::Arbitrary;
use connman_core::error::{MaybeDelivered, NotSent};
use connman_fuzz::{ScriptedIo, run};
use connman_tcp::pipeline::{Pipeline, PipelineError};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::LinesCodec;
use tower_service::Service;

#[derive(Debug, Arbitrary)]
struct Input {
    /// The longest line the codec accepts.
    max_line: u8,
    requests: Vec<String>,
    /// What the peer sends back.
    reply: Vec<u8>,
    /// Readiness and chunk sizes of every read and write.
    script: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let requests: Vec<String> = input.requests.into_iter().take(16).collect();
    let io = ScriptedIo::new(input.reply, input.script);
    run(async move {
        let codec = LinesCodec::new_with_max_length(usize::from(input.max_line) + 1);
        let mut pipeline: Pipeline<String, String> = Pipeline::new(io, codec);
        let mut calls = Vec::new();
        for req in requests {
            if std::future::poll_fn(|cx| pipeline.poll_ready(cx))
                .await
                .is_err()
            {
                break;
            }
            calls.push(pipeline.call(req));
        }
        drop(pipeline);
        for call in calls {
            if let Err(e) = call.await {
                assert!(
                    e.is::<NotSent>() || e.is::<MaybeDelivered>() || e.is::<PipelineError>(),
                    "an outcome outside the promise: {e}"
                );
            }
        }
    });
});

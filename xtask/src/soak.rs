//! `cargo xtask soak [--connections N] [--stacks N] [--ws N] [--seconds S] [--bounce S] [--drain S]
//! [--drain-rate N]`: the soak, outside CI.
//!
//! Runs the ignored test of `tests/tests/soak.rs` in release: N `connman_tcp::Connection`s (default 2000) and N full
//! queue stacks (default 100) against one loopback echo server, and N `WsClient`s (default 1000) against a WebSocket
//! server putting them in a `Group`. Both servers restart every `--bounce` seconds (default 15); every `--drain`
//! seconds (default 40) a new WebSocket server takes over while the old one drains its group at `--drain-rate` per
//! second (default 200). It runs for S seconds (default 120), then closes everything. Live heap bytes (counted by the test's allocator), file
//! descriptors and tokio tasks are sampled all along and must come back to the warm-up's baseline after the close-all:
//! a leak fails it. Resident memory is sampled and reported (start, peak, end).

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "connman-tests",
        "--test",
        "soak",
        "--",
        "--ignored",
        "--nocapture",
        "soak_thousands_of_connections_and_bounces_leave_nothing_behind",
    ]);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let var = match arg.as_str() {
            "--connections" => "CONNMAN_SOAK_CONNECTIONS",
            "--stacks" => "CONNMAN_SOAK_STACKS",
            "--ws" => "CONNMAN_SOAK_WS",
            "--drain" => "CONNMAN_SOAK_DRAIN_SECONDS",
            "--drain-rate" => "CONNMAN_SOAK_DRAIN_RATE",
            "--seconds" => "CONNMAN_SOAK_SECONDS",
            "--bounce" => "CONNMAN_SOAK_BOUNCE_SECONDS",
            other => return Err(format!("soak: unknown option {other:?}")),
        };
        let value: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{arg} takes a whole number"))?;
        cmd.env(var, value.to_string());
    }
    step("soak", &mut cmd)
}

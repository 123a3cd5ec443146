//! Project automation for connman, run as `cargo xtask <command>`.
//!
//! * `cargo xtask ci`: exactly what CI runs — the real peers' install, formatting, clippy, every test (doc tests
//!   included), rustdoc, the runtime-free check of connman-core, the loom models, a 5 s run of each fuzz target and a
//!   quick smoke run of the benchmarks.
//! * `cargo xtask demo [--seconds N]`: the flaky-network demo (the README's first command).
//! * `cargo xtask bench [--quick] [--no-write] [NAME]`: the benchmarks against their peers; a full run of every
//!   scenario writes `BENCHMARKS.md`, a quick or filtered one only prints.
//! * `cargo xtask fuzz [--seconds N] [--sanitizer address] [TARGET]`: the fuzz targets of `fuzz/` on the nightly
//!   toolchain (10 s each by default); `--sanitizer address` is the long mode with AddressSanitizer (60 s each).
//! * `cargo xtask sim [--seeds N] [--first K] [--threads T] [--release] [--tcp | --ws]`: the simulated-network tests
//!   (the TCP stack and the reconnecting WebSocket client) over many seeds (long mode).
//! * `cargo xtask soak [--connections N] [--stacks N] [--ws N] [--seconds S] [--bounce S] [--drain S]
//!   [--drain-rate N]`: thousands of TCP and WebSocket connections for minutes with server bounces and drains; fails
//!   on a leak of memory, file descriptors or tasks (outside CI).
//! * `cargo xtask peers`: installs the real peers the tests talk to (redis-server, Node `ws`, Python `websockets`).

mod bench;
mod ci;
mod demo;
mod fuzz;
mod peers;
mod sim;
mod soak;
mod tidy;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("peers") => peers::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("sim") => sim::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | demo [--seconds N] | bench [--quick] [--no-write] [NAME] | fuzz [--seconds N] [--sanitizer address] [TARGET] | sim [--seeds N] [--first K] [--threads T] [--release] [--tcp | --ws] | soak [--connections N] [--stacks N] [--ws N] [--seconds S] [--bounce S] [--drain S] [--drain-rate N] | peers | tidy>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this package's folder.
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A `cargo` command run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, echoing it first, and fails if it fails.
fn step(step: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n==> {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step}: failed ({status})"))
    }
}

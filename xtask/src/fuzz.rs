//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the fuzz targets of `fuzz/` (libFuzzer through `libfuzzer-sys`)
//! on the nightly toolchain.
//!
//! The targets are built once, in release with debug assertions and overflow checks on, with the coverage
//! instrumentation cargo-fuzz uses and no sanitizer (connman forbids `unsafe`, so the memory errors AddressSanitizer
//! finds cannot start in our code; building without it keeps the CI step short). Each target starts from its committed
//! corpus in `fuzz/corpus/<target>` and runs for N seconds (default 10; CI runs 5, a long run is `--seconds 300`).
//! It prints the executions of each target, and fails on a crash, a hang or a leak, with the input left in
//! `fuzz/artifacts/<target>/` and the command that replays it. `cargo fuzz run <target>` works on the same crate too.
//!
//! Fuzzing needs a nightly toolchain. Where `rustup toolchain list` shows none, the command says so and succeeds
//! without fuzzing: the machine lacks the tool, which is not a fault of the code.

use std::process::{Command, Stdio};

use crate::root;

/// The targets, in the order they run.
pub(crate) const TARGETS: &[&str] = &[
    "pipeline_frames",
    "ws_accept",
    "cluster_bytes",
    "backoff_config",
];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 10u64;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "fuzz: unknown target or option {other:?}; targets: {TARGETS:?}"
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    eprintln!("\n==> fuzz: {} target(s), {seconds} s each", targets.len());
    if !has_nightly() {
        eprintln!(
            "fuzz: skipped, no nightly toolchain on this machine (`rustup toolchain list` shows none)"
        );
        return Ok(());
    }
    build()?;
    let mut report = Vec::new();
    for target in targets {
        let runs = fuzz(target, seconds)?;
        report.push(format!(
            "{target}: {runs} executions in {seconds} s, no crash"
        ));
    }
    for line in &report {
        eprintln!("fuzz: {line}");
    }
    Ok(())
}

/// Whether rustup lists a nightly toolchain.
fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        })
}

/// The instrumentation cargo-fuzz adds for libFuzzer, plus debug assertions and overflow checks.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// Where the instrumented targets are built, apart from cargo-fuzz's own folders.
fn target_dir() -> std::path::PathBuf {
    root().join("fuzz").join("target").join("xtask")
}

/// The host's target triple: naming it keeps build scripts and proc macros out of the instrumentation.
fn host() -> Result<String, String> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".to_owned())
}

fn build() -> Result<(), String> {
    let host = host()?;
    crate::step(
        "build the fuzz targets (nightly, instrumented)",
        Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args([
                "+nightly",
                "build",
                "--release",
                "--bins",
                "--target",
                &host,
            ])
            .env("RUSTFLAGS", RUSTFLAGS)
            .env("CARGO_TARGET_DIR", target_dir()),
    )
}

/// Runs one target and returns libFuzzer's count of executions.
fn fuzz(target: &str, seconds: u64) -> Result<u64, String> {
    eprintln!("\n==> fuzz {target}");
    let dir = root().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let binary = target_dir().join(host()?).join("release").join(target);
    let out = Command::new(&binary)
        .arg(&corpus)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .args(["-rss_limit_mb=2048", "-timeout=10"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "fuzz target {target} failed:\n{}\nreplay: {} {}/<input>",
            tail.join("\n"),
            binary.display(),
            artifacts.display()
        ));
    }
    // libFuzzer ends with `Done 123456 runs in 10 second(s)`.
    let runs = log
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Done ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Ok(runs)
}

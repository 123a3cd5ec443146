//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the fuzz targets of `fuzz/` with cargo-fuzz on the nightly toolchain.
//!
//! Each target starts from its committed corpus in `fuzz/corpus/<target>` and runs for N seconds (default 10, the CI
//! smoke; a long run is `--seconds 300`). It prints the executions of each target, and fails on a crash, a hang or a
//! leak, with the input left in `fuzz/artifacts/<target>` and the command that replays it.
//!
//! Fuzzing needs a nightly toolchain. Where `rustup toolchain list` shows none, the command says so and succeeds
//! without fuzzing: the machine lacks the tool, which is not a fault of the code. cargo-fuzz itself is installed,
//! pinned, when missing.

use std::process::{Command, Stdio};

use crate::root;

/// The targets, in the order they run.
pub(crate) const TARGETS: &[&str] = &["pipeline_frames", "ws_accept", "backoff_config"];

/// The cargo-fuzz release installed when none is on the machine.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

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
            other => return Err(format!("fuzz: unknown target or option {other:?}; targets: {TARGETS:?}")),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    eprintln!("\n==> fuzz: {} target(s), {seconds} s each", targets.len());
    if !has_nightly() {
        eprintln!("fuzz: skipped, no nightly toolchain on this machine (`rustup toolchain list` shows none)");
        return Ok(());
    }
    ensure_cargo_fuzz()?;
    let mut report = Vec::new();
    for target in targets {
        let runs = fuzz(target, seconds)?;
        report.push(format!("{target}: {runs} executions in {seconds} s, no crash"));
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
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("nightly")))
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    crate::step(
        &format!("install {CARGO_FUZZ}"),
        Command::new("cargo").args(["install", "--locked", CARGO_FUZZ]),
    )
}

/// Runs one target and returns libFuzzer's count of executions.
fn fuzz(target: &str, seconds: u64) -> Result<u64, String> {
    eprintln!("\n==> fuzz {target}");
    let dir = root().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let out = Command::new("cargo")
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .args(["+nightly", "fuzz", "run", "--release", target])
        .arg(&corpus)
        .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-timeout=10"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cargo fuzz: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "fuzz target {target} failed:\n{}\nreplay: cd fuzz && cargo +nightly fuzz run {target} artifacts/{target}/<input>",
            tail.join("\n")
        ));
    }
    // libFuzzer ends with `Done 123456 runs in 10 second(s)`.
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(runs)
}

//! `cargo xtask fuzz [--seconds N] [--sanitizer address] [TARGET…]`: runs the fuzz targets of `fuzz/` (libFuzzer
//! through `libfuzzer-sys`) on the nightly toolchain.
//!
//! The targets are built once, in release with debug assertions and overflow checks on, with the coverage
//! instrumentation cargo-fuzz uses and no sanitizer (connman forbids `unsafe`, so the memory errors AddressSanitizer
//! finds cannot start in our code; building without it keeps the CI step short). Each target starts from its committed
//! corpus in `fuzz/corpus/<target>` and runs for N seconds (default 10; CI runs 5, a long run is `--seconds 300`).
//! The inputs it finds go to `fuzz/target/corpus/<target>` (ignored by git, kept between runs so that long runs build
//! on each other), never into the committed corpus: promote one by copying it there.
//! It prints the executions of each target, and fails on a crash, a hang or a leak, with the input left in
//! `fuzz/artifacts/<target>/` and the command that replays it. `cargo fuzz run <target>` works on the same crate too.
//!
//! `--sanitizer address` is the long mode, outside CI: the same targets built with `-Zsanitizer=address` (into a
//! target folder of their own), 60 s each unless `--seconds` says otherwise. Our crates have no `unsafe`, but their
//! dependencies do (tokio, bytes, tungstenite, …): AddressSanitizer checks every access those make on the paths the
//! fuzzer drives, and libFuzzer's malloc limit turns an oversized allocation into a failure as well.
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
    "config_builders",
    "ws_client_read",
];

/// The sanitizers `--sanitizer` accepts.
const SANITIZERS: &[&str] = &["address"];

const USAGE: &str = concat!(
    "usage: cargo xtask fuzz [--seconds N] [--sanitizer address] [TARGET...]\n",
    "  --seconds N            run each target N seconds (default 10; 60 with --sanitizer)\n",
    "  --sanitizer address    long mode: build with -Zsanitizer=address (AddressSanitizer), outside CI",
);

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = None;
    let mut sanitizer = None;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = Some(
                    it.next()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("--seconds takes a whole number")?,
                );
            }
            "--sanitizer" => {
                let name = it.next().map(String::as_str).unwrap_or_default();
                if !SANITIZERS.contains(&name) {
                    return Err(format!(
                        "--sanitizer takes one of {SANITIZERS:?}, not {name:?}"
                    ));
                }
                sanitizer = Some(name);
            }
            "--help" | "-h" => {
                eprintln!("{USAGE}\ntargets: {TARGETS:?}");
                return Ok(());
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "fuzz: unknown target or option {other:?}; targets: {TARGETS:?}\n{USAGE}"
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let seconds = seconds.unwrap_or(if sanitizer.is_some() { 60 } else { 10 });
    let mode = sanitizer.map_or_else(String::new, |s| format!(", sanitizer {s}"));
    eprintln!(
        "\n==> fuzz: {} target(s), {seconds} s each{mode}",
        targets.len()
    );
    if !has_nightly() {
        eprintln!(
            "fuzz: skipped, no nightly toolchain on this machine (`rustup toolchain list` shows none)"
        );
        return Ok(());
    }
    build(sanitizer)?;
    let mut report = Vec::new();
    for target in targets {
        let runs = fuzz(target, seconds, sanitizer)?;
        report.push(format!(
            "{target}: {runs} executions in {seconds} s{mode}, no crash"
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

/// Where the instrumented targets are built, apart from cargo-fuzz's own folders (and apart from each other with and
/// without a sanitizer, so that neither build undoes the other).
fn target_dir(sanitizer: Option<&str>) -> std::path::PathBuf {
    let dir = root().join("fuzz").join("target");
    match sanitizer {
        None => dir.join("xtask"),
        Some(s) => dir.join(format!("xtask-{s}")),
    }
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

fn build(sanitizer: Option<&str>) -> Result<(), String> {
    let host = host()?;
    let mut rustflags = RUSTFLAGS.to_owned();
    let mut what = "build the fuzz targets (nightly, instrumented)".to_owned();
    if let Some(s) = sanitizer {
        rustflags.push_str(&format!(" -Zsanitizer={s}"));
        what = format!("build the fuzz targets (nightly, instrumented, -Zsanitizer={s})");
    }
    crate::step(
        &what,
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
            .env("RUSTFLAGS", rustflags)
            .env("CARGO_TARGET_DIR", target_dir(sanitizer)),
    )
}

/// Runs one target and returns libFuzzer's count of executions.
fn fuzz(target: &str, seconds: u64, sanitizer: Option<&str>) -> Result<u64, String> {
    eprintln!("\n==> fuzz {target}");
    let dir = root().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    // libFuzzer writes what it finds into the first corpus folder and only reads the others.
    let found = dir.join("target").join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &found, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let binary = target_dir(sanitizer)
        .join(host()?)
        .join("release")
        .join(target);
    let out = Command::new(&binary)
        .arg(&found)
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

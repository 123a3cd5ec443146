//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{cargo, step};

pub(crate) fn run(_args: &[String]) -> Result<(), String> {
    crate::peers::run(&[])?;
    step("format", cargo().args(["fmt", "--all", "--check"]))?;
    crate::tidy::run()?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "rustdoc",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--all-features",
                "--no-deps",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    core_has_no_runtime()?;
    let (passed, failed) = tests()?;
    loom()?;
    crate::fuzz::run(&["--seconds".into(), "5".into()])?;
    step(
        "benchmarks, quick smoke run",
        cargo().args(["xtask", "bench", "--quick", "--no-write"]),
    )?;
    eprintln!("\nci: every step passed");
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// connman-core must build without an async runtime.
fn core_has_no_runtime() -> Result<(), String> {
    eprintln!("\n==> connman-core depends on no runtime");
    let out = cargo()
        .args([
            "tree",
            "-p",
            "connman-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
        ])
        .output()
        .map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err("cargo tree failed".into());
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let runtimes = ["tokio ", "async-std ", "smol "];
    if let Some(line) = tree
        .lines()
        .find(|l| runtimes.iter().any(|r| l.starts_with(r)))
    {
        return Err(format!("connman-core depends on a runtime: {line}"));
    }
    eprintln!(
        "ok: {} crates, none of them a runtime",
        tree.lines().count()
    );
    Ok(())
}

/// Runs every test of the workspace, doc tests included, and sums the results.
fn tests() -> Result<(u64, u64), String> {
    eprintln!("\n==> tests");
    let mut child = cargo()
        .args([
            "test",
            "--workspace",
            "--all-features",
            "--locked",
            "--no-fail-fast",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() || failed > 0 {
        println!("tests: {passed} passed, {failed} failed");
        return Err(format!("tests failed ({failed} failed)"));
    }
    Ok((passed, failed))
}

/// The number before `what` in a libtest summary such as `ok. 12 passed; 0 failed; ...`.
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The modules of connman-core whose loom models the loom step runs; a module none of whose models ran fails it.
const LOOM_MODELS: [&str; 3] = [
    "refhandle::loom_tests::",
    "generation::loom_tests::",
    "capacity::loom_tests::",
];

/// The loom models of connman-core, in their own target dir (the `loom` cfg rebuilds everything it touches): the
/// shared handle's count, the registry's generation and cached `get` (`connman_core::generation`), and a queue
/// handle's share of the capacity (`connman_core::capacity`).
///
/// Only the runtime-free core is built under `--cfg loom`: tokio reads that cfg too and cannot be built with it as a
/// dependency. The crates above the core synchronise through tokio's own primitives, which tokio model-checks itself,
/// and through core types modelled here.
fn loom() -> Result<(), String> {
    const STEP: &str = "loom models of connman-core";
    eprintln!("\n==> {STEP}");
    let target = crate::root().join("target").join("loom");
    let mut child = cargo()
        .args([
            "test",
            "-p",
            "connman-core",
            "--lib",
            "--release",
            "--locked",
            "loom",
        ])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", "2")
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{STEP}: cannot start: {e}"))?;
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().map_err(|e| format!("{STEP}: {e}"))?;
    if !status.success() {
        return Err(format!("{STEP}: failed ({status})"));
    }
    match missing_model(&output) {
        Some(module) => Err(format!("{STEP}: no model of {module} ran")),
        None => Ok(()),
    }
}

/// The first of [`LOOM_MODELS`] with no passing test in libtest's `output`.
fn missing_model(output: &str) -> Option<&'static str> {
    LOOM_MODELS.into_iter().find(|module| {
        !output
            .lines()
            .any(|l| l.starts_with("test ") && l.contains(module) && l.ends_with(" ... ok"))
    })
}

#[cfg(test)]
mod tests {
    use super::{count, missing_model};

    #[test]
    fn the_loom_step_notices_a_module_whose_models_did_not_run() {
        let all = "test refhandle::loom_tests::clone_racing_the_last_drop ... ok\n\
                   test generation::loom_tests::loom_x ... ok\n\
                   test capacity::loom_tests::loom_y ... ok\n";
        assert_eq!(missing_model(all), None);
        let one = "test refhandle::loom_tests::clone_racing_the_last_drop ... ok\n\
                   test generation::loom_tests::loom_x ... FAILED\n";
        assert_eq!(missing_model(one), Some("generation::loom_tests::"));
        assert_eq!(missing_model(""), Some("refhandle::loom_tests::"));
    }

    #[test]
    fn counts_libtest_summaries() {
        let s = "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(count(s, " passed"), 12);
        assert_eq!(count(s, " failed"), 0);
        assert_eq!(count("FAILED. 3 passed; 2 failed; 0 ignored", " failed"), 2);
    }
}

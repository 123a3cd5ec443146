//! `cargo xtask bench [--quick] [--no-write] [NAME]`: runs the benchmarks of the `connman-tests` package, each
//! against its named peer in the same run, and prints the table.
//!
//! A full run of every scenario writes `BENCHMARKS.md` (unless `--no-write`); a `--quick` run or one filtered by
//! `NAME` only prints, so that the committed figures are never replaced by smoke figures or by part of a run. To keep
//! such a table, run the binary with `--out <path>`.

use crate::{cargo, root, step};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "connman-tests",
        "--bin",
        "bench",
        "--",
    ]);
    cmd.args(args);
    if writes_results(args) {
        cmd.arg("--out").arg(root().join("BENCHMARKS.md"));
    } else {
        eprintln!("bench: a quick, filtered or --no-write run: BENCHMARKS.md is left as it is");
    }
    step("bench", &mut cmd)
}

/// Whether the run replaces `BENCHMARKS.md`: only a full run of every scenario does.
fn writes_results(args: &[String]) -> bool {
    args.iter()
        .all(|a| a != "--no-write" && a != "--quick" && a.starts_with("--"))
}

#[cfg(test)]
mod tests {
    use super::writes_results;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_a_full_run_of_every_scenario_replaces_the_results() {
        assert!(writes_results(&args(&[])));
        assert!(!writes_results(&args(&["--quick"])));
        assert!(!writes_results(&args(&["B3"])));
        assert!(!writes_results(&args(&["--no-write"])));
        assert!(!writes_results(&args(&["--quick", "--no-write", "B10"])));
    }
}

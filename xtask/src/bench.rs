//! `cargo xtask bench [--quick] [--no-write] [NAME]`: runs the benchmarks of the `connman-tests` package, each
//! against its named peer in the same run, and writes `BENCHMARKS.md` (unless `--no-write`).

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
    if !args.iter().any(|a| a == "--no-write") {
        cmd.arg("--out").arg(root().join("BENCHMARKS.md"));
    }
    step("bench", &mut cmd)
}

//! `cargo xtask demo [--seconds N]`: builds and runs the flaky-network demo of the `connman-tests` package.

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "connman-tests",
        "--bin",
        "demo",
        "--",
    ]);
    cmd.args(args);
    step("demo", &mut cmd)
}

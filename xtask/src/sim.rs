//! `cargo xtask sim [--seeds N] [--first K] [--threads T] [--release]`: the long mode of the simulated-network test
//! (`tests/tests/sim.rs`): the full TCP stack over turmoil, seeds `K..K+N` (default 5000 seeds from 1), each with its
//! own faults, each ending with the nothing-lost check.
//!
//! CI runs the same test over its first 200 seeds. A failing seed is printed with the command that replays it alone
//! (`CONNMAN_SIM_SEED=<seed> cargo test -p connman-tests --test sim -- sim_nothing_lost_over_seeds --nocapture`).

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let (mut seeds, mut first, mut threads, mut release) = (5000u64, 1u64, None, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--seeds" => seeds = number("--seeds")?,
            "--first" => first = number("--first")?,
            "--threads" => threads = Some(number("--threads")?),
            "--release" => release = true,
            other => return Err(format!("sim: unknown option {other:?}")),
        }
    }
    let mut cmd = cargo();
    cmd.args(["test", "-p", "connman-tests", "--test", "sim"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "sim_nothing_lost_over_seeds", "--nocapture"])
        .env("CONNMAN_SIM_SEEDS", seeds.to_string())
        .env("CONNMAN_SIM_FIRST", first.to_string())
        .env_remove("CONNMAN_SIM_SEED");
    if let Some(threads) = threads {
        cmd.env("CONNMAN_SIM_THREADS", threads.to_string());
    }
    let last = first + seeds.saturating_sub(1);
    step(&format!("sim: seeds {first}..={last}"), &mut cmd)
}

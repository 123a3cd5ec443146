//! `cargo xtask sim [--seeds N] [--first K] [--threads T] [--release] [--tcp | --ws]`: the long mode of the
//! simulated-network tests (`tests/tests/sim.rs`): the full TCP stack and the reconnecting WebSocket client over
//! turmoil, seeds `K..K+N` each (default 5000 seeds from 1), each with its own faults, each ending with the
//! nothing-lost check. `--tcp` or `--ws` runs one of the two.
//!
//! CI runs the same tests over their first 200 (TCP) and 60 (WebSocket) seeds. A failing seed is printed with the
//! command that replays it alone
//! (`CONNMAN_SIM_SEED=<seed> cargo test -p connman-tests --test sim -- <test> --exact --nocapture`).

use crate::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let (mut seeds, mut first, mut threads, mut release) = (5000u64, 1u64, None, false);
    let mut tests = vec![
        "sim_nothing_lost_over_seeds",
        "sim_ws_nothing_lost_over_seeds",
    ];
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
            "--tcp" => tests = vec!["sim_nothing_lost_over_seeds"],
            "--ws" => tests = vec!["sim_ws_nothing_lost_over_seeds"],
            other => return Err(format!("sim: unknown option {other:?}")),
        }
    }
    let mut cmd = cargo();
    cmd.args(["test", "-p", "connman-tests", "--test", "sim"]);
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--")
        .args(&tests)
        .args(["--exact", "--nocapture", "--test-threads", "1"])
        .env("CONNMAN_SIM_SEEDS", seeds.to_string())
        .env("CONNMAN_SIM_FIRST", first.to_string())
        .env_remove("CONNMAN_SIM_SEED");
    if let Some(threads) = threads {
        cmd.env("CONNMAN_SIM_THREADS", threads.to_string());
    }
    let last = first + seeds.saturating_sub(1);
    step(
        &format!("sim: {} over seeds {first}..={last}", tests.join(" and ")),
        &mut cmd,
    )
}

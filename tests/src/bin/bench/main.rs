//! The benchmarks of connman, each against its named peer in the same run.
//!
//! ```text
//! cargo xtask bench [--quick] [--no-write] [NAME] [--out <path>/BENCHMARKS.md]
//! ```
//!
//! Every scenario measures ours and its peer interleaved, A B A B, over 5 rounds (3 with `--quick`, which also uses
//! much smaller counts), and reports the median of the per-round ratios with their min and max, oriented so that
//! above 1 means connman is better. Targets (from `PERF.md`) are reported, never asserted: the binary fails only when a
//! scenario cannot run or a liveness check fails (a request that never resolves, a run that does not finish).
//! `NAME` keeps the scenarios whose id or title contains it (case-insensitive); the file is then written with just
//! those rows. The table is always printed; the file is written only to the path given with `--out` (which
//! `cargo xtask bench` passes, pointing at the repository root, unless `--no-write` is given).

mod b10_reconnect;
mod b1_ws_broadcast;
mod b2_ws_echo;
mod b3_queue;
mod b4_outage;
mod b5_herd;
mod b5_restart;
mod b6_registry;
mod b7_ws_idle;
mod b8_group;
mod b9_cluster;
mod harness;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use harness::{Mode, Row, Scenario};

fn main() -> ExitCode {
    // B7 runs this binary again as its server process.
    if let Ok(spec) = std::env::var(b7_ws_idle::SERVER_ENV) {
        return match b7_ws_idle::serve(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: B7 server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("bench: {message}");
            eprintln!("usage: bench [--quick] [--no-write] [NAME] [--out <path>]");
            return ExitCode::from(2);
        }
    };
    let mode = Mode::new(options.quick);
    let all = scenarios();
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| options.filter.as_deref().is_none_or(|f| matches(s, f)))
        .collect();
    if chosen.is_empty() {
        eprintln!("bench: no scenario matches the filter");
        return ExitCode::from(2);
    }

    let machine = report::Machine::detect();
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;
    for scenario in &chosen {
        eprintln!("bench: {} {} ...", scenario.id, scenario.title);
        let started = std::time::Instant::now();
        match (scenario.run)(mode) {
            Ok(mut r) => {
                eprintln!("bench: {} done in {:.1?}", scenario.id, started.elapsed());
                rows.append(&mut r);
            }
            Err(e) => {
                eprintln!("bench: {} FAILED: {e}", scenario.id);
                failed = true;
            }
        }
    }

    print!("{}", report::table(&rows));
    if let Some(path) = options.out.filter(|_| !options.no_write) {
        let text = report::markdown(mode, &machine, &chosen, &rows);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("bench: wrote {}", path.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The command line.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    no_write: bool,
    filter: Option<String>,
    out: Option<PathBuf>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--no-write" => options.no_write = true,
                "--out" => {
                    let path = args.next().ok_or("--out needs a path")?;
                    options.out = Some(PathBuf::from(path));
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                name if options.filter.is_none() => options.filter = Some(name.to_owned()),
                extra => return Err(format!("only one NAME filter, got a second: {extra}")),
            }
        }
        Ok(options)
    }
}

/// Every scenario, in the order of the table.
fn scenarios() -> Vec<Scenario> {
    vec![
        b1_ws_broadcast::SCENARIO,
        b2_ws_echo::SCENARIO,
        b5_restart::SCENARIO,
        b5_herd::SCENARIO,
        b3_queue::SCENARIO,
        b4_outage::SCENARIO,
        b6_registry::SCENARIO,
        b7_ws_idle::SCENARIO,
        b8_group::SCENARIO,
        b9_cluster::SCENARIO,
        b10_reconnect::SCENARIO,
    ]
}

fn matches(scenario: &Scenario, filter: &str) -> bool {
    let filter = filter.to_lowercase();
    scenario.id.to_lowercase().contains(&filter) || scenario.title.to_lowercase().contains(&filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_the_xtask_command_line() {
        let o = parse(&["--quick", "b3", "--out", "/tmp/B.md"]).unwrap();
        assert!(o.quick && !o.no_write);
        assert_eq!(o.filter.as_deref(), Some("b3"));
        assert_eq!(o.out, Some(PathBuf::from("/tmp/B.md")));
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--out"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
    }
}

//! `cargo xtask demo`: connman on a flaky loopback network.
//!
//! A flaky echo server ends every connection after a few seconds and, once, stops listening for a while, as the connman
//! seed's `runTest.sh` does. Traffic runs through every crate at once:
//!
//! * `echo`: two supervised `Connection`s and a named `Pool` of two, pinging the flaky server;
//! * `stack`: `Queue` + `Heartbeat` + `Reconnect` over a pipelined line client, through a fault-injecting proxy, checked
//!   by the "nothing lost" checker;
//! * `registry`: one connection shared by two scopes, references going up and down, the grace period;
//! * `ws group`: WebSocket members in namespaces, broadcasts, and a paced drain at the end;
//! * `cluster`: a group across three nodes through redis-server (killed -9 for 2 s) when it is on the machine, the
//!   in-process broker otherwise.
//! * `ws client`: reconnecting `WsClient`s drained off one server come back to another, spread out.
//!
//! Events are printed as they happen and a summary table at the end. The process exits non-zero if anything was lost
//! or mismatched.

mod cluster;
mod echo;
mod group;
mod registry;
mod report;
mod stack;
mod ws_client;

use std::process::ExitCode;
use std::time::Duration;

use report::{Clock, Row};

#[tokio::main]
async fn main() -> ExitCode {
    let seconds = match parse_seconds(std::env::args().skip(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "demo: {e}\nusage: cargo xtask demo [--seconds N]   (N from 8 to 600, default 20)"
            );
            return ExitCode::from(2);
        }
    };
    let total = Duration::from_secs(seconds);
    let clock = Clock::start();
    clock.say("demo", &format!("running for {seconds} s on loopback"));

    let echo = tokio::spawn(echo::run(clock.clone(), total));
    let stack = tokio::spawn(stack::run(clock.clone(), total));
    let registry = tokio::spawn(registry::run(clock.clone()));
    let group = tokio::spawn(group::run(clock.clone(), total));
    let cluster = tokio::spawn(cluster::run(clock.clone(), total));
    let ws_client = tokio::spawn(ws_client::run(clock.clone(), total));
    let mut rows: Vec<Row> = Vec::new();
    for (name, handle) in [
        ("echo", echo),
        ("queue stack", stack),
        ("registry", registry),
        ("group", group),
        ("cluster", cluster),
        ("ws client", ws_client),
    ] {
        match handle.await {
            Ok(Ok(mut section)) => rows.append(&mut section),
            Ok(Err(e)) => {
                eprintln!("demo: section {name} failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("demo: section {name} panicked: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    println!();
    report::print_table(&rows);
    let bad: u64 = rows.iter().map(|r| r.lost + r.mismatched).sum();
    if bad > 0 {
        println!("\nFAILED: {bad} lost or mismatched");
        ExitCode::FAILURE
    } else {
        println!(
            "\nnothing lost, nothing mismatched ({:.1} s)",
            clock.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    }
}

fn parse_seconds(mut args: impl Iterator<Item = String>) -> Result<u64, String> {
    let mut seconds = 20;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().ok_or("--seconds needs a value")?;
                seconds = value
                    .parse()
                    .map_err(|_| format!("not a number of seconds: {value}"))?;
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if !(8..=600).contains(&seconds) {
        return Err(format!("--seconds must be from 8 to 600, not {seconds}"));
    }
    Ok(seconds)
}

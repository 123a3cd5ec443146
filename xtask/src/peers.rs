//! `cargo xtask peers`: installs the real peers the tests talk to, pinned, and checks that each one runs.
//!
//! * `redis-server` from the distribution's packages (`apt-get`, as root), for the Redis protocol and cluster tests;
//! * Node `ws` 8.23.0, and socket.io 4.8.1 with its Redis adapters for B9, under `tests/peers/node/` with `npm ci`
//!   from the committed lock file (again whenever `npm ls` finds a package missing or at another version);
//! * Python `websockets` 17.4 in a virtual environment at `tests/peers/.venv`, from `tests/peers/python/requirements.txt`.
//!
//! Each step is skipped when what it installs is already there and answers; anything that cannot be installed fails
//! the command with what to install by hand. Tests never skip for a missing peer: they fail and name this command.

use std::path::Path;
use std::process::Command;

use crate::root;

/// Installs every peer, or says which one cannot be had.
pub(crate) fn run(_args: &[String]) -> Result<(), String> {
    eprintln!("\n==> peers: redis-server, Node ws, Python websockets");
    redis()?;
    node()?;
    python()?;
    eprintln!("ok: every peer is installed");
    Ok(())
}

fn redis() -> Result<(), String> {
    if answers(Command::new("redis-server").arg("--version")) {
        return Ok(());
    }
    if !is_root() {
        return Err(
            "redis-server is missing and this is not root: install it (Debian: apt-get install redis-server)".into(),
        );
    }
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    let install = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "redis-server",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match (update, install) {
        (Ok(u), Ok(i)) if u.success() && i.success() => {}
        _ => return Err("apt-get install redis-server failed".into()),
    }
    if answers(Command::new("redis-server").arg("--version")) {
        Ok(())
    } else {
        Err("redis-server was installed but does not run".into())
    }
}

fn node() -> Result<(), String> {
    let dir = root().join("tests/peers/node");
    if !answers(Command::new("node").arg("--version"))
        || !answers(Command::new("npm").arg("--version"))
    {
        return Err("node and npm are missing: install Node.js 18 or later (Debian: apt-get install nodejs npm)".into());
    }
    // `npm ls` fails when a package of the lock file is missing or at another version.
    let check = || {
        answers(
            Command::new("npm")
                .current_dir(&dir)
                .args(["ls", "--all", "--silent"]),
        )
    };
    if check() {
        return Ok(());
    }
    let status = Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .status()
        .map_err(|e| format!("npm ci: {e}"))?;
    if !status.success() || !check() {
        return Err(format!("npm ci in {} failed", dir.display()));
    }
    Ok(())
}

fn python() -> Result<(), String> {
    let peers = root().join("tests/peers");
    let venv = peers.join(".venv");
    let py = venv.join("bin/python");
    let check = |py: &Path| {
        answers(Command::new(py).args([
            "-c",
            "import websockets, sys; sys.exit(websockets.__version__ != '17.4')",
        ]))
    };
    if check(&py) {
        return Ok(());
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("python3 -m venv: {e} (install python3 and python3-venv)"))?;
    if !status.success() {
        return Err("python3 -m venv failed: install python3-venv".into());
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(peers.join("python/requirements.txt"))
        .status()
        .map_err(|e| format!("pip install: {e}"))?;
    if !status.success() || !check(&py) {
        return Err("pip install -r tests/peers/python/requirements.txt failed".into());
    }
    Ok(())
}

/// Whether the command starts and exits 0, its output discarded.
fn answers(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

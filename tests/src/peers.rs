//! Real peers that no one here wrote: Node `ws`, Python `websockets` and `redis-server`.
//!
//! `cargo xtask peers` installs them (and `cargo xtask ci` runs it first). A test that needs a peer gets it from here,
//! and fails with a message naming that command when it is missing: a missing peer is a broken install, never a skip.
//!
//! Scripts live in `tests/peers/node/` and `tests/peers/python/`. A script that serves binds `127.0.0.1` port 0 and
//! prints `LISTENING <port>` on its standard output once bound; [`Peer::spawn`] waits for that line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a peer may take to start and print its `LISTENING` line (a cold Node start on a loaded machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The folder of the peers' scripts and installs: `tests/peers`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// `node tests/peers/node/<script>`, with the pinned `ws` package resolvable.
///
/// # Panics
///
/// When Node or the `ws` package is not installed: run `cargo xtask peers`.
pub fn node(script: &str) -> Command {
    let node = dir().join("node");
    let script = node.join(script);
    require(&script, "the script");
    require(
        &node.join("node_modules/ws/package.json"),
        "Node `ws` (tests/peers/node/node_modules)",
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&node).arg(script);
    cmd
}

/// The virtual environment's python running `tests/peers/python/<script>`, with `websockets` 17.4 importable.
///
/// # Panics
///
/// When the virtual environment is not installed: run `cargo xtask peers`.
pub fn python(script: &str) -> Command {
    let peers = dir();
    let python = peers.join(".venv/bin/python");
    let script = peers.join("python").join(script);
    require(&script, "the script");
    require(
        &python,
        "the Python virtual environment with websockets (tests/peers/.venv)",
    );
    let mut cmd = Command::new(python);
    cmd.arg("-u").arg(script);
    cmd
}

/// The path of `redis-server`.
///
/// # Panics
///
/// When `redis-server` is on no usual path: run `cargo xtask peers`.
pub fn redis_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"));
    let usual = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].map(PathBuf::from);
    match on_path.chain(usual).find(|p| p.is_file()) {
        Some(path) => path,
        None => missing("redis-server"),
    }
}

/// A `redis-server` of its own for one test: no persistence unless asked, on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl Redis {
    /// Starts a redis-server on a free port of `127.0.0.1`, with `args` added to its command line
    /// (for example `["--appendonly", "yes", "--appendfsync", "always"]`), its files in a fresh folder.
    ///
    /// # Panics
    ///
    /// When redis-server is not installed (run `cargo xtask peers`) or does not answer within [`START_TIMEOUT`].
    pub async fn start(args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "connman-redis-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot make {}: {e}", dir.display());
        }
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        // redis-server cannot be told to pick its own port (0 turns TCP off), so take one the system
        // gives and hand it over; a port taken in between fails the start and the next try picks another.
        for _ in 0..5 {
            let port = free_port().await;
            let child = Self::spawn(port, &dir, &args);
            let mut redis = Self {
                child,
                port,
                dir: dir.clone(),
                args: args.clone(),
            };
            if redis.wait_ready().await {
                return redis;
            }
            let _ = redis.child.kill().await;
        }
        panic!("redis-server did not start; run `cargo xtask peers`")
    }

    /// The port it listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it with SIGKILL (no shutdown, no save) and waits until the process is gone.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again on the same port, with the same folder (so an append-only file is replayed), and waits until
    /// it answers.
    ///
    /// # Panics
    ///
    /// When it does not answer within [`START_TIMEOUT`] (the port may have been taken meanwhile).
    pub async fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self.dir, &self.args);
        assert!(
            self.wait_ready().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// The process, to signal it (SIGSTOP, SIGCONT) by its id.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn spawn(port: u16, dir: &Path, args: &[String]) -> Child {
        let mut cmd = Command::new(redis_server());
        cmd.current_dir(dir)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .args(["--dir"])
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot start redis-server: {e}; run `cargo xtask peers`"),
        }
    }

    /// Waits until it answers `PING` with `+PONG`, or it exits, or [`START_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> bool {
        use tokio::io::AsyncWriteExt;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(self.addr()).await {
                let mut reply = String::new();
                if tcp.write_all(b"PING\r\n").await.is_ok()
                    && BufReader::new(&mut tcp).read_line(&mut reply).await.is_ok()
                    && reply.starts_with("+PONG")
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A loopback port the system handed out and that was free a moment ago.
async fn free_port() -> u16 {
    match tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
    {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind 127.0.0.1:0: {e}"),
    }
}

/// A running peer process, killed when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Peer {
    /// Starts `cmd` and waits (at most [`START_TIMEOUT`]) for its `LISTENING <port>` line.
    ///
    /// # Panics
    ///
    /// When the process cannot start, ends, or prints something else first: the peer is broken, and the test fails.
    pub async fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot start peer {cmd:?}: {e}; run `cargo xtask peers`"),
        };
        let Some(stdout) = child.stdout.take() else {
            panic!("peer {cmd:?} has no standard output");
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => match line
                .strip_prefix("LISTENING ")
                .map(str::trim)
                .map(str::parse)
            {
                Some(Ok(port)) => port,
                _ => panic!("peer {cmd:?} printed {line:?} before `LISTENING <port>`"),
            },
            Ok(Ok(None)) => panic!(
                "peer {cmd:?} ended before listening (is it installed? run `cargo xtask peers`)"
            ),
            Ok(Err(e)) => panic!("peer {cmd:?}: reading its output: {e}"),
            Err(_) => panic!("peer {cmd:?} did not listen within {START_TIMEOUT:?}"),
        };
        Self { child, lines, port }
    }

    /// The port the peer listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next line the peer printed, `None` once its output ended.
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.next_line().await.ok().flatten()
    }

    /// Kills the peer at once (SIGKILL) and waits for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// The child process, to signal or wait for it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

fn require(path: &Path, what: &str) {
    if !path.exists() {
        missing(&format!("{what} at {}", path.display()));
    }
}

fn missing(what: &str) -> ! {
    panic!(
        "{what} is not installed: run `cargo xtask peers` (it installs every real peer the tests use)"
    )
}

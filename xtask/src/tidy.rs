//! `cargo xtask tidy`: hygiene checks over the sources, also run as part of `ci`.
//!
//! * Tests never bind a fixed port: only `127.0.0.1:0` (or `[::1]:0`).
//! * No test synchronises with a real sleep: `std::thread::sleep` does not appear in tests.

use std::fs;
use std::path::{Path, PathBuf};

use crate::root;

pub(crate) fn run() -> Result<(), String> {
    eprintln!("\n==> tidy");
    let mut problems = Vec::new();
    for file in rust_files(&root()) {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let rel = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        if rel.starts_with("xtask/") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if let Some(port) = fixed_port(line) {
                problems.push(format!("{rel}:{}: binds a fixed port ({port})", n + 1));
            }
            if line.contains("std::thread::sleep") || line.contains("thread::sleep(") {
                problems.push(format!("{rel}:{}: real sleep", n + 1));
            }
        }
    }
    if problems.is_empty() {
        eprintln!("ok");
        Ok(())
    } else {
        Err(format!("tidy:\n{}", problems.join("\n")))
    }
}

/// A `bind("127.0.0.1:NNNN")`-style literal with a port other than 0.
fn fixed_port(line: &str) -> Option<&str> {
    if !line.contains("bind") {
        return None;
    }
    for host in ["127.0.0.1:", "localhost:", "0.0.0.0:", "[::1]:"] {
        if let Some(i) = line.find(host) {
            let rest = &line[i + host.len()..];
            let digits: &str = &rest[..rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len())];
            if !digits.is_empty() && digits != "0" {
                return Some(digits);
            }
        }
    }
    None
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == "node_modules" || name == ".venv" {
            continue;
        }
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fixed_port;

    #[test]
    fn spots_fixed_ports() {
        assert_eq!(
            fixed_port(r#"TcpListener::bind("127.0.0.1:8124")"#),
            Some("8124")
        );
        assert_eq!(fixed_port(r#"TcpListener::bind("127.0.0.1:0")"#), None);
        assert_eq!(fixed_port(r#"let s = "127.0.0.1:8124";"#), None);
    }

    /// The tree itself passes.
    #[test]
    fn tree_is_tidy() {
        super::run().expect("tidy");
    }
}

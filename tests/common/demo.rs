//! `phalanx demo` processes for the tests that drive the CLI.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `phalanx demo` process, killed when dropped.
pub(crate) struct Demo {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh strong cluster secret (children get it in `PHALANX_SECRET`, never on the command line).
pub(crate) fn secret() -> String {
    format!("test-{:016x}-0123456789abcdef", rand_u64())
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

pub(crate) fn demo(id: &str, secret: &str, seeds: &[&str]) -> Demo {
    demo_with(id, secret, seeds, &[])
}

/// A demo node with extra command-line arguments.
pub(crate) fn demo_with(id: &str, secret: &str, seeds: &[&str], extra: &[&str]) -> Demo {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phalanx"));
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--node-id", id])
        .env("PHALANX_SECRET", secret)
        .args(["--heartbeat-ms", "300", "--lease-ms", "2500", "--no-mdns"])
        .env(
            "RUST_LOG",
            std::env::var("DEMO_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for seed in seeds {
        cmd.args(["--seed", seed]);
    }
    cmd.args(extra);
    let mut child = cmd.spawn().expect("phalanx demo starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("demo prints its address");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("an address")
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "unexpected banner {line:?}");
    Demo { child, addr }
}

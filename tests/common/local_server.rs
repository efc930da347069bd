//! A server process on a loopback port, for the servers the tests start: a port is picked
//! free and handed to the server, which binds it itself — if something takes the port first,
//! the server exits and is started again on another.
#![allow(dead_code)] // not every user calls every helper

use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// How often a server is started on a fresh port before giving up.
const ATTEMPTS: usize = 5;

/// A loopback TCP port free right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts `spawn(port)` on a free port and waits (up to `within`) until it listens there; on
/// another port if it exited first. Returns the running server and its port.
pub(crate) fn start_on_free_port(
    what: &str,
    within: Duration,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    for _attempt in 0..ATTEMPTS {
        let port = free_port();
        let mut child = spawn(port);
        if wait_listening(what, &mut child, port, within) {
            return (child, port);
        }
    }
    panic!("{what} exited at start {ATTEMPTS} times");
}

/// Waits (up to `within`) until `child` listens on `port`: false if it exited first.
pub(crate) fn wait_listening(what: &str, child: &mut Child, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

//! The interactive commands in a real terminal: `phalanx top` and `phalanx repl` run inside tmux
//! against `phalanx demo` processes, driven with `send-keys` and read with `capture-pane`.

mod common;

use common::demo::{Demo, demo_with, secret};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");
const LIVENESS: [&str; 4] = ["--heartbeat-ms", "300", "--lease-ms", "2500"];

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `phalanx demo` node with the tests' short lease.
fn demo(id: &str, secret: &str, seed: Option<&str>) -> (Demo, String) {
    let node = demo_with(id, secret, seed.as_slice(), &[]);
    let addr = node.addr.clone();
    (node, addr)
}

/// `tmux`, installed when missing.
fn tmux() -> Command {
    common::tools::ensure("tmux", "-V", "tmux");
    Command::new("tmux")
}

/// A tmux session running one command in a 150×40 terminal; killed when dropped.
struct Terminal(String);

impl Terminal {
    fn start(name: &str, env: &[(&str, String)], command: &str) -> Self {
        let session = format!("phalanx-{name}-{}", std::process::id());
        let mut start = tmux();
        start.args(["new-session", "-d", "-s", &session, "-x", "150", "-y", "40"]);
        for (key, value) in env {
            start.args(["-e", &format!("{key}={value}")]);
        }
        assert!(start.arg(command).status().expect("tmux").success());
        Self(session)
    }

    fn screen(&self) -> String {
        let out = tmux()
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let sent = tmux()
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .status();
        assert!(sent.is_ok_and(|s| s.success()));
    }

    /// The screen once `check` holds (fails after 20 s, showing the screen).
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = self.screen();
            if check(&shown) {
                return shown;
            }
            assert!(Instant::now() < deadline, "{what} never showed:\n{shown}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the command has ended (its session with it) within five seconds.
    fn ends(&self) -> bool {
        (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            !Command::new("tmux")
                .args(["has-session", "-t", &self.0])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The arguments that join the demo cluster at `seed`.
fn joining(seed: &str) -> String {
    format!(
        "--seed {seed} --listen 127.0.0.1:0 --no-mdns {}",
        LIVENESS.join(" ")
    )
}

#[test]
fn top_shows_nodes_traffic_and_a_lost_node_in_a_real_terminal() {
    let s = secret();
    let (_n1, seed) = demo("top1", &s, None);
    let _n2 = demo("top2", &s, Some(&seed));
    let (n3, _) = demo("top3", &s, Some(&seed));
    let _bench = Process(
        Command::new(BIN)
            .args([
                "bench",
                "demo.echo",
                "\"x\"",
                "--concurrency",
                "4",
                "--duration",
                "60",
            ])
            .args(joining(&seed).split(' '))
            .env("PHALANX_SECRET", &s)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bench"),
    );
    let top = Terminal::start(
        "top",
        &[("PHALANX_SECRET", s.clone())],
        &format!("{BIN} top {}", joining(&seed)),
    );
    // The three nodes, and demo.echo with calls flowing.
    let echo_rate = |shown: &str| {
        shown
            .lines()
            .find(|l| l.contains("demo.echo"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let shown = top.wait_for("three nodes and a calls/s for demo.echo", |shown| {
        ["top1", "top2", "top3"].iter().all(|n| shown.contains(n)) && echo_rate(shown) > 0.0
    });
    assert!(
        shown.contains("Nodes") && shown.contains("Actions"),
        "{shown}"
    );
    // A node killed outright is marked down within the lease.
    drop(n3);
    let killed = Instant::now();
    top.wait_for("top3 down", |shown| {
        shown
            .lines()
            .any(|l| l.contains("top3") && l.contains("DOWN"))
    });
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    // Keys: sort, filter, quit.
    top.keys(&["s"]);
    top.wait_for("sorting by errors", |shown| {
        shown.contains("sorted by errors/s")
    });
    top.keys(&["/", "n", "o", "p", "e", "Enter"]);
    top.wait_for("the filter", |shown| {
        shown.contains("matching 'nope'") && !shown.contains("demo.echo")
    });
    top.keys(&["q"]);
    assert!(top.ends(), "q did not quit");
}

#[test]
fn the_repl_completes_names_from_the_registry_and_calls_with_timing() {
    let s = secret();
    let (_n1, seed) = demo("repl1", &s, None);
    let home = std::env::temp_dir().join(format!("phalanx-repl-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("a home");
    let repl = Terminal::start(
        "repl",
        &[
            ("PHALANX_SECRET", s.clone()),
            ("HOME", home.display().to_string()),
        ],
        &format!("{BIN} repl {}", joining(&seed)),
    );
    repl.wait_for("the prompt", |shown| shown.contains("phalanx>"));
    // Tab completes the command, then the action from the live registry.
    repl.keys(&["ca", "Tab", "demo.ad", "Tab"]);
    repl.wait_for("demo.add completed", |shown| {
        shown.contains("phalanx> call demo.add")
    });
    repl.keys(&[r#"{"a":1,"b":2}"#, "Enter"]);
    repl.wait_for("the answer and its timing", |shown| {
        let lines: Vec<&str> = shown.lines().map(str::trim).collect();
        lines
            .windows(2)
            .any(|w| w[0] == "3" && w[1].ends_with(" ms)"))
    });
    // Not JSON: a clear error, and the shell goes on.
    repl.keys(&["call demo.add {oops", "Enter"]);
    repl.wait_for("the JSON error", |shown| shown.contains("that is not JSON"));
    repl.keys(&["quit", "Enter"]);
    assert!(repl.ends(), "quit did not leave:\n{}", repl.screen());
    let history = std::fs::read_to_string(home.join(".phalanx_history")).unwrap_or_default();
    assert!(
        history.contains(r#"call demo.add {"a":1,"b":2}"#),
        "{history}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

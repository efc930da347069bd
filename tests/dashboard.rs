//! The web dashboard in a real browser: headless Chromium opens `phalanx dashboard` joined to
//! demo nodes under `phalanx bench`; the page (read from its DOM over the DevTools protocol, not
//! from pixels) must show every node and a rate that moves. A screenshot is saved as
//! `target/dashboard.png` for CI to keep.

mod common;

use base64::Engine;
use common::demo::{Demo, demo_with, secret};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `phalanx` command joined to the demo cluster at `seed`, with the tests' short lease.
fn joined(args: &[&str], secret: &str, seed: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args([
            "--seed",
            seed,
            "--no-mdns",
            "--heartbeat-ms",
            "300",
            "--lease-ms",
            "2500",
        ])
        .env("PHALANX_SECRET", secret)
        .env("RUST_LOG", "warn");
    command
}

/// Headless Chromium on `url`; returns it and its DevTools address.
fn chromium(url: &str, profile: &std::path::Path) -> (Process, String) {
    common::tools::ensure("chromium", "--version", "chromium");
    let mut child = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(["--remote-debugging-port=0", "--window-size=1280,900"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut devtools = None;
    for line in stderr.lines() {
        let line = line.expect("chromium's output");
        if let Some(ws) = line.strip_prefix("DevTools listening on ") {
            devtools = ws
                .strip_prefix("ws://")
                .and_then(|rest| rest.split('/').next())
                .map(str::to_owned);
            break;
        }
    }
    (
        Process(child),
        devtools.expect("chromium says where DevTools listens"),
    )
}

/// A DevTools session with the page.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn attach(devtools: &str) -> Self {
        let targets: Value = reqwest::get(format!("http://{devtools}/json/list"))
            .await
            .expect("DevTools targets")
            .json()
            .await
            .expect("JSON");
        let ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page")
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(ws)
            .await
            .expect("DevTools");
        Self { socket, next_id: 1 }
    }

    async fn send(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("sent");
        while let Some(message) = self.socket.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("JSON");
            if reply["id"] == id {
                return reply["result"].clone();
            }
        }
        panic!("DevTools closed");
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_node_and_a_moving_rate_in_a_browser() {
    let s = secret();
    let n1: Demo = demo_with("dash1", &s, &[], &[]);
    let _n2 = demo_with("dash2", &s, &[&n1.addr], &[]);
    let _n3 = demo_with("dash3", &s, &[&n1.addr], &[]);
    let _bench = Process(
        joined(
            &[
                "bench",
                "demo.echo",
                "\"x\"",
                "--concurrency",
                "2",
                "--duration",
                "60",
            ],
            &s,
            &n1.addr,
        )
        .arg("--listen=127.0.0.1:0")
        .stdout(Stdio::null())
        .spawn()
        .expect("bench"),
    );
    let mut dashboard = joined(&["dashboard", "--listen", "127.0.0.1:0"], &s, &n1.addr)
        .args(["--mesh-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dashboard");
    let mut banner = String::new();
    BufReader::new(dashboard.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("the dashboard prints its address");
    let _dashboard = Process(dashboard);
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("an address")
        .to_owned();

    let profile = std::env::temp_dir().join(format!("phalanx-chromium-{}", std::process::id()));
    let (_browser, devtools) = chromium(&url, &profile);
    let mut page = Page::attach(&devtools).await;
    let read = r#"JSON.stringify({
        nodes: [...document.querySelectorAll('.node')].map(n => n.dataset.id),
        echo: [...document.querySelectorAll('tr.action')]
            .filter(r => r.dataset.name === 'demo.echo').map(r => +r.dataset.rate)[0] ?? 0,
        updated: document.getElementById('summary').textContent })"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rates = Vec::new();
    let mut last_update = String::new();
    let shown = loop {
        let shown: Value = serde_json::from_str(page.eval(read).await.as_str().unwrap_or("{}"))
            .unwrap_or_default();
        let nodes: Vec<&str> = shown["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let every_node = ["dash1", "dash2", "dash3"]
            .iter()
            .all(|n| nodes.contains(n));
        let updated = shown["updated"].as_str().unwrap_or("").to_owned();
        let rate = shown["echo"].as_f64().unwrap_or(0.0);
        if every_node && rate > 0.0 && updated != last_update {
            rates.push(rate);
            last_update = updated;
        }
        // Moving: three updates, each with calls flowing.
        if rates.len() >= 3 {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed it all: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(rates.iter().all(|r| *r > 0.0), "{rates:?} {shown}");
    let shot = page
        .send("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("a screenshot"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::write(target.join("dashboard.png"), png).expect("screenshot saved");
    let _ = std::fs::remove_dir_all(&profile);
}

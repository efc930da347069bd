//! A simulated LAN: hosts are network namespaces wired to a bridge that lives in a namespace of
//! its own, so nothing here touches the machine's own interfaces. Every name carries the run's
//! id, and everything is torn down on drop (and by [`cleanup_run`] on Ctrl-C).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The port every demo node listens on.
pub const PORT: u16 = 7000;

/// Runs a command; an error carries its stderr.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes every namespace of run `run` (used on Ctrl-C and before exit).
pub fn cleanup_run(run: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(run) {
                let _ = sh(&["ip", "netns", "del", name]);
            }
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One simulated host.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    node: Option<Child>,
}

/// A bridge and its hosts.
pub struct Net {
    prefix: String,
    switch: String,
    pub hosts: Vec<Host>,
    dir: PathBuf,
    bin: PathBuf,
    pub secret: String,
}

impl Net {
    /// `n` hosts named `h1..hn` at `198.18.0.1..n` (the benchmarking range, never routed).
    pub fn new(run: &str, scenario: usize, n: usize, bin: PathBuf) -> Result<Self, String> {
        let prefix = format!("{run}s{scenario}");
        let switch = format!("{prefix}sw");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut net = Self {
            prefix: prefix.clone(),
            switch: switch.clone(),
            hosts: Vec::new(),
            dir,
            bin,
            // Strong enough to be accepted (at least 32 bytes of 10 different characters) however
            // short the run's id (a process id).
            secret: format!("netsim-{run}-{scenario}-0123456789abcdef-fedcba9876543210"),
        };
        sh(&["ip", "netns", "add", &switch])?;
        sh(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        sh(&[
            "ip",
            "-n",
            &switch,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sh(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{prefix}h{i}");
            let ip = format!("198.18.0.{i}");
            sh(&["ip", "netns", "add", &ns])?;
            let (inside, port) = (format!("eth{i}"), format!("p{i}"));
            sh(&[
                "ip", "link", "add", &inside, "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ])?;
            sh(&[
                "ip", "-n", &switch, "link", "set", &port, "master", "br0", "up",
            ])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &inside,
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", &inside, "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            net.hosts.push(Host {
                name: format!("h{i}"),
                ns,
                ip,
                node: None,
            });
        }
        Ok(net)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.hosts[i].ip)
    }

    /// Starts `phalanx demo` on host `i` (0-based) with extra arguments.
    pub fn start(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        let status = self.status_path(i);
        let _ = std::fs::remove_file(&status);
        let host = &self.hosts[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(&self.bin)
            .args([
                "demo",
                "--listen",
                &format!("0.0.0.0:{PORT}"),
                "--node-id",
                &host.name,
            ])
            .env("PHALANX_SECRET", &self.secret)
            .args(["--heartbeat-ms", "500", "--lease-ms", "2000"])
            .arg("--status-file")
            .arg(&status)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("NETSIM_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", host.name))?;
        self.hosts[i].node = Some(child);
        Ok(())
    }

    /// Runs this harness itself with `args` inside host `i`'s namespace (a rogue process).
    pub fn spawn_self(&self, i: usize, args: &[&str]) -> Result<Child, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(me)
            .args(args)
            .env("PHALANX_SECRET", &self.secret)
            .env("RUST_LOG", "error")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the rogue on {}: {e}", self.hosts[i].name))
    }

    /// The packets counted so far by the nftables counter `name` of host `i`.
    pub fn nft_counter(&self, i: usize, name: &str) -> Option<u64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i].ns,
                "nft",
                "list",
                "counter",
                "inet",
                "netsim",
                name,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "packets")?;
        words.next()?.parse().ok()
    }

    /// `kill -9` of host `i`'s node.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (graceful stop) of host `i`'s node; waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].node.take() {
            let _ = sh(&["kill", "-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn status_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.json", self.hosts[i].name))
    }

    /// The peers host `i`'s node sees, and since when (unix ms).
    pub fn peers(&self, i: usize) -> Option<(Vec<String>, u64)> {
        let text = std::fs::read_to_string(self.status_path(i)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let peers = json["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        Some((peers, json["unix_ms"].as_u64()?))
    }

    /// Waits until every host in `which` sees exactly the others in `which` (plus observers,
    /// which are ignored). Returns the unix ms when the last one got there.
    pub fn converge(&self, which: &[usize], within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut latest = 0;
            let mut all = true;
            for &i in which {
                let want: Vec<&str> = which
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| self.hosts[j].name.as_str())
                    .collect();
                match self.peers(i) {
                    Some((peers, at)) => {
                        let hosts: Vec<&str> = peers
                            .iter()
                            .map(String::as_str)
                            .filter(|p| p.starts_with('h') && p[1..].parse::<u32>().is_ok())
                            .collect();
                        if hosts == want {
                            latest = latest.max(at);
                        } else {
                            all = false;
                        }
                    }
                    None => all = false,
                }
            }
            if all {
                return Some(latest);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Loads an nftables ruleset into host `i`'s namespace.
    pub fn nft(&self, i: usize, rules: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(rules.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Removes the harness's nftables table from host `i`.
    pub fn nft_clear(&self, i: usize) {
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &self.hosts[i].ns,
            "nft",
            "delete",
            "table",
            "inet",
            "netsim",
        ]);
    }

    /// Runs a `phalanx` CLI command on host `i`, joined through that host's node.
    pub fn cli(&self, i: usize, args: &[&str], secret: Option<&str>) -> Output {
        self.cli_via(i, &format!("127.0.0.1:{PORT}"), args, secret)
    }

    /// Runs a `phalanx` CLI command on host `i`, joined through `seed`.
    pub fn cli_via(&self, i: usize, seed: &str, args: &[&str], secret: Option<&str>) -> Output {
        self.cli_command(i, seed, args, secret)
            .output()
            .unwrap_or_else(|e| panic!("cannot run phalanx on {}: {e}", self.hosts[i].name))
    }

    /// Starts a `phalanx` CLI command on host `i` in the background (e.g. a bench), joined
    /// through `seed`.
    pub fn cli_spawn(&self, i: usize, seed: &str, args: &[&str]) -> Child {
        self.cli_command(i, seed, args, None)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run phalanx on {}: {e}", self.hosts[i].name))
    }

    /// `phalanx ARGS` inside host `i`'s namespace, joining through `seed` with the harness's
    /// timings (and `secret`, or the network's own).
    fn cli_command(&self, i: usize, seed: &str, args: &[&str], secret: Option<&str>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(&self.bin)
            .args(args)
            .args(["--seed", seed, "--no-mdns", "--listen", "0.0.0.0:0"])
            .env("PHALANX_SECRET", secret.unwrap_or(&self.secret))
            .args(["--heartbeat-ms", "500", "--lease-ms", "2000"])
            .env("RUST_LOG", "error");
        command
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill9(i);
        }
        cleanup_run(&self.prefix);
        let _ = sh(&["ip", "netns", "del", &self.switch]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

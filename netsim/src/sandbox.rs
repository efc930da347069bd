//! What netsim needs from the machine, found or provided before any scenario runs.
//!
//! Network namespaces and nftables rules need `CAP_NET_ADMIN`. As root netsim uses the machine's
//! own; as any other user it re-runs itself inside a fresh user namespace (where it is root over
//! namespaces it creates, and nothing else) with its own mount namespace, so `ip netns` can keep
//! its files under a private `/run`. It needs the `ip` (iproute2) and `nft` (nftables) programs;
//! as root on Debian it installs missing ones with apt-get, otherwise it says what to install.
#![allow(clippy::print_stdout)]

use std::process::{Command, ExitCode, Stdio};

/// Set in the re-run inside the user namespace, so it does not try again.
const IN_USERNS: &str = "NETSIM_IN_USER_NAMESPACE";

/// The programs netsim runs, and the Debian package of each.
const TOOLS: [(&str, &str); 2] = [("ip", "iproute2"), ("nft", "nftables")];

/// What the caller should do next.
pub enum Sandbox {
    /// This process may create namespaces: run the scenarios here.
    Ready,
    /// The scenarios ran in a re-run of netsim inside a user namespace; exit with its code.
    RanInside(ExitCode),
}

/// Makes sure the scenarios can run, re-running netsim in a user namespace when not root.
pub fn prepare() -> Result<Sandbox, String> {
    ensure_tools()?;
    if is_root() {
        return Ok(Sandbox::Ready);
    }
    if std::env::var_os(IN_USERNS).is_some() {
        return Err("inside the user namespace but not root there".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find netsim itself: {e}"))?;
    println!("netsim: not root, running in an unprivileged user namespace");
    // A private tmpfs on /run gives `ip netns` a place for its files; the shared-memory sockets
    // fall back to /tmp because the caller's XDG_RUNTIME_DIR is under the hidden /run.
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "--"])
        .args([
            "sh",
            "-c",
            "mount -t tmpfs netsim /run && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_USERNS, "1")
        .env_remove("XDG_RUNTIME_DIR")
        .status()
        .map_err(|e| format!("cannot run `unshare` (util-linux): {e}"))?;
    match status.code() {
        Some(0) => Ok(Sandbox::RanInside(ExitCode::SUCCESS)),
        // `unshare` itself reports 1 when the kernel refuses the namespace; netsim's own failures
        // printed their table already.
        Some(code) => {
            if !userns_allowed() {
                return Err("netsim needs root, or unprivileged user namespaces \
                     (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0, \
                     or on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)"
                    .into());
            }
            Ok(Sandbox::RanInside(ExitCode::from(code.clamp(1, 255) as u8)))
        }
        None => Err("netsim in the user namespace was killed by a signal".into()),
    }
}

/// Finds `ip` and `nft`, installing missing ones with apt-get when root.
fn ensure_tools() -> Result<(), String> {
    let missing = || -> Vec<(&str, &str)> { TOOLS.into_iter().filter(|(t, _)| !runs(t)).collect() };
    let first = missing();
    if first.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = first.iter().map(|(_, p)| *p).collect();
    if is_root() && runs("apt-get") {
        println!("netsim: installing {} with apt-get", packages.join(" "));
        let install = || {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            missing().is_empty()
        };
        // A fresh machine may not have fetched the package lists yet.
        if install()
            || (Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .is_ok()
                && install())
        {
            return Ok(());
        }
    }
    let tools: Vec<&str> = first.iter().map(|(t, _)| *t).collect();
    Err(format!(
        "netsim needs {} on PATH: as root, `apt-get install {}`",
        tools.join(" and "),
        packages.join(" ")
    ))
}

/// Whether `program` exists and runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this process runs as uid 0 (in its user namespace).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether the kernel lets this user create a user namespace.
fn userns_allowed() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

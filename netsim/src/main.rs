//! netsim: real multi-host scenarios on one machine.
//!
//! Each host is a Linux network namespace on a bridge the harness creates (real multicast, real
//! UDP); each runs `phalanx demo`. Faults come from nftables rules inside the namespaces (random
//! loss with `numgen random`, partitions by address sets), `kill -9` and graceful stops. Traffic
//! never leaves the namespaces made here (addresses in 198.18.0.0/24, the benchmarking range).
//!
//! Run every scenario: `cargo run --release -p netsim` (as root, or as any user where the kernel
//! allows unprivileged user namespaces); some: `... -p netsim -- mdns loss`.
//! Exits non-zero when any scenario fails.
#![allow(clippy::print_stdout)]

mod net;
mod rogue;
mod sandbox;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let rogue_mode = match wanted.first().map(String::as_str) {
        Some("--rogue-mdns") => Some(rogue::run as fn(&[String]) -> Result<(), String>),
        Some("--rogue-member") => Some(rogue::run_member as fn(&[String]) -> Result<(), String>),
        _ => None,
    };
    if let Some(rogue) = rogue_mode {
        // Inside a host's namespace, started by the `rogue` scenario.
        return match rogue(&wanted[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                println!("rogue: {err}");
                ExitCode::FAILURE
            }
        };
    }
    for name in &wanted {
        if !scenarios::ALL.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = scenarios::ALL.iter().map(|(n, _)| *n).collect();
            println!("unknown scenario {name:?}; scenarios: {}", names.join(", "));
            return ExitCode::FAILURE;
        }
    }
    match sandbox::prepare() {
        Ok(sandbox::Sandbox::Ready) => {}
        Ok(sandbox::Sandbox::RanInside(code)) => return code,
        Err(err) => {
            println!("netsim: {err}");
            return ExitCode::FAILURE;
        }
    }
    let bin = match phalanx_binary() {
        Ok(bin) => bin,
        Err(err) => {
            println!("netsim: {err}");
            return ExitCode::FAILURE;
        }
    };
    let run = format!("px{}", std::process::id() % 100_000);
    let cleanup_run = run.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            println!("\ninterrupted: removing the simulated network");
            net::cleanup_run(&cleanup_run);
            std::process::exit(130);
        }
    });

    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for (name, scenario) in scenarios::ALL {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        println!("== {name}");
        match scenario(&run, &bin) {
            Ok(mut r) => rows.append(&mut r),
            Err(err) => rows.push(scenarios::Row {
                scenario: (*name).to_owned(),
                figure: format!("harness error: {err}"),
                threshold: "-".into(),
                pass: false,
            }),
        }
        net::cleanup_run(&run);
    }

    println!("\n| scenario | figure | threshold | pass |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.scenario,
            r.figure,
            r.threshold,
            if r.pass { "✅" } else { "❌" }
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!(
        "\nnetsim: {} passed, {} failed ({:.0} s)",
        rows.len() - failed,
        failed,
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `PHALANX_BIN`, or the workspace's release `phalanx`, built now.
fn phalanx_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PHALANX_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "phalanx", "-p", "phalanx"])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot build phalanx: {e}"))?;
    if !status.success() {
        return Err("building phalanx failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("phalanx"))
}

//! `phalanx bench`: a closed loop of calls with N in flight; calls/s, p50, p99 and errors.

use super::{MeshArgs, parse_json, wait_for_action};
use clap::Args;
use phalanx::{Broker, Result};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Full action name.
    action: String,
    /// Parameters as JSON.
    #[arg(default_value = "null")]
    params: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    mesh: MeshArgs,
}

#[derive(Debug, Serialize)]
struct Report {
    calls: u64,
    errors: u64,
    calls_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    let params = parse_json(&args.params)?;
    let (broker, quic) = args.mesh.join(Broker::builder()).await?;
    if let Err(err) = wait_for_action(&broker, &quic, &args.action, args.mesh.wait()).await {
        broker.stop().await;
        return Err(err);
    }
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let started = Instant::now();
    let end = started + duration;
    let workers = (0..args.concurrency.max(1)).map(|_| {
        let broker = broker.clone();
        let action = args.action.clone();
        let params = params.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                match broker
                    .call::<serde_json::Value>(&action, params.clone())
                    .await
                {
                    Ok(_) => latencies.push(sent.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in futures_util::future::join_all(workers).await {
        let (l, e) = worker.unwrap_or_default();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    broker.stop().await;
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    let report = Report {
        calls: latencies.len() as u64,
        errors,
        calls_per_sec: latencies.len() as f64 / elapsed.max(f64::EPSILON),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "{} calls in {:.2} s: {:.0} calls/s, p50 {} µs, p99 {} µs, {} errors",
            report.calls,
            elapsed,
            report.calls_per_sec,
            report.p50_us,
            report.p99_us,
            report.errors
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `phalanx bench`: a closed loop of calls with N in flight; calls/s, p50, p99 and errors.
//!
//! The tool measures, not costs: params are encoded once and every call sends the same bytes,
//! results are not decoded, and each worker records its own latencies (no lock shared between
//! workers), so it can drive any server to saturation.

use super::{MeshArgs, parse_json, wait_for_action};
use clap::Args;
use phalanx::middleware::CircuitBreakerConfig;
use phalanx::{Broker, CallOptions, Payload, Result};
use serde::Serialize;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Stop after this many calls instead (across all workers).
    #[arg(long)]
    calls: Option<u64>,
    /// Per-call timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
    /// Retry a retryable failure up to N times, on another node when there is one.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// The action is safe to run twice: retries also cover timeouts and nodes lost mid-call.
    #[arg(long)]
    idempotent: bool,
    /// Keep calls away from endpoints failing half their calls (circuit breaker per endpoint).
    #[arg(long)]
    breaker: bool,
    /// Start calling once this many nodes serve the action (within the mesh's wait).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    mesh: MeshArgs,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// Calls finished, answered or failed.
    calls: u64,
    errors: u64,
    /// Answered calls per second.
    calls_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    /// Milliseconds from the start to the first and the last failed call.
    first_error_ms: Option<u64>,
    last_error_ms: Option<u64>,
    /// The first error, as the caller saw it.
    first_error: Option<String>,
    /// How long the loop ran.
    #[serde(skip)]
    seconds: f64,
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Outcome {
    latencies: Vec<u64>,
    errors: Vec<(u64, String)>,
}

/// How hard and how long to call.
#[derive(Debug, Clone)]
pub(super) struct Load {
    pub(super) concurrency: usize,
    pub(super) duration: Duration,
    pub(super) calls: Option<u64>,
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) idempotent: bool,
}

pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    let params = parse_json(&args.params)?;
    let mut builder = Broker::builder();
    if args.breaker {
        builder = builder.circuit_breaker(CircuitBreakerConfig::default().min_requests(10));
    }
    let joined = args.mesh.join(builder).await?;
    let broker = joined.broker.clone();
    let replicas = args.replicas.max(1);
    if let Err(err) = wait_for_action(&joined, &args.action, None, replicas, args.mesh.wait()).await
    {
        broker.stop().await;
        return Err(err);
    }
    let load = Load {
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration.max(0.0)),
        calls: args.calls,
        timeout: Duration::from_millis(args.timeout),
        retries: args.retries,
        idempotent: args.idempotent,
    };
    let report = closed_loop(&broker, &args.action, params, &load).await;
    broker.stop().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// Calls `action` with `params` as `load` says and reports what came back.
pub(super) async fn closed_loop(
    broker: &Broker,
    action: &str,
    params: serde_json::Value,
    load: &Load,
) -> Result<Report> {
    let (params, content_type) = Payload::local(params).encode()?;
    let started = Instant::now();
    let end = started + load.duration;
    let budget = Arc::new(AtomicU64::new(load.calls.unwrap_or(u64::MAX)));
    let workers = (0..load.concurrency.max(1)).map(|_| {
        let broker = broker.clone();
        let action = action.to_owned();
        let params = params.clone();
        let budget = budget.clone();
        let load = load.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome::default();
            loop {
                if load.calls.is_some() {
                    if budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                } else if Instant::now() >= end {
                    break;
                }
                let sent = Instant::now();
                let mut options = CallOptions::new()
                    .timeout(load.timeout)
                    .retries(load.retries);
                if load.idempotent {
                    options = options.idempotent();
                }
                let payload = Payload::encoded(params.clone(), content_type);
                match broker.call_raw(&action, payload, options).await {
                    Ok(_) => outcome.latencies.push(sent.elapsed().as_micros() as u64),
                    Err(err) => {
                        let at = started.elapsed().as_millis() as u64;
                        outcome.errors.push((at, err.to_string()));
                    }
                }
            }
            outcome
        })
    });
    let mut latencies = Vec::new();
    let mut errors: Vec<(u64, String)> = Vec::new();
    for worker in futures_util::future::join_all(workers).await {
        let outcome = worker.unwrap_or_default();
        latencies.extend(outcome.latencies);
        errors.extend(outcome.errors);
    }
    errors.sort();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    Ok(Report {
        calls: (latencies.len() + errors.len()) as u64,
        calls_per_sec: latencies.len() as f64 / elapsed.max(f64::EPSILON),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        first_error_ms: errors.first().map(|e| e.0),
        last_error_ms: errors.last().map(|e| e.0),
        first_error: errors.first().map(|e| e.1.clone()),
        errors: errors.len() as u64,
        seconds: elapsed,
    })
}

impl Report {
    /// One line for people.
    pub(super) fn summary(&self) -> String {
        format!(
            "{} calls in {:.2} s: {:.0} calls/s, p50 {} µs, p99 {} µs, {} errors",
            self.calls, self.seconds, self.calls_per_sec, self.p50_us, self.p99_us, self.errors
        )
    }
}

//! `phalanx demo`: a node serving demo services, until Ctrl-C or SIGTERM.

use super::MeshArgs;
use clap::Args;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use phalanx::middleware::{LocalCall, Middleware, Next};
use phalanx::{Broker, ByteStream, Context, Error, Payload, Result};
use serde::Deserialize;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep a JSON file with the nodes this node currently sees (for test harnesses).
    #[arg(long)]
    status_file: Option<std::path::PathBuf>,
    /// Make demo.echo, demo.add and demo.sleep fail with this probability (0.0–1.0), with a
    /// retryable error: a flaky replica to show retries and the circuit breaker.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
    #[command(flatten)]
    mesh: MeshArgs,
}

#[derive(Debug, Deserialize)]
struct Add {
    a: serde_json::Number,
    b: serde_json::Number,
}

impl Add {
    /// The sum, an integer when both terms are (and it fits).
    fn sum(&self) -> serde_json::Value {
        match (self.a.as_i64(), self.b.as_i64()) {
            (Some(a), Some(b)) if a.checked_add(b).is_some() => (a + b).into(),
            _ => (self.a.as_f64().unwrap_or(f64::NAN) + self.b.as_f64().unwrap_or(f64::NAN)).into(),
        }
    }
}

/// `demo.bytes`: how many bytes to stream.
#[derive(Debug, Deserialize)]
struct ByteCount {
    n: u64,
}

impl ByteCount {
    /// `n` bytes of a repeating pattern, a shared block at a time (no copy per chunk).
    fn stream(&self) -> ByteStream {
        let block =
            bytes::Bytes::from((0..32 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let mut left = self.n;
        let chunks = std::iter::from_fn(move || {
            let len = left.min(block.len() as u64) as usize;
            left -= len as u64;
            (len > 0).then(|| Ok(block.slice(..len)))
        });
        ByteStream::new(futures_util::stream::iter(chunks))
            .with_len(self.n)
            .with_content_type("application/octet-stream")
    }
}

/// `demo.digest`: the length and SHA-256 of a stream.
async fn digest(mut body: ByteStream) -> Result<serde_json::Value> {
    use futures_util::StreamExt;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        sha.update(&chunk);
    }
    let hex: String = sha
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(serde_json::json!({ "len": len, "sha256": hex }))
}

#[derive(Debug, Deserialize)]
struct Sleep {
    ms: u64,
}

#[derive(Debug, Deserialize)]
struct Fail {
    #[serde(default = "default_code")]
    code: u16,
    #[serde(default)]
    message: Option<String>,
}

fn default_code() -> u16 {
    500
}

pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode> {
    let joined = args.mesh.join(Broker::builder()).await?;
    let broker = joined.broker.clone();
    let events = Arc::new(AtomicU64::new(0));
    let counted = events.clone();
    let service = broker
        .service("demo")
        .middleware(FailRate(args.fail_rate))
        .action(
            "echo",
            |_ctx: Context, params: serde_json::Value| async move { Ok(params) },
        )
        .action("add", |_ctx: Context, p: Add| async move { Ok(p.sum()) })
        .action("sleep", |_ctx: Context, p: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok(p.ms)
        })
        .action("fail", |_ctx: Context, p: Fail| async move {
            let message = p.message.unwrap_or_else(|| "demo failure".into());
            Err::<(), _>(Error::handler(p.code, "DEMO_FAILURE", message))
        })
        .action(
            "digest",
            |ctx: Context, _: serde::de::IgnoredAny| async move {
                let body = ctx
                    .take_stream()
                    .ok_or_else(|| Error::validation("demo.digest reads a stream: send a body"))?;
                digest(body).await
            },
        )
        .action("bytes", |_ctx: Context, p: ByteCount| async move {
            Ok(p.stream())
        })
        .action("events", move |_ctx: Context, _: serde::de::IgnoredAny| {
            let events = events.clone();
            async move { Ok(events.load(Ordering::Relaxed)) }
        })
        .event("demo.**", move |_ctx: Context, _: serde::de::IgnoredAny| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .params_schema("add", number_fields(&["a", "b"]))
        .params_schema("sleep", number_fields(&["ms"]))
        .params_schema("bytes", number_fields(&["n"]))
        .publish_http();
    // `demo.area` takes and answers Protobuf messages; its descriptors let JSON callers in.
    #[cfg(feature = "protobuf")]
    let service = service
        .proto_descriptors(super::shapes::descriptors()?)
        .proto_action(
            "area",
            |_ctx: Context, rect: super::shapes::Rect| async move { Ok(rect.area()) },
        )
        .params_schema("area", number_fields(&["width", "height"]));
    service.start().await?;
    println!(
        "node {} listening on {}",
        broker.node_id(),
        joined.addresses().join(", ")
    );
    let status = args
        .status_file
        .map(|path| tokio::spawn(write_status(broker.clone(), path)));
    super::shutdown_signal().await;
    if let Some(status) = status {
        status.abort();
    }
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Rewrites `path` (atomically) whenever the set of available peers changes:
/// `{"node": .., "peers": [..], "unix_ms": ..}`.
async fn write_status(broker: Broker, path: std::path::PathBuf) {
    let mut last = None;
    loop {
        let peers = super::available_peers(&broker);
        if last.as_ref() != Some(&peers) {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let body =
                serde_json::json!({"node": broker.node_id(), "peers": peers, "unix_ms": unix_ms});
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, body.to_string()).is_ok()
                && std::fs::rename(&tmp, &path).is_ok()
            {
                last = Some(peers);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("'{s}' is not a probability between 0 and 1")),
    }
}

/// Fails the demo's working actions with some probability, before the handler runs.
struct FailRate(f64);

impl Middleware for FailRate {
    fn name(&self) -> &'static str {
        "fail-rate"
    }

    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let flaky = matches!(call.action, "demo.echo" | "demo.add" | "demo.sleep");
        if flaky && self.0 > 0.0 && rand::random::<f64>() < self.0 {
            let node = call.ctx.broker().node_id().to_owned();
            // Refused before the handler ran: safe to try on another replica (503, retryable).
            let err = Error::rejected(format!("{node} refused on purpose (--fail-rate)"));
            return futures_util::future::ready(Err(err)).boxed();
        }
        next.run(call)
    }
}

/// A params schema: an object whose `fields` are required numbers.
fn number_fields(fields: &[&str]) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|f| ((*f).to_owned(), serde_json::json!({ "type": "number" })))
        .collect();
    serde_json::json!({ "type": "object", "properties": properties, "required": fields })
}

//! `phalanx gateway`: a node that joins the mesh and serves its actions and events over HTTP,
//! until Ctrl-C or SIGTERM.

use super::JoinArgs;
use clap::Args;
use phalanx::gateway::{Cors, EventRoute, Gateway, GatewayBuilder, RateLimit, Route};
use phalanx::{Broker, Error, Result};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// HTTP address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address to listen on for the mesh.
    #[arg(long, default_value = "0.0.0.0:0")]
    mesh_listen: SocketAddr,
    /// Path under which the actions of services that publish themselves are served
    /// (`<prefix>/<service>/<action>`).
    #[arg(long, default_value = "/api")]
    prefix: String,
    /// An explicit route under the prefix, `'METHOD /path/{param}=service.action'`; repeat for
    /// more.
    #[arg(long = "alias", value_name = "ROUTE=ACTION")]
    aliases: Vec<String>,
    /// Only actions matching one of these patterns are served (`*` a segment, `**` any).
    #[arg(long)]
    whitelist: Vec<String>,
    /// Actions matching one of these patterns are never served.
    #[arg(long)]
    blacklist: Vec<String>,
    /// Copy these request headers into the call's meta.
    #[arg(long = "meta-header", value_name = "HEADER")]
    meta_headers: Vec<String>,
    /// Origins browsers may call from (`*` for any); repeat for more. Default: none.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Requests per second per client address (bursts of twice as many); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Milliseconds a request may take before 408 / 504.
    #[arg(long, default_value_t = 30_000)]
    timeout: u64,
    /// Stream the cluster events matching this pattern at `GET /events` (Server-Sent Events).
    #[arg(long, value_name = "PATTERN")]
    events: Option<String>,
    /// Serve the web dashboard at `/dashboard`.
    #[arg(long)]
    dashboard: bool,
    #[command(flatten)]
    join: JoinArgs,
}

pub(crate) async fn run(args: GatewayArgs) -> Result<ExitCode> {
    let mut route = Route::new(&args.prefix)
        .auto_aliases()
        .whitelist(args.whitelist.iter().cloned())
        .blacklist(args.blacklist.iter().cloned())
        .meta_from_headers(&args.meta_headers);
    for alias in &args.aliases {
        let (path, action) = alias.rsplit_once('=').ok_or_else(|| {
            Error::validation(format!(
                "alias '{alias}' is not 'METHOD /path=service.action'"
            ))
        })?;
        route = route.alias(path, action);
    }
    let joined = args.join.join(args.mesh_listen, Broker::builder()).await?;
    let mut gateway = Gateway::builder(&joined.broker)
        .route(route)
        .body_limit(args.body_limit)
        .timeout(Duration::from_millis(args.timeout));
    match args.cors_origins.as_slice() {
        [] => {}
        origins if origins.iter().any(|o| o == "*") => gateway = gateway.cors(Cors::any()),
        origins => gateway = gateway.cors(Cors::origins(origins.iter().cloned())),
    }
    if args.rate_limit > 0 {
        gateway = gateway.rate_limit(
            RateLimit::per_second(args.rate_limit).burst(args.rate_limit.saturating_mul(2)),
        );
    }
    if let Some(pattern) = &args.events {
        gateway = gateway.events(EventRoute::new("/events", pattern));
    }
    if args.dashboard {
        gateway = gateway.dashboard("/dashboard");
    }
    serve_until_stopped(gateway, args.listen, &joined, "gateway").await
}

/// `phalanx dashboard`: the web dashboard on its own, at `/`.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// HTTP address to serve on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Address to listen on for the mesh.
    #[arg(long, default_value = "0.0.0.0:0")]
    mesh_listen: SocketAddr,
    #[command(flatten)]
    join: JoinArgs,
}

pub(crate) async fn dashboard(args: DashboardArgs) -> Result<ExitCode> {
    let joined = args.join.join(args.mesh_listen, Broker::builder()).await?;
    let gateway = Gateway::builder(&joined.broker).dashboard("/");
    serve_until_stopped(gateway, args.listen, &joined, "dashboard").await
}

/// Serves `gateway` on `listen` until Ctrl-C or SIGTERM, then stops it and the node.
async fn serve_until_stopped(
    gateway: GatewayBuilder,
    listen: SocketAddr,
    joined: &super::Joined,
    what: &str,
) -> Result<ExitCode> {
    let broker = &joined.broker;
    let served = match gateway.serve(listen).await {
        Ok(served) => served,
        Err(err) => {
            broker.stop().await;
            return Err(err);
        }
    };
    println!(
        "{what} {} on http://{} (mesh on {})",
        broker.node_id(),
        served.local_addr(),
        joined.addresses().join(", ")
    );
    super::shutdown_signal().await;
    served.shutdown().await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}

//! Command-line arguments and the commands that join the mesh as an observer.

mod bench;
mod demo;
#[cfg(feature = "gateway")]
mod gateway;
mod inspect;
mod repl;
#[cfg(feature = "protobuf")]
mod shapes;
mod top;

use clap::{Args, Parser, Subcommand};
use phalanx::identity::{ClusterCa, read_secret_file};
use phalanx::transport::MeshTransport;
use phalanx::{Broker, CallOptions, Error, Result};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// Phalanx: a microservices mesh with no broker.
#[derive(Debug, Parser)]
#[command(name = "phalanx", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `human` text or `json` (filter with RUST_LOG). Also `PHALANX_LOG_FORMAT`.
    #[arg(
        long,
        global = true,
        env = "PHALANX_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: phalanx::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node serving the demo services (demo.echo, demo.add, demo.sleep, demo.fail).
    Demo(demo::DemoArgs),
    /// Call an action and print its JSON result.
    Call {
        /// Full action name, e.g. `demo.add`.
        action: String,
        /// Parameters as JSON.
        #[arg(default_value = "null")]
        params: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout: u64,
        /// Call this node's endpoint only.
        #[arg(long)]
        node: Option<String>,
        /// Retry a retryable failure up to N times, on another node when there is one.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        /// The action is safe to run twice: retries also cover timeouts and nodes lost mid-call.
        #[arg(long)]
        idempotent: bool,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// List the nodes of the mesh.
    Nodes {
        /// One JSON object per node.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Emit an event (one handler per listening group).
    Emit {
        /// Event name.
        event: String,
        /// Payload as JSON.
        #[arg(default_value = "null")]
        data: String,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Broadcast an event to every listener on every node.
    Broadcast {
        /// Event name.
        event: String,
        /// Payload as JSON.
        #[arg(default_value = "null")]
        data: String,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Call an action in a closed loop and print calls/s, p50, p99 and errors.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Inspect(inspect::Inspect),
    /// A live view of the whole cluster: nodes, actions (calls/s, errors, p50, p99, open
    /// circuits, the last minute) and events, refreshed every second.
    Top(top::TopArgs),
    /// An interactive shell joined to the cluster, with history and tab completion of commands,
    /// actions, events and nodes.
    Repl(repl::ReplArgs),
    /// Serve the cluster's actions and events over HTTP (an API gateway that joins the mesh).
    #[cfg(feature = "gateway")]
    Gateway(gateway::GatewayArgs),
    /// Serve the web dashboard of the cluster (live topology, action charts, circuits, events).
    #[cfg(feature = "gateway")]
    Dashboard(gateway::DashboardArgs),
}

/// How a command joins the mesh, and where it listens for it.
#[derive(Debug, Clone, Args)]
pub(crate) struct MeshArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    #[command(flatten)]
    join: JoinArgs,
}

impl MeshArgs {
    /// Starts a broker on the QUIC mesh, or on NATS when `--nats` is given.
    pub(crate) async fn join(&self, builder: phalanx::BrokerBuilder) -> Result<Joined> {
        self.join.join(self.listen, builder).await
    }

    fn wait(&self) -> Duration {
        self.join.wait()
    }
}

/// How a command joins the mesh (all but the address it listens on).
#[derive(Debug, Clone, Args)]
pub(crate) struct JoinArgs {
    /// A node to dial first (`host:port`); repeat for more. Also `PHALANX_SEEDS=a:1,b:2`.
    #[arg(long = "seed", env = "PHALANX_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// File holding the cluster secret (mode 0600; default: the user's secret file, created on
    /// first use). The secret itself may come in `PHALANX_SECRET` — never on the command line,
    /// where every user of the host sees it in `ps`.
    #[arg(long, env = "PHALANX_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
    /// Namespace; nodes only see nodes of the same namespace.
    #[arg(long, env = "PHALANX_NAMESPACE", default_value = "")]
    namespace: String,
    /// Node id (default: host name and a random suffix).
    #[arg(long)]
    node_id: Option<String>,
    /// How long to wait for the mesh (and the target action) to appear, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    wait: u64,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    heartbeat_ms: u64,
    /// A peer silent this long (milliseconds) is declared down.
    #[arg(long, default_value_t = 6_000)]
    lease_ms: u64,
    /// Do not announce or browse by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Links of the mesh: `quic`, `tcp` (for networks that drop UDP) or `both` (QUIC preferred,
    /// TCP when QUIC gets no answer; both listen on the one port). Also `PHALANX_TRANSPORT`.
    #[arg(long = "transport", env = "PHALANX_TRANSPORT", default_value = "both")]
    links: phalanx::transport::MeshLinks,
    /// Do not use shared memory with nodes on this host (they then talk over the network).
    #[arg(long, env = "PHALANX_NO_SHM")]
    no_shm: bool,
    /// Use a NATS server instead of the QUIC mesh, e.g. `nats://user:pass@host:4222` or
    /// `tls://host:4222`. Also `PHALANX_NATS`.
    #[cfg(feature = "nats")]
    #[arg(long, env = "PHALANX_NATS")]
    nats: Option<String>,
    /// A NATS credentials file.
    #[cfg(feature = "nats")]
    #[arg(long, env = "PHALANX_NATS_CREDS")]
    nats_creds: Option<std::path::PathBuf>,
    /// Use a Kafka cluster instead of the mesh: its bootstrap brokers, `host:port[,host:port]`.
    /// Also `PHALANX_KAFKA`.
    #[cfg(feature = "kafka")]
    #[arg(long, env = "PHALANX_KAFKA")]
    kafka: Option<String>,
    /// Serve Prometheus metrics on this address at `/metrics`, e.g. `127.0.0.1:9464`.
    #[cfg(feature = "prometheus")]
    #[arg(long, env = "PHALANX_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// A broker that joined the mesh, and the mesh transport it joined with (none on NATS).
pub(crate) struct Joined {
    pub(crate) broker: Broker,
    mesh: Option<MeshTransport>,
}

impl Joined {
    /// An authentication error when this node's membership does not match the mesh.
    pub(crate) fn authentication_error(&self) -> Option<Error> {
        self.mesh
            .as_ref()
            .and_then(MeshTransport::authentication_error)
    }

    /// Where peers can reach this node.
    pub(crate) fn addresses(&self) -> Vec<String> {
        use phalanx::transport::Transporter;
        self.mesh
            .as_ref()
            .map(|q| q.addresses())
            .unwrap_or_default()
    }
}

impl JoinArgs {
    /// Starts a broker on the QUIC mesh (listening on `listen`), or on NATS when `--nats` is
    /// given.
    pub(crate) async fn join(
        &self,
        listen: SocketAddr,
        builder: phalanx::BrokerBuilder,
    ) -> Result<Joined> {
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.metrics_addr {
            phalanx::metrics::serve_prometheus(addr)?;
        }
        let mut builder = builder.namespace(self.namespace.clone()).heartbeat(
            Duration::from_millis(self.heartbeat_ms),
            Duration::from_millis(self.lease_ms),
        );
        if let Some(id) = &self.node_id {
            builder = builder.node_id(id.clone());
        }
        if !self.no_shm {
            builder = builder.transport(phalanx::transport::ShmTransport::builder().build());
        }
        let cluster_ca = match &self.secret_file {
            Some(path) => ClusterCa::secret(read_secret_file(path)?.ok_or_else(|| {
                Error::validation(format!(
                    "secret file {} is missing or empty",
                    path.display()
                ))
            })?),
            None => ClusterCa::local()?,
        };
        #[cfg(feature = "nats")]
        if let Some(url) = &self.nats {
            let mut nats =
                phalanx::transport::NatsTransport::builder(url.clone()).cluster_ca(cluster_ca);
            if let Some(creds) = &self.nats_creds {
                nats = nats.credentials_file(creds.clone());
            }
            let broker = builder.transport(nats.build()).start().await?;
            return Ok(Joined { broker, mesh: None });
        }
        #[cfg(feature = "kafka")]
        if let Some(brokers) = &self.kafka {
            let kafka =
                phalanx::transport::KafkaTransport::builder(brokers.clone()).cluster_ca(cluster_ca);
            let broker = builder.transport(kafka.build()).start().await?;
            return Ok(Joined { broker, mesh: None });
        }
        let mesh = MeshTransport::builder()
            .listen(listen)
            .links(self.links)
            .seeds(self.seeds.iter().filter(|s| !s.is_empty()).cloned())
            .cluster_ca(cluster_ca)
            .mdns(!self.no_mdns)
            .build();
        let broker = builder.transport(mesh.clone()).start().await?;
        Ok(Joined {
            broker,
            mesh: Some(mesh),
        })
    }

    pub(crate) fn wait(&self) -> Duration {
        Duration::from_millis(self.wait)
    }
}

pub(crate) fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Demo(_) => "info",
        #[cfg(feature = "gateway")]
        Command::Gateway(_) | Command::Dashboard(_) => "info",
        // Log lines would tear through the dashboard (RUST_LOG still turns them on).
        Command::Top(_) | Command::Repl(_) => "off",
        _ => "warn",
    };
    phalanx::logging::init(default, cli.log_format);
}

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        #[cfg(feature = "gateway")]
        Command::Gateway(args) => gateway::run(args).await,
        #[cfg(feature = "gateway")]
        Command::Dashboard(args) => gateway::dashboard(args).await,
        Command::Call {
            action,
            params,
            timeout,
            node,
            retries,
            idempotent,
            mesh,
        } => {
            let params = parse_json(&params)?;
            let joined = mesh.join(Broker::builder()).await?;
            let broker = &joined.broker;
            let result = async {
                wait_for_action(&joined, &action, node.as_deref(), 1, mesh.wait()).await?;
                let mut options = CallOptions::new()
                    .timeout(Duration::from_millis(timeout))
                    .retries(retries);
                if idempotent {
                    options = options.idempotent();
                }
                if let Some(node) = node {
                    options = options.node(node);
                }
                broker
                    .call_with::<serde_json::Value>(&action, params, options)
                    .await
            }
            .await;
            broker.stop().await;
            print_json(&result?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes { json, mesh } => {
            let joined = mesh.join(Broker::builder()).await?;
            settle(&joined, mesh.wait()).await;
            let report = inspect::gather(&joined.broker, &inspect::Query::Nodes).await;
            joined.broker.stop().await;
            report?.print(json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit { event, data, mesh } => publish(&event, &data, &mesh, false).await,
        Command::Broadcast { event, data, mesh } => publish(&event, &data, &mesh, true).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Inspect(command) => inspect::run(command).await,
        Command::Top(args) => top::run(args).await,
        Command::Repl(args) => repl::run(args).await,
    }
}

async fn publish(event: &str, data: &str, mesh: &MeshArgs, broadcast: bool) -> Result<ExitCode> {
    let data = parse_json(data)?;
    let joined = mesh.join(Broker::builder()).await?;
    let broker = &joined.broker;
    settle(&joined, mesh.wait()).await;
    let sent = if broadcast {
        broker.broadcast(event, &data).await
    } else {
        broker.emit(event, &data).await
    };
    broker.stop().await;
    sent?;
    if let Some(err) = joined.authentication_error() {
        return Err(err);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::validation(format!("parameters are not JSON: {e}")))
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => tracing::error!(%err, "cannot print as JSON"),
    }
}

/// Waits until at least `replicas` nodes serve `action` (`node` among them, if given);
/// explains why not when they never do.
pub(crate) async fn wait_for_action(
    joined: &Joined,
    action: &str,
    node: Option<&str>,
    replicas: usize,
    wait: Duration,
) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let served = joined.broker.actions().iter().any(|a| {
            a.name == action
                && a.nodes.len() >= replicas
                && node.is_none_or(|n| a.nodes.iter().any(|x| x == n))
        });
        if served {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(joined
                .authentication_error()
                .unwrap_or_else(|| Error::service_not_found(action)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids of the other nodes `broker` currently sees as available, sorted.
pub(crate) fn available_peers(broker: &Broker) -> Vec<String> {
    let mut peers: Vec<String> = broker
        .nodes()
        .into_iter()
        .filter(|n| n.available && !n.local)
        .map(|n| n.id)
        .collect();
    peers.sort();
    peers
}

/// Waits until the set of available nodes has stopped changing (or `wait` passes).
pub(crate) async fn settle(joined: &Joined, wait: Duration) {
    let deadline = Instant::now() + wait;
    let quiet = Duration::from_millis(400);
    let mut last = Vec::new();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        let known = available_peers(&joined.broker);
        if known != last {
            last = known;
            since = Instant::now();
        } else if !last.is_empty() && since.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(err) = joined.authentication_error() {
        tracing::warn!(%err, "could not join the mesh");
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

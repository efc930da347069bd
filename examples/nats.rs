//! NATS as the transport: nodes that cannot reach each other directly (other networks, other
//! data centres) meet on a NATS server instead of a mesh. Discovery, heartbeats, calls and events
//! travel over subjects of the namespace; the registry still balances calls itself.
//!
//! Run against a server (`nats-server -p 4222`):
//! `cargo run --example nats -- nats://127.0.0.1:4222` (or set `PHALANX_NATS`).
#![allow(clippy::print_stdout)]

use phalanx::transport::{LinkKind, NatsTransport};
use phalanx::{Broker, Context};
use std::time::Duration;

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PHALANX_NATS").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let node = |id: &'static str| {
        Broker::builder()
            .node_id(id)
            .namespace("nats-example")
            .transport(NatsTransport::builder(url.clone()).build())
            .start()
    };
    let (billing, web) = (node("billing").await?, node("web").await?);
    billing
        .service("invoices")
        .action("total", |_ctx: Context, items: Vec<f64>| async move {
            Ok(items.iter().sum::<f64>())
        })
        .start()
        .await?;
    web.wait_for_services(&["invoices"], Duration::from_secs(5))
        .await?;

    let total: f64 = web.call("invoices.total", vec![9.5, 0.5]).await?;
    let link = web
        .nodes()
        .into_iter()
        .find(|n| n.id == "billing")
        .map(|n| n.link);
    println!("web → billing over {link:?}: total {total}");
    assert_eq!((total, link), (10.0, Some(LinkKind::Nats)));

    web.stop().await;
    billing.stop().await;
    Ok(())
}

//! Quick start: three nodes linked by the QUIC mesh on loopback (mutual TLS, one seed each, no
//! broker, no config), four services, calls that cross nodes, events, and an error that reaches
//! its caller with its code.
//!
//! Run: `cargo run --release --example quickstart`
#![allow(clippy::print_stdout)]

use phalanx::identity::ClusterCa;
use phalanx::transport::MeshTransport;
use phalanx::{Broker, Context, Error};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Placed {
    order_id: u64,
    item: String,
    left_in_stock: u32,
}

/// A node on the QUIC mesh, listening on a free loopback port, dialing `seed` if given.
async fn node(id: &str, seed: Option<&MeshTransport>) -> phalanx::Result<(Broker, MeshTransport)> {
    let mut quic = MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("address"))
        // Zero config: the user's cluster secret file, created on first run.
        .cluster_ca(ClusterCa::local()?)
        // Seeds keep this demo deterministic; on a LAN, mDNS (on by default) finds nodes too.
        .mdns(false);
    if let Some(addr) = seed.and_then(MeshTransport::local_addr) {
        quic = quic.seed(addr.to_string());
    }
    let quic = quic.build();
    let broker = Broker::builder()
        .node_id(id)
        .namespace("shop")
        .transport(quic.clone())
        .start()
        .await?;
    Ok((broker, quic))
}

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let (api, api_quic) = node("api-node", None).await?;
    let (warehouse, warehouse_quic) = node("warehouse-node", Some(&api_quic)).await?;
    let (notifier, _) = node("notifier-node", Some(&warehouse_quic)).await?;

    // warehouse-node: stock keeping.
    let stock = Arc::new(AtomicU32::new(5));
    warehouse
        .service("stock")
        .action("reserve", move |ctx: Context, order: Order| {
            let stock = stock.clone();
            async move {
                let left = stock
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                        s.checked_sub(order.qty)
                    })
                    .map_err(|have| {
                        Error::handler(
                            409,
                            "OUT_OF_STOCK",
                            format!("only {have} {} left", order.item),
                        )
                    })?;
                println!(
                    "[warehouse-node] reserved {} x {} for {:?} (call level {})",
                    order.qty,
                    order.item,
                    ctx.caller(),
                    ctx.level()
                );
                Ok(left - order.qty)
            }
        })
        .start()
        .await?;

    // api-node: orders, which depends on stock living somewhere in the cluster.
    api.service("orders")
        .dependencies(["stock"])
        .action("place", |ctx: Context, order: Order| async move {
            let left: u32 = ctx.call("stock.reserve", order.clone()).await?;
            let placed = Placed {
                order_id: ctx.request_id(),
                item: order.item,
                left_in_stock: left,
            };
            ctx.emit("order.placed", &placed).await?;
            Ok(placed)
        })
        .start()
        .await?;

    // notifier-node: two listeners, each in its own group, one with a wildcard.
    notifier
        .service("mailer")
        .event("order.placed", |_ctx: Context, p: Placed| async move {
            println!(
                "[notifier-node] mailer: order {} for {} confirmed",
                p.order_id, p.item
            );
            Ok(())
        })
        .start()
        .await?;
    notifier
        .service("audit")
        .event("order.*", |ctx: Context, p: serde_json::Value| async move {
            println!("[notifier-node] audit: {p} from {:?}", ctx.node_id());
            Ok(())
        })
        .start()
        .await?;
    api.wait_for_services(&["orders", "mailer", "audit"], Duration::from_secs(5))
        .await?;

    for qty in [2, 2, 2] {
        let order = Order {
            item: "teapot".into(),
            qty,
        };
        match api.call::<Placed>("orders.place", order).await {
            Ok(placed) => println!("[api-node] placed: {placed:?}"),
            Err(err) => println!(
                "[api-node] failed with code {} ({}) from node {:?}: {}",
                err.code(),
                err.error_type(),
                err.node(),
                err.message()
            ),
        }
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in api.nodes() {
        println!(
            "[api-node] knows {} via {}: services {}",
            n.id,
            n.link,
            n.services.join(", ")
        );
    }

    for broker in [api, warehouse, notifier] {
        broker.stop().await;
    }
    Ok(())
}

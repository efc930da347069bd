//! The quick start's shop behind HTTP: a warehouse node and an orders node on the QUIC mesh,
//! and a third node running the API gateway in front of them — generated routes for the
//! services that publish themselves, explicit aliases, an API key check, and the order events
//! streamed to browsers.
//!
//! Run: `cargo run --release --example gateway` (calls itself over HTTP and exits), or
//! `cargo run --release --example gateway -- --serve 127.0.0.1:8080` and try the `curl` lines of
//! the README.
#![allow(clippy::print_stdout)]

use phalanx::gateway::{Authenticator, Cors, EventRoute, Gateway, Route, unauthorized};
use phalanx::identity::ClusterCa;
use phalanx::transport::MeshTransport;
use phalanx::{Broker, Context, Error};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[derive(Debug, Deserialize)]
struct Item {
    item: String,
}

/// A node on the QUIC mesh, listening on a free loopback port, dialing `seed` if given.
async fn node(id: &str, seed: Option<&MeshTransport>) -> phalanx::Result<(Broker, MeshTransport)> {
    let mut quic = MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("address"))
        .cluster_ca(ClusterCa::local()?)
        .mdns(false);
    if let Some(addr) = seed.and_then(MeshTransport::local_addr) {
        quic = quic.seed(addr.to_string());
    }
    let quic = quic.build();
    let broker = Broker::builder()
        .node_id(id)
        .namespace("shop-http")
        .transport(quic.clone())
        .start()
        .await?;
    Ok((broker, quic))
}

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let serve_on = std::env::args()
        .skip_while(|a| a != "--serve")
        .nth(1)
        .map(|a| a.parse().expect("--serve ADDR"));
    let (api, api_quic) = node("api-node", None).await?;
    let (warehouse, _) = node("warehouse-node", Some(&api_quic)).await?;
    let (orders, _) = node("orders-node", Some(&api_quic)).await?;

    // warehouse-node: the stock, published on gateways as /api/stock/<action>.
    let stock = Arc::new(Mutex::new(BTreeMap::from([
        ("tea".to_owned(), 5u32),
        ("cups".to_owned(), 2),
    ])));
    let listed = stock.clone();
    let reserving = stock.clone();
    warehouse
        .service("stock")
        .action("list", move |_ctx: Context, _: Value| {
            let stock = listed.lock().expect("stock").clone();
            async move { Ok(stock) }
        })
        .action("get", move |_ctx: Context, p: Item| {
            let left = stock.lock().expect("stock").get(&p.item).copied();
            async move {
                left.map(|left| json!({ "item": p.item, "left": left }))
                    .ok_or_else(|| Error::handler(404, "NO_SUCH_ITEM", format!("no {}", p.item)))
            }
        })
        .action("reserve", move |_ctx: Context, order: Order| {
            let mut stock = reserving.lock().expect("stock");
            let reserved = match stock.get_mut(&order.item) {
                Some(have) if *have >= order.qty => {
                    *have -= order.qty;
                    Ok(*have)
                }
                Some(have) => Err(Error::handler(
                    409,
                    "OUT_OF_STOCK",
                    format!("only {have} {} left", order.item),
                )),
                None => Err(Error::handler(404, "NO_SUCH_ITEM", format!("no {}", order.item))),
            };
            async move { reserved }
        })
        .params_schema(
            "get",
            json!({"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        )
        .publish_http()
        .start()
        .await?;

    // orders-node: placing an order reserves stock and tells whoever listens.
    orders
        .service("orders")
        .dependencies(["stock"])
        .action("place", |ctx: Context, order: Order| async move {
            let left: u32 = ctx.call("stock.reserve", order.clone()).await?;
            let placed = json!({ "order": ctx.request_id(), "item": order.item, "left": left });
            ctx.emit("order.placed", &placed).await?;
            Ok(placed)
        })
        .params_schema(
            "place",
            json!({"type": "object", "properties": {
                "item": {"type": "string"}, "qty": {"type": "integer"}
            }, "required": ["item", "qty"]}),
        )
        .start()
        .await?;
    api.wait_for_services(&["stock", "orders"], Duration::from_secs(10))
        .await?;

    // api-node: the gateway. Reads are open; placing an order takes an API key.
    let gateway = Gateway::builder(&api)
        .authenticate(Authenticator::function(|request| {
            let key = request.headers.get("x-api-key").cloned();
            async move {
                match key.as_ref().map(|k| k.as_bytes()) {
                    None => Ok(None),
                    Some(b"demo-key") => Ok(Some(json!({ "name": "demo" }))),
                    Some(_) => Err(unauthorized("unknown API key")),
                }
            }
        }))
        .route(
            Route::new("/api")
                .auto_aliases()
                .alias("GET /stock/{item}", "stock.get")
                .blacklist(["stock.reserve"]),
        )
        .route(
            Route::new("/api")
                .authenticated()
                .alias("POST /orders", "orders.place"),
        )
        .events(EventRoute::new("/events", "order.**"))
        .dashboard("/dashboard")
        .cors(Cors::any())
        .serve(serve_on.unwrap_or("127.0.0.1:0".parse().expect("address")))
        .await?;
    let base = format!("http://{}", gateway.local_addr());
    println!("gateway on {base}");

    if serve_on.is_some() {
        println!("try: curl {base}/api/stock/list — or open {base}/dashboard");
        tokio::signal::ctrl_c().await.ok();
    } else {
        tour(&base).await;
    }
    gateway.shutdown().await;
    for broker in [orders, warehouse, api] {
        broker.stop().await;
    }
    Ok(())
}

/// What the README's `curl` lines do, with a Rust HTTP client.
async fn tour(base: &str) {
    let http = reqwest::Client::new();
    let show = |what: &str, status: reqwest::StatusCode, body: &str| {
        println!("{what:<40} {status} {body}");
    };
    for path in [
        "/api/stock/list",
        "/api/stock/tea",
        "/api/stock/reserve",
        "/health",
    ] {
        let response = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("HTTP");
        let status = response.status();
        show(
            &format!("GET {path}"),
            status,
            &response.text().await.expect("body"),
        );
    }
    let order = json!({"item": "tea", "qty": 2});
    for key in [None, Some("demo-key"), Some("demo-key")] {
        let mut request = http.post(format!("{base}/api/orders")).json(&order);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await.expect("HTTP");
        let status = response.status();
        show(
            &format!("POST /api/orders (key {key:?})"),
            status,
            &response.text().await.expect("body"),
        );
    }
    let too_many = json!({"item": "tea", "qty": 9});
    let response = http
        .post(format!("{base}/api/orders"))
        .header("x-api-key", "demo-key")
        .json(&too_many)
        .send()
        .await
        .expect("HTTP");
    let status = response.status();
    show(
        "POST /api/orders (9 tea)",
        status,
        &response.text().await.expect("body"),
    );
}

//! A call over the NATS transport next to a raw async-nats request-reply, in the same run,
//! against a `nats-server` this bench starts on a free loopback port.
//!
//! Run: `cargo bench --bench nats_call` (options: `-- --seconds 3 --payload 64`)
#![allow(clippy::print_stdout)]

#[path = "../tests/common/nats_server.rs"]
mod nats_server;
mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use nats_server::NatsServer;
use phalanx::Broker;
use phalanx::transport::NatsTransport;
use std::time::Duration;
use support::{
    Options, measure, measure_echo, nats_request_call, print_table, runtime, serve_echo,
};

fn main() {
    let options = Options::from_args();
    let server = NatsServer::start();
    runtime().block_on(run(server.url(), options.duration, options.payload));
}

async fn run(url: String, duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    // Raw: a responder that echoes, a client doing request-reply.
    let responder = async_nats::connect(&url).await.expect("connect");
    let mut requests = responder.subscribe("bench.echo").await.expect("subscribe");
    let replier = responder.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = replier.publish(reply, message.payload).await;
            }
        }
    });
    let client = async_nats::connect(&url).await.expect("connect");
    let raw_call = nats_request_call(&client, &body);

    let raw = measure(duration, raw_call).await;

    let callee = Broker::builder()
        .node_id("callee")
        .transport(NatsTransport::builder(url.clone()).build())
        .start()
        .await
        .expect("callee");
    serve_echo(&callee).await;
    let caller = Broker::builder()
        .node_id("caller")
        .transport(NatsTransport::builder(url).build())
        .start()
        .await
        .expect("caller");
    caller
        .wait_for_services(&["echo"], Duration::from_secs(10))
        .await
        .expect("cluster");
    let ours = measure_echo(&caller, &body, duration).await;
    caller.stop().await;
    callee.stop().await;

    print_table(
        &format!("NATS call, {payload}-byte payload, nats-server on loopback, 2 worker threads"),
        ("raw async-nats request-reply", &raw),
        &[("phalanx `call` over NATS", &ours)],
    );
}

//! Events and groups: `emit` runs one handler per listening group (balanced across the group's
//! replicas), `broadcast` runs every listener on every node, and `*` / `**` patterns match one or
//! many name segments. Three brokers share an in-process bus, so every event is encoded, framed
//! and routed exactly as over the network.
//!
//! Run: `cargo run --example events`
#![allow(clippy::print_stdout)]

use phalanx::transport::InProcBus;
use phalanx::{Broker, Context};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A listener that counts what it receives.
fn counting(
    count: &Arc<AtomicUsize>,
) -> impl Fn(Context, String) -> std::future::Ready<phalanx::Result<()>> + use<> {
    let count = count.clone();
    move |ctx, user| {
        count.fetch_add(1, Ordering::SeqCst);
        let from = ctx.node_id().unwrap_or("itself");
        println!("{} got {user} from {from}", ctx.broker().node_id());
        std::future::ready(Ok(()))
    }
}

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let bus = InProcBus::new();
    let mut nodes = Vec::new();
    for id in ["api", "mail-1", "mail-2"] {
        let broker = Broker::builder()
            .node_id(id)
            .transport(bus.transport())
            .start()
            .await?;
        nodes.push(broker);
    }
    let (mails, audits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Two replicas of "mailer" (one group), and an audit listener on each mail node.
    for node in &nodes[1..] {
        node.service("mailer")
            .event("user.created", counting(&mails))
            .start()
            .await?;
        node.service(format!("audit-{}", node.node_id()))
            .event("user.**", counting(&audits))
            .start()
            .await?;
    }
    let api = &nodes[0];
    api.wait_for_services(
        &["mailer", "audit-mail-1", "audit-mail-2"],
        Duration::from_secs(5),
    )
    .await?;

    // emit: one mailer (either replica) and one handler in each audit group.
    api.emit("user.created", "ada").await?;
    // broadcast: every listener whose pattern matches.
    api.broadcast("user.created", "grace").await?;
    // `user.**` matches deeper names; the mailer listens to `user.created` only.
    api.emit("user.profile.updated", "ada").await?;

    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mails, audits) = (mails.load(Ordering::SeqCst), audits.load(Ordering::SeqCst));
    println!("mailer ran {mails} times, audit {audits} times");
    assert_eq!((mails, audits), (1 + 2, 2 + 2 + 2));
    for node in nodes {
        node.stop().await;
    }
    Ok(())
}

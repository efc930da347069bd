//! Multi-broker clusters over the in-process transport: every packet is encoded, framed, decoded
//! and routed through the same registry code the network transports use.

mod common;

use common::cluster::Cluster;
use common::{counter, counting, settle};
use phalanx::cluster::NodeInfo;
use phalanx::transport::LinkKind;
use phalanx::{Broker, CallOptions, Context, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::test]
async fn calls_cross_brokers_and_keep_their_types() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("math")
        .action("add", |ctx: Context, p: Add| async move {
            assert_eq!(ctx.node_id(), Some("a"));
            Ok(p.a + p.b)
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["math"], WAIT).await.unwrap();

    let sum: i64 = a.call("math.add", Add { a: 40, b: 2 }).await.unwrap();
    assert_eq!(sum, 42);
    let json = a
        .call_json("math.add", serde_json::json!({"a": 1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(json, serde_json::json!(2));

    // What `$node.list` answers, typed, from the other node.
    let nodes: Vec<NodeInfo> = a
        .call_with("$node.list", (), CallOptions::new().node("b"))
        .await
        .unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["b", "a"]);
    assert_eq!(
        (nodes[1].link, nodes[1].available),
        (LinkKind::InProc, true)
    );
    cluster.stop().await;
}

#[tokio::test]
async fn remote_errors_keep_kind_code_and_node() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("pay")
        .action("charge", |_ctx, _: serde_json::Value| async move {
            Err::<(), _>(
                Error::handler(402, "CARD_DECLINED", "card declined")
                    .with_data(serde_json::json!({"card": "1234"})),
            )
        })
        .action("boom", |_ctx, _: serde_json::Value| async move {
            if true {
                panic!("exploded");
            }
            Ok(())
        })
        .action("typed", |_ctx, p: Add| async move { Ok(p.a) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["pay"], WAIT).await.unwrap();

    let err = a.call::<()>("pay.charge", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.code(), 402);
    assert_eq!(err.error_type(), "CARD_DECLINED");
    assert_eq!(err.node(), Some("b"));
    assert_eq!(err.data(), Some(&serde_json::json!({"card": "1234"})));

    let err = a.call::<()>("pay.boom", ()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::HandlerPanic,
        "a panic is an error, not a timeout"
    );
    assert!(err.message().contains("exploded"));

    let err = a.call::<i64>("pay.typed", "not an Add").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(err.code(), 422);

    let err = a.call::<()>("pay.refund", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    assert_eq!(err.code(), 404);
    cluster.stop().await;
}

#[tokio::test]
async fn emit_balances_per_group_and_broadcast_reaches_everyone() {
    let cluster = Cluster::inproc(&["a", "b", "c"]).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let (mail_b, mail_c, audit) = (counter(), counter(), counter());
    for (broker, count) in [(&b, mail_b.clone()), (&c, mail_c.clone())] {
        broker
            .service("mailer")
            .event("user.created", counting::<String>(&count))
            .start()
            .await
            .unwrap();
    }
    c.service("audit")
        .event("user.*", counting::<String>(&audit))
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["mailer", "audit"], WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    for i in 0..10 {
        a.emit("user.created", &format!("u{i}")).await.unwrap();
    }
    let mails = settle(&mail_b, 0).await + settle(&mail_c, 0).await;
    let total = settle(&audit, 10).await;
    assert_eq!(total, 10, "one audit handler per emit");
    assert_eq!(
        mails, 10,
        "exactly one mailer per emit, across both replicas"
    );
    assert!(mail_b.load(Ordering::SeqCst) > 0 && mail_c.load(Ordering::SeqCst) > 0);

    let (before_b, before_c) = (mail_b.load(Ordering::SeqCst), mail_c.load(Ordering::SeqCst));
    a.broadcast("user.created", "all").await.unwrap();
    assert_eq!(settle(&mail_b, before_b + 1).await, before_b + 1);
    assert_eq!(settle(&mail_c, before_c + 1).await, before_c + 1);
    assert_eq!(settle(&audit, 11).await, 11);

    // A local broadcast stays on the node that raised it.
    c.broadcast_local("user.removed", "x").await.unwrap();
    assert_eq!(settle(&audit, 12).await, 12);
    b.broadcast_local("user.removed", "x").await.unwrap();
    assert_eq!(settle(&audit, 12).await, 12);
    cluster.stop().await;
}

#[tokio::test]
async fn wildcards_match_one_or_many_segments() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let (one, many) = (counter(), counter());
    b.service("watch")
        .event_in_group("order.*", "one", counting::<u32>(&one))
        .event_in_group("order.**", "many", counting::<u32>(&many))
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["watch"], WAIT).await.unwrap();
    a.emit("order.created", &1u32).await.unwrap();
    a.emit("order.item.added", &2u32).await.unwrap();
    a.emit("invoice.created", &3u32).await.unwrap();
    assert_eq!(settle(&many, 2).await, 2);
    assert_eq!(settle(&one, 1).await, 1);
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_that_vanishes_fails_its_pending_calls_at_once() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let started = counter();
    let s = started.clone();
    b.service("slow")
        .action("work", move |_ctx, _: ()| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();
    let disconnected = counter();
    let d = disconnected.clone();
    a.service("watcher")
        .event("$node.disconnected", move |_ctx, v: serde_json::Value| {
            let d = d.clone();
            async move {
                assert_eq!(v["node"], "b");
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();

    let caller = a.clone();
    let call = tokio::spawn(async move {
        caller
            .call_with::<()>(
                "slow.work",
                (),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
    });
    settle(&started, 1).await;
    cluster.bus.sever("b");
    let err = call.await.unwrap().unwrap_err();
    // The request had left: whether it ran is unknown, so nothing retries it on its own.
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(err.may_have_run() && !err.is_retryable());
    assert_eq!(settle(&disconnected, 1).await, 1);
    let err = a.call::<()>("slow.work", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    cluster.stop().await;
}

#[tokio::test]
async fn deadlines_travel_with_nested_calls() {
    let cluster = Cluster::inproc(&["a", "b", "c"]).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let inner_runs = counter();
    let runs = inner_runs.clone();
    c.service("inner")
        .action("remaining", move |ctx: Context, _: ()| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(ctx.remaining().map(|d| d.as_millis() as u64))
            }
        })
        .start()
        .await
        .unwrap();
    b.service("outer")
        .action("relay", |ctx: Context, delay_ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let left: Option<u64> = ctx.call("inner.remaining", ()).await?;
            Ok((ctx.level(), left))
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["outer", "inner"], WAIT)
        .await
        .unwrap();
    b.wait_for_services(&["inner"], WAIT).await.unwrap();

    let opts = || CallOptions::new().timeout(Duration::from_millis(400));
    let (level, left): (u32, Option<u64>) = a.call_with("outer.relay", 0u64, opts()).await.unwrap();
    assert_eq!(level, 1);
    let left = left.expect("the deadline reached the inner call");
    assert!(
        left <= 400,
        "inner call saw {left} ms left of a 400 ms budget"
    );
    assert_eq!(inner_runs.load(Ordering::SeqCst), 1);

    // The outer handler outlives the deadline: the inner service must never start.
    let err = a
        .call_with::<(u32, Option<u64>)>("outer.relay", 600u64, opts())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        inner_runs.load(Ordering::SeqCst),
        1,
        "work past its deadline was started"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn dependencies_wait_and_time_out() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let err = a
        .service("orders")
        .dependencies(["v2.stock"])
        .dependency_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyTimeout);
    assert!(err.message().contains("v2.stock"));

    let waiting = {
        let a = a.clone();
        tokio::spawn(async move {
            a.service("orders")
                .dependencies(["v2.stock"])
                .action("place", |ctx: Context, _: ()| async move {
                    ctx.call::<u32>("v2.stock.count", ()).await
                })
                .start()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    b.service("stock")
        .version(2)
        .action("count", |_ctx, _: ()| async move { Ok(7u32) })
        .start()
        .await
        .unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(a.call::<u32>("orders.place", ()).await.unwrap(), 7);
    cluster.stop().await;
}

#[tokio::test]
async fn graceful_stop_finishes_in_flight_calls_and_runs_hooks_in_reverse() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    for name in ["first", "second"] {
        let order = order.clone();
        b.service(name)
            .action("work", |_ctx, ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ms)
            })
            .stopped(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(name);
                    Ok(())
                }
            })
            .start()
            .await
            .unwrap();
    }
    a.wait_for_services(&["first", "second"], WAIT)
        .await
        .unwrap();
    let caller = a.clone();
    let call = tokio::spawn(async move { caller.call::<u64>("first.work", 300u64).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.stop().await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        300,
        "the in-flight call was answered"
    );
    assert_eq!(*order.lock().unwrap(), ["second", "first"]);
    let err = a.call::<u64>("first.work", 1u64).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    cluster.stop().await;
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let cluster = Cluster::inproc(&["a"]).await;
    let a = cluster.node("a");
    let other = Broker::builder()
        .node_id("x")
        .namespace("other")
        .transport(cluster.bus.transport())
        .start()
        .await
        .unwrap();
    other
        .service("secret")
        .action("get", |_ctx, _: ()| async move { Ok(1) })
        .start()
        .await
        .unwrap();
    let err = a
        .wait_for_services(&["secret"], Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyTimeout);
    let err = a.call::<i32>("secret.get", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    other.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn local_calls_prefer_this_node_and_round_robin_remote_replicas() {
    let cluster = Cluster::inproc(&["a", "b", "c"]).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    for n in [&b, &c] {
        n.service("who")
            .action("am_i", |ctx: Context, _: ()| async move {
                Ok(ctx.broker().node_id().to_owned())
            })
            .start()
            .await
            .unwrap();
    }
    a.wait_for_services(&["who"], WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        *seen
            .entry(a.call::<String>("who.am_i", ()).await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("b"), Some(&5));
    assert_eq!(seen.get("c"), Some(&5));
    for _ in 0..5 {
        assert_eq!(b.call::<String>("who.am_i", ()).await.unwrap(), "b");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_flooding_peer_gets_queue_full_beyond_its_in_flight_limit() {
    let cluster = Cluster::inproc(&["a"]).await;
    let a = cluster.node("a");
    let b = Broker::builder()
        .node_id("b")
        .namespace("test")
        .transport(cluster.bus.transport())
        .max_peer_in_flight(2)
        .start()
        .await
        .unwrap();
    b.service("slow")
        .action("work", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.call::<u64>("slow.work", 300u64).await })
        })
        .collect();
    let mut ok = 0;
    let mut full = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::QueueFull, "{err}");
                assert_eq!(err.code(), 429);
                full += 1;
            }
        }
    }
    assert_eq!((ok, full), (2, 3));
    // Capacity comes back once the first requests are answered.
    assert_eq!(a.call::<u64>("slow.work", 1u64).await.unwrap(), 1);
    b.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_call_lost_mid_flight_runs_again_only_when_idempotent() {
    for idempotent in [false, true] {
        let cluster = Cluster::inproc(&["a", "b", "c"]).await;
        let a = cluster.node("a");
        let runs = counter();
        // The first replica to get the charge hangs on to it (and is then cut off).
        let first = Arc::new(std::sync::Mutex::new(None::<String>));
        for id in ["b", "c"] {
            let (runs, first) = (runs.clone(), first.clone());
            cluster
                .node(id)
                .service("pay")
                .action("charge", move |_ctx, _: ()| {
                    let hang = runs.fetch_add(1, Ordering::SeqCst) == 0;
                    if hang {
                        *first.lock().unwrap() = Some(id.to_owned());
                    }
                    async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Ok(())
                    }
                })
                .start()
                .await
                .unwrap();
        }
        while a.actions().iter().all(|x| x.nodes.len() < 2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut options = CallOptions::new().retries(3);
        if idempotent {
            options = options.idempotent();
        }
        let caller = a.clone();
        let call =
            tokio::spawn(async move { caller.call_with::<()>("pay.charge", (), options).await });
        assert_eq!(settle(&runs, 1).await, 1, "one replica started the charge");
        let hung = first.lock().unwrap().clone().expect("a replica hangs");
        cluster.bus.sever(&hung);
        let result = call.await.unwrap();
        if idempotent {
            // Declared safe to run twice: retried on the other replica, and answered.
            result.expect("the idempotent call is retried on the other replica");
            assert_eq!(runs.load(Ordering::SeqCst), 2);
        } else {
            let err = result.expect_err("the replica vanished mid-call");
            assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
            assert_eq!(runs.load(Ordering::SeqCst), 1, "never charged twice");
        }
        cluster.stop().await;
    }
}

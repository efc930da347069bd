//! Params, answers and events as MessagePack (the default), JSON (per call, or a `Json` value)
//! and Protobuf (`Proto` values and Protobuf actions), across QUIC links and in process — with
//! the format each payload travelled in checked on the receiving side.

mod common;
#[path = "common/proto.rs"]
mod proto;

use common::cluster::{Cluster, Over};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use phalanx::middleware::{LocalCall, LocalEvent, Middleware, Next, RemoteCall};
use phalanx::{CallOptions, ContentType, Context, ErrorKind, Json, Payload, Proto, Result};
use proto::{Order, Receipt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// Records the format of what arrives: params on the serving side, answers on the calling side,
/// event data on the listening side.
#[derive(Default)]
struct Formats(Mutex<Vec<(String, Option<ContentType>)>>);

impl Formats {
    fn record(&self, what: &str, format: Option<ContentType>) {
        self.0.lock().unwrap().push((what.to_owned(), format));
    }

    fn last(&self, what: &str) -> Option<ContentType> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .rev()
            .find(|(w, _)| w == what)
            .and_then(|(_, f)| *f)
    }
}

impl Middleware for Formats {
    fn name(&self) -> &'static str {
        "formats"
    }

    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let action = call.action.to_owned();
        async move {
            let answer = next.run(call).await?;
            self.record(&format!("answer {action}"), answer.content_type());
            Ok(answer)
        }
        .boxed()
    }

    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        self.record(
            &format!("params {}", call.action),
            call.params.content_type(),
        );
        next.run(call)
    }

    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        self.record(&format!("event {}", event.event), event.data.content_type());
        next.run(event)
    }
}

/// Nodes `a` and `b` on QUIC, each recording formats.
async fn pair() -> (Cluster, Arc<Formats>, Arc<Formats>) {
    let (seen_a, seen_b) = (Arc::new(Formats::default()), Arc::new(Formats::default()));
    let cluster = Cluster::over_with(&Over::Quic, &["a", "b"], |id, builder| {
        builder.middleware(if id == "a" {
            seen_a.clone()
        } else {
            seen_b.clone()
        })
    })
    .await;
    (cluster, seen_a, seen_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_chooses_json_or_msgpack_and_a_json_value_keeps_json() {
    let (cluster, seen_a, seen_b) = pair().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("echo")
        .action("back", |_ctx, v: Value| async move { Ok(v) })
        .action("json", |_ctx, v: Value| async move { Ok(Json(v)) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo"], WAIT).await.unwrap();

    let sent = json!({"a": 1, "list": [1, 2, 3], "text": "héllo"});
    let back: Value = a.call("echo.back", sent.clone()).await.unwrap();
    assert_eq!(back, sent);
    assert_eq!(seen_b.last("params echo.back"), Some(ContentType::MsgPack));
    assert_eq!(seen_a.last("answer echo.back"), Some(ContentType::MsgPack));

    let json = CallOptions::new().format(ContentType::Json);
    let back: Value = a.call_with("echo.back", sent.clone(), json).await.unwrap();
    assert_eq!(back, sent);
    assert_eq!(seen_b.last("params echo.back"), Some(ContentType::Json));
    assert_eq!(
        seen_a.last("answer echo.back"),
        Some(ContentType::Json),
        "answered in kind"
    );

    // A handler returning `Json` answers JSON to a MessagePack caller; a `Json` param is sent
    // as JSON whatever the call's format.
    let back: Value = a.call("echo.json", Json(sent.clone())).await.unwrap();
    assert_eq!(back, sent);
    assert_eq!(seen_b.last("params echo.json"), Some(ContentType::Json));
    assert_eq!(seen_a.last("answer echo.json"), Some(ContentType::Json));
    cluster.stop().await;
}

/// `shop.checkout` (descriptors published) and `till.checkout` (none) on `node`.
async fn serve_checkouts(node: &phalanx::Broker) {
    let checkout = |_ctx: Context, order: Order| async move {
        Ok(Receipt {
            total_cents: 250 * u64::from(order.quantity),
            item: order.item,
        })
    };
    node.service("shop")
        .proto_descriptors(proto::shop_descriptors())
        .proto_action("checkout", checkout)
        .start()
        .await
        .unwrap();
    node.service("till")
        .proto_action("checkout", checkout)
        .start()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_actions_answer_protobuf_callers_in_protobuf_and_json_callers_in_json() {
    let (cluster, seen_a, seen_b) = pair().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    serve_checkouts(b).await;
    a.wait_for_services(&["shop", "till"], WAIT).await.unwrap();

    // What each action takes is announced.
    let announced = a.actions();
    let proto_of = |name: &str| {
        announced
            .iter()
            .find(|x| x.name == name)
            .and_then(|x| x.proto.clone())
            .unwrap_or_else(|| panic!("{name} announces no Protobuf types: {announced:?}"))
    };
    let shop = proto_of("shop.checkout");
    assert_eq!(
        (shop.params.as_str(), shop.answer.as_str()),
        ("shop.Order", "shop.Receipt")
    );
    assert!(shop.json && !proto_of("till.checkout").json);

    // A Protobuf caller: Protobuf both ways, with or without descriptors.
    let order = Order {
        item: "tea".into(),
        quantity: 3,
    };
    for action in ["shop.checkout", "till.checkout"] {
        let receipt: Proto<Receipt> = a.call(action, Proto(order.clone())).await.unwrap();
        assert_eq!(receipt.0.total_cents, 750, "{action}");
        assert_eq!(
            seen_b.last(&format!("params {action}")),
            Some(ContentType::Protobuf)
        );
        assert_eq!(
            seen_a.last(&format!("answer {action}")),
            Some(ContentType::Protobuf)
        );
    }

    // A JSON caller (MessagePack or JSON on the wire): the proto3 JSON mapping both ways.
    for options in [
        CallOptions::new(),
        CallOptions::new().format(ContentType::Json),
    ] {
        let receipt: Value = a
            .call_with(
                "shop.checkout",
                json!({"item": "tea", "quantity": 4}),
                options,
            )
            .await
            .unwrap();
        assert_eq!(receipt, json!({"item": "tea", "totalCents": "1000"}));
    }
    let err = a
        .call::<Value>("shop.checkout", json!({"item": "tea", "quantity": "many"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.message().contains("shop.Order"), "{err}");

    // Without descriptors a JSON caller is told what to do instead.
    let err = a
        .call::<Value>("till.checkout", json!({"item": "tea", "quantity": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "UNSUPPORTED_FORMAT", "{err}");
    assert!(err.message().contains("till.checkout") && err.message().contains("shop.Order"));

    // In process the message is handed over; a JSON caller in process is served too.
    let receipt: Proto<Receipt> = b.call("shop.checkout", Proto(order)).await.unwrap();
    assert_eq!(receipt.0.item, "tea");
    let receipt: Value = b
        .call("shop.checkout", json!({"item": "cake", "quantity": 2}))
        .await
        .unwrap();
    assert_eq!(receipt["totalCents"], "500");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_keep_the_format_their_data_chose() {
    let (cluster, _seen_a, seen_b) = pair().await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let (orders, notes) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (o, n) = (orders.clone(), notes.clone());
    b.service("audit")
        .event("order.placed", move |_ctx, order: Proto<Order>| {
            o.lock().unwrap().push(order.0);
            async { Ok(()) }
        })
        .event("note.added", move |_ctx, note: Value| {
            n.lock().unwrap().push(note);
            async { Ok(()) }
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["audit"], WAIT).await.unwrap();
    let order = Order {
        item: "jam".into(),
        quantity: 1,
    };
    a.emit("order.placed", &Proto(order.clone())).await.unwrap();
    a.emit("note.added", &Json(json!({"text": "hi"})))
        .await
        .unwrap();
    let arrived = tokio::time::timeout(WAIT, async {
        while orders.lock().unwrap().is_empty() || notes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(arrived.is_ok(), "both events arrived");
    assert_eq!(orders.lock().unwrap()[0], order);
    assert_eq!(notes.lock().unwrap()[0], json!({"text": "hi"}));
    assert_eq!(
        seen_b.last("event order.placed"),
        Some(ContentType::Protobuf)
    );
    assert_eq!(seen_b.last("event note.added"), Some(ContentType::Json));
    cluster.stop().await;
}

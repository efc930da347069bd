//! The HTTP API gateway, driven by a real HTTP client, in front of services that run on other
//! nodes over QUIC.

mod common;

use common::cluster::Cluster;
use phalanx::gateway::{
    Authenticator, Cors, EventRoute, Gateway, RateLimit, Route, RunningGateway, forbidden,
    unauthorized,
};
use phalanx::{Broker, Context, Error};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Three QUIC nodes: `gw` runs the gateway, `users` and `shop` the services.
async fn cluster() -> Cluster {
    let cluster = Cluster::quic(&["gw", "users", "shop"], "gateway").await;
    cluster
        .node("users")
        .service("users")
        .action("get", |ctx: Context, p: Value| async move {
            Ok(json!({
                "id": p["id"],
                "tenant": ctx.meta().get("x-tenant"),
                "request_id": ctx.headers().get("x-request-id"),
                "user": ctx.meta().get("user"),
            }))
        })
        .action("secret", |_ctx, _: Value| async move { Ok("hidden") })
        .action("pay", |_ctx, _: Value| async move {
            Err::<(), _>(Error::handler(402, "PAYMENT_REQUIRED", "card declined"))
        })
        .action("typed", |_ctx, p: Typed| async move { Ok(p.n * 2) })
        .action("slow", |_ctx, _: Value| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok("done")
        })
        .params_schema(
            "typed",
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        )
        .publish_http()
        .start()
        .await
        .unwrap();
    let shop = cluster.node("shop");
    let mut products = shop.service("products");
    for verb in ["list", "get", "create", "update", "remove"] {
        products = products.action(verb, move |_ctx, p: Value| async move {
            Ok(json!({ "verb": verb, "params": p }))
        });
    }
    products.start().await.unwrap();
    shop.service("auth")
        .action("resolve", |_ctx, request: Value| async move {
            match request["headers"]["authorization"].as_str() {
                None => Ok(Value::Null),
                Some("Bearer ada") => Ok(json!({"name": "ada", "role": "admin"})),
                Some("Bearer bob") => Ok(json!({"name": "bob", "role": "user"})),
                Some(_) => Err(unauthorized("unknown token")),
            }
        })
        .start()
        .await
        .unwrap();
    cluster
        .node("gw")
        .wait_for_services(&["users", "products", "auth"], Duration::from_secs(10))
        .await
        .unwrap();
    cluster
}

#[derive(serde::Deserialize)]
struct Typed {
    n: i64,
}

fn url(gateway: &RunningGateway, path: &str) -> String {
    format!("http://{}{path}", gateway.local_addr())
}

async fn serve(builder: phalanx::gateway::GatewayBuilder) -> RunningGateway {
    builder
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .expect("gateway serves")
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_params_meta_and_request_ids_reach_actions_on_other_nodes() {
    let cluster = cluster().await;
    let gw = cluster.node("gw");
    let gateway = serve(
        Gateway::builder(gw).route(
            Route::new("/api")
                .auto_aliases()
                .alias("GET /users/{id}", "users.get")
                .rest("products", "products")
                .blacklist(["users.secret"])
                .meta_from_headers(["x-tenant"]),
        ),
    )
    .await;
    let http = reqwest::Client::new();

    // Generated alias, query params converted, meta from a header, request id both ways.
    let response = http
        .get(url(&gateway, "/api/users/get?id=5"))
        .header("x-tenant", "acme")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"id": 5, "tenant": "acme", "request_id": "req-42", "user": null})
    );

    // Explicit alias: the path parameter wins over the query.
    let (status, body) = json_of(
        http.get(url(&gateway, "/api/users/7?id=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["id"]), (StatusCode::OK, &json!(7)));
    // A fresh request id is made when the client sends none.
    let response = http
        .get(url(&gateway, "/api/users/8"))
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(json_of(response).await.1["request_id"], json!(made));

    // REST shorthand on an unpublished service; the body merges under the path.
    let (status, body) = json_of(
        http.put(url(&gateway, "/api/products/3"))
            .json(&json!({"name": "tea", "id": 99}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"verb": "update", "params": {"name": "tea", "id": 3}})
    );
    for (method, path, verb) in [
        (reqwest::Method::GET, "/api/products", "list"),
        (reqwest::Method::GET, "/api/products/3", "get"),
        (reqwest::Method::POST, "/api/products", "create"),
        (reqwest::Method::DELETE, "/api/products/3", "remove"),
    ] {
        let (status, body) = json_of(
            http.request(method, url(&gateway, path))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, &body["verb"]), (StatusCode::OK, &json!(verb)));
    }
    // A form body is read like a query.
    let (_, body) = json_of(
        http.post(url(&gateway, "/api/products"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=tea&qty=2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["params"], json!({"name": "tea", "qty": 2}));

    // What is not routed: blacklisted, unpublished, unknown, wrong method.
    for path in [
        "/api/users/secret",
        "/api/auth/resolve",
        "/api/nope/x",
        "/elsewhere",
    ] {
        let (status, body) = json_of(http.get(url(&gateway, path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["code"], 404, "{path}");
    }
    let response = http
        .post(url(&gateway, "/api/users/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    gateway.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_as_statuses_with_their_json_body() {
    let cluster = cluster().await;
    let gateway = serve(
        Gateway::builder(cluster.node("gw"))
            .route(
                Route::new("/api")
                    .auto_aliases()
                    .alias("GET /gone", "ghost.walk")
                    .timeout(Duration::from_millis(150)),
            )
            .body_limit(1024)
            .stream_limit(4096),
    )
    .await;
    let http = reqwest::Client::new();
    let (status, body) = json_of(
        http.get(url(&gateway, "/api/users/pay"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        body,
        json!({"name": "HandlerError", "message": "card declined", "code": 402,
               "type": "PAYMENT_REQUIRED", "data": null})
    );
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        // The schema says integer; "x" stays text and the handler's type refuses it.
        (
            http.get(url(&gateway, "/api/users/typed?n=x")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationError",
        ),
        (
            http.get(url(&gateway, "/api/users/slow")),
            StatusCode::GATEWAY_TIMEOUT,
            "RequestTimeoutError",
        ),
        (
            http.get(url(&gateway, "/api/gone")),
            StatusCode::SERVICE_UNAVAILABLE,
            "RequestRejectedError",
        ),
        (
            http.post(url(&gateway, "/api/users/get"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
            "HandlerError",
        ),
        (
            http.post(url(&gateway, "/api/users/get"))
                .header("content-type", "image/png")
                .body(vec![0u8; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "HandlerError",
        ),
        (
            http.post(url(&gateway, "/api/users/get"))
                .json(&json!({"pad": "x".repeat(2000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "HandlerError",
        ),
    ];
    for (request, want, name) in cases {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(
            (status, body["name"].as_str()),
            (want, Some(name)),
            "{body}"
        );
        assert_eq!(body["code"], want.as_u16(), "{body}");
    }
    // The schema converted the query text, so the typed handler got an integer.
    let (status, body) = json_of(
        http.get(url(&gateway, "/api/users/typed?n=21"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!(42)));
    gateway.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_authorization_refuse_and_admit() {
    let cluster = cluster().await;
    let gw = cluster.node("gw");
    let admins_only = |request: &phalanx::gateway::Authorization<'_>| match request
        .user
        .and_then(|u| u["role"].as_str())
    {
        Some("admin") => Ok(()),
        _ => Err(forbidden("admins only")),
    };
    // Users found by an action on another node…
    let by_action = serve(
        Gateway::builder(gw)
            .authenticate(Authenticator::action("auth.resolve"))
            .route(Route::new("/open").alias("GET /me", "users.get"))
            .route(
                Route::new("/admin")
                    .authenticated()
                    .authorize(admins_only)
                    .alias("GET /me", "users.get"),
            ),
    )
    .await;
    // …or by a Rust function.
    let by_function = serve(
        Gateway::builder(gw)
            .authenticate(Authenticator::function(|request| {
                let key = request.headers.get("x-api-key").cloned();
                async move {
                    match key.as_ref().map(|k| k.as_bytes()) {
                        None => Ok(None),
                        Some(b"k1") => Ok(Some(json!({"name": "svc", "role": "admin"}))),
                        Some(_) => Err(unauthorized("bad key")),
                    }
                }
            }))
            .route(
                Route::new("/admin")
                    .authenticated()
                    .alias("GET /me", "users.get"),
            ),
    )
    .await;
    let http = reqwest::Client::new();
    let get = |gateway: &RunningGateway, path: &str, header: Option<(&str, &str)>| {
        let mut request = http.get(url(gateway, path));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };
    let bearer = |token| Some(("authorization", token));
    let cases = [
        (&by_action, "/open/me", None, StatusCode::OK),
        (
            &by_action,
            "/open/me",
            bearer("Bearer nope"),
            StatusCode::UNAUTHORIZED,
        ),
        (&by_action, "/admin/me", None, StatusCode::UNAUTHORIZED),
        (
            &by_action,
            "/admin/me",
            bearer("Bearer bob"),
            StatusCode::FORBIDDEN,
        ),
        (
            &by_action,
            "/admin/me",
            bearer("Bearer ada"),
            StatusCode::OK,
        ),
        (&by_function, "/admin/me", None, StatusCode::UNAUTHORIZED),
        (
            &by_function,
            "/admin/me",
            Some(("x-api-key", "k2")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            &by_function,
            "/admin/me",
            Some(("x-api-key", "k1")),
            StatusCode::OK,
        ),
    ];
    for (gateway, path, header, want) in cases {
        let response = get(gateway, path, header).await.unwrap();
        assert_eq!(response.status(), want, "{path} with {header:?}");
    }
    // The user travels to the action in meta.
    let (_, body) = json_of(
        get(&by_action, "/admin/me", bearer("Bearer ada"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["user"], json!({"name": "ada", "role": "admin"}));
    let metrics = http
        .get(url(&by_action, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("phalanx_gateway_refusals_total{node=\"gw\",reason=\"authentication\"} 3"),
        "{metrics}"
    );
    by_action.shutdown().await;
    by_function.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_rate_limit_and_compression() {
    let cluster = cluster().await;
    let gateway = serve(
        Gateway::builder(cluster.node("gw"))
            .route(Route::new("/api").auto_aliases())
            .cors(Cors::origins(["https://shop.example"]))
            .rate_limit(RateLimit::per_second(1).burst(3)),
    )
    .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, url(&gateway, "/api/users/get"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // Preflights are answered before the limit; three calls spend the burst.
    for _ in 0..3 {
        let ok = http
            .get(url(&gateway, "/api/users/get"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    let limited = http
        .get(url(&gateway, "/api/users/get"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(json_of(limited).await.1["type"], "RATE_LIMITED");

    let plain =
        serve(Gateway::builder(cluster.node("gw")).route(Route::new("/api").auto_aliases())).await;
    let big = http
        .post(url(&plain, "/api/users/get"))
        .header("accept-encoding", "gzip")
        .json(&json!({"id": "y".repeat(8000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.headers()["content-encoding"], "gzip");
    assert!(
        big.bytes().await.unwrap().len() < 1000,
        "8 KB of 'y' compresses"
    );
    gateway.shutdown().await;
    plain.shutdown().await;
    cluster.stop().await;
}

/// Reads server-sent events from `response` until `wanted` data lines arrived.
async fn read_events(response: reqwest::Response, wanted: usize) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < wanted {
            let Some(chunk) = stream.next().await else {
                break;
            };
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        events.push(serde_json::from_str(data).unwrap());
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "only {} events arrived: {events:?}",
        events.len()
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_matching_events_filtered_per_user() {
    let cluster = cluster().await;
    let gw = cluster.node("gw");
    let gateway = serve(
        Gateway::builder(gw)
            .authenticate(Authenticator::action("auth.resolve"))
            .events(
                EventRoute::new("/events", "orders.**")
                    .authenticated()
                    .filter(|user, _event, data| {
                        user.is_some_and(|u| u["name"] == data["customer"])
                    }),
            ),
    )
    .await;
    let http = reqwest::Client::new();
    let refused = http.get(url(&gateway, "/events")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let ada = http
        .get(url(&gateway, "/events"))
        .header("authorization", "Bearer ada")
        .send()
        .await
        .unwrap();
    assert_eq!(ada.status(), StatusCode::OK);
    assert_eq!(ada.headers()["content-type"], "text/event-stream");
    let ada_paid_only = http
        .get(url(&gateway, "/events?pattern=orders.paid"))
        .header("authorization", "Bearer ada")
        .send()
        .await
        .unwrap();
    // The gateway's subscription must be known to the emitting node before it emits.
    let shop = cluster.node("shop");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !shop.events().iter().any(|e| e.name == "orders.**") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    shop.emit("orders.created", &json!({"customer": "bob", "n": 1}))
        .await
        .unwrap();
    shop.emit("stock.low", &json!({"customer": "ada"}))
        .await
        .unwrap();
    shop.emit("orders.created", &json!({"customer": "ada", "n": 2}))
        .await
        .unwrap();
    shop.broadcast("orders.paid", &json!({"customer": "ada", "n": 3}))
        .await
        .unwrap();
    let mut seen = read_events(ada, 2).await;
    seen.sort_by_key(|e| e["data"]["n"].as_i64());
    assert_eq!(
        seen,
        vec![
            json!({"event": "orders.created", "data": {"customer": "ada", "n": 2}, "sender": "shop"}),
            json!({"event": "orders.paid", "data": {"customer": "ada", "n": 3}, "sender": "shop"}),
        ]
    );
    let narrowed = read_events(ada_paid_only, 1).await;
    assert_eq!(narrowed[0]["event"], "orders.paid");
    gateway.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_openapi_and_graceful_shutdown() {
    let cluster = cluster().await;
    let gw: &Broker = cluster.node("gw");
    let ready = serve(
        Gateway::builder(gw).route(
            Route::new("/api")
                .auto_aliases()
                .alias("GET /users/{id}", "users.get"),
        ),
    )
    .await;
    let waiting =
        serve(Gateway::builder(gw).route(Route::new("/").alias("GET /x", "ghost.walk"))).await;
    let http = reqwest::Client::new();
    let (status, body) = json_of(http.get(url(&ready, "/health")).send().await.unwrap()).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));
    assert_eq!(body["nodes_available"], 3);
    let (status, body) = json_of(http.get(url(&waiting, "/health")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["missing"], json!(["ghost.walk"]));

    let (_, doc) = json_of(http.get(url(&ready, "/openapi.json")).send().await.unwrap()).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let by_id = &doc["paths"]["/api/users/{id}"]["get"];
    assert_eq!(by_id["parameters"][0]["name"], "id");
    assert_eq!(by_id["parameters"][0]["in"], "path");
    // A generated alias, with the declared schema as its query parameters and body.
    let typed = &doc["paths"]["/api/users/typed"];
    assert_eq!(typed["get"]["parameters"][0]["schema"]["type"], "integer");
    assert_eq!(
        typed["post"]["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["n"])
    );
    assert!(
        doc["paths"].get("/api/products/list").is_none(),
        "not published"
    );

    // A request in progress finishes during shutdown; new connections are refused after.
    let slow = tokio::spawn(http.get(url(&ready, "/api/users/slow")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = ready.local_addr();
    ready.shutdown().await;
    let finished = slow.await.unwrap().unwrap();
    assert_eq!(finished.status(), StatusCode::OK);
    assert!(
        http.get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err()
    );
    waiting.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_to_actions_and_a_client_that_leaves_stops_the_producer() {
    use futures_util::StreamExt;
    use phalanx::ByteStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let cluster = cluster().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    cluster
        .node("shop")
        .service("blobs")
        .action("size", |ctx: Context, p: Value| async move {
            let mut body = ctx
                .take_stream()
                .ok_or_else(|| Error::validation("no body"))?;
            let mut len = 0;
            while let Some(chunk) = body.next().await {
                len += chunk?.len();
            }
            Ok(json!({ "len": len, "type": body.content_type(), "params": p }))
        })
        .action("endless", move |_ctx, _: Value| {
            struct Flag(Arc<AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let flag = Flag(flag.clone());
            let chunks = futures_util::stream::repeat_with(move || {
                let _alive = &flag;
                Ok(bytes::Bytes::from(vec![7u8; 16 * 1024]))
            });
            async move { Ok(ByteStream::new(chunks).with_content_type("application/x-endless")) }
        })
        .publish_http()
        .start()
        .await
        .unwrap();
    let gw = cluster.node("gw");
    gw.wait_for_services(&["blobs"], Duration::from_secs(10))
        .await
        .unwrap();
    let gateway = serve(Gateway::builder(gw).route(Route::new("/api").auto_aliases())).await;
    let http = reqwest::Client::new();

    // A raw body of any type other than JSON or a form is the action's stream.
    let (status, body) = json_of(
        http.post(url(&gateway, "/api/blobs/size?name=x.bin"))
            .header("content-type", "application/octet-stream")
            .body(vec![1u8; 2_500_000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["len"], 2_500_000);
    assert_eq!(body["params"], json!({"name": "x.bin"}));

    // A multipart form: its fields are params, its file the stream.
    let boundary = "XyZ";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"album\"\r\n\r\nholidays\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend(std::iter::repeat_n(9u8, 100_000));
    form.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let (status, body) = json_of(
        http.post(url(&gateway, "/api/blobs/size"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"len": 100_000, "type": "image/png", "params": {"album": "holidays"}})
    );

    // A download the client abandons after a few chunks: the producer on the shop node stops.
    let response = http
        .get(url(&gateway, "/api/blobs/endless"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-endless");
    let mut body = response.bytes_stream();
    let mut read = 0;
    while read < 1_000_000 {
        read += body.next().await.unwrap().unwrap().len();
    }
    assert!(!dropped.load(Ordering::SeqCst));
    drop(body);
    let stopped = common::becomes_true(&dropped, Duration::from_secs(5)).await;
    assert!(stopped, "the producer went on after the client left");
    gateway.shutdown().await;
    cluster.stop().await;
}

//! What the in-process benches of the HTTP front share: a real node behind its axum router, one buyer and a
//! concert that never sells out, and a driver that keeps [`IN_FLIGHT`] requests in flight.

use api::config::{Cli, Command};
use api::server::Node;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Requests in flight at once.
pub const IN_FLIGHT: u64 = 256;
/// Worker threads of the runtime: one per core of the reference machine.
pub const WORKER_THREADS: usize = 2;

/// The runtime of the `boxoffice` binary on the reference machine: [`WORKER_THREADS`] tokio workers with the
/// actix system on them.
pub fn system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn post(path: &str, token: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request")
}

/// A node on `data_dir` with `durability`, recovered, with one buyer and a concert that never sells out here.
pub async fn node(
    data_dir: &std::path::Path,
    durability: &str,
) -> (Node, axum::Router, String, Value) {
    let cli = Cli::parse_from([
        "boxoffice",
        "serve",
        "--data-dir",
        data_dir.to_str().expect("a UTF-8 path"),
        "--durability",
        durability,
        "--max-tickets-per-user",
        "1000000",
        // What the binary chooses on the reference machine's 2 cores: one arbiter per four cores, at least one.
        "--arbiters",
        "1",
    ]);
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed a serve command");
    };
    let node = Node::assemble(&args).expect("the node assembles");
    node.recover(&args).await.expect("the node recovers");
    let app = api::app(node.state.clone());
    let admin = std::fs::read_to_string(data_dir.join("admin-token"))
        .expect("a generated admin token")
        .trim()
        .to_owned();
    let (status, user) = call(
        &app,
        Request::post("/users")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"username": "bench", "password": "bench password 1",
                       "card": {"type": "visa", "holder_name": "Bench", "number": "4242424242424242",
                                "exp_month": 12, "exp_year": 2030, "cvv": "123"}})
                .to_string(),
            ))
            .expect("a request"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, concert) = call(
        &app,
        post(
            "/concerts",
            &admin,
            &json!({"name": "Bench", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 100,
                    "capacity": 10_000_000, "shards": 4}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{concert}");
    let token = user["token"].as_str().expect("a token").to_owned();
    let order = json!({"concert_id": concert["id"], "quantity": 1});
    (node, app, token, order)
}

/// Runs `count` requests made by `request`, [`IN_FLIGHT`] of them in flight until the last few; returns how long
/// they took.
pub async fn in_flight<F: Future<Output = ()>>(
    count: u64,
    mut request: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut sent = 0;
    loop {
        while sent < count && running.len() < IN_FLIGHT as usize {
            running.push(request());
            sent += 1;
        }
        if running.next().await.is_none() {
            return started.elapsed();
        }
    }
}

/// Places `count` orders, [`IN_FLIGHT`] in flight; returns how long they took.
pub async fn orders(app: &axum::Router, token: &str, order: &Value, count: u64) -> Duration {
    in_flight(count, || async {
        let (status, body) = call(app, post("/orders", token, order)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    })
    .await
}

//! End-to-end orders through the whole HTTP front, in process: `POST /orders` requests handed to the axum router
//! of a real node (`api::server::Node`: auth, JSON, the desk, the router, a shard actor, the payment pool with
//! the simulator at 0 ms, the card decrypted for the charge, tickets issued) without a socket, in orders per second
//! (criterion's `elem/s`; one element is one `201` order of one ticket).
//!
//! - `http/order/memory`: `--durability none`.
//! - `http/order/fsync`: the default durable mode: the reservation, the simulator's ledger and the confirmation
//!   are each group-committed with `fdatasync` before the reply.
//! - `http/bare`: a bare axum route answering `200 ok` through the same kind of call, the ceiling of this harness.
//!
//! [`IN_FLIGHT`] requests are kept in flight (as one is answered the next is sent, as a client's connections do;
//! not in rounds that wait for their slowest request), on a two-thread tokio runtime with the actix system on it, as in
//! the `boxoffice` binary. Socket and HTTP parsing costs are not in these figures (`scripts/bench-durability.sh`
//! and `boxoffice-load` measure over TCP).

use api::config::{Cli, Command};
use api::server::Node;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The allocator of the `boxoffice` binary, so that these figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests in flight at once.
const IN_FLIGHT: u64 = 256;
/// Worker threads of the runtime: one per core of the reference machine.
const WORKER_THREADS: usize = 2;

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
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

fn post(path: &str, token: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request")
}

/// A node on `data_dir` with `durability`, recovered, with one buyer and a concert that never sells out here.
async fn node(data_dir: &std::path::Path, durability: &str) -> (Node, axum::Router, String, Value) {
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
async fn in_flight<F: Future<Output = ()>>(count: u64, mut request: impl FnMut() -> F) -> Duration {
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
async fn orders(app: &axum::Router, token: &str, order: &Value, count: u64) -> Duration {
    in_flight(count, || async {
        let (status, body) = call(app, post("/orders", token, order)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    })
    .await
}

fn http(c: &mut Criterion) {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    for durability in ["none", "fsync"] {
        // Under cargo's target directory: on the disk a data dir would be on, not a tmpfs.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
        let (node, app, token, order) = system.block_on(node(dir.path(), durability));
        let name = if durability == "none" {
            "memory"
        } else {
            "fsync"
        };
        group.bench_function(format!("order/{name}"), |b| {
            b.iter_custom(|iters| system.block_on(orders(&app, &token, &order, iters)));
        });
        system.block_on(node.stop());
    }
    let bare = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            system.block_on(in_flight(iters, || async {
                let reply = bare
                    .clone()
                    .oneshot(Request::get("/").body(Body::empty()).expect("a request"))
                    .await;
                assert_eq!(reply.expect("infallible").status(), StatusCode::OK);
            }))
        });
    });
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);

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
//! [`common::IN_FLIGHT`] requests are kept in flight (as one is answered the next is sent, as a client's connections do;
//! not in rounds that wait for their slowest request), on a two-thread tokio runtime with the actix system on it, as in
//! the `boxoffice` binary. Socket and HTTP parsing costs are not in these figures (`scripts/bench-durability.sh`
//! and `boxoffice-load` measure over TCP).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{in_flight, node, orders};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower::ServiceExt;

/// The allocator of the `boxoffice` binary, so that these figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn http(c: &mut Criterion) {
    let system = common::system();
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

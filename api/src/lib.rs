//! The boxoffice HTTP front and the `boxoffice` binary's wiring.
//!
//! - [`app`] builds the axum router from an [`AppState`] (tests call it without a socket).
//! - [`server`] wires a node together: arbiters, router, payment pool, desk, user store; serves; drains on signal.
//! - [`routes`]: one module per resource, and [`routes::web`], the web page; [`dto`]: bodies and their
//!   validation; [`extract`]: JSON, query, path and bearer-token extractors; [`error`]: the error type and its
//!   single mapping to statuses.
//! - [`users`]: users, argon2id passwords, hashed bearer tokens, masked cards; [`openapi`]: the generated document.
//! - [`throttle`]: failed logins limited per username and per address; [`connections`]: the bounded listener
//!   and the client address of a request.
//! - [`cluster`]: in a cluster, which process answers a request, forwarding, the admin's gatherings, the internal
//!   routes, concerts on every node, and the front.

pub mod cluster;
pub mod config;
pub mod connections;
pub mod dto;
pub mod durability;
pub mod error;
pub mod extract;
pub mod keys;
pub mod offline;
pub mod openapi;
pub mod payment_http;
pub mod per_address;
pub mod private_files;
pub mod provider;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod users;
pub mod webhook;

use crate::error::ApiError;
use crate::routes::{concerts, events, holds, ops, orders, tickets, users as user_routes};
pub use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Request bodies larger than this are refused with 413 (API.md).
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// What bounds every request of the public port: how many are served at once, and for how long.
#[derive(Clone)]
pub struct Guards {
    pub requests_in_flight: Arc<Semaphore>,
    pub request_timeout: Duration,
}

impl Guards {
    pub fn new(requests_in_flight_max: usize, request_timeout: Duration) -> Self {
        Self {
            requests_in_flight: Arc::new(Semaphore::new(requests_in_flight_max)),
            request_timeout,
        }
    }
}

/// The public API of a node; in a cluster, requests another process answers are forwarded there first.
pub fn app(state: AppState) -> axum::Router {
    let mut app = routes(state.clone());
    if state.cluster.is_some() {
        app = app.layer(middleware::from_fn_with_state(
            state.clone(),
            crate::cluster::route,
        ));
    }
    app.layer(middleware::from_fn_with_state(state.guards(), guard))
}

/// What a shard node's internal port serves for requests other processes forward: the public API, never
/// forwarded again.
pub fn forwarded_app(state: AppState) -> axum::Router {
    routes(state.clone()).layer(middleware::from_fn_with_state(
        state.guards(),
        limit_duration,
    ))
}

/// The internal routes a shard node's internal port serves to the other processes of its cluster.
pub fn internal_app(state: AppState) -> axum::Router {
    crate::cluster::internal::routes()
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::cluster::internal::wait_for_recovery,
        ))
        .with_state(state)
}

fn routes(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/", get(routes::web::index))
        .route("/app.js", get(routes::web::script))
        .route("/app.css", get(routes::web::stylesheet))
        .route("/health", get(ops::health))
        .route("/health/ready", get(ops::ready))
        .route("/health/live", get(ops::live))
        .route("/admin/cluster", get(ops::cluster))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/users", post(user_routes::create).get(user_routes::list))
        .route("/users/verify", post(user_routes::verify))
        .route("/users/logout", post(user_routes::logout))
        .route(
            "/users/{id}",
            get(user_routes::get).put(user_routes::update),
        )
        .route("/users/{id}/tickets", get(user_routes::tickets))
        .route(
            "/users/{id}/tickets/{ticket_id}/qr",
            get(user_routes::ticket_qr),
        )
        .route("/concerts", post(concerts::create).get(concerts::list))
        .route("/concerts/{id}", get(concerts::get))
        .route("/concerts/{id}/seats", get(concerts::seats))
        .route("/concerts/{id}/events", get(events::stream))
        .route("/holds", post(holds::create))
        .route("/holds/{id}", delete(holds::cancel))
        .route("/holds/{id}/purchase", post(holds::purchase))
        .route("/orders", post(orders::create))
        .route("/orders/{id}", get(orders::get))
        .route("/payments/webhook", post(routes::payments::webhook))
        .route("/tickets/verify", post(tickets::verify))
        .route("/admin/users/bulk", post(user_routes::create_bulk))
        .route("/admin/snapshot", post(ops::snapshot))
        .route("/admin/backup", post(ops::backup))
        .route("/admin/rotate-master-key", post(ops::rotate_master_key))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            wait_for_recovery,
        ))
        .with_state(state)
}

/// What every public request runs under, in one layer (each `from_fn` layer costs a clone of the service
/// behind it per request):
///
/// - Load is shed at the edge: beyond `--requests-in-flight-max` concurrent requests, `503 overloaded` at once
///   rather than a queue without bound.
/// - No request runs longer than `--request-timeout-s`: past it the handler is dropped and the client gets
///   `503 processing_timeout`. An order does not live in the handler (the desk runs it in a task of its own), so
///   it still ends in tickets or a release, and a retry with its `Idempotency-Key` reads the outcome. The limit
///   covers reading the body and producing the response's head, not streaming a body (server-sent events).
/// - Answers are not stored by browsers or proxies unless their route says otherwise (the web page's files, the
///   event stream): tokens, profiles, cards, orders and tickets must not outlive the response in a cache.
///
/// Every request is counted by route template and status (`http_requests_total`, `http_request_duration_seconds`).
pub(crate) async fn guard(State(guards): State<Guards>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = match guards.requests_in_flight.try_acquire() {
        Ok(_permit) => no_store(timed(&guards, next.run(request)).await),
        Err(_) => {
            metrics::counter!("boxoffice_requests_shed_total").increment(1);
            no_store(ApiError::overloaded().into_response())
        }
    };
    let route = route.as_ref().map_or("unmatched", |route| route.as_str());
    telemetry::record_http(route, response.status().as_u16(), started.elapsed());
    response
}

/// `--request-timeout-s` alone: what the internal port applies to the requests other processes forward (they
/// were counted and shed where they arrived).
pub(crate) async fn limit_duration(
    State(guards): State<Guards>,
    request: Request,
    next: Next,
) -> Response {
    timed(&guards, next.run(request)).await
}

async fn timed(guards: &Guards, response: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(guards.request_timeout, response).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("boxoffice_requests_timed_out_total").increment(1);
            ApiError::processing_timeout(guards.request_timeout.as_secs()).into_response()
        }
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

/// Paths that answer while the node recovers: how operators and orchestrators watch it come up.
const OPERATIONAL_PATHS: [&str; 6] = [
    "/health",
    "/health/ready",
    "/health/live",
    "/metrics",
    "/openapi.json",
    "/admin/cluster",
];

/// Until recovery has finished, every route but the operational ones answers `503 recovering`: nothing may read
/// or change state that is still being rebuilt.
async fn wait_for_recovery(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.is_recovered() || OPERATIONAL_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    ApiError::recovering().into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support that method",
    )
}

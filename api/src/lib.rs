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
pub mod edge;
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
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, delete, get, post};
use edge::{Edge, Public, Recovery, RouteLabels};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::Layer;

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

    /// The edge of a public port whose routes have `templates`: shed, timed, `no-store` and counted.
    pub(crate) fn public_edge(
        self,
        templates: impl IntoIterator<Item = &'static str>,
        recovery: Option<Recovery>,
    ) -> Edge {
        let labels = RouteLabels::new(templates).unwrap_or_else(|error| {
            // The templates are this crate's own (`edge`'s tests build the public API's labels).
            unreachable!("{error}")
        });
        Edge {
            public: Some(Public {
                requests_in_flight: self.requests_in_flight,
                labels,
            }),
            request_timeout: Some(self.request_timeout),
            recovery,
        }
    }
}

/// Paths that answer while the node recovers: how operators and orchestrators watch it come up.
pub(crate) const OPERATIONAL_PATHS: [&str; 6] = [
    "/health",
    "/health/ready",
    "/health/live",
    "/metrics",
    "/openapi.json",
    "/admin/cluster",
];

/// The public API of a node (`crate::edge` says what every request runs under); in a cluster, requests another
/// process answers are forwarded there first.
pub fn app(state: AppState) -> axum::Router {
    let guards = state.guards();
    if state.cluster.is_some() {
        let routing = crate::cluster::Routing {
            inner: routes(state.clone()),
            state,
        };
        return guards
            .public_edge(api_templates(), None)
            .around(DefaultBodyLimit::max(BODY_BYTES_MAX).layer(routing));
    }
    let recovery = Recovery {
        state: state.clone(),
        open_paths: &OPERATIONAL_PATHS,
    };
    guards
        .public_edge(api_templates(), Some(recovery))
        .around(DefaultBodyLimit::max(BODY_BYTES_MAX).layer(routes(state)))
}

/// What a shard node's internal port serves for requests other processes forward: the public API, never
/// forwarded again, under `--request-timeout-s` alone (they were counted and shed where they arrived).
pub fn forwarded_app(state: AppState) -> axum::Router {
    let edge = Edge {
        public: None,
        request_timeout: Some(state.guards().request_timeout),
        recovery: Some(Recovery {
            state: state.clone(),
            open_paths: &OPERATIONAL_PATHS,
        }),
    };
    edge.around(DefaultBodyLimit::max(BODY_BYTES_MAX).layer(routes(state)))
}

/// The internal routes a shard node's internal port serves to the other processes of its cluster.
pub fn internal_app(state: AppState) -> axum::Router {
    let edge = Edge {
        public: None,
        request_timeout: None,
        recovery: Some(Recovery {
            state: state.clone(),
            open_paths: &[crate::cluster::internal::STATUS_PATH],
        }),
    };
    edge.around(crate::cluster::internal::routes().with_state(state))
}

/// Every route of the public API: its template, and what answers it.
fn api_routes() -> [(&'static str, MethodRouter<AppState>); 30] {
    [
        ("/", get(routes::web::index)),
        ("/app.js", get(routes::web::script)),
        ("/app.css", get(routes::web::stylesheet)),
        ("/health", get(ops::health)),
        ("/health/ready", get(ops::ready)),
        ("/health/live", get(ops::live)),
        ("/admin/cluster", get(ops::cluster)),
        ("/metrics", get(ops::metrics)),
        ("/openapi.json", get(ops::openapi)),
        ("/users", post(user_routes::create).get(user_routes::list)),
        ("/users/verify", post(user_routes::verify)),
        ("/users/logout", post(user_routes::logout)),
        (
            "/users/{id}",
            get(user_routes::get).put(user_routes::update),
        ),
        ("/users/{id}/tickets", get(user_routes::tickets)),
        (
            "/users/{id}/tickets/{ticket_id}/qr",
            get(user_routes::ticket_qr),
        ),
        ("/concerts", post(concerts::create).get(concerts::list)),
        ("/concerts/{id}", get(concerts::get)),
        ("/concerts/{id}/seats", get(concerts::seats)),
        ("/concerts/{id}/events", get(events::stream)),
        ("/holds", post(holds::create)),
        ("/holds/{id}", delete(holds::cancel)),
        ("/holds/{id}/purchase", post(holds::purchase)),
        ("/orders", post(orders::create)),
        ("/orders/{id}", get(orders::get)),
        ("/payments/webhook", post(routes::payments::webhook)),
        ("/tickets/verify", post(tickets::verify)),
        ("/admin/users/bulk", post(user_routes::create_bulk)),
        ("/admin/snapshot", post(ops::snapshot)),
        ("/admin/backup", post(ops::backup)),
        ("/admin/rotate-master-key", post(ops::rotate_master_key)),
    ]
}

/// The route templates of the public API: the `route` label of its requests' metrics, on a node and on a front
/// (which forwards them).
pub(crate) fn api_templates() -> impl Iterator<Item = &'static str> {
    api_routes().into_iter().map(|(template, _)| template)
}

fn routes(state: AppState) -> axum::Router {
    api_routes()
        .into_iter()
        .fold(axum::Router::new(), |router, (template, handler)| {
            router.route(template, handler)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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

//! A front: a process of a cluster that owns nothing. It serves the web page, its own health and metrics, the
//! OpenAPI document and `GET /admin/cluster`, and forwards every other request to the shard node that answers it
//! (`super::route`'s rules). It is ready (`/health` 200) while at least one shard node answers; it can be started,
//! stopped and scaled at any time, since nothing is lost with it.

use super::{ClusterState, INTERNAL_CALL_TIMEOUT};
use crate::Guards;
use crate::config::ServeArgs;
use crate::connections::ClientIp;
use crate::dto::HealthResponse;
use crate::error::{ApiError, ApiResult};
use crate::extract::bearer_token;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cluster::peers::InternalBody;
use cluster::peers::Scope;
use engine::ids::ConcertId;
use engine::remote::NodeId;
use futures_util::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// How often a front asks the shard nodes whether they answer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct FrontState {
    pub cluster: Arc<ClusterState>,
    pub metrics: PrometheusHandle,
    /// True while some shard node answers, and until the front drains.
    pub ready: Arc<AtomicBool>,
    admin_token_hash: [u8; 32],
}

impl FrontState {
    pub fn new(cluster: Arc<ClusterState>, metrics: PrometheusHandle, admin_token: &str) -> Self {
        Self {
            cluster,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
        }
    }

    fn is_admin_token(&self, token: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        hash.ct_eq(&self.admin_token_hash).into()
    }
}

/// The front's app: its own routes, and everything else forwarded.
pub fn app(state: FrontState, guards: Guards) -> axum::Router {
    let routes = axum::Router::new()
        .route("/", get(crate::routes::web::index))
        .route("/app.js", get(crate::routes::web::script))
        .route("/app.css", get(crate::routes::web::stylesheet))
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(crate::routes::ops::live))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::routes::ops::openapi))
        .route("/admin/cluster", get(cluster_view))
        .fallback(forward)
        .with_state(state);
    // Counted by the public API's templates: what the front forwards is labelled as the node labels it.
    guards
        .public_edge(crate::api_templates(), None)
        .around(routes)
}

async fn health(State(state): State<FrontState>) -> ApiResult<Json<HealthResponse>> {
    if state.ready.load(Ordering::Acquire) {
        Ok(Json(HealthResponse {
            status: "ok".into(),
        }))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_shard_node",
            "no shard node answers this front",
        ))
    }
}

async fn metrics(State(state): State<FrontState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn forward(
    State(state): State<FrontState>,
    ClientIp(client): ClientIp,
    request: Request,
) -> Response {
    let cluster = state.cluster.clone();
    match super::resolve(&cluster, request, |token| state.is_admin_token(token)).await {
        Ok((Some(node), request)) => cluster.forward(node, request, Scope::Cluster, client).await,
        Ok((None, _)) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource").into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn cluster_view(
    State(state): State<FrontState>,
    headers: HeaderMap,
) -> ApiResult<Json<ClusterView>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(ApiError::unauthorized)?;
    if !state.is_admin_token(token) {
        return Err(ApiError::forbidden());
    }
    Ok(Json(view(&state.cluster, None).await))
}

/// `GET /admin/cluster`: the nodes and their state, and every concert's placement.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub concerts: Vec<PlacementView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: NodeId,
    pub url: String,
    /// `up`, `recovering` or `unreachable`.
    pub state: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PlacementView {
    pub id: String,
    /// `shards[k]`: the node that owns shard `k`.
    pub shards: Vec<NodeId>,
}

/// The cluster as this process sees it now. `local` is a shard node's own state and concerts; a front reads the
/// concerts from the first node that answers.
pub async fn view(
    cluster: &ClusterState,
    local: Option<(&'static str, Vec<PlacementView>)>,
) -> ClusterView {
    let own = local.as_ref().map(|(state, _)| *state);
    let statuses = join_all((0..cluster.config.node_count()).map(|node| async move {
        if Some(node) == cluster.node() {
            return own.map(str::to_owned);
        }
        super::internal::node_status(cluster, node).await.ok()
    }))
    .await;
    let nodes: Vec<NodeView> = statuses
        .into_iter()
        .enumerate()
        .map(|(node, state)| NodeView {
            id: node as NodeId,
            url: cluster.peers.address(node as NodeId).url.clone(),
            state: state.unwrap_or_else(|| "unreachable".into()),
        })
        .collect();
    let concerts = match local {
        Some((_, concerts)) => concerts,
        None => {
            let mut concerts = Vec::new();
            for node in nodes.iter().filter(|node| node.state == "up") {
                if let Ok(found) = placements(cluster, node.id).await {
                    concerts = found;
                    break;
                }
            }
            concerts
        }
    };
    ClusterView { nodes, concerts }
}

async fn placements(cluster: &ClusterState, node: NodeId) -> Result<Vec<PlacementView>, ()> {
    let (status, body) = cluster
        .peers
        .internal(
            node,
            Method::GET,
            "/internal/v1/placements",
            InternalBody::Empty,
            INTERNAL_CALL_TIMEOUT,
        )
        .await
        .map_err(|_| ())?;
    if status != StatusCode::OK {
        return Err(());
    }
    let placements: Vec<(ConcertId, Vec<NodeId>)> = postcard::from_bytes(&body).map_err(|_| ())?;
    Ok(placements
        .into_iter()
        .map(|(id, shards)| PlacementView {
            id: id.0.to_string(),
            shards,
        })
        .collect())
}

/// Keeps `ready` true while some shard node answers its status.
async fn probe(state: FrontState) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    loop {
        interval.tick().await;
        let cluster = &state.cluster;
        let answers = join_all((0..cluster.config.node_count()).map(|node| {
            cluster.peers.internal(
                node,
                Method::GET,
                "/internal/v1/status",
                InternalBody::Empty,
                INTERNAL_CALL_TIMEOUT,
            )
        }))
        .await;
        let any = answers
            .iter()
            .any(|answer| matches!(answer, Ok((StatusCode::OK, _))));
        let was = state.ready.swap(any, Ordering::AcqRel);
        if was != any {
            tracing::info!(ready = any, "shard nodes reachable from this front: {any}");
        }
    }
}

/// Runs a front until SIGTERM or SIGINT.
pub async fn run(
    args: ServeArgs,
    cluster: Arc<ClusterState>,
    admin_token: String,
) -> Result<(), String> {
    let metrics = crate::server::metrics_handle()?;
    let state = FrontState::new(cluster, metrics, &admin_token);
    let limits = args.http_limits()?;
    let connections = args.connection_settings()?;
    let guards = Guards::new(limits.requests_in_flight_max, limits.request_timeout);
    let listener = crate::server::listen(args.listen)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    println!("boxoffice listening on http://{address}");
    tracing::info!(%address, nodes = state.cluster.config.node_count(), "front listening");
    let prober = tokio::spawn(probe(state.clone()));
    let ready = state.ready.clone();
    let result = crate::connections::serve(
        crate::connections::ConnectionLimit::new(listener, &connections),
        app(state, guards),
        connections.trusted_proxies.clone(),
        async move {
            crate::server::shutdown_signal().await;
            ready.store(false, Ordering::Release);
            tracing::info!("shutting down: draining in-flight requests");
        },
    )
    .await;
    prober.abort();
    result.map_err(|error| format!("server failed: {error}"))?;
    tracing::info!("stopped");
    Ok(())
}

//! Routes only the internal port serves: what other processes of the cluster ask a shard node about its users
//! and concerts. The internal port admits only holders of the cluster secret, so these need no bearer token.
//!
//! - `GET /internal/v1/status`: `{"node","state"}`, `up` or `recovering`.
//! - `GET /internal/v1/concerts`: the ids of every concert this node knows, oldest first (postcard).
//! - `GET /internal/v1/concerts/{id}`: one concert with its placement (postcard [`ConcertRecord`]).
//! - `GET /internal/v1/placements`: every concert's id and placement (postcard).
//! - `POST /internal/v1/concerts`: record a concert created elsewhere; idempotent (postcard [`ConcertRecord`]).
//! - `GET /internal/v1/users/exists?username=`: whether this node has the username (JSON `true`/`false`).
//! - `GET /internal/v1/users/count`: how many users this node has (JSON number).
//! - `POST /internal/v1/users/taken`: whether any of `{"usernames":[...]}` is taken here (JSON `true`/`false`).
//! - `POST /internal/v1/users/bulk`: create `{"usernames":[...],"card"?}` here, as `POST /admin/users/bulk` does.
//!
//! Until the node has recovered, everything but the status answers `503 recovering`.

use super::{ClusterState, INTERNAL_CALL_TIMEOUT};
use crate::dto::{BulkUsersResponse, CardRequest, RegisteredResponse};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::users::USERS_BULK_MAX;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cluster::peers::InternalBody;
use engine::EngineError;
use engine::concert::ConcertSpec;
use engine::ids::ConcertId;
use engine::remote::NodeId;
use serde::{Deserialize, Serialize};

/// A concert as nodes exchange it: its definition and where its shards live.
#[derive(Serialize, Deserialize)]
pub enum ConcertRecord {
    V1 {
        spec: ConcertSpec,
        placement: Vec<NodeId>,
    },
}

/// The one internal route that answers while the node recovers (`crate::internal_app`): every other waits, since
/// users and concerts are not all there before.
pub const STATUS_PATH: &str = "/internal/v1/status";

/// The internal routes, to merge into the app the internal port serves.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(STATUS_PATH, get(status))
        .route(
            "/internal/v1/concerts",
            get(concert_ids).post(record_concert),
        )
        .route("/internal/v1/concerts/{id}", get(concert))
        .route("/internal/v1/placements", get(placements))
        .route("/internal/v1/users/exists", get(user_exists))
        .route("/internal/v1/users/count", get(user_count))
        .route("/internal/v1/users/taken", post(users_taken))
        .route("/internal/v1/users/bulk", post(users_bulk))
}

#[derive(Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: Option<NodeId>,
    pub state: String,
}

async fn status(State(state): State<AppState>) -> Json<NodeStatus> {
    Json(NodeStatus {
        node: state.cluster.as_ref().and_then(|cluster| cluster.node()),
        state: if state.is_ready() { "up" } else { "recovering" }.to_owned(),
    })
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn concert_ids(State(state): State<AppState>) -> Response {
    let ids: Vec<ConcertId> = state
        .desk
        .router()
        .concerts()
        .iter()
        .map(|concert| concert.spec.id.clone())
        .collect();
    octets(postcard::to_allocvec(&ids).expect("ids encode"))
}

async fn placements(State(state): State<AppState>) -> Response {
    let placements: Vec<(ConcertId, Vec<NodeId>)> = state
        .desk
        .router()
        .concerts()
        .iter()
        .map(|concert| (concert.spec.id.clone(), concert.placement.clone()))
        .collect();
    octets(postcard::to_allocvec(&placements).expect("placements encode"))
}

async fn concert(State(state): State<AppState>, ApiPath(id): ApiPath) -> ApiResult<Response> {
    let concert = state
        .desk
        .router()
        .concert(&ConcertId::from(id))
        .ok_or_else(|| ApiError::not_found("concert"))?;
    let record = ConcertRecord::V1 {
        spec: (*concert.spec).clone(),
        placement: concert.placement.clone(),
    };
    Ok(octets(
        postcard::to_allocvec(&record).expect("concerts encode"),
    ))
}

async fn record_concert(State(state): State<AppState>, body: Bytes) -> ApiResult<StatusCode> {
    let ConcertRecord::V1 { spec, placement } = postcard::from_bytes(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a concert record",
        )
    })?;
    super::catalog::record(&state, spec, placement).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct UsernameQuery {
    username: String,
}

async fn user_exists(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UsernameQuery>,
) -> Json<bool> {
    Json(state.users.username_taken(&query.username))
}

async fn user_count(State(state): State<AppState>) -> Json<u64> {
    Json(state.users.count() as u64)
}

#[derive(Serialize, Deserialize)]
pub struct Usernames {
    pub usernames: Vec<String>,
}

async fn users_taken(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Usernames>,
) -> ApiResult<Json<bool>> {
    if body.usernames.len() > USERS_BULK_MAX {
        return Err(ApiError::invalid(format!(
            "at most {USERS_BULK_MAX} usernames"
        )));
    }
    Ok(Json(
        body.usernames
            .iter()
            .any(|username| state.users.username_taken(username)),
    ))
}

#[derive(Serialize, Deserialize)]
pub struct BulkPart {
    pub usernames: Vec<String>,
    pub card: Option<CardRequest>,
}

async fn users_bulk(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<BulkPart>,
) -> ApiResult<(StatusCode, Json<BulkUsersResponse>)> {
    if body.usernames.is_empty() || body.usernames.len() > USERS_BULK_MAX {
        return Err(ApiError::invalid(format!(
            "1 to {USERS_BULK_MAX} usernames"
        )));
    }
    for username in &body.usernames {
        crate::dto::check_username(username)?;
    }
    let card = body.card.map(CardRequest::validate).transpose()?;
    let card = crate::routes::users::vault(&state, card).await?;
    let created = state.users.register_bulk(body.usernames, card).await?;
    Ok((
        StatusCode::CREATED,
        Json(BulkUsersResponse {
            users: created
                .into_iter()
                .map(|(id, username, token)| RegisteredResponse {
                    id: id.0.to_string(),
                    username,
                    token,
                })
                .collect(),
        }),
    ))
}

/// `node`'s state (`up` or `recovering`), or `NodeUnavailable` when it does not answer.
pub async fn node_status(cluster: &ClusterState, node: NodeId) -> Result<String, EngineError> {
    let (status, body) = cluster
        .peers
        .internal(
            node,
            Method::GET,
            "/internal/v1/status",
            InternalBody::Empty,
            INTERNAL_CALL_TIMEOUT,
        )
        .await?;
    if status != StatusCode::OK {
        return Err(EngineError::NodeUnavailable { node });
    }
    serde_json::from_slice::<NodeStatus>(&body)
        .map(|status| status.state)
        .map_err(|_| EngineError::NodeUnavailable { node })
}

/// Asks `node` whether it has `username`.
pub async fn username_exists(
    cluster: &ClusterState,
    node: NodeId,
    username: &str,
) -> ApiResult<bool> {
    let query = format!(
        "/internal/v1/users/exists?username={}",
        percent_encode(username)
    );
    let (status, body) = cluster
        .peers
        .internal(
            node,
            Method::GET,
            &query,
            InternalBody::Empty,
            INTERNAL_CALL_TIMEOUT,
        )
        .await?;
    if status != StatusCode::OK {
        return Err(EngineError::NodeUnavailable { node }.into());
    }
    serde_json::from_slice(&body).map_err(|_| EngineError::NodeUnavailable { node }.into())
}

/// Usernames are letters, digits and `.`, `_`, `-`, `@`: only `@` needs escaping in a query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

//! Health, metrics and the OpenAPI document.

use crate::dto::{
    HealthResponse, RotateMasterKeyRequest, RotateMasterKeyResponse, SnapshotResponse,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use persistence::crypto::MasterKey;
use zeroize::Zeroizing;

/// 200 once the node accepts orders, 503 while it recovers or shuts down.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = crate::error::ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    if state.is_ready() {
        Ok(Json(HealthResponse {
            status: "ok".into(),
        }))
    } else {
        Err(ApiError::recovering())
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

/// Snapshot every shard now (admin) and truncate the journal behind the snapshots.
#[utoipa::path(post, path = "/admin/snapshot", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = SnapshotResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody)))]
pub async fn snapshot(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> ApiResult<Json<SnapshotResponse>> {
    let Some(storage) = state.durable.storage() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_durable",
            "this node runs with --durability none and keeps no snapshots",
        ));
    };
    let concerts = state.desk.router().concerts();
    let mut shards = 0;
    for concert in &concerts {
        concert.snapshot().await?;
        shards += concert.shard_count();
    }
    let journal = storage.journal_stats();
    Ok(Json(SnapshotResponse {
        concerts: concerts.len() as u64,
        shards: u64::from(shards),
        journal_segments: journal.segments as u64,
        journal_bytes: journal.bytes,
    }))
}

/// Re-wrap every user's data key under a new master key (admin), while sales go on.
#[utoipa::path(post, path = "/admin/rotate-master-key", tag = "operations", security(("bearer" = [])),
    request_body = RotateMasterKeyRequest,
    responses((status = 200, body = RotateMasterKeyResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn rotate_master_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<RotateMasterKeyRequest>,
) -> ApiResult<Json<RotateMasterKeyResponse>> {
    let supplied = body
        .new_master_key
        .map(|text| MasterKey::from_base64(&Zeroizing::new(text)))
        .transpose()
        .map_err(|_| ApiError::invalid("new_master_key must be base64 of 32 bytes"))?;
    let rotation = state.master_keys.rotate(&state.users, supplied).await?;
    Ok(Json(RotateMasterKeyResponse {
        master_key_id: rotation.master_key_id,
        users_rewrapped: rotation.users_rewrapped as u64,
    }))
}

//! Health, metrics and the OpenAPI document.

use crate::cluster::FanOut;
use crate::dto::{
    BackupRequest, BackupResponse, HealthResponse, RotateMasterKeyRequest, RotateMasterKeyResponse,
    SnapshotResponse,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
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

/// The same as `/health`: 200 once the node has recovered (a front: once it reaches a shard node).
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = crate::error::ErrorBody)))]
pub async fn ready(state: State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    health(state).await
}

/// 200 whenever the process serves HTTP, recovering included: what a liveness probe asks, so that it never kills
/// a node that is still replaying its journal.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, body = HealthResponse)))]
pub async fn live() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

/// The cluster (admin): every shard node with its state (`up`, `recovering` or `unreachable`), and every
/// concert's placement (`shards[k]` is the node that owns shard `k`). `404 not_a_cluster` on a single node.
#[utoipa::path(get, path = "/admin/cluster", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = crate::cluster::front::ClusterView), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn cluster(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> ApiResult<Json<crate::cluster::front::ClusterView>> {
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_cluster",
            "this node runs alone",
        ));
    };
    let placements = state
        .desk
        .router()
        .concerts()
        .iter()
        .map(|concert| crate::cluster::front::PlacementView {
            id: concert.spec.id.0.to_string(),
            shards: concert.placement.clone(),
        })
        .collect();
    let own = if state.is_ready() { "up" } else { "recovering" };
    Ok(Json(
        crate::cluster::front::view(cluster, Some((own, placements))).await,
    ))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::telemetry::set_unresolved_payments(state.desk.unresolved_payments_by_age());
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
    FanOut(fan_out): FanOut,
    headers: HeaderMap,
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
        shards += concert.local_shards().len() as u32;
    }
    let journal = storage.journal_stats();
    let mut total = SnapshotResponse {
        concerts: concerts.len() as u64,
        shards: u64::from(shards),
        journal_segments: journal.segments as u64,
        journal_bytes: journal.bytes,
    };
    // In a cluster every node snapshots its own shards; concerts are counted once, shards and journals summed.
    if let Some(cluster) = fan_out {
        let others: Vec<SnapshotResponse> = crate::cluster::gather::every_node(
            &cluster,
            Method::POST,
            "/admin/snapshot",
            &headers,
            Bytes::new(),
            StatusCode::OK,
        )
        .await?;
        total.shards = concerts
            .iter()
            .map(|concert| u64::from(concert.shard_count()))
            .sum();
        for other in others {
            total.journal_segments += other.journal_segments;
            total.journal_bytes += other.journal_bytes;
        }
    }
    Ok(Json(total))
}

/// Re-wrap every user's data key under a new master key (admin), while sales go on.
#[utoipa::path(post, path = "/admin/rotate-master-key", tag = "operations", security(("bearer" = [])),
    request_body = RotateMasterKeyRequest,
    responses((status = 200, body = RotateMasterKeyResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn rotate_master_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    FanOut(fan_out): FanOut,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RotateMasterKeyRequest>,
) -> ApiResult<Json<RotateMasterKeyResponse>> {
    let forwarded = Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({ "new_master_key": body.new_master_key }))
            .expect("a key serializes"),
    );
    let supplied = body
        .new_master_key
        .map(|text| MasterKey::from_base64(&Zeroizing::new(text)))
        .transpose()
        .map_err(|_| ApiError::invalid("new_master_key must be base64 of 32 bytes"))?;
    let rotation = state.master_keys.rotate(&state.users, supplied).await?;
    let mut users_rewrapped = rotation.users_rewrapped as u64;
    // In a cluster every node re-wraps its own users, under the same key when one is supplied.
    if let Some(cluster) = fan_out {
        let others: Vec<RotateMasterKeyResponse> = crate::cluster::gather::every_node(
            &cluster,
            Method::POST,
            "/admin/rotate-master-key",
            &headers,
            Bytes::copy_from_slice(&forwarded),
            StatusCode::OK,
        )
        .await?;
        users_rewrapped += others
            .iter()
            .map(|other| other.users_rewrapped)
            .sum::<u64>();
    }
    Ok(Json(RotateMasterKeyResponse {
        master_key_id: rotation.master_key_id,
        users_rewrapped,
    }))
}

/// Write a consistent copy of this node's data dir (admin) while it goes on selling: every shard's snapshots, the
/// concerts, users and vault as sled holds them, the journal and the simulator's ledger as far as they are durable;
/// not the master key nor the admin token. Restoring is starting a node on a copy of it with the same master key.
/// In a cluster each shard node backs up its own data dir: ask each.
#[utoipa::path(post, path = "/admin/backup", tag = "operations", security(("bearer" = [])),
    request_body = BackupRequest,
    responses((status = 200, body = BackupResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "not_durable: --durability none"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_request: not an absolute path, or not empty"),
              (status = 500, body = crate::error::ErrorBody)))]
pub async fn backup(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<BackupRequest>,
) -> ApiResult<Json<BackupResponse>> {
    let Some(storage) = state.durable.storage().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_durable",
            "this node runs with --durability none and keeps nothing to back up",
        ));
    };
    let dir = std::path::PathBuf::from(&body.dir);
    if body.dir.len() > 4096 || !dir.is_absolute() || body.dir.contains('\0') {
        return Err(ApiError::invalid("dir must be an absolute path"));
    }
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut entries| entries.next().is_some())
    {
        return Err(ApiError::invalid(
            "dir must not exist yet, or be an empty directory",
        ));
    }
    let data_dir = storage.dir();
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let inside = dir
        .ancestors()
        .find_map(|ancestor| ancestor.canonicalize().ok())
        .is_some_and(|existing| existing.starts_with(&data_dir));
    if inside {
        return Err(ApiError::invalid(
            "dir must not be inside the node's data dir",
        ));
    }
    let started = std::time::Instant::now();
    let target = dir.clone();
    let bytes = tokio::task::spawn_blocking(move || storage.backup(&target))
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| {
            tracing::error!(%error, "backup failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                error.to_string(),
            )
        })?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(dir = %dir.display(), bytes, elapsed_ms, "backup written");
    Ok(Json(BackupResponse {
        dir: body.dir,
        bytes,
        elapsed_ms,
    }))
}

//! Every shard node knows every concert: the nodes that own its shards keep them, and every node may coordinate
//! its users' orders for it.
//!
//! A concert is created by the shard node the admin's request reaches: it checks that every node answers, places
//! the shards (`cluster::placement::concert_placement` over the node list of that moment), records the concert
//! with its placement durably, then sends it to every other node, which records it the same way, and answers
//! `201` once all have. The placement is never recomputed. A node that missed a concert (it was down, or the
//! creating node stopped half way) gets it from [`sync`], which every shard node runs: every
//! [`CATALOG_SYNC_INTERVAL`] it asks each other node for the ids it knows and fetches the concerts it lacks.

use super::internal::ConcertRecord;
use super::{ClusterState, INTERNAL_CALL_TIMEOUT};
use crate::durability::Durable;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::http::{Method, StatusCode};
use cluster::peers::InternalBody;
use engine::EngineError;
use engine::concert::ConcertSpec;
use engine::ids::ConcertId;
use engine::remote::NodeId;
use engine::router::ConcertHandle;
use futures_util::future::join_all;
use persistence::wire::MetaRecord;
use std::sync::Arc;
use std::time::Duration;

/// How often a shard node compares its concerts with every other node's.
pub const CATALOG_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Records a concert placed by whichever node created it, durably; a concert already known is left as it is.
pub async fn record(
    state: &AppState,
    spec: ConcertSpec,
    placement: Vec<NodeId>,
) -> ApiResult<Arc<ConcertHandle>> {
    let router = state.desk.router();
    if let Some(known) = router.concert(&spec.id) {
        return Ok(known);
    }
    let nodes = state
        .cluster
        .as_ref()
        .map_or(1, |cluster| cluster.config.node_count());
    if placement.len() != spec.shards as usize || placement.iter().any(|node| *node >= nodes) {
        return Err(ApiError::invalid("the placement does not fit this cluster"));
    }
    let concert = match router.add_placed_concert(spec.clone(), placement.clone()) {
        Ok(concert) => concert,
        // Recorded meanwhile by another request for the same concert.
        Err(_) if router.concert(&spec.id).is_some() => {
            return Ok(router.concert(&spec.id).expect("checked"));
        }
        Err(error) => return Err(error.into()),
    };
    Durable::wait(
        state
            .durable
            .append_meta(MetaRecord::PlacedConcert { spec, placement }),
    )
    .await?;
    tracing::info!(concert_id = %concert.spec.id, shards = ?concert.placement, "concert recorded");
    Ok(concert)
}

/// Creates a concert on every shard node; see the module comment.
pub async fn create(
    state: &AppState,
    cluster: &ClusterState,
    spec: ConcertSpec,
) -> ApiResult<Arc<ConcertHandle>> {
    let others = cluster.others();
    for (node, answer) in others.iter().zip(
        join_all(
            others
                .iter()
                .map(|node| super::internal::node_status(cluster, *node)),
        )
        .await,
    ) {
        if answer.is_err() {
            return Err(EngineError::NodeUnavailable { node: *node }.into());
        }
    }
    let placement =
        cluster::placement::concert_placement(&spec.id.0, spec.shards, cluster.config.node_count());
    let concert = record(state, spec.clone(), placement.clone()).await?;
    let body =
        postcard::to_allocvec(&ConcertRecord::V1 { spec, placement }).expect("concerts encode");
    let sent = join_all(others.iter().map(|node| {
        cluster.peers.internal(
            *node,
            Method::POST,
            "/internal/v1/concerts",
            InternalBody::Octets(body.clone()),
            INTERNAL_CALL_TIMEOUT,
        )
    }))
    .await;
    for (node, answer) in others.iter().zip(sent) {
        match answer {
            Ok((StatusCode::NO_CONTENT, _)) => {}
            Ok((status, _)) => {
                tracing::error!(node, %status, concert_id = %concert.spec.id, "a node refused a concert");
                return Err(EngineError::NodeUnavailable { node: *node }.into());
            }
            Err(error) => {
                tracing::warn!(node, %error, concert_id = %concert.spec.id, "a node missed a new concert; it gets it at its next catalog sync");
                return Err(EngineError::NodeUnavailable { node: *node }.into());
            }
        }
    }
    Ok(concert)
}

/// Fetches, from every other node, the concerts this node lacks; forever, every [`CATALOG_SYNC_INTERVAL`].
pub async fn sync(state: AppState, cluster: Arc<ClusterState>) {
    let mut interval = tokio::time::interval(CATALOG_SYNC_INTERVAL);
    loop {
        interval.tick().await;
        for node in cluster.others() {
            if let Err(error) = sync_from(&state, &cluster, node).await {
                tracing::debug!(node, %error, "catalog sync with a node failed");
            }
        }
    }
}

async fn sync_from(
    state: &AppState,
    cluster: &ClusterState,
    node: NodeId,
) -> Result<(), EngineError> {
    let (status, body) = cluster
        .peers
        .internal(
            node,
            Method::GET,
            "/internal/v1/concerts",
            InternalBody::Empty,
            INTERNAL_CALL_TIMEOUT,
        )
        .await?;
    if status != StatusCode::OK {
        return Err(EngineError::NodeUnavailable { node });
    }
    let ids: Vec<ConcertId> =
        postcard::from_bytes(&body).map_err(|_| EngineError::NodeUnavailable { node })?;
    let router = state.desk.router();
    for id in ids.into_iter().filter(|id| router.concert(id).is_none()) {
        let (status, body) = cluster
            .peers
            .internal(
                node,
                Method::GET,
                &format!("/internal/v1/concerts/{}", id.0),
                InternalBody::Empty,
                INTERNAL_CALL_TIMEOUT,
            )
            .await?;
        if status != StatusCode::OK {
            continue;
        }
        let ConcertRecord::V1 { spec, placement } =
            postcard::from_bytes(&body).map_err(|_| EngineError::NodeUnavailable { node })?;
        match record(state, spec, placement).await {
            Ok(concert) => {
                tracing::info!(concert_id = %concert.spec.id, from = node, "concert learned from another node")
            }
            Err(error) => {
                tracing::warn!(concert_id = %id, from = node, code = %error.code, "could not record a concert from another node")
            }
        }
    }
    Ok(())
}

//! Concerts: creation (admin), listing, availability and the seat map.

use crate::cluster::FanOut;
use crate::dto::{ConcertList, ConcertRequest, ConcertResponse, SeatList, normalize_rfc3339};
use crate::durability::Durable;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson, ApiPath};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use engine::concert::{ConcertSpec, Layout, Section};
use engine::ids::ConcertId;
use engine::router::ConcertHandle;
use futures_util::future::join_all;
use persistence::wire::MetaRecord;

/// Create a concert (admin): `capacity` for general admission, or `sections` for a seated one.
#[utoipa::path(post, path = "/concerts", tag = "concerts", security(("bearer" = [])), request_body = ConcertRequest,
    responses((status = 201, body = ConcertResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    _admin: AdminCaller,
    FanOut(fan_out): FanOut,
    ApiJson(body): ApiJson<ConcertRequest>,
) -> ApiResult<(StatusCode, Json<ConcertResponse>)> {
    body.check_text()?;
    let layout = match (body.capacity, body.sections) {
        (Some(capacity), None) => Layout::General { capacity },
        (None, Some(sections)) => Layout::Seated {
            sections: sections
                .into_iter()
                .map(|section| Section {
                    name: section.name,
                    rows: section.rows,
                    seats_per_row: section.seats_per_row,
                })
                .collect(),
        },
        _ => return Err(ApiError::invalid("give either capacity or sections")),
    };
    let starts_at = normalize_rfc3339(&body.starts_at)?;
    let spec = ConcertSpec::new(
        ConcertId::random(),
        body.name,
        starts_at,
        body.price_cents,
        layout,
        body.shards,
    )?;
    // In a cluster a concert gets a shard on every node unless told otherwise: each node's buyers buy from a
    // shard of their own node, and one hot concert uses the whole cluster.
    let spec = match (&fan_out, body.shards) {
        (Some(cluster), None) if spec.shards < cluster.config.node_count() => {
            let shards = cluster
                .config
                .node_count()
                .min(spec.capacity().min(u64::from(engine::concert::SHARDS_MAX)) as u32);
            ConcertSpec::new(
                spec.id,
                spec.name,
                spec.starts_at,
                spec.price_cents,
                spec.layout,
                Some(shards),
            )?
        }
        _ => spec,
    };
    let concert = match &fan_out {
        // In a cluster every node records it, with the shards spread over every node.
        Some(cluster) => crate::cluster::catalog::create(&state, cluster, spec).await?,
        None => {
            let concert = state.desk.router().add_concert(spec)?;
            // The 201 waits until the concert is durable: its id must still mean something after a restart.
            Durable::wait(
                state
                    .durable
                    .append_meta(MetaRecord::Concert((*concert.spec).clone())),
            )
            .await?;
            concert
        }
    };
    tracing::info!(concert_id = %concert.spec.id, capacity = concert.spec.capacity(), shards = concert.spec.shards, "concert created");
    Ok((StatusCode::CREATED, Json(describe(&concert).await?)))
}

pub async fn describe(concert: &ConcertHandle) -> ApiResult<ConcertResponse> {
    let availability = concert.availability().await?;
    let spec = &concert.spec;
    Ok(ConcertResponse {
        id: spec.id.0.to_string(),
        name: spec.name.clone(),
        starts_at: spec.starts_at.clone(),
        price_cents: spec.price_cents,
        kind: if spec.is_seated() {
            "seated"
        } else {
            "general"
        }
        .to_owned(),
        capacity: spec.capacity(),
        remaining: availability.remaining,
        held: availability.held,
        sold: availability.sold,
        shards: spec.shards,
    })
}

/// Every concert with its current availability.
#[utoipa::path(get, path = "/concerts", tag = "concerts", responses((status = 200, body = ConcertList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<ConcertList>> {
    let concerts = state.desk.router().concerts();
    let described = join_all(concerts.iter().map(|concert| describe(concert))).await;
    Ok(Json(ConcertList {
        concerts: described.into_iter().collect::<ApiResult<_>>()?,
    }))
}

/// One concert; `remaining + held + sold == capacity`.
#[utoipa::path(get, path = "/concerts/{id}", tag = "concerts", params(("id" = String, Path)),
    responses((status = 200, body = ConcertResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<ConcertResponse>> {
    let concert = state
        .desk
        .router()
        .concert(&ConcertId::from(id))
        .ok_or_else(|| ApiError::not_found("concert"))?;
    Ok(Json(describe(&concert).await?))
}

/// The status of every seat of a seated concert.
#[utoipa::path(get, path = "/concerts/{id}/seats", tag = "concerts", params(("id" = String, Path)),
    responses((status = 200, body = SeatList), (status = 404, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody, description = "a general-admission concert has no seats")))]
pub async fn seats(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<SeatList>> {
    let concert = state
        .desk
        .router()
        .concert(&ConcertId::from(id))
        .ok_or_else(|| ApiError::not_found("concert"))?;
    if !concert.spec.is_seated() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_seated",
            "a general-admission concert has no seat map",
        ));
    }
    let seats = super::events::seat_list(&concert.spec, &concert.seat_statuses().await?);
    Ok(Json(SeatList { seats }))
}

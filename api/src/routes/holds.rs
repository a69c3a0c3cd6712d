//! Holds: the seat-picking flow (hold, then purchase or cancel; an untouched hold expires by itself).

use crate::dto::{ClaimBody, HoldResponse, OrderResponse};
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, IdempotencyKey, UserCaller};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use engine::ids::HoldId;

/// Hold seats or a quantity for `--hold-ttl-s` seconds.
#[utoipa::path(post, path = "/holds", tag = "holds", security(("bearer" = [])), request_body = ClaimBody,
    responses((status = 201, body = HoldResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "seat_taken, sold_out, ticket_limit_reached or hold_limit_reached"),
              (status = 422, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody, description = "(in a cluster) node_unavailable, with Retry-After")))]
pub async fn create(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<(StatusCode, Json<HoldResponse>)> {
    let request = body.into_request()?;
    let hold = state.desk.place_hold(&user, request).await?;
    Ok((StatusCode::CREATED, Json(HoldResponse::from(&hold))))
}

/// Release a hold.
#[utoipa::path(delete, path = "/holds/{id}", tag = "holds", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "hold_not_active: being purchased")))]
pub async fn cancel(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    ApiPath(id): ApiPath,
) -> ApiResult<StatusCode> {
    state.desk.cancel_hold(&user, &HoldId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pay for a hold with the card on file and get the tickets.
#[utoipa::path(post, path = "/holds/{id}/purchase", tag = "holds", security(("bearer" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = OrderResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 402, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 410, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody, description = "payment_unavailable or (in a cluster) node_unavailable, with Retry-After")))]
pub async fn purchase(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath(id): ApiPath,
) -> ApiResult<(StatusCode, Json<OrderResponse>)> {
    let card = state.users.payment_card(&user)?;
    let order = state
        .desk
        .purchase_hold(&user, card, &HoldId(id), key)
        .await?;
    Ok((StatusCode::CREATED, Json(OrderResponse::from(&order))))
}

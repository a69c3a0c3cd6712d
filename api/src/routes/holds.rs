//! Holds: the seat-picking flow (hold, then purchase or cancel; an untouched hold expires by itself).

use crate::connections::ClientIp;
use crate::dto::{ClaimBody, HoldResponse, OrderResponse};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, IdempotencyKey, UserCaller};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use engine::ids::HoldId;
use engine::router::ClaimRequest;

/// Hold seats or a quantity for `--hold-ttl-s` seconds.
#[utoipa::path(post, path = "/holds", tag = "holds", security(("bearer" = [])), request_body = ClaimBody,
    responses((status = 201, body = HoldResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "seat_taken, sold_out, ticket_limit_reached or hold_limit_reached"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_body, unknown_seat, card_required or card_expired"),
              (status = 429, body = crate::error::ErrorBody, description = "too_many_held_tickets from this address, with Retry-After"),
              (status = 503, body = crate::error::ErrorBody, description = "(in a cluster) node_unavailable, with Retry-After")))]
pub async fn create(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    ClientIp(address): ClientIp,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<(StatusCode, Json<HoldResponse>)> {
    let request = body.into_request()?;
    // A hold takes seats from everyone else for minutes: only a buyer who can pay may take one, and one address
    // only so many at once.
    state.users.check_card_on_file(&user)?;
    let tickets = match &request.claim {
        ClaimRequest::Quantity(quantity) => *quantity,
        ClaimRequest::Seats(seats) => seats.len() as u32,
    };
    let pending = state
        .held_by_address
        .take(address, tickets)
        .map_err(|refused| ApiError::too_many_held_tickets(refused.limit, refused.retry_after_s))?;
    let hold = state.desk.place_hold(&user, request).await?;
    pending.placed(hold.id.clone(), hold.expires_at_ms);
    metrics::counter!("boxoffice_holds_total", "outcome" => "placed").increment(1);
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
    let hold = HoldId::from(id);
    state.desk.cancel_hold(&user, &hold).await?;
    state.held_by_address.ended(&hold);
    Ok(StatusCode::NO_CONTENT)
}

/// Pay for a hold with the card on file and get the tickets.
#[utoipa::path(post, path = "/holds/{id}/purchase", tag = "holds", security(("bearer" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = OrderResponse),
              (status = 202, body = OrderResponse, description = "the payment's outcome is not known yet: the order is pending, its seats reserved, and it is resolved in the background (GET /orders/{id}, or repeat with the same Idempotency-Key)"),
              (status = 401, body = crate::error::ErrorBody),
              (status = 402, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 410, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody, description = "payment_unavailable or (in a cluster) node_unavailable, with Retry-After")))]
pub async fn purchase(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath(id): ApiPath,
) -> ApiResult<(StatusCode, Json<OrderResponse>)> {
    let payment_method = state.users.payment_method(&user)?;
    let hold = HoldId::from(id);
    let order = state
        .desk
        .purchase_hold(&user, payment_method, &hold, key)
        .await?;
    state.held_by_address.ended(&hold);
    Ok((
        super::orders::order_created(&order),
        Json(OrderResponse::from(&order)),
    ))
}

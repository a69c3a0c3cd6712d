//! Direct orders: reserve, charge and confirm in one request.

use crate::cluster::FanOut;
use crate::dto::{ClaimBody, OrderResponse};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, Caller, IdempotencyKey, UserCaller};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::ids::OrderId;

/// Order tickets; answered once the tickets are issued (201), the order failed, or its payment's outcome is still
/// unknown after a few seconds (202, the order pending).
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])), request_body = ClaimBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = OrderResponse),
              (status = 202, body = OrderResponse, description = "the payment's outcome is not known yet: the order is pending, its seats reserved, and it is resolved in the background (GET /orders/{id}, or repeat with the same Idempotency-Key)"),
              (status = 401, body = crate::error::ErrorBody),
              (status = 402, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "sold_out, seat_taken or ticket_limit_reached"),
              (status = 422, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody, description = "overloaded, payment_unavailable or (in a cluster) node_unavailable, with Retry-After")))]
pub async fn create(
    State(state): State<AppState>,
    UserCaller(user): UserCaller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<(StatusCode, Json<OrderResponse>)> {
    let request = body.into_request()?;
    let payment_method = state.users.payment_method(&user)?;
    let order = state
        .desk
        .place_order(&user, payment_method, request, key)
        .await?;
    Ok((order_created(&order), Json(OrderResponse::from(&order))))
}

/// `201 Created` for an order with its tickets, `202 Accepted` for one still pending: its payment's outcome is
/// being resolved and its seats stay reserved meanwhile.
pub fn order_created(order: &engine::desk::Order) -> StatusCode {
    match order.status {
        engine::desk::OrderStatus::Pending => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    }
}

/// One order (its owner or the admin).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = OrderResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    FanOut(fan_out): FanOut,
    headers: HeaderMap,
    ApiPath(id): ApiPath,
) -> ApiResult<Response> {
    let local = state
        .desk
        .book_ready()
        .map(|()| state.desk.order(&OrderId::from(id.as_str())));
    match (local, &caller, fan_out) {
        (Ok(Some(order)), ..) => {
            if !caller.may_access(&order.user_id) {
                return Err(ApiError::forbidden());
            }
            Ok(Json(OrderResponse::from(&order)).into_response())
        }
        // The admin asks every node: an order lives on its buyer's node.
        (Ok(None), Caller::Admin, Some(cluster)) => {
            crate::cluster::gather::first_found(
                &cluster,
                Method::GET,
                &format!("/orders/{id}"),
                &headers,
                Bytes::new(),
                ApiError::not_found("order"),
            )
            .await
        }
        (Ok(None), ..) => Err(ApiError::not_found("order")),
        (Err(error), ..) => Err(error.into()),
    }
}

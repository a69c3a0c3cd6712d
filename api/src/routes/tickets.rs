//! The gate: checking a ticket in, once.

use crate::cluster::FanOut;
use crate::dto::{TicketResponse, TicketVerifyRequest};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use engine::EngineError;

/// Ticket tokens longer than this are certainly not tokens.
const TOKEN_LENGTH_MAX: usize = 128;

/// Check a ticket in (admin: the gate). A second scan is `409 already_checked_in`.
#[utoipa::path(post, path = "/tickets/verify", tag = "tickets", security(("bearer" = [])), request_body = TicketVerifyRequest,
    responses((status = 200, body = TicketResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    _admin: AdminCaller,
    FanOut(fan_out): FanOut,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TicketVerifyRequest>,
) -> ApiResult<Response> {
    if body.token.is_empty() || body.token.len() > TOKEN_LENGTH_MAX {
        return Err(ApiError::invalid(format!(
            "token must be 1 to {TOKEN_LENGTH_MAX} characters"
        )));
    }
    match (state.desk.check_in(&body.token).await, fan_out) {
        (Ok(ticket), _) => Ok(Json(TicketResponse::from(&ticket)).into_response()),
        // A ticket is known to its buyer's node: ask the others. Only that node can check it in.
        (
            Err(local @ (EngineError::UnknownTicket | EngineError::NodeUnavailable { .. })),
            Some(cluster),
        ) => {
            let body = serde_json::to_vec(&body).expect("a token serializes");
            // Nobody else has it: unknown, unless this node could not look in its own book yet.
            crate::cluster::gather::first_found(
                &cluster,
                Method::POST,
                "/tickets/verify",
                &headers,
                Bytes::from(body),
                local.into(),
            )
            .await
        }
        (Err(error), _) => Err(error.into()),
    }
}

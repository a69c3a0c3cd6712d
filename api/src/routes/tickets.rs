//! The gate: checking a ticket in, once.

use crate::dto::{TicketResponse, TicketVerifyRequest};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;

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
    ApiJson(body): ApiJson<TicketVerifyRequest>,
) -> ApiResult<Json<TicketResponse>> {
    if body.token.is_empty() || body.token.len() > TOKEN_LENGTH_MAX {
        return Err(ApiError::invalid(format!(
            "token must be 1 to {TOKEN_LENGTH_MAX} characters"
        )));
    }
    let ticket = state.desk.check_in(&body.token).await?;
    Ok(Json(TicketResponse::from(&ticket)))
}

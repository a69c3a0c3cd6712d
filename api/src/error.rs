//! The one application error type, and the single place where errors become HTTP statuses.
//!
//! Every error body is `{"error": {"code", "message"}}` (API.md). A 5xx body is generic; its detail goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client is asked to wait before retrying an overloaded or unavailable request.
pub const RETRY_AFTER_S: u32 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of the API's error codes; one another node of a cluster answered is passed on as it came.
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    /// `Retry-After` of a 429 or 503, when it is not [`RETRY_AFTER_S`].
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code such as `sold_out`.
    pub code: String,
    /// A human sentence.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// Too many failed logins for this username or from this address; see `crate::throttle`.
    pub fn too_many_attempts(retry_after_s: u64) -> Self {
        metrics::counter!("boxoffice_logins_throttled_total").increment(1);
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!("too many failed logins, retry in {retry_after_s} s"),
            )
        }
    }

    /// This client address registered `--signups-per-address-max` users in the current window.
    pub fn too_many_signups(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_signups",
                format!("too many sign-ups from this address, retry in {retry_after_s} s"),
            )
        }
    }

    /// The user changed its card [`crate::users::CARD_CHANGES_MAX`] times in the last day.
    pub fn too_many_card_changes(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_card_changes",
                format!("too many card changes for this user, retry in {retry_after_s} s"),
            )
        }
    }

    /// This client address holds `limit` tickets already (or would with this hold).
    pub fn too_many_held_tickets(limit: u32, retry_after_s: u64) -> Self {
        metrics::counter!("boxoffice_holds_total", "outcome" => "limited").increment(1);
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_held_tickets",
                format!(
                    "this address holds {limit} tickets at most at once; buy or cancel a hold, or retry in {retry_after_s} s"
                ),
            )
        }
    }

    /// The node did not finish the request within `--request-timeout-s` (unlike `408 request_timeout`, a client
    /// too slow to send its body). Work it started (an order being paid for) goes on; a retry with the same
    /// `Idempotency-Key` reads its outcome.
    pub fn processing_timeout(timeout_s: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processing_timeout",
            format!(
                "the request did not finish within {timeout_s} s; an order goes on, and a retry with the same Idempotency-Key reads its outcome"
            ),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not do that",
        )
    }

    pub fn not_found(what: &'static str) -> Self {
        let code = match what {
            "user" => "user_not_found",
            "order" => "order_not_found",
            "concert" => "concert_not_found",
            "hold" => "hold_not_found",
            "ticket" => "ticket_not_found",
            _ => "not_found",
        };
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight, retry shortly",
        )
    }

    /// The node is rebuilding its state after a start; `/health` says when it is done.
    pub fn recovering() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            "the node is recovering its state, retry shortly",
        )
    }

    /// A failure that is our fault: logged in full, answered generically.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match &error {
            EngineError::ConcertNotFound => (S::NOT_FOUND, "concert_not_found"),
            EngineError::HoldNotFound => (S::NOT_FOUND, "hold_not_found"),
            EngineError::OrderNotFound => (S::NOT_FOUND, "order_not_found"),
            EngineError::SoldOut => (S::CONFLICT, "sold_out"),
            EngineError::SeatTaken { .. } => (S::CONFLICT, "seat_taken"),
            EngineError::UnknownSeat => (S::UNPROCESSABLE_ENTITY, "unknown_seat"),
            EngineError::HoldExpired => (S::GONE, "hold_expired"),
            EngineError::HoldNotActive => (S::CONFLICT, "hold_not_active"),
            EngineError::UnknownTicket => (S::NOT_FOUND, "unknown_ticket"),
            EngineError::AlreadyCheckedIn { .. } => (S::CONFLICT, "already_checked_in"),
            EngineError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
            EngineError::PaymentDeclined { .. } => (S::PAYMENT_REQUIRED, "payment_declined"),
            EngineError::PaymentUnavailable | EngineError::PaymentCircuitOpen { .. } => {
                (S::SERVICE_UNAVAILABLE, "payment_unavailable")
            }
            EngineError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            EngineError::IdempotencyKeyReused => {
                (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            EngineError::CardRequired => (S::UNPROCESSABLE_ENTITY, "card_required"),
            EngineError::CardRefused { .. } => (S::UNPROCESSABLE_ENTITY, "card_refused"),
            EngineError::Unavailable => (S::SERVICE_UNAVAILABLE, "unavailable"),
            EngineError::NodeUnavailable { .. } => (S::SERVICE_UNAVAILABLE, "node_unavailable"),
            EngineError::Recovering => (S::SERVICE_UNAVAILABLE, "recovering"),
            EngineError::TicketLimitReached { .. } => (S::CONFLICT, "ticket_limit_reached"),
            EngineError::HoldLimitReached { .. } => (S::CONFLICT, "hold_limit_reached"),
        };
        let mut api_error = Self::new(status, code, message);
        if let EngineError::PaymentCircuitOpen { retry_after_s } = error {
            api_error.retry_after_s = Some(retry_after_s);
        }
        api_error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            let retry_after_s = self.retry_after_s.unwrap_or(u64::from(RETRY_AFTER_S));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

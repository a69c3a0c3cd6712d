//! `POST /payments/webhook`: the payment provider's events (see `crate::webhook`).

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::webhook::invalid_signature;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use engine::ids::OrderId;
use serde_json::{Value, json};

/// Longest event id accepted.
const EVENT_ID_LENGTH_MAX: usize = 255;

/// Take a payment event: verified against `Stripe-Signature`, remembered durably by its id (a repeat is
/// answered as a duplicate and not acted on), then the order it names is read back from the provider in the
/// background; answered once the event id is durable.
#[utoipa::path(post, path = "/payments/webhook", tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "t=UNIX,v1=HMAC-SHA256 of `UNIX.BODY` under BOXOFFICE_WEBHOOK_SECRET")),
    request_body(content = String, content_type = "application/json", description = "a Stripe event: id, type, data.object (a payment intent with metadata.order_id)"),
    responses((status = 200, description = "taken (`duplicate: true` when it was taken before)"),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_signature: missing, not matching, or older than 300 s"),
              (status = 404, body = crate::error::ErrorBody, description = "this node takes no webhooks (no BOXOFFICE_WEBHOOK_SECRET)"),
              (status = 413, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_request: a signed body that is not an event"),
              (status = 503, body = crate::error::ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Some(webhooks) = state.webhooks.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node takes no payment webhooks: set BOXOFFICE_WEBHOOK_SECRET",
        ));
    };
    let counted = |outcome: &'static str| {
        metrics::counter!("boxoffice_payment_webhooks_total", "outcome" => outcome).increment(1);
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| invalid_signature("no Stripe-Signature header"));
    if let Err(why) =
        signature.and_then(|signature| webhooks.verify(signature, &body).map_err(invalid_signature))
    {
        counted("refused");
        return Err(why);
    }
    let event: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("the body is not a JSON event"))?;
    let id = event["id"]
        .as_str()
        .filter(|id| id.starts_with("evt_") && id.len() <= EVENT_ID_LENGTH_MAX)
        .ok_or_else(|| ApiError::invalid("an event id (evt_...) is required"))?;
    if !webhooks.remember(id).await? {
        counted("duplicate");
        return Ok(Json(json!({"received": true, "duplicate": true})));
    }
    counted("accepted");
    let order = event["data"]["object"]["metadata"]["order_id"]
        .as_str()
        .filter(|order| order.starts_with("o_") && order.len() <= EVENT_ID_LENGTH_MAX);
    tracing::info!(
        event = id,
        kind = event["type"].as_str().unwrap_or(""),
        order,
        "payment webhook"
    );
    let intent = event["data"]["object"]["id"]
        .as_str()
        .filter(|intent| intent.starts_with("pi_") && intent.len() <= EVENT_ID_LENGTH_MAX)
        .map(str::to_owned);
    if let Some(order) = order {
        let holds_money = matches!(
            event["type"].as_str(),
            Some("payment_intent.amount_capturable_updated" | "payment_intent.succeeded")
        );
        state
            .desk
            .payment_event(OrderId::from(order), intent, holds_money);
    }
    Ok(Json(json!({"received": true, "duplicate": false})))
}

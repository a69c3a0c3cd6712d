//! Payment webhooks: how the provider tells the node that an intent changed (`POST /payments/webhook`), and the
//! signature both sides compute.
//!
//! - The signature is Stripe's: `Stripe-Signature: t=UNIX,v1=HEX` where `HEX` is HMAC-SHA256 of `UNIX.BODY`
//!   under the shared secret (`BOXOFFICE_WEBHOOK_SECRET`). The node compares in constant time, accepts any of
//!   several `v1` (a secret being rolled), and refuses a timestamp more than [`TOLERANCE_S`] away from its clock.
//! - Event ids are remembered durably (a node-wide record each, sled tree `webhook_events`), so an event
//!   delivered twice, before or after a restart, is acted on once; at most [`EVENTS_REMEMBERED_MAX`] for
//!   [`EVENT_RETENTION_MS`].
//! - The event itself only says which order to look at: the desk reads the payment back from the provider and
//!   applies forward transitions only (`Desk::payment_event`), so a late, reordered or replayed event cannot undo
//!   anything. The node answers as soon as the event id is durable; the work goes on behind.

use crate::durability::Durable;
use crate::error::ApiError;
use axum::http::StatusCode;
use hmac::{KeyInit, Mac};
use persistence::wire::MetaRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// The environment variable holding the secret webhooks are signed with, on the node and on the provider.
pub const SECRET_ENV: &str = "BOXOFFICE_WEBHOOK_SECRET";
/// Shortest secret accepted.
pub const SECRET_LENGTH_MIN: usize = 16;
/// How far a signature's timestamp may be from the node's clock, in seconds (Stripe's default).
pub const TOLERANCE_S: u64 = 300;
/// Event ids remembered at most, and for how long (Stripe retries a delivery for up to three days).
pub const EVENTS_REMEMBERED_MAX: usize = 100_000;
pub const EVENT_RETENTION_MS: u64 = 72 * 3600 * 1000;
/// Largest webhook body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `Stripe-Signature` header for `body` signed at `timestamp`.
pub fn signature_header(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(signature(secret, timestamp, body))
    )
}

/// Checks a `Stripe-Signature` header against `body` at `now_s`; `Err` says why it is refused.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: u64) -> Result<(), &'static str> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<u64>().ok(),
            Some(("v1", value)) => candidates.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("the signature has no timestamp")?;
    if timestamp.abs_diff(now_s) > TOLERANCE_S {
        return Err("the signature's timestamp is outside the tolerance");
    }
    let expected = signature(secret, timestamp, body);
    // Every candidate is compared, each in constant time.
    let matched = candidates.iter().fold(false, |matched, candidate| {
        matched | bool::from(candidate.as_slice().ct_eq(&expected))
    });
    if matched {
        Ok(())
    } else {
        Err("no signature matches")
    }
}

/// The node's side of webhooks: the secret and the event ids already acted on.
pub struct Webhooks {
    secret: Vec<u8>,
    durable: Durable,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    at_ms: HashMap<String, u64>,
    /// Oldest first.
    order: VecDeque<(u64, String)>,
}

impl Webhooks {
    /// From `BOXOFFICE_WEBHOOK_SECRET`; `None` when it is not set (the route then answers 404).
    pub fn from_env(durable: Durable) -> Result<Option<Self>, String> {
        let Ok(secret) = std::env::var(SECRET_ENV) else {
            return Ok(None);
        };
        if secret.len() < SECRET_LENGTH_MIN {
            return Err(format!(
                "{SECRET_ENV} must be at least {SECRET_LENGTH_MIN} characters"
            ));
        }
        Ok(Some(Self {
            secret: secret.into_bytes(),
            durable,
            seen: Mutex::default(),
        }))
    }

    pub fn verify(&self, header: &str, body: &[u8]) -> Result<(), &'static str> {
        verify(&self.secret, header, body, now_ms() / 1000)
    }

    /// Loads the event ids recovery read back; those past their retention are forgotten.
    pub fn restore(&self, events: Vec<(String, u64)>) {
        let now = now_ms();
        let mut seen = self.seen.lock().expect("webhook lock");
        let mut events: Vec<(u64, String)> =
            events.into_iter().map(|(id, at_ms)| (at_ms, id)).collect();
        events.sort();
        for (at_ms, id) in events {
            if now.saturating_sub(at_ms) > EVENT_RETENTION_MS {
                drop(
                    self.durable
                        .append_meta(MetaRecord::WebhookEvent { id, at_ms: None }),
                );
                continue;
            }
            seen.at_ms.insert(id.clone(), at_ms);
            seen.order.push_back((at_ms, id));
        }
    }

    /// Remembers the event `id` durably; `false` if it was already remembered (a duplicate delivery).
    pub async fn remember(&self, id: &str) -> Result<bool, ApiError> {
        let now = now_ms();
        let commit = {
            let mut seen = self.seen.lock().expect("webhook lock");
            if seen.at_ms.contains_key(id) {
                return Ok(false);
            }
            while seen.order.len() >= EVENTS_REMEMBERED_MAX
                || seen
                    .order
                    .front()
                    .is_some_and(|(at_ms, _)| now.saturating_sub(*at_ms) > EVENT_RETENTION_MS)
            {
                let Some((_, old)) = seen.order.pop_front() else {
                    break;
                };
                seen.at_ms.remove(&old);
                drop(self.durable.append_meta(MetaRecord::WebhookEvent {
                    id: old,
                    at_ms: None,
                }));
            }
            seen.at_ms.insert(id.to_owned(), now);
            seen.order.push_back((now, id.to_owned()));
            self.durable.append_meta(MetaRecord::WebhookEvent {
                id: id.to_owned(),
                at_ms: Some(now),
            })
        };
        if let Err(error) = Durable::wait(commit).await {
            // Not remembered after all: the provider's retry must be taken, not answered as a duplicate.
            let mut seen = self.seen.lock().expect("webhook lock");
            seen.at_ms.remove(id);
            seen.order.retain(|(_, kept)| kept != id);
            return Err(error);
        }
        Ok(true)
    }
}

/// `400 invalid_signature`.
pub fn invalid_signature(why: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", why)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_within_the_tolerance_and_nothing_else_does() {
        let secret = b"whsec_0123456789abcdef";
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header(secret, 1_000_000, body);
        assert_eq!(verify(secret, &header, body, 1_000_000), Ok(()));
        assert_eq!(
            verify(secret, &header, body, 1_000_000 + TOLERANCE_S),
            Ok(())
        );
        assert!(verify(secret, &header, body, 1_000_000 + TOLERANCE_S + 1).is_err());
        assert!(verify(secret, &header, b"{}", 1_000_000).is_err());
        assert!(verify(b"another secret!!", &header, body, 1_000_000).is_err());
        assert!(verify(secret, "v1=00", body, 1_000_000).is_err());
        // One of several signatures matching is enough (a secret being rolled).
        let rolled = format!("{header},v1={}", "ab".repeat(32));
        assert_eq!(verify(secret, &rolled, body, 1_000_000), Ok(()));
        // Stripe's documented example shape: `t` first, then `v1`.
        assert!(header.starts_with("t=1000000,v1="));
    }
}

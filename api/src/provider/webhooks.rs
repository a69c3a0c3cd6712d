//! Webhook delivery (`--webhook-url`): every event in the outbox is POSTed as Stripe sends one, signed with
//! `BOXOFFICE_WEBHOOK_SECRET` (`Stripe-Signature`), until the receiver answers 2xx; a failed attempt is tried
//! again further and further apart (0.5 s doubling to a minute), events older than three days are dropped. At
//! most [`DELIVERIES_IN_FLIGHT_MAX`] at once, in no particular order.
//!
//! With `--fault-rate`, each attempt may draw a fault from the seeded generator: dropped (not sent, tried again
//! later, so it arrives late), late (sent after 0.2 to 3 s, so events arrive out of order), or duplicated (sent
//! twice).

use super::{Provider, intent_json};
use crate::webhook::signature_header;
use rand::RngExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use store::{Event, Pending};

use super::store;

/// Deliveries in flight at most.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 32;
/// Events due at once picked at most per round.
const ROUND_MAX: usize = 256;
const ROUND_PAUSE: Duration = Duration::from_millis(50);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Events not delivered within this are dropped, as Stripe stops retrying after three days.
const EVENT_LIFETIME_MS: u64 = 72 * 3600 * 1000;
/// Deadline of one delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one delivery attempt meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Dropped,
    Late(Duration),
    Duplicated,
}

/// When an event is due again, and whether it is being delivered.
#[derive(Clone, Copy)]
struct Schedule {
    attempts: u32,
    due: Instant,
    sending: bool,
}

/// The event as the receiver reads it.
pub fn event_json(event: &Event) -> Value {
    json!({
        "id": event.id,
        "object": "event",
        "type": event.kind,
        "created": event.created_ms / 1000,
        "data": {"object": intent_json(&event.intent)},
    })
}

/// Delivers the outbox to `url` until the process stops.
pub(super) async fn deliver(provider: Arc<Provider>, url: String, secret: String) {
    let client = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .build()
        .expect("a webhook client");
    let schedule: Arc<Mutex<HashMap<String, Schedule>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(DELIVERIES_IN_FLIGHT_MAX));
    let secret: Arc<[u8]> = secret.into_bytes().into();
    loop {
        tokio::time::sleep(ROUND_PAUSE).await;
        let now = Instant::now();
        let now_ms = super::now_ms();
        let (due, expired): (Vec<Event>, Vec<String>) = {
            let guard = provider.lock();
            let mut schedule = schedule.lock().unwrap_or_else(PoisonError::into_inner);
            schedule.retain(|id, _| guard.1.outbox.contains_key(id));
            let mut due = Vec::new();
            let mut expired = Vec::new();
            for event in guard.1.outbox.values() {
                if now_ms.saturating_sub(event.created_ms) > EVENT_LIFETIME_MS {
                    expired.push(event.id.clone());
                    continue;
                }
                let entry = schedule.entry(event.id.clone()).or_insert(Schedule {
                    attempts: 0,
                    due: now,
                    sending: false,
                });
                if !entry.sending && entry.due <= now && due.len() < ROUND_MAX {
                    entry.sending = true;
                    due.push(event.clone());
                }
            }
            (due, expired)
        };
        for id in expired {
            tracing::warn!(event = %id, "webhook event undelivered for three days: dropped");
            mark_delivered(&provider, id).await;
        }
        for event in due {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (provider, client, url, secret, schedule) = (
                provider.clone(),
                client.clone(),
                url.clone(),
                secret.clone(),
                schedule.clone(),
            );
            tokio::spawn(async move {
                let id = event.id.clone();
                let delivered = attempt(&provider, &client, &url, &secret, &event).await;
                if delivered {
                    mark_delivered(&provider, id.clone()).await;
                }
                let mut schedule = schedule.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = schedule.get_mut(&id) {
                    entry.sending = false;
                    if !delivered {
                        entry.attempts += 1;
                        let wait = RETRY_FIRST
                            .saturating_mul(1 << entry.attempts.min(10))
                            .min(RETRY_MAX);
                        entry.due = Instant::now() + wait;
                    }
                }
                drop(slot);
            });
        }
    }
}

/// One delivery of `event`, with the fault it draws; whether the receiver took it.
async fn attempt(
    provider: &Provider,
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event: &Event,
) -> bool {
    let body = event_json(event).to_string();
    let send = || async {
        let signed_at = super::now_ms() / 1000;
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "stripe-signature",
                signature_header(secret, signed_at, body.as_bytes()),
            )
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::info!(event = %event.id, status = response.status().as_u16(), "webhook refused");
                false
            }
            Err(error) => {
                tracing::info!(event = %event.id, %error, "webhook not delivered");
                false
            }
        }
    };
    match draw(provider) {
        Fault::None => send().await,
        Fault::Dropped => false,
        Fault::Late(delay) => {
            tokio::time::sleep(delay).await;
            send().await
        }
        Fault::Duplicated => {
            let first = send().await;
            send().await || first
        }
    }
}

fn draw(provider: &Provider) -> Fault {
    let rate = provider.args.fault_rate;
    let mut rng = provider.rng.lock().unwrap_or_else(PoisonError::into_inner);
    if rate <= 0.0 || rng.random::<f64>() >= rate {
        return Fault::None;
    }
    match rng.random_range(0..3u8) {
        0 => Fault::Dropped,
        1 => Fault::Late(Duration::from_millis(rng.random_range(200..3_000))),
        _ => Fault::Duplicated,
    }
}

async fn mark_delivered(provider: &Provider, id: String) {
    let mut pending = Pending::new();
    {
        let mut guard = provider.lock();
        let (store, state) = &mut *guard;
        if !state.outbox.contains_key(&id) {
            return;
        }
        store.put_delivered(state, id, &mut pending);
    }
    if let Err(error) = pending.wait().await {
        tracing::error!(%error, "provider log write failed: stopping");
        std::process::exit(70);
    }
}

//! `--payment http://HOST:PORT`: the node's payment provider over the network, a thin client of the subset of
//! Stripe's PaymentIntents API that `boxoffice payment-provider` serves (form-encoded requests, JSON answers,
//! `Authorization: Bearer` with `BOXOFFICE_PAYMENT_API_KEY`, an `Idempotency-Key` on every `POST`).
//!
//! - A card a user stores goes to `POST /v1/payment_methods` (its cvv with it, this once); the node keeps the
//!   payment method id.
//! - An authorization is one `POST /v1/payment_intents` with `confirm=true`, `capture_method=manual`,
//!   `metadata[order_id]` and the order id as its idempotency key: a retry of the same order can never authorize
//!   twice, and the provider replays its first answer. Once the tickets are issued the node captures it
//!   (`POST /v1/payment_intents/{id}/capture`, key `capture-ORDER`).
//! - What became of an order's payment (`status`, how an unknown outcome is resolved) and voiding it read the
//!   order's intent back with `GET /v1/payment_intents/search?query=metadata['order_id']:'ID'`; a void cancels an
//!   authorized intent and refunds a captured one.
//! - A transport error, a timeout, a 429 or a 5xx is an error, not a decline: the order's outcome is unknown and
//!   the desk resolves it, its seats still reserved.
//!
//! The pool's `--payment-concurrency` bounds the calls in flight, and so the connections kept to the provider.

use engine::payment::{
    CaptureOutcome, CardCheck, ChargeOutcome, ChargeRequest, ChargeStatus, PaymentCard,
    PaymentError, PaymentProvider, VaultedCard,
};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable with the key the provider expects.
pub const API_KEY_ENV: &str = "BOXOFFICE_PAYMENT_API_KEY";
/// The currency every amount is charged in (a concert's price is in its smallest unit).
pub const CURRENCY: &str = "eur";
/// Largest answer body read from the provider.
const ANSWER_BYTES_MAX: usize = 1 << 20;

pub struct HttpProvider {
    base: Arc<str>,
    api_key: Arc<str>,
    client: reqwest::Client,
    /// The body of each charge sent and not answered for sure (an error, a timeout), by order id, so that voiding
    /// it can first send the same request again under its key: the provider then answers what became of it (or
    /// 409 while it is still being handled) instead of a search that cannot see an intent still being created.
    unsettled: Arc<std::sync::Mutex<Unsettled>>,
}

/// A form-encoded request's fields.
type Form = Vec<(&'static str, String)>;

/// Charges whose outcome the node did not learn, oldest first; at most [`UNSETTLED_MAX`].
#[derive(Default)]
struct Unsettled {
    /// Each body with the number it was remembered under.
    bodies: std::collections::HashMap<String, (u64, Form)>,
    /// Keys by that number, oldest first; an entry whose number is not its body's is stale.
    order: std::collections::VecDeque<(u64, String)>,
    next: u64,
}

/// Charges without a known outcome remembered at most; beyond, the oldest is forgotten (its void then relies on
/// the search alone).
const UNSETTLED_MAX: usize = 100_000;

impl Unsettled {
    fn remember(&mut self, key: &str, fields: Vec<(&'static str, String)>) {
        self.next += 1;
        self.bodies.insert(key.to_owned(), (self.next, fields));
        self.order.push_back((self.next, key.to_owned()));
        while self.bodies.len() > UNSETTLED_MAX {
            let Some((number, oldest)) = self.order.pop_front() else {
                break;
            };
            if self
                .bodies
                .get(&oldest)
                .is_some_and(|(kept, _)| *kept == number)
            {
                self.bodies.remove(&oldest);
            }
        }
        if self.order.len() > 2 * self.bodies.len() + 64 {
            // Mostly stale entries (forgotten or remembered again since): rebuilt from the bodies.
            let mut live: Vec<(u64, String)> = self
                .bodies
                .iter()
                .map(|(key, (number, _))| (*number, key.clone()))
                .collect();
            live.sort_unstable();
            self.order = live.into();
        }
    }

    fn body(&self, key: &str) -> Option<Vec<(&'static str, String)>> {
        self.bodies.get(key).map(|(_, fields)| fields.clone())
    }

    /// The outcome of `key` is known: its body is no longer needed.
    fn forget(&mut self, key: &str) {
        self.bodies.remove(key);
    }
}

impl HttpProvider {
    /// A client of the provider at `base` (`http://HOST:PORT`), each call within `timeout`, at most
    /// `connections` idle connections kept.
    pub fn new(base: &str, timeout: Duration, connections: usize) -> Result<Self, String> {
        let api_key = std::env::var(API_KEY_ENV)
            .map_err(|_| format!("--payment {base} needs {API_KEY_ENV}"))?;
        if api_key.is_empty() || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{API_KEY_ENV} must be visible ASCII"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .build()
            .map_err(|error| format!("payment client: {error}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').into(),
            api_key: api_key.into(),
            client,
            unsettled: Arc::default(),
        })
    }

    /// One call to the provider, timed by `call` (`boxoffice_payment_provider_latency_seconds{call,outcome}`).
    fn call(
        &self,
        call: &'static str,
        method: reqwest::Method,
        path: &str,
        form: Option<(Vec<(&'static str, String)>, String)>,
    ) -> BoxFuture<'static, Result<(u16, Value), PaymentError>> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key);
        if let Some((fields, key)) = form {
            let body = fields
                .iter()
                .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
                .collect::<Vec<_>>()
                .join("&");
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .header("idempotency-key", key)
                .body(body);
        }
        Box::pin(async move {
            let started = std::time::Instant::now();
            let answer = async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let replayed = response.headers().contains_key("idempotent-replayed");
                Ok::<_, reqwest::Error>((status, replayed, response.bytes().await?))
            }
            .await;
            let outcome = match &answer {
                Err(_) => "transport",
                Ok((200..=299, ..)) => "ok",
                Ok((402, ..)) => "declined",
                Ok((429, ..)) => "rate_limited",
                Ok((500.., ..)) => "server_error",
                Ok(_) => "client_error",
            };
            metrics::histogram!("boxoffice_payment_provider_latency_seconds", "call" => call, "outcome" => outcome)
                .record(started.elapsed().as_secs_f64());
            if outcome == "rate_limited" {
                metrics::counter!("boxoffice_payment_provider_rate_limited_total").increment(1);
            }
            let (status, replayed, bytes) = answer.map_err(|error| {
                if error.is_connect() {
                    // No connection, so no request: the provider did nothing.
                    PaymentError::Refused(transport(&error))
                } else {
                    PaymentError::Provider(transport(&error))
                }
            })?;
            if bytes.len() > ANSWER_BYTES_MAX {
                return Err(PaymentError::Provider("answer too large".into()));
            }
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == 429 || status == 401 {
                // Stripe executes nothing it rate-limits, nor anything with a wrong key.
                return Err(PaymentError::Refused(format!(
                    "provider answered {status} {}",
                    error_code(&body)
                )));
            }
            if status >= 500 || status == 409 {
                // An unknown outcome: never read as a decline.
                return Err(PaymentError::Provider(format!(
                    "provider answered {status} {}{}",
                    error_code(&body),
                    if replayed { " (replayed)" } else { "" }
                )));
            }
            Ok((status, body))
        })
    }

    /// `GET /v1/payment_intents/{id}`.
    fn read_intent(&self, id: &str) -> BoxFuture<'static, Result<(u16, Value), PaymentError>> {
        self.call(
            "read",
            reqwest::Method::GET,
            &format!("/v1/payment_intents/{}", encode(id)),
            None,
        )
    }

    /// The intents the provider holds for the order `key`, newest first.
    fn intents_of(&self, key: &str) -> BoxFuture<'static, Result<Vec<Value>, PaymentError>> {
        let query = format!("metadata['order_id']:'{key}'");
        let search = self.call(
            "search",
            reqwest::Method::GET,
            &format!("/v1/payment_intents/search?query={}", encode(&query)),
            None,
        );
        Box::pin(async move {
            match search.await? {
                (200, body) => Ok(body["data"].as_array().cloned().unwrap_or_default()),
                (status, body) => Err(PaymentError::Provider(format!(
                    "search answered {status} {}",
                    error_code(&body)
                ))),
            }
        })
    }
}

impl PaymentProvider for HttpProvider {
    fn authorize(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, PaymentError>> {
        let fields = vec![
            ("amount", request.amount_cents.to_string()),
            ("currency", CURRENCY.to_owned()),
            ("payment_method", request.payment_method),
            ("confirm", "true".to_owned()),
            ("capture_method", "manual".to_owned()),
            ("metadata[order_id]", request.idempotency_key.clone()),
        ];
        let key = request.idempotency_key.clone();
        let call = self.call(
            "payment_intent",
            reqwest::Method::POST,
            "/v1/payment_intents",
            Some((fields.clone(), request.idempotency_key)),
        );
        let unsettled = self.unsettled.clone();
        Box::pin(async move {
            let answer = call.await;
            {
                let mut unsettled = unsettled.lock().expect("unsettled lock");
                match &answer {
                    Err(PaymentError::Provider(_)) => unsettled.remember(&key, fields),
                    Err(_) => {}
                    Ok(_) => unsettled.forget(&key),
                }
            }
            match answer? {
                (200, intent)
                    if intent["status"] == "requires_capture"
                        || intent["status"] == "succeeded" =>
                {
                    let intent_id = intent["id"].as_str().unwrap_or_default();
                    if !intent_id.starts_with("pi_") {
                        return Err(PaymentError::Provider("an intent without an id".into()));
                    }
                    Ok(ChargeOutcome::Authorized {
                        intent_id: intent_id.to_owned(),
                    })
                }
                (402, body) => Ok(ChargeOutcome::Declined {
                    reason: body["error"]["code"]
                        .as_str()
                        .unwrap_or("card_declined")
                        .to_owned(),
                }),
                // The provider does not know the card (its vault lost it, or it belongs to another provider): an
                // answer about this card, not a failure of the provider.
                (404, body) if error_code(&body) == "resource_missing" => {
                    Ok(ChargeOutcome::Declined {
                        reason: "the payment provider does not know this card: store it again"
                            .into(),
                    })
                }
                // A request it refused as invalid (an amount beyond its limits, say): it stored nothing, and the
                // same request would be refused again. A refusal of this payment.
                (400, body) if body["error"]["type"] == "invalid_request_error" => {
                    Ok(ChargeOutcome::Declined {
                        reason: format!(
                            "the payment provider refused the payment: {}",
                            error_code(&body)
                        ),
                    })
                }
                (status, body) => Err(PaymentError::Provider(format!(
                    "unexpected answer to an authorization: {status} {}",
                    error_code(&body)
                ))),
            }
        })
    }

    fn capture(
        &self,
        idempotency_key: &str,
        intent_id: &str,
    ) -> BoxFuture<'static, Result<CaptureOutcome, PaymentError>> {
        let call = self.call(
            "capture",
            reqwest::Method::POST,
            &format!("/v1/payment_intents/{}/capture", encode(intent_id)),
            Some((Vec::new(), format!("capture-{idempotency_key}"))),
        );
        let read = self.read_intent(intent_id);
        Box::pin(async move {
            let intent = match call.await {
                Ok((200, intent)) => intent,
                // Not capturable (any more), or no sure answer (a 500 the provider stored under the key after
                // the capture committed is replayed to every retry): the intent itself says what became of it.
                Ok((400, body)) if error_code(&body) == "payment_intent_unexpected_state" => {
                    match read.await? {
                        (200, intent) => intent,
                        (status, body) => {
                            return Err(PaymentError::Provider(format!(
                                "reading an intent answered {status} {}",
                                error_code(&body)
                            )));
                        }
                    }
                }
                Err(error) => match read.await? {
                    (200, intent) if intent["status"] != "requires_capture" => intent,
                    _ => return Err(error),
                },
                // The provider does not know the intent: there is nothing it could capture.
                Ok((404, body)) if error_code(&body) == "resource_missing" => {
                    return Ok(CaptureOutcome::Canceled);
                }
                Ok((status, body)) => {
                    return Err(PaymentError::Provider(format!(
                        "unexpected answer to a capture: {status} {}",
                        error_code(&body)
                    )));
                }
            };
            match intent["status"].as_str() {
                Some("succeeded") => Ok(CaptureOutcome::Captured),
                Some("canceled") => Ok(CaptureOutcome::Canceled),
                other => Err(PaymentError::Provider(format!(
                    "a capture left the intent {}",
                    other.unwrap_or("without a status")
                ))),
            }
        })
    }

    fn void(
        &self,
        idempotency_key: &str,
        intent_id: Option<&str>,
    ) -> BoxFuture<'static, Result<(), PaymentError>> {
        let key = idempotency_key.to_owned();
        let known = intent_id.map(str::to_owned);
        let provider = self.clone_handle();
        let unsent = self.unsettled.lock().expect("unsettled lock").body(&key);
        Box::pin(async move {
            // Intents named by an answer rather than found by the search, which may lag at Stripe.
            let mut named: Vec<Value> = Vec::new();
            if let Some(fields) = unsent {
                // The same request under the same key: settled now, or `Err` (409 while it is still being handled,
                // a 5xx, a timeout) and the void is tried again.
                let resent = provider.call(
                    "payment_intent",
                    reqwest::Method::POST,
                    "/v1/payment_intents",
                    Some((fields, key.clone())),
                );
                match resent.await {
                    Ok((200, intent)) => named.push(intent),
                    Ok(_) => {}
                    // A 500 the provider stored under the key (its change committed) is replayed forever: the
                    // search below finds the intent.
                    Err(PaymentError::Provider(reason)) if reason.contains("replayed") => {}
                    Err(error) => return Err(error),
                }
            }
            let mut intents = provider.intents_of(&key).await?;
            if let Some(id) = known.filter(|id| !named.iter().any(|intent| intent["id"] == **id)) {
                let read = provider.read_intent(&id);
                match read.await? {
                    (200, intent) => named.push(intent),
                    (404, _) => {}
                    (status, body) => {
                        return Err(PaymentError::Provider(format!(
                            "reading {id} answered {status} {}",
                            error_code(&body)
                        )));
                    }
                }
            }
            for intent in named {
                // Only the order's own: an intent named for it must say it belongs to it.
                let ours = intent["metadata"]["order_id"].as_str() == Some(key.as_str());
                if ours && !intents.iter().any(|found| found["id"] == intent["id"]) {
                    intents.push(intent);
                }
            }
            for intent in intents {
                let id = intent["id"].as_str().unwrap_or_default().to_owned();
                let undo = match intent["status"].as_str() {
                    Some("requires_capture" | "requires_payment_method") => provider.call(
                        "cancel",
                        reqwest::Method::POST,
                        &format!("/v1/payment_intents/{id}/cancel"),
                        Some((Vec::new(), format!("cancel-{id}"))),
                    ),
                    Some("succeeded") if intent["amount_refunded"] != intent["amount_received"] => {
                        provider.call(
                            "refund",
                            reqwest::Method::POST,
                            "/v1/refunds",
                            Some((vec![("payment_intent", id.clone())], format!("refund-{id}"))),
                        )
                    }
                    _ => continue,
                };
                match undo.await {
                    Ok((200, _)) => {}
                    // No sure answer (a 500 stored under the key once the change committed is replayed to every
                    // retry): the intent itself says whether it is undone.
                    Err(error) => {
                        let read = provider.read_intent(&id);
                        match read.await? {
                            (200, intent) if undone(&intent) => {}
                            _ => return Err(error),
                        }
                    }
                    Ok((status, body)) => {
                        return Err(PaymentError::Provider(format!(
                            "voiding {id} answered {status} {}",
                            error_code(&body)
                        )));
                    }
                }
            }
            provider
                .unsettled
                .lock()
                .expect("unsettled lock")
                .forget(&key);
            Ok(())
        })
    }

    fn status(
        &self,
        idempotency_key: &str,
    ) -> BoxFuture<'static, Result<ChargeStatus, PaymentError>> {
        let intents = self.intents_of(idempotency_key);
        Box::pin(async move {
            let intents = intents.await?;
            // One order has one intent (its key is the order id); the newest decides.
            let Some(intent) = intents.first() else {
                return Ok(ChargeStatus::Absent);
            };
            let intent_id = intent["id"].as_str().unwrap_or_default().to_owned();
            Ok(match intent["status"].as_str() {
                Some("requires_capture") => ChargeStatus::Authorized { intent_id },
                Some("succeeded") if intent["amount_refunded"].as_u64().unwrap_or(0) > 0 => {
                    ChargeStatus::Voided
                }
                Some("succeeded") => ChargeStatus::Captured { intent_id },
                Some("requires_payment_method") => ChargeStatus::Declined,
                Some("canceled") => ChargeStatus::Voided,
                _ => ChargeStatus::Processing,
            })
        })
    }

    fn vault_card(&self, card: PaymentCard) -> BoxFuture<'static, Result<CardCheck, PaymentError>> {
        let mut fields = vec![
            ("type", "card".to_owned()),
            ("card[number]", card.number.clone()),
            ("card[exp_month]", card.exp_month.to_string()),
            ("card[exp_year]", card.exp_year.to_string()),
        ];
        if let Some(cvv) = &card.cvv {
            fields.push(("card[cvc]", cvv.clone()));
        }
        let key = format!("pm-{}", engine::ids::random_hex(16));
        let call = self.call(
            "payment_method",
            reqwest::Method::POST,
            "/v1/payment_methods",
            Some((fields, key)),
        );
        drop(card);
        Box::pin(async move {
            match call.await? {
                (200, method) => {
                    let text =
                        |field: &str| method["card"][field].as_str().unwrap_or("").to_owned();
                    let number = |field: &str| method["card"][field].as_u64().unwrap_or(0);
                    let payment_method = method["id"].as_str().unwrap_or("").to_owned();
                    if !payment_method.starts_with("pm_") {
                        return Err(PaymentError::Provider(
                            "a payment method without an id".into(),
                        ));
                    }
                    Ok(CardCheck::Vaulted(VaultedCard {
                        payment_method,
                        brand: text("brand"),
                        last4: text("last4"),
                        exp_month: u8::try_from(number("exp_month")).unwrap_or(0),
                        exp_year: u16::try_from(number("exp_year")).unwrap_or(0),
                    }))
                }
                (402, body) => Ok(CardCheck::Refused {
                    reason: error_code(&body).replace('_', " "),
                }),
                (status, body) => Err(PaymentError::Provider(format!(
                    "unexpected answer to a card: {status} {}",
                    error_code(&body)
                ))),
            }
        })
    }
}

impl HttpProvider {
    /// Another handle on the same client and connections, for the calls a void makes after the search.
    fn clone_handle(&self) -> HttpProvider {
        HttpProvider {
            base: self.base.clone(),
            api_key: self.api_key.clone(),
            client: self.client.clone(),
            unsettled: self.unsettled.clone(),
        }
    }
}

/// A transport error in words that never carry the request (reqwest's `Display` names only the URL).
fn transport(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "provider call timed out".into()
    } else if error.is_connect() {
        "provider refused or dropped the connection".into()
    } else {
        "provider connection failed".into()
    }
}

/// Whether an intent holds nothing any more: cancelled, or captured and refunded in full.
fn undone(intent: &Value) -> bool {
    match intent["status"].as_str() {
        Some("canceled") => true,
        Some("succeeded") => intent["amount_refunded"] == intent["amount_received"],
        _ => false,
    }
}

fn error_code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("").to_owned()
}

fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char);
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

//! `boxoffice payment-provider`: a standalone payment provider implementing the subset of Stripe's
//! PaymentIntents API that a node uses, with Stripe's semantics, so that payments can be exercised over a real
//! network with real failures.
//!
//! - Form-encoded requests, JSON answers, `Authorization: Bearer KEY` (`BOXOFFICE_PAYMENT_API_KEY`), errors in
//!   Stripe's shape `{"error":{"type","code","message"}}`.
//! - `POST /v1/payment_methods` vaults a card: the number is sealed with AES-256-GCM envelope encryption
//!   (`persistence::crypto`, a data key per method under the provider's master key); the CVC is checked and
//!   dropped, never kept. The answer shows only brand, last4 and expiry.
//! - `POST /v1/payment_intents` (`confirm=true`) authorizes at once: `requires_capture` with
//!   `capture_method=manual`, `succeeded` with `automatic`; a decline is `402 card_error` and leaves the intent in
//!   `requires_payment_method`. Then `capture`, `cancel`, `GET` one, `GET` a list (newest first, `limit`,
//!   `starting_after`), and `POST /v1/refunds`.
//! - `Idempotency-Key` on a `POST`: the first answer is stored (5xx included) and replayed to every later request
//!   with the same key and body for 24 hours; the same key with another body is `400 idempotency_error`; while a
//!   request with the key is being handled, another is `409 idempotency_error`. A request refused before it
//!   started executing (bad parameters, a rate limit, a fault injected before) stores nothing.
//! - A token-bucket rate limit (`--rate-limit` requests per second): `429 rate_limit` with `Retry-After`.
//! - Seeded fault injection (`--seed`): latency (`--latency-ms`, log-normal with `--latency-sigma`), declines
//!   (`--decline-rate`, and every card ending in `0002`), and with `--fault-rate` one of: a 500 before anything
//!   happened, a 500 after the change committed (stored and replayed as Stripe does), a hang of `--hang-ms`
//!   after the change committed before the answer, or the connection cut in the middle of the answer after the
//!   change committed; a quarter of that share of new connections is refused (reset before a request is read).
//! - With `--webhook-url`, every change of an intent is an event delivered at least once, signed
//!   ([`webhooks`]); `GET /v1/events` lists those not delivered yet.
//! - State survives a restart ([`store`]).

pub mod store;
pub mod webhooks;

use crate::config::ProviderArgs;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use persistence::crypto::KeyRing;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{
    Intent, IntentStatus, KeyState, PaymentMethod, Pending, Refund, State, Store, StoredAnswer,
};
use subtle::ConstantTimeEq;

/// The environment variable holding the API key clients must present.
pub const API_KEY_ENV: &str = "BOXOFFICE_PAYMENT_API_KEY";
/// Shortest API key accepted.
pub const API_KEY_LENGTH_MIN: usize = 16;
/// Largest request body.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Longest idempotency key (Stripe's limit).
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;
/// Refunds of one payment at most.
pub const REFUNDS_PER_INTENT_MAX: u32 = 100;
/// Largest amount, in the currency's smallest unit (Stripe's limit for most currencies).
pub const AMOUNT_MAX: u64 = 99_999_999;
/// Most intents one list answers.
pub const LIST_LIMIT_MAX: usize = 100;
/// Longest metadata value, and most metadata keys (Stripe's limits).
const METADATA_VALUE_LENGTH_MAX: usize = 500;
const METADATA_KEYS_MAX: usize = 50;
/// A card number ending in this is declined at authorization; one ending in `REFUSED_SUFFIX` is refused when
/// vaulted (an incorrect CVC), as Stripe's test cards `4000000000000002` and `4000000000000127` are.
pub const DECLINING_SUFFIX: &str = "0002";
pub const REFUSED_SUFFIX: &str = "0127";

/// The faults a call may meet, drawn from the seeded generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    ErrorBefore,
    ErrorAfter,
    HangAfter,
    /// The change committed, then the connection is cut in the middle of the answer.
    ResetAfter,
}

struct Provider {
    inner: Mutex<(Store, State)>,
    keys: KeyRing,
    api_key: String,
    rng: Mutex<StdRng>,
    limiter: Mutex<TokenBucket>,
    args: ProviderArgs,
}

struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            capacity: rate,
            tokens: rate,
            per_second: rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs the provider until SIGTERM or Ctrl-C.
pub async fn run(args: ProviderArgs) -> Result<(), String> {
    let api_key = std::env::var(API_KEY_ENV)
        .map_err(|_| format!("{API_KEY_ENV} must hold the API key clients present"))?;
    if api_key.len() < API_KEY_LENGTH_MIN || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{API_KEY_ENV} must be at least {API_KEY_LENGTH_MIN} visible ASCII characters"
        ));
    }
    for (name, rate) in [
        ("--decline-rate", args.decline_rate),
        ("--fault-rate", args.fault_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if !(0.0..=4.0).contains(&args.latency_sigma) {
        return Err("--latency-sigma must be between 0 and 4".into());
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|error| format!("{}: {error}", args.data_dir.display()))?;
    let (master, _) = persistence::crypto::load_master_key(&args.data_dir)
        .map_err(|error| format!("master key: {error}"))?;
    let webhook = match &args.webhook_url {
        None => None,
        Some(url) => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err("--webhook-url must be an http:// or https:// URL".into());
            }
            let secret = std::env::var(crate::webhook::SECRET_ENV).map_err(|_| {
                format!(
                    "--webhook-url needs {} to sign the events",
                    crate::webhook::SECRET_ENV
                )
            })?;
            if secret.len() < crate::webhook::SECRET_LENGTH_MIN {
                return Err(format!(
                    "{} must be at least {} characters",
                    crate::webhook::SECRET_ENV,
                    crate::webhook::SECRET_LENGTH_MIN
                ));
            }
            Some((url.clone(), secret))
        }
    };
    let dir = args.data_dir.clone();
    let (mut store, state) = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .map_err(|error| format!("recovery task failed: {error}"))?
        .map_err(|error| format!("{}: {error}", args.data_dir.display()))?;
    if webhook.is_some() {
        store.emit_events();
    }
    tracing::info!(
        payment_methods = state.methods.len(),
        payment_intents = state.intents.len(),
        webhook_events_undelivered = state.outbox.len(),
        "payment provider recovered"
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("local address: {error}"))?;
    let provider = Arc::new(Provider {
        inner: Mutex::new((store, state)),
        keys: KeyRing::new(master),
        api_key,
        rng: Mutex::new(StdRng::seed_from_u64(args.seed)),
        limiter: Mutex::new(TokenBucket::new(args.rate_limit)),
        args,
    });
    if let Some((url, secret)) = webhook {
        tokio::spawn(webhooks::deliver(provider.clone(), url, secret));
    }
    let app = router(provider.clone());
    println!("boxoffice payment-provider listening on http://{address}");
    let listener = FaultyListener {
        inner: listener,
        provider: provider.clone(),
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::server::shutdown_signal())
        .await
        .map_err(|error| format!("serve: {error}"))?;
    provider.lock().0.close();
    Ok(())
}

fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/v1/payment_methods", post(create_method))
        .route("/v1/payment_intents", post(create_intent).get(list_intents))
        .route("/v1/payment_intents/search", get(search_intents))
        .route("/v1/payment_intents/{id}", get(read_intent))
        .route("/v1/payment_intents/{id}/capture", post(capture_intent))
        .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/events", get(list_events))
        .fallback(|| async {
            stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "unrecognized request URL",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(provider)
}

impl Provider {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Store, State)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Authentication and the rate limit, which every call meets first.
    fn check(&self, headers: &HeaderMap) -> Result<(), StripeError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(self.api_key.as_bytes())) {
            return Err(stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "api_key_invalid",
                "invalid API key provided",
            ));
        }
        if !self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(StripeError {
                retry_after: Some("1"),
                ..stripe_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit",
                    "too many requests; retry after the time in Retry-After",
                )
            });
        }
        Ok(())
    }

    /// The latency this call meets, then the fault it draws.
    async fn delay(&self) -> Fault {
        let (delay, fault) = self.draw();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        fault
    }

    /// What a read meets: [`Self::check`], the latency, and a 500 if it draws a fault.
    async fn admit_read(&self, headers: &HeaderMap) -> Result<(), StripeError> {
        self.check(headers)?;
        match self.delay().await {
            Fault::None => Ok(()),
            _ => Err(api_error()),
        }
    }

    /// This call's latency and fault.
    fn draw(&self) -> (Duration, Fault) {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let args = &self.args;
        let mut latency_ms = args.latency_ms as f64;
        if args.latency_sigma > 0.0 && latency_ms > 0.0 {
            // A log-normal latency whose median is --latency-ms (Box-Muller for the normal draw).
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            latency_ms *= (args.latency_sigma * normal).exp();
        }
        let fault = if args.fault_rate > 0.0 && rng.random::<f64>() < args.fault_rate {
            match rng.random_range(0..4u8) {
                0 => Fault::ErrorBefore,
                1 => Fault::ErrorAfter,
                2 => Fault::HangAfter,
                _ => Fault::ResetAfter,
            }
        } else {
            Fault::None
        };
        (
            Duration::from_secs_f64((latency_ms / 1000.0).min(600.0)),
            fault,
        )
    }

    /// Whether a new connection is refused (a quarter of `--fault-rate`).
    fn refuses_connection(&self) -> bool {
        self.args.fault_rate > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random::<f64>()
                < self.args.fault_rate / 4.0
    }

    fn declines(&self) -> bool {
        self.args.decline_rate > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random::<f64>()
                < self.args.decline_rate
    }

    /// Runs a mutating call in a task of its own, so that it finishes (and its idempotency key is settled) even
    /// if the client goes away: the key checked and claimed, the latency and fault met, `work` under the state's
    /// lock, the answer stored under the key in the same log batch as the change, and the reply sent once both are
    /// durable.
    async fn mutate(
        self: Arc<Self>,
        headers: HeaderMap,
        path: String,
        body: Bytes,
        work: impl FnOnce(&Provider, &mut Store, &mut State, &mut Pending, &Form) -> Outcome
        + Send
        + 'static,
    ) -> Response {
        let key = idempotency_key(&headers).ok().flatten();
        let provider = self.clone();
        let task = tokio::spawn(async move { self.mutate_owned(headers, path, body, work).await });
        task.await.unwrap_or_else(|error| {
            tracing::error!(%error, "provider call failed");
            // A call that panicked settled nothing: its key must not stay in flight.
            if let Some(key) = key {
                let mut guard = provider.lock();
                if let Some(KeyState::InFlight(_)) = guard.1.keys.get(&key) {
                    guard.1.keys.remove(&key);
                }
            }
            api_error().into_response()
        })
    }

    async fn mutate_owned(
        &self,
        headers: HeaderMap,
        path: String,
        body: Bytes,
        work: impl FnOnce(&Provider, &mut Store, &mut State, &mut Pending, &Form) -> Outcome,
    ) -> Response {
        if let Err(error) = self.check(&headers) {
            return error.into_response();
        }
        let key = match idempotency_key(&headers) {
            Ok(key) => key,
            Err(error) => return error.into_response(),
        };
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(path.as_bytes())
            .chain_update([0])
            .chain_update(&body)
            .finalize()
            .into();
        if let Some(key) = &key {
            let mut guard = self.lock();
            let state = &mut guard.1;
            state.forget_old_keys(now_ms());
            match state.keys.get(key) {
                Some(KeyState::Answered(answer)) if answer.fingerprint == fingerprint => {
                    let mut response = stored_response(answer);
                    response
                        .headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return response;
                }
                Some(KeyState::Answered(_)) => {
                    return stripe_error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        "idempotency_key_in_use",
                        "this idempotency key was used with other parameters",
                    )
                    .into_response();
                }
                Some(KeyState::InFlight(_)) => {
                    return stripe_error(
                        StatusCode::CONFLICT,
                        "idempotency_error",
                        "idempotency_key_in_use",
                        "a request with this idempotency key is in progress",
                    )
                    .into_response();
                }
                None => {
                    state
                        .keys
                        .insert(key.clone(), KeyState::InFlight(fingerprint));
                }
            }
        }
        match self
            .execute(&path, fingerprint, key.clone(), &body, work)
            .await
        {
            Ok(response) => response,
            Err(response) => {
                // Nothing was stored: the key is free for a retry.
                if let Some(key) = &key {
                    let mut guard = self.lock();
                    if let Some(KeyState::InFlight(_)) = guard.1.keys.get(key) {
                        guard.1.keys.remove(key);
                    }
                }
                response.into_response()
            }
        }
    }

    /// The call's latency and fault, then its work; `Err` for an answer that stored nothing under the key.
    async fn execute(
        &self,
        path: &str,
        fingerprint: [u8; 32],
        key: Option<String>,
        body: &Bytes,
        work: impl FnOnce(&Provider, &mut Store, &mut State, &mut Pending, &Form) -> Outcome,
    ) -> Result<Response, StripeError> {
        let fault = self.delay().await;
        if fault == Fault::ErrorBefore {
            return Err(api_error());
        }
        let form = form(body)?;
        let now_ms = now_ms();
        let mut pending = Pending::new();
        let (status, answer, stored) = {
            let mut guard = self.lock();
            let (store, state) = &mut *guard;
            match work(self, store, state, &mut pending, &form) {
                Outcome::Refused(response) => return Err(response),
                Outcome::Done(status, answer) => {
                    // A 500 after the change committed is what the key remembers, as at Stripe.
                    let (status, answer) = if fault == Fault::ErrorAfter {
                        (StatusCode::INTERNAL_SERVER_ERROR, api_error_body())
                    } else {
                        (status, answer)
                    };
                    let stored = key.as_ref().map(|key| {
                        let stored = StoredAnswer {
                            fingerprint,
                            status: status.as_u16(),
                            body: answer.to_string().into_bytes(),
                            at_ms: now_ms,
                        };
                        store.put_answer(state, key.clone(), stored.clone(), &mut pending);
                        // Replayed only once durable: until then a retry with the key is in flight.
                        state
                            .keys
                            .insert(key.clone(), KeyState::InFlight(fingerprint));
                        stored
                    });
                    (status, answer, stored)
                }
            }
        };
        if let Err(error) = pending.wait().await {
            // What is in memory may now be ahead of the log: nothing may read it. A restart serves the log.
            tracing::error!(%error, "provider log write failed: stopping");
            std::process::exit(70);
        }
        if let (Some(key), Some(stored)) = (key, stored) {
            self.lock().1.keys.insert(key, KeyState::Answered(stored));
        }
        // Committed and not answered: what a client meets as a reset.
        engine::crash::point(&format!("provider.{}", route_name(path)));
        match fault {
            Fault::HangAfter => tokio::time::sleep(Duration::from_millis(self.args.hang_ms)).await,
            Fault::ResetAfter => return Ok(cut_short(status)),
            _ => {}
        }
        Ok((status, axum::Json(answer)).into_response())
    }
}

/// An answer whose head is sent and whose body fails: the server drops the connection in the middle of it, as
/// a reset would, and the client learns nothing of the outcome.
fn cut_short(status: StatusCode) -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "an injected reset",
        ))
    });
    let mut response = Response::new(axum::body::Body::from_stream(failing));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Accepts connections, and with `--fault-rate` refuses a quarter of that share of them: closed at once with a
/// reset, before a request is read.
struct FaultyListener {
    inner: tokio::net::TcpListener,
    provider: Arc<Provider>,
}

impl axum::serve::Listener for FaultyListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, address)) => {
                    if self.provider.refuses_connection() {
                        // SO_LINGER 0: the close sends a reset instead of a FIN.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    return (stream, address);
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A mutating call's name, as crash points and the node's metrics name it.
fn route_name(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("payment_intents") => "payment_intent",
        Some("capture") => "capture",
        Some("cancel") => "cancel",
        Some("refunds") => "refund",
        _ => "payment_method",
    }
}

/// What a mutating call's work came to.
enum Outcome {
    /// Done (a decline included): the change is in the log, the answer is stored under the key.
    Done(StatusCode, Value),
    /// Refused before it started executing (bad parameters, an unknown object): nothing is stored.
    Refused(StripeError),
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, StripeError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= IDEMPOTENCY_KEY_LENGTH_MAX
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(invalid(format!(
            "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} visible ASCII characters"
        ))),
    }
}

fn stored_response(answer: &StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body.clone(),
    )
        .into_response()
}

/// An error in Stripe's shape, `{"error":{"type","code","message"}}`.
struct StripeError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    retry_after: Option<&'static str>,
}

impl IntoResponse for StripeError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"type": self.kind, "code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

fn stripe_error(
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: &str,
) -> StripeError {
    StripeError {
        status,
        kind,
        code,
        message: message.to_owned(),
        retry_after: None,
    }
}

fn api_error_body() -> Value {
    json!({"error": {"type": "api_error", "code": "internal", "message": "an error occurred on the provider's side"}})
}

fn api_error() -> StripeError {
    stripe_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "internal",
        "an error occurred on the provider's side",
    )
}

fn invalid(message: String) -> StripeError {
    stripe_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "parameter_invalid",
        &message,
    )
}

fn missing(what: &str, id: &str) -> StripeError {
    stripe_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
        &format!(
            "no such {what}: '{}'",
            id.chars().take(64).collect::<String>()
        ),
    )
}

fn unexpected_state(intent: &Intent, action: &str) -> Outcome {
    Outcome::Refused(stripe_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "payment_intent_unexpected_state",
        &format!(
            "this PaymentIntent cannot be {action}: its status is {}",
            intent.status.as_str()
        ),
    ))
}

fn full() -> Outcome {
    Outcome::Refused(stripe_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "capacity_exceeded",
        "the provider holds as many objects as it may",
    ))
}

/// A form body as a map; a key given twice keeps its last value.
type Form = HashMap<String, String>;

fn form(body: &Bytes) -> Result<Form, StripeError> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|_| invalid("the body must be application/x-www-form-urlencoded".into()))
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, StripeError> {
    form.get(name)
        .map(String::as_str)
        .ok_or_else(|| invalid(format!("missing required param: {name}")))
}

fn number_param<T: std::str::FromStr>(
    form: &HashMap<String, String>,
    name: &str,
) -> Result<T, StripeError> {
    required(form, name)?
        .parse()
        .map_err(|_| invalid(format!("invalid integer: {name}")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}_{}", engine::ids::random_hex(12))
}

fn brand(number: &str) -> &'static str {
    let two: u32 = number.get(..2).and_then(|d| d.parse().ok()).unwrap_or(0);
    let four: u32 = number.get(..4).and_then(|d| d.parse().ok()).unwrap_or(0);
    match () {
        _ if number.starts_with('4') => "visa",
        _ if (51..=55).contains(&two) || (2221..=2720).contains(&four) => "mastercard",
        _ if two == 34 || two == 37 => "amex",
        _ => "unknown",
    }
}

fn method_json(method: &PaymentMethod) -> Value {
    json!({
        "id": method.id,
        "object": "payment_method",
        "type": "card",
        "created": method.created / 1000,
        "card": {"brand": method.brand, "last4": method.last4,
                 "exp_month": method.exp_month, "exp_year": method.exp_year},
    })
}

fn intent_json(intent: &Intent) -> Value {
    json!({
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "amount_capturable": if intent.status == IntentStatus::RequiresCapture { intent.amount } else { 0 },
        "amount_received": intent.amount_received,
        "amount_refunded": intent.amount_refunded,
        "currency": intent.currency,
        "status": intent.status.as_str(),
        "payment_method": intent.payment_method,
        "capture_method": if intent.manual_capture { "manual" } else { "automatic" },
        "metadata": intent.metadata,
        "created": intent.created / 1000,
        "last_payment_error": intent.last_error.as_ref().map(|code| json!({
            "type": "card_error", "code": code, "message": "Your card was declined."})),
    })
}

async fn create_method(
    AxumState(provider): AxumState<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    provider
        .mutate(
            headers,
            "/v1/payment_methods".into(),
            body,
            move |provider, store, state, pending, form| match vault(provider, form) {
                Err(outcome) => outcome,
                Ok(_) if state.methods.len() >= store::OBJECTS_MAX => full(),
                Ok(method) => {
                    let answer = method_json(&method);
                    store.put_method(state, method, pending);
                    Outcome::Done(StatusCode::OK, answer)
                }
            },
        )
        .await
}

/// Checks a card and seals its number; its CVC is checked and goes no further.
fn vault(provider: &Provider, form: &HashMap<String, String>) -> Result<PaymentMethod, Outcome> {
    if form.get("type").is_some_and(|kind| kind != "card") {
        return Err(Outcome::Refused(invalid("type must be card".into())));
    }
    let number = required(form, "card[number]").map_err(Outcome::Refused)?;
    let exp_month: u8 = number_param(form, "card[exp_month]").map_err(Outcome::Refused)?;
    let exp_year: u16 = number_param(form, "card[exp_year]").map_err(Outcome::Refused)?;
    // Optional, as at Stripe (a card moved from another store has none); checked when given, never kept.
    let cvc = form.get("card[cvc]").map(String::as_str);
    let card_error = |code: &str, message: &str| {
        Err(Outcome::Done(
            StatusCode::PAYMENT_REQUIRED,
            json!({"error": {"type": "card_error", "code": code, "message": message}}),
        ))
    };
    if !(12..=19).contains(&number.len())
        || !number.bytes().all(|b| b.is_ascii_digit())
        || !crate::dto::luhn_valid(number)
    {
        return card_error("incorrect_number", "Your card number is incorrect.");
    }
    if !(1..=12).contains(&exp_month) {
        return card_error(
            "invalid_expiry_month",
            "Your card's expiration month is invalid.",
        );
    }
    if !(2000..=2100).contains(&exp_year) {
        return card_error(
            "invalid_expiry_year",
            "Your card's expiration year is invalid.",
        );
    }
    if engine::payment::card_expired(exp_month, exp_year) {
        return card_error("expired_card", "Your card has expired.");
    }
    if let Some(cvc) = cvc
        && (!(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()))
    {
        return card_error("invalid_cvc", "Your card's security code is invalid.");
    }
    if number.ends_with(REFUSED_SUFFIX) {
        return card_error("incorrect_cvc", "Your card's security code is incorrect.");
    }
    let id = random_id("pm");
    let (sealed, data_key) = store::seal_number(&provider.keys, &id, number);
    Ok(PaymentMethod {
        brand: brand(number).to_owned(),
        last4: number[number.len() - 4..].to_owned(),
        exp_month,
        exp_year,
        created: now_ms(),
        number: sealed,
        data_key,
        id,
    })
}

async fn create_intent(
    AxumState(provider): AxumState<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    provider
        .mutate(
            headers,
            "/v1/payment_intents".into(),
            body,
            move |provider, store, state, pending, form| match new_intent(provider, state, form) {
                Err(outcome) => outcome,
                Ok(_) if state.intents.len() >= store::OBJECTS_MAX => full(),
                Ok(intent) => {
                    let answer = intent_json(&intent);
                    let declined = intent.status == IntentStatus::RequiresPaymentMethod;
                    store.put_intent(state, intent, pending);
                    if declined {
                        Outcome::Done(
                            StatusCode::PAYMENT_REQUIRED,
                            json!({"error": {"type": "card_error", "code": "card_declined",
                                             "decline_code": "generic_decline",
                                             "message": "Your card was declined.",
                                             "payment_intent": answer}}),
                        )
                    } else {
                        Outcome::Done(StatusCode::OK, answer)
                    }
                }
            },
        )
        .await
}

/// A confirmed intent, authorized or declined.
fn new_intent(
    provider: &Provider,
    state: &mut State,
    form: &HashMap<String, String>,
) -> Result<Intent, Outcome> {
    let refused = |message: String| Outcome::Refused(invalid(message));
    let amount: u64 = number_param(form, "amount").map_err(Outcome::Refused)?;
    if !(1..=AMOUNT_MAX).contains(&amount) {
        return Err(refused(format!("amount must be 1 to {AMOUNT_MAX}")));
    }
    let currency = required(form, "currency").map_err(Outcome::Refused)?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(refused("currency must be three lowercase letters".into()));
    }
    if form.get("confirm").map(String::as_str) != Some("true") {
        return Err(refused("only confirm=true is supported".into()));
    }
    let manual_capture = match form.get("capture_method").map(String::as_str) {
        None | Some("automatic") => false,
        Some("manual") => true,
        Some(_) => return Err(refused("capture_method must be manual or automatic".into())),
    };
    let method_id = required(form, "payment_method").map_err(Outcome::Refused)?;
    let Some(method) = state.methods.get(method_id) else {
        return Err(Outcome::Refused(missing("payment_method", method_id)));
    };
    let mut metadata = BTreeMap::new();
    for (name, value) in form {
        if let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            if key.is_empty() || key.len() > 40 || value.len() > METADATA_VALUE_LENGTH_MAX {
                return Err(refused(format!(
                    "metadata keys must be 1 to 40 characters and values at most {METADATA_VALUE_LENGTH_MAX}"
                )));
            }
            metadata.insert(key.to_owned(), value.clone());
        }
    }
    if metadata.len() > METADATA_KEYS_MAX {
        return Err(refused(format!(
            "at most {METADATA_KEYS_MAX} metadata keys"
        )));
    }
    let number = provider
        .keys
        .unwrap(&method.data_key, &method.id)
        .and_then(|key| key.open(&method.id, store::CARD_PURPOSE, &method.number))
        .map_err(|error| {
            tracing::error!(payment_method = %method.id, %error, "a vaulted card does not open");
            Outcome::Refused(api_error())
        })?;
    let declined = number.ends_with(DECLINING_SUFFIX.as_bytes()) || provider.declines();
    let status = match (declined, manual_capture) {
        (true, _) => IntentStatus::RequiresPaymentMethod,
        (false, true) => IntentStatus::RequiresCapture,
        (false, false) => IntentStatus::Succeeded,
    };
    Ok(Intent {
        id: random_id("pi"),
        amount,
        currency: currency.to_owned(),
        status,
        payment_method: method.id.clone(),
        manual_capture,
        metadata,
        created: now_ms(),
        amount_received: if status == IntentStatus::Succeeded {
            amount
        } else {
            0
        },
        amount_refunded: 0,
        refunds: 0,
        last_error: declined.then(|| "card_declined".to_owned()),
        position: state.next_position(),
    })
}

async fn capture_intent(
    AxumState(provider): AxumState<Arc<Provider>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let to = Transition {
        action: "capture",
        done: "captured",
        from: &[IntentStatus::RequiresCapture],
        to: IntentStatus::Succeeded,
    };
    transition(provider, id, headers, body, to).await
}

async fn cancel_intent(
    AxumState(provider): AxumState<Arc<Provider>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let to = Transition {
        action: "cancel",
        done: "canceled",
        from: &[
            IntentStatus::RequiresCapture,
            IntentStatus::RequiresPaymentMethod,
        ],
        to: IntentStatus::Canceled,
    };
    transition(provider, id, headers, body, to).await
}

/// `POST /v1/payment_intents/{id}/ACTION`: the intent moves `to` from one of the statuses `from`.
struct Transition {
    action: &'static str,
    done: &'static str,
    from: &'static [IntentStatus],
    to: IntentStatus,
}

async fn transition(
    provider: Arc<Provider>,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    transition: Transition,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/{}", transition.action);
    provider
        .mutate(headers, path, body, move |_, store, state, pending, _| {
            let Some(intent) = state.intents.get(&id) else {
                return Outcome::Refused(missing("payment_intent", &id));
            };
            if !transition.from.contains(&intent.status) {
                return unexpected_state(intent, transition.done);
            }
            let mut intent = intent.clone();
            intent.status = transition.to;
            if transition.to == IntentStatus::Succeeded {
                intent.amount_received = intent.amount;
            }
            let answer = intent_json(&intent);
            store.put_intent(state, intent, pending);
            Outcome::Done(StatusCode::OK, answer)
        })
        .await
}

async fn create_refund(
    AxumState(provider): AxumState<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    provider
        .mutate(
            headers,
            "/v1/refunds".into(),
            body,
            move |_, store, state, pending, form| {
                let id = match required(form, "payment_intent") {
                    Ok(id) => id,
                    Err(response) => return Outcome::Refused(response),
                };
                let Some(intent) = state.intents.get(id) else {
                    return Outcome::Refused(missing("payment_intent", id));
                };
                if intent.status != IntentStatus::Succeeded {
                    return unexpected_state(intent, "refunded");
                }
                let left = intent.amount_received - intent.amount_refunded;
                let amount = match form.get("amount") {
                    None => left,
                    Some(text) => match text.parse::<u64>() {
                        Ok(amount) if (1..=left).contains(&amount) => amount,
                        _ => {
                            return Outcome::Refused(stripe_error(
                                StatusCode::BAD_REQUEST,
                                "invalid_request_error",
                                "amount_too_large",
                                &format!("amount must be 1 to the {left} not yet refunded"),
                            ));
                        }
                    },
                };
                if left == 0 {
                    return Outcome::Refused(stripe_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "charge_already_refunded",
                        "this payment is refunded in full",
                    ));
                }
                if intent.refunds >= REFUNDS_PER_INTENT_MAX {
                    return Outcome::Refused(stripe_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "refund_limit_reached",
                        "this payment has as many refunds as it may",
                    ));
                }
                let mut intent = intent.clone();
                intent.amount_refunded += amount;
                intent.refunds += 1;
                let refund = Refund {
                    id: random_id("re"),
                    amount,
                    payment_intent: intent.id.clone(),
                    created: now_ms(),
                };
                let answer = json!({"id": refund.id, "object": "refund", "amount": amount,
                                "payment_intent": refund.payment_intent, "status": "succeeded",
                                "created": refund.created / 1000});
                store.put_intent(state, intent, pending);
                store.put_refund(state, refund, pending);
                Outcome::Done(StatusCode::OK, answer)
            },
        )
        .await
}

/// `GET /v1/events`: the webhook events not delivered yet (at most [`LIST_LIMIT_MAX`]), oldest first.
async fn list_events(
    AxumState(provider): AxumState<Arc<Provider>>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = provider.admit_read(&headers).await {
        return error.into_response();
    }
    let guard = provider.lock();
    let mut events: Vec<&store::Event> = guard.1.outbox.values().collect();
    events.sort_by_key(|event| (event.created_ms, event.id.clone()));
    let has_more = events.len() > LIST_LIMIT_MAX;
    let data: Vec<Value> = events
        .into_iter()
        .take(LIST_LIMIT_MAX)
        .map(|event| {
            let mut json = webhooks::event_json(event);
            json["pending_webhooks"] = json!(1);
            json
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": has_more})).into_response()
}

async fn read_intent(
    AxumState(provider): AxumState<Arc<Provider>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = provider.admit_read(&headers).await {
        return error.into_response();
    }
    let guard = provider.lock();
    match guard.1.intents.get(&id) {
        Some(intent) => axum::Json(intent_json(intent)).into_response(),
        None => missing("payment_intent", &id).into_response(),
    }
}

async fn list_intents(
    AxumState(provider): AxumState<Arc<Provider>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = provider.admit_read(&headers).await {
        return error.into_response();
    }
    let limit = match query.get("limit").map(|limit| limit.parse::<usize>()) {
        None => 10,
        Some(Ok(limit)) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => return invalid(format!("limit must be 1 to {LIST_LIMIT_MAX}")).into_response(),
    };
    let guard = provider.lock();
    let state = &guard.1;
    let before = match query.get("starting_after") {
        None => u64::MAX,
        Some(id) => match state.intents.get(id) {
            Some(intent) => intent.position,
            None => return missing("payment_intent", id).into_response(),
        },
    };
    let mut page: Vec<Value> = state
        .intent_order
        .range(..before)
        .rev()
        .take(limit + 1)
        .filter_map(|(_, id)| state.intents.get(id).map(intent_json))
        .collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    axum::Json(
        json!({"object": "list", "url": "/v1/payment_intents", "data": page, "has_more": has_more}),
    )
    .into_response()
}

/// `GET /v1/payment_intents/search?query=metadata['order_id']:'ID'`: the one query of Stripe's search language the
/// provider answers, every intent created for an order, newest first. (Stripe's search may lag a few seconds
/// behind; this one does not.)
async fn search_intents(
    AxumState(provider): AxumState<Arc<Provider>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = provider.admit_read(&headers).await {
        return error.into_response();
    }
    let order = query
        .get("query")
        .and_then(|query| query.strip_prefix("metadata['order_id']:'"))
        .and_then(|rest| rest.strip_suffix('\''))
        .filter(|order| !order.is_empty() && !order.contains('\''));
    let Some(order) = order else {
        return invalid("query must be metadata['order_id']:'ID'".into()).into_response();
    };
    // With --search-lag-ms, an intent shows only that long after it was created, as Stripe's search may lag.
    let shown_before = now_ms().saturating_sub(provider.args.search_lag_ms);
    let guard = provider.lock();
    let state = &guard.1;
    let data: Vec<Value> = state
        .intents_by_order
        .get(order)
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|id| state.intents.get(id))
        .filter(|intent| intent.created <= shown_before)
        .take(LIST_LIMIT_MAX)
        .map(intent_json)
        .collect();
    axum::Json(json!({"object": "search_result", "data": data, "has_more": false})).into_response()
}

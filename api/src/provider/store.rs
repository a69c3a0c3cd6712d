//! The payment provider's state and how it survives a restart: payment methods (the card number sealed with
//! envelope encryption, what may be shown beside it), payment intents, refunds and the answers stored under
//! idempotency keys. Every change is a record in a segment log of its own (`DIR/log/`, `persistence::log`, one
//! `fdatasync` per group commit) appended under the state's lock, so the log's order is the order of the changes;
//! a call is answered only once its records are durable. A restart replays the log: the last record of each
//! object wins.
//!
//! With webhooks on, every change of an intent's status (and every refund) also appends an [`Event`] to the
//! outbox in the same batch, so an event is durable exactly when its change is; a delivered event is marked so by
//! a record of its own. The outbox survives a restart: delivery is at least once.

use persistence::crypto::{KeyRing, Sealed, WrappedKey};
use persistence::log::{self, LogConfig, LogWriter, StreamId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use tokio::sync::oneshot;

/// Idempotency keys are kept this long (Stripe keeps them 24 hours).
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
/// Keys kept at most; beyond that the oldest are forgotten first.
pub const IDEMPOTENCY_KEYS_MAX: usize = 1_000_000;
/// Payment methods, and payment intents, kept at most; beyond that creating one is refused (`503`).
pub const OBJECTS_MAX: usize = 5_000_000;

const STREAM: &str = "provider";
/// Purpose bound into the associated data of a sealed card number.
pub const CARD_PURPOSE: &str = "card-number";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub created: u64,
    /// The number, sealed under `data_key` with the method's id as associated data.
    pub number: Sealed,
    pub data_key: WrappedKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresCapture,
    Succeeded,
    Canceled,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresCapture => "requires_capture",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    pub status: IntentStatus,
    pub payment_method: String,
    pub manual_capture: bool,
    pub metadata: BTreeMap<String, String>,
    pub created: u64,
    pub amount_received: u64,
    pub amount_refunded: u64,
    /// Refunds made of it.
    pub refunds: u32,
    /// Why the last authorization failed (`card_declined`), while the intent needs another payment method.
    pub last_error: Option<String>,
    /// Position in creation order, for listing.
    pub position: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: u64,
    pub payment_intent: String,
    pub created: u64,
}

/// An answer stored under an idempotency key: replayed to any later request with the same key and body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub fingerprint: [u8; 32],
    pub status: u16,
    pub body: Vec<u8>,
    pub at_ms: u64,
}

/// A webhook event: what happened to an intent, and the intent as it was then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// Stripe's event type (`payment_intent.succeeded`, ...).
    pub kind: String,
    /// When it happened, in milliseconds since the epoch.
    pub created_ms: u64,
    pub intent: Intent,
}

/// Undelivered webhook events kept at most; beyond that new events are dropped (and counted in the log).
pub const OUTBOX_MAX: usize = 100_000;

/// The variants are the log's format: new ones go at the end.
#[derive(Serialize, Deserialize)]
enum Record {
    Method(PaymentMethod),
    Intent(Intent),
    Refund(Refund),
    Answer { key: String, answer: StoredAnswer },
    Event(Event),
    Delivered { id: String },
}

/// What a key stands for now.
pub enum KeyState {
    Answered(StoredAnswer),
    /// A request with this key is being handled; its body's fingerprint.
    InFlight([u8; 32]),
}

#[derive(Default)]
pub struct State {
    pub methods: HashMap<String, PaymentMethod>,
    pub intents: HashMap<String, Intent>,
    /// Intent ids by position, for `GET /v1/payment_intents` (newest first).
    pub intent_order: BTreeMap<u64, String>,
    /// Intent ids by their `metadata[order_id]`, oldest first, for the search by order.
    pub intents_by_order: HashMap<String, Vec<String>>,
    pub refunds: HashMap<String, Refund>,
    pub keys: HashMap<String, KeyState>,
    /// Answered keys in the order they were stored, with that time, so the oldest are forgotten first.
    key_age: VecDeque<(u64, String)>,
    next_position: u64,
    /// Webhook events not delivered yet, by id.
    pub outbox: HashMap<String, Event>,
}

impl State {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Method(method) => {
                self.methods.insert(method.id.clone(), method);
            }
            Record::Intent(intent) => {
                self.next_position = self.next_position.max(intent.position + 1);
                let new = self
                    .intent_order
                    .insert(intent.position, intent.id.clone())
                    .is_none();
                if new && let Some(order) = intent.metadata.get("order_id") {
                    self.intents_by_order
                        .entry(order.clone())
                        .or_default()
                        .push(intent.id.clone());
                }
                self.intents.insert(intent.id.clone(), intent);
            }
            Record::Refund(refund) => {
                self.refunds.insert(refund.id.clone(), refund);
            }
            Record::Answer { key, answer } => {
                self.key_age.push_back((answer.at_ms, key.clone()));
                self.keys.insert(key, KeyState::Answered(answer));
            }
            Record::Event(event) => {
                self.outbox.insert(event.id.clone(), event);
            }
            Record::Delivered { id } => {
                self.outbox.remove(&id);
            }
        }
    }

    /// The position the next intent takes.
    pub fn next_position(&mut self) -> u64 {
        let position = self.next_position;
        self.next_position += 1;
        position
    }

    /// Forgets answered keys older than [`IDEMPOTENCY_TTL_MS`], and the oldest beyond [`IDEMPOTENCY_KEYS_MAX`].
    pub fn forget_old_keys(&mut self, now_ms: u64) {
        while let Some((at_ms, key)) = self.key_age.front() {
            let expired = now_ms.saturating_sub(*at_ms) > IDEMPOTENCY_TTL_MS;
            if !expired && self.key_age.len() <= IDEMPOTENCY_KEYS_MAX {
                break;
            }
            // A key answered again since (after it was forgotten) has a newer entry further back.
            if let Some(KeyState::Answered(answer)) = self.keys.get(key)
                && answer.at_ms == *at_ms
            {
                self.keys.remove(key);
            }
            self.key_age.pop_front();
        }
    }
}

/// The provider's log and the sequence number of its next record.
pub struct Store {
    log: LogWriter,
    stream: StreamId,
    seq: u64,
    /// Whether changes of intents make webhook events (`--webhook-url`).
    events: bool,
}

/// Completes once every record of one change is durable.
pub struct Pending(Vec<oneshot::Receiver<Result<(), engine::journal::JournalError>>>);

impl Pending {
    pub async fn wait(self) -> Result<(), String> {
        for receiver in self.0 {
            match receiver.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => return Err("the log stopped".into()),
            }
        }
        Ok(())
    }
}

impl Store {
    /// Opens the log in `dir/log` and replays it into a fresh state.
    pub fn open(dir: &Path) -> std::io::Result<(Self, State)> {
        let mut state = State::default();
        let mut seq = 0;
        let (log, report) = log::open(LogConfig::new(dir.join("log")), |bytes| {
            let record: Record = postcard::from_bytes(bytes)
                .map_err(|error| format!("undecodable provider record: {error}"))?;
            state.apply(record);
            seq += 1;
            Ok((STREAM.into(), seq))
        })?;
        if let Some(torn) = report.torn_tail {
            tracing::warn!(offset = torn.offset, reason = %torn.reason, "the provider's log ended in a torn record: its tail was cut");
        }
        Ok((
            Self {
                log,
                stream: STREAM.into(),
                seq,
                events: false,
            },
            state,
        ))
    }

    fn append(&mut self, state: &mut State, record: Record, pending: &mut Pending) {
        self.seq += 1;
        let bytes = postcard::to_allocvec(&record).expect("provider records always encode");
        pending
            .0
            .push(self.log.append(self.stream.clone(), self.seq, bytes));
        state.apply(record);
    }

    pub fn put_method(&mut self, state: &mut State, method: PaymentMethod, pending: &mut Pending) {
        self.append(state, Record::Method(method), pending);
    }

    /// Makes every change of an intent's status, and every refund, a webhook event from now on.
    pub fn emit_events(&mut self) {
        self.events = true;
    }

    /// Stores `intent`; with webhooks on, the event its change makes goes in the same batch.
    pub fn put_intent(&mut self, state: &mut State, intent: Intent, pending: &mut Pending) {
        let before = state
            .intents
            .get(&intent.id)
            .map(|old| (old.status, old.amount_refunded));
        let kind = match (before, intent.status) {
            (Some((status, refunded)), _) if status == intent.status => {
                (intent.amount_refunded > refunded).then_some("charge.refunded")
            }
            (_, IntentStatus::RequiresCapture) => Some("payment_intent.amount_capturable_updated"),
            (_, IntentStatus::Succeeded) => Some("payment_intent.succeeded"),
            (_, IntentStatus::Canceled) => Some("payment_intent.canceled"),
            (_, IntentStatus::RequiresPaymentMethod) => Some("payment_intent.payment_failed"),
        };
        let event = kind.filter(|_| self.events).map(|kind| Event {
            id: format!("evt_{}", engine::ids::random_hex(12)),
            kind: kind.to_owned(),
            created_ms: intent.created.max(now_ms()),
            intent: intent.clone(),
        });
        self.append(state, Record::Intent(intent), pending);
        if let Some(event) = event {
            if state.outbox.len() < OUTBOX_MAX {
                self.append(state, Record::Event(event), pending);
            } else {
                tracing::warn!(event = %event.id, kind = %event.kind, "webhook outbox full: event dropped");
            }
        }
    }

    /// Marks a webhook event delivered.
    pub fn put_delivered(&mut self, state: &mut State, id: String, pending: &mut Pending) {
        self.append(state, Record::Delivered { id }, pending);
    }

    pub fn put_refund(&mut self, state: &mut State, refund: Refund, pending: &mut Pending) {
        self.append(state, Record::Refund(refund), pending);
    }

    pub fn put_answer(
        &mut self,
        state: &mut State,
        key: String,
        answer: StoredAnswer,
        pending: &mut Pending,
    ) {
        self.append(state, Record::Answer { key, answer }, pending);
    }

    pub fn close(&self) {
        self.log.close();
    }
}

impl Pending {
    pub fn new() -> Self {
        Self(Vec::new())
    }
}

impl Default for Pending {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Seals a card number for the payment method `id` under a fresh data key.
pub fn seal_number(keys: &KeyRing, id: &str, number: &str) -> (Sealed, WrappedKey) {
    let (key, wrapped) = keys.new_data_key(id);
    (key.seal(id, CARD_PURPOSE, number.as_bytes()), wrapped)
}

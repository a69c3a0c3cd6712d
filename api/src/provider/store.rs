//! The payment provider's state and how it survives a restart: payment methods (the card number sealed with
//! envelope encryption, what may be shown beside it), payment intents, refunds and the answers stored under
//! idempotency keys. Every change is a record in a segment log of its own (`DIR/log/`, `persistence::log`, one
//! `fdatasync` per group commit) appended under the state's lock, so the log's order is the order of the changes;
//! a call is answered only once its records are durable. A restart replays the log: the last record of each
//! object wins.

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

#[derive(Serialize, Deserialize)]
enum Record {
    Method(PaymentMethod),
    Intent(Intent),
    Refund(Refund),
    Answer { key: String, answer: StoredAnswer },
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

    pub fn put_intent(&mut self, state: &mut State, intent: Intent, pending: &mut Pending) {
        self.append(state, Record::Intent(intent), pending);
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

/// Seals a card number for the payment method `id` under a fresh data key.
pub fn seal_number(keys: &KeyRing, id: &str, number: &str) -> (Sealed, WrappedKey) {
    let (key, wrapped) = keys.new_data_key(id);
    (key.seal(id, CARD_PURPOSE, number.as_bytes()), wrapped)
}

//! The `PaymentProvider` port, the in-process simulator, and the payment pool that isolates the provider.
//!
//! Who calls: the order desk, from a task of its own, never from a shard actor. The pool admits at most
//! `concurrency + queue_max` orders at once: admission is checked before anything is reserved, and a full pool
//! answers `EngineError::Overloaded` at once (the HTTP front turns it into `503 overloaded` with `Retry-After`);
//! an order keeps its slot until its payment is final (captured, or nothing left open), so orders whose outcome a
//! failing provider leaves unknown fill the pool and new ones are refused rather than queued without end. Every
//! call (authorize, capture, status, void) waits for one of `concurrency` calls in flight and has a deadline; a
//! missed deadline is an unknown outcome, never read as a decline (`desk::payment` resolves it).

use crate::error::EngineError;
use crate::journal::Commit;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A card as a user gives it, handed to the provider's vault once ([`PaymentProvider::vault_card`]); the node
/// keeps only the payment method id the vault answers and what may be shown. Its `Debug` form never shows the
/// number or cvv. The cvv is there when a user gives the card; a card moved into the vault from a data dir of an
/// earlier version has none, since none was kept.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentCard {
    pub holder_name: String,
    pub number: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub cvv: Option<String>,
}

impl fmt::Debug for PaymentCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentCard").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct ChargeRequest {
    /// The order id: a provider charges one key at most once.
    pub idempotency_key: String,
    pub amount_cents: u64,
    /// The card, as the provider's vault named it.
    pub payment_method: String,
}

/// A card in the provider's vault: its id, and what of it may be shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultedCard {
    pub payment_method: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

/// The provider's answer to an authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The amount is held on the card under the provider's payment `intent_id`, to be captured once the tickets
    /// exist.
    Authorized {
        intent_id: String,
    },
    Declined {
        reason: String,
    },
}

/// The provider's answer to a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureOutcome {
    Captured,
    /// The authorization is gone (cancelled, or expired): nothing can be captured.
    Canceled,
}

/// An order's payment as the node's journal keeps it while it is not final (`PaymentJournal`): what the
/// authorization asks, and once the provider answered it, the intent it holds. Written before the reservation
/// (the same log, so durable with it), rewritten with the intent before the tickets are issued, removed once the
/// payment is captured or nothing of it is left open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub payment_method: String,
    pub amount_cents: u64,
    /// The provider's payment intent, once it authorized the amount.
    pub intent_id: Option<String>,
}

/// Where the desk journals each order's payment step before the call it guards: `Some` its current step, `None`
/// once it is final. The commit completes once the record is durable; a record appended before another in the
/// same journal is durable no later than it.
pub trait PaymentJournal: Send + Sync + 'static {
    fn record(&self, order_id: &str, record: Option<&PaymentRecord>) -> Commit;
}

/// A payment journal that keeps nothing (`--durability none`).
pub struct NoPaymentJournal;

impl PaymentJournal for NoPaymentJournal {
    fn record(&self, _: &str, _: Option<&PaymentRecord>) -> Commit {
        Commit::done()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentError {
    /// The charge was voided before it completed.
    Voided,
    /// The provider failed, or its answer was lost (a timeout, a reset, a 5xx): what it did is unknown.
    Provider(String),
    /// The provider certainly did not act on the request: the connection was refused, or it answered 429.
    Refused(String),
}

pub trait PaymentProvider: Send + Sync + 'static {
    /// Authorizes the amount on the card (nothing is taken before [`Self::capture`]). The same key asked again
    /// answers what became of the first request, never a second authorization.
    fn authorize(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, PaymentError>>;
    /// Takes the authorized amount of the intent `intent_id` of the order `idempotency_key`. Idempotent.
    fn capture(
        &self,
        idempotency_key: &str,
        intent_id: &str,
    ) -> BoxFuture<'static, Result<CaptureOutcome, PaymentError>>;
    /// Cancels the authorization made under `idempotency_key`, or refunds its capture, if any; `intent_id` when
    /// the caller knows it (a provider's search may not show it yet). Idempotent.
    fn void(
        &self,
        idempotency_key: &str,
        intent_id: Option<&str>,
    ) -> BoxFuture<'static, Result<(), PaymentError>>;
    /// What became of the payment made under `idempotency_key`: how an order whose outcome was not answered (a
    /// timeout, a reset, a 5xx, a crash) is resolved.
    fn status(
        &self,
        idempotency_key: &str,
    ) -> BoxFuture<'static, Result<ChargeStatus, PaymentError>>;
    /// Checks `card` (its cvv included, when there is one) and keeps it in the provider's vault, to be charged
    /// later by the payment method id it answers: asked once, when a user stores the card.
    fn vault_card(&self, card: PaymentCard) -> BoxFuture<'static, Result<CardCheck, PaymentError>>;
}

/// A provider's answer to a card offered to be kept on file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardCheck {
    Vaulted(VaultedCard),
    Refused { reason: String },
}

/// Card numbers ending in this are refused by the simulator's verification (an incorrect cvc, as the test card
/// `4000000000000127` is at Stripe); every charge of a card ending in [`SIMULATOR_DECLINING_CARD_SUFFIX`] is
/// declined instead, though the card verifies.
pub const SIMULATOR_REFUSED_CARD_SUFFIX: &str = "0127";

/// The brand of a card number, as a provider names it (`visa`, `mastercard`, `amex`, else `unknown`).
pub fn card_brand(number: &str) -> &'static str {
    let prefix = |digits: usize| -> u32 {
        number
            .get(..digits)
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0)
    };
    if number.starts_with('4') {
        "visa"
    } else if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) {
        "mastercard"
    } else if prefix(2) == 34 || prefix(2) == 37 {
        "amex"
    } else {
        "unknown"
    }
}

/// Whether a card valid through the end of `month`/`year` has expired, by today's date (UTC).
pub fn card_expired(month: u8, year: u16) -> bool {
    let today = time::OffsetDateTime::now_utc();
    (i32::from(year), month) < (today.year(), u8::from(today.month()))
}

/// A provider's record of one idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeStatus {
    /// No payment under this key.
    Absent,
    /// A request under this key is still being handled: not final.
    Processing,
    Authorized {
        intent_id: String,
    },
    Captured {
        intent_id: String,
    },
    Declined,
    /// Cancelled or refunded.
    Voided,
}

/// Where the simulator keeps its ledger so that it remembers charges across a restart of the server, as a real
/// provider would. `record` queues the entry in the node's journal, ahead of every record appended after it (the
/// order's confirmation among them), and returns the commit that completes once it is durable.
pub trait LedgerStore: Send + Sync + 'static {
    fn record(&self, idempotency_key: &str, charge: &SimulatedCharge) -> Commit;
    /// Keeps a card of the simulator's vault (sealing its number); the commit completes once it is durable.
    fn record_card(&self, payment_method: &str, card: &PaymentCard) -> Commit;
}

/// What the simulator keeps of a card in its vault, in memory: whether charges of it decline. The number itself
/// is only in the store, sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimulatedCard {
    pub declines: bool,
}

impl SimulatedCard {
    pub fn of_number(number: &str) -> Self {
        Self {
            declines: number.ends_with(SIMULATOR_DECLINING_CARD_SUFFIX),
        }
    }
}

/// Card numbers ending in this always decline in the simulator, whatever the decline rate.
pub const SIMULATOR_DECLINING_CARD_SUFFIX: &str = "0002";

/// The variants are stored in the ledger: new ones go at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimulatedChargeState {
    Pending,
    /// Captured (and, in a ledger of an earlier version, charged at once).
    Approved,
    Declined,
    Voided,
    /// Authorized, not captured yet.
    Authorized,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedCharge {
    pub amount_cents: u64,
    pub state: SimulatedChargeState,
}

/// The in-process payment provider: answers after `latency`, declines a `decline_rate` share of charges at
/// random and every card whose number ends in [`SIMULATOR_DECLINING_CARD_SUFFIX`]. Its ledger remembers every
/// charge by idempotency key so a repeated key never charges twice. With a [`LedgerStore`], a charge's final
/// state is queued in the node's journal before the charge is answered, so everything that depends on the answer
/// (the order's confirmation, appended later to the same log) is durable only if the charge is: the order does
/// not wait for a sync of the ledger's own. A charge not durable at a crash never happened (recovery voids it).
pub struct SimulatedProvider {
    latency: Duration,
    decline_rate: f64,
    ledger: Arc<Mutex<HashMap<String, SimulatedCharge>>>,
    cards: Arc<Mutex<HashMap<String, SimulatedCard>>>,
    store: Option<Arc<dyn LedgerStore>>,
}

impl SimulatedProvider {
    pub fn new(latency: Duration, decline_rate: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&decline_rate),
            "decline rate is a probability"
        );
        Self {
            latency,
            decline_rate,
            ledger: Arc::new(Mutex::new(HashMap::new())),
            cards: Arc::new(Mutex::new(HashMap::new())),
            store: None,
        }
    }

    /// A simulator whose ledger starts as `ledger` (read back from `store`) and records every final state there.
    pub fn with_store(
        latency: Duration,
        decline_rate: f64,
        ledger: HashMap<String, SimulatedCharge>,
        store: Arc<dyn LedgerStore>,
    ) -> Self {
        Self {
            ledger: Arc::new(Mutex::new(ledger)),
            store: Some(store),
            ..Self::new(latency, decline_rate)
        }
    }

    /// Replaces the ledger with what recovery read back from the store.
    pub fn restore(&self, ledger: HashMap<String, SimulatedCharge>) {
        *self.ledger.lock().expect("ledger lock") = ledger;
    }

    /// Replaces the vault with what recovery read back from the store.
    pub fn restore_cards(&self, cards: HashMap<String, SimulatedCard>) {
        *self.cards.lock().expect("vault lock") = cards;
    }

    /// A copy of the ledger, for tests and reconciliation.
    pub fn ledger(&self) -> HashMap<String, SimulatedCharge> {
        self.ledger.lock().expect("ledger lock").clone()
    }
}

impl PaymentProvider for SimulatedProvider {
    /// Authorizes after `latency`; the intent's id is the order's key.
    fn authorize(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, PaymentError>> {
        let (ledger, store) = (self.ledger.clone(), self.store.clone());
        let latency = self.latency;
        let card = self
            .cards
            .lock()
            .expect("vault lock")
            .get(&request.payment_method)
            .copied();
        let Some(card) = card else {
            return Box::pin(std::future::ready(Ok(ChargeOutcome::Declined {
                reason: "no such payment method".into(),
            })));
        };
        let declines = card.declines || rand::random_bool(self.decline_rate);
        let work = async move {
            {
                let mut ledger = ledger.lock().expect("ledger lock");
                if let Some(existing) = ledger.get(&request.idempotency_key) {
                    return match existing.state {
                        SimulatedChargeState::Approved | SimulatedChargeState::Authorized => {
                            Ok(ChargeOutcome::Authorized {
                                intent_id: request.idempotency_key.clone(),
                            })
                        }
                        SimulatedChargeState::Declined => Ok(ChargeOutcome::Declined {
                            reason: "card declined".into(),
                        }),
                        SimulatedChargeState::Voided => Err(PaymentError::Voided),
                        SimulatedChargeState::Pending => {
                            Err(PaymentError::Provider("charge already in progress".into()))
                        }
                    };
                }
                ledger.insert(
                    request.idempotency_key.clone(),
                    SimulatedCharge {
                        amount_cents: request.amount_cents,
                        state: SimulatedChargeState::Pending,
                    },
                );
            }
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let outcome = {
                let mut ledger = ledger.lock().expect("ledger lock");
                let charge = ledger
                    .get_mut(&request.idempotency_key)
                    .expect("a pending charge stays in the ledger");
                if charge.state == SimulatedChargeState::Voided {
                    return Err(PaymentError::Voided);
                }
                let outcome = if declines {
                    charge.state = SimulatedChargeState::Declined;
                    ChargeOutcome::Declined {
                        reason: "card declined".into(),
                    }
                } else {
                    charge.state = SimulatedChargeState::Authorized;
                    ChargeOutcome::Authorized {
                        intent_id: request.idempotency_key.clone(),
                    }
                };
                // Queued, not awaited: see the type's comment. A write that fails later fails every write after
                // it too, the confirmation's included, so no order is confirmed on a charge that was not recorded.
                if let Some(mut commit) = store
                    .as_ref()
                    .map(|store| store.record(&request.idempotency_key, charge))
                    && let Some(error) = commit.failed_already()
                {
                    return Err(PaymentError::Provider(error.to_string()));
                }
                outcome
            };
            Ok(outcome)
        };
        if latency.is_zero() {
            // Done on its first poll: no caller's deadline can cut it.
            return Box::pin(work);
        }
        // As a provider would, it completes whether or not the caller still waits.
        let task = tokio::spawn(work);
        Box::pin(async move {
            task.await
                .unwrap_or_else(|_| Err(PaymentError::Provider("simulator task failed".into())))
        })
    }

    fn status(
        &self,
        idempotency_key: &str,
    ) -> BoxFuture<'static, Result<ChargeStatus, PaymentError>> {
        let status = match self
            .ledger
            .lock()
            .expect("ledger lock")
            .get(idempotency_key)
            .map(|charge| charge.state)
        {
            None => ChargeStatus::Absent,
            Some(SimulatedChargeState::Pending) => ChargeStatus::Processing,
            Some(SimulatedChargeState::Authorized) => ChargeStatus::Authorized {
                intent_id: idempotency_key.to_owned(),
            },
            Some(SimulatedChargeState::Approved) => ChargeStatus::Captured {
                intent_id: idempotency_key.to_owned(),
            },
            Some(SimulatedChargeState::Declined) => ChargeStatus::Declined,
            Some(SimulatedChargeState::Voided) => ChargeStatus::Voided,
        };
        Box::pin(std::future::ready(Ok(status)))
    }

    /// Captures at once (`--payment-latency-ms` is the authorization's latency, the card network's part); the
    /// ledger's record is queued in the node's journal and awaited.
    fn capture(
        &self,
        idempotency_key: &str,
        _intent_id: &str,
    ) -> BoxFuture<'static, Result<CaptureOutcome, PaymentError>> {
        let answer = {
            let mut ledger = self.ledger.lock().expect("ledger lock");
            match ledger.get_mut(idempotency_key) {
                Some(charge) if charge.state == SimulatedChargeState::Authorized => {
                    charge.state = SimulatedChargeState::Approved;
                    Ok((
                        CaptureOutcome::Captured,
                        self.store
                            .as_ref()
                            .map(|store| store.record(idempotency_key, charge)),
                    ))
                }
                Some(charge) if charge.state == SimulatedChargeState::Approved => {
                    Ok((CaptureOutcome::Captured, None))
                }
                Some(charge) if charge.state == SimulatedChargeState::Voided => {
                    Ok((CaptureOutcome::Canceled, None))
                }
                Some(charge) if charge.state == SimulatedChargeState::Pending => Err(
                    PaymentError::Provider("the authorization is still being made".into()),
                ),
                // Declined, or never authorized under this key: nothing to capture.
                Some(_) | None => Ok((CaptureOutcome::Canceled, None)),
            }
        };
        Box::pin(async move {
            let (outcome, commit) = answer?;
            if let Some(commit) = commit {
                commit
                    .wait()
                    .await
                    .map_err(|error| PaymentError::Provider(error.to_string()))?;
            }
            Ok(outcome)
        })
    }

    /// Answers once the card is durable in the vault, without `--payment-latency-ms` (the latency of a charge).
    fn vault_card(&self, card: PaymentCard) -> BoxFuture<'static, Result<CardCheck, PaymentError>> {
        let refused = |reason: &str| {
            Box::pin(std::future::ready(Ok(CardCheck::Refused {
                reason: reason.into(),
            })))
        };
        if card_expired(card.exp_month, card.exp_year) {
            return refused("expired card");
        }
        if card.number.ends_with(SIMULATOR_REFUSED_CARD_SUFFIX) {
            return refused("incorrect cvc");
        }
        let payment_method = format!("pm_{}", crate::ids::random_hex(12));
        let commit = self
            .store
            .as_ref()
            .map(|store| store.record_card(&payment_method, &card));
        let cards = self.cards.clone();
        let simulated = SimulatedCard::of_number(&card.number);
        let vaulted = VaultedCard {
            payment_method,
            brand: card_brand(&card.number).to_owned(),
            last4: card.number[card.number.len().saturating_sub(4)..].to_owned(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        };
        drop(card);
        Box::pin(async move {
            if let Some(commit) = commit {
                commit
                    .wait()
                    .await
                    .map_err(|error| PaymentError::Provider(error.to_string()))?;
            }
            cards
                .lock()
                .expect("vault lock")
                .insert(vaulted.payment_method.clone(), simulated);
            Ok(CardCheck::Vaulted(vaulted))
        })
    }

    fn void(
        &self,
        idempotency_key: &str,
        _intent_id: Option<&str>,
    ) -> BoxFuture<'static, Result<(), PaymentError>> {
        let commit = {
            let mut ledger = self.ledger.lock().expect("ledger lock");
            let charge = ledger
                .entry(idempotency_key.to_owned())
                .or_insert(SimulatedCharge {
                    amount_cents: 0,
                    state: SimulatedChargeState::Voided,
                });
            charge.state = SimulatedChargeState::Voided;
            self.store
                .as_ref()
                .map(|store| store.record(idempotency_key, charge))
        };
        Box::pin(async move {
            if let Some(commit) = commit {
                commit
                    .wait()
                    .await
                    .map_err(|error| PaymentError::Provider(error.to_string()))?;
            }
            Ok(())
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PaymentPoolConfig {
    /// Charges in flight with the provider at most.
    pub concurrency: usize,
    /// Admitted charges waiting for a slot at most; beyond that, new orders are refused as overloaded.
    pub queue_max: usize,
    /// Deadline of one provider call.
    pub timeout: Duration,
    /// Calls to the provider per second at most (`--payment-rate-limit`), kept below the provider's own limit so
    /// that it never answers 429; `None`: as fast as they come.
    pub rate_per_s: Option<u32>,
}

/// Spaces the calls to the provider `interval` apart. A call takes the next free instant and waits for it; an
/// order is refused at admission (`503 overloaded`, before anything is reserved) when the calls already spaced
/// out would make it wait more than half a deadline.
struct Pacer {
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate_per_s: u32) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / f64::from(rate_per_s.max(1))),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// How long a call asking now would wait.
    fn backlog(&self) -> Duration {
        let next = *self.next.lock().expect("pacer lock");
        next.saturating_duration_since(tokio::time::Instant::now())
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The right to one charge, taken before the order reserves anything.
pub struct PaymentSlot {
    _admitted: OwnedSemaphorePermit,
    /// `boxoffice_payment_pool_admitted`, one less when the slot goes.
    admitted: metrics::Gauge,
}

impl Drop for PaymentSlot {
    fn drop(&mut self) {
        self.admitted.decrement(1.0);
    }
}

/// How an authorization through the pool ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentResult {
    Authorized {
        intent_id: String,
    },
    Declined {
        reason: String,
    },
    /// No answer within the deadline, a reset, a 5xx, a 429: the outcome is unknown, not a decline. The
    /// provider may have authorized the amount; the order is resolved by reading its payment back.
    Unknown {
        reason: String,
    },
    /// The request certainly did not reach the provider (refused connection, 429): nothing to resolve.
    NotSent {
        reason: String,
    },
}

pub struct PaymentPool {
    provider: Arc<dyn PaymentProvider>,
    admitted: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    verifying: Semaphore,
    timeout: Duration,
    metrics: PaymentMetrics,
    breaker: Mutex<Breaker>,
    pacer: Option<Pacer>,
}

/// Consecutive failed charges (errors and timeouts, never declines) that open the circuit breaker.
pub const BREAKER_FAILURES_MAX: u32 = 20;
/// How long an open breaker refuses new orders before it lets one through to try the provider again.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);

/// The circuit breaker in front of the provider: after [`BREAKER_FAILURES_MAX`] failed charges in a row it opens
/// and refuses new orders for [`BREAKER_OPEN_FOR`], before anything is reserved; then it lets one order through
/// (half open): its success closes the breaker, its failure opens it again; if it never reaches the provider (sold
/// out, say), another is let through once the first has had the pool's deadline. A decline is an answer and counts
/// as a success.
#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: tokio::time::Instant,
    },
    /// One order is trying the provider; no other before `until`.
    HalfOpen {
        until: tokio::time::Instant,
    },
}

impl Breaker {
    /// Whether a new order may go on (a probe gets `probe_for` to report); `Err` with the seconds until the
    /// breaker lets one through.
    fn admit(&mut self, now: tokio::time::Instant, probe_for: Duration) -> Result<(), u64> {
        match *self {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } | Breaker::HalfOpen { until } if now < until => {
                Err((until - now).as_secs_f64().ceil().max(1.0) as u64)
            }
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                *self = Breaker::HalfOpen {
                    until: now + probe_for,
                };
                Ok(())
            }
        }
    }

    fn record(&mut self, failed: bool, now: tokio::time::Instant) {
        *self = match (&*self, failed) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true) if failures + 1 < BREAKER_FAILURES_MAX => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (Breaker::Open { until }, true) => Breaker::Open { until: *until },
            (_, true) => Breaker::Open {
                until: now + BREAKER_OPEN_FOR,
            },
        };
    }

    fn gauge(&self) -> f64 {
        match self {
            Breaker::Closed { .. } => 0.0,
            Breaker::HalfOpen { .. } => 1.0,
            Breaker::Open { .. } => 2.0,
        }
    }
}

/// The pool's metric handles, registered once: recording through a handle skips the registry's lookup of the
/// series, which every charge would otherwise pay three times.
struct PaymentMetrics {
    in_flight: metrics::Gauge,
    /// 0 closed, 1 half open, 2 open.
    breaker: metrics::Gauge,
    /// Orders admitted and not done with their charge (in flight or waiting for a slot), and the most.
    admitted: metrics::Gauge,
    admitted_max: metrics::Gauge,
    authorized: metrics::Histogram,
    declined: metrics::Histogram,
    unknown: metrics::Histogram,
}

impl PaymentMetrics {
    fn register() -> Self {
        let latency = |outcome: &'static str| metrics::histogram!("boxoffice_payment_latency_seconds", "outcome" => outcome);
        Self {
            in_flight: metrics::gauge!("boxoffice_payments_in_flight"),
            breaker: metrics::gauge!("boxoffice_payment_breaker_state"),
            admitted: metrics::gauge!("boxoffice_payment_pool_admitted"),
            admitted_max: metrics::gauge!("boxoffice_payment_pool_admitted_max"),
            authorized: latency("authorized"),
            declined: latency("declined"),
            unknown: latency("unknown"),
        }
    }
}

/// Card verifications in flight with the provider at most.
pub const VERIFICATIONS_IN_FLIGHT_MAX: usize = 256;

impl PaymentPool {
    pub fn new(provider: Arc<dyn PaymentProvider>, config: PaymentPoolConfig) -> Self {
        assert!(
            config.concurrency > 0,
            "at least one charge can be in flight"
        );
        let metrics = PaymentMetrics::register();
        metrics
            .admitted_max
            .set((config.concurrency + config.queue_max) as f64);
        Self {
            provider,
            admitted: Arc::new(Semaphore::new(config.concurrency + config.queue_max)),
            in_flight: Arc::new(Semaphore::new(config.concurrency)),
            verifying: Semaphore::new(VERIFICATIONS_IN_FLIGHT_MAX),
            timeout: config.timeout,
            metrics,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            pacer: config.rate_per_s.map(Pacer::new),
        }
    }

    /// Takes a slot for one charge, or refuses at once when the pool is full.
    /// Refused too while the circuit breaker is open (`PaymentCircuitOpen`), before the order reserves anything.
    pub fn admit(&self) -> Result<PaymentSlot, EngineError> {
        {
            let mut breaker = self.breaker.lock().expect("breaker lock");
            let admitted = breaker.admit(tokio::time::Instant::now(), self.timeout);
            self.metrics.breaker.set(breaker.gauge());
            admitted.map_err(|retry_after_s| EngineError::PaymentCircuitOpen { retry_after_s })?;
        }
        if self
            .pacer
            .as_ref()
            .is_some_and(|pacer| pacer.backlog() > self.timeout / 2)
        {
            return Err(EngineError::Overloaded);
        }
        let permit = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| EngineError::Overloaded)?;
        self.metrics.admitted.increment(1.0);
        Ok(PaymentSlot {
            _admitted: permit,
            admitted: self.metrics.admitted.clone(),
        })
    }

    /// Waits for this call's turn under `--payment-rate-limit`.
    async fn pace(&self) {
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
    }

    /// Tells the breaker how a call to the provider went: failed (an error or no answer in time) or answered.
    fn record(&self, failed: bool) {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        let was_open = matches!(*breaker, Breaker::Open { .. });
        breaker.record(failed, tokio::time::Instant::now());
        if !was_open && matches!(*breaker, Breaker::Open { .. }) {
            tracing::warn!(
                failures = BREAKER_FAILURES_MAX,
                open_s = BREAKER_OPEN_FOR.as_secs(),
                "payment provider failing: circuit breaker open, new orders refused"
            );
        }
        self.metrics.breaker.set(breaker.gauge());
    }

    /// Authorizes the order's amount: waits for one of the `concurrency` calls in flight (the order holds its
    /// admission slot until its payment is final), calls the provider with a deadline. An error or a missed
    /// deadline is an unknown outcome, never voided here: the caller resolves it.
    pub async fn authorize(&self, request: &ChargeRequest) -> PaymentResult {
        let _in_flight = self
            .in_flight
            .acquire()
            .await
            .expect("the payment semaphore is never closed");
        self.metrics.in_flight.increment(1.0);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            self.pace().await;
            self.provider.authorize(request.clone()).await
        })
        .await;
        let result = match answer {
            Ok(Ok(ChargeOutcome::Authorized { intent_id })) => {
                PaymentResult::Authorized { intent_id }
            }
            Ok(Ok(ChargeOutcome::Declined { reason })) => PaymentResult::Declined { reason },
            Ok(Err(PaymentError::Refused(reason))) => PaymentResult::NotSent { reason },
            Ok(Err(error)) => PaymentResult::Unknown {
                reason: format!("{error:?}"),
            },
            Err(_) => PaymentResult::Unknown {
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        };
        let failed = matches!(
            result,
            PaymentResult::Unknown { .. } | PaymentResult::NotSent { .. }
        );
        self.record(failed);
        let latency = match result {
            PaymentResult::Authorized { .. } => &self.metrics.authorized,
            PaymentResult::Declined { .. } => &self.metrics.declined,
            PaymentResult::Unknown { .. } | PaymentResult::NotSent { .. } => &self.metrics.unknown,
        };
        latency.record(started.elapsed().as_secs_f64());
        self.metrics.in_flight.decrement(1.0);
        result
    }

    /// Captures an authorized intent, with the pool's deadline, as one of the calls in flight.
    pub async fn capture(
        &self,
        key: &str,
        intent_id: &str,
    ) -> Result<CaptureOutcome, PaymentError> {
        let _in_flight = self
            .in_flight
            .acquire()
            .await
            .expect("the payment semaphore is never closed");
        let answer = tokio::time::timeout(self.timeout, async {
            self.pace().await;
            self.provider.capture(key, intent_id).await
        })
        .await
        .unwrap_or_else(|_| Err(PaymentError::Provider("capture timed out".into())));
        self.record(answer.is_err());
        answer
    }

    /// Hands `card` to the provider's vault, within the pool's deadline, at most [`VERIFICATIONS_IN_FLIGHT_MAX`]
    /// at once (apart from the charges: a sale that fills the charge queue does not stop sign-ups).
    /// `CardRefused` when it refuses the card, `PaymentUnavailable` when it does not answer in time.
    pub async fn vault_card(&self, card: PaymentCard) -> Result<VaultedCard, EngineError> {
        let answer = tokio::time::timeout(self.timeout, async {
            let _verifying = self
                .verifying
                .acquire()
                .await
                .expect("the verification semaphore is never closed");
            self.pace().await;
            self.provider.vault_card(card).await
        })
        .await;
        match answer {
            Ok(Ok(CardCheck::Vaulted(card))) => Ok(card),
            Ok(Ok(CardCheck::Refused { reason })) => Err(EngineError::CardRefused { reason }),
            Ok(Err(error)) => {
                tracing::warn!(?error, "card verification failed");
                Err(EngineError::PaymentUnavailable)
            }
            Err(_) => Err(EngineError::PaymentUnavailable),
        }
    }

    /// Asks the provider what became of a payment, with the pool's deadline.
    pub async fn status(&self, key: &str) -> Result<ChargeStatus, PaymentError> {
        let _in_flight = self
            .in_flight
            .acquire()
            .await
            .expect("the payment semaphore is never closed");
        tokio::time::timeout(self.timeout, async {
            self.pace().await;
            self.provider.status(key).await
        })
        .await
        .unwrap_or_else(|_| Err(PaymentError::Provider("status timed out".into())))
    }

    /// Voids a payment, retrying a few times, further and further apart (a provider still handling the
    /// authorization answers the void only once it is done); whether it succeeded. The caller keeps the order's
    /// seats until one does.
    pub async fn void(&self, key: &str, intent_id: Option<&str>) -> bool {
        let mut pause = VOID_RETRY_PAUSE;
        for attempt in 0..VOID_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            let _in_flight = self
                .in_flight
                .acquire()
                .await
                .expect("the payment semaphore is never closed");
            let attempt = async {
                self.pace().await;
                self.provider.void(key, intent_id).await
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => tracing::warn!(order_id = %key, ?error, "void failed"),
                Err(_) => tracing::warn!(order_id = %key, "void timed out"),
            }
        }
        tracing::warn!(order_id = %key, "could not void the payment yet; it is tried again");
        false
    }
}

/// Tries to void a payment at most this often in one [`PaymentPool::void`].
const VOID_ATTEMPTS_MAX: u32 = 4;
/// The pause before the second attempt to void; each later one doubles it (0.2 + 0.4 + 0.8 s in all).
const VOID_RETRY_PAUSE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn card(number: &str) -> PaymentCard {
        PaymentCard {
            holder_name: "Ada".into(),
            number: number.into(),
            exp_month: 12,
            exp_year: 2030,
            cvv: Some("123".into()),
        }
    }

    /// Vaults `number` in `provider` and returns its payment method id.
    async fn vaulted(provider: &SimulatedProvider, number: &str) -> String {
        match provider.vault_card(card(number)).await {
            Ok(CardCheck::Vaulted(card)) => card.payment_method,
            other => panic!("not vaulted: {other:?}"),
        }
    }

    fn request(key: &str, payment_method: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.into(),
            amount_cents: 500,
            payment_method: payment_method.into(),
        }
    }

    #[tokio::test]
    async fn simulator_authorizes_a_key_once_captures_it_and_declines_the_test_card() {
        let provider = SimulatedProvider::new(Duration::ZERO, 0.0);
        let good = vaulted(&provider, "4242424242424242").await;
        let first = provider.authorize(request("o_1", &good)).await;
        let again = provider.authorize(request("o_1", &good)).await;
        let authorized = Ok(ChargeOutcome::Authorized {
            intent_id: "o_1".into(),
        });
        assert_eq!((&first, &again), (&authorized, &authorized));
        assert_eq!(provider.ledger().len(), 1);
        assert_eq!(
            provider.status("o_1").await,
            Ok(ChargeStatus::Authorized {
                intent_id: "o_1".into()
            })
        );
        for _ in 0..2 {
            assert_eq!(
                provider.capture("o_1", "o_1").await,
                Ok(CaptureOutcome::Captured)
            );
        }
        assert_eq!(
            provider.ledger()["o_1"].state,
            SimulatedChargeState::Approved
        );
        assert_eq!(provider.status("o_2").await, Ok(ChargeStatus::Absent));
        let declining = vaulted(&provider, "4000000000000002").await;
        let declined = provider.authorize(request("o_2", &declining)).await;
        assert!(matches!(declined, Ok(ChargeOutcome::Declined { .. })));
        assert_eq!(
            provider.capture("o_2", "o_2").await,
            Ok(CaptureOutcome::Canceled)
        );
        // A payment method the vault never gave out is declined.
        let unknown = provider.authorize(request("o_3", "pm_unknown")).await;
        assert!(matches!(unknown, Ok(ChargeOutcome::Declined { .. })));
        // A voided authorization cannot be captured.
        provider
            .authorize(request("o_4", &good))
            .await
            .expect("authorized");
        provider.void("o_4", None).await.expect("voided");
        assert_eq!(
            provider.capture("o_4", "o_4").await,
            Ok(CaptureOutcome::Canceled)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_card_is_vaulted_at_once_apart_from_the_charges() {
        let provider = Arc::new(SimulatedProvider::new(Duration::from_secs(10), 0.0));
        let pool = PaymentPool::new(
            provider,
            PaymentPoolConfig {
                concurrency: 1,
                queue_max: 0,
                timeout: Duration::from_secs(1),
                rate_per_s: None,
            },
        );
        // The one charge slot is taken: the vault does not need it, nor wait for the charge latency.
        let _slot = pool.admit().expect("a slot");
        let good = pool
            .vault_card(card("4242424242424242"))
            .await
            .expect("vaulted");
        assert_eq!(
            (
                good.brand.as_str(),
                good.last4.as_str(),
                good.exp_month,
                good.exp_year
            ),
            ("visa", "4242", 12, 2030)
        );
        assert!(good.payment_method.starts_with("pm_"));
        let declining = pool
            .vault_card(card("4000000000000002"))
            .await
            .expect("a card whose charges decline is vaulted");
        assert_ne!(declining.payment_method, good.payment_method);
        assert!(matches!(
            pool.vault_card(card("4000000000000127")).await,
            Err(EngineError::CardRefused { .. })
        ));
        let mut expired = card("4242424242424242");
        expired.exp_year = 2001;
        assert!(matches!(
            pool.vault_card(expired).await,
            Err(EngineError::CardRefused { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_authorization_past_its_deadline_is_an_unknown_outcome_and_not_voided() {
        let provider = Arc::new(SimulatedProvider::new(Duration::from_secs(10), 0.0));
        let pool = PaymentPool::new(
            provider.clone(),
            PaymentPoolConfig {
                concurrency: 1,
                queue_max: 0,
                timeout: Duration::from_secs(1),
                rate_per_s: None,
            },
        );
        let good = vaulted(&provider, "4242424242424242").await;
        let slot = pool.admit().expect("empty pool admits");
        assert!(pool.admit().is_err(), "a pool of one admits one");
        let result = pool.authorize(&request("o_slow", &good)).await;
        assert!(
            matches!(result, PaymentResult::Unknown { .. }),
            "{result:?}"
        );
        // The provider goes on: the order reads the outcome back rather than assume one.
        assert_eq!(
            provider.status("o_slow").await,
            Ok(ChargeStatus::Processing)
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(
            provider.status("o_slow").await,
            Ok(ChargeStatus::Authorized { .. })
        ));
        drop(slot);
        assert!(pool.admit().is_ok(), "the slot is returned");
    }

    /// A provider whose charges fail (an error, as a 5xx or a reset would be) while `failing` is set.
    struct Flaky {
        failing: std::sync::atomic::AtomicBool,
    }

    impl PaymentProvider for Flaky {
        fn authorize(
            &self,
            _: ChargeRequest,
        ) -> BoxFuture<'static, Result<ChargeOutcome, PaymentError>> {
            let failing = self.failing.load(std::sync::atomic::Ordering::Relaxed);
            Box::pin(std::future::ready(if failing {
                Err(PaymentError::Provider("503".into()))
            } else {
                Ok(ChargeOutcome::Declined {
                    reason: "card declined".into(),
                })
            }))
        }
        fn capture(
            &self,
            _: &str,
            _: &str,
        ) -> BoxFuture<'static, Result<CaptureOutcome, PaymentError>> {
            Box::pin(std::future::ready(Ok(CaptureOutcome::Canceled)))
        }
        fn void(&self, _: &str, _: Option<&str>) -> BoxFuture<'static, Result<(), PaymentError>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn status(&self, _: &str) -> BoxFuture<'static, Result<ChargeStatus, PaymentError>> {
            Box::pin(std::future::ready(Ok(ChargeStatus::Absent)))
        }
        fn vault_card(
            &self,
            _: PaymentCard,
        ) -> BoxFuture<'static, Result<CardCheck, PaymentError>> {
            Box::pin(std::future::ready(Err(PaymentError::Provider(
                "down".into(),
            ))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_refuses_orders_then_lets_one_try() {
        let provider = Arc::new(Flaky {
            failing: true.into(),
        });
        let pool = PaymentPool::new(
            provider.clone(),
            PaymentPoolConfig {
                concurrency: 4,
                queue_max: 0,
                timeout: Duration::from_secs(1),
                rate_per_s: None,
            },
        );
        let charge = |key: &str| request(key, "pm_1");
        for failure in 0..BREAKER_FAILURES_MAX {
            let _slot = pool.admit().expect("closed while it counts failures");
            let result = pool.authorize(&charge(&format!("o_{failure}"))).await;
            assert!(matches!(result, PaymentResult::Unknown { .. }));
        }
        // Open: refused before anything is reserved, with how long to wait.
        let Err(EngineError::PaymentCircuitOpen { retry_after_s }) = pool.admit() else {
            panic!("the breaker did not open");
        };
        assert_eq!(retry_after_s, BREAKER_OPEN_FOR.as_secs());
        tokio::time::advance(BREAKER_OPEN_FOR).await;
        // Half open: one order tries; a failure opens the breaker again.
        let probe = pool.admit().expect("one probe");
        assert!(matches!(
            pool.admit(),
            Err(EngineError::PaymentCircuitOpen { .. })
        ));
        assert!(matches!(
            pool.authorize(&charge("o_probe")).await,
            PaymentResult::Unknown { .. }
        ));
        drop(probe);
        assert!(matches!(
            pool.admit(),
            Err(EngineError::PaymentCircuitOpen { .. })
        ));
        // A probe that never reaches the provider frees the way for another after the pool's deadline.
        tokio::time::advance(BREAKER_OPEN_FOR).await;
        let lost = pool.admit().expect("a probe");
        drop(lost);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = pool.admit().expect("another probe");
        // An answer, even a decline, closes it.
        provider
            .failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(
            pool.authorize(&charge("o_ok")).await,
            PaymentResult::Declined { .. }
        ));
        drop(probe);
        for _ in 0..3 {
            drop(pool.admit().expect("closed"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_calls_and_refuses_orders_that_would_wait_too_long() {
        let provider = Arc::new(SimulatedProvider::new(Duration::ZERO, 0.0));
        let pool = Arc::new(PaymentPool::new(
            provider.clone(),
            PaymentPoolConfig {
                concurrency: 100,
                queue_max: 100,
                timeout: Duration::from_secs(1),
                rate_per_s: Some(10),
            },
        ));
        let good = match provider.vault_card(card("4242424242424242")).await {
            Ok(CardCheck::Vaulted(card)) => card.payment_method,
            other => panic!("{other:?}"),
        };
        // Ten calls a second: five charges in a row take 0.4 s of the clock after the first.
        let started = tokio::time::Instant::now();
        for n in 0..5 {
            let _slot = pool.admit().expect("admitted");
            assert!(matches!(
                pool.authorize(&request(&format!("o_{n}"), &good)).await,
                PaymentResult::Authorized { .. }
            ));
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(500),
            "{elapsed:?}"
        );
        // Calls queued for more than half a deadline: the next order is refused before it reserves anything.
        let waiting: Vec<_> = (0..6)
            .map(|n| {
                let slot = pool.admit().expect("admitted while the backlog is short");
                let (pool, good) = (pool.clone(), good.clone());
                tokio::spawn(async move {
                    let result = pool.authorize(&request(&format!("q_{n}"), &good)).await;
                    drop(slot);
                    result
                })
            })
            .collect();
        // Each queued charge takes its turn in the pacer when it first runs.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.admit(), Err(EngineError::Overloaded)));
        for charge in waiting {
            assert!(matches!(
                charge.await.expect("the charge ran"),
                PaymentResult::Authorized { .. }
            ));
        }
        assert!(pool.admit().is_ok(), "the backlog is gone");
    }

    #[test]
    fn card_debug_hides_the_number() {
        let shown = format!("{:?}", card("4242424242424242"));
        assert!(!shown.contains("4242"));
    }
}

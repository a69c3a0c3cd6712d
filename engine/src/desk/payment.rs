//! An order's payment, from its durable reservation to a captured payment or nothing left open.
//!
//! The steps, each journaled before the call it guards ([`PaymentJournal`]):
//!
//! 1. Reserved: the order's [`PaymentRecord`] (payment method, amount) is appended just before the reservation,
//!    to the same log, so it is durable with it; only then is the provider asked to authorize.
//! 2. Authorized: the record is rewritten with the provider's intent id, ahead of the confirmation in the same
//!    log, so tickets are never durable without it.
//! 3. Tickets issued: `Confirm` on every part (durable before anyone is answered).
//! 4. Captured: after the tickets, in the background; the record is removed once the provider captured.
//!
//! A decline releases the seats. A failure before the tickets exist cancels the authorization, then releases.
//! A timeout, a reset, a 5xx or a 429 is an unknown outcome, not a decline: the seats stay reserved and
//! [`Desk::resolve`] reads the payment back (and asks again under the same idempotency key when the provider has
//! none) until it is final; the buyer is answered with the order pending when that takes longer than
//! [`PENDING_ANSWER_AFTER`]. A restart resolves every order whose record is still there the same way.

use super::{Desk, Order, OrderOutcome, OrderStatus, parts_tickets};
use crate::error::EngineError;
use crate::ids::OrderId;
use crate::journal::Commit;
use crate::payment::{
    CaptureOutcome, ChargeRequest, ChargeStatus, PaymentRecord, PaymentResult, PaymentSlot,
};
use crate::router::{ConcertHandle, Part};
use crate::shard_state::ReleaseReason;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// How long an order whose payment outcome is unknown is resolved before the buyer is answered with the order
/// pending (`202`); the resolver goes on.
pub const PENDING_ANSWER_AFTER: Duration = Duration::from_secs(3);
/// First pause between two attempts to resolve a payment, or to capture or void one; it doubles up to
/// [`RESOLVE_PAUSE_MAX`].
const RESOLVE_PAUSE: Duration = Duration::from_millis(200);
const RESOLVE_PAUSE_MAX: Duration = Duration::from_secs(30);
/// Times a sold order's payment is read back and found absent before it is taken for absent (about two minutes
/// with the pauses between: a provider's search may lag).
const ABSENT_READS_MAX: u32 = 10;
/// Times a webhook's order is read back from a provider that fails to answer before the event is only logged
/// (about two minutes with the pauses between).
const WEBHOOK_READS_MAX: u32 = 10;
/// Released orders whose payment a webhook has the desk read back at once, at most.
pub const WEBHOOK_CHECKS_MAX: usize = 64;

/// Who is told an order's answer before it is final: the callers waiting for it (the request, a repeat with
/// the same idempotency key, a second purchase of the same hold), told once that it is pending.
#[derive(Clone, Default)]
pub(crate) struct Announce(Vec<watch::Sender<Option<OrderOutcome>>>);

impl Announce {
    pub(crate) fn to(sender: watch::Sender<Option<OrderOutcome>>) -> Self {
        Self(vec![sender])
    }

    pub(crate) fn and(mut self, sender: watch::Sender<Option<OrderOutcome>>) -> Self {
        self.0.push(sender);
        self
    }

    /// Tells whoever has heard nothing yet that `order` is pending.
    fn pending(&self, order: &Order) {
        for sender in &self.0 {
            sender.send_if_modified(|answer| {
                let unanswered = answer.is_none();
                if unanswered {
                    *answer = Some(Ok(order.clone()));
                }
                unanswered
            });
        }
    }
}

/// What became of an order's payment once it is known.
enum Resolution {
    Authorized {
        intent_id: String,
        /// Captured already (a capture answered before a crash, say): nothing left to capture.
        captured: bool,
    },
    /// Nothing to pay: a free order's tickets need no provider.
    Free,
    Declined {
        reason: String,
    },
    /// Nothing of it is left with the provider (cancelled, refunded, or never made).
    Voided,
}

impl Desk {
    /// Queues `record` as the order's payment step (`None`: final) in the journal: what comes after it in the same
    /// log (a reservation, a confirmation) is durable only if it is; the commit says when it is itself. `Err` when
    /// it could not even be queued (the node's storage failed): nothing that depends on it may go on.
    pub(super) fn journal_payment(
        &self,
        order_id: &OrderId,
        record: Option<&PaymentRecord>,
    ) -> Result<Commit, EngineError> {
        let mut commit = self.payment_journal.record(&order_id.0, record);
        match commit.failed_already() {
            None => Ok(commit),
            Some(error) => {
                tracing::error!(order_id = %order_id, %error, "payment record not journaled");
                Err(EngineError::Unavailable)
            }
        }
    }

    /// Whether some of the concert's shards live on other nodes: there a part's reservation or confirmation is
    /// durable in another node's journal, so a payment record of this node's is awaited, not just queued ahead.
    fn has_remote_shards(&self, concert: &ConcertHandle) -> bool {
        concert
            .placement
            .iter()
            .any(|node| *node != self.router.node())
    }

    /// Authorizes a durable reservation, turns it into tickets and captures; or releases it and gives its tickets
    /// back to the buyer's allowance once nothing of its payment is left open. `recorded` is the commit of the
    /// order's first payment record, awaited before the provider is asked.
    pub(super) async fn settle(
        self: &Arc<Self>,
        order: Order,
        concert: &ConcertHandle,
        parts: &[Part],
        (record, recorded): (PaymentRecord, Commit),
        slot: Option<PaymentSlot>,
        announce: &Announce,
    ) -> OrderOutcome {
        let request = ChargeRequest {
            idempotency_key: order.id.0.to_string(),
            amount_cents: record.amount_cents,
            payment_method: record.payment_method.clone(),
        };
        let resolution = if let Err(error) = recorded.wait().await {
            tracing::error!(order_id = %order.id, %error, "payment record not durable: nothing asked of the provider");
            Resolution::Voided
        } else if record.amount_cents == 0 {
            Resolution::Free
        } else {
            crate::crash::point("payment.reserved");
            match self.payments.authorize(&request).await {
                PaymentResult::Authorized { intent_id } => Resolution::Authorized {
                    intent_id,
                    captured: false,
                },
                PaymentResult::Declined { reason } => Resolution::Declined { reason },
                PaymentResult::Unknown { reason } => {
                    tracing::warn!(order_id = %order.id, %reason, "payment outcome unknown: resolving it");
                    self.resolve(Some(&request), &order, announce).await
                }
                // Nothing reached the provider under this key: nothing of it can be left open.
                PaymentResult::NotSent { reason } => {
                    tracing::warn!(order_id = %order.id, %reason, "payment provider unreachable");
                    Resolution::Voided
                }
            }
        };
        self.finish(order, concert, parts, record, resolution, slot, announce)
            .await
    }

    /// Ends an order whose payment outcome is known: tickets and a capture, or a release.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        self: &Arc<Self>,
        order: Order,
        concert: &ConcertHandle,
        parts: &[Part],
        mut record: PaymentRecord,
        resolution: Resolution,
        slot: Option<PaymentSlot>,
        announce: &Announce,
    ) -> OrderOutcome {
        let id = order.id.clone();
        let (reason, error) = match resolution {
            Resolution::Free => match self.confirm(order.clone(), concert, parts).await {
                Ok(order) => {
                    let _ = self.journal_payment(&id, None);
                    return Ok(order);
                }
                Err(error) => (ReleaseReason::Abandoned, error),
            },
            Resolution::Authorized {
                intent_id,
                captured,
            } => {
                crate::crash::point("payment.authorized");
                record.intent_id = Some(intent_id.clone());
                // Ahead of the confirmation in the same log: no tickets are durable without it (awaited when a
                // part's confirmation goes to another node's journal).
                let recorded = match self.journal_payment(&id, Some(&record)) {
                    Ok(commit) if self.has_remote_shards(concert) => {
                        commit.wait().await.map_err(|_| EngineError::Unavailable)
                    }
                    Ok(_) => Ok(()),
                    Err(error) => Err(error),
                };
                let confirmed = match recorded {
                    Ok(()) => self.confirm(order.clone(), concert, parts).await,
                    Err(error) => Err(error),
                };
                match confirmed {
                    Ok(order) => {
                        crate::crash::point("payment.tickets");
                        if captured {
                            let _ = self.journal_payment(&id, None);
                        } else {
                            self.spawn_capture(id, intent_id, slot);
                        }
                        return Ok(order);
                    }
                    Err(error) => {
                        // No tickets: the authorization is cancelled before the seats go back on sale.
                        tracing::error!(order_id = %id, %error, "authorized but not confirmed: cancelling");
                        self.void_until_done(&id, Some(&intent_id), Some((announce, &order)))
                            .await;
                        (ReleaseReason::Abandoned, error)
                    }
                }
            }
            Resolution::Declined { reason } => (
                ReleaseReason::Declined,
                EngineError::PaymentDeclined { reason },
            ),
            Resolution::Voided => (ReleaseReason::Abandoned, EngineError::PaymentUnavailable),
        };
        let outcome = self
            .release_order(order, concert, parts, reason, error)
            .await;
        drop(slot);
        outcome
    }

    /// Releases an order's parts (their tickets back on sale and to the buyer's allowance) and ends its payment
    /// record.
    async fn release_order(
        &self,
        mut order: Order,
        concert: &ConcertHandle,
        parts: &[Part],
        reason: ReleaseReason,
        error: EngineError,
    ) -> OrderOutcome {
        if let Err(release_error) = concert.release(parts, reason).await {
            tracing::error!(order_id = %order.id, %release_error, "could not release after the payment failed");
        }
        let _ = self.journal_payment(&order.id, None);
        order.status = OrderStatus::Declined;
        let mut book = self.book();
        book.upsert_order(&order);
        book.give_back_tickets(&order.user_id, &order.concert_id, parts_tickets(parts));
        Err(error)
    }

    /// Reads the payment of `order` back until it is final. When the provider has none, asks again under the
    /// same key with `request` (the provider answers the first request's outcome if it had one, and authorizes
    /// now otherwise: the seats are still reserved); without a request (an order journaled by an earlier
    /// version), voids what may be in flight instead. Tells `announce` the order is pending after
    /// [`PENDING_ANSWER_AFTER`].
    async fn resolve(
        &self,
        request: Option<&ChargeRequest>,
        order: &Order,
        announce: &Announce,
    ) -> Resolution {
        let started = Instant::now();
        let unresolved = Unresolved::enter(self, &order.id);
        let mut pause = RESOLVE_PAUSE;
        loop {
            match self.payments.status(&order.id.0).await {
                Ok(ChargeStatus::Authorized { intent_id }) => {
                    return Resolution::Authorized {
                        intent_id,
                        captured: false,
                    };
                }
                Ok(ChargeStatus::Captured { intent_id }) => {
                    return Resolution::Authorized {
                        intent_id,
                        captured: true,
                    };
                }
                Ok(ChargeStatus::Declined) => {
                    return Resolution::Declined {
                        reason: "card declined".into(),
                    };
                }
                Ok(ChargeStatus::Voided) => return Resolution::Voided,
                Ok(ChargeStatus::Absent) => match request {
                    Some(request) => match self.payments.authorize(request).await {
                        PaymentResult::Authorized { intent_id } => {
                            return Resolution::Authorized {
                                intent_id,
                                captured: false,
                            };
                        }
                        PaymentResult::Declined { reason } => {
                            return Resolution::Declined { reason };
                        }
                        PaymentResult::Unknown { reason } | PaymentResult::NotSent { reason } => {
                            tracing::warn!(order_id = %order.id, %reason, "payment still unknown");
                        }
                    },
                    None if self.payments.void(&order.id.0, None).await => {
                        return Resolution::Voided;
                    }
                    None => {}
                },
                Ok(ChargeStatus::Processing) => {}
                Err(error) => {
                    tracing::warn!(order_id = %order.id, ?error, "payment status unavailable");
                }
            }
            if started.elapsed() >= PENDING_ANSWER_AFTER {
                announce.pending(order);
            }
            // A webhook about the order wakes it early.
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = unresolved.wake.notified() => {}
            }
            pause = (pause * 2).min(RESOLVE_PAUSE_MAX);
        }
    }

    /// Voids the payment of `order_id` (its intent `intent_id`, when known) until the provider says it is done
    /// (the seats stay reserved meanwhile); tells `waiting` the order is pending once the first attempts failed.
    async fn void_until_done(
        &self,
        order_id: &OrderId,
        intent_id: Option<&str>,
        waiting: Option<(&Announce, &Order)>,
    ) {
        let mut pause = RESOLVE_PAUSE;
        while !self.payments.void(&order_id.0, intent_id).await {
            if let Some((announce, order)) = waiting {
                announce.pending(order);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESOLVE_PAUSE_MAX);
        }
    }

    /// Captures the authorized intent of a confirmed order in the background, retrying until the provider
    /// answers, then removes its payment record and frees its slot.
    pub(super) fn spawn_capture(
        self: &Arc<Self>,
        order_id: OrderId,
        intent_id: String,
        slot: Option<PaymentSlot>,
    ) {
        let desk = self.clone();
        desk.metrics.captures_pending.increment(1.0);
        desk.captures_pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut pause = RESOLVE_PAUSE;
            loop {
                match desk.payments.capture(&order_id.0, &intent_id).await {
                    Ok(CaptureOutcome::Captured) => {
                        crate::crash::point("payment.captured");
                        break;
                    }
                    Ok(CaptureOutcome::Canceled) => {
                        // Only an authorization that expired (days) or was cancelled outside the node ends here.
                        tracing::error!(order_id = %order_id, intent_id, "tickets issued but the authorization is gone: nothing captured, needs reconciliation");
                        desk.metrics.captures_lost.increment(1);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(order_id = %order_id, ?error, "capture failed: retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RESOLVE_PAUSE_MAX);
                    }
                }
            }
            let _ = desk.journal_payment(&order_id, None);
            desk.metrics.captures_pending.decrement(1.0);
            desk.captures_pending.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }

    /// Ends an order recovered in flight whose payment record is `record` (`None`: journaled by an earlier
    /// version): resolves its payment, then tickets and a capture, or a release. An order `partly_sold` (some
    /// parts confirmed) was authorized: its other parts are confirmed.
    pub(super) async fn settle_recovered(
        self: &Arc<Self>,
        order: Order,
        concert: &ConcertHandle,
        parts: &[Part],
        record: Option<PaymentRecord>,
        partly_sold: bool,
        announce: &Announce,
    ) -> OrderOutcome {
        let id = order.id.clone();
        if partly_sold {
            let order = self.confirm(order, concert, parts).await?;
            match record {
                Some(PaymentRecord {
                    intent_id: Some(intent_id),
                    ..
                }) => self.spawn_capture(id, intent_id, None),
                // Free: nothing was asked of the provider.
                Some(record) if record.amount_cents == 0 => {
                    let _ = self.journal_payment(&id, None);
                }
                _ => self.capture_if_authorized(id),
            }
            return Ok(order);
        }
        let request = record.as_ref().map(|record| ChargeRequest {
            idempotency_key: order.id.0.to_string(),
            amount_cents: record.amount_cents,
            payment_method: record.payment_method.clone(),
        });
        let resolution = match &record {
            Some(record) if record.amount_cents == 0 => Resolution::Free,
            _ => self.resolve(request.as_ref(), &order, announce).await,
        };
        let record = record.unwrap_or(PaymentRecord {
            payment_method: String::new(),
            amount_cents: order.amount_cents,
            intent_id: None,
        });
        self.finish(order, concert, parts, record, resolution, None, announce)
            .await
    }

    /// Reads the payment of an order sold before a restart without an intent on record back, and captures it if
    /// it is only authorized.
    fn capture_if_authorized(self: &Arc<Self>, order_id: OrderId) {
        let desk = self.clone();
        tokio::spawn(async move {
            let mut pause = RESOLVE_PAUSE;
            let mut absent = 0;
            loop {
                match desk.payments.status(&order_id.0).await {
                    Ok(ChargeStatus::Authorized { intent_id }) => {
                        return desk.spawn_capture(order_id, intent_id, None);
                    }
                    Ok(ChargeStatus::Processing) | Err(_) => {}
                    // A provider's search may not show a new intent yet: asked again a while first.
                    Ok(ChargeStatus::Absent) if absent < ABSENT_READS_MAX => absent += 1,
                    Ok(status) => {
                        if !matches!(status, ChargeStatus::Captured { .. }) {
                            tracing::error!(order_id = %order_id, ?status, "sold before a restart, but its payment is not authorized: needs reconciliation");
                        }
                        let _ = desk.journal_payment(&order_id, None);
                        return;
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RESOLVE_PAUSE_MAX);
            }
        });
    }

    /// After a restart, once every order recovered in flight took its record: the payment records left belong
    /// to orders that are sold (their capture is resumed) or released (what they may have left authorized is
    /// voided); a record without an intent never reached the provider's answer and its order is gone: dropped.
    pub(super) fn resume_payments(self: &Arc<Self>) {
        let records = std::mem::take(&mut *self.recovered_payments.lock().expect("payments lock"));
        for (order_id, record) in records {
            let sold = self
                .book()
                .orders
                .get(&order_id)
                .is_some_and(|order| order.status == OrderStatus::Confirmed);
            match (record.intent_id, sold) {
                (Some(intent_id), true) => self.spawn_capture(order_id, intent_id, None),
                (Some(intent_id), false) => {
                    let desk = self.clone();
                    tokio::spawn(async move {
                        desk.void_until_done(&order_id, Some(&intent_id), None)
                            .await;
                        let _ = desk.journal_payment(&order_id, None);
                    });
                }
                (None, _) => {
                    let _ = self.journal_payment(&order_id, None);
                }
            }
        }
    }

    /// A webhook said the payment of `order_id` (its intent `intent_id`) changed; `holds_money` when the event
    /// says the intent is authorized or captured. The event is not trusted for what it says: an order being resolved reads its payment back now; a released order has its payment read back and
    /// voided if the provider holds an authorization or a capture for it (one that committed after the order gave
    /// up, say), the event's intent read by its id in case the search does not show it yet. Nothing else
    /// changes: a confirmed order's capture is already under way or done, an order in its flow is handled there,
    /// and an order this node does not know is not its to touch. At most [`WEBHOOK_CHECKS_MAX`] checks at once;
    /// beyond, the event is only logged. A read-back that fails is tried again, up to [`WEBHOOK_READS_MAX`] times.
    pub fn payment_event(
        self: &Arc<Self>,
        order_id: OrderId,
        intent_id: Option<String>,
        holds_money: bool,
    ) {
        if let Some((_, wake)) = self
            .unresolved
            .lock()
            .expect("unresolved lock")
            .get(&order_id)
        {
            wake.notify_one();
            return;
        }
        let released = self
            .book()
            .orders
            .get(&order_id)
            .is_some_and(|order| order.status == OrderStatus::Declined);
        // Only an event of money held (authorized, captured) can need a void; a cancel or a decline cannot.
        if !released || !holds_money {
            return;
        }
        let Ok(check) = self.webhook_checks.clone().try_acquire_owned() else {
            tracing::warn!(order_id = %order_id, "too many webhook checks at once: event only logged");
            return;
        };
        let desk = self.clone();
        tokio::spawn(async move {
            // The provider's answer to the event is not redelivered: a failed read is tried again, a few times.
            let mut pause = RESOLVE_PAUSE;
            for attempt in 1..=WEBHOOK_READS_MAX {
                match desk.payments.status(&order_id.0).await {
                    Ok(
                        ChargeStatus::Authorized { intent_id }
                        | ChargeStatus::Captured { intent_id },
                    ) => {
                        tracing::warn!(order_id = %order_id, "the provider holds a payment for a released order: voiding it");
                        desk.void_until_done(&order_id, Some(&intent_id), None)
                            .await;
                    }
                    // The search may not show the event's intent yet: the void reads it by its id.
                    Ok(_) if intent_id.is_some() => {
                        desk.void_until_done(&order_id, intent_id.as_deref(), None)
                            .await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(order_id = %order_id, ?error, attempt, "a webhook's order could not be read back");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RESOLVE_PAUSE_MAX);
                        continue;
                    }
                }
                break;
            }
            drop(check);
        });
    }

    /// Waits until every capture begun is answered, or `limit` has passed; whether none is left. A node stopping
    /// calls it first, so that a restart finds few captures to resume.
    pub async fn wait_for_captures(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.captures_pending.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Orders whose payment outcome is being resolved, by how long: `(under 10 s, 10 s to 1 min, 1 to 10 min,
    /// over 10 min)`.
    pub fn unresolved_payments_by_age(&self) -> [u64; 4] {
        let mut ages = [0; 4];
        for (started, _) in self.unresolved.lock().expect("unresolved lock").values() {
            let age = started.elapsed().as_secs();
            let bucket = match age {
                0..10 => 0,
                10..60 => 1,
                60..600 => 2,
                _ => 3,
            };
            ages[bucket] += 1;
        }
        ages
    }
}

/// An order counted among those being resolved while this lives.
struct Unresolved<'a> {
    desk: &'a Desk,
    order_id: OrderId,
    wake: Arc<Notify>,
}

impl<'a> Unresolved<'a> {
    fn enter(desk: &'a Desk, order_id: &OrderId) -> Self {
        let wake = Arc::new(Notify::new());
        desk.unresolved
            .lock()
            .expect("unresolved lock")
            .insert(order_id.clone(), (Instant::now(), wake.clone()));
        Self {
            desk,
            order_id: order_id.clone(),
            wake,
        }
    }
}

impl Drop for Unresolved<'_> {
    fn drop(&mut self) {
        self.desk
            .unresolved
            .lock()
            .expect("unresolved lock")
            .remove(&self.order_id);
    }
}

//! The order desk: owns every order and hold from the moment a shard accepts its reservation until it ends in
//! tickets or is released.
//!
//! Every flow runs in a task of its own, spawned here, never in the caller's future: FACTS.md measured that a
//! dropped caller future can skip an actor's handler or lose its reply, so a client that hangs up or times out
//! must not be able to cut an order in half. The caller awaits the task's outcome; with an `Idempotency-Key`
//! a repeated request waits for (or reads) the first outcome instead of ordering again.
//!
//! The book (orders, holds, idempotency keys, ticket tokens) sits behind one mutex held only for map updates,
//! never across an await. It guards bookkeeping, not inventory: inventory is only ever changed by shard actors.
//!
//! The book also enforces the per-user limits: at most `tickets_per_user_max` tickets of one concert held, being
//! paid for or sold to one user, and at most [`HOLDS_PER_USER_MAX`] live holds per user. A flow takes its tickets
//! of the user's allowance under the book lock before it reserves anything, and gives them back when the
//! reservation is released, so concurrent requests of one user can never pass the limit together. An active hold
//! is counted from its record while it has not expired, so a hold that the shard expires needs no bookkeeping.
//!
//! In a cluster every node runs a desk for its own users (their ids name the node, `UserId::home_node`): their
//! orders, holds, idempotency keys and limits are all here, whichever nodes own the shards they buy from. After a
//! restart the book is rebuilt from every node's shards; until then (`Desk::book_ready`), what needs it answers
//! `NodeUnavailable`. A card is charged only here, on its owner's node. When a shard of another node does not
//! answer the confirmation of a charged order, the order goes on confirming until that node is back: it never
//! ends charged without its tickets.

mod payment;
mod recovery;

pub use payment::PENDING_ANSWER_AFTER;
pub use recovery::InFlightOrder;

use payment::Announce;

use crate::clock::Clock;
use crate::concert::ConcertSpec;
use crate::error::EngineError;
use crate::ids::{ConcertId, HoldId, IdMap, OrderId, TicketId, UserId, ticket_token};
use crate::payment::{
    PaymentCard, PaymentJournal, PaymentPool, PaymentRecord, PaymentSlot, VaultedCard,
};
use crate::router::{ClaimRequest, ConcertHandle, Part, Router};
use crate::shard_state::{
    IdempotencyTag, IssuedTicket, OrderMeta, Purpose, ReleaseReason, StableHasher,
};
use futures_util::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest `Idempotency-Key` accepted (API.md).
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 64;
/// Idempotency keys remembered at most; the oldest are forgotten first.
pub const IDEMPOTENCY_KEYS_MAX: usize = 1_000_000;
/// How long an idempotency key, and a purchased hold, are remembered.
pub const IDEMPOTENCY_KEY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// How long an expired hold is still answered as `hold_expired` before it is forgotten.
pub const EXPIRED_HOLD_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Live holds (being reserved, or active and not expired) one user may have at once, over all concerts; beyond
/// that a new hold is refused as `HoldLimitReached` until one is purchased, cancelled or expires.
pub const HOLDS_PER_USER_MAX: u32 = 10;
/// First pause before a charged order asks a node that did not answer to confirm its part again; it doubles up
/// to [`CONFIRM_RETRY_DELAY_MAX`].
const CONFIRM_RETRY_DELAY: Duration = Duration::from_millis(200);
const CONFIRM_RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// `Desk::waiting_for` when the book is complete.
const WAITING_FOR_NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
pub struct DeskConfig {
    pub hold_ttl_ms: u64,
    pub tickets_per_order_max: u32,
    /// Tickets of one concert that one user may hold, be paying for and have bought, together; beyond that an
    /// order or hold is refused as `TicketLimitReached`.
    pub tickets_per_user_max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Declined,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: TicketId,
    pub token: Arc<str>,
    pub order_id: OrderId,
    pub concert_id: ConcertId,
    pub user_id: UserId,
    /// The seat label, for seated concerts.
    pub seat: Option<String>,
    pub shard: u32,
    pub checked_in_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub concert_id: ConcertId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub amount_cents: u64,
    pub tickets: Vec<Ticket>,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: HoldId,
    pub concert_id: ConcertId,
    pub user_id: UserId,
    pub quantity: u32,
    /// Seat labels, for seated concerts.
    pub seats: Vec<String>,
    pub expires_at_ms: u64,
    pub seated: bool,
}

/// What an order ended in; errors are domain outcomes such as `SoldOut` or `PaymentDeclined`.
pub type OrderOutcome = Result<Order, EngineError>;
type OutcomeReceiver = watch::Receiver<Option<OrderOutcome>>;
type OutcomeSender = watch::Sender<Option<OrderOutcome>>;

/// A request for tickets of one concert.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderRequest {
    pub concert_id: ConcertId,
    pub claim: ClaimRequest,
}

enum HoldState {
    Active,
    Purchasing {
        outcome: OutcomeReceiver,
        started_at_ms: u64,
    },
}

enum PurchaseStart {
    Started(Box<StartedPurchase>),
    AlreadyPurchasing(OutcomeReceiver),
}

struct StartedPurchase {
    sender: watch::Sender<Option<OrderOutcome>>,
    hold: Hold,
    parts: Vec<Part>,
    slot: PaymentSlot,
    payment_method: String,
}

struct HoldRecord {
    hold: Hold,
    parts: Vec<Part>,
    state: HoldState,
}

struct IdempotencyEntry {
    fingerprint: u64,
    outcome: KeyOutcome,
}

/// What became of the request first made under an idempotency key, as a repeat of it is answered.
enum KeyOutcome {
    /// Not final yet: a repeat waits on the first request's answer.
    Waiting(OutcomeReceiver),
    /// The order, as the book holds it now. Kept as its id rather than as the answer itself: a copy of every sold
    /// order and a channel per key were about a quarter of the memory a node kept per order.
    Order(OrderId),
    /// An error that does not free the key (a decline, say).
    Failed(EngineError),
}

impl KeyOutcome {
    /// What a request ended in, as its key keeps it.
    fn of(outcome: &OrderOutcome) -> Self {
        match outcome {
            Ok(order) => KeyOutcome::Order(order.id.clone()),
            Err(error) => KeyOutcome::Failed(error.clone()),
        }
    }
}

/// The earlier use of an idempotency key a repeated request is answered from.
enum Earlier {
    Waiting(OutcomeReceiver),
    Final(OrderOutcome),
}

/// What one user has claimed, for the per-user limits.
#[derive(Default)]
struct Quota {
    /// Per concert: tickets of orders being reserved, paid for or confirmed, of holds being reserved and of holds
    /// being purchased. Active holds are not in here: they count from their records while they have not expired.
    tickets: IdMap<ConcertId, u32>,
    /// Holds being reserved, which count against the hold limit before their records exist.
    holds_reserving: u32,
    /// This user's holds in the `Active` state, some perhaps expired (until the next sweep).
    active_holds: Vec<HoldId>,
}

impl Quota {
    fn is_empty(&self) -> bool {
        self.tickets.is_empty() && self.holds_reserving == 0 && self.active_holds.is_empty()
    }
}

#[derive(Default)]
struct Book {
    orders: IdMap<OrderId, Order>,
    orders_by_user: IdMap<UserId, Vec<OrderId>>,
    /// Ticket token to its order and position in the order.
    tickets_by_token: IdMap<Arc<str>, (OrderId, usize)>,
    holds: IdMap<HoldId, HoldRecord>,
    idempotency: HashMap<(UserId, String), IdempotencyEntry>,
    /// Keys in the order they were first used, with that time, so the oldest are forgotten first.
    idempotency_age: VecDeque<(u64, UserId, String)>,
    quotas: IdMap<UserId, Quota>,
}

impl Book {
    /// The active holds of `user` that have not expired at `now_ms`.
    fn live_holds<'a>(&'a self, user: &UserId, now_ms: u64) -> impl Iterator<Item = &'a Hold> {
        self.quotas
            .get(user)
            .into_iter()
            .flat_map(|quota| quota.active_holds.iter())
            .filter_map(|hold_id| self.holds.get(hold_id))
            .filter(move |record| {
                matches!(record.state, HoldState::Active) && record.hold.expires_at_ms > now_ms
            })
            .map(|record| &record.hold)
    }

    /// Tickets of `concert` that `user` holds, is paying for or has bought, and those being reserved for them.
    fn tickets_claimed(&self, user: &UserId, concert: &ConcertId, now_ms: u64) -> u32 {
        let committed = self
            .quotas
            .get(user)
            .and_then(|quota| quota.tickets.get(concert))
            .copied()
            .unwrap_or(0);
        let held: u32 = self
            .live_holds(user, now_ms)
            .filter(|hold| &hold.concert_id == concert)
            .map(|hold| hold.quantity)
            .sum();
        committed + held
    }

    /// Takes `quantity` tickets of `user`'s allowance for `concert`, or refuses if that would pass `max`.
    fn take_tickets(
        &mut self,
        user: &UserId,
        concert: &ConcertId,
        quantity: u32,
        max: u32,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        if self.tickets_claimed(user, concert, now_ms) + quantity > max {
            return Err(EngineError::TicketLimitReached { limit: max });
        }
        self.add_tickets(user, concert, quantity);
        Ok(())
    }

    /// Counts `quantity` more tickets for `user` without a check: they were counted already, as an active hold.
    fn add_tickets(&mut self, user: &UserId, concert: &ConcertId, quantity: u32) {
        *self
            .quotas
            .entry(user.clone())
            .or_default()
            .tickets
            .entry(concert.clone())
            .or_default() += quantity;
    }

    /// Gives back tickets taken for a reservation that was released or never made.
    fn give_back_tickets(&mut self, user: &UserId, concert: &ConcertId, quantity: u32) {
        let Some(quota) = self.quotas.get_mut(user) else {
            debug_assert!(false, "tickets given back by a user who took none");
            return;
        };
        if let Some(count) = quota.tickets.get_mut(concert) {
            debug_assert!(*count >= quantity, "a user gives back only tickets taken");
            *count = count.saturating_sub(quantity);
            if *count == 0 {
                quota.tickets.remove(concert);
            }
        } else {
            debug_assert!(
                quantity == 0,
                "tickets given back for a concert never taken"
            );
        }
        if quota.is_empty() {
            self.quotas.remove(user);
        }
    }

    /// Takes a hold's place and its tickets before the hold is reserved; see [`Book::hold_reserved`].
    fn take_hold(
        &mut self,
        user: &UserId,
        concert: &ConcertId,
        quantity: u32,
        tickets_max: u32,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let reserving = self
            .quotas
            .get(user)
            .map_or(0, |quota| quota.holds_reserving);
        let live = self.live_holds(user, now_ms).count() as u32;
        if live + reserving >= HOLDS_PER_USER_MAX {
            return Err(EngineError::HoldLimitReached {
                limit: HOLDS_PER_USER_MAX,
            });
        }
        self.take_tickets(user, concert, quantity, tickets_max, now_ms)?;
        self.quotas.entry(user.clone()).or_default().holds_reserving += 1;
        Ok(())
    }

    /// Ends a hold's reservation: the hold, if it was made, now counts from its record (inserted by the caller
    /// under the same lock), no longer as being reserved.
    fn hold_reserved(
        &mut self,
        user: &UserId,
        concert: &ConcertId,
        quantity: u32,
        hold_id: Option<HoldId>,
    ) {
        if let Some(quota) = self.quotas.get_mut(user) {
            debug_assert!(quota.holds_reserving > 0, "a hold being reserved was taken");
            quota.holds_reserving = quota.holds_reserving.saturating_sub(1);
            quota.active_holds.extend(hold_id);
        }
        self.give_back_tickets(user, concert, quantity);
    }

    /// Stops counting a hold as active: it was cancelled, or its purchase began (and its tickets now count there).
    fn forget_active_hold(&mut self, user: &UserId, hold_id: &HoldId) {
        if let Some(quota) = self.quotas.get_mut(user) {
            quota.active_holds.retain(|id| id != hold_id);
            if quota.is_empty() {
                self.quotas.remove(user);
            }
        }
    }

    /// Drops ids of holds that are no longer active or have expired from the users' lists.
    fn prune_active_holds(&mut self, now_ms: u64) {
        let holds = &self.holds;
        self.quotas.retain(|_, quota| {
            quota.active_holds.retain(|hold_id| {
                holds.get(hold_id).is_some_and(|record| {
                    matches!(record.state, HoldState::Active) && record.hold.expires_at_ms > now_ms
                })
            });
            !quota.is_empty()
        });
    }

    fn upsert_order(&mut self, order: &Order) {
        if !self.orders.contains_key(&order.id) {
            self.orders_by_user
                .entry(order.user_id.clone())
                .or_default()
                .push(order.id.clone());
        }
        for (position, ticket) in order.tickets.iter().enumerate() {
            self.tickets_by_token
                .insert(ticket.token.clone(), (order.id.clone(), position));
        }
        self.orders.insert(order.id.clone(), order.clone());
    }

    /// The request first made under `user`'s `key` ended in `outcome`: a repeat is answered from it from now on.
    /// An error that freed the key forgets it: nothing was charged and nothing stays reserved, so a retry with the
    /// same key places the order anew rather than read this answer again, however often it is told to retry.
    fn key_ended(&mut self, user: UserId, key: String, outcome: &OrderOutcome) {
        let book_key = (user, key);
        match outcome {
            Err(error) if error.frees_idempotency_key() => {
                self.idempotency.remove(&book_key);
            }
            _ => {
                if let Some(entry) = self.idempotency.get_mut(&book_key) {
                    entry.outcome = KeyOutcome::of(outcome);
                }
            }
        }
    }

    fn forget_oldest_keys(&mut self, now_ms: u64) {
        while let Some((created_at_ms, _, _)) = self.idempotency_age.front() {
            let expired = created_at_ms + IDEMPOTENCY_KEY_TTL_MS <= now_ms;
            if !expired && self.idempotency_age.len() <= IDEMPOTENCY_KEYS_MAX {
                break;
            }
            let (_, user, key) = self.idempotency_age.pop_front().expect("front exists");
            self.idempotency.remove(&(user, key));
        }
    }
}

pub struct Desk {
    router: Arc<Router>,
    payments: Arc<PaymentPool>,
    payment_journal: Arc<dyn PaymentJournal>,
    /// Payment records read back at a restart, until the orders they belong to take them (`desk::payment`).
    recovered_payments: Mutex<HashMap<OrderId, PaymentRecord>>,
    /// Orders whose payment outcome is being resolved: since when, and how to wake their resolver (a webhook).
    unresolved: Mutex<HashMap<OrderId, (Instant, Arc<tokio::sync::Notify>)>>,
    /// Captures begun and not answered yet.
    captures_pending: AtomicUsize,
    /// Checks of released orders that webhooks asked for, in flight (`Desk::payment_event`).
    webhook_checks: Arc<tokio::sync::Semaphore>,
    clock: Arc<dyn Clock>,
    config: DeskConfig,
    book: Mutex<Book>,
    /// False while a restarted cluster node still reads its users' orders and holds back from other nodes.
    book_ready: AtomicBool,
    /// The node it still waits for then, or [`WAITING_FOR_NONE`].
    waiting_for: AtomicU32,
    metrics: OrderMetrics,
}

impl Desk {
    pub fn new(
        router: Arc<Router>,
        payments: Arc<PaymentPool>,
        payment_journal: Arc<dyn PaymentJournal>,
        clock: Arc<dyn Clock>,
        config: DeskConfig,
    ) -> Self {
        assert!(config.hold_ttl_ms > 0, "holds last a while");
        assert!(
            config.tickets_per_order_max > 0,
            "an order can have tickets"
        );
        assert!(config.tickets_per_user_max > 0, "a user can have tickets");
        Self {
            router,
            payments,
            payment_journal,
            recovered_payments: Mutex::default(),
            unresolved: Mutex::default(),
            captures_pending: AtomicUsize::new(0),
            webhook_checks: Arc::new(tokio::sync::Semaphore::new(payment::WEBHOOK_CHECKS_MAX)),
            clock,
            config,
            book: Mutex::new(Book::default()),
            book_ready: AtomicBool::new(true),
            waiting_for: AtomicU32::new(WAITING_FOR_NONE),
            metrics: OrderMetrics::register(),
        }
    }

    /// Whether `user` belongs to this node: every user outside a cluster, else the users whose id names it.
    pub fn is_local_user(&self, user: &UserId) -> bool {
        !self.router.is_clustered() || user.home_node() == Some(self.router.node())
    }

    /// Marks the book incomplete, waiting for node `node`: from now until [`Desk::set_book_ready`], everything
    /// that reads or changes it answers `NodeUnavailable`.
    pub fn set_book_waiting_for(&self, node: u32) {
        self.waiting_for.store(node, Ordering::Release);
        self.book_ready.store(false, Ordering::Release);
    }

    pub fn set_book_ready(&self) {
        self.waiting_for.store(WAITING_FOR_NONE, Ordering::Release);
        self.book_ready.store(true, Ordering::Release);
    }

    /// `Ok` when the book holds every order and hold of this node's users; else `Recovering` while it is being
    /// read, or `NodeUnavailable` for the node it waits for.
    pub fn book_ready(&self) -> Result<(), EngineError> {
        if self.book_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let node = self.waiting_for.load(Ordering::Acquire);
        if node == self.router.node() {
            return Err(EngineError::Recovering);
        }
        Err(EngineError::NodeUnavailable { node })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn config(&self) -> DeskConfig {
        self.config
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().expect("book lock")
    }

    fn concert_for(&self, request: &OrderRequest) -> Result<Arc<ConcertHandle>, EngineError> {
        let concert = self
            .router
            .concert(&request.concert_id)
            .ok_or(EngineError::ConcertNotFound)?;
        let max = self.config.tickets_per_order_max;
        match &request.claim {
            ClaimRequest::Quantity(quantity) if *quantity == 0 || *quantity > max => Err(
                EngineError::invalid("quantity", format!("must be 1 to {max}")),
            ),
            ClaimRequest::Seats(seats) if seats.is_empty() || seats.len() > max as usize => Err(
                EngineError::invalid("seats", format!("must list 1 to {max} seats")),
            ),
            ClaimRequest::Seats(_) if !concert.spec.is_seated() => Err(EngineError::invalid(
                "seats",
                "this is a general-admission concert: ask for a quantity",
            )),
            _ => Ok(concert),
        }
    }

    /// Hands `card` to the payment provider's vault (through the payment pool: a slot and its deadline): what a
    /// user's card must pass before it is stored; the node keeps the payment method id it answers.
    pub async fn vault_card(&self, card: PaymentCard) -> Result<VaultedCard, EngineError> {
        self.payments.vault_card(card).await
    }

    /// Reserves, charges and confirms an order; see the module comment for what happens when the caller leaves.
    pub async fn place_order(
        self: &Arc<Self>,
        user: &UserId,
        payment_method: Option<String>,
        request: OrderRequest,
        idempotency_key: Option<String>,
    ) -> OrderOutcome {
        self.book_ready()?;
        let concert = self.concert_for(&request)?;
        let payment_method = payment_method.ok_or(EngineError::CardRequired)?;
        let fingerprint = fingerprint(&("order", &request));
        let (desk, owner) = (self.clone(), user.clone());
        self.idempotent(user, idempotency_key, fingerprint, move |tag, announce| {
            desk.order_flow(owner, payment_method, concert, request.claim, tag, announce)
        })
        .await
    }

    async fn order_flow(
        self: Arc<Self>,
        user: UserId,
        payment_method: String,
        concert: Arc<ConcertHandle>,
        claim: ClaimRequest,
        idempotency: Option<IdempotencyTag>,
        announce: Announce,
    ) -> OrderOutcome {
        let started = Instant::now();
        let outcome = async {
            let slot = self.payments.admit()?;
            let order_id = OrderId::random();
            let meta = OrderMeta {
                created_at_ms: self.clock.now_ms(),
                idempotency,
            };
            let quantity = claimed_tickets(&claim);
            self.book().take_tickets(
                &user,
                &concert.spec.id,
                quantity,
                self.config.tickets_per_user_max,
                meta.created_at_ms,
            )?;
            let purpose = Purpose::Order {
                order_id: order_id.clone(),
                meta: meta.clone(),
            };
            let record = PaymentRecord {
                payment_method,
                amount_cents: concert.spec.price_cents * u64::from(quantity),
                intent_id: None,
            };
            // Ahead of the reservation in the same log, so that a restart knows how to resolve any authorization
            // asked for it; awaited before the provider is asked (at once when the reservation was local).
            let recorded = match self.journal_payment(&order_id, Some(&record)) {
                Ok(commit) => commit,
                Err(error) => {
                    self.book()
                        .give_back_tickets(&user, &concert.spec.id, quantity);
                    return Err(error);
                }
            };
            let parts = match concert.reserve(&user, &claim, purpose).await {
                Ok(parts) => parts,
                Err(error) => {
                    let _ = self.journal_payment(&order_id, None);
                    self.book()
                        .give_back_tickets(&user, &concert.spec.id, quantity);
                    return Err(error);
                }
            };
            debug_assert_eq!(quantity, parts_tickets(&parts), "a claim is granted whole");
            let order = pending_order(order_id, &concert.spec, &user, &parts, &meta);
            debug_assert_eq!(order.amount_cents, record.amount_cents);
            self.book().upsert_order(&order);
            self.settle(
                order,
                &concert,
                &parts,
                (record, recorded),
                Some(slot),
                &announce,
            )
            .await
        }
        .await;
        self.metrics.record(&outcome, started);
        outcome
    }

    async fn confirm(
        &self,
        mut order: Order,
        concert: &ConcertHandle,
        parts: &[Part],
    ) -> OrderOutcome {
        let issued: Vec<Vec<IssuedTicket>> = parts
            .iter()
            .map(|part| {
                (0..part.quantity)
                    .map(|_| IssuedTicket {
                        ticket_id: TicketId::random(),
                        token: ticket_token(),
                        seat: None,
                    })
                    .collect()
            })
            .collect();
        let new_tickets: Vec<Ticket> = parts
            .iter()
            .zip(&issued)
            .flat_map(|(part, tickets)| {
                tickets.iter().enumerate().map(|(position, ticket)| Ticket {
                    id: ticket.ticket_id.clone(),
                    token: ticket.token.clone(),
                    order_id: order.id.clone(),
                    concert_id: order.concert_id.clone(),
                    user_id: order.user_id.clone(),
                    seat: part
                        .seats
                        .get(position)
                        .and_then(|seat| concert.spec.seat_label(*seat)),
                    shard: part.shard,
                    checked_in_at_ms: None,
                })
            })
            .collect();
        // Tickets of parts sold before a restart stay in the order.
        order.tickets.extend(new_tickets);
        let mut delay = CONFIRM_RETRY_DELAY;
        loop {
            match concert.confirm(parts, &order.id, issued.clone()).await {
                Ok(()) => break,
                Err(
                    error @ (EngineError::NodeUnavailable { .. }
                    | EngineError::Overloaded
                    | EngineError::Recovering
                    | EngineError::Unavailable),
                ) if concert
                    .placement
                    .iter()
                    .any(|node| *node != self.router.node()) =>
                {
                    // Charged: the parts stay reserved, and confirming is idempotent. Keep at it until every node
                    // that owns a part takes it.
                    tracing::warn!(order_id = %order.id, %error, "charged order waits to confirm its parts");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(CONFIRM_RETRY_DELAY_MAX);
                }
                Err(error) => return Err(error),
            }
        }
        order.status = OrderStatus::Confirmed;
        sort_tickets(&mut order.tickets, &concert.spec);
        self.book().upsert_order(&order);
        Ok(order)
    }

    /// Holds seats or tickets for the configured time.
    pub async fn place_hold(
        self: &Arc<Self>,
        user: &UserId,
        request: OrderRequest,
    ) -> Result<Hold, EngineError> {
        self.book_ready()?;
        let concert = self.concert_for(&request)?;
        let desk = self.clone();
        let user = user.clone();
        spawn_owned(async move {
            let hold_id = HoldId::random();
            let now_ms = desk.clock.now_ms();
            let expires_at_ms = now_ms + desk.config.hold_ttl_ms;
            let quantity = claimed_tickets(&request.claim);
            let concert_id = &concert.spec.id;
            desk.book().take_hold(
                &user,
                concert_id,
                quantity,
                desk.config.tickets_per_user_max,
                now_ms,
            )?;
            let purpose = Purpose::Hold {
                hold_id: hold_id.clone(),
                expires_at_ms,
            };
            let parts = match concert.reserve(&user, &request.claim, purpose).await {
                Ok(parts) => parts,
                Err(error) => {
                    desk.book().hold_reserved(&user, concert_id, quantity, None);
                    return Err(error);
                }
            };
            debug_assert_eq!(quantity, parts_tickets(&parts), "a claim is granted whole");
            let hold = Hold {
                id: hold_id.clone(),
                concert_id: concert.spec.id.clone(),
                user_id: user,
                quantity: parts.iter().map(|part| part.quantity).sum(),
                seats: parts
                    .iter()
                    .flat_map(|part| part.seats.iter())
                    .filter_map(|seat| concert.spec.seat_label(*seat))
                    .collect(),
                expires_at_ms,
                seated: concert.spec.is_seated(),
            };
            let mut book = desk.book();
            book.holds.insert(
                hold_id.clone(),
                HoldRecord {
                    hold: hold.clone(),
                    parts,
                    state: HoldState::Active,
                },
            );
            book.hold_reserved(&hold.user_id, concert_id, quantity, Some(hold_id));
            Ok(hold)
        })
        .await
    }

    /// Releases a hold of `user` that is neither expired nor being purchased.
    pub async fn cancel_hold(
        self: &Arc<Self>,
        user: &UserId,
        hold_id: &HoldId,
    ) -> Result<(), EngineError> {
        self.book_ready()?;
        let now_ms = self.clock.now_ms();
        let (concert_id, parts) = {
            let mut book = self.book();
            let record = book
                .holds
                .get(hold_id)
                .filter(|record| &record.hold.user_id == user)
                .ok_or(EngineError::HoldNotFound)?;
            if let HoldState::Purchasing { outcome, .. } = &record.state {
                // A purchase that has ended sold or released the seats: the hold no longer exists. One still
                // pending (its payment being resolved) holds them.
                let ended = outcome.borrow().as_ref().is_some_and(
                    |answer| !matches!(answer, Ok(order) if order.status == OrderStatus::Pending),
                );
                return Err(if ended {
                    EngineError::HoldNotFound
                } else {
                    EngineError::HoldNotActive
                });
            }
            if record.hold.expires_at_ms <= now_ms {
                // The shard released it already; the record stays so that a purchase still reads "expired".
                return Err(EngineError::HoldNotFound);
            }
            let record = book.holds.remove(hold_id).expect("record found above");
            book.forget_active_hold(user, hold_id);
            (record.hold.concert_id, record.parts)
        };
        let concert = self
            .router
            .concert(&concert_id)
            .ok_or(EngineError::ConcertNotFound)?;
        spawn_owned(async move { concert.release(&parts, ReleaseReason::Cancelled).await }).await
    }

    pub fn hold(&self, hold_id: &HoldId) -> Option<Hold> {
        self.book()
            .holds
            .get(hold_id)
            .map(|record| record.hold.clone())
    }

    /// Pays for a hold. A second purchase of the same hold returns the first one's outcome.
    pub async fn purchase_hold(
        self: &Arc<Self>,
        user: &UserId,
        payment_method: Option<String>,
        hold_id: &HoldId,
        idempotency_key: Option<String>,
    ) -> OrderOutcome {
        self.book_ready()?;
        let fingerprint = fingerprint(&("purchase", hold_id));
        let (desk, owner, hold_id) = (self.clone(), user.clone(), hold_id.clone());
        self.idempotent(user, idempotency_key, fingerprint, move |tag, announce| {
            desk.purchase_flow(owner, payment_method, hold_id, tag, announce)
        })
        .await
    }

    async fn purchase_flow(
        self: Arc<Self>,
        user: UserId,
        payment_method: Option<String>,
        hold_id: HoldId,
        idempotency: Option<IdempotencyTag>,
        announce: Announce,
    ) -> OrderOutcome {
        let started = Instant::now();
        let now_ms = self.clock.now_ms();
        let (sender, record_hold, parts, slot, payment_method) =
            match self.begin_hold_purchase(&user, &hold_id, payment_method, now_ms)? {
                PurchaseStart::Started(started) => {
                    let StartedPurchase {
                        sender,
                        hold,
                        parts,
                        slot,
                        payment_method,
                    } = *started;
                    (sender, hold, parts, slot, payment_method)
                }
                PurchaseStart::AlreadyPurchasing(outcome) => return wait_outcome(outcome).await,
            };
        let announce = announce.and(sender.clone());
        let begun = async {
            let concert = self
                .router
                .concert(&record_hold.concert_id)
                .ok_or(EngineError::ConcertNotFound)?;
            let order_id = OrderId::random();
            let meta = OrderMeta {
                created_at_ms: now_ms,
                idempotency,
            };
            let record = PaymentRecord {
                payment_method,
                amount_cents: concert.spec.price_cents * u64::from(parts_tickets(&parts)),
                intent_id: None,
            };
            // Ahead of the purchase's reservation, as an order's (see `order_flow`).
            let recorded = self.journal_payment(&order_id, Some(&record))?;
            if let Err(error) = concert
                .begin_purchase(&parts, &user, &order_id, &meta)
                .await
            {
                let _ = self.journal_payment(&order_id, None);
                return Err(error);
            }
            Ok((concert, order_id, meta, record, recorded))
        }
        .await;
        let outcome = match begun {
            Ok((concert, order_id, meta, record, recorded)) => {
                let order = pending_order(order_id, &concert.spec, &user, &parts, &meta);
                self.book().upsert_order(&order);
                self.settle(
                    order,
                    &concert,
                    &parts,
                    (record, recorded),
                    Some(slot),
                    &announce,
                )
                .await
            }
            Err(error) => {
                self.book()
                    .give_back_tickets(&user, &record_hold.concert_id, record_hold.quantity);
                Err(error)
            }
        };
        // A failed purchase released the seats: the hold is over whatever the outcome. The record stays (as ended)
        // so that a repeated purchase answers the same outcome and a cancel answers 404.
        if outcome.is_err()
            && let Some(record) = self.book().holds.get_mut(&hold_id)
            && matches!(record.state, HoldState::Purchasing { .. })
        {
            record.parts.clear();
        }
        let _ = sender.send(Some(outcome.clone()));
        self.metrics.record(&outcome, started);
        outcome
    }

    /// Marks an active hold as being purchased, under the book lock, so that a second purchase waits for this one.
    fn begin_hold_purchase(
        &self,
        user: &UserId,
        hold_id: &HoldId,
        payment_method: Option<String>,
        now_ms: u64,
    ) -> Result<PurchaseStart, EngineError> {
        let mut book = self.book();
        let record = book
            .holds
            .get_mut(hold_id)
            .filter(|record| &record.hold.user_id == user)
            .ok_or(EngineError::HoldNotFound)?;
        if let HoldState::Purchasing { outcome, .. } = &record.state {
            return Ok(PurchaseStart::AlreadyPurchasing(outcome.clone()));
        }
        if record.hold.expires_at_ms <= now_ms {
            return Err(EngineError::HoldExpired);
        }
        let payment_method = payment_method.ok_or(EngineError::CardRequired)?;
        let slot = self.payments.admit()?;
        let (sender, receiver) = watch::channel(None);
        record.state = HoldState::Purchasing {
            outcome: receiver,
            started_at_ms: now_ms,
        };
        let started = StartedPurchase {
            sender,
            hold: record.hold.clone(),
            parts: record.parts.clone(),
            slot,
            payment_method,
        };
        // The hold's tickets stop counting as an active hold and count as being paid for, in one step.
        book.forget_active_hold(user, hold_id);
        book.add_tickets(user, &started.hold.concert_id, started.hold.quantity);
        Ok(PurchaseStart::Started(Box::new(started)))
    }

    pub fn order(&self, order_id: &OrderId) -> Option<Order> {
        self.book().orders.get(order_id).cloned()
    }

    /// Every ticket `user` owns, oldest order first.
    pub fn tickets_of(&self, user: &UserId) -> Vec<Ticket> {
        let book = self.book();
        let Some(order_ids) = book.orders_by_user.get(user) else {
            return Vec::new();
        };
        let mut orders: Vec<&Order> = order_ids
            .iter()
            .filter_map(|id| book.orders.get(id))
            .filter(|order| order.status == OrderStatus::Confirmed)
            .collect();
        orders.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        orders
            .into_iter()
            .flat_map(|order| order.tickets.iter().cloned())
            .collect()
    }

    /// One ticket of `user`'s confirmed orders.
    pub fn ticket_of(&self, user: &UserId, ticket_id: &TicketId) -> Option<Ticket> {
        let book = self.book();
        book.orders_by_user
            .get(user)?
            .iter()
            .filter_map(|id| book.orders.get(id))
            .filter(|order| order.status == OrderStatus::Confirmed)
            .find_map(|order| order.tickets.iter().find(|ticket| &ticket.id == ticket_id))
            .cloned()
    }

    /// Marks the ticket with this token as used, once.
    pub async fn check_in(self: &Arc<Self>, token: &str) -> Result<Ticket, EngineError> {
        self.book_ready()?;
        let ticket = {
            let book = self.book();
            let (order_id, position) = book
                .tickets_by_token
                .get(token)
                .ok_or(EngineError::UnknownTicket)?;
            book.orders[order_id].tickets[*position].clone()
        };
        let concert = self
            .router
            .concert(&ticket.concert_id)
            .ok_or(EngineError::UnknownTicket)?;
        let desk = self.clone();
        spawn_owned(async move {
            let at_ms = concert.check_in(ticket.shard, &ticket.id).await?;
            let mut book = desk.book();
            let order = book
                .orders
                .get_mut(&ticket.order_id)
                .expect("a ticket's order stays in the book");
            let stored = order
                .tickets
                .iter_mut()
                .find(|stored| stored.id == ticket.id)
                .expect("a ticket stays in its order");
            stored.checked_in_at_ms = Some(at_ms);
            Ok(stored.clone())
        })
        .await
    }

    /// Forgets old idempotency keys and holds that ended long ago; called periodically.
    pub fn sweep(&self) {
        let now_ms = self.clock.now_ms();
        let mut book = self.book();
        book.forget_oldest_keys(now_ms);
        book.holds.retain(|_, record| match &record.state {
            HoldState::Active => record.hold.expires_at_ms + EXPIRED_HOLD_RETENTION_MS > now_ms,
            HoldState::Purchasing { started_at_ms, .. } => {
                started_at_ms + IDEMPOTENCY_KEY_TTL_MS > now_ms
            }
        });
        book.prune_active_holds(now_ms);
    }

    /// Tickets of `concert` that `user` holds, is paying for or has bought: what the per-user limit counts.
    pub fn tickets_claimed(&self, user: &UserId, concert: &ConcertId) -> u32 {
        self.book()
            .tickets_claimed(user, concert, self.clock.now_ms())
    }

    /// Live holds of `user`, over all concerts, including those being reserved: what the hold limit counts.
    pub fn holds_claimed(&self, user: &UserId) -> u32 {
        let book = self.book();
        let reserving = book
            .quotas
            .get(user)
            .map_or(0, |quota| quota.holds_reserving);
        book.live_holds(user, self.clock.now_ms()).count() as u32 + reserving
    }

    /// Records a first use of `key`, or returns the earlier use's outcome; a different request under it is refused.
    fn claim_idempotency_key(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: u64,
    ) -> Result<Result<watch::Sender<Option<OrderOutcome>>, Earlier>, EngineError> {
        let mut book = self.book();
        let book_key = (user.clone(), key.to_owned());
        if let Some(entry) = book.idempotency.get(&book_key) {
            if entry.fingerprint != fingerprint {
                return Err(EngineError::IdempotencyKeyReused);
            }
            let earlier = match &entry.outcome {
                KeyOutcome::Waiting(receiver) => Earlier::Waiting(receiver.clone()),
                KeyOutcome::Order(order_id) => Earlier::Final(
                    book.orders
                        .get(order_id)
                        .cloned()
                        .ok_or(EngineError::Unavailable),
                ),
                KeyOutcome::Failed(error) => Earlier::Final(Err(error.clone())),
            };
            return Ok(Err(earlier));
        }
        let (sender, receiver) = watch::channel(None);
        book.idempotency.insert(
            book_key,
            IdempotencyEntry {
                fingerprint,
                outcome: KeyOutcome::Waiting(receiver),
            },
        );
        let now_ms = self.clock.now_ms();
        book.idempotency_age
            .push_back((now_ms, user.clone(), key.to_owned()));
        book.forget_oldest_keys(now_ms);
        Ok(Ok(sender))
    }

    /// Runs `work` in its own task; with a key, a repeated request gets the first outcome instead. The caller
    /// waits for the outcome, or for the order pending (its payment outcome unknown past
    /// [`PENDING_ANSWER_AFTER`]) while the task goes on resolving it; a repeat then reads the pending order, and
    /// the final outcome once there is one.
    async fn idempotent<F, Fut>(
        self: &Arc<Self>,
        user: &UserId,
        key: Option<String>,
        fingerprint: u64,
        work: F,
    ) -> OrderOutcome
    where
        F: FnOnce(Option<IdempotencyTag>, Announce) -> Fut,
        Fut: Future<Output = OrderOutcome> + Send + 'static,
    {
        let (sender, receiver, tag) = match key {
            None => {
                let (sender, receiver) = watch::channel(None);
                (sender, receiver, None)
            }
            Some(key) => match self.claim_idempotency_key(user, &key, fingerprint)? {
                Ok(sender) => {
                    let receiver = sender.subscribe();
                    let tag = IdempotencyTag { key, fingerprint };
                    (sender, receiver, Some(tag))
                }
                Err(Earlier::Waiting(earlier)) => return wait_outcome(earlier).await,
                Err(Earlier::Final(outcome)) => return outcome,
            },
        };
        self.spawn_work(user, tag, sender, work);
        wait_outcome(receiver).await
    }

    /// Runs an order's `work` in a task of its own and publishes its outcome to `sender`. `FutureExt::map` rather
    /// than an `async` block that awaits `work`: such a block keeps the captured future and the one it awaits
    /// apart, so an order's task was 4,992 bytes and is 2,520 now (Rust 1.95, release), and a burst of 10,000
    /// orders peaks about 30 MB lower (docs/performance.md).
    fn spawn_work<F, Fut>(
        self: &Arc<Self>,
        user: &UserId,
        tag: Option<IdempotencyTag>,
        sender: OutcomeSender,
        work: F,
    ) where
        F: FnOnce(Option<IdempotencyTag>, Announce) -> Fut,
        Fut: Future<Output = OrderOutcome> + Send + 'static,
    {
        let (desk, user) = (self.clone(), user.clone());
        let key = tag.as_ref().map(|tag| tag.key.clone());
        let work = work(tag, Announce::to(sender.clone()));
        tokio::spawn(work.map(move |outcome| {
            if let Some(key) = key {
                desk.book().key_ended(user, key, &outcome);
            }
            sender.send_replace(Some(outcome));
        }));
    }
}

/// Runs `work` in a task of its own so that it finishes even if the caller stops waiting.
async fn spawn_owned<T: Send + 'static>(
    work: impl Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::spawn(work).await.unwrap_or_else(|join_error| {
        tracing::error!(%join_error, "order task failed");
        Err(EngineError::Unavailable)
    })
}

async fn wait_outcome(mut outcome: OutcomeReceiver) -> OrderOutcome {
    match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone().expect("waited for a value"),
        Err(_) => Err(EngineError::Unavailable),
    }
}

/// Tickets a claim asks for; a granted claim is granted whole.
fn claimed_tickets(claim: &ClaimRequest) -> u32 {
    match claim {
        ClaimRequest::Quantity(quantity) => *quantity,
        ClaimRequest::Seats(seats) => seats.len() as u32,
    }
}

fn parts_tickets(parts: &[Part]) -> u32 {
    parts.iter().map(|part| part.quantity).sum()
}

/// An order of `parts` that is being paid for.
fn pending_order(
    id: OrderId,
    spec: &ConcertSpec,
    user: &UserId,
    parts: &[Part],
    meta: &OrderMeta,
) -> Order {
    let quantity: u64 = parts.iter().map(|part| u64::from(part.quantity)).sum();
    Order {
        id,
        concert_id: spec.id.clone(),
        user_id: user.clone(),
        status: OrderStatus::Pending,
        amount_cents: spec.price_cents * quantity,
        tickets: Vec::new(),
        created_at_ms: meta.created_at_ms,
    }
}

/// Puts an order's tickets in the one order they are always shown in, before and after a restart: by shard, then
/// seat, then id.
fn sort_tickets(tickets: &mut [Ticket], spec: &ConcertSpec) {
    tickets.sort_by_cached_key(|ticket| {
        let seat = ticket
            .seat
            .as_deref()
            .and_then(|label| spec.seat_index(label));
        (ticket.shard, seat, ticket.id.clone())
    });
}

/// A stable hash of a request, stored with its idempotency key in the journal.
fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = StableHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The order metrics' handles, registered once when the desk is made: recording through a handle skips the
/// registry's lookup of the series (a hash of its name and labels under a lock), which every order paid twice.
struct OrderMetrics {
    confirmed: metrics::Counter,
    sold_out: metrics::Counter,
    seat_taken: metrics::Counter,
    declined: metrics::Counter,
    overloaded: metrics::Counter,
    hold_expired: metrics::Counter,
    ticket_limit_reached: metrics::Counter,
    error: metrics::Counter,
    latency: metrics::Histogram,
    /// Confirmed orders whose capture has not been answered yet.
    captures_pending: metrics::Gauge,
    /// Confirmed orders whose authorization was gone at capture.
    captures_lost: metrics::Counter,
}

impl OrderMetrics {
    fn register() -> Self {
        let outcome =
            |label: &'static str| metrics::counter!("boxoffice_orders_total", "outcome" => label);
        Self {
            confirmed: outcome("confirmed"),
            sold_out: outcome("sold_out"),
            seat_taken: outcome("seat_taken"),
            declined: outcome("declined"),
            overloaded: outcome("overloaded"),
            hold_expired: outcome("hold_expired"),
            ticket_limit_reached: outcome("ticket_limit_reached"),
            error: outcome("error"),
            latency: metrics::histogram!("boxoffice_order_latency_seconds"),
            captures_pending: metrics::gauge!("boxoffice_payment_captures_pending"),
            captures_lost: metrics::counter!("boxoffice_payment_captures_lost_total"),
        }
    }

    fn record(&self, outcome: &OrderOutcome, started: Instant) {
        let counter = match outcome {
            Ok(_) => &self.confirmed,
            Err(EngineError::SoldOut) => &self.sold_out,
            Err(EngineError::SeatTaken { .. }) => &self.seat_taken,
            Err(EngineError::PaymentDeclined { .. }) => &self.declined,
            Err(EngineError::Overloaded) => &self.overloaded,
            Err(EngineError::HoldExpired) => &self.hold_expired,
            Err(EngineError::TicketLimitReached { .. }) => &self.ticket_limit_reached,
            Err(_) => &self.error,
        };
        counter.increment(1);
        self.latency.record(started.elapsed().as_secs_f64());
    }
}

//! Rebuilding the desk's book after a restart, and settling what the crash left in flight.
//!
//! The shard states recovered from snapshots and the journal hold everything the book needs: sold tickets with
//! their orders' meta (when placed, under which `Idempotency-Key`), live holds, and reservations that were being
//! paid for. Such an order's payment outcome was lost with the process, so it is resolved as an unknown outcome is
//! (`desk::payment`), from its journaled payment record: the provider is asked what became of the payment under the
//! order's id (and asked again under the same key when it has none); authorized means tickets and a capture,
//! declined or voided means the tickets go back on sale. The payment records left once every such order took its
//! own are resumed: a sold order's capture, a released order's authorization voided. Never a capture without
//! tickets, never tickets without an authorization.
//!
//! The per-user allowances are rebuilt from the same states: sold tickets and tickets being paid for count for
//! their owners, and holds count again from their records while they have not expired.
//!
//! In a cluster a node keeps the book of its own users only, and their shards may live on any node: the book is
//! rebuilt from every node's view of its shards ([`ShardBookView`], the tickets and reservations of this node's
//! users), gathered for each concert before anything is settled, since one order's parts can sit on several
//! nodes. An order caught between its parts' confirmations (some sold, some still being paid for) is settled as
//! one order: approved, its remaining parts are sold too.

use super::{
    Announce, Book, Desk, Hold, HoldRecord, HoldState, IdempotencyEntry, KeyOutcome, Order,
    OrderOutcome, OrderStatus, Ticket, parts_tickets, pending_order, sort_tickets,
};
use crate::concert::ConcertSpec;
use crate::error::EngineError;
use crate::ids::{ConcertId, HoldId, OrderId, UserId};
use crate::payment::PaymentRecord;
use crate::router::Part;
use crate::shard_state::{OrderMeta, Purpose, ShardBookView, ShardState};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Orders recovered in flight whose first answer (final, or pending) recovery waits for at once at most.
pub const SETTLE_IN_FLIGHT_MAX: usize = 1024;

/// An order whose payment was under way when the node stopped; [`Desk::settle_in_flight`] ends it.
pub struct InFlightOrder {
    concert_id: ConcertId,
    order: Order,
    /// Parts still reserved, being paid for.
    parts: Vec<Part>,
    /// Tickets of parts sold before the stop.
    sold: Vec<Ticket>,
    hold_id: Option<HoldId>,
    /// The order's idempotency key, if it had one.
    key: Option<String>,
    outcome: watch::Sender<Option<OrderOutcome>>,
    /// Its journaled payment step (`None` when an earlier version journaled the order).
    payment: Option<PaymentRecord>,
}

impl InFlightOrder {
    pub fn order_id(&self) -> &OrderId {
        &self.order.id
    }
}

/// What one concert's shards hold, grouped the way the book keeps it.
#[derive(Default)]
struct Gathered {
    sold: BTreeMap<OrderId, (Order, OrderMeta)>,
    holds: BTreeMap<HoldId, (UserId, u64, Vec<Part>)>,
    paying: BTreeMap<OrderId, Paying>,
}

/// The reservations of one order that was being paid for.
struct Paying {
    owner: UserId,
    meta: OrderMeta,
    /// The hold it purchases, and when that hold was to expire.
    hold: Option<(HoldId, u64)>,
    parts: Vec<Part>,
}

impl Gathered {
    fn from_views(spec: &ConcertSpec, views: &[ShardBookView]) -> Self {
        let mut gathered = Self::default();
        for view in views {
            let shard = view.shard;
            let (start, _) = spec.shard_range(shard);
            for (ticket_id, record) in &view.tickets {
                let (order, _) =
                    gathered
                        .sold
                        .entry(record.order_id.clone())
                        .or_insert_with(|| {
                            let meta = view
                                .orders
                                .iter()
                                .find(|(id, _)| id == &record.order_id)
                                .map(|(_, meta)| meta.clone())
                                .unwrap_or_default();
                            let order = Order {
                                id: record.order_id.clone(),
                                concert_id: spec.id.clone(),
                                user_id: record.owner.clone(),
                                status: OrderStatus::Confirmed,
                                amount_cents: 0,
                                tickets: Vec::new(),
                                created_at_ms: meta.created_at_ms,
                            };
                            (order, meta)
                        });
                order.tickets.push(Ticket {
                    id: ticket_id.clone(),
                    token: record.token.clone(),
                    order_id: record.order_id.clone(),
                    concert_id: spec.id.clone(),
                    user_id: record.owner.clone(),
                    seat: record
                        .seat
                        .and_then(|local| spec.seat_label(start + u64::from(local))),
                    shard,
                    checked_in_at_ms: record.checked_in_at_ms,
                });
            }
            for (reservation_id, reservation) in &view.reservations {
                let part = Part {
                    shard,
                    reservation_id: *reservation_id,
                    quantity: reservation.quantity,
                    seats: reservation
                        .seats
                        .iter()
                        .map(|local| start + u64::from(*local))
                        .collect(),
                };
                let hold = match &reservation.purpose {
                    Purpose::Hold {
                        hold_id,
                        expires_at_ms,
                    } => Some((hold_id.clone(), *expires_at_ms)),
                    Purpose::Order { .. } => None,
                };
                match (&reservation.paying, hold) {
                    (Some(order_id), hold) => {
                        gathered
                            .paying
                            .entry(order_id.clone())
                            .or_insert_with(|| Paying {
                                owner: reservation.owner.clone(),
                                meta: reservation.order_meta.clone().unwrap_or_default(),
                                hold,
                                parts: Vec::new(),
                            })
                            .parts
                            .push(part);
                    }
                    (None, Some((hold_id, expires_at_ms))) => {
                        gathered
                            .holds
                            .entry(hold_id)
                            .or_insert_with(|| {
                                (reservation.owner.clone(), expires_at_ms, Vec::new())
                            })
                            .2
                            .push(part);
                    }
                    (None, None) => unreachable!("an order's reservation is paying from the start"),
                }
            }
        }
        for (order, _) in gathered.sold.values_mut() {
            sort_tickets(&mut order.tickets, spec);
            order.amount_cents = spec.price_cents * order.tickets.len() as u64;
        }
        gathered
    }
}

fn hold_of(
    spec: &ConcertSpec,
    id: HoldId,
    user_id: UserId,
    expires_at_ms: u64,
    parts: &[Part],
) -> Hold {
    Hold {
        id,
        concert_id: spec.id.clone(),
        user_id,
        quantity: parts.iter().map(|part| part.quantity).sum(),
        seats: parts
            .iter()
            .flat_map(|part| part.seats.iter())
            .filter_map(|seat| spec.seat_label(*seat))
            .collect(),
        expires_at_ms,
        seated: spec.is_seated(),
    }
}

impl Book {
    /// Remembers that `user`'s request under `meta`'s key ended (or will end) as `outcome` says.
    fn remember_key(&mut self, user: &UserId, meta: &OrderMeta, outcome: KeyOutcome) {
        let Some(tag) = &meta.idempotency else {
            return;
        };
        self.idempotency.insert(
            (user.clone(), tag.key.clone()),
            IdempotencyEntry {
                fingerprint: tag.fingerprint,
                outcome,
            },
        );
        self.idempotency_age
            .push_back((meta.created_at_ms, user.clone(), tag.key.clone()));
    }
}

impl Desk {
    /// Fills the book with what one concert's recovered shards hold for this node's users; returns the orders
    /// still to settle. Call it for every concert before the node takes traffic, then [`Desk::settle_in_flight`]
    /// each returned order once the concert's shard actors run.
    pub fn restore(&self, spec: &ConcertSpec, states: &[ShardState]) -> Vec<InFlightOrder> {
        let views: Vec<ShardBookView> = states
            .iter()
            .enumerate()
            .map(|(shard, state)| state.book_view(shard as u32, |user| self.is_local_user(user)))
            .collect();
        self.restore_views(spec, &views)
    }

    /// [`Desk::restore`] from the views of every shard of the concert (every node's, in a cluster).
    pub fn restore_views(&self, spec: &ConcertSpec, views: &[ShardBookView]) -> Vec<InFlightOrder> {
        let now_ms = self.clock.now_ms();
        let mut gathered = Gathered::from_views(spec, views);
        let mut book = self.book();
        // An order sold in part and still being paid for in part is settled as a whole, below.
        let partly_sold: Vec<(OrderId, Vec<Ticket>)> = gathered
            .paying
            .keys()
            .filter_map(|id| Some((id.clone(), gathered.sold.remove(id)?.0.tickets)))
            .collect();
        let mut partly_sold: BTreeMap<OrderId, Vec<Ticket>> = partly_sold.into_iter().collect();
        for (order, meta) in gathered.sold.into_values() {
            book.upsert_order(&order);
            book.add_tickets(&order.user_id, &spec.id, order.tickets.len() as u32);
            book.remember_key(&order.user_id, &meta, KeyOutcome::Order(order.id.clone()));
        }
        for (hold_id, (user_id, expires_at_ms, parts)) in gathered.holds {
            let hold = hold_of(spec, hold_id.clone(), user_id, expires_at_ms, &parts);
            book.quotas
                .entry(hold.user_id.clone())
                .or_default()
                .active_holds
                .push(hold_id.clone());
            book.holds.insert(
                hold_id,
                HoldRecord {
                    hold,
                    parts,
                    state: HoldState::Active,
                },
            );
        }
        let mut in_flight = Vec::new();
        for (order_id, paying) in gathered.paying {
            let Paying {
                owner: user_id,
                meta,
                hold,
                parts,
            } = paying;
            let (sender, receiver) = watch::channel(None);
            let sold = partly_sold.remove(&order_id).unwrap_or_default();
            let mut order = pending_order(order_id, spec, &user_id, &parts, &meta);
            order.amount_cents += spec.price_cents * sold.len() as u64;
            book.upsert_order(&order);
            book.add_tickets(
                &user_id,
                &spec.id,
                parts_tickets(&parts) + sold.len() as u32,
            );
            book.remember_key(&user_id, &meta, KeyOutcome::Waiting(receiver.clone()));
            let hold_id = hold.map(|(hold_id, expires_at_ms)| {
                let hold = hold_of(
                    spec,
                    hold_id.clone(),
                    user_id.clone(),
                    expires_at_ms,
                    &parts,
                );
                book.holds.insert(
                    hold_id.clone(),
                    HoldRecord {
                        hold,
                        parts: parts.clone(),
                        state: HoldState::Purchasing {
                            outcome: receiver,
                            started_at_ms: now_ms,
                        },
                    },
                );
                hold_id
            });
            in_flight.push(InFlightOrder {
                concert_id: spec.id.clone(),
                order,
                parts,
                sold,
                hold_id,
                key: meta.idempotency.map(|tag| tag.key),
                outcome: sender,
                payment: None,
            });
        }
        sort_key_ages(&mut book);
        in_flight
    }

    /// Keeps the payment records recovery read back, for the orders recovered in flight to take
    /// ([`Desk::settle_all`]); call it before that.
    pub fn load_payments(&self, records: Vec<(OrderId, PaymentRecord)>) {
        self.recovered_payments
            .lock()
            .expect("payments lock")
            .extend(records);
    }

    /// Ends an order recovered in flight: its payment resolved, then tickets and a capture, or a release.
    pub async fn settle_in_flight(self: &Arc<Self>, in_flight: InFlightOrder) -> OrderOutcome {
        let InFlightOrder {
            concert_id,
            mut order,
            parts,
            sold,
            hold_id,
            key,
            outcome: sender,
            payment,
        } = in_flight;
        let user = order.user_id.clone();
        let partly_sold = !sold.is_empty();
        order.tickets = sold;
        let announce = Announce::to(sender.clone());
        let outcome = async {
            let concert = self
                .router
                .concert(&concert_id)
                .ok_or(EngineError::ConcertNotFound)?;
            tracing::info!(order_id = %order.id, partly_sold, "settling an order recovered in flight");
            self.settle_recovered(order, &concert, &parts, payment, partly_sold, &announce)
                .await
        }
        .await;
        if outcome.is_err()
            && let Some(hold_id) = hold_id
            && let Some(record) = self.book().holds.get_mut(&hold_id)
        {
            record.parts.clear();
        }
        if let Some(key) = key {
            // Before waiters hear of it: the key keeps the outcome, or is forgotten when the order was voided and
            // released, so that a retry with it places the order anew.
            self.book().key_ended(user, key, &outcome);
        }
        sender.send_replace(Some(outcome.clone()));
        outcome
    }

    /// Settles every order recovered in flight, each in a task of its own, and resumes the payments of the
    /// records left ([`Desk::resume_payments`]); waits for each order's first answer (final, or pending while its
    /// payment is still being resolved), [`SETTLE_IN_FLIGHT_MAX`] at once. Returns how many ended confirmed.
    pub async fn settle_all(self: &Arc<Self>, mut in_flight: Vec<InFlightOrder>) -> usize {
        use futures_util::StreamExt;
        {
            let mut records = self.recovered_payments.lock().expect("payments lock");
            for order in &mut in_flight {
                order.payment = records.remove(&order.order.id);
            }
        }
        self.resume_payments();
        let answers: Vec<_> = in_flight
            .into_iter()
            .map(|order| {
                let answer = order.outcome.subscribe();
                let desk = self.clone();
                tokio::spawn(async move { desk.settle_in_flight(order).await });
                answer
            })
            .collect();
        let answers: Vec<OrderOutcome> = futures_util::stream::iter(answers)
            .map(super::wait_outcome)
            .buffer_unordered(SETTLE_IN_FLIGHT_MAX)
            .collect()
            .await;
        answers
            .iter()
            .filter(|answer| {
                answer
                    .as_ref()
                    .is_ok_and(|order| order.status == OrderStatus::Confirmed)
            })
            .count()
    }
}

/// Keys are forgotten oldest first, so the ages restored from several concerts are put back in time order.
fn sort_key_ages(book: &mut Book) {
    book.idempotency_age
        .make_contiguous()
        .sort_by_key(|(created_at_ms, _, _)| *created_at_ms);
}

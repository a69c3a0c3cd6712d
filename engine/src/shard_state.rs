//! The state of one shard as a pure, deterministic state machine.
//!
//! Every change goes in two steps: a `decide_*` method checks a request against the state and returns the
//! [`ShardEvent`] that records it (or why it is refused) without changing anything; [`ShardState::apply`] then
//! applies the event. The shard actor journals exactly the events it applies, so replaying a journal through
//! `apply` rebuilds the same state, and the property test can drive this type directly against a model.
//!
//! Seats are numbered locally, `0..capacity` of this shard; the router translates to concert-wide labels.
//!
//! A general-admission shard can give unsold tickets to another shard of its concert and take some from one
//! (escrow, or demarcation): instead of gathering one order from several shards, the router moves count into
//! one shard and serves the order from it. A move is numbered per pair of shards: the sender applies `MovedOut`
//! first (durably, before anyone hears of it), the receiver applies `MovedIn` for exactly the next number it
//! expects from that sender (a repeat is recognised and ignored, an early one refused), and the sender forgets a
//! move once the receiver has it (`MoveAcknowledged`). So a move is applied once on each side whatever is retried,
//! and tickets in transit are counted by the sender's unacknowledged moves until the receiver has them. Per shard,
//! `remaining + held + sold + moved_out == capacity + moved_in`.

use crate::error::EngineError;
use crate::ids::{HoldId, IdMap, OrderId, TicketId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A reservation's number, unique within its shard.
pub type ReservationId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum SeatStatus {
    Free,
    Held,
    Sold,
}

/// Counts that always add up to the shard's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
}

impl Availability {
    pub fn total(&self) -> u64 {
        self.remaining + self.held + self.sold
    }

    pub fn add(&mut self, other: Availability) {
        self.remaining += other.remaining;
        self.held += other.held;
        self.sold += other.sold;
    }

    /// Counts of a concert whose shards hold `held` and have sold `sold` between them: whatever is neither is for
    /// sale, tickets moving between two shards included. Shards are read one after another, so while tickets
    /// move, a sum can count one twice: it is clamped to the capacity, never trusted to fit it.
    pub fn of_concert(capacity: u64, held: u64, sold: u64) -> Self {
        let sold = sold.min(capacity);
        let held = held.min(capacity - sold);
        Self {
            remaining: capacity - held - sold,
            held,
            sold,
        }
    }
}

/// What a reservation asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claim {
    /// `quantity` tickets (general admission) or any free seats (seated). With `up_to`, fewer are accepted when
    /// fewer are left, but never zero: the router uses it to gather an order from several shards near the end.
    Quantity { quantity: u32, up_to: bool },
    /// These exact local seats, all or none.
    Seats(Vec<u32>),
}

/// Names a reservation by what it is for, when its number is not known (its reply was lost).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PurposeKey {
    Hold(HoldId),
    Order(OrderId),
}

/// Why the tickets are reserved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// A buyer holds seats while choosing; released by itself at `expires_at_ms`.
    Hold { hold_id: HoldId, expires_at_ms: u64 },
    /// Reserved by a direct order while it is being paid.
    Order { order_id: OrderId, meta: OrderMeta },
}

impl Purpose {
    pub fn key(&self) -> PurposeKey {
        match self {
            Purpose::Hold { hold_id, .. } => PurposeKey::Hold(hold_id.clone()),
            Purpose::Order { order_id, .. } => PurposeKey::Order(order_id.clone()),
        }
    }
}

/// What the journal keeps of an order besides its tickets, so that a restarted node can answer for it: when it
/// was placed and the `Idempotency-Key` it was placed under (a retry after a crash must find it, not order again).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderMeta {
    pub created_at_ms: u64,
    pub idempotency: Option<IdempotencyTag>,
}

/// An `Idempotency-Key` and the fingerprint of the request first made under it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyTag {
    pub key: String,
    pub fingerprint: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReleaseReason {
    Cancelled,
    Declined,
    Expired,
    /// The order could not be completed (payment timeout, overload, a sibling shard refused its part).
    Abandoned,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTicket {
    pub ticket_id: TicketId,
    pub token: Arc<str>,
    pub seat: Option<u32>,
}

/// One change of a shard: what the journal records and replay applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardEvent {
    Reserved {
        reservation_id: ReservationId,
        owner: UserId,
        quantity: u32,
        seats: Vec<u32>,
        purpose: Purpose,
    },
    PurchaseStarted {
        reservation_id: ReservationId,
        order_id: OrderId,
        meta: OrderMeta,
    },
    Confirmed {
        reservation_id: ReservationId,
        order_id: OrderId,
        tickets: Vec<IssuedTicket>,
    },
    Released {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    CheckedIn {
        ticket_id: TicketId,
        at_ms: u64,
    },
    /// `count` unsold tickets leave for shard `to_shard` of the concert: the `seq`-th move to it.
    MovedOut {
        to_shard: u32,
        seq: u64,
        count: u64,
    },
    /// `count` unsold tickets arrive from shard `from_shard`: its `seq`-th move here.
    MovedIn {
        from_shard: u32,
        seq: u64,
        count: u64,
    },
    /// Shard `to_shard` has applied this shard's moves to it up to `seq`.
    MoveAcknowledged {
        to_shard: u32,
        seq: u64,
    },
}

/// What to do with a move that arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveArrival {
    /// The next move from its sender: apply this event.
    Apply(ShardEvent),
    /// Applied already.
    Repeated,
    /// An earlier move from the same sender has not arrived yet; it will be delivered first.
    Early { expected_seq: u64 },
}

/// Unsold counts moved to and from other shards of the concert; see the module comment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Moves {
    moved_in: u64,
    moved_out: u64,
    /// Per receiving shard: the last move numbered for it, and the moves it has not acknowledged (number, count).
    outgoing: BTreeMap<u32, Outgoing>,
    /// Per sending shard: the number of the last move applied from it.
    incoming: BTreeMap<u32, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Outgoing {
    last_seq: u64,
    unacknowledged: BTreeMap<u64, u64>,
}

/// A move sent and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMove {
    pub to_shard: u32,
    pub seq: u64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reservation {
    pub owner: UserId,
    pub quantity: u32,
    pub seats: Vec<u32>,
    pub purpose: Purpose,
    /// Set once payment has begun: the reservation then belongs to that order and no longer expires.
    pub paying: Option<OrderId>,
    /// The paying order's meta, from the reservation or from the purchase of the hold.
    pub order_meta: Option<OrderMeta>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TicketRecord {
    pub order_id: OrderId,
    pub owner: UserId,
    pub token: Arc<str>,
    pub seat: Option<u32>,
    pub checked_in_at_ms: Option<u64>,
}

/// Why a reservation was refused; the router turns the local seat into a label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReserveRefusal {
    SoldOut,
    SeatTaken { local_seat: u32 },
    UnknownSeat { local_seat: u32 },
}

/// A shard's whole state; a snapshot is this value, serialized. Every field is rebuilt exactly by replaying the
/// journal through [`ShardState::apply`], which is what makes recovery and the state digest deterministic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardState {
    capacity: u64,
    remaining: u64,
    held: u64,
    sold: u64,
    /// Per-seat status, one byte a seat; empty for general admission.
    seats: Vec<SeatStatus>,
    seated: bool,
    reservations: IdMap<ReservationId, Reservation>,
    next_reservation_id: ReservationId,
    tickets: IdMap<TicketId, TicketRecord>,
    /// Meta of every order this shard sold tickets for.
    orders: IdMap<OrderId, OrderMeta>,
    /// Events applied since the shard was created: the sequence number of the last one, which is the journal
    /// position a snapshot of this state covers.
    events_applied: u64,
    moves: Moves,
}

/// A shard's state as snapshots before moves between shards existed wrote it; read back as a shard that never
/// moved a ticket.
#[derive(Debug, Deserialize)]
pub struct ShardStateV1 {
    capacity: u64,
    remaining: u64,
    held: u64,
    sold: u64,
    seats: Vec<SeatStatus>,
    seated: bool,
    reservations: HashMap<ReservationId, Reservation>,
    next_reservation_id: ReservationId,
    tickets: HashMap<TicketId, TicketRecord>,
    orders: HashMap<OrderId, OrderMeta>,
    events_applied: u64,
}

impl From<ShardStateV1> for ShardState {
    fn from(old: ShardStateV1) -> Self {
        Self {
            capacity: old.capacity,
            remaining: old.remaining,
            held: old.held,
            sold: old.sold,
            seats: old.seats,
            seated: old.seated,
            reservations: old.reservations.into_iter().collect(),
            next_reservation_id: old.next_reservation_id,
            tickets: old.tickets.into_iter().collect(),
            orders: old.orders.into_iter().collect(),
            events_applied: old.events_applied,
            moves: Moves::default(),
        }
    }
}

/// Tickets one page of a book view carries at most: about 12 MB, whatever the shard's size.
pub const BOOK_VIEW_TICKETS_MAX: usize = 100_000;

/// What one shard holds for some users: their tickets (with their orders' meta) and their reservations. A node
/// rebuilds its book of orders and holds from these views of every shard, its own and (in a cluster) other nodes'.
/// Read in pages of tickets in id order; the first page carries the reservations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBookView {
    pub shard: u32,
    pub tickets: Vec<(TicketId, TicketRecord)>,
    pub reservations: Vec<(ReservationId, Reservation)>,
    pub orders: Vec<(OrderId, OrderMeta)>,
    /// When more tickets follow: the id the next page starts after.
    pub next: Option<TicketId>,
}

impl ShardBookView {
    /// Adds the next page.
    pub fn extend(&mut self, page: ShardBookView) {
        self.tickets.extend(page.tickets);
        self.reservations.extend(page.reservations);
        self.orders.extend(page.orders);
        self.next = page.next;
    }
}

impl ShardState {
    pub fn new(capacity: u64, seated: bool) -> Self {
        let seats = if seated {
            vec![SeatStatus::Free; capacity as usize]
        } else {
            Vec::new()
        };
        Self {
            capacity,
            remaining: capacity,
            held: 0,
            sold: 0,
            seats,
            seated,
            reservations: IdMap::default(),
            next_reservation_id: 1,
            tickets: IdMap::default(),
            orders: IdMap::default(),
            events_applied: 0,
            moves: Moves::default(),
        }
    }

    /// Tickets this shard sells now: its capacity plus what it received from other shards, less what it gave.
    pub fn allotment(&self) -> u64 {
        self.capacity + self.moves.moved_in - self.moves.moved_out
    }

    pub fn moved_in(&self) -> u64 {
        self.moves.moved_in
    }

    pub fn moved_out(&self) -> u64 {
        self.moves.moved_out
    }

    pub fn has_pending_moves(&self) -> bool {
        self.moves
            .outgoing
            .values()
            .any(|outgoing| !outgoing.unacknowledged.is_empty())
    }

    /// Moves this shard sent that their receivers have not acknowledged, oldest first per receiver.
    pub fn pending_moves(&self) -> Vec<PendingMove> {
        self.moves
            .outgoing
            .iter()
            .flat_map(|(to_shard, outgoing)| {
                outgoing
                    .unacknowledged
                    .iter()
                    .map(|(seq, count)| PendingMove {
                        to_shard: *to_shard,
                        seq: *seq,
                        count: *count,
                    })
            })
            .collect()
    }

    /// The tickets, reservations and order meta of the users `include` accepts.
    pub fn book_view(&self, shard: u32, include: impl Fn(&UserId) -> bool) -> ShardBookView {
        self.book_view_page(shard, include, None, usize::MAX)
    }

    /// One page of [`ShardState::book_view`]: at most `limit` tickets, those whose id follows `after`, in id
    /// order; the reservations with the first page.
    pub fn book_view_page(
        &self,
        shard: u32,
        include: impl Fn(&UserId) -> bool,
        after: Option<&TicketId>,
        limit: usize,
    ) -> ShardBookView {
        let mut ids: Vec<&TicketId> = self
            .tickets
            .iter()
            .filter(|(id, ticket)| include(&ticket.owner) && after.is_none_or(|after| *id > after))
            .map(|(id, _)| id)
            .collect();
        let more = ids.len() > limit;
        if more {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        let next = more.then(|| ids.last().map(|id| (*id).clone())).flatten();
        let tickets: Vec<(TicketId, TicketRecord)> = ids
            .into_iter()
            .map(|id| (id.clone(), self.tickets[id].clone()))
            .collect();
        let mut order_ids: Vec<&OrderId> =
            tickets.iter().map(|(_, ticket)| &ticket.order_id).collect();
        order_ids.sort_unstable();
        order_ids.dedup();
        let orders = order_ids
            .into_iter()
            .filter_map(|id| Some((id.clone(), self.orders.get(id)?.clone())))
            .collect();
        let reservations = match after {
            Some(_) => Vec::new(),
            None => self
                .reservations
                .iter()
                .filter(|(_, reservation)| include(&reservation.owner))
                .map(|(id, reservation)| (*id, reservation.clone()))
                .collect(),
        };
        ShardBookView {
            shard,
            orders,
            reservations,
            tickets,
            next,
        }
    }

    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    pub fn is_seated(&self) -> bool {
        self.seated
    }

    pub fn order_meta(&self, order_id: &OrderId) -> Option<&OrderMeta> {
        self.orders.get(order_id)
    }

    /// A digest of everything in the state, independent of map order: two replays of one journal give equal digests.
    pub fn digest(&self) -> u64 {
        let mut hasher = StableHasher::default();
        (
            self.capacity,
            self.remaining,
            self.held,
            self.sold,
            &self.seats,
            self.seated,
        )
            .hash(&mut hasher);
        (self.next_reservation_id, self.events_applied, &self.moves).hash(&mut hasher);
        let mut reservations: Vec<_> = self.reservations.iter().collect();
        reservations.sort_unstable_by_key(|(id, _)| **id);
        reservations.hash(&mut hasher);
        let mut tickets: Vec<_> = self.tickets.iter().collect();
        tickets.sort_unstable_by(|a, b| a.0.cmp(b.0));
        tickets.hash(&mut hasher);
        let mut orders: Vec<_> = self.orders.iter().collect();
        orders.sort_unstable_by(|a, b| a.0.cmp(b.0));
        orders.hash(&mut hasher);
        hasher.finish()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn availability(&self) -> Availability {
        Availability {
            remaining: self.remaining,
            held: self.held,
            sold: self.sold,
        }
    }

    pub fn seats(&self) -> &[SeatStatus] {
        &self.seats
    }

    pub fn reservation(&self, reservation_id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&reservation_id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&ReservationId, &Reservation)> {
        self.reservations.iter()
    }

    pub fn ticket(&self, ticket_id: &TicketId) -> Option<&TicketRecord> {
        self.tickets.get(ticket_id)
    }

    pub fn tickets(&self) -> impl Iterator<Item = (&TicketId, &TicketRecord)> {
        self.tickets.iter()
    }

    pub fn decide_reserve(
        &self,
        owner: &UserId,
        claim: &Claim,
        purpose: Purpose,
    ) -> Result<ShardEvent, ReserveRefusal> {
        let (quantity, seats) = match claim {
            Claim::Quantity { quantity, up_to } => {
                assert!(*quantity > 0, "a claim asks for at least one ticket");
                let granted = if u64::from(*quantity) <= self.remaining {
                    *quantity
                } else if *up_to && self.remaining > 0 {
                    self.remaining as u32
                } else {
                    return Err(ReserveRefusal::SoldOut);
                };
                let seats = if self.seated {
                    self.pick_free_seats(granted)
                } else {
                    Vec::new()
                };
                (granted, seats)
            }
            Claim::Seats(seats) => {
                assert!(!seats.is_empty(), "a seat claim names at least one seat");
                assert!(self.seated, "seats are claimed only in seated concerts");
                for &seat in seats {
                    match self.seats.get(seat as usize) {
                        None => return Err(ReserveRefusal::UnknownSeat { local_seat: seat }),
                        Some(SeatStatus::Free) => {}
                        Some(_) => return Err(ReserveRefusal::SeatTaken { local_seat: seat }),
                    }
                }
                let mut unique = seats.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), seats.len(), "seat claims have no duplicates");
                (seats.len() as u32, seats.clone())
            }
        };
        Ok(ShardEvent::Reserved {
            reservation_id: self.next_reservation_id,
            owner: owner.clone(),
            quantity,
            seats,
            purpose,
        })
    }

    /// The first `count` free seats, preferring a run of adjacent ones. The caller checked `count <= remaining`.
    fn pick_free_seats(&self, count: u32) -> Vec<u32> {
        let count = count as usize;
        let mut run_start = 0;
        let mut run_length = 0;
        for (index, status) in self.seats.iter().enumerate() {
            if *status == SeatStatus::Free {
                if run_length == 0 {
                    run_start = index;
                }
                run_length += 1;
                if run_length == count {
                    return (run_start as u32..(run_start + count) as u32).collect();
                }
            } else {
                run_length = 0;
            }
        }
        let picked: Vec<u32> = self
            .seats
            .iter()
            .enumerate()
            .filter(|(_, status)| **status == SeatStatus::Free)
            .map(|(index, _)| index as u32)
            .take(count)
            .collect();
        assert_eq!(picked.len(), count, "remaining counts free seats");
        picked
    }

    /// Moves a held reservation into payment for `order_id`. A hold that has passed its expiry is refused.
    pub fn decide_begin_purchase(
        &self,
        reservation_id: ReservationId,
        owner: &UserId,
        order_id: &OrderId,
        meta: &OrderMeta,
        now_ms: u64,
    ) -> Result<ShardEvent, EngineError> {
        let reservation = self
            .reservations
            .get(&reservation_id)
            .ok_or(EngineError::HoldExpired)?;
        if &reservation.owner != owner {
            return Err(EngineError::HoldNotFound);
        }
        if reservation.paying.is_some() {
            return Err(EngineError::HoldNotActive);
        }
        match &reservation.purpose {
            Purpose::Hold { expires_at_ms, .. } if *expires_at_ms <= now_ms => {
                Err(EngineError::HoldExpired)
            }
            Purpose::Hold { .. } => Ok(ShardEvent::PurchaseStarted {
                reservation_id,
                order_id: order_id.clone(),
                meta: meta.clone(),
            }),
            Purpose::Order { .. } => Err(EngineError::HoldNotFound),
        }
    }

    pub fn decide_confirm(
        &self,
        reservation_id: ReservationId,
        order_id: &OrderId,
        tickets: Vec<IssuedTicket>,
    ) -> Result<ShardEvent, EngineError> {
        let reservation = self
            .reservations
            .get(&reservation_id)
            .ok_or(EngineError::OrderNotFound)?;
        let owned_by_order = match &reservation.purpose {
            Purpose::Order {
                order_id: owner, ..
            } => owner == order_id,
            Purpose::Hold { .. } => reservation.paying.as_ref() == Some(order_id),
        };
        if !owned_by_order {
            return Err(EngineError::OrderNotFound);
        }
        assert_eq!(
            tickets.len(),
            reservation.quantity as usize,
            "one ticket per reserved unit"
        );
        let tickets = tickets
            .into_iter()
            .zip(seat_slots(reservation))
            .map(|(ticket, seat)| IssuedTicket { seat, ..ticket })
            .collect();
        Ok(ShardEvent::Confirmed {
            reservation_id,
            order_id: order_id.clone(),
            tickets,
        })
    }

    pub fn decide_release(
        &self,
        reservation_id: ReservationId,
        reason: ReleaseReason,
    ) -> Result<ShardEvent, EngineError> {
        if !self.reservations.contains_key(&reservation_id) {
            return Err(EngineError::HoldNotFound);
        }
        Ok(ShardEvent::Released {
            reservation_id,
            reason,
        })
    }

    /// The release of a hold whose time is up, unless it is gone, being paid for, or not yet due.
    pub fn decide_expire(&self, reservation_id: ReservationId, now_ms: u64) -> Option<ShardEvent> {
        let reservation = self.reservations.get(&reservation_id)?;
        match reservation.purpose {
            Purpose::Hold { expires_at_ms, .. }
                if reservation.paying.is_none() && expires_at_ms <= now_ms =>
            {
                Some(ShardEvent::Released {
                    reservation_id,
                    reason: ReleaseReason::Expired,
                })
            }
            _ => None,
        }
    }

    pub fn decide_check_in(
        &self,
        ticket_id: &TicketId,
        now_ms: u64,
    ) -> Result<ShardEvent, EngineError> {
        let ticket = self
            .tickets
            .get(ticket_id)
            .ok_or(EngineError::UnknownTicket)?;
        if let Some(checked_in_at_ms) = ticket.checked_in_at_ms {
            return Err(EngineError::AlreadyCheckedIn { checked_in_at_ms });
        }
        Ok(ShardEvent::CheckedIn {
            ticket_id: ticket_id.clone(),
            at_ms: now_ms,
        })
    }

    /// The releases of every reservation made for `key`: how a reservation whose reply was lost is given back.
    pub fn decide_release_for(&self, key: &PurposeKey, reason: ReleaseReason) -> Vec<ShardEvent> {
        let mut ids: Vec<ReservationId> = self
            .reservations
            .iter()
            .filter(|(_, reservation)| match (&reservation.purpose, key) {
                (Purpose::Hold { hold_id, .. }, PurposeKey::Hold(wanted)) => hold_id == wanted,
                (Purpose::Order { order_id, .. }, PurposeKey::Order(wanted)) => order_id == wanted,
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|reservation_id| ShardEvent::Released {
                reservation_id,
                reason,
            })
            .collect()
    }

    /// Whether the tickets of `order_id` listed in `tickets` were issued here already: a confirmation repeated
    /// after its reply was lost.
    pub fn is_confirmed(&self, order_id: &OrderId, tickets: &[IssuedTicket]) -> bool {
        !tickets.is_empty()
            && tickets.iter().all(|issued| {
                self.tickets
                    .get(&issued.ticket_id)
                    .is_some_and(|ticket| &ticket.order_id == order_id)
            })
    }

    /// Gives unsold tickets to shard `to_shard`: `want` of them, or half of what is left if that is more, but no
    /// more than is left; `None` when nothing is left. General admission only.
    pub fn decide_move_out(&self, to_shard: u32, want: u64) -> Option<ShardEvent> {
        assert!(!self.seated, "seats never move between shards");
        if self.remaining == 0 || want == 0 {
            return None;
        }
        let count = want.max(self.remaining / 2).min(self.remaining);
        let seq = self
            .moves
            .outgoing
            .get(&to_shard)
            .map_or(0, |outgoing| outgoing.last_seq)
            + 1;
        Some(ShardEvent::MovedOut {
            to_shard,
            seq,
            count,
        })
    }

    /// What to do with the `seq`-th move of `count` tickets from shard `from_shard`.
    pub fn decide_move_in(&self, from_shard: u32, seq: u64, count: u64) -> MoveArrival {
        assert!(!self.seated, "seats never move between shards");
        let last = self.moves.incoming.get(&from_shard).copied().unwrap_or(0);
        if seq <= last {
            MoveArrival::Repeated
        } else if seq > last + 1 {
            MoveArrival::Early {
                expected_seq: last + 1,
            }
        } else {
            MoveArrival::Apply(ShardEvent::MovedIn {
                from_shard,
                seq,
                count,
            })
        }
    }

    /// Forgets the moves to `to_shard` up to `seq`, which it has applied; `None` when none is pending.
    pub fn decide_move_acknowledged(&self, to_shard: u32, seq: u64) -> Option<ShardEvent> {
        let outgoing = self.moves.outgoing.get(&to_shard)?;
        let (first, _) = outgoing.unacknowledged.first_key_value()?;
        (*first <= seq && seq <= outgoing.last_seq)
            .then_some(ShardEvent::MoveAcknowledged { to_shard, seq })
    }

    /// Applies an event produced by a `decide_*` method (or read back from the journal).
    ///
    /// Panics when the event does not fit the state: that is a journal from another history, never a user error.
    pub fn apply(&mut self, event: &ShardEvent) {
        match event {
            ShardEvent::Reserved {
                reservation_id,
                owner,
                quantity,
                seats,
                purpose,
            } => {
                assert!(
                    u64::from(*quantity) <= self.remaining,
                    "reserve within remaining"
                );
                assert!(
                    !self.reservations.contains_key(reservation_id),
                    "reservation ids are fresh"
                );
                if self.seated {
                    assert_eq!(
                        seats.len(),
                        *quantity as usize,
                        "a seated reservation names its seats"
                    );
                    for &seat in seats {
                        let status = &mut self.seats[seat as usize];
                        assert_eq!(*status, SeatStatus::Free, "only a free seat is reserved");
                        *status = SeatStatus::Held;
                    }
                }
                self.remaining -= u64::from(*quantity);
                self.held += u64::from(*quantity);
                self.next_reservation_id = self.next_reservation_id.max(reservation_id + 1);
                self.reservations.insert(
                    *reservation_id,
                    Reservation {
                        owner: owner.clone(),
                        quantity: *quantity,
                        seats: seats.clone(),
                        purpose: purpose.clone(),
                        paying: match purpose {
                            Purpose::Order { order_id, .. } => Some(order_id.clone()),
                            Purpose::Hold { .. } => None,
                        },
                        order_meta: match purpose {
                            Purpose::Order { meta, .. } => Some(meta.clone()),
                            Purpose::Hold { .. } => None,
                        },
                    },
                );
            }
            ShardEvent::PurchaseStarted {
                reservation_id,
                order_id,
                meta,
            } => {
                let reservation = self
                    .reservations
                    .get_mut(reservation_id)
                    .expect("purchase of a live reservation");
                assert!(reservation.paying.is_none(), "a hold is purchased once");
                reservation.paying = Some(order_id.clone());
                reservation.order_meta = Some(meta.clone());
            }
            ShardEvent::Confirmed {
                reservation_id,
                order_id,
                tickets,
            } => {
                let reservation = self
                    .reservations
                    .remove(reservation_id)
                    .expect("confirm of a live reservation");
                assert_eq!(tickets.len(), reservation.quantity as usize);
                for &seat in &reservation.seats {
                    let status = &mut self.seats[seat as usize];
                    assert_eq!(*status, SeatStatus::Held, "only a held seat is sold");
                    *status = SeatStatus::Sold;
                }
                self.held -= u64::from(reservation.quantity);
                self.sold += u64::from(reservation.quantity);
                self.orders
                    .entry(order_id.clone())
                    .or_insert_with(|| reservation.order_meta.clone().unwrap_or_default());
                for ticket in tickets {
                    let previous = self.tickets.insert(
                        ticket.ticket_id.clone(),
                        TicketRecord {
                            order_id: order_id.clone(),
                            owner: reservation.owner.clone(),
                            token: ticket.token.clone(),
                            seat: ticket.seat,
                            checked_in_at_ms: None,
                        },
                    );
                    assert!(previous.is_none(), "ticket ids are fresh");
                }
            }
            ShardEvent::Released { reservation_id, .. } => {
                let reservation = self
                    .reservations
                    .remove(reservation_id)
                    .expect("release of a live reservation");
                for &seat in &reservation.seats {
                    let status = &mut self.seats[seat as usize];
                    assert_eq!(*status, SeatStatus::Held, "only a held seat is released");
                    *status = SeatStatus::Free;
                }
                self.held -= u64::from(reservation.quantity);
                self.remaining += u64::from(reservation.quantity);
            }
            ShardEvent::CheckedIn { ticket_id, at_ms } => {
                let ticket = self
                    .tickets
                    .get_mut(ticket_id)
                    .expect("check-in of a sold ticket");
                assert!(
                    ticket.checked_in_at_ms.is_none(),
                    "a ticket is checked in once"
                );
                ticket.checked_in_at_ms = Some(*at_ms);
            }
            ShardEvent::MovedOut {
                to_shard,
                seq,
                count,
            } => {
                assert!(!self.seated, "seats never move between shards");
                assert!(
                    *count > 0 && *count <= self.remaining,
                    "a move gives unsold tickets"
                );
                let outgoing = self.moves.outgoing.entry(*to_shard).or_default();
                assert_eq!(*seq, outgoing.last_seq + 1, "moves are numbered in order");
                outgoing.last_seq = *seq;
                outgoing.unacknowledged.insert(*seq, *count);
                self.remaining -= count;
                self.moves.moved_out += count;
            }
            ShardEvent::MovedIn {
                from_shard,
                seq,
                count,
            } => {
                assert!(!self.seated, "seats never move between shards");
                let last = self.moves.incoming.entry(*from_shard).or_default();
                assert_eq!(*seq, *last + 1, "moves arrive in order, once");
                *last = *seq;
                self.remaining += count;
                self.moves.moved_in += count;
            }
            ShardEvent::MoveAcknowledged { to_shard, seq } => {
                let outgoing = self
                    .moves
                    .outgoing
                    .get_mut(to_shard)
                    .expect("acknowledged moves were sent");
                assert!(
                    *seq <= outgoing.last_seq,
                    "only moves sent are acknowledged"
                );
                outgoing.unacknowledged.retain(|pending, _| pending > seq);
            }
        }
        self.events_applied += 1;
        assert_eq!(
            self.remaining + self.held + self.sold + self.moves.moved_out,
            self.capacity + self.moves.moved_in,
            "remaining + held + sold + moved_out == capacity + moved_in"
        );
        debug_assert!(self.seat_counts_match());
    }

    /// Checks every invariant of the state at once, for snapshots read back and offline inspection: the counts add
    /// up, the seats agree with the counts and the reservations, and every sold ticket is one of `sold`.
    pub fn check(&self) -> Result<(), String> {
        if self.remaining + self.held + self.sold + self.moves.moved_out
            != self.capacity + self.moves.moved_in
        {
            return Err(format!(
                "remaining {} + held {} + sold {} + moved out {} != capacity {} + moved in {}",
                self.remaining,
                self.held,
                self.sold,
                self.moves.moved_out,
                self.capacity,
                self.moves.moved_in
            ));
        }
        if self.seated && (self.moves.moved_in > 0 || self.moves.moved_out > 0) {
            return Err("seats moved between shards".into());
        }
        let pending: u64 = self
            .pending_moves()
            .iter()
            .map(|pending| pending.count)
            .sum();
        if pending > self.moves.moved_out {
            return Err(format!(
                "{pending} tickets in transit, {} moved out",
                self.moves.moved_out
            ));
        }
        let reserved: u64 = self
            .reservations
            .values()
            .map(|reservation| u64::from(reservation.quantity))
            .sum();
        if reserved != self.held {
            return Err(format!(
                "reservations hold {reserved}, held is {}",
                self.held
            ));
        }
        if self.tickets.len() as u64 != self.sold {
            return Err(format!(
                "{} tickets, sold is {}",
                self.tickets.len(),
                self.sold
            ));
        }
        if self.seated {
            if self.seats.len() as u64 != self.capacity {
                return Err("one status per seat".into());
            }
            if !self.seat_counts_match() {
                return Err("seat statuses disagree with the counts".into());
            }
            let mut sold_seats = std::collections::HashSet::new();
            for ticket in self.tickets.values() {
                let seat = ticket.seat.ok_or("a seated ticket names its seat")?;
                if !sold_seats.insert(seat) {
                    return Err(format!("seat {seat} sold twice"));
                }
                if self.seats.get(seat as usize) != Some(&SeatStatus::Sold) {
                    return Err(format!("ticket for seat {seat} which is not sold"));
                }
            }
        }
        Ok(())
    }

    /// The per-seat statuses agree with the counters (seated shards only; O(seats), so debug builds only).
    fn seat_counts_match(&self) -> bool {
        if !self.seated {
            return true;
        }
        let mut counts = Availability::default();
        for status in &self.seats {
            match status {
                SeatStatus::Free => counts.remaining += 1,
                SeatStatus::Held => counts.held += 1,
                SeatStatus::Sold => counts.sold += 1,
            }
        }
        counts == self.availability()
    }
}

/// FNV-1a: a hash whose value never changes between runs or Rust versions, unlike std's `DefaultHasher`, so
/// digests and fingerprints can be compared across processes and stored.
#[derive(Debug)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The seat each of a reservation's tickets is for, in order (`None` for general admission).
fn seat_slots(reservation: &Reservation) -> Vec<Option<u32>> {
    if reservation.seats.is_empty() {
        vec![None; reservation.quantity as usize]
    } else {
        reservation.seats.iter().map(|seat| Some(*seat)).collect()
    }
}

#[cfg(test)]
mod tests;

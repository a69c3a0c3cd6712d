//! Tests of the shard state machine: a property test that drives it against a deliberately simple model, and
//! table-driven refusals through one [`check`] helper.
//!
//! Both drive [`ShardState`] the way the shard actor does (decide, then apply exactly the decided event) through
//! [`Driver`], which also keeps the applied events so that a test can replay them into a fresh state.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

/// Where the test clock starts; any value well away from zero works.
const START_MS: u64 = 1_000_000;
/// How long a hold lasts in the table-driven tests.
const HOLD_TTL_MS: u64 = 60_000;

/// A refusal of any step: reservations have their own refusal type, everything else answers an `EngineError`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    Reserve(ReserveRefusal),
    Engine(EngineError),
}

/// Decides and applies like the shard actor, on a clock it moves by hand, and records what it applied.
struct Driver {
    state: ShardState,
    now_ms: u64,
    events: Vec<ShardEvent>,
    tickets_issued: u64,
}

impl Driver {
    fn new(capacity: u64, seated: bool) -> Self {
        Self {
            state: ShardState::new(capacity, seated),
            now_ms: START_MS,
            events: Vec::new(),
            tickets_issued: 0,
        }
    }

    /// Applies a granted decision and passes it on; a refusal changes nothing.
    fn commit<E>(&mut self, decision: Result<ShardEvent, E>) -> Result<ShardEvent, E> {
        let event = decision?;
        self.state.apply(&event);
        self.events.push(event.clone());
        Ok(event)
    }

    fn hold_purpose(&self, ttl_ms: u64) -> Purpose {
        Purpose::Hold {
            hold_id: HoldId::from(format!("h_{}", self.events.len())),
            expires_at_ms: self.now_ms + ttl_ms,
        }
    }

    fn reserve(
        &mut self,
        owner: &UserId,
        claim: &Claim,
        purpose: Purpose,
    ) -> Result<ShardEvent, ReserveRefusal> {
        let decision = self.state.decide_reserve(owner, claim, purpose);
        self.commit(decision)
    }

    fn begin_purchase(
        &mut self,
        reservation_id: ReservationId,
        owner: &UserId,
        order_id: &OrderId,
    ) -> Result<ShardEvent, EngineError> {
        let decision = self.state.decide_begin_purchase(
            reservation_id,
            owner,
            order_id,
            &OrderMeta::default(),
            self.now_ms,
        );
        self.commit(decision)
    }

    /// Fresh tickets with predictable ids (`t_0`, `t_1`, ...), one per reserved unit; the seat is the shard's to fill.
    fn new_tickets(&mut self, reservation_id: ReservationId) -> Vec<IssuedTicket> {
        let quantity = self
            .state
            .reservation(reservation_id)
            .map_or(1, |reservation| reservation.quantity);
        (0..quantity)
            .map(|_| {
                let number = self.tickets_issued;
                self.tickets_issued += 1;
                IssuedTicket {
                    ticket_id: TicketId::from(format!("t_{number}")),
                    token: format!("token_{number}").into(),
                    seat: None,
                }
            })
            .collect()
    }

    fn confirm(
        &mut self,
        reservation_id: ReservationId,
        order_id: &OrderId,
        tickets: Vec<IssuedTicket>,
    ) -> Result<ShardEvent, EngineError> {
        let decision = self.state.decide_confirm(reservation_id, order_id, tickets);
        self.commit(decision)
    }

    fn release(&mut self, reservation_id: ReservationId) -> Result<ShardEvent, EngineError> {
        let decision = self
            .state
            .decide_release(reservation_id, ReleaseReason::Cancelled);
        self.commit(decision)
    }

    fn expire(&mut self, reservation_id: ReservationId) -> Option<ShardEvent> {
        let decision = self
            .state
            .decide_expire(reservation_id, self.now_ms)
            .ok_or(());
        self.commit(decision).ok()
    }

    fn check_in(&mut self, ticket_id: &TicketId) -> Result<ShardEvent, EngineError> {
        let decision = self.state.decide_check_in(ticket_id, self.now_ms);
        self.commit(decision)
    }

    /// A fresh state that has applied the same events.
    fn replay(&self) -> ShardState {
        let mut replayed = ShardState::new(self.state.capacity(), self.state.seated);
        for event in &self.events {
            replayed.apply(event);
        }
        replayed
    }
}

fn user(number: u8) -> UserId {
    UserId::from(format!("u_{number}"))
}

fn tickets_of(state: &ShardState) -> BTreeMap<TicketId, TicketRecord> {
    state
        .tickets()
        .map(|(id, record)| (id.clone(), record.clone()))
        .collect()
}

fn reservations_of(state: &ShardState) -> BTreeMap<ReservationId, Reservation> {
    state
        .reservations()
        .map(|(id, reservation)| (*id, reservation.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The model: plain counters, a list of seat owners, and the rules written out the obvious way.

#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelSeat {
    Free,
    Held(ReservationId),
    Sold(TicketId),
}

#[derive(Clone, Debug)]
struct ModelReservation {
    owner: UserId,
    quantity: u32,
    seats: Vec<u32>,
    /// `None` for a direct order, which never expires.
    expires_at_ms: Option<u64>,
    paying: Option<OrderId>,
}

#[derive(Clone, Debug)]
struct ModelTicket {
    order_id: OrderId,
    owner: UserId,
    seat: Option<u32>,
    checked_in_at_ms: Option<u64>,
}

#[derive(Debug)]
struct Model {
    capacity: u64,
    seated: bool,
    /// Who has each seat of a seated shard; empty for general admission.
    seats: Vec<ModelSeat>,
    remaining: u64,
    held: u64,
    sold: u64,
    reservations: BTreeMap<ReservationId, ModelReservation>,
    next_reservation_id: ReservationId,
    tickets: BTreeMap<TicketId, ModelTicket>,
    /// Moves with one other shard, [`MOVE_PEER`], both ways.
    moved_out: u64,
    moved_in: u64,
    out_last_seq: u64,
    out_unacknowledged: BTreeMap<u64, u64>,
    in_last_seq: u64,
}

/// The shard that the shard under test moves count to and from in the property test.
const MOVE_PEER: u32 = 7;

impl Model {
    fn new(capacity: u64, seated: bool) -> Self {
        Self {
            capacity,
            seated,
            seats: if seated {
                vec![ModelSeat::Free; capacity as usize]
            } else {
                Vec::new()
            },
            remaining: capacity,
            held: 0,
            sold: 0,
            reservations: BTreeMap::new(),
            next_reservation_id: 1,
            tickets: BTreeMap::new(),
            moved_out: 0,
            moved_in: 0,
            out_last_seq: 0,
            out_unacknowledged: BTreeMap::new(),
            in_last_seq: 0,
        }
    }

    fn move_out(&mut self, want: u64) -> Option<ShardEvent> {
        if self.seated || self.remaining == 0 || want == 0 {
            return None;
        }
        let count = want.max(self.remaining / 2).min(self.remaining);
        self.remaining -= count;
        self.moved_out += count;
        self.out_last_seq += 1;
        self.out_unacknowledged.insert(self.out_last_seq, count);
        Some(ShardEvent::MovedOut {
            to_shard: MOVE_PEER,
            seq: self.out_last_seq,
            count,
        })
    }

    fn move_in(&mut self, seq: u64, count: u64) -> MoveArrival {
        if seq <= self.in_last_seq {
            return MoveArrival::Repeated;
        }
        if seq > self.in_last_seq + 1 {
            return MoveArrival::Early {
                expected_seq: self.in_last_seq + 1,
            };
        }
        self.in_last_seq = seq;
        self.remaining += count;
        self.moved_in += count;
        MoveArrival::Apply(ShardEvent::MovedIn {
            from_shard: MOVE_PEER,
            seq,
            count,
        })
    }

    fn acknowledge(&mut self, seq: u64) -> Option<ShardEvent> {
        let first = *self.out_unacknowledged.keys().next()?;
        if first > seq || seq > self.out_last_seq {
            return None;
        }
        self.out_unacknowledged.retain(|pending, _| *pending > seq);
        Some(ShardEvent::MoveAcknowledged {
            to_shard: MOVE_PEER,
            seq,
        })
    }

    /// The first `count` adjacent free seats if there are any, else the first `count` free seats.
    fn pick_seats(&self, count: u32) -> Vec<u32> {
        let count = count as usize;
        let free: Vec<bool> = self.seats.iter().map(|s| *s == ModelSeat::Free).collect();
        if let Some(start) = free
            .windows(count)
            .position(|window| window.iter().all(|f| *f))
        {
            return (start..start + count).map(|seat| seat as u32).collect();
        }
        (0..self.seats.len())
            .filter(|seat| free[*seat])
            .take(count)
            .map(|seat| seat as u32)
            .collect()
    }

    fn reserve(
        &mut self,
        owner: &UserId,
        claim: &Claim,
        purpose: &Purpose,
    ) -> Result<ShardEvent, ReserveRefusal> {
        let (quantity, seats) = match claim {
            Claim::Quantity { quantity, up_to } => {
                let granted = if u64::from(*quantity) <= self.remaining {
                    *quantity
                } else if *up_to && self.remaining > 0 {
                    self.remaining as u32
                } else {
                    return Err(ReserveRefusal::SoldOut);
                };
                let seats = if self.seated {
                    self.pick_seats(granted)
                } else {
                    Vec::new()
                };
                (granted, seats)
            }
            Claim::Seats(seats) => {
                for &seat in seats {
                    match self.seats.get(seat as usize) {
                        None => return Err(ReserveRefusal::UnknownSeat { local_seat: seat }),
                        Some(ModelSeat::Free) => {}
                        Some(_) => return Err(ReserveRefusal::SeatTaken { local_seat: seat }),
                    }
                }
                (seats.len() as u32, seats.clone())
            }
        };
        let reservation_id = self.next_reservation_id;
        self.next_reservation_id += 1;
        for &seat in &seats {
            self.seats[seat as usize] = ModelSeat::Held(reservation_id);
        }
        self.remaining -= u64::from(quantity);
        self.held += u64::from(quantity);
        let (expires_at_ms, paying) = match purpose {
            Purpose::Hold { expires_at_ms, .. } => (Some(*expires_at_ms), None),
            Purpose::Order { order_id, .. } => (None, Some(order_id.clone())),
        };
        self.reservations.insert(
            reservation_id,
            ModelReservation {
                owner: owner.clone(),
                quantity,
                seats: seats.clone(),
                expires_at_ms,
                paying,
            },
        );
        Ok(ShardEvent::Reserved {
            reservation_id,
            owner: owner.clone(),
            quantity,
            seats,
            purpose: purpose.clone(),
        })
    }

    fn begin_purchase(
        &mut self,
        reservation_id: ReservationId,
        owner: &UserId,
        order_id: &OrderId,
        now_ms: u64,
    ) -> Result<ShardEvent, EngineError> {
        let Some(reservation) = self.reservations.get_mut(&reservation_id) else {
            // Gone: released, expired or sold; to its holder it is an expired hold.
            return Err(EngineError::HoldExpired);
        };
        if &reservation.owner != owner {
            return Err(EngineError::HoldNotFound);
        }
        if reservation.paying.is_some() {
            return Err(EngineError::HoldNotActive);
        }
        let expires_at_ms = reservation
            .expires_at_ms
            .expect("an unpaid reservation is a hold");
        if expires_at_ms <= now_ms {
            return Err(EngineError::HoldExpired);
        }
        reservation.paying = Some(order_id.clone());
        Ok(ShardEvent::PurchaseStarted {
            reservation_id,
            order_id: order_id.clone(),
            meta: OrderMeta::default(),
        })
    }

    fn confirm(
        &mut self,
        reservation_id: ReservationId,
        order_id: &OrderId,
        tickets: Vec<IssuedTicket>,
    ) -> Result<ShardEvent, EngineError> {
        match self.reservations.get(&reservation_id) {
            Some(reservation) if reservation.paying.as_ref() == Some(order_id) => {}
            _ => return Err(EngineError::OrderNotFound),
        }
        let reservation = self.reservations.remove(&reservation_id).expect("checked");
        let tickets: Vec<IssuedTicket> = tickets
            .into_iter()
            .enumerate()
            .map(|(index, ticket)| IssuedTicket {
                seat: reservation.seats.get(index).copied(),
                ..ticket
            })
            .collect();
        for ticket in &tickets {
            if let Some(seat) = ticket.seat {
                self.seats[seat as usize] = ModelSeat::Sold(ticket.ticket_id.clone());
            }
            self.tickets.insert(
                ticket.ticket_id.clone(),
                ModelTicket {
                    order_id: order_id.clone(),
                    owner: reservation.owner.clone(),
                    seat: ticket.seat,
                    checked_in_at_ms: None,
                },
            );
        }
        self.held -= u64::from(reservation.quantity);
        self.sold += u64::from(reservation.quantity);
        Ok(ShardEvent::Confirmed {
            reservation_id,
            order_id: order_id.clone(),
            tickets,
        })
    }

    fn release(
        &mut self,
        reservation_id: ReservationId,
        reason: ReleaseReason,
    ) -> Option<ShardEvent> {
        let reservation = self.reservations.remove(&reservation_id)?;
        for &seat in &reservation.seats {
            self.seats[seat as usize] = ModelSeat::Free;
        }
        self.held -= u64::from(reservation.quantity);
        self.remaining += u64::from(reservation.quantity);
        Some(ShardEvent::Released {
            reservation_id,
            reason,
        })
    }

    fn expire(&mut self, reservation_id: ReservationId, now_ms: u64) -> Option<ShardEvent> {
        let reservation = self.reservations.get(&reservation_id)?;
        let due = reservation.paying.is_none()
            && reservation
                .expires_at_ms
                .is_some_and(|at_ms| at_ms <= now_ms);
        if !due {
            return None;
        }
        self.release(reservation_id, ReleaseReason::Expired)
    }

    fn check_in(&mut self, ticket_id: &TicketId, now_ms: u64) -> Result<ShardEvent, EngineError> {
        let ticket = self
            .tickets
            .get_mut(ticket_id)
            .ok_or(EngineError::UnknownTicket)?;
        if let Some(checked_in_at_ms) = ticket.checked_in_at_ms {
            return Err(EngineError::AlreadyCheckedIn { checked_in_at_ms });
        }
        ticket.checked_in_at_ms = Some(now_ms);
        Ok(ShardEvent::CheckedIn {
            ticket_id: ticket_id.clone(),
            at_ms: now_ms,
        })
    }

    /// Everything observable about `state` agrees with the model.
    fn assert_matches(&self, state: &ShardState) {
        let availability = state.availability();
        assert_eq!(
            availability,
            Availability {
                remaining: self.remaining,
                held: self.held,
                sold: self.sold,
            }
        );
        assert_eq!(
            availability.total(),
            self.capacity + self.moved_in - self.moved_out
        );
        assert_eq!(state.allotment(), availability.total());
        assert_eq!(
            (state.moved_in(), state.moved_out()),
            (self.moved_in, self.moved_out)
        );
        let pending: Vec<(u64, u64)> = state
            .pending_moves()
            .iter()
            .map(|pending| {
                assert_eq!(pending.to_shard, MOVE_PEER);
                (pending.seq, pending.count)
            })
            .collect();
        let expected: Vec<(u64, u64)> = self
            .out_unacknowledged
            .iter()
            .map(|(seq, count)| (*seq, *count))
            .collect();
        assert_eq!(pending, expected);

        let expected_seats: Vec<SeatStatus> = self
            .seats
            .iter()
            .map(|seat| match seat {
                ModelSeat::Free => SeatStatus::Free,
                ModelSeat::Held(_) => SeatStatus::Held,
                ModelSeat::Sold(_) => SeatStatus::Sold,
            })
            .collect();
        assert_eq!(state.seats(), expected_seats.as_slice());

        let reservations = reservations_of(state);
        assert_eq!(
            reservations.keys().collect::<Vec<_>>(),
            self.reservations.keys().collect::<Vec<_>>()
        );
        for (id, expected) in &self.reservations {
            let actual = &reservations[id];
            assert_eq!(actual.owner, expected.owner, "reservation {id}");
            assert_eq!(actual.quantity, expected.quantity, "reservation {id}");
            assert_eq!(actual.seats, expected.seats, "reservation {id}");
            assert_eq!(actual.paying, expected.paying, "reservation {id}");
            for &seat in &actual.seats {
                assert_eq!(self.seats[seat as usize], ModelSeat::Held(*id));
            }
        }

        let tickets = tickets_of(state);
        assert_eq!(tickets.len() as u64, self.sold, "one ticket per sold unit");
        assert_eq!(
            tickets.keys().collect::<Vec<_>>(),
            self.tickets.keys().collect::<Vec<_>>()
        );
        let mut sold_seats = BTreeSet::new();
        for (id, expected) in &self.tickets {
            let actual = &tickets[id];
            assert_eq!(actual.order_id, expected.order_id, "ticket {id}");
            assert_eq!(actual.owner, expected.owner, "ticket {id}");
            assert_eq!(actual.seat, expected.seat, "ticket {id}");
            assert_eq!(
                actual.checked_in_at_ms, expected.checked_in_at_ms,
                "ticket {id}"
            );
            assert_eq!(actual.seat.is_some(), self.seated, "ticket {id}");
            if let Some(seat) = actual.seat {
                assert!(sold_seats.insert(seat), "seat {seat} is sold twice");
                assert_eq!(self.seats[seat as usize], ModelSeat::Sold(id.clone()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The property test.

/// Tickets a shard in the property test has at most; claims go a little past it to hit unknown seats and sell-outs.
const MODEL_CAPACITY_MAX: u64 = 12;
const MODEL_USERS: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// `hold_ttl_ms: None` reserves for a direct order instead of a hold.
    ReserveQuantity {
        user: u8,
        quantity: u32,
        up_to: bool,
        hold_ttl_ms: Option<u64>,
    },
    /// Only on seated shards; distinct seats in the order they are claimed.
    ReserveSeats {
        user: u8,
        seats: Vec<u32>,
        hold_ttl_ms: Option<u64>,
    },
    BeginPurchase {
        reservation: Index,
        as_owner: bool,
    },
    Confirm {
        reservation: Index,
        right_order: bool,
    },
    Release {
        reservation: Index,
    },
    /// A timer firing for one reservation, due or not.
    Expire {
        reservation: Index,
    },
    /// Time passes and every due hold's timer fires.
    Advance {
        ms: u64,
    },
    CheckIn {
        ticket: Index,
    },
    /// General admission only: give count to [`MOVE_PEER`].
    MoveOut {
        want: u64,
    },
    /// General admission only: a move from [`MOVE_PEER`]: a repeat, the next one or an early one.
    MoveIn {
        seq_after_last: u64,
        count: u64,
    },
    /// [`MOVE_PEER`] acknowledges the moves up to some number, sent or not.
    Acknowledge {
        seq: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let claim_max = MODEL_CAPACITY_MAX as u32 + 2;
    let hold_ttl_ms = proptest::option::weighted(0.8, 1u64..2_000);
    prop_oneof![
        4 => (0..MODEL_USERS, 1..=claim_max, any::<bool>(), hold_ttl_ms.clone()).prop_map(
            |(user, quantity, up_to, hold_ttl_ms)| Op::ReserveQuantity { user, quantity, up_to, hold_ttl_ms }
        ),
        3 => (0..MODEL_USERS, prop::collection::vec(0..claim_max, 1..5), hold_ttl_ms).prop_map(
            |(user, mut seats, hold_ttl_ms)| {
                let mut seen = BTreeSet::new();
                seats.retain(|seat| seen.insert(*seat));
                Op::ReserveSeats { user, seats, hold_ttl_ms }
            }
        ),
        2 => (any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(reservation, as_owner)| Op::BeginPurchase { reservation, as_owner }),
        2 => (any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(reservation, right_order)| Op::Confirm { reservation, right_order }),
        1 => any::<Index>().prop_map(|reservation| Op::Release { reservation }),
        1 => any::<Index>().prop_map(|reservation| Op::Expire { reservation }),
        2 => (0u64..1_000).prop_map(|ms| Op::Advance { ms }),
        2 => any::<Index>().prop_map(|ticket| Op::CheckIn { ticket }),
        1 => (1..=MODEL_CAPACITY_MAX).prop_map(|want| Op::MoveOut { want }),
        1 => (0u64..3, 1..=MODEL_CAPACITY_MAX)
            .prop_map(|(seq_after_last, count)| Op::MoveIn { seq_after_last, count }),
        1 => any::<Index>().prop_map(|seq| Op::Acknowledge { seq }),
    ]
}

/// Any reservation id issued so far, or the next one, which does not exist yet.
fn pick_reservation(model: &Model, index: &Index) -> ReservationId {
    1 + index.index(model.next_reservation_id as usize) as ReservationId
}

/// Any ticket sold so far, or one that does not exist.
fn pick_ticket(model: &Model, index: &Index) -> TicketId {
    let mut candidates: Vec<TicketId> = model.tickets.keys().cloned().collect();
    candidates.push(TicketId("t_unknown".into()));
    candidates[index.index(candidates.len())].clone()
}

/// Runs `op` on both the driver and the model and checks that they decided the same.
fn step(driver: &mut Driver, model: &mut Model, op: &Op) {
    let purpose = |driver: &Driver, hold_ttl_ms: Option<u64>| match hold_ttl_ms {
        Some(ttl_ms) => driver.hold_purpose(ttl_ms),
        None => Purpose::Order {
            order_id: OrderId::from(format!("o_direct_{}", driver.events.len())),
            meta: OrderMeta::default(),
        },
    };
    match op {
        Op::ReserveQuantity {
            user: number,
            quantity,
            up_to,
            hold_ttl_ms,
        } => {
            let claim = Claim::Quantity {
                quantity: *quantity,
                up_to: *up_to,
            };
            let purpose = purpose(driver, *hold_ttl_ms);
            let expected = model.reserve(&user(*number), &claim, &purpose);
            assert_eq!(driver.reserve(&user(*number), &claim, purpose), expected);
        }
        Op::ReserveSeats { .. } if !model.seated => {
            // General admission has no seats to name; the router refuses such a claim before it reaches a shard.
        }
        Op::ReserveSeats {
            user: number,
            seats,
            hold_ttl_ms,
        } => {
            let claim = Claim::Seats(seats.clone());
            let purpose = purpose(driver, *hold_ttl_ms);
            let expected = model.reserve(&user(*number), &claim, &purpose);
            assert_eq!(driver.reserve(&user(*number), &claim, purpose), expected);
        }
        Op::BeginPurchase {
            reservation,
            as_owner,
        } => {
            let reservation_id = pick_reservation(model, reservation);
            let owner = match model.reservations.get(&reservation_id) {
                Some(reservation) if *as_owner => reservation.owner.clone(),
                _ => UserId("u_stranger".into()),
            };
            let order_id = OrderId::from(format!("o_{}", driver.events.len()));
            let expected = model.begin_purchase(reservation_id, &owner, &order_id, driver.now_ms);
            assert_eq!(
                driver.begin_purchase(reservation_id, &owner, &order_id),
                expected
            );
        }
        Op::Confirm {
            reservation,
            right_order,
        } => {
            let reservation_id = pick_reservation(model, reservation);
            let order_id = match model.reservations.get(&reservation_id) {
                Some(ModelReservation {
                    paying: Some(order_id),
                    ..
                }) if *right_order => order_id.clone(),
                _ => OrderId("o_other".into()),
            };
            let tickets = driver.new_tickets(reservation_id);
            let expected = model.confirm(reservation_id, &order_id, tickets.clone());
            assert_eq!(driver.confirm(reservation_id, &order_id, tickets), expected);
        }
        Op::Release { reservation } => {
            let reservation_id = pick_reservation(model, reservation);
            let expected = model
                .release(reservation_id, ReleaseReason::Cancelled)
                .ok_or(EngineError::HoldNotFound);
            assert_eq!(driver.release(reservation_id), expected);
        }
        Op::Expire { reservation } => {
            let reservation_id = pick_reservation(model, reservation);
            let expected = model.expire(reservation_id, driver.now_ms);
            assert_eq!(driver.expire(reservation_id), expected);
        }
        Op::Advance { ms } => {
            driver.now_ms += ms;
            let ids: Vec<ReservationId> = model.reservations.keys().copied().collect();
            for reservation_id in ids {
                let expected = model.expire(reservation_id, driver.now_ms);
                assert_eq!(driver.expire(reservation_id), expected);
            }
        }
        Op::CheckIn { ticket } => {
            let ticket_id = pick_ticket(model, ticket);
            let expected = model.check_in(&ticket_id, driver.now_ms);
            assert_eq!(driver.check_in(&ticket_id), expected);
        }
        Op::MoveOut { .. } | Op::MoveIn { .. } if model.seated => {
            // Seats never move; the router never asks a seated shard.
        }
        Op::MoveOut { want } => {
            let expected = model.move_out(*want);
            let decision = driver.state.decide_move_out(MOVE_PEER, *want).ok_or(());
            assert_eq!(driver.commit(decision).ok(), expected);
        }
        Op::MoveIn {
            seq_after_last,
            count,
        } => {
            // A repeat of the last move carries its count, which a repeat ignores anyway.
            let seq = (model.in_last_seq + seq_after_last).max(1);
            let expected = model.move_in(seq, *count);
            let arrival = driver.state.decide_move_in(MOVE_PEER, seq, *count);
            if let MoveArrival::Apply(event) = &arrival {
                driver.commit(Ok::<_, ()>(event.clone())).expect("applied");
            }
            assert_eq!(arrival, expected);
        }
        Op::Acknowledge { seq } => {
            let seq = seq.index(model.out_last_seq as usize + 2) as u64;
            let expected = model.acknowledge(seq);
            let decision = driver
                .state
                .decide_move_acknowledged(MOVE_PEER, seq)
                .ok_or(());
            assert_eq!(driver.commit(decision).ok(), expected);
        }
    }
}

fn assert_replay_matches(driver: &Driver) {
    let replayed = driver.replay();
    let state = &driver.state;
    assert_eq!(replayed.availability(), state.availability());
    assert_eq!(replayed.seats(), state.seats());
    assert_eq!(tickets_of(&replayed), tickets_of(state));
    assert_eq!(reservations_of(&replayed), reservations_of(state));
    // Replay is deterministic down to the digest, and every invariant holds in the replayed state.
    assert_eq!(replayed.digest(), state.digest());
    assert_eq!(driver.replay().digest(), replayed.digest());
    assert_eq!(replayed.events_applied(), driver.events.len() as u64);
    assert_eq!(replayed.check(), Ok(()));
    if !driver.events.is_empty() {
        let fresh = ShardState::new(state.capacity(), state.is_seated());
        assert_ne!(
            fresh.digest(),
            state.digest(),
            "the digest sees applied events"
        );
    }
    // The next reservation gets the same number too.
    let claim = Claim::Quantity {
        quantity: 1,
        up_to: false,
    };
    let purpose = driver.hold_purpose(HOLD_TTL_MS);
    assert_eq!(
        replayed.decide_reserve(&user(0), &claim, purpose.clone()),
        state.decide_reserve(&user(0), &claim, purpose)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn shard_state_agrees_with_the_model(
        seated in any::<bool>(),
        capacity in 1..=MODEL_CAPACITY_MAX,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut driver = Driver::new(capacity, seated);
        let mut model = Model::new(capacity, seated);
        model.assert_matches(&driver.state);
        for op in &ops {
            step(&mut driver, &mut model, op);
            model.assert_matches(&driver.state);
        }
        assert_replay_matches(&driver);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Table-driven refusals.

#[derive(Clone, Copy, Debug)]
enum Shard {
    General(u64),
    Seated(u64),
}

/// One step of a scenario. Reservations are numbered from 1 in the order they are granted; tickets `t_0`, `t_1`, ...
#[derive(Clone, Copy, Debug)]
enum Step {
    Hold {
        user: &'static str,
        quantity: u32,
        up_to: bool,
    },
    HoldSeats {
        user: &'static str,
        seats: &'static [u32],
    },
    Order {
        user: &'static str,
        quantity: u32,
        order: &'static str,
    },
    Begin {
        reservation: ReservationId,
        user: &'static str,
        order: &'static str,
    },
    Confirm {
        reservation: ReservationId,
        order: &'static str,
    },
    Release {
        reservation: ReservationId,
    },
    AdvanceMs(u64),
    CheckIn {
        ticket: &'static str,
    },
}

impl Driver {
    fn run(&mut self, step: Step) -> Result<(), Refusal> {
        match step {
            Step::Hold {
                user,
                quantity,
                up_to,
            } => {
                let claim = Claim::Quantity { quantity, up_to };
                let purpose = self.hold_purpose(HOLD_TTL_MS);
                self.reserve(&user.into(), &claim, purpose)
                    .map_err(Refusal::Reserve)?;
            }
            Step::HoldSeats { user, seats } => {
                let claim = Claim::Seats(seats.to_vec());
                let purpose = self.hold_purpose(HOLD_TTL_MS);
                self.reserve(&user.into(), &claim, purpose)
                    .map_err(Refusal::Reserve)?;
            }
            Step::Order {
                user,
                quantity,
                order,
            } => {
                let claim = Claim::Quantity {
                    quantity,
                    up_to: false,
                };
                let purpose = Purpose::Order {
                    order_id: order.into(),
                    meta: OrderMeta::default(),
                };
                self.reserve(&user.into(), &claim, purpose)
                    .map_err(Refusal::Reserve)?;
            }
            Step::Begin {
                reservation,
                user,
                order,
            } => {
                self.begin_purchase(reservation, &user.into(), &order.into())
                    .map_err(Refusal::Engine)?;
            }
            Step::Confirm { reservation, order } => {
                let tickets = self.new_tickets(reservation);
                self.confirm(reservation, &order.into(), tickets)
                    .map_err(Refusal::Engine)?;
            }
            Step::Release { reservation } => {
                self.release(reservation).map_err(Refusal::Engine)?;
            }
            Step::AdvanceMs(ms) => self.now_ms += ms,
            Step::CheckIn { ticket } => {
                self.check_in(&ticket.into()).map_err(Refusal::Engine)?;
            }
        }
        Ok(())
    }
}

/// Runs `steps` on a fresh shard; every step but the last must succeed. The last one must end with `expected`:
/// the counts after it, or its refusal (and then it changed nothing).
fn check(shard: Shard, steps: &[Step], expected: Result<Availability, Refusal>) {
    let mut driver = match shard {
        Shard::General(capacity) => Driver::new(capacity, false),
        Shard::Seated(capacity) => Driver::new(capacity, true),
    };
    let (last, setup) = steps.split_last().expect("a scenario has a step to check");
    for step in setup {
        if let Err(refusal) = driver.run(*step) {
            panic!("setup step {step:?} was refused: {refusal:?}");
        }
    }
    let before = driver.state.clone();
    let outcome = driver.run(*last).map(|()| driver.state.availability());
    assert_eq!(outcome, expected, "{shard:?} {steps:?}");
    if outcome.is_err() {
        assert_eq!(driver.state.availability(), before.availability());
        assert_eq!(driver.state.seats(), before.seats());
        assert_eq!(reservations_of(&driver.state), reservations_of(&before));
        assert_eq!(tickets_of(&driver.state), tickets_of(&before));
    }
}

fn counts(remaining: u64, held: u64, sold: u64) -> Result<Availability, Refusal> {
    Ok(Availability {
        remaining,
        held,
        sold,
    })
}

fn refused(refusal: ReserveRefusal) -> Result<Availability, Refusal> {
    Err(Refusal::Reserve(refusal))
}

fn failed(error: EngineError) -> Result<Availability, Refusal> {
    Err(Refusal::Engine(error))
}

#[test]
fn quantity_claims() {
    use Step::*;
    let hold = |quantity, up_to| Hold {
        user: "u_ann",
        quantity,
        up_to,
    };
    check(Shard::General(5), &[hold(5, false)], counts(0, 5, 0));
    check(
        Shard::General(5),
        &[hold(6, false)],
        refused(ReserveRefusal::SoldOut),
    );
    check(Shard::General(5), &[hold(6, true)], counts(0, 5, 0));
    check(
        Shard::General(5),
        &[hold(3, false), hold(3, false)],
        refused(ReserveRefusal::SoldOut),
    );
    check(
        Shard::General(5),
        &[hold(3, false), hold(3, true)],
        counts(0, 5, 0),
    );
    check(
        Shard::General(5),
        &[hold(5, false), hold(1, true)],
        refused(ReserveRefusal::SoldOut),
    );
    check(
        Shard::Seated(4),
        &[hold(2, false), Release { reservation: 1 }, hold(4, false)],
        counts(0, 4, 0),
    );
}

#[test]
fn seat_claims() {
    use Step::*;
    let seats = |user, seats| HoldSeats { user, seats };
    check(
        Shard::Seated(4),
        &[seats("u_ann", &[0, 3])],
        counts(2, 2, 0),
    );
    check(
        Shard::Seated(4),
        &[seats("u_ann", &[1]), seats("u_bob", &[0, 1])],
        refused(ReserveRefusal::SeatTaken { local_seat: 1 }),
    );
    check(
        Shard::Seated(4),
        &[seats("u_ann", &[3, 4])],
        refused(ReserveRefusal::UnknownSeat { local_seat: 4 }),
    );
    // The first problem in the order the seats were named is the one reported.
    check(
        Shard::Seated(4),
        &[seats("u_ann", &[2]), seats("u_bob", &[9, 2])],
        refused(ReserveRefusal::UnknownSeat { local_seat: 9 }),
    );
    check(
        Shard::Seated(4),
        &[seats("u_ann", &[2]), seats("u_bob", &[2, 9])],
        refused(ReserveRefusal::SeatTaken { local_seat: 2 }),
    );
    check(
        Shard::Seated(4),
        &[
            seats("u_ann", &[2]),
            Begin {
                reservation: 1,
                user: "u_ann",
                order: "o_1",
            },
            Confirm {
                reservation: 1,
                order: "o_1",
            },
            seats("u_bob", &[2]),
        ],
        refused(ReserveRefusal::SeatTaken { local_seat: 2 }),
    );
    check(
        Shard::Seated(4),
        &[
            seats("u_ann", &[2]),
            Release { reservation: 1 },
            seats("u_bob", &[2]),
        ],
        counts(3, 1, 0),
    );
}

#[test]
fn purchases() {
    use Step::*;
    let hold = Hold {
        user: "u_ann",
        quantity: 2,
        up_to: false,
    };
    let begin = |user| Begin {
        reservation: 1,
        user,
        order: "o_1",
    };
    let confirm = |order| Confirm {
        reservation: 1,
        order,
    };
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), confirm("o_1")],
        counts(3, 0, 2),
    );
    check(
        Shard::General(5),
        &[hold, begin("u_bob")],
        failed(EngineError::HoldNotFound),
    );
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), begin("u_ann")],
        failed(EngineError::HoldNotActive),
    );
    check(
        Shard::General(5),
        &[hold, AdvanceMs(HOLD_TTL_MS - 1), begin("u_ann")],
        counts(3, 2, 0),
    );
    check(
        Shard::General(5),
        &[hold, AdvanceMs(HOLD_TTL_MS), begin("u_ann")],
        failed(EngineError::HoldExpired),
    );
    check(
        Shard::General(5),
        &[hold, Release { reservation: 1 }, begin("u_ann")],
        failed(EngineError::HoldExpired),
    );
    check(
        Shard::General(5),
        &[hold, confirm("o_1")],
        failed(EngineError::OrderNotFound),
    );
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), confirm("o_2")],
        failed(EngineError::OrderNotFound),
    );
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), confirm("o_1"), confirm("o_1")],
        failed(EngineError::OrderNotFound),
    );
    // A paid-for hold is past expiry's reach, and a release still returns it.
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), AdvanceMs(HOLD_TTL_MS), confirm("o_1")],
        counts(3, 0, 2),
    );
    check(
        Shard::General(5),
        &[hold, begin("u_ann"), Release { reservation: 1 }],
        counts(5, 0, 0),
    );
    check(
        Shard::General(5),
        &[hold, Release { reservation: 1 }, Release { reservation: 1 }],
        failed(EngineError::HoldNotFound),
    );
    let order = |order| Order {
        user: "u_ann",
        quantity: 1,
        order,
    };
    check(
        Shard::Seated(3),
        &[order("o_9"), confirm("o_9")],
        counts(2, 0, 1),
    );
    check(
        Shard::Seated(3),
        &[order("o_9"), begin("u_ann")],
        failed(EngineError::HoldNotActive),
    );
    check(
        Shard::Seated(3),
        &[order("o_9"), confirm("o_8")],
        failed(EngineError::OrderNotFound),
    );
}

#[test]
fn check_ins() {
    use Step::*;
    let sale = [
        Hold {
            user: "u_ann",
            quantity: 2,
            up_to: false,
        },
        Begin {
            reservation: 1,
            user: "u_ann",
            order: "o_1",
        },
        Confirm {
            reservation: 1,
            order: "o_1",
        },
    ];
    let with = |steps: &[Step]| [&sale[..], steps].concat();
    check(
        Shard::Seated(2),
        &with(&[CheckIn { ticket: "t_1" }]),
        counts(0, 0, 2),
    );
    check(
        Shard::Seated(2),
        &with(&[CheckIn { ticket: "t_2" }]),
        failed(EngineError::UnknownTicket),
    );
    check(
        Shard::Seated(2),
        &with(&[
            CheckIn { ticket: "t_0" },
            AdvanceMs(5),
            CheckIn { ticket: "t_0" },
        ]),
        failed(EngineError::AlreadyCheckedIn {
            checked_in_at_ms: START_MS,
        }),
    );
}

/// Each sold seat is on exactly one ticket, in the order the reservation named them.
#[test]
fn tickets_carry_their_seats() {
    let mut driver = Driver::new(6, true);
    let owner = UserId::from("u_ann");
    let purpose = driver.hold_purpose(HOLD_TTL_MS);
    driver
        .reserve(&owner, &Claim::Seats(vec![4, 1, 5]), purpose)
        .expect("free seats");
    let order_id = OrderId::from("o_1");
    driver
        .begin_purchase(1, &owner, &order_id)
        .expect("live hold");
    let tickets = driver.new_tickets(1);
    driver.confirm(1, &order_id, tickets).expect("paying hold");
    let seats: BTreeMap<String, Option<u32>> = driver
        .state
        .tickets()
        .map(|(id, ticket)| (id.0.to_string(), ticket.seat))
        .collect();
    let expected: BTreeMap<String, Option<u32>> = [("t_0", 4), ("t_1", 1), ("t_2", 5)]
        .into_iter()
        .map(|(id, seat)| (id.to_owned(), Some(seat)))
        .collect();
    assert_eq!(seats, expected);
}

#[test]
fn book_views_read_in_pages_give_the_whole_view() {
    let mut driver = Driver::new(30, false);
    for number in 0..25u8 {
        let owner = user(number % 3);
        let order_id = OrderId::from(format!("o_{number}"));
        let purpose = Purpose::Order {
            order_id: order_id.clone(),
            meta: OrderMeta::default(),
        };
        let claim = Claim::Quantity {
            quantity: 1,
            up_to: false,
        };
        let Ok(ShardEvent::Reserved { reservation_id, .. }) =
            driver.reserve(&owner, &claim, purpose)
        else {
            panic!("reserved");
        };
        if number < 20 {
            let tickets = driver.new_tickets(reservation_id);
            driver
                .confirm(reservation_id, &order_id, tickets)
                .expect("confirmed");
        }
    }
    let include = |owner: &UserId| owner != &user(2);
    let whole = driver.state.book_view(4, include);
    assert!(whole.next.is_none());
    let mut paged = driver.state.book_view_page(4, include, None, 4);
    let mut pages = 1;
    while let Some(after) = paged.next.clone() {
        let page = driver.state.book_view_page(4, include, Some(&after), 4);
        assert!(
            page.reservations.is_empty(),
            "reservations come with the first page"
        );
        paged.extend(page);
        pages += 1;
    }
    let mut expected = whole.tickets.clone();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(paged.tickets, expected, "every ticket once, in id order");
    assert_eq!(pages, expected.len().div_ceil(4));
    assert!(
        paged
            .tickets
            .iter()
            .all(|(_, ticket)| include(&ticket.owner))
    );
    assert_eq!(paged.reservations.len(), whole.reservations.len());
    let unpaid = (20..25).filter(|number| number % 3 != 2).count();
    assert_eq!(
        whole.reservations.len(),
        unpaid,
        "the unpaid reservations of users 0 and 1"
    );
}

//! The concert shard actor: one slice of one concert's inventory, in memory.
//!
//! Who sends to it: the [`Router`](crate::router::Router), on behalf of the order desk and the HTTP front.
//! Its mailbox holds [`SHARD_MAILBOX_MAX`] messages; when it is full, `send` waits for room, so callers slow down
//! instead of piling up (the HTTP front bounds how many requests wait at all). The actor never waits for the disk
//! or the payment provider: it applies an event, hands it to the journal and returns the journal's [`Commit`] in its
//! reply for the caller to await. Hold expiry is a timer per hold in this actor, not a sweep of everything.

use crate::clock::Clock;
use crate::error::EngineError;
use crate::ids::{ConcertId, OrderId, TicketId, UserId};
use crate::journal::{Commit, Journal, JournalRecord};
use crate::shard_state::{
    Availability, Claim, IssuedTicket, Purpose, ReleaseReason, ReservationId, ReserveRefusal,
    SeatStatus, ShardEvent, ShardState,
};
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Messages a shard's mailbox holds before senders wait. FACTS.md: 1024 gave +28% over actix's default of 16.
pub const SHARD_MAILBOX_MAX: usize = 1024;

/// Figures a shard publishes for others to read without a round trip: its remaining count (a hint for the
/// router, exact at the moment it was written) and the concert-wide remaining gauge.
#[derive(Debug)]
pub struct ShardGauges {
    pub remaining: AtomicU64,
    concert_remaining: metrics::Gauge,
}

impl ShardGauges {
    pub fn new(remaining: u64, concert_remaining: metrics::Gauge) -> Self {
        Self {
            remaining: AtomicU64::new(remaining),
            concert_remaining,
        }
    }
}

pub struct ShardActor {
    concert_id: ConcertId,
    shard: u32,
    state: ShardState,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    gauges: Arc<ShardGauges>,
}

impl ShardActor {
    pub fn new(
        concert_id: ConcertId,
        shard: u32,
        state: ShardState,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        gauges: Arc<ShardGauges>,
    ) -> Self {
        Self {
            concert_id,
            shard,
            state,
            journal,
            clock,
            gauges,
        }
    }

    /// Applies `event`, journals it, and publishes the new remaining count.
    fn commit(&mut self, event: ShardEvent) -> Commit {
        let before = self.state.availability().remaining;
        self.state.apply(&event);
        let after = self.state.availability().remaining;
        if before != after {
            self.gauges.remaining.store(after, Ordering::Release);
            self.gauges
                .concert_remaining
                .increment(after as f64 - before as f64);
        }
        self.journal.append(JournalRecord {
            concert_id: self.concert_id.clone(),
            shard: self.shard,
            event,
        })
    }

    fn schedule_expiry(
        &self,
        reservation_id: ReservationId,
        expires_at_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let delay_ms = expires_at_ms.saturating_sub(self.clock.now_ms());
        ctx.run_later(Duration::from_millis(delay_ms), move |actor, ctx| {
            actor.expire(reservation_id, ctx);
        });
    }

    fn expire(&mut self, reservation_id: ReservationId, ctx: &mut Context<Self>) {
        let now_ms = self.clock.now_ms();
        if let Some(event) = self.state.decide_expire(reservation_id, now_ms) {
            tracing::debug!(concert_id = %self.concert_id, shard = self.shard, reservation_id, "hold expired");
            // Nobody waits for this commit: a crash before it is durable replays the hold, and recovery expires it.
            drop(self.commit(event));
            return;
        }
        // The timer can fire a little before the wall clock agrees; try again when it does.
        if let Some(reservation) = self.state.reservation(reservation_id)
            && reservation.paying.is_none()
            && let Purpose::Hold { expires_at_ms, .. } = reservation.purpose
        {
            self.schedule_expiry(reservation_id, expires_at_ms, ctx);
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(SHARD_MAILBOX_MAX);
        // Holds restored from a journal or snapshot get their timers back.
        let holds: Vec<(ReservationId, u64)> = self
            .state
            .reservations()
            .filter_map(|(id, reservation)| match reservation.purpose {
                Purpose::Hold { expires_at_ms, .. } if reservation.paying.is_none() => {
                    Some((*id, expires_at_ms))
                }
                _ => None,
            })
            .collect();
        for (reservation_id, expires_at_ms) in holds {
            self.schedule_expiry(reservation_id, expires_at_ms, ctx);
        }
    }
}

/// Reserve tickets or seats.
#[derive(Message)]
#[rtype(result = "Result<Reserved, ReserveRefusal>")]
pub struct Reserve {
    pub owner: UserId,
    pub claim: Claim,
    pub purpose: Purpose,
}

#[derive(Debug)]
pub struct Reserved {
    pub reservation_id: ReservationId,
    pub quantity: u32,
    /// Local seat indices, empty for general admission.
    pub seats: Vec<u32>,
    pub commit: Commit,
}

impl Handler<Reserve> for ShardActor {
    type Result = Result<Reserved, ReserveRefusal>;

    fn handle(&mut self, message: Reserve, ctx: &mut Self::Context) -> Self::Result {
        let event = self
            .state
            .decide_reserve(&message.owner, &message.claim, message.purpose)?;
        let ShardEvent::Reserved {
            reservation_id,
            quantity,
            ref seats,
            ref purpose,
            ..
        } = event
        else {
            unreachable!("decide_reserve returns a Reserved event");
        };
        let seats = seats.clone();
        if let Purpose::Hold { expires_at_ms, .. } = *purpose {
            self.schedule_expiry(reservation_id, expires_at_ms, ctx);
        }
        let commit = self.commit(event);
        Ok(Reserved {
            reservation_id,
            quantity,
            seats,
            commit,
        })
    }
}

/// Turn a hold into an order being paid: from now on it no longer expires.
#[derive(Message)]
#[rtype(result = "Result<Commit, EngineError>")]
pub struct BeginPurchase {
    pub reservation_id: ReservationId,
    pub owner: UserId,
    pub order_id: OrderId,
}

impl Handler<BeginPurchase> for ShardActor {
    type Result = Result<Commit, EngineError>;

    fn handle(&mut self, message: BeginPurchase, _ctx: &mut Self::Context) -> Self::Result {
        let now_ms = self.clock.now_ms();
        match self.state.decide_begin_purchase(
            message.reservation_id,
            &message.owner,
            &message.order_id,
            now_ms,
        ) {
            Ok(event) => Ok(self.commit(event)),
            Err(EngineError::HoldExpired) => {
                // Due but its timer has not run yet: release it now rather than sell an expired hold.
                if let Some(event) = self.state.decide_expire(message.reservation_id, now_ms) {
                    drop(self.commit(event));
                }
                Err(EngineError::HoldExpired)
            }
            Err(error) => Err(error),
        }
    }
}

/// Sell a paid reservation: its seats become sold and its tickets exist.
#[derive(Message)]
#[rtype(result = "Result<Commit, EngineError>")]
pub struct Confirm {
    pub reservation_id: ReservationId,
    pub order_id: OrderId,
    pub tickets: Vec<IssuedTicket>,
}

impl Handler<Confirm> for ShardActor {
    type Result = Result<Commit, EngineError>;

    fn handle(&mut self, message: Confirm, _ctx: &mut Self::Context) -> Self::Result {
        let event = self.state.decide_confirm(
            message.reservation_id,
            &message.order_id,
            message.tickets,
        )?;
        Ok(self.commit(event))
    }
}

/// Return a reservation's tickets to sale.
#[derive(Message)]
#[rtype(result = "Result<Commit, EngineError>")]
pub struct Release {
    pub reservation_id: ReservationId,
    pub reason: ReleaseReason,
}

impl Handler<Release> for ShardActor {
    type Result = Result<Commit, EngineError>;

    fn handle(&mut self, message: Release, _ctx: &mut Self::Context) -> Self::Result {
        let event = self
            .state
            .decide_release(message.reservation_id, message.reason)?;
        Ok(self.commit(event))
    }
}

/// Mark a ticket as used at the gate.
#[derive(Message)]
#[rtype(result = "Result<(u64, Commit), EngineError>")]
pub struct CheckIn {
    pub ticket_id: TicketId,
}

impl Handler<CheckIn> for ShardActor {
    type Result = Result<(u64, Commit), EngineError>;

    fn handle(&mut self, message: CheckIn, _ctx: &mut Self::Context) -> Self::Result {
        let event = self
            .state
            .decide_check_in(&message.ticket_id, self.clock.now_ms())?;
        let ShardEvent::CheckedIn { at_ms, .. } = event else {
            unreachable!("decide_check_in returns a CheckedIn event");
        };
        Ok((at_ms, self.commit(event)))
    }
}

#[derive(Message)]
#[rtype(result = "Availability")]
pub struct GetAvailability;

impl Handler<GetAvailability> for ShardActor {
    type Result = MessageResult<GetAvailability>;

    fn handle(&mut self, _message: GetAvailability, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.availability())
    }
}

#[derive(Message)]
#[rtype(result = "Vec<SeatStatus>")]
pub struct GetSeats;

impl Handler<GetSeats> for ShardActor {
    type Result = MessageResult<GetSeats>;

    fn handle(&mut self, _message: GetSeats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.seats().to_vec())
    }
}

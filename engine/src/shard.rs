//! The concert shard actor: one slice of one concert's inventory, in memory.
//!
//! Who sends to it: the [`Router`](crate::router::Router), on behalf of the order desk and the HTTP front.
//! Its mailbox holds [`SHARD_MAILBOX_MAX`] messages; when it is full, `send` waits for room, so callers slow down
//! instead of piling up (the HTTP front bounds how many requests wait at all). The actor never waits for the disk
//! or the payment provider: it applies an event, hands it to the journal and returns the journal's [`Commit`] in its
//! reply for the caller to await. Hold expiry is one timer per shard, armed for the earliest hold: holds wait in a
//! heap by expiry, and each firing releases only the holds that are due. (actix polls every timer of an actor each
//! time the actor wakes, so a timer per hold made every message cost as much as the number of recent holds.)

use crate::clock::Clock;
use crate::error::EngineError;
use crate::feed::{ConcertFeed, SeatChangeKind};
use crate::ids::{ConcertId, OrderId, TicketId, UserId};
use crate::journal::{Commit, Journal, JournalRecord, ShardSnapshot};
use crate::shard_state::{
    Availability, BOOK_VIEW_TICKETS_MAX, Claim, IssuedTicket, MoveArrival, OrderMeta, PendingMove,
    Purpose, PurposeKey, ReleaseReason, ReservationId, ReserveRefusal, SeatStatus, ShardBookView,
    ShardEvent, ShardState,
};
use actix::prelude::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Messages a shard's mailbox holds before senders wait. FACTS.md: 1024 gave +28% over actix's default of 16.
pub const SHARD_MAILBOX_MAX: usize = 1024;
/// Purposes whose reservations were released because their reply was lost, remembered so that a reservation for
/// one of them arriving late is refused; the oldest are forgotten first. A late request arrives within its
/// connection's lifetime, seconds, long before this many others are withdrawn.
pub const WITHDRAWN_PURPOSES_MAX: usize = 65_536;

/// Figures a shard publishes for others to read without a round trip: its remaining count (a hint for the
/// router, exact at the moment it was written) and the concert-wide remaining gauge.
#[derive(Debug)]
pub struct ShardGauges {
    pub remaining: AtomicU64,
    /// Whether the shard has sent moves its receivers have not acknowledged: what `Router::upkeep` looks for.
    pub moves_pending: AtomicBool,
    concert_remaining: metrics::Gauge,
}

impl ShardGauges {
    pub fn new(remaining: u64, concert_remaining: metrics::Gauge) -> Self {
        Self {
            remaining: AtomicU64::new(remaining),
            moves_pending: AtomicBool::new(false),
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
    feed: Arc<ConcertFeed>,
    /// Every hold by expiry, earliest first, one entry per hold (so at most the holds made within one hold TTL).
    /// An entry whose hold ended another way is dropped when it comes due.
    expiries: BinaryHeap<Reverse<(u64, ReservationId)>>,
    /// The one expiry timer while it is armed: the time it is for, and its handle to re-arm it earlier.
    expiry_timer: Option<(u64, SpawnHandle)>,
    /// Purposes released by [`ReleaseFor`], oldest first, and the same as a set: never reserved again here.
    withdrawn: VecDeque<PurposeKey>,
    withdrawn_set: HashSet<PurposeKey>,
}

impl ShardActor {
    pub fn new(
        concert_id: ConcertId,
        shard: u32,
        state: ShardState,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        gauges: Arc<ShardGauges>,
        feed: Arc<ConcertFeed>,
    ) -> Self {
        Self {
            concert_id,
            shard,
            state,
            journal,
            clock,
            gauges,
            feed,
            expiries: BinaryHeap::new(),
            expiry_timer: None,
            withdrawn: VecDeque::new(),
            withdrawn_set: HashSet::new(),
        }
    }

    fn withdraw(&mut self, key: PurposeKey) {
        if !self.withdrawn_set.insert(key.clone()) {
            return;
        }
        self.withdrawn.push_back(key);
        if self.withdrawn.len() > WITHDRAWN_PURPOSES_MAX
            && let Some(oldest) = self.withdrawn.pop_front()
        {
            self.withdrawn_set.remove(&oldest);
        }
    }

    /// Applies `event`, journals it, and publishes the new remaining count and the seats it changed.
    fn commit(&mut self, event: ShardEvent) -> Commit {
        let before = self.state.availability();
        // Before applying: a confirmation or a release names only its reservation, whose seats are gone after.
        // Nothing can read the shard in between, so subscribers still see the changes in the order applied.
        self.publish_seats(&event);
        self.state.apply(&event);
        let after = self.state.availability();
        if before.remaining != after.remaining {
            self.gauges
                .remaining
                .store(after.remaining, Ordering::Release);
            self.gauges
                .concert_remaining
                .increment(after.remaining as f64 - before.remaining as f64);
        }
        if before != after {
            self.feed.set_counts(self.shard, after);
        }
        if matches!(
            event,
            ShardEvent::MovedOut { .. } | ShardEvent::MoveAcknowledged { .. }
        ) {
            self.gauges
                .moves_pending
                .store(self.state.has_pending_moves(), Ordering::Release);
        }
        let commit = self.journal.append(JournalRecord {
            concert_id: self.concert_id.clone(),
            shard: self.shard,
            seq: self.state.events_applied(),
            event,
        });
        if let Some(every) = self.journal.snapshot_every_events()
            && self.state.events_applied().is_multiple_of(every)
        {
            // Nobody waits for a periodic snapshot: until it is durable, the journal still covers its events.
            drop(self.snapshot());
        }
        commit
    }

    /// Publishes the seats `event` is about to change, and how, to the concert's feed.
    fn publish_seats(&self, event: &ShardEvent) {
        if !self.state.is_seated() {
            return;
        }
        let of_reservation = |reservation_id: &ReservationId| {
            self.state
                .reservation(*reservation_id)
                .map(|reservation| reservation.seats.as_slice())
        };
        let change = match event {
            ShardEvent::Reserved { seats, .. } => Some((seats.as_slice(), SeatChangeKind::Held)),
            ShardEvent::Confirmed { reservation_id, .. } => {
                of_reservation(reservation_id).map(|seats| (seats, SeatChangeKind::Sold))
            }
            ShardEvent::Released {
                reservation_id,
                reason,
            } => {
                let kind = match reason {
                    ReleaseReason::Expired => SeatChangeKind::Expired,
                    _ => SeatChangeKind::Released,
                };
                of_reservation(reservation_id).map(|seats| (seats, kind))
            }
            ShardEvent::PurchaseStarted { .. }
            | ShardEvent::CheckedIn { .. }
            | ShardEvent::MovedOut { .. }
            | ShardEvent::MovedIn { .. }
            | ShardEvent::MoveAcknowledged { .. } => None,
        };
        if let Some((seats, kind)) = change {
            self.feed.publish_seats(self.shard, seats, kind);
        }
    }

    fn snapshot(&self) -> Commit {
        self.journal.save_snapshot(ShardSnapshot {
            concert_id: self.concert_id.clone(),
            shard: self.shard,
            state: self.state.clone(),
        })
    }

    fn schedule_expiry(
        &mut self,
        reservation_id: ReservationId,
        expires_at_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        self.expiries.push(Reverse((expires_at_ms, reservation_id)));
        self.arm_expiry_timer(ctx);
    }

    /// Points the timer at the earliest expiry, unless it is already armed for that time or earlier.
    fn arm_expiry_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(&Reverse((due_ms, _))) = self.expiries.peek() else {
            return;
        };
        if let Some((armed_ms, handle)) = self.expiry_timer {
            if armed_ms <= due_ms {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay_ms = due_ms.saturating_sub(self.clock.now_ms());
        let handle = ctx.run_later(Duration::from_millis(delay_ms), |actor, ctx| {
            actor.expiry_timer = None;
            actor.expire_due(ctx);
        });
        self.expiry_timer = Some((due_ms, handle));
    }

    /// Releases every hold whose time is up and is not being paid for, then re-arms the timer for the next one.
    fn expire_due(&mut self, ctx: &mut Context<Self>) {
        let now_ms = self.clock.now_ms();
        while let Some(&Reverse((due_ms, reservation_id))) = self.expiries.peek()
            && due_ms <= now_ms
        {
            self.expiries.pop();
            if let Some(event) = self.state.decide_expire(reservation_id, now_ms) {
                tracing::debug!(concert_id = %self.concert_id, shard = self.shard, reservation_id, "hold expired");
                // Nobody waits for this commit: a crash before it is durable replays the hold, and recovery expires it.
                drop(self.commit(event));
            }
        }
        // The timer can fire a little before the clock agrees; the holds not yet due get it back for their time.
        self.arm_expiry_timer(ctx);
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(SHARD_MAILBOX_MAX);
        self.gauges
            .moves_pending
            .store(self.state.has_pending_moves(), Ordering::Release);
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
        if !self.withdrawn_set.is_empty() && self.withdrawn_set.contains(&message.purpose.key()) {
            // Its coordinator gave up on it and released it already; nobody waits for this reply.
            return Err(ReserveRefusal::SoldOut);
        }
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
    pub meta: OrderMeta,
}

impl Handler<BeginPurchase> for ShardActor {
    type Result = Result<Commit, EngineError>;

    fn handle(&mut self, message: BeginPurchase, _ctx: &mut Self::Context) -> Self::Result {
        let now_ms = self.clock.now_ms();
        match self.state.decide_begin_purchase(
            message.reservation_id,
            &message.owner,
            &message.order_id,
            &message.meta,
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
        if self.state.is_confirmed(&message.order_id, &message.tickets) {
            // A confirmation repeated after its reply was lost: the tickets exist, durable once the first is.
            return Ok(self.journal.barrier());
        }
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
        match self
            .state
            .decide_release(message.reservation_id, message.reason)
        {
            Ok(event) => Ok(self.commit(event)),
            // Gone already (released, expired or sold): whatever ended it is durable once this completes.
            Err(EngineError::HoldNotFound) => Ok(self.journal.barrier()),
            Err(error) => Err(error),
        }
    }
}

/// Release every reservation made for a hold or an order, if any: its reply was lost, so its number is unknown.
#[derive(Message)]
#[rtype(result = "Vec<Commit>")]
pub struct ReleaseFor {
    pub key: PurposeKey,
    pub reason: ReleaseReason,
}

impl Handler<ReleaseFor> for ShardActor {
    type Result = MessageResult<ReleaseFor>;

    fn handle(&mut self, message: ReleaseFor, _ctx: &mut Self::Context) -> Self::Result {
        let events = self.state.decide_release_for(&message.key, message.reason);
        self.withdraw(message.key);
        if events.is_empty() {
            // Nothing held for it: never reserved, or released by an earlier repeat durable once this completes.
            return MessageResult(vec![self.journal.barrier()]);
        }
        MessageResult(events.into_iter().map(|event| self.commit(event)).collect())
    }
}

/// Give unsold tickets to another shard of the concert (general admission): `None` when none are left, else the
/// move's number and count.
#[derive(Message)]
#[rtype(result = "Option<(u64, u64, Commit)>")]
pub struct MoveOut {
    pub to_shard: u32,
    pub want: u64,
}

impl Handler<MoveOut> for ShardActor {
    type Result = MessageResult<MoveOut>;

    fn handle(&mut self, message: MoveOut, _ctx: &mut Self::Context) -> Self::Result {
        let Some(event) = self.state.decide_move_out(message.to_shard, message.want) else {
            return MessageResult(None);
        };
        let ShardEvent::MovedOut { seq, count, .. } = event else {
            unreachable!("decide_move_out returns a MovedOut event");
        };
        MessageResult(Some((seq, count, self.commit(event))))
    }
}

/// Take the tickets another shard moved here.
#[derive(Message)]
#[rtype(result = "(MoveArrival, Commit)")]
pub struct MoveIn {
    pub from_shard: u32,
    pub seq: u64,
    pub count: u64,
}

impl Handler<MoveIn> for ShardActor {
    type Result = MessageResult<MoveIn>;

    fn handle(&mut self, message: MoveIn, _ctx: &mut Self::Context) -> Self::Result {
        let arrival = self
            .state
            .decide_move_in(message.from_shard, message.seq, message.count);
        let commit = match &arrival {
            MoveArrival::Apply(event) => self.commit(event.clone()),
            // Applied by an earlier delivery: durable once this completes, before anyone acknowledges it.
            MoveArrival::Repeated => self.journal.barrier(),
            MoveArrival::Early { .. } => Commit::done(),
        };
        MessageResult((arrival, commit))
    }
}

/// The receiver has the moves up to `seq`: stop counting them as in transit.
#[derive(Message)]
#[rtype(result = "Commit")]
pub struct MoveAcknowledged {
    pub to_shard: u32,
    pub seq: u64,
}

impl Handler<MoveAcknowledged> for ShardActor {
    type Result = MessageResult<MoveAcknowledged>;

    fn handle(&mut self, message: MoveAcknowledged, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            match self
                .state
                .decide_move_acknowledged(message.to_shard, message.seq)
            {
                Some(event) => self.commit(event),
                None => self.journal.barrier(),
            },
        )
    }
}

/// The moves this shard sent that their receivers have not acknowledged.
#[derive(Message)]
#[rtype(result = "Vec<PendingMove>")]
pub struct GetPendingMoves;

impl Handler<GetPendingMoves> for ShardActor {
    type Result = MessageResult<GetPendingMoves>;

    fn handle(&mut self, _message: GetPendingMoves, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.pending_moves())
    }
}

/// A page of what this shard holds for the users `include` accepts, for the book of their node.
#[derive(Message)]
#[rtype(result = "ShardBookView")]
pub struct GetBookView {
    pub include: Box<dyn Fn(&UserId) -> bool + Send>,
    pub after: Option<TicketId>,
}

impl Handler<GetBookView> for ShardActor {
    type Result = MessageResult<GetBookView>;

    fn handle(&mut self, message: GetBookView, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.book_view_page(
            self.shard,
            message.include,
            message.after.as_ref(),
            BOOK_VIEW_TICKETS_MAX,
        ))
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

/// Write a snapshot of the shard now; the commit completes once it is durable.
#[derive(Message)]
#[rtype(result = "Commit")]
pub struct TakeSnapshot;

impl Handler<TakeSnapshot> for ShardActor {
    type Result = MessageResult<TakeSnapshot>;

    fn handle(&mut self, _message: TakeSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

/// A copy of the shard's state, for tests and offline tools.
#[derive(Message)]
#[rtype(result = "ShardState")]
pub struct GetState;

impl Handler<GetState> for ShardActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _message: GetState, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

//! The per-node router: which concerts exist, their shard actors, and how a request is spread over shards.
//!
//! Shard actors are started round-robin on the node's arbiters (one per core). A general-admission claim goes
//! first to a shard chosen by the buyer (so buyers spread over shards), then to any other shard that can serve it
//! whole, and near the end of a sale it is gathered from several shards; `sold_out` is answered only when the
//! shards together have fewer tickets left than asked. Gatherings of one concert take turns: a gathering holds
//! part of an order for a moment and gives it back if it cannot complete it, and tickets held that way must not
//! make another buyer's request look sold out. A seated claim goes to the shards that own the seats, all or
//! nothing.

use crate::clock::Clock;
use crate::concert::ConcertSpec;
use crate::error::EngineError;
use crate::feed::ConcertFeed;
use crate::ids::{ConcertId, OrderId, TicketId, UserId};
use crate::journal::{Commit, Journal};
use crate::shard::{
    BeginPurchase, CheckIn, Confirm, GetAvailability, GetSeats, GetState, Release, Reserve,
    Reserved, ShardActor, ShardGauges, TakeSnapshot,
};
use crate::shard_state::{
    Availability, Claim, IssuedTicket, OrderMeta, Purpose, ReleaseReason, ReservationId,
    ReserveRefusal, SeatStatus, ShardState,
};
use actix::prelude::*;
use futures_util::future::join_all;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Concerts one node serves at most.
pub const CONCERTS_MAX: usize = 10_000;
/// Rounds of gathering a general-admission order from several shards before answering `overloaded`. Each round
/// either succeeds, finds the concert sold out, or lost a race to another order that made progress.
pub const GATHER_ATTEMPTS_MAX: u32 = 8;

/// What a caller asks one concert for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClaimRequest {
    Quantity(u32),
    /// Seat labels such as `A-3-17`.
    Seats(Vec<String>),
}

/// The piece of a reservation that one shard holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub shard: u32,
    pub reservation_id: ReservationId,
    pub quantity: u32,
    /// Concert-wide seat indices, empty for general admission.
    pub seats: Vec<u64>,
}

pub struct ShardHandle {
    addr: Addr<ShardActor>,
    gauges: Arc<ShardGauges>,
    depth: AtomicI64,
    depth_gauge: metrics::Gauge,
}

/// Decrements the mailbox-depth count even when the caller's future is dropped mid-call.
struct DepthGuard<'a>(&'a ShardHandle);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        let depth = self.0.depth.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.depth_gauge.set(depth as f64);
    }
}

impl ShardHandle {
    async fn call<M>(&self, message: M) -> Result<M::Result, EngineError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ShardActor: Handler<M>,
    {
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.depth_gauge.set(depth as f64);
        let _guard = DepthGuard(self);
        self.addr
            .send(message)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    fn remaining_hint(&self) -> u64 {
        self.gauges.remaining.load(Ordering::Acquire)
    }
}

pub struct ConcertHandle {
    pub spec: Arc<ConcertSpec>,
    shards: Vec<ShardHandle>,
    /// Seat changes and availability for subscribers, published by the shard actors.
    pub feed: Arc<ConcertFeed>,
    /// Held while a claim is gathered from several shards: gatherings then never race each other for the last
    /// tickets, and the sold-out check never counts tickets that a failing gathering is about to give back.
    gather_turn: tokio::sync::Mutex<()>,
}

pub struct Router {
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    concerts: RwLock<Concerts>,
}

#[derive(Default)]
struct Concerts {
    by_id: HashMap<ConcertId, Arc<ConcertHandle>>,
    in_creation_order: Vec<ConcertId>,
}

impl Router {
    /// Must be called inside a running actix `System`; `arbiters` must not be empty.
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        assert!(!arbiters.is_empty(), "a router needs at least one arbiter");
        Self {
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            journal,
            clock,
            concerts: RwLock::new(Concerts::default()),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Starts the shard actors of a new concert with all tickets for sale.
    pub fn add_concert(&self, spec: ConcertSpec) -> Result<Arc<ConcertHandle>, EngineError> {
        let states = (0..spec.shards)
            .map(|shard| ShardState::new(spec.shard_capacity(shard), spec.is_seated()))
            .collect();
        self.start_concert(spec, states)
    }

    /// Starts a concert's shard actors from the given states (one per shard, in order).
    pub fn start_concert(
        &self,
        spec: ConcertSpec,
        states: Vec<ShardState>,
    ) -> Result<Arc<ConcertHandle>, EngineError> {
        assert_eq!(states.len(), spec.shards as usize, "one state per shard");
        let mut concerts = self.concerts.write().expect("concerts lock");
        if concerts.by_id.len() >= CONCERTS_MAX {
            return Err(EngineError::invalid(
                "concert",
                format!("a node serves at most {CONCERTS_MAX} concerts"),
            ));
        }
        if concerts.by_id.contains_key(&spec.id) {
            return Err(EngineError::invalid("id", "a concert with this id exists"));
        }
        let spec = Arc::new(spec);
        let remaining_total: u64 = states
            .iter()
            .map(|state| state.availability().remaining)
            .sum();
        let concert_remaining =
            metrics::gauge!("boxoffice_tickets_remaining", "concert" => spec.id.0.clone());
        concert_remaining.set(remaining_total as f64);
        let feed = Arc::new(ConcertFeed::new(states.iter().enumerate().map(
            |(index, state)| (spec.shard_range(index as u32).0, state.availability()),
        )));
        let shards = states
            .into_iter()
            .enumerate()
            .map(|(index, state)| {
                let gauges = Arc::new(ShardGauges::new(
                    state.availability().remaining,
                    concert_remaining.clone(),
                ));
                let arbiter = &self.arbiters
                    [self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
                let (concert_id, journal, clock, actor_gauges, actor_feed) = (
                    spec.id.clone(),
                    self.journal.clone(),
                    self.clock.clone(),
                    gauges.clone(),
                    feed.clone(),
                );
                let addr = ShardActor::start_in_arbiter(arbiter, move |_ctx| {
                    ShardActor::new(
                        concert_id,
                        index as u32,
                        state,
                        journal,
                        clock,
                        actor_gauges,
                        actor_feed,
                    )
                });
                ShardHandle {
                    addr,
                    gauges,
                    depth: AtomicI64::new(0),
                    depth_gauge: metrics::gauge!(
                        "boxoffice_shard_mailbox_depth",
                        "concert" => spec.id.0.clone(),
                        "shard" => index.to_string()
                    ),
                }
            })
            .collect();
        let handle = Arc::new(ConcertHandle {
            spec,
            shards,
            feed,
            gather_turn: tokio::sync::Mutex::new(()),
        });
        concerts.in_creation_order.push(handle.spec.id.clone());
        concerts
            .by_id
            .insert(handle.spec.id.clone(), handle.clone());
        Ok(handle)
    }

    pub fn concert(&self, id: &ConcertId) -> Option<Arc<ConcertHandle>> {
        self.concerts
            .read()
            .expect("concerts lock")
            .by_id
            .get(id)
            .cloned()
    }

    /// Every concert, oldest first.
    pub fn concerts(&self) -> Vec<Arc<ConcertHandle>> {
        let concerts = self.concerts.read().expect("concerts lock");
        concerts
            .in_creation_order
            .iter()
            .map(|id| concerts.by_id[id].clone())
            .collect()
    }
}

impl ConcertHandle {
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Sums every shard's counts; each shard's triple adds up to its capacity, so the sum adds up to the concert's.
    pub async fn availability(&self) -> Result<Availability, EngineError> {
        let replies = join_all(self.shards.iter().map(|shard| shard.call(GetAvailability))).await;
        let mut total = Availability::default();
        for reply in replies {
            total.add(reply?);
        }
        debug_assert_eq!(total.total(), self.spec.capacity());
        Ok(total)
    }

    /// Snapshots every shard and waits until all the snapshots are durable.
    pub async fn snapshot(&self) -> Result<(), EngineError> {
        let replies = join_all(self.shards.iter().map(|shard| shard.call(TakeSnapshot))).await;
        let mut commits = Vec::new();
        for reply in replies {
            commits.push(reply?);
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// A copy of every shard's state, in shard order.
    pub async fn states(&self) -> Result<Vec<ShardState>, EngineError> {
        let replies = join_all(self.shards.iter().map(|shard| shard.call(GetState))).await;
        replies.into_iter().collect()
    }

    /// The status of every seat, in concert-wide seat order.
    pub async fn seat_statuses(&self) -> Result<Vec<SeatStatus>, EngineError> {
        let replies = join_all(self.shards.iter().map(|shard| shard.call(GetSeats))).await;
        let mut seats = Vec::with_capacity(self.spec.capacity() as usize);
        for reply in replies {
            seats.extend(reply?);
        }
        Ok(seats)
    }

    /// Reserves what `request` asks for and waits until the reservation is durable.
    pub async fn reserve(
        &self,
        owner: &UserId,
        request: &ClaimRequest,
        purpose: Purpose,
    ) -> Result<Vec<Part>, EngineError> {
        let (parts, commits) = match request {
            ClaimRequest::Quantity(quantity) => {
                self.reserve_quantity(owner, *quantity, &purpose).await?
            }
            ClaimRequest::Seats(labels) => self.reserve_seats(owner, labels, &purpose).await?,
        };
        if let Err(error) = wait_all(commits).await {
            tracing::error!(concert_id = %self.spec.id, %error, "reservation not durable, releasing");
            // Best effort: the release is journaled after the reservation, so replay ends released either way.
            let _ = self.release(&parts, ReleaseReason::Abandoned).await;
            return Err(EngineError::Unavailable);
        }
        Ok(parts)
    }

    async fn reserve_quantity(
        &self,
        owner: &UserId,
        quantity: u32,
        purpose: &Purpose,
    ) -> Result<(Vec<Part>, Vec<Commit>), EngineError> {
        let shard_count = self.shards.len();
        let first = preferred_shard(owner, shard_count);
        // Whole from one shard: the preferred one, then any other that claims to have enough.
        for offset in 0..shard_count {
            let shard = (first + offset) % shard_count;
            if self.shards[shard].remaining_hint() < u64::from(quantity) {
                continue;
            }
            let claim = Claim::Quantity {
                quantity,
                up_to: false,
            };
            match self.reserve_on(shard, owner, claim, purpose).await? {
                Ok(reserved) => return Ok(self.parts_of(vec![(shard, reserved)])),
                Err(ReserveRefusal::SoldOut) => continue,
                Err(refusal) => {
                    unreachable!("a quantity claim is refused only as sold out: {refusal:?}")
                }
            }
        }
        // Near the end: gather from several shards, or find that the concert really lacks the tickets. Whatever is
        // held now belongs to a granted reservation or to one being granted whole, never to another gathering.
        let _turn = self.gather_turn.lock().await;
        for _ in 0..GATHER_ATTEMPTS_MAX {
            let total_hint: u64 = self.shards.iter().map(ShardHandle::remaining_hint).sum();
            if total_hint < u64::from(quantity) {
                return Err(EngineError::SoldOut);
            }
            let mut gathered = Vec::new();
            let mut missing = quantity;
            for offset in 0..shard_count {
                let shard = (first + offset) % shard_count;
                if missing == 0 {
                    break;
                }
                if self.shards[shard].remaining_hint() == 0 {
                    continue;
                }
                let claim = Claim::Quantity {
                    quantity: missing,
                    up_to: true,
                };
                if let Ok(reserved) = self.reserve_on(shard, owner, claim, purpose).await? {
                    missing -= reserved.quantity;
                    gathered.push((shard, reserved));
                }
            }
            let (parts, commits) = self.parts_of(gathered);
            if missing == 0 {
                return Ok((parts, commits));
            }
            // Another order took tickets while we gathered: give ours back and look again.
            wait_all(commits)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            self.release(&parts, ReleaseReason::Abandoned).await?;
            tokio::task::yield_now().await;
        }
        Err(EngineError::Overloaded)
    }

    async fn reserve_seats(
        &self,
        owner: &UserId,
        labels: &[String],
        purpose: &Purpose,
    ) -> Result<(Vec<Part>, Vec<Commit>), EngineError> {
        if !self.spec.is_seated() {
            return Err(EngineError::invalid(
                "seats",
                "this is a general-admission concert: ask for a quantity",
            ));
        }
        let mut by_shard: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for label in labels {
            let index = self
                .spec
                .seat_index(label)
                .ok_or_else(|| EngineError::UnknownSeat {
                    seat: label.clone(),
                })?;
            if !seen.insert(index) {
                return Err(EngineError::invalid(
                    "seats",
                    format!("seat {label} is listed twice"),
                ));
            }
            let (shard, local) = self.spec.locate_seat(index);
            by_shard.entry(shard).or_default().push(local);
        }
        let replies = join_all(by_shard.into_iter().map(|(shard, seats)| async move {
            let reply = self
                .reserve_on(shard as usize, owner, Claim::Seats(seats), purpose)
                .await;
            (shard as usize, reply)
        }))
        .await;
        let mut granted = Vec::new();
        let mut refusal = None;
        for (shard, reply) in replies {
            match reply {
                Ok(Ok(reserved)) => granted.push((shard, reserved)),
                Ok(Err(refused)) => refusal = Some(self.refusal_error(shard, refused)),
                Err(error) => refusal = Some(error),
            }
        }
        let (parts, commits) = self.parts_of(granted);
        if let Some(error) = refusal {
            wait_all(commits)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            self.release(&parts, ReleaseReason::Abandoned).await?;
            return Err(error);
        }
        Ok((parts, commits))
    }

    async fn reserve_on(
        &self,
        shard: usize,
        owner: &UserId,
        claim: Claim,
        purpose: &Purpose,
    ) -> Result<Result<Reserved, ReserveRefusal>, EngineError> {
        self.shards[shard]
            .call(Reserve {
                owner: owner.clone(),
                claim,
                purpose: purpose.clone(),
            })
            .await
    }

    fn refusal_error(&self, shard: usize, refusal: ReserveRefusal) -> EngineError {
        let label = |local: u32| {
            let (start, _) = self.spec.shard_range(shard as u32);
            self.spec
                .seat_label(start + u64::from(local))
                .unwrap_or_default()
        };
        match refusal {
            ReserveRefusal::SoldOut => EngineError::SoldOut,
            ReserveRefusal::SeatTaken { local_seat } => EngineError::SeatTaken {
                seat: label(local_seat),
            },
            ReserveRefusal::UnknownSeat { local_seat } => EngineError::UnknownSeat {
                seat: label(local_seat),
            },
        }
    }

    fn parts_of(&self, granted: Vec<(usize, Reserved)>) -> (Vec<Part>, Vec<Commit>) {
        granted
            .into_iter()
            .map(|(shard, reserved)| {
                let (start, _) = self.spec.shard_range(shard as u32);
                let part = Part {
                    shard: shard as u32,
                    reservation_id: reserved.reservation_id,
                    quantity: reserved.quantity,
                    seats: reserved
                        .seats
                        .iter()
                        .map(|local| start + u64::from(*local))
                        .collect(),
                };
                (part, reserved.commit)
            })
            .unzip()
    }

    /// Returns the parts' tickets to sale. A part that is already gone (expired) is not an error.
    pub async fn release(&self, parts: &[Part], reason: ReleaseReason) -> Result<(), EngineError> {
        let replies = join_all(parts.iter().map(|part| {
            self.shards[part.shard as usize].call(Release {
                reservation_id: part.reservation_id,
                reason,
            })
        }))
        .await;
        let mut commits = Vec::new();
        for reply in replies {
            match reply? {
                Ok(commit) => commits.push(commit),
                Err(EngineError::HoldNotFound) => {}
                Err(error) => return Err(error),
            }
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// Moves every part of a hold into payment; if any part has expired, the others are released.
    pub async fn begin_purchase(
        &self,
        parts: &[Part],
        owner: &UserId,
        order_id: &OrderId,
        meta: &OrderMeta,
    ) -> Result<(), EngineError> {
        let replies = join_all(parts.iter().map(|part| {
            self.shards[part.shard as usize].call(BeginPurchase {
                reservation_id: part.reservation_id,
                owner: owner.clone(),
                order_id: order_id.clone(),
                meta: meta.clone(),
            })
        }))
        .await;
        let mut commits = Vec::new();
        let mut failure = None;
        for reply in replies {
            match reply.and_then(|inner| inner) {
                Ok(commit) => commits.push(commit),
                Err(error) => failure = Some(error),
            }
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)?;
        if let Some(error) = failure {
            self.release(parts, ReleaseReason::Expired).await?;
            return Err(error);
        }
        Ok(())
    }

    /// Sells every part; `tickets[i]` are the tickets of `parts[i]`.
    pub async fn confirm(
        &self,
        parts: &[Part],
        order_id: &OrderId,
        tickets: Vec<Vec<IssuedTicket>>,
    ) -> Result<(), EngineError> {
        assert_eq!(parts.len(), tickets.len(), "tickets for every part");
        let replies = join_all(parts.iter().zip(tickets).map(|(part, tickets)| {
            self.shards[part.shard as usize].call(Confirm {
                reservation_id: part.reservation_id,
                order_id: order_id.clone(),
                tickets,
            })
        }))
        .await;
        let mut commits = Vec::new();
        for reply in replies {
            commits.push(reply??);
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// Checks in a ticket sold by `shard`; returns when it was checked in.
    pub async fn check_in(&self, shard: u32, ticket_id: &TicketId) -> Result<u64, EngineError> {
        let handle = self
            .shards
            .get(shard as usize)
            .ok_or(EngineError::UnknownTicket)?;
        let (at_ms, commit) = handle
            .call(CheckIn {
                ticket_id: ticket_id.clone(),
            })
            .await??;
        commit.wait().await.map_err(|_| EngineError::Unavailable)?;
        Ok(at_ms)
    }
}

/// The shard a buyer's general-admission orders start at, so that buyers spread evenly over shards.
fn preferred_shard(owner: &UserId, shard_count: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    (hasher.finish() % shard_count as u64) as usize
}

async fn wait_all(commits: Vec<Commit>) -> Result<(), crate::journal::JournalError> {
    for result in join_all(commits.into_iter().map(Commit::wait)).await {
        result?;
    }
    Ok(())
}

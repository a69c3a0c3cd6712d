//! The per-node router: which concerts exist, where their shards are, and how a request is spread over them.
//!
//! A concert's shards are placed on nodes when it is created (`placement[k]` is the node that owns shard `k`;
//! one node alone owns them all). The shards this node owns are actors, started round-robin on its arbiters
//! ([`shard_arbiter`]; one per four cores by default); the others are reached through [`PeerShards`] and answer
//! once durable there.
//!
//! General admission is served from one shard per order: the buyer's own shard first (this node's shards before
//! other nodes'), then any shard whose last known count suffices. When none does, unsold count is moved into the
//! buyer's shard from the others (escrow, see `shard_state`) and the order is served from it; the moves of one
//! concert on this node take turns. `sold_out` is answered only when the concert as a whole has fewer tickets
//! neither held nor sold than asked; when a node that may hold them does not answer, `NodeUnavailable`.
//!
//! Seats live where they live: a seated claim goes to the shards that own the seats (or, for a quantity, that
//! have free ones), all or nothing. A part whose reply is lost is released by its purpose in the background
//! ([`Router::upkeep`] retries until the owning node answers), and so are releases that could not reach their
//! node; moves whose receiver did not answer are delivered again the same way.

use crate::clock::Clock;
use crate::concert::ConcertSpec;
use crate::error::EngineError;
use crate::feed::ConcertFeed;
use crate::ids::{ConcertId, OrderId, TicketId, UserId};
use crate::journal::{Commit, Journal};
use crate::remote::{NodeId, PeerError, PeerShards, RemoteReserved, ShardReply, ShardRequest};
use crate::shard::{
    BeginPurchase, CheckIn, Confirm, GetAvailability, GetBookView, GetPendingMoves, GetSeats,
    GetState, MoveAcknowledged, MoveIn, MoveOut, Release, ReleaseFor, Reserve, ShardActor,
    ShardGauges, TakeSnapshot,
};
use crate::shard_state::{
    Availability, Claim, IssuedTicket, MoveArrival, OrderMeta, Purpose, PurposeKey, ReleaseReason,
    ReservationId, ReserveRefusal, SeatStatus, ShardBookView, ShardState,
};
use actix::prelude::*;
use futures_util::future::join_all;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Concerts one node serves at most.
pub const CONCERTS_MAX: usize = 10_000;
/// Rounds of gathering a seated quantity from several shards, or of moving count into one shard for a
/// general-admission order, before answering `overloaded`. Each round either succeeds, finds the concert sold out,
/// or lost a race to another order that made progress.
pub const GATHER_ATTEMPTS_MAX: u32 = 8;
/// Releases and moves waiting for a node that does not answer, at most; beyond that a new one is dropped with an
/// error in the log (what it would have released stays held until the owner of the order restarts, or the hold
/// expires).
pub const REPAIRS_MAX: usize = 100_000;
/// Pause between two rounds of a general-admission order that found tickets in transit between shards.
const GATHER_RETRY_DELAY: Duration = Duration::from_millis(20);
/// How long an order waits for its concert's turn to move count or gather seats before it answers `overloaded`:
/// a turn can take a remote call's deadline, and the orders waiting behind it each hold a payment slot.
pub const TURN_WAIT_MAX: Duration = Duration::from_secs(5);
/// Repairs tried at once in one round of [`Router::upkeep`].
const REPAIRS_AT_ONCE: usize = 64;

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

/// A reservation one shard granted; `commit` completes when it is durable.
struct Granted {
    shard: usize,
    reservation_id: ReservationId,
    quantity: u32,
    seats: Vec<u32>,
    commit: Commit,
}

/// One shard of a concert, on this node or another.
pub struct ShardHandle {
    shard: u32,
    link: ShardLink,
}

enum ShardLink {
    Local {
        addr: Addr<ShardActor>,
        gauges: Arc<ShardGauges>,
        depth: AtomicI64,
        depth_gauge: metrics::Gauge,
    },
    Remote {
        node: NodeId,
        concert: ConcertId,
        peers: Arc<dyn PeerShards>,
        /// The remaining count in the shard's last answer: a hint, refreshed by every reply that carries one.
        remaining: AtomicU64,
    },
}

/// Decrements the mailbox-depth count even when the caller's future is dropped mid-call.
struct DepthGuard<'a>(&'a AtomicI64, &'a metrics::Gauge);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        let depth = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        self.1.set(depth as f64);
    }
}

impl ShardHandle {
    pub fn node(&self, local: NodeId) -> NodeId {
        match &self.link {
            ShardLink::Local { .. } => local,
            ShardLink::Remote { node, .. } => *node,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.link, ShardLink::Local { .. })
    }

    /// Sends `message` to the local actor.
    async fn tell<M>(&self, message: M) -> Result<M::Result, EngineError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ShardActor: Handler<M>,
    {
        let ShardLink::Local {
            addr,
            depth,
            depth_gauge,
            ..
        } = &self.link
        else {
            unreachable!("only local shards get actor messages");
        };
        let current = depth.fetch_add(1, Ordering::Relaxed) + 1;
        depth_gauge.set(current as f64);
        let _guard = DepthGuard(depth, depth_gauge);
        addr.send(message)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// Sends `request` to the node that owns this remote shard.
    async fn ask_peer(&self, request: ShardRequest) -> Result<ShardReply, PeerError> {
        let ShardLink::Remote {
            node,
            concert,
            peers,
            ..
        } = &self.link
        else {
            unreachable!("only remote shards are asked over the network");
        };
        match peers.call(*node, concert, self.shard, request).await {
            // The owner has not learned of the concert yet (it was down when it was created): not ready, not gone.
            Err(PeerError::Answered(EngineError::ConcertNotFound)) => Err(PeerError::NotSent {
                node: *node,
                busy: false,
            }),
            Err(error @ (PeerError::NotSent { .. } | PeerError::Lost { .. })) => {
                // Until it answers again, do not count on its tickets.
                self.note_remaining(0);
                Err(error)
            }
            other => other,
        }
    }

    async fn ask(&self, request: ShardRequest) -> Result<ShardReply, EngineError> {
        self.ask_peer(request).await.map_err(EngineError::from)
    }

    fn remaining_hint(&self) -> u64 {
        match &self.link {
            ShardLink::Local { gauges, .. } => gauges.remaining.load(Ordering::Acquire),
            ShardLink::Remote { remaining, .. } => remaining.load(Ordering::Acquire),
        }
    }

    fn note_remaining(&self, value: u64) {
        if let ShardLink::Remote { remaining, .. } = &self.link {
            remaining.store(value, Ordering::Release);
        }
    }

    /// A reservation: granted (with its commit) or refused; `Err` with whether it may have been made anyway.
    async fn reserve(
        &self,
        owner: &UserId,
        claim: Claim,
        purpose: &Purpose,
    ) -> Result<Result<(RemoteReserved, Commit), ReserveRefusal>, (EngineError, bool)> {
        if self.is_local() {
            let reply = self
                .tell(Reserve {
                    owner: owner.clone(),
                    claim,
                    purpose: purpose.clone(),
                })
                .await
                .map_err(|error| (error, false))?;
            return Ok(reply.map(|reserved| {
                (
                    RemoteReserved {
                        reservation_id: reserved.reservation_id,
                        quantity: reserved.quantity,
                        seats: reserved.seats,
                        remaining: self.remaining_hint(),
                    },
                    reserved.commit,
                )
            }));
        }
        let request = ShardRequest::Reserve {
            owner: owner.clone(),
            claim,
            purpose: purpose.clone(),
        };
        let reply = self.ask_peer(request).await.map_err(|error| {
            let maybe_made = matches!(error, PeerError::Lost { .. });
            (EngineError::from(error), maybe_made)
        })?;
        match reply {
            ShardReply::Reserved(Ok(reserved)) => {
                self.note_remaining(reserved.remaining);
                Ok(Ok((reserved, Commit::done())))
            }
            ShardReply::Reserved(Err(refusal)) => {
                if refusal == ReserveRefusal::SoldOut {
                    self.note_remaining(0);
                }
                Ok(Err(refusal))
            }
            other => Err((unexpected(other), false)),
        }
    }

    async fn begin_purchase(
        &self,
        reservation_id: ReservationId,
        owner: &UserId,
        order_id: &OrderId,
        meta: &OrderMeta,
    ) -> Result<Commit, EngineError> {
        if self.is_local() {
            return self
                .tell(BeginPurchase {
                    reservation_id,
                    owner: owner.clone(),
                    order_id: order_id.clone(),
                    meta: meta.clone(),
                })
                .await?;
        }
        let request = ShardRequest::BeginPurchase {
            reservation_id,
            owner: owner.clone(),
            order_id: order_id.clone(),
            meta: meta.clone(),
        };
        expect_done(self.ask(request).await?)
    }

    async fn confirm(
        &self,
        reservation_id: ReservationId,
        order_id: &OrderId,
        tickets: Vec<IssuedTicket>,
    ) -> Result<Commit, EngineError> {
        if self.is_local() {
            return self
                .tell(Confirm {
                    reservation_id,
                    order_id: order_id.clone(),
                    tickets,
                })
                .await?;
        }
        let request = ShardRequest::Confirm {
            reservation_id,
            order_id: order_id.clone(),
            tickets,
        };
        expect_done(self.ask(request).await?)
    }

    /// Releases a reservation; one that is gone already is not an error.
    async fn release(
        &self,
        reservation_id: ReservationId,
        reason: ReleaseReason,
    ) -> Result<Commit, EngineError> {
        let reply = if self.is_local() {
            self.tell(Release {
                reservation_id,
                reason,
            })
            .await?
        } else {
            self.ask(ShardRequest::Release {
                reservation_id,
                reason,
            })
            .await
            .and_then(expect_done)
        };
        match reply {
            Err(EngineError::HoldNotFound) => Ok(Commit::done()),
            other => other,
        }
    }

    async fn release_for(
        &self,
        key: PurposeKey,
        reason: ReleaseReason,
    ) -> Result<Commit, EngineError> {
        if self.is_local() {
            let commits = self.tell(ReleaseFor { key, reason }).await?;
            wait_all(commits)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            return Ok(Commit::done());
        }
        expect_done(self.ask(ShardRequest::ReleaseFor { key, reason }).await?)
    }

    async fn check_in(&self, ticket_id: &TicketId) -> Result<(u64, Commit), EngineError> {
        if self.is_local() {
            return self
                .tell(CheckIn {
                    ticket_id: ticket_id.clone(),
                })
                .await?;
        }
        match self
            .ask(ShardRequest::CheckIn {
                ticket_id: ticket_id.clone(),
            })
            .await?
        {
            ShardReply::CheckedIn { at_ms } => Ok((at_ms, Commit::done())),
            other => Err(unexpected(other)),
        }
    }

    async fn counts(&self) -> Result<Availability, EngineError> {
        if self.is_local() {
            return self.tell(GetAvailability).await;
        }
        match self.ask(ShardRequest::Counts).await? {
            ShardReply::Counts(counts) => {
                self.note_remaining(counts.remaining);
                Ok(counts)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn seats(&self) -> Result<Vec<SeatStatus>, EngineError> {
        if self.is_local() {
            return self.tell(GetSeats).await;
        }
        match self.ask(ShardRequest::Seats).await? {
            ShardReply::Seats(seats) => Ok(seats),
            other => Err(unexpected(other)),
        }
    }

    /// Gives count to `to_shard`: the move's number and count, once the move is durable here.
    async fn move_out(&self, to_shard: u32, want: u64) -> Result<Option<(u64, u64)>, EngineError> {
        if self.is_local() {
            let Some((seq, count, commit)) = self.tell(MoveOut { to_shard, want }).await? else {
                return Ok(None);
            };
            commit.wait().await.map_err(|_| EngineError::Unavailable)?;
            return Ok(Some((seq, count)));
        }
        match self.ask(ShardRequest::MoveOut { to_shard, want }).await? {
            ShardReply::MovedOut(moved) => {
                if moved.is_none() {
                    self.note_remaining(0);
                }
                Ok(moved)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Takes a move, once durable here.
    async fn move_in(
        &self,
        from_shard: u32,
        seq: u64,
        count: u64,
    ) -> Result<MoveArrival, EngineError> {
        if self.is_local() {
            let (arrival, commit) = self
                .tell(MoveIn {
                    from_shard,
                    seq,
                    count,
                })
                .await?;
            commit.wait().await.map_err(|_| EngineError::Unavailable)?;
            return Ok(arrival);
        }
        match self
            .ask(ShardRequest::MoveIn {
                from_shard,
                seq,
                count,
            })
            .await?
        {
            ShardReply::MovedIn(arrival) => Ok(arrival),
            other => Err(unexpected(other)),
        }
    }

    async fn move_acknowledged(&self, to_shard: u32, seq: u64) -> Result<Commit, EngineError> {
        if self.is_local() {
            return self.tell(MoveAcknowledged { to_shard, seq }).await;
        }
        expect_done(
            self.ask(ShardRequest::MoveAcknowledged { to_shard, seq })
                .await?,
        )
    }

    /// What the shard holds for the users of node `home` (every user with `None`), read a page at a time.
    async fn book_view(&self, home: Option<NodeId>) -> Result<ShardBookView, EngineError> {
        let mut view = self.book_view_page(home, None).await?;
        while let Some(after) = view.next.take() {
            let page = self.book_view_page(home, Some(after)).await?;
            view.extend(page);
        }
        Ok(view)
    }

    async fn book_view_page(
        &self,
        home: Option<NodeId>,
        after: Option<TicketId>,
    ) -> Result<ShardBookView, EngineError> {
        if self.is_local() {
            let include: Box<dyn Fn(&UserId) -> bool + Send> = match home {
                None => Box::new(|_| true),
                Some(home) => Box::new(move |user: &UserId| user.home_node() == Some(home)),
            };
            return self.tell(GetBookView { include, after }).await;
        }
        let Some(home) = home else {
            unreachable!("a remote shard is asked for one node's users");
        };
        match self.ask(ShardRequest::BookView { home, after }).await? {
            ShardReply::BookView(view) => Ok(view),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: ShardReply) -> EngineError {
    tracing::error!(?reply, "a shard answered with the wrong kind of reply");
    EngineError::Unavailable
}

fn expect_done(reply: ShardReply) -> Result<Commit, EngineError> {
    match reply {
        ShardReply::Done => Ok(Commit::done()),
        other => Err(unexpected(other)),
    }
}

pub struct ConcertHandle {
    pub spec: Arc<ConcertSpec>,
    /// `placement[k]`: the node that owns shard `k`.
    pub placement: Vec<NodeId>,
    shards: Vec<ShardHandle>,
    /// Seat changes and availability of this node's shards for subscribers, published by their actors.
    pub feed: Arc<ConcertFeed>,
    /// Held while a seated quantity is gathered from several shards: gatherings then never race each other for
    /// the last seats, and the sold-out check never counts seats a failing gathering is about to give back.
    gather_turn: tokio::sync::Mutex<()>,
    /// Held while count is moved into a shard for a general-admission order, so that this node's orders of
    /// one concert do not move the same tickets back and forth.
    move_turn: tokio::sync::Mutex<()>,
    node: NodeId,
    repairs: Arc<Repairs>,
}

/// Starts an arbiter for shard actors: a thread running a current-thread runtime with timers and no I/O driver.
/// Shard actors use no sockets or files (the journal is a channel to its own thread), and a runtime without an
/// I/O driver is woken by an atomic swap when it is busy and a futex when it sleeps, where actix's default
/// runtime writes to an eventfd on every message sent to it from another thread: that write was about a fifth of
/// an order's own task (docs/performance.md). Must be called inside a running actix `System`.
pub fn shard_arbiter() -> std::io::Result<Arbiter> {
    Arbiter::try_with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    })
}

pub struct Router {
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    concerts: RwLock<Concerts>,
    node: NodeId,
    peers: Option<Arc<dyn PeerShards>>,
    repairs: Arc<Repairs>,
}

#[derive(Default)]
struct Concerts {
    by_id: HashMap<ConcertId, Arc<ConcertHandle>>,
    in_creation_order: Vec<ConcertId>,
}

impl Router {
    /// A router of a node that owns every shard it serves. Must be called inside a running actix `System`;
    /// `arbiters` must not be empty.
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::build(arbiters, journal, clock, 0, None)
    }

    /// A router of node `node` of a cluster, reaching other nodes' shards through `peers`.
    pub fn clustered(
        arbiters: Vec<ArbiterHandle>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        node: NodeId,
        peers: Arc<dyn PeerShards>,
    ) -> Self {
        Self::build(arbiters, journal, clock, node, Some(peers))
    }

    fn build(
        arbiters: Vec<ArbiterHandle>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        node: NodeId,
        peers: Option<Arc<dyn PeerShards>>,
    ) -> Self {
        assert!(!arbiters.is_empty(), "a router needs at least one arbiter");
        Self {
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            journal,
            clock,
            concerts: RwLock::new(Concerts::default()),
            node,
            peers,
            repairs: Arc::new(Repairs::default()),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This node's number (0 outside a cluster).
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether this router reaches other nodes.
    pub fn is_clustered(&self) -> bool {
        self.peers.is_some()
    }

    /// Starts the shard actors of a new concert, all on this node, with all tickets for sale.
    pub fn add_concert(&self, spec: ConcertSpec) -> Result<Arc<ConcertHandle>, EngineError> {
        let placement = vec![self.node; spec.shards as usize];
        self.add_placed_concert(spec, placement)
    }

    /// Starts a new concert whose shard `k` lives on node `placement[k]`, with all tickets for sale.
    pub fn add_placed_concert(
        &self,
        spec: ConcertSpec,
        placement: Vec<NodeId>,
    ) -> Result<Arc<ConcertHandle>, EngineError> {
        let states = (0..spec.shards)
            .map(|shard| ShardState::new(spec.shard_capacity(shard), spec.is_seated()))
            .collect();
        self.start_placed_concert(spec, placement, states)
    }

    /// Starts a concert whose shards all live here, from the given states (one per shard, in order).
    pub fn start_concert(
        &self,
        spec: ConcertSpec,
        states: Vec<ShardState>,
    ) -> Result<Arc<ConcertHandle>, EngineError> {
        let placement = vec![self.node; spec.shards as usize];
        self.start_placed_concert(spec, placement, states)
    }

    /// Starts a concert from the given states (one per shard, in order; those of shards other nodes own are
    /// not used).
    pub fn start_placed_concert(
        &self,
        spec: ConcertSpec,
        placement: Vec<NodeId>,
        states: Vec<ShardState>,
    ) -> Result<Arc<ConcertHandle>, EngineError> {
        assert_eq!(states.len(), spec.shards as usize, "one state per shard");
        assert_eq!(placement.len(), spec.shards as usize, "one node per shard");
        assert!(
            self.peers.is_some() || placement.iter().all(|node| *node == self.node),
            "only a clustered router has remote shards"
        );
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
        let local = |shard: usize| placement[shard] == self.node;
        let remaining_local: u64 = states
            .iter()
            .enumerate()
            .filter(|(shard, _)| local(*shard))
            .map(|(_, state)| state.availability().remaining)
            .sum();
        let concert_remaining =
            metrics::gauge!("boxoffice_tickets_remaining", "concert" => spec.id.0.clone());
        concert_remaining.set(remaining_local as f64);
        let feed = Arc::new(ConcertFeed::new(
            spec.capacity(),
            states.iter().enumerate().map(|(index, state)| {
                (
                    spec.shard_range(index as u32).0,
                    local(index).then(|| state.availability()),
                )
            }),
        ));
        let shards = states
            .into_iter()
            .enumerate()
            .map(|(index, state)| {
                let shard = index as u32;
                if !local(index) {
                    return ShardHandle {
                        shard,
                        link: ShardLink::Remote {
                            node: placement[index],
                            concert: spec.id.clone(),
                            peers: self.peers.clone().expect("checked above"),
                            remaining: AtomicU64::new(spec.shard_capacity(shard)),
                        },
                    };
                }
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
                        shard,
                        state,
                        journal,
                        clock,
                        actor_gauges,
                        actor_feed,
                    )
                });
                ShardHandle {
                    shard,
                    link: ShardLink::Local {
                        addr,
                        gauges,
                        depth: AtomicI64::new(0),
                        depth_gauge: metrics::gauge!(
                            "boxoffice_shard_mailbox_depth",
                            "concert" => spec.id.0.clone(),
                            "shard" => index.to_string()
                        ),
                    },
                }
            })
            .collect();
        let handle = Arc::new(ConcertHandle {
            spec,
            placement,
            shards,
            feed,
            gather_turn: tokio::sync::Mutex::new(()),
            move_turn: tokio::sync::Mutex::new(()),
            node: self.node,
            repairs: self.repairs.clone(),
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

    /// Retries the releases that could not reach their node and delivers the moves this node's shards sent that
    /// their receivers have not acknowledged. Called periodically, from a task of its own; a node that fails once
    /// is not asked again in the same round.
    pub async fn upkeep(&self) {
        use futures_util::StreamExt;
        let failed: Mutex<HashSet<NodeId>> = Mutex::new(HashSet::new());
        let repairs = self.repairs.take();
        futures_util::stream::iter(repairs)
            .for_each_concurrent(REPAIRS_AT_ONCE, |repair| {
                let failed = &failed;
                async move {
                    let Some(concert) = self.concert(&repair.concert) else {
                        return;
                    };
                    let shard = &concert.shards[repair.shard as usize];
                    let node = shard.node(self.node);
                    if failed.lock().expect("failed nodes lock").contains(&node) {
                        self.repairs.push(repair);
                        return;
                    }
                    let outcome = match &repair.work {
                        RepairWork::Release {
                            reservation_id,
                            reason,
                        } => shard.release(*reservation_id, *reason).await,
                        RepairWork::ReleaseFor { key, reason } => {
                            shard.release_for(key.clone(), *reason).await
                        }
                    };
                    let outcome = match outcome {
                        Ok(commit) => commit.wait().await.map_err(|_| EngineError::Unavailable),
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok(()) => tracing::info!(concert_id = %repair.concert, shard = repair.shard, "repair done"),
                        Err(error) => {
                            tracing::debug!(concert_id = %repair.concert, shard = repair.shard, %error, "repair still waits");
                            failed.lock().expect("failed nodes lock").insert(node);
                            self.repairs.push(repair);
                        }
                    }
                }
            })
            .await;
        for concert in self.concerts() {
            if !concert.spec.is_seated() {
                concert.deliver_pending_moves().await;
            }
        }
    }
}

/// A release that could not reach its node, to retry.
struct Repair {
    concert: ConcertId,
    shard: u32,
    work: RepairWork,
}

enum RepairWork {
    Release {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    ReleaseFor {
        key: PurposeKey,
        reason: ReleaseReason,
    },
}

#[derive(Default)]
struct Repairs(Mutex<VecDeque<Repair>>);

impl Repairs {
    fn push(&self, repair: Repair) {
        let mut queue = self.0.lock().expect("repairs lock");
        if queue.len() >= REPAIRS_MAX {
            metrics::counter!("boxoffice_repairs_dropped_total").increment(1);
            tracing::error!(concert_id = %repair.concert, shard = repair.shard, "repair queue full; a release is dropped");
            return;
        }
        queue.push_back(repair);
        metrics::gauge!("boxoffice_repairs_pending").set(queue.len() as f64);
    }

    fn take(&self) -> Vec<Repair> {
        let mut queue = self.0.lock().expect("repairs lock");
        metrics::gauge!("boxoffice_repairs_pending").set(0.0);
        queue.drain(..).collect()
    }
}

impl ConcertHandle {
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The node this handle lives on.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The shards this node owns.
    pub fn local_shards(&self) -> Vec<u32> {
        self.shards
            .iter()
            .filter(|shard| shard.is_local())
            .map(|shard| shard.shard)
            .collect()
    }

    /// Whether every shard lives on this node.
    pub fn is_all_local(&self) -> bool {
        self.shards.iter().all(ShardHandle::is_local)
    }

    /// The concert's counts: every shard's held and sold, and whatever is neither for sale (tickets moving
    /// between two shards included). `NodeUnavailable` when a shard's node does not answer.
    pub async fn availability(&self) -> Result<Availability, EngineError> {
        let replies = join_all(self.shards.iter().map(ShardHandle::counts)).await;
        let (mut held, mut sold) = (0, 0);
        for reply in replies {
            let counts = reply?;
            held += counts.held;
            sold += counts.sold;
        }
        Ok(Availability::of_concert(self.spec.capacity(), held, sold))
    }

    /// Snapshots every shard of this node and waits until all the snapshots are durable.
    pub async fn snapshot(&self) -> Result<(), EngineError> {
        let local = self.shards.iter().filter(|shard| shard.is_local());
        let replies = join_all(local.map(|shard| shard.tell(TakeSnapshot))).await;
        let mut commits = Vec::new();
        for reply in replies {
            commits.push(reply?);
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// A copy of every shard's state, in shard order; every shard must live on this node.
    pub async fn states(&self) -> Result<Vec<ShardState>, EngineError> {
        assert!(self.is_all_local(), "states are read from local shards");
        let replies = join_all(self.shards.iter().map(|shard| shard.tell(GetState))).await;
        replies.into_iter().collect()
    }

    /// What this node's shards hold for the users of node `home` (every user with `None`).
    pub async fn book_views(
        &self,
        home: Option<NodeId>,
    ) -> Result<Vec<ShardBookView>, EngineError> {
        let local = self.shards.iter().filter(|shard| shard.is_local());
        join_all(local.map(|shard| shard.book_view(home)))
            .await
            .into_iter()
            .collect()
    }

    /// What shard `shard` (another node's) holds for this node's users.
    pub async fn remote_book_view(&self, shard: u32) -> Result<ShardBookView, EngineError> {
        self.shards[shard as usize].book_view(Some(self.node)).await
    }

    /// The status of every seat, in concert-wide seat order.
    pub async fn seat_statuses(&self) -> Result<Vec<SeatStatus>, EngineError> {
        let replies = join_all(self.shards.iter().map(ShardHandle::seats)).await;
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
        let granted = match request {
            ClaimRequest::Quantity(quantity) if self.spec.is_seated() => {
                self.gather_seats(owner, *quantity, &purpose).await?
            }
            ClaimRequest::Quantity(quantity) => {
                self.reserve_general(owner, *quantity, &purpose).await?
            }
            ClaimRequest::Seats(labels) => self.reserve_seats(owner, labels, &purpose).await?,
        };
        let (parts, commits) = self.parts_of(granted);
        if let Err(error) = wait_all(commits).await {
            tracing::error!(concert_id = %self.spec.id, %error, "reservation not durable, releasing");
            // Best effort: the release is journaled after the reservation, so replay ends released either way.
            let _ = self.release(&parts, ReleaseReason::Abandoned).await;
            return Err(EngineError::Unavailable);
        }
        Ok(parts)
    }

    /// Asks one shard for a claim. A remote shard whose reply is lost may have reserved it: that reservation is
    /// released in the background, by its purpose, and the shard is not asked again for this purpose.
    async fn reserve_on(
        &self,
        shard: usize,
        owner: &UserId,
        claim: Claim,
        purpose: &Purpose,
    ) -> Result<Result<Granted, ReserveRefusal>, EngineError> {
        match self.shards[shard].reserve(owner, claim, purpose).await {
            Ok(reply) => Ok(reply.map(|(reserved, commit)| Granted {
                shard,
                reservation_id: reserved.reservation_id,
                quantity: reserved.quantity,
                seats: reserved.seats,
                commit,
            })),
            Err((error, maybe_made)) => {
                if maybe_made {
                    self.repairs.push(Repair {
                        concert: self.spec.id.clone(),
                        shard: shard as u32,
                        work: RepairWork::ReleaseFor {
                            key: purpose.key(),
                            reason: ReleaseReason::Abandoned,
                        },
                    });
                }
                Err(error)
            }
        }
    }

    /// The shards a buyer's general-admission orders go to, in order: this node's first, starting at one chosen
    /// by the buyer so that buyers spread evenly, then the other nodes' the same way.
    fn shard_order(&self, owner: &UserId) -> Vec<usize> {
        let count = self.shards.len();
        let local_count = self.shards.iter().filter(|shard| shard.is_local()).count();
        let mut order = Vec::with_capacity(count);
        for (local, size) in [(true, local_count), (false, count - local_count)] {
            if size == 0 {
                continue;
            }
            let first = preferred(owner, size);
            let group = (0..count).filter(|shard| self.shards[*shard].is_local() == local);
            // The group in index order, from its member `first` round to the one before it.
            order.extend(group.clone().skip(first).chain(group.take(first)));
        }
        order
    }

    /// General admission: one shard serves the whole order, after count is moved into it if need be.
    async fn reserve_general(
        &self,
        owner: &UserId,
        quantity: u32,
        purpose: &Purpose,
    ) -> Result<Vec<Granted>, EngineError> {
        let want = u64::from(quantity);
        let order = self.shard_order(owner);
        let mut unreachable: HashSet<usize> = HashSet::new();
        let whole = Claim::Quantity {
            quantity,
            up_to: false,
        };
        // Whole from one shard: the buyer's own, then any other that claims to have enough.
        for &shard in &order {
            if self.shards[shard].remaining_hint() < want {
                continue;
            }
            match self.reserve_on(shard, owner, whole.clone(), purpose).await {
                Ok(Ok(granted)) => return Ok(vec![granted]),
                Ok(Err(ReserveRefusal::SoldOut)) => {}
                Ok(Err(refusal)) => {
                    unreachable!("a quantity claim is refused only as sold out: {refusal:?}")
                }
                Err(EngineError::NodeUnavailable { .. }) => {
                    unreachable.insert(shard);
                }
                Err(error) => return Err(error),
            }
        }
        // Near the end: move count into the buyer's shard and serve the order from it, or find that the concert
        // really lacks the tickets.
        let _turn = tokio::time::timeout(TURN_WAIT_MAX, self.move_turn.lock())
            .await
            .map_err(|_| EngineError::Overloaded)?;
        for attempt in 0..GATHER_ATTEMPTS_MAX {
            let Some(&receiver) = order.iter().find(|shard| !unreachable.contains(shard)) else {
                break;
            };
            self.top_up(receiver, want, &order, &mut unreachable)
                .await?;
            if self.shards[receiver].remaining_hint() >= want {
                match self
                    .reserve_on(receiver, owner, whole.clone(), purpose)
                    .await
                {
                    Ok(Ok(granted)) => return Ok(vec![granted]),
                    Ok(Err(_)) => {}
                    Err(EngineError::NodeUnavailable { .. }) => {
                        unreachable.insert(receiver);
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            // Does the concert as a whole lack them? A node that does not answer may hold them.
            let availability = self.availability().await?;
            if availability.remaining < want {
                return Err(EngineError::SoldOut);
            }
            // They exist: in transit between shards, or taken and given back meanwhile. Look again.
            if attempt == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(GATHER_RETRY_DELAY).await;
            }
        }
        match unreachable.iter().next() {
            Some(&shard) => Err(EngineError::NodeUnavailable {
                node: self.shards[shard].node(self.node),
            }),
            None => Err(EngineError::Overloaded),
        }
    }

    /// Moves count into `receiver` from the other shards until it has `want` (as far as it knows) or none can
    /// give more.
    async fn top_up(
        &self,
        receiver: usize,
        want: u64,
        order: &[usize],
        unreachable: &mut HashSet<usize>,
    ) -> Result<(), EngineError> {
        let mut donors: Vec<usize> = order
            .iter()
            .copied()
            .filter(|shard| *shard != receiver && !unreachable.contains(shard))
            .collect();
        // The fullest first: fewer moves.
        donors.sort_by_key(|shard| std::cmp::Reverse(self.shards[*shard].remaining_hint()));
        for donor in donors {
            let have = self.shards[receiver].remaining_hint();
            if have >= want {
                break;
            }
            if self.shards[donor].remaining_hint() == 0 {
                continue;
            }
            match self.move_count(donor, receiver, want - have).await {
                Ok(_) => {}
                Err(EngineError::NodeUnavailable { .. }) => {
                    unreachable.insert(donor);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Moves up to `want` (or half the donor's count, if more) from `donor` to `receiver`; returns what arrived.
    /// The donor's side is durable before the receiver hears of it; what does not arrive now stays in transit
    /// until [`Router::upkeep`] delivers it.
    async fn move_count(
        &self,
        donor: usize,
        receiver: usize,
        want: u64,
    ) -> Result<u64, EngineError> {
        let Some((seq, count)) = self.shards[donor].move_out(receiver as u32, want).await? else {
            return Ok(0);
        };
        tracing::debug!(concert_id = %self.spec.id, donor, receiver, seq, count, "moving unsold count");
        metrics::counter!("boxoffice_moves_total").increment(1);
        let arrival = match self.shards[receiver]
            .move_in(donor as u32, seq, count)
            .await
        {
            Ok(arrival) => arrival,
            Err(EngineError::NodeUnavailable { .. }) => return Ok(0),
            Err(error) => return Err(error),
        };
        match arrival {
            MoveArrival::Apply(_) | MoveArrival::Repeated => {
                self.shards[receiver]
                    .note_remaining(self.shards[receiver].remaining_hint().saturating_add(count));
                // Nobody waits for the acknowledgement: until it is durable the move is delivered again, and
                // recognised as a repeat.
                if let Ok(commit) = self.shards[donor]
                    .move_acknowledged(receiver as u32, seq)
                    .await
                {
                    drop(commit);
                }
                Ok(count)
            }
            MoveArrival::Early { .. } => Ok(0),
        }
    }

    /// Delivers every move this node's shards sent and their receivers have not acknowledged, in order.
    async fn deliver_pending_moves(&self) {
        let pending = self.shards.iter().filter(|shard| match &shard.link {
            ShardLink::Local { gauges, .. } => gauges.moves_pending.load(Ordering::Acquire),
            ShardLink::Remote { .. } => false,
        });
        for donor in pending {
            let Ok(pending) = donor.tell(GetPendingMoves).await else {
                continue;
            };
            let mut stalled: HashSet<u32> = HashSet::new();
            for moved in pending {
                if stalled.contains(&moved.to_shard) {
                    continue;
                }
                let receiver = &self.shards[moved.to_shard as usize];
                match receiver.move_in(donor.shard, moved.seq, moved.count).await {
                    Ok(MoveArrival::Apply(_) | MoveArrival::Repeated) => {
                        if let Ok(commit) = donor.move_acknowledged(moved.to_shard, moved.seq).await
                        {
                            drop(commit);
                        }
                        tracing::info!(concert_id = %self.spec.id, from = donor.shard, to = moved.to_shard,
                            seq = moved.seq, count = moved.count, "move delivered");
                    }
                    Ok(MoveArrival::Early { expected_seq }) => {
                        tracing::error!(concert_id = %self.spec.id, from = donor.shard, to = moved.to_shard,
                            seq = moved.seq, expected_seq, "a move was lost between two shards");
                        stalled.insert(moved.to_shard);
                    }
                    Err(_) => {
                        stalled.insert(moved.to_shard);
                    }
                }
            }
        }
    }

    /// A seated quantity: any free seats, gathered from several shards when one has too few.
    async fn gather_seats(
        &self,
        owner: &UserId,
        quantity: u32,
        purpose: &Purpose,
    ) -> Result<Vec<Granted>, EngineError> {
        let order = self.shard_order(owner);
        let whole = Claim::Quantity {
            quantity,
            up_to: false,
        };
        for &shard in &order {
            if self.shards[shard].remaining_hint() < u64::from(quantity) {
                continue;
            }
            match self.reserve_on(shard, owner, whole.clone(), purpose).await {
                Ok(Ok(granted)) => return Ok(vec![granted]),
                Ok(Err(_)) => continue,
                // A lost reply: that shard is released in the background; the order fails rather than ask it
                // again under the same purpose.
                Err(error) => return Err(error),
            }
        }
        // Whatever is held now belongs to a granted reservation or to one being granted whole, never to another
        // gathering.
        let _turn = tokio::time::timeout(TURN_WAIT_MAX, self.gather_turn.lock())
            .await
            .map_err(|_| EngineError::Overloaded)?;
        for _ in 0..GATHER_ATTEMPTS_MAX {
            let total = self.availability().await?;
            if total.remaining < u64::from(quantity) {
                return Err(EngineError::SoldOut);
            }
            let mut gathered = Vec::new();
            let mut missing = quantity;
            let mut lost = None;
            for &shard in &order {
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
                match self.reserve_on(shard, owner, claim, purpose).await {
                    Ok(Ok(granted)) => {
                        missing -= granted.quantity;
                        gathered.push(granted);
                    }
                    Ok(Err(_)) => {}
                    Err(error) => {
                        lost = Some(error);
                        break;
                    }
                }
            }
            if missing == 0 && lost.is_none() {
                return Ok(gathered);
            }
            // Another order took seats while we gathered, or a node did not answer: give ours back.
            let (parts, commits) = self.parts_of(gathered);
            wait_all(commits)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            self.release(&parts, ReleaseReason::Abandoned).await?;
            if let Some(error) = lost {
                return Err(error);
            }
            tokio::task::yield_now().await;
        }
        Err(EngineError::Overloaded)
    }

    async fn reserve_seats(
        &self,
        owner: &UserId,
        labels: &[String],
        purpose: &Purpose,
    ) -> Result<Vec<Granted>, EngineError> {
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
                .ok_or(EngineError::UnknownSeat)?;
            if !seen.insert(index) {
                return Err(EngineError::invalid("seats", "a seat is listed twice"));
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
                Ok(Ok(reserved)) => granted.push(reserved),
                Ok(Err(refused)) => {
                    refusal.get_or_insert(self.refusal_error(shard, refused));
                }
                // A node that did not answer decides: its error is the one the buyer sees.
                Err(error) => refusal = Some(error),
            }
        }
        if let Some(error) = refusal {
            let (parts, commits) = self.parts_of(granted);
            wait_all(commits)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            self.release(&parts, ReleaseReason::Abandoned).await?;
            return Err(error);
        }
        Ok(granted)
    }

    fn refusal_error(&self, shard: usize, refusal: ReserveRefusal) -> EngineError {
        match refusal {
            ReserveRefusal::SoldOut => EngineError::SoldOut,
            ReserveRefusal::SeatTaken { local_seat } => {
                let (start, _) = self.spec.shard_range(shard as u32);
                EngineError::SeatTaken {
                    seat: self
                        .spec
                        .seat_label(start + u64::from(local_seat))
                        .unwrap_or_default(),
                }
            }
            ReserveRefusal::UnknownSeat { .. } => EngineError::UnknownSeat,
        }
    }

    fn parts_of(&self, granted: Vec<Granted>) -> (Vec<Part>, Vec<Commit>) {
        granted
            .into_iter()
            .map(|granted| {
                let (start, _) = self.spec.shard_range(granted.shard as u32);
                let part = Part {
                    shard: granted.shard as u32,
                    reservation_id: granted.reservation_id,
                    quantity: granted.quantity,
                    seats: granted
                        .seats
                        .iter()
                        .map(|local| start + u64::from(*local))
                        .collect(),
                };
                (part, granted.commit)
            })
            .unzip()
    }

    /// Returns the parts' tickets to sale. A part that is already gone (expired) is not an error; a part whose
    /// node does not answer is released in the background as soon as it does.
    pub async fn release(&self, parts: &[Part], reason: ReleaseReason) -> Result<(), EngineError> {
        let replies = join_all(
            parts
                .iter()
                .map(|part| self.shards[part.shard as usize].release(part.reservation_id, reason)),
        )
        .await;
        let mut commits = Vec::new();
        for (part, reply) in parts.iter().zip(replies) {
            match reply {
                Ok(commit) => commits.push(commit),
                Err(EngineError::NodeUnavailable { .. }) => self.repairs.push(Repair {
                    concert: self.spec.id.clone(),
                    shard: part.shard,
                    work: RepairWork::Release {
                        reservation_id: part.reservation_id,
                        reason,
                    },
                }),
                Err(error) => return Err(error),
            }
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// Moves every part of a hold into payment; if any part has expired or does not answer, the others are
    /// released.
    pub async fn begin_purchase(
        &self,
        parts: &[Part],
        owner: &UserId,
        order_id: &OrderId,
        meta: &OrderMeta,
    ) -> Result<(), EngineError> {
        let replies = join_all(parts.iter().map(|part| {
            self.shards[part.shard as usize].begin_purchase(
                part.reservation_id,
                owner,
                order_id,
                meta,
            )
        }))
        .await;
        let mut commits = Vec::new();
        let mut failure = None;
        for reply in replies {
            match reply {
                Ok(commit) => commits.push(commit),
                Err(error @ EngineError::NodeUnavailable { .. }) => failure = Some(error),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)?;
        if let Some(error) = failure {
            let reason = match error {
                EngineError::HoldExpired => ReleaseReason::Expired,
                _ => ReleaseReason::Abandoned,
            };
            self.release(parts, reason).await?;
            return Err(error);
        }
        Ok(())
    }

    /// Sells every part; `tickets[i]` are the tickets of `parts[i]`. Idempotent: parts sold already by an
    /// earlier call count as sold.
    pub async fn confirm(
        &self,
        parts: &[Part],
        order_id: &OrderId,
        tickets: Vec<Vec<IssuedTicket>>,
    ) -> Result<(), EngineError> {
        assert_eq!(parts.len(), tickets.len(), "tickets for every part");
        if let [part] = parts {
            // One part (a general-admission order is served by one shard): no join and no list of commits.
            let mut tickets = tickets;
            let tickets = tickets.pop().unwrap_or_default();
            let commit = self.shards[part.shard as usize]
                .confirm(part.reservation_id, order_id, tickets)
                .await?;
            return commit.wait().await.map_err(|_| EngineError::Unavailable);
        }
        let replies = join_all(parts.iter().zip(tickets).map(|(part, tickets)| {
            self.shards[part.shard as usize].confirm(part.reservation_id, order_id, tickets)
        }))
        .await;
        let mut commits = Vec::new();
        let mut failure = None;
        for reply in replies {
            match reply {
                Ok(commit) => commits.push(commit),
                Err(error) => failure = Some(error),
            }
        }
        wait_all(commits)
            .await
            .map_err(|_| EngineError::Unavailable)?;
        failure.map_or(Ok(()), Err)
    }

    /// Checks in a ticket sold by `shard`; returns when it was checked in.
    pub async fn check_in(&self, shard: u32, ticket_id: &TicketId) -> Result<u64, EngineError> {
        let handle = self
            .shards
            .get(shard as usize)
            .ok_or(EngineError::UnknownTicket)?;
        let (at_ms, commit) = handle.check_in(ticket_id).await?;
        commit.wait().await.map_err(|_| EngineError::Unavailable)?;
        Ok(at_ms)
    }

    /// Serves a request another node sent to one of this node's shards; answers once what it changed is durable.
    pub async fn serve(
        &self,
        shard: u32,
        request: ShardRequest,
    ) -> Result<ShardReply, EngineError> {
        let handle = self
            .shards
            .get(shard as usize)
            .filter(|handle| handle.is_local())
            .ok_or(EngineError::ConcertNotFound)?;
        let durable = |commit: Commit| async move {
            commit.wait().await.map_err(|_| EngineError::Unavailable)
        };
        Ok(match request {
            ShardRequest::Reserve {
                owner,
                claim,
                purpose,
            } => match handle
                .reserve(&owner, claim, &purpose)
                .await
                .map_err(|(error, _)| error)?
            {
                Ok((reserved, commit)) => {
                    durable(commit).await?;
                    ShardReply::Reserved(Ok(reserved))
                }
                Err(refusal) => ShardReply::Reserved(Err(refusal)),
            },
            ShardRequest::BeginPurchase {
                reservation_id,
                owner,
                order_id,
                meta,
            } => {
                durable(
                    handle
                        .begin_purchase(reservation_id, &owner, &order_id, &meta)
                        .await?,
                )
                .await?;
                ShardReply::Done
            }
            ShardRequest::Confirm {
                reservation_id,
                order_id,
                tickets,
            } => {
                durable(handle.confirm(reservation_id, &order_id, tickets).await?).await?;
                ShardReply::Done
            }
            ShardRequest::Release {
                reservation_id,
                reason,
            } => {
                durable(handle.release(reservation_id, reason).await?).await?;
                ShardReply::Done
            }
            ShardRequest::ReleaseFor { key, reason } => {
                durable(handle.release_for(key, reason).await?).await?;
                ShardReply::Done
            }
            ShardRequest::CheckIn { ticket_id } => {
                let (at_ms, commit) = handle.check_in(&ticket_id).await?;
                durable(commit).await?;
                ShardReply::CheckedIn { at_ms }
            }
            ShardRequest::Counts => ShardReply::Counts(handle.counts().await?),
            ShardRequest::Seats => ShardReply::Seats(handle.seats().await?),
            ShardRequest::MoveOut { to_shard, want } => {
                ShardReply::MovedOut(handle.move_out(to_shard, want).await?)
            }
            ShardRequest::MoveIn {
                from_shard,
                seq,
                count,
            } => ShardReply::MovedIn(handle.move_in(from_shard, seq, count).await?),
            ShardRequest::MoveAcknowledged { to_shard, seq } => {
                durable(handle.move_acknowledged(to_shard, seq).await?).await?;
                ShardReply::Done
            }
            ShardRequest::BookView { home, after } => {
                ShardReply::BookView(handle.book_view_page(Some(home), after).await?)
            }
        })
    }
}

/// Which of `count` shards a buyer starts at, so that buyers spread evenly over them.
fn preferred(owner: &UserId, count: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    (hasher.finish() % count as u64) as usize
}

/// Waits for every commit and answers the first failure. One after the other: each completes when the journal
/// writer says so, whoever waits, so this ends when the last one does, as a join would, without a join's lists.
async fn wait_all(commits: Vec<Commit>) -> Result<(), crate::journal::JournalError> {
    let mut result = Ok(());
    for commit in commits {
        let outcome = commit.wait().await;
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

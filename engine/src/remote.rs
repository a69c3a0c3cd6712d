//! Shards on other nodes: what one node asks of a shard that another node owns, the answers, and the port the
//! requests travel through.
//!
//! The `cluster` crate implements [`PeerShards`] over its transport; on the node that owns the shard it hands
//! each request to [`ConcertHandle::serve`](crate::router::ConcertHandle::serve), which answers only once what the
//! request changed is durable there. So a remote reply needs no [`Commit`](crate::journal::Commit) of its own.
//!
//! A reply that never arrives (the node is down, cut off, or missed the deadline) is
//! [`EngineError::NodeUnavailable`]: the request may or may not have taken effect. Only idempotent requests are
//! retried (releases, confirmations, moves and reads); a reservation whose reply was lost is released by its
//! purpose ([`ShardRequest::ReleaseFor`]), and the shard then refuses that purpose for good, so a reservation that
//! arrives late cannot outlive its release.

use crate::error::EngineError;
use crate::ids::{OrderId, TicketId, UserId};
use crate::shard_state::{
    Availability, Claim, IssuedTicket, MoveArrival, OrderMeta, Purpose, PurposeKey, ReleaseReason,
    ReservationId, ReserveRefusal, SeatStatus, ShardBookView,
};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A shard node's number: its position in the cluster's node list, fixed for its life.
pub type NodeId = u32;

/// One request to one shard of one concert.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardRequest {
    Reserve {
        owner: UserId,
        claim: Claim,
        purpose: Purpose,
    },
    BeginPurchase {
        reservation_id: ReservationId,
        owner: UserId,
        order_id: OrderId,
        meta: OrderMeta,
    },
    /// Idempotent: tickets already issued for the order are a success.
    Confirm {
        reservation_id: ReservationId,
        order_id: OrderId,
        tickets: Vec<IssuedTicket>,
    },
    /// Idempotent: a reservation that is gone already is a success.
    Release {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    /// Releases whatever the shard holds for a hold or an order whose reservation reply was lost.
    ReleaseFor {
        key: PurposeKey,
        reason: ReleaseReason,
    },
    CheckIn {
        ticket_id: TicketId,
    },
    Counts,
    Seats,
    MoveOut {
        to_shard: u32,
        want: u64,
    },
    MoveIn {
        from_shard: u32,
        seq: u64,
        count: u64,
    },
    MoveAcknowledged {
        to_shard: u32,
        seq: u64,
    },
    /// A page of what the shard holds for the users of node `home`, for that node's book: the tickets after
    /// `after`.
    BookView {
        home: NodeId,
        after: Option<TicketId>,
    },
}

impl ShardRequest {
    /// The request's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Reserve { .. } => "reserve",
            Self::BeginPurchase { .. } => "begin_purchase",
            Self::Confirm { .. } => "confirm",
            Self::Release { .. } => "release",
            Self::ReleaseFor { .. } => "release_for",
            Self::CheckIn { .. } => "check_in",
            Self::Counts => "counts",
            Self::Seats => "seats",
            Self::MoveOut { .. } => "move_out",
            Self::MoveIn { .. } => "move_in",
            Self::MoveAcknowledged { .. } => "move_acknowledged",
            Self::BookView { .. } => "book_view",
        }
    }

    /// Whether sending it twice does no more than sending it once.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Self::Reserve { .. } | Self::BeginPurchase { .. } | Self::MoveOut { .. }
        )
    }
}

/// A shard's answer, sent once what it changed is durable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardReply {
    Reserved(Result<RemoteReserved, ReserveRefusal>),
    Done,
    CheckedIn {
        at_ms: u64,
    },
    Counts(Availability),
    Seats(Vec<SeatStatus>),
    /// `None`: nothing left to give.
    MovedOut(Option<(u64, u64)>),
    MovedIn(MoveArrival),
    BookView(ShardBookView),
}

/// A reservation a remote shard made, durable there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteReserved {
    pub reservation_id: ReservationId,
    pub quantity: u32,
    /// Local seat indices, empty for general admission.
    pub seats: Vec<u32>,
    /// The shard's remaining count after the reservation: the router's hint.
    pub remaining: u64,
}

/// The domain outcomes a shard answers with, as they travel between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteError {
    ConcertNotFound,
    HoldNotFound,
    OrderNotFound,
    SoldOut,
    HoldExpired,
    HoldNotActive,
    UnknownTicket,
    AlreadyCheckedIn {
        checked_in_at_ms: u64,
    },
    Overloaded,
    NodeUnavailable {
        node: NodeId,
    },
    /// Anything else: the remote node failed; its log has the detail.
    Unavailable,
    Recovering,
}

impl From<EngineError> for RemoteError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::ConcertNotFound => Self::ConcertNotFound,
            EngineError::HoldNotFound => Self::HoldNotFound,
            EngineError::OrderNotFound => Self::OrderNotFound,
            EngineError::SoldOut => Self::SoldOut,
            EngineError::HoldExpired => Self::HoldExpired,
            EngineError::HoldNotActive => Self::HoldNotActive,
            EngineError::UnknownTicket => Self::UnknownTicket,
            EngineError::AlreadyCheckedIn { checked_in_at_ms } => {
                Self::AlreadyCheckedIn { checked_in_at_ms }
            }
            EngineError::Overloaded => Self::Overloaded,
            EngineError::Recovering => Self::Recovering,
            EngineError::NodeUnavailable { node } => Self::NodeUnavailable { node },
            other => {
                tracing::warn!(error = %other, "a shard request failed");
                Self::Unavailable
            }
        }
    }
}

impl From<RemoteError> for EngineError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::ConcertNotFound => Self::ConcertNotFound,
            RemoteError::HoldNotFound => Self::HoldNotFound,
            RemoteError::OrderNotFound => Self::OrderNotFound,
            RemoteError::SoldOut => Self::SoldOut,
            RemoteError::HoldExpired => Self::HoldExpired,
            RemoteError::HoldNotActive => Self::HoldNotActive,
            RemoteError::UnknownTicket => Self::UnknownTicket,
            RemoteError::AlreadyCheckedIn { checked_in_at_ms } => {
                Self::AlreadyCheckedIn { checked_in_at_ms }
            }
            RemoteError::Overloaded => Self::Overloaded,
            RemoteError::Recovering => Self::Recovering,
            RemoteError::NodeUnavailable { node } => Self::NodeUnavailable { node },
            RemoteError::Unavailable => Self::Unavailable,
        }
    }
}

/// Why a call to another node's shard has no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The request never left (no connection, too many in flight, or refused before it was read): it had no
    /// effect.
    NotSent { node: NodeId, busy: bool },
    /// Sent, and no answer came within the deadline or the connection broke: it may have taken effect.
    Lost { node: NodeId },
    /// The node answered with this outcome.
    Answered(EngineError),
}

impl From<PeerError> for EngineError {
    fn from(error: PeerError) -> Self {
        match error {
            PeerError::NotSent { busy: true, .. } => EngineError::Overloaded,
            PeerError::NotSent { node, .. } | PeerError::Lost { node } => {
                EngineError::NodeUnavailable { node }
            }
            PeerError::Answered(error) => error,
        }
    }
}

/// How a node reaches the shards other nodes own. Implementations bound what is in flight per node and give
/// every call a deadline.
pub trait PeerShards: Send + Sync + 'static {
    fn call(
        &self,
        node: NodeId,
        concert: &crate::ids::ConcertId,
        shard: u32,
        request: ShardRequest,
    ) -> BoxFuture<'static, Result<ShardReply, PeerError>>;
}

//! The boxoffice engine: everything about selling tickets that is not HTTP, storage or sockets.
//!
//! - [`concert`]: concert definitions, seat labels, how inventory is cut into shards.
//! - [`shard_state`]: one shard's inventory as a pure state machine (decide, then apply an event).
//! - [`shard`]: the actix actor that owns a `ShardState`, journals its events and expires holds.
//! - [`router`]: the node's concerts, where their shards live, and how a claim is spread over them.
//! - [`remote`]: what a node asks of a shard another node owns, and the port ([`remote::PeerShards`]) it asks
//!   through.
//! - [`desk`]: the order desk, which owns every order and hold from reservation to tickets or release.
//! - [`payment`]: the `PaymentProvider` port, the simulator, and the pool that bounds and times out charges.
//! - [`journal`]: the `Journal` port shard actors write to.
//! - [`feed`]: each concert's live feed of seat changes and availability, published by its shard actors.
//! - [`clock`], [`ids`], [`error`]: time, identifiers and domain outcomes.
//! - [`crash`]: crash points the crash-matrix tests abort at (debug builds only).

pub mod clock;
pub mod concert;
pub mod crash;
pub mod desk;
pub mod error;
pub mod feed;
pub mod ids;
pub mod journal;
pub mod payment;
pub mod remote;
pub mod router;
pub mod shard;
pub mod shard_state;

pub use error::EngineError;

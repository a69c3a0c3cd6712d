//! The cluster: several `boxoffice` processes selling the same concerts.
//!
//! - [`config`]: the role of this process, the node list and the shared secret.
//! - [`placement`]: where a concert's shards and a user live (rendezvous hashing), decided once.
//! - [`route`]: which process answers a public request.
//! - [`peers`]: the client side of the internal transport (HTTP/2, postcard), bounded per peer, with deadlines,
//!   and the engine's port to other nodes' shards ([`peers::PeerLink`]).
//! - [`server`]: the internal port: shard requests, feed streams, forwarded requests.
//! - [`feed`]: a node's feed as a stream, and the concert's feed merged from every node.
//! - [`book`]: rebuilding a restarted node's book from every node's shards.
//! - [`wire`]: what travels between nodes.
//!
//! Shard nodes own shards and users and keep them durable as a single node does; fronts own nothing. There is no
//! membership protocol: the node list is configuration, a node's number is its place in it, and placement is
//! stored with each concert, so no shard ever moves and never has two owners.

pub mod book;
pub mod config;
pub mod feed;
pub mod peers;
pub mod placement;
pub mod route;
pub mod server;
pub mod wire;

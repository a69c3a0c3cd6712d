//! boxoffice storage: what makes the engine's journal durable on local disk, and what a restart recovers.
//!
//! - [`log`]: the append-only segment log, written by one thread with group commit; it stores opaque payloads
//!   and knows only each record's stream and sequence number, to decide which old segments may be deleted.
//! - [`wire`]: the versioned records the journal and the snapshots are made of.
//! - [`storage`]: the node's [`storage::Storage`]: the engine's durable `Journal`, snapshots, concerts and users in
//!   sled, and recovery (snapshots plus journal tail) when it opens.
//! - [`crypto`]: envelope encryption (AES-256-GCM data keys per user, wrapped under the master key).
//! - [`ledger`]: the payment simulator's ledger, kept in the data dir so that it outlives a restart.

pub mod crypto;
pub mod ledger;
pub mod log;
pub mod storage;
pub mod wire;

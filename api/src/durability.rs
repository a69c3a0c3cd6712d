//! The node's storage as the HTTP front sees it: set once recovery has opened it, absent with `--durability none`.
//!
//! The router and the user store are built before recovery so that the node can answer `/health` (503) while it
//! recovers; they reach the storage through [`Durable`], which is empty until then. Nothing writes before it is
//! set: every route except the operational ones answers `503 recovering` until the node is ready.

use crate::error::ApiError;
use engine::journal::{Commit, Journal, JournalRecord, ShardSnapshot};
use engine::payment::{LedgerStore, SimulatedCharge};
use persistence::storage::Storage;
use persistence::wire::MetaRecord;
use std::sync::{Arc, OnceLock};

/// `--durability`: `fsync` journals every change with group commit; `none` keeps state in memory only, which
/// exists to measure what durability costs and is never for a real sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityMode {
    Fsync,
    None,
}

#[derive(Clone, Default)]
pub struct Durable(Arc<OnceLock<Arc<Storage>>>);

impl Durable {
    /// Called once, when recovery has opened the storage.
    pub fn set(&self, storage: Arc<Storage>) {
        assert!(self.0.set(storage).is_ok(), "the storage is set once");
    }

    pub fn storage(&self) -> Option<&Arc<Storage>> {
        self.0.get()
    }

    /// Queues a node-wide record; the commit completes once it is durable (at once without storage).
    pub fn append_meta(&self, record: MetaRecord) -> Commit {
        match self.0.get() {
            Some(storage) => storage.append_meta(record),
            None => Commit::done(),
        }
    }

    /// Waits for a commit, turning a failed write into `503 unavailable`.
    pub async fn wait(commit: Commit) -> Result<(), ApiError> {
        commit.wait().await.map_err(|error| {
            tracing::error!(%error, "journal write failed");
            ApiError::from(engine::error::EngineError::Unavailable)
        })
    }
}

impl Journal for Durable {
    fn append(&self, record: JournalRecord) -> Commit {
        match self.0.get() {
            Some(storage) => storage.append(record),
            None => Commit::done(),
        }
    }

    fn snapshot_every_events(&self) -> Option<u64> {
        self.0
            .get()
            .and_then(|storage| storage.snapshot_every_events())
    }

    fn barrier(&self) -> Commit {
        match self.0.get() {
            Some(storage) => storage.barrier(),
            None => Commit::done(),
        }
    }

    fn save_snapshot(&self, snapshot: ShardSnapshot) -> Commit {
        match self.0.get() {
            Some(storage) => storage.save_snapshot(snapshot),
            None => Commit::done(),
        }
    }
}

/// The payment simulator's ledger lives in the node's storage (see `persistence::ledger`).
impl LedgerStore for Durable {
    fn record(&self, idempotency_key: &str, charge: &SimulatedCharge) -> Commit {
        match self.0.get() {
            Some(storage) => storage.append_ledger(idempotency_key, charge),
            None => Commit::failed("the storage is not open yet".into()),
        }
    }
}

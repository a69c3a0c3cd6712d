//! The node's storage as the HTTP front sees it: set once recovery has opened it, absent with `--durability none`.
//!
//! The router and the user store are built before recovery so that the node can answer `/health` (503) while it
//! recovers; they reach the storage through [`Durable`], which is empty until then. Nothing writes before it is
//! set: every route except the operational ones answers `503 recovering` until the node is ready.

use crate::error::ApiError;
use engine::journal::{Commit, Journal, JournalRecord, ShardSnapshot};
use engine::payment::{LedgerStore, PaymentCard, SimulatedCard, SimulatedCharge};
use persistence::crypto::{KeyRing, Sealed, WrappedKey};
use persistence::storage::Storage;
use persistence::wire::MetaRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Each order's payment step, as a node-wide record of the journal (sled tree `payments` once applied); the end
/// of one is not journaled (`Storage::forget_payment`).
impl engine::payment::PaymentJournal for Durable {
    fn record(&self, order_id: &str, record: Option<&engine::payment::PaymentRecord>) -> Commit {
        match (self.0.get(), record) {
            (Some(storage), Some(record)) => storage.append_meta(MetaRecord::Payment {
                order_id: order_id.to_owned(),
                record: Some(record.clone()),
            }),
            (Some(storage), None) => {
                storage.forget_payment(order_id);
                Commit::done()
            }
            (None, _) => Commit::done(),
        }
    }
}

/// Where the in-process payment simulator keeps what it must remember across a restart, as a real provider
/// would: its ledger (see `persistence::ledger`) and its vault, each card's number sealed with the envelope
/// encryption under a data key of its own (the payment method id bound as associated data), kept as a node-wide
/// record. The vault's cards are the simulator's; the node's users keep only payment method ids. The sealed
/// records stay in memory too, so that a master key rotation re-wraps their data keys ([`Self::rewrap_data_keys`]).
pub struct SimulatorStore {
    durable: Durable,
    keys: Arc<KeyRing>,
    vault: Mutex<HashMap<String, VaultRecord>>,
}

/// A card in the simulator's vault as the storage keeps it; the variant is the format version.
#[derive(Serialize, Deserialize)]
enum StoredVaultCard {
    V1(VaultRecord),
}

#[derive(Clone, Serialize, Deserialize)]
struct VaultRecord {
    data_key: WrappedKey,
    /// The number, sealed under the data key.
    number: Sealed,
}

/// Purpose bound into the associated data of a vaulted card number.
const VAULT_PURPOSE: &str = "vault-card-number";

impl SimulatorStore {
    pub fn new(durable: Durable, keys: Arc<KeyRing>) -> Self {
        Self {
            durable,
            keys,
            vault: Mutex::new(HashMap::new()),
        }
    }

    fn append(&self, payment_method: &str, record: &VaultRecord) -> Commit {
        self.durable.append_meta(MetaRecord::PaymentMethod {
            id: payment_method.to_owned(),
            record: postcard::to_allocvec(&StoredVaultCard::V1(record.clone()))
                .expect("vaulted cards always encode"),
        })
    }

    /// Loads the vault recovery read back; returns what the simulator keeps of each card in memory.
    pub fn restore(
        &self,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<HashMap<String, SimulatedCard>, String> {
        let mut cards = HashMap::with_capacity(records.len());
        let mut vault = self.vault.lock().expect("vault lock");
        for (id, bytes) in records {
            let StoredVaultCard::V1(record) = postcard::from_bytes(&bytes)
                .map_err(|error| format!("vaulted card {id} does not decode: {error}"))?;
            let number = self
                .keys
                .unwrap(&record.data_key, &id)
                .and_then(|key| key.open(&id, VAULT_PURPOSE, &record.number))
                .map_err(|error| {
                    format!("vaulted card {id}: {error} (is this the node's master key?)")
                })?;
            let number = std::str::from_utf8(&number)
                .map_err(|_| format!("vaulted card {id}: not a card number"))?;
            cards.insert(id.clone(), SimulatedCard::of_number(number));
            vault.insert(id, record);
        }
        Ok(cards)
    }

    /// Wraps every vaulted card's data key that is not under the current master key under it, journaling each;
    /// returns how many.
    pub async fn rewrap_data_keys(&self) -> Result<usize, ApiError> {
        let current = self.keys.current_id();
        let stale: Vec<String> = self
            .vault
            .lock()
            .expect("vault lock")
            .iter()
            .filter(|(_, record)| record.data_key.master_key_id != current)
            .map(|(id, _)| id.clone())
            .collect();
        let mut commits = Vec::with_capacity(stale.len());
        for id in &stale {
            let mut vault = self.vault.lock().expect("vault lock");
            let Some(record) = vault.get_mut(id) else {
                continue;
            };
            record.data_key = self
                .keys
                .rewrap(&record.data_key, id)
                .map_err(ApiError::internal)?;
            commits.push(self.append(id, record));
        }
        for commit in commits {
            Durable::wait(commit).await?;
        }
        Ok(stale.len())
    }
}

impl LedgerStore for SimulatorStore {
    fn record(&self, idempotency_key: &str, charge: &SimulatedCharge) -> Commit {
        match self.durable.0.get() {
            Some(storage) => storage.append_ledger(idempotency_key, charge),
            None => Commit::failed("the storage is not open yet".into()),
        }
    }

    fn record_card(&self, payment_method: &str, card: &PaymentCard) -> Commit {
        let (key, data_key) = self.keys.new_data_key(payment_method);
        let record = VaultRecord {
            number: key.seal(payment_method, VAULT_PURPOSE, card.number.as_bytes()),
            data_key,
        };
        let mut vault = self.vault.lock().expect("vault lock");
        let commit = self.append(payment_method, &record);
        vault.insert(payment_method.to_owned(), record);
        commit
    }
}

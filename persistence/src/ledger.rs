//! The payment simulator's ledger on disk: the last state of each charge, by idempotency key, so that the
//! simulator remembers its charges across a restart of the server, as a real provider would, and recovery can ask
//! it what became of a charge.
//!
//! Each charge's record goes to two places ([`crate::storage::Storage::append_ledger`]): the node's journal
//! (stream `ledger`), queued before the simulator answers, so that the order's confirmation, appended after it to
//! the same log, is never durable without it, and no order waits for a sync of the ledger's own; and this
//! checkpoint, a segment log of its own in `DIR/payment-sim/` (its records numbered by position, the journal's
//! `seq`), written behind without anyone waiting: records gather in memory and go to the checkpoint's writer
//! [`PENDING_MAX`] at a time, or at a barrier or close, so that the writer thread is woken once per batch rather
//! than once per charge (which cost about 5% of a node's CPU in a durable sale). The journal's ledger records are
//! needed until the checkpoint has them: the snapshot writer waits for [`LedgerCheckpoint::barrier`] before it lets
//! the journal be truncated past them, and recovery appends to the checkpoint whatever the journal has beyond it.
//! Nothing here is ever truncated; the simulator is for demos, tests and benchmarks.

use crate::log::{self, LogConfig, LogWriter, StreamId, SyncPolicy};
use engine::journal::JournalError;
use engine::payment::SimulatedCharge;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// Where the checkpoint lives in the data dir.
pub const LEDGER_DIR: &str = "payment-sim";

const CHECKPOINT_STREAM: &str = "ledger";

/// Records kept in memory before they go to the checkpoint's writer in one go. A crash loses at most these from the
/// checkpoint, and recovery takes them back from the journal, which holds them until a barrier here.
pub const PENDING_MAX: usize = 512;

#[derive(Serialize, Deserialize)]
enum WireCharge {
    V1 {
        key: String,
        charge: SimulatedCharge,
    },
}

/// The same layout as [`WireCharge`], borrowing the charge's key, so that encoding it copies nothing.
#[derive(Serialize)]
enum WireChargeRef<'a> {
    V1 {
        key: &'a str,
        charge: &'a SimulatedCharge,
    },
}

pub struct LedgerCheckpoint {
    log: LogWriter,
    stream: StreamId,
    /// Encoded records not yet handed to the writer, in `seq` order. Held while handing them over, so that
    /// records reach the log in the order they were numbered whoever flushes.
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl LedgerCheckpoint {
    /// Opens the checkpoint in `dir`: it, every key's last recorded state, and how many records it holds (the
    /// `seq` of the last).
    pub fn open(
        dir: &Path,
        sync: bool,
    ) -> std::io::Result<(Self, HashMap<String, SimulatedCharge>, u64)> {
        let mut charges = HashMap::new();
        let mut seq = 0;
        // Nobody waits for a checkpoint record: the journal holds it until a barrier has made it durable here.
        let config = LogConfig {
            sync: if sync {
                SyncPolicy::AtBarriers
            } else {
                SyncPolicy::Never
            },
            ..LogConfig::new(dir)
        };
        let (log, report) = log::open(config, |bytes| {
            let WireCharge::V1 { key, charge } = postcard::from_bytes(bytes)
                .map_err(|error| format!("undecodable ledger record: {error}"))?;
            charges.insert(key, charge);
            seq += 1;
            Ok((CHECKPOINT_STREAM.into(), seq))
        })?;
        if let Some(torn) = report.torn_tail {
            tracing::warn!(offset = torn.offset, reason = %torn.reason, "simulator ledger ended in a torn record: its tail was cut");
        }
        let checkpoint = Self {
            log,
            stream: CHECKPOINT_STREAM.into(),
            pending: Mutex::new(Vec::with_capacity(PENDING_MAX)),
        };
        Ok((checkpoint, charges, seq))
    }

    /// Queues the record numbered `seq` (the next after the last); nobody waits for it (see the module comment).
    pub fn append(&self, seq: u64, key: &str, charge: &SimulatedCharge) {
        let bytes = crate::wire::encode_with_room(&WireChargeRef::V1 { key, charge });
        let mut pending = self.pending();
        pending.push((seq, bytes));
        if pending.len() >= PENDING_MAX {
            self.hand_over(&mut pending);
        }
    }

    /// Completes once every record appended before it is durable.
    pub fn barrier(&self) -> oneshot::Receiver<Result<(), JournalError>> {
        let mut pending = self.pending();
        self.hand_over(&mut pending);
        self.log.barrier()
    }

    pub fn close(&self) {
        self.hand_over(&mut self.pending());
        self.log.close();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Vec<u8>)>> {
        // A poisoned lock still holds whole records: each is pushed or taken in one step.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the writer every pending record, in order; nobody waits for them (see the module comment).
    fn hand_over(&self, pending: &mut Vec<(u64, Vec<u8>)>) {
        for (seq, bytes) in pending.drain(..) {
            drop(self.log.append(self.stream.clone(), seq, bytes));
        }
    }
}

//! The payment simulator's ledger on disk, so that the simulator remembers its charges across a restart of the
//! server, as a real provider would, and recovery can ask it what became of a charge.
//!
//! It is a segment log of its own in `DIR/payment-sim/` (the simulator stands for an outside service, so its
//! records stay apart from the node's journal): one record per final state of a charge, the last one for a key
//! winning on reading back. Nothing here is ever truncated; the simulator is for demos, tests and benchmarks.

use crate::log::{self, LogConfig, LogWriter, StreamId};
use engine::journal::Commit;
use engine::payment::{LedgerStore, SimulatedCharge};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

const LEDGER_STREAM: &str = "ledger";

#[derive(Serialize, Deserialize)]
enum WireCharge {
    V1 {
        key: String,
        charge: SimulatedCharge,
    },
}

pub struct SimulatorLedger {
    log: LogWriter,
    stream: StreamId,
    /// The last sequence number written; held while a record is queued so that the log keeps their order.
    seq: Mutex<u64>,
}

impl SimulatorLedger {
    /// Opens the ledger in `dir`, returning it with every key's last recorded state.
    pub fn open(
        dir: &Path,
        sync: bool,
    ) -> std::io::Result<(SimulatorLedger, HashMap<String, SimulatedCharge>)> {
        let mut charges = HashMap::new();
        let mut seq = 0;
        let config = LogConfig {
            sync,
            ..LogConfig::new(dir)
        };
        let (log, report) = log::open(config, |bytes| {
            let WireCharge::V1 { key, charge } = postcard::from_bytes(bytes)
                .map_err(|error| format!("undecodable ledger record: {error}"))?;
            charges.insert(key, charge);
            seq += 1;
            Ok((LEDGER_STREAM.into(), seq))
        })?;
        if let Some(torn) = report.torn_tail {
            tracing::warn!(offset = torn.offset, reason = %torn.reason, "simulator ledger ended in a torn record: its tail was cut");
        }
        let ledger = SimulatorLedger {
            log,
            stream: LEDGER_STREAM.into(),
            seq: Mutex::new(seq),
        };
        Ok((ledger, charges))
    }

    pub fn close(&self) {
        self.log.close();
    }
}

impl LedgerStore for SimulatorLedger {
    fn record(&self, idempotency_key: &str, charge: &SimulatedCharge) -> Commit {
        let bytes = postcard::to_allocvec(&WireCharge::V1 {
            key: idempotency_key.to_owned(),
            charge: charge.clone(),
        })
        .expect("ledger records always encode");
        let mut seq = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        Commit::pending(self.log.append(self.stream.clone(), *seq, bytes))
    }
}

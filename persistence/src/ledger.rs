//! The payment simulator's ledger as data dirs kept it before it moved into the node's storage.
//!
//! The simulator's ledger (the last state of each charge, by idempotency key) now lives in the node's journal
//! (stream `ledger`, [`crate::wire::Entry::Ledger`]) and in sled's `payment-ledger` tree, like the node-wide
//! records: a charge's record is queued in the journal before the simulator answers, so the order's confirmation,
//! appended after it to the same log, is never durable without it, and no order waits for a sync of its own for
//! the ledger. Earlier versions kept it in a segment log of its own in `DIR/payment-sim/`, one record per final
//! state of a charge, the last for a key winning; [`crate::storage::Storage::open`] copies such a ledger into the
//! tree once ([`read_legacy`]).

use crate::log::{self, LogConfig};
use engine::payment::SimulatedCharge;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where earlier versions kept the simulator's ledger, in the data dir.
pub const LEGACY_LEDGER_DIR: &str = "payment-sim";

const LEDGER_STREAM: &str = "ledger";

#[derive(Serialize, Deserialize)]
enum WireCharge {
    V1 {
        key: String,
        charge: SimulatedCharge,
    },
}

/// Every key's last recorded state in a ledger of the old layout in `dir` (its torn tail, if any, cut).
pub fn read_legacy(dir: &Path) -> std::io::Result<HashMap<String, SimulatedCharge>> {
    let mut charges = HashMap::new();
    let mut seq = 0;
    let (log, report) = log::open(LogConfig::new(dir), |bytes| {
        let WireCharge::V1 { key, charge } = postcard::from_bytes(bytes)
            .map_err(|error| format!("undecodable ledger record: {error}"))?;
        charges.insert(key, charge);
        seq += 1;
        Ok((LEDGER_STREAM.into(), seq))
    })?;
    log.close();
    if let Some(torn) = report.torn_tail {
        tracing::warn!(offset = torn.offset, reason = %torn.reason, "old simulator ledger ended in a torn record: its tail was cut");
    }
    Ok(charges)
}

/// Writes a ledger of the old layout: how tests make a data dir of an earlier version.
pub fn write_legacy(dir: &Path, charges: &[(&str, SimulatedCharge)]) -> std::io::Result<()> {
    let (log, _) = log::open(LogConfig::new(dir), |_| Err("a new ledger".into()))?;
    let mut receivers = Vec::new();
    for (seq, (key, charge)) in charges.iter().enumerate() {
        let bytes = postcard::to_allocvec(&WireCharge::V1 {
            key: (*key).to_owned(),
            charge: charge.clone(),
        })
        .expect("ledger records always encode");
        receivers.push(log.append(LEDGER_STREAM.into(), seq as u64 + 1, bytes));
    }
    log.close();
    for receiver in receivers {
        receiver
            .blocking_recv()
            .map_err(|_| std::io::Error::other("ledger writer stopped"))?
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

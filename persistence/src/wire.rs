//! What the journal and the snapshot store write, as versioned postcard records.
//!
//! Every record on disk is an enum whose variant index is its format version (`V1`, ...): postcard writes that
//! index first, so a reader meets an unknown version as a decode error instead of misreading it, and a later
//! version adds a variant while still reading the old ones. Snapshots also carry a CRC-32 of their bytes: sled
//! stores them, and a damaged one must be told apart from a good one so that recovery can fall back to the
//! previous snapshot.

use engine::concert::ConcertSpec;
use engine::journal::JournalRecord;
use engine::payment::{PaymentRecord, SimulatedCharge};
use engine::remote::NodeId;
use engine::shard_state::{ShardState, ShardStateV1};
use serde::{Deserialize, Serialize};

/// The stream of node-wide records: concerts and users.
pub const META_STREAM: &str = "meta";
/// The stream of the payment simulator's ledger: the final state of each charge.
pub const LEDGER_STREAM: &str = "ledger";

/// A node-wide record: what exists besides the shards' inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    /// A concert whose shards all live on this node.
    Concert(ConcertSpec),
    /// A user as the HTTP front encodes it; opaque here, so that this crate never sees what a user holds.
    User { id: String, record: Vec<u8> },
    /// A concert of a cluster: `placement[k]` is the node that owns shard `k`.
    PlacedConcert {
        spec: ConcertSpec,
        placement: Vec<NodeId>,
    },
    /// A card in the in-process payment simulator's vault, as the HTTP front encodes it (sealed); opaque here.
    PaymentMethod { id: String, record: Vec<u8> },
    /// An order's payment step while it is not final; `None` once it is (the order's record is removed).
    Payment {
        order_id: String,
        record: Option<PaymentRecord>,
    },
    /// A payment webhook event acted on, and when (`None`: forgotten).
    WebhookEvent { id: String, at_ms: Option<u64> },
}

/// One journal record as written to the segment log.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireRecord {
    V1(Entry),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Entry {
    Shard(JournalRecord),
    Meta {
        seq: u64,
        record: MetaRecord,
    },
    /// The payment simulator's record of a charge (added after V1's first two entries: older journals read the
    /// same). In the node's own journal so that a confirmation appended after it is never durable without it.
    Ledger {
        seq: u64,
        key: String,
        charge: SimulatedCharge,
    },
}

/// V2 added the counts a general-admission shard moved to and from other shards.
#[derive(Debug, Deserialize)]
enum WireSnapshot {
    V1(ShardStateV1),
    V2(ShardState),
}

/// The same layout as [`WireSnapshot`], borrowing the state so that writing a snapshot copies nothing.
#[derive(Serialize)]
enum WireSnapshotRef<'a> {
    #[allow(dead_code)] // read only: written before V2
    V1(()),
    V2(&'a ShardState),
}

/// The stream of one shard of one concert, e.g. `c_1a2b/3`.
pub fn shard_stream(concert_id: &str, shard: u32) -> String {
    format!("{concert_id}/{shard}")
}

pub fn encode_record(entry: Entry) -> Vec<u8> {
    postcard::to_allocvec(&WireRecord::V1(entry)).expect("journal records always encode")
}

pub fn decode_record(bytes: &[u8]) -> Result<Entry, String> {
    match postcard::from_bytes(bytes) {
        Ok(WireRecord::V1(entry)) => Ok(entry),
        Err(error) => Err(format!("undecodable journal record: {error}")),
    }
}

/// `crc: u32 LE` of the rest, then the postcard snapshot.
pub fn encode_snapshot(state: &ShardState) -> Vec<u8> {
    let body =
        postcard::to_allocvec(&WireSnapshotRef::V2(state)).expect("shard states always encode");
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<ShardState, String> {
    let (crc, body) = bytes
        .split_first_chunk::<4>()
        .ok_or("snapshot shorter than its checksum")?;
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err("snapshot checksum mismatch".into());
    }
    match postcard::from_bytes(body) {
        Ok(WireSnapshot::V1(state)) => Ok(state.into()),
        Ok(WireSnapshot::V2(state)) => Ok(state),
        Err(error) => Err(format!("undecodable snapshot: {error}")),
    }
}

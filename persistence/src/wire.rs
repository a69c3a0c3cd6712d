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

/// The same layout as [`WireRecord`] for a ledger entry, borrowing its key, so that encoding it copies nothing.
#[derive(Serialize)]
enum WireRecordRef<'a> {
    V1(EntryRef<'a>),
}

/// [`Entry`]'s variants in the same order (postcard writes the index); only `Ledger` is ever written this way.
#[derive(Serialize)]
enum EntryRef<'a> {
    #[allow(dead_code)] // layout only: written as `Entry::Shard`
    Shard(()),
    #[allow(dead_code)] // layout only: written as `Entry::Meta`
    Meta(()),
    Ledger {
        seq: u64,
        key: &'a str,
        charge: &'a SimulatedCharge,
    },
}

/// Bytes set aside for a journal record before it is encoded: most records fit, so encoding one is one
/// allocation instead of a vector doubling from empty.
const RECORD_ENCODED_BYTES_TYPICAL: usize = 256;

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

/// Longest stream id [`shard_stream_id`] builds on the stack; a longer one is formatted on the heap.
const STREAM_ID_BYTES_STACK: usize = 96;

/// [`shard_stream`] as the log's stream id, in one allocation (the id's own) when it is short, as ids are.
pub fn shard_stream_id(concert_id: &str, shard: u32) -> crate::log::StreamId {
    use std::io::Write;
    let mut text = [0u8; STREAM_ID_BYTES_STACK];
    let room = text.len();
    let mut rest = &mut text[..];
    if write!(rest, "{concert_id}/{shard}").is_ok() {
        let written = room - rest.len();
        if let Ok(id) = std::str::from_utf8(&text[..written]) {
            return id.into();
        }
    }
    shard_stream(concert_id, shard).into()
}

pub fn encode_record(entry: Entry) -> Vec<u8> {
    encode_with_room(&WireRecord::V1(entry))
}

/// The journal record of the simulator's charge under `key`: what `encode_record(Entry::Ledger { .. })` writes.
pub fn encode_ledger_record(seq: u64, key: &str, charge: &SimulatedCharge) -> Vec<u8> {
    encode_with_room(&WireRecordRef::V1(EntryRef::Ledger { seq, key, charge }))
}

/// `value` in postcard, into a vector with room for a typical record.
pub fn encode_with_room(value: &impl Serialize) -> Vec<u8> {
    postcard::to_extend(value, Vec::with_capacity(RECORD_ENCODED_BYTES_TYPICAL))
        .expect("records always encode")
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

#[cfg(test)]
mod tests {
    use super::*;
    use engine::payment::SimulatedChargeState;

    #[test]
    fn a_shard_stream_id_is_its_stream_name() {
        assert_eq!(&*shard_stream_id("c_1a2b", 3), "c_1a2b/3");
        let long = "c".repeat(200);
        assert_eq!(
            &*shard_stream_id(&long, 4_000_000_000),
            format!("{long}/4000000000")
        );
    }

    #[test]
    fn a_ledger_record_reads_back_as_the_entry_it_was_written_from() {
        let charge = SimulatedCharge {
            amount_cents: 4_200,
            state: SimulatedChargeState::Approved,
        };
        let borrowed = encode_ledger_record(7, "authorize-o_1", &charge);
        let owned = encode_record(Entry::Ledger {
            seq: 7,
            key: "authorize-o_1".into(),
            charge: charge.clone(),
        });
        assert_eq!(borrowed, owned);
        match decode_record(&borrowed) {
            Ok(Entry::Ledger {
                seq,
                key,
                charge: read,
            }) => {
                assert_eq!((seq, key.as_str(), read), (7, "authorize-o_1", charge));
            }
            other => panic!("not the ledger entry: {other:?}"),
        }
    }
}

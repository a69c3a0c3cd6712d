//! What travels between nodes on the internal port: versioned postcard bodies, and the headers a forwarded public
//! request carries.
//!
//! Every body is an enum whose variant is its format version (`V1`, ...): postcard writes that index first, so a
//! node of another version meets an unknown variant as a decode error (answered `400`, seen by the caller as the
//! node being unavailable), never as a misread.

use engine::ids::ConcertId;
use engine::remote::{RemoteError, ShardReply, ShardRequest};
use serde::{Deserialize, Serialize};

/// Every internal path starts with this; no public request is ever served under it.
pub const INTERNAL_PREFIX: &str = "/internal/";
/// Path of a request to one shard.
pub const SHARD_PATH: &str = "/internal/v1/shard";
/// Path of a node's live feed of one concert.
pub const FEED_PATH: &str = "/internal/v1/feed";
/// Internal routes the `api` crate serves (users, concerts, status) start with this.
pub const API_PREFIX: &str = "/internal/v1/";

/// The cluster secret, on every internal request.
pub const SECRET_HEADER: &str = "x-boxoffice-cluster-secret";
/// On a forwarded public request: `cluster` (the receiver answers for the cluster, asking other nodes if it must,
/// but never forwards the request as a whole again) or `node` (the receiver answers from what it holds itself).
pub const SCOPE_HEADER: &str = "x-boxoffice-scope";
/// On a forwarded public request: the client's address as the first node saw it.
pub const CLIENT_HEADER: &str = "x-boxoffice-client";

/// A request to one shard of one concert.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardCall {
    V1 {
        concert: ConcertId,
        shard: u32,
        request: ShardRequest,
    },
}

/// A shard's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardAnswer {
    V1(Result<ShardReply, RemoteError>),
}

/// Where a feed stream starts: after `position` of the node's feed of epoch `epoch`, or (`None`) from a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub enum FeedOpen {
    V1 {
        concert: ConcertId,
        resume: Option<(u64, u64)>,
    },
}

/// One frame of a node's feed stream, length-prefixed (`u32` little endian) on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedFrame {
    V1(FeedEvent),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEvent {
    /// The first frame: the node's feed epoch, the position the stream starts after, whether the changes since
    /// the requested position follow (else the caller needs a snapshot), and the node's held and sold counts.
    Opened {
        epoch: u64,
        position: u64,
        resumed: bool,
        held: u64,
        sold: u64,
    },
    /// A seat changed: its concert-wide index, and how (`SeatChangeKind` as a number).
    Seat { position: u64, seat: u64, kind: u8 },
    /// The node's shards now hold `held` and have sold `sold`.
    Counts { held: u64, sold: u64 },
    /// Sent every few seconds when nothing else is, so that the receiver notices a dead stream.
    KeepAlive,
}

/// Frames larger than this are refused: a frame is a few dozen bytes.
pub const FEED_FRAME_BYTES_MAX: usize = 4096;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("wire messages always encode")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable internal message: {error}"))
}

/// A feed frame with its length prefix.
pub fn frame(event: FeedEvent) -> Vec<u8> {
    let body = encode(&FeedFrame::V1(event));
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Takes the complete frames off the front of `buffer`; `Err` on a frame too long or undecodable.
pub fn unframe(buffer: &mut bytes::BytesMut) -> Result<Vec<FeedEvent>, String> {
    let mut events = Vec::new();
    loop {
        let Some(length) = buffer
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
        else {
            return Ok(events);
        };
        if length > FEED_FRAME_BYTES_MAX {
            return Err(format!("a feed frame of {length} bytes"));
        }
        if buffer.len() < 4 + length {
            return Ok(events);
        }
        let frame = buffer.split_to(4 + length);
        let FeedFrame::V1(event) = decode(&frame[4..])?;
        events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_back_whole() {
        let events = vec![
            FeedEvent::Opened {
                epoch: 7,
                position: 3,
                resumed: true,
                held: 1,
                sold: 2,
            },
            FeedEvent::Seat {
                position: 4,
                seat: 99,
                kind: 1,
            },
            FeedEvent::KeepAlive,
            FeedEvent::Counts { held: 0, sold: 3 },
        ];
        let wire: Vec<u8> = events.iter().cloned().flat_map(frame).collect();
        for cut in 0..wire.len() {
            let mut buffer = bytes::BytesMut::new();
            buffer.extend_from_slice(&wire[..cut]);
            let mut got = unframe(&mut buffer).expect("valid");
            buffer.extend_from_slice(&wire[cut..]);
            got.extend(unframe(&mut buffer).expect("valid"));
            assert_eq!(got, events, "cut at {cut}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut buffer = bytes::BytesMut::new();
        buffer.extend_from_slice(&(FEED_FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(unframe(&mut buffer).is_err());
    }
}

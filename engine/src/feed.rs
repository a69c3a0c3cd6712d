//! A concert's live feed: every seat change and the concert's availability counts, for anyone watching the sale.
//!
//! Who publishes: the shard actor that made a change, once, while it applies the event (so the changes of one
//! shard are published in the order it made them, and every change gets the next position of the concert's feed).
//! Who reads: any number of subscribers, through one `tokio::sync::broadcast` channel; publishing costs the same
//! for one subscriber as for ten thousand, and no shard ever waits for a subscriber. A subscriber that falls more
//! than [`SUBSCRIBER_LAG_MAX`] items behind is dropped (its receiver reports the lag); it reconnects with the last
//! position it saw and gets the changes it missed from the replay buffer of the last [`REPLAY_MAX`] seat changes,
//! or, when they are gone, a full snapshot.
//!
//! Availability counts are not published per change: each shard stores its counts here and wakes the feed's
//! pump, a task that publishes the concert's counts at most once per [`AVAILABILITY_INTERVAL`] and only runs while
//! someone subscribes. In a cluster a node's feed carries its own shards only; the `cluster` crate merges the
//! feeds of every node that owns shards of the concert.
//!
//! Positions are numbered from 1 within an `epoch`, a random number drawn when the feed is created: a position a
//! client kept from before a restart names a different epoch and gets a snapshot, never a wrong replay.

use crate::shard_state::{Availability, SeatStatus};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};

/// Seat changes kept for subscribers that reconnect.
pub const REPLAY_MAX: usize = 8192;
/// Items a subscriber may fall behind the newest before it is dropped: its buffer.
pub const SUBSCRIBER_LAG_MAX: usize = 1024;
/// Availability is published at most this often per concert.
pub const AVAILABILITY_INTERVAL: Duration = Duration::from_millis(100);

/// What happened to a seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatChangeKind {
    /// Held by a hold or by an order being paid.
    Held,
    Sold,
    /// Given back: a cancelled hold, a declined or abandoned order.
    Released,
    /// Given back because its hold ran out.
    Expired,
}

impl SeatChangeKind {
    pub fn status(self) -> SeatStatus {
        match self {
            SeatChangeKind::Held => SeatStatus::Held,
            SeatChangeKind::Sold => SeatStatus::Sold,
            SeatChangeKind::Released | SeatChangeKind::Expired => SeatStatus::Free,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SeatChangeKind::Held => "held",
            SeatChangeKind::Sold => "sold",
            SeatChangeKind::Released => "released",
            SeatChangeKind::Expired => "expired",
        }
    }

    /// A number for the wire between nodes.
    pub fn code(self) -> u8 {
        match self {
            SeatChangeKind::Held => 0,
            SeatChangeKind::Sold => 1,
            SeatChangeKind::Released => 2,
            SeatChangeKind::Expired => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => SeatChangeKind::Held,
            1 => SeatChangeKind::Sold,
            2 => SeatChangeKind::Released,
            3 => SeatChangeKind::Expired,
            _ => return None,
        })
    }
}

/// One seat's change, at its position in the concert's feed.
#[derive(Debug)]
pub struct SeatChange {
    pub position: u64,
    /// The concert-wide seat index (`ConcertSpec::seat_label` names it).
    pub seat: u64,
    pub kind: SeatChangeKind,
    /// The event id, when it is not this feed's `EPOCH-POSITION`: a cluster's merged feed names every change by
    /// the positions of every node's feed.
    id: Option<Box<str>>,
    encoded: OnceLock<Bytes>,
}

impl SeatChange {
    /// A change another feed published, relayed under the event id `id`.
    pub fn relayed(position: u64, seat: u64, kind: SeatChangeKind, id: String) -> Self {
        Self {
            position,
            seat,
            kind,
            id: Some(id.into_boxed_str()),
            encoded: OnceLock::new(),
        }
    }

    /// The event id a relayed change carries.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// The concert's counts at one moment.
#[derive(Debug)]
pub struct AvailabilityUpdate {
    pub availability: Availability,
    encoded: OnceLock<Bytes>,
}

impl AvailabilityUpdate {
    pub fn new(availability: Availability) -> Self {
        Self {
            availability,
            encoded: OnceLock::new(),
        }
    }
}

/// What subscribers receive. Each item is encoded for the wire once, by the first subscriber that sends it
/// (`encoded`), and shared by all the others.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Seat(Arc<SeatChange>),
    Availability(Arc<AvailabilityUpdate>),
}

impl FeedItem {
    pub fn encoded(&self, encode: impl FnOnce(&FeedItem) -> Bytes) -> Bytes {
        let cell = match self {
            FeedItem::Seat(change) => &change.encoded,
            FeedItem::Availability(update) => &update.encoded,
        };
        cell.get_or_init(|| encode(self)).clone()
    }
}

/// A new subscriber's starting point.
pub struct Subscription {
    /// Live items published after `position`.
    pub receiver: broadcast::Receiver<FeedItem>,
    /// The last position published before the subscriber joined.
    pub position: u64,
    /// The seat changes after the position the subscriber asked to resume from, oldest first; `None` when it
    /// asked for none, or they are no longer in the replay buffer: it needs a full snapshot.
    pub missed: Option<Vec<Arc<SeatChange>>>,
    /// The concert's counts when the subscriber joined.
    pub availability: Availability,
}

pub struct ConcertFeed {
    epoch: u64,
    /// The concert's capacity, over all its shards.
    capacity: u64,
    /// Per shard: the concert-wide index of its first seat.
    seat_bases: Vec<u64>,
    /// Per shard of this node: its counts, written by its actor after every change; `None` for other nodes'.
    counts: Vec<Option<Mutex<Availability>>>,
    changed: Notify,
    sender: broadcast::Sender<FeedItem>,
    inner: Mutex<FeedInner>,
}

struct FeedInner {
    last_position: u64,
    replay: VecDeque<Arc<SeatChange>>,
    pump_running: bool,
}

impl ConcertFeed {
    /// `shards` is, per shard in order, the concert-wide index of its first seat and, for this node's shards,
    /// its counts.
    pub fn new(
        capacity: u64,
        shards: impl IntoIterator<Item = (u64, Option<Availability>)>,
    ) -> Self {
        let (seat_bases, counts) = shards
            .into_iter()
            .map(|(base, availability)| (base, availability.map(Mutex::new)))
            .unzip();
        Self {
            epoch: rand::random::<u64>() >> 1,
            capacity,
            seat_bases,
            counts,
            changed: Notify::new(),
            sender: broadcast::channel(SUBSCRIBER_LAG_MAX).0,
            inner: Mutex::new(FeedInner {
                last_position: 0,
                replay: VecDeque::with_capacity(REPLAY_MAX),
                pump_running: false,
            }),
        }
    }

    /// Names this feed's positions; a different epoch means positions from another run of the node.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// The concert's counts as this node's shards last published them: what they hold and sold, and the rest
    /// of the capacity as for sale. The concert's own counts when every shard is on this node.
    pub fn availability(&self) -> Availability {
        let mut local = Availability::default();
        for counts in self.counts.iter().flatten() {
            local.add(*counts.lock().expect("feed counts lock"));
        }
        Availability::of_concert(self.capacity, local.held, local.sold)
    }

    /// Publishes that `seats` (local to `shard`) changed; called by the shard actor that changed them.
    pub(crate) fn publish_seats(&self, shard: u32, seats: &[u32], kind: SeatChangeKind) {
        let base = self.seat_bases[shard as usize];
        let mut inner = self.inner.lock().expect("feed lock");
        for &seat in seats {
            inner.last_position += 1;
            let change = Arc::new(SeatChange {
                position: inner.last_position,
                seat: base + u64::from(seat),
                kind,
                id: None,
                encoded: OnceLock::new(),
            });
            if inner.replay.len() == REPLAY_MAX {
                inner.replay.pop_front();
            }
            inner.replay.push_back(change.clone());
            // No receiver is not an error: the change stays in the replay buffer.
            let _ = self.sender.send(FeedItem::Seat(change));
        }
    }

    /// Stores `shard`'s counts after a change and wakes the pump.
    pub(crate) fn set_counts(&self, shard: u32, availability: Availability) {
        *self.counts[shard as usize]
            .as_ref()
            .expect("a shard publishes on its own node's feed")
            .lock()
            .expect("feed counts lock") = availability;
        self.changed.notify_one();
    }

    /// Joins the feed, resuming after `resume_after` (a position of this feed's epoch) when given. Must be called
    /// inside a tokio runtime: the first subscriber starts the availability pump.
    pub fn subscribe(self: &Arc<Self>, resume_after: Option<u64>) -> Subscription {
        let mut inner = self.inner.lock().expect("feed lock");
        // Under the lock no change can be published, so `missed` and `receiver` meet without a gap or an overlap.
        let receiver = self.sender.subscribe();
        let missed = resume_after.and_then(|after| {
            if after > inner.last_position {
                return None;
            }
            let oldest = inner
                .replay
                .front()
                .map_or(inner.last_position + 1, |change| change.position);
            (after + 1 >= oldest).then(|| {
                inner
                    .replay
                    .iter()
                    .filter(|change| change.position > after)
                    .cloned()
                    .collect()
            })
        });
        if !inner.pump_running {
            inner.pump_running = true;
            tokio::spawn(pump(self.clone()));
        }
        Subscription {
            receiver,
            position: inner.last_position,
            missed,
            availability: self.availability(),
        }
    }
}

/// Publishes the concert's counts after changes, at most once per [`AVAILABILITY_INTERVAL`]; ends when a change
/// finds nobody subscribed (the next subscriber starts another).
async fn pump(feed: Arc<ConcertFeed>) {
    loop {
        feed.changed.notified().await;
        {
            let mut inner = feed.inner.lock().expect("feed lock");
            if feed.sender.receiver_count() == 0 {
                inner.pump_running = false;
                return;
            }
            let update = AvailabilityUpdate::new(feed.availability());
            let _ = feed.sender.send(FeedItem::Availability(Arc::new(update)));
        }
        tokio::time::sleep(AVAILABILITY_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests;

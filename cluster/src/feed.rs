//! The live feed of a concert across nodes.
//!
//! Each shard node publishes its own shards' seat changes in its `engine::feed::ConcertFeed`, numbered by its own
//! positions within its own epoch. [`NodeFeeds`] serves that feed to other processes as a stream of
//! `wire::FeedEvent`s; [`MergedFeeds`] is what serves subscribers: per concert, one [`MergedFeed`] reads the
//! stream of every node that owns shards of the concert (its own shards' in process), interleaves them, and
//! publishes every change once to all its subscribers.
//!
//! An event id names the position of every node's feed after the event, in node order: `E0-P0.E1-P1.E2-P2`
//! (epochs in hex, positions in decimal). The same change has the same id on every node, so a subscriber resumes
//! on any node: a merged feed that has the changes since those positions in its replay buffer sends them, else
//! the subscriber gets a snapshot. A merged feed that starts for a resuming subscriber asks each node to resume
//! from that subscriber's positions. Each seat's changes come from one node's stream, in the order its shard made
//! them, so every subscriber sees them in order.
//!
//! When a node's stream breaks, the merged feed reconnects and resumes it; if that node restarted (a new epoch)
//! or its replay no longer covers the gap, the merged feed starts over: its subscribers are disconnected and
//! reconnect to a snapshot. A merged feed whose nodes are not all reachable refuses new subscribers with
//! `NodeUnavailable` (their snapshot would miss seats). Availability is the concert's total: every node's held
//! and sold, and the rest of the capacity for sale, published at most every
//! [`AVAILABILITY_INTERVAL`](engine::feed::AVAILABILITY_INTERVAL).

use crate::peers::Peers;
use crate::wire::{self, FeedEvent, FeedOpen};
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use engine::EngineError;
use engine::concert::ConcertSpec;
use engine::feed::{
    AVAILABILITY_INTERVAL, AvailabilityUpdate, FeedItem, REPLAY_MAX, SUBSCRIBER_LAG_MAX,
    SeatChange, SeatChangeKind,
};
use engine::ids::ConcertId;
use engine::remote::NodeId;
use engine::router::ConcertHandle;
use engine::shard_state::{Availability, SeatStatus};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};

/// A node's stream sends a keep-alive this often when it has nothing else to send.
pub const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A stream that sends nothing for this long is given up and reconnected.
pub const STREAM_SILENCE_MAX: Duration = Duration::from_secs(15);
/// Pause before reconnecting a node's stream.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// How long a new subscriber waits for every node's stream to open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A merged feed without subscribers for this long stops.
pub const IDLE_STOP: Duration = Duration::from_secs(30);
/// Concerts with a merged feed on one node at once, at most; beyond that a subscriber is refused as overloaded.
pub const MERGED_FEEDS_MAX: usize = 10_000;

type EventStream = Pin<Box<dyn Stream<Item = FeedEvent> + Send>>;

/// Serves this node's own feed of a concert to other processes.
#[derive(Default)]
pub struct NodeFeeds;

impl NodeFeeds {
    /// This node's changes of `concert`: `Opened`, the changes missed since `resume` if the feed still has them,
    /// then live changes and counts; the stream ends when the reader falls [`SUBSCRIBER_LAG_MAX`] behind.
    pub fn events(concert: &ConcertHandle, resume: Option<(u64, u64)>) -> EventStream {
        let feed = concert.feed.clone();
        let after = resume
            .filter(|(epoch, _)| *epoch == feed.epoch())
            .map(|(_, position)| position);
        let subscription = feed.subscribe(after);
        let counts = subscription.availability;
        let (resumed, start) = match (&subscription.missed, after) {
            (Some(_), Some(after)) => (true, after),
            _ => (false, subscription.position),
        };
        let mut opening = vec![FeedEvent::Opened {
            epoch: feed.epoch(),
            position: start,
            resumed,
            held: counts.held,
            sold: counts.sold,
        }];
        for change in subscription.missed.iter().flatten() {
            opening.push(seat_event(change));
        }
        let receiver = subscription.receiver;
        let live = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let event = match tokio::time::timeout(STREAM_KEEP_ALIVE, receiver.recv()).await {
                Err(_) => FeedEvent::KeepAlive,
                Ok(Ok(FeedItem::Seat(change))) => seat_event(&change),
                Ok(Ok(FeedItem::Availability(update))) => FeedEvent::Counts {
                    held: update.availability.held,
                    sold: update.availability.sold,
                },
                // Fell behind, or the node is going away: the reader reconnects and resumes.
                Ok(Err(_)) => return None,
            };
            Some((event, receiver))
        });
        Box::pin(futures_util::stream::iter(opening).chain(live))
    }

    /// [`NodeFeeds::events`] framed for the wire.
    pub fn stream(&self, concert: Arc<ConcertHandle>, resume: Option<(u64, u64)>) -> Body {
        let frames = Self::events(&concert, resume)
            .map(|event| Ok::<_, std::convert::Infallible>(Bytes::from(wire::frame(event))));
        Body::from_stream(frames)
    }
}

fn seat_event(change: &SeatChange) -> FeedEvent {
    FeedEvent::Seat {
        position: change.position,
        seat: change.seat,
        kind: change.kind.code(),
    }
}

/// Every merged feed this process serves, one per concert with subscribers.
pub struct MergedFeeds {
    peers: Arc<Peers>,
    /// This process's node id, if it is a shard node: its own shards' feed is read in process.
    local: Option<NodeId>,
    feeds: Mutex<HashMap<ConcertId, Weak<MergedFeed>>>,
}

/// What a new subscriber starts from.
pub enum Opening {
    /// The changes since its `Last-Event-ID`, then the counts.
    Resumed {
        missed: Vec<Arc<SeatChange>>,
        availability: Availability,
    },
    /// Where the concert stands (seats for a seated concert), under event id `id`.
    Snapshot {
        id: String,
        availability: Availability,
        seats: Option<Vec<SeatStatus>>,
    },
}

pub struct MergedSubscription {
    pub receiver: broadcast::Receiver<FeedItem>,
    pub opening: Opening,
    /// Keeps the merged feed running while the subscriber reads.
    pub feed: Arc<MergedFeed>,
}

impl MergedFeeds {
    pub fn new(peers: Arc<Peers>, local: Option<NodeId>) -> Arc<Self> {
        Arc::new(Self {
            peers,
            local,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    /// Joins `concert`'s merged feed, resuming after `last_event_id` when the feed can.
    pub async fn subscribe(
        self: &Arc<Self>,
        concert: Arc<ConcertHandle>,
        last_event_id: Option<&str>,
    ) -> Result<MergedSubscription, EngineError> {
        let sources = source_nodes(&concert.placement);
        let resume = last_event_id
            .and_then(parse_event_id)
            .filter(|positions| positions.len() == sources.len());
        let feed = self.feed_for(&concert, &sources, resume.as_deref())?;
        feed.wait_open().await?;
        let (receiver, resumed, id, availability) = {
            let inner = feed.inner.lock().expect("merged feed lock");
            let receiver = inner.sender.subscribe();
            let resumed = resume
                .as_deref()
                .and_then(|resume| inner.missed_since(resume));
            (
                receiver,
                resumed,
                inner.event_id(),
                inner.availability(&feed.spec),
            )
        };
        let opening = match resumed {
            Some(missed) => Opening::Resumed {
                missed,
                availability,
            },
            None => {
                let seats = if concert.spec.is_seated() {
                    Some(concert.seat_statuses().await?)
                } else {
                    None
                };
                Opening::Snapshot {
                    id,
                    availability,
                    seats,
                }
            }
        };
        Ok(MergedSubscription {
            receiver,
            opening,
            feed,
        })
    }

    fn feed_for(
        self: &Arc<Self>,
        concert: &Arc<ConcertHandle>,
        sources: &[NodeId],
        resume: Option<&[(u64, u64)]>,
    ) -> Result<Arc<MergedFeed>, EngineError> {
        let mut feeds = self.feeds.lock().expect("merged feeds lock");
        if let Some(feed) = feeds.get(&concert.spec.id).and_then(Weak::upgrade)
            && !feed.is_stopped()
        {
            return Ok(feed);
        }
        feeds.retain(|_, feed| feed.strong_count() > 0);
        if feeds.len() >= MERGED_FEEDS_MAX {
            return Err(EngineError::Overloaded);
        }
        let feed = MergedFeed::start(self.clone(), concert.clone(), sources.to_vec(), resume);
        feeds.insert(concert.spec.id.clone(), Arc::downgrade(&feed));
        Ok(feed)
    }
}

/// The nodes that own shards of a concert, in node order: the components of its event ids.
fn source_nodes(placement: &[NodeId]) -> Vec<NodeId> {
    let mut nodes = placement.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// One concert's feed, merged from every node that owns shards of it.
pub struct MergedFeed {
    spec: Arc<ConcertSpec>,
    sources: Vec<NodeId>,
    inner: Mutex<Inner>,
    /// Bumped whenever a source opens (or fails to): how a new subscriber waits for them.
    opened: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    counts_changed: Notify,
}

struct Inner {
    /// Per source: its feed's epoch and last position, once its stream has opened.
    positions: Vec<Option<(u64, u64)>>,
    /// Per source: the position from which every change of it is in `replay`.
    complete_from: Vec<u64>,
    /// Per source: its shards' held and sold.
    counts: Vec<(u64, u64)>,
    /// Per source: why it is not open, if it is not.
    failure: Vec<Option<EngineError>>,
    /// The latest changes, each with its source and that source's position.
    replay: VecDeque<(usize, u64, Arc<SeatChange>)>,
    sender: broadcast::Sender<FeedItem>,
}

impl Inner {
    fn event_id(&self) -> String {
        let parts: Vec<String> = self
            .positions
            .iter()
            .map(|position| {
                let (epoch, position) = position.unwrap_or((0, 0));
                format!("{epoch:x}-{position}")
            })
            .collect();
        parts.join(".")
    }

    fn availability(&self, spec: &ConcertSpec) -> Availability {
        let (held, sold) = self
            .counts
            .iter()
            .fold((0, 0), |(held, sold), (h, s)| (held + h, sold + s));
        Availability::of_concert(spec.capacity(), held, sold)
    }

    /// The changes after `resume` (one position per source), if every one of them is still in the replay.
    fn missed_since(&self, resume: &[(u64, u64)]) -> Option<Vec<Arc<SeatChange>>> {
        for (source, (epoch, position)) in resume.iter().enumerate() {
            let (current_epoch, current) = self.positions[source]?;
            if *epoch != current_epoch
                || *position > current
                || *position < self.complete_from[source]
            {
                return None;
            }
        }
        Some(
            self.replay
                .iter()
                .filter(|(source, position, _)| *position > resume[*source].1)
                .map(|(_, _, change)| change.clone())
                .collect(),
        )
    }
}

impl MergedFeed {
    fn start(
        feeds: Arc<MergedFeeds>,
        concert: Arc<ConcertHandle>,
        sources: Vec<NodeId>,
        resume: Option<&[(u64, u64)]>,
    ) -> Arc<Self> {
        let count = sources.len();
        let feed = Arc::new(Self {
            spec: concert.spec.clone(),
            sources: sources.clone(),
            inner: Mutex::new(Inner {
                positions: vec![None; count],
                complete_from: vec![0; count],
                counts: vec![(0, 0); count],
                failure: vec![None; count],
                replay: VecDeque::new(),
                sender: broadcast::channel(SUBSCRIBER_LAG_MAX).0,
            }),
            opened: watch::channel(0).0,
            stop: watch::channel(false).0,
            counts_changed: Notify::new(),
        });
        for (index, node) in sources.into_iter().enumerate() {
            let start = resume.map(|resume| resume[index]);
            tokio::spawn(read_source(
                Arc::downgrade(&feed),
                feeds.clone(),
                concert.clone(),
                index,
                node,
                start,
            ));
        }
        tokio::spawn(publish_counts(Arc::downgrade(&feed)));
        tokio::spawn(stop_when_idle(Arc::downgrade(&feed)));
        feed
    }

    fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits until every source has opened; `NodeUnavailable` for one that could not.
    async fn wait_open(&self) -> Result<(), EngineError> {
        let mut opened = self.opened.subscribe();
        let wait = async {
            loop {
                {
                    let inner = self.inner.lock().expect("merged feed lock");
                    if inner.positions.iter().all(Option::is_some) {
                        return Ok(());
                    }
                    if let Some(failure) = inner.failure.iter().flatten().next() {
                        return Err(failure.clone());
                    }
                }
                if opened.changed().await.is_err() {
                    return Err(EngineError::Unavailable);
                }
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, wait).await {
            Ok(result) => result,
            Err(_) => {
                let inner = self.inner.lock().expect("merged feed lock");
                let waiting = inner
                    .positions
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or(0);
                Err(EngineError::NodeUnavailable {
                    node: self.sources[waiting],
                })
            }
        }
    }

    /// Applies one event of source `index`; `false` when the source must reconnect from scratch.
    fn apply(&self, index: usize, event: FeedEvent) -> bool {
        let mut inner = self.inner.lock().expect("merged feed lock");
        match event {
            FeedEvent::Opened {
                epoch,
                position,
                resumed,
                held,
                sold,
            } => {
                let continues = matches!(inner.positions[index], Some((current, at)) if current == epoch && at == position && resumed);
                if inner.positions[index].is_some() && !continues {
                    // That node restarted, or lost what we missed: every subscriber starts over from a snapshot.
                    tracing::info!(concert_id = %self.spec.id, node = self.sources[index], "a node's feed restarted; subscribers start over");
                    inner.sender = broadcast::channel(SUBSCRIBER_LAG_MAX).0;
                    inner.replay.clear();
                    let positions = inner.positions.clone();
                    for (source, complete_from) in inner.complete_from.iter_mut().enumerate() {
                        *complete_from = positions[source].map_or(0, |(_, at)| at);
                    }
                }
                if !continues {
                    inner.positions[index] = Some((epoch, position));
                    inner.complete_from[index] = position;
                }
                inner.counts[index] = (held, sold);
                inner.failure[index] = None;
                drop(inner);
                self.opened.send_modify(|count| *count += 1);
                self.counts_changed.notify_one();
            }
            FeedEvent::Seat {
                position,
                seat,
                kind,
            } => {
                let Some((epoch, last)) = inner.positions[index] else {
                    return false;
                };
                let Some(kind) = SeatChangeKind::from_code(kind) else {
                    return false;
                };
                if position != last + 1 {
                    tracing::warn!(concert_id = %self.spec.id, node = self.sources[index], position, last, "a node's feed skipped positions");
                    return false;
                }
                inner.positions[index] = Some((epoch, position));
                let change = Arc::new(SeatChange::relayed(position, seat, kind, inner.event_id()));
                if inner.replay.len() == REPLAY_MAX
                    && let Some((source, evicted, _)) = inner.replay.pop_front()
                {
                    inner.complete_from[source] = evicted;
                }
                inner.replay.push_back((index, position, change.clone()));
                let _ = inner.sender.send(FeedItem::Seat(change));
            }
            FeedEvent::Counts { held, sold } => {
                inner.counts[index] = (held, sold);
                drop(inner);
                self.counts_changed.notify_one();
            }
            FeedEvent::KeepAlive => {}
        }
        true
    }

    fn fail(&self, index: usize, error: EngineError) {
        let mut inner = self.inner.lock().expect("merged feed lock");
        if inner.positions[index].is_none() {
            inner.failure[index] = Some(error);
            drop(inner);
            self.opened.send_modify(|count| *count += 1);
        }
    }
}

/// Reads one node's stream into the merged feed, reconnecting (and resuming) until the feed stops.
async fn read_source(
    feed: Weak<MergedFeed>,
    feeds: Arc<MergedFeeds>,
    concert: Arc<ConcertHandle>,
    index: usize,
    node: NodeId,
    mut resume: Option<(u64, u64)>,
) {
    loop {
        let Some(merged) = feed.upgrade() else { return };
        if merged.is_stopped() {
            return;
        }
        let mut stop = merged.stop.subscribe();
        drop(merged);
        let stream = if feeds.local == Some(node) {
            Ok(NodeFeeds::events(&concert, resume))
        } else {
            open_remote(&feeds.peers, node, &concert.spec.id, resume).await
        };
        match stream {
            Ok(mut events) => loop {
                let next = tokio::select! {
                    _ = stop.changed() => return,
                    next = tokio::time::timeout(STREAM_SILENCE_MAX, events.next()) => next,
                };
                let Ok(Some(event)) = next else { break };
                let Some(merged) = feed.upgrade() else { return };
                if !merged.apply(index, event) {
                    // Start this source over: the merged feed resets when it opens without resuming.
                    resume = None;
                    break;
                }
                resume = merged.inner.lock().expect("merged feed lock").positions[index];
            },
            Err(error) => {
                if let Some(merged) = feed.upgrade() {
                    merged.fail(index, error);
                }
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn open_remote(
    peers: &Peers,
    node: NodeId,
    concert: &ConcertId,
    resume: Option<(u64, u64)>,
) -> Result<EventStream, EngineError> {
    let body = peers
        .open_feed(
            node,
            &FeedOpen::V1 {
                concert: concert.clone(),
                resume,
            },
        )
        .await?;
    let frames = futures_util::stream::unfold(
        (body, BytesMut::new(), VecDeque::new()),
        |(mut body, mut buffer, mut ready): (
            hyper::body::Incoming,
            BytesMut,
            VecDeque<FeedEvent>,
        )| async move {
            loop {
                if let Some(event) = ready.pop_front() {
                    return Some((event, (body, buffer, ready)));
                }
                let frame = body.frame().await?.ok()?;
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                    ready.extend(wire::unframe(&mut buffer).ok()?);
                }
            }
        },
    );
    Ok(Box::pin(frames))
}

/// Publishes the concert's counts after they change, at most once per interval.
async fn publish_counts(feed: Weak<MergedFeed>) {
    loop {
        let Some(merged) = feed.upgrade() else { return };
        let mut stop = merged.stop.subscribe();
        tokio::select! {
            _ = merged.counts_changed.notified() => {}
            _ = stop.changed() => return,
        }
        {
            let inner = merged.inner.lock().expect("merged feed lock");
            let update = AvailabilityUpdate::new(inner.availability(&merged.spec));
            let _ = inner.sender.send(FeedItem::Availability(Arc::new(update)));
        }
        drop(merged);
        tokio::time::sleep(AVAILABILITY_INTERVAL).await;
    }
}

/// Stops the merged feed once nobody has subscribed for [`IDLE_STOP`].
async fn stop_when_idle(feed: Weak<MergedFeed>) {
    let mut idle_since = None;
    loop {
        tokio::time::sleep(STREAM_KEEP_ALIVE).await;
        let Some(merged) = feed.upgrade() else { return };
        let subscribers = merged
            .inner
            .lock()
            .expect("merged feed lock")
            .sender
            .receiver_count();
        if subscribers > 0 {
            idle_since = None;
            continue;
        }
        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= IDLE_STOP {
            merged.stop.send_replace(true);
            return;
        }
    }
}

/// `E0-P0.E1-P1...` to its positions; `None` for anything else.
pub fn parse_event_id(value: &str) -> Option<Vec<(u64, u64)>> {
    value
        .trim()
        .split('.')
        .map(|part| {
            let (epoch, position) = part.split_once('-')?;
            Some((u64::from_str_radix(epoch, 16).ok()?, position.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_back() {
        assert_eq!(parse_event_id("ff-12"), Some(vec![(255, 12)]));
        assert_eq!(
            parse_event_id(" a-1.b-0.c-99 "),
            Some(vec![(10, 1), (11, 0), (12, 99)])
        );
        for bad in ["", "ff", "ff-", "x-1", "1-1.", "1-1..2-2", "1-a"] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn sources_are_the_nodes_that_own_shards_in_order() {
        assert_eq!(source_nodes(&[2, 0, 2, 1, 0]), [0, 1, 2]);
        assert_eq!(source_nodes(&[1, 1]), [1]);
    }
}

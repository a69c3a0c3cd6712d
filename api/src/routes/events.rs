//! `GET /concerts/{id}/events`: the concert's feed as server-sent events.
//!
//! A subscriber first gets where the concert stands, then every change as it happens:
//!
//! - no `Last-Event-ID`, or one this node can no longer resume from (another run of the node, or older than the
//!   feed's replay buffer): `event: snapshot` with `{"remaining","held","sold","seats"?}` (the seats of a seated
//!   concert, `[{"id","status"}]`), whose id is the feed position it was taken at;
//! - a `Last-Event-ID` it can resume from: the `seat` events missed since, then `event: availability`;
//! - then, live: `event: seat` `{"id","status","change"}` with an id, for every seat change in order, and
//!   `event: availability` `{"remaining","held","sold"}` without one, at most every 100 ms.
//!
//! Event ids are `EPOCH-POSITION` (hex epoch, decimal position). A snapshot is read from the shards after the
//! subscriber joined the feed, so changes made in between arrive as events too; every `seat` event carries the
//! seat's absolute status, so applying one again is harmless. A subscriber that falls
//! [`SUBSCRIBER_LAG_MAX`](engine::feed::SUBSCRIBER_LAG_MAX) items behind is disconnected; `retry:` tells the
//! browser to reconnect after [`RECONNECT_AFTER`], resuming from its `Last-Event-ID`. The stream ends when the node
//! drains. Every item is encoded once for all subscribers (`FeedItem::encoded`).
//!
//! In a cluster the stream is the concert's merged feed (`cluster::feed`): every node's changes, with event ids
//! `E0-P0.E1-P1...` that mean the same on every node, so `Last-Event-ID` resumes on any node; availability is the
//! concert's total. A subscriber is refused `503 node_unavailable` while a node that owns shards of the concert
//! does not answer.

use crate::connections::ConnectionAbort;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cluster::feed::Opening;
use engine::concert::ConcertSpec;
use engine::feed::{FeedItem, SeatChange};
use engine::ids::ConcertId;
use engine::router::ConcertHandle;
use engine::shard_state::{Availability, SeatStatus};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use utoipa::ToSchema;

/// A comment line this often keeps proxies and the browser from deciding the stream is dead.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);
/// What `retry:` tells a browser to wait before it reconnects.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Bytes of events already waiting that one write carries at most: events that arrived together leave together,
/// in one write and (TCP_NODELAY being on) as few segments as their size needs, rather than one segment each.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// `data` of an `availability` event.
#[derive(Serialize, ToSchema)]
pub struct AvailabilityData {
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
}

/// `data` of a `seat` event.
#[derive(Serialize, ToSchema)]
pub struct SeatData<'a> {
    /// The seat label, `SECTION-ROW-SEAT`.
    pub id: &'a str,
    /// `free`, `held` or `sold`: the seat's status after the change.
    pub status: &'static str,
    /// `held`, `sold`, `released` or `expired`.
    pub change: &'static str,
}

/// `data` of a `snapshot` event.
#[derive(Serialize, ToSchema)]
pub struct SnapshotData {
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    /// Every seat of a seated concert; absent for general admission.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<Vec<crate::dto::SeatResponse>>,
}

/// Live seat changes and availability of a concert, as server-sent events.
#[utoipa::path(get, path = "/concerts/{id}/events", tag = "concerts",
    params(("id" = String, Path),
           ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received, to resume")),
    responses((status = 200, content_type = "text/event-stream",
               description = "events `snapshot`, `seat` and `availability`; see docs/http-api.md"),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    abort: Option<Extension<ConnectionAbort>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let abort = abort.map(|Extension(abort)| abort);
    let concert = state
        .desk
        .router()
        .concert(&ConcertId::from(id))
        .ok_or_else(|| ApiError::not_found("concert"))?;
    if let Some(cluster) = &state.cluster {
        return merged_stream(&state, cluster, concert, &headers, abort).await;
    }
    let feed = concert.feed.clone();
    let resume_after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_event_id(value, feed.epoch()));
    let subscription = feed.subscribe(resume_after);
    let mut opening = format!("retry: {}\n\n", RECONNECT_AFTER.as_millis()).into_bytes();
    match &subscription.missed {
        Some(missed) => {
            for change in missed {
                opening.extend_from_slice(
                    &FeedItem::Seat(change.clone())
                        .encoded(|item| encode(item, &concert.spec, feed.epoch())),
                );
            }
            opening.extend_from_slice(&availability_event(subscription.availability));
        }
        None => {
            let seats = if concert.spec.is_seated() {
                Some(seat_list(&concert.spec, &concert.seat_statuses().await?))
            } else {
                None
            };
            let snapshot = SnapshotData {
                remaining: subscription.availability.remaining,
                held: subscription.availability.held,
                sold: subscription.availability.sold,
                seats,
            };
            opening.extend_from_slice(
                format!(
                    "id: {}\nevent: snapshot\ndata: {}\n\n",
                    event_id(feed.epoch(), subscription.position),
                    serde_json::to_string(&snapshot).expect("a snapshot serializes")
                )
                .as_bytes(),
            );
        }
    }
    let subscriber = Subscriber {
        receiver: subscription.receiver,
        lagged: false,
        spec: concert.spec.clone(),
        epoch: feed.epoch(),
        shutdown: state.shutdown.subscribe(),
        keep_alive: tokio::time::interval_at(
            tokio::time::Instant::now() + KEEP_ALIVE_EVERY,
            KEEP_ALIVE_EVERY,
        ),
        _merged: None,
        _gauge: SubscriberGauge::new(),
    };
    Ok(event_stream(opening, subscriber, abort))
}

/// The concert's merged feed, in a cluster.
async fn merged_stream(
    state: &AppState,
    cluster: &crate::cluster::ClusterState,
    concert: Arc<ConcertHandle>,
    headers: &HeaderMap,
    abort: Option<ConnectionAbort>,
) -> ApiResult<Response> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let subscription = cluster
        .feeds
        .subscribe(concert.clone(), last_event_id)
        .await?;
    let mut opening = format!("retry: {}\n\n", RECONNECT_AFTER.as_millis()).into_bytes();
    match &subscription.opening {
        Opening::Resumed {
            missed,
            availability,
        } => {
            for change in missed {
                opening.extend_from_slice(
                    &FeedItem::Seat(change.clone()).encoded(|item| encode(item, &concert.spec, 0)),
                );
            }
            opening.extend_from_slice(&availability_event(*availability));
        }
        Opening::Snapshot {
            id,
            availability,
            seats,
        } => {
            let snapshot = SnapshotData {
                remaining: availability.remaining,
                held: availability.held,
                sold: availability.sold,
                seats: seats.as_ref().map(|seats| seat_list(&concert.spec, seats)),
            };
            opening.extend_from_slice(
                format!(
                    "id: {id}\nevent: snapshot\ndata: {}\n\n",
                    serde_json::to_string(&snapshot).expect("a snapshot serializes")
                )
                .as_bytes(),
            );
        }
    }
    let subscriber = Subscriber {
        receiver: subscription.receiver,
        lagged: false,
        spec: concert.spec.clone(),
        epoch: 0,
        shutdown: state.shutdown.subscribe(),
        keep_alive: tokio::time::interval_at(
            tokio::time::Instant::now() + KEEP_ALIVE_EVERY,
            KEEP_ALIVE_EVERY,
        ),
        _merged: Some(subscription.feed),
        _gauge: SubscriberGauge::new(),
    };
    Ok(event_stream(opening, subscriber, abort))
}

/// The response: `opening`, then what `subscriber` reads, as server-sent events. With the connection's `abort`
/// handle, a watchdog closes the connection once the subscriber is more than
/// [`SUBSCRIBER_LAG_MAX`](engine::feed::SUBSCRIBER_LAG_MAX) items behind, whether or not its socket takes bytes
/// (a stream whose client stopped reading is not polled at all, so it cannot notice by itself).
fn event_stream(
    opening: Vec<u8>,
    subscriber: Subscriber,
    abort: Option<ConnectionAbort>,
) -> Response {
    let subscriber = Arc::new(tokio::sync::Mutex::new(subscriber));
    if let Some(abort) = abort {
        tokio::spawn(watch_lag(Arc::downgrade(&subscriber), abort));
    }
    let opening =
        futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(opening)) });
    let live = futures_util::stream::unfold(subscriber, |subscriber| async move {
        let chunk = subscriber.lock().await.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), subscriber))
    });
    let mut response =
        Body::from_stream(futures_util::StreamExt::chain(opening, live)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells a buffering reverse proxy (nginx) to pass events through as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// How often the watchdog looks at how far behind a subscriber is.
pub const LAG_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Closes `subscriber`'s connection once it falls more than `SUBSCRIBER_LAG_MAX` items behind; ends with the
/// stream. A subscriber being read (the stream is waiting for items, or gathering a chunk) is locked and keeping
/// up; one that is not locked is not being read, and its receiver says how much waits for it.
async fn watch_lag(
    subscriber: std::sync::Weak<tokio::sync::Mutex<Subscriber>>,
    abort: ConnectionAbort,
) {
    let mut tick = tokio::time::interval(LAG_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(subscriber) = subscriber.upgrade() else {
            return;
        };
        let Ok(subscriber) = subscriber.try_lock() else {
            continue;
        };
        let waiting = subscriber.receiver.len();
        if waiting > engine::feed::SUBSCRIBER_LAG_MAX {
            metrics::counter!("boxoffice_event_subscribers_dropped_total").increment(1);
            tracing::debug!(concert_id = %subscriber.spec.id, waiting, "event subscriber stopped reading; disconnecting");
            abort.abort();
            return;
        }
    }
}

struct Subscriber {
    receiver: broadcast::Receiver<FeedItem>,
    /// Set when the subscriber fell behind while a chunk was being gathered: the chunk goes out, then the stream
    /// ends.
    lagged: bool,
    spec: Arc<ConcertSpec>,
    /// The node's feed epoch (a merged feed's changes carry their own ids).
    epoch: u64,
    shutdown: watch::Receiver<bool>,
    keep_alive: tokio::time::Interval,
    /// Keeps a cluster's merged feed running while this subscriber reads it.
    _merged: Option<Arc<cluster::feed::MergedFeed>>,
    _gauge: SubscriberGauge,
}

impl Subscriber {
    /// The next bytes to send, or `None` when the stream ends: the node drains, or the subscriber fell behind.
    /// Waits for one item, then takes every item already waiting behind it, up to [`CHUNK_BYTES_MAX`].
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if *self.shutdown.borrow_and_update() || self.lagged {
            return None;
        }
        let first = tokio::select! {
            // A closed channel means the node is going away as well.
            _ = self.shutdown.changed() => return None,
            item = self.receiver.recv() => match item {
                Ok(item) => self.encode(&item),
                Err(RecvError::Lagged(missed)) => {
                    self.fell_behind(missed);
                    return None;
                }
                Err(RecvError::Closed) => return None,
            },
            _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
        };
        let mut chunk: Option<Vec<u8>> = None;
        while chunk.as_ref().map_or(first.len(), Vec::len) < CHUNK_BYTES_MAX {
            let next = match self.receiver.try_recv() {
                Ok(item) => self.encode(&item),
                Err(TryRecvError::Lagged(missed)) => {
                    self.fell_behind(missed);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            };
            chunk
                .get_or_insert_with(|| first.to_vec())
                .extend_from_slice(&next);
        }
        Some(chunk.map_or(first, Bytes::from))
    }

    fn encode(&self, item: &FeedItem) -> Bytes {
        item.encoded(|item| encode(item, &self.spec, self.epoch))
    }

    fn fell_behind(&mut self, missed: u64) {
        metrics::counter!("boxoffice_event_subscribers_dropped_total").increment(1);
        tracing::debug!(concert_id = %self.spec.id, missed, "event subscriber fell behind; disconnecting");
        self.lagged = true;
    }
}

/// Counts open streams in `boxoffice_event_subscribers`.
struct SubscriberGauge;

impl SubscriberGauge {
    fn new() -> Self {
        metrics::gauge!("boxoffice_event_subscribers").increment(1.0);
        Self
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!("boxoffice_event_subscribers").decrement(1.0);
    }
}

fn event_id(epoch: u64, position: u64) -> String {
    format!("{epoch:x}-{position}")
}

/// The position in an event id of this epoch; `None` for anything else.
fn parse_event_id(value: &str, epoch: u64) -> Option<u64> {
    let (id_epoch, position) = value.trim().split_once('-')?;
    (u64::from_str_radix(id_epoch, 16).ok()? == epoch)
        .then(|| position.parse().ok())
        .flatten()
}

fn status_name(status: SeatStatus) -> &'static str {
    match status {
        SeatStatus::Free => "free",
        SeatStatus::Held => "held",
        SeatStatus::Sold => "sold",
    }
}

fn encode(item: &FeedItem, spec: &ConcertSpec, epoch: u64) -> Bytes {
    match item {
        FeedItem::Seat(change) => seat_event(change, spec, epoch),
        FeedItem::Availability(update) => availability_event(update.availability),
    }
}

fn seat_event(change: &SeatChange, spec: &ConcertSpec, epoch: u64) -> Bytes {
    let label = spec.seat_label(change.seat).unwrap_or_default();
    let data = SeatData {
        id: &label,
        status: status_name(change.kind.status()),
        change: change.kind.as_str(),
    };
    let id = match change.id() {
        Some(id) => id.to_owned(),
        None => event_id(epoch, change.position),
    };
    Bytes::from(format!(
        "id: {id}\nevent: seat\ndata: {}\n\n",
        serde_json::to_string(&data).expect("a seat event serializes")
    ))
}

fn availability_event(availability: Availability) -> Bytes {
    let data = AvailabilityData {
        remaining: availability.remaining,
        held: availability.held,
        sold: availability.sold,
    };
    Bytes::from(format!(
        "event: availability\ndata: {}\n\n",
        serde_json::to_string(&data).expect("availability serializes")
    ))
}

pub fn seat_list(spec: &ConcertSpec, statuses: &[SeatStatus]) -> Vec<crate::dto::SeatResponse> {
    statuses
        .iter()
        .enumerate()
        .map(|(index, status)| crate::dto::SeatResponse {
            id: spec.seat_label(index as u64).unwrap_or_default(),
            status: status_name(*status).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_of_this_epoch_resume() {
        assert_eq!(parse_event_id("ff-12", 255), Some(12));
        assert_eq!(parse_event_id(" ff-0 ", 255), Some(0));
        assert_eq!(parse_event_id("fe-12", 255), None);
        assert_eq!(parse_event_id("ff-", 255), None);
        assert_eq!(parse_event_id("ff-x", 255), None);
        assert_eq!(parse_event_id("12", 255), None);
        assert_eq!(parse_event_id("", 255), None);
        assert_eq!(event_id(255, 7), "ff-7");
    }
}

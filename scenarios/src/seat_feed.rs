//! A client of a seated concert's live feed (`GET /concerts/{id}/events`), as the seat-picking page is one: it
//! takes the opening snapshot, applies every `seat` event in order, checks that positions have no gaps, keeps
//! every change with the moment it arrived, and resumes with `Last-Event-ID` when the stream ends under it. One
//! subscriber also writes what it sees to the [`Board`] the buyers pick their seats from.

use crate::client::{Failure, Target};
use crate::flash::{Layout, ms_since};
use crate::sse;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Times a subscriber reconnects (with `Last-Event-ID`) before it gives up.
const RECONNECTS_MAX: u32 = 100;

/// Probes for a free seat at random before scanning the map for one.
const PICK_PROBES: usize = 32;

/// A seat's status, as the seat map keeps it.
pub const FREE: u8 = 0;
pub const HELD: u8 = 1;
pub const SOLD: u8 = 2;

/// What the buyers see: the first subscriber's seat map, written by it and read by every buyer.
pub struct Board {
    layout: Layout,
    statuses: Vec<AtomicU8>,
}

impl Board {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            statuses: (0..layout.seats()).map(|_| AtomicU8::new(FREE)).collect(),
        }
    }

    pub fn set(&self, seat: u32, status: u8) {
        self.statuses[seat as usize].store(status, Ordering::Relaxed);
    }

    fn is_free(&self, seat: u32) -> bool {
        self.statuses[seat as usize].load(Ordering::Relaxed) == FREE
    }

    /// Up to `group` free seats side by side in one row, around a free seat drawn at random (`draw(n)` gives a
    /// number below `n`); `None` when the map shows nothing free.
    pub fn pick(&self, group: u32, mut draw: impl FnMut(u32) -> u32) -> Option<Vec<u32>> {
        let seats = self.layout.seats();
        let first = (0..PICK_PROBES)
            .map(|_| draw(seats))
            .find(|&seat| self.is_free(seat))
            .or_else(|| {
                let start = draw(seats);
                (0..seats)
                    .map(|offset| (start + offset) % seats)
                    .find(|&seat| self.is_free(seat))
            })?;
        let row = first / self.layout.seats_per_row;
        let in_row = |seat: u32| seat / self.layout.seats_per_row == row;
        let mut picked = vec![first];
        let mut next = first + 1;
        while (picked.len() as u32) < group && next < seats && in_row(next) && self.is_free(next) {
            picked.push(next);
            next += 1;
        }
        let mut before = first;
        while (picked.len() as u32) < group
            && before > 0
            && in_row(before - 1)
            && self.is_free(before - 1)
        {
            before -= 1;
            picked.insert(0, before);
        }
        Some(picked)
    }
}

/// A seat's change, as the feed names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Held,
    Sold,
    Released,
    Expired,
}

impl Change {
    pub fn parse(name: &str) -> Option<Change> {
        Some(match name {
            "held" => Change::Held,
            "sold" => Change::Sold,
            "released" => Change::Released,
            "expired" => Change::Expired,
            _ => return None,
        })
    }

    pub fn status(self) -> u8 {
        match self {
            Change::Held => HELD,
            Change::Sold => SOLD,
            Change::Released | Change::Expired => FREE,
        }
    }
}

fn status_code(name: &str) -> Option<u8> {
    Some(match name {
        "free" => FREE,
        "held" => HELD,
        "sold" => SOLD,
        _ => return None,
    })
}

#[derive(Deserialize)]
pub struct SeatEntry {
    pub id: String,
    pub status: String,
}

#[derive(Deserialize)]
pub struct SeatList {
    pub seats: Vec<SeatEntry>,
}

#[derive(Deserialize)]
struct SeatEvent {
    id: String,
    change: String,
}

#[derive(Deserialize)]
struct AvailabilityEvent {
    remaining: u64,
    held: u64,
    sold: u64,
}

/// `seats` as a status per seat index; every seat of the concert is listed once.
pub fn seat_map(seats: &[SeatEntry], labels: &HashMap<String, u32>) -> Result<Vec<u8>, String> {
    if seats.len() != labels.len() {
        return Err(format!(
            "the concert lists {} seats, not {}",
            seats.len(),
            labels.len()
        ));
    }
    let mut map = vec![None; seats.len()];
    for seat in seats {
        let (Some(&index), Some(status)) = (labels.get(&seat.id), status_code(&seat.status)) else {
            return Err(format!("unexpected seat {} {}", seat.id, seat.status));
        };
        if map[index as usize].replace(status).is_some() {
            return Err(format!("seat {} is listed twice", seat.id));
        }
    }
    // As many entries as seats, none twice: every seat is listed.
    Ok(map
        .into_iter()
        .map(|status| status.unwrap_or(FREE))
        .collect())
}

/// One subscriber.
pub struct Watcher {
    pub index: usize,
    pub target: Target,
    pub concert_id: String,
    pub labels: Arc<HashMap<String, u32>>,
    /// The first subscriber keeps the buyers' board up to date.
    pub board: Option<Arc<Board>>,
    pub origin: Instant,
    /// Changes received so far, for the run to wait on.
    pub seen: Arc<AtomicU64>,
}

/// What a subscriber saw.
#[derive(Default)]
pub struct Watched {
    /// (seat, change, ms since the origin) of every change after its first snapshot, each position once.
    pub changes: Vec<(u32, Change, f64)>,
    pub view: Vec<u8>,
    /// Snapshots received: 1 unless a resumption could not be served from the replay buffer.
    pub snapshots: u32,
    pub reconnects: u32,
    pub last_position: u64,
    /// The first subscriber's availability events.
    pub timeline: Vec<(f64, u64, u64, u64)>,
    pub problems: Vec<String>,
}

impl Watcher {
    /// Reads the feed until told to stop, resuming with `Last-Event-ID` when the stream ends under it. Adds a
    /// permit to `ready` once it has its first snapshot.
    pub async fn watch(self, ready: Arc<Semaphore>, mut stop: watch::Receiver<bool>) -> Watched {
        let mut watched = Watched::default();
        let mut last_id: Option<String> = None;
        let path = format!("/concerts/{}/events", self.concert_id);
        loop {
            if *stop.borrow() {
                return watched;
            }
            let opened = async {
                let mut connection = self.target.connect(self.index).await?;
                let headers: Vec<(&str, &str)> = last_id
                    .as_deref()
                    .map(|id| ("last-event-id", id))
                    .into_iter()
                    .collect();
                let request = connection.request(Method::GET, &path, None, &headers, None);
                let (status, body) = connection.open(request).await?;
                Ok::<_, Failure>((connection, status, body))
            };
            let (_connection, status, mut body) = tokio::select! {
                opened = opened => match opened {
                    Ok(opened) => opened,
                    Err(failure) => {
                        if !self.reconnect(&mut watched, &failure.to_string()).await {
                            return watched;
                        }
                        continue;
                    }
                },
                _ = stop.changed() => return watched,
            };
            if status != StatusCode::OK {
                watched.problems.push(format!("the feed answered {status}"));
                return watched;
            }
            let mut parser = sse::Parser::default();
            loop {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    _ = stop.changed() => return watched,
                };
                let Some(Ok(frame)) = frame else { break };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let events = match parser.feed(&data) {
                    Ok(events) => events,
                    Err(error) => {
                        watched.problems.push(error);
                        return watched;
                    }
                };
                for event in events {
                    if let Some(id) = &event.id {
                        last_id = Some(id.clone());
                    }
                    if let Err(problem) = self.apply(&mut watched, &event, &ready) {
                        watched.problems.push(problem);
                        return watched;
                    }
                }
            }
            if !self.reconnect(&mut watched, "the stream ended").await {
                return watched;
            }
        }
    }

    /// Counts a reconnection; false when there have been too many.
    async fn reconnect(&self, watched: &mut Watched, why: &str) -> bool {
        watched.reconnects += 1;
        if watched.reconnects > RECONNECTS_MAX {
            watched.problems.push(format!(
                "gave up after {RECONNECTS_MAX} reconnections: {why}"
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        true
    }

    fn apply(
        &self,
        watched: &mut Watched,
        event: &sse::Event,
        ready: &Semaphore,
    ) -> Result<(), String> {
        let position = || {
            event
                .id
                .as_deref()
                .and_then(|id| id.rsplit_once('-'))
                .and_then(|(_, position)| position.parse::<u64>().ok())
                .ok_or_else(|| format!("a {} event without a usable id", event.kind))
        };
        match event.kind.as_str() {
            "snapshot" => {
                let list: SeatList = serde_json::from_str(&event.data)
                    .map_err(|error| format!("a snapshot that is not JSON: {error}"))?;
                watched.view = seat_map(&list.seats, &self.labels)?;
                watched.last_position = position()?;
                watched.snapshots += 1;
                if let Some(board) = &self.board {
                    for (seat, status) in watched.view.iter().enumerate() {
                        board.set(seat as u32, *status);
                    }
                }
                if watched.snapshots == 1 {
                    ready.add_permits(1);
                }
            }
            "seat" => {
                let position = position()?;
                if watched.snapshots == 0 {
                    return Err("a seat event before the snapshot".into());
                }
                if position <= watched.last_position {
                    return Ok(());
                }
                if position != watched.last_position + 1 {
                    watched.problems.push(format!(
                        "positions {} to {} never arrived",
                        watched.last_position + 1,
                        position - 1
                    ));
                }
                watched.last_position = position;
                let seat: SeatEvent = serde_json::from_str(&event.data)
                    .map_err(|error| format!("a seat event that is not JSON: {error}"))?;
                let (Some(&index), Some(change)) =
                    (self.labels.get(&seat.id), Change::parse(&seat.change))
                else {
                    return Err(format!("an unexpected seat event: {}", event.data));
                };
                watched.view[index as usize] = change.status();
                if let Some(board) = &self.board {
                    board.set(index, change.status());
                }
                watched.changes.push((index, change, ms_since(self.origin)));
                self.seen.fetch_add(1, Ordering::Relaxed);
            }
            "availability" if self.board.is_some() => {
                let counts: AvailabilityEvent = serde_json::from_str(&event.data)
                    .map_err(|error| format!("an availability event that is not JSON: {error}"))?;
                watched.timeline.push((
                    ms_since(self.origin),
                    counts.remaining,
                    counts.held,
                    counts.sold,
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, status: &str) -> SeatEntry {
        SeatEntry {
            id: id.into(),
            status: status.into(),
        }
    }

    #[test]
    fn a_seat_list_must_name_every_seat_once() {
        let labels: HashMap<String, u32> =
            [("A-1-1".to_owned(), 0), ("A-1-2".to_owned(), 1)].into();
        let map = seat_map(&[entry("A-1-2", "sold"), entry("A-1-1", "held")], &labels).unwrap();
        assert_eq!(map, vec![HELD, SOLD]);
        assert!(seat_map(&[entry("A-1-1", "free"), entry("A-1-1", "free")], &labels).is_err());
        assert!(seat_map(&[entry("A-1-1", "free")], &labels).is_err());
        assert!(seat_map(&[entry("A-1-1", "free"), entry("Z-9-9", "free")], &labels).is_err());
        assert!(seat_map(&[entry("A-1-1", "free"), entry("A-1-2", "gone")], &labels).is_err());
    }

    #[test]
    fn picks_are_free_seats_side_by_side_in_one_row() {
        let layout = Layout {
            sections: 1,
            rows: 2,
            seats_per_row: 5,
        };
        let board = Board::new(layout);
        // Row 1: seats 0-4; seat 2 held. Draws land on seat 3.
        board.set(2, HELD);
        assert_eq!(board.pick(4, |_| 3), Some(vec![3, 4]));
        // Seat 4 picked, the group grows to the left, never past the held seat or into the next row.
        assert_eq!(board.pick(3, |_| 4), Some(vec![3, 4]));
        assert_eq!(board.pick(3, |_| 5), Some(vec![5, 6, 7]));
        assert_eq!(board.pick(3, |_| 9), Some(vec![7, 8, 9]));
        // A draw on a taken seat falls back to a free one.
        for seat in 0..10 {
            if seat != 7 {
                board.set(seat, SOLD);
            }
        }
        assert_eq!(board.pick(2, |_| 0), Some(vec![7]));
        board.set(7, SOLD);
        assert_eq!(board.pick(1, |below| below - 1), None);
    }
}

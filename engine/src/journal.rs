//! The `Journal` port: where shard actors record every event they apply.
//!
//! A shard applies an event in memory, hands it to the journal and goes on with its next message; the returned
//! [`Commit`] completes once the record is durable, and whoever answers the client waits for it, not the actor.
//! Every `snapshot_every_events` events (and when asked) a shard also hands the journal a copy of its whole state:
//! a snapshot covers the shard's events up to `ShardState::events_applied`, so recovery replays only what follows,
//! and the journal may drop what every live snapshot covers. This crate ships only [`VolatileJournal`], which keeps
//! nothing: state then lives in memory alone. The `persistence` crate implements the durable one.

use crate::ids::ConcertId;
use crate::shard_state::{ShardEvent, ShardState};
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio::sync::oneshot;

/// One journal entry: an event of one shard of one concert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub concert_id: ConcertId,
    pub shard: u32,
    /// The event's number in its shard, from 1: the shard's `events_applied` once the event is applied.
    pub seq: u64,
    pub event: ShardEvent,
}

/// A copy of one shard's state, covering its events up to `state.events_applied()`.
#[derive(Clone, Debug)]
pub struct ShardSnapshot {
    pub concert_id: ConcertId,
    pub shard: u32,
    pub state: ShardState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalError(pub String);

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal write failed: {}", self.0)
    }
}

impl std::error::Error for JournalError {}

/// Completes when the record it was returned for is durable.
#[derive(Debug)]
pub struct Commit(Option<oneshot::Receiver<Result<(), JournalError>>>);

impl Commit {
    /// A commit that is already complete.
    pub fn done() -> Self {
        Self(None)
    }

    /// A commit that completes when the journal writer sends on the other end.
    pub fn pending(receiver: oneshot::Receiver<Result<(), JournalError>>) -> Self {
        Self(Some(receiver))
    }

    /// A commit that has already failed.
    pub fn failed(reason: String) -> Self {
        let (sender, receiver) = oneshot::channel();
        let _ = sender.send(Err(JournalError(reason)));
        Self(Some(receiver))
    }

    /// The error of a commit that has failed already (its record refused at once, or its write failed), without
    /// waiting for one that is still pending. A later [`Commit::wait`] still answers what it would have.
    pub fn failed_already(&mut self) -> Option<JournalError> {
        match self.0.as_mut()?.try_recv() {
            Ok(Ok(())) => {
                self.0 = None;
                None
            }
            Ok(Err(error)) => {
                *self = Commit::failed(error.0.clone());
                Some(error)
            }
            Err(_) => None,
        }
    }

    pub async fn wait(self) -> Result<(), JournalError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver
                .await
                .unwrap_or_else(|_| Err(JournalError("journal writer stopped".into()))),
        }
    }
}

pub trait Journal: Send + Sync + 'static {
    /// Queues `record` for writing; blocks the calling actor only when the writer's bounded queue is full.
    fn append(&self, record: JournalRecord) -> Commit;

    /// How many events a shard applies between two snapshots; `None`: never on its own.
    fn snapshot_every_events(&self) -> Option<u64> {
        None
    }

    /// Completes once every record appended before it is durable: what a request repeated after its reply was lost
    /// waits for, so that it is never answered before the first one's effect is on disk.
    fn barrier(&self) -> Commit {
        Commit::done()
    }

    /// Stores a snapshot, off the calling actor; the commit completes once it is durable.
    fn save_snapshot(&self, _snapshot: ShardSnapshot) -> Commit {
        Commit::done()
    }
}

/// A journal that keeps nothing and commits at once: state lives only in the shard actors' memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct VolatileJournal;

impl Journal for VolatileJournal {
    fn append(&self, _record: JournalRecord) -> Commit {
        Commit::done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_looked_at_early_still_answers_its_wait() {
        let (sender, receiver) = oneshot::channel();
        let mut done = Commit::pending(receiver);
        sender.send(Ok(())).expect("sent");
        assert_eq!(done.failed_already(), None);
        assert_eq!(done.wait().await, Ok(()));
        let mut failed = Commit::failed("disk full".into());
        assert_eq!(
            failed.failed_already(),
            Some(JournalError("disk full".into()))
        );
        assert_eq!(failed.wait().await, Err(JournalError("disk full".into())));
        let (_sender, receiver) = oneshot::channel();
        let mut pending = Commit::pending(receiver);
        assert_eq!(pending.failed_already(), None);
    }
}

//! The `Journal` port: where shard actors record every event they apply.
//!
//! A shard applies an event in memory, hands it to the journal and goes on with its next message; the returned
//! [`Commit`] completes once the record is durable, and whoever answers the client waits for it, not the actor.
//! This crate ships only [`VolatileJournal`], which keeps nothing: state then lives in memory alone.

use crate::ids::ConcertId;
use crate::shard_state::ShardEvent;
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio::sync::oneshot;

/// One journal entry: an event of one shard of one concert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub concert_id: ConcertId,
    pub shard: u32,
    pub event: ShardEvent,
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
    /// Queues `record` for writing; never blocks the calling actor.
    fn append(&self, record: JournalRecord) -> Commit;
}

/// A journal that keeps nothing and commits at once: state lives only in the shard actors' memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct VolatileJournal;

impl Journal for VolatileJournal {
    fn append(&self, _record: JournalRecord) -> Commit {
        Commit::done()
    }
}

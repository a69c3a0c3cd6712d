//! The node's storage: the durable [`Journal`] of the engine, snapshots, concerts and users.
//!
//! Layout of a data dir: `journal/` holds the segment log ([`crate::log`]) of every shard event and every
//! node-wide record (concerts, users); `db/` is a sled database holding the latest two snapshots of every shard,
//! the concerts and the users as of the last snapshot flush, and the last node-wide sequence number.
//!
//! Durability comes from the journal alone: a reply waits for the group commit that covers its record. sled holds
//! what the journal may then forget. Its `flush` is `pwrite` + `sync_file_range` (FACTS.md), which survives a
//! process crash but not a power loss, so after every flush the snapshot writer also `fsync`s sled's files before it
//! lets the journal drop anything they cover.
//!
//! Snapshots are written by one thread ([`SNAPSHOT_QUEUE_MAX`] queued at most; a snapshot that does not fit is
//! refused, which costs nothing but a longer replay). It takes every queued snapshot, stores them, flushes sled once,
//! then deletes the journal segments that the oldest kept snapshot of every shard, and the flushed node-wide
//! records, cover. Two snapshots per shard are kept so that a damaged newest one falls back to the one before it
//! plus a longer replay.

use crate::ledger::{LEDGER_DIR, LedgerCheckpoint};
use crate::log::{self, LogConfig, LogStats, LogWriter, ReadReport, StreamId, SyncPolicy};
use crate::wire::{
    Entry, LEDGER_STREAM, META_STREAM, MetaRecord, decode_record, decode_snapshot,
    encode_ledger_record, encode_record, encode_snapshot, shard_stream, shard_stream_id,
};
use engine::concert::ConcertSpec;
use engine::journal::{Commit, Journal, JournalError, JournalRecord, ShardSnapshot};
use engine::payment::{PaymentRecord, SimulatedCharge};
use engine::remote::NodeId;
use engine::shard_state::{ShardEvent, ShardState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Snapshots kept per shard: the newest, and the one recovery falls back to when the newest is damaged.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Snapshots waiting for the snapshot writer at most; beyond that a snapshot is refused.
pub const SNAPSHOT_QUEUE_MAX: usize = 4096;
/// Default of `--snapshot-every-events`.
pub const SNAPSHOT_EVERY_EVENTS_DEFAULT: u64 = 100_000;
/// Snapshots the writer stores between two flushes at most.
const SNAPSHOT_BATCH_MAX: usize = 256;

const META_SEQ_KEY: &[u8] = b"meta_seq";

#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Each shard snapshots itself after this many events.
    pub snapshot_every_events: u64,
    /// `false` skips `fdatasync` (benchmarks of the journal's CPU cost only).
    pub sync: bool,
    /// The journal moves to a new segment file after this many bytes; only whole segments are ever deleted.
    pub segment_bytes_max: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            snapshot_every_events: SNAPSHOT_EVERY_EVENTS_DEFAULT,
            sync: true,
            segment_bytes_max: log::SEGMENT_BYTES_MAX,
        }
    }
}

#[derive(Debug)]
pub enum StorageError {
    Io(std::io::Error),
    Sled(sled::Error),
    /// The data dir cannot be turned back into a consistent state.
    Unrecoverable(String),
    /// Another process (a running node) has the data dir open: sled's lock on it is taken.
    InUse(std::path::PathBuf),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "storage i/o failed: {error}"),
            Self::Sled(error) => write!(f, "sled failed: {error}"),
            Self::Unrecoverable(reason) => write!(f, "data dir cannot be recovered: {reason}"),
            Self::InUse(dir) => write!(
                f,
                "{} is in use by a running node (its storage is locked): stop that node first (SIGTERM), or \
                 work on a backup of it (`boxoffice backup`)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<sled::Error> for StorageError {
    fn from(error: sled::Error) -> Self {
        Self::Sled(error)
    }
}

/// A concert as recovered: its definition and the state of each shard.
#[derive(Debug)]
pub struct RecoveredConcert {
    pub spec: ConcertSpec,
    /// In a cluster, the node that owns each shard; `None`: this node owns them all.
    pub placement: Option<Vec<NodeId>>,
    /// Every shard's state; a shard another node owns has no events here and comes back as new.
    pub states: Vec<ShardState>,
    /// Per shard: the position of the snapshot it started from (0: none), and the events replayed after it.
    pub shards: Vec<RecoveredShard>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveredShard {
    pub snapshot_seq: u64,
    pub events_replayed: u64,
    /// Damaged snapshots passed over for an older one.
    pub snapshots_rejected: u32,
}

#[derive(Debug)]
pub struct Recovered {
    pub concerts: Vec<RecoveredConcert>,
    /// Users by id, as the HTTP front encoded them.
    pub users: Vec<(String, Vec<u8>)>,
    /// The payment simulator's vault: cards by payment method id, as the HTTP front encoded them.
    pub payment_methods: Vec<(String, Vec<u8>)>,
    /// The payment simulator's ledger: every charge's last state, by idempotency key.
    pub ledger: HashMap<String, SimulatedCharge>,
    /// The payment step of every order whose payment was not final, by order id.
    pub payments: Vec<(String, PaymentRecord)>,
    /// Payment webhook events acted on, and when (milliseconds since the epoch).
    pub webhook_events: Vec<(String, u64)>,
    pub journal: ReadReport,
    pub elapsed: Duration,
}

impl Recovered {
    pub fn events_replayed(&self) -> u64 {
        self.concerts
            .iter()
            .flat_map(|concert| &concert.shards)
            .map(|shard| shard.events_replayed)
            .sum()
    }

    pub fn snapshots_rejected(&self) -> u32 {
        self.concerts
            .iter()
            .flat_map(|concert| &concert.shards)
            .map(|shard| shard.snapshots_rejected)
            .sum()
    }
}

struct Trees {
    concerts: sled::Tree,
    placements: sled::Tree,
    users: sled::Tree,
    payment_methods: sled::Tree,
    payments: sled::Tree,
    webhook_events: sled::Tree,
    snapshots: sled::Tree,
    meta: sled::Tree,
}

struct Inner {
    /// The data dir.
    dir: PathBuf,
    db_dir: PathBuf,
    db: sled::Db,
    trees: Trees,
    log: LogWriter,
    /// The last node-wide sequence number handed out; held while a node-wide record is applied and queued, so
    /// records reach sled and the log in sequence order.
    meta_seq: Mutex<u64>,
    /// Orders' payment records journaled and not yet in sled, by order id, the last one each (`None`: removed).
    /// They are several per order, so sled gets them behind, in one batch each time the snapshot writer makes the
    /// node-wide records durable there ([`Inner::apply_payments_behind`]), off the order's path; until then the
    /// journal holds them (recovery applies them from it).
    payments_behind: Mutex<PaymentsBehind>,
    /// Held from taking a batch of payment records until sled has it, so that batches reach sled in order.
    applying_payments: Mutex<()>,
    /// Whether the snapshot writer has been asked to send the payment records behind to sled and has not yet.
    payments_nudged: AtomicBool,
    /// The last ledger sequence number handed out; held while a record is queued, so that records reach the
    /// journal and the checkpoint in sequence order.
    ledger_seq: Mutex<u64>,
    /// The payment simulator's ledger outside the journal (see `crate::ledger`).
    ledger_checkpoint: LedgerCheckpoint,
    /// Per stream, the position up to which the journal is no longer needed.
    covered: Mutex<HashMap<String, u64>>,
    /// The ids of the node-wide and the ledger's streams, made once: each record takes a reference.
    meta_stream: StreamId,
    ledger_stream: StreamId,
    /// Held while snapshots are stored (and the journal truncated behind them) and while a backup copies the
    /// data dir: a backup never sees a journal cut short behind snapshots it did not copy.
    copying: Mutex<()>,
}

/// How long `open` waits for sled's lock on the data dir. sled's background threads let go of it a moment after
/// the last handle is dropped, so a storage closed and opened again in one process (a test, a bench) can find it
/// still taken; another running node holds it for good, and is reported once this has passed.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens sled's database in `db_dir`, inside the data dir `dir` (which an `InUse` error names).
fn open_sled(dir: &Path, db_dir: &Path) -> Result<sled::Db, StorageError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(db_dir).open() {
            Ok(db) => return Ok(db),
            // sled wraps the failed `flock` in an error of kind `Other` that says so.
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                if Instant::now() >= deadline {
                    return Err(StorageError::InUse(dir.to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(other) => return Err(StorageError::Sled(other)),
        }
    }
}

struct SnapshotJob {
    snapshot: ShardSnapshot,
    done: oneshot::Sender<Result<(), JournalError>>,
}

/// What the snapshot writer is asked to do.
enum Job {
    Snapshot(Box<SnapshotJob>),
    /// Send the payment records behind to sled: enough of them piled up.
    Payments,
}

pub struct Storage {
    inner: Arc<Inner>,
    snapshot_every_events: u64,
    jobs: Mutex<Option<SyncSender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Storage {
    /// Opens (or creates) the storage in `dir` and recovers what it holds: the log's torn tail is cut, concerts and
    /// users are read, and every shard is rebuilt from its newest good snapshot plus the journal after it.
    pub fn open(
        dir: &Path,
        options: StorageOptions,
    ) -> Result<(Arc<Storage>, Recovered), StorageError> {
        assert!(options.snapshot_every_events > 0, "snapshots are periodic");
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let db_dir = dir.join("db");
        let db = open_sled(dir, &db_dir)?;
        let trees = Trees {
            concerts: db.open_tree("concerts")?,
            placements: db.open_tree("placements")?,
            users: db.open_tree("users")?,
            payment_methods: db.open_tree("payment_methods")?,
            payments: db.open_tree("payments")?,
            webhook_events: db.open_tree("webhook_events")?,
            snapshots: db.open_tree("snapshots")?,
            meta: db.open_tree("meta")?,
        };
        let mut meta_seq = read_u64(&trees.meta, META_SEQ_KEY)?;
        // Node-wide records up to this one are in sled already; a payment record among them may since have been
        // forgotten there (its end is not journaled), so it is not applied again.
        let in_sled_up_to = meta_seq;
        let (ledger_checkpoint, mut ledger, checkpoint_seq) =
            LedgerCheckpoint::open(&dir.join(LEDGER_DIR), options.sync)?;
        // The journal's ledger records beyond the checkpoint, in order.
        let mut ledger_tail = Vec::new();
        let mut events: HashMap<StreamId, Vec<(u64, ShardEvent)>> = HashMap::new();
        let mut sled_failure = None;
        let log_config = LogConfig {
            sync: if options.sync {
                SyncPolicy::EveryBatch
            } else {
                SyncPolicy::Never
            },
            segment_bytes_max: options.segment_bytes_max,
            ..LogConfig::new(dir.join("journal"))
        };
        let (log, journal) = log::open(log_config, |bytes| match decode_record(bytes)? {
            Entry::Shard(record) => {
                let stream: StreamId = shard_stream(&record.concert_id.0, record.shard).into();
                events
                    .entry(stream.clone())
                    .or_default()
                    .push((record.seq, record.event));
                Ok((stream, record.seq))
            }
            Entry::Meta { seq, record } => {
                let applied = seq <= in_sled_up_to && matches!(record, MetaRecord::Payment { .. });
                if !applied && let Err(error) = apply_meta(&trees, seq, &record) {
                    sled_failure.get_or_insert(error);
                }
                meta_seq = meta_seq.max(seq);
                Ok((META_STREAM.into(), seq))
            }
            Entry::Ledger { seq, key, charge } => {
                if seq > checkpoint_seq {
                    ledger_tail.push((seq, key, charge));
                }
                Ok((LEDGER_STREAM.into(), seq))
            }
        })?;
        let ledger_seq =
            catch_up_checkpoint(&ledger_checkpoint, &mut ledger, checkpoint_seq, ledger_tail)?;
        if let Some(error) = sled_failure {
            return Err(error.into());
        }
        if let Some(torn) = &journal.torn_tail {
            tracing::warn!(segment = %torn.segment.display(), offset = torn.offset, bytes_cut = torn.bytes_cut,
                reason = %torn.reason, "journal ended in a torn record: its tail was cut");
        }
        let mut concerts = Vec::new();
        for entry in trees.concerts.iter() {
            let (_, bytes) = entry?;
            let (created_seq, spec): (u64, ConcertSpec) = postcard::from_bytes(&bytes)
                .map_err(|error| StorageError::Unrecoverable(format!("bad concert: {error}")))?;
            let placement: Option<Vec<NodeId>> = trees
                .placements
                .get(spec.id.0.as_bytes())?
                .map(|bytes| postcard::from_bytes(&bytes))
                .transpose()
                .map_err(|error| StorageError::Unrecoverable(format!("bad placement: {error}")))?;
            let mut concert = restore_concert(&trees.snapshots, spec, &mut events)?;
            concert.placement = placement;
            concerts.push((created_seq, concert));
        }
        // Concerts come back in the order they were created, as the node lists them.
        concerts.sort_by_key(|(created_seq, _)| *created_seq);
        let concerts: Vec<RecoveredConcert> =
            concerts.into_iter().map(|(_, concert)| concert).collect();
        for stream in events.keys() {
            tracing::warn!(%stream, "journal events of an unknown concert ignored");
        }
        let read_tree = |tree: &sled::Tree| {
            tree.iter()
                .map(|entry| {
                    entry.map(|(id, record)| {
                        (String::from_utf8_lossy(&id).into_owned(), record.to_vec())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let users = read_tree(&trees.users)?;
        let payment_methods = read_tree(&trees.payment_methods)?;
        let payments = read_tree(&trees.payments)?
            .into_iter()
            .map(|(order_id, bytes)| {
                postcard::from_bytes(&bytes)
                    .map(|StoredPayment::V1(record)| (order_id, record))
                    .map_err(|error| {
                        StorageError::Unrecoverable(format!("bad payment record: {error}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let webhook_events = read_tree(&trees.webhook_events)?
            .into_iter()
            .map(|(id, bytes)| {
                let at_ms = bytes
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| StorageError::Unrecoverable("bad webhook event record".into()))?;
                Ok((id, at_ms))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let covered = oldest_snapshot_per_stream(&trees.snapshots)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            db_dir,
            db,
            trees,
            log,
            meta_seq: Mutex::new(meta_seq),
            payments_behind: Mutex::new(PaymentsBehind {
                changes: HashMap::new(),
                in_sled: payments
                    .iter()
                    .map(|(order_id, _)| order_id.clone())
                    .collect(),
            }),
            applying_payments: Mutex::new(()),
            payments_nudged: AtomicBool::new(false),
            ledger_seq: Mutex::new(ledger_seq),
            ledger_checkpoint,
            covered: Mutex::new(covered),
            meta_stream: META_STREAM.into(),
            ledger_stream: LEDGER_STREAM.into(),
            copying: Mutex::new(()),
        });
        let (jobs, receiver) = mpsc::sync_channel(SNAPSHOT_QUEUE_MAX);
        let worker_inner = inner.clone();
        let worker = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || write_snapshots(&worker_inner, &receiver))?;
        let storage = Arc::new(Storage {
            inner,
            snapshot_every_events: options.snapshot_every_events,
            jobs: Mutex::new(Some(jobs)),
            worker: Mutex::new(Some(worker)),
        });
        let recovered = Recovered {
            concerts,
            users,
            payment_methods,
            ledger,
            payments,
            webhook_events,
            journal,
            elapsed: started.elapsed(),
        };
        Ok((storage, recovered))
    }

    /// Records a node-wide change; the commit completes once it is durable. sled gets it at once, in order (an
    /// order's payment record behind, see `Inner::payments_behind`).
    pub fn append_meta(&self, record: MetaRecord) -> Commit {
        let mut seq = self
            .inner
            .meta_seq
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut due = false;
        if let MetaRecord::Payment { order_id, record } = &record {
            let mut behind = self
                .inner
                .payments_behind
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            behind.record(order_id, record.clone());
            due = behind.is_due();
        } else if let Err(error) = apply_meta(&self.inner.trees, *seq + 1, &record) {
            return Commit::failed(format!("sled: {error}"));
        }
        *seq += 1;
        let bytes = encode_record(Entry::Meta { seq: *seq, record });
        let commit = Commit::pending(self.inner.log.append(
            self.inner.meta_stream.clone(),
            *seq,
            bytes,
        ));
        drop(seq);
        if due {
            self.nudge_payments();
        }
        commit
    }

    /// Asks the snapshot writer to send the payment records behind to sled (once until it has), instead of doing
    /// it on the caller's thread: a batch of thousands of records would hold up the order that filled it, and
    /// every other order on that thread.
    fn nudge_payments(&self) {
        if self.inner.payments_nudged.swap(true, Ordering::AcqRel) {
            return;
        }
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = jobs
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(Job::Payments).is_ok());
        if !sent {
            // A full queue means the writer is storing snapshots, which sends the records too; closed means
            // close sends them.
            self.inner.payments_nudged.store(false, Ordering::Release);
        }
    }

    /// Ends an order's payment record without a journal record of its own: sled drops it with the next batch of
    /// payment records (`Inner::payments_behind`). Should a crash bring back a record from the journal before its
    /// segment is cut, the restart only finds it final again (a capture or a void the provider answers as done),
    /// so the end of every order's payment costs no write of its own.
    pub fn forget_payment(&self, order_id: &str) {
        let due = {
            let mut behind = self
                .inner
                .payments_behind
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            behind.record(order_id, None);
            behind.is_due()
        };
        if due {
            self.nudge_payments();
        }
    }

    /// Records the payment simulator's charge under `key` in the journal, behind everything appended before (a
    /// confirmation appended after it is durable only if this record is too), and in the ledger's checkpoint,
    /// unwaited (`crate::ledger`). The commit completes once the journal's record is durable.
    pub fn append_ledger(&self, key: &str, charge: &SimulatedCharge) -> Commit {
        let mut seq = self
            .inner
            .ledger_seq
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        self.inner.ledger_checkpoint.append(*seq, key, charge);
        let bytes = encode_ledger_record(*seq, key, charge);
        Commit::pending(
            self.inner
                .log
                .append(self.inner.ledger_stream.clone(), *seq, bytes),
        )
    }

    /// Stores snapshots given directly (offline: `boxoffice snapshot`) and waits until they are durable.
    pub fn write_snapshots_now(&self, snapshots: Vec<ShardSnapshot>) -> Result<(), StorageError> {
        store_snapshots(&self.inner, snapshots.iter())
            .map_err(|error| StorageError::Unrecoverable(error.0))
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn journal_stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    /// The position of the newest snapshot of every shard that has one, by stream (`concert/shard`).
    pub fn snapshot_positions(&self) -> Result<BTreeMap<String, u64>, StorageError> {
        let mut newest = BTreeMap::new();
        for key in self.inner.trees.snapshots.iter().keys() {
            let (stream, seq) = parse_snapshot_key(&key?)?;
            newest.insert(stream, seq);
        }
        Ok(newest)
    }

    /// Writes a consistent copy of this running storage into `target` (a new directory, or an empty one): a data
    /// dir another node opens with the same master key to recover the state at about this moment. Sales go on
    /// meanwhile. What it copies: every sled tree (read through sled, into a new database), then, once every
    /// record queued before is durable, the journal's segments and the simulator ledger's checkpoint as they are
    /// (a record being written at the end is cut as a torn tail when the copy is opened), and the data dir's other
    /// files (the node id) except its secrets (`master.key`, `master.key.next`, `admin-token`), which a backup
    /// must not hold. Snapshots and their truncation of the journal wait while it copies. Returns the bytes
    /// copied.
    pub fn backup(&self, target: &Path) -> Result<u64, StorageError> {
        let inner = &self.inner;
        let _copying = inner.copying.lock().unwrap_or_else(PoisonError::into_inner);
        if target.exists() && std::fs::read_dir(target)?.next().is_some() {
            return Err(StorageError::Unrecoverable(format!(
                "{} is not empty: a backup goes to a new directory",
                target.display()
            )));
        }
        let name = target
            .file_name()
            .ok_or_else(|| StorageError::Unrecoverable("a backup needs a directory name".into()))?;
        let parent = target.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent)?;
        if parent
            .canonicalize()?
            .starts_with(inner.dir.canonicalize()?)
        {
            return Err(StorageError::Unrecoverable(
                "a backup cannot go inside the data dir it copies".into(),
            ));
        }
        // Written aside and renamed into place at the end: a backup cut short is never taken for a whole one.
        let final_target = target;
        let partial = parent.join(format!("{}.partial", name.to_string_lossy()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        let target = partial.as_path();
        std::fs::create_dir_all(target)?;
        let mut bytes = 0u64;
        let copy = sled::Config::new().path(target.join("db")).open()?;
        for name in inner.db.tree_names() {
            let (from, to) = (inner.db.open_tree(&name)?, copy.open_tree(&name)?);
            for entry in from.iter() {
                let (key, value) = entry?;
                bytes += (key.len() + value.len()) as u64;
                to.insert(key, value)?;
            }
        }
        copy.flush()?;
        drop(copy);
        sync_dir_files(&target.join("db"))?;
        // The simulator ledger's checkpoint before the journal: every record in it was queued in the journal
        // first, so the copied segments hold it too, and recovery catches the checkpoint up with the records the
        // journal has beyond it. Copied after the journal, it could hold charges whose orders the copy lacks. (A
        // record goes to both under this lock.)
        let checkpoint_durable = {
            let _ledger = inner
                .ledger_seq
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            inner.ledger_checkpoint.barrier()
        };
        checkpoint_durable
            .blocking_recv()
            .map_err(|_| StorageError::Unrecoverable("the ledger checkpoint stopped".into()))?
            .map_err(|error| StorageError::Unrecoverable(error.0))?;
        bytes += copy_dir_files(&inner.dir.join(LEDGER_DIR), &target.join(LEDGER_DIR))?;
        // Every node-wide record applied to sled above is queued in the journal (under this lock) before the
        // barrier, and so in the copied segments.
        let journal_durable = {
            let _meta = inner
                .meta_seq
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            inner.log.barrier()
        };
        journal_durable
            .blocking_recv()
            .map_err(|_| StorageError::Unrecoverable("the journal stopped".into()))?
            .map_err(|error| StorageError::Unrecoverable(error.0))?;
        bytes += copy_dir_files(&inner.dir.join("journal"), &target.join("journal"))?;
        for entry in std::fs::read_dir(&inner.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let secret = ["master.key", "master.key.next", "admin-token"]
                .iter()
                .any(|secret| name == *secret);
            if entry.file_type()?.is_file() && !secret {
                bytes += std::fs::copy(entry.path(), target.join(&name))?;
            }
        }
        std::fs::File::open(target)?.sync_all()?;
        std::fs::rename(target, final_target)?;
        std::fs::File::open(parent)?.sync_all()?;
        Ok(bytes)
    }

    /// Stops the snapshot writer after what is queued, and the journal writer after what is queued; flushes sled.
    pub fn close(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(worker) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            && worker.join().is_err()
        {
            tracing::error!("snapshot writer panicked");
        }
        self.inner.log.close();
        self.inner.ledger_checkpoint.close();
        // The payment records behind go to sled, and the node-wide records' position with them, so that the
        // next start does not apply them again from the journal (forgotten ones would come back).
        {
            let applied = self.inner.apply_payments_behind().and_then(|seq| {
                self.inner
                    .trees
                    .meta
                    .insert(META_SEQ_KEY, &seq.to_le_bytes())
                    .map(drop)
            });
            if let Err(error) = applied {
                tracing::error!(%error, "payment records not applied to sled at close; the journal keeps them");
            }
        }
        if let Err(error) = self.inner.db.flush() {
            tracing::error!(%error, "sled flush at close failed");
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.close();
    }
}

impl Journal for Storage {
    fn append(&self, record: JournalRecord) -> Commit {
        let stream = shard_stream_id(&record.concert_id.0, record.shard);
        let seq = record.seq;
        let bytes = encode_record(Entry::Shard(record));
        Commit::pending(self.inner.log.append(stream, seq, bytes))
    }

    fn snapshot_every_events(&self) -> Option<u64> {
        Some(self.snapshot_every_events)
    }

    fn barrier(&self) -> Commit {
        Commit::pending(self.inner.log.barrier())
    }

    fn save_snapshot(&self, snapshot: ShardSnapshot) -> Commit {
        let (done, receiver) = oneshot::channel();
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(jobs) = jobs.as_ref() else {
            return Commit::failed("storage is closed".into());
        };
        match jobs.try_send(Job::Snapshot(Box::new(SnapshotJob { snapshot, done }))) {
            Ok(()) => Commit::pending(receiver),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("boxoffice_snapshots_refused_total").increment(1);
                Commit::failed("snapshot queue full".into())
            }
            Err(TrySendError::Disconnected(_)) => Commit::failed("snapshot writer stopped".into()),
        }
    }
}

/// Payment records kept behind before the snapshot writer is asked to send them to sled without waiting for its
/// next snapshots (a node that snapshots rarely, or owns no shard). Nearly all of them belong to orders in flight,
/// whose payment ends before any batch and so costs sled nothing: twice the payment pool's default concurrency
/// (16,384), so that a sale whose orders are all in flight at once (a burst of 10,000) writes none of them to sled.
/// About 7 MB when full.
const PAYMENTS_BEHIND_MAX: usize = 32_768;

impl Inner {
    /// Sends the payment records behind to sled in one batch. The batch is taken under the node-wide records'
    /// lock and applied outside it, so orders go on recording theirs meanwhile (into the next batch); every
    /// node-wide record up to the returned sequence number is in sled once this returns `Ok`. A batch sled
    /// refuses goes back behind, under what was recorded since, for the next.
    fn apply_payments_behind(&self) -> Result<u64, sled::Error> {
        let _applying = self
            .applying_payments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (seq, taken) = {
            let seq = self.meta_seq.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = self
                .payments_behind
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            (*seq, taken)
        };
        if taken.is_empty() {
            return Ok(seq);
        }
        let mut batch = sled::Batch::default();
        for (order_id, record) in &taken {
            match record {
                Some(record) => batch.insert(
                    order_id.as_bytes(),
                    postcard::to_allocvec(&StoredPayment::V1(record.clone()))
                        .expect("payment records always encode"),
                ),
                None => batch.remove(order_id.as_bytes()),
            }
        }
        self.trees.payments.apply_batch(batch).inspect_err(|_| {
            self.payments_behind
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put_back(taken);
        })?;
        Ok(seq)
    }
}

/// Orders' payment records on their way to sled (`Inner::payments_behind`).
struct PaymentsBehind {
    /// The last record of each order journaled since the last batch (`None`: removed).
    changes: HashMap<String, Option<PaymentRecord>>,
    /// The orders whose record sled holds. A removal goes to sled only for these, so an order whose payment began
    /// and ended between two batches (most of them) costs sled nothing.
    in_sled: HashSet<String>,
}

impl PaymentsBehind {
    fn record(&mut self, order_id: &str, record: Option<PaymentRecord>) {
        if record.is_none() && !self.in_sled.contains(order_id) {
            self.changes.remove(order_id);
        } else {
            self.changes.insert(order_id.to_owned(), record);
        }
    }

    fn is_due(&self) -> bool {
        self.changes.len() >= PAYMENTS_BEHIND_MAX
    }

    /// The changes for one batch to sled. `in_sled` counts them in already, so that an order that ends while
    /// the batch is on its way gets its removal in the next batch (which reaches sled after this one).
    fn take(&mut self) -> HashMap<String, Option<PaymentRecord>> {
        let taken = std::mem::take(&mut self.changes);
        for (order_id, record) in &taken {
            match record {
                Some(_) => self.in_sled.insert(order_id.clone()),
                None => self.in_sled.remove(order_id),
            };
        }
        taken
    }

    /// A batch sled refused: each change goes back unless the order recorded a newer one since. A refused removal
    /// leaves the record in sled, so `in_sled` names the order again; `in_sled` may also name an order whose
    /// insert was refused, which only costs a removal sled ignores.
    fn put_back(&mut self, taken: HashMap<String, Option<PaymentRecord>>) {
        for (order_id, record) in taken {
            if record.is_none() {
                self.in_sled.insert(order_id.clone());
            }
            self.changes.entry(order_id).or_insert(record);
        }
    }
}

/// An order's payment record as sled keeps it; the variant is the format version.
#[derive(serde::Serialize, serde::Deserialize)]
enum StoredPayment {
    V1(PaymentRecord),
}

/// Applies a node-wide record with sequence number `seq` to sled; a concert keeps `seq` as its creation order.
fn apply_meta(trees: &Trees, seq: u64, record: &MetaRecord) -> Result<(), sled::Error> {
    match record {
        MetaRecord::Concert(spec) => {
            let bytes = postcard::to_allocvec(&(seq, spec)).expect("concerts always encode");
            trees.concerts.insert(spec.id.0.as_bytes(), bytes)?;
        }
        MetaRecord::User { id, record } => {
            trees.users.insert(id.as_bytes(), record.as_slice())?;
        }
        MetaRecord::PaymentMethod { id, record } => {
            trees
                .payment_methods
                .insert(id.as_bytes(), record.as_slice())?;
        }
        MetaRecord::Payment { order_id, record } => match record {
            Some(record) => {
                let bytes = postcard::to_allocvec(&StoredPayment::V1(record.clone()))
                    .expect("payment records always encode");
                trees.payments.insert(order_id.as_bytes(), bytes)?;
            }
            None => {
                trees.payments.remove(order_id.as_bytes())?;
            }
        },
        MetaRecord::WebhookEvent { id, at_ms } => match at_ms {
            Some(at_ms) => {
                trees
                    .webhook_events
                    .insert(id.as_bytes(), &at_ms.to_le_bytes())?;
            }
            None => {
                trees.webhook_events.remove(id.as_bytes())?;
            }
        },
        MetaRecord::PlacedConcert { spec, placement } => {
            let bytes = postcard::to_allocvec(&(seq, spec)).expect("concerts always encode");
            let placed = postcard::to_allocvec(placement).expect("placements always encode");
            trees.placements.insert(spec.id.0.as_bytes(), placed)?;
            trees.concerts.insert(spec.id.0.as_bytes(), bytes)?;
        }
    }
    Ok(())
}

/// Appends to the checkpoint the journal's ledger records beyond it (`tail`, in order), applies them to
/// `ledger`, and waits until they are durable there; returns the last ledger sequence number.
fn catch_up_checkpoint(
    checkpoint: &LedgerCheckpoint,
    ledger: &mut HashMap<String, SimulatedCharge>,
    checkpoint_seq: u64,
    tail: Vec<(u64, String, SimulatedCharge)>,
) -> Result<u64, StorageError> {
    let mut seq = checkpoint_seq;
    if tail.is_empty() {
        return Ok(seq);
    }
    for (record_seq, key, charge) in tail {
        if record_seq != seq + 1 {
            return Err(StorageError::Unrecoverable(format!(
                "the journal's ledger records jump from {seq} to {record_seq}"
            )));
        }
        checkpoint.append(record_seq, &key, &charge);
        ledger.insert(key, charge);
        seq = record_seq;
    }
    checkpoint
        .barrier()
        .blocking_recv()
        .map_err(|_| StorageError::Unrecoverable("ledger checkpoint stopped".into()))?
        .map_err(|error| StorageError::Unrecoverable(error.0))?;
    Ok(seq)
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StorageError> {
    Ok(tree
        .get(key)?
        .and_then(|bytes| bytes.as_ref().try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0))
}

/// `concert/shard/seq`, with the numbers zero-padded so that sled's order is position order.
fn snapshot_key(stream: &str, seq: u64) -> String {
    format!("{}/{seq:020}", snapshot_prefix(stream))
}

fn snapshot_prefix(stream: &str) -> String {
    let (concert, shard) = stream
        .rsplit_once('/')
        .expect("shard streams are concert/shard");
    format!(
        "{concert}/{:05}",
        shard.parse::<u32>().expect("shard number")
    )
}

fn parse_snapshot_key(key: &[u8]) -> Result<(String, u64), StorageError> {
    let bad = || StorageError::Unrecoverable("bad snapshot key".into());
    let key = std::str::from_utf8(key).map_err(|_| bad())?;
    let (prefix, seq) = key.rsplit_once('/').ok_or_else(bad)?;
    let (concert, shard) = prefix.rsplit_once('/').ok_or_else(bad)?;
    let shard: u32 = shard.parse().map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    Ok((shard_stream(concert, shard), seq))
}

fn oldest_snapshot_per_stream(
    snapshots: &sled::Tree,
) -> Result<HashMap<String, u64>, StorageError> {
    let mut oldest = HashMap::new();
    for key in snapshots.iter().keys() {
        let (stream, seq) = parse_snapshot_key(&key?)?;
        oldest.entry(stream).or_insert(seq);
    }
    Ok(oldest)
}

/// Rebuilds every shard of `spec` from its newest good snapshot and the journal events after it.
fn restore_concert(
    snapshots: &sled::Tree,
    spec: ConcertSpec,
    events: &mut HashMap<StreamId, Vec<(u64, ShardEvent)>>,
) -> Result<RecoveredConcert, StorageError> {
    let mut states = Vec::new();
    let mut shards = Vec::new();
    for shard in 0..spec.shards {
        let stream = shard_stream(&spec.id.0, shard);
        let tail = events.remove(stream.as_str()).unwrap_or_default();
        let (state, recovered) = restore_shard(snapshots, &spec, shard, &stream, &tail)?;
        states.push(state);
        shards.push(recovered);
    }
    Ok(RecoveredConcert {
        spec,
        placement: None,
        states,
        shards,
    })
}

fn restore_shard(
    snapshots: &sled::Tree,
    spec: &ConcertSpec,
    shard: u32,
    stream: &str,
    tail: &[(u64, ShardEvent)],
) -> Result<(ShardState, RecoveredShard), StorageError> {
    let mut candidates = Vec::new();
    for entry in snapshots.scan_prefix(format!("{}/", snapshot_prefix(stream))) {
        let (key, bytes) = entry?;
        let (_, seq) = parse_snapshot_key(&key)?;
        candidates.push((seq, bytes));
    }
    let capacity = spec.shard_capacity(shard);
    let mut rejected = 0;
    // Newest first; a state with no snapshot at all is the fresh shard, position 0.
    let fresh = ShardState::new(capacity, spec.is_seated());
    let mut tried: Vec<Result<ShardState, String>> = candidates
        .iter()
        .rev()
        .map(|(seq, bytes)| {
            let state = decode_snapshot(bytes)?;
            state.check()?;
            if state.events_applied() != *seq || state.capacity() != capacity {
                return Err("snapshot does not match its shard".into());
            }
            Ok(state)
        })
        .collect();
    tried.push(Ok(fresh));
    for candidate in tried {
        let mut state = match candidate {
            Ok(state) => state,
            Err(reason) => {
                rejected += 1;
                tracing::warn!(%stream, %reason, "damaged snapshot skipped, falling back to an older one");
                continue;
            }
        };
        let start = state.events_applied();
        let after: Vec<&(u64, ShardEvent)> = tail.iter().filter(|(seq, _)| *seq > start).collect();
        if after.first().is_some_and(|(seq, _)| *seq != start + 1) {
            tracing::warn!(%stream, snapshot_seq = start, "journal does not continue this snapshot");
            rejected += 1;
            continue;
        }
        for (seq, event) in &after {
            if *seq != state.events_applied() + 1 {
                return Err(StorageError::Unrecoverable(format!(
                    "{stream}: journal skips from event {} to {seq}",
                    state.events_applied()
                )));
            }
            state.apply(event);
        }
        state.check().map_err(|reason| {
            StorageError::Unrecoverable(format!(
                "{stream}: replayed state is inconsistent: {reason}"
            ))
        })?;
        let recovered = RecoveredShard {
            snapshot_seq: start,
            events_replayed: after.len() as u64,
            snapshots_rejected: rejected,
        };
        return Ok((state, recovered));
    }
    Err(StorageError::Unrecoverable(format!(
        "{stream}: no usable snapshot and the journal before them is gone"
    )))
}

/// The snapshot writer's loop: takes every queued snapshot, stores them with one flush, then truncates the journal;
/// asked only to send the payment records behind (`Job::Payments`), sends them.
fn write_snapshots(inner: &Inner, jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            if let Job::Snapshot(job) = job {
                batch.push(*job);
            }
            next = (batch.len() < SNAPSHOT_BATCH_MAX)
                .then(|| jobs.try_recv().ok())
                .flatten();
        }
        // Storing snapshots sends the payment records behind too; a nudge alone sends only them.
        inner.payments_nudged.store(false, Ordering::Release);
        if batch.is_empty() {
            if let Err(error) = inner.apply_payments_behind() {
                tracing::warn!(%error, "payment records not applied to sled yet; the journal keeps them");
            }
            continue;
        }
        let result = store_snapshots(inner, batch.iter().map(|job| &job.snapshot));
        if let Err(error) = &result {
            tracing::error!(%error, "snapshot write failed");
        }
        for job in batch {
            let _ = job.done.send(result.clone());
        }
    }
}

fn store_snapshots<'a>(
    inner: &Inner,
    snapshots: impl Iterator<Item = &'a ShardSnapshot>,
) -> Result<(), JournalError> {
    let _copying = inner.copying.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let sled_error = |error: sled::Error| JournalError(format!("sled: {error}"));
    let mut oldest_kept = Vec::new();
    for snapshot in snapshots {
        let stream = shard_stream(&snapshot.concert_id.0, snapshot.shard);
        let seq = snapshot.state.events_applied();
        let prefix = format!("{}/", snapshot_prefix(&stream));
        let newest = inner
            .trees
            .snapshots
            .scan_prefix(&prefix)
            .keys()
            .next_back()
            .transpose()
            .map_err(sled_error)?;
        if let Some(newest) = newest
            && parse_snapshot_key(&newest).is_ok_and(|(_, newest_seq)| newest_seq >= seq)
        {
            continue;
        }
        let bytes = encode_snapshot(&snapshot.state);
        metrics::histogram!("boxoffice_snapshot_bytes").record(bytes.len() as f64);
        inner
            .trees
            .snapshots
            .insert(snapshot_key(&stream, seq), bytes)
            .map_err(sled_error)?;
        let keys: Vec<sled::IVec> = inner
            .trees
            .snapshots
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_error)?;
        let excess = keys.len().saturating_sub(SNAPSHOTS_KEPT);
        for key in &keys[..excess] {
            inner.trees.snapshots.remove(key).map_err(sled_error)?;
        }
        if let Some(oldest) = keys.get(excess)
            && let Ok((_, oldest_seq)) = parse_snapshot_key(oldest)
        {
            oldest_kept.push((stream, oldest_seq));
        }
    }
    // Every node-wide record up to this number is in sled now (the payment records once applied below, taken
    // under the same lock); the flush makes them durable there.
    let meta_seq = inner.apply_payments_behind().map_err(sled_error)?;
    inner
        .trees
        .meta
        .insert(META_SEQ_KEY, &meta_seq.to_le_bytes())
        .map_err(sled_error)?;
    // Every ledger record up to this number is in the checkpoint once its barrier completes.
    let ledger_seq = *inner
        .ledger_seq
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let ledger_covered = inner
        .ledger_checkpoint
        .barrier()
        .blocking_recv()
        .map_err(|_| JournalError("ledger checkpoint stopped".into()))
        .and_then(|result| result);
    inner.db.flush().map_err(sled_error)?;
    sync_dir_files(&inner.db_dir).map_err(|error| JournalError(format!("fsync sled: {error}")))?;
    metrics::histogram!("boxoffice_snapshot_write_seconds").record(started.elapsed().as_secs_f64());
    let mut covered = inner.covered.lock().unwrap_or_else(PoisonError::into_inner);
    covered.insert(META_STREAM.to_owned(), meta_seq);
    match ledger_covered {
        Ok(()) => {
            covered.insert(LEDGER_STREAM.to_owned(), ledger_seq);
        }
        Err(error) => {
            tracing::warn!(%error, "the simulator's ledger checkpoint failed: the journal keeps its records")
        }
    }
    for (stream, seq) in oldest_kept {
        covered.insert(stream, seq);
    }
    match inner.log.truncate(|stream| covered.get(stream).copied()) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(segments = removed, "journal truncated behind the snapshots"),
        Err(error) => {
            tracing::warn!(%error, "journal truncation failed; it is retried after the next snapshot")
        }
    }
    Ok(())
}

/// Copies the regular files of `from` (a segment log's directory) into `to`, each synced, then `to` itself;
/// returns the bytes copied. A file being appended to is copied as far as it is written.
fn copy_dir_files(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut bytes = 0;
    if !from.exists() {
        return Ok(0);
    }
    // Listed once and copied in order: only the last segment can still be written while it is copied, and a
    // record cut short at its end is a torn tail, which opening the copy cuts.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.file_name());
        }
    }
    files.sort();
    for name in files {
        let target = to.join(&name);
        bytes += std::fs::copy(from.join(&name), &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(to)?.sync_all()?;
    Ok(bytes)
}

/// `fsync`s every file sled keeps under `dir`, its subdirectories included, and each directory: sled's own flush
/// does not reach the disk itself, and it writes every page over about 128 KiB (a snapshot of more than about a
/// thousand seats) to a file of its own in `blobs/` that it never syncs.
/// sled removes blobs it no longer needs while this runs: a file gone between listing and opening is skipped.
fn sync_dir_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let synced = entry.file_type().and_then(|kind| {
            if kind.is_file() {
                std::fs::File::open(entry.path())?.sync_all()
            } else if kind.is_dir() {
                sync_dir_files(&entry.path())
            } else {
                Ok(())
            }
        });
        match synced {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(intent: Option<&str>) -> PaymentRecord {
        PaymentRecord {
            payment_method: "pm_1".into(),
            amount_cents: 1500,
            intent_id: intent.map(str::to_owned),
        }
    }

    fn behind() -> PaymentsBehind {
        PaymentsBehind {
            changes: HashMap::new(),
            in_sled: HashSet::new(),
        }
    }

    #[test]
    fn an_order_that_ends_while_its_batch_is_on_the_way_is_removed_by_the_next() {
        let mut behind = behind();
        behind.record("o_1", Some(record(None)));
        behind.record("o_2", Some(record(None)));
        behind.record("o_2", None);
        let first = behind.take();
        assert_eq!(
            first.len(),
            1,
            "o_2 began and ended before the batch: sled never hears of it"
        );
        assert!(first["o_1"].is_some());
        // o_1 ends before sled has the first batch: its removal goes in the second.
        behind.record("o_1", None);
        let second = behind.take();
        assert_eq!(second.get("o_1"), Some(&None));
        assert!(behind.in_sled.is_empty());
    }

    #[test]
    fn a_refused_batch_goes_back_under_what_was_recorded_since() {
        let mut behind = behind();
        behind.record("o_1", Some(record(None)));
        behind.record("o_2", Some(record(None)));
        behind.record("o_3", Some(record(None)));
        let refused = behind.take();
        // While the batch was on its way: o_1 got its intent, o_2 ended, o_3 nothing.
        behind.record("o_1", Some(record(Some("pi_1"))));
        behind.record("o_2", None);
        behind.put_back(refused);
        let retried = behind.take();
        assert_eq!(retried.len(), 3);
        assert_eq!(
            retried["o_1"],
            Some(record(Some("pi_1"))),
            "the newer record wins"
        );
        assert_eq!(
            retried["o_2"], None,
            "the end is kept, not the refused insert"
        );
        assert_eq!(
            retried["o_3"],
            Some(record(None)),
            "an untouched change comes back"
        );
    }

    #[test]
    fn a_refused_removal_stays_due_whatever_the_order_records_next() {
        let mut behind = behind();
        behind.in_sled.insert("o_1".into());
        behind.record("o_1", None);
        let refused = behind.take();
        assert!(!behind.in_sled.contains("o_1"));
        behind.put_back(refused);
        assert!(
            behind.in_sled.contains("o_1"),
            "sled still holds its record"
        );
        // Ended again (a recovery's second resolution): the removal must not be dropped as never in sled.
        behind.record("o_1", None);
        assert_eq!(behind.take().get("o_1"), Some(&None));
    }

    #[test]
    fn a_full_map_goes_to_sled_on_the_snapshot_writer_without_a_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StorageOptions {
            sync: false,
            ..StorageOptions::default()
        };
        let (storage, _) = Storage::open(dir.path(), options).expect("open");
        for order in 0..PAYMENTS_BEHIND_MAX {
            drop(storage.append_meta(MetaRecord::Payment {
                order_id: format!("o_{order}"),
                record: Some(record(None)),
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while storage.inner.trees.payments.len() < PAYMENTS_BEHIND_MAX {
            assert!(
                Instant::now() < deadline,
                "the snapshot writer never sent them"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            storage
                .inner
                .payments_behind
                .lock()
                .expect("lock")
                .changes
                .is_empty()
        );
        assert!(!storage.inner.payments_nudged.load(Ordering::Acquire));
        storage.close();
    }
}

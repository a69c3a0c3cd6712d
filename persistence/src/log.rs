//! The append-only segment log: durable storage of opaque records, written by one thread with group commit.
//!
//! It owns the segment files of one directory ([`LogConfig::dir`]), the writer thread that appends to the newest of
//! them, and the deletion of old segments once the caller no longer needs them. It knows nothing of what a payload
//! means: the caller (the journal) encodes each record, puts the record's stream and sequence number inside it, and
//! tells the log those two on [`LogWriter::append`] and, when reading back, from the `visit` callback of [`open`].
//! The log uses them only to decide which segments [`LogWriter::truncate`] may delete.
//!
//! # Format
//!
//! Segment files are named `segment-{index:020}.log` and read in index order. Each starts with an 8-byte header:
//! the magic `BOXJ`, the format version ([`FORMAT_VERSION`]) as a u16 LE, and two zero bytes. Records follow, each
//! framed as `len: u32 LE` (1..=[`RECORD_BYTES_MAX`]), `crc: u32 LE` (CRC-32 of the payload), then the payload.
//! A file is never appended to once the writer has moved past it: [`open`] always starts a new segment, so a
//! restart never writes next to bytes that a crash may have left half written.
//!
//! While a segment is written, zeros follow its last record ([`ZERO_AHEAD_BYTES`]): the writer writes them ahead
//! so that a batch overwrites blocks the file already has instead of growing it, which makes its sync cheaper. An
//! all-zero frame header (no record has length 0) followed by nothing but zeros ends the records; closing cuts
//! the zeros, and so does [`open`] in the newest segment after a crash.
//!
//! # Recovery
//!
//! A crash can leave the newest segment ending in a torn record. [`open`] reads every record and stops at the first
//! bad one (cut short, length out of bounds, checksum mismatch, a payload the caller cannot decode, or bytes other
//! than zeros after the zeros that end the records, which a batch written in part leaves). In the newest
//! segment that is a torn tail: the file is cut there and the cut is reported. In any older segment it cannot be a
//! crash, since every batch is synced before the writer moves on to another segment, so it is corruption and
//! `open` fails.
//!
//! # Writer and group commit
//!
//! Who sends: [`LogWriter::append`], from any thread (the journal, on behalf of the shard actors). The queue holds
//! [`LogConfig::queue_max`] records; when it is full, `append` blocks until the writer has made room. That is the
//! disk's backpressure: appenders slow down to what the disk can make durable instead of piling records up.
//!
//! Why group commit: an `fdatasync` costs about as much for one 100-byte record as for thousands (FACTS.md: 4.6k
//! durable appends per second with a sync each). So the writer blocks for the first queued record, takes whatever
//! else is already queued (up to `BATCH_BYTES_MAX`), writes the batch with one `write`, makes it durable with one
//! `fdatasync`, and only then answers every appender of the batch. The more appenders wait, the bigger the batches,
//! and the fewer syncs each record pays for. A log that nobody waits on record by record (the payment simulator's
//! checkpoint) syncs only for a barrier, a full segment and close instead ([`SyncPolicy::AtBarriers`]).
//!
//! A failed write or sync poisons the writer: after a failed `fsync` the kernel may have dropped the dirty pages, so
//! no later write could honestly be called durable. Every later append fails at once; restarting reopens the log and
//! cuts whatever the failure left half written.

use engine::journal::JournalError;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

#[cfg(test)]
mod tests;

/// Names the stream a record belongs to, e.g. `c_abc/3` for shard 3 of a concert, or `meta`.
pub type StreamId = Arc<str>;

/// The writer moves to a new segment once the current one holds this many bytes; a segment may exceed it by the
/// last batch written to it, since rotation happens between batches.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Records queued for the writer; when the queue is full, [`LogWriter::append`] blocks (disk backpressure).
pub const QUEUE_MAX: usize = 65_536;
/// The writer keeps at least this many bytes of zeros written ahead of its records in the active segment (up to
/// [`LogConfig::segment_bytes_max`]), refilling to twice as many; a batch's sync makes the zeros written with it
/// durable. A batch then lands in blocks the file already has, so its `fdatasync` writes the data and flushes, and
/// skips the inode and allocation updates a growing file needs: on the reference machine's ext4 about 40% less
/// CPU and time per sync (3 KB batches: 83-85 µs against 142-143 µs of CPU, 198-209 µs against 337-342 µs;
/// `scripts/fsync-cost.py`).
pub const ZERO_AHEAD_BYTES: u64 = 1 << 20;
/// The largest payload of one record; a length field above it on disk marks a torn or corrupt record.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// The version written in every segment header; a segment with another version is not read.
pub const FORMAT_VERSION: u16 = 1;

/// The writer stops taking queued records into a batch once the batch holds this many bytes, which bounds its
/// buffer and how long one write keeps the batch's first appender waiting.
const BATCH_BYTES_MAX: usize = 8 << 20;
const SEGMENT_MAGIC: [u8; 4] = *b"BOXJ";
const SEGMENT_HEADER_BYTES: u64 = 8;
/// `len` and `crc`, before each payload.
const FRAME_HEADER_BYTES: usize = 8;

const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_HEADER_BYTES + RECORD_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_HEADER_BYTES < SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_MAGIC.len() + 2 + 2 == SEGMENT_HEADER_BYTES as usize);

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The directory of the segment files (e.g. `DATA/journal`); created if missing.
    pub dir: PathBuf,
    /// Rotate to a new segment once the current one reaches this many bytes.
    pub segment_bytes_max: u64,
    /// Bound of the writer's queue; [`LogWriter::append`] blocks when it is full (disk backpressure).
    pub queue_max: usize,
    /// When the writer calls `fdatasync`, and so what an answered append means.
    pub sync: SyncPolicy,
}

/// When a log's writer makes what it wrote durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// One `fdatasync` per batch before its appenders are answered: an answered append is durable.
    EveryBatch,
    /// Batches are written without a sync and their appenders answered once written (a process crash keeps them, a
    /// power loss may not); the writer syncs before it answers a barrier, before it leaves a full segment and when
    /// it closes. For a log nobody waits on record by record, whose records another log also holds until a barrier
    /// says they are durable here (the payment simulator's checkpoint): one sync per barrier instead of per batch.
    AtBarriers,
    /// Never: a commit means "handed to the kernel" (benchmarks of the CPU cost only).
    Never,
}

impl LogConfig {
    /// The production settings for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX,
            queue_max: QUEUE_MAX,
            sync: SyncPolicy::EveryBatch,
        }
    }
}

/// What reading the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Segment files kept (a last segment without a valid header is removed and not counted).
    pub segments: usize,
    /// Records read and passed to `visit`.
    pub records: u64,
    /// Bytes of the segments kept, headers included, after any cut.
    pub bytes: u64,
    pub torn_tail: Option<TornTail>,
}

/// The end of the last segment, cut off because it held a bad record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the first bad record began, and so the segment's length now; 0 means the header itself was bad or cut
    /// short, and the file, which held no record, was removed.
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files, the one being written included.
    pub segments: usize,
    pub bytes: u64,
    /// Records this writer has written (and synced, with `sync`) since [`open`].
    pub records_appended: u64,
    pub batches: u64,
    /// `fdatasync`s of the segment being written, since [`open`].
    pub syncs: u64,
}

type Done = oneshot::Sender<Result<(), JournalError>>;

/// Reads every record of every segment in order, calling `visit(payload)` which returns the (stream, seq) of the
/// record, or an error string if the payload does not decode (treated like a checksum failure).
///
/// A bad record (cut short, length outside 1..=[`RECORD_BYTES_MAX`], checksum mismatch, undecodable) ends the log
/// there: in the last segment the tail from that record on is cut (the file truncated and synced) and reported in
/// [`ReadReport::torn_tail`]; in an earlier segment it is corruption, and the error (`InvalidData`) names the file
/// and offset. Returns the writer, appending to a new segment after the last one, together with the report.
pub fn open(
    config: LogConfig,
    mut visit: impl FnMut(&[u8]) -> Result<(StreamId, u64), String>,
) -> io::Result<(LogWriter, ReadReport)> {
    fs::create_dir_all(&config.dir)?;
    let indexes = segment_indexes(&config.dir)?;
    let mut report = ReadReport::default();
    let mut closed = Vec::with_capacity(indexes.len());
    for (position, &index) in indexes.iter().enumerate() {
        let path = segment_path(&config.dir, index);
        let last = position + 1 == indexes.len();
        let scan = scan_segment(&path, &mut visit)?;
        report.records += scan.records;
        if let Some(bad) = scan.bad {
            // A bad header with bytes after it means records we cannot read, even in the last segment.
            let records_lost =
                bad.offset == 0 && scan.file_bytes > SEGMENT_HEADER_BYTES && !scan.zeros_after;
            if !last || records_lost {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt journal segment {} at offset {}: {}",
                        path.display(),
                        bad.offset,
                        bad.reason
                    ),
                ));
            }
            cut_tail(&config.dir, &path, bad.offset)?;
            tracing::warn!(
                segment = %path.display(),
                offset = bad.offset,
                bytes_cut = scan.file_bytes - bad.offset,
                reason = %bad.reason,
                "journal torn tail cut"
            );
            report.torn_tail = Some(TornTail {
                segment: path.clone(),
                offset: bad.offset,
                bytes_cut: scan.file_bytes - bad.offset,
                reason: bad.reason,
            });
            if bad.offset == 0 {
                continue;
            }
        }
        if scan.zeros_after && last {
            // Left by a crash of a writer that had zeros ahead of its records: the records end there.
            cut_tail(&config.dir, &path, scan.bytes_valid)?;
            tracing::info!(
                segment = %path.display(),
                offset = scan.bytes_valid,
                bytes_cut = scan.file_bytes - scan.bytes_valid,
                "zeros written ahead of the journal's records cut"
            );
        }
        report.segments += 1;
        report.bytes += scan.bytes_valid;
        closed.push(ClosedSegment {
            path,
            bytes: scan.bytes_valid,
            seqs_max: scan.seqs_max,
        });
    }
    let next_index = indexes.last().map_or(0, |index| index + 1);
    let active = ActiveSegment::create(&config.dir, next_index, config.segment_bytes_max)?;
    let writer = LogWriter::start(&config, closed, active)?;
    Ok((writer, report))
}

/// Appends records to the log through its writer thread. Clones share the writer; dropping the last one closes it.
#[derive(Clone, Debug)]
pub struct LogWriter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    queue: SyncSender<Item>,
    /// The writer thread until [`LogWriter::close`] has joined it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread and the handles share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// The segments before the one being written, oldest first. The writer locks it only to add the segment it
    /// rotates away from, so truncate may hold it while deleting files.
    closed: Mutex<Vec<ClosedSegment>>,
    active_bytes: AtomicU64,
    /// Records handed to the queue and not yet taken by the writer; approximate, for the gauge.
    queue_depth: AtomicU64,
    records_appended: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    /// Why the writer stopped writing, once a write or sync has failed.
    poison: OnceLock<String>,
}

#[derive(Debug)]
enum Item {
    Record {
        stream: StreamId,
        seq: u64,
        crc: u32,
        payload: Vec<u8>,
        done: Done,
    },
    /// Completes once every record queued before it is durable.
    Barrier { done: Done },
    /// Queued by `close` behind every record already queued.
    Stop,
}

impl LogWriter {
    fn start(
        config: &LogConfig,
        closed: Vec<ClosedSegment>,
        active: ActiveSegment,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            closed: Mutex::new(closed),
            active_bytes: AtomicU64::new(active.bytes),
            queue_depth: AtomicU64::new(0),
            records_appended: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            poison: OnceLock::new(),
        });
        let (queue, queued) = mpsc::sync_channel(config.queue_max);
        let writer = Writer {
            shared: Arc::clone(&shared),
            segment_bytes_max: config.segment_bytes_max,
            sync: config.sync,
            unsynced: false,
            active,
            batch: Vec::new(),
            waiting: Vec::new(),
            barriers: Vec::new(),
            batch_records: metrics::histogram!("boxoffice_journal_batch_records"),
            sync_seconds: metrics::histogram!("boxoffice_journal_sync_seconds"),
            queue_depth: metrics::gauge!("boxoffice_journal_queue_depth"),
        };
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(queued))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                queue,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Queues one record; the returned receiver completes once the record is durable (after its batch's
    /// `fdatasync`), or with `Err` if it is not known to be: empty or over [`RECORD_BYTES_MAX`], the write or sync
    /// failed, or the log is closed. A receiver whose sender is dropped (a writer that stopped without answering)
    /// means the same as `Err`. After a failed write or sync the record may still be read back on reopen, so the
    /// caller must expect records it was told failed. Never waits for the disk, except when the queue is full
    /// (disk backpressure).
    pub fn append(
        &self,
        stream: StreamId,
        seq: u64,
        payload: Vec<u8>,
    ) -> oneshot::Receiver<Result<(), JournalError>> {
        let (done, receiver) = oneshot::channel();
        let shared = &self.inner.shared;
        if let Some(reason) = shared.poison.get() {
            fail(done, reason);
            return receiver;
        }
        if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
            let reason = format!(
                "record of {} bytes outside 1..={RECORD_BYTES_MAX}",
                payload.len()
            );
            fail(done, &reason);
            return receiver;
        }
        let crc = crc32fast::hash(&payload);
        shared.queue_depth.fetch_add(1, Ordering::Relaxed);
        let record = Item::Record {
            stream,
            seq,
            crc,
            payload,
            done,
        };
        if let Err(mpsc::SendError(record)) = self.inner.queue.send(record) {
            shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            record.fail("journal closed");
        }
        receiver
    }

    /// Completes once every record queued before it is durable (or with `Err` if one of them is not known to be);
    /// writes nothing itself.
    pub fn barrier(&self) -> oneshot::Receiver<Result<(), JournalError>> {
        let (done, receiver) = oneshot::channel();
        let shared = &self.inner.shared;
        if let Some(reason) = shared.poison.get() {
            fail(done, reason);
            return receiver;
        }
        shared.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(item)) = self.inner.queue.send(Item::Barrier { done }) {
            shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            item.fail("journal closed");
        }
        receiver
    }

    /// Deletes the oldest closed segments whose every record is covered: for each stream in the segment,
    /// `covered(stream)` returns `Some(s)` with `s` at least the segment's highest seq of that stream. Stops at the
    /// first segment that is not fully covered, so only a prefix goes, and never the segment being written. Returns
    /// how many were deleted, after syncing the directory.
    pub fn truncate(&self, covered: impl Fn(&str) -> Option<u64>) -> io::Result<usize> {
        let shared = &self.inner.shared;
        // Held across the deletions, which costs the writer nothing: it takes this lock only when it rotates.
        let mut closed = shared.closed.lock().expect("segment list lock");
        let covered_count = closed
            .iter()
            .take_while(|segment| segment.is_covered(&covered))
            .count();
        let mut deleted = 0;
        let removed = closed[..covered_count].iter().try_for_each(|segment| {
            fs::remove_file(&segment.path)?;
            deleted += 1;
            io::Result::Ok(())
        });
        closed.drain(..deleted);
        drop(closed);
        if deleted > 0 {
            sync_dir(&shared.dir)?;
            tracing::debug!(deleted, "journal segments deleted");
        }
        removed.map(|()| deleted)
    }

    pub fn stats(&self) -> LogStats {
        let shared = &self.inner.shared;
        let closed = shared.closed.lock().expect("segment list lock");
        LogStats {
            segments: closed.len() + 1,
            bytes: closed.iter().map(|segment| segment.bytes).sum::<u64>()
                + shared.active_bytes.load(Ordering::Relaxed),
            records_appended: shared.records_appended.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer once everything queued before is written and synced, and joins its thread. Idempotent; the
    /// last clone does it when dropped. Appends after it fail.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        // Also reached from `drop`, which must not panic: a poisoned lock still holds a valid `Option`.
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = thread.take() else {
            return;
        };
        // Fails only if the writer is gone already, which `join` then reports.
        let _ = self.queue.send(Item::Stop);
        if thread.join().is_err() {
            tracing::error!("journal writer panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Item {
    fn fail(self, reason: &str) {
        match self {
            Item::Record { done, .. } | Item::Barrier { done } => fail(done, reason),
            Item::Stop => {}
        }
    }
}

/// Answers an appender with `Err`; one that stopped waiting needs no answer.
fn fail(done: Done, reason: &str) {
    let _ = done.send(Err(JournalError(reason.to_owned())));
}

/// A segment the writer has moved past (or found by `open`), with the highest seq of each stream in it.
#[derive(Debug)]
struct ClosedSegment {
    path: PathBuf,
    bytes: u64,
    seqs_max: HashMap<StreamId, u64>,
}

impl ClosedSegment {
    fn is_covered(&self, covered: &impl Fn(&str) -> Option<u64>) -> bool {
        self.seqs_max
            .iter()
            .all(|(stream, &seq_max)| covered(stream).is_some_and(|seq| seq >= seq_max))
    }
}

/// The segment the writer appends to.
#[derive(Debug)]
struct ActiveSegment {
    index: u64,
    path: PathBuf,
    file: File,
    /// Where the records written so far end (the next batch's offset).
    bytes: u64,
    /// The file's length: the records, then zeros written ahead of them ([`ZERO_AHEAD_BYTES`]).
    zeroed: u64,
    seqs_max: HashMap<StreamId, u64>,
}

impl ActiveSegment {
    /// Creates segment `index` with its header, makes both the header and the file's existence durable, so that a
    /// crash never leaves a segment that `open` would take for a corrupt older one, then writes the first zeros
    /// ahead.
    fn create(dir: &Path, index: u64, segment_bytes_max: u64) -> io::Result<Self> {
        let path = segment_path(dir, index);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(&segment_header())?;
        file.sync_data()?;
        sync_dir(dir)?;
        let mut segment = Self {
            index,
            path,
            file,
            bytes: SEGMENT_HEADER_BYTES,
            zeroed: SEGMENT_HEADER_BYTES,
            seqs_max: HashMap::new(),
        };
        // Behind the durable header, so that a crash never leaves zeros where the header should be; the first
        // batch's sync makes them durable.
        segment.zero_ahead(segment_bytes_max)?;
        Ok(segment)
    }

    /// After a batch: once fewer than [`ZERO_AHEAD_BYTES`] of zeros are left after the records, writes zeros up to
    /// twice that ahead of them (never past `segment_bytes_max`), for the next batches to overwrite. The caller's
    /// next sync makes them durable together with the batch. A crash leaves the zeros after the last record, which
    /// [`open`] reads as the end of the records and cuts.
    fn zero_ahead(&mut self, segment_bytes_max: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        self.zeroed = self.zeroed.max(self.bytes);
        let target = (self.bytes + 2 * ZERO_AHEAD_BYTES).min(segment_bytes_max);
        if self.zeroed - self.bytes >= ZERO_AHEAD_BYTES || self.zeroed >= target {
            return Ok(());
        }
        while self.zeroed < target {
            let chunk = (target - self.zeroed).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..chunk], self.zeroed)?;
            self.zeroed += chunk as u64;
        }
        Ok(())
    }

    /// At close: cuts the zeros after the last record, so that a segment the writer has left ends with its last
    /// record, as one written before zeros ahead did. Not synced: zeros left by a crash read the same.
    fn trim(&mut self) -> io::Result<()> {
        if self.zeroed > self.bytes {
            self.file.set_len(self.bytes)?;
            self.zeroed = self.bytes;
        }
        Ok(())
    }

    fn into_closed(self) -> ClosedSegment {
        ClosedSegment {
            path: self.path,
            bytes: self.bytes,
            seqs_max: self.seqs_max,
        }
    }
}

/// An appender of the batch being built, with its record's stream and seq for the segment it lands in.
struct Waiting {
    stream: StreamId,
    seq: u64,
    done: Done,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    segment_bytes_max: u64,
    sync: SyncPolicy,
    /// With [`SyncPolicy::AtBarriers`]: the active segment holds writes not yet synced.
    unsynced: bool,
    active: ActiveSegment,
    /// The frames of the batch being built; reused from batch to batch.
    batch: Vec<u8>,
    /// The appenders of the batch being built.
    waiting: Vec<Waiting>,
    /// Barriers queued with the batch being built.
    barriers: Vec<Done>,
    batch_records: metrics::Histogram,
    sync_seconds: metrics::Histogram,
    queue_depth: metrics::Gauge,
}

impl Writer {
    fn run(mut self, queued: Receiver<Item>) {
        // Every handle gone without `close` is impossible (the last one closes on drop), but it ends the loop too.
        while let Ok(first) = queued.recv() {
            let mut stopping = self.take(first);
            while !stopping && self.batch.len() < BATCH_BYTES_MAX {
                match queued.try_recv() {
                    Ok(item) => stopping = self.take(item),
                    Err(_) => break,
                }
            }
            self.queue_depth
                .set(self.shared.queue_depth.load(Ordering::Relaxed) as f64);
            self.commit();
            if stopping {
                break;
            }
        }
        if let Err(error) = self.sync_unsynced() {
            self.poison(&error);
        }
        if let Err(error) = self.active.trim() {
            tracing::warn!(segment = %self.active.path.display(), %error, "zeros after the last record not cut");
        }
        // Appends that raced with `close` and queued behind its stop.
        while let Ok(item) = queued.try_recv() {
            self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            item.fail("journal closed");
        }
    }

    /// Adds a record to the batch, or fails it at once if the writer is poisoned; returns whether `item` asks the
    /// writer to stop.
    fn take(&mut self, item: Item) -> bool {
        let (stream, seq, crc, payload, done) = match item {
            Item::Record {
                stream,
                seq,
                crc,
                payload,
                done,
            } => (stream, seq, crc, payload, done),
            Item::Barrier { done } => {
                self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                match self.shared.poison.get() {
                    Some(reason) => fail(done, reason),
                    None => self.barriers.push(done),
                }
                return false;
            }
            Item::Stop => return true,
        };
        self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if let Some(reason) = self.shared.poison.get() {
            fail(done, reason);
            return false;
        }
        debug_assert!((1..=RECORD_BYTES_MAX).contains(&payload.len()));
        self.batch
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.batch.extend_from_slice(&crc.to_le_bytes());
        self.batch.extend_from_slice(&payload);
        self.waiting.push(Waiting { stream, seq, done });
        false
    }

    /// Writes and syncs the batch, in a new segment if the current one is full, then answers its appenders and
    /// the barriers queued with it (every record before a barrier is in this batch or an earlier one).
    fn commit(&mut self) {
        if self.waiting.is_empty() {
            let synced = if self.barriers.is_empty() {
                Ok(())
            } else {
                self.sync_unsynced()
            };
            match synced {
                Ok(()) => {
                    for done in self.barriers.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(error) => self.poison_barriers(&error),
            }
            return;
        }
        let records = self.waiting.len();
        match self.rotate_if_full().and_then(|()| self.write_batch()) {
            Ok(()) => {
                self.shared
                    .records_appended
                    .fetch_add(records as u64, Ordering::Relaxed);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                self.batch_records.record(records as f64);
                // Only now is it known which segment the batch is in: the one after any rotation.
                for Waiting { stream, seq, done } in self.waiting.drain(..) {
                    let seq_max = self.active.seqs_max.entry(stream).or_insert(seq);
                    *seq_max = (*seq_max).max(seq);
                    let _ = done.send(Ok(()));
                }
                for done in self.barriers.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                self.poison(&error);
                let reason = self.shared.poison.get().expect("poisoned just above");
                for waiting in self.waiting.drain(..) {
                    fail(waiting.done, reason);
                }
                for done in self.barriers.drain(..) {
                    fail(done, reason);
                }
            }
        }
        self.batch.clear();
    }

    /// After a failed sync with nothing in the batch: poisons the writer and fails the waiting barriers.
    fn poison_barriers(&mut self, error: &io::Error) {
        self.poison(error);
        let reason = self.shared.poison.get().expect("poisoned just above");
        for done in self.barriers.drain(..) {
            fail(done, reason);
        }
    }

    /// With [`SyncPolicy::AtBarriers`], syncs what was written to the active segment since its last sync.
    fn sync_unsynced(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.sync_active()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> io::Result<()> {
        let started = Instant::now();
        self.active.file.sync_data()?;
        self.sync_seconds.record(started.elapsed().as_secs_f64());
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write_batch(&mut self) -> io::Result<()> {
        self.active.file.write_all(&self.batch)?;
        self.active.bytes += self.batch.len() as u64;
        self.active.zero_ahead(self.segment_bytes_max)?;
        match self.sync {
            SyncPolicy::EveryBatch => self.sync_active()?,
            SyncPolicy::AtBarriers if !self.barriers.is_empty() => {
                self.sync_active()?;
                self.unsynced = false;
            }
            SyncPolicy::AtBarriers => self.unsynced = true,
            SyncPolicy::Never => {}
        }
        self.shared
            .active_bytes
            .store(self.active.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Rotates before writing rather than after, so that once an append is answered, the segments are what its
    /// batch left (and closing never leaves an empty segment behind).
    fn rotate_if_full(&mut self) -> io::Result<()> {
        if self.active.bytes < self.segment_bytes_max {
            return Ok(());
        }
        // A closed segment is never written again: what it holds is synced before the writer leaves it.
        self.sync_unsynced()?;
        let next = ActiveSegment::create(
            &self.shared.dir,
            self.active.index + 1,
            self.segment_bytes_max,
        )?;
        let full = std::mem::replace(&mut self.active, next);
        let mut closed = self.shared.closed.lock().expect("segment list lock");
        closed.push(full.into_closed());
        self.shared
            .active_bytes
            .store(self.active.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Stops all further writing: nothing written after a failed write or sync could be promised durable.
    fn poison(&self, error: &io::Error) {
        tracing::error!(
            segment = %self.active.path.display(),
            %error,
            "journal write failed, every later append fails"
        );
        let reason = format!("{}: {error}", self.active.path.display());
        let _ = self.shared.poison.set(reason);
    }
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("segment-{index:020}.log"))
}

/// The index of a segment file's name; `None` for any other file, which the log leaves alone.
fn segment_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The indexes of the segment files in `dir`, in order.
fn segment_indexes(dir: &Path) -> io::Result<Vec<u64>> {
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(index) = entry?.file_name().to_str().and_then(segment_index) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

fn segment_header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    header[..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Makes the creation or removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Cuts the last segment at `offset`; at 0 there is no valid header to keep, so the file goes.
fn cut_tail(dir: &Path, path: &Path, offset: u64) -> io::Result<()> {
    if offset == 0 {
        fs::remove_file(path)?;
        return sync_dir(dir);
    }
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(offset)?;
    file.sync_all()
}

/// What reading one segment found.
struct Scan {
    records: u64,
    /// Where the intact records end.
    bytes_valid: u64,
    file_bytes: u64,
    seqs_max: HashMap<StreamId, u64>,
    bad: Option<BadRecord>,
    /// The records end in zeros to the end of the file (the zeros written ahead of them).
    zeros_after: bool,
}

struct BadRecord {
    offset: u64,
    reason: String,
}

/// One step of reading a segment's records.
enum Frame {
    /// The file ends cleanly here.
    End,
    /// Zeros where the next frame would start: the zeros the writer keeps ahead of its records, if nothing but
    /// zeros follows to the end of the file.
    Zeros,
    /// A payload whose length and checksum are right is in the buffer.
    Record,
    Bad(String),
}

/// Reads the records of one segment, passing each to `visit`, until the end or the first bad record.
fn scan_segment(
    path: &Path,
    visit: &mut impl FnMut(&[u8]) -> Result<(StreamId, u64), String>,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_bytes = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        records: 0,
        bytes_valid: 0,
        file_bytes,
        seqs_max: HashMap::new(),
        bad: None,
        zeros_after: false,
    };
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    let header_read = read_up_to(&mut reader, &mut header)?;
    if header_read < header.len() {
        scan.bad = Some(BadRecord {
            offset: 0,
            reason: format!("header cut short at {header_read} bytes"),
        });
        return Ok(scan);
    }
    if header != segment_header() {
        // Zeros throughout: a segment whose header never reached the disk, with no record after it.
        scan.zeros_after = header.iter().all(|&byte| byte == 0) && only_zeros(&mut reader)?;
        scan.bad = Some(BadRecord {
            offset: 0,
            reason: format!(
                "header {header:02x?} is not a version {FORMAT_VERSION} segment header"
            ),
        });
        return Ok(scan);
    }
    scan.bytes_valid = SEGMENT_HEADER_BYTES;
    let mut payload = Vec::new();
    loop {
        let reason = match read_frame(&mut reader, &mut payload)? {
            Frame::End => break,
            Frame::Zeros if only_zeros(&mut reader)? => {
                scan.zeros_after = true;
                break;
            }
            Frame::Zeros => "bytes after the zeros that end the records".into(),
            Frame::Bad(reason) => reason,
            Frame::Record => match visit(&payload) {
                Ok((stream, seq)) => {
                    let seq_max = scan.seqs_max.entry(stream).or_insert(seq);
                    *seq_max = (*seq_max).max(seq);
                    scan.records += 1;
                    scan.bytes_valid += (FRAME_HEADER_BYTES + payload.len()) as u64;
                    continue;
                }
                Err(error) => format!("undecodable record: {error}"),
            },
        };
        scan.bad = Some(BadRecord {
            offset: scan.bytes_valid,
            reason,
        });
        break;
    }
    Ok(scan)
}

/// Reads the next frame's payload into `payload` and checks its length and checksum.
fn read_frame(reader: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let mut frame_header = [0; FRAME_HEADER_BYTES];
    let header_read = read_up_to(reader, &mut frame_header)?;
    if header_read == 0 {
        return Ok(Frame::End);
    }
    if frame_header[..header_read].iter().all(|&byte| byte == 0) {
        return Ok(Frame::Zeros);
    }
    if header_read < FRAME_HEADER_BYTES {
        return Ok(Frame::Bad(format!(
            "record header cut short at {header_read} bytes"
        )));
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = frame_header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(1..=RECORD_BYTES_MAX).contains(&len) {
        return Ok(Frame::Bad(format!(
            "record length {len} outside 1..={RECORD_BYTES_MAX}"
        )));
    }
    payload.resize(len, 0);
    let payload_read = read_up_to(reader, payload)?;
    if payload_read < len {
        return Ok(Frame::Bad(format!(
            "record cut short at {payload_read} of {len} bytes"
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Ok(Frame::Bad("record checksum mismatch".into()));
    }
    Ok(Frame::Record)
}

/// Whether `reader` holds nothing but zeros from here to its end.
fn only_zeros(reader: &mut impl Read) -> io::Result<bool> {
    let mut buffer = [0; 64 << 10];
    loop {
        let read = read_up_to(reader, &mut buffer)?;
        if buffer[..read].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        if read < buffer.len() {
            return Ok(true);
        }
    }
}

/// Fills `buffer` unless the reader ends first; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

//! Tests of the segment log against real files in temporary directories: round trips, rotation, torn tails (one
//! [`check_torn_tail`] per kind of damage), corruption (one [`check_corruption`] per kind), truncation, a failed
//! write, and property tests that cut the last segment anywhere and truncate at any covered seqs.
//!
//! A test payload is `stream|seq|` padded with dots, so [`decode`] plays the journal's part of reading back the
//! stream and seq of each record.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;

/// Streams the tests spread their records over.
const STREAMS: [&str; 3] = ["c_a/0", "c_a/1", "meta"];
/// Small enough that every batch of at least one test record fills a segment, so each batch gets its own.
const SEGMENT_PER_BATCH_BYTES_MAX: u64 = 16;

/// One record as the tests write it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    stream: StreamId,
    seq: u64,
    payload: Vec<u8>,
}

impl Record {
    /// A record of at least `bytes` bytes (more if its stream and seq need more).
    fn new(stream: &str, seq: u64, bytes: usize) -> Self {
        let mut payload = format!("{stream}|{seq}|").into_bytes();
        payload.resize(payload.len().max(bytes), b'.');
        Self {
            stream: stream.into(),
            seq,
            payload,
        }
    }

    fn frame_bytes(&self) -> u64 {
        (FRAME_HEADER_BYTES + self.payload.len()) as u64
    }
}

/// `count` records of about `bytes` bytes, round-robin over [`STREAMS`], each stream's seqs from 1.
fn records(count: usize, bytes: usize) -> Vec<Record> {
    let mut seqs: BTreeMap<&str, u64> = BTreeMap::new();
    (0..count)
        .map(|index| {
            let stream = STREAMS[index % STREAMS.len()];
            let seq = seqs.entry(stream).or_default();
            *seq += 1;
            Record::new(stream, *seq, bytes)
        })
        .collect()
}

/// The journal's part: reads the stream and seq back out of a test payload.
fn decode(payload: &[u8]) -> Result<(StreamId, u64), String> {
    let text = std::str::from_utf8(payload).map_err(|error| error.to_string())?;
    let mut fields = text.splitn(3, '|');
    let stream = fields.next().ok_or("no stream")?;
    let seq = fields.next().ok_or("no seq")?;
    let seq = seq.parse().map_err(|_| format!("bad seq {seq:?}"))?;
    Ok((stream.into(), seq))
}

/// Opens the log and returns the writer, the report and the records read, in order.
fn open_and_read(config: &LogConfig) -> io::Result<(LogWriter, ReadReport, Vec<Record>)> {
    let mut read = Vec::new();
    let (log, report) = open(config.clone(), |payload| {
        let (stream, seq) = decode(payload)?;
        read.push(Record {
            stream: Arc::clone(&stream),
            seq,
            payload: payload.to_vec(),
        });
        Ok((stream, seq))
    })?;
    Ok((log, report, read))
}

/// Opens the log, closes it again, and returns the report and the records read.
fn read_back(config: &LogConfig) -> (ReadReport, Vec<Record>) {
    let (log, report, read) = open_and_read(config).expect("log opens");
    log.close();
    (report, read)
}

/// Appends `records` all at once and waits until every one is durable.
fn append_all(log: &LogWriter, records: &[Record]) {
    let commits: Vec<_> = records
        .iter()
        .map(|record| {
            log.append(
                Arc::clone(&record.stream),
                record.seq,
                record.payload.clone(),
            )
        })
        .collect();
    for commit in commits {
        commit
            .blocking_recv()
            .expect("the writer answers")
            .expect("the record is durable");
    }
}

/// Writes `records` in one session, `chunk` at a time, each chunk durable before the next is appended.
fn write_session(config: &LogConfig, records: &[Record], chunk: usize) {
    let (log, _, _) = open_and_read(config).expect("log opens");
    for batch in records.chunks(chunk) {
        append_all(&log, batch);
    }
    log.close();
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment_indexes(dir)
        .expect("dir lists")
        .into_iter()
        .map(|index| segment_path(dir, index))
        .collect()
}

fn file_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("file exists").len()
}

/// Applies `damage` to the file at `path`.
fn damage_file(path: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("file reads");
    damage(&mut bytes);
    fs::write(path, bytes).expect("file writes");
}

#[test]
fn records_from_several_threads_read_back_once_each_in_stream_order() {
    const THREADS: usize = 4;
    const RECORDS_PER_STREAM: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let (log, report, read) = open_and_read(&config).expect("log opens");
    assert_eq!((report, read), (ReadReport::default(), Vec::new()));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let log = log.clone();
            scope.spawn(move || {
                let streams = [format!("c_{thread}/0"), format!("c_{thread}/1")];
                let records: Vec<Record> = (1..=RECORDS_PER_STREAM)
                    .flat_map(|seq| {
                        streams
                            .iter()
                            .map(move |stream| Record::new(stream, seq, 40))
                    })
                    .collect();
                append_all(&log, &records);
            });
        }
    });
    let written = THREADS as u64 * 2 * RECORDS_PER_STREAM;
    let stats = log.stats();
    assert_eq!(stats.records_appended, written);
    assert!((1..=written).contains(&stats.batches), "{stats:?}");
    drop(log);

    let (report, read) = read_back(&config);
    assert_eq!(report.records, written);
    assert_eq!(report.segments, 1);
    assert_eq!(report.torn_tail, None);
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|path| file_bytes(path))
        .sum();
    assert_eq!(
        report.bytes + SEGMENT_HEADER_BYTES,
        on_disk,
        "and the segment read_back started"
    );
    assert_eq!(report.bytes, stats.bytes);
    let mut seqs: BTreeMap<StreamId, Vec<u64>> = BTreeMap::new();
    for record in read {
        seqs.entry(record.stream).or_default().push(record.seq);
    }
    assert_eq!(seqs.len(), THREADS * 2);
    for (stream, seqs) in seqs {
        assert_eq!(
            seqs,
            (1..=RECORDS_PER_STREAM).collect::<Vec<_>>(),
            "{stream}"
        );
    }
}

#[test]
fn rotation_spreads_records_over_segments_and_reads_them_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: SEGMENT_PER_BATCH_BYTES_MAX,
        ..LogConfig::new(dir.path())
    };
    let written = records(12, 30);
    let (log, _, _) = open_and_read(&config).expect("log opens");
    // One at a time, so that each is a batch of its own and fills a segment.
    for record in written.chunks(1) {
        append_all(&log, record);
    }
    let stats = log.stats();
    assert_eq!(stats.segments, written.len());
    assert_eq!(stats.batches, written.len() as u64);
    log.close();
    assert_eq!(segment_files(dir.path()).len(), stats.segments);

    let (report, read) = read_back(&config);
    assert_eq!(report.segments, stats.segments);
    assert_eq!(report.bytes, stats.bytes);
    assert_eq!(read, written);
}

/// Copies every segment of `from` into `to` as the files are now: what a crash at this moment leaves on disk of
/// what was synced (the page cache holds nothing more than the synced bytes once every append is answered).
fn copy_segments(from: &Path, to: &Path) {
    for segment in segment_files(from) {
        fs::copy(&segment, to.join(segment.file_name().expect("a file name")))
            .expect("segment copies");
    }
}

#[test]
fn zeros_ahead_of_the_records_are_cut_at_close_and_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let written = records(20, 100);
    let (log, _, _) = open_and_read(&config).expect("log opens");
    append_all(&log, &written);
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("one session writes one segment")
    };
    let records_end = SEGMENT_HEADER_BYTES + written.iter().map(Record::frame_bytes).sum::<u64>();
    let ahead = file_bytes(segment) - records_end;
    assert!(
        (ZERO_AHEAD_BYTES..=2 * ZERO_AHEAD_BYTES).contains(&ahead),
        "the writer keeps zeros ahead of its records: {ahead} bytes"
    );
    // A crash now: the copy keeps the zeros.
    let crashed = tempfile::tempdir().expect("tempdir");
    copy_segments(dir.path(), crashed.path());
    log.close();
    assert_eq!(file_bytes(segment), records_end, "close cuts the zeros");
    let (report, read) = read_back(&config);
    assert_eq!((report.torn_tail, read), (None, written.clone()));

    let crashed_config = LogConfig::new(crashed.path());
    let (log, report, read) = open_and_read(&crashed_config).expect("zeros are not an error");
    assert_eq!(
        report.torn_tail, None,
        "zeros after the records are not a torn tail"
    );
    assert_eq!(read, written);
    let copied = crashed
        .path()
        .join(segment.file_name().expect("a file name"));
    assert_eq!(file_bytes(&copied), records_end, "opening cuts the zeros");
    let more = [Record::new("meta", 100, 20)];
    append_all(&log, &more);
    log.close();
    let (report, read) = read_back(&crashed_config);
    assert_eq!(report.torn_tail, None);
    assert_eq!(read, [&written[..], &more[..]].concat());
}

#[test]
fn zeros_ahead_are_refilled_as_records_overwrite_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let written = records(30, 100_000);
    let (log, _, _) = open_and_read(&config).expect("log opens");
    for batch in written.chunks(3) {
        append_all(&log, batch);
    }
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("3 MB of records fit one segment")
    };
    let records_end = SEGMENT_HEADER_BYTES + written.iter().map(Record::frame_bytes).sum::<u64>();
    assert!(
        records_end > 2 * ZERO_AHEAD_BYTES,
        "the records go past the first zeros"
    );
    let ahead = file_bytes(segment) - records_end;
    assert!(
        (ZERO_AHEAD_BYTES..=2 * ZERO_AHEAD_BYTES).contains(&ahead),
        "{ahead} bytes of zeros ahead"
    );
    log.close();
    let (_, read) = read_back(&config);
    assert_eq!(read, written);
}

#[test]
fn zeros_ahead_stop_at_the_segment_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: 4_096,
        ..LogConfig::new(dir.path())
    };
    let (log, _, _) = open_and_read(&config).expect("log opens");
    append_all(&log, &records(3, 100));
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("three small records fit one segment")
    };
    assert_eq!(file_bytes(segment), 4_096);
    log.close();
}

#[test]
fn a_newest_segment_of_zeros_left_by_a_crash_while_creating_it_is_not_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let written = records(3, 20);
    write_session(&config, &written, written.len());
    let next = segment_path(dir.path(), 1);

    // Its header and the first zeros ahead reached the disk, no record did.
    let mut header_and_zeros = segment_header().to_vec();
    header_and_zeros.resize(4_096, 0);
    fs::write(&next, &header_and_zeros).expect("file writes");
    let (log, report, read) = open_and_read(&config).expect("zeros are not an error");
    assert_eq!((report.torn_tail, read), (None, written.clone()));
    assert_eq!(file_bytes(&next), SEGMENT_HEADER_BYTES, "the zeros are cut");
    log.close();

    // Only its length reached the disk: zeros where the header should be.
    let zeros = segment_path(dir.path(), 3);
    fs::write(&zeros, [0; 4_096]).expect("file writes");
    let (log, report, read) = open_and_read(&config).expect("a segment of zeros holds no record");
    assert_eq!(read, written);
    let torn_tail = report.torn_tail.expect("the zeros are cut");
    assert_eq!((&torn_tail.segment, torn_tail.offset), (&zeros, 0));
    assert!(!zeros.exists());
    log.close();
    let (report, read) = read_back(&config);
    assert_eq!((report.torn_tail, read), (None, written));
}

/// What a batch written in part before a crash can leave: the zeros ahead where its first block was, and a later
/// block of it on disk.
fn zeros_then_garbage(bytes: &mut Vec<u8>) {
    bytes.extend_from_slice(&[0; 5_000]);
    bytes.extend_from_slice(b"\x07\x00\x00\x00garbage");
    bytes.extend_from_slice(&[0; 100]);
}

/// Damage done to the last segment before reopening it.
#[derive(Clone, Copy, Debug)]
enum Damage {
    CutInLastRecord,
    FlipLastPayloadByte,
    AppendGarbage,
    /// What a batch written in part leaves after the zeros ahead.
    ZerosThenGarbage,
}

/// Writes records into one segment, applies `damage` to it, and checks that reopening keeps exactly the intact
/// prefix, reports the cut where it happened, and leaves a file that later sessions read without complaint.
fn check_torn_tail(damage: Damage) {
    const GARBAGE: &[u8] = b"\x07\x00\x00\x00garbage";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let written = records(5, 50);
    write_session(&config, &written, written.len());
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("one session writes one segment")
    };
    let end = file_bytes(segment);
    let last = written.last().expect("records written");
    let last_offset = end - last.frame_bytes();
    let (kept, offset) = match damage {
        Damage::CutInLastRecord => {
            damage_file(segment, |bytes| bytes.truncate(bytes.len() - 3));
            (written.len() - 1, last_offset)
        }
        Damage::FlipLastPayloadByte => {
            damage_file(segment, |bytes| {
                *bytes.last_mut().expect("not empty") ^= 0x01
            });
            (written.len() - 1, last_offset)
        }
        Damage::AppendGarbage => {
            damage_file(segment, |bytes| bytes.extend_from_slice(GARBAGE));
            (written.len(), end)
        }
        Damage::ZerosThenGarbage => {
            damage_file(segment, zeros_then_garbage);
            (written.len(), end)
        }
    };
    let damaged_bytes = file_bytes(segment);

    let (log, report, read) = open_and_read(&config).expect("a torn tail is not an error");
    assert_eq!(read, written[..kept], "{damage:?}");
    let torn_tail = report.torn_tail.expect("the tail is cut");
    assert_eq!(
        (&torn_tail.segment, torn_tail.offset, torn_tail.bytes_cut),
        (segment, offset, damaged_bytes - offset),
        "{damage:?}: {}",
        torn_tail.reason
    );
    assert_eq!(file_bytes(segment), offset, "{damage:?}");

    let more = [Record::new("meta", 100, 20)];
    append_all(&log, &more);
    log.close();
    let (report, read) = read_back(&config);
    assert_eq!(report.torn_tail, None, "{damage:?}");
    assert_eq!(read, [&written[..kept], &more[..]].concat(), "{damage:?}");
}

#[test]
fn a_torn_tail_in_the_last_segment_is_cut_to_the_intact_prefix() {
    check_torn_tail(Damage::CutInLastRecord);
    check_torn_tail(Damage::FlipLastPayloadByte);
    check_torn_tail(Damage::AppendGarbage);
    check_torn_tail(Damage::ZerosThenGarbage);
}

#[test]
fn a_last_segment_with_a_short_header_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let written = records(3, 20);
    write_session(&config, &written, written.len());
    // What a crash while creating the next segment can leave.
    let next = segment_path(dir.path(), 1);
    fs::write(&next, &SEGMENT_MAGIC[..3]).expect("file writes");

    let (log, report, read) = open_and_read(&config).expect("a torn header is not an error");
    assert_eq!(read, written);
    let torn_tail = report.torn_tail.expect("the header is cut");
    assert_eq!(
        (torn_tail.segment, torn_tail.offset, torn_tail.bytes_cut),
        (next.clone(), 0, 3)
    );
    assert_eq!(report.segments, 1);
    assert!(!next.exists());
    log.close();
    let (report, read) = read_back(&config);
    assert_eq!((report.torn_tail, read), (None, written));
}

/// Writes a record per segment, applies `damage` to the second segment, and checks that opening fails with an error
/// that names the file and `offset`, without cutting or creating anything.
fn check_corruption(name: &str, damage: fn(&mut Vec<u8>), offset: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: SEGMENT_PER_BATCH_BYTES_MAX,
        ..LogConfig::new(dir.path())
    };
    write_session(&config, &records(4, 20), 1);
    let segments = segment_files(dir.path());
    let damaged = &segments[1];
    damage_file(damaged, damage);

    let error = open_and_read(&config).expect_err(name);
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{name}");
    let message = error.to_string();
    let names = format!("{} at offset {offset}:", damaged.display());
    assert!(message.contains(&names), "{name}: {message}");
    assert_eq!(
        segment_files(dir.path()),
        segments,
        "{name}: nothing cut or created"
    );
}

#[test]
fn damage_before_the_last_segment_is_corruption() {
    let first_record = SEGMENT_HEADER_BYTES;
    check_corruption(
        "flipped payload byte",
        |bytes| bytes[SEGMENT_HEADER_BYTES as usize + FRAME_HEADER_BYTES] ^= 0x01,
        first_record,
    );
    check_corruption(
        "cut record",
        |bytes| bytes.truncate(bytes.len() - 1),
        first_record,
    );
    check_corruption("wrong version", |bytes| bytes[4] = 2, 0);
    check_corruption(
        "bytes after zeros",
        zeros_then_garbage,
        SEGMENT_HEADER_BYTES + records(4, 20)[1].frame_bytes(),
    );
}

#[test]
fn a_bad_header_before_records_is_corruption_even_in_the_last_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    write_session(&config, &records(3, 20), 3);
    let last = segment_files(dir.path()).pop().expect("segments written");
    damage_file(&last, |bytes| bytes[0] = b'X');

    let error = open_and_read(&config).expect_err("records would be lost");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn truncate_deletes_exactly_the_covered_prefix_of_closed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: SEGMENT_PER_BATCH_BYTES_MAX,
        ..LogConfig::new(dir.path())
    };
    // The first segment, of two streams, is found by `open`; the writer rotates after each of the others.
    let first = [Record::new("a", 1, 10), Record::new("b", 1, 10)];
    write_session(&LogConfig::new(dir.path()), &first, first.len());
    let rest = [
        Record::new("a", 2, 10),
        Record::new("b", 2, 10),
        Record::new("c", 1, 10),
        Record::new("a", 3, 10),
    ];
    let (log, _, _) = open_and_read(&config).expect("log opens");
    for record in rest.chunks(1) {
        append_all(&log, record);
    }
    assert_eq!(log.stats().segments, 1 + rest.len());

    // `b` 2 is not covered, so its segment stops the deletion even though `c` 1's after it is covered.
    let covered = |stream: &str| match stream {
        "a" => Some(2),
        "b" => Some(1),
        "c" => Some(5),
        _ => None,
    };
    assert_eq!(log.truncate(covered).expect("truncates"), 2);
    assert_eq!(log.stats().segments, 3);
    assert_eq!(
        log.truncate(covered).expect("truncates"),
        0,
        "nothing more is covered"
    );
    let stats = log.stats();
    log.close();
    assert_eq!(segment_files(dir.path()).len(), stats.segments);

    let (log, report, read) = open_and_read(&config).expect("log opens");
    assert_eq!(read, rest[1..]);
    assert_eq!(report.bytes, stats.bytes);
    // Segments found by `open` carry their seqs too: `c` is not covered now, so only `b` 2's segment goes.
    assert_eq!(
        log.truncate(|stream| (stream == "b").then_some(2))
            .expect("truncates"),
        1
    );
    let last = [Record::new("d", 1, 10)];
    append_all(&log, &last);
    // Everything is covered, but the segment being written stays.
    let segments_before = log.stats().segments;
    assert_eq!(
        log.truncate(|_| Some(u64::MAX)).expect("truncates"),
        segments_before - 1
    );
    assert_eq!(log.stats().segments, 1);
    log.close();
    assert_eq!(segment_files(dir.path()).len(), 1);
    let (_, read) = read_back(&config);
    assert_eq!(read, last);
}

#[test]
fn refused_appends_fail_at_once_and_close_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _, _) = open_and_read(&LogConfig::new(dir.path())).expect("log opens");
    let refused = [Vec::new(), vec![b'x'; RECORD_BYTES_MAX + 1]];
    for payload in refused {
        let bytes = payload.len();
        let outcome = log.append("a".into(), 1, payload).blocking_recv();
        assert!(matches!(outcome, Ok(Err(_))), "{bytes} bytes: {outcome:?}");
    }
    append_all(&log, &[Record::new("a", 1, RECORD_BYTES_MAX)]);
    let other = log.clone();
    log.close();
    log.close();
    let after_close = other
        .append("a".into(), 2, b"late".to_vec())
        .blocking_recv();
    assert!(matches!(after_close, Ok(Err(_))), "{after_close:?}");
    assert_eq!(log.stats().records_appended, 1);
}

#[test]
fn a_failed_write_fails_its_batch_and_every_later_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    write_session(&config, &[], 1);
    // A read-only handle fails every write, even for root.
    let path = segment_files(dir.path()).pop().expect("a segment exists");
    let active = ActiveSegment {
        index: 0,
        file: File::open(&path).expect("file opens"),
        path,
        bytes: SEGMENT_HEADER_BYTES,
        zeroed: SEGMENT_HEADER_BYTES,
        seqs_max: HashMap::new(),
    };
    let log = LogWriter::start(&config, Vec::new(), active).expect("writer starts");
    for seq in 1..=2 {
        let outcome = log
            .append("a".into(), seq, b"lost".to_vec())
            .blocking_recv();
        assert!(matches!(outcome, Ok(Err(_))), "seq {seq}: {outcome:?}");
    }
    assert_eq!((log.stats().records_appended, log.stats().batches), (0, 0));
}

#[test]
fn a_barrier_completes_after_every_record_before_it_and_fails_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let (log, _, _) = open_and_read(&config).expect("log opens");
    // Alone, a barrier writes nothing and completes.
    log.barrier()
        .blocking_recv()
        .expect("the writer answers")
        .expect("nothing before it");
    // Behind records, it completes once they are durable: they read back after a reopen.
    let written = records(20, 64);
    let commits: Vec<_> = written
        .iter()
        .map(|record| {
            log.append(
                Arc::clone(&record.stream),
                record.seq,
                record.payload.clone(),
            )
        })
        .collect();
    log.barrier()
        .blocking_recv()
        .expect("the writer answers")
        .expect("every record before it is durable");
    for mut commit in commits {
        assert!(
            matches!(commit.try_recv(), Ok(Ok(()))),
            "answered before the barrier"
        );
    }
    log.close();
    let (_, read) = read_back(&config);
    assert_eq!(read, written);

    // Behind a failed write, it fails too.
    let path = segment_files(dir.path()).pop().expect("a segment exists");
    let active = ActiveSegment {
        index: 0,
        file: File::open(&path).expect("file opens"),
        path,
        bytes: SEGMENT_HEADER_BYTES,
        zeroed: SEGMENT_HEADER_BYTES,
        seqs_max: HashMap::new(),
    };
    let log = LogWriter::start(&config, Vec::new(), active).expect("writer starts");
    let lost = log.append("a".into(), 1, b"lost".to_vec());
    let barrier = log.barrier().blocking_recv();
    assert!(matches!(barrier, Ok(Err(_))), "{barrier:?}");
    assert!(matches!(lost.blocking_recv(), Ok(Err(_))));
}

/// Finds how many of `written`'s last records fill a segment of `segment_bytes` bytes.
fn records_in_last_segment(written: &[Record], segment_bytes: u64) -> usize {
    let mut bytes = SEGMENT_HEADER_BYTES;
    written
        .iter()
        .rev()
        .take_while(|record| {
            bytes += record.frame_bytes();
            bytes <= segment_bytes
        })
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_cut_of_the_last_segment_reads_back_a_prefix_in_order(
        sizes in proptest::collection::vec((0..STREAMS.len(), 1..300usize), 1..40),
        chunk in 1..8usize,
        segment_bytes_max in 64..1_024u64,
        cut in any::<Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig { segment_bytes_max, sync: SyncPolicy::Never, ..LogConfig::new(dir.path()) };
        let mut seqs = [0u64; STREAMS.len()];
        let written: Vec<Record> = sizes
            .iter()
            .map(|&(stream, bytes)| {
                seqs[stream] += 1;
                Record::new(STREAMS[stream], seqs[stream], bytes)
            })
            .collect();
        write_session(&config, &written, chunk);
        let last = segment_files(dir.path()).pop().expect("segments written");
        let last_bytes = file_bytes(&last);
        let in_last = records_in_last_segment(&written, last_bytes);
        let cut_offset = cut.index(last_bytes as usize + 1) as u64;
        OpenOptions::new().write(true).open(&last).expect("file opens").set_len(cut_offset).expect("cut");

        let (report, read) = read_back(&config);
        let before_last = written.len() - in_last;
        // The last segment's records that end before the cut survive it.
        let mut survivors_end = SEGMENT_HEADER_BYTES;
        let mut survivors = 0;
        for record in &written[before_last..] {
            if survivors_end + record.frame_bytes() > cut_offset {
                break;
            }
            survivors_end += record.frame_bytes();
            survivors += 1;
        }
        prop_assert_eq!(&read[..], &written[..before_last + survivors]);
        prop_assert_eq!(report.records, read.len() as u64);
        match &report.torn_tail {
            None => prop_assert_eq!(cut_offset, survivors_end, "a cut between records is clean"),
            Some(torn_tail) if cut_offset < SEGMENT_HEADER_BYTES => prop_assert_eq!(torn_tail.offset, 0),
            Some(torn_tail) => prop_assert_eq!(torn_tail.offset, survivors_end),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn truncate_keeps_every_record_not_covered(
        sizes in proptest::collection::vec((0..STREAMS.len(), 1..100usize), 1..40),
        chunk in 1..8usize,
        segment_bytes_max in 16..512u64,
        covered in proptest::collection::vec(proptest::option::of(0..20u64), STREAMS.len()),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig { segment_bytes_max, sync: SyncPolicy::Never, ..LogConfig::new(dir.path()) };
        let mut seqs = [0u64; STREAMS.len()];
        let written: Vec<Record> = sizes
            .iter()
            .map(|&(stream, bytes)| {
                seqs[stream] += 1;
                Record::new(STREAMS[stream], seqs[stream], bytes)
            })
            .collect();
        let (log, _, _) = open_and_read(&config).expect("log opens");
        for batch in written.chunks(chunk) {
            append_all(&log, batch);
        }
        let covered_seq = |stream: &str| {
            covered[STREAMS.iter().position(|name| *name == stream).expect("a test stream")]
        };
        let segments = log.stats().segments;
        let deleted = log.truncate(covered_seq).expect("truncates");
        prop_assert_eq!(log.stats().segments, segments - deleted);
        log.close();

        let (_, read) = read_back(&config);
        prop_assert_eq!(&read[..], &written[written.len() - read.len()..], "a prefix is deleted");
        for record in &written {
            let is_covered = covered_seq(&record.stream).is_some_and(|seq| seq >= record.seq);
            prop_assert!(is_covered || read.contains(record), "{:?} lost", record);
        }
    }
}

#[test]
fn a_log_synced_at_barriers_syncs_only_for_a_barrier_a_full_segment_and_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = records(30, 200);
    let config = LogConfig {
        sync: SyncPolicy::AtBarriers,
        // Ten of these records fill a segment.
        segment_bytes_max: SEGMENT_HEADER_BYTES + 10 * (FRAME_HEADER_BYTES as u64 + 200),
        ..LogConfig::new(dir.path())
    };
    let (log, _, _) = open_and_read(&config).expect("log opens");
    let append = |record: &Record| {
        log.append(
            Arc::clone(&record.stream),
            record.seq,
            record.payload.clone(),
        )
        .blocking_recv()
        .expect("the writer answers")
        .expect("written");
    };
    // Answered once written, one at a time: nine records, no sync.
    written[..9].iter().for_each(append);
    assert_eq!(log.stats().syncs, 0);
    log.barrier()
        .blocking_recv()
        .expect("the writer answers")
        .expect("synced");
    assert_eq!(log.stats().syncs, 1);
    // Nothing written since: a barrier needs no sync.
    log.barrier()
        .blocking_recv()
        .expect("the writer answers")
        .expect("nothing to sync");
    assert_eq!(log.stats().syncs, 1);
    // The segment fills at the tenth; the eleventh goes to a new one, and the full one is synced first.
    written[9..11].iter().for_each(append);
    assert_eq!((log.stats().segments, log.stats().syncs), (2, 2));
    written[11..].iter().for_each(append);
    let before_close = log.stats().syncs;
    log.close();
    assert_eq!(log.stats().syncs, before_close + 1, "close syncs the rest");
    let (_, read) = read_back(&config);
    assert_eq!(read, written);
}

#[test]
fn a_log_synced_every_batch_syncs_each_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::new(dir.path());
    let (log, _, _) = open_and_read(&config).expect("log opens");
    for record in records(5, 64) {
        log.append(record.stream, record.seq, record.payload)
            .blocking_recv()
            .expect("the writer answers")
            .expect("durable");
    }
    let stats = log.stats();
    assert_eq!((stats.batches, stats.syncs), (5, 5));
}

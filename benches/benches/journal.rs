//! Group commit throughput of the journal's segment log, in committed records per second (criterion's `elem/s`;
//! one element is one [`PAYLOAD_BYTES`]-byte record appended and its commit awaited).
//!
//! - `journal/sync/N`: `N` appenders, tokio tasks on a two-thread runtime, each appending a record and awaiting its
//!   commit before appending the next, with one `fdatasync` per batch. One appender pays a sync per record
//!   (FACTS.md: 4.6k raw appends per second with a sync each); with more, each batch holds up to one record per
//!   appender and its sync is shared among them.
//! - `journal/no_sync/N`: the same without the sync, for comparison: queueing, framing and writing alone.
//!
//! The log lives in a temporary directory under cargo's target directory, on the disk the data directory would
//! be on (not a tmpfs). Closed segments are deleted after each measurement, outside the measured time, so that a
//! run's disk use stays bounded.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use persistence::log::{LogConfig, LogWriter, StreamId, SyncPolicy};
use std::time::{Duration, Instant};

/// The size of one record, about that of an encoded shard event.
const PAYLOAD_BYTES: usize = 100;
/// Concurrent appenders in the `sync` benches.
const APPENDERS_SYNC: [u64; 3] = [1, 16, 256];
/// Concurrent appenders in the `no_sync` bench: the most of the `sync` ones.
const APPENDERS_NO_SYNC: u64 = 256;
/// Worker threads of the appenders' runtime: one per core of the reference machine.
const WORKER_THREADS: usize = 2;

/// Runs `iters` appends spread over `appenders` tasks, each awaiting its commit before its next append, and
/// returns how long they took.
async fn append_concurrently(log: &LogWriter, appenders: u64, iters: u64) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|appender| {
            let log = log.clone();
            let stream: StreamId = format!("c_bench/{appender}").into();
            let count = iters / appenders + u64::from(appender < iters % appenders);
            tokio::spawn(async move {
                for seq in 1..=count {
                    log.append(stream.clone(), seq, vec![0; PAYLOAD_BYTES])
                        .await
                        .expect("the writer answers")
                        .expect("the record is durable");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender finishes");
    }
    started.elapsed()
}

fn journal(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .expect("runtime builds");
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(1));
    let runs = APPENDERS_SYNC
        .iter()
        .map(|&appenders| ("sync", SyncPolicy::EveryBatch, appenders))
        .chain([("no_sync", SyncPolicy::Never, APPENDERS_NO_SYNC)]);
    for (name, sync, appenders) in runs {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let config = LogConfig {
            sync,
            ..LogConfig::new(dir.path())
        };
        let (log, _) =
            persistence::log::open(config, |_| Err("a fresh directory holds no records".into()))
                .expect("log opens");
        group.bench_function(BenchmarkId::new(name, appenders), |b| {
            b.iter_custom(|iters| {
                let measured = runtime.block_on(append_concurrently(&log, appenders, iters));
                log.truncate(|_| Some(u64::MAX)).expect("segments delete");
                measured
            });
        });
        log.close();
    }
    group.finish();
}

criterion_group!(benches, journal);
criterion_main!(benches);

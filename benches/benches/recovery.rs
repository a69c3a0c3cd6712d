//! Recovery of a node that sold 1,000,000 tickets, in seconds per recovery (criterion's time per iteration; one
//! iteration opens the data dir, which rebuilds every shard, and closes it).
//!
//! The sale: one general-admission concert of [`TICKETS`] tickets over [`SHARDS`] shards, sold one ticket per order,
//! so the journal holds two events per ticket (reserved, confirmed), about as many as a real sale writes.
//!
//! - `recovery/from_journal`: no snapshot at all; every event is read back and replayed.
//! - `recovery/from_snapshots`: every shard snapshotted after the sale and the journal truncated behind the
//!   snapshots; recovery decodes the snapshots and replays nothing.
//!
//! Before measuring, it prints the bytes on disk per sold ticket in each data dir (journal, sled, everything),
//! the figure for "how much disk does a sale take".

use criterion::{Criterion, criterion_group, criterion_main};
use engine::concert::{ConcertSpec, Layout};
use engine::ids::{ConcertId, OrderId, TicketId, UserId};
use engine::journal::{Journal, JournalRecord, ShardSnapshot};
use engine::shard_state::{Claim, IssuedTicket, OrderMeta, Purpose, ShardEvent, ShardState};
use persistence::storage::{Storage, StorageOptions};
use persistence::wire::MetaRecord;
use std::path::Path;
use std::time::Duration;

const TICKETS: u64 = 1_000_000;
const SHARDS: u32 = 8;
/// Periodic snapshots never come due during the sale: each data dir is exactly what its bench name says.
const SNAPSHOT_EVERY_EVENTS: u64 = u64::MAX;

fn options() -> StorageOptions {
    StorageOptions {
        snapshot_every_events: SNAPSHOT_EVERY_EVENTS,
        ..StorageOptions::default()
    }
}

/// Journals the sale into `dir`; returns the shards' final states.
fn write_sale(dir: &Path) -> Vec<ShardState> {
    let (storage, _) = Storage::open(dir, options()).expect("open");
    let spec = ConcertSpec::new(
        ConcertId::from("c_recovery"),
        "Recovery bench".into(),
        "2027-01-01T20:00:00Z".into(),
        1000,
        Layout::General { capacity: TICKETS },
        Some(SHARDS),
    )
    .expect("valid concert");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(
            storage
                .append_meta(MetaRecord::Concert(spec.clone()))
                .wait(),
        )
        .expect("durable");
    let mut states = Vec::new();
    let mut commits = Vec::new();
    for shard in 0..SHARDS {
        let mut state = ShardState::new(spec.shard_capacity(shard), false);
        for sold in 0..spec.shard_capacity(shard) {
            let order_id = OrderId::from(format!("o_{shard:02}{sold:018}"));
            let purpose = Purpose::Order {
                order_id: order_id.clone(),
                meta: OrderMeta {
                    created_at_ms: sold,
                    idempotency: None,
                },
            };
            let claim = Claim::Quantity {
                quantity: 1,
                up_to: false,
            };
            let owner = UserId::from(format!("u_{:020}", sold % 50_000));
            let reserved = state
                .decide_reserve(&owner, &claim, purpose)
                .expect("tickets left");
            let ShardEvent::Reserved { reservation_id, .. } = reserved else {
                unreachable!("a reservation");
            };
            commits.push(journal(&storage, &spec, shard, &mut state, reserved));
            let ticket = IssuedTicket {
                ticket_id: TicketId::from(format!("t_{shard:02}{sold:018}")),
                token: format!("{:032x}", (u128::from(shard) << 64) | u128::from(sold)).into(),
                seat: None,
            };
            let confirmed = state
                .decide_confirm(reservation_id, &order_id, vec![ticket])
                .expect("confirm");
            commits.push(journal(&storage, &spec, shard, &mut state, confirmed));
            if commits.len() >= 65_536 {
                for commit in commits.drain(..) {
                    runtime.block_on(commit.wait()).expect("durable");
                }
            }
        }
        states.push(state);
    }
    for commit in commits {
        runtime.block_on(commit.wait()).expect("durable");
    }
    storage.close();
    states
}

/// Applies `event` to `state` and journals it.
fn journal(
    storage: &Storage,
    spec: &ConcertSpec,
    shard: u32,
    state: &mut ShardState,
    event: ShardEvent,
) -> engine::journal::Commit {
    state.apply(&event);
    storage.append(JournalRecord {
        concert_id: spec.id.clone(),
        shard,
        seq: state.events_applied(),
        event,
    })
}

fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            let metadata = entry.metadata().expect("metadata");
            if metadata.is_dir() {
                bytes_in(&entry.path())
            } else {
                metadata.len()
            }
        })
        .sum()
}

fn report(name: &str, dir: &Path) {
    let total = bytes_in(dir);
    let journal = bytes_in(&dir.join("journal"));
    println!(
        "{name}: {:.1} bytes per sold ticket on disk ({} journal + {} sled, {total} in all)",
        total as f64 / TICKETS as f64,
        journal,
        total - journal,
    );
}

fn recovery(c: &mut Criterion) {
    let journal_only = tempfile::tempdir().expect("temp dir");
    let states = write_sale(journal_only.path());
    report("journal only", journal_only.path());

    let snapshotted = tempfile::tempdir().expect("temp dir");
    write_sale(snapshotted.path());
    let (storage, _) = Storage::open(snapshotted.path(), options()).expect("open");
    let snapshots = states
        .iter()
        .enumerate()
        .map(|(shard, state)| ShardSnapshot {
            concert_id: ConcertId::from("c_recovery"),
            shard: shard as u32,
            state: state.clone(),
        })
        .collect();
    storage.write_snapshots_now(snapshots).expect("snapshots");
    storage.close();
    // sled holds the data dir's lock until its last handle is gone.
    drop(storage);
    report("after snapshot and truncation", snapshotted.path());

    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    for (name, dir) in [
        ("from_journal", journal_only.path()),
        ("from_snapshots", snapshotted.path()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let (storage, recovered) = Storage::open(dir, options()).expect("recover");
                assert_eq!(
                    recovered.concerts[0]
                        .states
                        .iter()
                        .map(|state| state.availability().sold)
                        .sum::<u64>(),
                    TICKETS
                );
                storage.close();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);

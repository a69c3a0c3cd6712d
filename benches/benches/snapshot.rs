//! Writing one shard's snapshot to storage and restoring a shard from it, in seats per second and snapshot bytes per
//! second (criterion's `elem/s` and `B/s`; one element is one seat, or one ticket of a general-admission shard's
//! capacity, whatever its status; the bytes are the encoded snapshot's).
//!
//! The shards: seated shards of [`SEATED_SEATS`] seats and a general-admission shard of [`GENERAL_TICKETS`] tickets
//! (the default shard size), each in the middle of a sale: of every ten reservations of
//! [`TICKETS_PER_RESERVATION`] tickets, [`RESERVATIONS_SOLD`] were bought (orders with an `Idempotency-Key`),
//! [`RESERVATIONS_HELD`] are held and the rest are still free. Ids and tokens are drawn as the engine draws them.
//!
//! - `snapshot/write/SHARD`: `Journal::save_snapshot` on [`Storage`] until its commit completes: what the snapshot
//!   thread does for one snapshot (encode with its CRC, insert into sled, remove the oldest beyond
//!   [`SNAPSHOTS_KEPT`], flush sled, `fsync` sled's files, truncate the journal). sled already holds the shard's
//!   two previous snapshots, as in a running node. The copy of the state the shard actor hands over is made off the
//!   clock. The data dir is under cargo's target directory, on the disk a data dir would be on. sled writes a page
//!   over about 128 KiB (here every shard's, even the 1,000-seat one's, whose page holds two or three snapshots)
//!   to a file of its own under `db/blobs/`, which neither sled nor storage `fsync`s: this figure leaves out
//!   syncing the snapshot's bytes themselves.
//! - `snapshot/write_no_fsync/SHARD`: the same on a tmpfs (`/dev/shm`), where `fsync` and sled's
//!   `sync_file_range` return at once. Storage has no option to skip them (`StorageOptions::sync` governs the
//!   journal only), so this is how the cost of the disk is told apart; skipped where there is no `/dev/shm`.
//! - `snapshot/decode/SHARD`: `wire::decode_snapshot` (CRC and postcard) and `ShardState::check` of the snapshot's
//!   bytes in memory: the CPU part of a restore.
//! - `snapshot/restore/SHARD`: `Storage::open` of a data dir holding that shard's concert and snapshot and nothing
//!   to replay: open sled and the journal, read the newest snapshot, decode and check it. The files are in the page
//!   cache (a restart, not a cold boot). The data dir is closed off the clock.
//!
//! Before measuring, it prints each shard's counts and snapshot size.

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use engine::concert::{ConcertSpec, Layout, SHARD_TICKETS_TARGET, Section};
use engine::ids::{ConcertId, HoldId, OrderId, TicketId, UserId, random_hex, ticket_token};
use engine::journal::{Journal, ShardSnapshot};
use engine::shard_state::{
    Claim, IdempotencyTag, IssuedTicket, OrderMeta, Purpose, ReleaseReason, ShardEvent, ShardState,
};
use persistence::storage::{SNAPSHOTS_KEPT, Storage, StorageOptions};
use persistence::wire::{MetaRecord, decode_snapshot, encode_snapshot};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// Seats of the seated shards.
const SEATED_SEATS: [u64; 3] = [1_000, 10_000, 100_000];
const SEATS_PER_ROW: u32 = 100;
/// Tickets of the general-admission shard: one shard of a concert cut at the default shard size.
const GENERAL_TICKETS: u64 = SHARD_TICKETS_TARGET;
const TICKETS_PER_RESERVATION: u32 = 2;
/// Out of every ten reservations: bought, then held; the rest of the ten are free tickets.
const RESERVATIONS_SOLD: u64 = 6;
const RESERVATIONS_HELD: u64 = 1;
const RESERVATIONS_PER_ROUND: u64 = 10;
/// Tickets one buyer has at most (`--max-tickets-per-user`'s default).
const TICKETS_PER_USER_MAX: u64 = 10;
/// Periodic snapshots never come due: every snapshot written is one the bench asked for.
const SNAPSHOT_EVERY_EVENTS: u64 = u64::MAX;
/// Where `write_no_fsync` keeps its data dir.
const TMPFS_DIR: &str = "/dev/shm";

const _: () = assert!(RESERVATIONS_SOLD + RESERVATIONS_HELD <= RESERVATIONS_PER_ROUND);
const _: () = assert!(TICKETS_PER_RESERVATION as u64 <= TICKETS_PER_USER_MAX);

/// One shard in the middle of a sale, and its concert (of this one shard).
struct SaleShard {
    name: String,
    spec: ConcertSpec,
    state: ShardState,
    snapshot_bytes: Vec<u8>,
}

impl SaleShard {
    fn new(name: String, layout: Layout) -> Self {
        let spec = ConcertSpec::new(
            ConcertId::from(format!("c_snapshot_{name}").as_str()),
            "Snapshot bench".into(),
            "2027-01-01T20:00:00Z".into(),
            1000,
            layout,
            Some(1),
        )
        .expect("valid concert");
        let state = sell(&spec);
        let snapshot_bytes = encode_snapshot(&state);
        Self {
            name,
            spec,
            state,
            snapshot_bytes,
        }
    }

    fn seated(seats: u64) -> Self {
        let rows = u32::try_from(seats / u64::from(SEATS_PER_ROW)).expect("rows fit");
        assert_eq!(u64::from(rows * SEATS_PER_ROW), seats, "whole rows");
        let sections = vec![Section {
            name: "A".into(),
            rows,
            seats_per_row: SEATS_PER_ROW,
        }];
        Self::new(format!("seated_{seats}"), Layout::Seated { sections })
    }

    fn general(tickets: u64) -> Self {
        Self::new(
            format!("general_{tickets}"),
            Layout::General { capacity: tickets },
        )
    }

    fn throughput(&self) -> Throughput {
        Throughput::ElementsAndBytes {
            elements: self.state.capacity(),
            bytes: self.snapshot_bytes.len() as u64,
        }
    }

    fn snapshot(&self, state: ShardState) -> ShardSnapshot {
        ShardSnapshot {
            concert_id: self.spec.id.clone(),
            shard: 0,
            state,
        }
    }

    fn report(&self) {
        let availability = self.state.availability();
        println!(
            "{}: {} free, {} held, {} sold; snapshot {} bytes ({:.1} per seat)",
            self.name,
            availability.remaining,
            availability.held,
            availability.sold,
            self.snapshot_bytes.len(),
            self.snapshot_bytes.len() as f64 / self.state.capacity() as f64,
        );
    }
}

/// Sells and holds the shard's tickets in the mix the module comment gives.
fn sell(spec: &ConcertSpec) -> ShardState {
    let capacity = spec.shard_capacity(0);
    let mut state = ShardState::new(capacity, spec.is_seated());
    let reservations = capacity / u64::from(TICKETS_PER_RESERVATION);
    for reservation in 0..reservations {
        let slot = reservation % RESERVATIONS_PER_ROUND;
        if slot >= RESERVATIONS_SOLD + RESERVATIONS_HELD {
            continue;
        }
        let owner = UserId::from(format!(
            "u_{:020x}",
            reservation * u64::from(TICKETS_PER_RESERVATION) / TICKETS_PER_USER_MAX
        ));
        let claim = if spec.is_seated() {
            let first =
                u32::try_from(reservation).expect("seat numbers fit") * TICKETS_PER_RESERVATION;
            Claim::Seats((first..first + TICKETS_PER_RESERVATION).collect())
        } else {
            Claim::Quantity {
                quantity: TICKETS_PER_RESERVATION,
                up_to: false,
            }
        };
        if slot >= RESERVATIONS_SOLD {
            let purpose = Purpose::Hold {
                hold_id: HoldId::random(),
                expires_at_ms: 1_800_000_000_000,
            };
            let held = state.decide_reserve(&owner, &claim, purpose).expect("free");
            state.apply(&held);
            continue;
        }
        let order_id = OrderId::random();
        let purpose = Purpose::Order {
            order_id: order_id.clone(),
            meta: OrderMeta {
                created_at_ms: 1_800_000_000_000 + reservation,
                idempotency: Some(IdempotencyTag {
                    key: random_hex(18),
                    fingerprint: reservation,
                }),
            },
        };
        let reserved = state.decide_reserve(&owner, &claim, purpose).expect("free");
        let ShardEvent::Reserved { reservation_id, .. } = reserved else {
            unreachable!("a reservation");
        };
        state.apply(&reserved);
        let tickets = (0..TICKETS_PER_RESERVATION)
            .map(|_| IssuedTicket {
                ticket_id: TicketId::random(),
                token: ticket_token(),
                seat: None,
            })
            .collect();
        let confirmed = state
            .decide_confirm(reservation_id, &order_id, tickets)
            .expect("confirm");
        state.apply(&confirmed);
    }
    state.check().expect("a consistent shard");
    state
}

/// Moves the shard on by two events that leave its seats as they were (a hold of one ticket, cancelled), so that
/// the next snapshot is newer than the ones stored: storage skips a snapshot no newer than the shard's newest.
fn advance(state: &mut ShardState) {
    let claim = Claim::Quantity {
        quantity: 1,
        up_to: false,
    };
    let purpose = Purpose::Hold {
        hold_id: HoldId::random(),
        expires_at_ms: 1_800_000_000_000,
    };
    let held = state
        .decide_reserve(&UserId::random(), &claim, purpose)
        .expect("a free ticket is left");
    let ShardEvent::Reserved { reservation_id, .. } = held else {
        unreachable!("a reservation");
    };
    state.apply(&held);
    let released = state
        .decide_release(reservation_id, ReleaseReason::Cancelled)
        .expect("live hold");
    state.apply(&released);
}

fn options() -> StorageOptions {
    StorageOptions {
        snapshot_every_events: SNAPSHOT_EVERY_EVENTS,
        ..StorageOptions::default()
    }
}

fn save(runtime: &tokio::runtime::Runtime, storage: &Storage, snapshot: ShardSnapshot) {
    runtime
        .block_on(storage.save_snapshot(snapshot).wait())
        .expect("snapshot durable");
}

/// `snapshot/NAME/SHARD`: one snapshot written per iteration into a data dir in `parent`.
fn bench_write(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    parent: &Path,
    shard: &SaleShard,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(parent).expect("temp dir");
    let (storage, _) = Storage::open(dir.path(), options()).expect("open");
    let mut state = shard.state.clone();
    for _ in 0..SNAPSHOTS_KEPT {
        advance(&mut state);
        save(&runtime, &storage, shard.snapshot(state.clone()));
    }
    group.bench_function(BenchmarkId::new(name, &shard.name), |b| {
        b.iter_batched(
            || {
                advance(&mut state);
                shard.snapshot(state.clone())
            },
            |snapshot| save(&runtime, &storage, snapshot),
            BatchSize::PerIteration,
        );
    });
    let newest = storage.snapshot_positions().expect("positions");
    assert_eq!(newest.values().copied().max(), Some(state.events_applied()));
    storage.close();
}

/// A data dir holding the shard's concert and one snapshot of it, and nothing in the journal after it.
fn restorable_dir(shard: &SaleShard) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let (storage, _) = Storage::open(dir.path(), options()).expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(
            storage
                .append_meta(MetaRecord::Concert(shard.spec.clone()))
                .wait(),
        )
        .expect("durable");
    storage
        .write_snapshots_now(vec![shard.snapshot(shard.state.clone())])
        .expect("snapshot");
    storage.close();
    // sled holds the data dir's lock until its last handle is gone.
    drop(storage);
    let (storage, recovered) = Storage::open(dir.path(), options()).expect("recover");
    let restored = &recovered.concerts[0];
    assert_eq!(restored.shards[0].events_replayed, 0, "nothing to replay");
    assert_eq!(restored.states[0].digest(), shard.state.digest());
    storage.close();
    dir
}

fn snapshot(c: &mut Criterion) {
    let shards: Vec<SaleShard> = SEATED_SEATS
        .iter()
        .map(|&seats| SaleShard::seated(seats))
        .chain([SaleShard::general(GENERAL_TICKETS)])
        .collect();
    for shard in &shards {
        shard.report();
    }
    let tmpfs = Path::new(TMPFS_DIR);
    if !tmpfs.is_dir() {
        println!("no {TMPFS_DIR}: write_no_fsync skipped");
    }
    let mut group = c.benchmark_group("snapshot");
    // The same number of iterations in every sample: the big shards take tens of milliseconds an iteration, too
    // long for criterion's linear sampling (1 + 2 + ... + 10 iterations) to fit in the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    for shard in &shards {
        group.throughput(shard.throughput());
        bench_write(
            &mut group,
            "write",
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            shard,
        );
        if tmpfs.is_dir() {
            bench_write(&mut group, "write_no_fsync", tmpfs, shard);
        }
        group.bench_function(BenchmarkId::new("decode", &shard.name), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let state = decode_snapshot(black_box(&shard.snapshot_bytes)).expect("decodes");
                    state.check().expect("consistent");
                    state
                },
                BatchSize::PerIteration,
            );
        });
        let dir = restorable_dir(shard);
        group.bench_function(BenchmarkId::new("restore", &shard.name), |b| {
            b.iter_batched(
                || (),
                |()| Storage::open(dir.path(), options()).expect("recover"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default so that the whole file runs in about a minute on two cores; the command line overrides it.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = snapshot
}
criterion_main!(benches);

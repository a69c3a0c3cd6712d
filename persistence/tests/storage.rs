//! Storage end to end, without actors: events journaled through [`Storage`] come back as the same shard states,
//! replay is deterministic (equal digests), snapshots shorten the replay, and a damaged snapshot falls back to the
//! one before it. The payment simulator's ledger, kept in the same journal, survives its truncation, and records
//! its checkpoint lacks come back from the journal.

use engine::concert::{ConcertSpec, Layout, Section};
use engine::ids::{ConcertId, OrderId, TicketId, UserId};
use engine::journal::{Journal, JournalRecord, ShardSnapshot};
use engine::payment::{SimulatedCharge, SimulatedChargeState};
use engine::shard_state::{Claim, IssuedTicket, OrderMeta, Purpose, ReleaseReason, ShardState};
use persistence::storage::{Storage, StorageOptions};
use persistence::wire::MetaRecord;
use std::collections::HashMap;
use std::path::Path;

fn spec() -> ConcertSpec {
    ConcertSpec::new(
        ConcertId::from("c_storage"),
        "Storage test".into(),
        "2027-01-01T20:00:00Z".into(),
        1000,
        Layout::Seated {
            sections: vec![Section {
                name: "A".into(),
                rows: 20,
                seats_per_row: 25,
            }],
        },
        Some(2),
    )
    .expect("valid concert")
}

/// Drives one shard through a deterministic mix of orders, holds, releases and check-ins, journaling every event
/// and handing the storage a snapshot when it asks for one. Returns the final state.
fn sell(storage: &Storage, spec: &ConcertSpec, shard: u32, steps: u64, seed: u64) -> ShardState {
    let mut state = ShardState::new(spec.shard_capacity(shard), spec.is_seated());
    let mut random = seed | 1;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Each record is waited for before the next: batches of one record, so segments (which rotate between
    // batches) cut the journal the same way on a busy machine as on an idle one.
    let apply = |state: &mut ShardState, event| {
        state.apply(&event);
        let commit = storage.append(JournalRecord {
            concert_id: spec.id.clone(),
            shard,
            seq: state.events_applied(),
            event,
        });
        runtime.block_on(commit.wait()).expect("durable");
        if state
            .events_applied()
            .is_multiple_of(storage.snapshot_every_events().expect("periodic"))
        {
            let commit = storage.save_snapshot(ShardSnapshot {
                concert_id: spec.id.clone(),
                shard,
                state: state.clone(),
            });
            runtime.block_on(commit.wait()).expect("durable");
        }
    };
    for step in 0..steps {
        let owner = UserId::from(format!("u_{}", next() % 7));
        let order_id = OrderId::from(format!("o_{shard}_{step}"));
        let hold = next() % 3 == 0;
        let purpose = if hold {
            Purpose::Hold {
                hold_id: engine::ids::HoldId::from(format!("h_{shard}_{step}")),
                expires_at_ms: 1_000 + step,
            }
        } else {
            Purpose::Order {
                order_id: order_id.clone(),
                meta: OrderMeta {
                    created_at_ms: step,
                    idempotency: None,
                },
            }
        };
        let claim = Claim::Quantity {
            quantity: 1 + (next() % 3) as u32,
            up_to: true,
        };
        let Ok(reserved) = state.decide_reserve(&owner, &claim, purpose) else {
            break;
        };
        let engine::shard_state::ShardEvent::Reserved {
            reservation_id,
            quantity,
            ..
        } = reserved
        else {
            unreachable!("a reservation")
        };
        apply(&mut state, reserved);
        match next() % 4 {
            0 if !hold => {
                let event = state
                    .decide_release(reservation_id, ReleaseReason::Declined)
                    .expect("release");
                apply(&mut state, event);
            }
            _ if !hold => {
                let tickets = (0..quantity)
                    .map(|n| IssuedTicket {
                        ticket_id: TicketId::from(format!("t_{shard}_{step}_{n}")),
                        token: format!("{shard:04}{step:020}{n:08}").into(),
                        seat: None,
                    })
                    .collect();
                let event = state
                    .decide_confirm(reservation_id, &order_id, tickets)
                    .expect("confirm");
                apply(&mut state, event);
                if next() % 5 == 0 {
                    let ticket = TicketId::from(format!("t_{shard}_{step}_0"));
                    let event = state.decide_check_in(&ticket, step).expect("check in");
                    apply(&mut state, event);
                }
            }
            _ => {}
        }
    }
    state
}

fn options(snapshot_every_events: u64) -> StorageOptions {
    // Small segments, so that truncation, which deletes whole segments, has something to delete.
    StorageOptions {
        snapshot_every_events,
        segment_bytes_max: 4096,
        ..StorageOptions::default()
    }
}

/// Writes a concert and two shards' sales into a fresh storage in `dir`; returns the final states.
fn write_sale(dir: &Path, snapshot_every_events: u64) -> Vec<ShardState> {
    let (storage, recovered) = Storage::open(dir, options(snapshot_every_events)).expect("open");
    assert!(recovered.concerts.is_empty());
    let spec = spec();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(
            storage
                .append_meta(MetaRecord::Concert(spec.clone()))
                .wait(),
        )
        .expect("concert durable");
    let states = vec![
        sell(&storage, &spec, 0, 400, 7),
        sell(&storage, &spec, 1, 400, 13),
    ];
    storage.close();
    states
}

fn digests(states: &[ShardState]) -> Vec<u64> {
    states.iter().map(ShardState::digest).collect()
}

#[test]
fn replaying_the_journal_gives_the_same_state_every_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Snapshots so rare that recovery replays the whole journal.
    let written = write_sale(dir.path(), 1_000_000);
    let expected = digests(&written);
    for _ in 0..3 {
        let (storage, recovered) = Storage::open(dir.path(), options(1_000_000)).expect("reopen");
        let concert = &recovered.concerts[0];
        assert_eq!(concert.spec, spec());
        assert_eq!(digests(&concert.states), expected);
        assert!(concert.shards.iter().all(|shard| shard.snapshot_seq == 0));
        assert_eq!(
            recovered.events_replayed(),
            written.iter().map(ShardState::events_applied).sum::<u64>()
        );
        storage.close();
    }
}

#[test]
fn snapshots_shorten_the_replay_and_truncate_the_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_sale(dir.path(), 50);
    let (storage, recovered) = Storage::open(dir.path(), options(50)).expect("reopen");
    let concert = &recovered.concerts[0];
    assert_eq!(digests(&concert.states), digests(&written));
    for (shard, state) in concert.shards.iter().zip(&written) {
        assert!(shard.snapshot_seq > 0, "recovery starts from a snapshot");
        assert_eq!(
            shard.snapshot_seq + shard.events_replayed,
            state.events_applied()
        );
        assert!(
            shard.events_replayed < 50 * 2,
            "only the tail after it is replayed"
        );
    }
    // The journal before the oldest kept snapshot is gone: fewer records than events were written.
    let written_events: u64 = written.iter().map(ShardState::events_applied).sum();
    assert!(
        recovered.journal.records < written_events,
        "{} records left of {written_events}",
        recovered.journal.records
    );
    storage.close();
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_sale(dir.path(), 50);
    // Flip a byte in the newest snapshot of shard 0, behind the storage's back.
    {
        let db = sled::open(dir.path().join("db")).expect("sled");
        let snapshots = db.open_tree("snapshots").expect("tree");
        let (key, value) = snapshots
            .scan_prefix("c_storage/00000/")
            .last()
            .expect("a snapshot")
            .expect("read");
        let mut damaged = value.to_vec();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x5a;
        snapshots.insert(key, damaged).expect("write");
        db.flush().expect("flush");
    }
    let (storage, recovered) = Storage::open(dir.path(), options(50)).expect("reopen");
    let concert = &recovered.concerts[0];
    assert_eq!(digests(&concert.states), digests(&written));
    assert_eq!(concert.shards[0].snapshots_rejected, 1);
    assert_eq!(concert.shards[1].snapshots_rejected, 0);
    assert!(
        concert.shards[0].events_replayed > concert.shards[1].events_replayed,
        "the older snapshot means a longer replay"
    );
    storage.close();
}

#[test]
fn users_and_concerts_survive_in_journal_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    {
        let (storage, _) = Storage::open(dir.path(), options(10)).expect("open");
        for version in 0..5u8 {
            let commit = storage.append_meta(MetaRecord::User {
                id: "u_1".into(),
                record: vec![version; 3],
            });
            runtime.block_on(commit.wait()).expect("durable");
        }
        let commit = storage.append_meta(MetaRecord::User {
            id: "u_2".into(),
            record: vec![9],
        });
        runtime.block_on(commit.wait()).expect("durable");
        storage.close();
    }
    let (storage, recovered) = Storage::open(dir.path(), options(10)).expect("reopen");
    assert_eq!(
        recovered.users,
        vec![("u_1".to_owned(), vec![4; 3]), ("u_2".to_owned(), vec![9])]
    );
    storage.close();
}

#[test]
fn concerts_come_back_in_creation_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Ids in the reverse of creation order, so that an order by id would show.
    let ids = ["c_zz", "c_mm", "c_aa"];
    {
        let (storage, _) = Storage::open(dir.path(), options(10)).expect("open");
        for id in ids {
            let spec = ConcertSpec {
                id: ConcertId::from(id),
                ..spec()
            };
            let commit = storage.append_meta(MetaRecord::Concert(spec));
            runtime.block_on(commit.wait()).expect("durable");
        }
        storage.close();
    }
    let (storage, recovered) = Storage::open(dir.path(), options(10)).expect("reopen");
    let recovered_ids: Vec<&str> = recovered
        .concerts
        .iter()
        .map(|concert| concert.spec.id.as_str())
        .collect();
    assert_eq!(recovered_ids, ids);
    storage.close();
}

fn charge(amount_cents: u64, state: SimulatedChargeState) -> SimulatedCharge {
    SimulatedCharge {
        amount_cents,
        state,
    }
}

#[test]
fn the_simulators_ledger_comes_back_after_the_journal_holding_it_is_truncated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (storage, recovered) = Storage::open(dir.path(), options(50)).expect("open");
    assert!(recovered.ledger.is_empty());
    for (key, state) in [
        ("o_a", SimulatedChargeState::Approved),
        ("o_b", SimulatedChargeState::Declined),
        ("o_a", SimulatedChargeState::Voided),
        ("o_c", SimulatedChargeState::Approved),
    ] {
        let commit = storage.append_ledger(key, &charge(100, state));
        runtime.block_on(commit.wait()).expect("durable");
    }
    // Sales with snapshots every 50 events after the ledger's records: the segments holding them are deleted.
    let spec = spec();
    runtime
        .block_on(
            storage
                .append_meta(MetaRecord::Concert(spec.clone()))
                .wait(),
        )
        .expect("concert durable");
    sell(&storage, &spec, 0, 400, 7);
    storage.close();
    drop(storage);
    let first_segment = dir
        .path()
        .join("journal")
        .join(format!("segment-{:020}.log", 0));
    assert!(
        !first_segment.exists(),
        "the segment with the ledger's records was truncated"
    );
    let (storage, recovered) = Storage::open(dir.path(), options(50)).expect("reopen");
    let expected: HashMap<String, SimulatedCharge> = [
        ("o_a", charge(100, SimulatedChargeState::Voided)),
        ("o_b", charge(100, SimulatedChargeState::Declined)),
        ("o_c", charge(100, SimulatedChargeState::Approved)),
    ]
    .into_iter()
    .map(|(key, charge)| (key.to_owned(), charge))
    .collect();
    assert_eq!(recovered.ledger, expected);
    storage.close();
}

#[test]
fn ledger_records_the_checkpoint_lacks_come_back_from_the_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (storage, _) = Storage::open(dir.path(), options(1_000)).expect("open");
    for (key, state) in [
        ("o_a", SimulatedChargeState::Approved),
        ("o_b", SimulatedChargeState::Declined),
        ("o_a", SimulatedChargeState::Voided),
    ] {
        let commit = storage.append_ledger(key, &charge(100, state));
        runtime.block_on(commit.wait()).expect("durable");
    }
    storage.close();
    drop(storage);
    // The checkpoint is written behind the journal: as if a crash had left it without these records.
    let checkpoint_dir = dir.path().join(persistence::ledger::LEDGER_DIR);
    std::fs::remove_dir_all(&checkpoint_dir).expect("remove the checkpoint");
    let expected: HashMap<String, SimulatedCharge> = [
        ("o_a", charge(100, SimulatedChargeState::Voided)),
        ("o_b", charge(100, SimulatedChargeState::Declined)),
    ]
    .into_iter()
    .map(|(key, charge)| (key.to_owned(), charge))
    .collect();
    let (storage, recovered) = Storage::open(dir.path(), options(1_000)).expect("reopen");
    assert_eq!(recovered.ledger, expected);
    storage.close();
    drop(storage);
    // Recovery wrote them to the checkpoint, in order, before going on.
    let (checkpoint, charges, records) =
        persistence::ledger::LedgerCheckpoint::open(&checkpoint_dir, true).expect("checkpoint");
    checkpoint.close();
    assert_eq!((charges, records), (expected, 3));
}

fn payment(intent: Option<&str>) -> engine::payment::PaymentRecord {
    engine::payment::PaymentRecord {
        payment_method: "pm_1".into(),
        amount_cents: 1500,
        intent_id: intent.map(str::to_owned),
    }
}

#[test]
fn payment_records_reach_sled_in_batches_and_a_forgotten_one_stays_forgotten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let record = |storage: &Storage, order: &str, intent: Option<&str>| {
        let commit = storage.append_meta(MetaRecord::Payment {
            order_id: order.into(),
            record: Some(payment(intent)),
        });
        runtime.block_on(commit.wait()).expect("durable");
    };
    let orders = |payments: &[(String, engine::payment::PaymentRecord)]| {
        let mut orders: Vec<(String, Option<String>)> = payments
            .iter()
            .map(|(order, record)| (order.clone(), record.intent_id.clone()))
            .collect();
        orders.sort();
        orders
    };
    {
        let (storage, _) = Storage::open(dir.path(), options(10)).expect("open");
        record(&storage, "o_1", None);
        record(&storage, "o_1", Some("pi_1"));
        record(&storage, "o_2", None);
        // Its end is not journaled: sled drops it with the batch the close applies.
        storage.forget_payment("o_2");
        storage.close();
    }
    {
        // The journal still holds o_2's record, but sled's position says it is applied: it stays forgotten.
        let (storage, recovered) = Storage::open(dir.path(), options(10)).expect("reopen");
        assert_eq!(
            orders(&recovered.payments),
            vec![("o_1".to_owned(), Some("pi_1".to_owned()))]
        );
        record(&storage, "o_3", None);
        record(&storage, "o_4", None);
        // o_4 reaches sled in this batch, so its end later must reach it too.
        storage.write_snapshots_now(Vec::new()).expect("a batch");
        storage.forget_payment("o_4");
        storage.forget_payment("o_1");
        // The snapshot writer's batch (with no snapshot to store) applies what is behind and makes it durable.
        storage.write_snapshots_now(Vec::new()).expect("a batch");
        storage.close();
    }
    let (storage, recovered) = Storage::open(dir.path(), options(10)).expect("reopen");
    assert_eq!(orders(&recovered.payments), vec![("o_3".to_owned(), None)]);
    storage.close();
}

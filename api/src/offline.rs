//! `boxoffice snapshot` and `boxoffice inspect`: tools for a stopped node's data dir.
//!
//! Both recover the data dir the way a starting node does (snapshots plus journal tail, the torn tail cut), but
//! without actors, the payment provider or a socket. `snapshot` then writes a snapshot of every shard, which
//! lets the journal behind them go. `inspect` prints what every concert holds and checks the invariants: every
//! shard's counts add up and agree with its seats and tickets, no seat and no ticket token is sold twice, and the
//! payment simulator charged no order that has no tickets (and sold no tickets it did not charge).

use crate::config::{DataDirArgs, InspectArgs};
use crate::server::SIMULATOR_LEDGER_DIR;
use engine::journal::ShardSnapshot;
use engine::payment::SimulatedChargeState;
use engine::shard_state::Availability;
use persistence::ledger::SimulatorLedger;
use persistence::storage::{RecoveredConcert, Storage, StorageOptions};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

pub fn snapshot(args: &DataDirArgs) -> Result<(), String> {
    ensure_exists(&args.data_dir)?;
    let (storage, recovered) = Storage::open(&args.data_dir, StorageOptions::default())
        .map_err(|error| error.to_string())?;
    let before = storage.journal_stats();
    let mut snapshots = Vec::new();
    for concert in recovered.concerts {
        for (shard, state) in concert.states.into_iter().enumerate() {
            snapshots.push(ShardSnapshot {
                concert_id: concert.spec.id.clone(),
                shard: shard as u32,
                state,
            });
        }
    }
    let count = snapshots.len();
    storage
        .write_snapshots_now(snapshots)
        .map_err(|error| error.to_string())?;
    let after = storage.journal_stats();
    storage.close();
    println!(
        "snapshots written: {count}; journal: {} segments, {} bytes before; {} segments, {} bytes after",
        before.segments, before.bytes, after.segments, after.bytes
    );
    Ok(())
}

#[derive(Serialize)]
struct Report {
    concerts: Vec<ConcertReport>,
    users: usize,
    journal: JournalReport,
    ledger: LedgerReport,
    violations: Vec<String>,
}

#[derive(Serialize)]
struct ConcertReport {
    id: String,
    name: String,
    capacity: u64,
    remaining: u64,
    held: u64,
    sold: u64,
    shards: Vec<ShardReport>,
}

#[derive(Serialize)]
struct ShardReport {
    /// Events the shard has applied since it was created.
    events: u64,
    /// Position of its newest snapshot (0: none).
    snapshot_position: u64,
    /// Events read from the journal after that snapshot.
    journal_events: u64,
}

#[derive(Serialize)]
struct JournalReport {
    segments: usize,
    bytes: u64,
    records: u64,
    torn_tail_bytes_cut: u64,
}

#[derive(Default, Serialize)]
struct LedgerReport {
    approved: u64,
    declined: u64,
    voided: u64,
    /// Approved charges of orders still being paid for, which the next start settles.
    approved_in_flight: u64,
}

/// Prints the report; `Err` when the data dir cannot be read, `Ok(false)` when an invariant is broken.
pub fn inspect(args: &InspectArgs) -> Result<bool, String> {
    ensure_exists(&args.data_dir)?;
    let (storage, recovered) = Storage::open(&args.data_dir, StorageOptions::default())
        .map_err(|error| error.to_string())?;
    let positions = storage
        .snapshot_positions()
        .map_err(|error| error.to_string())?;
    let mut violations = Vec::new();
    let concerts: Vec<ConcertReport> = recovered
        .concerts
        .iter()
        .map(|concert| concert_report(concert, &positions, &mut violations))
        .collect();
    check_tickets(&recovered.concerts, &mut violations);
    let ledger = check_ledger(&args.data_dir, &recovered.concerts, &mut violations)?;
    let journal = JournalReport {
        segments: recovered.journal.segments,
        bytes: recovered.journal.bytes,
        records: recovered.journal.records,
        torn_tail_bytes_cut: recovered
            .journal
            .torn_tail
            .as_ref()
            .map_or(0, |torn| torn.bytes_cut),
    };
    storage.close();
    let report = Report {
        concerts,
        users: recovered.users.len(),
        journal,
        ledger,
        violations,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?
        );
    } else {
        print_text(&report);
    }
    Ok(report.violations.is_empty())
}

fn ensure_exists(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("no data dir at {}", dir.display()))
    }
}

fn concert_report(
    concert: &RecoveredConcert,
    positions: &BTreeMap<String, u64>,
    violations: &mut Vec<String>,
) -> ConcertReport {
    let spec = &concert.spec;
    let mut total = Availability::default();
    let mut shards = Vec::new();
    for (shard, state) in concert.states.iter().enumerate() {
        if let Err(reason) = state.check() {
            violations.push(format!("{} shard {shard}: {reason}", spec.id));
        }
        total.add(state.availability());
        shards.push(ShardReport {
            events: state.events_applied(),
            snapshot_position: positions
                .get(&persistence::wire::shard_stream(&spec.id.0, shard as u32))
                .copied()
                .unwrap_or(0),
            journal_events: concert.shards[shard].events_replayed,
        });
    }
    if total.total() != spec.capacity() {
        violations.push(format!(
            "{}: remaining {} + held {} + sold {} != capacity {}",
            spec.id,
            total.remaining,
            total.held,
            total.sold,
            spec.capacity()
        ));
    }
    ConcertReport {
        id: spec.id.0.clone(),
        name: spec.name.clone(),
        capacity: spec.capacity(),
        remaining: total.remaining,
        held: total.held,
        sold: total.sold,
        shards,
    }
}

/// No ticket id or token appears twice across the whole node.
fn check_tickets(concerts: &[RecoveredConcert], violations: &mut Vec<String>) {
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for state in concerts.iter().flat_map(|concert| &concert.states) {
        for (id, ticket) in state.tickets() {
            if !ids.insert(id.clone()) {
                violations.push(format!("ticket {id} exists twice"));
            }
            if !tokens.insert(ticket.token.clone()) {
                violations.push(format!("ticket {id} repeats another ticket's token"));
            }
        }
    }
}

/// Every approved charge has its tickets (or its order is still being paid for), and every sold order was charged.
fn check_ledger(
    data_dir: &Path,
    concerts: &[RecoveredConcert],
    violations: &mut Vec<String>,
) -> Result<LedgerReport, String> {
    let ledger_dir = data_dir.join(SIMULATOR_LEDGER_DIR);
    let mut report = LedgerReport::default();
    if !ledger_dir.is_dir() {
        return Ok(report);
    }
    let (ledger, charges) = SimulatorLedger::open(&ledger_dir, true)
        .map_err(|error| format!("cannot read the simulator's ledger: {error}"))?;
    ledger.close();
    let mut sold_orders = HashSet::new();
    let mut paying_orders = HashSet::new();
    for state in concerts.iter().flat_map(|concert| &concert.states) {
        sold_orders.extend(state.tickets().map(|(_, ticket)| ticket.order_id.0.clone()));
        paying_orders.extend(
            state
                .reservations()
                .filter_map(|(_, reservation)| reservation.paying.as_ref())
                .map(|order_id| order_id.0.clone()),
        );
    }
    let states: HashMap<&str, SimulatedChargeState> = charges
        .iter()
        .map(|(key, charge)| (key.as_str(), charge.state))
        .collect();
    for (key, state) in &states {
        match state {
            SimulatedChargeState::Approved if sold_orders.contains(*key) => report.approved += 1,
            SimulatedChargeState::Approved if paying_orders.contains(*key) => {
                report.approved += 1;
                report.approved_in_flight += 1;
            }
            SimulatedChargeState::Approved => {
                report.approved += 1;
                violations.push(format!("order {key} was charged but has no tickets"));
            }
            SimulatedChargeState::Declined => report.declined += 1,
            SimulatedChargeState::Voided | SimulatedChargeState::Pending => report.voided += 1,
        }
    }
    for order in &sold_orders {
        if states.get(order.as_str()) != Some(&SimulatedChargeState::Approved) {
            violations.push(format!("order {order} has tickets but no approved charge"));
        }
    }
    Ok(report)
}

fn print_text(report: &Report) {
    for concert in &report.concerts {
        println!(
            "concert {} ({}): capacity {}, remaining {}, held {}, sold {}",
            concert.id,
            concert.name,
            concert.capacity,
            concert.remaining,
            concert.held,
            concert.sold
        );
        for (shard, detail) in concert.shards.iter().enumerate() {
            println!(
                "  shard {shard}: {} events, snapshot at {}, {} events in the journal after it",
                detail.events, detail.snapshot_position, detail.journal_events
            );
        }
    }
    println!("users: {}", report.users);
    println!(
        "journal: {} segments, {} bytes, {} records{}",
        report.journal.segments,
        report.journal.bytes,
        report.journal.records,
        if report.journal.torn_tail_bytes_cut > 0 {
            format!(
                " ({} bytes of torn tail cut)",
                report.journal.torn_tail_bytes_cut
            )
        } else {
            String::new()
        }
    );
    println!(
        "payment simulator: {} approved ({} of orders in flight), {} declined, {} voided",
        report.ledger.approved,
        report.ledger.approved_in_flight,
        report.ledger.declined,
        report.ledger.voided
    );
    if report.violations.is_empty() {
        println!("invariants: ok");
    } else {
        for violation in &report.violations {
            println!("VIOLATION: {violation}");
        }
    }
}

//! `boxoffice snapshot` and `boxoffice inspect`: tools for a stopped node's data dir.
//!
//! Both recover the data dir the way a starting node does (snapshots plus journal tail, the torn tail cut), but
//! without actors, the payment provider or a socket. `snapshot` then writes a snapshot of every shard, which
//! lets the journal behind them go. `inspect` prints what every concert holds and checks the invariants: every
//! shard's counts add up and agree with its seats and tickets, no seat and no ticket token is sold twice, and the
//! payment simulator charged no order that has no tickets (and sold no tickets it did not charge).
//!
//! A cluster's shard node keeps only its own shards ([`crate::server::NODE_ID_FILE`] names the node): both tools
//! look at those alone. Its simulator's ledger holds the charges of its own users, whose tickets may live on
//! other nodes, so `inspect` counts them but checks them against tickets only on a single node.

use crate::config::{DataDirArgs, InspectArgs};
use engine::journal::ShardSnapshot;
use engine::payment::{SimulatedCharge, SimulatedChargeState};
use engine::remote::NodeId;
use engine::shard_state::Availability;
use persistence::storage::{RecoveredConcert, Storage, StorageOptions};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The node of a cluster this data dir belongs to, if it is a cluster node's.
fn cluster_node(data_dir: &Path) -> Result<Option<NodeId>, String> {
    match std::fs::read_to_string(data_dir.join(crate::server::NODE_ID_FILE)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| "the data dir's node id file is damaged".into()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Whether shard `shard` of `concert` lives in this data dir.
fn is_local(concert: &RecoveredConcert, shard: usize, node: Option<NodeId>) -> bool {
    match (&concert.placement, node) {
        (Some(placement), Some(node)) => placement[shard] == node,
        _ => true,
    }
}

pub fn snapshot(args: &DataDirArgs) -> Result<(), String> {
    ensure_exists(&args.data_dir)?;
    let node = cluster_node(&args.data_dir)?;
    let (storage, recovered) = Storage::open(&args.data_dir, StorageOptions::default())
        .map_err(|error| error.to_string())?;
    let before = storage.journal_stats();
    let mut snapshots = Vec::new();
    for concert in recovered.concerts {
        let local: Vec<bool> = (0..concert.states.len())
            .map(|shard| is_local(&concert, shard, node))
            .collect();
        for (shard, state) in concert.states.into_iter().enumerate() {
            if !local[shard] {
                continue;
            }
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
    shard: u32,
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
    /// Captured payments.
    approved: u64,
    /// Authorized and not captured yet: of sold orders, which the next start captures, of orders still being paid
    /// for, which it resolves, or of released orders whose record says so, which it voids.
    authorized: u64,
    declined: u64,
    voided: u64,
    /// Authorized or captured payments of orders still being paid for, which the next start settles.
    approved_in_flight: u64,
    /// Whether sold orders were checked against the simulator's ledger: not when it is empty, as a node paying
    /// at a provider over the network (`--payment http://...`) leaves it (that provider keeps the payments).
    checked: bool,
}

/// Prints the report; `Err` when the data dir cannot be read, `Ok(false)` when an invariant is broken.
pub fn inspect(args: &InspectArgs) -> Result<bool, String> {
    ensure_exists(&args.data_dir)?;
    let node = cluster_node(&args.data_dir)?;
    let (storage, recovered) = Storage::open(&args.data_dir, StorageOptions::default())
        .map_err(|error| error.to_string())?;
    let positions = storage
        .snapshot_positions()
        .map_err(|error| error.to_string())?;
    let mut violations = Vec::new();
    let concerts: Vec<ConcertReport> = recovered
        .concerts
        .iter()
        .map(|concert| concert_report(concert, node, &positions, &mut violations))
        .collect();
    check_tickets(&recovered.concerts, node, &mut violations);
    // A cluster node's charges are its users', whose tickets may be on any node: counted, not checked here.
    let mut unchecked = Vec::new();
    let ledger = check_ledger(
        &recovered.ledger,
        &recovered.payments,
        &recovered.concerts,
        if node.is_some() {
            &mut unchecked
        } else {
            &mut violations
        },
    )?;
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
    node: Option<NodeId>,
    positions: &BTreeMap<String, u64>,
    violations: &mut Vec<String>,
) -> ConcertReport {
    let spec = &concert.spec;
    let mut total = Availability::default();
    // Tickets moving between two shards of the concert: sent by one, not yet taken by the other.
    let mut in_transit = 0i128;
    let mut shards = Vec::new();
    for (shard, state) in concert.states.iter().enumerate() {
        if !is_local(concert, shard, node) {
            continue;
        }
        if let Err(reason) = state.check() {
            violations.push(format!("{} shard {shard}: {reason}", spec.id));
        }
        total.add(state.availability());
        in_transit += i128::from(state.moved_out()) - i128::from(state.moved_in());
        shards.push(ShardReport {
            shard: shard as u32,
            events: state.events_applied(),
            snapshot_position: positions
                .get(&persistence::wire::shard_stream(&spec.id.0, shard as u32))
                .copied()
                .unwrap_or(0),
            journal_events: concert.shards[shard].events_replayed,
        });
    }
    // On a single node every move stays inside the concert: what is in transit makes up the difference. A
    // cluster node's moves go to and come from other nodes, and each shard's own check covers them.
    if node.is_none() && i128::from(total.total()) + in_transit != i128::from(spec.capacity()) {
        violations.push(format!(
            "{}: remaining {} + held {} + sold {} + in transit {in_transit} != capacity {}",
            spec.id,
            total.remaining,
            total.held,
            total.sold,
            spec.capacity()
        ));
    }
    ConcertReport {
        id: spec.id.0.to_string(),
        name: spec.name.clone(),
        capacity: spec.capacity(),
        remaining: total.remaining,
        held: total.held,
        sold: total.sold,
        shards,
    }
}

/// No ticket id or token appears twice across the whole node.
fn check_tickets(
    concerts: &[RecoveredConcert],
    node: Option<NodeId>,
    violations: &mut Vec<String>,
) {
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let local_states = concerts.iter().flat_map(|concert| {
        concert
            .states
            .iter()
            .enumerate()
            .filter(move |(shard, _)| is_local(concert, *shard, node))
            .map(|(_, state)| state)
    });
    for state in local_states {
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

/// Every approved charge has its tickets (or its order is still being paid for), and every sold order was charged
/// (when there is a ledger to check against).
fn check_ledger(
    charges: &HashMap<String, SimulatedCharge>,
    payments: &[(String, engine::payment::PaymentRecord)],
    concerts: &[RecoveredConcert],
    violations: &mut Vec<String>,
) -> Result<LedgerReport, String> {
    let mut report = LedgerReport::default();
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
    let recorded: HashSet<&str> = payments
        .iter()
        .filter(|(_, record)| record.intent_id.is_some())
        .map(|(order, _)| order.as_str())
        .collect();
    for (key, state) in &states {
        match state {
            SimulatedChargeState::Authorized
                if sold_orders.contains(*key) || recorded.contains(*key) =>
            {
                report.authorized += 1;
            }
            SimulatedChargeState::Authorized if paying_orders.contains(*key) => {
                report.authorized += 1;
                report.approved_in_flight += 1;
            }
            SimulatedChargeState::Authorized => {
                report.authorized += 1;
                violations.push(format!(
                    "order {key} holds an authorization but has no tickets"
                ));
            }
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
    report.checked = !charges.is_empty() || sold_orders.is_empty();
    for order in sold_orders.iter().filter(|_| report.checked) {
        if !matches!(
            states.get(&**order),
            Some(SimulatedChargeState::Approved | SimulatedChargeState::Authorized)
        ) {
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
        for detail in &concert.shards {
            println!(
                "  shard {}: {} events, snapshot at {}, {} events in the journal after it",
                detail.shard, detail.events, detail.snapshot_position, detail.journal_events
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
    if report.ledger.checked {
        println!(
            "payment simulator: {} captured, {} authorized ({} of orders in flight), {} declined, {} voided",
            report.ledger.approved,
            report.ledger.authorized,
            report.ledger.approved_in_flight,
            report.ledger.declined,
            report.ledger.voided
        );
    } else {
        println!(
            "payment simulator: no ledger (payments made at a provider over the network): sold orders not checked against payments"
        );
    }
    if report.violations.is_empty() {
        println!("invariants: ok");
    } else {
        for violation in &report.violations {
            println!("VIOLATION: {violation}");
        }
    }
}

//! `flash-sale`: a seated sale the way people live it. Subscribers watch the concert's live feed
//! (`GET /concerts/{id}/events`) as the seat-picking page does; buyers pick free seats from what the first
//! subscriber sees (so they race for the same seats, and lose some with `409 seat_taken`), hold them, think, and
//! then each does what their intent says: buys (`POST /holds/{id}/purchase`), buys with a card the provider declines,
//! cancels (`DELETE /holds/{id}`), walks away (the hold expires), or comes back after the hold ran out (`410`).
//!
//! Everything is set up before the gate opens: the buyers (bulk, two cards), the concert, and every subscriber's
//! snapshot. When the buyers are done the run waits for the last holds to expire and for every subscriber to have
//! seen every change, then checks:
//! - the counts: `remaining + held + sold == capacity`, nothing held at the end, sold == the seats of the purchases
//!   answered 201, no seat in two of them, and `GET /concerts/{id}/seats` sells exactly those seats;
//! - the feed: positions without gaps, each subscriber's seat map equal to `GET /seats`, and per seat exactly the
//!   changes the buyers caused (one `held` per hold answered 201, one `sold` per purchase, one `released` per
//!   cancel or declined purchase, one `expired` per hold left to run out);
//! - how long a click took to reach each subscriber's screen (from sending the hold or purchase to the event).

use crate::burst::{
    APPROVED_CARD, Counts, DECLINED_CARD, counts, create_users, post_concert, progress_bar,
};
use crate::client::{Connection, Failure, Resend, Target, error_code};
use crate::report::Invariants;
use crate::seat_feed::{Board, Change, FREE, SOLD, SeatList, Watched, Watcher, seat_map};
use crate::stats::{Summary, round_to};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Seats of a seated concert at most (the server's `SEATED_CAPACITY_MAX`).
pub const SEATED_CAPACITY_MAX: u64 = 100_000;
/// Sections are named `A` to `Z`.
pub const SECTIONS_MAX: u32 = 26;
/// Subscribers at most: each keeps every change it saw until the run is checked.
pub const SUBSCRIBERS_MAX: u64 = 2_000;
/// How long the subscribers may take to join the feed and get their snapshots.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Changes kept by all subscribers together at most (16 bytes each): buyers × seats per buyer × 2 × subscribers.
pub const CHANGES_KEPT_MAX: u64 = 100_000_000;
/// How long after the last hold's expiry the run waits for the server to have expired it.
const SETTLE_GRACE: Duration = Duration::from_secs(30);
/// How long the run waits for every subscriber to have seen every change once the sale has settled.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// A late buyer comes back this long after its hold's `expires_at`.
const LATE_BY: Duration = Duration::from_millis(1_500);
/// Problems listed in the report at most (the count is always given).
const PROBLEMS_LISTED_MAX: usize = 20;

/// What a buyer means to do with the seats it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Buy,
    /// Buys with a card the provider declines.
    Decline,
    Cancel,
    /// Walks away: the hold expires.
    Abandon,
    /// Comes back to buy after the hold expired.
    Late,
}

/// The share of buyers with each intent besides buying; the rest buy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Shares {
    pub decline: f64,
    pub cancel: f64,
    pub abandon: f64,
    pub late: f64,
}

impl Shares {
    /// Each buyer's intent, in a random order; the counts are the shares of `buyers`, rounded.
    pub fn intents(self, buyers: u64) -> Result<Vec<Intent>, String> {
        let shares = [
            (Intent::Decline, self.decline),
            (Intent::Cancel, self.cancel),
            (Intent::Abandon, self.abandon),
            (Intent::Late, self.late),
        ];
        if shares.iter().any(|(_, share)| !(0.0..=1.0).contains(share))
            || shares.iter().map(|(_, share)| share).sum::<f64>() > 1.0 + 1e-9
        {
            return Err("the shares must be between 0 and 1 and add up to 1 at most".into());
        }
        let mut intents = Vec::with_capacity(buyers as usize);
        for (intent, share) in shares {
            let count = ((buyers as f64 * share).round() as u64).min(buyers - intents.len() as u64);
            intents.extend(std::iter::repeat_n(intent, count as usize));
        }
        intents.resize(buyers as usize, Intent::Buy);
        Ok(intents)
    }
}

/// The seat map: `sections` sections of `rows` rows of `seats_per_row` seats, indexed section by section, row
/// by row, as `GET /concerts/{id}/seats` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub sections: u32,
    pub rows: u32,
    pub seats_per_row: u32,
}

impl Layout {
    pub fn seats(self) -> u32 {
        self.sections * self.rows * self.seats_per_row
    }

    /// `SECTION-ROW-SEAT`, rows and seats counted from 1.
    pub fn label(self, index: u32) -> String {
        let per_section = self.rows * self.seats_per_row;
        let section = char::from(b'A' + (index / per_section) as u8);
        let row = index % per_section / self.seats_per_row + 1;
        let seat = index % self.seats_per_row + 1;
        format!("{section}-{row}-{seat}")
    }

    /// The concert's `sections` as `POST /concerts` takes them.
    fn sections_json(self) -> serde_json::Value {
        (0..self.sections)
            .map(|section| {
                json!({"name": char::from(b'A' + section as u8).to_string(), "rows": self.rows,
                       "seats_per_row": self.seats_per_row})
            })
            .collect()
    }
}

/// One flash sale to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub layout: Layout,
    pub buyers: u64,
    pub concurrency: u64,
    pub subscribers: u64,
    /// Seats a buyer wants at most (each wants 1 to this many).
    pub group_max: u32,
    /// Holds a buyer tries before giving up on seats taken.
    pub attempts: u32,
    pub shares: Shares,
    /// A buyer thinks up to this long between its hold and what it does next.
    pub think_ms: u64,
    pub shards: Option<u32>,
    pub payment_latency_ms: Option<u64>,
    /// Usernames and idempotency keys start with this.
    pub prefix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    #[serde(flatten)]
    pub layout: Layout,
    pub seats: u32,
    pub buyers: u64,
    pub concurrency: u64,
    pub subscribers: u64,
    pub group_max: u32,
    pub attempts: u32,
    pub think_ms: u64,
    pub shares: Shares,
    pub payment_latency_ms: Option<u64>,
    /// The server's hold time, from the first hold's `expires_at`.
    pub hold_ttl_s: Option<f64>,
}

/// One kind of request the buyers sent.
#[derive(Clone, Debug, Serialize)]
pub struct Requests {
    pub count: u64,
    /// By `"<status>"` or `"<status> <code>"`, or `"transport <kind>"`.
    pub answers: BTreeMap<String, u64>,
    /// From sending to the whole answer.
    pub latency_ms: Option<Summary>,
}

/// The subscribers' side.
#[derive(Clone, Debug, Serialize)]
pub struct Feed {
    pub subscribers: u64,
    /// Seat changes the buyers caused (holds, purchases, cancels, declines and expiries).
    pub changes_expected: u64,
    /// The fewest and most changes one subscriber received.
    pub changes_seen_min: u64,
    pub changes_seen_max: u64,
    /// Streams that ended under a subscriber and were resumed with `Last-Event-ID`.
    pub reconnects: u64,
    /// Resumptions answered with a new snapshot rather than the missed changes (their per-seat counts are not
    /// checked).
    pub snapshots_after_start: u64,
    /// Subscribers whose changes were checked seat by seat: those that never needed a second snapshot.
    pub subscribers_checked: u64,
    /// Seats some request left in doubt (no answer, a 5xx, a refused cancel), left out of the per-seat check.
    pub seats_not_compared: u64,
    /// From sending a hold or purchase to a subscriber receiving its change, over every subscriber and change.
    pub delivery_ms: Option<Summary>,
    /// The same, to the last subscriber to receive each change.
    pub delivery_to_all_ms: Option<Summary>,
}

/// The figures of a flash sale, as `report.json` carries them under `flash_sale`.
#[derive(Clone, Debug, Serialize)]
pub struct FlashReport {
    pub parameters: Parameters,
    /// How each buyer's visit ended.
    pub buyers: BTreeMap<String, u64>,
    /// `hold`, `purchase` and `cancel`.
    pub requests: BTreeMap<String, Requests>,
    pub feed: Feed,
    pub seats_sold: u64,
    /// From opening the gate to the last buyer's last answer.
    pub duration_s: f64,
    /// From then until nothing was held any more.
    pub settle_s: f64,
    pub setup_s: f64,
    pub invariants: Invariants,
}

/// The figures and what the charts are drawn from.
pub struct FlashRun {
    pub report: FlashReport,
    /// Every request: (kind, sent ms, done ms, answer), times from the opening of the gate.
    pub steps: Vec<Step>,
    /// The first subscriber's availability events: (ms from the gate, remaining, held, sold).
    pub timeline: Vec<(f64, u64, u64, u64)>,
    /// Every delivery, ms.
    pub deliveries: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub kind: &'static str,
    pub sent_ms: f64,
    pub done_ms: f64,
    pub answer: String,
}

/// What a buyer's visit caused on the seats.
#[derive(Default)]
struct Visit {
    ending: String,
    steps: Vec<Step>,
    /// (seat, change, ms the request was sent, ms its answer came) for the changes a 2xx or 402 answer confirmed.
    acks: Vec<(u32, Change, f64, f64)>,
    /// Seats whose hold this buyer left to expire.
    expiring: Vec<u32>,
    /// Seats bought (201).
    bought: Vec<u32>,
    /// Seats a request without a clear answer may or may not have changed (no answer, a 5xx, a cancel refused):
    /// left out of the per-seat comparison of the feed.
    uncertain: Vec<u32>,
    /// The first hold's `expires_at` minus when its answer came, s.
    ttl_s: Option<f64>,
    /// When this buyer's last hold expires.
    expires_at: Option<time::OffsetDateTime>,
    problem: Option<String>,
}

struct Sale {
    target: Target,
    concert_id: String,
    layout: Layout,
    board: Arc<Board>,
    buyers: Vec<(String, Intent)>,
    plan: Plan,
    origin: Instant,
    next: AtomicUsize,
}

#[derive(Deserialize)]
struct HoldAnswer {
    id: String,
    expires_at: String,
}

/// Sets up, runs and checks one flash sale.
pub async fn run(target: &Target, admin_token: &str, plan: &Plan) -> Result<FlashRun, String> {
    // A buyer causes at most two changes per seat it wants (held, then sold, released or expired).
    let changes_kept = plan.buyers * u64::from(plan.group_max) * 2 * plan.subscribers;
    if changes_kept > CHANGES_KEPT_MAX {
        return Err(format!(
            "buyers × --group-max × 2 × subscribers is {changes_kept}: at most {CHANGES_KEPT_MAX} changes are kept \
             for the checks; fewer buyers or subscribers"
        ));
    }
    let layout = plan.layout;
    let setup_started = Instant::now();
    let intents = {
        use rand::seq::SliceRandom;
        let mut intents = plan.shares.intents(plan.buyers)?;
        intents.shuffle(&mut rand::rng());
        intents
    };
    let declining = intents.iter().filter(|i| **i == Intent::Decline).count() as u64;
    eprintln!(
        "creating {} buyers ({declining} with a card the provider declines)",
        plan.buyers
    );
    let mut approved = create_users(
        target,
        admin_token,
        &format!("{}a", plan.prefix),
        plan.buyers - declining,
        APPROVED_CARD,
    )
    .await?
    .into_iter();
    let mut declined = create_users(
        target,
        admin_token,
        &format!("{}d", plan.prefix),
        declining,
        DECLINED_CARD,
    )
    .await?
    .into_iter();
    let buyers = intents
        .into_iter()
        .map(|intent| {
            let token = if intent == Intent::Decline {
                declined.next()
            } else {
                approved.next()
            };
            (token.expect("a token per buyer"), intent)
        })
        .collect();
    let body = json!({
        "name": "boxoffice-load flash sale",
        "starts_at": "2030-06-01T20:00:00Z",
        "price_cents": 7_500,
        "sections": layout.sections_json(),
    });
    let concert_id = post_concert(target, admin_token, body, plan.shards).await?;
    let labels: Arc<HashMap<String, u32>> = Arc::new(
        (0..layout.seats())
            .map(|index| (layout.label(index), index))
            .collect(),
    );
    let board = Arc::new(Board::new(layout));
    let origin = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let ready = Arc::new(Semaphore::new(0));
    eprintln!("{} subscribers joining the feed", plan.subscribers);
    let mut watchers = tokio::task::JoinSet::new();
    let mut seen_counters = Vec::new();
    for index in 0..plan.subscribers as usize {
        let seen = Arc::new(AtomicU64::new(0));
        seen_counters.push(seen.clone());
        let watcher = Watcher {
            index,
            target: target.clone(),
            concert_id: concert_id.clone(),
            labels: labels.clone(),
            board: (index == 0).then(|| board.clone()),
            origin,
            seen,
        };
        let (ready, stopped) = (ready.clone(), stopped.clone());
        watchers.spawn(async move { (index, watcher.watch(ready, stopped).await) });
    }
    let joined = tokio::select! {
        permits = ready.acquire_many(plan.subscribers as u32) => permits.is_ok(),
        // A subscriber that ends now never got its snapshot.
        _ = watchers.join_next() => false,
        _ = tokio::time::sleep(SUBSCRIBE_TIMEOUT) => false,
    };
    if !joined {
        let _ = stop.send(true);
        return Err(format!(
            "the subscribers did not all get their snapshot within {} s (see server.log)",
            SUBSCRIBE_TIMEOUT.as_secs()
        ));
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    let sale = Arc::new(Sale {
        target: target.clone(),
        concert_id: concert_id.clone(),
        layout,
        board,
        buyers,
        plan: plan.clone(),
        origin,
        next: AtomicUsize::new(0),
    });
    eprintln!(
        "setup took {setup_s:.1} s; the gate opens for {} buyers, {} at once",
        plan.buyers, plan.concurrency
    );
    let gate_ms = ms_since(origin);
    let visits = open_gate(&sale).await;
    let sale_end_ms = ms_since(origin);
    let settled = settle(target, &concert_id, &visits).await?;
    let settle_ms = ms_since(origin) - sale_end_ms;
    let final_seats = final_seats(target, &concert_id, &labels).await?;
    let uncertain = uncertain_seats(&visits);
    let expected = expected_changes(&visits, &uncertain);
    let changes_expected: u64 = expected.values().map(|count| *count as u64).sum();
    wait_for_subscribers(&seen_counters, changes_expected).await;
    let _ = stop.send(true);
    let mut watched = Vec::with_capacity(plan.subscribers as usize);
    while let Some(joined) = watchers.join_next().await {
        watched.push(joined.map_err(|error| format!("a subscriber failed: {error}"))?);
    }
    watched.sort_by_key(|(index, _)| *index);
    let watched: Vec<Watched> = watched.into_iter().map(|(_, w)| w).collect();

    let mut problems = Vec::new();
    let bought: Vec<u32> = visits
        .iter()
        .flat_map(|v| v.bought.iter().copied())
        .collect();
    check_seats(&bought, &final_seats, layout, &mut problems);
    problems.extend(visits.iter().filter_map(|v| v.problem.clone()));
    for (index, watch) in watched.iter().enumerate() {
        check_subscriber(
            index,
            watch,
            &final_seats,
            &expected,
            &uncertain,
            &mut problems,
        );
    }
    let mut invariants = Invariants::check(
        settled.capacity,
        settled.remaining,
        settled.held,
        settled.sold,
        bought.len() as u64,
    );
    if settled.held != 0 {
        problems.push(format!(
            "{} seats still held after every hold expired",
            settled.held
        ));
    }
    let free = final_seats.iter().filter(|s| **s == FREE).count() as u64;
    if free != settled.remaining {
        problems.push(format!(
            "GET /seats shows {free} free seats, the concert {} remaining",
            settled.remaining
        ));
    }
    if !watched.iter().any(|w| w.snapshots == 1) {
        problems.push(
            "every subscriber needed a new snapshot on resuming: no one's changes could be checked seat by seat"
                .into(),
        );
    }
    let problem_count = problems.len();
    invariants
        .problems
        .extend(problems.into_iter().take(PROBLEMS_LISTED_MAX));
    if problem_count > PROBLEMS_LISTED_MAX {
        invariants.problems.push(format!(
            "and {} more problems",
            problem_count - PROBLEMS_LISTED_MAX
        ));
    }
    invariants.hold = invariants.problems.is_empty();

    let (deliveries, to_all) = deliveries(&visits, &watched, &uncertain);
    let feed = Feed {
        subscribers: plan.subscribers,
        changes_expected,
        changes_seen_min: watched
            .iter()
            .map(|w| w.changes.len() as u64)
            .min()
            .unwrap_or(0),
        changes_seen_max: watched
            .iter()
            .map(|w| w.changes.len() as u64)
            .max()
            .unwrap_or(0),
        reconnects: watched.iter().map(|w| w.reconnects as u64).sum(),
        snapshots_after_start: watched
            .iter()
            .map(|w| u64::from(w.snapshots.saturating_sub(1)))
            .sum(),
        subscribers_checked: watched.iter().filter(|w| w.snapshots == 1).count() as u64,
        seats_not_compared: uncertain.len() as u64,
        delivery_ms: Summary::of(&deliveries).map(|s| s.rounded(3)),
        delivery_to_all_ms: Summary::of(&to_all).map(|s| s.rounded(3)),
    };
    let mut buyers = BTreeMap::new();
    for visit in &visits {
        *buyers.entry(visit.ending.clone()).or_insert(0) += 1;
    }
    let steps: Vec<Step> = visits
        .iter()
        .flat_map(|v| v.steps.iter())
        .map(|step| Step {
            sent_ms: step.sent_ms - gate_ms,
            done_ms: step.done_ms - gate_ms,
            ..step.clone()
        })
        .collect();
    let report = FlashReport {
        parameters: Parameters {
            layout,
            seats: layout.seats(),
            buyers: plan.buyers,
            concurrency: plan.concurrency,
            subscribers: plan.subscribers,
            group_max: plan.group_max,
            attempts: plan.attempts,
            think_ms: plan.think_ms,
            shares: plan.shares,
            payment_latency_ms: plan.payment_latency_ms,
            hold_ttl_s: visits.iter().find_map(|v| v.ttl_s).map(|s| round_to(s, 1)),
        },
        buyers,
        requests: requests(&steps),
        feed,
        seats_sold: bought.len() as u64,
        duration_s: round_to((sale_end_ms - gate_ms) / 1000.0, 3),
        settle_s: round_to(settle_ms / 1000.0, 3),
        setup_s: round_to(setup_s, 3),
        invariants,
    };
    let timeline = watched
        .first()
        .map(|w| {
            w.timeline
                .iter()
                .map(|&(at, r, h, s)| (at - gate_ms, r, h, s))
                .collect()
        })
        .unwrap_or_default();
    Ok(FlashRun {
        report,
        steps,
        timeline,
        deliveries,
    })
}

/// Milliseconds since `origin`.
pub fn ms_since(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1000.0
}

/// `concurrency` lanes take the next buyer until none is left; every visit, in no particular order.
async fn open_gate(sale: &Arc<Sale>) -> Vec<Visit> {
    let lanes = (sale.plan.concurrency as usize).min(sale.buyers.len());
    let progress = progress_bar(sale.buyers.len() as u64, "buyers done");
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (sale, progress) = (sale.clone(), progress.clone());
        tasks.spawn(async move {
            let mut connection = None;
            let mut visits = Vec::new();
            loop {
                let index = sale.next.fetch_add(1, Ordering::Relaxed);
                if index >= sale.buyers.len() {
                    return visits;
                }
                visits.push(visit(&sale, lane, &mut connection, index).await);
                progress.inc(1);
            }
        });
    }
    let mut visits = Vec::with_capacity(sale.buyers.len());
    while let Some(joined) = tasks.join_next().await {
        visits.extend(joined.expect("a lane does not panic"));
    }
    progress.finish_and_clear();
    visits
}

/// One buyer: holds seats (trying again when they were taken), thinks, and does what it came to do.
async fn visit(
    sale: &Sale,
    lane: usize,
    connection: &mut Option<Connection>,
    index: usize,
) -> Visit {
    let (token, intent) = &sale.buyers[index];
    let mut visit = Visit::default();
    let wanted = rand::random_range(1..=sale.plan.group_max);
    let mut held = None;
    for _ in 0..sale.plan.attempts {
        let Some(seats) = sale
            .board
            .pick(wanted, |below| rand::random_range(0..below))
        else {
            visit.ending = "gave up: nothing free".into();
            return visit;
        };
        let labels: Vec<String> = seats.iter().map(|s| sale.layout.label(*s)).collect();
        let body = json!({"concert_id": sale.concert_id, "seats": labels}).to_string();
        let (status, answer, sent_ms, done_ms) = visit
            .request(
                sale,
                lane,
                connection,
                "hold",
                Method::POST,
                "/holds".into(),
                token,
                Some(body.into()),
                None,
            )
            .await;
        match (status, error_code(&answer).as_str()) {
            (Some(StatusCode::CREATED), _) => {
                let Ok(hold) = serde_json::from_slice::<HoldAnswer>(&answer) else {
                    visit.ending = "hold: unexpected body".into();
                    return visit;
                };
                let expires_at = time::OffsetDateTime::parse(
                    &hold.expires_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok();
                visit.ttl_s =
                    expires_at.map(|at| (at - time::OffsetDateTime::now_utc()).as_seconds_f64());
                visit.expires_at = expires_at;
                for seat in &seats {
                    visit.acks.push((*seat, Change::Held, sent_ms, done_ms));
                }
                held = Some((hold.id, seats));
                break;
            }
            (Some(StatusCode::CONFLICT), "seat_taken") => continue,
            (Some(StatusCode::CONFLICT), "sold_out") => {
                visit.ending = "gave up: nothing free".into();
                return visit;
            }
            _ => {
                visit.unclear("hold", status, &seats);
                return visit;
            }
        }
    }
    let Some((hold_id, seats)) = held else {
        visit.ending = "gave up: seats taken".into();
        return visit;
    };
    if sale.plan.think_ms > 0 && *intent != Intent::Late {
        let think = rand::random_range(0..=sale.plan.think_ms);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    match intent {
        Intent::Abandon => {
            visit.expiring = seats;
            visit.ending = "walked away (hold expired)".into();
        }
        Intent::Cancel => {
            let (status, _, sent_ms, done_ms) = visit
                .request(
                    sale,
                    lane,
                    connection,
                    "cancel",
                    Method::DELETE,
                    format!("/holds/{hold_id}"),
                    token,
                    None,
                    None,
                )
                .await;
            if status == Some(StatusCode::NO_CONTENT) {
                for seat in &seats {
                    visit.acks.push((*seat, Change::Released, sent_ms, done_ms));
                }
                visit.ending = "cancelled".into();
            } else {
                // The hold may have run out before the cancel came (404), or the cancel may have landed without
                // an answer: either way the seats are free by the end, by a change we cannot name.
                visit.unclear("cancel", status, &seats);
            }
        }
        Intent::Buy | Intent::Decline | Intent::Late => {
            if *intent == Intent::Late
                && let Some(expires_at) = visit.expires_at
            {
                let until = (expires_at - time::OffsetDateTime::now_utc()).as_seconds_f64();
                tokio::time::sleep(Duration::from_secs_f64(until.max(0.0)) + LATE_BY).await;
            }
            let key = format!("{}{index}", sale.plan.prefix);
            let (status, answer, sent_ms, done_ms) = visit
                .request(
                    sale,
                    lane,
                    connection,
                    "purchase",
                    Method::POST,
                    format!("/holds/{hold_id}/purchase"),
                    token,
                    None,
                    Some(&key),
                )
                .await;
            let code = error_code(&answer);
            match (status, code.as_str(), intent) {
                (Some(StatusCode::CREATED), _, Intent::Buy) => {
                    for seat in &seats {
                        visit.acks.push((*seat, Change::Sold, sent_ms, done_ms));
                    }
                    visit.bought = seats;
                    visit.ending = "bought".into();
                }
                (Some(StatusCode::CREATED), _, _) => {
                    visit.bought = seats.clone();
                    for seat in &seats {
                        visit.acks.push((*seat, Change::Sold, sent_ms, done_ms));
                    }
                    visit.ending = format!("bought, unexpectedly ({intent:?})");
                    visit.problem = Some(format!(
                        "a {intent:?} buyer's purchase of hold {hold_id} was answered 201"
                    ));
                }
                (
                    Some(StatusCode::PAYMENT_REQUIRED),
                    "payment_declined",
                    Intent::Buy | Intent::Decline,
                ) => {
                    for seat in &seats {
                        visit.acks.push((*seat, Change::Released, sent_ms, done_ms));
                    }
                    visit.ending = "card declined".into();
                }
                (Some(StatusCode::GONE), "hold_expired", Intent::Late) => {
                    visit.expiring = seats;
                    visit.ending = "came back late (410 hold_expired)".into();
                }
                (Some(StatusCode::GONE), "hold_expired", _) => {
                    visit.expiring = seats;
                    visit.ending = "purchase: 410 hold_expired".into();
                }
                _ => visit.unclear("purchase", status, &seats),
            }
        }
    }
    visit
}

impl Visit {
    /// A `kind` request whose answer does not say what became of `seats`: they are left out of the feed's per-seat
    /// comparison, and an answer the API does not document for it is a problem of the run.
    fn unclear(&mut self, kind: &str, status: Option<StatusCode>, seats: &[u32]) {
        let answer = self.steps.last().map_or("-", |step| step.answer.as_str());
        self.ending = format!("{kind}: {answer}");
        self.uncertain.extend_from_slice(seats);
        let documented = match status {
            None => true,
            Some(status) => matches!(status.as_u16(), 402 | 404 | 409 | 410 | 503),
        };
        if !documented {
            self.problem = Some(format!("a {kind} was answered {answer}"));
        }
    }

    /// Sends one request of the visit and records it; `(status, body, sent ms, done ms)`, no status when no
    /// answer came.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &mut self,
        sale: &Sale,
        lane: usize,
        connection: &mut Option<Connection>,
        kind: &'static str,
        method: Method,
        path: String,
        token: &str,
        body: Option<Bytes>,
        idempotency_key: Option<&str>,
    ) -> (Option<StatusCode>, Bytes, f64, f64) {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|key| ("idempotency-key", key))
            .into_iter()
            .collect();
        // A hold sent twice would hold seats nobody knows of, and a cancel sent twice answers 404 for the first
        // one's change; a purchase has its Idempotency-Key.
        let resend = if kind == "purchase" {
            Resend::Safe
        } else {
            Resend::Never
        };
        let sent_ms = ms_since(sale.origin);
        let answer = sale
            .target
            .exchange(
                lane,
                connection,
                method,
                &path,
                Some(token),
                &headers,
                body,
                resend,
            )
            .await;
        let done_ms = ms_since(sale.origin);
        let (status, body, answer) = match answer {
            Ok((status, body)) => {
                let code = error_code(&body);
                let text = if status.is_success() {
                    status.as_u16().to_string()
                } else {
                    format!("{} {code}", status.as_u16())
                };
                (Some(status), body, text)
            }
            Err(failure) => (None, Bytes::new(), Failure::kind(&failure).to_owned()),
        };
        self.steps.push(Step {
            kind,
            sent_ms,
            done_ms,
            answer,
        });
        (status, body, sent_ms, done_ms)
    }
}

/// Waits until the concert holds nothing (every hold left to expire has), up to [`SETTLE_GRACE`] after the last
/// hold's expiry; returns the concert's counts then.
async fn settle(target: &Target, concert_id: &str, visits: &[Visit]) -> Result<Counts, String> {
    let last_expiry = visits
        .iter()
        .filter_map(|v| v.expires_at)
        .max()
        .map(|at| {
            (at - time::OffsetDateTime::now_utc())
                .as_seconds_f64()
                .max(0.0)
        })
        .unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs_f64(last_expiry) + SETTLE_GRACE;
    loop {
        let concert = counts(target, concert_id).await?;
        if concert.held == 0 || Instant::now() > deadline {
            return Ok(concert);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /concerts/{id}/seats` as a status per seat index.
async fn final_seats(
    target: &Target,
    concert_id: &str,
    labels: &HashMap<String, u32>,
) -> Result<Vec<u8>, String> {
    let list: SeatList = target
        .call(
            Method::GET,
            &format!("/concerts/{concert_id}/seats"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    seat_map(&list.seats, labels)
}

/// The seats some request left in doubt.
fn uncertain_seats(visits: &[Visit]) -> HashSet<u32> {
    visits
        .iter()
        .flat_map(|v| v.uncertain.iter().copied())
        .collect()
}

/// Per seat and change, how many the buyers caused; seats in doubt are left out.
fn expected_changes(visits: &[Visit], uncertain: &HashSet<u32>) -> HashMap<(u32, Change), u32> {
    let mut expected = HashMap::new();
    for visit in visits {
        let caused = visit
            .acks
            .iter()
            .map(|&(seat, change, _, _)| (seat, change));
        let expired = visit.expiring.iter().map(|&seat| (seat, Change::Expired));
        for key in caused.chain(expired) {
            if !uncertain.contains(&key.0) {
                *expected.entry(key).or_insert(0) += 1;
            }
        }
    }
    expected
}

/// Waits until every subscriber has received `changes` changes, or [`CATCH_UP_TIMEOUT`].
async fn wait_for_subscribers(seen: &[Arc<AtomicU64>], changes: u64) {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while Instant::now() < deadline && seen.iter().any(|s| s.load(Ordering::Relaxed) < changes) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_seats(bought: &[u32], final_seats: &[u8], layout: Layout, problems: &mut Vec<String>) {
    let mut unique = BTreeSet::new();
    for seat in bought {
        if !unique.insert(*seat) {
            problems.push(format!("seat {} was bought twice", layout.label(*seat)));
        }
    }
    for (index, status) in final_seats.iter().enumerate() {
        let index = index as u32;
        match (*status == SOLD, unique.contains(&index)) {
            (true, false) => problems.push(format!(
                "seat {} is sold but no purchase was answered 201 for it",
                layout.label(index)
            )),
            (false, true) => problems.push(format!(
                "seat {} was bought but is not sold",
                layout.label(index)
            )),
            _ => {}
        }
    }
}

fn check_subscriber(
    index: usize,
    watch: &Watched,
    final_seats: &[u8],
    expected: &HashMap<(u32, Change), u32>,
    uncertain: &HashSet<u32>,
    problems: &mut Vec<String>,
) {
    problems.extend(
        watch
            .problems
            .iter()
            .map(|p| format!("subscriber {index}: {p}")),
    );
    let differ = watch
        .view
        .iter()
        .zip(final_seats)
        .filter(|(seen, actual)| seen != actual)
        .count();
    if differ > 0 {
        problems.push(format!(
            "subscriber {index}: {differ} seats differ from GET /seats at the end"
        ));
    }
    if watch.snapshots > 1 {
        return;
    }
    let mut seen: HashMap<(u32, Change), u32> = HashMap::new();
    for &(seat, change, _) in &watch.changes {
        if !uncertain.contains(&seat) {
            *seen.entry((seat, change)).or_insert(0) += 1;
        }
    }
    if &seen != expected {
        let wrong = expected
            .iter()
            .filter(|(key, count)| seen.get(key) != Some(count))
            .count()
            + seen
                .keys()
                .filter(|key| !expected.contains_key(key))
                .count();
        problems.push(format!(
            "subscriber {index}: {wrong} (seat, change) pairs were not received exactly as often as the buyers \
             caused them"
        ));
    }
}

/// From sending a hold or purchase to each subscriber receiving its change. The k-th `held` a subscriber got for
/// a seat is the k-th hold answered 201 for it (a seat is held again only after its previous hold ended), and a
/// seat is sold once.
fn deliveries(
    visits: &[Visit],
    watched: &[Watched],
    uncertain: &HashSet<u32>,
) -> (Vec<f64>, Vec<f64>) {
    let mut sent: HashMap<(u32, Change), Vec<(f64, f64)>> = HashMap::new();
    for visit in visits {
        for &(seat, change, sent_ms, done_ms) in &visit.acks {
            if matches!(change, Change::Held | Change::Sold) && !uncertain.contains(&seat) {
                sent.entry((seat, change))
                    .or_default()
                    .push((done_ms, sent_ms));
            }
        }
    }
    for times in sent.values_mut() {
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut all = Vec::new();
    let mut to_all: HashMap<(u32, Change, usize), f64> = HashMap::new();
    for watch in watched.iter().filter(|w| w.snapshots == 1) {
        let mut nth: HashMap<(u32, Change), usize> = HashMap::new();
        for &(seat, change, arrived_ms) in &watch.changes {
            if uncertain.contains(&seat) {
                continue;
            }
            let k = nth.entry((seat, change)).or_insert(0);
            if let Some(&(_, sent_ms)) = sent.get(&(seat, change)).and_then(|t| t.get(*k)) {
                let delivery = (arrived_ms - sent_ms).max(0.0);
                all.push(delivery);
                let last = to_all.entry((seat, change, *k)).or_insert(0.0);
                *last = last.max(delivery);
            }
            *k += 1;
        }
    }
    (all, to_all.into_values().collect())
}

/// Request figures by kind.
fn requests(steps: &[Step]) -> BTreeMap<String, Requests> {
    let mut by_kind: BTreeMap<String, (BTreeMap<String, u64>, Vec<f64>)> = BTreeMap::new();
    for step in steps {
        let (answers, latencies) = by_kind.entry(step.kind.to_owned()).or_default();
        *answers.entry(step.answer.clone()).or_insert(0) += 1;
        latencies.push(step.done_ms - step.sent_ms);
    }
    by_kind
        .into_iter()
        .map(|(kind, (answers, latencies))| {
            let figures = Requests {
                count: latencies.len() as u64,
                answers,
                latency_ms: Summary::of(&latencies).map(|s| s.rounded(3)),
            };
            (kind, figures)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_follow_the_shares_exactly() {
        let shares = Shares {
            decline: 0.05,
            cancel: 0.1,
            abandon: 0.1,
            late: 0.02,
        };
        let intents = shares.intents(1_000).unwrap();
        let count = |wanted| intents.iter().filter(|i| **i == wanted).count();
        assert_eq!(intents.len(), 1_000);
        assert_eq!(
            (
                count(Intent::Decline),
                count(Intent::Cancel),
                count(Intent::Abandon),
                count(Intent::Late)
            ),
            (50, 100, 100, 20)
        );
        assert_eq!(count(Intent::Buy), 730);
        let everyone = Shares {
            decline: 0.5,
            cancel: 0.5,
            abandon: 0.0,
            late: 0.0,
        };
        assert_eq!(everyone.intents(3).unwrap().len(), 3);
        let too_many = Shares {
            decline: 0.6,
            cancel: 0.6,
            abandon: 0.0,
            late: 0.0,
        };
        assert!(too_many.intents(10).is_err());
        let negative = Shares {
            decline: -0.1,
            ..shares
        };
        assert!(negative.intents(10).is_err());
    }

    #[test]
    fn labels_name_section_row_and_seat_from_one() {
        let layout = Layout {
            sections: 2,
            rows: 3,
            seats_per_row: 4,
        };
        assert_eq!(layout.seats(), 24);
        assert_eq!(layout.label(0), "A-1-1");
        assert_eq!(layout.label(5), "A-2-2");
        assert_eq!(layout.label(11), "A-3-4");
        assert_eq!(layout.label(12), "B-1-1");
        assert_eq!(layout.label(23), "B-3-4");
    }

    fn visit(acks: Vec<(u32, Change, f64, f64)>, expiring: Vec<u32>) -> Visit {
        Visit {
            acks,
            expiring,
            ..Visit::default()
        }
    }

    #[test]
    fn expected_changes_count_what_buyers_caused_and_deliveries_match_the_nth_change() {
        let visits = vec![
            // Seat 1 held, let go to expire; then held again by another buyer and bought.
            visit(vec![(1, Change::Held, 0.0, 10.0)], vec![1]),
            visit(
                vec![
                    (1, Change::Held, 100.0, 110.0),
                    (1, Change::Sold, 200.0, 210.0),
                ],
                vec![],
            ),
        ];
        let none = HashSet::new();
        let expected = expected_changes(&visits, &none);
        assert_eq!(expected[&(1, Change::Held)], 2);
        assert_eq!(expected[&(1, Change::Expired)], 1);
        assert_eq!(expected[&(1, Change::Sold)], 1);
        let watched = Watched {
            changes: vec![
                (1, Change::Held, 5.0),
                (1, Change::Expired, 50.0),
                (1, Change::Held, 104.0),
                (1, Change::Sold, 230.0),
            ],
            snapshots: 1,
            ..Watched::default()
        };
        let (mut all, to_all) = deliveries(&visits, &[watched], &none);
        all.sort_by(f64::total_cmp);
        assert_eq!(all, vec![4.0, 5.0, 30.0]);
        assert_eq!(to_all.len(), 3);
        let mut problems = Vec::new();
        let watched = Watched {
            changes: vec![(1, Change::Held, 5.0)],
            snapshots: 1,
            view: vec![FREE, SOLD],
            ..Watched::default()
        };
        check_subscriber(0, &watched, &[FREE, SOLD], &expected, &none, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_seat_sold_without_a_purchase_or_bought_twice_is_a_problem() {
        let layout = Layout {
            sections: 1,
            rows: 1,
            seats_per_row: 3,
        };
        let mut problems = Vec::new();
        check_seats(&[0, 1], &[SOLD, SOLD, FREE], layout, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        check_seats(&[0, 0], &[SOLD, FREE, SOLD], layout, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}

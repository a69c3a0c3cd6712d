//! The actor layer end to end: a `Router` with shard actors on two arbiters, driven the way the order desk drives
//! it. These tests check what the shard state machine alone cannot: how claims are spread over shards, all or
//! nothing across shards, and the actor's own hold timers.
//!
//! Each test runs in its own actix `System`. Timer tests wait on the real clock in short polls bounded by
//! [`WAIT_MS_MAX`]; nothing asserts how long anything took.

use actix::Arbiter;
use engine::EngineError;
use engine::clock::{Clock, ManualClock, SystemClock};
use engine::concert::{ConcertSpec, Layout, Section};
use engine::ids::{ConcertId, HoldId, OrderId, TicketId, UserId, ticket_token};
use engine::journal::VolatileJournal;
use engine::router::{ClaimRequest, ConcertHandle, Part, Router};
use engine::shard_state::{
    Availability, IssuedTicket, OrderMeta, Purpose, ReleaseReason, SeatStatus, ShardState,
};
use futures_util::future::{join, join_all};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arbiters each test runs shard actors on: two, like the reference machine's cores, so shards really race.
const ARBITERS: usize = 2;
/// How long a poll for a timer's effect may take before the test fails; generous, so a loaded machine passes.
const WAIT_MS_MAX: u64 = 10_000;
const POLL_INTERVAL_MS: u64 = 10;
/// A hold that the test never wants to see expire.
const HOLD_TTL_LONG_MS: u64 = 3_600_000;
/// Where a `ManualClock` starts.
const MANUAL_START_MS: u64 = 1_700_000_000_000;

/// Runs `test` inside a fresh actix System with a router over [`ARBITERS`] arbiters, then stops the arbiters.
fn run<Fut>(clock: Arc<dyn Clock>, test: impl FnOnce(Router) -> Fut)
where
    Fut: Future<Output = ()>,
{
    actix_rt::System::new().block_on(async move {
        let arbiters: Vec<Arbiter> = (0..ARBITERS)
            .map(|_| engine::router::shard_arbiter().expect("arbiter"))
            .collect();
        let router = Router::new(
            arbiters.iter().map(Arbiter::handle).collect(),
            Arc::new(VolatileJournal),
            clock,
        );
        test(router).await;
        for arbiter in arbiters {
            arbiter.stop();
            arbiter.join().expect("arbiter thread ends cleanly");
        }
    });
}

fn general(router: &Router, capacity: u64, shards: u32) -> Arc<ConcertHandle> {
    add(router, Layout::General { capacity }, shards)
}

/// A seated concert with one section `A` of `rows` rows of `seats_per_row`.
fn seated(router: &Router, rows: u32, seats_per_row: u32, shards: u32) -> Arc<ConcertHandle> {
    let sections = vec![Section {
        name: "A".into(),
        rows,
        seats_per_row,
    }];
    add(router, Layout::Seated { sections }, shards)
}

fn add(router: &Router, layout: Layout, shards: u32) -> Arc<ConcertHandle> {
    let spec = ConcertSpec::new(
        ConcertId::random(),
        "test".into(),
        "2027-01-01T20:00:00Z".into(),
        100,
        layout,
        Some(shards),
    )
    .expect("valid concert");
    router.add_concert(spec).expect("room for a concert")
}

fn order() -> Purpose {
    Purpose::Order {
        order_id: OrderId::random(),
        meta: OrderMeta::default(),
    }
}

fn hold_until(expires_at_ms: u64) -> Purpose {
    Purpose::Hold {
        hold_id: HoldId::random(),
        expires_at_ms,
    }
}

fn seats(labels: &[&str]) -> ClaimRequest {
    ClaimRequest::Seats(labels.iter().map(|label| (*label).to_owned()).collect())
}

fn quantity_of(parts: &[Part]) -> u32 {
    parts.iter().map(|part| part.quantity).sum()
}

async fn availability(concert: &ConcertHandle) -> Availability {
    let availability = concert.availability().await.expect("shards answer");
    assert_eq!(availability.total(), concert.spec.capacity());
    availability
}

/// Polls until `done` holds of the concert's availability; fails after [`WAIT_MS_MAX`].
async fn wait_for(concert: &ConcertHandle, what: &str, done: impl Fn(&Availability) -> bool) {
    let started = Instant::now();
    loop {
        let now = availability(concert).await;
        if done(&now) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_millis(WAIT_MS_MAX),
            "gave up waiting for {what}; last seen {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// One ticket per unit of each part, for `ConcertHandle::confirm`.
fn tickets_for(parts: &[Part]) -> Vec<Vec<IssuedTicket>> {
    parts
        .iter()
        .map(|part| {
            (0..part.quantity)
                .map(|_| IssuedTicket {
                    ticket_id: TicketId::random(),
                    token: ticket_token(),
                    seat: None,
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// General admission: spreading and gathering.

/// Rounds of the concurrent-buyers test, each on a fresh concert: races differ from round to round.
const RACE_ROUNDS: u32 = 40;
const RACE_BUYERS: u32 = 24;
const RACE_AVAILABILITY_SAMPLES: u32 = 20;

#[test]
fn concurrent_buyers_never_oversell_and_sold_out_means_sold_out() {
    run(Arc::new(SystemClock), async |router| {
        for round in 0..RACE_ROUNDS {
            let concert = general(&router, 10, 4);
            let requests: Vec<(UserId, u32)> = (0..RACE_BUYERS)
                .map(|buyer| {
                    let user = UserId::from(format!("u_{round}_{buyer}"));
                    (user, 1 + (buyer * 7 + round) % 4)
                })
                .collect();
            let buyers = join_all(requests.iter().map(|(user, quantity)| {
                let concert = &concert;
                async move {
                    let request = ClaimRequest::Quantity(*quantity);
                    concert.reserve(user, &request, order()).await
                }
            }));
            let sampler = async {
                for _ in 0..RACE_AVAILABILITY_SAMPLES {
                    availability(&concert).await;
                    tokio::task::yield_now().await;
                }
            };
            let (outcomes, ()) = join(buyers, sampler).await;

            let end = availability(&concert).await;
            let mut granted = 0;
            for ((user, quantity), outcome) in requests.iter().zip(&outcomes) {
                match outcome {
                    Ok(parts) => {
                        assert_eq!(quantity_of(parts), *quantity, "{user} got what it asked");
                        assert!(parts.iter().all(|part| part.quantity > 0));
                        granted += u64::from(*quantity);
                    }
                    Err(EngineError::SoldOut) => assert!(
                        end.remaining < u64::from(*quantity),
                        "round {round}: {user} was told sold out for {quantity} but {} remain",
                        end.remaining
                    ),
                    Err(error) => panic!("round {round}: {user} failed: {error:?}"),
                }
            }
            assert!(granted <= 10, "round {round}: {granted} granted");
            // Nothing but the granted reservations is held: failed gathers gave their tickets back.
            assert_eq!(end.held, granted, "round {round}");
            assert_eq!(end.remaining, 10 - granted, "round {round}");
        }
    });
}

#[test]
fn a_claim_larger_than_any_shard_is_served_by_one_after_count_moves_into_it() {
    run(Arc::new(SystemClock), async |router| {
        let concert = general(&router, 8, 4);
        let ann = UserId::from("u_ann");
        let parts = concert
            .reserve(&ann, &ClaimRequest::Quantity(7), order())
            .await
            .expect("7 of 8 tickets are left");
        assert_eq!(
            parts.len(),
            1,
            "one shard serves a general-admission order: {parts:?}"
        );
        assert_eq!(quantity_of(&parts), 7);
        assert_eq!(availability(&concert).await.remaining, 1);

        let bob = UserId::from("u_bob");
        assert_eq!(
            concert
                .reserve(&bob, &ClaimRequest::Quantity(2), order())
                .await,
            Err(EngineError::SoldOut)
        );
        let last = concert
            .reserve(&bob, &ClaimRequest::Quantity(1), order())
            .await
            .expect("the last ticket");
        assert_eq!(quantity_of(&last), 1);

        concert
            .release(&parts, ReleaseReason::Cancelled)
            .await
            .expect("release");
        let end = availability(&concert).await;
        assert_eq!((end.remaining, end.held), (7, 1));
        // Every move arrived and was acknowledged: what left one shard arrived in another, nothing in transit.
        let states = concert.states().await.expect("states");
        let moved_out: u64 = states.iter().map(ShardState::moved_out).sum();
        let moved_in: u64 = states.iter().map(ShardState::moved_in).sum();
        assert!(moved_out > 0, "count moved between shards");
        assert_eq!(moved_out, moved_in);
        for state in &states {
            state.check().expect("each shard's counts add up");
            assert!(
                state.pending_moves().is_empty(),
                "{:?}",
                state.pending_moves()
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Seated: all or nothing across shards.

/// Rounds of the seat race: the two claims are sent together each time, so either may win, or both may lose.
const SEAT_RACE_ROUNDS: u32 = 60;

#[test]
fn racing_seat_claims_are_all_or_nothing() {
    // Two rows of five in two shards: row 1 in shard 0, row 2 in shard 1. Both claims span both shards.
    let ann_seats = ["A-1-4", "A-1-5", "A-2-1"];
    let bob_seats = ["A-2-2", "A-2-1", "A-1-5"];
    let contested = ["A-1-5", "A-2-1"];
    run(Arc::new(SystemClock), async |router| {
        let concert = seated(&router, 2, 5, 2);
        let (ann, bob) = (UserId::from("u_ann"), UserId::from("u_bob"));
        // Each buyer claims from a thread of its own, so that the claims really race to the two shards.
        let buyer_threads = [Arbiter::new(), Arbiter::new()];
        let mut winners = [0u32; 2];
        for round in 0..SEAT_RACE_ROUNDS {
            let (ann_outcome, bob_outcome) = join(
                reserve_on(&buyer_threads[0], &concert, &ann, seats(&ann_seats)),
                reserve_on(&buyer_threads[1], &concert, &bob, seats(&bob_seats)),
            )
            .await;
            let statuses = concert.seat_statuses().await.expect("shards answer");
            let held: Vec<String> = (0..statuses.len() as u64)
                .filter(|index| statuses[*index as usize] == SeatStatus::Held)
                .map(|index| concert.spec.seat_label(index).expect("label"))
                .collect();
            let mut expected_held: Vec<String> = Vec::new();
            let mut won = Vec::new();
            for (who, (labels, outcome)) in [(&ann_seats, &ann_outcome), (&bob_seats, &bob_outcome)]
                .into_iter()
                .enumerate()
            {
                match outcome {
                    Ok(parts) => {
                        winners[who] += 1;
                        expected_held.extend(labels.iter().map(|label| (*label).to_owned()));
                        let mut granted: Vec<String> = parts
                            .iter()
                            .flat_map(|part| part.seats.iter())
                            .map(|index| concert.spec.seat_label(*index).expect("label"))
                            .collect();
                        granted.sort();
                        let mut asked: Vec<String> =
                            labels.iter().map(|label| (*label).to_owned()).collect();
                        asked.sort();
                        assert_eq!(granted, asked, "round {round}");
                        won.push(parts.clone());
                    }
                    Err(EngineError::SeatTaken { seat }) => assert!(
                        contested.contains(&seat.as_str()),
                        "round {round}: {seat} is not contested"
                    ),
                    Err(error) => panic!("round {round}: unexpected {error:?}"),
                }
            }
            expected_held.sort();
            assert!(won.len() <= 1, "round {round}: both won contested seats");
            assert_eq!(held, expected_held, "round {round}: never a partial claim");
            for parts in won {
                concert
                    .release(&parts, ReleaseReason::Cancelled)
                    .await
                    .expect("release");
            }
            assert_eq!(availability(&concert).await.remaining, 10);
        }
        for arbiter in buyer_threads {
            arbiter.stop();
            arbiter.join().expect("arbiter thread ends cleanly");
        }
        // Not a requirement, only a sign that the race was a race: print who won how often.
        println!("ann won {} rounds, bob {}", winners[0], winners[1]);
    });
}

/// Reserves from a task on `thread` rather than from the test's own thread.
async fn reserve_on(
    thread: &Arbiter,
    concert: &Arc<ConcertHandle>,
    user: &UserId,
    request: ClaimRequest,
) -> Result<Vec<Part>, EngineError> {
    let (concert, user) = (concert.clone(), user.clone());
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let spawned = thread.spawn(async move {
        let outcome = concert.reserve(&user, &request, order()).await;
        // The test may have failed and stopped listening; there is nobody left to tell.
        let _ = sender.send(outcome);
    });
    assert!(spawned, "the buyer's thread is running");
    receiver.await.expect("the buyer's thread answers")
}

#[test]
fn a_taken_seat_refuses_the_whole_claim_and_names_the_seat() {
    run(Arc::new(SystemClock), async |router| {
        let concert = seated(&router, 2, 5, 2);
        let (ann, bob) = (UserId::from("u_ann"), UserId::from("u_bob"));
        let ann_parts = concert
            .reserve(&ann, &seats(&["A-1-5"]), order())
            .await
            .expect("a free seat");
        assert_eq!(ann_parts.len(), 1);
        assert_eq!(
            concert
                .reserve(&bob, &seats(&["A-2-2", "A-1-5", "A-2-3"]), order())
                .await,
            Err(EngineError::SeatTaken {
                seat: "A-1-5".into()
            })
        );
        // Bob's seats in the other shard were given back.
        assert_eq!(
            availability(&concert).await,
            Availability {
                remaining: 9,
                held: 1,
                sold: 0
            }
        );
        assert_eq!(
            concert.reserve(&bob, &seats(&["A-3-1"]), order()).await,
            Err(EngineError::UnknownSeat)
        );
        assert!(matches!(
            concert
                .reserve(&bob, &seats(&["A-2-2", "A-2-2"]), order())
                .await,
            Err(EngineError::Invalid { field: "seats", .. })
        ));

        concert
            .release(&ann_parts, ReleaseReason::Cancelled)
            .await
            .expect("release");
        let bob_parts = concert
            .reserve(&bob, &seats(&["A-2-2", "A-1-5", "A-2-3"]), order())
            .await
            .expect("the seat was released");
        assert_eq!(bob_parts.len(), 2, "the claim spans both shards");
        let statuses = concert.seat_statuses().await.expect("shards answer");
        for (index, status) in statuses.iter().enumerate() {
            let label = concert.spec.seat_label(index as u64).expect("label");
            let expected = if ["A-2-2", "A-1-5", "A-2-3"].contains(&label.as_str()) {
                SeatStatus::Held
            } else {
                SeatStatus::Free
            };
            assert_eq!(*status, expected, "{label}");
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Hold expiry by the actor's own timers.

/// How far in the future the expiry tests' holds end.
const HOLD_TTL_SHORT_MS: u64 = 300;

#[test]
fn a_hold_expires_by_itself() {
    let clock = Arc::new(SystemClock);
    run(clock.clone(), async |router| {
        let concert = general(&router, 5, 1);
        let ann = UserId::from("u_ann");
        let expires_at_ms = clock.now_ms() + HOLD_TTL_SHORT_MS;
        concert
            .reserve(&ann, &ClaimRequest::Quantity(2), hold_until(expires_at_ms))
            .await
            .expect("tickets left");
        assert_eq!(availability(&concert).await.held, 2);
        wait_for(&concert, "the hold to expire", |now| now.remaining == 5).await;
        assert!(clock.now_ms() >= expires_at_ms, "released before its time");
    });
}

/// Holds that end at many different times each expire, whatever order they were made in.
#[test]
fn many_holds_expire_by_themselves() {
    let clock = Arc::new(SystemClock);
    run(clock.clone(), async |router| {
        let concert = general(&router, 20, 1);
        let start_ms = clock.now_ms();
        for hold in 0..20u64 {
            // Alternately late and early, so that the shard's timer is re-armed for earlier holds.
            let offset_ms = if hold % 2 == 0 {
                400 - hold * 10
            } else {
                100 + hold * 10
            };
            concert
                .reserve(
                    &UserId::from(format!("u_{hold}")),
                    &ClaimRequest::Quantity(1),
                    hold_until(start_ms + offset_ms),
                )
                .await
                .expect("tickets left");
        }
        wait_for(&concert, "every hold to expire", |now| now.remaining == 20).await;
    });
}

/// A hold that ends before the one the timer is armed for is released at its own time, not the other's.
#[test]
fn an_earlier_hold_rearms_the_timer() {
    let clock = Arc::new(ManualClock::new(MANUAL_START_MS));
    run(clock.clone(), async |router| {
        let concert = general(&router, 10, 1);
        let ann = UserId::from("u_ann");
        // The timer is armed for an hour of real time away...
        concert
            .reserve(
                &ann,
                &ClaimRequest::Quantity(3),
                hold_until(MANUAL_START_MS + HOLD_TTL_LONG_MS),
            )
            .await
            .expect("tickets left");
        // ...until these two holds need it much sooner.
        for quantity in [2, 1] {
            concert
                .reserve(
                    &ann,
                    &ClaimRequest::Quantity(quantity),
                    hold_until(MANUAL_START_MS + HOLD_TTL_SHORT_MS),
                )
                .await
                .expect("tickets left");
        }
        clock.advance_ms(HOLD_TTL_SHORT_MS);
        wait_for(&concert, "the short holds to expire", |now| now.held <= 3).await;
        assert_eq!(availability(&concert).await.held, 3, "the long hold stays");
    });
}

#[test]
fn a_hold_being_paid_for_does_not_expire() {
    let clock = Arc::new(SystemClock);
    run(clock.clone(), async |router| {
        let concert = general(&router, 5, 1);
        let ann = UserId::from("u_ann");
        let expires_at_ms = clock.now_ms() + HOLD_TTL_SHORT_MS;
        let paid = concert
            .reserve(&ann, &ClaimRequest::Quantity(2), hold_until(expires_at_ms))
            .await
            .expect("tickets left");
        let order_id = OrderId::random();
        concert
            .begin_purchase(&paid, &ann, &order_id, &OrderMeta::default())
            .await
            .expect("the hold is live");
        // A later hold on the same shard: once its timer has released it, the paid hold's timer has fired too.
        let bob = UserId::from("u_bob");
        concert
            .reserve(
                &bob,
                &ClaimRequest::Quantity(3),
                hold_until(expires_at_ms + HOLD_TTL_SHORT_MS),
            )
            .await
            .expect("tickets left");
        wait_for(&concert, "the later hold to expire", |now| now.held <= 2).await;
        assert_eq!(
            availability(&concert).await,
            Availability {
                remaining: 3,
                held: 2,
                sold: 0
            }
        );
        concert
            .confirm(&paid, &order_id, tickets_for(&paid))
            .await
            .expect("the paid hold is still there");
        assert_eq!(availability(&concert).await.sold, 2);
    });
}

#[test]
fn an_early_timer_waits_for_the_clock() {
    let clock = Arc::new(ManualClock::new(MANUAL_START_MS));
    run(clock.clone(), async |router| {
        let concert = general(&router, 5, 1);
        let ann = UserId::from("u_ann");
        concert
            .reserve(
                &ann,
                &ClaimRequest::Quantity(2),
                hold_until(MANUAL_START_MS + HOLD_TTL_SHORT_MS),
            )
            .await
            .expect("tickets left");
        // The timer fires after about 300 ms of real time, but the hold's clock has not moved: it must stay.
        tokio::time::sleep(Duration::from_millis(3 * HOLD_TTL_SHORT_MS)).await;
        assert_eq!(availability(&concert).await.held, 2);
        clock.advance_ms(HOLD_TTL_SHORT_MS);
        wait_for(&concert, "the hold to expire", |now| now.remaining == 5).await;
    });
}

#[test]
fn buying_a_hold_past_its_expiry_is_refused_and_releases_it() {
    let clock = Arc::new(ManualClock::new(MANUAL_START_MS));
    run(clock.clone(), async |router| {
        let concert = seated(&router, 1, 6, 2);
        let ann = UserId::from("u_ann");
        // Five seats come from both shards; the hold's timers are an hour of real time away.
        let parts = concert
            .reserve(
                &ann,
                &ClaimRequest::Quantity(5),
                hold_until(MANUAL_START_MS + HOLD_TTL_LONG_MS),
            )
            .await
            .expect("tickets left");
        assert_eq!(parts.len(), 2);
        clock.advance_ms(HOLD_TTL_LONG_MS);
        assert_eq!(
            concert
                .begin_purchase(&parts, &ann, &OrderId::random(), &OrderMeta::default())
                .await,
            Err(EngineError::HoldExpired)
        );
        assert_eq!(availability(&concert).await.remaining, 6);
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Sale and check-in.

#[test]
fn confirmed_tickets_check_in_once() {
    let clock = Arc::new(ManualClock::new(MANUAL_START_MS));
    run(clock.clone(), async |router| {
        let concert = seated(&router, 1, 4, 2);
        let ann = UserId::from("u_ann");
        let order_id = OrderId::random();
        let purpose = Purpose::Order {
            order_id: order_id.clone(),
            meta: OrderMeta::default(),
        };
        let parts = concert
            .reserve(&ann, &ClaimRequest::Quantity(3), purpose)
            .await
            .expect("tickets left");
        assert_eq!(parts.len(), 2, "3 of 4 seats come from both shards");
        let tickets = tickets_for(&parts);
        concert
            .confirm(&parts, &order_id, tickets.clone())
            .await
            .expect("the order's reservation");
        assert_eq!(
            availability(&concert).await,
            Availability {
                remaining: 1,
                held: 0,
                sold: 3
            }
        );

        for (part, part_tickets) in parts.iter().zip(&tickets) {
            let other_shard = (part.shard + 1) % concert.shard_count();
            for ticket in part_tickets {
                assert_eq!(
                    concert.check_in(other_shard, &ticket.ticket_id).await,
                    Err(EngineError::UnknownTicket),
                    "a ticket is known only to its shard"
                );
                let checked_in_at_ms = clock.now_ms();
                assert_eq!(
                    concert.check_in(part.shard, &ticket.ticket_id).await,
                    Ok(checked_in_at_ms)
                );
                clock.advance_ms(1);
                assert_eq!(
                    concert.check_in(part.shard, &ticket.ticket_id).await,
                    Err(EngineError::AlreadyCheckedIn { checked_in_at_ms })
                );
            }
        }
        assert_eq!(
            concert.check_in(99, &TicketId::random()).await,
            Err(EngineError::UnknownTicket)
        );
    });
}

#[test]
fn a_held_seat_is_bought_after_payment_begins() {
    let clock = Arc::new(ManualClock::new(MANUAL_START_MS));
    run(clock.clone(), async |router| {
        let concert = seated(&router, 2, 5, 2);
        let ann = UserId::from("u_ann");
        let parts = concert
            .reserve(
                &ann,
                &seats(&["A-1-5", "A-2-1"]),
                hold_until(MANUAL_START_MS + HOLD_TTL_LONG_MS),
            )
            .await
            .expect("free seats");
        let order_id = OrderId::random();
        // Confirming before payment began is refused: the hold does not belong to the order yet.
        assert_eq!(
            concert
                .confirm(&parts, &order_id, tickets_for(&parts))
                .await,
            Err(EngineError::OrderNotFound)
        );
        concert
            .begin_purchase(&parts, &ann, &order_id, &OrderMeta::default())
            .await
            .expect("the hold is live");
        concert
            .confirm(&parts, &order_id, tickets_for(&parts))
            .await
            .expect("payment began");
        let statuses = concert.seat_statuses().await.expect("shards answer");
        let sold: Vec<String> = (0..statuses.len())
            .filter(|index| statuses[*index] == SeatStatus::Sold)
            .map(|index| concert.spec.seat_label(index as u64).expect("label"))
            .collect();
        assert_eq!(sold, ["A-1-5", "A-2-1"]);
    });
}

//! The order desk's per-user limits: tickets of one concert per user (held, being paid for and sold together) and
//! live holds per user. Concurrent requests of one user never pass a limit together; whatever ends a reservation
//! (a decline, a refusal, a cancel, an expiry) gives its tickets back; a restart rebuilds the counts.
//!
//! Each test runs in its own actix `System` with a `ManualClock`: hold expiry, as the desk counts it, is a
//! clock step, never a sleep.

use actix::Arbiter;
use engine::EngineError;
use engine::clock::{Clock, ManualClock};
use engine::concert::{ConcertSpec, Layout};
use engine::desk::{Desk, DeskConfig, HOLDS_PER_USER_MAX, OrderRequest};
use engine::ids::{ConcertId, UserId};
use engine::journal::VolatileJournal;
use engine::payment::{PaymentCard, PaymentPool, PaymentPoolConfig, SimulatedProvider};
use engine::router::{ClaimRequest, ConcertHandle, Router};
use futures_util::future::join_all;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const ARBITERS: usize = 2;
const TICKETS_PER_USER_MAX: u32 = 10;
const TICKETS_PER_ORDER_MAX: u32 = 10;
const HOLD_TTL_MS: u64 = 60_000;
/// Where the clock starts.
const START_MS: u64 = 1_700_000_000_000;
/// A provider slow enough that concurrent orders of one user overlap while they are being paid for.
const PAYMENT_LATENCY: Duration = Duration::from_millis(50);
/// A provider that never answers within a test: its orders stay in payment.
const PAYMENT_LATENCY_NEVER: Duration = Duration::from_secs(3_600);

struct Env {
    arbiters: Vec<actix::ArbiterHandle>,
    clock: ManualClock,
}

impl Env {
    fn desk(&self, payment_latency: Duration) -> Arc<Desk> {
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let router = Arc::new(Router::new(
            self.arbiters.clone(),
            Arc::new(VolatileJournal),
            clock.clone(),
        ));
        let payments = Arc::new(PaymentPool::new(
            Arc::new(SimulatedProvider::new(payment_latency, 0.0)),
            PaymentPoolConfig {
                concurrency: 1_024,
                queue_max: 1_024,
                timeout: Duration::from_secs(7_200),
                rate_per_s: None,
            },
        ));
        Arc::new(Desk::new(
            router,
            payments,
            Arc::new(engine::payment::NoPaymentJournal),
            clock,
            DeskConfig {
                hold_ttl_ms: HOLD_TTL_MS,
                tickets_per_order_max: TICKETS_PER_ORDER_MAX,
                tickets_per_user_max: TICKETS_PER_USER_MAX,
            },
        ))
    }
}

fn run<Fut>(test: impl FnOnce(Env) -> Fut)
where
    Fut: Future<Output = ()>,
{
    actix_rt::System::new().block_on(async move {
        let arbiters: Vec<Arbiter> = (0..ARBITERS)
            .map(|_| engine::router::shard_arbiter().expect("arbiter"))
            .collect();
        let env = Env {
            arbiters: arbiters.iter().map(Arbiter::handle).collect(),
            clock: ManualClock::new(START_MS),
        };
        test(env).await;
        for arbiter in arbiters {
            arbiter.stop();
            arbiter.join().expect("arbiter thread ends cleanly");
        }
    });
}

fn general(desk: &Desk, capacity: u64, shards: u32) -> Arc<ConcertHandle> {
    let spec = ConcertSpec::new(
        ConcertId::random(),
        "limits".into(),
        "2027-01-01T20:00:00Z".into(),
        100,
        Layout::General { capacity },
        Some(shards),
    )
    .expect("valid concert");
    desk.router().add_concert(spec).expect("room for a concert")
}

/// A card in the desk's payment vault: its payment method id.
async fn card(desk: &Desk, number: &str) -> Option<String> {
    let card = PaymentCard {
        holder_name: "Test Buyer".into(),
        number: number.into(),
        exp_month: 12,
        exp_year: 2030,
        cvv: Some("123".into()),
    };
    Some(desk.vault_card(card).await.expect("vaulted").payment_method)
}

/// The good and the declining card, in the desk's vault.
async fn cards(desk: &Desk) -> (Option<String>, Option<String>) {
    (card(desk, GOOD).await, card(desk, DECLINING).await)
}

const GOOD: &str = "4242424242424242";
const DECLINING: &str = "4000000000000002";

fn tickets(concert: &ConcertHandle, quantity: u32) -> OrderRequest {
    OrderRequest {
        concert_id: concert.spec.id.clone(),
        claim: ClaimRequest::Quantity(quantity),
    }
}

fn limit_reached() -> EngineError {
    EngineError::TicketLimitReached {
        limit: TICKETS_PER_USER_MAX,
    }
}

#[test]
fn concurrent_orders_of_one_user_stop_at_the_limit() {
    run(async |env| {
        let desk = env.desk(PAYMENT_LATENCY);
        let good = card(&desk, GOOD).await;
        let concert = general(&desk, 1_000, 4);
        let user = UserId::from("u_alice");
        let outcomes = join_all(
            (0..25).map(|_| desk.place_order(&user, good.clone(), tickets(&concert, 1), None)),
        )
        .await;
        let confirmed = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(confirmed, TICKETS_PER_USER_MAX as usize, "{outcomes:?}");
        for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
            assert_eq!(outcome.as_ref().unwrap_err(), &limit_reached());
        }
        assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 10);
        let sold = concert.availability().await.expect("shards answer").sold;
        assert_eq!(sold, 10, "nothing beyond the limit was reserved");

        // The limit is per user and per concert.
        let other = UserId::from("u_bob");
        desk.place_order(&other, good.clone(), tickets(&concert, 10), None)
            .await
            .expect("another user buys");
        let second = general(&desk, 100, 1);
        desk.place_order(&user, good.clone(), tickets(&second, 10), None)
            .await
            .expect("the same user buys at another concert");
    });
}

#[test]
fn a_single_request_above_the_limit_is_refused_without_reserving() {
    run(async |env| {
        let desk = env.desk(Duration::ZERO);
        let good = card(&desk, GOOD).await;
        let concert = general(&desk, 100, 2);
        let user = UserId::from("u_alice");
        desk.place_order(&user, good.clone(), tickets(&concert, 7), None)
            .await
            .expect("first order");
        let refused = desk
            .place_order(&user, good.clone(), tickets(&concert, 4), None)
            .await;
        assert_eq!(refused, Err(limit_reached()));
        let refused = desk.place_hold(&user, tickets(&concert, 4)).await;
        assert_eq!(refused, Err(limit_reached()));
        let availability = concert.availability().await.expect("shards answer");
        assert_eq!((availability.sold, availability.held), (7, 0));
        desk.place_order(&user, good.clone(), tickets(&concert, 3), None)
            .await
            .expect("up to the limit exactly");
    });
}

#[test]
fn declined_and_refused_orders_give_their_tickets_back() {
    run(async |env| {
        let desk = env.desk(Duration::ZERO);
        let (good, declining) = cards(&desk).await;
        let concert = general(&desk, 12, 2);
        let user = UserId::from("u_alice");
        for _ in 0..3 {
            let declined = desk
                .place_order(&user, declining.clone(), tickets(&concert, 10), None)
                .await;
            assert!(matches!(declined, Err(EngineError::PaymentDeclined { .. })));
            assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 0);
        }
        let other = UserId::from("u_bob");
        desk.place_order(&other, good.clone(), tickets(&concert, 5), None)
            .await
            .expect("bob buys");
        let sold_out = desk
            .place_order(&user, good.clone(), tickets(&concert, 8), None)
            .await;
        assert_eq!(sold_out, Err(EngineError::SoldOut));
        assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 0);
        let no_card = desk
            .place_order(&user, None, tickets(&concert, 7), None)
            .await;
        assert_eq!(no_card, Err(EngineError::CardRequired));
        desk.place_order(&user, good.clone(), tickets(&concert, 7), None)
            .await
            .expect("the allowance is whole again");
        assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 7);
    });
}

#[test]
fn holds_count_until_cancelled_or_expired_and_a_purchase_keeps_them_counted() {
    run(async |env| {
        let desk = env.desk(Duration::ZERO);
        let good = card(&desk, GOOD).await;
        let concert = general(&desk, 100, 2);
        let id = &concert.spec.id;
        let user = UserId::from("u_alice");
        let first = desk
            .place_hold(&user, tickets(&concert, 4))
            .await
            .expect("hold");
        let second = desk
            .place_hold(&user, tickets(&concert, 4))
            .await
            .expect("hold");
        assert_eq!(desk.tickets_claimed(&user, id), 8);
        let refused = desk
            .place_order(&user, good.clone(), tickets(&concert, 3), None)
            .await;
        assert_eq!(refused, Err(limit_reached()));
        desk.place_order(&user, good.clone(), tickets(&concert, 2), None)
            .await
            .expect("up to the limit");

        desk.cancel_hold(&user, &first.id).await.expect("cancel");
        assert_eq!(desk.tickets_claimed(&user, id), 6);
        desk.purchase_hold(&user, good.clone(), &second.id, None)
            .await
            .expect("purchase");
        assert_eq!(desk.tickets_claimed(&user, id), 6, "bought, still counted");

        desk.place_hold(&user, tickets(&concert, 4))
            .await
            .expect("hold up to the limit");
        assert_eq!(desk.tickets_claimed(&user, id), 10);
        env.clock.advance_ms(HOLD_TTL_MS);
        assert_eq!(
            desk.tickets_claimed(&user, id),
            6,
            "an expired hold no longer counts"
        );
        desk.sweep();
        assert_eq!(desk.tickets_claimed(&user, id), 6);
        desk.place_order(&user, good.clone(), tickets(&concert, 4), None)
            .await
            .expect("the expired hold's tickets are free again");
        assert_eq!(desk.tickets_claimed(&user, id), 10);
    });
}

#[test]
fn a_failed_hold_purchase_gives_the_tickets_back() {
    run(async |env| {
        let desk = env.desk(Duration::ZERO);
        let (good, declining) = cards(&desk).await;
        let concert = general(&desk, 100, 1);
        let user = UserId::from("u_alice");
        let hold = desk
            .place_hold(&user, tickets(&concert, 10))
            .await
            .expect("hold");
        let declined = desk
            .purchase_hold(&user, declining.clone(), &hold.id, None)
            .await;
        assert!(matches!(declined, Err(EngineError::PaymentDeclined { .. })));
        assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 0);
        assert_eq!(desk.holds_claimed(&user), 0);

        let hold = desk
            .place_hold(&user, tickets(&concert, 10))
            .await
            .expect("hold");
        env.clock.advance_ms(HOLD_TTL_MS);
        let expired = desk
            .purchase_hold(&user, good.clone(), &hold.id, None)
            .await;
        assert_eq!(expired, Err(EngineError::HoldExpired));
        assert_eq!(desk.tickets_claimed(&user, &concert.spec.id), 0);
    });
}

#[test]
fn concurrent_holds_of_one_user_stop_at_the_hold_limit() {
    run(async |env| {
        let desk = env.desk(Duration::ZERO);
        let user = UserId::from("u_alice");
        // One ticket at each of several concerts, so that only the hold limit applies.
        let concerts: Vec<_> = (0..3).map(|_| general(&desk, 100, 2)).collect();
        let attempts = HOLDS_PER_USER_MAX as usize + 5;
        let outcomes =
            join_all((0..attempts).map(|i| desk.place_hold(&user, tickets(&concerts[i % 3], 1))))
                .await;
        let granted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(granted, HOLDS_PER_USER_MAX as usize, "{outcomes:?}");
        for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
            assert_eq!(
                outcome.as_ref().unwrap_err(),
                &EngineError::HoldLimitReached {
                    limit: HOLDS_PER_USER_MAX
                }
            );
        }
        assert_eq!(desk.holds_claimed(&user), HOLDS_PER_USER_MAX);
        let held: u64 = join_all(concerts.iter().map(|concert| concert.availability()))
            .await
            .into_iter()
            .map(|availability| availability.expect("shards answer").held)
            .sum();
        assert_eq!(held, u64::from(HOLDS_PER_USER_MAX));

        // Another user is not affected; an expired hold frees its place.
        let other = UserId::from("u_bob");
        desk.place_hold(&other, tickets(&concerts[0], 1))
            .await
            .expect("bob holds");
        env.clock.advance_ms(HOLD_TTL_MS);
        assert_eq!(desk.holds_claimed(&user), 0);
        desk.place_hold(&user, tickets(&concerts[0], 1))
            .await
            .expect("a hold after the others expired");
    });
}

#[test]
fn a_restart_rebuilds_the_counts_and_settling_gives_back_what_was_not_paid() {
    run(async |env| {
        let desk = env.desk(PAYMENT_LATENCY_NEVER);
        let good = card(&desk, GOOD).await;
        let concert = general(&desk, 100, 2);
        let id = concert.spec.id.clone();
        let user = UserId::from("u_alice");
        let hold = desk
            .place_hold(&user, tickets(&concert, 2))
            .await
            .expect("hold");
        // An order that is still being paid for when the node stops.
        let paying = {
            let (desk, user, request) = (desk.clone(), user.clone(), tickets(&concert, 3));
            let good = good.clone();
            tokio::spawn(async move { desk.place_order(&user, good, request, None).await })
        };
        while desk.tickets_claimed(&user, &id) < 5
            || concert.availability().await.expect("shards answer").held < 5
        {
            tokio::task::yield_now().await;
        }
        let states = concert.states().await.expect("shard states");
        paying.abort();

        let restarted = env.desk(Duration::ZERO);
        // The user's card, in the restarted provider's vault.
        let good = card(&restarted, GOOD).await;
        let in_flight = restarted.restore(&concert.spec, &states);
        restarted
            .router()
            .start_concert((*concert.spec).clone(), states)
            .expect("restart the concert");
        assert_eq!(in_flight.len(), 1);
        assert_eq!(restarted.tickets_claimed(&user, &id), 5);
        assert_eq!(restarted.holds_claimed(&user), 1);
        let refused = restarted
            .place_order(
                &user,
                good.clone(),
                tickets(&restarted_concert(&restarted, &id), 6),
                None,
            )
            .await;
        assert_eq!(refused, Err(limit_reached()));

        // The restarted node's provider never saw the charge: settling voids it and gives the tickets back.
        for order in in_flight {
            let settled = restarted.settle_in_flight(order).await;
            assert_eq!(settled, Err(EngineError::PaymentUnavailable));
        }
        assert_eq!(restarted.tickets_claimed(&user, &id), 2, "the hold remains");
        restarted
            .purchase_hold(&user, good.clone(), &hold.id, None)
            .await
            .expect("the recovered hold is bought");
        restarted
            .place_order(
                &user,
                good.clone(),
                tickets(&restarted_concert(&restarted, &id), 8),
                None,
            )
            .await
            .expect("up to the limit");
        assert_eq!(restarted.tickets_claimed(&user, &id), 10);
    });
}

fn restarted_concert(desk: &Desk, id: &ConcertId) -> Arc<ConcertHandle> {
    desk.router().concert(id).expect("restarted concert")
}

//! Reservation throughput of one concert's inventory, in reservations per second (criterion's `elem/s`; one
//! element is one granted reservation of one general-admission ticket).
//!
//! - `shard_state/reserve_confirm`: the pure state machine, no actor: decide and apply a reservation for an order,
//!   then decide and apply its confirmation with one ticket. The ceiling of what one shard can do on one core.
//! - `shard_actor/reserve`: `Addr::send(Reserve)` to one `ShardActor` on its own arbiter, from the bench thread,
//!   [`IN_FLIGHT`] sends at a time. Measures the actor round trip across threads plus the decide and apply.
//! - `shard_actor/reserve_with_live_holds/N`: the same while the shard has `N` unexpired holds waiting for its
//!   expiry timer. It should stay near `reserve` (a bigger reservation table costs a little): when each hold had a
//!   timer of its own, actix polled all of them on every wake of the actor, and 10,000 holds cut a lone sender's
//!   rate about twentyfold.
//! - `router/reserve`: `ConcertHandle::reserve` with `ClaimRequest::Quantity(1)` for many distinct buyers over a
//!   concert with four shards per arbiter, [`IN_FLIGHT`] calls at a time.
//!
//! In the actor and router benches each request carries a fresh random order id, as the order desk's would.
//! Every measured reservation succeeds: inventory is sized to the iterations and rebuilt, outside the measured
//! time, every [`ROUND_RESERVATIONS_MAX`] reservations, which also bounds the memory a run holds.

use actix::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::clock::{Clock, SystemClock};
use engine::concert::{ConcertSpec, GENERAL_CAPACITY_MAX, Layout};
use engine::feed::ConcertFeed;
use engine::ids::{ConcertId, HoldId, OrderId, TicketId, UserId};
use engine::journal::VolatileJournal;
use engine::router::{ClaimRequest, Router};
use engine::shard::{GetAvailability, Reserve, ShardActor, ShardGauges};
use engine::shard_state::{Claim, IssuedTicket, OrderMeta, Purpose, ShardEvent, ShardState};
use futures_util::future::join_all;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight at once in the actor and router benches; FACTS.md measured actix at 256 concurrent senders.
const IN_FLIGHT: u64 = 256;
/// Reservations made on one inventory before it is rebuilt (outside the measured time).
const ROUND_RESERVATIONS_MAX: u64 = 200_000;
/// Arbiters for the actor and router benches: one per core of the reference machine.
const ARBITERS: usize = 2;
/// Shards per arbiter in the router bench, so that buyers spread over more shards than threads.
const SHARDS_PER_ARBITER: u32 = 4;
/// Distinct buyers in the router bench; each has a preferred shard, so this many spread evenly.
const BUYERS: usize = 4_096;
/// Live holds in the `reserve_with_live_holds` bench.
const LIVE_HOLDS: [u64; 2] = [1_000, 10_000];
/// Holds in the benches never expire while it runs.
const HOLD_TTL_MS: u64 = 3_600_000;

const _: () = assert!(2 * ROUND_RESERVATIONS_MAX <= GENERAL_CAPACITY_MAX);

/// Splits `iters` into rounds of at most [`ROUND_RESERVATIONS_MAX`].
fn rounds(iters: u64) -> impl Iterator<Item = u64> {
    let full = iters / ROUND_RESERVATIONS_MAX;
    let rest = iters % ROUND_RESERVATIONS_MAX;
    std::iter::repeat_n(ROUND_RESERVATIONS_MAX, full as usize).chain((rest > 0).then_some(rest))
}

fn order_purpose() -> Purpose {
    Purpose::Order {
        order_id: OrderId::random(),
        meta: OrderMeta::default(),
    }
}

fn shard_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_state");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reserve_confirm", |b| {
        b.iter_custom(|iters| {
            let owner = UserId::random();
            let claim = Claim::Quantity {
                quantity: 1,
                up_to: false,
            };
            let mut measured = Duration::ZERO;
            for round in rounds(iters) {
                let mut state = ShardState::new(round, false);
                // Ids are random in production; making them is not the state machine's cost.
                let orders: Vec<(Purpose, OrderId, IssuedTicket)> = (0..round)
                    .map(|_| {
                        let order_id = OrderId::random();
                        let ticket = IssuedTicket {
                            ticket_id: TicketId::random(),
                            token: "".into(),
                            seat: None,
                        };
                        let purpose = Purpose::Order {
                            order_id: order_id.clone(),
                            meta: OrderMeta::default(),
                        };
                        (purpose, order_id, ticket)
                    })
                    .collect();
                let started = Instant::now();
                for (purpose, order_id, ticket) in orders {
                    let reserved = state
                        .decide_reserve(&owner, &claim, purpose)
                        .expect("sized to never sell out");
                    state.apply(&reserved);
                    let ShardEvent::Reserved { reservation_id, .. } = reserved else {
                        unreachable!("decide_reserve returns a Reserved event");
                    };
                    let confirmed = state
                        .decide_confirm(reservation_id, &order_id, vec![ticket])
                        .expect("the order's own reservation");
                    state.apply(&confirmed);
                }
                measured += started.elapsed();
                black_box(state.availability());
            }
            measured
        });
    });
    group.finish();
}

/// A shard actor on `arbiter` with `capacity` tickets, `live_holds` more already held by unexpired holds, once it
/// has started (and the arbiter has finished with the previous round's actor, whose task was woken first).
async fn start_shard(arbiter: &ArbiterHandle, capacity: u64, live_holds: u64) -> Addr<ShardActor> {
    let mut state = ShardState::new(capacity + live_holds, false);
    let owner = UserId::random();
    let expires_at_ms = SystemClock.now_ms() + HOLD_TTL_MS;
    for _ in 0..live_holds {
        let purpose = Purpose::Hold {
            hold_id: HoldId::random(),
            expires_at_ms,
        };
        let claim = Claim::Quantity {
            quantity: 1,
            up_to: false,
        };
        let event = state
            .decide_reserve(&owner, &claim, purpose)
            .expect("room for the holds");
        state.apply(&event);
    }
    let gauges = Arc::new(ShardGauges::new(
        state.availability().remaining,
        metrics::Gauge::noop(),
    ));
    let feed = Arc::new(ConcertFeed::new(
        state.capacity(),
        [(0, Some(state.availability()))],
    ));
    let shard = ShardActor::start_in_arbiter(arbiter, move |_ctx| {
        ShardActor::new(
            ConcertId::random(),
            0,
            state,
            Arc::new(VolatileJournal),
            Arc::new(SystemClock),
            gauges,
            feed,
        )
    });
    shard.send(GetAvailability).await.expect("the shard starts");
    shard
}

/// Sends `count` reservations of one ticket to `shard`, [`IN_FLIGHT`] at a time, and returns how long that took.
async fn reserve_through_actor(shard: &Addr<ShardActor>, count: u64) -> Duration {
    let owner = UserId::random();
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let batch = IN_FLIGHT.min(count - sent);
        let replies = join_all((0..batch).map(|_| {
            shard.send(Reserve {
                owner: owner.clone(),
                claim: Claim::Quantity {
                    quantity: 1,
                    up_to: false,
                },
                purpose: order_purpose(),
            })
        }))
        .await;
        for reply in replies {
            reply
                .expect("the shard is running")
                .expect("sized to never sell out");
        }
        sent += batch;
    }
    started.elapsed()
}

fn shard_actor(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let arbiter = system.block_on(async { engine::router::shard_arbiter().expect("arbiter") });
    let mut group = c.benchmark_group("shard_actor");
    group.throughput(Throughput::Elements(1));
    let mut bench = |name: BenchmarkId, live_holds: u64| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let mut measured = Duration::ZERO;
                    for round in rounds(iters) {
                        let shard = start_shard(&arbiter.handle(), round, live_holds).await;
                        measured += reserve_through_actor(&shard, round).await;
                    }
                    measured
                })
            });
        });
    };
    bench(BenchmarkId::from_parameter("reserve"), 0);
    for live_holds in LIVE_HOLDS {
        bench(
            BenchmarkId::new("reserve_with_live_holds", live_holds),
            live_holds,
        );
    }
    group.finish();
    arbiter.stop();
    arbiter.join().expect("arbiter thread ends cleanly");
}

fn router(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let arbiters: Vec<Arbiter> = system.block_on(async {
        (0..ARBITERS)
            .map(|_| engine::router::shard_arbiter().expect("arbiter"))
            .collect()
    });
    let buyers: Vec<UserId> = (0..BUYERS).map(|_| UserId::random()).collect();
    let request = ClaimRequest::Quantity(1);
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reserve", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut measured = Duration::ZERO;
                for round in rounds(iters) {
                    // A fresh router per round drops the previous round's concert and its shard actors.
                    let router = Router::new(
                        arbiters.iter().map(Arbiter::handle).collect(),
                        Arc::new(VolatileJournal),
                        Arc::new(SystemClock),
                    );
                    let spec = ConcertSpec::new(
                        ConcertId::random(),
                        "bench".into(),
                        "2027-01-01T20:00:00Z".into(),
                        100,
                        // Twice the round, so that buyers' preferred shards never run dry.
                        Layout::General {
                            capacity: 2 * round.max(IN_FLIGHT),
                        },
                        Some(ARBITERS as u32 * SHARDS_PER_ARBITER),
                    )
                    .expect("valid concert");
                    let concert = router.add_concert(spec).expect("room for a concert");
                    // Every shard has started, and the arbiters are done with the previous round's actors.
                    concert.availability().await.expect("the shards start");
                    let mut buyer = buyers.iter().cycle();
                    let started = Instant::now();
                    let mut reserved = 0;
                    while reserved < round {
                        let batch = IN_FLIGHT.min(round - reserved);
                        let calls = (0..batch).map(|_| {
                            let owner = buyer.next().expect("cycle never ends");
                            concert.reserve(owner, &request, order_purpose())
                        });
                        for outcome in join_all(calls).await {
                            outcome.expect("sized to never sell out");
                        }
                        reserved += batch;
                    }
                    measured += started.elapsed();
                }
                measured
            })
        });
    });
    group.finish();
    for arbiter in arbiters {
        arbiter.stop();
        arbiter.join().expect("arbiter thread ends cleanly");
    }
}

criterion_group!(benches, shard_state, shard_actor, router);
criterion_main!(benches);

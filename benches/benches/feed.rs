//! What a concert's live feed costs the shard that publishes to it, in seat changes per second (criterion's
//! `elem/s`; one element is one seat change: a seat reserved through `ConcertHandle::reserve`, or given back
//! through `ConcertHandle::release`, each published to the feed by the shard actor).
//!
//! - `feed/seat_changes/no_subscribers`: the changes alone; the feed still keeps them for resuming clients.
//! - `feed/seat_changes/stalled_subscribers/10000`: ten thousand subscribers that never read. Publishing is one
//!   broadcast send whatever the number of receivers, so this should match `no_subscribers`: a slow subscriber
//!   never slows a shard.
//! - `feed/seat_changes/reading_subscribers/N`: `N` subscribers, each a task on the bench's thread that receives
//!   every item; one that falls behind resumes from its last position, as a reconnecting browser would. This adds
//!   the fan-out's own work (one receive per subscriber per change) on the same two cores as the shard; the bench
//!   prints how many items the subscribers received per change (availability updates included).
//!
//! The concert is seated with one shard on its own arbiter; [`IN_FLIGHT`] reservations of one seat are sent at a
//! time, then released together.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::clock::SystemClock;
use engine::concert::{ConcertSpec, Layout, Section};
use engine::feed::FeedItem;
use engine::ids::{ConcertId, OrderId, UserId};
use engine::journal::VolatileJournal;
use engine::router::{ClaimRequest, ConcertHandle, Router};
use engine::shard_state::{OrderMeta, Purpose, ReleaseReason};
use futures_util::future::join_all;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Reservations sent to the shard at a time.
const IN_FLIGHT: u64 = 128;
const STALLED_SUBSCRIBERS: usize = 10_000;
const READING_SUBSCRIBERS: [usize; 2] = [100, 1_000];

async fn seated_concert(router: &Router) -> Arc<ConcertHandle> {
    let spec = ConcertSpec::new(
        ConcertId::random(),
        "bench".into(),
        "2027-01-01T20:00:00Z".into(),
        100,
        Layout::Seated {
            sections: vec![Section {
                name: "A".into(),
                rows: 10,
                seats_per_row: IN_FLIGHT as u32,
            }],
        },
        Some(1),
    )
    .expect("valid concert");
    let concert = router.add_concert(spec).expect("room for a concert");
    concert.availability().await.expect("the shard starts");
    concert
}

/// Makes `changes` seat changes (half reservations, half releases) and returns how long they took.
async fn churn(concert: &ConcertHandle, owner: &UserId, changes: u64) -> Duration {
    let request = ClaimRequest::Quantity(1);
    let started = Instant::now();
    let mut made = 0;
    while made < changes {
        let batch = IN_FLIGHT.min((changes - made).div_ceil(2));
        let reservations = join_all((0..batch).map(|_| {
            concert.reserve(
                owner,
                &request,
                Purpose::Order {
                    order_id: OrderId::random(),
                    meta: OrderMeta::default(),
                },
            )
        }))
        .await;
        let parts: Vec<_> = reservations
            .into_iter()
            .flat_map(|parts| parts.expect("a free seat"))
            .collect();
        concert
            .release(&parts, ReleaseReason::Cancelled)
            .await
            .expect("releases");
        made += 2 * batch;
    }
    started.elapsed()
}

fn feed(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let arbiter = system.block_on(async { engine::router::shard_arbiter().expect("arbiter") });
    let router = Router::new(
        vec![arbiter.handle()],
        Arc::new(VolatileJournal),
        Arc::new(SystemClock),
    );
    let owner = UserId::random();
    let mut group = c.benchmark_group("feed/seat_changes");
    group.throughput(Throughput::Elements(1));

    let concert = system.block_on(seated_concert(&router));
    group.bench_function("no_subscribers", |b| {
        b.iter_custom(|iters| system.block_on(churn(&concert, &owner, iters)));
    });

    let concert = system.block_on(seated_concert(&router));
    let stalled: Vec<_> = system.block_on(async {
        (0..STALLED_SUBSCRIBERS)
            .map(|_| concert.feed.subscribe(None))
            .collect()
    });
    group.bench_function(
        BenchmarkId::new("stalled_subscribers", STALLED_SUBSCRIBERS),
        |b| b.iter_custom(|iters| system.block_on(churn(&concert, &owner, iters))),
    );
    drop(stalled);

    for subscribers in READING_SUBSCRIBERS {
        let concert = system.block_on(seated_concert(&router));
        let received = Arc::new(AtomicU64::new(0));
        let resumed = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = system.block_on(async {
            (0..subscribers)
                .map(|_| {
                    let feed = concert.feed.clone();
                    let (received, resumed) = (received.clone(), resumed.clone());
                    tokio::spawn(async move {
                        let mut subscription = feed.subscribe(None);
                        let mut position = subscription.position;
                        loop {
                            match subscription.receiver.recv().await {
                                Ok(item) => {
                                    if let FeedItem::Seat(change) = item {
                                        position = change.position;
                                    }
                                    received.fetch_add(1, Ordering::Relaxed);
                                }
                                // As a browser would: reconnect and resume from the last change seen.
                                Err(RecvError::Lagged(_)) => {
                                    resumed.fetch_add(1, Ordering::Relaxed);
                                    subscription = feed.subscribe(Some(position));
                                    let missed = subscription.missed.as_ref().map_or(0, Vec::len);
                                    received.fetch_add(missed as u64, Ordering::Relaxed);
                                    position = subscription.position;
                                }
                                Err(RecvError::Closed) => return,
                            }
                        }
                    })
                })
                .collect()
        });
        group.bench_function(BenchmarkId::new("reading_subscribers", subscribers), |b| {
            b.iter_custom(|iters| system.block_on(churn(&concert, &owner, iters)))
        });
        let published = concert.feed.subscribe(None).position;
        let received = received.load(Ordering::Relaxed);
        assert!(received > 0, "the subscribers received the changes");
        // Not a criterion figure: how much of the fan-out the subscribers kept up with.
        eprintln!(
            "reading_subscribers/{subscribers}: {received} items received for {published} seat changes \
             ({:.1} per change per subscriber), {} resumes after falling behind",
            received as f64 / published.max(1) as f64 / subscribers as f64,
            resumed.load(Ordering::Relaxed)
        );
        for task in tasks {
            task.abort();
        }
    }
    group.finish();
    arbiter.stop();
    arbiter.join().expect("arbiter thread ends cleanly");
}

criterion_group!(benches, feed);
criterion_main!(benches);

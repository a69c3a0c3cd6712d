use super::*;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

fn counts(remaining: u64, held: u64, sold: u64) -> Availability {
    Availability {
        remaining,
        held,
        sold,
    }
}

/// Two shards of ten seats each.
fn feed() -> Arc<ConcertFeed> {
    Arc::new(ConcertFeed::new(
        20,
        [(0, Some(counts(10, 0, 0))), (10, Some(counts(10, 0, 0)))],
    ))
}

fn seat_of(item: FeedItem) -> (u64, u64, SeatChangeKind) {
    match item {
        FeedItem::Seat(change) => (change.position, change.seat, change.kind),
        FeedItem::Availability(update) => panic!("expected a seat change, got {update:?}"),
    }
}

#[tokio::test]
async fn changes_reach_a_subscriber_in_order_with_concert_wide_seats() {
    let feed = feed();
    let mut subscription = feed.subscribe(None);
    assert_eq!(subscription.position, 0);
    assert!(
        subscription.missed.is_none(),
        "a new subscriber needs a snapshot"
    );
    assert_eq!(subscription.availability, counts(20, 0, 0));
    feed.publish_seats(1, &[2, 3], SeatChangeKind::Held);
    feed.publish_seats(0, &[0], SeatChangeKind::Sold);
    feed.publish_seats(1, &[2], SeatChangeKind::Expired);
    let received: Vec<_> = (0..4)
        .map(|_| seat_of(subscription.receiver.try_recv().expect("an item")))
        .collect();
    assert_eq!(
        received,
        vec![
            (1, 12, SeatChangeKind::Held),
            (2, 13, SeatChangeKind::Held),
            (3, 0, SeatChangeKind::Sold),
            (4, 12, SeatChangeKind::Expired),
        ]
    );
    assert_eq!(SeatChangeKind::Expired.status(), SeatStatus::Free);
}

#[tokio::test]
async fn a_resuming_subscriber_gets_exactly_what_it_missed() {
    let feed = feed();
    feed.publish_seats(0, &[1, 2, 3, 4], SeatChangeKind::Held);
    let mut subscription = feed.subscribe(Some(2));
    let missed: Vec<u64> = subscription
        .missed
        .expect("positions 3 and 4 are in the replay buffer")
        .iter()
        .map(|change| change.position)
        .collect();
    assert_eq!(missed, vec![3, 4]);
    assert_eq!(subscription.position, 4);
    assert!(matches!(
        subscription.receiver.try_recv(),
        Err(TryRecvError::Empty)
    ));
    feed.publish_seats(0, &[5], SeatChangeKind::Held);
    assert_eq!(seat_of(subscription.receiver.try_recv().unwrap()).0, 5);

    let up_to_date = feed.subscribe(Some(5));
    assert_eq!(up_to_date.missed.map(|missed| missed.len()), Some(0));
    let from_the_future = feed.subscribe(Some(6));
    assert!(from_the_future.missed.is_none());
}

#[tokio::test]
async fn a_position_older_than_the_replay_buffer_needs_a_snapshot() {
    let feed = Arc::new(ConcertFeed::new(100, [(0, Some(counts(100, 0, 0)))]));
    for round in 0..(REPLAY_MAX as u32 / 50 + 1) {
        let seats: Vec<u32> = (0..50).collect();
        let kind = if round % 2 == 0 {
            SeatChangeKind::Held
        } else {
            SeatChangeKind::Released
        };
        feed.publish_seats(0, &seats, kind);
    }
    let last = (REPLAY_MAX as u64 / 50 + 1) * 50;
    let oldest_kept = last - REPLAY_MAX as u64 + 1;
    assert!(feed.subscribe(Some(oldest_kept - 2)).missed.is_none());
    let just_in = feed.subscribe(Some(oldest_kept - 1)).missed.unwrap();
    assert_eq!(just_in.len(), REPLAY_MAX);
    assert_eq!(just_in[0].position, oldest_kept);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_and_others_are_not_affected() {
    let feed = Arc::new(ConcertFeed::new(2, [(0, Some(counts(2, 0, 0)))]));
    let mut slow = feed.subscribe(None);
    let mut fast = feed.subscribe(None);
    for round in 0..SUBSCRIBER_LAG_MAX + 10 {
        let kind = if round % 2 == 0 {
            SeatChangeKind::Held
        } else {
            SeatChangeKind::Released
        };
        feed.publish_seats(0, &[0], kind);
        let (position, _, received) = seat_of(fast.receiver.try_recv().expect("fast keeps up"));
        assert_eq!((position, received), (round as u64 + 1, kind));
    }
    assert!(matches!(
        slow.receiver.recv().await,
        Err(RecvError::Lagged(10))
    ));
}

#[tokio::test(start_paused = true)]
async fn availability_is_coalesced_and_only_published_while_someone_listens() {
    let feed = feed();
    let mut subscription = feed.subscribe(None);
    // A burst of changes within one interval gives one update now and one with the latest counts later.
    feed.set_counts(0, counts(9, 1, 0));
    tokio::task::yield_now().await;
    feed.set_counts(0, counts(8, 1, 1));
    feed.set_counts(1, counts(9, 0, 1));
    tokio::time::sleep(AVAILABILITY_INTERVAL / 2).await;
    let first = match subscription.receiver.try_recv().expect("the first update") {
        FeedItem::Availability(update) => update.availability,
        FeedItem::Seat(change) => panic!("unexpected {change:?}"),
    };
    assert_eq!(first, counts(19, 1, 0));
    assert!(matches!(
        subscription.receiver.try_recv(),
        Err(TryRecvError::Empty)
    ));
    tokio::time::sleep(AVAILABILITY_INTERVAL).await;
    let second = match subscription
        .receiver
        .try_recv()
        .expect("the coalesced update")
    {
        FeedItem::Availability(update) => update.availability,
        FeedItem::Seat(change) => panic!("unexpected {change:?}"),
    };
    assert_eq!(second, counts(17, 1, 2));
    assert_eq!(feed.availability(), counts(17, 1, 2));

    drop(subscription);
    feed.set_counts(1, counts(8, 0, 2));
    tokio::time::sleep(AVAILABILITY_INTERVAL * 2).await;
    assert!(!feed.inner.lock().unwrap().pump_running, "the pump stops");
    let mut again = feed.subscribe(None);
    assert_eq!(again.availability, counts(16, 1, 3));
    feed.set_counts(1, counts(7, 1, 2));
    tokio::time::sleep(AVAILABILITY_INTERVAL / 2).await;
    assert!(matches!(
        again.receiver.try_recv(),
        Ok(FeedItem::Availability(_))
    ));
}

#[test]
fn an_item_is_encoded_once() {
    let item = FeedItem::Seat(Arc::new(SeatChange {
        position: 1,
        seat: 0,
        kind: SeatChangeKind::Sold,
        id: None,
        encoded: OnceLock::new(),
    }));
    let copy = item.clone();
    let first = item.encoded(|_| Bytes::from_static(b"first"));
    let second = copy.encoded(|_| Bytes::from_static(b"second"));
    assert_eq!(first, Bytes::from_static(b"first"));
    assert_eq!(second, first, "the second encoder never runs");
}

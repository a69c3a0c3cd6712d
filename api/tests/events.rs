//! `GET /concerts/{id}/events` against the real binary: the exact changes of a scripted sale, resuming with
//! `Last-Event-ID`, and subscribers that do not read.

mod common;

use common::sse::{EVENT_TIMEOUT, EventStream, counts, seat_triple};
use common::{DECLINED_CARD, GOOD_CARD, Server};
use serde_json::json;
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The next `count` seat events as (seat, status, change), sorted: a request's seats on different shards may
/// be published in either order. Checks that their positions grow.
async fn seat_step(
    stream: &mut EventStream,
    count: usize,
    last_position: &mut u64,
) -> Vec<(String, String, String)> {
    let mut step = Vec::new();
    for _ in 0..count {
        let event = stream.next_seat().await;
        let position = position_of(event.id.as_deref().expect("seat events have ids"));
        assert!(position > *last_position, "positions grow: {event:?}");
        *last_position = position;
        step.push(seat_triple(&event.data));
    }
    step.sort();
    step
}

fn position_of(id: &str) -> u64 {
    id.split_once('-')
        .expect("EPOCH-POSITION")
        .1
        .parse()
        .expect("a position")
}

fn triples(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut triples: Vec<_> = items
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    triples.sort();
    triples
}

async fn hold(server: &Server, token: &str, concert: &str, seats: &[&str]) -> String {
    server
        .hold(token, json!({"concert_id": concert, "seats": seats}))
        .await
}

async fn purchase(server: &Server, token: &str, hold: &str, key: &str) -> common::Reply {
    server
        .send(
            reqwest::Method::POST,
            &format!("/holds/{hold}/purchase"),
            Some(token),
            None,
            &[("idempotency-key", key)],
        )
        .await
}

async fn cancel(server: &Server, token: &str, hold: &str) {
    server
        .send(
            reqwest::Method::DELETE,
            &format!("/holds/{hold}"),
            Some(token),
            None,
            &[],
        )
        .await
        .expect(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_every_change_of_a_scripted_sale_in_order() {
    let server = Server::start(&["--hold-ttl-s", "2"]);
    let concert = server.create_seated(&["A", "B"], 2, 3, 2).await;
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let (_, bob) = server.register("bob", DECLINED_CARD).await;
    let mut stream = EventStream::open(&server, &concert, None).await;

    let snapshot = stream.expect_next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert!(
        stream.retry_ms.is_some(),
        "the stream says when to reconnect"
    );
    assert_eq!(counts(&snapshot.data), (12, 0, 0));
    let seats: Vec<(String, String)> = snapshot.data["seats"]
        .as_array()
        .expect("a seated concert's snapshot has seats")
        .iter()
        .map(|seat| {
            (
                seat["id"].as_str().unwrap().into(),
                seat["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(seats.len(), 12);
    assert_eq!(seats[0], ("A-1-1".into(), "free".into()));
    assert_eq!(seats[11], ("B-2-3".into(), "free".into()));
    let mut position = position_of(snapshot.id.as_deref().expect("the snapshot has an id"));

    // A hold across both shards (A-1-1 on shard 0, B-2-3 on shard 1), then its purchase.
    let first = hold(&server, &alice, &concert, &["A-1-1", "B-2-3"]).await;
    assert_eq!(
        seat_step(&mut stream, 2, &mut position).await,
        triples(&[("A-1-1", "held", "held"), ("B-2-3", "held", "held")])
    );
    purchase(&server, &alice, &first, "alice-1")
        .await
        .expect(201);
    assert_eq!(
        seat_step(&mut stream, 2, &mut position).await,
        triples(&[("A-1-1", "sold", "sold"), ("B-2-3", "sold", "sold")])
    );
    stream.await_availability((10, 0, 2)).await;

    // A cancelled hold.
    let second = hold(&server, &alice, &concert, &["A-2-2"]).await;
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("A-2-2", "held", "held")])
    );
    cancel(&server, &alice, &second).await;
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("A-2-2", "free", "released")])
    );

    // A hold left to expire (--hold-ttl-s 2).
    hold(&server, &alice, &concert, &["B-1-1"]).await;
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("B-1-1", "held", "held")])
    );
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("B-1-1", "free", "expired")])
    );

    // A declined order for seats: held while being paid, then given back.
    server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&bob),
            Some(json!({"concert_id": concert, "seats": ["A-1-3"]})),
            &[("idempotency-key", "bob-1")],
        )
        .await
        .expect_error(402, "payment_declined");
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("A-1-3", "held", "held")])
    );
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[("A-1-3", "free", "released")])
    );

    // An order by quantity takes some free seat: held, then sold.
    let order = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&alice),
            Some(json!({"concert_id": concert, "quantity": 1})),
            &[("idempotency-key", "alice-2")],
        )
        .await
        .expect(201);
    let seat = order["tickets"][0]["seat"]
        .as_str()
        .expect("a seat")
        .to_owned();
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[(&seat, "held", "held")])
    );
    assert_eq!(
        seat_step(&mut stream, 1, &mut position).await,
        triples(&[(&seat, "sold", "sold")])
    );
    stream.await_availability((9, 0, 3)).await;
    assert_eq!(server.availability(&concert).await, (9, 0, 3, 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_loses_nothing() {
    let server = Server::start(&[]);
    let concert = server.create_seated(&["A"], 4, 5, 3).await;
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let mut stream = EventStream::open(&server, &concert, None).await;
    assert_eq!(stream.expect_next().await.event, "snapshot");
    let first = hold(&server, &alice, &concert, &["A-1-1", "A-2-1", "A-4-5"]).await;
    let mut seen = 0;
    let mut last_id = String::new();
    while seen < 3 {
        let event = stream.next_seat().await;
        last_id = event.id.expect("an id");
        seen += 1;
    }
    drop(stream);

    // Changes made while nobody listens.
    purchase(&server, &alice, &first, "alice-1")
        .await
        .expect(201);
    let second = hold(&server, &alice, &concert, &["A-3-3"]).await;
    cancel(&server, &alice, &second).await;

    let mut resumed = EventStream::open(&server, &concert, Some(&last_id)).await;
    let mut position = position_of(&last_id);
    let mut missed = Vec::new();
    for _ in 0..5 {
        let event = resumed.expect_next().await;
        assert_eq!(
            event.event, "seat",
            "the missed changes come first, not a snapshot: {event:?}"
        );
        let event_position = position_of(event.id.as_deref().unwrap());
        assert_eq!(event_position, position + 1, "no change is skipped");
        position = event_position;
        missed.push(seat_triple(&event.data));
    }
    let mut sold: Vec<_> = missed[..3].to_vec();
    sold.sort();
    assert_eq!(
        sold,
        triples(&[
            ("A-1-1", "sold", "sold"),
            ("A-2-1", "sold", "sold"),
            ("A-4-5", "sold", "sold")
        ])
    );
    assert_eq!(
        missed[3..].to_vec(),
        vec![
            ("A-3-3".to_owned(), "held".to_owned(), "held".to_owned()),
            ("A-3-3".to_owned(), "free".to_owned(), "released".to_owned())
        ]
    );
    let availability = resumed.expect_next().await;
    assert_eq!(availability.event, "availability");
    assert_eq!(counts(&availability.data), (17, 0, 3));
    // And it goes on live.
    hold(&server, &alice, &concert, &["A-4-4"]).await;
    let live = resumed.next_seat().await;
    assert_eq!(position_of(live.id.as_deref().unwrap()), position + 1);
    assert_eq!(
        seat_triple(&live.data),
        ("A-4-4".into(), "held".into(), "held".into())
    );

    // An id this node cannot resume from (malformed, or of another run of the node) gets a snapshot.
    for bad in [
        "garbage",
        "0-1",
        &format!("{}-999999", last_id.split_once('-').unwrap().0),
    ] {
        let mut fresh = EventStream::open(&server, &concert, Some(bad)).await;
        let snapshot = fresh.expect_next().await;
        assert_eq!(snapshot.event, "snapshot", "for Last-Event-ID {bad}");
        assert_eq!(counts(&snapshot.data), (16, 1, 3));
        let statuses: BTreeSet<(String, String)> = snapshot.data["seats"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|seat| seat["status"] != "free")
            .map(|seat| {
                (
                    seat["id"].as_str().unwrap().into(),
                    seat["status"].as_str().unwrap().into(),
                )
            })
            .collect();
        let expected: BTreeSet<(String, String)> = [
            ("A-1-1", "sold"),
            ("A-2-1", "sold"),
            ("A-4-5", "sold"),
            ("A-4-4", "held"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(statuses, expected);
    }

    // A general-admission concert has no seats: its snapshot is the counts alone.
    let general = server.create_general(100, 2, 500).await;
    let mut ga = EventStream::open(&server, &general, None).await;
    let snapshot = ga.expect_next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(counts(&snapshot.data), (100, 0, 0));
    assert!(snapshot.data.get("seats").is_none());
    server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&alice),
            Some(json!({"concert_id": general, "quantity": 2})),
            &[("idempotency-key", "alice-ga")],
        )
        .await
        .expect(201);
    ga.await_availability((98, 0, 2)).await;

    server
        .get("/concerts/c_doesnotexist/events", None)
        .await
        .expect_error(404, "concert_not_found");
}

/// Opens a stream on a socket with a tiny receive buffer and reads nothing from it.
async fn open_stalled(server: &Server, concert: &str) -> tokio::net::TcpStream {
    let address: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET /concerts/{concert}/events HTTP/1.1\r\nhost: {address}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_and_nobody_else_notices() {
    const READERS: usize = 20;
    const ROUNDS: usize = 400;
    let server = Server::start(&["--durability", "none", "--max-tickets-per-user", "1000"]);
    // Long section names make every event a bigger share of the buffers between the feed and the stalled client.
    let section = "S".repeat(16);
    let concert = server.create_seated(&[&section], 10, 10, 2).await;
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let mut stalled = open_stalled(&server, &concert).await;

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = EventStream::open(&server, &concert, None).await;
        assert_eq!(stream.expect_next().await.event, "snapshot");
        readers.push(tokio::spawn(async move {
            let mut position = 0;
            let mut seats = 0;
            while seats < ROUNDS * 20 {
                let event = stream.next_seat().await;
                let event_position = position_of(event.id.as_deref().unwrap());
                assert!(
                    position == 0 || event_position == position + 1,
                    "a reader misses nothing"
                );
                position = event_position;
                seats += 1;
            }
            seats
        }));
    }

    // Twenty seat changes a round: ten seats held, then released.
    let seats: Vec<String> = (1..=10).map(|seat| format!("{section}-1-{seat}")).collect();
    let seats: Vec<&str> = seats.iter().map(String::as_str).collect();
    for _ in 0..ROUNDS {
        let id = hold(&server, &alice, &concert, &seats).await;
        cancel(&server, &alice, &id).await;
    }
    for reader in readers {
        assert_eq!(reader.await.expect("a reader finishes"), ROUNDS * 20);
    }
    assert_eq!(server.availability(&concert).await, (100, 0, 0, 100));

    // The stalled client now reads what was buffered for it: the stream ends early instead of delivering all.
    // Either the server noticed the lag while writing and ended the body (its last, empty chunk; the connection
    // may stay), or its watchdog closed the connection while the socket was full (end of file).
    let mut received = Vec::new();
    let mut closed = false;
    tokio::time::timeout(EVENT_TIMEOUT, async {
        let mut buffer = [0u8; 64 * 1024];
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            let read = stalled.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                closed = true;
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seat_events = String::from_utf8_lossy(&received)
            .matches("event: seat")
            .count();
        panic!(
            "the server did not end the stalled stream ({seat_events} seat events, {} bytes)",
            received.len()
        )
    });
    assert!(
        closed || received.ends_with(b"\r\n0\r\n\r\n"),
        "the stream ended with its last chunk, or the connection was closed"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(
        received.starts_with("HTTP/1.1 200"),
        "{}",
        &received[..received.len().min(200)]
    );
    let seat_events = received.matches("event: seat").count();
    eprintln!(
        "the stalled subscriber got {seat_events} of {} seat events",
        ROUNDS * 20
    );
    assert!(
        seat_events < ROUNDS * 20,
        "the stalled subscriber was dropped, not sent everything ({seat_events} events)"
    );
    let dropped = server
        .metric("boxoffice_event_subscribers_dropped_total")
        .await;
    assert!(dropped >= 1.0, "the drop is counted");
    // The node still serves new subscribers.
    let mut after = EventStream::open(&server, &concert, None).await;
    assert_eq!(after.expect_next().await.event, "snapshot");
}

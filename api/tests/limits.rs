//! The limits of README's table that protect the node and the sale from one client: tickets per user and
//! concert, live holds per user, the request timeout, and open connections. The desk's counting under
//! concurrency is tested in `engine/tests/desk_limits.rs`; here each limit is checked over HTTP, with its error.

mod common;

use common::{GOOD_CARD, Server};
use reqwest::Method;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_per_user_count_holds_orders_and_purchases_and_survive_a_restart() {
    let server = Server::start(&["--max-tickets-per-user", "6"]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let (_, bob) = server.register("bob", GOOD_CARD).await;
    let general = server.create_general(100, 2, 1_000).await;
    let other = server.create_general(100, 1, 1_000).await;
    let claim = |quantity: u32| json!({"concert_id": general, "quantity": quantity});

    server
        .post("/orders", Some(&alice), claim(3))
        .await
        .expect(201);
    let hold = server
        .post("/holds", Some(&alice), claim(2))
        .await
        .expect(201);
    server
        .post("/orders", Some(&alice), claim(2))
        .await
        .expect_error(409, "ticket_limit_reached");
    server
        .post("/holds", Some(&alice), claim(2))
        .await
        .expect_error(409, "ticket_limit_reached");
    let hold_id = hold["id"].as_str().expect("hold id");
    server
        .post(
            &format!("/holds/{hold_id}/purchase"),
            Some(&alice),
            json!({}),
        )
        .await
        .expect(201);
    server
        .post("/orders", Some(&alice), claim(1))
        .await
        .expect(201);
    // Six of this concert: nothing more for alice here, but other users and other concerts are not affected.
    server
        .post("/orders", Some(&alice), claim(1))
        .await
        .expect_error(409, "ticket_limit_reached");
    server
        .post("/orders", Some(&bob), claim(6))
        .await
        .expect(201);
    server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": other, "quantity": 6}),
        )
        .await
        .expect(201);
    assert_eq!(server.availability(&general).await, (88, 0, 12, 100));

    // A restart rebuilds the counts from what was sold.
    let data_dir = server.stop();
    let server = Server::start_in(data_dir, &["--max-tickets-per-user", "6"]);
    server
        .post("/orders", Some(&alice), claim(1))
        .await
        .expect_error(409, "ticket_limit_reached");
    server
        .post("/orders", Some(&bob), claim(1))
        .await
        .expect_error(409, "ticket_limit_reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_holds_per_user_are_limited_and_a_cancel_makes_room() {
    let server = Server::start(&[]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let seated = server.create_seated(&["A"], 4, 10, 2).await;
    let mut holds = Vec::new();
    for seat in 1..=10 {
        let hold = server
            .post(
                "/holds",
                Some(&alice),
                json!({"concert_id": seated, "seats": [format!("A-1-{seat}")]}),
            )
            .await
            .expect(201);
        holds.push(hold["id"].as_str().expect("hold id").to_owned());
    }
    let eleventh = json!({"concert_id": seated, "seats": ["A-2-1"]});
    server
        .post("/holds", Some(&alice), eleventh.clone())
        .await
        .expect_error(409, "hold_limit_reached");
    server
        .send(
            Method::DELETE,
            &format!("/holds/{}", holds[0]),
            Some(&alice),
            None,
            &[],
        )
        .await
        .expect(204);
    // The ticket limit (10 by default) still counts the nine holds left: one more seat fits.
    server
        .post("/holds", Some(&alice), eleventh)
        .await
        .expect(201);
    assert_eq!(server.availability(&seated).await, (30, 10, 0, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_answered_and_its_order_still_completes() {
    // One payment at a time, each 2 s: the first order is answered after about 2 s, the second waits for it,
    // then pays, and its request runs out of its 3 s first.
    let server = Server::start(&[
        "--request-timeout-s",
        "3",
        "--payment-timeout-ms",
        "2900",
        "--payment-latency-ms",
        "2000",
        "--payment-concurrency",
        "1",
    ]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let general = server.create_general(10, 1, 1_000).await;
    let order = |key: &'static str| {
        let (server, alice, general) = (&server, &alice, &general);
        async move {
            server
                .send(
                    Method::POST,
                    "/orders",
                    Some(alice),
                    Some(json!({"concert_id": general, "quantity": 1})),
                    &[("idempotency-key", key)],
                )
                .await
        }
    };
    let (first, second) = tokio::join!(order("first"), order("second"));
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 503], "{} {}", first.body, second.body);
    let (timed_out, key) = if first.status.as_u16() == 503 {
        (first, "first")
    } else {
        (second, "second")
    };
    timed_out.expect_error(503, "processing_timeout");
    assert_eq!(timed_out.retry_after.as_deref(), Some("1"));
    // The order went on without its request; its key reads the outcome.
    order(key).await.expect(201);
    assert_eq!(server.availability(&general).await, (8, 0, 2, 10));
}

#[test]
fn a_request_timeout_shorter_than_the_payment_timeout_is_refused_at_start() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--request-timeout-s", "30", "--payment-timeout-ms", "30000"])
        .env("BOXOFFICE_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .output()
        .expect("run boxoffice");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--request-timeout-s"),
        "the error names the flag: {stderr}"
    );
}

/// How long a connection over the limit is watched for an answer that must not come: it proves nothing was
/// answered within this time, which is all the limit promises.
const UNANSWERED_WATCH: Duration = Duration::from_millis(500);
/// A hang detector for answers that must come.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(30);

/// Sends `GET /health` on a kept-alive connection.
fn ask_health(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: boxoffice\r\n\r\n")
        .expect("send");
}

/// Reads until a whole health answer arrived, or the read times out.
fn read_health(stream: &mut TcpStream, wait: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(wait))?;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"ok\"}") {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..read]);
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn connections_over_the_limit_wait_until_one_closes() {
    let server = Server::start(&["--connections-max", "2"]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut open: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).expect("connect");
            ask_health(&mut stream);
            let answer = read_health(&mut stream, ANSWER_WAIT_MAX).expect("an answer");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            stream
        })
        .collect();

    // The kernel completes the handshake, but the node does not take the connection while two are open.
    let mut waiting = TcpStream::connect(&address).expect("connect");
    ask_health(&mut waiting);
    let error = read_health(&mut waiting, UNANSWERED_WATCH).expect_err("no answer yet");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{error}"
    );

    drop(open.remove(0));
    let answer =
        read_health(&mut waiting, ANSWER_WAIT_MAX).expect("answered once a connection closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_user_changes_its_card_ten_times_a_day_at_most() {
    let server = Server::start(&[]);
    let (id, token) = server.register("cards", GOOD_CARD).await;
    let (other, other_token) = server.register("other", GOOD_CARD).await;
    let change = |id: &str, token: &str| {
        let (path, token) = (format!("/users/{id}"), token.to_owned());
        let server = &server;
        async move {
            server
                .send(
                    Method::PUT,
                    &path,
                    Some(&token),
                    Some(
                        json!({"card": {"type": "visa", "holder_name": "Cards", "number": GOOD_CARD,
                                         "exp_month": 12, "exp_year": 2031, "cvv": "123"}}),
                    ),
                    &[],
                )
                .await
        }
    };
    for _ in 0..10 {
        change(&id, &token).await.expect(200);
    }
    let refused = change(&id, &token).await;
    refused.expect_error(429, "too_many_card_changes");
    let wait: u64 = refused
        .retry_after
        .as_deref()
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After");
    assert!(wait > 23 * 3600 && wait <= 24 * 3600, "{wait}");
    // Another user is not affected, and the refused user's card on file is the last accepted one.
    change(&other, &other_token).await.expect(200);
    let profile = server
        .get(&format!("/users/{id}"), Some(&token))
        .await
        .expect(200);
    assert_eq!(profile["card"]["exp_year"], 2031);
    server.stop();
}

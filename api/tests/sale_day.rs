//! What a bot operator, or an attacker, does to a node on a high-demand sale, each as it was found by a hostile
//! review, against the real binary:
//!
//! - stalled clients from one address (event streams that never read, connections that pipeline requests and
//!   never read the answers) while another client is served; event subscribers that stop reading are dropped
//!   and cost bounded memory;
//! - seat spinning: accounts registered in a loop from one address holding a whole concert;
//! - account takeover: a password changed without the current one, and old sessions that outlive the change;
//!   usernames differing only in case;
//! - logins starved by a flood of sign-ups;
//! - a retry after a kill -9 mid-payment that never got a final answer;
//! - a data dir others can read; error messages quoting what was sent; answers a cache may keep; expired cards;
//!   a guessable admin token.
//!
//! Other client addresses are other addresses of 127.0.0.0/8 (`127.0.0.2`, ...), which the loopback answers.
//! Timeouts here are hang detectors, never performance assertions.

mod common;

use common::{ADMIN_TOKEN, GOOD_CARD, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A card the simulator's verification refuses (a wrong cvc).
const REFUSED_CARD: &str = "4000000000000127";
/// How long a read of a connection the server should close may take: a hang detector.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(60);

fn card(number: &str, exp_month: u8, exp_year: u16) -> Value {
    json!({"type": "visa", "holder_name": "Mallory", "number": number, "exp_month": exp_month,
           "exp_year": exp_year, "cvv": "123"})
}

/// Sends `request` with `client` (another address) to `server` and returns (status, body, headers).
async fn send_from(
    client: &reqwest::Client,
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = client.request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the request completes");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, headers)
}

/// Reads `stream` until the server closes it (end of file or reset); panics if it stays open.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(CLOSE_WAIT_MAX, async {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not close {what}"));
    received
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_clients_from_one_address_leave_room_for_everyone_else() {
    const ATTEMPTS: usize = 55;
    let server = Server::start(&[
        "--connections-max",
        "50",
        "--connections-per-address-max",
        "10",
        "--send-timeout-s",
        "2",
    ]);
    let concert = server.create_general(100, 2, 1_000).await;
    let events = format!(
        "GET /concerts/{concert}/events HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.authority()
    );
    // Pipelined requests for a big document, never read: the answers fill the connection's buffers.
    let pipelined = format!(
        "GET /openapi.json HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.authority()
    )
    .repeat(200);
    let mut streams = Vec::new();
    let mut pipelining = Vec::new();
    for _ in 0..ATTEMPTS {
        if let Ok(stream) = server.raw_from(ATTACKER, 4096, events.as_bytes()).await {
            streams.push(stream);
        }
        if let Ok(stream) = server.raw_from(ATTACKER, 4096, pipelined.as_bytes()).await {
            pipelining.push(stream);
        }
    }
    // Of 110 connections from one address, the node keeps 10 open and answers the rest 429 at once.
    let mut refused = 0.0;
    for _ in 0..300 {
        refused = server
            .metric("boxoffice_connections_refused_per_address_total")
            .await;
        if refused >= (2 * ATTEMPTS - 10) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused >= (2 * ATTEMPTS - 10) as f64,
        "one address holds 10 connections at most ({refused} refused)"
    );
    // One more is told why before it is closed.
    let mut probe = server
        .raw_from(ATTACKER, 64 * 1024, b"")
        .await
        .expect("a connection");
    let told = read_until_closed(&mut probe, "a connection beyond the address's share").await;
    let told = String::from_utf8_lossy(&told);
    assert!(
        told.starts_with("HTTP/1.1 429") && told.contains(r#""code":"too_many_connections""#),
        "{told}"
    );

    // Meanwhile another client is served: health, a registration, an order.
    assert_eq!(server.get("/health", None).await.status.as_u16(), 200);
    let (_, token) = server.register("patient-buyer", GOOD_CARD).await;
    server
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": concert, "quantity": 2}),
        )
        .await
        .expect(201);

    // The connections that pipeline and never read are closed once they leave bytes untaken past the send
    // timeout (2 s here).
    let mut timed_out = 0.0;
    for _ in 0..100 {
        timed_out = server
            .metric("boxoffice_connections_send_timed_out_total")
            .await;
        if timed_out >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(timed_out >= 1.0, "a stalled connection was closed");
    let still_open = server.metric("boxoffice_connections_open").await;
    assert!(
        still_open <= 10.0 + 4.0,
        "the attacker's event streams, 10 at most, and this client's own ({still_open} open)"
    );
    assert_eq!(server.availability(&concert).await, (98, 0, 2, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_that_stop_reading_are_dropped_and_cost_bounded_memory() {
    const SUBSCRIBERS: usize = 200;
    const ROUNDS: usize = 400;
    let server = Server::start(&["--durability", "none", "--max-tickets-per-user", "1000"]);
    let section = "S".repeat(16);
    let concert = server.create_seated(&[&section], 10, 10, 2).await;
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let request = format!(
        "GET /concerts/{concert}/events HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.authority()
    );
    let before_kib = rss_kib(server.pid());
    let mut stalled = Vec::new();
    for _ in 0..SUBSCRIBERS {
        stalled.push(
            server
                .raw_from(ATTACKER, 4096, request.as_bytes())
                .await
                .expect("a subscriber connects"),
        );
    }
    // Twenty seat changes a round (ten seats held, then released): 8,000 changes, far more than a stalled
    // subscriber's buffers and its 1,024 items of lag.
    let seats: Vec<String> = (1..=10).map(|seat| format!("{section}-1-{seat}")).collect();
    let mut peak_kib = before_kib;
    for round in 0..ROUNDS {
        let hold = server
            .post(
                "/holds",
                Some(&alice),
                json!({"concert_id": concert, "seats": seats}),
            )
            .await
            .expect(201);
        server
            .send(
                Method::DELETE,
                &format!("/holds/{}", hold["id"].as_str().expect("id")),
                Some(&alice),
                None,
                &[],
            )
            .await;
        if round % 20 == 0 {
            peak_kib = peak_kib.max(rss_kib(server.pid()));
        }
    }
    // Every stalled subscriber is dropped by the server, none waits for its client to read.
    for (index, stream) in stalled.iter_mut().enumerate() {
        read_until_closed(stream, &format!("stalled subscriber {index}")).await;
    }
    let dropped = server
        .metric("boxoffice_event_subscribers_dropped_total")
        .await;
    assert!(
        dropped >= SUBSCRIBERS as f64,
        "{dropped} subscribers dropped"
    );
    assert_eq!(server.metric("boxoffice_event_subscribers").await, 0.0);
    // What one stalled subscriber cost the node at the peak: its buffers, bounded by the connection's buffer
    // limit and one chunk of events (64 KiB each), not by how many changes it missed.
    let per_subscriber_kib = peak_kib.saturating_sub(before_kib) / SUBSCRIBERS as u64;
    eprintln!(
        "resident memory {before_kib} KiB, peak {peak_kib} KiB: {per_subscriber_kib} KiB per stalled subscriber"
    );
    assert!(
        per_subscriber_kib <= 192,
        "a stalled subscriber costs bounded memory ({per_subscriber_kib} KiB each)"
    );
    assert_eq!(server.availability(&concert).await, (100, 0, 0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_registered_in_a_loop_cannot_hold_the_concert() {
    let server = Server::start(&[
        "--signups-per-address-max",
        "10",
        "--held-tickets-per-address-max",
        "20",
    ]);
    let concert = server.create_seated(&["A"], 10, 20, 2).await;
    let bot = server.client_from(ATTACKER);

    // Sign-ups in a loop: ten from one address, then 429 until the window ends.
    let mut accounts = Vec::new();
    let mut throttled = 0;
    for index in 0..50 {
        let card = (index % 2 == 0).then(|| card(GOOD_CARD, 12, 2030));
        let mut body = json!({"username": format!("bot{index}"), "password": "bot password 1"});
        if let Some(card) = card {
            body["card"] = card;
        }
        let (status, reply, headers) =
            send_from(&bot, &server, Method::POST, "/users", None, Some(body)).await;
        match status {
            201 => accounts.push((
                index % 2 == 0,
                reply["token"].as_str().expect("token").to_owned(),
            )),
            429 => {
                assert_eq!(reply["error"]["code"], "too_many_signups", "{reply}");
                assert!(headers.contains_key("retry-after"));
                throttled += 1;
            }
            other => panic!("sign-up answered {other}: {reply}"),
        }
    }
    assert_eq!((accounts.len(), throttled), (10, 40));

    // Accounts without a card cannot hold; those with one hold 20 seats between them, no more.
    let mut held = 0;
    let mut seat = 0;
    for (has_card, token) in &accounts {
        for _ in 0..2 {
            let seats: Vec<String> = (0..4)
                .map(|i| format!("A-{}-{}", (seat + i) / 20 + 1, (seat + i) % 20 + 1))
                .collect();
            let (status, reply, _) = send_from(
                &bot,
                &server,
                Method::POST,
                "/holds",
                Some(token),
                Some(json!({"concert_id": concert, "seats": seats})),
            )
            .await;
            match (has_card, status) {
                (false, 422) => assert_eq!(reply["error"]["code"], "card_required", "{reply}"),
                (true, 201) => {
                    held += 4;
                    seat += 4;
                }
                (true, 429) => {
                    assert_eq!(reply["error"]["code"], "too_many_held_tickets", "{reply}")
                }
                (_, other) => panic!("a hold answered {other}: {reply}"),
            }
        }
    }
    assert_eq!(held, 20, "one address holds 20 of 200 seats at most");
    assert_eq!(server.availability(&concert).await, (180, 20, 0, 200));

    // A real buyer elsewhere still holds and buys.
    let (_, buyer) = server.register("real-buyer", GOOD_CARD).await;
    let hold = server
        .hold(&buyer, json!({"concert_id": concert, "seats": ["A-10-20"]}))
        .await;
    server
        .post(&format!("/holds/{hold}/purchase"), Some(&buyer), json!({}))
        .await
        .expect(201);

    // Cards the provider refuses, or that have expired, are never stored.
    let refused = server
        .post(
            "/users",
            None,
            json!({"username": "refused-card", "password": "long enough 1",
                   "card": card(REFUSED_CARD, 12, 2030)}),
        )
        .await;
    refused.expect_error(422, "card_refused");
    let expired = server
        .post(
            "/users",
            None,
            json!({"username": "expired-card", "password": "long enough 1",
                   "card": card(GOOD_CARD, 1, 2001)}),
        )
        .await;
    expired.expect_error(422, "card_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_needs_the_current_one_and_ends_every_other_session() {
    let server = Server::start(&[]);
    let (id, first) = server.register("alice", GOOD_CARD).await;
    let login = |password: &'static str| {
        let server = &server;
        async move {
            server
                .post(
                    "/users/verify",
                    None,
                    json!({"username": "alice", "password": password}),
                )
                .await
        }
    };
    // A thief's token, from a second login.
    let thief = login("correct horse battery").await.expect(200)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let user_path = format!("/users/{id}");
    let change = |token: String, body: Value| {
        let server = &server;
        let path = user_path.clone();
        async move {
            server
                .send(Method::PUT, &path, Some(&token), Some(body), &[])
                .await
        }
    };

    change(thief.clone(), json!({"password": "the thief's password"}))
        .await
        .expect_error(422, "current_password_required");
    change(
        thief.clone(),
        json!({"password": "the thief's password", "current_password": "a guess at it"}),
    )
    .await
    .expect_error(403, "wrong_current_password");
    // The owner changes it: every other session ends, theirs stays.
    change(
        first.clone(),
        json!({"password": "a new password 2", "current_password": "correct horse battery"}),
    )
    .await
    .expect(200);
    server
        .get(&user_path, Some(&thief))
        .await
        .expect_error(401, "unauthorized");
    server.get(&user_path, Some(&first)).await.expect(200);
    login("correct horse battery")
        .await
        .expect_error(401, "invalid_credentials");
    let second = login("a new password 2").await.expect(200)["token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Usernames are one in any case.
    server
        .post(
            "/users",
            None,
            json!({"username": "ALICE", "password": "another password"}),
        )
        .await
        .expect_error(409, "username_taken");

    // The admin resets it without the current one, and every session ends.
    server
        .send(
            Method::PUT,
            &user_path,
            Some(ADMIN_TOKEN),
            Some(json!({"password": "reset by the admin"})),
            &[],
        )
        .await
        .expect(200);
    for token in [&first, &second] {
        server
            .get(&user_path, Some(token))
            .await
            .expect_error(401, "unauthorized");
    }
    // Durably: after a restart the old sessions stay ended and the new password holds.
    let data = server.stop();
    let server = Server::start_in(data, &[]);
    server
        .get(&user_path, Some(&first))
        .await
        .expect_error(401, "unauthorized");
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "reset by the admin"}),
        )
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_do_not_wait_behind_a_flood_of_sign_ups() {
    const SIGN_UPS: usize = 120;
    let server = Server::start(&[]);
    server.register("regular", GOOD_CARD).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for index in 0..SIGN_UPS {
        let (client, base, done) = (server.client.clone(), server.base.clone(), done.clone());
        flood.push(tokio::spawn(async move {
            let response = client
                .post(format!("{base}/users"))
                .json(&json!({"username": format!("flood{index}"), "password": "flood password"}))
                .send()
                .await
                .expect("a sign-up completes");
            assert_eq!(response.status(), 201);
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    // Let the flood reach the node first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "regular", "password": "correct horse battery"}),
        )
        .await
        .expect(200);
    let signed_up_before = done.load(std::sync::atomic::Ordering::SeqCst);
    for task in flood {
        task.await.expect("a sign-up task");
    }
    // Registrations hash on half the cores at most, logins on their own: the login did not queue behind them.
    assert!(
        signed_up_before < SIGN_UPS / 2,
        "the login waited for {signed_up_before} of {SIGN_UPS} sign-ups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_kill_during_payment_gets_a_final_answer() {
    let server = Server::start(&["--payment-latency-ms", "3000"]);
    let concert = server.create_general(10, 1, 1_000).await;
    let (user_id, token) = server.register("interrupted", GOOD_CARD).await;
    let order = json!({"concert_id": concert, "quantity": 2});
    let key = [("idempotency-key", "interrupted-order-1")];
    let pending = {
        let (client, base, token, order) = (
            server.client.clone(),
            server.base.clone(),
            token.clone(),
            order.clone(),
        );
        tokio::spawn(async move {
            let _ = client
                .post(format!("{base}/orders"))
                .bearer_auth(token)
                .header("idempotency-key", "interrupted-order-1")
                .json(&order)
                .send()
                .await;
        })
    };
    // Killed while the provider takes its 3 s.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let data = server.kill();
    pending
        .await
        .expect("the first request ends with the process");
    let server = Server::start_in(data, &["--payment-latency-ms", "3000"]);

    // Every retry with the key ends in a final answer after a few, as Retry-After asks.
    let mut answers = Vec::new();
    let mut reply = server
        .send(
            Method::POST,
            "/orders",
            Some(&token),
            Some(order.clone()),
            &key,
        )
        .await;
    for _ in 0..10 {
        answers.push(reply.status.as_u16());
        if reply.status.as_u16() != 503 {
            break;
        }
        let wait: u64 = reply
            .retry_after
            .as_deref()
            .and_then(|value| value.parse().ok())
            .expect("a 503 carries Retry-After");
        tokio::time::sleep(Duration::from_secs(wait)).await;
        reply = server
            .send(
                Method::POST,
                "/orders",
                Some(&token),
                Some(order.clone()),
                &key,
            )
            .await;
    }
    let body = reply.expect(201);
    assert_eq!(body["status"], "confirmed", "{body}");
    assert!(
        answers.len() <= 2,
        "answers before the final one: {answers:?}"
    );
    // The same key now reads that order; it was charged once.
    let again = server
        .send(Method::POST, "/orders", Some(&token), Some(order), &key)
        .await
        .expect(201);
    assert_eq!(again["id"], body["id"]);
    let tickets = server
        .get(&format!("/users/{user_id}/tickets"), Some(&token))
        .await
        .expect(200);
    assert_eq!(tickets["tickets"].as_array().expect("tickets").len(), 2);
    assert_eq!(server.availability(&concert).await, (8, 0, 2, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_data_dir_is_private_and_a_wide_one_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(&[]);
    let concert = server.create_general(10, 1, 1_000).await;
    let (_, token) = server.register("private", GOOD_CARD).await;
    server
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);
    server
        .post("/admin/snapshot", Some(ADMIN_TOKEN), json!({}))
        .await
        .expect(200);
    let data = server.stop();
    // Everything the node made in its data dir (the dir itself the harness made).
    let mut checked = 0;
    let mut pending: Vec<_> = std::fs::read_dir(data.path())
        .expect("the data dir")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("metadata");
        assert_eq!(
            metadata.permissions().mode() & 0o077,
            0,
            "{} is private to the node's user",
            path.display()
        );
        checked += 1;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a dir") {
                pending.push(entry.expect("an entry").path());
            }
        }
    }
    assert!(
        checked > 5,
        "the journal, sled and keys were checked ({checked})"
    );

    // A data dir others can read is reported at start.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let server = Server::start_logged(data, &[], log.path());
    let text = std::fs::read_to_string(log.path()).expect("the log");
    assert!(
        text.contains("group or others may read"),
        "the wide data dir is reported: {text}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_never_quote_what_was_sent_nor_may_a_cache_keep_them() {
    const MARKER: &str = "5555555555554444";
    let server = Server::start(&[]);
    let seated = server.create_seated(&["A"], 2, 2, 1).await;
    let (id, token) = server.register("quoted", GOOD_CARD).await;
    let mut answers: Vec<(String, reqwest::StatusCode, String)> = Vec::new();
    let mut record = async |name: &str,
                            method: Method,
                            path: String,
                            auth: Option<&str>,
                            body: Option<Value>| {
        let mut request = server
            .client
            .request(method, format!("{}{path}", server.base));
        if let Some(auth) = auth {
            request = request.bearer_auth(auth);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let text = response.text().await.expect("a body");
        answers.push((name.to_owned(), status, text));
    };
    record(
        "unknown seat",
        Method::POST,
        "/holds".into(),
        Some(&token),
        Some(json!({"concert_id": seated, "seats": [MARKER]})),
    )
    .await;
    record(
        "unknown seat, order",
        Method::POST,
        "/orders".into(),
        Some(&token),
        Some(json!({"concert_id": seated, "seats": [format!("A-1-{MARKER}")]})),
    )
    .await;
    record(
        "seat listed twice",
        Method::POST,
        "/holds".into(),
        Some(&token),
        Some(json!({"concert_id": seated, "seats": ["A-1-1", "A-1-1"]})),
    )
    .await;
    record(
        "section named twice",
        Method::POST,
        "/concerts".into(),
        Some(ADMIN_TOKEN),
        Some(
            json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 100,
                    "sections": [{"name": MARKER, "rows": 1, "seats_per_row": 1},
                                 {"name": MARKER, "rows": 1, "seats_per_row": 1}]}),
        ),
    )
    .await;
    record(
        "unknown concert",
        Method::GET,
        format!("/concerts/{MARKER}"),
        None,
        None,
    )
    .await;
    record(
        "unknown concert, hold",
        Method::POST,
        "/holds".into(),
        Some(&token),
        Some(json!({"concert_id": MARKER, "quantity": 1})),
    )
    .await;
    record(
        "bad username",
        Method::POST,
        "/users".into(),
        None,
        Some(json!({"username": format!("{MARKER}!"), "password": "long enough"})),
    )
    .await;
    record(
        "bad query",
        Method::GET,
        format!("/users?limit={MARKER}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    record(
        "unknown order",
        Method::GET,
        format!("/orders/{MARKER}"),
        Some(&token),
        None,
    )
    .await;
    record(
        "unknown ticket",
        Method::POST,
        "/tickets/verify".into(),
        Some(ADMIN_TOKEN),
        Some(json!({"token": MARKER})),
    )
    .await;
    record(
        "unknown field",
        Method::PUT,
        format!("/users/{id}"),
        Some(&token),
        Some(json!({MARKER: 1})),
    )
    .await;
    for (name, status, text) in &answers {
        assert!(status.is_client_error(), "{name}: {status} {text}");
        assert!(
            !text.contains(MARKER),
            "{name} quotes what was sent: {text}"
        );
    }

    // Answers that carry a token or personal data are never stored by a cache.
    let response = server
        .client
        .post(format!("{}/users/verify", server.base))
        .json(&json!({"username": "quoted", "password": "correct horse battery"}))
        .send()
        .await
        .expect("a login");
    assert_eq!(response.headers()["cache-control"], "no-store");
    for path in [format!("/users/{id}"), format!("/users/{id}/tickets")] {
        let response = server
            .client
            .get(format!("{}{path}", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
}

#[test]
fn a_guessable_admin_token_is_refused_at_start() {
    for weak in [" ".repeat(16), "admin".repeat(4), "0123456789abcdef".into()] {
        let data = tempfile::tempdir().expect("a data dir");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("BOXOFFICE_ADMIN_TOKEN", &weak)
            .output()
            .expect("the binary runs");
        assert!(!output.status.success(), "{weak:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("BOXOFFICE_ADMIN_TOKEN"), "{stderr}");
        assert!(
            weak.trim().is_empty() || !stderr.contains(&weak),
            "the reason quotes the token: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let server = Server::start(&[
        "--signups-per-address-max",
        "2",
        "--trusted-proxy",
        "127.0.0.3",
    ]);
    let sign_up = async |client: &reqwest::Client, username: &str, forwarded_for: &str| {
        client
            .post(format!("{}/users", server.base))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"username": username, "password": "long enough 1"}))
            .send()
            .await
            .expect("an answer")
            .status()
            .as_u16()
    };
    let proxy = server.client_from(PROXY);
    // Through the proxy, two clients have two sign-ups each.
    assert_eq!(sign_up(&proxy, "via-a1", "198.51.100.1").await, 201);
    assert_eq!(sign_up(&proxy, "via-a2", "198.51.100.1").await, 201);
    assert_eq!(sign_up(&proxy, "via-a3", "198.51.100.1").await, 429);
    assert_eq!(sign_up(&proxy, "via-b1", "198.51.100.2").await, 201);
    // A client elsewhere cannot pick its address by writing the header: it is counted as itself.
    let bot = server.client_from(ATTACKER);
    assert_eq!(sign_up(&bot, "forged1", "198.51.100.7").await, 201);
    assert_eq!(sign_up(&bot, "forged2", "198.51.100.8").await, 201);
    assert_eq!(sign_up(&bot, "forged3", "198.51.100.9").await, 429);
}

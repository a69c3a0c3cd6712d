//! Payment isolation: with a slow provider, a second concert's orders are not slowed; with the pool saturated,
//! orders wait or get 503, never hang. And the order-ownership rule: a client that disconnects or times out
//! mid-order leaves neither a stuck reservation nor a charge without tickets, and a retry with the same
//! Idempotency-Key finds the outcome.
//!
//! Nothing here asserts how fast anything is: slowness is shown by what is still unfinished when something else
//! has already answered, and every wait is bounded only to detect a hang.

mod common;

use common::{DECLINED_CARD, GOOD_CARD, Reply, Server};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A request that takes longer than this has hung.
const HANG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client that gives up mid-payment waits for its answer; shorter than every provider latency below.
const IMPATIENT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long to wait for something the server must do by itself: a hang detector.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between two looks while waiting for the server.
const SETTLE_POLL: Duration = Duration::from_millis(20);
const PAYMENTS_IN_FLIGHT: &str = "boxoffice_payments_in_flight";

fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
}

/// `POST path` through `client`; an error means the client gave up (or the connection failed).
async fn post_via(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    token: &str,
    body: Value,
    key: Option<&str>,
) -> reqwest::Result<Reply> {
    let mut request = client
        .post(format!("{}{}", server.base, path))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"))
    };
    Ok(Reply {
        status,
        body,
        retry_after,
    })
}

fn as_str<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string: {value}"))
}

fn ticket_ids(tickets: &Value) -> BTreeSet<String> {
    tickets
        .as_array()
        .unwrap_or_else(|| panic!("tickets is an array: {tickets}"))
        .iter()
        .map(|ticket| as_str(ticket, "id").to_owned())
        .collect()
}

/// Asserts that `order` is confirmed with `quantity` tickets.
fn check_confirmed(order: &Value, quantity: usize) {
    assert_eq!(as_str(order, "status"), "confirmed", "{order}");
    assert_eq!(
        order["tickets"].as_array().map(Vec::len),
        Some(quantity),
        "a 201 order has exactly its tickets: {order}"
    );
}

async fn tickets_of(server: &Server, user_id: &str, token: &str) -> Value {
    server
        .get(&format!("/users/{user_id}/tickets"), Some(token))
        .await
        .expect(200)["tickets"]
        .clone()
}

/// Waits until the user owns `count` tickets, which only a confirmed order gives; returns them.
async fn wait_for_tickets(server: &Server, user_id: &str, token: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE_WAIT_MAX;
    loop {
        let tickets = tickets_of(server, user_id, token).await;
        let tickets = tickets.as_array().expect("tickets");
        assert!(
            tickets.len() <= count,
            "more tickets than ordered: {tickets:?}"
        );
        if tickets.len() == count {
            return tickets.clone();
        }
        assert!(
            Instant::now() < deadline,
            "an abandoned order never finished: {tickets:?}"
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_provider_does_not_stall_the_shards() {
    const FIRED: usize = 200;
    const BUYERS: usize = 20;
    // Each buyer orders ten tickets of concert A and one buyer holds one more: above the default per-user limit.
    let server = Arc::new(Server::start(&[
        "--payment-latency-ms",
        "3000",
        "--max-tickets-per-user",
        "100",
    ]));
    let concert_a = server.create_general(1_000, 4, 1_500).await;
    let concert_b = server.create_general(100, 2, 1_500).await;
    let buyers = server.register_many("isolation-", BUYERS, GOOD_CARD).await;

    let completed = Arc::new(AtomicUsize::new(0));
    let orders: Vec<_> = (0..FIRED)
        .map(|index| {
            let (server, completed) = (server.clone(), completed.clone());
            let token = buyers[index % BUYERS].1.clone();
            let body = json!({"concert_id": concert_a, "quantity": 1});
            tokio::spawn(async move {
                let reply = server.post("/orders", Some(&token), body).await;
                completed.fetch_add(1, Ordering::AcqRel);
                reply
            })
        })
        .collect();

    // Every order is with the provider at once: the pool does not serialize them.
    let deadline = Instant::now() + SETTLE_WAIT_MAX;
    loop {
        let in_flight = server.metric(PAYMENTS_IN_FLIGHT).await;
        assert!(
            in_flight <= FIRED as f64,
            "more payments than orders: {in_flight}"
        );
        if in_flight == FIRED as f64 {
            break;
        }
        assert_eq!(
            completed.load(Ordering::Acquire),
            0,
            "an order finished before all {FIRED} reached the provider ({in_flight} in flight)"
        );
        assert!(
            Instant::now() < deadline,
            "payments in flight stayed at {in_flight}"
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
    // While they all wait on the provider, the shards of both concerts keep answering.
    assert_eq!(
        server.availability(&concert_a).await.1,
        FIRED as u64,
        "every order holds its ticket"
    );
    let (_, token) = &buyers[0];
    server
        .post(
            "/holds",
            Some(token),
            json!({"concert_id": concert_b, "quantity": 2}),
        )
        .await
        .expect(201);
    server
        .post(
            "/holds",
            Some(token),
            json!({"concert_id": concert_a, "quantity": 1}),
        )
        .await
        .expect(201);
    assert_eq!(
        server.availability(&concert_a).await,
        (1_000 - FIRED as u64 - 1, FIRED as u64 + 1, 0, 1_000)
    );
    assert_eq!(server.availability(&concert_b).await, (98, 2, 0, 100));
    assert_eq!(
        completed.load(Ordering::Acquire),
        0,
        "the holds and availability were answered while every order was still paying"
    );

    for order in orders {
        check_confirmed(&order.await.expect("an order task").expect(201), 1);
    }
    assert_eq!(completed.load(Ordering::Acquire), FIRED);
    assert_eq!(
        server.availability(&concert_a).await,
        (1_000 - FIRED as u64 - 1, 1, FIRED as u64, 1_000)
    );
    server.wait_for_metric(PAYMENTS_IN_FLIGHT, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_pool_answers_overloaded_and_never_hangs() {
    const FIRED: usize = 40;
    const BUYERS: usize = 8;
    const QUANTITY: u64 = 2;
    /// `--payment-concurrency` + `--payment-queue-max`: orders admitted at once.
    const ADMITTED_MAX: usize = 5;
    let server = Arc::new(Server::start(&[
        "--payment-latency-ms",
        "500",
        "--payment-concurrency",
        "2",
        "--payment-queue-max",
        "3",
    ]));
    let concert = server.create_general(200, 2, 1_000).await;
    let buyers = server.register_many("saturation-", BUYERS, GOOD_CARD).await;
    let client = client_with_timeout(HANG_TIMEOUT);

    let orders: Vec<_> = (0..FIRED)
        .map(|index| {
            let (server, client) = (server.clone(), client.clone());
            let token = buyers[index % BUYERS].1.clone();
            let key = (index % 2 == 0).then(|| format!("saturation-{index}"));
            let body = json!({"concert_id": concert, "quantity": QUANTITY});
            tokio::spawn(async move {
                let reply = post_via(&client, &server, "/orders", &token, body, key.as_deref())
                    .await
                    .expect("an order is answered, never left hanging");
                (index, key, reply)
            })
        })
        .collect();
    let (mut confirmed, mut refused_with_key) = (0, Vec::new());
    for order in orders {
        let (index, key, reply) = order.await.expect("an order task");
        match reply.status.as_u16() {
            201 => {
                check_confirmed(&reply.body, QUANTITY as usize);
                confirmed += 1;
            }
            _ => {
                reply.expect_error(503, "overloaded");
                let retry_after = reply
                    .retry_after
                    .as_deref()
                    .expect("503 carries Retry-After");
                assert!(
                    retry_after.parse::<u64>().is_ok_and(|seconds| seconds >= 1),
                    "Retry-After is a number of seconds: {retry_after}"
                );
                if let Some(key) = key {
                    refused_with_key.push((index, key));
                }
            }
        }
    }
    let refused = FIRED - confirmed;
    eprintln!("saturation: {confirmed} confirmed, {refused} overloaded");
    assert!(confirmed >= 1, "the pool served someone");
    assert!(refused >= 1, "a full pool refused someone");
    assert_eq!(
        server.availability(&concert).await,
        (
            200 - confirmed as u64 * QUANTITY,
            0,
            confirmed as u64 * QUANTITY,
            200
        )
    );

    // Nothing happened for an overloaded order: a retry under its key is a fresh try, not a replay of the 503.
    let retries: Vec<_> = refused_with_key
        .into_iter()
        .take(ADMITTED_MAX)
        .map(|(index, key)| {
            let (server, client) = (server.clone(), client.clone());
            let token = buyers[index % BUYERS].1.clone();
            let body = json!({"concert_id": concert, "quantity": QUANTITY});
            tokio::spawn(async move {
                post_via(&client, &server, "/orders", &token, body, Some(&key))
                    .await
                    .expect("a retry is answered")
            })
        })
        .collect();
    let retried = retries.len() as u64;
    for retry in retries {
        check_confirmed(
            &retry.await.expect("a retry task").expect(201),
            QUANTITY as usize,
        );
    }
    let sold = (confirmed as u64 + retried) * QUANTITY;
    assert_eq!(
        server.availability(&concert).await,
        (200 - sold, 0, sold, 200)
    );
    server.wait_for_metric(PAYMENTS_IN_FLIGHT, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_past_its_deadline_keeps_its_seats_and_is_resolved_not_voided() {
    let server = Server::start(&[
        "--payment-latency-ms",
        "5000",
        "--payment-timeout-ms",
        "500",
    ]);
    let concert = server.create_general(10, 2, 1_000).await;
    let (user_id, token) = server.register("deadline", GOOD_CARD).await;
    let body = json!({"concert_id": concert, "quantity": 3});
    let key = [("idempotency-key", "deadline-1")];
    let reply = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(body.clone()),
            &key,
        )
        .await;
    // No answer in time is not a decline: the buyer hears the order is pending, its seats still reserved.
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
    let order_id = reply.body["id"].as_str().expect("an order id").to_owned();
    assert_eq!(server.availability(&concert).await, (7, 3, 0, 10));
    assert_eq!(tickets_of(&server, &user_id, &token).await, json!([]));
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("boxoffice_payments_unresolved{age=\"under_10s\"} 1"),
        "{metrics}"
    );
    // A repeat with the same key reads the pending order; it does not order again.
    let replay = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(
        (replay.status.as_u16(), &replay.body["id"]),
        (202, &json!(order_id))
    );

    // Once the provider has authorized, the resolver reads it back: tickets, then the capture.
    let started = Instant::now();
    let order = loop {
        let order = server
            .get(&format!("/orders/{order_id}"), Some(&token))
            .await
            .expect(200);
        if order["status"] != "pending" {
            break order;
        }
        assert!(
            started.elapsed() < SETTLE_WAIT_MAX,
            "never resolved: {order}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["tickets"].as_array().map(Vec::len), Some(3));
    assert_eq!(server.availability(&concert).await, (7, 0, 3, 10));
    let replay = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(body),
            &key,
        )
        .await;
    assert_eq!((replay.status.as_u16(), &replay.body), (201, &order));
    server
        .wait_for_metric("boxoffice_payment_captures_pending", 0.0)
        .await;
    server.wait_for_metric(PAYMENTS_IN_FLIGHT, 0.0).await;
    let data_dir = server.stop();
    let report = common::inspect(data_dir.path());
    assert_eq!(report["violations"], json!([]), "{report}");
    assert_eq!(report["ledger"]["approved"], 1, "captured: {report}");
    assert_eq!(report["ledger"]["authorized"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_outlives_its_client_and_a_retry_finds_it() {
    let server = Server::start(&["--payment-latency-ms", "1500"]);
    let concert = server.create_general(20, 2, 1_000).await;
    let (alice_id, alice) = server.register("ownership-alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("ownership-bob", GOOD_CARD).await;
    let (carol_id, carol) = server.register("ownership-carol", DECLINED_CARD).await;
    let impatient = client_with_timeout(IMPATIENT_TIMEOUT);
    let patient = client_with_timeout(HANG_TIMEOUT);
    let order = |quantity: u64| json!({"concert_id": concert, "quantity": quantity});
    let give_up = async |token: &str, body: Value, key: Option<&str>| match post_via(
        &impatient, &server, "/orders", token, body, key,
    )
    .await
    {
        Err(error) => assert!(error.is_timeout(), "the client timed out: {error}"),
        Ok(reply) => panic!(
            "the client gives up before the provider answers, yet got {}: {}",
            reply.status, reply.body
        ),
    };

    // Abandoned mid-payment, the order finishes by itself; a later retry under its key answers that order.
    give_up(&alice, order(2), Some("ownership-1")).await;
    let tickets = wait_for_tickets(&server, &alice_id, &alice, 2).await;
    let order_id = as_str(&tickets[0], "order_id").to_owned();
    assert!(
        tickets
            .iter()
            .all(|ticket| as_str(ticket, "order_id") == order_id)
    );
    assert_eq!(server.availability(&concert).await, (18, 0, 2, 20));
    let retry = post_via(
        &patient,
        &server,
        "/orders",
        &alice,
        order(2),
        Some("ownership-1"),
    )
    .await
    .expect("answered")
    .expect(201);
    assert_eq!(
        as_str(&retry, "id"),
        order_id,
        "the retry finds the order the server made"
    );
    check_confirmed(&retry, 2);
    assert_eq!(
        ticket_ids(&retry["tickets"]),
        ticket_ids(&Value::Array(tickets))
    );
    assert_eq!(
        server
            .get(&format!("/orders/{order_id}"), Some(&alice))
            .await
            .expect(200),
        retry
    );
    assert_eq!(
        server.availability(&concert).await,
        (18, 0, 2, 20),
        "one order, charged once"
    );
    post_via(
        &patient,
        &server,
        "/orders",
        &alice,
        order(3),
        Some("ownership-1"),
    )
    .await
    .expect("answered")
    .expect_error(422, "idempotency_key_reused");
    assert_eq!(server.availability(&concert).await, (18, 0, 2, 20));

    // A retry while the abandoned order is still paying waits for that order instead of placing another.
    give_up(&alice, order(1), Some("ownership-2")).await;
    let retry = post_via(
        &patient,
        &server,
        "/orders",
        &alice,
        order(1),
        Some("ownership-2"),
    )
    .await
    .expect("answered")
    .expect(201);
    check_confirmed(&retry, 1);
    assert_ne!(as_str(&retry, "id"), order_id);
    let tickets = wait_for_tickets(&server, &alice_id, &alice, 3).await;
    let orders: BTreeSet<&str> = tickets
        .iter()
        .map(|ticket| as_str(ticket, "order_id"))
        .collect();
    assert_eq!(
        orders,
        BTreeSet::from([order_id.as_str(), as_str(&retry, "id")])
    );
    assert_eq!(server.availability(&concert).await, (17, 0, 3, 20));

    // Without a key the abandoned order still ends in tickets, with nothing left held.
    give_up(&alice, order(1), None).await;
    wait_for_tickets(&server, &alice_id, &alice, 4).await;
    assert_eq!(server.availability(&concert).await, (16, 0, 4, 20));

    // An abandoned order that is declined gives its tickets back; the retry reads the decline.
    give_up(&carol, order(2), Some("ownership-declined")).await;
    post_via(
        &patient,
        &server,
        "/orders",
        &carol,
        order(2),
        Some("ownership-declined"),
    )
    .await
    .expect("answered")
    .expect_error(402, "payment_declined");
    assert_eq!(server.availability(&concert).await, (16, 0, 4, 20));
    assert_eq!(tickets_of(&server, &carol_id, &carol).await, json!([]));

    // A key belongs to its user: another user's request under the same key is an order of its own.
    let bobs = post_via(
        &patient,
        &server,
        "/orders",
        &bob,
        order(2),
        Some("ownership-1"),
    )
    .await
    .expect("answered")
    .expect(201);
    check_confirmed(&bobs, 2);
    assert_eq!(as_str(&bobs, "user_id"), bob_id);
    assert_ne!(as_str(&bobs, "id"), order_id);
    assert_eq!(server.availability(&concert).await, (14, 0, 6, 20));
    server.wait_for_metric(PAYMENTS_IN_FLIGHT, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_payment_puts_the_tickets_back_on_sale() {
    let server = Server::start(&["--payment-decline-rate", "1.0"]);
    let general = server.create_general(5, 2, 1_000).await;
    let seated = server.create_seated(&["A"], 1, 4, 2).await;
    let (user_id, token) = server.register("declines", GOOD_CARD).await;
    let all = json!({"concert_id": general, "quantity": 5});
    let key = [("idempotency-key", "declined-1")];

    let reply = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(all.clone()),
            &key,
        )
        .await;
    reply.expect_error(402, "payment_declined");
    assert_eq!(server.availability(&general).await, (5, 0, 0, 5));
    let replay = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(all.clone()),
            &key,
        )
        .await;
    assert_eq!(
        (replay.status, &replay.body),
        (reply.status, &reply.body),
        "a replay answers the same"
    );
    // Every ticket went back: asking for all of them again is declined, not sold out.
    server
        .post("/orders", Some(&token), all.clone())
        .await
        .expect_error(402, "payment_declined");
    assert_eq!(server.availability(&general).await, (5, 0, 0, 5));

    let hold = server.post("/holds", Some(&token), all).await.expect(201);
    assert_eq!(server.availability(&general).await, (0, 5, 0, 5));
    server
        .post(
            &format!("/holds/{}/purchase", as_str(&hold, "id")),
            Some(&token),
            json!({}),
        )
        .await
        .expect_error(402, "payment_declined");
    assert_eq!(server.availability(&general).await, (5, 0, 0, 5));

    server
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": seated, "seats": ["A-1-1", "A-1-4"]}),
        )
        .await
        .expect_error(402, "payment_declined");
    assert_eq!(server.availability(&seated).await, (4, 0, 0, 4));
    let seats = server
        .get(&format!("/concerts/{seated}/seats"), None)
        .await
        .expect(200);
    let seats = seats["seats"].as_array().expect("seats");
    assert_eq!(seats.len(), 4);
    assert!(
        seats.iter().all(|seat| seat["status"] == "free"),
        "declined seats are free: {seats:?}"
    );
    assert_eq!(tickets_of(&server, &user_id, &token).await, json!([]));
}

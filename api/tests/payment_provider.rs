//! `boxoffice payment-provider` as a client sees it over HTTP: the vault, the life of a payment intent, Stripe's
//! idempotency semantics (also across a kill -9 and restart), the rate limit, and seeded faults, after which every
//! idempotency key stands for exactly one intent; and a node selling with `--payment http://...` against it.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

use common::provider::{API_KEY, CARD, CVC, DECLINING, Provider, Reply, intent_form};

#[tokio::test]
async fn a_vaulted_card_is_authorized_captured_refunded_and_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), &[]);

    // The vault shows what may be shown and nothing else.
    let method = provider
        .post(
            "/v1/payment_methods",
            None,
            &[
                ("type", "card"),
                ("card[number]", CARD),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", CVC),
            ],
        )
        .await
        .expect(200);
    assert_eq!(method["card"]["brand"], "visa");
    assert_eq!(method["card"]["last4"], "4242");
    let text = method.to_string();
    assert!(!text.contains(CARD) && !text.contains(CVC), "{text}");
    let method = method["id"].as_str().expect("an id").to_owned();
    // A refused card: an incorrect CVC, as Stripe's test card ending in 0127.
    let refused = provider
        .post(
            "/v1/payment_methods",
            None,
            &[
                ("card[number]", "4000000000000127"),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", CVC),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused.error(), ("card_error", "incorrect_cvc"));

    // Authorized, then captured once.
    let intent = provider
        .post(
            "/v1/payment_intents",
            None,
            &intent_form(&method, "4200", "o_1"),
        )
        .await
        .expect(200);
    assert_eq!(intent["status"], "requires_capture");
    assert_eq!(intent["amount_capturable"], 4200);
    assert_eq!(intent["metadata"]["order_id"], "o_1");
    let id = intent["id"].as_str().expect("an id").to_owned();
    let captured = provider
        .post(&format!("/v1/payment_intents/{id}/capture"), None, &[])
        .await
        .expect(200);
    assert_eq!(
        (&captured["status"], &captured["amount_received"]),
        (&Value::from("succeeded"), &Value::from(4200))
    );
    let again = provider
        .post(&format!("/v1/payment_intents/{id}/capture"), None, &[])
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        again.error(),
        ("invalid_request_error", "payment_intent_unexpected_state")
    );
    let cancel = provider
        .post(&format!("/v1/payment_intents/{id}/cancel"), None, &[])
        .await;
    assert_eq!(cancel.status, StatusCode::BAD_REQUEST);

    // Refunds up to what was captured.
    provider
        .post(
            "/v1/refunds",
            None,
            &[("payment_intent", &id), ("amount", "1000")],
        )
        .await
        .expect(200);
    let over = provider
        .post(
            "/v1/refunds",
            None,
            &[("payment_intent", &id), ("amount", "3201")],
        )
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        provider
            .get(&format!("/v1/payment_intents/{id}"))
            .await
            .expect(200)["amount_refunded"],
        1000
    );

    // A declined authorization leaves the intent needing another payment method; it can be canceled.
    let declining = provider.card(DECLINING).await;
    let declined = provider
        .post(
            "/v1/payment_intents",
            None,
            &intent_form(&declining, "4200", "o_2"),
        )
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(declined.error(), ("card_error", "card_declined"));
    let declined_id = declined.body["error"]["payment_intent"]["id"]
        .as_str()
        .expect("the intent")
        .to_owned();
    assert_eq!(
        provider
            .get(&format!("/v1/payment_intents/{declined_id}"))
            .await
            .expect(200)["status"],
        "requires_payment_method"
    );
    provider
        .post(
            &format!("/v1/payment_intents/{declined_id}/cancel"),
            None,
            &[],
        )
        .await
        .expect(200);

    // Listed newest first, a page at a time.
    let third = provider
        .post(
            "/v1/payment_intents",
            None,
            &intent_form(&method, "100", "o_3"),
        )
        .await
        .expect(200)["id"]
        .clone();
    let page = provider
        .get("/v1/payment_intents?limit=2")
        .await
        .expect(200);
    let ids: Vec<&Value> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| &i["id"])
        .collect();
    assert_eq!(ids, [&third, &Value::from(declined_id.as_str())]);
    assert_eq!(page["has_more"], true);
    let rest = provider
        .get(&format!(
            "/v1/payment_intents?limit=2&starting_after={declined_id}"
        ))
        .await
        .expect(200);
    assert_eq!(rest["data"][0]["id"], Value::from(id.as_str()));
    assert_eq!(rest["has_more"], false);

    // Without the key, or with an unknown object or bad parameters: Stripe's errors.
    let anonymous = provider
        .client
        .get(format!("{}/v1/payment_intents", provider.base))
        .send()
        .await
        .expect("an answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let unknown = provider.get("/v1/payment_intents/pi_nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.error(),
        ("invalid_request_error", "resource_missing")
    );
    let bad = provider
        .post(
            "/v1/payment_intents",
            None,
            &intent_form(&method, "-5", "o_4"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    drop(provider);

    // Neither the card number nor the CVC is anywhere in the provider's data dir.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).expect("readable");
        for secret in [CARD, DECLINING, CVC] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn an_idempotency_key_replays_its_first_answer_even_after_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), &[]);
    let method = provider.card(CARD).await;
    let declining = provider.card(DECLINING).await;

    let first = provider
        .post(
            "/v1/payment_intents",
            Some("order-1"),
            &intent_form(&method, "500", "o_1"),
        )
        .await;
    assert!(!first.replayed);
    let first = first.expect(200);
    let replay = provider
        .post(
            "/v1/payment_intents",
            Some("order-1"),
            &intent_form(&method, "500", "o_1"),
        )
        .await;
    assert!(replay.replayed);
    assert_eq!(replay.expect(200)["id"], first["id"]);
    // The same key with another body.
    let other = provider
        .post(
            "/v1/payment_intents",
            Some("order-1"),
            &intent_form(&method, "501", "o_1"),
        )
        .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    assert_eq!(other.error().0, "idempotency_error");
    // A decline is an answer like any other: replayed, not retried.
    let declined = provider
        .post(
            "/v1/payment_intents",
            Some("order-2"),
            &intent_form(&declining, "500", "o_2"),
        )
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    let declined_again = provider
        .post(
            "/v1/payment_intents",
            Some("order-2"),
            &intent_form(&declining, "500", "o_2"),
        )
        .await;
    assert!(declined_again.replayed);
    assert_eq!(declined_again.body, declined.body);
    // Bad parameters store nothing: the key is free for the corrected request.
    let bad = provider
        .post(
            "/v1/payment_intents",
            Some("order-3"),
            &intent_form(&method, "0", "o_3"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let third = provider
        .post(
            "/v1/payment_intents",
            Some("order-3"),
            &intent_form(&method, "300", "o_3"),
        )
        .await;
    assert!(!third.replayed);
    third.expect(200);

    provider.kill();
    let provider = Provider::start(dir.path(), &[]);
    let after = provider
        .post(
            "/v1/payment_intents",
            Some("order-1"),
            &intent_form(&method, "500", "o_1"),
        )
        .await;
    assert!(after.replayed);
    assert_eq!(after.expect(200)["id"], first["id"]);
    let id = first["id"].as_str().expect("an id");
    assert_eq!(
        provider
            .get(&format!("/v1/payment_intents/{id}"))
            .await
            .expect(200)["status"],
        "requires_capture"
    );
    // The vaulted card still authorizes.
    provider
        .post(
            "/v1/payment_intents",
            None,
            &intent_form(&method, "100", "o_4"),
        )
        .await
        .expect(200);
}

#[tokio::test]
async fn a_second_request_with_a_key_in_flight_is_409() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), &["--latency-ms", "1500"]);
    let method = provider.card(CARD).await;
    let form = intent_form(&method, "500", "o_1");
    let (a, b) = tokio::join!(
        provider.post("/v1/payment_intents", Some("k"), &form),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            provider.post("/v1/payment_intents", Some("k"), &form).await
        }
    );
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(b.status, StatusCode::CONFLICT, "{}", b.body);
    assert_eq!(b.error().0, "idempotency_error");
    let list = provider.get("/v1/payment_intents").await.expect(200);
    assert_eq!(list["data"].as_array().expect("data").len(), 1);
}

#[tokio::test]
async fn beyond_the_rate_limit_calls_are_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), &["--rate-limit", "5"]);
    let replies =
        futures_util::future::join_all((0..20).map(|_| provider.get("/v1/payment_intents"))).await;
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!limited.is_empty(), "20 calls at once against 5 a second");
    assert!(limited.len() < 20, "the bucket starts full");
    for reply in limited {
        assert_eq!(reply.error(), ("rate_limit_error", "rate_limit"));
        assert_eq!(reply.retry_after.as_deref(), Some("1"));
    }
}

#[tokio::test]
async fn after_seeded_faults_every_key_stands_for_exactly_one_intent() {
    const CALLS: usize = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let method = {
        let provider = Provider::start(dir.path(), &[]);
        let method = provider.card(CARD).await;
        provider.kill();
        method
    };
    let provider = Provider::start(
        dir.path(),
        &["--fault-rate", "1", "--seed", "7", "--hang-ms", "200"],
    );
    let mut failed = Vec::new();
    let (mut answered, mut broken) = (0, 0);
    for call in 0..CALLS {
        let key = format!("key-{call}");
        let reply = provider
            .post(
                "/v1/payment_intents",
                Some(&key),
                &intent_form(&method, "100", &key),
            )
            .await;
        match reply.status {
            StatusCode::OK => answered += 1,
            StatusCode::INTERNAL_SERVER_ERROR => failed.push(key),
            // A connection refused, or cut in the middle of the answer: nothing known either.
            StatusCode::BAD_GATEWAY => {
                broken += 1;
                failed.push(key);
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(
        answered > 0 && broken > 0 && failed.len() > broken,
        "hangs, errors and broken connections all drawn: {answered} answered, {broken} broken, {failed:?}"
    );
    provider.kill();

    // Without faults: a key whose 500 came after the intent committed replays that 500; one whose 500 came
    // before anything happened runs now. Either way one intent per key, never two.
    let provider = Provider::start(dir.path(), &[]);
    let (mut replayed, mut retried) = (0, 0);
    for key in &failed {
        let reply = provider
            .post(
                "/v1/payment_intents",
                Some(key),
                &intent_form(&method, "100", key),
            )
            .await;
        if reply.replayed {
            // A 500 stored after the change committed, or the 200 of a call whose answer was cut.
            assert!(
                [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::OK].contains(&reply.status),
                "{}",
                reply.status
            );
            replayed += 1;
        } else {
            reply.expect(200);
            retried += 1;
        }
    }
    assert!(replayed > 0 && retried > 0, "both kinds of 500 drawn");
    let list = provider
        .get("/v1/payment_intents?limit=100")
        .await
        .expect(200);
    let mut orders: Vec<String> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|intent| {
            intent["metadata"]["order_id"]
                .as_str()
                .expect("an order")
                .to_owned()
        })
        .collect();
    orders.sort();
    let mut expected: Vec<String> = (0..CALLS).map(|call| format!("key-{call}")).collect();
    expected.sort();
    assert_eq!(orders, expected);
}

/// The intents of `order` once the newest is captured (the node captures after answering).
async fn captured(provider: &Provider, order: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let intents = provider.intents_of(order).await;
        if intents
            .first()
            .is_some_and(|intent| intent["status"] == "succeeded")
        {
            return intents;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{order} never captured: {intents:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node started with `--payment` pointing at `provider`.
fn node_paying_with(provider: &Provider, extra: &[&str]) -> common::Server {
    let payment = provider.base.clone();
    let mut args = vec![
        "--payment",
        payment.as_str(),
        "--payment-timeout-ms",
        "5000",
    ];
    args.extend_from_slice(extra);
    common::Server::launch_with(
        tempfile::tempdir().expect("data dir"),
        "127.0.0.1:0",
        &args,
        &[("BOXOFFICE_PAYMENT_API_KEY", API_KEY)],
        Stdio::inherit(),
        "warn",
        &[],
    )
}

#[tokio::test]
async fn a_node_vaults_cards_and_charges_orders_at_the_network_provider() {
    let provider_dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(provider_dir.path(), &[]);
    let node = node_paying_with(&provider, &[]);
    let concert = node.create_general(100, 2, 2500).await;

    // The card goes to the provider's vault; the node shows its last four digits only.
    let (id, token) = node.register("alice", CARD).await;
    let profile = node
        .get(&format!("/users/{id}"), Some(&token))
        .await
        .expect(200);
    assert_eq!(profile["card"]["last4"], "4242");
    // A card the provider refuses is refused at registration.
    let refused = node
        .post(
            "/users",
            None,
            json!({"username": "bob", "password": "correct horse battery",
                   "card": {"type": "visa", "holder_name": "Bob", "number": "4000000000000127",
                            "exp_month": 12, "exp_year": 2030, "cvv": "123"}}),
        )
        .await;
    refused.expect_error(422, "card_refused");

    // An order is authorized once, at the provider, under its order id, and captured once its tickets exist.
    let order = node
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": concert, "quantity": 2}),
        )
        .await
        .expect(201);
    let order_id = order["id"].as_str().expect("an id");
    let intents = captured(&provider, order_id).await;
    assert_eq!(
        intents.len(),
        1,
        "{order_id}: {}",
        provider.get("/v1/payment_intents").await.body
    );
    assert_eq!(intents[0]["capture_method"], "manual", "{}", intents[0]);
    assert_eq!(intents[0]["amount_received"], 5000);

    // A declining card: the order is refused and its tickets go back.
    let (_, declining) = node.register("carol", DECLINING).await;
    node.post(
        "/orders",
        Some(&declining),
        json!({"concert_id": concert, "quantity": 1}),
    )
    .await
    .expect_error(402, "payment_declined");
    let (remaining, held, sold, capacity) = node.availability(&concert).await;
    assert_eq!((remaining, held, sold, capacity), (98, 0, 2, 100));

    // The provider gone: no card is stored and no order sold, and nothing is left held.
    let address = provider.base.trim_start_matches("http://").to_owned();
    provider.kill();
    let down = node
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await;
    assert_eq!(down.status.as_u16(), 503, "{}", down.body);
    assert_eq!(down.code(), "payment_unavailable");
    let register = node
        .post(
            "/users",
            None,
            json!({"username": "dave", "password": "correct horse battery",
                   "card": {"type": "visa", "holder_name": "Dave", "number": CARD,
                            "exp_month": 12, "exp_year": 2030, "cvv": "123"}}),
        )
        .await;
    assert_eq!(register.status.as_u16(), 503, "{}", register.body);
    // Failure after failure, the circuit breaker opens: orders are refused before anything is reserved, with how
    // long to wait.
    let order_one = json!({"concert_id": concert, "quantity": 1});
    let mut waits = Vec::new();
    for _ in 0..engine::payment::BREAKER_FAILURES_MAX + 2 {
        let reply = node.post("/orders", Some(&token), order_one.clone()).await;
        assert_eq!(
            (reply.status.as_u16(), reply.code()),
            (503, "payment_unavailable")
        );
        waits.push(reply.retry_after.clone().unwrap_or_default());
    }
    assert_eq!(waits.first().map(String::as_str), Some("1"));
    assert_eq!(waits.last().map(String::as_str), Some("5"), "{waits:?}");
    let (remaining, held, sold, _) = node.availability(&concert).await;
    assert_eq!((remaining, held, sold), (98, 0, 2));

    // Back on the same data: once the breaker lets an order try again, the vaulted card charges again.
    let provider = Provider::start_on(&address, provider_dir.path(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        let reply = node.post("/orders", Some(&token), order_one.clone()).await;
        if reply.status.as_u16() == 201 {
            break reply.body;
        }
        assert_eq!(reply.code(), "payment_unavailable");
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let intents = captured(&provider, again["id"].as_str().expect("an id")).await;
    assert_eq!(intents[0]["amount_received"], 2500);
    let (remaining, held, sold, _) = node.availability(&concert).await;
    assert_eq!((remaining, held, sold), (97, 0, 3));
    // Every call to the provider is timed by call and outcome.
    let metrics = node.metrics_text().await;
    for series in [
        r#"call="payment_method",outcome="ok""#,
        r#"call="payment_method",outcome="declined""#,
        r#"call="payment_intent",outcome="ok""#,
        r#"call="payment_intent",outcome="declined""#,
        r#"call="payment_intent",outcome="transport""#,
    ] {
        assert!(
            metrics.contains(&format!(
                "boxoffice_payment_provider_latency_seconds_count{{{series}}}"
            )),
            "{series}"
        );
    }
    assert!(metrics.contains("boxoffice_payment_provider_rate_limited_total 0"));
    node.stop();
}

#[tokio::test]
async fn a_free_order_needs_no_payment_and_an_amount_the_provider_refuses_is_declined() {
    let provider_dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(provider_dir.path(), &[]);
    let node = node_paying_with(&provider, &[]);
    let (_, token) = node.register("frugal", CARD).await;
    // A free concert: tickets at once, nothing asked of the provider.
    let free = node.create_general(10, 1, 0).await;
    let order = node
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": free, "quantity": 2}),
        )
        .await
        .expect(201);
    assert_eq!(order["amount_cents"], 0);
    assert_eq!(order["tickets"].as_array().map(Vec::len), Some(2));
    let order_id = order["id"].as_str().expect("an id");
    assert_eq!(provider.intents_of(order_id).await, Vec::<Value>::new());
    // 10 tickets at the highest price are beyond the provider's largest amount: refused at once as a decline,
    // not an outcome to wait for, and the tickets go back on sale.
    let dear = node
        .create_general(10, 1, engine::concert::PRICE_CENTS_MAX)
        .await;
    node.post(
        "/orders",
        Some(&token),
        json!({"concert_id": dear, "quantity": 10}),
    )
    .await
    .expect_error(402, "payment_declined");
    assert_eq!(node.availability(&dear).await, (10, 0, 0, 10));
    assert_eq!(node.availability(&free).await, (8, 0, 2, 10));
    let data_dir = node.stop();
    let report = common::inspect(data_dir.path());
    assert_eq!(report["violations"], json!([]), "{report}");
}

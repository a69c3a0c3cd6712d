//! The crash matrix of an order's payment against the payment provider process, faults injected there: the node
//! killed (a crash point aborts it, as `kill -9` would) between each pair of its payment steps (reserved →
//! authorized → tickets issued → captured), and separately the provider killed after committing an authorization
//! or a capture and before answering it, over several seeds. After each crash the process comes back on the same
//! data, every order is asked again under its `Idempotency-Key` until it is final, and then:
//!
//! - every captured payment has its tickets and every ticket its captured payment, each for its order's price;
//! - no authorization is left open, nothing is captured twice (one intent per order), nothing refunded;
//! - the sum captured equals the price of the tickets sold, and the counts add up with nothing held;
//! - `boxoffice inspect` finds no violation, and neither process's data dir nor log holds a card number or cvv.
//!
//! Crash points exist in debug builds only, which is what `cargo test` builds.

mod common;

use common::provider::{API_KEY, CARD, CVC, Provider};
use common::{Server, occurs};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

const PRICE_CENTS: u64 = 1_500;
const CAPACITY: u64 = 40;
const BUYERS: usize = 4;
const ORDERS: usize = 12;
const SEEDS: [u64; 3] = [1, 2, 3];
/// Longest wait for a crash point to be reached, or for every order to be final: a hang detector.
const WAIT_MAX: Duration = Duration::from_secs(90);
/// The provider's log level: info, as a deployment logs (debug prints every number it meets, among which a
/// four-digit cvv turns up by chance).
const QUIET: (&str, &str) = ("RUST_LOG", "info");

#[derive(Clone, Copy, Debug)]
enum Crash {
    Node(&'static str),
    Provider(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_after_the_reservation_before_the_authorization() {
    matrix(Crash::Node("payment.reserved")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_after_the_authorization_before_the_tickets() {
    matrix(Crash::Node("payment.authorized")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_after_the_tickets_before_the_capture() {
    matrix(Crash::Node("payment.tickets")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_after_the_capture_before_it_is_journaled() {
    matrix(Crash::Node("payment.captured")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_killed_after_an_authorization_before_answering() {
    matrix(Crash::Provider("provider.payment_intent")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_killed_after_a_capture_before_answering() {
    matrix(Crash::Provider("provider.capture")).await;
}

async fn matrix(crash: Crash) {
    for seed in SEEDS {
        run_case(seed, crash).await;
    }
}

/// Seeded faults of the provider: 500s before and after committing, hangs past the node's deadline.
fn faults(seed: u64) -> Vec<String> {
    [
        "--seed",
        &seed.to_string(),
        "--fault-rate",
        "0.15",
        "--latency-ms",
        "20",
        "--hang-ms",
        "2500",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn log_file(path: &std::path::Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file"),
    )
}

fn start_node(
    data_dir: tempfile::TempDir,
    provider: &Provider,
    crash_at: Option<&str>,
    log: &std::path::Path,
) -> Server {
    let mut env = vec![("BOXOFFICE_PAYMENT_API_KEY", API_KEY)];
    if let Some(point) = crash_at {
        env.push(("BOXOFFICE_CRASH_AT", point));
    }
    Server::launch_with(
        data_dir,
        "127.0.0.1:0",
        &["--payment", &provider.base, "--payment-timeout-ms", "1000"],
        &env,
        log_file(log),
        "info",
        &[],
    )
}

async fn run_case(seed: u64, crash: Crash) {
    let case = format!("{crash:?} seed {seed}");
    let logs = tempfile::tempdir().expect("tempdir");
    let (node_log, provider_log) = (
        logs.path().join("node.log"),
        logs.path().join("provider.log"),
    );
    let provider_dir = tempfile::tempdir().expect("tempdir");
    // Cards are stored before the faults begin: registering is not what this exercises.
    let provider = Provider::launch(
        "127.0.0.1:0",
        provider_dir.path(),
        &[],
        &[QUIET],
        log_file(&provider_log),
    );
    let address = provider.address();
    let nth = format!("{}", 1 + seed % 4);
    let node_crash = match crash {
        Crash::Node(point) => Some(format!("{point}:{nth}")),
        Crash::Provider(_) => None,
    };
    let node = start_node(
        common::private_dir(),
        &provider,
        node_crash.as_deref(),
        &node_log,
    );
    let concert = node.create_general(CAPACITY, 2, PRICE_CENTS).await;
    let mut buyers = Vec::new();
    for n in 0..BUYERS {
        let body = node
            .post(
                "/users",
                None,
                json!({"username": format!("crash{seed}-{n}"), "password": "correct horse battery",
                       "card": {"type": "visa", "holder_name": "Crash Buyer", "number": CARD,
                                "exp_month": 12, "exp_year": 2030, "cvv": CVC}}),
            )
            .await
            .expect(201);
        buyers.push(body["token"].as_str().expect("a token").to_owned());
    }
    provider.kill();
    let provider_env: Vec<(&str, String)> = match crash {
        Crash::Provider(point) => vec![("BOXOFFICE_CRASH_AT", format!("{point}:{nth}"))],
        Crash::Node(_) => Vec::new(),
    };
    let mut env: Vec<(&str, &str)> = provider_env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    env.push(QUIET);
    let flags = faults(seed);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut provider = Provider::launch(
        &address,
        provider_dir.path(),
        &flags,
        &env,
        log_file(&provider_log),
    );

    // The orders, all at once, each under a key of its own; some never get an answer from the crashed process.
    let orders: Vec<(String, String, Value)> = (0..ORDERS)
        .map(|n| {
            let token = buyers[n % BUYERS].clone();
            let quantity = 1 + (seed as usize + n) % 2;
            let body = json!({"concert_id": concert, "quantity": quantity});
            (format!("order-{seed}-{n}"), token, body)
        })
        .collect();
    let sent: Vec<_> = orders
        .iter()
        .cloned()
        .map(|(key, token, body)| {
            let (client, base) = (node.client.clone(), node.base.clone());
            tokio::spawn(async move {
                let _ = client
                    .post(format!("{base}/orders"))
                    .bearer_auth(token)
                    .header("idempotency-key", key)
                    .json(&body)
                    .send()
                    .await;
            })
        })
        .collect();

    // The crash, and the crashed process back on the same data.
    let node = match crash {
        Crash::Node(point) => {
            let data_dir = tokio::task::spawn_blocking(move || {
                node.wait_for_exit(
                    WAIT_MAX,
                    &format!(
                        "the node never reached {point} (crash points exist in debug builds only)"
                    ),
                )
            })
            .await
            .expect("waited");
            start_node(data_dir, &provider, None, &node_log)
        }
        Crash::Provider(point) => {
            let crashed = tokio::task::spawn_blocking(move || {
                let crashed = provider.wait_for_exit(WAIT_MAX);
                (provider, crashed)
            })
            .await
            .expect("waited");
            assert!(crashed.1, "{case}: the provider never reached {point}");
            drop(crashed.0);
            provider = Provider::launch(
                &address,
                provider_dir.path(),
                &flags,
                &[QUIET],
                log_file(&provider_log),
            );
            node
        }
    };
    for request in sent {
        let _ = request.await;
    }

    // Every order asked again under its key until it is final.
    let started = Instant::now();
    let mut confirmed: BTreeMap<String, Value> = BTreeMap::new();
    let mut open: Vec<&(String, String, Value)> = orders.iter().collect();
    while !open.is_empty() {
        let mut still = Vec::new();
        for order in open {
            let (key, token, body) = order;
            let reply = node
                .send(
                    reqwest::Method::POST,
                    "/orders",
                    Some(token),
                    Some(body.clone()),
                    &[("idempotency-key", key.as_str())],
                )
                .await;
            match reply.status.as_u16() {
                201 => {
                    let id = reply.body["id"].as_str().expect("an id").to_owned();
                    confirmed.insert(id, reply.body);
                }
                // Pending (its payment being resolved), or refused for now (an open breaker, a provider away).
                202 | 503 => still.push(order),
                status => panic!("{case}: {key} answered {status} {}", reply.body),
            }
        }
        open = still;
        if !open.is_empty() {
            assert!(
                started.elapsed() < WAIT_MAX,
                "{case}: orders never final: {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Captures and resolutions done.
    loop {
        let metrics = node.metrics_text().await;
        let idle = metrics.contains("boxoffice_payment_captures_pending 0")
            && metrics
                .lines()
                .filter(|line| line.starts_with("boxoffice_payments_unresolved{"))
                .all(|line| line.ends_with(" 0"));
        if idle {
            break;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "{case}: payments never settled: {}",
            metrics
                .lines()
                .filter(|line| line.contains("captures_pending") || line.contains("unresolved"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node's counts and the provider's payments agree.
    let (remaining, held, sold, capacity) = node.availability(&concert).await;
    assert_eq!(
        (held, remaining + sold, capacity),
        (0, CAPACITY, CAPACITY),
        "{case}"
    );
    let tickets: u64 = confirmed
        .values()
        .map(|order| order["tickets"].as_array().expect("tickets").len() as u64)
        .sum();
    assert_eq!(
        tickets, sold,
        "{case}: tickets of the confirmed orders against the count sold"
    );
    let mut per_order: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for intent in provider.all_intents().await {
        let order = intent["metadata"]["order_id"]
            .as_str()
            .expect("an order id")
            .to_owned();
        per_order.entry(order).or_default().push(intent);
    }
    let mut captured_cents = 0;
    for (order, intents) in &per_order {
        assert_eq!(
            intents.len(),
            1,
            "{case}: {order} has more than one payment: {intents:?}"
        );
        let intent = &intents[0];
        assert_ne!(
            intent["status"], "requires_capture",
            "{case}: {order}'s authorization left open"
        );
        assert_eq!(
            intent["amount_refunded"].as_u64().unwrap_or(0),
            0,
            "{case}: {order} refunded"
        );
        if intent["status"] == "succeeded" {
            let order_body = confirmed
                .get(order)
                .unwrap_or_else(|| panic!("{case}: {order} captured without tickets"));
            assert_eq!(
                intent["amount_received"], order_body["amount_cents"],
                "{case}: {order}"
            );
            assert_eq!(
                intent["amount"], intent["amount_received"],
                "{case}: {order}"
            );
            captured_cents += intent["amount_received"].as_u64().expect("an amount");
        }
    }
    for id in confirmed.keys() {
        let status = per_order
            .get(id)
            .map(|intents| intents[0]["status"].clone());
        assert_eq!(
            status,
            Some(json!("succeeded")),
            "{case}: {id} has tickets and no captured payment"
        );
    }
    assert_eq!(
        captured_cents,
        PRICE_CENTS * sold,
        "{case}: captured against the price of the tickets sold"
    );
    let confirmed_ids: BTreeSet<&String> = confirmed.keys().collect();
    assert_eq!(confirmed_ids.len(), confirmed.len());

    let node_dir = node.stop();
    let report = common::inspect(node_dir.path());
    assert_eq!(report["violations"], json!([]), "{case}: {report}");
    drop(provider);
    // No card number or cvv in either process's data dir or log.
    let mut haystacks = common::files(node_dir.path());
    haystacks.extend(common::files(provider_dir.path()));
    haystacks.extend(common::files(logs.path()));
    assert!(
        haystacks.iter().any(|(path, _)| path.ends_with("node.log")),
        "{case}: the node logged"
    );
    for (path, bytes) in &haystacks {
        for secret in [CARD, CVC] {
            assert!(
                !occurs(bytes, secret, secret),
                "{case}: {} holds {secret}",
                path.display()
            );
        }
    }
}

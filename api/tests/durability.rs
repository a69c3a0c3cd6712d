//! Durability end to end: the real binary killed with SIGKILL in the middle of a sale, or stopped with SIGTERM,
//! restarted on the same data dir, and checked against everything its clients were told before it died.

mod common;

use common::inspect;
use common::{ADMIN_TOKEN, DECLINED_CARD, GOOD_CARD, Server};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Buyers racing during a kill test, and requests each sends before the kill stops them.
const BUYERS: usize = 48;
const REQUESTS_PER_BUYER_MAX: usize = 400;
const GENERAL_CAPACITY: u64 = 3_000;
const HOLD_TTL_S: u64 = 2;
/// Small, so that snapshots and journal truncation happen in the middle of the sale.
const SNAPSHOT_EVERY_EVENTS: &str = "150";

/// A deterministic generator, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A seat of the 10 × 20 section `A`.
    fn seat(&mut self) -> String {
        format!("A-{}-{}", 1 + self.below(10), 1 + self.below(20))
    }
}

/// What one request got: a status and body, or nothing because the server died first.
async fn attempt(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let mut request = server
        .client
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

#[derive(Clone)]
struct Buyer {
    id: String,
    token: String,
}

/// What the clients were told before the kill.
#[derive(Default)]
struct Told {
    /// Every order answered 201, by id, as the client saw it.
    confirmed: BTreeMap<String, Value>,
    /// Requests that got no answer, with the idempotency key, path, body and buyer to retry them with.
    unanswered: Vec<(usize, String, String, Value)>,
}

/// One buyer's loop: orders (some by seat), holds that are purchased, cancelled or left to expire.
async fn buy(
    server: Arc<Server>,
    buyers: Arc<Vec<Buyer>>,
    me: usize,
    general: String,
    seated: String,
    seed: u64,
    told: Arc<Mutex<Told>>,
) {
    use reqwest::Method;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let token = buyers[me].token.clone();
    for request in 0..REQUESTS_PER_BUYER_MAX {
        let key = format!("k-{seed}-{me}-{request}");
        let (path, body) = match rng.below(10) {
            0..=4 => (
                "/orders".to_owned(),
                json!({"concert_id": general, "quantity": 1 + rng.below(3)}),
            ),
            5 | 6 => (
                "/orders".to_owned(),
                json!({"concert_id": seated, "seats": [rng.seat()]}),
            ),
            _ => {
                let concert = if rng.below(2) == 0 { &general } else { &seated };
                let body = if concert == &seated {
                    json!({"concert_id": seated, "seats": [rng.seat()]})
                } else {
                    json!({"concert_id": general, "quantity": 1 + rng.below(2)})
                };
                let Some((status, hold)) =
                    attempt(&server, Method::POST, "/holds", &token, Some(body), None).await
                else {
                    return;
                };
                if status != 201 {
                    continue;
                }
                let hold_id = hold["id"].as_str().expect("hold id").to_owned();
                match rng.below(3) {
                    0 => {
                        let path = format!("/holds/{hold_id}");
                        let cancel =
                            attempt(&server, Method::DELETE, &path, &token, None, None).await;
                        if cancel.is_none() {
                            return;
                        }
                        continue;
                    }
                    1 => continue, // left to expire
                    _ => (format!("/holds/{hold_id}/purchase"), json!({})),
                }
            }
        };
        match attempt(
            &server,
            Method::POST,
            &path,
            &token,
            Some(body.clone()),
            Some(&key),
        )
        .await
        {
            Some((201, order)) => {
                let id = order["id"].as_str().expect("order id").to_owned();
                told.lock().expect("told").confirmed.insert(id, order);
            }
            Some(_) => {}
            None => {
                told.lock()
                    .expect("told")
                    .unanswered
                    .push((me, key, path, body));
                return;
            }
        }
    }
}

fn tickets_of(order: &Value) -> BTreeSet<(String, String)> {
    order["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .map(|ticket| {
            (
                ticket["id"].as_str().expect("ticket id").to_owned(),
                ticket["token"].as_str().expect("token").to_owned(),
            )
        })
        .collect()
}

/// Waits until no ticket of the concert is held, which after a restart takes one hold TTL at most.
async fn wait_until_nothing_held(server: &Server, concert_id: &str) -> (u64, u64, u64, u64) {
    for _ in 0..200 {
        let counts = server.availability(concert_id).await;
        if counts.1 == 0 {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("holds did not expire after the restart");
}

/// Every seat the seat map shows as sold, and how many.
async fn sold_seats(server: &Server, concert_id: &str) -> usize {
    let seats = server
        .get(&format!("/concerts/{concert_id}/seats"), None)
        .await
        .expect(200);
    seats["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .filter(|seat| seat["status"] == "sold")
        .count()
}

fn serve_flags() -> Vec<String> {
    [
        // A few buyers buy the whole concert: far beyond the default per-user limit, which limits.rs tests.
        "--max-tickets-per-user",
        "1000000",
        "--hold-ttl-s",
        &HOLD_TTL_S.to_string(),
        "--payment-latency-ms",
        "15",
        "--snapshot-every-events",
        SNAPSHOT_EVERY_EVENTS,
    ]
    .iter()
    .map(|flag| flag.to_string())
    .collect()
}

async fn kill_mid_sale(seed: u64, tear_the_journal: bool) {
    let flags = serve_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&flags);
    let mut buyers = Vec::new();
    for (number, (id, token)) in server
        .register_many(&format!("s{seed}b"), BUYERS, GOOD_CARD)
        .await
        .into_iter()
        .enumerate()
    {
        // Every sixth buyer's card is declined: declines interleave with sales.
        let token = if number % 6 == 5 {
            let update = json!({"card": {"type": "visa", "holder_name": "D", "number": DECLINED_CARD,
                                          "exp_month": 12, "exp_year": 2030, "cvv": "123"}});
            server
                .send(
                    reqwest::Method::PUT,
                    &format!("/users/{id}"),
                    Some(&token),
                    Some(update),
                    &[],
                )
                .await
                .expect(200);
            token
        } else {
            token
        };
        buyers.push(Buyer { id, token });
    }
    let general = server.create_general(GENERAL_CAPACITY, 4, 1500).await;
    let seated = server.create_seated(&["A"], 10, 20, 2).await;
    let server = Arc::new(server);
    let buyers = Arc::new(buyers);
    let told = Arc::new(Mutex::new(Told::default()));
    let tasks: Vec<_> = (0..BUYERS)
        .map(|me| {
            tokio::spawn(buy(
                server.clone(),
                buyers.clone(),
                me,
                general.clone(),
                seated.clone(),
                seed,
                told.clone(),
            ))
        })
        .collect();
    let mut rng = Rng(seed | 1);
    tokio::time::sleep(Duration::from_millis(400 + rng.below(1200))).await;
    server.sigkill();
    for task in tasks {
        task.await.expect("buyer task");
    }
    let server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("one owner"));
    let data_dir = server.kill();
    let told = Arc::try_unwrap(told)
        .ok()
        .expect("one owner")
        .into_inner()
        .expect("told");
    assert!(
        !told.confirmed.is_empty(),
        "seed {seed}: the sale was under way at the kill"
    );
    eprintln!(
        "seed {seed}: killed with {} orders confirmed and {} requests unanswered",
        told.confirmed.len(),
        told.unanswered.len()
    );

    if tear_the_journal {
        tear_newest_segment(&data_dir.path().join("journal"));
    }
    let server = Server::start_in(data_dir, &flags);

    // Every order that got a 201 is confirmed, with the same tickets.
    for (order_id, order) in &told.confirmed {
        let owner = buyers
            .iter()
            .find(|buyer| buyer.id == order["user_id"])
            .expect("an order's owner is a buyer");
        let fetched = server
            .get(&format!("/orders/{order_id}"), Some(&owner.token))
            .await
            .expect(200);
        assert_eq!(fetched["status"], "confirmed", "seed {seed}: {fetched}");
        assert_eq!(
            tickets_of(&fetched),
            tickets_of(order),
            "seed {seed}: {order_id}"
        );
    }
    // A retry of an unanswered request with its key finds the outcome, or orders once.
    for (buyer, key, path, body) in &told.unanswered {
        let token = &buyers[*buyer].token;
        let first = attempt(
            &server,
            reqwest::Method::POST,
            path,
            token,
            Some(body.clone()),
            Some(key),
        )
        .await
        .expect("the restarted server answers");
        let again = attempt(
            &server,
            reqwest::Method::POST,
            path,
            token,
            Some(body.clone()),
            Some(key),
        )
        .await
        .expect("the restarted server answers");
        assert_eq!(first, again, "seed {seed}: a key answers the same twice");
        assert!(
            [201, 402, 404, 409, 410, 503].contains(&first.0),
            "seed {seed}: {first:?}"
        );
    }
    // No seat sold twice, the counts add up, and the holds the kill left behind expire.
    let (_, _, seated_sold, _) = wait_until_nothing_held(&server, &seated).await;
    assert_eq!(sold_seats(&server, &seated).await as u64, seated_sold);
    let (remaining, held, sold, capacity) = wait_until_nothing_held(&server, &general).await;
    assert_eq!((held, capacity), (0, GENERAL_CAPACITY));
    let tokens: Vec<_> = told.confirmed.values().flat_map(tickets_of).collect();
    let unique: BTreeSet<_> = tokens.iter().collect();
    assert_eq!(tokens.len(), unique.len(), "seed {seed}: no ticket repeats");

    // Sell out what is left: exactly the capacity is sold, not one more.
    let mut left = remaining;
    let mut buyer = 0;
    while left > 0 {
        let quantity = left.min(10);
        let reply = server
            .post(
                "/orders",
                Some(&buyers[buyer % 5].token),
                json!({"concert_id": general, "quantity": quantity}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 201, "seed {seed}: {}", reply.body);
        left -= quantity;
        buyer += 1;
    }
    server
        .post(
            "/orders",
            Some(&buyers[0].token),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await
        .expect_error(409, "sold_out");
    assert_eq!(
        server.availability(&general).await,
        (0, 0, sold + remaining, GENERAL_CAPACITY)
    );

    // Offline, the data dir agrees: invariants hold and no charge lacks its tickets.
    let data_dir = server.stop();
    let report = inspect(data_dir.path());
    let general_report = report["concerts"]
        .as_array()
        .expect("concerts")
        .iter()
        .find(|concert| concert["id"] == general.as_str())
        .expect("the concert survives");
    assert_eq!(general_report["sold"], GENERAL_CAPACITY);
}

/// Appends half a record to the newest journal segment, as a crash in the middle of a write would leave it.
fn tear_newest_segment(journal: &std::path::Path) {
    use std::io::Write;
    let newest = std::fs::read_dir(journal)
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .max()
        .expect("a segment");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .expect("open segment");
    // A length that promises more bytes than follow, then a few of them.
    file.write_all(&200u32.to_le_bytes()).expect("write");
    file.write_all(&[0xAB; 37]).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sale_loses_no_acknowledged_ticket() {
    for seed in [11, 29, 47] {
        kill_mid_sale(seed, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_cut_and_the_node_starts() {
    kill_mid_sale(83, true).await;
}

/// What `GET` answers for each of `paths` (with its token).
async fn look(server: &Server, paths: &[(String, Option<String>)]) -> Vec<Value> {
    let mut seen = Vec::new();
    for (path, token) in paths {
        seen.push(server.get(path, token.as_deref()).await.expect(200));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_restart_gives_the_same_state_and_logins() {
    let server = Server::start(&[]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("bob", GOOD_CARD).await;
    let general = server.create_general(100, 2, 1000).await;
    let seated = server.create_seated(&["A", "B"], 2, 5, 2).await;
    let order = server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": general, "quantity": 3}),
        )
        .await
        .expect(201);
    server
        .post(
            "/orders",
            Some(&bob),
            json!({"concert_id": seated, "seats": ["A-1-1", "B-2-5"]}),
        )
        .await
        .expect(201);
    let hold = server
        .post(
            "/holds",
            Some(&bob),
            json!({"concert_id": seated, "seats": ["A-2-2"]}),
        )
        .await
        .expect(201);
    let token = order["tickets"][0]["token"].as_str().expect("token");
    server
        .post(
            "/tickets/verify",
            Some(ADMIN_TOKEN),
            json!({"token": token}),
        )
        .await
        .expect(200);

    let paths = [
        (format!("/concerts/{general}"), None),
        (format!("/concerts/{seated}"), None),
        (format!("/concerts/{seated}/seats"), None),
        (format!("/users/{alice_id}/tickets"), Some(alice.clone())),
        (format!("/users/{bob_id}/tickets"), Some(bob.clone())),
        (format!("/users/{alice_id}"), Some(alice.clone())),
        ("/concerts".to_owned(), None),
        (
            "/users?offset=0&limit=10".to_owned(),
            Some(ADMIN_TOKEN.to_owned()),
        ),
    ];
    let before = look(&server, &paths).await;
    let data_dir = server.stop();
    let server = Server::start_in(data_dir, &[]);
    assert_eq!(
        look(&server, &paths).await,
        before,
        "the same state after a restart"
    );

    // Passwords still log in, old tokens still work, the hold still stands and can be bought.
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "correct horse battery"}),
        )
        .await
        .expect(200);
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "wrong horse battery"}),
        )
        .await
        .expect_error(401, "invalid_credentials");
    let hold_id = hold["id"].as_str().expect("hold id");
    let bought = server
        .post(&format!("/holds/{hold_id}/purchase"), Some(&bob), json!({}))
        .await
        .expect(201);
    assert_eq!(bought["tickets"][0]["seat"], "A-2-2");
    server
        .post(
            "/tickets/verify",
            Some(ADMIN_TOKEN),
            json!({"token": token}),
        )
        .await
        .expect_error(409, "already_checked_in");
    let data_dir = server.stop();
    let report = inspect(data_dir.path());
    assert_eq!(report["users"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_snapshot_truncates_the_journal_and_recovery_uses_it() {
    let server = Server::start(&["--max-tickets-per-user", "40"]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let general = server.create_general(500, 2, 1000).await;
    for _ in 0..20 {
        server
            .post(
                "/orders",
                Some(&alice),
                json!({"concert_id": general, "quantity": 2}),
            )
            .await
            .expect(201);
    }
    server
        .post("/admin/snapshot", Some(&alice), json!({}))
        .await
        .expect_error(403, "forbidden");
    let written = server
        .post("/admin/snapshot", Some(ADMIN_TOKEN), json!({}))
        .await
        .expect(200);
    assert_eq!(written["concerts"], 1);
    assert_eq!(written["shards"], 2);
    let data_dir = server.kill();
    let report = inspect(data_dir.path());
    let shards = report["concerts"][0]["shards"].as_array().expect("shards");
    assert!(
        shards
            .iter()
            .all(|shard| shard["snapshot_position"].as_u64() == shard["events"].as_u64()),
        "every shard starts from its snapshot, with nothing to replay: {report}"
    );
    assert_eq!(report["concerts"][0]["sold"], 40);
    let server = Server::start_in(data_dir, &[]);
    assert_eq!(server.availability(&general).await, (460, 0, 40, 500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_fails_on_a_charge_without_tickets() {
    let server = Server::start(&[]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let general = server.create_general(10, 1, 1000).await;
    server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await
        .expect(201);
    let data_dir = server.stop();
    // The simulator's ledger learns of a charge that no order of the node made.
    {
        let (storage, _) = persistence::storage::Storage::open(
            data_dir.path(),
            persistence::storage::StorageOptions::default(),
        )
        .expect("storage");
        let charge = engine::payment::SimulatedCharge {
            amount_cents: 1000,
            state: engine::payment::SimulatedChargeState::Approved,
        };
        storage
            .append_ledger("o_ghost", &charge)
            .wait()
            .await
            .expect("durable");
        storage.close();
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["inspect", "--json", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run inspect");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a broken invariant is exit code 1"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(
        report["violations"],
        json!(["order o_ghost was charged but has no tickets"])
    );
    assert_eq!(report["ledger"]["approved"], 2);
}

#[tokio::test]
async fn offline_tools_refuse_a_running_nodes_data_dir_saying_why() {
    let server = Server::start(&[]);
    for tool in ["inspect", "snapshot"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
            .args([tool, "--data-dir"])
            .arg(server.data_dir())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the tool");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{tool} on a running node's data dir"
        );
        assert!(
            stderr.contains("is in use by a running node")
                && stderr.contains("stop that node first"),
            "{tool}: {stderr}"
        );
    }
    // The node is untouched and still sells.
    server.get("/health", None).await.expect(200);
    server.stop();
}

#[tokio::test]
async fn a_backup_of_a_running_node_restores_to_the_state_it_had() {
    let server = Server::start(&[]);
    let concert = server.create_general(1_000, 4, 1_000).await;
    let seated = server.create_seated(&["A"], 4, 10, 2).await;
    let buyers = server.register_many("backup", 4, GOOD_CARD).await;
    let order = |token: &str, body: Value| {
        let (server, token) = (&server, token.to_owned());
        async move { server.post("/orders", Some(&token), body).await }
    };
    // Before the backup: these must all be in it.
    let mut before = Vec::new();
    for (_, token) in &buyers {
        let placed = order(token, json!({"concert_id": concert, "quantity": 2}))
            .await
            .expect(201);
        before.push(placed["id"].as_str().expect("an id").to_owned());
    }
    let seats = order(
        &buyers[0].1,
        json!({"concert_id": seated, "seats": ["A-1-1", "A-1-2"]}),
    )
    .await
    .expect(201);
    before.push(seats["id"].as_str().expect("an id").to_owned());
    let (_, token) = &buyers[1];
    server
        .hold(token, json!({"concert_id": seated, "seats": ["A-2-1"]}))
        .await;

    // The backup, taken while orders keep coming.
    let backups = tempfile::tempdir().expect("tempdir");
    let backup = backups.path().join("backup");
    let selling = {
        let (base, token, concert) = (server.base.clone(), buyers[2].1.clone(), concert.clone());
        let client = server.client.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let _ = client
                    .post(format!("{base}/orders"))
                    .bearer_auth(&token)
                    .json(&json!({"concert_id": concert, "quantity": 1}))
                    .send()
                    .await;
            }
        })
    };
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["backup", "--url", &server.base, "--dir"])
        .arg(&backup)
        .env("BOXOFFICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .expect("boxoffice backup runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("the answer");
    assert!(
        answer["bytes"].as_u64().is_some_and(|bytes| bytes > 0),
        "{answer}"
    );
    selling.await.expect("the orders ran");
    // After the backup: never in it.
    let after = order(&buyers[3].1, json!({"concert_id": concert, "quantity": 3}))
        .await
        .expect(201);
    let after = after["id"].as_str().expect("an id").to_owned();
    // A second backup into the same directory is refused.
    let again = server
        .post(
            "/admin/backup",
            Some(ADMIN_TOKEN),
            json!({"dir": backup.to_str().expect("UTF-8")}),
        )
        .await;
    again.expect_error(422, "invalid_request");
    // Nor inside the data dir; and the copy was renamed into place when whole.
    let inside = server.data_dir().join("backup");
    server
        .post(
            "/admin/backup",
            Some(ADMIN_TOKEN),
            json!({"dir": inside.to_str().expect("UTF-8")}),
        )
        .await
        .expect_error(422, "invalid_request");
    assert!(!backups.path().join("backup.partial").exists());
    // No secret in it; and it checks clean offline.
    assert!(!backup.join("master.key").exists() && !backup.join("admin-token").exists());
    inspect(&backup);

    // Restore: a new data dir from the backup, with the node's master key (kept apart), on a new node.
    let master_key = std::fs::read(server.data_dir().join("master.key")).expect("the key");
    let live = server.stop();
    let restored = tempfile::tempdir().expect("tempdir");
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", backup.display()))
        .arg(restored.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    std::fs::write(restored.path().join("master.key"), master_key).expect("the key");
    let server = Server::start_in(restored, &[]);
    for id in &before {
        let read = server
            .get(&format!("/orders/{id}"), Some(ADMIN_TOKEN))
            .await
            .expect(200);
        assert_eq!(read["status"], "confirmed", "{read}");
    }
    server
        .get(&format!("/orders/{after}"), Some(ADMIN_TOKEN))
        .await
        .expect_error(404, "order_not_found");
    let (remaining, held, sold, capacity) = server.availability(&concert).await;
    assert_eq!(remaining + held + sold, capacity);
    assert!(
        (8..8 + 20).contains(&sold),
        "sold {sold}: the 8 before, some of the 20 during"
    );
    let (_, _, seats_sold, _) = server.availability(&seated).await;
    assert_eq!(seats_sold, 2);
    // The buyers' tokens and cards came along: one buys on the restored node.
    server
        .post(
            "/orders",
            Some(&buyers[0].1),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);
    drop(live);
    server.stop();
}

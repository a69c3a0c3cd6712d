//! Shard nodes killed with SIGKILL in the middle of a cluster's sale: requests that need a dead node answer 503
//! (never 500, never a hang), everything else keeps selling, the node restarts from its own journal, and every
//! order that straddles nodes ends confirmed or released, wherever the kill cut it.

mod common;

use common::cluster::{Cluster, placement, seats_by_node};
use common::{ADMIN_TOKEN, GOOD_CARD, Reply, Server};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Flags of every process: a provider slow enough to kill a node while it charges, deadlines short enough that a
/// request waiting for a dead node ends within the test.
const FLAGS: [&str; 8] = [
    "--payment-latency-ms",
    "1000",
    "--payment-timeout-ms",
    "5000",
    "--request-timeout-s",
    "30",
    "--max-tickets-per-user",
    "100000",
];

/// Creates `count` users with a good card through `server`: `(id, token)`, grouped by the node they live on.
async fn buyers(
    server: &Server,
    prefix: &str,
    count: usize,
) -> BTreeMap<u64, Vec<(String, String)>> {
    let created = server
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            json!({"prefix": prefix, "count": count,
                   "card": {"type": "visa", "holder_name": "Buyer", "number": GOOD_CARD,
                            "exp_month": 12, "exp_year": 2030, "cvv": "123"}}),
        )
        .await
        .expect(201);
    let mut by_node: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for user in created["users"].as_array().expect("users") {
        let id = user["id"].as_str().expect("id").to_owned();
        let node = id
            .trim_start_matches("u_")
            .split_once('-')
            .and_then(|(node, _)| node.parse().ok())
            .expect("a cluster user id names its node");
        by_node
            .entry(node)
            .or_default()
            .push((id, user["token"].as_str().expect("token").to_owned()));
    }
    by_node
}

/// Polls until `check` passes, for up to a minute (a hang detector, not a timing assertion).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sold and the held seats of `concert`, from one read of its map; `None` while a node that owns some does
/// not answer.
async fn sold_and_held(
    server: &Server,
    concert: &str,
) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let map = server
        .get(&format!("/concerts/{concert}/seats"), None)
        .await;
    if is_unavailable(&map) {
        return None;
    }
    let map = map.expect(200);
    let with = |status: &str| {
        map["seats"]
            .as_array()
            .expect("seats")
            .iter()
            .filter(|seat| seat["status"] == status)
            .map(|seat| seat["id"].as_str().expect("id").to_owned())
            .collect()
    };
    Some((with("sold"), with("held")))
}

fn is_unavailable(reply: &Reply) -> bool {
    reply.status.as_u16() == 503 && reply.retry_after.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_sale_costs_only_what_needs_it_and_loses_nothing() {
    let mut cluster = Cluster::start(3, 1, &FLAGS[2..]);
    cluster.wait_connected().await;
    let general = cluster.fronts[0].create_general(1_000_000, 6, 1_000).await;
    let by_node = buyers(&cluster.fronts[0], "sale", 60).await;
    assert_eq!(by_node.len(), 3, "buyers on every node");

    // Everyone buys, one ticket at a time, through the front and through node 0, while node 1 is killed.
    let victim: usize = 1;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sale = {
        let users: Vec<(u64, String, String)> = by_node
            .iter()
            .flat_map(|(node, users)| {
                users
                    .iter()
                    .map(|(id, token)| (*node, id.clone(), token.clone()))
            })
            .collect();
        let front_base = cluster.fronts[0].base.clone();
        let node0_base = cluster.node(0).base.clone();
        let client = cluster.fronts[0].client.clone();
        let general = general.clone();
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let buyers = users
                .into_iter()
                .enumerate()
                .map(|(index, (home, id, token))| {
                    let base = if index % 2 == 0 {
                        front_base.clone()
                    } else {
                        node0_base.clone()
                    };
                    let (client, general, acknowledged, stop) = (
                        client.clone(),
                        general.clone(),
                        acknowledged.clone(),
                        stop.clone(),
                    );
                    async move {
                        let mut statuses = Vec::new();
                        while !stop.load(std::sync::atomic::Ordering::Acquire) {
                            let response = client
                                .post(format!("{base}/orders"))
                                .bearer_auth(&token)
                                .json(&json!({"concert_id": general, "quantity": 1}))
                                .send()
                                .await
                                .expect("every request ends with an answer, never a hang");
                            let status = response.status().as_u16();
                            let body: Value = response.json().await.expect("a JSON body");
                            assert_ne!(status, 500, "{body}");
                            match status {
                                201 => acknowledged
                                    .lock()
                                    .expect("lock")
                                    .push((token.clone(), body)),
                                503 => {
                                    assert!(
                                        [
                                            "node_unavailable",
                                            "recovering",
                                            "payment_unavailable",
                                            "overloaded"
                                        ]
                                        .contains(&body["error"]["code"].as_str().unwrap_or("")),
                                        "{body}"
                                    );
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                other => panic!("user {id} got {other}: {body}"),
                            }
                            statuses.push((status, home));
                        }
                        statuses
                    }
                });
            join_all(buyers).await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill(victim);
    let killed_at = acknowledged.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // While it is down: its users and the concert's totals answer 503 node_unavailable, and the others buy on.
    let (_, token) = &by_node[&(victim as u64)][0];
    let reply = cluster
        .node(0)
        .post(
            "/orders",
            Some(token),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await;
    assert!(is_unavailable(&reply), "{}", reply.body);
    assert_eq!(reply.code(), "node_unavailable");
    let reply = cluster.fronts[0]
        .get(&format!("/concerts/{general}"), None)
        .await;
    assert!(
        is_unavailable(&reply) && reply.code() == "node_unavailable",
        "{}",
        reply.body
    );
    let during = acknowledged.lock().expect("lock").len();
    assert!(
        during > killed_at,
        "the other nodes' buyers kept buying: {killed_at} then {during}"
    );

    cluster.restart(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let statuses = sale.await.expect("the sale ends");
    let served_elsewhere = statuses
        .iter()
        .flatten()
        .filter(|(status, home)| *status == 201 && *home != victim as u64)
        .count();
    assert!(served_elsewhere > 0);

    // Every acknowledged order is there, read through another process than the one that took it.
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let reader = cluster.node(2);
    for (token, order) in &acknowledged {
        let path = format!("/orders/{}", order["id"].as_str().expect("id"));
        let mut read = reader.get(&path, Some(token)).await;
        // The restarted node reads its users' orders back from every node before it answers for them.
        for _ in 0..600 {
            if read.status.as_u16() != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            read = reader.get(&path, Some(token)).await;
        }
        let read = read.expect(200);
        assert_eq!(
            read["status"], "confirmed",
            "{read} acknowledged as {order}"
        );
        assert_eq!(
            read["tickets"], order["tickets"],
            "an acknowledged ticket is kept as it was"
        );
    }
    let sold_acknowledged = acknowledged.len() as u64;
    eventually(
        "the restarted node settles what it was charging",
        || async {
            let (_, held, _, _) = cluster.fronts[0].availability(&general).await;
            held == 0
        },
    )
    .await;
    for server in cluster.entry_points() {
        let (remaining, held, sold, capacity) = server.availability(&general).await;
        assert_eq!(held, 0);
        assert!(
            sold >= sold_acknowledged,
            "{sold} sold, {sold_acknowledged} acknowledged"
        );
        assert_eq!(remaining + sold, capacity);
    }
}

/// One order of two seats owned by two different nodes: the buyer lives on `home`, the other seat's node is
/// `other`.
struct Straddle {
    concert: String,
    home: usize,
    other: usize,
    token: String,
    user: String,
    seats: [String; 2],
}

async fn straddle(cluster: &Cluster, prefix: &str, round: usize) -> Straddle {
    // A node restarted by the step before may not be up in every entry point's eyes yet.
    cluster.wait_connected().await;
    let front = &cluster.fronts[0];
    let concert = front.create_seated(&["A", "B"], 2, 6, 3).await;
    let owners = seats_by_node(&placement(front, &concert).await, 2, 6);
    let by_node = buyers(front, prefix, 12).await;
    let (&home, users) = by_node.iter().next().expect("a buyer");
    let (user, token) = users[0].clone();
    let other = *owners
        .keys()
        .find(|node| **node != home)
        .expect("another node owns seats");
    Straddle {
        concert,
        home: home as usize,
        other: other as usize,
        token,
        user,
        seats: [owners[&home][round].clone(), owners[&other][round].clone()],
    }
}

impl Straddle {
    fn order(&self, server: &Server) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let request = server
            .client
            .post(format!("{}/orders", server.base))
            .bearer_auth(&self.token)
            .header("idempotency-key", format!("straddle-{}", self.concert))
            .json(&json!({"concert_id": self.concert, "seats": self.seats}));
        async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    Reply {
                        status,
                        body: response.json().await.unwrap_or(Value::Null),
                        retry_after,
                    }
                }
                // The node answering was killed: the client saw the connection break.
                Err(_) => Reply {
                    status: reqwest::StatusCode::BAD_GATEWAY,
                    body: Value::Null,
                    retry_after: None,
                },
            }
        }
    }

    /// Both seats are sold to the buyer, or both are free: never one of each, never held.
    async fn settled(&self, cluster: &Cluster) -> bool {
        let server = &cluster.fronts[0];
        let Some((sold, held)) = sold_and_held(server, &self.concert).await else {
            return false;
        };
        if !held.is_empty() {
            return false;
        }
        let ours: BTreeSet<String> = self.seats.iter().cloned().collect();
        let sold_ours: BTreeSet<String> = sold.intersection(&ours).cloned().collect();
        assert!(
            sold_ours.is_empty() || sold_ours == ours,
            "all or nothing: {sold_ours:?}"
        );
        let tickets = server
            .get(&format!("/users/{}/tickets", self.user), Some(&self.token))
            .await;
        if tickets.status.as_u16() == 503 {
            return false;
        }
        let tickets = tickets.expect(200)["tickets"]
            .as_array()
            .expect("tickets")
            .len();
        assert_eq!(
            tickets,
            sold_ours.len(),
            "tickets exactly for the seats sold"
        );
        let counts = server
            .get(&format!("/concerts/{}", self.concert), None)
            .await;
        if is_unavailable(&counts) {
            return false;
        }
        let counts = counts.expect(200);
        assert_eq!(
            (counts["held"].as_u64(), counts["sold"].as_u64()),
            (Some(0), Some(sold_ours.len() as u64))
        );
        true
    }

    async fn sold(&self, cluster: &Cluster) -> bool {
        loop {
            if let Some((sold, _)) = sold_and_held(&cluster.fronts[0], &self.concert).await {
                return self.seats.iter().all(|seat| sold.contains(seat));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_across_nodes_ends_confirmed_or_released_wherever_a_kill_cuts_it() {
    let mut cluster = Cluster::start(3, 1, &FLAGS);
    cluster.wait_connected().await;

    // 1. The other seat's node is down before the order: nothing is reserved or charged; 503.
    let order = straddle(&cluster, "before", 0).await;
    cluster.kill(order.other);
    let reply = order.order(cluster.node(order.home)).await;
    assert!(
        is_unavailable(&reply) && reply.code() == "node_unavailable",
        "{}",
        reply.body
    );
    cluster.restart(order.other);
    eventually("the part reserved nowhere is free", || {
        order.settled(&cluster)
    })
    .await;
    assert!(!order.sold(&cluster).await);

    // 2. The other seat's node dies while the card is charged: charged, the order waits for that node, and
    //    confirms both seats once it is back.
    let order = straddle(&cluster, "charging", 1).await;
    let pending = tokio::spawn(order.order(cluster.node(order.home)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(order.other);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(order.other);
    let reply = pending.await.expect("the order ends");
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    eventually("both seats sold", || order.settled(&cluster)).await;
    assert!(order.sold(&cluster).await);

    // 3. The buyer's node (which charges and coordinates) dies while the card is charged: the authorization never
    //    completed, and after its restart the node asks again under the order's key from its journaled payment
    //    record (both seats are still reserved): both seats sold, never one of each.
    let order = straddle(&cluster, "coordinator", 2).await;
    let pending = tokio::spawn(order.order(cluster.node(order.home)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(order.home);
    let cut = pending.await.expect("the request ends");
    assert_ne!(cut.status.as_u16(), 201);
    cluster.restart(order.home);
    eventually("both seats settled", || order.settled(&cluster)).await;
    assert!(order.sold(&cluster).await);

    // 4. Charged, one seat sold, the other's node down, and then the buyer's node dies too: after both restart,
    //    the order is finished as charged: both seats sold, both tickets issued.
    let order = straddle(&cluster, "halfway", 3).await;
    let pending = tokio::spawn(order.order(cluster.node(order.home)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(order.other);
    // The charge takes a second; then the buyer's node sells its own seat and waits for the other node.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    cluster.kill(order.home);
    let _ = pending.await;
    cluster.restart(order.other);
    cluster.restart(order.home);
    eventually("the half-sold order is finished", || {
        order.settled(&cluster)
    })
    .await;
    assert!(
        order.sold(&cluster).await,
        "charged, so both seats are sold"
    );

    // 5. A hold across nodes, bought while the other node is down: refused, and both seats go back on sale.
    let order = straddle(&cluster, "hold", 4).await;
    let hold = cluster
        .node(order.home)
        .hold(
            &order.token,
            json!({"concert_id": order.concert, "seats": order.seats}),
        )
        .await;
    cluster.kill(order.other);
    let reply = cluster
        .node(order.home)
        .post(
            &format!("/holds/{hold}/purchase"),
            Some(&order.token),
            json!({}),
        )
        .await;
    assert!(is_unavailable(&reply), "{}", reply.body);
    cluster.restart(order.other);
    eventually("the hold's seats are back on sale", || {
        order.settled(&cluster)
    })
    .await;
    assert!(!order.sold(&cluster).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_tickets_are_found_on_any_node_and_never_sold_out_while_a_node_may_hold_them() {
    let mut cluster = Cluster::start(3, 1, &FLAGS[2..]);
    cluster.wait_connected().await;
    // Twelve tickets, two on each of six shards: each node's own shards hold four.
    let general = cluster.fronts[0].create_general(12, 6, 1_000).await;
    let by_node = buyers(&cluster.fronts[0], "last", 40).await;
    let home = *by_node.keys().next().expect("a node");
    let (first, second) = (&by_node[&home][0].1, &by_node[&home][1].1);
    let home_server = home as usize;

    // Ten tickets for one buyer of one node: served by one of its shards, after unsold count moved into it from
    // the other nodes' shards.
    let order = cluster
        .node(home_server)
        .post(
            "/orders",
            Some(first),
            json!({"concert_id": general, "quantity": 10}),
        )
        .await
        .expect(201);
    assert_eq!(order["tickets"].as_array().expect("tickets").len(), 10);
    let (remaining, _, sold, _) = cluster.fronts[0].availability(&general).await;
    assert_eq!((remaining, sold), (2, 10));

    // The other nodes, one of which holds the last two, stop answering: not sold out, but unavailable.
    let others: Vec<usize> = (0..3).filter(|node| *node != home_server).collect();
    for node in &others {
        cluster.kill(*node);
    }
    let reply = cluster
        .node(home_server)
        .post(
            "/orders",
            Some(second),
            json!({"concert_id": general, "quantity": 2}),
        )
        .await;
    assert!(
        is_unavailable(&reply) && reply.code() == "node_unavailable",
        "{}",
        reply.body
    );
    for node in &others {
        cluster.restart(*node);
    }
    cluster.wait_connected().await;
    eventually("the last two tickets are sold", || async {
        let reply = cluster
            .node(home_server)
            .post(
                "/orders",
                Some(second),
                json!({"concert_id": general, "quantity": 2}),
            )
            .await;
        assert_ne!(reply.code(), "sold_out", "{}", reply.body);
        reply.status.as_u16() == 201
    })
    .await;
    // Now the concert as a whole is out, and every node says so.
    let other = by_node
        .iter()
        .find(|(node, _)| **node != home)
        .expect("another node's buyer")
        .1[0]
        .1
        .clone();
    for server in cluster.entry_points() {
        // A restarted node answers for its users once it has read their orders back from every node.
        eventually("sold out, answered by every process", || async {
            let reply = server
                .post(
                    "/orders",
                    Some(&other),
                    json!({"concert_id": general, "quantity": 1}),
                )
                .await;
            if is_unavailable(&reply) {
                return false;
            }
            reply.expect_error(409, "sold_out");
            true
        })
        .await;
        let (remaining, held, sold, _) = server.availability(&general).await;
        assert_eq!((remaining, held, sold), (0, 0, 12));
    }
}

//! A cluster on loopback: three shard nodes and a front. Every public endpoint answers through every process
//! with the same bodies and errors as a single node; buyers racing through every process never oversell; the
//! counts of every concert add up over the cluster.

mod common;

use common::cluster::{Cluster, placement, seats_by_node};
use common::{ADMIN_TOKEN, GOOD_CARD};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The same GET answers the same body through every process.
async fn same_everywhere(cluster: &Cluster, path: &str, token: Option<&str>) -> Value {
    let bodies = join_all(
        cluster
            .entry_points()
            .iter()
            .map(|server| server.get(path, token)),
    )
    .await;
    let first = bodies[0].body.clone();
    for reply in bodies {
        assert_eq!(reply.status.as_u16(), 200, "{path}: {}", reply.body);
        assert_eq!(reply.body, first, "{path} answers the same everywhere");
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_the_same_through_every_process() {
    let cluster = Cluster::start(3, 1, &["--payment-latency-ms", "5"]);
    cluster.wait_connected().await;
    let entry = cluster.entry_points();
    let front = &cluster.fronts[0];

    // Concerts, created through different processes, spread over every node.
    let general = front.create_general(100, 6, 2_500).await;
    let seated = cluster.node(1).create_seated(&["A", "B"], 2, 6, 4).await;
    let general_placement = placement(front, &general).await;
    assert_eq!(
        general_placement.iter().copied().collect::<BTreeSet<u64>>(),
        BTreeSet::from([0, 1, 2]),
        "a concert's shards spread over every node: {general_placement:?}"
    );
    let seated_placement = placement(cluster.node(2), &seated).await;
    let seats = seats_by_node(&seated_placement, 2, 6);
    let listed = same_everywhere(&cluster, "/concerts", None).await;
    assert_eq!(listed["concerts"].as_array().expect("a list").len(), 2);
    same_everywhere(&cluster, &format!("/concerts/{seated}/seats"), None).await;
    same_everywhere(&cluster, "/admin/cluster", Some(ADMIN_TOKEN)).await;

    // The internal port answers only the cluster's secret, and each node reports its peers in its metrics.
    let internal = |secret: Option<&str>| {
        let mut curl = std::process::Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2-prior-knowledge",
        ]);
        if let Some(secret) = secret {
            curl.args(["-H", &format!("x-boxoffice-cluster-secret: {secret}")]);
        }
        let output = curl
            .arg(format!(
                "http://{}/internal/v1/status",
                cluster.internal_address(0)
            ))
            .output()
            .expect("curl (Debian package curl)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(internal(None), "401");
    assert_eq!(
        internal(Some("a-wrong-secret-of-enough-length-0123456789")),
        "401"
    );
    assert_eq!(internal(Some(common::cluster::CLUSTER_SECRET)), "200");
    let metrics = cluster
        .node(1)
        .client
        .get(format!("{}/metrics", cluster.node(1).base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        "boxoffice_cluster_peer_latency_seconds",
        "boxoffice_cluster_peer_reachable{peer=\"0\"} 1",
        "boxoffice_cluster_peer_in_flight",
    ] {
        assert!(metrics.contains(series), "{series} in /metrics");
    }

    // No internal path is reachable from outside, whatever token a request carries.
    for server in &entry {
        for token in [None, Some("1.not-a-token"), Some(ADMIN_TOKEN)] {
            server
                .post("/internal/v1/shard", token, json!({}))
                .await
                .expect_error(404, "not_found");
            server
                .get("/internal/v1/concerts", token)
                .await
                .expect_error(404, "not_found");
        }
    }

    // Errors are those of a single node, wherever they are answered.
    for server in &entry {
        server
            .get("/concerts/c_00000000000000000000", None)
            .await
            .expect_error(404, "concert_not_found");
        server
            .get(
                "/users/u_1-00000000000000000000",
                Some("2.not-a-live-token"),
            )
            .await
            .expect_error(401, "unauthorized");
        server
            .post(
                "/orders",
                None,
                json!({"concert_id": general, "quantity": 1}),
            )
            .await
            .expect_error(401, "unauthorized");
        server
            .post("/users", None, json!({"username": "x"}))
            .await
            .expect_error(422, "invalid_body");
        let page = server
            .client
            .get(format!("{}/", server.base))
            .send()
            .await
            .expect("the page");
        assert_eq!(page.status().as_u16(), 200);
        assert!(page.text().await.expect("html").contains("<html"));
    }

    for (index, server) in entry.iter().enumerate() {
        let next = entry[(index + 1) % entry.len()];
        let third = entry[(index + 2) % entry.len()];
        let username = format!("buyer{index}");
        let (id, _) = server.register(&username, GOOD_CARD).await;
        // Registered once, wherever asked.
        next.post(
            "/users",
            None,
            json!({"username": username, "password": "another password"}),
        )
        .await
        .expect_error(409, "username_taken");
        let login = third
            .post(
                "/users/verify",
                None,
                json!({"username": username, "password": "correct horse battery"}),
            )
            .await
            .expect(200);
        assert_eq!(login["id"], id.as_str());
        let token = login["token"].as_str().expect("token").to_owned();
        let user_path = format!("/users/{id}");
        let profile = same_everywhere(&cluster, &user_path, Some(&token)).await;
        assert_eq!(profile["card"]["last4"], "4242");
        next.send(
            reqwest::Method::PUT,
            &user_path,
            Some(&token),
            Some(json!({"city": "Lyon"})),
            &[],
        )
        .await
        .expect(200);
        assert_eq!(
            same_everywhere(&cluster, &user_path, Some(ADMIN_TOKEN)).await["city"],
            "Lyon"
        );

        // An order, retried with its key through another process, is the same order.
        let key = format!("key-{index}");
        let mut placed = Vec::new();
        for process in [server, next] {
            placed.push(
                process
                    .send(
                        reqwest::Method::POST,
                        "/orders",
                        Some(&token),
                        Some(json!({"concert_id": general, "quantity": 2})),
                        &[("idempotency-key", &key)],
                    )
                    .await
                    .expect(201),
            );
        }
        let order = &placed[0];
        assert_eq!(
            placed[0]["id"], placed[1]["id"],
            "a retry through another process reads the first outcome"
        );
        let order_path = format!("/orders/{}", order["id"].as_str().expect("id"));
        same_everywhere(&cluster, &order_path, Some(&token)).await;
        assert_eq!(
            same_everywhere(&cluster, &order_path, Some(ADMIN_TOKEN)).await["status"],
            "confirmed"
        );

        // Seats of two different nodes, held through one process and bought through another.
        let nodes: Vec<&u64> = seats.keys().collect();
        let pair = vec![
            seats[nodes[index % nodes.len()]][index].clone(),
            seats[nodes[(index + 1) % nodes.len()]][index].clone(),
        ];
        let hold = server
            .hold(&token, json!({"concert_id": seated, "seats": pair}))
            .await;
        let bought = next
            .post(&format!("/holds/{hold}/purchase"), Some(&token), json!({}))
            .await
            .expect(201);
        let mut sold_seats: Vec<String> = bought["tickets"]
            .as_array()
            .expect("tickets")
            .iter()
            .map(|ticket| ticket["seat"].as_str().expect("a seat").to_owned())
            .collect();
        sold_seats.sort();
        let mut expected = pair.clone();
        expected.sort();
        assert_eq!(sold_seats, expected);
        let another = third
            .hold(&token, json!({"concert_id": seated, "quantity": 3}))
            .await;
        server
            .send(
                reqwest::Method::DELETE,
                &format!("/holds/{another}"),
                Some(&token),
                None,
                &[],
            )
            .await
            .expect(204);

        // Tickets, their QR codes and the gate, through every process.
        let tickets =
            same_everywhere(&cluster, &format!("{user_path}/tickets"), Some(&token)).await;
        let tickets = tickets["tickets"].as_array().expect("tickets").clone();
        assert_eq!(
            tickets.len(),
            4,
            "two general-admission tickets and two seats"
        );
        let ticket_id = tickets[0]["id"].as_str().expect("id");
        for process in &entry {
            let qr = process
                .client
                .get(format!(
                    "{}{user_path}/tickets/{ticket_id}/qr",
                    process.base
                ))
                .bearer_auth(&token)
                .send()
                .await
                .expect("a QR code");
            assert_eq!(qr.status().as_u16(), 200);
        }
        let gate = json!({"token": tickets[1]["token"]});
        third
            .post("/tickets/verify", Some(ADMIN_TOKEN), gate.clone())
            .await
            .expect(200);
        server
            .post("/tickets/verify", Some(ADMIN_TOKEN), gate)
            .await
            .expect_error(409, "already_checked_in");
        next.post(
            "/tickets/verify",
            Some(ADMIN_TOKEN),
            json!({"token": "0123456789abcdef0123456789abcdef"}),
        )
        .await
        .expect_error(404, "unknown_ticket");

        // A user may not do what only the admin does, wherever asked.
        next.post("/concerts", Some(&token), json!({}))
            .await
            .expect_error(403, "forbidden");

        // Logged out through one process, the token stops working through every process at once.
        third
            .send(
                reqwest::Method::POST,
                "/users/logout",
                Some(&token),
                None,
                &[],
            )
            .await
            .expect(204);
        for process in &entry {
            process
                .get(&user_path, Some(&token))
                .await
                .expect_error(401, "unauthorized");
        }
    }

    // The per-user limit counts every node's tickets: 10 per concert.
    let (_, token) = cluster.node(0).register("limited", GOOD_CARD).await;
    for server in &entry[..3] {
        server
            .post(
                "/orders",
                Some(&token),
                json!({"concert_id": general, "quantity": 3}),
            )
            .await
            .expect(201);
    }
    front
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": general, "quantity": 2}),
        )
        .await
        .expect_error(409, "ticket_limit_reached");

    // Bulk users through a front land on their own nodes, however many there are (internal calls are cut in parts).
    let bulk = front
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            json!({"prefix": "many", "count": 1_200}),
        )
        .await
        .expect(201);
    let homes: BTreeSet<&str> = bulk["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| {
            user["id"]
                .as_str()
                .expect("id")
                .split_once('-')
                .expect("node")
                .0
        })
        .collect();
    assert_eq!(homes.len(), 3, "{homes:?}");
    front
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            json!({"prefix": "many", "count": 1_200}),
        )
        .await
        .expect_error(409, "username_taken");

    // The users list gathers every node's users, a page at a time.
    let mut listed = Vec::new();
    let mut offset = 0;
    loop {
        let page = front
            .get(
                &format!("/users?offset={offset}&limit=500"),
                Some(ADMIN_TOKEN),
            )
            .await
            .expect(200);
        listed.extend(
            page["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|user| user["username"].clone()),
        );
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(listed.len(), entry.len() + 1 + 1_200, "every user once");

    // Counts agree everywhere and add up.
    for server in &entry {
        let (remaining, held, sold, capacity) = server.availability(&general).await;
        assert_eq!((held, sold, capacity), (0, 2 * entry.len() as u64 + 9, 100));
        assert_eq!(remaining, capacity - sold);
        let (_, held, sold, _) = server.availability(&seated).await;
        assert_eq!((held, sold), (0, 2 * entry.len() as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buyers_racing_through_every_process_never_oversell() {
    const BUYERS: usize = 40;
    const GENERAL_CAPACITY: u64 = 60;
    let cluster = Cluster::start(3, 1, &["--payment-latency-ms", "20"]);
    cluster.wait_connected().await;
    let entry = cluster.entry_points();
    let front = &cluster.fronts[0];
    let general = front.create_general(GENERAL_CAPACITY, 6, 1_000).await;
    let seated = front.create_seated(&["A", "B"], 2, 10, 4).await;
    let users = front
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            json!({"prefix": "racer", "count": BUYERS,
                   "card": {"type": "visa", "holder_name": "Racer", "number": GOOD_CARD,
                            "exp_month": 12, "exp_year": 2030, "cvv": "123"}}),
        )
        .await
        .expect(201);
    let users: Vec<(String, String)> = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| {
            (
                user["id"].as_str().expect("id").to_owned(),
                user["token"].as_str().expect("token").to_owned(),
            )
        })
        .collect();
    let homes: BTreeSet<&str> = users
        .iter()
        .map(|(id, _)| id.split_once('-').expect("a node in the id").0)
        .collect();
    assert_eq!(homes.len(), 3, "buyers live on every node");

    // Everyone at once, each through another process: a general-admission order and a pair of seats that
    // overlaps its neighbours' pairs.
    let seat_labels: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|section| {
            (1..=2).flat_map(move |row| (1..=10).map(move |seat| format!("{section}-{row}-{seat}")))
        })
        .collect();
    let orders = users.iter().enumerate().map(|(index, (_, token))| {
        let server = entry[index % entry.len()];
        let quantity = 1 + (index % 4) as u64;
        let pair = vec![
            seat_labels[index % seat_labels.len()].clone(),
            seat_labels[(index + 1) % seat_labels.len()].clone(),
        ];
        let (general, seated) = (general.clone(), seated.clone());
        async move {
            let general_reply = server
                .post(
                    "/orders",
                    Some(token),
                    json!({"concert_id": general, "quantity": quantity}),
                )
                .await;
            let seated_reply = server
                .post(
                    "/orders",
                    Some(token),
                    json!({"concert_id": seated, "seats": pair}),
                )
                .await;
            (quantity, general_reply, seated_reply)
        }
    });
    let outcomes = join_all(orders).await;

    let mut granted = 0;
    let mut sold_seats: BTreeSet<String> = BTreeSet::new();
    let mut refused_general = Vec::new();
    for (index, (quantity, general_reply, seated_reply)) in outcomes.iter().enumerate() {
        match general_reply.status.as_u16() {
            201 => {
                let tickets = general_reply.body["tickets"].as_array().expect("tickets");
                assert_eq!(tickets.len() as u64, *quantity, "a 201 carries its tickets");
                granted += quantity;
            }
            409 => {
                assert_eq!(general_reply.code(), "sold_out", "{}", general_reply.body);
                refused_general.push(*quantity);
            }
            status => panic!(
                "buyer {index}: general admission answered {status}: {}",
                general_reply.body
            ),
        }
        match seated_reply.status.as_u16() {
            201 => {
                for ticket in seated_reply.body["tickets"].as_array().expect("tickets") {
                    let seat = ticket["seat"].as_str().expect("a seat").to_owned();
                    assert!(sold_seats.insert(seat.clone()), "seat {seat} sold twice");
                }
            }
            409 => assert_eq!(seated_reply.code(), "seat_taken", "{}", seated_reply.body),
            status => panic!(
                "buyer {index}: seats answered {status}: {}",
                seated_reply.body
            ),
        }
    }
    assert!(granted <= GENERAL_CAPACITY);
    for server in &entry {
        let (remaining, held, sold, _) = server.availability(&general).await;
        assert_eq!(
            (held, sold),
            (0, granted),
            "every sale counted once, nothing left held"
        );
        for quantity in &refused_general {
            assert!(
                remaining < *quantity,
                "sold out for {quantity} while {remaining} remain"
            );
        }
        let (_, held, sold, _) = server.availability(&seated).await;
        assert_eq!((held, sold), (0, sold_seats.len() as u64));
        let map = server
            .get(&format!("/concerts/{seated}/seats"), None)
            .await
            .expect(200);
        let sold_on_map: BTreeSet<String> = map["seats"]
            .as_array()
            .expect("seats")
            .iter()
            .filter(|seat| seat["status"] == "sold")
            .map(|seat| seat["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(
            sold_on_map, sold_seats,
            "the seat map sells exactly the seats of the 201s"
        );
    }
    // Every 201's tickets are in its buyer's list, read through another process.
    for (index, ((id, token), (_, general_reply, seated_reply))) in
        users.iter().zip(&outcomes).enumerate()
    {
        let listed = entry[(index + 1) % entry.len()]
            .get(&format!("/users/{id}/tickets"), Some(token))
            .await
            .expect(200);
        let listed: BTreeSet<String> = listed["tickets"]
            .as_array()
            .expect("tickets")
            .iter()
            .map(|ticket| ticket["id"].as_str().expect("id").to_owned())
            .collect();
        for reply in [general_reply, seated_reply] {
            for ticket in reply.body["tickets"].as_array().into_iter().flatten() {
                assert!(
                    listed.contains(ticket["id"].as_str().expect("id")),
                    "buyer {index} lost a ticket"
                );
            }
        }
    }
}

/// `(seat, status, change)` of the next `count` seat events, sorted (one request's seats on different nodes may be
/// published in either order), and the id of the last.
async fn seat_changes(
    stream: &mut common::sse::EventStream,
    count: usize,
) -> (Vec<(String, String, String)>, String) {
    let mut changes = Vec::new();
    let mut last = String::new();
    for _ in 0..count {
        let event = stream.next_seat().await;
        last = event.id.clone().expect("seat events have ids");
        changes.push(common::sse::seat_triple(&event.data));
    }
    changes.sort();
    (changes, last)
}

fn changes(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut list: Vec<(String, String, String)> = items
        .iter()
        .map(|(seat, status, change)| {
            (
                (*seat).to_owned(),
                (*status).to_owned(),
                (*change).to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_feed_carries_every_node_and_resumes_on_any_process() {
    use common::sse::{EventStream, counts};
    let cluster = Cluster::start(3, 1, &["--payment-latency-ms", "5"]);
    cluster.wait_connected().await;
    let front = &cluster.fronts[0];
    let seated = front.create_seated(&["A", "B"], 2, 6, 3).await;
    let owners = seats_by_node(&placement(front, &seated).await, 2, 6);
    let nodes: Vec<u64> = owners.keys().copied().collect();
    assert_eq!(nodes.len(), 3, "a shard on every node");
    let (_, buyer) = front.register("watched", GOOD_CARD).await;
    let (first, second, third) = (
        &owners[&nodes[0]][0],
        &owners[&nodes[1]][0],
        &owners[&nodes[2]][0],
    );

    // A subscriber on node 0 starts from a snapshot whose id names every node's feed.
    let mut watcher = EventStream::open(cluster.node(0), &seated, None).await;
    let snapshot = watcher.expect_next().await;
    assert_eq!(snapshot.event, "snapshot");
    let id = snapshot.id.expect("a snapshot has an id");
    assert_eq!(id.split('.').count(), 3, "one position per node: {id}");
    assert_eq!(counts(&snapshot.data), (24, 0, 0));

    // Seats of nodes 0 and 2 bought through node 1, a seat of node 1 held and cancelled through the front.
    cluster
        .node(1)
        .post(
            "/orders",
            Some(&buyer),
            json!({"concert_id": seated, "seats": [first, third]}),
        )
        .await
        .expect(201);
    let (bought, after_order) = seat_changes(&mut watcher, 4).await;
    assert_eq!(
        bought,
        changes(&[
            (first, "held", "held"),
            (first, "sold", "sold"),
            (third, "held", "held"),
            (third, "sold", "sold"),
        ])
    );
    let hold = front
        .hold(&buyer, json!({"concert_id": seated, "seats": [second]}))
        .await;
    front
        .send(
            reqwest::Method::DELETE,
            &format!("/holds/{hold}"),
            Some(&buyer),
            None,
            &[],
        )
        .await
        .expect(204);
    let (cancelled, _) = seat_changes(&mut watcher, 2).await;
    assert_eq!(
        cancelled,
        changes(&[(second, "free", "released"), (second, "held", "held")])
    );
    watcher.await_availability((22, 0, 2)).await;

    // Resumed on another node after the order: exactly the changes since, no snapshot.
    let mut resumed = EventStream::open(cluster.node(2), &seated, Some(&after_order)).await;
    let (missed, _) = seat_changes(&mut resumed, 2).await;
    assert_eq!(
        missed, cancelled,
        "the changes since the id, from another node"
    );
    // And resumed through the front, from the first snapshot: everything since.
    let mut again = EventStream::open(front, &seated, Some(&id)).await;
    let (all, _) = seat_changes(&mut again, 6).await;
    let mut expected = bought.clone();
    expected.extend(cancelled.clone());
    expected.sort();
    assert_eq!(all, expected);
    // A fresh subscriber through the front sees the seat map everyone sees.
    let mut fresh = EventStream::open(front, &seated, None).await;
    let snapshot = fresh.expect_next().await;
    let map = front
        .get(&format!("/concerts/{seated}/seats"), None)
        .await
        .expect(200);
    assert_eq!(snapshot.data["seats"], map["seats"]);
    assert_eq!(counts(&snapshot.data), (22, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_node_moves_nothing_and_new_concerts_use_it() {
    let mut cluster = Cluster::start(2, 1, &[]);
    cluster.wait_connected().await;
    let before = cluster.fronts[0].create_general(100, 4, 1_000).await;
    let placement_before = placement(&cluster.fronts[0], &before).await;
    // A user whose name a third node would win: registered now, it lives on node 0 or 1 for good.
    let moved = (0..)
        .map(|i| format!("grower{i}"))
        .find(|name| {
            cluster::placement::user_home(name, 2) != cluster::placement::user_home(name, 3)
        })
        .expect("some name");
    let (id, token) = cluster.fronts[0].register(&moved, GOOD_CARD).await;
    cluster.fronts[0]
        .post(
            "/orders",
            Some(&token),
            json!({"concert_id": before, "quantity": 2}),
        )
        .await
        .expect(201);

    cluster.add_node();
    cluster.wait_connected().await;
    let front = &cluster.fronts[0];
    // Restarted nodes read their users' orders back from every node before they answer for them.
    let mut ready = front
        .get(&format!("/users/{id}/tickets"), Some(&token))
        .await;
    while ready.status.as_u16() == 503 {
        assert!(ready.retry_after.is_some(), "{}", ready.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = front
            .get(&format!("/users/{id}/tickets"), Some(&token))
            .await;
    }
    assert_eq!(
        placement(front, &before).await,
        placement_before,
        "an existing concert keeps its placement"
    );
    let after = front.create_general(100, 6, 1_000).await;
    assert!(
        placement(front, &after).await.contains(&2),
        "a new concert uses the new node"
    );

    // The user is found where it registered: its token, its login, its name still taken, its tickets.
    let login = front
        .post(
            "/users/verify",
            None,
            json!({"username": moved, "password": "correct horse battery"}),
        )
        .await
        .expect(200);
    assert_eq!(login["id"], id.as_str());
    front
        .post(
            "/users",
            None,
            json!({"username": moved, "password": "another password"}),
        )
        .await
        .expect_error(409, "username_taken");
    let tickets = front
        .get(&format!("/users/{id}/tickets"), Some(&token))
        .await
        .expect(200);
    assert_eq!(tickets["tickets"].as_array().expect("tickets").len(), 2);
    for concert in [&before, &after] {
        cluster
            .node(2)
            .post(
                "/orders",
                Some(&token),
                json!({"concert_id": concert, "quantity": 1}),
            )
            .await
            .expect(201);
    }
    let (_, held, sold, _) = front.availability(&before).await;
    assert_eq!((held, sold), (0, 3));
}

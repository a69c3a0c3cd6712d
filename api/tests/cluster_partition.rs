//! A shard node cut off by the network, in network namespaces this test creates (root and iproute2 needed: CI
//! runs as root; without them the test fails and says why).
//!
//! Three shard nodes each live in a namespace of their own, joined by veth pairs to a bridge in a fourth
//! namespace, where the test's client and a front run (the test's thread moves itself there, so every address it
//! talks to is inside a namespace it created). Cutting node 2's bridge port isolates it: the others answer what
//! needs node 2 with `503 node_unavailable` and go on selling everything else; node 2 goes on selling its own
//! users from its own shards; when the port comes back up the cluster is whole again, with every concert's
//! placement unchanged and the counts adding up: no shard ever had two owners.

mod common;

use common::cluster::CLUSTER_SECRET;
use common::{ADMIN_TOKEN, GOOD_CARD, Reply, Server};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

const NODES: usize = 3;
/// The private network inside the namespaces: the bridge is `.1`, node `k` is `.(10 + k)`.
const SUBNET: &str = "10.77.0";
const PUBLIC_PORT: u16 = 8080;
const INTERNAL_PORT: u16 = 9101;

/// The namespaces and links of one test run, removed when dropped.
struct Net {
    prefix: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip (iproute2): {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Net {
    fn create() -> Result<Net, String> {
        let net = Net {
            prefix: format!("bo{}", std::process::id()),
        };
        let client = net.client();
        ip(&["netns", "add", &client])?;
        ip(&["-n", &client, "link", "set", "lo", "up"])?;
        ip(&["-n", &client, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &client,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &client, "link", "set", "br0", "up"])?;
        for node in 0..NODES {
            let namespace = net.node(node);
            let (inside, port) = (format!("{}v{node}", net.prefix), net.port(node));
            ip(&["netns", "add", &namespace])?;
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &port,
            ])?;
            ip(&["link", "set", &inside, "netns", &namespace])?;
            ip(&["link", "set", &port, "netns", &client])?;
            ip(&["-n", &namespace, "link", "set", &inside, "name", "eth0"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{}/24", address(node)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&["-n", &client, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &client, "link", "set", &port, "up"])?;
        }
        Ok(net)
    }

    fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }

    fn node(&self, node: usize) -> String {
        format!("{}-node{node}", self.prefix)
    }

    /// Node `node`'s port on the bridge.
    fn port(&self, node: usize) -> String {
        format!("{}b{node}", self.prefix)
    }

    fn cut(&self, node: usize) {
        ip(&[
            "-n",
            &self.client(),
            "link",
            "set",
            &self.port(node),
            "down",
        ])
        .expect("cut");
    }

    fn heal(&self, node: usize) {
        ip(&["-n", &self.client(), "link", "set", &self.port(node), "up"]).expect("heal");
    }

    /// Moves the calling thread (and the threads it starts afterwards) into the client namespace.
    fn enter_client(&self) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.client()))
            .expect("the client namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the client namespace");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in 0..NODES {
            let _ = ip(&["netns", "del", &self.node(node)]);
        }
        let _ = ip(&["netns", "del", &self.client()]);
    }
}

fn address(node: usize) -> String {
    format!("{SUBNET}.{}", 10 + node)
}

fn node_list() -> String {
    (0..NODES)
        .map(|node| format!("http://{}:{INTERNAL_PORT}", address(node)))
        .collect::<Vec<_>>()
        .join(",")
}

fn start_node(net: &Net, node: usize) -> Server {
    let namespace = net.node(node);
    let (id, list, internal) = (
        node.to_string(),
        node_list(),
        format!("{}:{INTERNAL_PORT}", address(node)),
    );
    Server::launch_with(
        tempfile::tempdir().expect("dir"),
        &format!("{}:{PUBLIC_PORT}", address(node)),
        &[
            "--node-id",
            &id,
            "--cluster-nodes",
            &list,
            "--internal-listen",
            &internal,
        ],
        &[("BOXOFFICE_CLUSTER_SECRET", CLUSTER_SECRET)],
        Stdio::inherit(),
        &std::env::var("BOXOFFICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        &["ip", "netns", "exec", &namespace],
    )
}

fn start_front(net: &Net) -> Server {
    let list = node_list();
    Server::launch_with(
        tempfile::tempdir().expect("dir"),
        &format!("{SUBNET}.1:{PUBLIC_PORT}"),
        &["--role", "front", "--cluster-nodes", &list],
        &[("BOXOFFICE_CLUSTER_SECRET", CLUSTER_SECRET)],
        Stdio::inherit(),
        &std::env::var("BOXOFFICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        &["ip", "netns", "exec", &net.client()],
    )
}

/// An order of `quantity` tickets placed from inside node `node`'s own namespace, on node `node` (the test's
/// client cannot reach it while it is cut off): its status and body.
fn order_inside(net: &Net, node: usize, base: &str, token: &str, concert: &str) -> (u16, Value) {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.node(node),
            "curl",
            "-s",
            "-m",
            "60",
            "-w",
            "\n%{http_code}",
        ])
        .args(["-X", "POST", &format!("{base}/orders")])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", "content-type: application/json"])
        .args([
            "-d",
            &json!({"concert_id": concert, "quantity": 1}).to_string(),
        ])
        .output()
        .expect("curl (Debian package curl) inside the namespace");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (
        status.trim().parse().expect("a status"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn unavailable(reply: &Reply) -> bool {
    reply.status.as_u16() == 503
        && reply.code() == "node_unavailable"
        && reply.retry_after.is_some()
}

#[test]
fn a_node_cut_off_by_the_network_keeps_its_shards_and_the_rest_sells_on() {
    let net = Net::create().unwrap_or_else(|reason| {
        panic!("this test creates network namespaces and needs root and iproute2 (CI runs as root): {reason}")
    });
    let net = std::sync::Arc::new(net);
    let worker = {
        let net = net.clone();
        std::thread::spawn(move || {
            net.enter_client();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(partition(&net));
        })
    };
    let outcome = worker.join();
    drop(net);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn partition(net: &Net) {
    let nodes: Vec<Server> = (0..NODES).map(|node| start_node(net, node)).collect();
    let front = start_front(net);
    for server in nodes.iter().chain([&front]) {
        common::cluster::wait_connected(server, NODES).await;
    }
    let general = front.create_general(3_000, 6, 1_000).await;
    let seated = nodes[0].create_seated(&["A", "B"], 2, 6, 3).await;
    let placement_before = front
        .get("/admin/cluster", Some(ADMIN_TOKEN))
        .await
        .expect(200)["concerts"]
        .clone();
    let created = front
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            json!({"prefix": "net", "count": 30,
                   "card": {"type": "visa", "holder_name": "Net", "number": GOOD_CARD,
                            "exp_month": 12, "exp_year": 2030, "cvv": "123"}}),
        )
        .await
        .expect(201);
    let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for user in created["users"].as_array().expect("users") {
        let node = user["id"].as_str().expect("id")[2..]
            .split_once('-')
            .expect("node")
            .0
            .parse()
            .expect("n");
        by_node
            .entry(node)
            .or_default()
            .push(user["token"].as_str().expect("token").to_owned());
    }
    assert_eq!(by_node.len(), NODES, "users on every node");
    let mut sold = 0u64;
    for tokens in by_node.values() {
        front
            .post(
                "/orders",
                Some(&tokens[0]),
                json!({"concert_id": general, "quantity": 1}),
            )
            .await
            .expect(201);
        sold += 1;
    }

    net.cut(2);
    // What needs node 2 answers 503 node_unavailable (once the others notice; never a hang, never a 500).
    let (reader, cut_off, local) = (&nodes[0], &by_node[&2][0], &by_node[&0][0]);
    let mut reply = reader
        .post(
            "/orders",
            Some(cut_off),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await;
    for _ in 0..30 {
        if unavailable(&reply) {
            break;
        }
        assert_eq!(
            reply.status.as_u16(),
            201,
            "before the others notice, it still sells: {}",
            reply.body
        );
        sold += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        reply = reader
            .post(
                "/orders",
                Some(cut_off),
                json!({"concert_id": general, "quantity": 1}),
            )
            .await;
    }
    assert!(unavailable(&reply), "{}", reply.body);
    assert!(unavailable(
        &reader.get(&format!("/concerts/{general}"), None).await
    ));
    assert!(unavailable(
        &front.get(&format!("/concerts/{seated}/seats"), None).await
    ));
    // Everything else sells on: node 0's users buy from node 0's own shards.
    for _ in 0..5 {
        front
            .post(
                "/orders",
                Some(local),
                json!({"concert_id": general, "quantity": 1}),
            )
            .await
            .expect(201);
        sold += 1;
    }
    let view = front
        .get("/admin/cluster", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(view["nodes"][2]["state"], "unreachable", "{view}");
    // Node 2, cut off, keeps its shards and sells its own users from them.
    let (status, body) = order_inside(net, 2, &nodes[2].base, cut_off, &general);
    assert_eq!(status, 201, "{body}");
    sold += 1;

    net.heal(2);
    let mut reply = reader
        .post(
            "/orders",
            Some(cut_off),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await;
    for _ in 0..100 {
        if reply.status.as_u16() == 201 {
            break;
        }
        assert!(unavailable(&reply), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
        reply = reader
            .post(
                "/orders",
                Some(cut_off),
                json!({"concert_id": general, "quantity": 1}),
            )
            .await;
    }
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    sold += 1;

    // Whole again: the same placement, and every sale counted once, whoever made it. The front sees node 2 up
    // once its own link has reconnected (its back-off and pings run apart from the nodes' links).
    let all_up = |view: &Value| {
        view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|node| node["state"] == "up")
    };
    let mut view = front
        .get("/admin/cluster", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    for _ in 0..100 {
        if all_up(&view) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        view = front
            .get("/admin/cluster", Some(ADMIN_TOKEN))
            .await
            .expect(200);
    }
    assert!(all_up(&view), "{view}");
    assert_eq!(view["concerts"], placement_before, "no shard moved");
    for server in nodes.iter().chain([&front]) {
        // A process whose connection to the healed node broke during the cut may take a moment to dial it again
        // (its back-off, or a dead connection's pings): 503 node_unavailable meanwhile, never a wrong count.
        let concert = format!("/concerts/{general}");
        let mut reply = server.get(&concert, None).await;
        for _ in 0..150 {
            if !unavailable(&reply) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply = server.get(&concert, None).await;
        }
        reply.expect(200);
        let (remaining, held, counted, capacity) = server.availability(&general).await;
        assert_eq!((held, counted), (0, sold));
        assert_eq!(remaining, capacity - sold);
    }
}

//! Starts a cluster of real `boxoffice serve` processes on 127.0.0.1: shard nodes with free internal ports and
//! temporary data dirs, and fronts; kills and restarts nodes.

use super::{ADMIN_TOKEN, Server};
use std::collections::BTreeMap;
use std::process::Stdio;

/// The cluster secret of every test cluster.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef";

pub struct Cluster {
    /// `None` while a node is down.
    pub nodes: Vec<Option<Server>>,
    pub fronts: Vec<Server>,
    /// `--cluster-nodes`.
    pub node_list: String,
    internal_addresses: Vec<String>,
    extra_args: Vec<String>,
    /// Data dirs of nodes that are down, kept for their restart.
    stopped: Vec<Option<tempfile::TempDir>>,
}

/// A concert's placement as `GET /admin/cluster` through `server` gives it: the node of each shard.
pub async fn placement(server: &Server, concert: &str) -> Vec<u64> {
    let view = server
        .get("/admin/cluster", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    view["concerts"]
        .as_array()
        .expect("concerts")
        .iter()
        .find(|entry| entry["id"] == concert)
        .expect("the concert is placed")["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|node| node.as_u64().expect("a node id"))
        .collect()
}

/// The seat ids each node owns of a seated concert of sections `A` and `B` of `rows` rows of `per_row` seats,
/// cut into `placement.len()` contiguous shards.
pub fn seats_by_node(placement: &[u64], rows: u32, per_row: u32) -> BTreeMap<u64, Vec<String>> {
    let labels: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|section| {
            (1..=rows).flat_map(move |row| {
                (1..=per_row).map(move |seat| format!("{section}-{row}-{seat}"))
            })
        })
        .collect();
    let capacity = labels.len() as u64;
    let shards = placement.len() as u64;
    let mut by_node: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (index, label) in labels.into_iter().enumerate() {
        let index = index as u64;
        let shard = (0..shards)
            .find(|shard| index < (shard + 1) * capacity / shards)
            .expect("a shard owns every seat");
        by_node
            .entry(placement[shard as usize])
            .or_default()
            .push(label);
    }
    by_node
}

/// Waits until `server` sees all `nodes` shard nodes up (`GET /admin/cluster`): a node that tried a peer before it
/// started backs off for a moment before it tries again.
pub async fn wait_connected(server: &Server, nodes: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let view = server.get("/admin/cluster", Some(ADMIN_TOKEN)).await;
        let up = view.body["nodes"].as_array().map_or(0, |nodes| {
            nodes.iter().filter(|node| node["state"] == "up").count()
        });
        if view.status.as_u16() == 200 && up == nodes {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never formed: {}",
            view.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1 for a node's internal port, which its peers must know before it starts. Chosen
/// below the kernel's ephemeral range (32768 and up), where no outgoing connection takes it meanwhile, spread by
/// process id so that test binaries running side by side rarely try the same ones, and free when checked.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(offset < SPAN, "no free port left below the ephemeral range");
        let port = (FIRST + (start + offset * 37) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    /// `nodes` shard nodes and `fronts` fronts, every process with `extra_args`.
    pub fn start(nodes: usize, fronts: usize, extra_args: &[&str]) -> Cluster {
        let internal_addresses: Vec<String> = (0..nodes)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let node_list = internal_addresses
            .iter()
            .map(|address| format!("http://{address}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: (0..nodes).map(|_| None).collect(),
            fronts: Vec::new(),
            node_list,
            internal_addresses,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            stopped: (0..nodes).map(|_| None).collect(),
        };
        // Nodes start concurrently: each is ready once recovered, whatever its peers.
        let started: Vec<Server> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..nodes)
                .map(|node| {
                    let cluster = &cluster;
                    scope.spawn(move || cluster.launch_node(node, super::private_dir()))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("node starts"))
                .collect()
        });
        for (node, server) in started.into_iter().enumerate() {
            cluster.nodes[node] = Some(server);
        }
        for _ in 0..fronts {
            let front = cluster.launch_front();
            cluster.fronts.push(front);
        }
        cluster
    }

    fn launch_node(&self, node: usize, data_dir: tempfile::TempDir) -> Server {
        let node_id = node.to_string();
        let mut args: Vec<&str> = vec![
            "--node-id",
            &node_id,
            "--cluster-nodes",
            &self.node_list,
            "--internal-listen",
            &self.internal_addresses[node],
        ];
        args.extend(self.extra_args.iter().map(String::as_str));
        let filter = std::env::var("BOXOFFICE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Server::launch_with(
            data_dir,
            "127.0.0.1:0",
            &args,
            &[("BOXOFFICE_CLUSTER_SECRET", CLUSTER_SECRET)],
            Stdio::inherit(),
            &filter,
            &[],
        )
    }

    fn launch_front(&self) -> Server {
        let mut args: Vec<&str> = vec!["--role", "front", "--cluster-nodes", &self.node_list];
        args.extend(self.extra_args.iter().map(String::as_str));
        let filter = std::env::var("BOXOFFICE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Server::launch_with(
            super::private_dir(),
            "127.0.0.1:0",
            &args,
            &[("BOXOFFICE_CLUSTER_SECRET", CLUSTER_SECRET)],
            Stdio::inherit(),
            &filter,
            &[],
        )
    }

    /// Node `node`'s internal address, `127.0.0.1:PORT`.
    pub fn internal_address(&self, node: usize) -> &str {
        &self.internal_addresses[node]
    }

    pub fn node(&self, node: usize) -> &Server {
        self.nodes[node].as_ref().expect("the node is up")
    }

    /// Every process that answers the public API: the shard nodes that are up, then the fronts.
    pub fn entry_points(&self) -> Vec<&Server> {
        self.nodes
            .iter()
            .flatten()
            .chain(self.fronts.iter())
            .collect()
    }

    /// Kills shard node `node` with SIGKILL; its data dir is kept for [`Cluster::restart`].
    pub fn kill(&mut self, node: usize) {
        let server = self.nodes[node].take().expect("the node is up");
        self.stopped[node] = Some(server.kill());
    }

    /// Starts shard node `node` again on its data dir and internal port; waits until it has recovered.
    pub fn restart(&mut self, node: usize) {
        let data_dir = self.stopped[node].take().expect("the node is down");
        self.nodes[node] = Some(self.launch_node(node, data_dir));
    }

    /// Stops every process with SIGTERM (each exits 0 after its final snapshots); returns the nodes' data dirs.
    pub fn stop(self) -> Vec<tempfile::TempDir> {
        let Cluster { nodes, fronts, .. } = self;
        for front in fronts {
            front.stop();
        }
        nodes
            .into_iter()
            .map(|node| node.expect("every node is up").stop())
            .collect()
    }

    /// Adds a shard node the way an operator does: every process is stopped (SIGTERM) and started again with the
    /// new node appended to the list, the old nodes on their data dirs.
    pub fn add_node(&mut self) {
        let fronts = self.fronts.len();
        for front in self.fronts.drain(..) {
            front.stop();
        }
        let dirs: Vec<tempfile::TempDir> = self
            .nodes
            .iter_mut()
            .map(|node| node.take().expect("every node is up").stop())
            .collect();
        self.internal_addresses
            .push(format!("127.0.0.1:{}", free_port()));
        self.node_list = self
            .internal_addresses
            .iter()
            .map(|address| format!("http://{address}"))
            .collect::<Vec<_>>()
            .join(",");
        self.nodes.push(None);
        self.stopped.push(None);
        let mut dirs: Vec<tempfile::TempDir> = dirs;
        dirs.push(super::private_dir());
        let started: Vec<Server> = std::thread::scope(|scope| {
            let handles: Vec<_> = dirs
                .into_iter()
                .enumerate()
                .map(|(node, dir)| {
                    let cluster = &*self;
                    scope.spawn(move || cluster.launch_node(node, dir))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("node starts"))
                .collect()
        });
        for (node, server) in started.into_iter().enumerate() {
            self.nodes[node] = Some(server);
        }
        for _ in 0..fronts {
            let front = self.launch_front();
            self.fronts.push(front);
        }
    }

    /// Waits until every process sees every shard node up.
    pub async fn wait_connected(&self) {
        let nodes = self.nodes.len();
        for server in self.entry_points() {
            wait_connected(server, nodes).await;
        }
    }

    /// The admin token every process shares.
    pub fn admin() -> &'static str {
        ADMIN_TOKEN
    }
}

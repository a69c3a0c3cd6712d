//! What a process of a cluster is told at start: its role, the node list and the shared secret.
//!
//! `--cluster-nodes URL0,URL1,...` lists every shard node's internal base URL; node `k` is the `k`-th URL for
//! its whole life (a StatefulSet's ordinal). A shard node is one of them (`--node-id`); a front is none of them.
//! Every process of the cluster must be given the same list in the same order.

use engine::remote::NodeId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shard nodes a cluster has at most.
pub const NODES_MAX: usize = 256;
/// Shortest cluster secret accepted.
pub const SECRET_LENGTH_MIN: usize = 32;
/// Longest node URL accepted.
pub const NODE_URL_LENGTH_MAX: usize = 256;

/// What this process is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Shard node `node`: owns the shards and users placed on it.
    Shard { node: NodeId },
    /// Owns nothing; serves the public API by asking shard nodes.
    Front,
}

/// One shard node's internal address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub id: NodeId,
    /// As given, e.g. `http://127.0.0.1:9101`.
    pub url: String,
    /// `host:port`, what a connection is opened to (a name is resolved at each connect).
    pub authority: String,
}

#[derive(Clone)]
pub struct ClusterConfig {
    pub role: Role,
    pub nodes: Vec<NodeAddress>,
    secret: Secret,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("role", &self.role)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// Checks the node list, the role against it and the secret.
    pub fn new(role: Role, node_urls: &str, secret: &str) -> Result<Self, String> {
        let nodes = parse_nodes(node_urls)?;
        if let Role::Shard { node } = role
            && node as usize >= nodes.len()
        {
            return Err(format!(
                "--node-id {node} is not in --cluster-nodes, which lists {} nodes (0 to {})",
                nodes.len(),
                nodes.len() - 1
            ));
        }
        Ok(Self {
            role,
            nodes,
            secret: Secret::new(secret)?,
        })
    }

    /// This process's node id, if it is a shard node.
    pub fn node(&self) -> Option<NodeId> {
        match self.role {
            Role::Shard { node } => Some(node),
            Role::Front => None,
        }
    }

    pub fn node_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// The shared secret every internal call carries. Kept as given (to send) and as its hash (to compare in
/// constant time, whatever the length of what is presented).
#[derive(Clone)]
pub struct Secret {
    value: String,
    hash: [u8; 32],
}

impl Secret {
    pub fn new(value: &str) -> Result<Self, String> {
        if value.chars().count() < SECRET_LENGTH_MIN {
            return Err(format!(
                "BOXOFFICE_CLUSTER_SECRET must be at least {SECRET_LENGTH_MIN} characters"
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("BOXOFFICE_CLUSTER_SECRET must be visible ASCII characters".into());
        }
        Ok(Self {
            value: value.to_owned(),
            hash: Sha256::digest(value.as_bytes()).into(),
        })
    }

    pub(crate) fn value(&self) -> &str {
        &self.value
    }

    /// Compares in constant time, on hashes so that the length does not leak either.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        hash.ct_eq(&self.hash).into()
    }
}

fn parse_nodes(list: &str) -> Result<Vec<NodeAddress>, String> {
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err("--cluster-nodes lists no node".into());
    }
    if urls.len() > NODES_MAX {
        return Err(format!("--cluster-nodes lists more than {NODES_MAX} nodes"));
    }
    let mut nodes = Vec::with_capacity(urls.len());
    for (index, url) in urls.into_iter().enumerate() {
        let authority = parse_url(url).map_err(|reason| format!("node {index}: {reason}"))?;
        if nodes
            .iter()
            .any(|node: &NodeAddress| node.authority == authority)
        {
            return Err(format!("node {index}: {authority} is listed twice"));
        }
        nodes.push(NodeAddress {
            id: index as NodeId,
            url: url.trim_end_matches('/').to_owned(),
            authority,
        });
    }
    Ok(nodes)
}

/// `http://HOST:PORT` (a trailing `/` allowed) to `HOST:PORT`.
fn parse_url(url: &str) -> Result<String, String> {
    if url.len() > NODE_URL_LENGTH_MAX {
        return Err(format!(
            "a node URL has at most {NODE_URL_LENGTH_MAX} characters"
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("a node URL is http://HOST:PORT (the internal port speaks HTTP/2 without TLS)")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("a node URL has no path, query or user".into());
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or("a node URL names its port")?;
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if !host_ok {
        return Err(format!("{host} is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(authority.to_owned()),
        _ => Err(format!("{port} is not a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_node_list_is_parsed_in_order() {
        let config = ClusterConfig::new(
            Role::Shard { node: 1 },
            " http://127.0.0.1:9101, http://boxoffice-shard-1.boxoffice-shard:9101/ ,http://[::1]:9103",
            SECRET,
        )
        .expect("valid");
        let authorities: Vec<&str> = config
            .nodes
            .iter()
            .map(|node| node.authority.as_str())
            .collect();
        assert_eq!(
            authorities,
            [
                "127.0.0.1:9101",
                "boxoffice-shard-1.boxoffice-shard:9101",
                "[::1]:9103"
            ]
        );
        assert_eq!(
            config.nodes[1].url,
            "http://boxoffice-shard-1.boxoffice-shard:9101"
        );
        assert_eq!(config.node(), Some(1));
    }

    #[test]
    fn bad_lists_roles_and_secrets_are_refused() {
        let cases = [
            (Role::Front, "", SECRET, "lists no node"),
            (Role::Front, "https://a:1", SECRET, "http://"),
            (Role::Front, "http://a", SECRET, "names its port"),
            (Role::Front, "http://a:0", SECRET, "not a port"),
            (Role::Front, "http://a:1/x", SECRET, "no path"),
            (Role::Front, "http://a b:1", SECRET, "not a host"),
            (Role::Front, "http://a:1,http://a:1", SECRET, "listed twice"),
            (
                Role::Shard { node: 2 },
                "http://a:1,http://b:1",
                SECRET,
                "not in --cluster-nodes",
            ),
            (Role::Front, "http://a:1", "short", "at least 32"),
            (
                Role::Front,
                "http://a:1",
                "0123456789abcdef 0123456789abcdef",
                "visible ASCII",
            ),
        ];
        for (role, list, secret, expected) in cases {
            let error = ClusterConfig::new(role, list, secret).expect_err(list);
            assert!(error.contains(expected), "{list}: {error}");
        }
    }

    #[test]
    fn only_the_secret_matches() {
        let secret = Secret::new(SECRET).expect("valid");
        assert!(secret.matches(SECRET.as_bytes()));
        assert!(!secret.matches(b"0123456789abcdef0123456789abcdeX"));
        assert!(!secret.matches(b""));
    }
}

//! Where a concert's shards and a user live, decided by rendezvous (highest random weight) hashing over the node
//! list of the moment.
//!
//! - A concert's shards: the nodes are ranked by their score for the concert's id and shard `k` goes to the
//!   `k`-th of them, round the ranking: a hot concert spreads evenly over every node, and two concerts start on
//!   different nodes. The result is stored with the concert on every node and never recomputed, so adding nodes
//!   changes only where new concerts go.
//! - A user: the node with the highest score for the username, among the nodes listed when the user registered.
//!   Nodes are only ever appended, so a username that registered under a shorter list lives on the node that
//!   won among a prefix of today's list: [`user_candidates`] lists those nodes (usually one, rarely more), newest
//!   first, and a lookup asks them in that order. Registration goes to the first and checks the others.
//!
//! Scores are a stable hash (FNV-1a, then a 64-bit finaliser) of the key and the node number, so every process,
//! of every version, computes the same placement.

use engine::remote::NodeId;
use engine::shard_state::StableHasher;
use std::hash::Hasher;

/// The node that owns each shard of a new concert, over `nodes` shard nodes.
pub fn concert_placement(concert_id: &str, shards: u32, nodes: u32) -> Vec<NodeId> {
    assert!(nodes > 0, "a cluster has a node");
    let mut ranked: Vec<NodeId> = (0..nodes).collect();
    ranked.sort_by_key(|node| std::cmp::Reverse((score(concert_id.as_bytes(), *node), *node)));
    (0..shards)
        .map(|shard| ranked[(shard % nodes) as usize])
        .collect()
}

/// The nodes a user named `username` may live on, newest first: the first is where a new registration goes.
/// Usernames differing only in case are one username, placed alike.
pub fn user_candidates(username: &str, nodes: u32) -> Vec<NodeId> {
    assert!(nodes > 0, "a cluster has a node");
    let folded = username.to_ascii_lowercase();
    let mut winners: Vec<NodeId> = Vec::new();
    let mut best = None;
    for node in 0..nodes {
        let node_score = score(folded.as_bytes(), node);
        if best.is_none_or(|best| node_score > best) {
            best = Some(node_score);
            winners.push(node);
        }
    }
    winners.reverse();
    winners
}

/// The node a new user named `username` belongs to.
pub fn user_home(username: &str, nodes: u32) -> NodeId {
    user_candidates(username, nodes)[0]
}

fn score(key: &[u8], node: NodeId) -> u64 {
    let mut hasher = StableHasher::default();
    hasher.write(key);
    hasher.write(&[0xff]);
    hasher.write(&node.to_le_bytes());
    finalise(hasher.finish())
}

/// splitmix64's finaliser: FNV-1a alone leaves the high bits of near-identical keys close together.
fn finalise(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concert_is_spread_evenly_over_every_node() {
        for nodes in 1..=7u32 {
            for shards in [1u32, 3, 8, 32] {
                let placement = concert_placement("c_0123456789abcdef0123", shards, nodes);
                assert_eq!(placement.len(), shards as usize);
                let mut per_node = vec![0u32; nodes as usize];
                for node in &placement {
                    per_node[*node as usize] += 1;
                }
                let (min, max) = (per_node.iter().min(), per_node.iter().max());
                assert!(max.unwrap() - min.unwrap() <= 1, "{placement:?}");
            }
        }
    }

    #[test]
    fn concerts_start_on_different_nodes() {
        let firsts: std::collections::BTreeSet<NodeId> = (0..64)
            .map(|i| concert_placement(&format!("c_{i:020x}"), 1, 4)[0])
            .collect();
        assert_eq!(
            firsts.len(),
            4,
            "every node gets some concert's first shard"
        );
    }

    #[test]
    fn placement_is_the_same_in_every_process() {
        // Fixed values: a change here moves every user and concert of a running cluster.
        assert_eq!(concert_placement("c_fixed", 4, 3), [1, 0, 2, 1]);
        assert_eq!(user_candidates("alice", 3), [2, 0]);
        assert_eq!(user_candidates("bob", 5), [1, 0]);
        assert_eq!(user_candidates("ALICE", 3), user_candidates("alice", 3));
    }

    #[test]
    fn adding_nodes_keeps_every_user_among_its_candidates() {
        for i in 0..500 {
            let name = format!("user{i}");
            let mut homes = Vec::new();
            for nodes in 1..=9 {
                let home = user_home(&name, nodes);
                homes.push(home);
                let candidates = user_candidates(&name, nodes);
                for earlier in &homes {
                    assert!(candidates.contains(earlier), "{name}: {candidates:?}");
                }
                assert!(candidates.windows(2).all(|w| w[0] > w[1]), "newest first");
            }
        }
    }

    #[test]
    fn users_spread_over_nodes() {
        let mut per_node = [0u32; 3];
        for i in 0..3000 {
            per_node[user_home(&format!("buyer{i}"), 3) as usize] += 1;
        }
        assert!(per_node.iter().all(|count| *count > 900), "{per_node:?}");
    }
}

//! Which process answers a public request.
//!
//! Everything a user does goes to the node the user belongs to (its book, its card, its limits and idempotency
//! keys are there): a user's bearer token names that node (`N.random`), and a user id does too (`u_N-random`).
//! Registration goes to the node the username is placed on, a login to the node that has the username. What
//! any shard node can answer (concerts, seats, events, and the admin's requests that gather from every node) goes
//! to this node if it is a shard node, else to one of them. Health, metrics, the OpenAPI document and the web
//! page are this process's own.

use axum::http::Method;
use engine::ids::UserId;
use engine::remote::NodeId;

/// Where a request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// By this process.
    Here,
    /// By this shard node, or by any shard node when this process is a front.
    AnyShardNode,
    /// By shard node `node`.
    Node(NodeId),
    /// By the node the username in the body is placed on (`POST /users`).
    UsernameHome,
    /// By whichever node has the username in the body (`POST /users/verify`).
    UsernameOwner,
}

/// Separates the node from the random part of a user's bearer token in a cluster: `2.Zm9v...`.
pub const TOKEN_NODE_SEPARATOR: char = '.';

/// The node a bearer token of a cluster's user names.
pub fn token_node(token: &str) -> Option<NodeId> {
    let (node, rest) = token.split_once(TOKEN_NODE_SEPARATOR)?;
    let canonical = !node.is_empty()
        && node.len() <= 5
        && node.bytes().all(|b| b.is_ascii_digit())
        && (node == "0" || !node.starts_with('0'));
    (canonical && !rest.is_empty()).then(|| node.parse().ok())?
}

/// A token for a user of node `node`, from its random part.
pub fn node_token(node: NodeId, random: &str) -> String {
    format!("{node}{TOKEN_NODE_SEPARATOR}{random}")
}

/// Where a request goes. `bearer` is the request's bearer token, `is_admin` tells whether it is the admin's.
pub fn target(
    method: &Method,
    path: &str,
    bearer: Option<&str>,
    is_admin: impl Fn(&str) -> bool,
) -> Target {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Nothing under /internal/ is public: answered here, as a path that does not exist.
    if segments.first() == Some(&"internal") {
        return Target::Here;
    }
    // A registration and a login go where the username is, whatever token they carry.
    match (method, segments.as_slice()) {
        (&Method::POST, ["users"]) => return Target::UsernameHome,
        (&Method::POST, ["users", "verify"]) => return Target::UsernameOwner,
        _ => {}
    }
    let own = matches!(
        segments.as_slice(),
        [""] | ["app.js"]
            | ["app.css"]
            | ["health"]
            | ["health", "live" | "ready"]
            | ["metrics"]
            | ["openapi.json"]
    ) || matches!(segments.as_slice(), ["admin", "cluster"]);
    if own {
        return Target::Here;
    }
    match bearer {
        Some(token) if is_admin(token) => admin_target(&segments),
        // A user's request, whatever it asks for, goes to the user's node: it knows the token, and answers
        // `403` for what only the admin may do exactly as a single node would.
        Some(token) => match token_node(token) {
            Some(node) => Target::Node(node),
            // Not a token of this cluster: any node answers 401 the same way.
            None => Target::AnyShardNode,
        },
        None => Target::AnyShardNode,
    }
}

/// The admin's requests: those about one user go to the user's node, everything else to a shard node that
/// gathers from every node if it must.
fn admin_target(segments: &[&str]) -> Target {
    match segments {
        ["users", id, ..] if *id != "verify" && *id != "logout" => {
            match UserId::from(*id).home_node() {
                Some(node) => Target::Node(node),
                None => Target::AnyShardNode,
            }
        }
        _ => Target::AnyShardNode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";

    fn check(method: Method, path: &str, bearer: Option<&str>, expected: Target) {
        assert_eq!(
            target(&method, path, bearer, |token| token == ADMIN),
            expected,
            "{method} {path} {bearer:?}"
        );
    }

    #[test]
    fn requests_go_where_their_data_is() {
        let user = Some("2.abcdef");
        let cases = [
            (Method::GET, "/health", None, Target::Here),
            (Method::GET, "/health/live", None, Target::Here),
            (Method::GET, "/metrics", user, Target::Here),
            (Method::GET, "/", None, Target::Here),
            (Method::GET, "/app.js", None, Target::Here),
            (Method::GET, "/admin/cluster", Some(ADMIN), Target::Here),
            (Method::POST, "/users", None, Target::UsernameHome),
            (Method::POST, "/users/verify", None, Target::UsernameOwner),
            (Method::POST, "/orders", user, Target::Node(2)),
            (Method::POST, "/holds/h_1/purchase", user, Target::Node(2)),
            (Method::GET, "/users/u_0-ab/tickets", user, Target::Node(2)),
            (Method::POST, "/concerts", user, Target::Node(2)),
            (
                Method::POST,
                "/orders",
                Some("no-node"),
                Target::AnyShardNode,
            ),
            (Method::GET, "/users/u_1-ab", Some(ADMIN), Target::Node(1)),
            (Method::PUT, "/users/u_1-ab", Some(ADMIN), Target::Node(1)),
            (
                Method::GET,
                "/users/u_1-ab/tickets/t_1/qr",
                Some(ADMIN),
                Target::Node(1),
            ),
            (
                Method::GET,
                "/users/nonsense",
                Some(ADMIN),
                Target::AnyShardNode,
            ),
            (Method::GET, "/users", Some(ADMIN), Target::AnyShardNode),
            (
                Method::GET,
                "/orders/o_1",
                Some(ADMIN),
                Target::AnyShardNode,
            ),
            (
                Method::POST,
                "/tickets/verify",
                Some(ADMIN),
                Target::AnyShardNode,
            ),
            (Method::POST, "/concerts", Some(ADMIN), Target::AnyShardNode),
            (
                Method::GET,
                "/concerts/c_1/events",
                None,
                Target::AnyShardNode,
            ),
            (Method::GET, "/nowhere", None, Target::AnyShardNode),
            (
                Method::POST,
                "/internal/v1/shard",
                Some("1.x"),
                Target::Here,
            ),
            (Method::GET, "/internal/v1/concerts", None, Target::Here),
            (
                Method::POST,
                "/users",
                Some("2.abcdef"),
                Target::UsernameHome,
            ),
            (
                Method::POST,
                "/users/verify",
                Some(ADMIN),
                Target::UsernameOwner,
            ),
        ];
        for (method, path, bearer, expected) in cases {
            check(method, path, bearer, expected);
        }
    }

    #[test]
    fn a_token_names_its_node() {
        assert_eq!(token_node(&node_token(7, "Zm9v")), Some(7));
        assert_eq!(token_node("0.x"), Some(0));
        for bad in ["", "x", ".x", "1.", "01.x", "a.x", "999999.x", "Zm9v-_x"] {
            assert_eq!(token_node(bad), None, "{bad}");
        }
    }
}

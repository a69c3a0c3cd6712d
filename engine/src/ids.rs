//! Opaque identifiers and secret tokens.
//!
//! Ids are random, prefixed by what they name (`c_` concert, `u_` user, `h_` hold, `o_` order, `t_` ticket) so that a
//! misplaced id is obvious in a log line. Ticket tokens are 128 random bits: a token is what the gate scans, so it must
//! not be guessable from anything else a buyer sees.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A hash map keyed by what this node generated (ids, ticket tokens), never by a value a client chose: hashed
/// with foldhash (seeded per map) rather than SipHash, which cost about 3% of an order's CPU
/// (docs/performance.md). A map keyed by a client's value (an `Idempotency-Key`, a username) keeps the standard
/// library's `RandomState`.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Random bytes in an id: 80 bits, enough that ids never collide in one deployment.
const ID_RANDOM_BYTES: usize = 10;
/// Random bytes in a ticket token: 128 bits, as API.md requires.
pub const TOKEN_RANDOM_BYTES: usize = 16;

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn random() -> Self {
                Self(format!("{}{}", $prefix, random_hex(ID_RANDOM_BYTES)).into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.into())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value.into())
            }
        }
    };
}

id_type!(ConcertId, "c_");
id_type!(UserId, "u_");

/// Separates a user's node from the random part in the id of a user of a cluster: `u_2-3f9a...`.
const HOME_SEPARATOR: char = '-';

impl UserId {
    /// A fresh random id of a user who belongs to shard node `node` of a cluster.
    pub fn random_on(node: u32) -> Self {
        Self(
            format!(
                "{}{node}{HOME_SEPARATOR}{}",
                Self::PREFIX,
                random_hex(ID_RANDOM_BYTES)
            )
            .into(),
        )
    }

    /// The shard node a user of a cluster belongs to; `None` for an id without one (a single node's user).
    pub fn home_node(&self) -> Option<u32> {
        let (node, rest) = self
            .0
            .strip_prefix(Self::PREFIX)?
            .split_once(HOME_SEPARATOR)?;
        let canonical = !node.is_empty()
            && node.len() <= 5
            && node.bytes().all(|b| b.is_ascii_digit())
            && (node == "0" || !node.starts_with('0'));
        (canonical && !rest.is_empty()).then(|| node.parse().ok())?
    }
}
id_type!(HoldId, "h_");
id_type!(OrderId, "o_");
id_type!(TicketId, "t_");

/// `n` random bytes from the operating system's generator, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    hex::encode(bytes)
}

/// Fills `buf` from the thread-local cryptographically secure generator.
pub fn fill_random(buf: &mut [u8]) {
    use rand::RngExt;
    rand::rng().fill(buf);
}

/// A new ticket token: 128 random bits, hex encoded.
pub fn ticket_token() -> String {
    random_hex(TOKEN_RANDOM_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let a = OrderId::random();
        let b = OrderId::random();
        assert!(a.as_str().starts_with("o_"));
        assert_eq!(a.as_str().len(), 2 + 2 * ID_RANDOM_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn a_cluster_user_id_names_its_node() {
        let id = UserId::random_on(12);
        assert!(id.as_str().starts_with("u_12-"), "{id}");
        assert_eq!(id.home_node(), Some(12));
        assert_eq!(UserId::random_on(0).home_node(), Some(0));
        assert_eq!(UserId::random().home_node(), None);
        for malformed in [
            "u_-ab",
            "u_01-ab",
            "u_1-",
            "x_1-ab",
            "u_99999999-ab",
            "u_1a-b",
        ] {
            assert_eq!(UserId::from(malformed).home_node(), None, "{malformed}");
        }
    }

    #[test]
    fn tokens_are_128_bits() {
        let token = ticket_token();
        assert_eq!(token.len(), 2 * TOKEN_RANDOM_BYTES);
        assert_ne!(token, ticket_token());
    }
}

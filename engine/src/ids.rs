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
                Self(random_id($prefix))
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

/// Longest text [`random_text`] makes: a prefix and the hex digits of its random bytes.
const RANDOM_TEXT_BYTES_MAX: usize = 64;

/// `prefix` and [`ID_RANDOM_BYTES`] random bytes, hex encoded.
fn random_id(prefix: &str) -> Arc<str> {
    random_text(prefix, ID_RANDOM_BYTES)
}

/// `prefix` and `n` random bytes, hex encoded: built on the stack, then one allocation.
fn random_text(prefix: &str, n: usize) -> Arc<str> {
    let end = prefix.len() + 2 * n;
    assert!(end <= RANDOM_TEXT_BYTES_MAX, "a random text is short");
    let mut random = [0u8; RANDOM_TEXT_BYTES_MAX / 2];
    let random = &mut random[..n];
    fill_random(random);
    let mut text = [0u8; RANDOM_TEXT_BYTES_MAX];
    text[..prefix.len()].copy_from_slice(prefix.as_bytes());
    for (pair, byte) in text[prefix.len()..end]
        .chunks_exact_mut(2)
        .zip(random.iter())
    {
        pair.copy_from_slice(&hex_digits(*byte));
    }
    Arc::from(std::str::from_utf8(&text[..end]).expect("a prefix and hex digits are UTF-8"))
}

/// `byte` as two lowercase hex digits.
fn hex_digits(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 0x0f)],
    ]
}

/// `n` random bytes from the operating system's generator, hex encoded (one allocation, the text's).
pub fn random_hex(n: usize) -> String {
    let mut text = String::with_capacity(2 * n);
    let mut random = [0u8; 32];
    let mut left = n;
    while left > 0 {
        let chunk = &mut random[..left.min(32)];
        fill_random(chunk);
        for &byte in chunk.iter() {
            let [high, low] = hex_digits(byte);
            text.push(char::from(high));
            text.push(char::from(low));
        }
        left -= chunk.len();
    }
    text
}

/// Fills `buf` from the thread-local cryptographically secure generator.
pub fn fill_random(buf: &mut [u8]) {
    use rand::RngExt;
    rand::rng().fill(buf);
}

/// A new ticket token: 128 random bits, hex encoded. Shared text: the desk's ticket, its index and the shard's
/// record hold the same one.
pub fn ticket_token() -> Arc<str> {
    random_text("", TOKEN_RANDOM_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_two_lowercase_digits_a_byte() {
        for n in [0, 1, 16, 32, 33, 100] {
            let text = random_hex(n);
            assert_eq!(text.len(), 2 * n);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
        }
        assert_ne!(random_hex(16), random_hex(16));
        assert_eq!(hex_digits(0x00), *b"00");
        assert_eq!(hex_digits(0x9f), *b"9f");
        assert_eq!(hex_digits(0xa0), *b"a0");
    }

    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let a = OrderId::random();
        let b = OrderId::random();
        assert!(a.as_str().starts_with("o_"));
        assert_eq!(a.as_str().len(), 2 + 2 * ID_RANDOM_BYTES);
        assert!(
            a.as_str()[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert!(TicketId::random().as_str().starts_with("t_"));
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

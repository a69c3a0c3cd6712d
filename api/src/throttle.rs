//! Login throttling: failed `POST /users/verify` attempts are limited per username and per client address.
//!
//! Who calls: the login handler, before it verifies the password, so that a refused attempt costs no argon2 work
//! and a login storm cannot burn the CPU. Only failures count: registrations and successful logins from one
//! address (a load test logging in thousands of users from 127.0.0.1) are never throttled.
//!
//! - A username may fail `failures_per_username_max` times per window. Once it has failed, attempts still being
//!   checked count too, so concurrent guesses cannot pass the limit together; before any failure, at most
//!   [`ATTEMPTS_IN_FLIGHT_PER_USERNAME_MAX`] are checked at once (a legitimate client never needs more, and a
//!   first burst of guesses gets no further than that). Once the limit is reached, every attempt for that
//!   username is refused until the window ends, **even with the right password**: otherwise a guesser would learn
//!   from the refusals which guess was right. A success below the limit clears the username's failures.
//! - An address (IPv4, or an IPv6 /64, whose owner usually holds all of it) may fail `failures_per_address_max`
//!   times per window, whatever the usernames; a success does not clear it, so a guesser with an account of their
//!   own cannot reset it. Behind a reverse proxy every client shares the proxy's address: raise that limit there.
//! - A window starts with a key's first counted attempt and lasts `window_ms`; a refusal says how long remains
//!   (`Retry-After`). An attempt whose client hangs up before the answer counts as a failure.
//!
//! Each map tracks at most [`THROTTLE_KEYS_MAX`] keys; when full, the key whose window started first is
//! forgotten, so a flood of new keys costs memory only up to that bound.

use engine::clock::Clock;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Keys (usernames, or addresses) tracked per map at most; beyond that the oldest window is forgotten.
pub const THROTTLE_KEYS_MAX: usize = 100_000;
/// Default length of a throttling window.
pub const LOGIN_FAILURE_WINDOW_S_DEFAULT: u64 = 300;
/// Default failed logins per username per window.
pub const LOGIN_FAILURES_PER_USERNAME_MAX_DEFAULT: u32 = 5;
/// Default failed logins per client address per window.
pub const LOGIN_FAILURES_PER_ADDRESS_MAX_DEFAULT: u32 = 100;
/// Attempts for one username checked at once at most while it has no failure in its window; beyond that (and,
/// after a failure, beyond what the limit has left) an attempt is refused until one finishes.
pub const ATTEMPTS_IN_FLIGHT_PER_USERNAME_MAX: u32 = 16;
/// What a refusal asks the client to wait when only attempts still being checked are in the way.
const IN_FLIGHT_RETRY_AFTER_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub window_ms: u64,
    pub failures_per_username_max: u32,
    pub failures_per_address_max: u32,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            window_ms: LOGIN_FAILURE_WINDOW_S_DEFAULT * 1000,
            failures_per_username_max: LOGIN_FAILURES_PER_USERNAME_MAX_DEFAULT,
            failures_per_address_max: LOGIN_FAILURES_PER_ADDRESS_MAX_DEFAULT,
        }
    }
}

/// A refused attempt: how long until the window ends, in whole seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_s: u64,
}

pub struct LoginThrottle {
    limits: ThrottleLimits,
    clock: Arc<dyn Clock>,
    counters: Mutex<Counters>,
}

struct Counters {
    usernames: Windows<String>,
    addresses: Windows<IpAddr>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Failed,
    Succeeded,
    /// Not an answer about the password (overloaded, internal error): counts neither way.
    Abandoned,
}

/// One login attempt admitted by [`LoginThrottle::begin`]. Dropped without an outcome (the client hung up), it
/// counts as a failure.
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    username: String,
    address: Option<IpAddr>,
    ended: bool,
}

impl Attempt<'_> {
    pub fn failed(mut self) {
        self.end(Outcome::Failed);
    }

    pub fn succeeded(mut self) {
        self.end(Outcome::Succeeded);
    }

    pub fn abandoned(mut self) {
        self.end(Outcome::Abandoned);
    }

    fn end(&mut self, outcome: Outcome) {
        if !self.ended {
            self.ended = true;
            self.throttle.end(&self.username, self.address, outcome);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.end(Outcome::Failed);
    }
}

impl LoginThrottle {
    pub fn new(limits: ThrottleLimits, clock: Arc<dyn Clock>) -> Self {
        assert!(limits.window_ms > 0, "a throttling window has a length");
        assert!(
            limits.failures_per_username_max > 0 && limits.failures_per_address_max > 0,
            "a login may fail at least once"
        );
        Self {
            limits,
            clock,
            counters: Mutex::new(Counters {
                usernames: Windows::new(THROTTLE_KEYS_MAX),
                addresses: Windows::new(THROTTLE_KEYS_MAX),
            }),
        }
    }

    /// Admits a login attempt for `username` from `address`, or refuses it without any password work.
    pub fn begin(&self, username: &str, address: Option<IpAddr>) -> Result<Attempt<'_>, Throttled> {
        let now_ms = self.clock.now_ms();
        let window_ms = self.limits.window_ms;
        let address = address.map(address_key);
        let mut counters = self.counters.lock().expect("throttle lock");
        if let Some(entry) = counters.usernames.live(username, now_ms, window_ms) {
            let max = self.limits.failures_per_username_max;
            if entry.failures >= max {
                return Err(entry.throttled(now_ms, window_ms));
            }
            let in_flight_max = if entry.failures == 0 {
                ATTEMPTS_IN_FLIGHT_PER_USERNAME_MAX
            } else {
                max - entry.failures
            };
            if entry.in_flight >= in_flight_max {
                return Err(Throttled::after_ms(IN_FLIGHT_RETRY_AFTER_MS));
            }
        }
        if let Some(address) = &address
            && let Some(entry) = counters.addresses.live(address, now_ms, window_ms)
            && entry.failures >= self.limits.failures_per_address_max
        {
            return Err(entry.throttled(now_ms, window_ms));
        }
        counters
            .usernames
            .entry(username, now_ms, window_ms)
            .in_flight += 1;
        Ok(Attempt {
            throttle: self,
            username: username.to_owned(),
            address,
            ended: false,
        })
    }

    fn end(&self, username: &str, address: Option<IpAddr>, outcome: Outcome) {
        let now_ms = self.clock.now_ms();
        let window_ms = self.limits.window_ms;
        let mut counters = self.counters.lock().expect("throttle lock");
        counters.usernames.attempt_ended(username);
        match outcome {
            Outcome::Failed => {
                counters
                    .usernames
                    .entry(username, now_ms, window_ms)
                    .failures += 1;
                if let Some(address) = &address {
                    counters
                        .addresses
                        .entry(address, now_ms, window_ms)
                        .failures += 1;
                }
            }
            Outcome::Succeeded => counters.usernames.clear_failures(username),
            Outcome::Abandoned => {}
        }
    }

    /// Keys tracked now, usernames and addresses: the throttle's observable state for tests.
    pub fn tracked(&self) -> (usize, usize) {
        let counters = self.counters.lock().expect("throttle lock");
        (
            counters.usernames.entries.len(),
            counters.addresses.entries.len(),
        )
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 network.
pub(crate) fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(network.into())
        }
        v4 => v4,
    }
}

impl Throttled {
    fn after_ms(remaining_ms: u64) -> Self {
        Self {
            retry_after_s: remaining_ms.div_ceil(1000).max(1),
        }
    }
}

pub(crate) struct Entry {
    started_ms: u64,
    pub(crate) failures: u32,
    in_flight: u32,
}

impl Entry {
    pub(crate) fn throttled(&self, now_ms: u64, window_ms: u64) -> Throttled {
        Throttled::after_ms((self.started_ms + window_ms).saturating_sub(now_ms))
    }
}

/// Counters per key, each for a window that starts with the key's first counted attempt.
pub(crate) struct Windows<K> {
    entries: HashMap<K, Entry>,
    /// When each window started, oldest first: how expired windows are dropped and the oldest is evicted. An
    /// element whose entry was since restarted or removed is stale and skipped.
    started: VecDeque<(u64, K)>,
    keys_max: usize,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    pub(crate) fn new(keys_max: usize) -> Self {
        assert!(keys_max > 0, "at least one key is tracked");
        Self {
            entries: HashMap::new(),
            started: VecDeque::new(),
            keys_max,
        }
    }

    /// The key's entry if its window is still open.
    pub(crate) fn live<Q>(&self, key: &Q, now_ms: u64, window_ms: u64) -> Option<&Entry>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|entry| entry.started_ms + window_ms > now_ms)
    }

    /// The key's entry, with a fresh window if it had none open; attempts in flight carry over.
    pub(crate) fn entry<Q>(&mut self, key: &Q, now_ms: u64, window_ms: u64) -> &mut Entry
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.drop_expired(now_ms, window_ms);
        let open = self.live(key, now_ms, window_ms).is_some();
        if !open {
            let in_flight = self.entries.get(key).map_or(0, |entry| entry.in_flight);
            if !self.entries.contains_key(key) && self.entries.len() >= self.keys_max {
                self.evict_oldest();
            }
            self.entries.insert(
                key.to_owned(),
                Entry {
                    started_ms: now_ms,
                    failures: 0,
                    in_flight,
                },
            );
            self.started.push_back((now_ms, key.to_owned()));
            self.compact();
        }
        self.entries.get_mut(key).expect("inserted above")
    }

    fn attempt_ended<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    fn clear_failures<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures = 0;
            if entry.in_flight == 0 {
                self.entries.remove(key);
            }
        }
    }

    fn is_current(&self, started_ms: u64, key: &K) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.started_ms == started_ms)
    }

    /// Forgets windows that have ended; they sit at the front, since windows are started in time order.
    fn drop_expired(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((started_ms, _)) = self.started.front()
            && started_ms + window_ms <= now_ms
        {
            let (started_ms, key) = self.started.pop_front().expect("front exists");
            if self.is_current(started_ms, &key) {
                self.entries.remove(&key);
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((started_ms, key)) = self.started.pop_front() {
            if self.is_current(started_ms, &key) {
                self.entries.remove(&key);
                return;
            }
        }
    }

    /// Drops stale elements once they outnumber the entries, so that the queue stays within twice the bound
    /// however many windows are started and cleared (a login storm of successes).
    fn compact(&mut self) {
        if self.started.len() > 2 * self.keys_max {
            let entries = &self.entries;
            self.started.retain(|(started_ms, key)| {
                entries
                    .get(key)
                    .is_some_and(|entry| entry.started_ms == *started_ms)
            });
        }
    }
}

#[cfg(test)]
mod tests;

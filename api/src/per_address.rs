//! What one client address may take: sign-ups per window, and tickets in live holds.
//!
//! Who calls: `POST /users` ([`SignupThrottle`]) and `POST /holds`, `DELETE /holds/{id}`,
//! `POST /holds/{id}/purchase` ([`HeldByAddress`]). Both count by the key [`crate::throttle`] counts failed
//! logins by (an IPv4 address, or an IPv6 /64), and never a request without an address (the app served
//! without a socket, in tests).
//!
//! Seat spinning is the bot operator's attack on a high-demand sale: accounts registered in a loop hold every
//! seat, real buyers get `sold_out`, and the holds are taken again as they expire. Three limits stop one address
//! from doing it: a hold needs a card the payment provider accepted (`users::UserStore::check_card_on_file`),
//! sign-ups per address are limited per window, and so are the tickets an address holds at once. A bot with many
//! addresses is not stopped by these; a queue or a challenge in front of the sale is the answer to that.
//!
//! Behind a reverse proxy every client has the proxy's address unless the proxy is named with
//! `--trusted-proxy` (then the address it puts in `X-Forwarded-For` counts; see `connections::ClientIp`).
//! In a cluster each shard node counts the requests it serves (a user's holds are served by the user's node,
//! a registration by the username's), so one address may take up to the limit on each node.

use crate::throttle::{Throttled, Windows, address_key};
use engine::clock::Clock;
use engine::ids::HoldId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Default sign-ups per client address per window.
pub const SIGNUPS_PER_ADDRESS_MAX_DEFAULT: u32 = 10;
/// Default length of the sign-up window.
pub const SIGNUP_WINDOW_S_DEFAULT: u64 = 3_600;
/// Default tickets one client address may hold at once (live holds, over every concert).
pub const HELD_TICKETS_PER_ADDRESS_MAX_DEFAULT: u32 = 20;
/// Addresses whose sign-ups are counted at most; beyond that the oldest window is forgotten.
pub const SIGNUP_ADDRESSES_MAX: usize = 100_000;

/// Registrations per address per window.
pub struct SignupThrottle {
    per_address_max: u32,
    window_ms: u64,
    clock: Arc<dyn Clock>,
    windows: Mutex<Windows<IpAddr>>,
}

impl SignupThrottle {
    pub fn new(per_address_max: u32, window_ms: u64, clock: Arc<dyn Clock>) -> Self {
        assert!(
            per_address_max > 0 && window_ms > 0,
            "a sign-up is possible"
        );
        Self {
            per_address_max,
            window_ms,
            clock,
            windows: Mutex::new(Windows::new(SIGNUP_ADDRESSES_MAX)),
        }
    }

    /// Counts a registration from `address`, or refuses it (with how long until the window ends) when the
    /// address has had its share. Counted before any password work, whether the registration then succeeds.
    pub fn admit(&self, address: Option<IpAddr>) -> Result<(), Throttled> {
        let Some(address) = address.map(address_key) else {
            return Ok(());
        };
        let now_ms = self.clock.now_ms();
        let mut windows = self.windows.lock().expect("sign-up throttle lock");
        if let Some(entry) = windows.live(&address, now_ms, self.window_ms)
            && entry.failures >= self.per_address_max
        {
            return Err(entry.throttled(now_ms, self.window_ms));
        }
        // The entry's `failures` counts sign-ups here.
        windows.entry(&address, now_ms, self.window_ms).failures += 1;
        Ok(())
    }
}

/// Tickets in live holds per address.
pub struct HeldByAddress {
    per_address_max: u32,
    clock: Arc<dyn Clock>,
    inner: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_address: HashMap<IpAddr, Vec<HeldEntry>>,
    address_of: HashMap<HoldId, IpAddr>,
}

struct HeldEntry {
    /// `None` while the hold is being placed.
    hold: Option<HoldId>,
    /// Unique per entry, so that a pending entry can be found again.
    serial: u64,
    tickets: u32,
    /// Until then the tickets count; `u64::MAX` while pending.
    expires_at_ms: u64,
}

/// Tickets an address was allowed to hold, while the hold is being placed: [`HeldPending::placed`] keeps them
/// counted until the hold ends; dropped, they are given back.
pub struct HeldPending<'a> {
    held: &'a HeldByAddress,
    address: Option<(IpAddr, u64)>,
}

/// A refused hold: the address holds `limit` tickets already (or would with this one); the first of its holds
/// ends in `retry_after_s` (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLimitReached {
    pub limit: u32,
    pub retry_after_s: u64,
}

impl HeldByAddress {
    pub fn new(per_address_max: u32, clock: Arc<dyn Clock>) -> Self {
        assert!(per_address_max > 0, "a ticket can be held");
        Self {
            per_address_max,
            clock,
            inner: Mutex::new(Held::default()),
        }
    }

    /// Counts `tickets` about to be held from `address`, or refuses them when the address would hold more than
    /// its share.
    pub fn take(
        &self,
        address: Option<IpAddr>,
        tickets: u32,
    ) -> Result<HeldPending<'_>, HeldLimitReached> {
        let Some(address) = address.map(address_key) else {
            return Ok(HeldPending {
                held: self,
                address: None,
            });
        };
        let now_ms = self.clock.now_ms();
        let mut inner = self.inner.lock().expect("held lock");
        let Held {
            by_address,
            address_of,
        } = &mut *inner;
        let entries = by_address.entry(address).or_default();
        entries.retain(|entry| {
            let live = entry.expires_at_ms > now_ms;
            if !live && let Some(hold) = &entry.hold {
                address_of.remove(hold);
            }
            live
        });
        let held: u64 = entries.iter().map(|entry| u64::from(entry.tickets)).sum();
        if held + u64::from(tickets) > u64::from(self.per_address_max) {
            let first_end_ms = entries
                .iter()
                .map(|entry| entry.expires_at_ms)
                .filter(|expires_at_ms| *expires_at_ms != u64::MAX)
                .min()
                .unwrap_or(now_ms);
            if entries.is_empty() {
                by_address.remove(&address);
            }
            return Err(HeldLimitReached {
                limit: self.per_address_max,
                retry_after_s: first_end_ms.saturating_sub(now_ms).div_ceil(1000).max(1),
            });
        }
        let serial = rand::random::<u64>();
        entries.push(HeldEntry {
            hold: None,
            serial,
            tickets,
            expires_at_ms: u64::MAX,
        });
        Ok(HeldPending {
            held: self,
            address: Some((address, serial)),
        })
    }

    /// The hold ended (cancelled or purchased): its tickets no longer count.
    pub fn ended(&self, hold: &HoldId) {
        let mut inner = self.inner.lock().expect("held lock");
        let Some(address) = inner.address_of.remove(hold) else {
            return;
        };
        if let Some(entries) = inner.by_address.get_mut(&address) {
            entries.retain(|entry| entry.hold.as_ref() != Some(hold));
            if entries.is_empty() {
                inner.by_address.remove(&address);
            }
        }
    }

    /// Tickets `address` holds now: what the limit counts.
    pub fn held(&self, address: IpAddr) -> u32 {
        let now_ms = self.clock.now_ms();
        let inner = self.inner.lock().expect("held lock");
        inner
            .by_address
            .get(&address_key(address))
            .into_iter()
            .flatten()
            .filter(|entry| entry.expires_at_ms > now_ms)
            .map(|entry| entry.tickets)
            .sum()
    }

    fn settle(&self, address: IpAddr, serial: u64, placed: Option<(HoldId, u64)>) {
        let mut inner = self.inner.lock().expect("held lock");
        let Held {
            by_address,
            address_of,
        } = &mut *inner;
        let Some(entries) = by_address.get_mut(&address) else {
            return;
        };
        match placed {
            Some((hold, expires_at_ms)) => {
                if let Some(entry) = entries.iter_mut().find(|entry| entry.serial == serial) {
                    entry.hold = Some(hold.clone());
                    entry.expires_at_ms = expires_at_ms;
                    address_of.insert(hold, address);
                }
            }
            None => {
                entries.retain(|entry| entry.serial != serial);
                if entries.is_empty() {
                    by_address.remove(&address);
                }
            }
        }
    }
}

impl HeldPending<'_> {
    /// The hold was placed: its tickets count until `expires_at_ms` or until it ends.
    pub fn placed(mut self, hold: HoldId, expires_at_ms: u64) {
        if let Some((address, serial)) = self.address.take() {
            self.held
                .settle(address, serial, Some((hold, expires_at_ms)));
        }
    }
}

impl Drop for HeldPending<'_> {
    fn drop(&mut self) {
        if let Some((address, serial)) = self.address.take() {
            self.held.settle(address, serial, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::clock::ManualClock;
    use std::net::Ipv4Addr;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn sign_ups_are_counted_per_address_per_window() {
        let clock = ManualClock::new(NOW_MS);
        let throttle = SignupThrottle::new(3, 60_000, Arc::new(clock.clone()));
        for _ in 0..3 {
            assert_eq!(throttle.admit(ip(1)), Ok(()));
        }
        assert_eq!(throttle.admit(ip(1)), Err(Throttled { retry_after_s: 60 }));
        assert_eq!(
            throttle.admit(ip(2)),
            Ok(()),
            "another address has its own share"
        );
        assert_eq!(throttle.admit(None), Ok(()), "no address, nothing to count");
        clock.advance_ms(60_000);
        assert_eq!(throttle.admit(ip(1)), Ok(()), "a new window");
    }

    #[test]
    fn an_address_holds_at_most_its_share_until_holds_end() {
        let clock = ManualClock::new(NOW_MS);
        let held = HeldByAddress::new(10, Arc::new(clock.clone()));
        let address = ip(7).expect("an address");
        held.take(ip(7), 6)
            .expect("room")
            .placed(HoldId("h_a".into()), NOW_MS + 1_000);
        assert_eq!(held.held(address), 6);
        assert_eq!(
            held.take(ip(7), 5).err(),
            Some(HeldLimitReached {
                limit: 10,
                retry_after_s: 1
            })
        );
        // A hold being placed counts; one that failed gives its tickets back.
        let pending = held.take(ip(7), 4).expect("room for 4");
        assert_eq!(held.held(address), 10, "a hold being placed counts");
        assert!(held.take(ip(7), 1).is_err());
        drop(pending);
        held.take(ip(7), 4)
            .expect("given back")
            .placed(HoldId("h_b".into()), NOW_MS + 5_000);
        assert_eq!(held.held(address), 10);
        // Cancelled or purchased: no longer counted.
        held.ended(&HoldId("h_a".into()));
        assert_eq!(held.held(address), 4);
        // Expired: no longer counted.
        clock.advance_ms(5_000);
        assert_eq!(held.held(address), 0);
        assert!(held.take(ip(7), 10).is_ok());
        assert!(
            held.take(None, 1_000).is_ok(),
            "no address, nothing to count"
        );
    }
}

//! The throttle against an injected clock: windows end by a clock step, never a sleep.

use super::*;
use engine::clock::ManualClock;
use std::net::{Ipv4Addr, Ipv6Addr};

const WINDOW_MS: u64 = 60_000;
const PER_USERNAME: u32 = 3;
const PER_ADDRESS: u32 = 5;

fn throttle() -> (LoginThrottle, ManualClock) {
    let clock = ManualClock::new(1_700_000_000_000);
    let limits = ThrottleLimits {
        window_ms: WINDOW_MS,
        failures_per_username_max: PER_USERNAME,
        failures_per_address_max: PER_ADDRESS,
    };
    (LoginThrottle::new(limits, Arc::new(clock.clone())), clock)
}

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

/// One step of a scenario: an attempt and how it ends, or a clock step.
enum Step {
    /// `(username, address, password right)`: admitted, and ends as the password says.
    Try(&'static str, Option<IpAddr>, bool),
    /// `(username, address, retry_after_s)`: refused before any password work.
    Refused(&'static str, Option<IpAddr>, u64),
    Advance(u64),
}

use Step::*;

/// Runs the steps in order against a fresh throttle; a step that does not turn out as written fails the test.
fn check(steps: &[Step]) {
    let (throttle, clock) = throttle();
    for (index, step) in steps.iter().enumerate() {
        match step {
            Try(username, address, right) => {
                let attempt = throttle
                    .begin(username, *address)
                    .unwrap_or_else(|refused| panic!("step {index}: refused: {refused:?}"));
                if *right {
                    attempt.succeeded();
                } else {
                    attempt.failed();
                }
            }
            Refused(username, address, retry_after_s) => match throttle.begin(username, *address) {
                Ok(_) => panic!("step {index}: admitted"),
                Err(refused) => assert_eq!(refused.retry_after_s, *retry_after_s, "step {index}"),
            },
            Advance(ms) => clock.advance_ms(*ms),
        }
    }
}

#[test]
fn failures_per_username_are_limited_and_even_the_right_password_waits() {
    check(&[
        Try("alice", ip(1), false),
        Advance(10_000),
        Try("alice", ip(2), false),
        Try("alice", ip(3), false),
        Refused("alice", ip(4), 50),
        // The right password is refused too: otherwise the refusals would tell a guesser which guess was right.
        Refused("alice", None, 50),
        Try("bob", ip(1), true),
        Try("bob", ip(1), false),
        Advance(49_999),
        Refused("alice", ip(1), 1),
        Advance(1),
        Try("alice", ip(1), true),
    ]);
}

#[test]
fn a_success_below_the_limit_clears_the_username_but_not_the_address() {
    check(&[
        Try("alice", ip(1), false),
        Try("alice", ip(1), false),
        Try("alice", ip(1), true),
        Try("alice", ip(1), false),
        Try("alice", ip(1), false),
        Try("carol", ip(1), false),
        // Five failures from 10.0.0.1 in all, whatever the successes between them.
        Refused("carol", ip(1), 60),
        Refused("alice", ip(1), 60),
        Try("carol", ip(2), true),
        Try("alice", None, false),
        Refused("alice", None, 60),
    ]);
}

#[test]
fn failures_per_address_are_limited_over_many_usernames() {
    check(&[
        Try("a", ip(9), false),
        Try("b", ip(9), false),
        Try("c", ip(9), false),
        Try("d", ip(9), false),
        Advance(30_000),
        Try("e", ip(9), false),
        Refused("f", ip(9), 30),
        Try("f", ip(8), true),
        Advance(30_000),
        Try("f", ip(9), true),
    ]);
}

#[test]
fn successes_are_never_throttled() {
    let (throttle, _clock) = throttle();
    for i in 0..10_000 {
        let username = format!("user{i}");
        throttle
            .begin(&username, ip(1))
            .expect("a login from a busy address")
            .succeeded();
        throttle
            .begin("same", ip(1))
            .expect("the same user logs in again")
            .succeeded();
    }
    assert_eq!(throttle.tracked(), (0, 0), "successes leave nothing behind");
}

#[test]
fn concurrent_guesses_cannot_pass_the_username_limit_together() {
    let (throttle, _clock) = throttle();
    // Before any failure, a burst is checked up to the in-flight bound: legitimate clients never need more.
    let burst: Vec<_> = (0..20)
        .filter_map(|_| throttle.begin("alice", None).ok())
        .collect();
    assert_eq!(burst.len(), ATTEMPTS_IN_FLIGHT_PER_USERNAME_MAX as usize);
    assert_eq!(
        throttle.begin("alice", None).err(),
        Some(Throttled { retry_after_s: 1 }),
        "only attempts in flight stand in the way: retry shortly"
    );
    for attempt in burst {
        attempt.failed();
    }
    assert_eq!(
        throttle.begin("alice", None).err(),
        Some(Throttled { retry_after_s: 60 })
    );

    // After a failure, attempts in flight count against what the limit has left.
    throttle.begin("bob", None).expect("admitted").failed();
    let admitted: Vec<_> = (0..10)
        .filter_map(|_| throttle.begin("bob", None).ok())
        .collect();
    assert_eq!(admitted.len(), PER_USERNAME as usize - 1);
    for attempt in admitted {
        attempt.failed();
    }
    assert_eq!(
        throttle.begin("bob", None).err(),
        Some(Throttled { retry_after_s: 60 })
    );
}

#[test]
fn an_attempt_dropped_without_an_answer_counts_as_a_failure_and_an_abandoned_one_does_not() {
    let (throttle, _clock) = throttle();
    for _ in 0..PER_USERNAME {
        throttle.begin("alice", None).expect("admitted").abandoned();
    }
    for _ in 0..PER_USERNAME {
        drop(throttle.begin("alice", None).expect("admitted"));
    }
    assert!(throttle.begin("alice", None).is_err());
}

#[test]
fn ipv6_addresses_count_by_their_64_network_and_mapped_ipv4_as_ipv4() {
    let (throttle, _clock) = throttle();
    for host in 0..u16::try_from(PER_ADDRESS).expect("small") {
        let address = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, host);
        throttle
            .begin(&format!("user{host}"), Some(IpAddr::V6(address)))
            .expect("admitted")
            .failed();
    }
    let neighbour = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 1);
    assert!(throttle.begin("x", Some(IpAddr::V6(neighbour))).is_err());
    let elsewhere = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1);
    assert!(throttle.begin("x", Some(IpAddr::V6(elsewhere))).is_ok());

    assert_eq!(
        address_key(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    );
}

#[test]
fn the_maps_are_bounded_and_forget_the_oldest_window_first() {
    let mut windows: Windows<String> = Windows::new(3);
    for (at_ms, key) in [(0, "a"), (1, "b"), (2, "c"), (3, "d")] {
        windows.entry(key, at_ms, WINDOW_MS).failures += 1;
    }
    assert_eq!(windows.entries.len(), 3);
    assert!(!windows.entries.contains_key("a"), "the oldest is evicted");
    // Windows that ended are dropped as new ones start.
    windows.entry("e", WINDOW_MS + 2, WINDOW_MS);
    assert_eq!(windows.entries.len(), 2);
    // Started and cleared windows leave stale elements behind; they never pile up past twice the bound.
    for at_ms in 0..100 {
        windows.entry("f", WINDOW_MS + 3 + at_ms, WINDOW_MS);
        windows.clear_failures("f");
        assert!(windows.started.len() <= 2 * 3 + 1);
    }
}

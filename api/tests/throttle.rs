//! Login throttling over HTTP: failed `POST /users/verify` attempts are limited per username and per client
//! address (here always 127.0.0.1), with `429 too_many_attempts` and a `Retry-After`; successes never count.
//! The windows themselves are tested against an injected clock in `api/src/throttle/tests.rs`.

mod common;

use common::{GOOD_CARD, Reply, Server};
use serde_json::json;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

async fn login(server: &Server, username: &str, password: &str) -> Reply {
    server
        .post(
            "/users/verify",
            None,
            json!({"username": username, "password": password}),
        )
        .await
}

fn assert_throttled(reply: &Reply, window_s: u64) {
    reply.expect_error(429, "too_many_attempts");
    let retry_after: u64 = reply
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=window_s).contains(&retry_after),
        "Retry-After {retry_after} within the window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_for_one_username_are_throttled_and_others_are_not() {
    let server = Server::start(&["--login-failures-per-username-max", "3"]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;
    server.register("bob", GOOD_CARD).await;
    for _ in 0..3 {
        login(&server, "alice", "wrong password")
            .await
            .expect_error(401, "invalid_credentials");
    }
    assert_throttled(&login(&server, "alice", "wrong password").await, 300);
    // The right password is refused too until the window ends: otherwise a guesser would learn which guess was
    // right from the one attempt that is not refused.
    assert_throttled(&login(&server, "alice", PASSWORD).await, 300);
    // Another username from the same address is not affected; nor is an unknown one.
    login(&server, "bob", PASSWORD).await.expect(200);
    login(&server, "nobody", "wrong password")
        .await
        .expect_error(401, "invalid_credentials");
    // A token alice already has keeps working: the throttle guards logins, not tokens.
    server
        .get(&format!("/users/{alice_id}"), Some(&alice))
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_one_address_are_throttled_over_all_usernames() {
    let server = Server::start(&["--login-failures-per-address-max", "4"]);
    server.register("alice", GOOD_CARD).await;
    for name in ["x1", "x2", "x3", "x4"] {
        login(&server, name, "wrong password")
            .await
            .expect_error(401, "invalid_credentials");
    }
    assert_throttled(&login(&server, "alice", PASSWORD).await, 300);
    // Registration is never throttled.
    server.register("dave", GOOD_CARD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_logins_from_one_address_are_never_throttled() {
    let server = Server::start(&[
        "--login-failures-per-username-max",
        "2",
        "--login-failures-per-address-max",
        "3",
    ]);
    let users = server.register_many("load", 40, GOOD_CARD).await;
    assert_eq!(users.len(), 40);
    for round in 0..3 {
        let logins = futures_util::future::join_all((0..40).map(|i| {
            let server = &server;
            async move { login(server, &format!("load{i}"), PASSWORD).await }
        }))
        .await;
        for reply in logins {
            assert_eq!(reply.status.as_u16(), 200, "round {round}: {}", reply.body);
        }
        // A mistyped password now and then, below the limits, changes nothing.
        if round < 2 {
            login(&server, "load0", "typo password")
                .await
                .expect_error(401, "invalid_credentials");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_username_logs_in_again_once_the_window_has_passed() {
    let server = Server::start(&[
        "--login-failures-per-username-max",
        "2",
        "--login-failure-window-s",
        "1",
    ]);
    server.register("alice", GOOD_CARD).await;
    for _ in 0..2 {
        let reply = login(&server, "alice", "wrong password").await;
        assert!(
            [401, 429].contains(&reply.status.as_u16()),
            "{}",
            reply.body
        );
    }
    // Whether the one-second window is still open depends on how fast the machine is: wait as told, at most a
    // few times (a hang detector, not a timing assertion).
    for _ in 0..10 {
        let reply = login(&server, "alice", PASSWORD).await;
        if reply.status.as_u16() == 200 {
            return;
        }
        assert_throttled(&reply, 1);
        let wait_s: u64 = reply
            .retry_after
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        tokio::time::sleep(Duration::from_secs(wait_s)).await;
    }
    panic!("still throttled long after the window");
}

//! `POST /admin/users/bulk`, the load tests' way to set up buyers: only the admin may call it; it is all or
//! nothing and bounded; its users have a card and a token but no password; and they are durable before the 201,
//! so they still order after the node is killed and restarted.

mod common;

use common::{ADMIN_TOKEN, GOOD_CARD, Server};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn bulk(prefix: &str, count: u64) -> Value {
    json!({
        "prefix": prefix,
        "count": count,
        "card": {"type": "visa", "holder_name": "Load Buyer", "number": GOOD_CARD,
                 "exp_month": 12, "exp_year": 2030, "cvv": "123"},
    })
}

/// Usernames of every user, through `GET /users`.
async fn usernames(server: &Server) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut offset = Some(0);
    while let Some(at) = offset {
        let page = server
            .get(&format!("/users?offset={at}&limit=1000"), Some(ADMIN_TOKEN))
            .await
            .expect(200);
        for user in page["users"].as_array().expect("users") {
            names.insert(user["username"].as_str().expect("username").to_owned());
        }
        offset = page["next_offset"].as_u64();
    }
    names
}

/// `(id, username, token)` of each user a bulk answer lists.
fn created(body: &Value) -> Vec<(String, String, String)> {
    body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| {
            let field = |name: &str| user[name].as_str().expect(name).to_owned();
            (field("id"), field("username"), field("token"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_creates_users_in_bulk() {
    let server = Server::start(&[]);
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    server
        .post("/admin/users/bulk", None, bulk("anonymous-", 2))
        .await
        .expect_error(401, "unauthorized");
    server
        .post("/admin/users/bulk", Some(&alice), bulk("alice-", 2))
        .await
        .expect_error(403, "forbidden");
    let body = server
        .post("/admin/users/bulk", Some(ADMIN_TOKEN), bulk("load-", 3))
        .await
        .expect(201);
    let users = created(&body);
    let names: Vec<&str> = users.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, ["load-0", "load-1", "load-2"], "in index order");
    let ids: BTreeSet<&String> = users.iter().map(|(id, _, _)| id).collect();
    let tokens: BTreeSet<&String> = users.iter().map(|(_, _, token)| token).collect();
    assert_eq!(
        (ids.len(), tokens.len()),
        (3, 3),
        "each its own id and token"
    );
    assert_eq!(
        usernames(&server).await,
        ["alice", "load-0", "load-1", "load-2"]
            .map(str::to_owned)
            .into(),
        "the refused calls created nobody"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_call_is_all_or_nothing_and_bounded() {
    let server = Server::start(&[]);
    server.register("load-7", GOOD_CARD).await;
    server
        .post("/admin/users/bulk", Some(ADMIN_TOKEN), bulk("load-", 10))
        .await
        .expect_error(409, "username_taken");
    assert_eq!(usernames(&server).await.len(), 1, "nothing created");

    let long_prefix = "p".repeat(63);
    let mut bad_card = bulk("card-", 2);
    bad_card["card"]["number"] = json!("4242424242424241");
    let mut unknown_field = bulk("field-", 2);
    unknown_field["password"] = json!("not for bulk users");
    for (body, why) in [
        (bulk("zero-", 0), "no users"),
        (bulk("many-", 10_001), "over the limit"),
        (bulk("a", 1), "a username of two characters"),
        (bulk(&long_prefix, 11), "a username of 65 characters"),
        (bulk("with space-", 1), "a space"),
        (bad_card, "a card number with a wrong check digit"),
    ] {
        let reply = server
            .post("/admin/users/bulk", Some(ADMIN_TOKEN), body)
            .await;
        assert_eq!(reply.status, 422, "{why}: {}", reply.body);
    }
    let reply = server
        .post("/admin/users/bulk", Some(ADMIN_TOKEN), unknown_field)
        .await;
    assert!(
        [400, 422].contains(&reply.status.as_u16()),
        "an unknown field: {}",
        reply.body
    );
    assert_eq!(usernames(&server).await.len(), 1, "nothing created");

    let body = server
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            bulk(&long_prefix, 10),
        )
        .await
        .expect(201);
    assert_eq!(created(&body).len(), 10, "64 characters is a username");
    let body = server
        .post("/admin/users/bulk", Some(ADMIN_TOKEN), bulk("max-", 10_000))
        .await
        .expect(201);
    assert_eq!(created(&body).len(), 10_000);
    assert_eq!(usernames(&server).await.len(), 1 + 10 + 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_users_have_a_card_and_a_token_but_no_password() {
    let server = Server::start(&[]);
    let body = server
        .post("/admin/users/bulk", Some(ADMIN_TOKEN), bulk("buyer-", 2))
        .await
        .expect(201);
    let users = created(&body);
    let (id, _, token) = &users[0];
    let profile = server
        .get(&format!("/users/{id}"), Some(token))
        .await
        .expect(200);
    assert_eq!(profile["card"]["last4"], "4242");
    assert!(profile.get("password").is_none() && profile["card"].get("number").is_none());
    server
        .get(&format!("/users/{}", users[1].0), Some(token))
        .await
        .expect_error(403, "forbidden");
    // Not even the password of the hash that unknown usernames are checked against.
    for password in ["correct horse battery", "decoy password that nobody has"] {
        server
            .post(
                "/users/verify",
                None,
                json!({"username": "buyer-0", "password": password}),
            )
            .await
            .expect_error(401, "invalid_credentials");
    }
}

/// Whether any file under `dir` contains `needle` (api/tests/secrets.rs scans every encoding; the bulk path seals
/// with the same code, so the plain bytes suffice here).
fn contains_in_files(dir: &std::path::Path, needle: &[u8]) -> bool {
    common::files(dir)
        .iter()
        .any(|(_, bytes)| bytes.windows(needle.len()).any(|window| window == needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_users_still_order_after_the_node_is_killed() {
    const BUYERS: u64 = 20;
    let server = Server::start(&[]);
    let general = server.create_general(BUYERS, 2, 1_000).await;
    let body = server
        .post(
            "/admin/users/bulk",
            Some(ADMIN_TOKEN),
            bulk("durable-", BUYERS),
        )
        .await
        .expect(201);
    let users = created(&body);
    let data_dir = server.kill();
    for secret in [GOOD_CARD, "Load Buyer", users[0].2.as_str()] {
        assert!(
            !contains_in_files(data_dir.path(), secret.as_bytes()),
            "{secret:?} is on disk in plaintext"
        );
    }

    let server = Server::start_in(data_dir, &[]);
    for (_, _, token) in &users {
        let order = server
            .post(
                "/orders",
                Some(token),
                json!({"concert_id": general, "quantity": 1}),
            )
            .await
            .expect(201);
        assert_eq!(order["status"], "confirmed");
    }
    assert_eq!(server.availability(&general).await, (0, 0, BUYERS, BUYERS));
    assert_eq!(usernames(&server).await.len() as u64, BUYERS);
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "durable-0", "password": "any password at all"}),
        )
        .await
        .expect_error(401, "invalid_credentials");
}

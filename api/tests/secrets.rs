//! Secrets at rest and in logs: after a sale with known card numbers, cvvs, holder names, addresses, passwords and
//! bearer tokens, none of them appears in any file of the data dir, nor in the server's log at `debug`, in any
//! encoding (plain, hex, base64). And the cards still work after a restart, so they were encrypted, not dropped.

mod common;

use base64::Engine as _;
use common::{ADMIN_TOKEN, Server, occurs};
use serde_json::{Value, json};

struct Buyer {
    username: &'static str,
    password: &'static str,
    number: &'static str,
    cvv: &'static str,
    holder: &'static str,
    street: &'static str,
}

const BUYERS: [Buyer; 2] = [
    Buyer {
        username: "zebulon",
        password: "aubergine telescope 1987",
        number: "4000056655665556",
        cvv: "7391",
        holder: "Zebulon Quartermaine",
        street: "17 Nowhere Lane",
    },
    Buyer {
        username: "philippa",
        password: "saxophone glacier 2031",
        number: "5555555555554444",
        cvv: "8264",
        holder: "Philippa Vandersloot",
        street: "4 Impossible Mews",
    },
];
/// A card one buyer switches to later.
const NEW_NUMBER: &str = "4000003800000446";
const NEW_CVV: &str = "9517";

/// Every form in which `secret` could leak: as is, as hex, and as base64 at each of the three alignments.
fn encodings(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        hex::encode(secret),
        hex::encode_upper(secret),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3 {
            // Encoding `secret` behind `offset` bytes of anything: characters that depend on those bytes, or on
            // how the secret ends, are trimmed, leaving what every such encoding contains.
            let encoded = engine.encode(format!("{}{secret}", "x".repeat(offset)));
            let start = (offset * 4).div_ceil(3) + 1;
            let end = encoded.len().saturating_sub(3);
            if end > start + 4 {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms
}

fn assert_absent(secrets: &[String], haystacks: &[(std::path::PathBuf, Vec<u8>)]) {
    for secret in secrets {
        for form in encodings(secret) {
            for (path, bytes) in haystacks {
                assert!(
                    !occurs(bytes, &form, secret),
                    "{} holds a secret (as {form:?})",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_short_secret_counts_only_where_it_stands_alone() {
    assert!(occurs(br#"{"cvv":"7391"}"#, "7391", "7391"));
    assert!(occurs(b"cvv=7391 ok", "7391", "7391"));
    assert!(occurs(b"7391", "7391", "7391"));
    assert!(!occurs(b"2026-11-23T13:20:56.337391Z", "7391", "7391"));
    assert!(!occurs(b"u_73916a", "7391", "7391"));
    // Long secrets count anywhere.
    assert!(occurs(
        b"x4000056655665556x",
        "4000056655665556",
        "4000056655665556"
    ));
}

async fn register(server: &Server, buyer: &Buyer) -> (String, String) {
    let body = server
        .post(
            "/users",
            None,
            json!({"username": buyer.username, "password": buyer.password, "street": buyer.street,
                   "city": "Gotham", "zip_code": "99999",
                   "card": {"type": "visa", "holder_name": buyer.holder, "number": buyer.number,
                            "exp_month": 11, "exp_year": 2031, "cvv": buyer.cvv}}),
        )
        .await
        .expect(201);
    (
        body["id"].as_str().expect("id").to_owned(),
        body["token"].as_str().expect("token").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_disk_or_the_log() {
    let log_dir = tempfile::tempdir().expect("temp dir");
    let log = log_dir.path().join("server.log");
    let server = Server::start_logged(tempfile::tempdir().expect("temp dir"), &[], &log);
    let mut tokens = Vec::new();
    let mut users = Vec::new();
    for buyer in &BUYERS {
        let (id, token) = register(&server, buyer).await;
        let login = server
            .post(
                "/users/verify",
                None,
                json!({"username": buyer.username, "password": buyer.password}),
            )
            .await
            .expect(200);
        tokens.push(token.clone());
        tokens.push(login["token"].as_str().expect("token").to_owned());
        users.push((id, token));
    }
    let concert = server.create_general(100, 2, 2500).await;
    for (_, token) in &users {
        server
            .send(
                reqwest::Method::POST,
                "/orders",
                Some(token),
                Some(json!({"concert_id": concert, "quantity": 2})),
                &[("Idempotency-Key", "secret-scan-order")],
            )
            .await
            .expect(201);
    }
    let (first_id, first_token) = &users[0];
    server
        .send(
            reqwest::Method::PUT,
            &format!("/users/{first_id}"),
            Some(first_token),
            Some(json!({"card": {"type": "visa", "holder_name": BUYERS[0].holder,
                                 "number": NEW_NUMBER, "exp_month": 1, "exp_year": 2032, "cvv": NEW_CVV}})),
            &[],
        )
        .await
        .expect(200);
    let hold = server
        .post(
            "/holds",
            Some(first_token),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);
    server
        .post(
            &format!("/holds/{}/purchase", hold["id"].as_str().expect("id")),
            Some(first_token),
            json!({}),
        )
        .await
        .expect(201);
    server
        .post("/admin/snapshot", Some(ADMIN_TOKEN), json!({}))
        .await
        .expect(200);
    let data_dir = server.stop();

    // After a restart the sealed cards open again: the card on file still pays.
    let server = Server::start_logged(data_dir, &[], &log);
    let user: Value = server
        .get(&format!("/users/{first_id}"), Some(first_token))
        .await
        .expect(200);
    assert_eq!(user["card"]["last4"], "0446");
    assert_eq!(user["street"], BUYERS[0].street);
    server
        .post(
            "/orders",
            Some(&users[1].1),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);
    let data_dir = server.stop();

    let mut secrets: Vec<String> = tokens;
    for buyer in &BUYERS {
        secrets.extend(
            [
                buyer.password,
                buyer.number,
                buyer.cvv,
                buyer.holder,
                buyer.street,
            ]
            .map(str::to_owned),
        );
    }
    secrets.extend([NEW_NUMBER.to_owned(), NEW_CVV.to_owned()]);
    let stored = common::files(data_dir.path());
    assert!(
        stored.iter().any(|(path, _)| path.ends_with("master.key")),
        "the generated master key lives in the data dir"
    );
    // The scan does see what is stored in the clear on purpose: the usernames.
    for buyer in &BUYERS {
        assert!(
            stored.iter().any(|(_, bytes)| bytes
                .windows(buyer.username.len())
                .any(|window| window == buyer.username.as_bytes())),
            "the scan reads the files where users are stored"
        );
    }
    assert_absent(&secrets, &stored);
    let logged = std::fs::read(&log).expect("log");
    assert!(
        String::from_utf8_lossy(&logged).contains("recovery finished"),
        "the log was captured at debug"
    );
    assert_absent(&secrets, &[(log, logged)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_while_cards_keep_working() {
    let server = Server::start(&[]);
    let mut users = Vec::new();
    for buyer in &BUYERS {
        users.push(register(&server, buyer).await);
    }
    let concert = server.create_general(50, 1, 1000).await;
    let key_file = server.data_dir().join("master.key");
    let first_key = std::fs::read(&key_file).expect("generated master key");
    let (_, buyer_token) = &users[0];
    server
        .post("/admin/rotate-master-key", Some(buyer_token), json!({}))
        .await
        .expect_error(403, "forbidden");
    let rotated = server
        .post("/admin/rotate-master-key", Some(ADMIN_TOKEN), json!({}))
        .await
        .expect(200);
    assert_eq!(rotated["users_rewrapped"], 2);
    let second_key = std::fs::read(&key_file).expect("master key");
    assert_ne!(first_key, second_key, "a new key replaced the old one");
    assert!(!server.data_dir().join("master.key.next").exists());
    server
        .post(
            "/orders",
            Some(buyer_token),
            json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);

    // The command does the same against the running node.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["rotate-master-key", "--url", &server.base])
        .env("BOXOFFICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run rotate-master-key");
    assert!(status.success());
    assert_ne!(std::fs::read(&key_file).expect("master key"), second_key);
    server
        .post(
            "/admin/rotate-master-key",
            Some(ADMIN_TOKEN),
            json!({"new_master_key": "c2hvcnQ="}),
        )
        .await
        .expect_error(422, "invalid_request");

    // After a restart, every user's sealed data opens under the newest key.
    let data_dir = server.stop();
    let server = Server::start_in(data_dir, &[]);
    for ((id, token), buyer) in users.iter().zip(&BUYERS) {
        let user = server
            .get(&format!("/users/{id}"), Some(token))
            .await
            .expect(200);
        assert_eq!(user["street"], buyer.street);
        server
            .post(
                "/orders",
                Some(token),
                json!({"concert_id": concert, "quantity": 1}),
            )
            .await
            .expect(201);
    }
}

/// A fresh token of the first buyer.
async fn login(server: &Server) -> String {
    server
        .post(
            "/users/verify",
            None,
            json!({"username": BUYERS[0].username, "password": BUYERS[0].password}),
        )
        .await
        .expect(200)["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stay_revoked_across_a_restart() {
    let server = Server::start(&[]);
    let (id, first) = register(&server, &BUYERS[0]).await;
    let second = login(&server).await;
    let third = login(&server).await;
    let me = format!("/users/{id}");
    server
        .send(reqwest::Method::POST, "/users/logout", None, None, &[])
        .await
        .expect_error(401, "unauthorized");
    server
        .send(
            reqwest::Method::POST,
            "/users/logout",
            Some(ADMIN_TOKEN),
            None,
            &[],
        )
        .await
        .expect_error(403, "forbidden");
    server
        .send(
            reqwest::Method::POST,
            "/users/logout",
            Some(&first),
            None,
            &[],
        )
        .await
        .expect(204);
    server
        .get(&me, Some(&first))
        .await
        .expect_error(401, "unauthorized");
    server.get(&me, Some(&second)).await.expect(200);

    let data_dir = server.stop();
    let server = Server::start_in(data_dir, &[]);
    server
        .get(&me, Some(&first))
        .await
        .expect_error(401, "unauthorized");
    server.get(&me, Some(&third)).await.expect(200);
    server
        .send(
            reqwest::Method::POST,
            "/users/logout?all=true",
            Some(&second),
            None,
            &[],
        )
        .await
        .expect(204);
    for token in [&second, &third] {
        server
            .get(&me, Some(token))
            .await
            .expect_error(401, "unauthorized");
    }
    let data_dir = server.stop();
    let server = Server::start_in(data_dir, &[]);
    server
        .get(&me, Some(&third))
        .await
        .expect_error(401, "unauthorized");
    let fresh = login(&server).await;
    server.get(&me, Some(&fresh)).await.expect(200);
}

//! The authorization matrix: every endpoint of API.md (and the admin endpoints) called as anonymous, as the owner
//! of the resource, as another user and as the admin, with the status and error code each must get, in one table
//! through one `check` helper.
//!
//! The rules it pins down:
//! - a user never reads or changes another user's profile, holds, orders or tickets;
//! - users and orders of someone else answer `403 forbidden`; holds answer `404 hold_not_found`, exactly as for a
//!   hold that does not exist (API.md lists only 404 for them), so a hold id's existence does not leak. A user id
//!   that is not the caller's is 403 whether it exists or not; only the admin learns that one is missing (404);
//! - the admin token manages (users, concerts, the gate, snapshots) but cannot hold or buy: `403`;
//! - every refusal is a JSON error body and nothing else.
//!
//! `GET /concerts/{id}/events` (server-sent events) is not served yet; it joins the table with its issue.

mod common;

use common::{ADMIN_TOKEN, GOOD_CARD, Server};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    /// alice, who owns the resources in the paths.
    Owner,
    /// bob, another user.
    Other,
    Admin,
}

use Who::*;

impl Who {
    fn name(self) -> &'static str {
        match self {
            Anonymous => "anonymous",
            Owner => "owner",
            Other => "other",
            Admin => "admin",
        }
    }
}

struct Tokens {
    owner: String,
    other: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Anonymous => None,
            Owner => Some(&self.owner),
            Other => Some(&self.other),
            Admin => Some(ADMIN_TOKEN),
        }
    }
}

enum Body {
    Empty,
    Same(Value),
    /// A body that must differ per caller (a new username).
    PerCaller(fn(Who) -> Value),
}

/// One endpoint and, in the order they are sent, who calls it and what they must get: a status, and for an
/// error its code.
struct Row {
    method: Method,
    path: String,
    body: Body,
    expected: Vec<(Who, u16, &'static str)>,
}

fn row(
    method: Method,
    path: impl Into<String>,
    body: Body,
    expected: &[(Who, u16, &'static str)],
) -> Row {
    Row {
        method,
        path: path.into(),
        body,
        expected: expected.to_vec(),
    }
}

const OK: &str = "";
const UNAUTHORIZED: &str = "unauthorized";
const FORBIDDEN: &str = "forbidden";

async fn check(server: &Server, tokens: &Tokens, rows: Vec<Row>) {
    for row in rows {
        for (who, status, code) in &row.expected {
            let body = match &row.body {
                Body::Empty => None,
                Body::Same(body) => Some(body.clone()),
                Body::PerCaller(make) => Some(make(*who)),
            };
            let reply = send(server, &row.method, &row.path, tokens.of(*who), body).await;
            let what = format!("{} {} as {}", row.method, row.path, who.name());
            assert_eq!(reply.status, *status, "{what} answered {}", reply.body);
            if code.is_empty() {
                continue;
            }
            assert_eq!(reply.body["error"]["code"], *code, "{what}: {}", reply.body);
            let fields: Vec<&String> = reply.body.as_object().expect("an object").keys().collect();
            assert_eq!(
                fields,
                ["error"],
                "{what}: an error body is the error alone"
            );
            let error = reply.body["error"].as_object().expect("error object");
            assert_eq!(
                error.len(),
                2,
                "{what}: code and message only: {}",
                reply.body
            );
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: errors carry a message"
            );
        }
    }
}

struct Reply {
    status: u16,
    /// The JSON body, or `Null` for an empty or non-JSON one (`/metrics`).
    body: Value,
}

/// Like the harness's `send`, but also for the one endpoint that does not answer JSON.
async fn send(
    server: &Server,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = server
        .client
        .request(method.clone(), format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request completes");
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let text = response.text().await.expect("body");
    let body = if json {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"))
    } else {
        Value::Null
    };
    Reply { status, body }
}

fn new_user(who: Who) -> Value {
    json!({"username": format!("new-{}", who.name()), "password": "long enough password"})
}

fn bulk_users(who: Who) -> Value {
    json!({"prefix": format!("bulk-{}-", who.name()), "count": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_as_anonymous_owner_other_user_and_admin() {
    let server = Server::start(&[]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("bob", GOOD_CARD).await;
    let tokens = Tokens {
        owner: alice.clone(),
        other: bob.clone(),
    };
    let general = server.create_general(100, 2, 1_000).await;
    let seated = server.create_seated(&["A"], 2, 5, 1).await;
    let order = server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": general, "quantity": 1}),
        )
        .await
        .expect(201);
    let order_id = order["id"].as_str().expect("order id").to_owned();
    let ticket = order["tickets"][0]["token"]
        .as_str()
        .expect("ticket token")
        .to_owned();
    let mut holds = Vec::new();
    for seat in ["A-1-1", "A-1-2"] {
        let hold = server
            .post(
                "/holds",
                Some(&alice),
                json!({"concert_id": seated, "seats": [seat]}),
            )
            .await
            .expect(201);
        holds.push(hold["id"].as_str().expect("hold id").to_owned());
    }
    let (cancelled, purchased) = (&holds[0], &holds[1]);
    let concert = json!({"name": "Matrix", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5});
    let login = json!({"username": "alice", "password": "correct horse battery"});
    let claim = json!({"concert_id": general, "quantity": 1});
    let gate = json!({"token": ticket});
    let user = format!("/users/{alice_id}");

    use Method as M;
    #[rustfmt::skip]
    let rows = vec![
        // Open to anyone, whatever the token.
        row(M::GET, "/health", Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, "/metrics", Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, "/openapi.json", Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::POST, "/users", Body::PerCaller(new_user), &[(Anonymous, 201, OK), (Other, 201, OK), (Admin, 201, OK), (Owner, 201, OK)]),
        row(M::POST, "/users/verify", Body::Same(login), &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, "/concerts", Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, format!("/concerts/{general}"), Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, format!("/concerts/{seated}/seats"), Body::Empty, &[(Anonymous, 200, OK), (Other, 200, OK), (Admin, 200, OK), (Owner, 200, OK)]),

        // A user's own data: that user and the admin.
        row(M::GET, &user, Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::PUT, &user, Body::Same(json!({"city": "Ghent"})), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::PUT, &user, Body::Same(json!({"password": "taken over by bob"})), &[(Other, 403, FORBIDDEN)]),
        row(M::GET, format!("{user}/tickets"), Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Admin, 200, OK), (Owner, 200, OK)]),
        // Whether a user id exists is not told to other users.
        row(M::GET, "/users/u_missing", Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Owner, 403, FORBIDDEN), (Admin, 404, "user_not_found")]),
        row(M::GET, "/users/u_missing/tickets", Body::Empty, &[(Owner, 403, FORBIDDEN), (Admin, 404, "user_not_found")]),
        row(M::PUT, "/users/u_missing", Body::Same(json!({"city": "Ghent"})), &[(Owner, 403, FORBIDDEN), (Admin, 404, "user_not_found")]),

        // Orders: their owner and the admin.
        row(M::GET, format!("/orders/{order_id}"), Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, "/orders/o_missing", Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Owner, 404, "order_not_found"), (Admin, 404, "order_not_found")]),

        // Holds and orders are placed by users, never by the admin token.
        row(M::POST, "/holds", Body::Same(claim.clone()), &[(Anonymous, 401, UNAUTHORIZED), (Other, 201, OK), (Admin, 403, FORBIDDEN), (Owner, 201, OK)]),
        row(M::POST, "/orders", Body::Same(claim), &[(Anonymous, 401, UNAUTHORIZED), (Other, 201, OK), (Admin, 403, FORBIDDEN), (Owner, 201, OK)]),
        // A hold is its owner's alone: to anyone else it does not exist.
        row(M::DELETE, format!("/holds/{cancelled}"), Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 404, "hold_not_found"), (Admin, 403, FORBIDDEN), (Owner, 204, OK)]),
        row(M::DELETE, "/holds/h_missing", Body::Empty, &[(Other, 404, "hold_not_found"), (Owner, 404, "hold_not_found")]),
        row(M::POST, format!("/holds/{purchased}/purchase"), Body::Same(json!({})), &[(Anonymous, 401, UNAUTHORIZED), (Other, 404, "hold_not_found"), (Admin, 403, FORBIDDEN), (Owner, 201, OK)]),
        row(M::POST, "/holds/h_missing/purchase", Body::Same(json!({})), &[(Other, 404, "hold_not_found")]),

        // The admin's endpoints.
        row(M::GET, "/users", Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN), (Admin, 200, OK)]),
        row(M::POST, "/admin/users/bulk", Body::PerCaller(bulk_users), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN), (Admin, 201, OK)]),
        row(M::POST, "/concerts", Body::Same(concert), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN), (Admin, 201, OK)]),
        // Not even a ticket's owner checks it in: that is the gate's (the admin's) job.
        row(M::POST, "/tickets/verify", Body::Same(gate), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN), (Admin, 200, OK)]),
        row(M::POST, "/admin/snapshot", Body::Same(json!({})), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN), (Admin, 200, OK)]),
        // Rotating the master key is the admin's too; its effect is tested with the encryption.
        row(M::POST, "/admin/rotate-master-key", Body::Same(json!({})), &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 403, FORBIDDEN)]),
    ];
    check(&server, &tokens, rows).await;

    // Nothing bob tried changed alice's data, and nothing of alice's shows up in bob's.
    let profile = server.get(&user, Some(&alice)).await.expect(200);
    assert_eq!(
        profile["city"], "Ghent",
        "changed by alice and the admin only"
    );
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "correct horse battery"}),
        )
        .await
        .expect(200);
    let alice_tickets = server
        .get(&format!("{user}/tickets"), Some(&alice))
        .await
        .expect(200);
    let bob_tickets = server
        .get(&format!("/users/{bob_id}/tickets"), Some(&bob))
        .await
        .expect(200);
    let owners = |tickets: &Value| -> Vec<String> {
        tickets["tickets"]
            .as_array()
            .expect("tickets")
            .iter()
            .map(|ticket| ticket["token"].as_str().expect("token").to_owned())
            .collect()
    };
    let (alice_tokens, bob_tokens) = (owners(&alice_tickets), owners(&bob_tickets));
    assert_eq!(
        alice_tokens.len(),
        3,
        "the first order, the row's order and the bought hold"
    );
    assert_eq!(bob_tokens.len(), 1, "the row's order");
    assert!(alice_tokens.iter().all(|token| !bob_tokens.contains(token)));
    let seats = server
        .get(&format!("/concerts/{seated}/seats"), None)
        .await
        .expect(200);
    let status_of = |id: &str| {
        seats["seats"]
            .as_array()
            .expect("seats")
            .iter()
            .find(|seat| seat["id"] == id)
            .map(|seat| seat["status"].clone())
    };
    assert_eq!(
        status_of("A-1-1"),
        Some(json!("free")),
        "cancelled by alice"
    );
    assert_eq!(status_of("A-1-2"), Some(json!("sold")), "bought by alice");
}

/// `GET /users/{id}/tickets/{ticket_id}/qr` through the same `check`: like the user's tickets, that user and the
/// admin only; a ticket that is not the user's (someone else's, or none) is `404 ticket_not_found`. The image is
/// the QR code of the ticket's token, never the token in clear, and is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_qr_codes_as_anonymous_owner_other_user_and_admin() {
    let server = Server::start(&[]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("bob", GOOD_CARD).await;
    let tokens = Tokens {
        owner: alice.clone(),
        other: bob.clone(),
    };
    let concert = server.create_general(10, 1, 1_000).await;
    let claim = json!({"concert_id": concert, "quantity": 1});
    let alice_ticket = server
        .post("/orders", Some(&alice), claim.clone())
        .await
        .expect(201)["tickets"][0]
        .clone();
    let bob_ticket =
        server.post("/orders", Some(&bob), claim).await.expect(201)["tickets"][0].clone();
    let ticket_id = alice_ticket["id"].as_str().expect("ticket id");
    let bob_ticket_id = bob_ticket["id"].as_str().expect("ticket id");
    let qr = format!("/users/{alice_id}/tickets/{ticket_id}/qr");

    use Method as M;
    #[rustfmt::skip]
    let rows = vec![
        row(M::GET, &qr, Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Admin, 200, OK), (Owner, 200, OK)]),
        row(M::GET, format!("/users/{alice_id}/tickets/t_missing/qr"), Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Other, 403, FORBIDDEN), (Owner, 404, "ticket_not_found"), (Admin, 404, "ticket_not_found")]),
        // Bob's ticket under alice's id is not alice's: as missing as a ticket that does not exist.
        row(M::GET, format!("/users/{alice_id}/tickets/{bob_ticket_id}/qr"), Body::Empty, &[(Owner, 404, "ticket_not_found"), (Admin, 404, "ticket_not_found")]),
        row(M::GET, format!("/users/u_missing/tickets/{ticket_id}/qr"), Body::Empty, &[(Anonymous, 401, UNAUTHORIZED), (Owner, 403, FORBIDDEN), (Admin, 404, "user_not_found")]),
        row(M::POST, &qr, Body::Same(json!({})), &[(Owner, 405, "method_not_allowed")]),
    ];
    check(&server, &tokens, rows).await;

    let token = alice_ticket["token"].as_str().expect("ticket token");
    let expected = qrcode::QrCode::new(token.as_bytes())
        .expect("a QR code")
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(
            api::routes::users::QR_DIMENSION_MIN_PX,
            api::routes::users::QR_DIMENSION_MIN_PX,
        )
        .build();
    for caller in [alice.as_str(), common::ADMIN_TOKEN] {
        let response = server
            .client
            .get(format!("{}{qr}", server.base))
            .bearer_auth(caller)
            .send()
            .await
            .expect("request completes");
        assert_eq!(response.status(), 200);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("content-type").as_deref(), Some("image/svg+xml"));
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-store"),
            "a QR code is as secret as its token"
        );
        let svg = response.text().await.expect("body");
        assert!(svg.contains("<svg"), "an SVG image: {svg}");
        assert_eq!(svg, expected, "the QR code of the ticket's token");
        assert!(
            !svg.contains(token),
            "the token is encoded, not written out"
        );
    }
    let bob_qr = server
        .client
        .get(format!(
            "{}/users/{bob_id}/tickets/{bob_ticket_id}/qr",
            server.base
        ))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("request completes");
    assert_eq!(bob_qr.status(), 200, "bob reads his own ticket's QR code");
    assert_ne!(
        bob_qr.text().await.expect("body"),
        expected,
        "each ticket has a QR code of its own"
    );
}

//! The HTTP contract of API.md, end to end: every error in its table is provoked and its status and
//! `error.code` asserted, bad input of every kind is a JSON 4xx, and the happy paths return the documented bodies.

mod common;

use common::{ADMIN_TOKEN, DECLINED_CARD, GOOD_CARD, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// One request and the status and error code it must get (`None` for a success).
struct Case<'a> {
    name: &'a str,
    method: Method,
    path: String,
    token: Option<&'a str>,
    body: Option<Value>,
    status: u16,
    code: Option<&'a str>,
}

fn case<'a>(
    name: &'a str,
    method: Method,
    path: impl Into<String>,
    token: Option<&'a str>,
    body: Option<Value>,
    status: u16,
    code: Option<&'a str>,
) -> Case<'a> {
    Case {
        name,
        method,
        path: path.into(),
        token,
        body,
        status,
        code,
    }
}

async fn check(server: &Server, cases: Vec<Case<'_>>) {
    for case in cases {
        let reply = server
            .send(
                case.method.clone(),
                &case.path,
                case.token,
                case.body.clone(),
                &[],
            )
            .await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {} {} answered {}",
            case.name,
            case.method,
            case.path,
            reply.body
        );
        if let Some(code) = case.code {
            assert_eq!(reply.code(), code, "{}: {}", case.name, reply.body);
            assert!(
                reply.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{}: errors carry a message",
                case.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_in_the_table_has_its_status_and_code() {
    let server = Server::start(&["--hold-ttl-s", "1"]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;
    let (bob_id, bob) = server.register("bob", DECLINED_CARD).await;
    let carol = server
        .post(
            "/users",
            None,
            json!({"username": "carol", "password": "no card on file"}),
        )
        .await
        .expect(201)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let tiny = server.create_general(2, 1, 1500).await;
    let seated = server.create_seated(&["A"], 2, 3, 2).await;
    let missing = "c_doesnotexist";

    // Setup for the stateful errors: a sold-out concert, a taken seat, a checked-in ticket, an expired hold.
    let sold = server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": tiny, "quantity": 2}),
        )
        .await
        .expect(201);
    assert_eq!(sold["status"], "confirmed");
    assert_eq!(sold["amount_cents"], 3000);
    let order_id = sold["id"].as_str().expect("id").to_owned();
    let token = sold["tickets"][0]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    server
        .post(
            "/tickets/verify",
            Some(ADMIN_TOKEN),
            json!({"token": token}),
        )
        .await
        .expect(200);
    server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": seated, "seats": ["A-1-1"]}),
        )
        .await
        .expect(201);
    let expiring = server
        .hold(&alice, json!({"concert_id": seated, "seats": ["A-2-3"]}))
        .await;
    let declined_hold = server
        .hold(&bob, json!({"concert_id": seated, "seats": ["A-2-1"]}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    use Method as M;
    let user = |id: &str| format!("/users/{id}");
    check(
        &server,
        vec![
            case("username taken", M::POST, "/users", None,
                 Some(json!({"username": "alice", "password": "another password"})), 409, Some("username_taken")),
            case("short password", M::POST, "/users", None,
                 Some(json!({"username": "dave", "password": "short"})), 422, Some("invalid_request")),
            case("bad card number", M::POST, "/users", None,
                 Some(json!({"username": "erin", "password": "long enough pw",
                             "card": {"type": "visa", "holder_name": "E", "number": "4242424242424241",
                                      "exp_month": 1, "exp_year": 2030, "cvv": "123"}})), 422, Some("invalid_request")),
            case("wrong password", M::POST, "/users/verify", None,
                 Some(json!({"username": "alice", "password": "wrong password"})), 401, Some("invalid_credentials")),
            case("unknown user login", M::POST, "/users/verify", None,
                 Some(json!({"username": "nobody", "password": "wrong password"})), 401, Some("invalid_credentials")),
            case("user anonymous", M::GET, user(&alice_id), None, None, 401, Some("unauthorized")),
            case("user bad token", M::GET, user(&alice_id), Some("not-a-token"), None, 401, Some("unauthorized")),
            case("user other", M::GET, user(&alice_id), Some(&bob), None, 403, Some("forbidden")),
            case("user missing", M::GET, user("u_missing"), Some(ADMIN_TOKEN), None, 404, Some("user_not_found")),
            case("update anonymous", M::PUT, user(&alice_id), None, Some(json!({"city": "Ghent"})), 401, Some("unauthorized")),
            case("update other", M::PUT, user(&alice_id), Some(&bob), Some(json!({"city": "Ghent"})), 403, Some("forbidden")),
            case("update missing", M::PUT, user("u_missing"), Some(ADMIN_TOKEN), Some(json!({"city": "Ghent"})), 404, Some("user_not_found")),
            case("update invalid", M::PUT, user(&alice_id), Some(&alice), Some(json!({"password": "short"})), 422, Some("invalid_request")),
            case("password without the current one", M::PUT, user(&alice_id), Some(&alice), Some(json!({"password": "a new password"})), 422, Some("current_password_required")),
            case("password with a wrong current one", M::PUT, user(&alice_id), Some(&alice),
                 Some(json!({"password": "a new password", "current_password": "not the password"})), 403, Some("wrong_current_password")),
            case("list anonymous", M::GET, "/users", None, None, 401, Some("unauthorized")),
            case("list as user", M::GET, "/users", Some(&alice), None, 403, Some("forbidden")),
            case("list limit too big", M::GET, "/users?limit=1001", Some(ADMIN_TOKEN), None, 422, Some("invalid_request")),
            case("list limit not a number", M::GET, "/users?limit=lots", Some(ADMIN_TOKEN), None, 400, Some("invalid_query")),
            case("tickets anonymous", M::GET, format!("/users/{alice_id}/tickets"), None, None, 401, Some("unauthorized")),
            case("tickets other", M::GET, format!("/users/{alice_id}/tickets"), Some(&bob), None, 403, Some("forbidden")),
            case("tickets missing", M::GET, "/users/u_missing/tickets", Some(ADMIN_TOKEN), None, 404, Some("user_not_found")),
            case("concert anonymous", M::POST, "/concerts", None,
                 Some(json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5})), 401, Some("unauthorized")),
            case("concert as user", M::POST, "/concerts", Some(&alice),
                 Some(json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5})), 403, Some("forbidden")),
            case("concert both kinds", M::POST, "/concerts", Some(ADMIN_TOKEN),
                 Some(json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5,
                             "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}]})), 422, Some("invalid_request")),
            case("concert zero capacity", M::POST, "/concerts", Some(ADMIN_TOKEN),
                 Some(json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 0})), 422, Some("invalid_request")),
            case("concert bad time", M::POST, "/concerts", Some(ADMIN_TOKEN),
                 Some(json!({"name": "x", "starts_at": "soon", "price_cents": 1, "capacity": 5})), 422, Some("invalid_request")),
            case("concert too many shards", M::POST, "/concerts", Some(ADMIN_TOKEN),
                 Some(json!({"name": "x", "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5, "shards": 6})), 422, Some("invalid_request")),
            case("concert missing", M::GET, format!("/concerts/{missing}"), None, None, 404, Some("concert_not_found")),
            case("seats missing", M::GET, format!("/concerts/{missing}/seats"), None, None, 404, Some("concert_not_found")),
            case("seats of general admission", M::GET, format!("/concerts/{tiny}/seats"), None, None, 422, Some("not_seated")),
            case("hold anonymous", M::POST, "/holds", None, Some(json!({"concert_id": seated, "quantity": 1})), 401, Some("unauthorized")),
            case("hold as admin", M::POST, "/holds", Some(ADMIN_TOKEN), Some(json!({"concert_id": seated, "quantity": 1})), 403, Some("forbidden")),
            case("hold seat taken", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": seated, "seats": ["A-1-1"]})), 409, Some("seat_taken")),
            case("hold sold out", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": tiny, "quantity": 1})), 409, Some("sold_out")),
            case("hold unknown seat", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": seated, "seats": ["Z-9-9"]})), 422, Some("unknown_seat")),
            case("hold duplicate seat", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": seated, "seats": ["A-1-2", "A-1-2"]})), 422, Some("invalid_request")),
            case("hold seats and quantity", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": seated, "seats": ["A-1-2"], "quantity": 1})), 422, Some("invalid_request")),
            case("hold missing concert", M::POST, "/holds", Some(&bob), Some(json!({"concert_id": missing, "quantity": 1})), 404, Some("concert_not_found")),
            case("cancel missing hold", M::DELETE, "/holds/h_missing", Some(&alice), None, 404, Some("hold_not_found")),
            case("cancel expired hold", M::DELETE, format!("/holds/{expiring}"), Some(&alice), None, 404, Some("hold_not_found")),
            case("purchase missing hold", M::POST, "/holds/h_missing/purchase", Some(&alice), None, 404, Some("hold_not_found")),
            case("purchase expired hold", M::POST, format!("/holds/{declined_hold}/purchase"), Some(&bob), None, 410, Some("hold_expired")),
            case("purchase expired hold after a cancel", M::POST, format!("/holds/{expiring}/purchase"), Some(&alice), None, 410, Some("hold_expired")),
            case("purchase expired hold again", M::POST, format!("/holds/{declined_hold}/purchase"), Some(&bob), None, 410, Some("hold_expired")),
            case("cancel expired hold of a purchase attempt", M::DELETE, format!("/holds/{declined_hold}"), Some(&bob), None, 404, Some("hold_not_found")),
            case("order anonymous", M::POST, "/orders", None, Some(json!({"concert_id": tiny, "quantity": 1})), 401, Some("unauthorized")),
            case("order sold out", M::POST, "/orders", Some(&bob), Some(json!({"concert_id": tiny, "quantity": 1})), 409, Some("sold_out")),
            case("order seat taken", M::POST, "/orders", Some(&bob), Some(json!({"concert_id": seated, "seats": ["A-1-1"]})), 409, Some("seat_taken")),
            case("order declined", M::POST, "/orders", Some(&bob), Some(json!({"concert_id": seated, "seats": ["A-1-3"]})), 402, Some("payment_declined")),
            case("order without card", M::POST, "/orders", Some(&carol), Some(json!({"concert_id": seated, "quantity": 1})), 422, Some("card_required")),
            case("hold without card", M::POST, "/holds", Some(&carol), Some(json!({"concert_id": seated, "quantity": 1})), 422, Some("card_required")),
            case("register with an expired card", M::POST, "/users", None,
                 Some(json!({"username": "expired", "password": "long enough pw", "card": {"type": "visa",
                   "holder_name": "E", "number": GOOD_CARD, "exp_month": 1, "exp_year": 2020, "cvv": "123"}})), 422, Some("card_expired")),
            case("register with a card the provider refuses", M::POST, "/users", None,
                 Some(json!({"username": "refused", "password": "long enough pw", "card": {"type": "visa",
                   "holder_name": "R", "number": "4000000000000127", "exp_month": 12, "exp_year": 2030, "cvv": "123"}})), 422, Some("card_refused")),
            case("order too many", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": 11})), 422, Some("invalid_request")),
            case("order zero", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": 0})), 422, Some("invalid_request")),
            case("order negative", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": -1})), 422, Some("invalid_body")),
            case("order huge", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": 1e30})), 422, Some("invalid_body")),
            case("order wrong type", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": "two"})), 422, Some("invalid_body")),
            case("order missing field", M::POST, "/orders", Some(&alice), Some(json!({"quantity": 1})), 422, Some("invalid_body")),
            case("order unknown field", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": seated, "quantity": 1, "discount": 100})), 422, Some("invalid_body")),
            case("order seats for general admission", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": tiny, "seats": ["A-1-1"]})), 422, Some("invalid_request")),
            case("order over-long concert id", M::POST, "/orders", Some(&alice), Some(json!({"concert_id": "c".repeat(1000), "quantity": 1})), 422, Some("invalid_request")),
            case("get order anonymous", M::GET, format!("/orders/{order_id}"), None, None, 401, Some("unauthorized")),
            case("get order other", M::GET, format!("/orders/{order_id}"), Some(&bob), None, 403, Some("forbidden")),
            case("get order missing", M::GET, "/orders/o_missing", Some(&alice), None, 404, Some("order_not_found")),
            case("verify as user", M::POST, "/tickets/verify", Some(&alice), Some(json!({"token": "x"})), 403, Some("forbidden")),
            case("verify unknown", M::POST, "/tickets/verify", Some(ADMIN_TOKEN), Some(json!({"token": "not-a-ticket"})), 404, Some("unknown_ticket")),
            case("verify twice", M::POST, "/tickets/verify", Some(ADMIN_TOKEN), Some(json!({"token": token})), 409, Some("already_checked_in")),
            case("unknown route", M::GET, "/nowhere", None, None, 404, Some("not_found")),
            case("wrong method", M::PATCH, "/orders", None, None, 405, Some("method_not_allowed")),
        ],
    )
    .await;
    assert_eq!(bob_id.len(), alice_id.len());

    // Raw bodies: malformed and truncated JSON, oversized bodies, a missing content type.
    let malformed = server
        .post_raw("/orders", Some(&alice), "{\"concert_id\": ")
        .await;
    malformed.expect_error(400, "malformed_json");
    let not_json = server.post_raw("/users", None, "username=alice").await;
    not_json.expect_error(400, "malformed_json");
    let huge = server
        .post_raw("/users", None, vec![b' '; 100 * 1024])
        .await;
    huge.expect_error(413, "payload_too_large");
    let reply = server
        .client
        .post(format!("{}/users", server.base))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status().as_u16(), 415);
    let body: Value = reply.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    // Idempotency keys: over-long is 422, reuse with another body is 422.
    let long_key = "k".repeat(65);
    let reply = server
        .send(
            Method::POST,
            "/orders",
            Some(&alice),
            Some(json!({"concert_id": seated, "quantity": 1})),
            &[("idempotency-key", &long_key)],
        )
        .await;
    reply.expect_error(422, "invalid_idempotency_key");

    // Nothing above changed the inventory beyond the setup: the invariant holds.
    let (_, _, sold_tiny, _) = server.availability(&tiny).await;
    assert_eq!(sold_tiny, 2);
    server.availability(&seated).await;
}

/// A declined purchase ends the hold: its seats are free again, a repeated purchase answers the same decline, and
/// the hold can no longer be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_hold_purchase_ends_the_hold() {
    let server = Server::start(&[]);
    let (_, bob) = server.register("bob", DECLINED_CARD).await;
    let (_, alice) = server.register("alice", GOOD_CARD).await;
    let seated = server.create_seated(&["A"], 1, 2, 1).await;
    let hold = server
        .hold(&bob, json!({"concert_id": seated, "seats": ["A-1-1"]}))
        .await;
    assert_eq!(server.availability(&seated).await, (1, 1, 0, 2));
    let purchase = format!("/holds/{hold}/purchase");
    for _ in 0..2 {
        server
            .post(&purchase, Some(&bob), json!({}))
            .await
            .expect_error(402, "payment_declined");
    }
    server
        .send(
            reqwest::Method::DELETE,
            &format!("/holds/{hold}"),
            Some(&bob),
            None,
            &[],
        )
        .await
        .expect_error(404, "hold_not_found");
    assert_eq!(server.availability(&seated).await, (2, 0, 0, 2));
    let order = server
        .post(
            "/orders",
            Some(&alice),
            json!({"concert_id": seated, "seats": ["A-1-1"]}),
        )
        .await
        .expect(201);
    assert_eq!(order["tickets"][0]["seat"], "A-1-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_concerts_orders_and_tickets_return_the_documented_bodies() {
    let server = Server::start(&[]);
    let (alice_id, alice) = server.register("alice", GOOD_CARD).await;

    // The card is masked everywhere.
    let profile = server
        .get(&format!("/users/{alice_id}"), Some(&alice))
        .await
        .expect(200);
    assert_eq!(profile["username"], "alice");
    assert_eq!(profile["card"]["last4"], "4242");
    assert!(profile["card"].get("number").is_none() && profile["card"].get("cvv").is_none());
    assert!(!profile.to_string().contains(GOOD_CARD));
    assert!(profile.get("password").is_none());

    // Update, then log in with the new password.
    let updated = server
        .send(
            Method::PUT,
            &format!("/users/{alice_id}"),
            Some(&alice),
            Some(json!({"city": "Ghent", "password": "a brand new password",
                        "current_password": "correct horse battery"})),
            &[],
        )
        .await
        .expect(200);
    assert_eq!(updated["city"], "Ghent");
    let login = server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "a brand new password"}),
        )
        .await
        .expect(200);
    assert_eq!(login["id"], alice_id.as_str());
    let fresh = login["token"].as_str().expect("token").to_owned();
    server
        .get(&format!("/users/{alice_id}"), Some(&fresh))
        .await
        .expect(200);
    server
        .post(
            "/users/verify",
            None,
            json!({"username": "alice", "password": "correct horse battery"}),
        )
        .await
        .expect_error(401, "invalid_credentials");

    // Paging.
    for i in 0..4 {
        server.register(&format!("pager{i}"), GOOD_CARD).await;
    }
    let first = server
        .get("/users?limit=2", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(first["users"].as_array().expect("users").len(), 2);
    assert_eq!(first["next_offset"], 2);
    let last = server
        .get("/users?offset=4&limit=2", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(last["users"].as_array().expect("users").len(), 1);
    assert!(last["next_offset"].is_null());

    // A seated concert: the seat map, a hold, a purchase, the tickets.
    let concert = server.create_seated(&["A", "B"], 2, 3, 2).await;
    let described = server
        .get(&format!("/concerts/{concert}"), None)
        .await
        .expect(200);
    assert_eq!(described["kind"], "seated");
    assert_eq!(described["capacity"], 12);
    assert_eq!(described["shards"], 2);
    let listed = server.get("/concerts", None).await.expect(200);
    assert!(
        listed["concerts"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["id"] == concert.as_str())
    );
    let seats = server
        .get(&format!("/concerts/{concert}/seats"), None)
        .await
        .expect(200);
    let labels: Vec<&str> = seats["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .map(|seat| seat["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        labels,
        [
            "A-1-1", "A-1-2", "A-1-3", "A-2-1", "A-2-2", "A-2-3", "B-1-1", "B-1-2", "B-1-3",
            "B-2-1", "B-2-2", "B-2-3"
        ]
    );
    let hold = server
        .post(
            "/holds",
            Some(&alice),
            json!({"concert_id": concert, "seats": ["A-2-3", "B-1-1"]}),
        )
        .await
        .expect(201);
    assert_eq!(hold["seats"], json!(["A-2-3", "B-1-1"]));
    assert!(
        hold["expires_at"]
            .as_str()
            .expect("expires_at")
            .ends_with('Z')
    );
    let (_, held, _, _) = server.availability(&concert).await;
    assert_eq!(held, 2);
    let hold_id = hold["id"].as_str().expect("id");
    let order = server
        .send(
            Method::POST,
            &format!("/holds/{hold_id}/purchase"),
            Some(&alice),
            None,
            &[],
        )
        .await
        .expect(201);
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["amount_cents"], 2000);
    let seats_sold: Vec<&str> = order["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .map(|ticket| ticket["seat"].as_str().expect("seat"))
        .collect();
    assert_eq!(seats_sold, ["A-2-3", "B-1-1"]);
    // Purchasing again returns the same order, not a second charge.
    let again = server
        .send(
            Method::POST,
            &format!("/holds/{hold_id}/purchase"),
            Some(&alice),
            None,
            &[],
        )
        .await
        .expect(201);
    assert_eq!(again["id"], order["id"]);
    let (remaining, held, sold, _) = server.availability(&concert).await;
    assert_eq!((remaining, held, sold), (10, 0, 2));
    let statuses = server
        .get(&format!("/concerts/{concert}/seats"), None)
        .await
        .expect(200);
    for seat in statuses["seats"].as_array().expect("seats") {
        let expected = if ["A-2-3", "B-1-1"].contains(&seat["id"].as_str().expect("id")) {
            "sold"
        } else {
            "free"
        };
        assert_eq!(seat["status"], expected, "{seat}");
    }

    // A cancelled hold frees its seat.
    let cancelled = server
        .post(
            "/holds",
            Some(&alice),
            json!({"concert_id": concert, "quantity": 3}),
        )
        .await
        .expect(201);
    // A quantity hold of a seated concert names the seats it took: three distinct seats that were free.
    let held_seats: Vec<&str> = cancelled["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .map(|seat| seat.as_str().expect("seat label"))
        .collect();
    assert_eq!(held_seats.len(), 3, "{cancelled}");
    assert_eq!(
        held_seats
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    assert!(
        held_seats
            .iter()
            .all(|seat| !["A-2-3", "B-1-1"].contains(seat)),
        "a hold never takes a sold seat: {cancelled}"
    );
    assert_eq!(server.availability(&concert).await.1, 3);
    let statuses = server
        .get(&format!("/concerts/{concert}/seats"), None)
        .await
        .expect(200);
    for seat in statuses["seats"].as_array().expect("seats") {
        if held_seats.contains(&seat["id"].as_str().expect("id")) {
            assert_eq!(seat["status"], "held", "{seat}");
        }
    }
    server
        .send(
            Method::DELETE,
            &format!("/holds/{}", cancelled["id"].as_str().expect("id")),
            Some(&alice),
            None,
            &[],
        )
        .await
        .expect(204);
    assert_eq!(server.availability(&concert).await.1, 0);

    // Tickets of the user, the order by id, and the gate.
    let tickets = server
        .get(&format!("/users/{alice_id}/tickets"), Some(&alice))
        .await
        .expect(200);
    assert_eq!(tickets["tickets"].as_array().expect("tickets").len(), 2);
    let order_id = order["id"].as_str().expect("id");
    let fetched = server
        .get(&format!("/orders/{order_id}"), Some(&alice))
        .await
        .expect(200);
    assert_eq!(fetched, order);
    server
        .get(&format!("/orders/{order_id}"), Some(ADMIN_TOKEN))
        .await
        .expect(200);
    let token = order["tickets"][0]["token"].as_str().expect("token");
    assert_eq!(token.len(), 32, "128-bit hex token");
    let checked = server
        .post(
            "/tickets/verify",
            Some(ADMIN_TOKEN),
            json!({"token": token}),
        )
        .await
        .expect(200);
    assert!(checked["checked_in_at"].as_str().is_some());
    assert_eq!(checked["seat"], "A-2-3");

    // Operations endpoints.
    assert_eq!(
        server.get("/health", None).await.expect(200),
        json!({"status": "ok"})
    );
    let document = server.get("/openapi.json", None).await.expect(200);
    for path in [
        "/orders",
        "/holds/{id}/purchase",
        "/tickets/verify",
        "/users/{id}/tickets",
        "/concerts/{id}/seats",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "OpenAPI documents {path}"
        );
    }
    let metrics = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("text");
    for name in [
        "boxoffice_orders_total",
        "boxoffice_order_latency_seconds",
        "boxoffice_tickets_remaining",
        "boxoffice_shard_mailbox_depth",
        "boxoffice_payments_in_flight",
        "boxoffice_payment_latency_seconds",
    ] {
        assert!(text.contains(name), "metrics expose {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let server = Server::start(&["--demo"]);
    let concerts = server.get("/concerts", None).await.expect(200);
    let kinds: Vec<&str> = concerts["concerts"]
        .as_array()
        .expect("concerts")
        .iter()
        .map(|c| c["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["seated", "general"],
        "--demo seeds one concert of each kind"
    );
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

/// The node turns transparent huge pages off for itself (see `main.rs`): the kernel says so for its process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_without_transparent_huge_pages() {
    let server = Server::start(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the node's /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 and later)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

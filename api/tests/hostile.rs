//! A hostile client against the real binary: malformed, truncated, mistyped and oversized bodies, numbers out of
//! range, unicode edge cases, wrong content types, reused idempotency keys, garbage tokens, odd paths and methods,
//! requests the HTTP parser refuses, and connections that send a request slowly or never finish it.
//!
//! Every case goes through one `check`: the expected 4xx and `error.code`, the JSON error body
//! `{"error":{"code","message"}}`, no echo of a submitted secret, and `/health` 200 afterwards. Each test ends by
//! checking that every concert it used still has `remaining + held + sold == capacity` with exactly what its setup
//! sold and held: no hostile request changed the inventory.
//!
//! The one exception to the JSON body: a request that hyper's HTTP/1 parser refuses (a NUL in the request line, an
//! oversized header section, broken framing) is answered by hyper itself, before any boxoffice code runs, with a
//! bare 400 or 431 and `connection: close`. Those cases assert the status, the closed connection and that
//! the server stays up.

mod common;

use api::BODY_BYTES_MAX;
use api::extract::BODY_READ_TIMEOUT;
use common::{ADMIN_TOKEN, GOOD_CARD, Server};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A card number that only hostile bodies carry: no answer may ever quote it back.
const SECRET: &str = "4111111111111111";
/// The idempotency key of the fixture's one order.
const USED_KEY: &str = "hostile-first-order";
/// A request body larger than anything the server accepts (64 KiB): 10 MiB.
const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;
/// A raw exchange that takes longer than this has hung: a hang detector, not a performance assertion.
const RAW_TIMEOUT: Duration = Duration::from_secs(60);

/// One server with a user, a general-admission concert with two tickets sold (under [`USED_KEY`]) and a seated
/// concert with one seat held.
struct Fixture {
    server: Server,
    user_id: String,
    token: String,
    general: String,
    seated: String,
    hold: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = Server::start(&[]);
        let (user_id, token) = server.register("mallory", GOOD_CARD).await;
        let general = server.create_general(100, 4, 1000).await;
        let seated = server.create_seated(&["A"], 3, 4, 2).await;
        server
            .send(
                Method::POST,
                "/orders",
                Some(&token),
                Some(json!({"concert_id": general, "quantity": 2})),
                &[("idempotency-key", USED_KEY)],
            )
            .await
            .expect(201);
        let hold = server
            .hold(&token, json!({"concert_id": seated, "seats": ["A-1-1"]}))
            .await;
        Fixture {
            server,
            user_id,
            token,
            general,
            seated,
            hold,
        }
    }

    /// `host:port` for raw connections.
    fn address(&self) -> String {
        self.server.base.trim_start_matches("http://").to_owned()
    }

    /// Nothing a hostile client sent changed the inventory: the counts add up (asserted by `availability`) and are
    /// exactly what the setup sold and held.
    async fn assert_inventory_untouched(&self) {
        let (_, held, sold, _) = self.server.availability(&self.general).await;
        assert_eq!((held, sold), (0, 2), "general admission: held and sold");
        let (_, held, sold, _) = self.server.availability(&self.seated).await;
        assert_eq!((held, sold), (1, 0), "seated: held and sold");
    }
}

/// One request sent through reqwest and the 4xx it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, method: Method, path: impl Into<String>) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status: 0,
        code: "",
    }
}

impl Case {
    fn token(self, token: &str) -> Case {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    /// A body sent as `application/json`, whatever bytes it holds.
    fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.header("content-type", "application/json").body(body)
    }

    /// A body sent with no content type unless a `header` gives one.
    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Some(body.into());
        self
    }

    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }
}

async fn check(server: &Server, cases: Vec<Case>) {
    for case in cases {
        let url = format!("{}{}", server.base, case.path);
        let mut request = server.client.request(case.method.clone(), url);
        for (name, value) in &case.headers {
            let value = HeaderValue::from_bytes(value).expect("a header value reqwest can send");
            request = request.header(*name, value);
        }
        if let Some(body) = case.body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{}: no answer: {error}", case.name));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.expect("body");
        assert_json_error(
            case.name,
            (status, &content_type, &text),
            case.status,
            case.code,
        );
        assert_healthy(server, case.name).await;
    }
}

/// A 4xx with the expected status, `{"error":{"code","message"}}` with the expected code, and no echo of [`SECRET`].
fn assert_json_error(name: &str, reply: (u16, &str, &str), status: u16, code: &str) {
    let (got_status, content_type, text) = reply;
    assert_eq!(got_status, status, "{name}: status; body {text}");
    assert!((400..500).contains(&got_status), "{name}: a 4xx");
    assert!(
        !text.contains(SECRET),
        "{name}: the answer quotes a secret: {text}"
    );
    assert!(
        content_type.starts_with("application/json"),
        "{name}: content type {content_type:?}"
    );
    let body: Value =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("{name}: body is not JSON: {text}"));
    let object = body.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{name}: only `error`: {body}");
    let error = body["error"].as_object().expect("`error` is an object");
    assert_eq!(error.len(), 2, "{name}: only `code` and `message`: {body}");
    assert_eq!(body["error"]["code"], code, "{name}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{name}: a message: {body}"
    );
}

async fn assert_healthy(server: &Server, after: &str) {
    let reply = server.get("/health", None).await;
    assert_eq!(reply.status.as_u16(), 200, "healthy after {after}");
}

/// Bodies that are not JSON, or not one JSON document.
fn syntax_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let orders = || case("", M::POST, "/orders").token(&f.token);
    let users = || case("", M::POST, "/users");
    let utf16: Vec<u8> = "{}".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let malformed = |case: Case, name| Case { name, ..case }.expect(400, "malformed_json");
    vec![
        malformed(
            users().json(r#"{"username": "mallory2""#),
            "truncated object",
        ),
        malformed(users().json(r#"{"username": "mall"#), "truncated string"),
        malformed(orders().json(r#"{"concert_id": "#), "truncated order"),
        malformed(users().json(""), "empty body"),
        malformed(
            users().json(r#"{"username":"a","password":"b"} x"#),
            "trailing garbage",
        ),
        malformed(
            users().json(r#"{"username":"mallory2","password":"long enough"}{}"#),
            "two documents",
        ),
        malformed(users().json("{'username': 'mallory2'}"), "single quotes"),
        malformed(users().json(r#"{/* hi */"username":"x"}"#), "a comment"),
        malformed(users().json(r#"{"username":"x",}"#), "trailing comma"),
        malformed(orders().json(r#"{"concert_id":"c","quantity":NaN}"#), "NaN"),
        malformed(
            orders().json(r#"{"concert_id":"c","quantity":1e400}"#),
            "a number beyond f64",
        ),
        malformed(users().json("\u{feff}{}"), "a byte order mark"),
        malformed(
            users().json(b"{\"username\":\"\xff\xfe\"}".to_vec()),
            "invalid UTF-8",
        ),
        malformed(users().json(utf16), "UTF-16"),
        malformed(users().json(vec![0u8, 1, 2, 0xff]), "binary garbage"),
        // Typed bodies fail at the first `[` where a field belongs, long before any nesting limit.
        Case {
            name: "deep nesting",
            ..users()
        }
        .json("[".repeat(60_000))
        .expect(422, "invalid_body"),
        malformed(
            users().json(r#"{"username":"\ud800","password":"long enough"}"#),
            "lone leading surrogate",
        ),
        malformed(
            users().json(r#"{"username":"\udc00","password":"long enough"}"#),
            "lone trailing surrogate",
        ),
        malformed(
            users().json(r#"{"username":"\udc00\ud800","password":"long enough"}"#),
            "surrogates reversed",
        ),
    ]
}

/// Well-formed JSON of the wrong shape, the wrong type or out of range.
fn type_and_range_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let users = || case("", M::POST, "/users");
    let order = |name, body: String| {
        case(name, M::POST, "/orders")
            .token(&f.token)
            .json(body.replace("GA", &f.general).replace("SEATED", &f.seated))
    };
    let concert = |name, body: &str| {
        case(name, M::POST, "/concerts")
            .token(ADMIN_TOKEN)
            .json(body.to_owned())
    };
    let user_with_card = |name, card: &str| {
        Case { name, ..users() }.json(format!(
            r#"{{"username":"mallory2","password":"long enough","card":{card}}}"#
        ))
    };
    let card = |field: &str, value: &str| {
        let mut card = json!({"type": "visa", "holder_name": "M", "number": SECRET, "exp_month": 1,
                              "exp_year": 2030, "cvv": "123"});
        card[field] = serde_json::from_str(value).expect("a JSON value");
        card.to_string()
    };
    let many_seats = format!(
        r#"{{"concert_id":"SEATED","seats":[{}]}}"#,
        vec![r#""A-1-2""#; 5000].join(",")
    );
    let eleven_seats: Vec<String> = (1..=3)
        .flat_map(|row| (1..=4).map(move |seat| format!("A-{row}-{seat}")))
        .take(11)
        .collect();
    let long_label = format!("A-1-{}", "1".repeat(29));
    vec![
        Case { name: "null", ..users() }.json("null").expect(422, "invalid_body"),
        Case { name: "an array", ..users() }.json("[]").expect(422, "invalid_body"),
        Case { name: "a string", ..users() }.json(r#""mallory""#).expect(422, "invalid_body"),
        Case { name: "a number", ..users() }.json("42").expect(422, "invalid_body"),
        Case { name: "missing password", ..users() }.json(r#"{"username":"mallory2"}"#).expect(422, "invalid_body"),
        Case { name: "unknown field", ..users() }
            .json(r#"{"username":"mallory2","password":"long enough","admin":true}"#).expect(422, "invalid_body"),
        Case { name: "duplicate field", ..users() }
            .json(r#"{"username":"mallory2","username":"root","password":"long enough"}"#).expect(422, "invalid_body"),
        Case { name: "password a number", ..users() }
            .json(format!(r#"{{"username":"mallory2","password":{SECRET}}}"#)).expect(422, "invalid_body"),
        Case { name: "username a number", ..users() }
            .json(format!(r#"{{"username":{SECRET},"password":"long enough"}}"#)).expect(422, "invalid_body"),
        user_with_card("card a string", &format!(r#""{SECRET} 12/30 123""#)).expect(422, "invalid_body"),
        user_with_card("card a list", &format!(r#"["{SECRET}"]"#)).expect(422, "invalid_body"),
        user_with_card("card number a number", &card("number", SECRET)).expect(422, "invalid_body"),
        user_with_card("exp_month the card number", &card("exp_month", &format!(r#""{SECRET}""#))).expect(422, "invalid_body"),
        user_with_card("exp_month 13", &card("exp_month", "13")).expect(422, "invalid_request"),
        user_with_card("exp_month -1", &card("exp_month", "-1")).expect(422, "invalid_body"),
        user_with_card("exp_month 256", &card("exp_month", "256")).expect(422, "invalid_body"),
        user_with_card("exp_year 65536", &card("exp_year", "65536")).expect(422, "invalid_body"),
        user_with_card("cvv a number", &card("cvv", "123")).expect(422, "invalid_body"),
        order("concert_id a number", r#"{"concert_id":5,"quantity":1}"#.into()).expect(422, "invalid_body"),
        order("quantity a string", r#"{"concert_id":"GA","quantity":"1"}"#.into()).expect(422, "invalid_body"),
        order("quantity a fraction", r#"{"concert_id":"GA","quantity":1.5}"#.into()).expect(422, "invalid_body"),
        order("quantity true", r#"{"concert_id":"GA","quantity":true}"#.into()).expect(422, "invalid_body"),
        order("quantity -1", r#"{"concert_id":"GA","quantity":-1}"#.into()).expect(422, "invalid_body"),
        order("quantity 0", r#"{"concert_id":"GA","quantity":0}"#.into()).expect(422, "invalid_request"),
        order("quantity 11", r#"{"concert_id":"GA","quantity":11}"#.into()).expect(422, "invalid_request"),
        order("quantity u32::MAX", r#"{"concert_id":"GA","quantity":4294967295}"#.into()).expect(422, "invalid_request"),
        order("quantity u32::MAX + 1", r#"{"concert_id":"GA","quantity":4294967296}"#.into()).expect(422, "invalid_body"),
        order("quantity u64::MAX + 1", r#"{"concert_id":"GA","quantity":18446744073709551616}"#.into()).expect(422, "invalid_body"),
        order("quantity 1e10", r#"{"concert_id":"GA","quantity":1e10}"#.into()).expect(422, "invalid_body"),
        order("quantity null", r#"{"concert_id":"GA","quantity":null}"#.into()).expect(422, "invalid_request"),
        order("quantity and seats", r#"{"concert_id":"SEATED","quantity":1,"seats":["A-1-2"]}"#.into()).expect(422, "invalid_request"),
        order("seats a string", r#"{"concert_id":"SEATED","seats":"A-1-2"}"#.into()).expect(422, "invalid_body"),
        order("seats numbers", r#"{"concert_id":"SEATED","seats":[1,2]}"#.into()).expect(422, "invalid_body"),
        order("no seats", r#"{"concert_id":"SEATED","seats":[]}"#.into()).expect(422, "invalid_request"),
        order("eleven seats", json!({"concert_id": "SEATED", "seats": eleven_seats}).to_string()).expect(422, "invalid_request"),
        order("5000 seats", many_seats).expect(422, "invalid_request"),
        order("a seat twice", r#"{"concert_id":"SEATED","seats":["A-1-2","A-1-2"]}"#.into()).expect(422, "invalid_request"),
        order("seat zero", r#"{"concert_id":"SEATED","seats":["A-0-0"]}"#.into()).expect(422, "unknown_seat"),
        order("seat row beyond u64", r#"{"concert_id":"SEATED","seats":["A-99999999999999999999-1"]}"#.into()).expect(422, "unknown_seat"),
        order("seat row +1", r#"{"concert_id":"SEATED","seats":["A-+1-1"]}"#.into()).expect(422, "unknown_seat"),
        order("seat row 01", r#"{"concert_id":"SEATED","seats":["A-01-1"]}"#.into()).expect(422, "unknown_seat"),
        order("seat label 33 characters", json!({"concert_id": "SEATED", "seats": [long_label]}).to_string()).expect(422, "invalid_request"),
        order("seats for general admission", r#"{"concert_id":"GA","seats":["A-1-1"]}"#.into()).expect(422, "invalid_request"),
        order("empty concert_id", r#"{"concert_id":"","quantity":1}"#.into()).expect(422, "invalid_request"),
        order("concert_id 65 characters", json!({"concert_id": "c".repeat(65), "quantity": 1}).to_string()).expect(422, "invalid_request"),
        order("unknown concert", r#"{"concert_id":"c_0000","quantity":1}"#.into()).expect(404, "concert_not_found"),
        case("hold of 11", M::POST, "/holds").token(&f.token)
            .json(json!({"concert_id": f.general, "quantity": 11}).to_string()).expect(422, "invalid_request"),
        case("hold of -5", M::POST, "/holds").token(&f.token)
            .json(json!({"concert_id": f.general, "quantity": -5}).to_string()).expect(422, "invalid_body"),
        concert("price -1", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":-1,"capacity":5}"#).expect(422, "invalid_body"),
        concert("price u64::MAX", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":18446744073709551615,"capacity":5}"#).expect(422, "invalid_request"),
        concert("price u64::MAX + 1", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":18446744073709551616,"capacity":5}"#).expect(422, "invalid_body"),
        concert("capacity -5", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":-5}"#).expect(422, "invalid_body"),
        concert("capacity 0", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":0}"#).expect(422, "invalid_request"),
        concert("capacity 10,000,001", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":10000001}"#).expect(422, "invalid_request"),
        concert("capacity u64::MAX", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":18446744073709551615}"#).expect(422, "invalid_request"),
        concert("shards u32::MAX", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":5,"shards":4294967295}"#).expect(422, "invalid_request"),
        concert("rows u32::MAX", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"sections":[{"name":"A","rows":4294967295,"seats_per_row":4294967295}]}"#).expect(422, "invalid_request"),
        concert("sections an object", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"sections":{"name":"A"}}"#).expect(422, "invalid_body"),
        concert("section name with a dash", r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"sections":[{"name":"A-1","rows":1,"seats_per_row":1}]}"#).expect(422, "invalid_request"),
        concert("starts_at nonsense", r#"{"name":"x","starts_at":"9999-99-99T99:99:99Z","price_cents":1,"capacity":5}"#).expect(422, "invalid_request"),
        concert("starts_at a number", r#"{"name":"x","starts_at":2027,"price_cents":1,"capacity":5}"#).expect(422, "invalid_body"),
        concert("empty name", r#"{"name":"","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":5}"#).expect(422, "invalid_request"),
        case("ticket token a number", M::POST, "/tickets/verify").token(ADMIN_TOKEN).json(r#"{"token":42}"#).expect(422, "invalid_body"),
        case("ticket token empty", M::POST, "/tickets/verify").token(ADMIN_TOKEN).json(r#"{"token":""}"#).expect(422, "invalid_request"),
        case("ticket token 129 characters", M::POST, "/tickets/verify").token(ADMIN_TOKEN)
            .json(json!({"token": "t".repeat(129)}).to_string()).expect(422, "invalid_request"),
        case("unknown ticket", M::POST, "/tickets/verify").token(ADMIN_TOKEN).json(r#"{"token":"nope"}"#).expect(404, "unknown_ticket"),
        case("update card true", M::PUT, format!("/users/{}", f.user_id)).token(&f.token).json(r#"{"card":true}"#).expect(422, "invalid_body"),
        case("update short password", M::PUT, format!("/users/{}", f.user_id)).token(&f.token).json(r#"{"password":"short"}"#).expect(422, "invalid_request"),
        case("limit -1", M::GET, "/users?limit=-1").token(ADMIN_TOKEN).expect(400, "invalid_query"),
        case("limit 0", M::GET, "/users?limit=0").token(ADMIN_TOKEN).expect(422, "invalid_request"),
        case("limit u64::MAX + 1", M::GET, "/users?limit=18446744073709551616").token(ADMIN_TOKEN).expect(400, "invalid_query"),
        case("limit twice", M::GET, "/users?limit=1&limit=2").token(ADMIN_TOKEN).expect(400, "invalid_query"),
        case("limit empty", M::GET, "/users?limit=").token(ADMIN_TOKEN).expect(400, "invalid_query"),
        case("unknown query parameter", M::GET, "/users?admin=1").token(ADMIN_TOKEN).expect(400, "invalid_query"),
    ]
}

/// Unicode that no field accepts: control characters, non-ASCII usernames, over-long strings of 4-byte characters.
fn unicode_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let user = |name, username: &str, password: &str| {
        case(name, M::POST, "/users")
            .json(json!({"username": username, "password": password}).to_string())
            .expect(422, "invalid_request")
    };
    let update = |name, body: Value| {
        case(name, M::PUT, format!("/users/{}", f.user_id))
            .token(&f.token)
            .json(body.to_string())
            .expect(422, "invalid_request")
    };
    let concert_named = |name, concert_name: String| {
        case(name, M::POST, "/concerts")
            .token(ADMIN_TOKEN)
            .json(json!({"name": concert_name, "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5}).to_string())
            .expect(422, "invalid_request")
    };
    let order = |name, body: Value| {
        case(name, M::POST, "/orders")
            .token(&f.token)
            .json(body.to_string())
    };
    vec![
        user("username with NUL", "mal\u{0}lory", "long enough"),
        user("username with an RTL mark", "\u{200f}mallory", "long enough"),
        user("username with an RTL override", "mal\u{202e}lory", "long enough"),
        user("username with an emoji", "mallory\u{1f3b8}", "long enough"),
        user("username of 64 emoji", &"\u{1f3b8}".repeat(64), "long enough"),
        user("username of 10,000 characters", &"m".repeat(10_000), "long enough"),
        user("password with NUL", "mallory2", "long\u{0}enough"),
        user("password of 129 emoji", "mallory2", &"\u{1f511}".repeat(129)),
        update("city with an escape sequence", json!({"city": "\u{1b}[31mred"})),
        update("street of 101 emoji", json!({"street": "\u{1f3e0}".repeat(101)})),
        update("holder name with NUL", json!({"card": {"type": "visa", "holder_name": "M\u{0}", "number": GOOD_CARD,
                                                       "exp_month": 1, "exp_year": 2030, "cvv": "123"}})),
        concert_named("concert name with NUL", "Night\u{0}".into()),
        concert_named("concert name with an escape sequence", "\u{1b}]0;pwned\u{7}".into()),
        concert_named("concert name of 201 emoji", "\u{1f3b8}".repeat(201)),
        concert_named("concert name of em spaces", "\u{2003}\u{2003}".into()),
        case("starts_at in full-width digits", M::POST, "/concerts").token(ADMIN_TOKEN)
            .json(json!({"name": "x", "starts_at": "\u{ff12}027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5}).to_string())
            .expect(422, "invalid_request"),
        order("concert_id with NUL", json!({"concert_id": "c\u{0}", "quantity": 1})).expect(422, "invalid_request"),
        order("concert_id with an RTL override", json!({"concert_id": format!("\u{202e}{}", f.general), "quantity": 1}))
            .expect(404, "concert_not_found"),
        order("seat with NUL", json!({"concert_id": f.seated, "seats": ["A-1-2\u{0}"]})).expect(422, "unknown_seat"),
        order("seat in Arabic-Indic digits", json!({"concert_id": f.seated, "seats": ["A-\u{661}-\u{662}"]})).expect(422, "unknown_seat"),
        case("ticket token of emoji", M::POST, "/tickets/verify").token(ADMIN_TOKEN)
            .json(json!({"token": "\u{1f3ab}".repeat(10)}).to_string()).expect(404, "unknown_ticket"),
        case("login username with NUL", M::POST, "/users/verify")
            .json(json!({"username": "mallory\u{0}", "password": "correct horse battery"}).to_string())
            .expect(422, "invalid_request"),
    ]
}

/// Bodies too large, content types that are not JSON.
fn transport_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let huge = || vec![b' '; HUGE_BODY_BYTES];
    let huge_string = format!(r#"{{"username":"{}"}}"#, "a".repeat(HUGE_BODY_BYTES));
    let users = |name| case(name, M::POST, "/users");
    let unsupported = |name, content_type: &[u8]| {
        users(name)
            .header("content-type", content_type.to_vec())
            .body(r#"{"username":"mallory2","password":"long enough"}"#)
            .expect(415, "unsupported_media_type")
    };
    vec![
        users("10 MiB of spaces")
            .json(huge())
            .expect(413, "payload_too_large"),
        users("a 10 MiB username")
            .json(huge_string)
            .expect(413, "payload_too_large"),
        case("a 10 MiB order", M::POST, "/orders")
            .token(&f.token)
            .json(huge())
            .expect(413, "payload_too_large"),
        case("a 10 MiB concert", M::POST, "/concerts")
            .token(ADMIN_TOKEN)
            .json(huge())
            .expect(413, "payload_too_large"),
        users("one byte over the limit")
            .json(vec![b' '; BODY_BYTES_MAX + 1])
            .expect(413, "payload_too_large"),
        users("exactly the limit, all spaces")
            .json(vec![b' '; BODY_BYTES_MAX])
            .expect(400, "malformed_json"),
        users("no content type")
            .body(r#"{"username":"mallory2","password":"long enough"}"#)
            .expect(415, "unsupported_media_type"),
        users("10 MiB without a content type")
            .body(huge())
            .expect(415, "unsupported_media_type"),
        unsupported("text/plain", b"text/plain"),
        unsupported("a form", b"application/x-www-form-urlencoded"),
        unsupported("multipart", b"multipart/form-data; boundary=x"),
        unsupported("application/jsonx", b"application/jsonx"),
        unsupported("json without a type", b"json"),
        unsupported("an empty content type", b""),
        unsupported(
            "a content type with raw bytes",
            b"application/json; charset=\xff",
        ),
    ]
}

/// Garbage bearer tokens, tokens of the wrong kind, odd path ids and methods no route knows.
fn auth_path_method_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let me = format!("/users/{}", f.user_id);
    let unauthorized = |name, value: Vec<u8>| {
        case(name, M::GET, me.clone())
            .header("authorization", value)
            .expect(401, "unauthorized")
    };
    let not_allowed = |name, method: &[u8], path: &str| {
        case(name, Method::from_bytes(method).expect("method"), path)
            .token(&f.token)
            .expect(405, "method_not_allowed")
    };
    let order = |name, id: String| case(name, M::GET, format!("/orders/{id}")).token(&f.token);
    vec![
        case("no token", M::GET, me.clone()).expect(401, "unauthorized"),
        unauthorized("Bearer without a token", b"Bearer".to_vec()),
        unauthorized(
            "Basic credentials",
            b"Basic bWFsbG9yeTpsb25nIGVub3VnaA==".to_vec(),
        ),
        unauthorized(
            "a 10 KB token",
            format!("Bearer {}", "t".repeat(10_000)).into_bytes(),
        ),
        unauthorized("a token of raw bytes", b"Bearer \xff\xfe\x80".to_vec()),
        unauthorized(
            "the token twice",
            format!("Bearer {} {}", f.token, f.token).into_bytes(),
        ),
        unauthorized(
            "a tab for the space",
            format!("Bearer\t{}", f.token).into_bytes(),
        ),
        unauthorized(
            "the token with a suffix",
            format!("Bearer {}x", f.token).into_bytes(),
        ),
        unauthorized(
            "the admin token with a suffix",
            format!("Bearer {ADMIN_TOKEN}x").into_bytes(),
        ),
        unauthorized(
            "the token as a cookie",
            format!("token={}", f.token).into_bytes(),
        ),
        case("a user creating a concert", M::POST, "/concerts")
            .token(&f.token)
            .json(r#"{"name":"x","starts_at":"2027-01-01T20:00:00Z","price_cents":1,"capacity":5}"#)
            .expect(403, "forbidden"),
        case("the admin ordering", M::POST, "/orders")
            .token(ADMIN_TOKEN)
            .json(json!({"concert_id": f.general, "quantity": 1}).to_string())
            .expect(403, "forbidden"),
        case("another user's profile", M::GET, "/users/u_0000")
            .token(&f.token)
            .expect(403, "forbidden"),
        case("a user listing users", M::GET, "/users")
            .token(&f.token)
            .expect(403, "forbidden"),
        order("an order id of NUL", "%00".into()).expect(404, "order_not_found"),
        order("an order id of invalid UTF-8", "%ff%fe".into()).expect(400, "invalid_path"),
        order("an order id of 129 characters", "o".repeat(129)).expect(404, "not_found"),
        order("an order id of 10,000 characters", "o".repeat(10_000)).expect(404, "not_found"),
        order("an order id with CR LF", "%0d%0aSet-Cookie:%20a=b".into())
            .expect(404, "order_not_found"),
        order("an order id of an escaped slash", "..%2f..%2fadmin".into())
            .expect(404, "order_not_found"),
        case(
            "a user id with an escaped slash",
            M::GET,
            "/users/..%2fusers",
        )
        .token(ADMIN_TOKEN)
        .expect(404, "user_not_found"),
        case("a hold id of NUL", M::DELETE, "/holds/%00")
            .token(&f.token)
            .expect(404, "hold_not_found"),
        case("a hold id of invalid UTF-8", M::POST, "/holds/%ff/purchase")
            .token(&f.token)
            .expect(400, "invalid_path"),
        case("a concert id of emoji", M::GET, "/concerts/%F0%9F%8E%B8")
            .expect(404, "concert_not_found"),
        case("an unknown path", M::GET, "/admin").expect(404, "not_found"),
        case("a trailing slash", M::GET, "/health/").expect(404, "not_found"),
        case(
            "a path too deep",
            M::GET,
            format!("/concerts/{}/seats/A-1-1", f.seated),
        )
        .expect(404, "not_found"),
        not_allowed("FOO", b"FOO", "/orders"),
        not_allowed("PATCH a list", b"PATCH", "/concerts"),
        not_allowed("DELETE a list", b"DELETE", "/concerts"),
        not_allowed("TRACE", b"TRACE", "/health"),
        not_allowed("OPTIONS", b"OPTIONS", "/orders"),
        not_allowed("PUT an order", b"PUT", "/orders/o_0000"),
        not_allowed("GET holds", b"GET", "/holds"),
        not_allowed(
            "a 1,000-letter method",
            "M".repeat(1000).as_bytes(),
            "/orders",
        ),
    ]
}

/// Idempotency keys reused with another request, and keys that are not keys.
fn idempotency_cases(f: &Fixture) -> Vec<Case> {
    use Method as M;
    let order = |name, key: &[u8], body: Value| {
        case(name, M::POST, "/orders")
            .token(&f.token)
            .header("idempotency-key", key.to_vec())
            .json(body.to_string())
    };
    let one = json!({"concert_id": f.general, "quantity": 1});
    vec![
        order(
            "the key with another quantity",
            USED_KEY.as_bytes(),
            json!({"concert_id": f.general, "quantity": 3}),
        )
        .expect(422, "idempotency_key_reused"),
        order(
            "the key for seats",
            USED_KEY.as_bytes(),
            json!({"concert_id": f.seated, "seats": ["A-3-4"]}),
        )
        .expect(422, "idempotency_key_reused"),
        case(
            "the key to purchase a hold",
            M::POST,
            format!("/holds/{}/purchase", f.hold),
        )
        .token(&f.token)
        .header("idempotency-key", USED_KEY)
        .expect(422, "idempotency_key_reused"),
        order(
            "a key of 65 characters",
            "k".repeat(65).as_bytes(),
            one.clone(),
        )
        .expect(422, "invalid_idempotency_key"),
        order("an empty key", b"", one.clone()).expect(422, "invalid_idempotency_key"),
        order("a key with a space", b"my key", one.clone()).expect(422, "invalid_idempotency_key"),
        order("a key with a tab", b"my\tkey", one.clone()).expect(422, "invalid_idempotency_key"),
        order("a key of raw bytes", b"\xff\xfe", one.clone())
            .expect(422, "invalid_idempotency_key"),
        order("a key in Cyrillic", "ключ".as_bytes(), one).expect(422, "invalid_idempotency_key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_not_json_or_too_large_are_refused_and_change_nothing() {
    let fixture = Fixture::new().await;
    check(&fixture.server, syntax_cases(&fixture)).await;
    check(&fixture.server, transport_cases(&fixture)).await;
    fixture.assert_inventory_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_ranges_and_unicode_are_refused_and_change_nothing() {
    let fixture = Fixture::new().await;
    check(&fixture.server, type_and_range_cases(&fixture)).await;
    check(&fixture.server, unicode_cases(&fixture)).await;
    fixture.assert_inventory_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_odd_paths_and_reused_keys_are_refused_and_change_nothing() {
    let fixture = Fixture::new().await;
    check(&fixture.server, auth_path_method_cases(&fixture)).await;
    check(&fixture.server, idempotency_cases(&fixture)).await;
    fixture.assert_inventory_untouched().await;
}

/// Text the server must keep exactly: right-to-left marks, 4-byte emoji, the longest strings allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_within_the_limits_round_trips() {
    let fixture = Fixture::new().await;
    let server = &fixture.server;
    let city = format!(
        "\u{5ea}\u{5dc} \u{5d0}\u{5d1}\u{5d9}\u{5d1}\u{200f} {}",
        "\u{1f3b8}".repeat(80)
    );
    let street = "\u{1f3e0}".repeat(100);
    let updated = server
        .send(
            Method::PUT,
            &format!("/users/{}", fixture.user_id),
            Some(&fixture.token),
            Some(json!({"city": city, "street": street})),
            &[],
        )
        .await
        .expect(200);
    assert_eq!(
        (updated["city"].as_str(), updated["street"].as_str()),
        (Some(city.as_str()), Some(street.as_str()))
    );
    let name = format!(
        "\u{202b}\u{5e9}\u{5d9}\u{5e8}\u{202c} {}",
        "\u{1f3bb}".repeat(190)
    );
    let concert = server
        .post(
            "/concerts",
            Some(ADMIN_TOKEN),
            json!({"name": name, "starts_at": "2027-01-01T20:00:00Z", "price_cents": 1, "capacity": 5}),
        )
        .await
        .expect(201);
    let id = concert["id"].as_str().expect("id");
    let described = server
        .get(&format!("/concerts/{id}"), None)
        .await
        .expect(200);
    assert_eq!(described["name"], name.as_str());
    let longest = "m".repeat(64);
    let password = "\u{1f511}".repeat(128);
    server
        .post(
            "/users",
            None,
            json!({"username": longest, "password": password}),
        )
        .await
        .expect(201);
    server
        .post(
            "/users/verify",
            None,
            json!({"username": longest, "password": password}),
        )
        .await
        .expect(200);
    // The scheme of `Authorization` is case-insensitive (RFC 9110).
    let reply = server
        .send(
            Method::GET,
            &format!("/users/{}", fixture.user_id),
            None,
            None,
            &[("authorization", &format!("bearer {}", fixture.token))],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    fixture.assert_inventory_untouched().await;
}

/// A request sent as raw bytes on its own connection, and the status (and `error.code`, when boxoffice rather
/// than hyper's parser answers) it must get.
struct RawCase {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn raw(
    name: &'static str,
    request: impl Into<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> RawCase {
    RawCase {
        name,
        request: request.into(),
        status,
        code,
    }
}

/// Writes `request` on a fresh connection while reading the answer (the server may answer and close before it
/// has read everything), until the server closes. Returns the status, the content type and the body.
fn exchange(address: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(RAW_TIMEOUT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let request = request.to_vec();
    // Write errors are expected: the server may close once it has refused the request.
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let _ = writing.join();
    if let Err(error) = read {
        assert!(!answer.is_empty(), "no answer, and {error}");
    }
    parse_response(&answer)
}

/// (status, content type, body) of an HTTP/1.1 response read to the end of its connection.
fn parse_response(answer: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

async fn check_raw(server: &Server, cases: Vec<RawCase>) {
    let address = server.base.trim_start_matches("http://").to_owned();
    for case in cases {
        let address = address.clone();
        let request = case.request;
        let (status, content_type, body) =
            tokio::task::spawn_blocking(move || exchange(&address, &request))
                .await
                .expect("exchange");
        match case.code {
            Some(code) => {
                assert_json_error(case.name, (status, &content_type, &body), case.status, code)
            }
            // Refused by hyper's parser before the application sees it: a bare status, then the connection closes
            // (the exchange read to its end).
            None => assert_eq!(status, case.status, "{}: status; body {body}", case.name),
        }
        assert_healthy(server, case.name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_the_parser_refuses_leave_the_server_up() {
    let fixture = Fixture::new().await;
    let token = &fixture.token;
    let get = |target: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
    };
    let users = |headers: &str, body: &[u8]| {
        let mut request = format!("POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n{headers}\r\n").into_bytes();
        request.extend_from_slice(body);
        request
    };
    let mut chunked_huge = Vec::with_capacity(HUGE_BODY_BYTES + 4096);
    for _ in 0..HUGE_BODY_BYTES / 8192 {
        chunked_huge.extend_from_slice(b"2000\r\n");
        chunked_huge.extend_from_slice(&[b' '; 8192]);
        chunked_huge.extend_from_slice(b"\r\n");
    }
    chunked_huge.extend_from_slice(b"0\r\n\r\n");
    let many_headers: String = (0..200).map(|i| format!("X-{i}: a\r\n")).collect();
    check_raw(
        &fixture.server,
        vec![
            raw(
                "a NUL in the request line",
                b"GET /orders/\0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
                400,
                None,
            ),
            raw(
                // Longer than the whole header section may be: refused before hyper sees the line end.
                "a request line of 100 KB",
                get(&format!("/orders/{}", "o".repeat(100_000))),
                431,
                None,
            ),
            raw(
                "a header of 500 KB",
                format!(
                    "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                    "a".repeat(500_000)
                ),
                431,
                None,
            ),
            raw(
                "200 headers",
                format!(
                    "GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}Connection: close\r\n\r\n"
                ),
                431,
                None,
            ),
            raw("not HTTP", "HELLO\r\n\r\n", 400, None),
            raw(
                "HTTP/9.9",
                "GET /health HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n",
                400,
                None,
            ),
            raw("HTTP/0.9", "GET /health\r\n\r\n", 400, None),
            raw(
                "Content-Length not a number",
                users("Content-Length: abc\r\n", b"{}"),
                400,
                None,
            ),
            raw(
                "two Content-Lengths",
                users("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
                400,
                None,
            ),
            raw(
                "Transfer-Encoding identity",
                users("Transfer-Encoding: identity\r\n", b"{}"),
                400,
                None,
            ),
            raw(
                "obsolete line folding",
                "GET /health HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\nConnection: close\r\n\r\n",
                400,
                None,
            ),
            raw(
                "a space in a header name",
                "GET /health HTTP/1.1\r\nHost: x\r\nBad Header: a\r\nConnection: close\r\n\r\n",
                400,
                None,
            ),
            raw(
                "broken chunked framing",
                users("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n"),
                400,
                Some("bad_request"),
            ),
            raw(
                "10 MiB chunked",
                users("Transfer-Encoding: chunked\r\n", &chunked_huge),
                413,
                Some("payload_too_large"),
            ),
            raw(
                "a dot-dot order id",
                get("/orders/.."),
                404,
                Some("order_not_found"),
            ),
            raw(
                "an escaped dot-dot order id",
                get("/orders/%2e%2e"),
                404,
                Some("order_not_found"),
            ),
            raw(
                "dot-dot out of the root",
                get("/../../etc/passwd"),
                404,
                Some("not_found"),
            ),
            raw("a double slash", get("//health"), 404, Some("not_found")),
            raw(
                "an empty concert id",
                get("/concerts//seats"),
                404,
                Some("concert_not_found"),
            ),
            raw(
                "an absurdly long method",
                format!(
                    "{} /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    "M".repeat(1000)
                ),
                405,
                Some("method_not_allowed"),
            ),
        ],
    )
    .await;
    fixture.assert_inventory_untouched().await;
}

/// Connections that connect and never send a byte.
const IDLE_CONNECTIONS: usize = 200;
/// Connections that send a request line, then one more header line per [`DRIP_INTERVAL`], never the end.
const SLOW_HEADER_CONNECTIONS: usize = 50;
/// Connections that send complete headers, then a body that never completes: silent, or a byte per interval.
const SLOW_BODY_CONNECTIONS: usize = 9;
/// How often a slow client sends its next byte or header line.
const DRIP_INTERVAL: Duration = Duration::from_millis(500);

/// Sends a request line and a header line every [`DRIP_INTERVAL`] until told to stop; never ends the headers.
fn drip_headers(address: &str, stop: &AtomicBool) {
    let mut stream = TcpStream::connect(address).expect("connect");
    let mut line = 0;
    let mut next = b"POST /users HTTP/1.1\r\nHost: x\r\n".to_vec();
    while !stop.load(Ordering::Relaxed) && stream.write_all(&next).is_ok() {
        std::thread::sleep(DRIP_INTERVAL);
        line += 1;
        next = format!("X-Drip-{line}: a\r\n").into_bytes();
    }
}

/// Sends complete headers announcing `length` body bytes, then a few bytes and either nothing more or one byte
/// per [`DRIP_INTERVAL`], and reads until the server closes. Returns the parsed answer.
fn drip_body(address: &str, length: usize, drip: bool) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    let head = format!(
        "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"username\":"
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream
        .set_read_timeout(Some(DRIP_INTERVAL))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < RAW_TIMEOUT,
            "the server neither answered nor closed a slow body"
        );
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if drip && answer.is_empty() {
                    let _ = stream.write_all(b" ");
                }
            }
            Err(error) => panic!("slow body: {error} after {} bytes of answer", answer.len()),
        }
    }
    parse_response(&answer)
}

/// What an ordinary client does, each step answered as usual: health, a concert, a hold and its release.
async fn ordinary_round(fixture: &Fixture) {
    let server = &fixture.server;
    assert_healthy(server, "an ordinary request").await;
    server
        .get(&format!("/concerts/{}", fixture.general), None)
        .await
        .expect(200);
    let hold = server
        .post(
            "/holds",
            Some(&fixture.token),
            json!({"concert_id": fixture.general, "quantity": 1}),
        )
        .await
        .expect(201);
    let id = hold["id"].as_str().expect("hold id");
    let released = server
        .send(
            Method::DELETE,
            &format!("/holds/{id}"),
            Some(&fixture.token),
            None,
            &[],
        )
        .await;
    assert_eq!(released.status.as_u16(), 204, "{}", released.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_do_not_starve_other_clients() {
    let fixture = Fixture::new().await;
    let address = fixture.address();
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let slow_headers: Vec<_> = (0..SLOW_HEADER_CONNECTIONS)
        .map(|_| {
            let (address, stop) = (address.clone(), stop.clone());
            std::thread::spawn(move || drip_headers(&address, &stop))
        })
        .collect();
    let slow_bodies: Vec<_> = (0..SLOW_BODY_CONNECTIONS)
        .map(|i| {
            let address = address.clone();
            let (length, drip) = match i % 3 {
                0 => (1000, false),
                1 => (1000, true),
                _ => (HUGE_BODY_BYTES, false),
            };
            std::thread::spawn(move || drip_body(&address, length, drip))
        })
        .collect();

    // While they hang on, ordinary clients are served as usual, for as long as a slow body may take.
    let started = Instant::now();
    while started.elapsed() < BODY_READ_TIMEOUT + Duration::from_secs(1) {
        ordinary_round(&fixture).await;
    }

    // A body that does not arrive in time is refused with 408, and its connection closed (the read ended).
    for slow_body in slow_bodies {
        let (status, content_type, body) = tokio::task::spawn_blocking(move || slow_body.join())
            .await
            .expect("join")
            .expect("slow body thread");
        assert_json_error(
            "a slow body",
            (status, &content_type, &body),
            408,
            "request_timeout",
        );
    }
    stop.store(true, Ordering::Relaxed);
    for slow_header in slow_headers {
        tokio::task::spawn_blocking(move || slow_header.join())
            .await
            .expect("join")
            .expect("slow header thread");
    }
    drop(idle);
    assert_healthy(&fixture.server, "slow and idle connections").await;
    fixture.assert_inventory_untouched().await;
}

/// Opens a connection, sends `first` (possibly nothing), then one header line per [`DRIP_INTERVAL`] if `drip`,
/// and returns how long the server took to close it.
fn until_closed(address: &str, first: &[u8], drip: bool) -> Duration {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.write_all(first).expect("write");
    stream
        .set_read_timeout(Some(DRIP_INTERVAL))
        .expect("timeout");
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    let mut line = 0;
    loop {
        assert!(
            started.elapsed() < RAW_TIMEOUT,
            "the server never closed a connection whose headers never end"
        );
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                line += 1;
                if drip
                    && stream
                        .write_all(format!("X-Drip-{line}: a\r\n").as_bytes())
                        .is_err()
                {
                    return started.elapsed();
                }
            }
            Err(_) => return started.elapsed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_whose_headers_never_end_are_closed() {
    let fixture = Fixture::new().await;
    let address = fixture.address();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || match i % 3 {
                0 => until_closed(&address, b"", false),
                1 => until_closed(&address, b"POST /users HTTP/1.1\r\nHost: x\r\n", false),
                _ => until_closed(&address, b"POST /users HTTP/1.1\r\nHost: x\r\n", true),
            })
        })
        .collect();
    for client in clients {
        let waited = tokio::task::spawn_blocking(move || client.join())
            .await
            .expect("join")
            .expect("client");
        eprintln!("closed after {waited:?}");
    }
    assert_healthy(&fixture.server, "connections whose headers never end").await;
    fixture.assert_inventory_untouched().await;
}

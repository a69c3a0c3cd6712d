//! Starts a `boxoffice payment-provider` on 127.0.0.1 and talks to it as a Stripe client would.

use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const API_KEY: &str = "sk_test_0123456789abcdef";
pub const CARD: &str = "4242424242424242";
pub const DECLINING: &str = "4000000000000002";
pub const CVC: &str = "7391";

pub struct Provider {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Provider {
    pub fn start(dir: &std::path::Path, flags: &[&str]) -> Provider {
        Self::start_on("127.0.0.1:0", dir, flags)
    }

    /// Starts on `listen`: the address of a provider that was killed, to come back where its clients look.
    pub fn start_on(listen: &str, dir: &std::path::Path, flags: &[&str]) -> Provider {
        Self::launch(listen, dir, flags, &[], Stdio::inherit())
    }

    /// Starts on `listen` with `env` added, its log (stderr, at `RUST_LOG=debug`) to `stderr`.
    pub fn launch(
        listen: &str,
        dir: &std::path::Path,
        flags: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Provider {
        let mut child = Command::new(env!("CARGO_BIN_EXE_boxoffice"))
            .args(["payment-provider", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(flags)
            .env("BOXOFFICE_PAYMENT_API_KEY", API_KEY)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let base = line
            .trim()
            .strip_prefix("boxoffice payment-provider listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Provider {
            child,
            base,
            client,
        }
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Waits up to `limit` for the process to end by itself (a crash point); whether it did.
    pub fn wait_for_exit(&mut self, limit: Duration) -> bool {
        wait_for_exit(&mut self.child, limit)
    }

    /// The host and port it listens on.
    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    pub async fn post(&self, path: &str, key: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        match request.send().await {
            Ok(response) => Reply::from(response).await,
            Err(_) => Reply::broken(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_KEY);
        match request.send().await {
            Ok(response) => Reply::from(response).await,
            Err(_) => Reply::broken(),
        }
    }

    pub async fn card(&self, number: &str) -> String {
        let reply = self
            .post(
                "/v1/payment_methods",
                None,
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2030"),
                    ("card[cvc]", CVC),
                ],
            )
            .await;
        reply.expect(200)["id"].as_str().expect("an id").to_owned()
    }
}

impl Provider {
    /// Every intent created for the order `order`.
    pub async fn intents_of(&self, order: &str) -> Vec<Value> {
        let query = format!("metadata['order_id']:'{order}'");
        let reply = self
            .get_through_faults(&format!(
                "/v1/payment_intents/search?query={}",
                encode(&query)
            ))
            .await;
        reply["data"].as_array().expect("data").clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub replayed: bool,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The answer read, or [`Reply::broken`] when the connection broke before it was whole.
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let replayed = header("idempotent-replayed").is_some();
        let retry_after = header("retry-after");
        let Ok(bytes) = response.bytes().await else {
            return Reply::broken();
        };
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            replayed,
            retry_after,
            body,
        }
    }

    /// What a client meets when the connection is refused, reset or cut in the middle of the answer (the
    /// provider's injected faults): no answer, shown as `502`.
    pub fn broken() -> Reply {
        Reply {
            status: StatusCode::BAD_GATEWAY,
            replayed: false,
            retry_after: None,
            body: Value::Null,
        }
    }

    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        self.body
    }

    pub fn error(&self) -> (&str, &str) {
        let error = &self.body["error"];
        (
            error["type"].as_str().unwrap_or(""),
            error["code"].as_str().unwrap_or(""),
        )
    }
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

impl Provider {
    /// `GET path`, asked again while the provider's injected faults answer 500 or break the connection; the body
    /// of its 200.
    pub async fn get_through_faults(&self, path: &str) -> Value {
        loop {
            let reply = self.get(path).await;
            if ![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY].contains(&reply.status)
            {
                return reply.expect(200);
            }
        }
    }

    /// Every intent it holds, newest first (paged through `GET /v1/payment_intents`).
    pub async fn all_intents(&self) -> Vec<Value> {
        let mut intents: Vec<Value> = Vec::new();
        loop {
            let path = match intents.last() {
                Some(last) => format!(
                    "/v1/payment_intents?limit=100&starting_after={}",
                    last["id"].as_str().expect("an id")
                ),
                None => "/v1/payment_intents?limit=100".to_owned(),
            };
            let page = self.get_through_faults(&path).await;
            intents.extend(page["data"].as_array().expect("data").iter().cloned());
            if page["has_more"] != true {
                return intents;
            }
        }
    }
}

/// Waits up to `limit` for `child` to end by itself; whether it did.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The form of a confirmed, manually captured intent of `amount` for the order `order`.
pub fn intent_form<'a>(
    method: &'a str,
    amount: &'a str,
    order: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("amount", amount),
        ("currency", "eur"),
        ("payment_method", method),
        ("confirm", "true"),
        ("capture_method", "manual"),
        ("metadata[order_id]", order),
    ]
}

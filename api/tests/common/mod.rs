//! Starts a real `boxoffice serve` on 127.0.0.1 with a free port and a temporary data dir, and talks to it;
//! [`cluster`] starts several as a cluster.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cluster;
pub mod provider;
pub mod sse;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A card the simulator approves, and one it always declines.
pub const GOOD_CARD: &str = "4242424242424242";
pub const DECLINED_CARD: &str = "4000000000000002";
/// Per-address limits raised for every server the harness starts, through their environment variables: a test
/// sends everything from 127.0.0.1, as hundreds of clients. A test of a limit gives its flag, which wins.
pub const GENEROUS_PER_ADDRESS_LIMITS: [(&str, &str); 3] = [
    ("BOXOFFICE_SIGNUPS_PER_ADDRESS_MAX", "100000000"),
    ("BOXOFFICE_HELD_TICKETS_PER_ADDRESS_MAX", "100000000"),
    ("BOXOFFICE_CONNECTIONS_PER_ADDRESS_MAX", "1000000"),
];
/// A request that takes longer than this has hung: a hang detector, not a performance assertion.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a start (recovery included) may take before the harness calls it hung.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Server {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    /// Taken by [`Server::kill`] and [`Server::stop`] to start the next server on the same data.
    data_dir: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    /// Reads an answer: its status, `Retry-After`, and its JSON body (`null` when empty; panics when not JSON).
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"))
        };
        Reply {
            status,
            body,
            retry_after,
        }
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected reply: {}",
            self.body
        );
        self.body
    }

    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected reply: {}",
            self.body
        );
        assert_eq!(self.code(), code, "unexpected reply: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "an error carries a message: {}",
            self.body
        );
    }
}

/// A temporary directory only its owner may read, as a node's data dir should be (`tempfile` makes them as the
/// umask says, usually readable by everyone, which the node reports at start).
pub fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("temp dir")
}

impl Server {
    /// Starts a server with the given extra flags and waits until it is ready (`/health` 200).
    pub fn start(extra_args: &[&str]) -> Server {
        Self::start_in(private_dir(), extra_args)
    }

    /// Starts a server on an existing data dir, e.g. one a killed server left behind.
    pub fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Server {
        let filter = std::env::var("BOXOFFICE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self::launch(data_dir, extra_args, Stdio::inherit(), &filter)
    }

    /// Starts a server whose log (stderr, at `RUST_LOG=debug`) goes to the file at `log`, appended.
    pub fn start_logged(
        data_dir: tempfile::TempDir,
        extra_args: &[&str],
        log: &std::path::Path,
    ) -> Server {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Self::launch(data_dir, extra_args, Stdio::from(file), "debug")
    }

    fn launch(
        data_dir: tempfile::TempDir,
        extra_args: &[&str],
        stderr: Stdio,
        log_filter: &str,
    ) -> Server {
        Self::launch_with(
            data_dir,
            "127.0.0.1:0",
            extra_args,
            &[],
            stderr,
            log_filter,
            &[],
        )
    }

    /// Starts `boxoffice serve --listen LISTEN` with `extra_args` and `env`, through `wrapper` if not empty (e.g.
    /// `ip netns exec NAME`), and waits until `/health` answers 200 on the address it prints.
    pub fn launch_with(
        data_dir: tempfile::TempDir,
        listen: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
        log_filter: &str,
        wrapper: &[&str],
    ) -> Server {
        let binary = env!("CARGO_BIN_EXE_boxoffice");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("serve")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra_args)
            .env("BOXOFFICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", log_filter)
            .envs(GENEROUS_PER_ADDRESS_LIMITS)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start boxoffice");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let base = line
            .trim()
            .strip_prefix("boxoffice listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build()
            .expect("client");
        let server = Server {
            child,
            base,
            client,
            data_dir: Some(data_dir),
        };
        server.wait_until_healthy();
        server
    }

    /// Polls `/health` (over a plain socket: this runs outside any runtime) until it answers 200.
    fn wait_until_healthy(&self) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://");
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let healthy = std::net::TcpStream::connect(address)
                .and_then(|mut stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    stream.write_all(
                        b"GET /health HTTP/1.1\r\nHost: boxoffice\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply)?;
                    Ok(reply.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if healthy {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL: the process dies at once, in the middle of whatever it was doing. Returns its data dir.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.sigkill();
        self.child.wait().expect("wait");
        self.data_dir.take().expect("data dir")
    }

    /// Waits up to `limit` for the process to end by itself (at a crash point, `BOXOFFICE_CRASH_AT`) and returns
    /// its data dir; panics with `why` if it is still running then.
    pub fn wait_for_exit(mut self, limit: Duration, why: &str) -> tempfile::TempDir {
        assert!(provider::wait_for_exit(&mut self.child, limit), "{why}");
        self.data_dir.take().expect("data dir")
    }

    /// Sends SIGKILL without waiting, while other tasks may still be talking to the server.
    pub fn sigkill(&self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM, asserts a clean exit, and returns the data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        assert!(
            self.child.wait().expect("wait").success(),
            "exit 0 after SIGTERM"
        );
        self.data_dir.take().expect("data dir")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.as_ref().expect("data dir").path()
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("request completes")).await
    }

    /// The value of an unlabelled gauge or counter in `GET /metrics`; 0 before it is first set.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.trim().parse::<f64>().expect("a metric value"))
            .next()
            .unwrap_or(0.0)
    }

    /// Waits until the metric `name` reads `value` (work the node does after an answer, such as a capture), for
    /// at most a minute.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let current = self.metric(name).await;
            if current == value {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stayed {current}, not {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole `GET /metrics` text.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answer");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics body")
    }

    /// A client whose connections come from `source` (an address of 127.0.0.0/8): another client address.
    pub fn client_from(&self, source: std::net::IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .local_address(source)
            .build()
            .expect("client")
    }

    /// A raw connection from `source` with a receive buffer of `receive_buffer` bytes (small: the client's
    /// window stays small), that has sent `request`.
    pub async fn raw_from(
        &self,
        source: std::net::IpAddr,
        receive_buffer: u32,
        request: &[u8],
    ) -> std::io::Result<tokio::net::TcpStream> {
        use tokio::io::AsyncWriteExt;
        let address: std::net::SocketAddr = self
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(receive_buffer)?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(address).await?;
        stream.write_all(request).await?;
        Ok(stream)
    }

    /// The host:port of the server, for raw requests.
    pub fn authority(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, token, None, &[])
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, token, Some(body), &[])
            .await
    }

    /// Sends a raw body with a JSON content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Reply::read(request.send().await.expect("request completes")).await
    }

    /// Registers a user with a card; returns (id, token).
    pub async fn register(&self, username: &str, card_number: &str) -> (String, String) {
        let body = self
            .post(
                "/users",
                None,
                json!({
                    "username": username,
                    "password": "correct horse battery",
                    "card": {"type": "visa", "holder_name": "Test Buyer", "number": card_number,
                             "exp_month": 12, "exp_year": 2030, "cvv": "123"}
                }),
            )
            .await
            .expect(201);
        (
            body["id"].as_str().expect("id").to_owned(),
            body["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Registers `count` users concurrently (argon2 makes each take a while).
    pub async fn register_many(
        &self,
        prefix: &str,
        count: usize,
        card_number: &str,
    ) -> Vec<(String, String)> {
        let mut users = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
            let names: Vec<String> = chunk.iter().map(|i| format!("{prefix}{i}")).collect();
            let batch = futures_util::future::join_all(
                names.iter().map(|name| self.register(name, card_number)),
            )
            .await;
            users.extend(batch);
        }
        users
    }

    pub async fn create_general(&self, capacity: u64, shards: u32, price_cents: u64) -> String {
        let body = self
            .post(
                "/concerts",
                Some(ADMIN_TOKEN),
                json!({"name": "GA test", "starts_at": "2027-01-01T20:00:00Z",
                       "price_cents": price_cents, "capacity": capacity, "shards": shards}),
            )
            .await
            .expect(201);
        body["id"].as_str().expect("id").to_owned()
    }

    /// A seated concert of `sections` × `rows` × `seats_per_row`.
    pub async fn create_seated(
        &self,
        sections: &[&str],
        rows: u32,
        seats_per_row: u32,
        shards: u32,
    ) -> String {
        let sections: Vec<Value> = sections
            .iter()
            .map(|name| json!({"name": name, "rows": rows, "seats_per_row": seats_per_row}))
            .collect();
        let body = self
            .post(
                "/concerts",
                Some(ADMIN_TOKEN),
                json!({"name": "Seated test", "starts_at": "2027-01-01T20:00:00Z",
                       "price_cents": 1000, "sections": sections, "shards": shards}),
            )
            .await
            .expect(201);
        body["id"].as_str().expect("id").to_owned()
    }

    /// Holds what `claim` names (`{"concert_id", "seats"|"quantity"}`) for the bearer of `token`; the hold's id.
    pub async fn hold(&self, token: &str, claim: Value) -> String {
        self.post("/holds", Some(token), claim).await.expect(201)["id"]
            .as_str()
            .expect("hold id")
            .to_owned()
    }

    /// `remaining`, `held`, `sold` and `capacity` of a concert; asserts they add up.
    pub async fn availability(&self, concert_id: &str) -> (u64, u64, u64, u64) {
        let body = self
            .get(&format!("/concerts/{concert_id}"), None)
            .await
            .expect(200);
        let field = |name: &str| body[name].as_u64().expect(name);
        let (remaining, held, sold, capacity) = (
            field("remaining"),
            field("held"),
            field("sold"),
            field("capacity"),
        );
        assert_eq!(
            remaining + held + sold,
            capacity,
            "remaining + held + sold == capacity: {body}"
        );
        (remaining, held, sold, capacity)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Secrets shorter than this (cvvs) turn up by chance inside longer runs of digits and letters (timestamps, ids,
/// hashes): for them a match counts only where it is not part of such a run, as a leaked value would be
/// (`"cvv":"7391"`, `cvv=7391`).
pub const SHORT_SECRET_CHARS: usize = 6;

/// Whether `form` occurs in `bytes`; for a short `secret`, only where no letter or digit touches it.
pub fn occurs(bytes: &[u8], form: &str, secret: &str) -> bool {
    let flanked = |at: Option<&u8>| at.is_some_and(u8::is_ascii_alphanumeric);
    let short = secret.len() < SHORT_SECRET_CHARS;
    bytes
        .windows(form.len())
        .enumerate()
        .any(|(start, window)| {
            window == form.as_bytes()
                && !(short
                    && (flanked(start.checked_sub(1).and_then(|before| bytes.get(before)))
                        || flanked(bytes.get(start + form.len()))))
        })
}

/// Runs `boxoffice inspect --json` on a stopped node's data dir; asserts it exits 0 and returns its report.
pub fn inspect(data_dir: &std::path::Path) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["inspect", "--json", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run inspect");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "inspect printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success(),
        "inspect found violations: {report}"
    );
    assert_eq!(report["violations"], json!([]));
    report
}

/// Every file under `dir`, recursively, with its contents: what a scan for leaked secrets reads.
pub fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            found.push((path, bytes));
        }
    }
    found
}

//! The HTTP client: HTTP/1.1 over tokio TCP through hyper's connection API, with no pool of its own. A burst runs
//! `concurrency` lanes, and each lane owns one kept-alive [`Connection`]; how many connections are open is
//! therefore exactly known, and nothing races to open spare ones (a pooled client did: hyperium/hyper#2312).
//!
//! Connections come from one or more source addresses in 127.0.0.0/8: one address can open about 28,000
//! connections to one server port (the kernel's ephemeral port range), so 100,000 at once need four or more.
//!
//! Only loopback targets are accepted unless `--allow-remote-target` says otherwise ([`allow_remote_targets`]): a
//! load generator that can open 100,000 connections is not pointed at someone else's machine by a typo.
//! `--target` may list several (a cluster's nodes or fronts, comma-separated): [`parse_targets`] checks each.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;

/// Source addresses at most: 127.0.0.1 to 127.0.0.254.
pub const SOURCE_ADDRESSES_MAX: u32 = 254;
/// Connections one source address is given at most, below the ephemeral port range (32768-60999 by default).
pub const CONNECTIONS_PER_SOURCE_ADDRESS_MAX: u64 = 25_000;

/// Where a run's requests go: the targets lanes are spread over (setup calls go to the first), and, when the run
/// started a cluster, its shard nodes' public endpoints (node `k` at `k`), whose `/metrics` a burst reads.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub targets: Vec<Target>,
    pub nodes: Vec<Target>,
}

impl Endpoints {
    /// `bases` (at least one), each connected to from `source_addresses` addresses; no known nodes.
    pub fn new(
        bases: &[String],
        source_addresses: u32,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        if bases.is_empty() {
            return Err("no target".into());
        }
        let targets = bases
            .iter()
            .map(|base| Target::new(base, source_addresses, request_timeout))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            targets,
            nodes: Vec::new(),
        })
    }

    /// Where setup calls and checks go.
    pub fn first(&self) -> &Target {
        &self.targets[0]
    }

    pub fn urls(&self) -> Vec<String> {
        self.targets.iter().map(Target::base).collect()
    }
}

/// Where requests go, and from where.
#[derive(Clone, Debug)]
pub struct Target {
    address: SocketAddr,
    /// `HOST:PORT` as given, for the `Host` header.
    authority: String,
    /// Addresses to connect from; empty: the kernel chooses.
    sources: Vec<IpAddr>,
    /// A request without its whole answer after this long has failed (`transport timeout`).
    pub request_timeout: Duration,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    Connect(std::io::Error),
    /// The connection closed (or broke) before the answer was complete.
    Closed(String),
    Timeout,
}

impl Failure {
    /// The failure in a word, as reports count it.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "transport connect",
            Failure::Closed(_) => "transport closed",
            Failure::Timeout => "transport timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Closed(error) => write!(f, "connection closed: {error}"),
            Failure::Timeout => f.write_str("no answer in time"),
        }
    }
}

impl Target {
    /// `base` is `http://HOST:PORT` with a loopback HOST; `source_addresses` above one spreads connections over
    /// 127.0.0.1 upwards.
    pub fn new(
        base: &str,
        source_addresses: u32,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let (authority, address) = parse_loopback(base)?;
        if !(1..=SOURCE_ADDRESSES_MAX).contains(&source_addresses) {
            return Err(format!(
                "--source-addresses must be 1 to {SOURCE_ADDRESSES_MAX}"
            ));
        }
        if source_addresses > 1 && !address.is_ipv4() {
            return Err("--source-addresses above 1 needs an IPv4 target".into());
        }
        let sources = if source_addresses > 1 {
            (1..=source_addresses)
                .map(|octet| IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet as u8)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            address,
            authority,
            sources,
            request_timeout,
        })
    }

    /// `http://HOST:PORT`, as given.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// The source addresses connections come from (1: the kernel chooses).
    pub fn source_addresses(&self) -> u32 {
        (self.sources.len() as u32).max(1)
    }

    /// Opens a kept-alive connection for lane `lane` (which picks the source address).
    pub async fn connect(&self, lane: usize) -> Result<Connection, Failure> {
        let socket = match self.address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(Failure::Connect)?;
        if !self.sources.is_empty() {
            let source = self.sources[lane % self.sources.len()];
            defer_port_choice(&socket).map_err(Failure::Connect)?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(Failure::Connect)?;
        }
        socket.set_nodelay(true).map_err(Failure::Connect)?;
        let stream = socket
            .connect(self.address)
            .await
            .map_err(Failure::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| Failure::Closed(error.to_string()))?;
        // Drives the connection until the sender is dropped or the server closes it.
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            authority: self.authority.clone(),
        })
    }

    /// One JSON call on a fresh connection, within the request timeout; an answer other than `expected` is an
    /// error naming its status and the server's error code.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
        expected: StatusCode,
    ) -> Result<T, String> {
        let what = format!("{method} {path}");
        let exchange = async {
            let mut connection = self.connect(0).await?;
            let request = connection.request(
                method,
                path,
                token,
                &[],
                body.map(|b| Bytes::from(b.to_string())),
            );
            connection.send(request).await
        };
        let (status, answer) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
            .map_err(|failure| format!("{what}: {failure}"))?;
        if status != expected {
            return Err(format!("{what}: {status} {}", error_code(&answer)));
        }
        serde_json::from_slice(&answer).map_err(|error| format!("{what}: unexpected body: {error}"))
    }

    /// The body of `GET path` answered 200, as text (e.g. `/metrics`).
    pub async fn text(&self, path: &str) -> Result<String, String> {
        let exchange = async {
            let mut connection = self.connect(0).await?;
            let request = connection.request(Method::GET, path, None, &[], None);
            connection.send(request).await
        };
        let (status, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
            .map_err(|failure| format!("GET {path}: {failure}"))?;
        if status != StatusCode::OK {
            return Err(format!("GET {path}: {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("GET {path}: not UTF-8"))
    }

    /// The status of `GET path`, or why there was none.
    pub async fn status(&self, path: &str) -> Result<StatusCode, Failure> {
        let exchange = async {
            let mut connection = self.connect(0).await?;
            let request = connection.request(Method::GET, path, None, &[], None);
            connection.send(request).await
        };
        let (status, _) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))?;
        Ok(status)
    }
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux): a socket bound to a source address with port 0 gets its port when it
/// connects, chosen for its destination, as an unbound socket does. Without it `bind` chooses a port no other socket
/// on that address uses, whatever its destination, by a search through the ephemeral range that grows with the ports
/// in use: opening 50,000 connections from two addresses took 20 s with the CPU in the kernel, and the reconnections
/// of a burst starved everything else.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SOL_IP: i32 = 0;
    const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
    unsafe extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            length: u32,
        ) -> i32;
    }
    let on: i32 = 1;
    // SAFETY: the descriptor is the socket's own and open; the value points to an int of the length given.
    let result = unsafe {
        setsockopt(
            socket.as_raw_fd(),
            SOL_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// Whether a request may be sent a second time when its kept-alive connection turns out to have been closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Reads, and writes the server recognises when they come again (an `Idempotency-Key`).
    Safe,
    /// A write that would be done twice.
    Never,
}

impl Target {
    /// One request over a lane's kept-alive `connection`, opened when there is none. A kept-alive connection the
    /// server had closed before the answer is replaced and the request sent once more when `resend` allows; a
    /// request without an answer within the request timeout is [`Failure::Timeout`] and its connection (mid
    /// request, so useless) is dropped. A connection found closed before anything was sent is replaced whatever
    /// `resend` says.
    #[allow(clippy::too_many_arguments)]
    pub async fn exchange(
        &self,
        lane: usize,
        connection: &mut Option<Connection>,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        resend: Resend,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let attempt = async {
            loop {
                let reused = connection.is_some();
                let open = match connection {
                    Some(open) => open,
                    None => connection.insert(self.connect(lane).await?),
                };
                if let Err(failure) = open.ready().await {
                    // Nothing was sent: a fresh connection may carry any request.
                    *connection = None;
                    if reused {
                        continue;
                    }
                    return Err(failure);
                }
                let request = open.request(method.clone(), path, token, headers, body.clone());
                match open.send(request).await {
                    Ok(answer) => return Ok(answer),
                    Err(failure) => {
                        *connection = None;
                        let stale = reused && matches!(failure, Failure::Closed(_));
                        if !(stale && resend == Resend::Safe) {
                            return Err(failure);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, attempt).await {
            Ok(answer) => answer,
            Err(_) => {
                *connection = None;
                Err(Failure::Timeout)
            }
        }
    }
}

/// One kept-alive HTTP/1.1 connection: one request at a time.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    /// A request with a bearer token, extra headers and a JSON body.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        json: Option<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = match json {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                json
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).expect("a valid request")
    }

    /// Waits until the connection can take a request; an error means it is closed and nothing was sent on it.
    pub async fn ready(&mut self) -> Result<(), Failure> {
        self.sender
            .ready()
            .await
            .map_err(|error| Failure::Closed(error.to_string()))
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let closed = |error: hyper::Error| Failure::Closed(error.to_string());
        self.sender.ready().await.map_err(closed)?;
        let response = self.sender.send_request(request).await.map_err(closed)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(closed)?
            .to_bytes();
        Ok((status, body))
    }
}

impl Connection {
    /// Sends `request` and returns as soon as the answer's head has come: the body is read by the caller, frame by
    /// frame, as it arrives (a stream of server-sent events).
    pub async fn open(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, hyper::body::Incoming), Failure> {
        let closed = |error: hyper::Error| Failure::Closed(error.to_string());
        self.sender.ready().await.map_err(closed)?;
        let response = self.sender.send_request(request).await.map_err(closed)?;
        Ok((response.status(), response.into_body()))
    }
}

/// The `error.code` of an error body, or `-` when there is none.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

/// Whether targets off this machine are accepted: set once from `--allow-remote-target`.
static REMOTE_TARGETS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Accept targets that are not loopback addresses from now on (`--allow-remote-target`).
pub fn allow_remote_targets() {
    REMOTE_TARGETS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Accepts `http://HOST[:PORT][/]` whose host is a loopback address or `localhost`, or, after
/// [`allow_remote_targets`], any address or host name (resolved once, here); returns the authority and the socket
/// address.
pub fn parse_loopback(base: &str) -> Result<(String, SocketAddr), String> {
    let remote = REMOTE_TARGETS.load(std::sync::atomic::Ordering::Relaxed);
    let refused = || {
        if remote {
            format!("--target must be http://HOST:PORT, not {base}")
        } else {
            format!(
                "--target must be http://127.x.y.z:PORT (loopback only; --allow-remote-target for another \
                 host), not {base}"
            )
        }
    };
    let rest = base.strip_prefix("http://").ok_or_else(refused)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(refused());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| refused())?)
        }
        _ => (authority, 80),
    };
    let ip = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        literal => match literal.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if remote && !literal.is_empty() => {
                use std::net::ToSocketAddrs;
                (literal, port)
                    .to_socket_addrs()
                    .map_err(|error| format!("--target {base}: {error}"))?
                    .next()
                    .ok_or_else(refused)?
                    .ip()
            }
            Err(_) => return Err(refused()),
        },
    };
    if !ip.is_loopback() && !remote {
        return Err(refused());
    }
    Ok((authority.to_owned(), SocketAddr::new(ip, port)))
}

/// `--target`: one or more bases, comma-separated, each as [`parse_loopback`] accepts it; at least one, none twice.
pub fn parse_targets(list: &str) -> Result<Vec<String>, String> {
    let mut bases: Vec<String> = Vec::new();
    for base in list.split(',').map(str::trim) {
        if base.is_empty() {
            return Err(format!("--target {list}: an empty entry"));
        }
        let (authority, _) = parse_loopback(base)?;
        let base = format!("http://{authority}");
        if bases.contains(&base) {
            return Err(format!("--target lists {base} twice"));
        }
        bases.push(base);
    }
    Ok(bases)
}

/// Source addresses needed for `connections` at once, at [`CONNECTIONS_PER_SOURCE_ADDRESS_MAX`] each.
pub fn source_addresses_for(connections: u64) -> u32 {
    let needed = connections
        .div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS_MAX)
        .max(1);
    u32::try_from(needed)
        .unwrap_or(u32::MAX)
        .min(SOURCE_ADDRESSES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let check = |base: &str, expected: Option<&str>| {
            let parsed = parse_loopback(base)
                .ok()
                .map(|(_, address)| address.to_string());
            assert_eq!(parsed.as_deref(), expected, "{base}");
        };
        check("http://127.0.0.1:8080", Some("127.0.0.1:8080"));
        check("http://127.0.0.1:8080/", Some("127.0.0.1:8080"));
        check("http://localhost:1", Some("127.0.0.1:1"));
        check("http://127.3.2.1", Some("127.3.2.1:80"));
        check("http://[::1]:81", Some("[::1]:81"));
        check("http://[::1]", Some("[::1]:80"));
        check("http://10.0.0.1:8080", None);
        check("https://127.0.0.1:8080", None);
        check("127.0.0.1:8080", None);
        check("http://example.com", None);
        check("http://127.0.0.1.example.com:80", None);
        check("http://127.0.0.1:8080/path", None);
        check("http://127.0.0.1:port", None);
    }

    #[test]
    fn several_targets_are_each_checked() {
        assert_eq!(
            parse_targets("http://127.0.0.1:1, http://localhost:2/").unwrap(),
            ["http://127.0.0.1:1", "http://localhost:2"]
        );
        assert_eq!(
            parse_targets("http://127.0.0.1:1").unwrap(),
            ["http://127.0.0.1:1"]
        );
        assert!(parse_targets("http://127.0.0.1:1,http://10.0.0.1:2").is_err());
        let refused = parse_targets("http://10.0.0.1:2").unwrap_err();
        assert!(refused.contains("--allow-remote-target"), "{refused}");
        assert!(parse_targets("http://127.0.0.1:1,").is_err());
        assert!(parse_targets("http://127.0.0.1:1,http://127.0.0.1:1/").is_err());
        let target = Target::new("http://localhost:7", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(target.base(), "http://localhost:7");
    }

    #[test]
    fn enough_source_addresses_for_the_connections() {
        assert_eq!(source_addresses_for(0), 1);
        assert_eq!(source_addresses_for(10_000), 1);
        assert_eq!(source_addresses_for(25_000), 1);
        assert_eq!(source_addresses_for(25_001), 2);
        assert_eq!(source_addresses_for(100_000), 4);
        assert_eq!(source_addresses_for(u64::MAX), SOURCE_ADDRESSES_MAX);
    }

    #[test]
    fn error_codes_come_from_the_body() {
        assert_eq!(
            error_code(br#"{"error":{"code":"sold_out","message":"m"}}"#),
            "sold_out"
        );
        assert_eq!(error_code(b"Bad Request"), "-");
    }

    #[tokio::test]
    async fn connections_come_from_every_source_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        let target = Target::new(&base, 3, Duration::from_secs(5)).expect("a target");
        let mut sources = Vec::new();
        for lane in 0..6 {
            let _connection = target.connect(lane).await.expect("connects");
            let (accepted, from) = listener.accept().expect("accepted");
            drop(accepted);
            sources.push(from.ip().to_string());
        }
        assert_eq!(
            sources,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3"
            ]
        );
    }

    #[test]
    fn source_addresses_need_an_ipv4_target() {
        let timeout = Duration::from_secs(1);
        assert!(Target::new("http://127.0.0.1:1", 4, timeout).is_ok());
        assert!(Target::new("http://[::1]:1", 4, timeout).is_err());
        assert!(Target::new("http://127.0.0.1:1", 0, timeout).is_err());
        assert!(Target::new("http://127.0.0.1:1", 255, timeout).is_err());
    }
}

//! The client side of the internal transport: HTTP/2 (cleartext, prior knowledge) to every shard node, with
//! postcard bodies for shard requests and streamed bodies for forwarded public requests and feeds.
//!
//! Why HTTP/2 on hyper rather than gRPC: hyper is already the node's HTTP stack, one HTTP/2 connection
//! multiplexes thousands of concurrent requests, its pings detect a dead peer, and streaming a forwarded response
//! (an event stream) is a body like any other; postcard bodies are the journal's encoding already. tonic would add
//! a code generator, prost and a second set of message types for the same few calls.
//!
//! Limits, per peer: [`CONNECTIONS_PER_PEER`] connections, each opened on demand within [`CONNECT_TIMEOUT`] and
//! pinged every [`KEEP_ALIVE_INTERVAL`] (a peer that does not answer a ping within [`KEEP_ALIVE_TIMEOUT`] loses the
//! connection, and every request on it fails at once); at most [`REQUESTS_IN_FLIGHT_PER_PEER`] requests in flight
//! (more wait, within their deadline, then `overloaded`); every call has a deadline. A peer whose connection just
//! failed is not dialled again for [`RECONNECT_BACKOFF`]: calls to it fail at once meanwhile. A call that gets no
//! answer is `EngineError::NodeUnavailable`; only idempotent shard requests are retried, once, and only when the
//! request never left (the connection was refused or reset before it was sent).
//!
//! Metrics per peer: `boxoffice_cluster_peer_latency_seconds{peer,call}`,
//! `boxoffice_cluster_peer_errors_total{peer,kind}`, `boxoffice_cluster_peer_reachable{peer}` (1 or 0) and
//! `boxoffice_cluster_peer_in_flight{peer}`.

use crate::config::{ClusterConfig, NodeAddress};
use crate::wire::{
    self, CLIENT_HEADER, FeedOpen, SCOPE_HEADER, SECRET_HEADER, SHARD_PATH, ShardAnswer, ShardCall,
};
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use engine::EngineError;
use engine::ids::ConcertId;
use engine::remote::{NodeId, PeerError, PeerShards, ShardReply, ShardRequest};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Connections to one peer; requests are spread over them.
pub const CONNECTIONS_PER_PEER: usize = 4;
/// Requests in flight to one peer at most (forwarded public requests, event streams included).
pub const REQUESTS_IN_FLIGHT_PER_PEER: usize = 16_384;
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an open connection is pinged.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is given up.
/// Generous: a node whose cores are saturated by a burst answers pings late, and a connection given up fails
/// every request on it. A peer cut off is noticed within interval + timeout, inside a request's deadline; a shard
/// request fails on its own deadline sooner.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After a failed connection, how long calls to that peer fail at once instead of dialling again.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Flow-control windows of an internal connection. Fixed rather than adaptive: h2 closes a connection whose
/// peer sent more small DATA frames than half the connection window allows before the application reads them
/// (its defence against floods of tiny frames), and a node saturated by a burst holds thousands of small request
/// bodies unread; 2 MiB closed connections under 15,000 orders at once, failing every request on them. A stream's
/// window stays small: it is what a front buffers for one forwarded answer its client does not read (an event
/// stream whose subscriber stopped reading), until the client's connection is closed.
pub const STREAM_WINDOW_BYTES: u32 = 128 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Bytes of one stream an internal connection queues to send at most: what a node holds for one forwarded
/// answer its peer does not take.
pub const STREAM_SEND_BUFFER_BYTES: usize = 128 * 1024;
/// Deadline of a request to a shard of another node.
pub const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from a peer (a shard's book view of one node's users is the largest).
pub const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How much of the cluster a forwarded public request is answered for; see [`wire::SCOPE_HEADER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Node,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::Node => "node",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "cluster" => Some(Scope::Cluster),
            "node" => Some(Scope::Node),
            _ => None,
        }
    }
}

/// Why a call failed, before it becomes an `EngineError`.
#[derive(Debug)]
enum Failure {
    /// The request never reached the peer: no connection, or it was refused or reset before sending.
    NotSent(String),
    /// Sent; no answer within the deadline, or the connection broke: it may have taken effect.
    Lost(String),
    /// Too many requests in flight to that peer.
    Busy,
}

struct Peer {
    address: NodeAddress,
    label: String,
    slots: Vec<tokio::sync::Mutex<Option<SendRequest<Body>>>>,
    next_slot: AtomicUsize,
    in_flight: Arc<Semaphore>,
    /// When the last attempt to connect failed, while no connection has succeeded since.
    down_since: Mutex<Option<Instant>>,
}

impl Peer {
    fn new(address: NodeAddress) -> Self {
        let label = address.id.to_string();
        metrics::gauge!("boxoffice_cluster_peer_reachable", "peer" => label.clone()).set(1.0);
        Self {
            address,
            label,
            slots: (0..CONNECTIONS_PER_PEER)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_slot: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_PEER)),
            down_since: Mutex::new(None),
        }
    }

    fn is_reachable(&self) -> bool {
        self.down_since.lock().expect("peer state lock").is_none()
    }

    fn mark(&self, up: bool) {
        let mut down_since = self.down_since.lock().expect("peer state lock");
        match (up, down_since.is_some()) {
            (true, true) => {
                tracing::info!(peer = %self.address.id, url = %self.address.url, "peer reachable again");
                *down_since = None;
            }
            (false, false) => {
                tracing::warn!(peer = %self.address.id, url = %self.address.url, "peer unreachable");
                *down_since = Some(Instant::now());
            }
            (false, true) => *down_since = Some(Instant::now()),
            (true, false) => {}
        }
        metrics::gauge!("boxoffice_cluster_peer_reachable", "peer" => self.label.clone())
            .set(if up { 1.0 } else { 0.0 });
    }

    fn error(&self, kind: &'static str) {
        metrics::counter!("boxoffice_cluster_peer_errors_total", "peer" => self.label.clone(), "kind" => kind)
            .increment(1);
    }

    /// A connection to send on: an open one, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, Failure> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut current = slot.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *current = None;
        let backing_off = self
            .down_since
            .lock()
            .expect("peer state lock")
            .is_some_and(|since| since.elapsed() < RECONNECT_BACKOFF);
        if backing_off {
            return Err(Failure::NotSent("unreachable a moment ago".into()));
        }
        match self.connect().await {
            Ok(sender) => {
                self.mark(true);
                *current = Some(sender.clone());
                Ok(sender)
            }
            Err(reason) => {
                self.error("connect");
                self.mark(false);
                Err(Failure::NotSent(reason))
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.address.authority),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|error| format!("connect: {error}"))?;
        stream
            .set_nodelay(true)
            .map_err(|error| format!("nodelay: {error}"))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_send_buf_size(STREAM_SEND_BUFFER_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        let peer = self.address.id;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(peer, error = ?error, "connection to peer ended");
            }
        });
        Ok(sender)
    }
}

/// Every shard node as seen from this process.
pub struct Peers {
    nodes: Vec<Peer>,
    secret: HeaderValue,
    next_any: AtomicUsize,
}

impl Peers {
    pub fn new(config: &ClusterConfig) -> Arc<Self> {
        let mut secret = HeaderValue::from_str(config.secret().value())
            .expect("the secret was checked to be visible ASCII");
        secret.set_sensitive(true);
        Arc::new(Self {
            nodes: config.nodes.iter().cloned().map(Peer::new).collect(),
            secret,
            next_any: AtomicUsize::new(0),
        })
    }

    pub fn node_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn address(&self, node: NodeId) -> &NodeAddress {
        &self.nodes[node as usize].address
    }

    /// Whether the last attempt to reach `node` succeeded.
    pub fn is_reachable(&self, node: NodeId) -> bool {
        self.nodes[node as usize].is_reachable()
    }

    /// The next node, round the list, starting after the last one picked: how a front spreads requests that any
    /// shard node can answer. Nodes believed unreachable come last.
    pub fn rotation(&self) -> Vec<NodeId> {
        let count = self.nodes.len();
        let first = self.next_any.fetch_add(1, Ordering::Relaxed);
        let (mut up, down): (Vec<NodeId>, Vec<NodeId>) = (0..count)
            .map(|offset| ((first + offset) % count) as NodeId)
            .partition(|node| self.is_reachable(*node));
        up.extend(down);
        up
    }

    fn request(&self, node: NodeId, method: Method, path: &str, body: Body) -> Request<Body> {
        let uri = format!(
            "http://{}{path}",
            self.nodes[node as usize].address.authority
        );
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .expect("internal requests are well formed");
        request
            .headers_mut()
            .insert(SECRET_HEADER, self.secret.clone());
        request
    }

    /// Sends `request` to `node` and waits for the head of its answer within `deadline`.
    async fn send(
        &self,
        node: NodeId,
        call: &'static str,
        request: Request<Body>,
        deadline: Duration,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let peer = &self.nodes[node as usize];
        let started = Instant::now();
        let _permit = match peer.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(deadline, peer.in_flight.clone().acquire_owned())
                .await
                .map_err(|_| Failure::Busy)?
                .expect("the in-flight semaphore is never closed"),
        };
        let in_flight =
            metrics::gauge!("boxoffice_cluster_peer_in_flight", "peer" => peer.label.clone());
        in_flight.increment(1.0);
        let outcome = async {
            let mut sender = peer.sender().await?;
            let remaining = deadline.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, sender.send_request(request)).await {
                Err(_) => {
                    peer.error("timeout");
                    Err(Failure::Lost("no answer within the deadline".into()))
                }
                Ok(Err(error)) if error.is_canceled() => {
                    // hyper cancelled it before sending: the connection was closing.
                    peer.error("reset");
                    Err(Failure::NotSent(error.to_string()))
                }
                Ok(Err(error)) => {
                    peer.error("transport");
                    peer.mark(false);
                    Err(Failure::Lost(format!("{error:?}")))
                }
                Ok(Ok(response)) => Ok(response),
            }
        }
        .await;
        in_flight.decrement(1.0);
        metrics::histogram!("boxoffice_cluster_peer_latency_seconds", "peer" => peer.label.clone(), "call" => call)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    fn unavailable(&self, node: NodeId, call: &str, failure: Failure) -> EngineError {
        match failure {
            Failure::Busy => {
                tracing::warn!(peer = node, call, "too many requests in flight to a peer");
                EngineError::Overloaded
            }
            Failure::NotSent(reason) | Failure::Lost(reason) => {
                tracing::debug!(peer = node, call, %reason, "peer call failed");
                EngineError::NodeUnavailable { node }
            }
        }
    }

    /// Sends a request to one shard of another node; see the module comment for what is retried.
    pub async fn call_shard(
        &self,
        node: NodeId,
        concert: &ConcertId,
        shard: u32,
        request: ShardRequest,
    ) -> Result<ShardReply, PeerError> {
        let call = request.name();
        let retry = request.is_idempotent();
        let body = Bytes::from(wire::encode(&ShardCall::V1 {
            concert: concert.clone(),
            shard,
            request,
        }));
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let request = self.request(node, Method::POST, SHARD_PATH, Body::from(body.clone()));
            match self.send(node, call, request, SHARD_CALL_TIMEOUT).await {
                Ok(response) => break response,
                Err(Failure::NotSent(_)) if retry && attempt == 1 => continue,
                Err(failure) => {
                    return Err(match failure {
                        Failure::Busy => PeerError::NotSent { node, busy: true },
                        Failure::NotSent(_) => PeerError::NotSent { node, busy: false },
                        Failure::Lost(_) => PeerError::Lost { node },
                    });
                }
            }
        };
        let lost = PeerError::Lost { node };
        let (status, bytes) = self.read(node, response).await.map_err(|_| lost.clone())?;
        if status != StatusCode::OK {
            self.nodes[node as usize].error("status");
            tracing::error!(peer = node, call, %status, "a peer refused a shard request");
            // Refused before it was decoded (a wrong secret, another version): it had no effect.
            return Err(PeerError::NotSent { node, busy: false });
        }
        match wire::decode::<ShardAnswer>(&bytes) {
            Ok(ShardAnswer::V1(answer)) => {
                answer.map_err(|error| PeerError::Answered(EngineError::from(error)))
            }
            Err(error) => {
                tracing::error!(peer = node, call, %error, "a peer answered a shard request undecodably");
                Err(lost)
            }
        }
    }

    /// Reads a whole answer, at most [`ANSWER_BYTES_MAX`] bytes.
    async fn read(
        &self,
        node: NodeId,
        response: Response<hyper::body::Incoming>,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX);
        match tokio::time::timeout(SHARD_CALL_TIMEOUT, body.collect()).await {
            Ok(Ok(collected)) => Ok((status, collected.to_bytes())),
            Ok(Err(error)) => {
                tracing::debug!(peer = node, %error, "an answer broke off");
                Err(EngineError::NodeUnavailable { node })
            }
            Err(_) => Err(EngineError::NodeUnavailable { node }),
        }
    }

    /// A call to one of the `api` crate's internal routes (`wire::API_PREFIX`): its status and body.
    pub async fn internal(
        &self,
        node: NodeId,
        method: Method,
        path_and_query: &str,
        body: InternalBody,
        deadline: Duration,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        debug_assert!(path_and_query.starts_with(wire::API_PREFIX));
        let retry = method == Method::GET;
        let (content_type, body) = match body {
            InternalBody::Empty => (None, Bytes::new()),
            InternalBody::Json(bytes) => (Some("application/json"), Bytes::from(bytes)),
            InternalBody::Octets(bytes) => (Some("application/octet-stream"), Bytes::from(bytes)),
        };
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = self.request(
                node,
                method.clone(),
                path_and_query,
                Body::from(body.clone()),
            );
            if let Some(content_type) = content_type {
                request
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            match self.send(node, "internal", request, deadline).await {
                Ok(response) => break response,
                Err(Failure::NotSent(_)) if retry && attempt == 1 => continue,
                Err(failure) => return Err(self.unavailable(node, "internal", failure)),
            }
        };
        self.read(node, response).await
    }

    /// Forwards a public request to `node`, which answers it for `scope`. The answer's body streams through (an
    /// event stream does); `deadline` bounds the wait for its head. A forwarded request is never retried: its body
    /// is gone.
    pub async fn forward(
        &self,
        node: NodeId,
        request: Request<Body>,
        scope: Scope,
        client: Option<IpAddr>,
        deadline: Duration,
    ) -> Result<Response<Body>, EngineError> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let mut forwarded = self.request(node, parts.method.clone(), path, body);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                forwarded.headers_mut().append(name.clone(), value.clone());
            }
        }
        let headers = forwarded.headers_mut();
        headers.insert(SCOPE_HEADER, HeaderValue::from_static(scope.as_str()));
        if let Some(client) = client
            && let Ok(value) = HeaderValue::from_str(&client.to_string())
        {
            headers.insert(CLIENT_HEADER, value);
        }
        let response = self
            .send(node, "forward", forwarded, deadline)
            .await
            .map_err(|failure| self.unavailable(node, "forward", failure))?;
        let (mut parts, body) = response.into_parts();
        let passed: Vec<header::HeaderName> = parts
            .headers
            .keys()
            .filter(|name| is_hop_by_hop(name))
            .cloned()
            .collect();
        for name in passed {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Opens `node`'s feed stream of a concert; the body is a sequence of `wire::frame`s.
    pub async fn open_feed(
        &self,
        node: NodeId,
        open: &FeedOpen,
    ) -> Result<hyper::body::Incoming, EngineError> {
        let request = self.request(
            node,
            Method::POST,
            wire::FEED_PATH,
            Body::from(wire::encode(open)),
        );
        let response = self
            .send(node, "feed", request, SHARD_CALL_TIMEOUT)
            .await
            .map_err(|failure| self.unavailable(node, "feed", failure))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(EngineError::ConcertNotFound);
        }
        if response.status() != StatusCode::OK {
            return Err(EngineError::NodeUnavailable { node });
        }
        Ok(response.into_body())
    }
}

/// The body of a call to an internal route.
pub enum InternalBody {
    Empty,
    Json(Vec<u8>),
    Octets(Vec<u8>),
}

/// The engine's port to other nodes' shards, over [`Peers`].
pub struct PeerLink(pub Arc<Peers>);

impl PeerShards for PeerLink {
    fn call(
        &self,
        node: NodeId,
        concert: &ConcertId,
        shard: u32,
        request: ShardRequest,
    ) -> BoxFuture<'static, Result<ShardReply, PeerError>> {
        let (peers, concert) = (self.0.clone(), concert.clone());
        Box::pin(async move { peers.call_shard(node, &concert, shard, request).await })
    }
}

/// Headers that describe one connection, not the message: never passed on.
fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
    ) || name.as_str() == SECRET_HEADER
        || name.as_str() == SCOPE_HEADER
        || name.as_str() == CLIENT_HEADER
}

//! The internal port of a node: what other processes of the cluster call, over HTTP/2 without TLS.
//!
//! Every request must carry the cluster secret (`x-boxoffice-cluster-secret`, compared in constant time on
//! hashes); without it, `401`. Then:
//!
//! - `POST /internal/v1/shard`: a request to one of this node's shards ([`ConcertHandle::serve`]), answered once
//!   what it changed is durable. It runs in a task of its own, so a caller that gives up cannot cut it in half.
//! - `POST /internal/v1/feed`: this node's feed of a concert, streamed (see [`crate::feed`]).
//! - `/internal/v1/...` (anything else under [`wire::API_PREFIX`]): the `api` crate's internal routes, served by
//!   the `internal` app the node gives [`InternalService::new`].
//! - a request that carries `x-boxoffice-scope`: a public request another process forwarded, served by the
//!   node's public app (never an internal path, whatever its path says) with a [`Forwarded`] extension saying
//!   for what scope and from which client address.
//!
//! Limits: [`INTERNAL_CONNECTIONS_MAX`] connections (beyond, new ones wait in the backlog),
//! [`STREAMS_PER_CONNECTION_MAX`] concurrent requests on one, [`SHARD_CALL_BYTES_MAX`] per shard request body, and
//! a request that has not finished sending its headers within [`HEADER_READ_TIMEOUT`] is dropped with its
//! connection's pings.

use crate::config::Secret;
use crate::feed::NodeFeeds;
use crate::peers::Scope;
use crate::wire::{
    self, CLIENT_HEADER, FEED_PATH, FeedOpen, SCOPE_HEADER, SECRET_HEADER, SHARD_PATH, ShardAnswer,
    ShardCall,
};
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use engine::EngineError;
use engine::remote::RemoteError;
use engine::router::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connections the internal port keeps open at most: a few per process of the cluster.
pub const INTERNAL_CONNECTIONS_MAX: usize = 4_096;
/// Concurrent requests on one connection at most (HTTP/2 `MAX_CONCURRENT_STREAMS`).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 8_192;
/// Largest body of a request to a shard: a confirmation of the most tickets one order can have is far smaller.
pub const SHARD_CALL_BYTES_MAX: usize = 1024 * 1024;
/// How long a peer may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// On a request another process forwarded: for which scope to answer, and the client's address.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded {
    pub scope: Scope,
    pub client: Option<IpAddr>,
}

pub struct InternalService {
    secret: Secret,
    router: Option<Arc<Router>>,
    feeds: Option<Arc<NodeFeeds>>,
    /// False while the node recovers: its shards are not all there yet, so shard requests and feeds answer as an
    /// unavailable node.
    recovered: Arc<AtomicBool>,
    /// Public requests forwarded by other processes.
    forwarded: axum::Router,
    /// The `api` crate's internal routes.
    internal: axum::Router,
}

impl InternalService {
    /// `router` and `feeds` are a shard node's; a front has neither.
    pub fn new(
        secret: Secret,
        router: Option<Arc<Router>>,
        feeds: Option<Arc<NodeFeeds>>,
        recovered: Arc<AtomicBool>,
        forwarded: axum::Router,
        internal: axum::Router,
    ) -> Arc<Self> {
        Arc::new(Self {
            secret,
            router,
            feeds,
            recovered,
            forwarded,
            internal,
        })
    }

    fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::Acquire)
    }

    async fn handle(self: Arc<Self>, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let authorized = request
            .headers()
            .get(SECRET_HEADER)
            .is_some_and(|value| self.secret.matches(value.as_bytes()));
        if !authorized {
            metrics::counter!("boxoffice_cluster_unauthorized_total").increment(1);
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no valid cluster secret",
            );
        }
        let path = request.uri().path();
        // A forwarded public request never reaches an internal path, whatever path its client asked for.
        if request.headers().contains_key(SCOPE_HEADER) {
            if path.starts_with(wire::INTERNAL_PREFIX) {
                return error(StatusCode::NOT_FOUND, "not_found", "no such resource");
            }
            return self.forwarded(request).await;
        }
        match path {
            SHARD_PATH => self.shard(request).await,
            FEED_PATH => self.feed(request).await,
            path if path.starts_with(wire::API_PREFIX) => {
                let (mut parts, body) = request.into_parts();
                parts.headers.remove(SECRET_HEADER);
                let request = Request::from_parts(parts, Body::new(body));
                match self.internal.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(infallible) => match infallible {},
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such resource"),
        }
    }

    async fn shard(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let Some(router) = self.router.clone() else {
            return error(StatusCode::NOT_FOUND, "not_found", "a front owns no shards");
        };
        let bytes = match read_body(request, SHARD_CALL_BYTES_MAX).await {
            Ok(bytes) => bytes,
            Err(response) => return response,
        };
        let ShardCall::V1 {
            concert,
            shard,
            request,
        } = match wire::decode(&bytes) {
            Ok(call) => call,
            Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", &reason),
        };
        if !self.is_recovered() {
            let answer: Result<engine::remote::ShardReply, RemoteError> =
                Err(RemoteError::NodeUnavailable {
                    node: router.node(),
                });
            return octets(wire::encode(&ShardAnswer::V1(answer)));
        }
        // A task of its own: a caller that gives up must not cut a reservation or a move in half.
        let answer = tokio::spawn(async move {
            let concert = router
                .concert(&concert)
                .ok_or(EngineError::ConcertNotFound)?;
            concert.serve(shard, request).await
        })
        .await
        .unwrap_or_else(|join_error| {
            tracing::error!(%join_error, "a shard request failed");
            Err(EngineError::Unavailable)
        });
        let answer = ShardAnswer::V1(answer.map_err(RemoteError::from));
        octets(wire::encode(&answer))
    }

    async fn feed(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let (Some(router), Some(feeds)) = (self.router.clone(), self.feeds.clone()) else {
            return error(StatusCode::NOT_FOUND, "not_found", "a front owns no feed");
        };
        if !self.is_recovered() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "recovering",
                "the node is recovering its state",
            );
        }
        let bytes = match read_body(request, SHARD_CALL_BYTES_MAX).await {
            Ok(bytes) => bytes,
            Err(response) => return response,
        };
        let FeedOpen::V1 { concert, resume } = match wire::decode(&bytes) {
            Ok(open) => open,
            Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", &reason),
        };
        let Some(concert) = router.concert(&concert) else {
            return error(
                StatusCode::NOT_FOUND,
                "concert_not_found",
                "no such concert here",
            );
        };
        let mut response = Response::new(feeds.stream(concert, resume));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    }

    async fn forwarded(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let scope = parts
            .headers
            .get(SCOPE_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(Scope::parse)
            .unwrap_or(Scope::Node);
        let client = parts
            .headers
            .get(CLIENT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        for name in [SECRET_HEADER, SCOPE_HEADER, CLIENT_HEADER] {
            parts.headers.remove(name);
        }
        parts.extensions.insert(Forwarded { scope, client });
        let request = Request::from_parts(parts, Body::new(body));
        match self.forwarded.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        }
    }
}

/// Serves the internal port until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Arc<InternalService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(INTERNAL_CONNECTIONS_MAX));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "internal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(request).await) }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
                .keep_alive_interval(crate::peers::KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(crate::peers::KEEP_ALIVE_TIMEOUT)
                .max_header_list_size(64 * 1024)
                .initial_stream_window_size(crate::peers::STREAM_WINDOW_BYTES)
                .initial_connection_window_size(crate::peers::CONNECTION_WINDOW_BYTES)
                .max_send_buf_size(crate::peers::STREAM_SEND_BUFFER_BYTES)
                .serve_connection(TokioIo::new(stream), handler);
            if let Err(error) = connection.await {
                tracing::debug!(error = ?error, "internal connection ended");
            }
            drop(permit);
        });
    }
}

async fn read_body(
    request: Request<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    let body = http_body_util::Limited::new(request.into_body(), limit);
    match tokio::time::timeout(HEADER_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "an internal request body is too large or broken",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive in time",
        )),
    }
}

fn octets(bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// An error in the API's shape: `{"error":{"code","message"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "{{\"error\":{{\"code\":\"{code}\",\"message\":{}}}}}",
        json_string(message)
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

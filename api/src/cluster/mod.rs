//! The HTTP front in a cluster: which process answers a request, forwarding it there, and gathering what the
//! admin asks of every node.
//!
//! [`Routing`] runs first on the public port, after the edge: it decides with `cluster::route::target` where a
//! request is answered and, when that is another process, forwards it whole (streamed both ways) with scope
//! `cluster`. A request that arrives forwarded is never forwarded again; one with scope `node` is answered from
//! this node's own data (a part of a gathering). The admin's requests that concern every node (listing users,
//! looking an order or a ticket up, bulk users, snapshots, key rotation, creating a concert) are answered by the
//! shard node they reach, which asks the others ([`ClusterState::ask_nodes`]).
//!
//! - [`internal`]: the routes only the internal port serves (other nodes' questions about users and concerts).
//! - [`catalog`]: creating a concert on every node, and keeping every node's list of concerts complete.
//! - [`front`]: a front's own app and lifecycle.
//! - [`gather`]: the admin's requests that gather from every node.

pub mod catalog;
pub mod front;
pub mod gather;
pub mod internal;

use crate::connections::ClientIp;
use crate::error::{ApiError, ApiResult};
use crate::extract::bearer_token;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cluster::config::{ClusterConfig, Role};
use cluster::feed::MergedFeeds;
use cluster::peers::{Peers, Scope};
use cluster::route::Target;
use cluster::server::Forwarded;
use engine::EngineError;
use engine::remote::NodeId;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Deadline of a question to another node's internal routes (a user lookup, a node's status, a concert).
pub const INTERNAL_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body read back from a node when gathering (a page of 1000 users is about 300 KB).
pub const GATHERED_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What a process of a cluster knows of it.
pub struct ClusterState {
    pub config: ClusterConfig,
    pub peers: Arc<Peers>,
    pub feeds: Arc<MergedFeeds>,
    /// How long a forwarded request may take: the process's request timeout.
    pub request_timeout: Duration,
}

impl ClusterState {
    pub fn new(config: ClusterConfig, request_timeout: Duration) -> Arc<Self> {
        let peers = Peers::new(&config);
        let feeds = MergedFeeds::new(peers.clone(), config.node());
        Arc::new(Self {
            config,
            peers,
            feeds,
            request_timeout,
        })
    }

    /// This shard node's id; `None` on a front.
    pub fn node(&self) -> Option<NodeId> {
        self.config.node()
    }

    pub fn is_front(&self) -> bool {
        self.config.role == Role::Front
    }

    /// Every shard node but this one.
    pub fn others(&self) -> Vec<NodeId> {
        (0..self.config.node_count())
            .filter(|node| Some(*node) != self.node())
            .collect()
    }

    /// Forwards `request` to `node`, answered for `scope`; an unreachable node is `503 node_unavailable`.
    pub async fn forward(
        &self,
        node: NodeId,
        request: Request,
        scope: Scope,
        client: Option<IpAddr>,
    ) -> Response {
        match self
            .peers
            .forward(node, request, scope, client, self.request_timeout)
            .await
        {
            Ok(response) => response,
            Err(error) => ApiError::from(error).into_response(),
        }
    }

    /// Sends the same public request to each of `nodes`, to be answered from that node's own data, and reads the
    /// answers back.
    pub async fn ask_nodes(
        &self,
        nodes: &[NodeId],
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Vec<(NodeId, Result<(StatusCode, Bytes), EngineError>)> {
        let asks = nodes.iter().map(|node| {
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path_and_query)
                .body(Body::from(body.clone()))
                .expect("a gathered request is well formed");
            for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
                if let Some(value) = headers.get(&name) {
                    request.headers_mut().insert(name, value.clone());
                }
            }
            async move {
                let answer = async {
                    let response = self
                        .peers
                        .forward(*node, request, Scope::Node, None, INTERNAL_CALL_TIMEOUT)
                        .await?;
                    let status = response.status();
                    let body =
                        http_body_util::Limited::new(response.into_body(), GATHERED_BYTES_MAX)
                            .collect()
                            .await
                            .map_err(|_| EngineError::NodeUnavailable { node: *node })?
                            .to_bytes();
                    Ok((status, body))
                }
                .await;
                (*node, answer)
            }
        });
        join_all(asks).await
    }
}

/// How much of the cluster this request is answered for: `Some` when this node must gather from the others
/// (a request that reached it from a client, or forwarded to it for the cluster), `None` when it answers from its
/// own data (a single node, or a part of a gathering).
pub struct FanOut(pub Option<Arc<ClusterState>>);

impl FromRequestParts<crate::AppState> for FanOut {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        let node_scope = parts
            .extensions
            .get::<Forwarded>()
            .is_some_and(|forwarded| forwarded.scope == Scope::Node);
        Ok(Self(state.cluster.clone().filter(|_| !node_scope)))
    }
}

/// Routes each request of a shard node's public port: answered here (once this node has recovered, but on the
/// operational paths), or forwarded to the process that answers it. A service in front of the router, like
/// `crate::edge::Edge` and for the same reason: a layer on every route would be cloned, nest by nest, for every
/// request. Forwarding comes before the recovery check: a request another process answers does not wait for this
/// one's recovery.
#[derive(Clone)]
pub struct Routing<S> {
    pub inner: S,
    pub state: crate::AppState,
}

impl<S> tower::Service<Request> for Routing<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (inner, state) = (self.inner.clone(), self.state.clone());
        Box::pin(async move { Ok(route(state, inner, request).await) })
    }
}

async fn route<S>(state: crate::AppState, inner: S, request: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    let Some(cluster) = state.cluster.clone() else {
        return answer_here(&state, inner, request).await;
    };
    if request.extensions().get::<Forwarded>().is_some() {
        return answer_here(&state, inner, request).await;
    }
    let client = ClientIp::of(request.extensions(), request.headers()).0;
    match resolve(&cluster, request, |token| state.is_admin_token(token)).await {
        Ok((None, request)) => answer_here(&state, inner, request).await,
        Ok((Some(node), request)) => cluster.forward(node, request, Scope::Cluster, client).await,
        Err(error) => error.into_response(),
    }
}

async fn answer_here<S>(state: &crate::AppState, inner: S, request: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    use tower::ServiceExt;
    if crate::edge::holds_back(state, &crate::OPERATIONAL_PATHS, request.uri().path()) {
        return ApiError::recovering().into_response();
    }
    match inner.oneshot(request).await {
        Ok(response) => response,
    }
}

/// Where `request` is answered: `None` here, else the node to forward it to. Reads the body of a registration
/// or a login to learn the username, and puts it back.
pub async fn resolve(
    cluster: &ClusterState,
    request: Request,
    is_admin: impl Fn(&str) -> bool,
) -> ApiResult<(Option<NodeId>, Request)> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let target = cluster::route::target(request.method(), request.uri().path(), bearer, is_admin);
    let here = cluster.node();
    let node = match target {
        Target::Here => None,
        Target::AnyShardNode => match here {
            Some(_) => None,
            None => Some(any_reachable(cluster)),
        },
        Target::Node(node) if node >= cluster.config.node_count() => {
            // A token or id naming no node of this cluster: answered here as unknown.
            match here {
                Some(_) => None,
                None => Some(any_reachable(cluster)),
            }
        }
        Target::Node(node) => Some(node).filter(|node| Some(*node) != here),
        Target::UsernameHome | Target::UsernameOwner => {
            let (request, username) = peek_username(request).await?;
            let Some(username) = username else {
                // Not a body with a username: whichever node gets it answers 400 or 422.
                let node = here.map_or_else(|| Some(any_reachable(cluster)), |_| None);
                return Ok((node, request));
            };
            let nodes = cluster.config.node_count();
            let candidates = cluster::placement::user_candidates(&username, nodes);
            let node = if target == Target::UsernameHome || candidates.len() == 1 {
                candidates[0]
            } else {
                owner_among(cluster, &candidates, &username).await?
            };
            return Ok((Some(node).filter(|node| Some(*node) != here), request));
        }
    };
    Ok((node, request))
}

/// A shard node to send a request any of them answers: the next one round the list that was reachable.
fn any_reachable(cluster: &ClusterState) -> NodeId {
    cluster.peers.rotation()[0]
}

/// Which of `candidates` (newest first) has `username`; the newest when none has.
async fn owner_among(
    cluster: &ClusterState,
    candidates: &[NodeId],
    username: &str,
) -> ApiResult<NodeId> {
    for &node in candidates {
        if internal::username_exists(cluster, node, username).await? {
            return Ok(node);
        }
    }
    Ok(candidates[0])
}

/// Reads a JSON body (within the API's size and time limits) for its `username`, and rebuilds the request.
async fn peek_username(request: Request) -> ApiResult<(Request, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct WithUsername {
        username: String,
    }
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, crate::BODY_BYTES_MAX);
    let bytes =
        match tokio::time::timeout(crate::extract::BODY_READ_TIMEOUT, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "request bodies are limited to {} bytes",
                        crate::BODY_BYTES_MAX
                    ),
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} seconds",
                        crate::extract::BODY_READ_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
    let username = serde_json::from_slice::<WithUsername>(&bytes)
        .ok()
        .map(|body| body.username);
    Ok((Request::from_parts(parts, Body::from(bytes)), username))
}

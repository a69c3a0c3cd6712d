//! The admin's requests that concern every shard node, answered by the node they reach from every node's answer.
//!
//! A part of a gathering is the same public request sent with scope `node`: each node answers it from its own
//! data exactly as a single node would, so the bodies combine without a second set of message types. A node that
//! does not answer makes the whole answer `503 node_unavailable` whenever it might have held the answer.

use super::internal::Usernames;
use super::{ClusterState, INTERNAL_CALL_TIMEOUT};
use crate::dto::{BulkUsersResponse, CardRequest, RegisteredResponse, UserResponse};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cluster::peers::InternalBody;
use engine::EngineError;
use engine::remote::NodeId;
use futures_util::future::join_all;
use std::collections::{BTreeMap, HashMap};

/// The first answer of another node that is not a `404`, passed on as it is; when every node answered `404`,
/// `not_found`; when one did not answer, `503 node_unavailable`.
pub async fn first_found(
    cluster: &ClusterState,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    not_found: ApiError,
) -> ApiResult<Response> {
    let answers = cluster
        .ask_nodes(&cluster.others(), method, path_and_query, headers, body)
        .await;
    let mut unreachable = None;
    for (node, answer) in answers {
        match answer {
            Ok((StatusCode::NOT_FOUND, _)) => {}
            Ok((status, body)) if status.is_server_error() => {
                tracing::warn!(node, %status, "a node failed a gathered request");
                unreachable.get_or_insert(node);
                drop(body);
            }
            Ok((status, body)) => return Ok(json(status, body)),
            Err(_) => {
                unreachable.get_or_insert(node);
            }
        }
    }
    match unreachable {
        Some(node) => Err(EngineError::NodeUnavailable { node }.into()),
        None => Err(not_found),
    }
}

/// Every other node's answer as JSON, in node order; `503 node_unavailable` if one did not answer as expected.
pub async fn every_node<T: serde::de::DeserializeOwned>(
    cluster: &ClusterState,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    expected: StatusCode,
) -> ApiResult<Vec<T>> {
    let answers = cluster
        .ask_nodes(&cluster.others(), method, path_and_query, headers, body)
        .await;
    let mut parsed = Vec::with_capacity(answers.len());
    for (node, answer) in answers {
        match answer {
            Ok((status, body)) if status == expected => {
                parsed.push(serde_json::from_slice(&body).map_err(|error| {
                    ApiError::internal(format!("node {node} answered a gathering with {error}"))
                })?);
            }
            Ok((status, body)) if status.is_client_error() => {
                // The same request fails the same way everywhere: pass the first refusal on.
                return Err(passed_error(status, &body));
            }
            Ok(_) | Err(_) => return Err(EngineError::NodeUnavailable { node }.into()),
        }
    }
    Ok(parsed)
}

/// A node's error answer, as this node's own.
fn passed_error(status: StatusCode, body: &[u8]) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(parsed) => ApiError {
            code: parsed.error.code.into(),
            ..ApiError::new(status, "refused", parsed.error.message)
        },
        Err(_) => ApiError::new(status, "refused", "another node refused the request"),
    }
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /users` over the cluster: every node's users, node after node, each node's in creation order.
pub async fn list_users(
    state: &AppState,
    cluster: &ClusterState,
    headers: &HeaderMap,
    offset: usize,
    limit: usize,
) -> ApiResult<serde_json::Value> {
    let nodes = cluster.config.node_count();
    let mut counts = Vec::with_capacity(nodes as usize);
    for node in 0..nodes {
        counts.push(if Some(node) == cluster.node() {
            state.users.count()
        } else {
            user_count(cluster, node).await?
        });
    }
    let total: usize = counts.iter().sum();
    let mut users: Vec<serde_json::Value> = Vec::with_capacity(limit);
    let mut skip = offset;
    for (node, count) in counts.into_iter().enumerate() {
        let node = node as NodeId;
        if skip >= count {
            skip -= count;
            continue;
        }
        let want = limit - users.len();
        if want == 0 {
            break;
        }
        if Some(node) == cluster.node() {
            let (page, _) = state.users.page(skip, want);
            users.extend(page.iter().map(|user| {
                serde_json::to_value(UserResponse::from(user)).expect("a user serializes")
            }));
        } else {
            let path = format!("/users?offset={skip}&limit={want}");
            let answers = cluster
                .ask_nodes(&[node], Method::GET, &path, headers, Bytes::new())
                .await;
            let (_, answer) = answers.into_iter().next().expect("one node asked");
            let (status, body) = answer?;
            if status != StatusCode::OK {
                return Err(EngineError::NodeUnavailable { node }.into());
            }
            let page: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| EngineError::NodeUnavailable { node })?;
            if let Some(found) = page["users"].as_array() {
                users.extend(found.iter().take(want).cloned());
            }
        }
        skip = 0;
    }
    let next = offset + users.len();
    Ok(serde_json::json!({
        "users": users,
        "next_offset": (next < total && !users.is_empty()).then_some(next),
    }))
}

async fn user_count(cluster: &ClusterState, node: NodeId) -> ApiResult<usize> {
    let (status, body) = cluster
        .peers
        .internal(
            node,
            Method::GET,
            "/internal/v1/users/count",
            InternalBody::Empty,
            INTERNAL_CALL_TIMEOUT,
        )
        .await?;
    if status != StatusCode::OK {
        return Err(EngineError::NodeUnavailable { node }.into());
    }
    serde_json::from_slice::<u64>(&body)
        .map(|count| count as usize)
        .map_err(|_| EngineError::NodeUnavailable { node }.into())
}

/// Usernames one internal call of a bulk creation carries at most: the call's body stays within the API's
/// 64 KiB limit whatever the usernames' lengths (64 characters at most).
const BULK_PART_USERS_MAX: usize = 500;

/// `POST /admin/users/bulk` over the cluster: each user is created on the node its username is placed on. Every
/// node a username may live on (`user_candidates`: its node, and older ones if the list grew) is asked first
/// whether it has it, so that a taken name creates nobody (two bulk creations racing for the same names through
/// different nodes could still both pass that check).
pub async fn create_users(
    state: &AppState,
    cluster: &ClusterState,
    usernames: Vec<String>,
    card: Option<CardRequest>,
) -> ApiResult<Vec<RegisteredResponse>> {
    let nodes = cluster.config.node_count();
    let mut by_node: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    let mut candidates: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for username in &usernames {
        let places = cluster::placement::user_candidates(username, nodes);
        by_node.entry(places[0]).or_default().push(username.clone());
        for node in places {
            candidates.entry(node).or_default().push(username.clone());
        }
    }
    for (node, names) in &candidates {
        let mut taken = false;
        for part in names.chunks(BULK_PART_USERS_MAX) {
            taken |= if Some(*node) == cluster.node() {
                part.iter().any(|name| state.users.username_taken(name))
            } else {
                let body = serde_json::to_vec(&Usernames {
                    usernames: part.to_vec(),
                })
                .expect("names serialize");
                internal_json::<bool>(
                    cluster,
                    *node,
                    "/internal/v1/users/taken",
                    body,
                    StatusCode::OK,
                )
                .await?
            };
        }
        if taken {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                "that username is taken",
            ));
        }
    }
    let card_json = serde_json::to_value(&card).expect("a card serializes");
    let creations = by_node.into_iter().map(|(node, names)| {
        let card_json = card_json.clone();
        async move {
            if Some(node) == cluster.node() {
                let card = serde_json::from_value::<Option<CardRequest>>(card_json)
                    .expect("it was one")
                    .map(CardRequest::validate)
                    .transpose()?;
                let card = crate::routes::users::vault(state, card).await?;
                let created = state.users.register_bulk(names, card).await?;
                return Ok(created
                    .into_iter()
                    .map(|(id, username, token)| RegisteredResponse {
                        id: id.0.to_string(),
                        username,
                        token,
                    })
                    .collect::<Vec<_>>());
            }
            let mut users = Vec::with_capacity(names.len());
            for part in names.chunks(BULK_PART_USERS_MAX) {
                let body =
                    serde_json::to_vec(&serde_json::json!({"usernames": part, "card": card_json}))
                        .expect("a bulk part serializes");
                let created: BulkUsersResponse = internal_json(
                    cluster,
                    node,
                    "/internal/v1/users/bulk",
                    body,
                    StatusCode::CREATED,
                )
                .await?;
                users.extend(created.users);
            }
            Ok(users)
        }
    });
    let mut created: HashMap<String, RegisteredResponse> = HashMap::with_capacity(usernames.len());
    for part in join_all(creations).await {
        let part: ApiResult<Vec<RegisteredResponse>> = part;
        for user in part? {
            created.insert(user.username.clone(), user);
        }
    }
    usernames
        .into_iter()
        .map(|username| {
            created
                .remove(&username)
                .ok_or_else(|| ApiError::internal(format!("bulk creation lost {username}")))
        })
        .collect()
}

async fn internal_json<T: serde::de::DeserializeOwned>(
    cluster: &ClusterState,
    node: NodeId,
    path: &str,
    body: Vec<u8>,
    expected: StatusCode,
) -> ApiResult<T> {
    let (status, answer) = cluster
        .peers
        .internal(
            node,
            Method::POST,
            path,
            InternalBody::Json(body),
            INTERNAL_CALL_TIMEOUT,
        )
        .await?;
    if status == expected {
        return serde_json::from_slice(&answer)
            .map_err(|_| EngineError::NodeUnavailable { node }.into());
    }
    if status.is_client_error() {
        return Err(passed_error(status, &answer));
    }
    Err(EngineError::NodeUnavailable { node }.into())
}

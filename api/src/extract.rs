//! Request extractors: JSON and query strings whose rejections are JSON errors, and bearer-token callers.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use engine::ids::UserId;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long a request body may take to arrive in full. A client that announces a body and then sends it a byte
/// at a time, or never, gets `408 request_timeout` and its connection closed once this has passed, instead of
/// holding a request slot (`--requests-in-flight-max`) and a connection for as long as it likes. 64 KiB arrive
/// well within it on any working network.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A body refused for its size or content type is still read, and thrown away, up to this many bytes (and within
/// [`BODY_READ_TIMEOUT`]). A server that closes the connection while the client is still sending makes the
/// client's kernel drop the answer on a TCP reset: the client would see a broken connection, not the 413 or 415.
/// A body announced larger than this is refused without reading it.
pub const BODY_DRAIN_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A JSON body; malformed JSON is 400, a body of the wrong shape 422, an oversized body 413, a body that is not
/// `application/json` 415, a body that does not arrive within [`BODY_READ_TIMEOUT`] 408.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        match tokio::time::timeout(BODY_READ_TIMEOUT, read_json(request)).await {
            Ok(result) => result.map(Self),
            Err(_elapsed) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} seconds",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

async fn read_json<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let is_json = json_content_type(request.headers());
    let announced_bytes = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let body = read_body(request.into_body(), announced_bytes).await;
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    match axum::Json::<T>::from_bytes(&body?) {
        Ok(axum::Json(value)) => Ok(value),
        Err(JsonRejection::JsonDataError(error)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            serde_message(&error.body_text()),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        )),
    }
}

/// `application/json` or `application/*+json`, with any parameters: what `axum::Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some((kind, subtype)) => {
            kind == "application" && (subtype == "json" || subtype.ends_with("+json"))
        }
        None => false,
    }
}

/// The body, if it is at most [`crate::BODY_BYTES_MAX`] bytes. A longer one is drained up to
/// [`BODY_DRAIN_BYTES_MAX`] bytes (never kept) before it is refused.
async fn read_body(body: Body, announced_bytes: Option<u64>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request bodies are limited to {} bytes",
                crate::BODY_BYTES_MAX
            ),
        )
    };
    if announced_bytes.is_some_and(|length| length > BODY_DRAIN_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen_bytes = 0usize;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            if seen_bytes > crate::BODY_BYTES_MAX {
                break;
            }
            // A body cut short or sent with broken chunked framing.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            ));
        };
        seen_bytes = seen_bytes.saturating_add(chunk.len());
        if seen_bytes <= crate::BODY_BYTES_MAX {
            kept.extend_from_slice(&chunk);
        } else if seen_bytes > BODY_DRAIN_BYTES_MAX {
            break;
        }
    }
    if seen_bytes > crate::BODY_BYTES_MAX {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

/// Error messages quoted back to a client are cut to this many characters.
const ERROR_MESSAGE_CHARS_MAX: usize = 300;

/// serde's message, capped in length. A message about a bad value quotes the value: a number or a boolean between
/// backticks, a string between double quotes (escaped like Rust's `Debug`). That value may be a card number or a
/// password sent in the wrong type or to the wrong field, so it is never echoed back.
fn serde_message(text: &str) -> String {
    let trimmed = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    if let Some(message) = without_unknown_name(trimmed) {
        return message.chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
    }
    let message = match ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|marker| trimmed.find(marker).map(|at| at + marker.len()))
    {
        Some(value_at) => format!(
            "{}{}",
            &trimmed[..value_at],
            redact_value(&trimmed[value_at..])
        ),
        None => trimmed.to_owned(),
    };
    message.chars().take(ERROR_MESSAGE_CHARS_MAX).collect()
}

/// serde's `PATH: unknown field `NAME`, expected ...` (or `unknown variant`) without the name a client sent:
/// `PARENT: unknown field, expected ...`. `None` for any other message.
fn without_unknown_name(text: &str) -> Option<String> {
    let (path, detail) = match text.split_once(": ") {
        Some((path, detail)) if !path.contains(' ') => (Some(path), detail),
        _ => (None, text),
    };
    let (kind, rest) = [
        ("unknown field", "unknown field `"),
        ("unknown variant", "unknown variant `"),
    ]
    .iter()
    .find_map(|(kind, prefix)| detail.strip_prefix(prefix).map(|rest| (*kind, rest)))?;
    let expected = rest.find('`').map_or("", |end| &rest[end + 1..]);
    // The unknown field's name ends its path; an unknown variant's path names a known field.
    let parent = match kind {
        "unknown field" => path.and_then(|path| path.rsplit_once('.').map(|(parent, _)| parent)),
        _ => path,
    };
    Some(match parent {
        Some(parent) => format!("{parent}: {kind}{expected}"),
        None => format!("{kind}{expected}"),
    })
}

/// `rest` starts with serde's description of the unexpected value (`integer `42``, `string "secret"`, `map`, ...);
/// replaces the value itself with `...` and keeps its kind and whatever follows.
fn redact_value(rest: &str) -> String {
    if let Some(quoted) = rest.strip_prefix("string \"") {
        // A Debug-escaped string: it ends at the first double quote that is not escaped.
        let mut escaped = false;
        for (at, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return format!("string \"...\"{}", &quoted[at + 1..]),
                _ => {}
            }
        }
        return "string \"...\"".to_owned();
    }
    match rest.find('`').and_then(|start| {
        rest[start + 1..]
            .find('`')
            .map(|length| (start, start + 1 + length))
    }) {
        Some((start, end)) if !rest[..start].contains(',') => {
            format!("{}`...`{}", &rest[..start], &rest[end + 1..])
        }
        _ => rest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_unknown_names_are_not_echoed() {
        let message = serde_message(
            "card.number: invalid type: integer `4242424242424242`, expected a string at line 1 column 9",
        );
        assert!(!message.contains("4242"), "{message}");
        assert!(message.starts_with("card.number: invalid type: integer `...`"));
        let unknown = serde_message("colour: unknown field `colour`, expected `name`");
        assert_eq!(unknown, "unknown field, expected `name`");
        let nested =
            serde_message("card.pin: unknown field `pin`, expected one of `type`, `number`");
        assert_eq!(
            nested,
            "card: unknown field, expected one of `type`, `number`"
        );
        let variant = serde_message("kind: unknown variant `4242`, expected `a` or `b`");
        assert_eq!(variant, "kind: unknown variant, expected `a` or `b`");
    }

    #[test]
    fn json_content_types_are_what_axum_json_accepts() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header value"));
            json_content_type(&headers)
        };
        for good in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(accepts(good), "{good}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "json",
            "",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!accepts(bad), "{bad}");
        }
        assert!(!json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer  abc"), Some(" abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn strings_sent_in_the_wrong_place_are_not_echoed() {
        let check =
            |text: &str, expected: &str| assert_eq!(serde_message(text), expected, "{text}");
        check(
            r#"card: invalid type: string "4242424242424242 123", expected struct CardRequest at line 1 column 60"#,
            r#"card: invalid type: string "...", expected struct CardRequest at line 1 column 60"#,
        );
        check(
            r#"card.exp_month: invalid type: string "a \"quoted\", expected x", expected u8 at line 1 column 9"#,
            r#"card.exp_month: invalid type: string "...", expected u8 at line 1 column 9"#,
        );
        check(
            r#"quantity: invalid value: integer `-1`, expected u32 at line 1 column 9"#,
            "quantity: invalid value: integer `...`, expected u32 at line 1 column 9",
        );
        check(
            "card: invalid type: map, expected a string at line 1 column 9",
            "card: invalid type: map, expected a string at line 1 column 9",
        );
        let long = format!("name: invalid type: string \"{}", "x".repeat(1000));
        assert_eq!(serde_message(&long), "name: invalid type: string \"...\"");
    }
}

/// A query string; a value of the wrong type is 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(error)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                query_message(&error.body_text()),
            )),
            Err(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                other.body_text(),
            )),
        }
    }
}

/// serde's message about a query string, without axum's preamble and without the offending value.
fn query_message(text: &str) -> String {
    serde_message(
        text.strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(text),
    )
}

/// Who is calling, from the bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    User(UserId),
}

impl Caller {
    /// May this caller act on `user`'s data?
    pub fn may_access(&self, user: &UserId) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(id) => id == user,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?;
        if state.is_admin_token(token) {
            return Ok(Caller::Admin);
        }
        state
            .users
            .authenticate(token)
            .map(Caller::User)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive (RFC 9110, 11.1).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub(crate) fn bearer_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned)
}

/// A caller that must be a user (not the admin token): users hold, order and pay.
pub struct UserCaller(pub UserId);

impl FromRequestParts<AppState> for UserCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::User(id) => Ok(UserCaller(id)),
            Caller::Admin => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the admin token cannot buy tickets; use a user token",
            )),
        }
    }
}

/// A user caller together with the bearer token it presented, for revoking that token.
pub struct UserSession {
    pub user: UserId,
    pub token: String,
}

impl FromRequestParts<AppState> for UserSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let UserCaller(user) = UserCaller::from_request_parts(parts, state).await?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?
            .to_owned();
        Ok(UserSession { user, token })
    }
}

/// A caller that must hold the admin token.
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(AdminCaller),
            Caller::User(_) => Err(ApiError::forbidden()),
        }
    }
}

/// The optional `Idempotency-Key` header: at most 64 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| {
                !key.is_empty()
                    && key.len() <= engine::desk::IDEMPOTENCY_KEY_LENGTH_MAX
                    && key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_idempotency_key",
                    format!(
                        "Idempotency-Key is 1 to {} visible ASCII characters",
                        engine::desk::IDEMPOTENCY_KEY_LENGTH_MAX
                    ),
                )
            })?;
        Ok(Self(Some(key.to_owned())))
    }
}

/// The single `{id}` segment of a path; a segment that is not valid UTF-8 or is absurdly long is 400/404.
pub struct ApiPath(pub String);

/// Ids longer than this are certainly not ids.
const PATH_ID_LENGTH_MAX: usize = 128;

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| invalid_path())?;
        check_path_id(&id)?;
        Ok(Self(id))
    }
}

/// The two id segments of a path such as `/users/{id}/tickets/{ticket_id}/qr`, each checked like [`ApiPath`].
pub struct ApiPathPair(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPathPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((first, second)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| invalid_path())?;
        check_path_id(&first)?;
        check_path_id(&second)?;
        Ok(Self(first, second))
    }
}

fn invalid_path() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_path",
        "the id in the path is not valid",
    )
}

/// An id past [`PATH_ID_LENGTH_MAX`] names nothing: 404 without looking it up.
fn check_path_id(id: &str) -> Result<(), ApiError> {
    if id.len() > PATH_ID_LENGTH_MAX {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource",
        ));
    }
    Ok(())
}

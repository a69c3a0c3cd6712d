//! Registration, login, profiles and a user's tickets.

use crate::cluster::FanOut;
use crate::connections::ClientIp;
use crate::dto::{
    BulkUsersRequest, BulkUsersResponse, LogoutQuery, PageQuery, RegisteredResponse, TicketList,
    TicketResponse, TokenResponse, UserPage, UserRequest, UserResponse, UserUpdateRequest,
    VerifyRequest,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminCaller, ApiJson, ApiPath, ApiPathPair, ApiQuery, Caller, UserSession};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::ids::{TicketId, UserId};

/// Users listed per page at most.
pub const PAGE_LIMIT_MAX: usize = 1000;
const PAGE_LIMIT_DEFAULT: usize = 100;

/// Register; the response carries a bearer token.
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserRequest,
    responses((status = 201, body = RegisteredResponse), (status = 409, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_body, card_expired or card_refused"),
              (status = 429, body = crate::error::ErrorBody, description = "too_many_signups from this address, with Retry-After"),
              (status = 503, body = crate::error::ErrorBody, description = "payment_unavailable (verifying the card), with Retry-After")))]
pub async fn create(
    State(state): State<AppState>,
    ClientIp(address): ClientIp,
    ApiJson(body): ApiJson<UserRequest>,
) -> ApiResult<(StatusCode, Json<RegisteredResponse>)> {
    let (mut new_user, card) = body.validate()?;
    state
        .signups
        .admit(address)
        .map_err(|throttled| ApiError::too_many_signups(throttled.retry_after_s))?;
    if let Some(cluster) = &state.cluster {
        // Registered under a shorter node list, the username may live on an older candidate node.
        let candidates =
            cluster::placement::user_candidates(&new_user.username, cluster.config.node_count());
        for &node in candidates
            .iter()
            .filter(|node| Some(**node) != cluster.node())
        {
            if crate::cluster::internal::username_exists(cluster, node, &new_user.username).await? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "username_taken",
                    "that username is taken",
                ));
            }
        }
    }
    new_user.card = vault(&state, card).await?;
    let (user, token) = state.users.register(new_user).await?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisteredResponse {
            id: user.id.0.to_string(),
            username: user.username,
            token,
        }),
    ))
}

/// Create up to 10,000 users at once (admin), for load tests: `PREFIX0` to `PREFIX{count-1}`, each with the same
/// card on file (sealed under its own data key) and a bearer token. They have no password: a password login
/// for them fails with `invalid_credentials`. All or nothing: one taken username is `409 username_taken` and
/// nothing is created. Durable before it answers.
#[utoipa::path(post, path = "/admin/users/bulk", tag = "users", security(("bearer" = [])),
    request_body = BulkUsersRequest,
    responses((status = 201, body = BulkUsersResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody)))]
pub async fn create_bulk(
    State(state): State<AppState>,
    _admin: AdminCaller,
    FanOut(fan_out): FanOut,
    ApiJson(body): ApiJson<BulkUsersRequest>,
) -> ApiResult<(StatusCode, Json<BulkUsersResponse>)> {
    let card_json = serde_json::to_value(&body.card).expect("a card serializes");
    let (usernames, card) = body.validate()?;
    let users = match fan_out {
        Some(cluster) => {
            let card = serde_json::from_value(card_json).expect("it was one");
            crate::cluster::gather::create_users(&state, &cluster, usernames, card).await?
        }
        None => state
            .users
            .register_bulk(usernames, vault(&state, card).await?)
            .await?
            .into_iter()
            .map(|(id, username, token)| RegisteredResponse {
                id: id.0.to_string(),
                username,
                token,
            })
            .collect(),
    };
    tracing::info!(count = users.len(), "users registered in bulk");
    Ok((StatusCode::CREATED, Json(BulkUsersResponse { users })))
}

/// Log in with a username and password; the response carries a fresh bearer token. Failed logins are limited
/// per username and per client address (`crate::throttle`); the limit is checked before the password is.
#[utoipa::path(post, path = "/users/verify", tag = "users", request_body = VerifyRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 429, body = crate::error::ErrorBody, description = "too_many_attempts, with Retry-After")))]
pub async fn verify(
    State(state): State<AppState>,
    ClientIp(address): ClientIp,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> ApiResult<Json<TokenResponse>> {
    body.validate()?;
    let attempt = state
        .login_throttle
        .begin(&body.username, address)
        .map_err(|throttled| ApiError::too_many_attempts(throttled.retry_after_s))?;
    let outcome = state.users.verify(&body.username, body.password).await;
    match &outcome {
        Ok(_) => attempt.succeeded(),
        Err(error) if error.code == INVALID_CREDENTIALS => attempt.failed(),
        Err(_) => attempt.abandoned(),
    }
    let (id, token) = outcome?;
    Ok(Json(TokenResponse {
        id: id.0.to_string(),
        token,
    }))
}

/// The code of a wrong username or password: what the login throttle counts.
const INVALID_CREDENTIALS: &str = "invalid_credentials";

fn authorize(caller: &Caller, id: &UserId) -> ApiResult<()> {
    if caller.may_access(id) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// [`authorize`], then `404` for a user that does not exist.
fn authorize_existing(state: &AppState, caller: &Caller, id: &UserId) -> ApiResult<()> {
    authorize(caller, id)?;
    if state.users.exists(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("user"))
    }
}

/// A user, with the card masked.
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = UserResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<UserResponse>> {
    let id = UserId::from(id);
    authorize(&caller, &id)?;
    let user = state
        .users
        .get(&id)
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(UserResponse::from(&user)))
}

/// Change a user's password, profile or card; absent fields stay as they are. A user changing their own
/// password gives `current_password` too (checked and throttled like a login); a new password ends every other
/// session of the user (the admin's reset ends them all). A new card is verified with the payment provider first.
#[utoipa::path(put, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = UserUpdateRequest,
    responses((status = 200, body = UserResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody, description = "forbidden, or wrong_current_password"),
              (status = 404, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_body, current_password_required, card_expired or card_refused"),
              (status = 429, body = crate::error::ErrorBody, description = "too_many_attempts, with Retry-After"),
              (status = 503, body = crate::error::ErrorBody, description = "payment_unavailable (verifying a card), with Retry-After")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ClientIp(address): ClientIp,
    headers: axum::http::HeaderMap,
    ApiPath(id): ApiPath,
    ApiJson(body): ApiJson<UserUpdateRequest>,
) -> ApiResult<Json<UserResponse>> {
    let id = UserId::from(id);
    authorize(&caller, &id)?;
    let (mut update, card, current_password) = body.validate()?;
    let username = state
        .users
        .get(&id)
        .map(|user| user.username)
        .ok_or_else(|| ApiError::not_found("user"))?;
    // The session that changes the password stays; the admin's reset ends every session.
    let keep = match caller {
        Caller::Admin => None,
        Caller::User(_) => crate::extract::bearer_of(&headers),
    };
    if update.password.is_some() && matches!(caller, Caller::User(_)) {
        let current_password = current_password.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "current_password_required",
                "changing the password needs current_password",
            )
        })?;
        let attempt = state
            .login_throttle
            .begin(&username, address)
            .map_err(|throttled| ApiError::too_many_attempts(throttled.retry_after_s))?;
        match state.users.check_password(&id, current_password).await {
            Ok(true) => attempt.succeeded(),
            Ok(false) => {
                attempt.failed();
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "wrong_current_password",
                    "current_password is not the user's password",
                ));
            }
            Err(error) => {
                attempt.abandoned();
                return Err(error);
            }
        }
    }
    if card.is_some() {
        state.users.admit_card_change(&id)?;
    }
    update.card = vault(&state, card).await?;
    let password_changed = update.password.is_some();
    let user = state.users.update(&id, update, keep.as_deref()).await?;
    if password_changed {
        tracing::info!(user_id = %id, by_admin = keep.is_none(), "password changed; other sessions ended");
    }
    Ok(Json(UserResponse::from(&user)))
}

/// Every user, a page at a time (admin).
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    params(("offset" = Option<usize>, Query), ("limit" = Option<usize>, Query, description = "1 to 1000")),
    responses((status = 200, body = UserPage), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminCaller,
    FanOut(fan_out): FanOut,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {PAGE_LIMIT_MAX}"
        )));
    }
    let offset = query.offset.unwrap_or(0);
    if let Some(cluster) = fan_out {
        let page =
            crate::cluster::gather::list_users(&state, &cluster, &headers, offset, limit).await?;
        return Ok(Json(page).into_response());
    }
    let (users, next_offset) = state.users.page(offset, limit);
    Ok(Json(UserPage {
        users: users.iter().map(UserResponse::from).collect(),
        next_offset,
    })
    .into_response())
}

/// The tickets a user owns.
#[utoipa::path(get, path = "/users/{id}/tickets", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TicketList), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn tickets(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<TicketList>> {
    let id = UserId::from(id);
    authorize_existing(&state, &caller, &id)?;
    state.desk.book_ready()?;
    let tickets = state.desk.tickets_of(&id);
    Ok(Json(TicketList {
        tickets: tickets.iter().map(TicketResponse::from).collect(),
    }))
}

/// The QR code of one of a user's tickets, as an SVG image: it encodes the ticket's token, what the gate sends to
/// `POST /tickets/verify`. The token is a secret, so it travels only in the body of a request that carried the
/// bearer token, never in a URL, and the image is not stored by caches.
#[utoipa::path(get, path = "/users/{id}/tickets/{ticket_id}/qr", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path), ("ticket_id" = String, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String, description = "the QR code of the ticket's token"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody, description = "user_not_found or ticket_not_found")))]
pub async fn ticket_qr(
    State(state): State<AppState>,
    caller: Caller,
    ApiPathPair(id, ticket_id): ApiPathPair,
) -> ApiResult<Response> {
    let id = UserId::from(id);
    authorize_existing(&state, &caller, &id)?;
    state.desk.book_ready()?;
    let ticket = state
        .desk
        .ticket_of(&id, &TicketId::from(ticket_id))
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    let svg = qr_svg(&ticket.token)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        svg,
    )
        .into_response())
}

/// Pixels of the smallest side of a QR code image, quiet zone included: big enough to scan from a phone screen.
pub const QR_DIMENSION_MIN_PX: u32 = 240;

/// The SVG of a QR code of `text`, black on white with the standard quiet zone.
fn qr_svg(text: &str) -> ApiResult<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(ApiError::internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(QR_DIMENSION_MIN_PX, QR_DIMENSION_MIN_PX)
        .build())
}

/// Revoke the bearer token presented, or with `?all=true` every token of the user: they answer 401 from now on.
#[utoipa::path(post, path = "/users/logout", tag = "users", security(("bearer" = [])),
    params(("all" = Option<bool>, Query, description = "revoke every token of the user")),
    responses((status = 204, description = "revoked"), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    session: UserSession,
    ApiQuery(query): ApiQuery<LogoutQuery>,
) -> ApiResult<StatusCode> {
    let token = (!query.all.unwrap_or(false)).then_some(session.token.as_str());
    let revoked = state.users.revoke(&session.user, token).await?;
    tracing::info!(user_id = %session.user, revoked, "tokens revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Hands a card a request gave to the payment provider's vault (checked there, its cvv used this once) and
/// returns what the node keeps of it: the payment method id and what may be shown. One card of a bulk creation
/// goes to the vault once, and its users share it.
pub(crate) async fn vault(
    state: &AppState,
    card: Option<crate::users::StoredCard>,
) -> ApiResult<Option<crate::users::CardOnFile>> {
    let Some(card) = card else {
        return Ok(None);
    };
    let vaulted = state.desk.vault_card(card.payment_card()).await?;
    Ok(Some(card.on_file(vaulted)))
}

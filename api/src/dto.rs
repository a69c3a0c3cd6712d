//! Request and response bodies as API.md defines them, with their validation.
//!
//! Requests reject unknown fields; every string and number has a limit, and a value outside it is a 422 that
//! names the field.

use crate::error::{ApiError, ApiResult};
use crate::users::{
    CardSecret, CardSummary, NewUser, PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN, Profile,
    StoredCard, TEXT_FIELD_LENGTH_MAX, USERNAME_LENGTH_MAX, USERNAME_LENGTH_MIN, USERS_BULK_MAX,
    User, UserUpdate,
};
use axum::http::StatusCode;
use engine::desk::{Hold, Order, OrderStatus, Ticket};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// Milliseconds since the epoch as an RFC 3339 UTC string.
pub fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time (any offset) into its UTC form.
pub fn normalize_rfc3339(text: &str) -> ApiResult<String> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::invalid("starts_at must be an RFC 3339 time such as 2027-06-01T20:00:00Z")
    })?;
    time.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(ApiError::internal)
}

fn check_length(field: &str, value: &str, min: usize, max: usize) -> ApiResult<()> {
    let length = value.chars().count();
    if length < min || length > max {
        return Err(ApiError::invalid(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    check_no_control_characters(field, value)
}

/// NUL, escape sequences and other control characters have no place in a name or an address: they would reach
/// seat maps, tickets, terminals and logs as they are.
fn check_no_control_characters(field: &str, value: &str) -> ApiResult<()> {
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

fn check_optional(field: &str, value: &Option<String>) -> ApiResult<()> {
    match value {
        Some(text) => check_length(field, text, 0, TEXT_FIELD_LENGTH_MAX),
        None => Ok(()),
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardRequest {
    /// Card brand, e.g. `visa`.
    #[serde(rename = "type")]
    pub kind: String,
    pub holder_name: String,
    /// 12 to 19 digits passing the Luhn check.
    pub number: String,
    pub exp_month: u8,
    pub exp_year: u16,
    /// 3 or 4 digits.
    pub cvv: String,
}

impl CardRequest {
    pub fn validate(self) -> ApiResult<StoredCard> {
        check_length("card.type", &self.kind, 1, 20)?;
        check_length(
            "card.holder_name",
            &self.holder_name,
            1,
            TEXT_FIELD_LENGTH_MAX,
        )?;
        let digits_ok = (12..=19).contains(&self.number.len())
            && self.number.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok || !luhn_valid(&self.number) {
            return Err(ApiError::invalid(
                "card.number must be 12 to 19 digits with a valid check digit",
            ));
        }
        if !(1..=12).contains(&self.exp_month) {
            return Err(ApiError::invalid("card.exp_month must be 1 to 12"));
        }
        if !(2000..=2100).contains(&self.exp_year) {
            return Err(ApiError::invalid("card.exp_year must be 2000 to 2100"));
        }
        if engine::payment::card_expired(self.exp_month, self.exp_year) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "card_expired",
                "the card has expired",
            ));
        }
        if !(3..=4).contains(&self.cvv.len()) || !self.cvv.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid("card.cvv must be 3 or 4 digits"));
        }
        let last4 = self.number[self.number.len() - 4..].to_owned();
        Ok(StoredCard {
            summary: CardSummary {
                kind: self.kind,
                holder_name: self.holder_name,
                last4,
                exp_month: self.exp_month,
                exp_year: self.exp_year,
            },
            secret: CardSecret {
                number: self.number,
                cvv: self.cvv,
            },
        })
    }
}

/// Whether a string of ASCII digits passes the Luhn check every card number does.
pub(crate) fn luhn_valid(number: &str) -> bool {
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(position, byte)| {
            let digit = u32::from(byte - b'0');
            if position % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// 3 to 64 letters, digits, `.`, `_`, `-` or `@`.
    pub username: String,
    /// 8 to 128 characters.
    pub password: String,
    pub gender: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub zip_code: Option<String>,
    pub street: Option<String>,
    pub card: Option<CardRequest>,
}

pub fn check_username(username: &str) -> ApiResult<()> {
    let ok = (USERNAME_LENGTH_MIN..=USERNAME_LENGTH_MAX).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !ok {
        return Err(ApiError::invalid(format!(
            "username must be {USERNAME_LENGTH_MIN} to {USERNAME_LENGTH_MAX} letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

fn check_password(password: &str) -> ApiResult<()> {
    check_length(
        "password",
        password,
        PASSWORD_LENGTH_MIN,
        PASSWORD_LENGTH_MAX,
    )
}

fn profile_of(
    gender: Option<String>,
    country: Option<String>,
    city: Option<String>,
    zip_code: Option<String>,
    street: Option<String>,
) -> ApiResult<Profile> {
    check_optional("gender", &gender)?;
    check_optional("country", &country)?;
    check_optional("city", &city)?;
    check_optional("zip_code", &zip_code)?;
    check_optional("street", &street)?;
    Ok(Profile {
        gender,
        country,
        city,
        zip_code,
        street,
    })
}

impl UserRequest {
    pub fn validate(self) -> ApiResult<(NewUser, Option<StoredCard>)> {
        check_username(&self.username)?;
        check_password(&self.password)?;
        let profile = profile_of(
            self.gender,
            self.country,
            self.city,
            self.zip_code,
            self.street,
        )?;
        let card = self.card.map(CardRequest::validate).transpose()?;
        Ok((
            NewUser {
                username: self.username,
                password: self.password,
                profile,
                card: None,
            },
            card,
        ))
    }
}

/// `POST /admin/users/bulk`: users `PREFIX0` to `PREFIX{count-1}`, without passwords, each with `card` on file.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUsersRequest {
    /// Letters, digits, `.`, `_`, `-` or `@`; with the index appended, 3 to 64 characters.
    pub prefix: String,
    /// 1 to 10,000.
    #[schema(minimum = 1, maximum = 10_000)]
    pub count: u32,
    pub card: Option<CardRequest>,
}

impl BulkUsersRequest {
    /// The usernames to create, in index order, and the card.
    pub fn validate(self) -> ApiResult<(Vec<String>, Option<StoredCard>)> {
        let count = self.count as usize;
        if !(1..=USERS_BULK_MAX).contains(&count) {
            return Err(ApiError::invalid(format!(
                "count must be 1 to {USERS_BULK_MAX}"
            )));
        }
        // Every username has the prefix's characters and a length between the first's and the last's.
        check_username(&format!("{}0", self.prefix))?;
        check_username(&format!("{}{}", self.prefix, count - 1))?;
        let card = self.card.map(CardRequest::validate).transpose()?;
        let usernames = (0..count)
            .map(|index| format!("{}{index}", self.prefix))
            .collect();
        Ok((usernames, card))
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BulkUsersResponse {
    /// In index order; each token is shown only here.
    pub users: Vec<RegisteredResponse>,
}

/// A change to a user: every field is optional and a missing field stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdateRequest {
    /// A new password; the user changing their own needs `current_password` too (the admin does not). Every
    /// other session of the user ends.
    pub password: Option<String>,
    /// The password now, to change it.
    pub current_password: Option<String>,
    pub gender: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub zip_code: Option<String>,
    pub street: Option<String>,
    pub card: Option<CardRequest>,
}

impl UserUpdateRequest {
    /// The change (its card, to go to the provider's vault, apart), and the current password if one was given.
    pub fn validate(self) -> ApiResult<(UserUpdate, Option<StoredCard>, Option<String>)> {
        if let Some(password) = &self.password {
            check_password(password)?;
        }
        match (&self.password, &self.current_password) {
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "current_password goes with a new password",
                ));
            }
            (_, Some(current)) => {
                check_length("current_password", current, 1, PASSWORD_LENGTH_MAX)?
            }
            _ => {}
        }
        let current_password = self.current_password;
        Ok((
            UserUpdate {
                password: self.password,
                profile: profile_of(
                    self.gender,
                    self.country,
                    self.city,
                    self.zip_code,
                    self.street,
                )?,
                card: None,
            },
            self.card.map(CardRequest::validate).transpose()?,
            current_password,
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub username: String,
    pub password: String,
}

impl VerifyRequest {
    pub fn validate(&self) -> ApiResult<()> {
        check_length("username", &self.username, 1, USERNAME_LENGTH_MAX)?;
        check_length("password", &self.password, 1, PASSWORD_LENGTH_MAX)
    }
}

#[derive(Serialize, ToSchema)]
pub struct CardResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub holder_name: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<CardResponse>,
}

impl From<&User> for UserResponse {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.0.to_string(),
            username: user.username.clone(),
            gender: user.profile.gender.clone(),
            country: user.profile.country.clone(),
            city: user.profile.city.clone(),
            zip_code: user.profile.zip_code.clone(),
            street: user.profile.street.clone(),
            card: user.card.as_ref().map(|card| CardResponse {
                kind: card.summary.kind.clone(),
                holder_name: card.summary.holder_name.clone(),
                last4: card.summary.last4.clone(),
                exp_month: card.summary.exp_month,
                exp_year: card.summary.exp_year,
            }),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegisteredResponse {
    pub id: String,
    pub username: String,
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub id: String,
    pub token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutQuery {
    /// `true`: revoke every token of the user (log out everywhere), not only the one presented.
    pub all: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub offset: Option<usize>,
    /// 1 to 1000, default 100.
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<UserResponse>,
    pub next_offset: Option<usize>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SectionRequest {
    /// 1 to 16 letters or digits.
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
}

/// A general-admission concert has `capacity`; a seated one has `sections`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcertRequest {
    pub name: String,
    /// RFC 3339.
    pub starts_at: String,
    pub price_cents: u64,
    pub capacity: Option<u64>,
    pub sections: Option<Vec<SectionRequest>>,
    pub shards: Option<u32>,
}

impl ConcertRequest {
    /// What the engine's limits (`ConcertSpec::new`: lengths, counts, prices) do not cover.
    pub fn check_text(&self) -> ApiResult<()> {
        check_no_control_characters("name", &self.name)
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConcertResponse {
    pub id: String,
    pub name: String,
    pub starts_at: String,
    pub price_cents: u64,
    /// `general` or `seated`.
    pub kind: String,
    pub capacity: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    pub shards: u32,
}

#[derive(Serialize, ToSchema)]
pub struct ConcertList {
    pub concerts: Vec<ConcertResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct SeatResponse {
    pub id: String,
    /// `free`, `held` or `sold`.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct SeatList {
    pub seats: Vec<SeatResponse>,
}

/// Either `quantity` or `seats`, not both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    pub concert_id: String,
    pub quantity: Option<u32>,
    /// Seat labels such as `A-3-17`.
    pub seats: Option<Vec<String>>,
}

/// Seat labels longer than this are certainly not seats.
const SEAT_LABEL_LENGTH_MAX: usize = 32;
/// Concert ids longer than this are certainly not ids.
const ID_LENGTH_MAX: usize = 64;

impl ClaimBody {
    pub fn into_request(self) -> ApiResult<engine::desk::OrderRequest> {
        check_length("concert_id", &self.concert_id, 1, ID_LENGTH_MAX)?;
        let claim = match (self.quantity, self.seats) {
            (Some(quantity), None) => engine::router::ClaimRequest::Quantity(quantity),
            (None, Some(seats)) => {
                if seats.iter().any(|seat| seat.len() > SEAT_LABEL_LENGTH_MAX) {
                    return Err(ApiError::invalid(format!(
                        "seat labels are at most {SEAT_LABEL_LENGTH_MAX} characters"
                    )));
                }
                engine::router::ClaimRequest::Seats(seats)
            }
            _ => return Err(ApiError::invalid("give either quantity or seats")),
        };
        Ok(engine::desk::OrderRequest {
            concert_id: engine::ids::ConcertId::from(self.concert_id),
            claim,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct HoldResponse {
    pub id: String,
    pub concert_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<Vec<String>>,
    pub quantity: u32,
    pub expires_at: String,
}

impl From<&Hold> for HoldResponse {
    fn from(hold: &Hold) -> Self {
        Self {
            id: hold.id.0.to_string(),
            concert_id: hold.concert_id.0.to_string(),
            seats: hold.seated.then(|| hold.seats.clone()),
            quantity: hold.quantity,
            expires_at: rfc3339(hold.expires_at_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TicketResponse {
    // Shared with the book's ticket (`Arc<str>`): an answer copies no id.
    #[schema(value_type = String)]
    pub id: Arc<str>,
    #[schema(value_type = String)]
    pub token: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seat: Option<String>,
    #[schema(value_type = String)]
    pub order_id: Arc<str>,
    #[schema(value_type = String)]
    pub concert_id: Arc<str>,
    pub checked_in_at: Option<String>,
}

impl From<&Ticket> for TicketResponse {
    fn from(ticket: &Ticket) -> Self {
        Self {
            id: ticket.id.0.clone(),
            token: ticket.token.clone(),
            seat: ticket.seat.clone(),
            order_id: ticket.order_id.0.clone(),
            concert_id: ticket.concert_id.0.clone(),
            checked_in_at: ticket.checked_in_at_ms.map(rfc3339),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TicketList {
    pub tickets: Vec<TicketResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderResponse {
    #[schema(value_type = String)]
    pub id: Arc<str>,
    #[schema(value_type = String)]
    pub concert_id: Arc<str>,
    #[schema(value_type = String)]
    pub user_id: Arc<str>,
    /// `confirmed`, `pending` or `declined`.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub amount_cents: u64,
    pub tickets: Vec<TicketResponse>,
    pub created_at: String,
}

impl From<&Order> for OrderResponse {
    fn from(order: &Order) -> Self {
        Self {
            id: order.id.0.clone(),
            concert_id: order.concert_id.0.clone(),
            user_id: order.user_id.0.clone(),
            status: match order.status {
                OrderStatus::Pending => "pending",
                OrderStatus::Confirmed => "confirmed",
                OrderStatus::Declined => "declined",
            },
            amount_cents: order.amount_cents,
            tickets: order.tickets.iter().map(TicketResponse::from).collect(),
            created_at: rfc3339(order.created_at_ms),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketVerifyRequest {
    pub token: String,
}

/// `POST /admin/rotate-master-key`: the new key when the current one comes from `BOXOFFICE_MASTER_KEY`; a node
/// whose key lives in its data dir draws a new one itself.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateMasterKeyRequest {
    /// Base64 of 32 random bytes.
    pub new_master_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotateMasterKeyResponse {
    /// The id (key check value) of the master key now in use.
    pub master_key_id: String,
    pub users_rewrapped: u64,
}

/// `POST /admin/backup`: where the node writes a consistent copy of its data dir.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// An absolute path on the node's machine, to a directory that does not exist yet (or is empty).
    pub dir: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BackupResponse {
    pub dir: String,
    /// Bytes copied: sled's keys and values, the journal, the ledger checkpoint, the node id.
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// What `POST /admin/snapshot` wrote, and the journal left behind it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotResponse {
    pub concerts: u64,
    pub shards: u64,
    pub journal_segments: u64,
    pub journal_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_typos() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("4000000000000002"));
        assert!(!luhn_valid("4242424242424241"));
    }

    #[test]
    fn times_are_normalised_to_utc() {
        assert_eq!(
            normalize_rfc3339("2027-06-01T22:00:00+02:00").expect("valid"),
            "2027-06-01T20:00:00Z"
        );
        assert!(normalize_rfc3339("next tuesday").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

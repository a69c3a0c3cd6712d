//! Users, their passwords, bearer tokens and cards on file.
//!
//! Passwords are argon2id hashes; a bearer token is 256 random bits handed out once and kept only as its SHA-256
//! hash, with an expiry. A card is kept in two parts: what may be shown ([`CardSummary`], masked to `last4`)
//! and what only the payment provider may see ([`CardSecret`]). Of the secret part only the number is kept: the
//! CVV is used once, to verify the card with the payment provider when it is stored, and then dropped (PCI DSS
//! forbids keeping it after authorization, even encrypted). Records written before that ([`StoredUser::V1`],
//! whose sealed card held the CVV too) are rewritten without it when the node starts ([`UserStore::restore`]).
//!
//! Envelope encryption (`persistence::crypto`): every user has a data key, kept wrapped under the master key. The
//! card's secret part is sealed under it the moment it arrives and stays sealed in memory; it is opened only to
//! hand the card to the payment provider ([`UserStore::payment_card`]). What reaches the journal and sled is
//! sealed as a whole (profile, holder name, address, card), with the user id bound as associated data; only the
//! username, the password hash, token hashes and the creation time are stored in the clear. Hashing a password is slow on purpose, so it runs on the blocking
//! pool behind a semaphore: at most [`HASHING_IN_FLIGHT_MAX`] hash at once, and at most
//! [`HASHING_WAITING_MAX`] wait; beyond that a login or registration is refused as overloaded.
//!
//! [`UserStore::register_bulk`] creates up to [`USERS_BULK_MAX`] users in one call for load tests: they have no
//! password (a password login for them always fails as for an unknown user) and reach the node only through the
//! token handed out at creation; their records take the same sealing and journaling path as any other user's.

use crate::durability::Durable;
use crate::error::{ApiError, ApiResult};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::http::StatusCode;
use base64::Engine as _;
use engine::ids::{UserId, fill_random};
use engine::journal::Commit;
use engine::payment::{PaymentCard, VaultedCard};
use persistence::crypto::{DataKey, KeyRing, Sealed, WrappedKey};
use persistence::wire::MetaRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

pub const USERNAME_LENGTH_MIN: usize = 3;
pub const USERNAME_LENGTH_MAX: usize = 64;
pub const PASSWORD_LENGTH_MIN: usize = 8;
pub const PASSWORD_LENGTH_MAX: usize = 128;
/// Longest profile field (city, street, ...) or card holder name.
pub const TEXT_FIELD_LENGTH_MAX: usize = 100;
/// Users one node stores at most.
pub const USERS_MAX: usize = 10_000_000;
/// Users one bulk call creates at most; more is 422. It bounds the time the users lock is held and the size of
/// the response (about 110 bytes per user).
pub const USERS_BULK_MAX: usize = 10_000;
/// Card changes of one user per [`CARD_CHANGE_WINDOW_MS`] at most: each one puts a card in the provider's vault.
pub const CARD_CHANGES_MAX: usize = 10;
pub const CARD_CHANGE_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Users whose recent card changes are remembered at most; beyond, the entries whose window has passed go first.
const CARD_CHANGERS_MAX: usize = 1_000_000;
/// Live tokens per user at most; logging in again beyond that revokes the oldest.
pub const TOKENS_PER_USER_MAX: usize = 16;
/// Random bytes in a bearer token.
const TOKEN_RANDOM_BYTES: usize = 32;
/// Password hashes computed at once: one per core keeps the rest of the node responsive.
pub static HASHING_IN_FLIGHT_MAX: OnceLock<usize> = OnceLock::new();
/// Password hashes waiting for a core at most; beyond that, 503 overloaded.
pub const HASHING_WAITING_MAX: usize = 4_096;

/// Shown in responses: the card without its number and cvv.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    pub kind: String,
    pub holder_name: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

/// Never shown, never logged: the part of a card only the payment provider sees, as a request gives it. It goes
/// to the provider's vault once and is not kept: the node keeps the payment method id the vault answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSecret {
    pub number: String,
    pub cvv: String,
}

/// What of a card's secret part records of format V2 kept, sealed: the number alone.
#[derive(Serialize, Deserialize)]
struct CardNumber {
    number: String,
}

impl std::fmt::Debug for CardSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardSecret(..)")
    }
}

/// A card as a request gives it, before it goes to the provider's vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCard {
    pub summary: CardSummary,
    pub secret: CardSecret,
}

impl StoredCard {
    /// The card as the payment provider sees it, to verify it before it is stored: the one time its CVV is used.
    pub fn payment_card(&self) -> PaymentCard {
        PaymentCard {
            holder_name: self.summary.holder_name.clone(),
            number: self.secret.number.clone(),
            exp_month: self.summary.exp_month,
            exp_year: self.summary.exp_year,
            cvv: Some(self.secret.cvv.clone()),
        }
    }

    /// The card as the node keeps it once the provider's vault has it.
    pub fn on_file(self, vaulted: VaultedCard) -> CardOnFile {
        CardOnFile {
            summary: CardSummary {
                last4: vaulted.last4,
                exp_month: vaulted.exp_month,
                exp_year: vaulted.exp_year,
                ..self.summary
            },
            payment_method: vaulted.payment_method,
        }
    }
}

/// A card as the node keeps it: what may be shown, and the provider's payment method id. No number, no cvv.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardOnFile {
    pub summary: CardSummary,
    pub payment_method: String,
}

/// A card as records of formats V1 and V2 kept it: the summary, and the secret part sealed under the user's data
/// key. Read only to move the card into the provider's vault.
#[derive(Serialize, Deserialize)]
struct LegacyCardOnFile {
    summary: CardSummary,
    secret: Sealed,
}

/// A card of an earlier version's record, opened at start to be moved into the provider's vault.
pub struct LegacyCard {
    pub user: UserId,
    pub card: StoredCard,
}

/// Purposes bound into the associated data of what was sealed for a user's card in earlier formats: V2 sealed its
/// [`CardNumber`] under `card-number`, V1 the number and cvv together ([`CardSecret`]) under `card`.
const CARD_NUMBER_PURPOSE: &str = "card-number";
const CARD_WITH_CVV_PURPOSE: &str = "card";
const PRIVATE_PURPOSE: &str = "private";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub gender: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub zip_code: Option<String>,
    pub street: Option<String>,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub profile: Profile,
    pub card: Option<CardOnFile>,
    pub created_at_ms: u64,
    data_key: WrappedKey,
}

type TokenHash = [u8; 32];

/// A user as the journal and sled keep it; the variant is the format version. Tokens are kept as their hashes.
/// `V1` and `V2` seal a [`LegacyPrivatePart`], whose card is sealed in turn: in `V1` a [`CardSecret`] (number and
/// cvv), in `V2` a [`CardNumber`]; both are read only to move the card into the provider's vault. `V3` seals a
/// [`PrivatePart`], whose card is a payment method id.
#[derive(Serialize, Deserialize)]
enum StoredUser {
    V1(StoredUserV1),
    V2(StoredUserV1),
    V3(StoredUserV1),
}

#[derive(Serialize, Deserialize)]
struct StoredUserV1 {
    username: String,
    password_hash: String,
    created_at_ms: u64,
    tokens: Vec<(TokenHash, u64)>,
    data_key: WrappedKey,
    /// [`PrivatePart`], sealed under the data key.
    private: Sealed,
}

/// What [`UserStore::restore`] loaded.
pub struct Restored {
    pub users: usize,
    /// Cards of records written by an earlier version (format V1 or V2), which kept the number (and in V1 the
    /// cvv) sealed: each to be moved into the provider's vault ([`UserStore::attach_card`]).
    pub legacy_cards: Vec<LegacyCard>,
}

/// What of a user is sealed at rest.
#[derive(Serialize, Deserialize)]
struct PrivatePart {
    profile: Profile,
    card: Option<CardOnFile>,
}

/// What records of formats V1 and V2 sealed.
#[derive(Serialize, Deserialize)]
struct LegacyPrivatePart {
    profile: Profile,
    card: Option<LegacyCardOnFile>,
}

struct TokenRecord {
    user_id: UserId,
    expires_at_ms: u64,
}

#[derive(Default)]
struct Users {
    by_id: HashMap<UserId, User>,
    by_username: HashMap<String, UserId>,
    /// By username in lower case: usernames differing only in case are one username. (Users stored before this
    /// rule may collide here; the first keeps the folded name, and each still logs in by its exact name.)
    by_folded: HashMap<String, UserId>,
    in_creation_order: Vec<UserId>,
    tokens: HashMap<TokenHash, TokenRecord>,
    tokens_of_user: HashMap<UserId, VecDeque<TokenHash>>,
}

impl Users {
    /// Adds a user after the others in creation order; the caller has checked that its username is free.
    fn insert(&mut self, user: User) {
        self.by_username
            .insert(user.username.clone(), user.id.clone());
        self.by_folded
            .entry(user.username.to_ascii_lowercase())
            .or_insert_with(|| user.id.clone());
        self.in_creation_order.push(user.id.clone());
        self.by_id.insert(user.id.clone(), user);
    }

    fn any_taken<'a>(&self, mut usernames: impl Iterator<Item = &'a str>) -> bool {
        usernames.any(|username| self.is_taken(username))
    }

    /// Whether a user has `username`, in any case.
    fn is_taken(&self, username: &str) -> bool {
        self.by_username.contains_key(username)
            || self.by_folded.contains_key(&username.to_ascii_lowercase())
    }

    /// The user who logs in as `username`: the exact name first, else the same name in another case.
    fn find(&self, username: &str) -> Option<&User> {
        self.by_username
            .get(username)
            .or_else(|| self.by_folded.get(&username.to_ascii_lowercase()))
            .and_then(|id| self.by_id.get(id))
    }

    /// Revokes every token of `user_id` but `keep`; returns how many.
    fn revoke_all_but(&mut self, user_id: &UserId, keep: Option<TokenHash>) -> usize {
        let Some(live) = self.tokens_of_user.get_mut(user_id) else {
            return 0;
        };
        let before = live.len();
        let tokens = &mut self.tokens;
        live.retain(|hash| {
            let kept = Some(*hash) == keep;
            if !kept {
                tokens.remove(hash);
            }
            kept
        });
        before - live.len()
    }

    /// Records a live token of `user_id`, revoking its oldest beyond [`TOKENS_PER_USER_MAX`].
    fn add_token(&mut self, user_id: &UserId, hash: TokenHash, expires_at_ms: u64) {
        self.tokens.insert(
            hash,
            TokenRecord {
                user_id: user_id.clone(),
                expires_at_ms,
            },
        );
        let live = self.tokens_of_user.entry(user_id.clone()).or_default();
        live.push_back(hash);
        let excess = live.len().saturating_sub(TOKENS_PER_USER_MAX);
        for revoked in live.drain(..excess).collect::<Vec<_>>() {
            self.tokens.remove(&revoked);
        }
    }
}

pub struct UserStore {
    users: RwLock<Users>,
    /// In a cluster, this node's number: every user created here carries it in its id and its tokens.
    home: Option<engine::remote::NodeId>,
    durable: Durable,
    keys: Arc<KeyRing>,
    token_ttl_ms: u64,
    clock: Arc<dyn engine::clock::Clock>,
    /// Checks of a password (logins): never queued behind [`UserStore::changes`].
    logins: HashingPool,
    /// New hashes (registrations, password changes): half the cores at most, so that a flood of sign-ups
    /// leaves the other half to logins.
    changes: HashingPool,
    /// A real hash to verify against when the username is unknown, so that timing does not tell who exists.
    decoy_hash: OnceLock<String>,
    /// The in-process simulator's vault, when it keeps one (with durability).
    card_vault: OnceLock<Arc<crate::durability::SimulatorStore>>,
    /// When each user changed its card lately, within [`CARD_CHANGE_WINDOW_MS`].
    card_changes: std::sync::Mutex<HashMap<UserId, VecDeque<u64>>>,
}

/// A new user as validated from a request.
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub profile: Profile,
    /// In the provider's vault already.
    pub card: Option<CardOnFile>,
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserUpdate {
    pub password: Option<String>,
    pub profile: Profile,
    /// In the provider's vault already.
    pub card: Option<CardOnFile>,
}

impl UserStore {
    pub fn new(
        token_ttl_ms: u64,
        clock: Arc<dyn engine::clock::Clock>,
        durable: Durable,
        keys: Arc<KeyRing>,
        home: Option<engine::remote::NodeId>,
    ) -> Self {
        let cores = *HASHING_IN_FLIGHT_MAX
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self {
            users: RwLock::new(Users::default()),
            home,
            durable,
            keys,
            token_ttl_ms,
            clock,
            logins: HashingPool::new(cores),
            changes: HashingPool::new((cores / 2).max(1)),
            decoy_hash: OnceLock::new(),
            card_vault: OnceLock::new(),
            card_changes: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn register(&self, new_user: NewUser) -> ApiResult<(User, String)> {
        if self.read().is_taken(&new_user.username) {
            return Err(username_taken());
        }
        let password = new_user.password;
        let password_hash = self.changes.run(move || hash_password(&password)).await??;
        let id = self.new_id();
        let (_, data_key) = self.keys.new_data_key(&id.0);
        let user = User {
            card: new_user.card,
            id,
            username: new_user.username,
            password_hash,
            profile: new_user.profile,
            created_at_ms: self.clock.now_ms(),
            data_key,
        };
        let (token, commit) = {
            let mut users = self.write();
            if users.is_taken(&user.username) {
                return Err(username_taken());
            }
            if users.by_id.len() >= USERS_MAX {
                return Err(users_full());
            }
            users.insert(user.clone());
            let token = self.issue_token(&mut users, &user.id);
            (token, self.persist(&users, &user.id))
        };
        Durable::wait(commit).await?;
        Ok((user, token))
    }

    /// Creates users named `usernames` that have no password, each with its own data key, `card` sealed under it,
    /// and one token; returns their ids, usernames and tokens in the order given. All or nothing: if any username is taken,
    /// nothing is created (`409 username_taken`). Durable before it returns, like [`UserStore::register`].
    pub async fn register_bulk(
        &self,
        usernames: Vec<String>,
        card: Option<CardOnFile>,
    ) -> ApiResult<Vec<(UserId, String, String)>> {
        assert!(
            usernames.len() <= USERS_BULK_MAX,
            "bulk size is checked by the caller"
        );
        if self.read().any_taken(usernames.iter().map(String::as_str)) {
            return Err(username_taken());
        }
        let created_at_ms = self.clock.now_ms();
        let expires_at_ms = created_at_ms + self.token_ttl_ms;
        // Keys are drawn and records sealed before the lock is taken; under it only maps change and records queue.
        let mut created = Vec::with_capacity(usernames.len());
        for username in usernames {
            let id = self.new_id();
            let (key, data_key) = self.keys.new_data_key(&id.0);
            let user = User {
                card: card.clone(),
                id,
                username,
                password_hash: String::new(),
                profile: Profile::default(),
                created_at_ms,
                data_key,
            };
            let (token, hash) = new_token(self.home);
            let record = sealed_record(&key, &user, vec![(hash, expires_at_ms)]);
            created.push((user, token, hash, record));
        }
        let answers: Vec<(UserId, String, String)> = created
            .iter()
            .map(|(user, token, ..)| (user.id.clone(), user.username.clone(), token.clone()))
            .collect();
        // Users created in one millisecond are recovered in id order: keep that order now as well.
        created.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let commits: Vec<Commit> = {
            let mut users = self.write();
            if users.any_taken(created.iter().map(|c| c.0.username.as_str())) {
                return Err(username_taken());
            }
            if users.by_id.len() + created.len() > USERS_MAX {
                return Err(users_full());
            }
            created
                .into_iter()
                .map(|(user, _, hash, record)| {
                    users.add_token(&user.id, hash, expires_at_ms);
                    users.insert(user);
                    self.durable.append_meta(record)
                })
                .collect()
        };
        for commit in commits {
            Durable::wait(commit).await?;
        }
        Ok(answers)
    }

    /// Checks a username and password and hands out a fresh token.
    pub async fn verify(&self, username: &str, password: String) -> ApiResult<(UserId, String)> {
        let known = self
            .read()
            .find(username)
            .map(|user| (user.id.clone(), user.password_hash.clone()));
        // A user created in bulk has no password: a login for it fails exactly as for an unknown username.
        let (user_id, stored_hash) = match known {
            Some((id, hash)) if !hash.is_empty() => (Some(id), hash),
            _ => (None, self.decoy_hash()?),
        };
        let matches = self
            .logins
            .run(move || verify_password(&password, &stored_hash))
            .await?;
        let user_id = user_id.filter(|_| matches).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong username or password",
            )
        })?;
        let (token, commit) = {
            let mut users = self.write();
            let token = self.issue_token(&mut users, &user_id);
            (token, self.persist(&users, &user_id))
        };
        Durable::wait(commit).await?;
        Ok((user_id, token))
    }

    fn decoy_hash(&self) -> ApiResult<String> {
        if let Some(hash) = self.decoy_hash.get() {
            return Ok(hash.clone());
        }
        let hash = hash_password("decoy password that nobody has")?;
        Ok(self.decoy_hash.get_or_init(|| hash).clone())
    }

    /// A fresh user id, naming this node in a cluster.
    fn new_id(&self) -> UserId {
        match self.home {
            Some(node) => UserId::random_on(node),
            None => UserId::random(),
        }
    }

    /// Whether a user has this username here, in any case.
    pub fn username_taken(&self, username: &str) -> bool {
        self.read().is_taken(username)
    }

    /// Users stored here.
    pub fn count(&self) -> usize {
        self.read().by_id.len()
    }

    fn issue_token(&self, users: &mut Users, user_id: &UserId) -> String {
        let (token, hash) = new_token(self.home);
        users.add_token(user_id, hash, self.clock.now_ms() + self.token_ttl_ms);
        token
    }

    /// Revokes `token` of `user`, or with `None` every token of the user; returns how many. Durable before it returns.
    pub async fn revoke(&self, user: &UserId, token: Option<&str>) -> ApiResult<usize> {
        let (revoked, commit) = {
            let mut users = self.write();
            let Users {
                tokens,
                tokens_of_user,
                ..
            } = &mut *users;
            let live = tokens_of_user.entry(user.clone()).or_default();
            let doomed: Vec<TokenHash> = match token {
                Some(token) => vec![token_hash(token)],
                None => live.iter().copied().collect(),
            };
            let mut revoked = 0;
            for hash in &doomed {
                if tokens.remove(hash).is_some() {
                    revoked += 1;
                }
            }
            live.retain(|hash| !doomed.contains(hash));
            (revoked, self.persist(&users, user))
        };
        Durable::wait(commit).await?;
        Ok(revoked)
    }

    /// The user a live token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<UserId> {
        let hash = token_hash(token);
        let users = self.read();
        let record = users.tokens.get(&hash)?;
        (record.expires_at_ms > self.clock.now_ms()).then(|| record.user_id.clone())
    }

    /// Drops expired tokens; called periodically.
    pub fn sweep(&self) {
        let now_ms = self.clock.now_ms();
        let mut users = self.write();
        users
            .tokens
            .retain(|_, record| record.expires_at_ms > now_ms);
        let Users {
            tokens,
            tokens_of_user,
            ..
        } = &mut *users;
        tokens_of_user.retain(|_, live| {
            live.retain(|hash| tokens.contains_key(hash));
            !live.is_empty()
        });
    }

    pub fn exists(&self, id: &UserId) -> bool {
        self.read().by_id.contains_key(id)
    }

    pub fn get(&self, id: &UserId) -> Option<User> {
        self.read().by_id.get(id).cloned()
    }

    /// Whether `password` is `id`'s (a user created in bulk has none: never). Runs in the logins' hashing pool.
    pub async fn check_password(&self, id: &UserId, password: String) -> ApiResult<bool> {
        let stored_hash = self
            .get(id)
            .map(|user| user.password_hash)
            .ok_or_else(|| ApiError::not_found("user"))?;
        let matches = self
            .logins
            .run(move || !stored_hash.is_empty() && verify_password(&password, &stored_hash))
            .await?;
        Ok(matches)
    }

    /// Changes what `update` gives. A new password revokes every token of the user but `keep` (the session
    /// that changed it; `None` revokes them all), in the same durable record as the new hash.
    pub async fn update(
        &self,
        id: &UserId,
        update: UserUpdate,
        keep: Option<&str>,
    ) -> ApiResult<User> {
        if !self.read().by_id.contains_key(id) {
            return Err(ApiError::not_found("user"));
        }
        let password_hash = match update.password {
            Some(password) => Some(self.changes.run(move || hash_password(&password)).await??),
            None => None,
        };
        let (user, commit) = {
            let mut users = self.write();
            let user = users
                .by_id
                .get_mut(id)
                .ok_or_else(|| ApiError::not_found("user"))?;
            let password_changed = password_hash.is_some();
            if let Some(hash) = password_hash {
                user.password_hash = hash;
            }
            let profile = update.profile;
            let fields = [
                (&mut user.profile.gender, profile.gender),
                (&mut user.profile.country, profile.country),
                (&mut user.profile.city, profile.city),
                (&mut user.profile.zip_code, profile.zip_code),
                (&mut user.profile.street, profile.street),
            ];
            for (field, value) in fields {
                if value.is_some() {
                    *field = value;
                }
            }
            if let Some(card) = update.card {
                user.card = Some(card);
            }
            let user = user.clone();
            if password_changed {
                users.revoke_all_but(id, keep.map(token_hash));
            }
            (user, self.persist(&users, id))
        };
        Durable::wait(commit).await?;
        Ok(user)
    }

    /// A page of users in creation order, and the offset of the next page if there is one.
    pub fn page(&self, offset: usize, limit: usize) -> (Vec<User>, Option<usize>) {
        let users = self.read();
        let ids = &users.in_creation_order;
        let end = offset.saturating_add(limit).min(ids.len());
        let page = ids
            .get(offset.min(ids.len())..end)
            .unwrap_or_default()
            .iter()
            .map(|id| users.by_id[id].clone())
            .collect();
        (page, (end < ids.len()).then_some(end))
    }

    /// Queues the user's record, with its live tokens, to the journal. Called under the users lock, so that two
    /// changes of one user reach the journal in the order they were made.
    fn persist(&self, users: &Users, id: &UserId) -> Commit {
        let user = &users.by_id[id];
        let tokens = users
            .tokens_of_user
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|hash| Some((*hash, users.tokens.get(hash)?.expires_at_ms)))
            .collect();
        let key = match self.keys.unwrap(&user.data_key, &id.0) {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(user_id = %id, %error, "cannot seal a user");
                return Commit::failed(error.to_string());
            }
        };
        self.durable.append_meta(sealed_record(&key, user, tokens))
    }

    /// Loads the users a restarted node recovered, oldest first; tokens that have expired are dropped. A user of a
    /// record written by an earlier version (V1, V2), which kept the card's number sealed (and in V1 its cvv), is
    /// loaded without a card, and the card is returned opened, to be moved into the provider's vault and attached
    /// again ([`UserStore::attach_card`]) before the node serves.
    pub fn restore(&self, records: Vec<(String, Vec<u8>)>) -> Result<Restored, String> {
        let now_ms = self.clock.now_ms();
        let mut decoded = Vec::with_capacity(records.len());
        let mut legacy_cards = Vec::new();
        for (id, bytes) in records {
            let stored: StoredUser = postcard::from_bytes(&bytes)
                .map_err(|error| format!("user {id} does not decode: {error}"))?;
            let (stored, card_purpose) = match stored {
                StoredUser::V1(stored) => (stored, Some(CARD_WITH_CVV_PURPOSE)),
                StoredUser::V2(stored) => (stored, Some(CARD_NUMBER_PURPOSE)),
                StoredUser::V3(stored) => (stored, None),
            };
            let fail =
                |error: String| format!("user {id}: {error} (is this the node's master key?)");
            let key = self
                .keys
                .unwrap(&stored.data_key, &id)
                .map_err(|error| fail(error.to_string()))?;
            let private = key
                .open(&id, PRIVATE_PURPOSE, &stored.private)
                .map_err(|error| fail(error.to_string()))?;
            let undecodable =
                |error: postcard::Error| format!("user {id} does not decode: {error}");
            let user_id = UserId::from(id.as_str());
            let private = match card_purpose {
                None => postcard::from_bytes::<PrivatePart>(&private).map_err(undecodable)?,
                Some(purpose) => {
                    let legacy: LegacyPrivatePart =
                        postcard::from_bytes(&private).map_err(undecodable)?;
                    if let Some(card) = legacy.card {
                        let card = open_legacy_card(&key, &id, purpose, card)
                            .map_err(|error| fail(format!("card does not open: {error}")))?;
                        legacy_cards.push(LegacyCard {
                            user: user_id.clone(),
                            card,
                        });
                    }
                    PrivatePart {
                        profile: legacy.profile,
                        card: None,
                    }
                }
            };
            decoded.push((user_id, stored, private));
        }
        decoded.sort_by(|a, b| (a.1.created_at_ms, &a.0).cmp(&(b.1.created_at_ms, &b.0)));
        let mut users = self.write();
        let count = decoded.len();
        for (id, stored, private) in decoded {
            for (hash, expires_at_ms) in stored.tokens {
                if expires_at_ms > now_ms {
                    users.add_token(&id, hash, expires_at_ms);
                }
            }
            users.insert(User {
                id,
                username: stored.username,
                password_hash: stored.password_hash,
                profile: private.profile,
                card: private.card,
                created_at_ms: stored.created_at_ms,
                data_key: stored.data_key,
            });
        }
        Ok(Restored {
            users: count,
            legacy_cards,
        })
    }

    /// Gives `id` the card `card` (in the provider's vault; `None` when the vault refused it) and journals the
    /// user under a new data key; the commit completes once the record is durable. How a user of an earlier
    /// version's record is rewritten once its card moved into the vault. The new data key is what makes the old
    /// records unreadable once the master key that wrapped their data key is gone: the current records no longer
    /// hold that data key at all.
    pub fn attach_card(&self, id: &UserId, card: Option<CardOnFile>) -> Commit {
        let mut users = self.write();
        match users.by_id.get_mut(id) {
            Some(user) => {
                user.card = card;
                user.data_key = self.keys.new_data_key(&id.0).1;
            }
            None => return Commit::failed(format!("no user {id}")),
        }
        self.persist(&users, id)
    }

    /// The payment method id of the user's card on file, as the provider's vault named it: what an order is
    /// charged to. `None` when the user has no card; `422 card_expired` when it has expired since it was stored.
    pub fn payment_method(&self, id: &UserId) -> ApiResult<Option<String>> {
        let users = self.read();
        let Some(card) = users.by_id.get(id).and_then(|user| user.card.as_ref()) else {
            return Ok(None);
        };
        if engine::payment::card_expired(card.summary.exp_month, card.summary.exp_year) {
            return Err(card_expired());
        }
        Ok(Some(card.payment_method.clone()))
    }

    /// Whether `id` may reserve tickets: a card on file, accepted by the payment provider when it was stored
    /// and not expired since (`422 card_required`, `422 card_expired`).
    pub fn check_card_on_file(&self, id: &UserId) -> ApiResult<()> {
        let users = self.read();
        let card = users
            .by_id
            .get(id)
            .and_then(|user| user.card.as_ref())
            .ok_or_else(|| ApiError::from(engine::error::EngineError::CardRequired))?;
        if engine::payment::card_expired(card.summary.exp_month, card.summary.exp_year) {
            return Err(card_expired());
        }
        Ok(())
    }

    /// Wraps every data key that is not under the current master key under it, journaling each user; returns how
    /// many. Orders go on meanwhile: each user is locked only while its own record is re-wrapped.
    pub async fn rewrap_data_keys(&self) -> ApiResult<usize> {
        let ids: Vec<UserId> = self.read().in_creation_order.clone();
        let mut rewrapped = 0;
        for id in ids {
            let commit = {
                let mut users = self.write();
                let Some(user) = users.by_id.get_mut(&id) else {
                    continue;
                };
                if user.data_key.master_key_id == self.keys.current_id() {
                    continue;
                }
                user.data_key = self
                    .keys
                    .rewrap(&user.data_key, &id.0)
                    .map_err(ApiError::internal)?;
                self.persist(&users, &id)
            };
            Durable::wait(commit).await?;
            rewrapped += 1;
        }
        if let Some(vault) = self.card_vault.get() {
            let cards = vault.rewrap_data_keys().await?;
            if cards > 0 {
                tracing::info!(cards, "vaulted cards re-wrapped under the new master key");
            }
        }
        Ok(rewrapped)
    }

    /// Counts a card change of `id`, or refuses it (`429 too_many_card_changes` with `Retry-After`) when the user
    /// changed its card [`CARD_CHANGES_MAX`] times in the last [`CARD_CHANGE_WINDOW_MS`]: every change puts a card
    /// in the provider's vault, which must not fill up at one user's will.
    pub fn admit_card_change(&self, id: &UserId) -> ApiResult<()> {
        let now_ms = self.clock.now_ms();
        let fresh = |at: &u64| now_ms.saturating_sub(*at) < CARD_CHANGE_WINDOW_MS;
        let mut changes = self.card_changes.lock().expect("card changes lock");
        if changes.len() >= CARD_CHANGERS_MAX && !changes.contains_key(id) {
            changes.retain(|_, times| times.iter().any(fresh));
            if changes.len() >= CARD_CHANGERS_MAX {
                return Err(ApiError::overloaded());
            }
        }
        let times = changes.entry(id.clone()).or_default();
        while times.front().is_some_and(|at| !fresh(at)) {
            times.pop_front();
        }
        if times.len() >= CARD_CHANGES_MAX {
            let oldest = times.front().copied().unwrap_or(now_ms);
            let retry_after_ms = (oldest + CARD_CHANGE_WINDOW_MS).saturating_sub(now_ms);
            return Err(ApiError::too_many_card_changes(
                retry_after_ms.div_ceil(1000).max(1),
            ));
        }
        times.push_back(now_ms);
        Ok(())
    }

    /// The in-process payment simulator's vault, whose data keys a master key rotation re-wraps with the users'.
    pub fn set_card_vault(&self, vault: Arc<crate::durability::SimulatorStore>) {
        assert!(self.card_vault.set(vault).is_ok(), "the vault is set once");
    }

    pub fn card_vault(&self) -> Option<&Arc<crate::durability::SimulatorStore>> {
        self.card_vault.get()
    }

    /// Forgets every master key but the current one, once nothing needs them.
    pub fn retire_old_master_keys(&self) {
        self.keys.retire_all_but_current();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Users> {
        self.users.read().expect("users lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Users> {
        self.users.write().expect("users lock")
    }
}

/// Password hashing on the blocking pool: at most `running` at once, at most [`HASHING_WAITING_MAX`] waiting;
/// beyond that, `503 overloaded` at once.
struct HashingPool {
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
}

impl HashingPool {
    fn new(running: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(running)),
            waiting: Arc::new(Semaphore::new(HASHING_WAITING_MAX)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let _waiting = self
            .waiting
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded())?;
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(ApiError::internal)
    }
}

/// Opens the sealed card of a V1 or V2 record (sealed under `purpose`): the number, and in V1 the cvv.
fn open_legacy_card(
    key: &DataKey,
    user: &str,
    purpose: &str,
    card: LegacyCardOnFile,
) -> Result<StoredCard, String> {
    let opened = key
        .open(user, purpose, &card.secret)
        .map_err(|error| error.to_string())?;
    let secret = if purpose == CARD_WITH_CVV_PURPOSE {
        postcard::from_bytes::<CardSecret>(&opened).map_err(|error| error.to_string())?
    } else {
        let CardNumber { number } =
            postcard::from_bytes(&opened).map_err(|error| error.to_string())?;
        CardSecret {
            number,
            cvv: String::new(),
        }
    };
    Ok(StoredCard {
        summary: card.summary,
        secret,
    })
}

/// A user's journal record: the profile and card sealed as a whole under the user's data key, with its tokens.
fn sealed_record(key: &DataKey, user: &User, tokens: Vec<(TokenHash, u64)>) -> MetaRecord {
    let private = PrivatePart {
        profile: user.profile.clone(),
        card: user.card.clone(),
    };
    let private = postcard::to_allocvec(&private)
        .map(Zeroizing::new)
        .expect("users always encode");
    let record = StoredUser::V3(StoredUserV1 {
        username: user.username.clone(),
        password_hash: user.password_hash.clone(),
        created_at_ms: user.created_at_ms,
        tokens,
        private: key.seal(&user.id.0, PRIVATE_PURPOSE, &private),
        data_key: user.data_key.clone(),
    });
    MetaRecord::User {
        id: user.id.0.to_string(),
        record: postcard::to_allocvec(&record).expect("users always encode"),
    }
}

/// A fresh bearer token (256 random bits, URL-safe base64, after `N.` naming this node in a cluster) and the
/// hash it is stored as.
fn new_token(home: Option<engine::remote::NodeId>) -> (String, TokenHash) {
    let mut raw = [0u8; TOKEN_RANDOM_BYTES];
    fill_random(&mut raw);
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let token = match home {
        Some(node) => cluster::route::node_token(node, &random),
        None => random,
    };
    let hash = token_hash(&token);
    (token, hash)
}

fn card_expired() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "card_expired",
        "the card on file has expired: store a new one with PUT /users/{id}",
    )
}

fn users_full() -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "users_full",
        "this node stores no more users",
    )
}

fn username_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "that username is taken",
    )
}

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

fn hash_password(password: &str) -> ApiResult<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(ApiError::internal)
}

fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    const NUMBER: &str = "4242424242424242";
    const CVV: &str = "7391";

    fn store(durable: Durable, keys: &Arc<KeyRing>) -> UserStore {
        UserStore::new(
            60_000,
            Arc::new(engine::clock::SystemClock),
            durable,
            keys.clone(),
            None,
        )
    }

    fn summary() -> CardSummary {
        CardSummary {
            kind: "visa".into(),
            holder_name: "Holder".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    }

    /// A user record as an earlier version wrote it: `V1` sealed the number and cvv together, `V2` the number.
    fn legacy_record(keys: &KeyRing, id: &str, v1: bool) -> Vec<u8> {
        let (key, data_key) = keys.new_data_key(id);
        let (secret, purpose) = if v1 {
            let secret = CardSecret {
                number: NUMBER.into(),
                cvv: CVV.into(),
            };
            (postcard::to_allocvec(&secret), CARD_WITH_CVV_PURPOSE)
        } else {
            let number = CardNumber {
                number: NUMBER.into(),
            };
            (postcard::to_allocvec(&number), CARD_NUMBER_PURPOSE)
        };
        let private = LegacyPrivatePart {
            profile: Profile::default(),
            card: Some(LegacyCardOnFile {
                summary: summary(),
                secret: key.seal(id, purpose, &secret.expect("encodes")),
            }),
        };
        let private = postcard::to_allocvec(&private).expect("encodes");
        let stored = StoredUserV1 {
            username: id.into(),
            password_hash: "x".into(),
            created_at_ms: 1,
            tokens: Vec::new(),
            private: key.seal(id, PRIVATE_PURPOSE, &private),
            data_key,
        };
        let stored = if v1 {
            StoredUser::V1(stored)
        } else {
            StoredUser::V2(stored)
        };
        postcard::to_allocvec(&stored).expect("encodes")
    }

    /// The private part of a current (V3) user record, opened.
    fn open_v3(keys: &KeyRing, id: &str, bytes: &[u8]) -> (PrivatePart, Zeroizing<Vec<u8>>) {
        let StoredUser::V3(stored) = postcard::from_bytes(bytes).expect("a user record") else {
            panic!("{id}: not a V3 record");
        };
        let key = keys.unwrap(&stored.data_key, id).expect("the data key");
        let opened = key
            .open(id, PRIVATE_PURPOSE, &stored.private)
            .expect("the private part");
        (postcard::from_bytes(&opened).expect("decodes"), opened)
    }

    #[tokio::test]
    async fn cards_of_earlier_records_move_to_the_vault_and_the_records_keep_neither_number_nor_cvv()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(KeyRing::new(persistence::crypto::MasterKey::generate()));
        let (storage, _) = persistence::storage::Storage::open(dir.path(), Default::default())
            .expect("storage opens");
        let durable = Durable::default();
        durable.set(storage);
        let users = store(durable.clone(), &keys);
        let restored = users
            .restore(vec![
                ("u_v1".into(), legacy_record(&keys, "u_v1", true)),
                ("u_v2".into(), legacy_record(&keys, "u_v2", false)),
            ])
            .expect("restores");
        assert_eq!(restored.users, 2);
        // Both cards come back opened, to go to the vault; until then their users have none.
        let mut legacy: Vec<(String, String, String)> = restored
            .legacy_cards
            .iter()
            .map(|legacy| {
                let secret = &legacy.card.secret;
                (
                    legacy.user.to_string(),
                    secret.number.clone(),
                    secret.cvv.clone(),
                )
            })
            .collect();
        legacy.sort();
        assert_eq!(
            legacy,
            [
                ("u_v1".into(), NUMBER.into(), CVV.into()),
                ("u_v2".into(), NUMBER.into(), String::new())
            ]
        );
        assert_eq!(
            users
                .payment_method(&UserId::from("u_v1"))
                .expect("no error"),
            None
        );
        for (number, legacy) in restored.legacy_cards.into_iter().enumerate() {
            let vaulted = VaultedCard {
                payment_method: format!("pm_{number}"),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 12,
                exp_year: 2030,
            };
            let user = legacy.user.clone();
            users
                .attach_card(&user, Some(legacy.card.on_file(vaulted)))
                .wait()
                .await
                .expect("durable");
            assert_eq!(
                users.payment_method(&user).expect("no error"),
                Some(format!("pm_{number}"))
            );
        }
        durable.storage().expect("set").close();
        drop((users, durable));

        // What the storage holds now: current records with a payment method, and no number or cvv.
        let (storage, recovered) =
            persistence::storage::Storage::open(dir.path(), Default::default())
                .expect("storage reopens");
        for (id, bytes) in &recovered.users {
            let (private, opened) = open_v3(&keys, id, bytes);
            let card = private.card.expect("a card");
            assert!(card.payment_method.starts_with("pm_"));
            assert_eq!(card.summary, summary());
            assert!(
                !contains(&opened, NUMBER) && !contains(&opened, CVV),
                "{id}"
            );
        }
        let users = store(Durable::default(), &keys);
        let again = users.restore(recovered.users).expect("restores");
        assert_eq!((again.users, again.legacy_cards.len()), (2, 0));
        storage.close();
    }
}

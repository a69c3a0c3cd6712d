//! What every handler shares.
//!
//! [`AppState`] is one `Arc`: axum clones the state for every layer and extractor of every request, and a clone
//! of one pointer costs one atomic increment where a struct of a dozen `Arc`s cost a dozen (measured in
//! docs/performance.md).

use crate::config::HttpLimits;
use crate::durability::Durable;
use crate::keys::MasterKeys;
use crate::per_address::{HeldByAddress, SignupThrottle};
use crate::throttle::LoginThrottle;
use crate::users::UserStore;
use engine::clock::SystemClock;
use engine::desk::Desk;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};

#[derive(Clone)]
pub struct AppState(Arc<NodeState>);

impl std::ops::Deref for AppState {
    type Target = NodeState;

    fn deref(&self) -> &NodeState {
        &self.0
    }
}

#[derive(Clone)]
pub struct NodeState {
    pub desk: Arc<Desk>,
    pub users: Arc<UserStore>,
    pub metrics: PrometheusHandle,
    /// False until recovery has finished and orders are accepted, and again once the node drains.
    pub ready: Arc<AtomicBool>,
    /// Set once recovery has finished; until then only the operational routes answer.
    pub recovered: Arc<AtomicBool>,
    pub durable: Durable,
    pub master_keys: Arc<MasterKeys>,
    /// Requests being served at once at most; see `crate::guard`.
    pub requests_in_flight: Arc<Semaphore>,
    /// How long one request may take; see `crate::guard`.
    pub request_timeout: Duration,
    pub login_throttle: Arc<LoginThrottle>,
    /// Registrations per client address.
    pub signups: Arc<SignupThrottle>,
    /// Tickets in live holds per client address.
    pub held_by_address: Arc<HeldByAddress>,
    /// Turns true when the node starts draining: long-lived responses (event streams) end then.
    pub shutdown: Arc<watch::Sender<bool>>,
    /// The cluster this node belongs to, if any.
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    /// Payment webhooks, when `BOXOFFICE_WEBHOOK_SECRET` is set.
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    admin_token_hash: [u8; 32],
}

impl AppState {
    pub fn new(
        desk: Arc<Desk>,
        users: Arc<UserStore>,
        metrics: PrometheusHandle,
        durable: Durable,
        master_keys: Arc<MasterKeys>,
        admin_token: &str,
        limits: HttpLimits,
    ) -> Self {
        Self(Arc::new(NodeState {
            desk,
            users,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            recovered: Arc::new(AtomicBool::new(false)),
            durable,
            master_keys,
            requests_in_flight: Arc::new(Semaphore::new(limits.requests_in_flight_max)),
            request_timeout: limits.request_timeout,
            login_throttle: Arc::new(LoginThrottle::new(limits.login, Arc::new(SystemClock))),
            signups: Arc::new(SignupThrottle::new(
                limits.signups_per_address_max,
                limits.signup_window_ms,
                Arc::new(SystemClock),
            )),
            held_by_address: Arc::new(HeldByAddress::new(
                limits.held_tickets_per_address_max,
                Arc::new(SystemClock),
            )),
            shutdown: Arc::new(watch::channel(false).0),
            cluster: None,
            webhooks: None,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
        }))
    }

    /// Compares in constant time, on hashes so that the length does not leak either.
    pub fn is_admin_token(&self, token: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        hash.ct_eq(&self.admin_token_hash).into()
    }

    /// The state of a node of `cluster`.
    pub fn in_cluster(self, cluster: Option<Arc<crate::cluster::ClusterState>>) -> Self {
        let state = Arc::unwrap_or_clone(self.0);
        Self(Arc::new(NodeState { cluster, ..state }))
    }

    /// The state of a node that takes payment webhooks.
    pub fn with_webhooks(self, webhooks: Option<Arc<crate::webhook::Webhooks>>) -> Self {
        let state = Arc::unwrap_or_clone(self.0);
        Self(Arc::new(NodeState { webhooks, ..state }))
    }

    /// The limits every public request runs under.
    pub fn guards(&self) -> crate::Guards {
        crate::Guards {
            requests_in_flight: self.requests_in_flight.clone(),
            request_timeout: self.request_timeout,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::Acquire)
    }
}

//! Domain outcomes that are not a plain success. The `api` crate maps each to an HTTP status in one place.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    ConcertNotFound,
    HoldNotFound,
    OrderNotFound,
    /// The concert has fewer tickets left (neither held nor sold) than were asked for.
    SoldOut,
    /// A named seat is held or sold by someone else: `seat` is its label, for the node's own use (the message does
    /// not say which: messages never quote what a request sent).
    SeatTaken {
        seat: String,
    },
    /// A named seat does not exist in the concert.
    UnknownSeat,
    HoldExpired,
    /// The hold is already being purchased or was purchased.
    HoldNotActive,
    UnknownTicket,
    AlreadyCheckedIn {
        checked_in_at_ms: u64,
    },
    /// A bounded queue is full; the client should retry after a pause.
    Overloaded,
    PaymentDeclined {
        reason: String,
    },
    /// The payment provider did not answer within the deadline; the charge was voided.
    PaymentUnavailable,
    /// The payment provider has been failing: the circuit breaker refuses new orders, before anything is reserved,
    /// for about `retry_after_s` seconds more.
    PaymentCircuitOpen {
        retry_after_s: u64,
    },
    /// The request is well formed but cannot be served as asked (422).
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The same idempotency key was used before with a different request body.
    IdempotencyKeyReused,
    /// The ordering user has no card on file.
    CardRequired,
    /// The payment provider would not keep the card on file (expired, wrong cvc, ...).
    CardRefused {
        reason: String,
    },
    /// A shard stopped answering; the node is shutting down or broken.
    Unavailable,
    /// The node is still rebuilding what the request needs after its start; the client should retry shortly.
    Recovering,
    /// Another node of the cluster, which owns what the request needs, did not answer in time. What it holds may
    /// be there; the client should retry after a pause.
    NodeUnavailable {
        node: u32,
    },
    /// The user would hold, be paying for and own more than `limit` tickets of one concert.
    TicketLimitReached {
        limit: u32,
    },
    /// The user has `limit` live holds already.
    HoldLimitReached {
        limit: u32,
    },
}

impl EngineError {
    /// Whether an order that ended with this left nothing behind (nothing charged, nothing kept reserved), and
    /// says to retry: then its idempotency key is forgotten, so that the retry it asks for places the order anew
    /// instead of reading this answer again (`503 ... Retry-After` forever). A charge that timed out is voided
    /// before `PaymentUnavailable` is answered; `NodeUnavailable` ends an order before its charge (after one, the
    /// order keeps confirming until the node is back).
    pub fn frees_idempotency_key(&self) -> bool {
        matches!(
            self,
            Self::Overloaded
                | Self::PaymentUnavailable
                | Self::PaymentCircuitOpen { .. }
                | Self::NodeUnavailable { .. }
        )
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConcertNotFound => write!(f, "concert not found"),
            Self::HoldNotFound => write!(f, "hold not found"),
            Self::OrderNotFound => write!(f, "order not found"),
            Self::SoldOut => write!(f, "not enough tickets left"),
            Self::SeatTaken { .. } => write!(f, "a requested seat is already taken"),
            Self::UnknownSeat => write!(f, "a requested seat does not exist in this concert"),
            Self::HoldExpired => write!(f, "the hold has expired"),
            Self::HoldNotActive => write!(f, "the hold is already being purchased"),
            Self::UnknownTicket => write!(f, "unknown ticket"),
            Self::AlreadyCheckedIn { .. } => write!(f, "ticket already checked in"),
            Self::Overloaded => write!(f, "too many requests in flight, retry shortly"),
            Self::PaymentDeclined { reason } => write!(f, "payment declined: {reason}"),
            Self::PaymentUnavailable => write!(f, "the payment provider did not answer in time"),
            Self::PaymentCircuitOpen { retry_after_s } => write!(
                f,
                "the payment provider is failing; no orders are taken for {retry_after_s} s"
            ),
            Self::Invalid { field, message } => write!(f, "{field}: {message}"),
            Self::IdempotencyKeyReused => {
                write!(
                    f,
                    "idempotency key was already used with a different request"
                )
            }
            Self::CardRequired => write!(f, "a card on file is required to pay"),
            Self::CardRefused { reason } => {
                write!(f, "the payment provider refused the card: {reason}")
            }
            Self::Unavailable => write!(f, "the sale is temporarily unavailable"),
            Self::Recovering => write!(f, "the node is recovering its state, retry shortly"),
            Self::NodeUnavailable { node } => write!(
                f,
                "node {node} of the cluster, which holds what this request needs, does not answer; retry shortly"
            ),
            Self::TicketLimitReached { limit } => write!(
                f,
                "at most {limit} tickets of one concert per user, counting held, being paid for and sold"
            ),
            Self::HoldLimitReached { limit } => write!(
                f,
                "at most {limit} live holds per user; purchase or cancel one first"
            ),
        }
    }
}

impl std::error::Error for EngineError {}

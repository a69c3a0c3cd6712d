//! HTTP handlers, one module per resource. Each handler validates, calls the desk or the user store, and maps
//! the outcome to a response; none holds inventory or owns an order's lifetime.

pub mod concerts;
pub mod events;
pub mod holds;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod tickets;
pub mod users;
pub mod web;

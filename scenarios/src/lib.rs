//! `boxoffice-load`: load scenarios against a boxoffice node, over HTTP only, as any client would.
//!
//! - [`cli`]: the flags; [`scenario`]: runs `burst`, `sweep-payment`, `peak`, `plan` and `throughput` end to end
//!   (servers, reports).
//! - [`throughput`]: closed loops of kept-alive connections sending orders back to back, against boxoffice with
//!   and without durability and against [`bare`], a bare axum endpoint in a process of its own.
//! - [`burst`]: the study's experiment: set up buyers and a concert off the clock, then every buyer orders one
//!   ticket at the same moment; the counts are checked through the API afterwards.
//! - [`client`]: the HTTP client (kept-alive connections from one or more loopback source addresses, to one or more
//!   targets); [`server`]: `--spawn`, a server (or with `--spawn-cluster` a cluster) of our own per burst;
//!   [`processes`]: `--client-processes`, a burst's lanes in child processes started on one instant;
//!   [`forwarding`]: the cost of a cluster's forwarding hop; [`limits`]: the open-files limit; [`netstat`]: the
//!   kernel's TCP counters around a burst.
//! - Pure, unit-tested: [`stats`] (percentiles, histogram bins, bands over time), [`peak`] (the search), [`model`] (the
//!   planner's model of a burst),
//!   [`report`] (the figures of a burst, `report.json`), [`svg`] (charts), [`html`] (`report.html`), [`study`]
//!   (the figures we compare with).

pub mod bare;
pub mod burst;
pub mod cli;
pub mod client;
pub mod flash;
pub mod flash_page;
pub mod forwarding;
pub mod html;
pub mod limits;
pub mod model;
pub mod netstat;
pub mod peak;
pub mod processes;
pub mod report;
pub mod scenario;
pub mod seat_feed;
pub mod server;
pub mod sse;
pub mod stats;
pub mod study;
pub mod svg;
pub mod throughput;

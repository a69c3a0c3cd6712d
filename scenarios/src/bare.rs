//! The bare endpoint `throughput` compares boxoffice with: an axum server in a process of its own
//! (`boxoffice-load serve-bare`, hidden), on a tokio runtime of the same shape as boxoffice's (multi-thread, one
//! worker per core: `main.rs`'s `#[tokio::main]`, as `boxoffice`'s `Builder::new_multi_thread`), a listen backlog
//! as large and `TCP_NODELAY` on accepted connections. `POST /orders` reads the body a real order takes into a
//! struct through axum's `Json`, and answers `201` with an order-shaped body of the size of a real one (367 bytes);
//! nothing is stored, checked or paid.
//! `GET /health` answers 200, so that [`crate::server::Spawned`] starts and stops it exactly as it does
//! `boxoffice serve`: the first line on stdout is [`LISTENING_PREFIX`] and the address, and SIGTERM (or SIGINT)
//! stops it, exit 0.

use crate::cli::BareArgs;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the first line on stdout starts with: the same as `boxoffice serve`'s, which `Spawned` reads.
pub const LISTENING_PREFIX: &str = "boxoffice listening on ";
/// The listen backlog, as `boxoffice serve` asks for (`api::server::LISTEN_BACKLOG`; capped by
/// `net.core.somaxconn`), so that both accept a crowd of connections alike.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// The body of `POST /orders`, as boxoffice's `ClaimBody` reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    concert_id: String,
    quantity: Option<u32>,
    seats: Option<Vec<String>>,
}

/// An answer shaped like boxoffice's `OrderResponse` with one ticket: made-up ids and token of the same lengths
/// (a prefix and 20 hex digits; 32 hex digits).
#[derive(Serialize)]
struct OrderAnswer {
    id: String,
    concert_id: String,
    user_id: String,
    status: &'static str,
    amount_cents: u64,
    tickets: [TicketAnswer; 1],
    created_at: &'static str,
}

#[derive(Serialize)]
struct TicketAnswer {
    id: String,
    token: String,
    order_id: String,
    concert_id: String,
    checked_in_at: Option<String>,
}

/// The bare app: one order route and the health check.
pub fn app() -> Router {
    Router::new().route("/orders", post(order)).route(
        "/health",
        get(|| async { Json(serde_json::json!({"status": "ok"})) }),
    )
}

async fn order(Json(body): Json<ClaimBody>) -> (StatusCode, Json<OrderAnswer>) {
    static ORDERS: AtomicU64 = AtomicU64::new(0);
    let number = ORDERS.fetch_add(1, Ordering::Relaxed);
    let quantity = body.quantity.unwrap_or(0) + body.seats.map_or(0, |seats| seats.len() as u32);
    let order_id = format!("o_{number:020x}");
    let answer = OrderAnswer {
        id: order_id.clone(),
        concert_id: body.concert_id.clone(),
        user_id: format!("u_{:020x}", number % 10_000),
        status: "confirmed",
        amount_cents: 5_000 * u64::from(quantity),
        tickets: [TicketAnswer {
            id: format!("t_{number:020x}"),
            token: format!("{number:032x}"),
            order_id,
            concert_id: body.concert_id,
            checked_in_at: None,
        }],
        created_at: "2030-06-01T20:00:00.000Z",
    };
    (StatusCode::CREATED, Json(answer))
}

/// Serves [`app`] on `args.listen` until SIGTERM or SIGINT.
pub async fn serve(args: &BareArgs) -> Result<(), String> {
    let listener = listen(args.listen)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    println!("{LISTENING_PREFIX}http://{address}");
    // As boxoffice's accepted connections: no Nagle delay on small writes.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app())
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|error| format!("server failed: {error}"))
}

/// The listener `boxoffice serve` opens (`api::server::listen`), repeated here because this crate reaches a node
/// over HTTP only and links no boxoffice crate.
fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// SIGTERM or SIGINT; never, if neither can be listened for (the process is then killed).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait(SignalKind::terminate()) => {}
        () = wait(SignalKind::interrupt()) => {}
    }
}

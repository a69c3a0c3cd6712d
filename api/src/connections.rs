//! Accepted connections, bounded, and the client address each request came from.
//!
//! [`ConnectionLimit`] wraps the TCP listener that `axum::serve` accepts from. It holds one permit per open
//! connection, at most `--connections-max`; when all are taken it stops accepting until a connection closes, so
//! new clients wait in the kernel's listen backlog (and beyond it their connection attempts are refused or time
//! out) instead of costing the node memory and file descriptors. Keep the limit below the process's file
//! descriptor limit (`ulimit -n`), which the journal and sled also draw on.
//!
//! [`ClientAddress`] is the connect info the router is served with, so that a handler can learn who is calling
//! (the login throttle counts failures per address); [`ClientIp`] extracts it, and is `None` when the app runs
//! without a socket (in tests).

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of `--connections-max`: well below the usual file descriptor limits of a server.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 10_000;

/// Bytes the kernel keeps queued but not yet sent per connection (`TCP_NOTSENT_LOWAT`); past it the socket
/// reports full. Without it a client that stops reading can park megabytes in its send buffer (autotuned up to
/// `net.ipv4.tcp_wmem`), and an event stream to it would only notice much later that it fell behind.
pub const UNSENT_BYTES_MAX: u32 = 128 * 1024;

/// A listener that keeps at most `connections_max` accepted connections open.
pub struct ConnectionLimit {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    open: metrics::Gauge,
}

impl ConnectionLimit {
    pub fn new(listener: TcpListener, connections_max: u32) -> Self {
        assert!(connections_max > 0, "at least one connection is served");
        Self {
            listener,
            permits: Arc::new(Semaphore::new(connections_max as usize)),
            open: metrics::gauge!("boxoffice_connections_open"),
        }
    }
}

impl Listener for ConnectionLimit {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("boxoffice_connections_limited_total").increment(1);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        let (stream, address) = Listener::accept(&mut self.listener).await;
        // Each event of a stream is a small write of its own: without it Nagle's algorithm holds every event back
        // until the previous one is acknowledged (up to the client's delayed-ack timer).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot turn Nagle's algorithm off");
        }
        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_BYTES_MAX)
        {
            tracing::warn!(%error, "cannot bound the connection's unsent bytes");
        }
        self.open.increment(1.0);
        let stream = LimitedStream {
            stream,
            _permit: permit,
            open: self.open.clone(),
        };
        (stream, address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; closing it gives its permit back.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The remote address of a connection, as the router's connect info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

impl Connected<IncomingStream<'_, ConnectionLimit>> for ClientAddress {
    fn connect_info(stream: IncomingStream<'_, ConnectionLimit>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The caller's IP address, when the app is served over a socket.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A request another process of the cluster forwarded carries the client's address as that process saw
        // it (the internal port trusts it: only a holder of the cluster secret can send it).
        if let Some(forwarded) = parts.extensions.get::<cluster::server::Forwarded>() {
            return Ok(Self(forwarded.client));
        }
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<ClientAddress>>()
                .map(|ConnectInfo(ClientAddress(address))| address.ip()),
        ))
    }
}

/// How long a client may take to send a request line and its headers, counted from when the server starts
/// reading them: on a new connection, or after the previous response on a kept-alive one (so it is also how long
/// an idle kept-alive connection stays open). Past it hyper closes the connection. Without it, a client that
/// trickles its headers, or connects and says nothing, keeps one of the `--connections-max` slots for as long as it
/// likes, and enough of them lock every other client out.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `axum::serve` does, with a header read timeout, which `axum::serve` cannot set (it builds hyper's
/// connection without a timer): accept from `listener` until `shutdown` completes, serve each connection over
/// HTTP/1.1 with the client's address as connect info, then stop accepting and wait for the open connections to
/// finish their in-flight requests.
pub async fn serve(
    mut listener: ConnectionLimit,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    use axum::extract::Request;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::{Layer, ServiceExt};

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, address) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let service = axum::Extension(ConnectInfo(ClientAddress(address)))
            .layer(app.clone())
            .map_request(|request: Request<hyper::body::Incoming>| {
                request.map(axum::body::Body::new)
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

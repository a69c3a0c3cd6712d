//! Accepted connections, bounded in number, per client address and in how long they may stall, and the client
//! address each request came from.
//!
//! [`ConnectionLimit`] wraps the TCP listener the public port accepts from. It holds one permit per open
//! connection, at most `--connections-max`; when all are taken it stops accepting until a connection closes, so
//! new clients wait in the kernel's listen backlog (and beyond it their connection attempts are refused or time
//! out) instead of costing the node memory and file descriptors. Keep the limit below the process's file
//! descriptor limit (`ulimit -n`), which the journal and sled also draw on. One client address (an IPv4 address
//! or an IPv6 /64) holds at most `--connections-per-address-max` of them; a connection beyond that is answered
//! `429 too_many_connections` and closed at once, so that one client cannot take every slot.
//!
//! Every accepted connection is a [`LimitedStream`]: a connection whose client has not taken its response bytes
//! for `--send-timeout-s` (a client that stops reading: its socket stays full) is closed, and so is one whose
//! [`ConnectionAbort`] was pulled (an event subscriber that fell too far behind, whether or not its socket is
//! writable). hyper keeps at most [`HEADER_SECTION_BYTES_MAX`] of a request's header section and
//! [`CONNECTION_BUFFER_BYTES_MAX`] of unsent responses per connection.
//!
//! [`ClientAddress`] is the connect info the router is served with, so that a handler can learn who is calling
//! (the throttles count per address); [`ClientIp`] extracts it, and is `None` when the app runs without a socket
//! (in tests). Behind a reverse proxy named with `--trusted-proxy`, it is the address the proxy put in
//! `X-Forwarded-For`.

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of `--connections-max`: well below the usual file descriptor limits of a server.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 10_000;
/// Default of `--send-timeout-s`: how long a client may leave response bytes untaken before its connection is
/// closed.
pub const SEND_TIMEOUT_S_DEFAULT: u64 = 30;
/// A request's header section (request line and headers) is at most this long; beyond it, `431`.
pub const HEADER_SECTION_BYTES_MAX: usize = 32 * 1024;
/// hyper's read and write buffers per connection at most: what a client that pipelines requests and never reads
/// the answers can make the node hold, besides the kernel's socket buffers.
pub const CONNECTION_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Headers in one request at most; beyond that, `431`.
pub const HEADERS_MAX: usize = 100;

/// How the public port treats its connections (from the flags).
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub connections_max: u32,
    /// Connections one client address holds at most.
    pub per_address_max: u32,
    pub send_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

impl ConnectionSettings {
    /// `per_address_max` when given, otherwise a tenth of `connections_max` (at least 1).
    pub fn new(
        connections_max: u32,
        per_address_max: Option<u32>,
        send_timeout: Duration,
        trusted_proxies: TrustedProxies,
    ) -> Self {
        Self {
            connections_max,
            per_address_max: per_address_max.unwrap_or((connections_max / 10).max(1)),
            send_timeout,
            trusted_proxies,
        }
    }
}

/// Bytes the kernel keeps queued but not yet sent per connection (`TCP_NOTSENT_LOWAT`); past it the socket
/// reports full. Without it a client that stops reading can park megabytes in its send buffer (autotuned up to
/// `net.ipv4.tcp_wmem`), and an event stream to it would only notice much later that it fell behind.
pub const UNSENT_BYTES_MAX: u32 = 128 * 1024;

/// A listener that keeps at most `connections_max` accepted connections open, and `per_address_max` per client
/// address.
pub struct ConnectionLimit {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    send_timeout: Duration,
    open: metrics::Gauge,
    /// The runtime whose reactor accepted connections are registered with, when it is not the one accepting.
    serving: Option<tokio::runtime::Handle>,
}

/// A [`ConnectionLimit`] between runtimes: its listening socket belongs to no reactor.
struct DetachedLimit {
    listener: std::net::TcpListener,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    send_timeout: Duration,
    open: metrics::Gauge,
}

/// Open connections per client address.
struct PerAddress {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl PerAddress {
    /// Counts one more connection of `address`, unless it has its share already.
    fn try_add(&self, address: IpAddr) -> bool {
        let mut open = self.open.lock().expect("per-address lock");
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self, address: IpAddr) {
        let mut open = self.open.lock().expect("per-address lock");
        if let Some(count) = open.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&address);
            }
        }
    }
}

/// What a connection beyond its address's share is told before it is closed.
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":{"code":"too_many_connections","message":"too many open connections from this address"}}"#;
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl ConnectionLimit {
    pub fn new(listener: TcpListener, settings: &ConnectionSettings) -> Self {
        assert!(
            settings.connections_max > 0 && settings.per_address_max > 0,
            "at least one connection is served"
        );
        Self {
            listener,
            permits: Arc::new(Semaphore::new(settings.connections_max as usize)),
            per_address: Arc::new(PerAddress {
                max: settings.per_address_max,
                open: Mutex::new(HashMap::new()),
            }),
            send_timeout: settings.send_timeout,
            open: metrics::gauge!("boxoffice_connections_open"),
            serving: None,
        }
    }

    /// Takes the listening socket off this runtime's reactor, to accept on another.
    fn detach(self) -> io::Result<DetachedLimit> {
        Ok(DetachedLimit {
            listener: self.listener.into_std()?,
            permits: self.permits,
            per_address: self.per_address,
            send_timeout: self.send_timeout,
            open: self.open,
        })
    }
}

impl DetachedLimit {
    /// Accepts on the current runtime, and hands each connection to `serving`'s reactor.
    fn attach(self, serving: tokio::runtime::Handle) -> io::Result<ConnectionLimit> {
        Ok(ConnectionLimit {
            listener: TcpListener::from_std(self.listener)?,
            permits: self.permits,
            per_address: self.per_address,
            send_timeout: self.send_timeout,
            open: self.open,
            serving: Some(serving),
        })
    }
}

impl Listener for ConnectionLimit {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
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
            let key = crate::throttle::address_key(address.ip());
            if !self.per_address.try_add(key) {
                metrics::counter!("boxoffice_connections_refused_per_address_total").increment(1);
                // Best effort and never waiting: the socket's buffer is empty, so the answer fits. Written on the
                // socket itself: a stream just registered with a reactor does not know yet that it is writable.
                if let Ok(stream) = stream.into_std() {
                    let _ = std::io::Write::write(&mut &stream, &too_many_connections());
                }
                continue;
            }
            let stream = match &self.serving {
                None => stream,
                Some(serving) => {
                    let _serving = serving.enter();
                    match stream.into_std().and_then(TcpStream::from_std) {
                        Ok(stream) => stream,
                        Err(error) => {
                            self.per_address.remove(key);
                            tracing::warn!(%error, "cannot hand an accepted connection to the runtime");
                            continue;
                        }
                    }
                }
            };
            // Each event of a stream is a small write of its own: without it Nagle's algorithm holds every event
            // back until the previous one is acknowledged (up to the client's delayed-ack timer).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot turn Nagle's algorithm off");
            }
            if let Err(error) =
                socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_BYTES_MAX)
            {
                tracing::warn!(%error, "cannot bound the connection's unsent bytes");
            }
            self.open.increment(1.0);
            let stream = LimitedStream {
                stream,
                _permit: permit,
                open: self.open.clone(),
                address: key,
                per_address: self.per_address.clone(),
                send_timeout: self.send_timeout,
                stalled: None,
                abort: ConnectionAbort::default(),
            };
            return (stream, address);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Closes a connection from elsewhere: a handler finds it among the request's extensions (when the request
/// came over a socket of the public port) and pulls it; the connection's next read or write fails, and its task
/// is woken for that even while its socket is full.
#[derive(Clone, Default)]
pub struct ConnectionAbort(Arc<AbortState>);

#[derive(Default)]
struct AbortState {
    aborted: AtomicBool,
    waker: AtomicWaker,
}

impl ConnectionAbort {
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.0.waker.register(cx.waker());
        if self.0.aborted.load(Ordering::Acquire) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        Ok(())
    }
}

/// An accepted connection; closing it gives its permits back.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
    address: IpAddr,
    per_address: Arc<PerAddress>,
    send_timeout: Duration,
    /// Armed while a write waits for the client to take bytes: when it fires, the connection is closed.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    abort: ConnectionAbort,
}

impl LimitedStream {
    /// The handle that closes this connection.
    pub fn abort_handle(&self) -> ConnectionAbort {
        self.abort.clone()
    }

    /// A write is pending: closes the connection once it has been for the send timeout.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let send_timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("boxoffice_connections_send_timed_out_total").increment(1);
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes a write's outcome on, timing a pending one.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        self.per_address.remove(self.address);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.abort.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.abort.check(cx)?;
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.abort.check(cx)?;
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.abort.check(cx)?;
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.written(cx, poll)
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

/// The caller's IP address, when the app is served over a socket: the connection's peer, or, when the peer is a
/// trusted proxy, the nearest address in `X-Forwarded-For` that is not one.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions, &parts.headers))
    }
}

impl ClientIp {
    /// The caller's address of a request with `extensions` and `headers`.
    pub fn of(extensions: &axum::http::Extensions, headers: &axum::http::HeaderMap) -> Self {
        // A request another process of the cluster forwarded carries the client's address as that process saw
        // it (the internal port trusts it: only a holder of the cluster secret can send it).
        if let Some(forwarded) = extensions.get::<cluster::server::Forwarded>() {
            return Self(forwarded.client);
        }
        let Some(peer) = extensions
            .get::<ConnectInfo<ClientAddress>>()
            .map(|ConnectInfo(ClientAddress(address))| address.ip())
        else {
            return Self(None);
        };
        let trusted = extensions.get::<TrustedProxies>();
        Self(Some(match trusted {
            Some(trusted) if trusted.contains(peer) => trusted.client_behind(peer, headers),
            _ => peer,
        }))
    }
}

/// `--trusted-proxy`: reverse proxies (addresses or CIDR networks) whose `X-Forwarded-For` names the client.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<Vec<(IpAddr, u8)>>);

/// `X-Forwarded-For` addresses looked at, at most, from the right.
const FORWARDED_FOR_HOPS_MAX: usize = 16;

impl TrustedProxies {
    /// Parses `ADDR` or `ADDR/PREFIX` items; an IPv4 prefix is 0 to 32, an IPv6 one 0 to 128.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut networks = Vec::with_capacity(items.len());
        for item in items.iter().flat_map(|item| item.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (address, prefix) = match item.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (item, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("--trusted-proxy: {item} is not an address or a network"))?;
            let bits = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(prefix) => prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|prefix| *prefix <= bits)
                    .ok_or_else(|| format!("--trusted-proxy: {item} has a bad prefix length"))?,
                None => bits,
            };
            networks.push((address, prefix));
        }
        Ok(Self(Arc::new(networks)))
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0
            .iter()
            .any(|(network, prefix)| match (network, address) {
                (IpAddr::V4(network), IpAddr::V4(address)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                    u32::from(*network) & mask == u32::from(address) & mask
                }
                (IpAddr::V6(network), IpAddr::V6(address)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                    u128::from(*network) & mask == u128::from(address) & mask
                }
                _ => false,
            })
    }

    /// The client behind the trusted proxy `peer`: the rightmost address of `X-Forwarded-For` that is not a
    /// trusted proxy (a client can put anything on the left of it). `peer` if there is none or one is not an
    /// address.
    fn client_behind(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.iter().rev().take(FORWARDED_FOR_HOPS_MAX) {
            match hop.trim().parse::<IpAddr>() {
                Ok(address) if self.contains(address) => continue,
                Ok(address) => return address.to_canonical(),
                Err(_) => return peer,
            }
        }
        peer
    }
}

/// How long a client may take to send a request line and its headers, counted from when the server starts
/// reading them: on a new connection, or after the previous response on a kept-alive one (so it is also how long
/// an idle kept-alive connection stays open). Past it hyper closes the connection. Without it, a client that
/// trickles its headers, or connects and says nothing, keeps one of the `--connections-max` slots for as long as it
/// likes, and enough of them lock every other client out.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `axum::serve` does, with a header read timeout, which `axum::serve` cannot set (it builds hyper's
/// connection without a timer), and with its accept loop on a thread of its own: accept from `listener` until
/// `shutdown` completes, serve each connection over HTTP/1.1 on the calling runtime with the client's address as
/// connect info, then stop accepting (the listening socket is closed) and wait for the open connections to
/// finish their in-flight requests.
///
/// Why a thread: a burst of buyers arrives as thousands of connections at once, and the kernel queues at most
/// `net.core.somaxconn` of them (4096 on Debian 12) for `accept`; beyond that it drops the handshake and the
/// client tries again after a second. An accept loop that is one task among the runtime's queues behind every
/// connection it has just accepted (each with an order to run), so in a burst it accepted too slowly and the
/// queue overflowed. The acceptor thread only accepts, sets each socket up and hands it to the runtime.
pub async fn serve(
    listener: ConnectionLimit,
    app: axum::Router,
    trusted_proxies: TrustedProxies,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Dropped when the acceptor thread ends, however it ends.
    let (ended, mut acceptor_ended) = tokio::sync::oneshot::channel::<()>();
    let listener = listener.detach()?;
    let acceptor = {
        let graceful = graceful.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || {
                let _ended = ended;
                accept_until(listener, stopped, runtime, graceful, app, trusted_proxies)
            })?
    };
    tokio::select! {
        () = shutdown => {}
        _ = &mut acceptor_ended => tracing::error!("the acceptor thread stopped on its own"),
    }
    let _ = stop.send(());
    let accepted = tokio::task::spawn_blocking(move || acceptor.join())
        .await
        .map_err(io::Error::other)?
        .map_err(|_| io::Error::other("the acceptor thread panicked"))?;
    // Joined: the acceptor's handle on `graceful` is gone, and no connection is accepted any more.
    let graceful =
        Arc::into_inner(graceful).expect("only this function holds the shutdown once joined");
    graceful.shutdown().await;
    accepted
}

/// The acceptor thread's loop: a runtime of its own that only waits on the listening socket (and on the
/// connection limit); each connection is moved to `runtime`, where it is served.
fn accept_until(
    listener: DetachedLimit,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    runtime: tokio::runtime::Handle,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    app: axum::Router,
    trusted_proxies: TrustedProxies,
) -> io::Result<()> {
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    own.block_on(async move {
        let mut listener = listener.attach(runtime.clone())?;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_header_size(HEADER_SECTION_BYTES_MAX)
            .max_headers(HEADERS_MAX)
            .max_buf_size(CONNECTION_BUFFER_BYTES_MAX);
        loop {
            let (stream, address) = tokio::select! {
                accepted = Listener::accept(&mut listener) => accepted,
                _ = &mut stopped => break,
            };
            runtime.spawn(serve_connection(
                stream,
                address,
                app.clone(),
                trusted_proxies.clone(),
                http.clone(),
                graceful.watcher(),
            ));
        }
        // Dropping the listener closes the listening socket: new clients are refused from here on.
        drop(listener);
        Ok(())
    })
}

/// Serves one accepted connection until it closes, or until a graceful shutdown lets its in-flight request end.
async fn serve_connection(
    stream: LimitedStream,
    address: SocketAddr,
    app: axum::Router,
    trusted_proxies: TrustedProxies,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
) {
    use axum::extract::Request;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let abort = stream.abort_handle();
    let service = app.map_request(move |request: Request<hyper::body::Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(ClientAddress(address)));
        extensions.insert(abort.clone());
        extensions.insert(trusted_proxies.clone());
        request
    });
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn forwarded_for(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("a header value"));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    /// Sends one request on a new connection and reads the answer to the end (the server closes it).
    async fn get(address: SocketAddr, path: &str) -> io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(address).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_acceptor_serves_many_connections_at_once_then_stops_and_drains() {
        let listener =
            crate::server::listen("127.0.0.1:0".parse().expect("an address")).expect("listen");
        let address = listener.local_addr().expect("bound");
        let settings = ConnectionSettings::new(
            4_000,
            Some(4_000),
            Duration::from_secs(5),
            TrustedProxies::default(),
        );
        let started = Arc::new(tokio::sync::Notify::new());
        let slow_started = started.clone();
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    slow_started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            ConnectionLimit::new(listener, &settings),
            app,
            TrustedProxies::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        // A thousand clients at once are all answered, on connections the acceptor moved to this runtime.
        let answers = futures_util::future::join_all((0..1_000).map(|_| get(address, "/"))).await;
        for answer in answers {
            let answer = answer.expect("answered");
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(answer.ends_with("ok"), "{answer}");
        }
        // A request in flight when the server is told to stop is still answered; then the port is closed.
        let slow = tokio::spawn(get(address, "/slow"));
        started.notified().await;
        stop.send(()).expect("the server waits for it");
        let answer = slow
            .await
            .expect("joined")
            .expect("answered while draining");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("slow"),
            "{answer}"
        );
        server
            .await
            .expect("joined")
            .expect("served without an error");
        let refused = TcpStream::connect(address).await;
        assert!(
            refused.is_err(),
            "the listening socket is closed once serve returns"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_and_networks() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8, 192.168.1.7".into(), "fd00::/8".into()])
            .expect("valid");
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("192.168.1.7")));
        assert!(!trusted.contains(ip("192.168.1.8")));
        assert!(trusted.contains(ip("fd12::1")));
        assert!(
            trusted.contains(ip("::ffff:10.9.9.9")),
            "an IPv4-mapped address is IPv4"
        );
        assert!(!trusted.contains(ip("203.0.113.5")));
        for bad in ["10.0.0.0/33", "fd00::/129", "not-an-address", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).expect("valid");
        let proxy = ip("10.0.0.5");
        // What a client wrote on the left is not believed past the first untrusted hop.
        let headers = forwarded_for(&["1.2.3.4, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client_behind(proxy, &headers), ip("203.0.113.9"));
        assert_eq!(
            trusted.client_behind(proxy, &HeaderMap::new()),
            proxy,
            "no header"
        );
        assert_eq!(
            trusted.client_behind(proxy, &forwarded_for(&["garbage"])),
            proxy,
            "a hop that is not an address"
        );
        assert_eq!(
            trusted.client_behind(proxy, &forwarded_for(&["10.0.0.3"])),
            proxy,
            "only trusted hops"
        );
    }
}

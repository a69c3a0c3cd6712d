//! What every request of a port passes before its router, as one service around the whole router.
//!
//! [`Edge`] sheds load beyond `--requests-in-flight-max` (`503 overloaded`), bounds each request by
//! `--request-timeout-s` (`503 processing_timeout`), answers `503 recovering` until recovery has finished (but on
//! the operational paths), marks answers `Cache-Control: no-store` and counts them by route template and status.
//! A port takes what applies to it: the public port all of it, the internal port's forwarded requests only the
//! timeout and the recovery check (they were shed and counted where they arrived).
//!
//! Why one service outside the router rather than a layer per concern on its routes: axum wraps each route of a
//! `Router::layer` in a boxed, cloneable service, clones the whole nest of them for every request and boxes each
//! level's future, and a `from_fn` middleware clones its inner service again and boxes its own future. Around the
//! router, as here, a request costs one clone of this service (two `Arc`s) and no box of its own. The route
//! template for the metrics is found by [`RouteLabels`] from the same list of templates the router was built
//! from, and each template's and status's metric handles are registered once instead of looked up per request.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

/// The statuses whose metric handles are registered once per route; any other is counted through a lookup.
const STATUSES_CACHED: [u16; 23] = [
    200, 201, 202, 204, 304, 400, 401, 402, 403, 404, 405, 408, 409, 410, 413, 415, 422, 429, 500,
    502, 503, 504, 507,
];

/// The `route` label of a request whose path no route template matches.
const UNMATCHED: &str = "unmatched";

/// The route templates of a router, and the metric handles of each template and status.
pub struct RouteLabels {
    matcher: matchit::Router<usize>,
    /// Every template, then [`UNMATCHED`].
    templates: Box<[&'static str]>,
    /// One row per entry of `templates`, one slot per entry of [`STATUSES_CACHED`].
    handles: Box<[[OnceLock<HttpMetrics>; STATUSES_CACHED.len()]]>,
}

struct HttpMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl RouteLabels {
    /// Labels for a router built from `templates` (axum's syntax: `/orders/{id}`). A template twice, or two that
    /// axum would refuse as overlapping, is refused.
    pub fn new(templates: impl IntoIterator<Item = &'static str>) -> Result<Self, String> {
        let mut matcher = matchit::Router::new();
        let mut list = Vec::new();
        for template in templates {
            matcher
                .insert(template, list.len())
                .map_err(|error| format!("route template {template}: {error}"))?;
            list.push(template);
        }
        list.push(UNMATCHED);
        let handles = list
            .iter()
            .map(|_| std::array::from_fn(|_| OnceLock::new()))
            .collect();
        Ok(Self {
            matcher,
            templates: list.into_boxed_slice(),
            handles,
        })
    }

    /// The index of the template `path` matches, or of [`UNMATCHED`].
    fn route(&self, path: &str) -> usize {
        self.matcher
            .at(path)
            .map_or(self.templates.len() - 1, |found| *found.value)
    }

    /// The `route` label of the request at `path`.
    pub fn label(&self, path: &str) -> &'static str {
        self.templates[self.route(path)]
    }

    fn record(&self, route: usize, status: u16, elapsed: Duration) {
        let template = self.templates[route];
        let Some(slot) = STATUSES_CACHED.iter().position(|&cached| cached == status) else {
            crate::telemetry::record_http(template, status, elapsed);
            return;
        };
        let handles = self.handles[route][slot].get_or_init(|| {
            let (requests, duration) = crate::telemetry::http_handles(template, status);
            HttpMetrics { requests, duration }
        });
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    }
}

/// What the public port adds: load shedding, `no-store` and the request metrics.
pub struct Public {
    pub requests_in_flight: Arc<Semaphore>,
    pub labels: RouteLabels,
}

/// Until `state` has recovered, every path but `open_paths` answers `503 recovering`: nothing may read or change
/// state that is still being rebuilt.
pub struct Recovery {
    pub state: AppState,
    pub open_paths: &'static [&'static str],
}

/// Whether a request for `path` waits for `state`'s recovery (`503 recovering`): until it has finished, every path
/// but `open_paths`.
pub(crate) fn holds_back(state: &AppState, open_paths: &[&str], path: &str) -> bool {
    !state.is_recovered() && !open_paths.contains(&path)
}

/// What one port's requests run under; [`Edge::around`] puts it in front of a router.
pub struct Edge {
    pub public: Option<Public>,
    /// Past it the handler is dropped and the client gets `503 processing_timeout`. An order does not live in the
    /// handler (the desk runs it in a task of its own), so it still ends in tickets or a release, and a retry
    /// with its `Idempotency-Key` reads the outcome. It covers reading the body and producing the response's
    /// head, not streaming a body (server-sent events).
    pub request_timeout: Option<Duration>,
    pub recovery: Option<Recovery>,
}

impl Edge {
    /// An app whose every request passes this edge, then `inner` (a router, or a router with layers of its own).
    pub fn around<S>(self, inner: S) -> axum::Router
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        axum::Router::new().fallback_service(EdgeService {
            inner,
            edge: Arc::new(self),
        })
    }

    /// Why a request is refused before the router, if it is, and the permit it holds otherwise.
    fn admit(&self, request: &Request) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let permit = match &self.public {
            Some(public) => match public.requests_in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!("boxoffice_requests_shed_total").increment(1);
                    return Err(ApiError::overloaded());
                }
            },
            None => None,
        };
        if let Some(recovery) = &self.recovery
            && holds_back(&recovery.state, recovery.open_paths, request.uri().path())
        {
            return Err(ApiError::recovering());
        }
        Ok(permit)
    }

    fn finish(&self, mut response: Response, route: usize, started: Instant) -> Response {
        if let Some(public) = &self.public {
            response
                .headers_mut()
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            public
                .labels
                .record(route, response.status().as_u16(), started.elapsed());
        }
        response
    }
}

#[derive(Clone)]
struct EdgeService<S> {
    inner: S,
    edge: Arc<Edge>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let route = match &self.edge.public {
            Some(public) => public.labels.route(request.uri().path()),
            None => 0,
        };
        let (stage, permit) = match self.edge.admit(&request) {
            Ok(permit) => {
                let inner = self.inner.call(request);
                let stage = match self.edge.request_timeout {
                    Some(limit) => Stage::Timed {
                        inner: tokio::time::timeout(limit, inner),
                    },
                    None => Stage::Running { inner },
                };
                (stage, permit)
            }
            Err(error) => (
                Stage::Refused {
                    response: Some(error.into_response()),
                },
                None,
            ),
        };
        EdgeFuture {
            stage,
            edge: self.edge.clone(),
            route,
            started,
            permit,
        }
    }
}

pin_project! {
    /// A request behind the edge: refused at once, or running (under the timeout), then marked and counted.
    pub struct EdgeFuture<F> {
        #[pin]
        stage: Stage<F>,
        edge: Arc<Edge>,
        route: usize,
        started: Instant,
        // Held until the answer is ready: a request in flight counts against the limit.
        permit: Option<OwnedSemaphorePermit>,
    }
}

pin_project! {
    #[project = StageProjection]
    enum Stage<F> {
        Refused { response: Option<Response> },
        Running { #[pin] inner: F },
        Timed { #[pin] inner: tokio::time::Timeout<F> },
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.stage.project() {
            // Taken once: a future is not polled again after it is ready.
            StageProjection::Refused { response } => response.take().unwrap_or_else(|| {
                ApiError::internal("an edge future polled after its answer").into_response()
            }),
            StageProjection::Running { inner } => match ready!(inner.poll(cx)) {
                Ok(response) => response,
            },
            StageProjection::Timed { inner } => match ready!(inner.poll(cx)) {
                Ok(Ok(response)) => response,
                Err(_) => {
                    metrics::counter!("boxoffice_requests_timed_out_total").increment(1);
                    let limit = this.edge.request_timeout.unwrap_or_default();
                    ApiError::processing_timeout(limit.as_secs()).into_response()
                }
            },
        };
        *this.permit = None;
        Poll::Ready(Ok(this.edge.finish(response, *this.route, *this.started)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    /// A public edge admitting `in_flight_max` requests for `timeout` around a router with `/orders/{id}` (answers
    /// at once) and `/wait` (answers when `release` is notified).
    fn public_app(
        in_flight_max: usize,
        timeout: Duration,
        release: Arc<tokio::sync::Notify>,
    ) -> axum::Router {
        let router = axum::Router::new()
            .route("/orders/{id}", get(|| async { "order" }))
            .route(
                "/wait",
                get(move || async move {
                    release.notified().await;
                    "waited"
                }),
            );
        let edge = Edge {
            public: Some(Public {
                requests_in_flight: Arc::new(Semaphore::new(in_flight_max)),
                labels: RouteLabels::new(["/orders/{id}", "/wait"]).expect("templates"),
            }),
            request_timeout: Some(timeout),
            recovery: None,
        };
        edge.around(router)
    }

    async fn get_path(app: &axum::Router, path: &str) -> Response {
        let request = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("a request");
        app.clone().oneshot(request).await.expect("infallible")
    }

    async fn error_code(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error");
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn beyond_the_requests_in_flight_an_answer_is_503_overloaded_until_one_ends() {
        let release = Arc::new(tokio::sync::Notify::new());
        let app = public_app(1, Duration::from_secs(60), release.clone());
        let waiting = tokio::spawn({
            let app = app.clone();
            async move { get_path(&app, "/wait").await }
        });
        // The first request holds the only permit while it waits.
        let mut shed = None;
        for _ in 0..1_000 {
            let response = get_path(&app, "/orders/o_1").await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                shed = Some(response);
                break;
            }
            tokio::task::yield_now().await;
        }
        let shed = shed.expect("a request beyond the limit is shed");
        assert_eq!(shed.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(error_code(shed).await, "overloaded");
        release.notify_one();
        let waited = waiting.await.expect("the waiting request");
        assert_eq!(waited.status(), StatusCode::OK);
        // Its permit is back: the next request is served.
        let served = get_path(&app, "/orders/o_1").await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_is_503_processing_timeout() {
        // `/wait` is never released: only the timeout ends it.
        let app = public_app(
            8,
            Duration::from_millis(100),
            Arc::new(tokio::sync::Notify::new()),
        );
        let response = get_path(&app, "/wait").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(response).await, "processing_timeout");
    }

    #[test]
    fn requests_are_counted_by_route_template_and_status() {
        let recorder = crate::telemetry::builder()
            .expect("the recorder's buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let app = public_app(
                    8,
                    Duration::from_secs(60),
                    Arc::new(tokio::sync::Notify::new()),
                );
                for path in ["/orders/o_1", "/orders/o_2", "/nothing"] {
                    get_path(&app, path).await;
                }
            });
        });
        let rendered = handle.render();
        assert!(
            rendered.contains(r#"http_requests_total{route="/orders/{id}",status="200"} 2"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(r#"http_requests_total{route="unmatched",status="404"} 1"#),
            "{rendered}"
        );
    }

    fn check(templates: &[&'static str], path: &str, label: &str) {
        let labels = RouteLabels::new(templates.iter().copied()).expect("valid templates");
        assert_eq!(labels.label(path), label, "the label of {path}");
    }

    #[test]
    fn a_path_is_labelled_by_the_template_it_matches() {
        let templates = ["/orders", "/orders/{id}", "/users/verify", "/users/{id}"];
        check(&templates, "/orders", "/orders");
        check(&templates, "/orders/o-123", "/orders/{id}");
        check(&templates, "/users/verify", "/users/verify");
        check(&templates, "/users/u-1", "/users/{id}");
        check(&templates, "/orders/o-123/extra", UNMATCHED);
        check(&templates, "/nothing", UNMATCHED);
        check(&[], "/", UNMATCHED);
    }

    #[test]
    fn the_public_api_is_labelled_by_its_templates() {
        let labels = RouteLabels::new(crate::api_templates()).expect("the API's templates");
        assert_eq!(labels.label("/orders"), "/orders");
        assert_eq!(labels.label("/orders/o_1f"), "/orders/{id}");
        assert_eq!(labels.label("/holds/h_2/purchase"), "/holds/{id}/purchase");
        assert_eq!(
            labels.label("/users/u_1/tickets/t_2/qr"),
            "/users/{id}/tickets/{ticket_id}/qr"
        );
        assert_eq!(labels.label("/admin/nothing"), UNMATCHED);
    }

    #[test]
    fn a_template_twice_is_refused() {
        assert!(RouteLabels::new(["/orders", "/orders"]).is_err());
    }
}

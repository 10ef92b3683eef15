//! The one server bootstrap every service uses: its gRPC API plus
//! `grpc.health.v1.Health`, server reflection (v1 and v1alpha), Prometheus
//! text at `GET /metrics` over HTTP/1.1 on the same port, a request id and a
//! log span on every call, and graceful shutdown.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::Server,
};

use tower::{Layer, Service, ServiceBuilder};
use tower_http::{
    map_response_body::MapResponseBodyLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnFailure, TraceLayer},
};

mod admin;
pub mod cores;
mod health;
mod reflection;
mod web;

pub use health::Health;

pub use crate::rpc::MAX_MESSAGE_BYTES;
use crate::{config::ServeConfig, config::ServiceKind, proto, telemetry};

/// A gRPC server under construction: add the service's API, then `serve`.
pub struct GrpcServer {
    kind: ServiceKind,
    routes: RoutesBuilder,
    health: Health,
    advertised: Vec<String>,
    access: Option<crate::auth::AuthLayer>,
    ready: Option<crate::db::ReadyCheck>,
    extra: Option<axum::Router>,
    grpc_web_cors: Option<tower_http::cors::CorsLayer>,
}

impl GrpcServer {
    /// A server for `kind` that starts NOT_SERVING until told otherwise.
    pub fn new(kind: ServiceKind) -> Self {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            kind,
            routes,
            health: Health {
                reporter,
                service_names: Arc::new(vec![kind.grpc_service_name().to_owned()]),
            },
            advertised: vec![kind.grpc_service_name().to_owned()],
            access: None,
            ready: None,
            extra: None,
            grpc_web_cors: None,
        }
    }

    /// Also speaks gRPC-Web (HTTP/1.1 and browsers' `fetch`) on the same
    /// port, with `cors` answering preflights before any other layer (a
    /// preflight carries no token).
    pub fn grpc_web(mut self, cors: tower_http::cors::CorsLayer) -> Self {
        self.grpc_web_cors = Some(cors);
        self
    }

    /// Routes served beside the gRPC services (the gateway's proxy to the
    /// services behind it). They pass through the same layers.
    pub fn with_router(mut self, router: axum::Router) -> Self {
        self.extra = Some(router);
        self
    }

    /// Work to finish, once the database is migrated, before reporting
    /// SERVING.
    pub fn ready_when(mut self, check: crate::db::ReadyCheck) -> Self {
        self.ready = Some(check);
        self
    }

    /// Checks every call against its RPC's declared access level with the
    /// tokens verified by `keys` (see [`crate::auth`]).
    pub fn require_access(mut self, keys: std::sync::Arc<crate::auth::KeySet>) -> Self {
        self.access = Some(crate::auth::AuthLayer::new(keys));
        self
    }

    /// The handle that flips this server's health.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Adds a gRPC service to the server.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self
    }

    /// Advertises more service names in reflection (the gateway's front door
    /// lists the services it routes to).
    pub fn advertise(mut self, name: impl Into<String>) -> Self {
        self.advertised.push(name.into());
        self
    }

    /// Serves with a database: the supervisor brings the database up
    /// (migrating it unless told not to) and flips health while this serves.
    pub async fn serve_with_database(
        self,
        db: crate::db::Database,
        migrations: &'static crate::migrate::MigrationSet,
        listener: TcpListener,
        config: &ServeConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.health.set(false).await;
        crate::db::install_query_instrumentation();
        let this = self
            .add_service(admin::DatabaseAdminApi::server(db.clone()))
            .advertise("capsule.admin.v1.DatabaseAdmin");
        let supervisor_stop = CancellationToken::new();
        let mut supervisor = tokio::spawn(crate::db::supervise(
            db,
            migrations,
            this.ready.clone(),
            this.health(),
            supervisor_stop.clone(),
        ));
        // The supervisor ends early only on an error that forbids serving
        // (a migration history that disagrees with this build): stop then.
        let server_stop = shutdown.child_token();
        let server = this.serve(listener, config, server_stop.clone());
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result,
            supervised = &mut supervisor => {
                server_stop.cancel();
                let served = server.await;
                match supervised {
                    Ok(Ok(())) => served,
                    Ok(Err(err)) => Err(err),
                    Err(err) => Err(err.into()),
                }
            }
        };
        supervisor_stop.cancel();
        if !supervisor.is_finished() {
            let _ = supervisor.await;
        }
        result
    }

    /// Serves until `shutdown` is cancelled, then reports NOT_SERVING, waits
    /// `drain_delay` so load balancers stop sending, stops accepting, and
    /// lets in-flight calls finish within `shutdown_grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        config: &ServeConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            kind,
            mut routes,
            health,
            advertised,
            access,
            ready: _,
            extra,
            grpc_web_cors,
        } = self;

        reflection::add(&mut routes, &advertised);

        let mut router = routes.routes().prepare().into_axum_router();
        // With CAPSULE_METRICS_ADDR the process serves them elsewhere.
        if config.metrics_addr.is_none() {
            router = router.merge(telemetry::metrics_router());
        }
        if let Some(extra) = extra {
            router = router.merge(extra);
        }

        let local_addr = listener.local_addr()?;
        tracing::info!(service = %kind, grpc.addr = %local_addr, "listening (gRPC, reflection, health, /metrics)");

        let drain_delay = config.drain_delay;
        let grace = config.shutdown_grace;
        let drain_health = health.clone();
        let stop_accepting = CancellationToken::new();
        let stop = stop_accepting.clone();
        let shutdown_watch = shutdown.clone();
        tokio::spawn(async move {
            shutdown_watch.cancelled().await;
            drain_health.set(false).await;
            tokio::time::sleep(drain_delay).await;
            stop.cancel();
        });

        let grpc_web = grpc_web_cors.is_some().then_some(web::GrpcWebOnlyLayer);
        let layers = ServiceBuilder::new()
            .option_layer(grpc_web_cors)
            // CORS answers a preflight with an empty body of the type below it.
            .layer(MapResponseBodyLayer::new(tonic::body::Body::new))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            // With tracing on, the call's server span holds its log span.
            .option_layer(
                crate::trace::grpc_server_layer()
                    .map(|layer| (MapResponseBodyLayer::new(tonic::body::Body::new), layer)),
            )
            .layer(MapResponseBodyLayer::new(tonic::body::Body::new))
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(RequestSpan)
                    // A status is an answer, not a server fault: handlers log
                    // their own internal errors once, where they happen.
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
            )
            .layer(RequestMetricsLayer::new(kind.name()))
            .option_layer(access)
            // Innermost: the layers above see a gRPC-Web call's headers,
            // and the services below plain gRPC.
            .option_layer(grpc_web);

        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(tls.tonic())?;
        }
        let router = builder
            .accept_http1(true)
            .layer(layers)
            .add_routes(Routes::from(router));
        let abort = CancellationToken::new();
        let server = cores::serve(
            listener,
            kind.name(),
            stop_accepting.clone(),
            abort.clone(),
            move |connections, stop| router.clone().serve_with_incoming_shutdown(connections, stop),
        );
        tokio::pin!(server);

        // Serve normally; once draining ends, give in-flight calls `grace`.
        tokio::select! {
            result = &mut server => result?,
            () = async {
                stop_accepting.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(service = %kind, grace_secs = grace.as_secs(), "in-flight calls did not finish within the grace period; closing them");
                abort.cancel();
                server.await?;
            }
        }
        tracing::info!(service = %kind, "stopped");
        Ok(())
    }
}

/// The log span of one request: method, request id, trace id (with
/// tracing on) and (once the access layer knows it) the client address, so
/// every line a handler logs carries them.
#[derive(Clone, Copy)]
struct RequestSpan;

impl<B> tower_http::trace::MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        tracing::info_span!(
            "request",
            method = %request.uri().path(),
            request_id = %request_id,
            trace_id = crate::trace::current_trace_id(),
            client = tracing::field::Empty
        )
    }
}

/// Counts requests by method and gRPC status and times them:
/// `grpc_server_requests_total`, `grpc_server_request_duration_seconds`,
/// `grpc_server_requests_in_flight`.
///
/// The handles are found once (the gauge when the layer is built, so it
/// shows 0 from the start; a method's counter of OK answers and its
/// histogram at its first call, so a method's series appear once it has
/// been called), not looked up by name and labels on every call.
#[derive(Clone)]
struct RequestMetricsLayer {
    meters: Arc<Meters>,
}

impl RequestMetricsLayer {
    fn new(service: &'static str) -> Self {
        // The recorder must be in place before a handle is taken from it.
        telemetry::metrics_handle();
        let methods = proto::known_method_paths()
            .iter()
            .map(String::as_str)
            .chain(["/metrics", "other"])
            .map(|method| (method, MethodMeters::default()))
            .collect();
        Self {
            meters: Arc::new(Meters {
                service,
                in_flight: metrics::gauge!("grpc_server_requests_in_flight", "service" => service),
                methods,
            }),
        }
    }
}

struct Meters {
    service: &'static str,
    in_flight: metrics::Gauge,
    /// Every method this process knows, `/metrics` and "other" (the label
    /// of any other path, so a caller cannot make new series).
    methods: std::collections::HashMap<&'static str, MethodMeters>,
}

#[derive(Default)]
struct MethodMeters {
    ok: std::sync::OnceLock<metrics::Counter>,
    duration: std::sync::OnceLock<metrics::Histogram>,
}

impl Meters {
    /// The method label of `path`.
    fn label(&self, path: &str) -> &'static str {
        self.methods.get_key_value(path).map_or("other", |(method, _)| *method)
    }

    fn record(&self, method: &'static str, code: i64, elapsed: std::time::Duration) {
        let service = self.service;
        let Some(meters) = self.methods.get(method) else {
            return;
        };
        if code == 0 {
            meters
                .ok
                .get_or_init(|| metrics::counter!("grpc_server_requests_total", "service" => service, "method" => method, "code" => "0"))
                .increment(1);
        } else {
            metrics::counter!("grpc_server_requests_total", "service" => service, "method" => method, "code" => code.to_string())
                .increment(1);
        }
        meters
            .duration
            .get_or_init(|| metrics::histogram!("grpc_server_request_duration_seconds", "service" => service, "method" => method))
            .record(elapsed.as_secs_f64());
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            meters: self.meters.clone(),
        }
    }
}

/// One call in flight: counted when it comes in, no longer once dropped —
/// answered, or given up by its caller (its future dropped unfinished).
struct InFlight(Arc<Meters>);

impl InFlight {
    fn enter(meters: Arc<Meters>) -> Self {
        meters.in_flight.increment(1.0);
        Self(meters)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.decrement(1.0);
    }
}

#[derive(Clone)]
struct RequestMetrics<S> {
    inner: S,
    meters: Arc<Meters>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = self.meters.label(request.uri().path());
        let start = Instant::now();
        let in_flight = InFlight::enter(self.meters.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // A unary error is a trailers-only response: its status is in
            // the headers. A response without one ends with status 0 in the
            // trailers (a stream that fails later is counted as OK here).
            let code = match &result {
                Ok(response) => crate::trace::grpc_code(response.headers()).unwrap_or(0),
                Err(_) => 13,
            };
            in_flight.0.record(method, code, start.elapsed());
            // The call leaves the gauge here, when `in_flight` is dropped.
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-flight gauge of `service`, as `/metrics` shows it.
    fn in_flight(service: &str) -> Option<f64> {
        let label = format!("service=\"{service}\"");
        telemetry::metrics_handle()
            .render()
            .lines()
            .find(|line| line.starts_with("grpc_server_requests_in_flight{") && line.contains(&label))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    #[tokio::test]
    async fn a_call_its_caller_gave_up_on_is_no_longer_in_flight() {
        let mut service = RequestMetricsLayer::new("in-flight-test").layer(tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<()>, Infallible>>()
        }));
        let call = service.call(Request::new(()));
        assert_eq!(in_flight("in-flight-test"), Some(1.0));
        // The client hung up: the server drops the call's future unfinished.
        drop(call);
        assert_eq!(in_flight("in-flight-test"), Some(0.0));
    }
}

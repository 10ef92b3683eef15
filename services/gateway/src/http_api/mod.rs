//! The gateway's HTTP API (served by [`crate::front`]): the REST/JSON bridge (every annotated RPC, see
//! [`crate::transcode`]), `/openapi.json`, `/docs` ([`crate::docs`]), `/healthz`, `/readyz`.
//!
//! At the edge: the caller's token is checked for routes that need one
//! (public routes pass) and passed on; `x-request-id` is kept or made, and
//! returned; a deadline comes from `grpc-timeout` or the default; idempotent
//! reads (GET) are retried with backoff on UNAVAILABLE; bodies are limited;
//! CORS is configurable; requests are rate-limited per client address.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
    routing::get,
};
use capsule::auth::KeySet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tracing::Instrument;

mod bridge;
mod calls;

pub use bridge::Bridge;

use calls::Call;

use crate::{
    config::cors,
    transcode::{self, Route, conventions},
};

/// How long `/readyz` waits for each backend's health answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often idle clients are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    bridge: Arc<Bridge>,
    apps: Option<Arc<crate::apps::Apps>>,
    tls: Option<capsule::tls::ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cors = cors(&bridge.config);
    {
        let (bridge, shutdown) = (bridge.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(PRUNE_INTERVAL) => bridge.limiter.prune(),
                }
            }
        });
    }
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .merge(crate::docs::router())
        .fallback(transcoded)
        .layer(cors)
        .with_state(bridge);
    let front = crate::front::Front {
        router,
        apps,
        via_tls: false,
    };
    if let Some(apps) = &front.apps
        && let Some(addr) = apps.config.https_addr
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| anyhow::anyhow!("GATEWAY_APPS_HTTPS_ADDR {addr}: {err}"))?;
        let resolver = crate::apps::sni::Resolver {
            fallback: crate::apps::sni::fallback(tls.as_ref())?,
            apps: apps.clone(),
        };
        tracing::info!(https.addr = %listener.local_addr()?, "gateway listening (apps over TLS)");
        let listener = capsule::tls::TlsListener::new(listener, capsule::tls::resolved(Arc::new(resolver)))?;
        let front = crate::front::Front {
            via_tls: true,
            ..front.clone()
        };
        tokio::spawn(crate::front::serve(listener, front, shutdown.clone()));
    }
    if let Some(tls) = tls {
        tracing::info!(http.addr = %listener.local_addr()?, "gateway listening (REST/JSON over TLS)");
        let listener = capsule::tls::TlsListener::new(listener, tls.rustls()?)?;
        crate::front::serve(listener, front, shutdown).await;
        return Ok(());
    }
    tracing::info!(http.addr = %listener.local_addr()?, "gateway listening (REST/JSON)");
    // Small JSON answers go out at once, not after Nagle's wait.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    crate::front::serve(listener, front, shutdown).await;
    Ok(())
}

async fn openapi(State(bridge): State<Arc<Bridge>>) -> Json<serde_json::Value> {
    Json(bridge.openapi.clone())
}

/// 200 when every backend answers SERVING, else 503 naming the ones that
/// do not.
async fn readyz(State(bridge): State<Arc<Bridge>>) -> (StatusCode, Json<serde_json::Value>) {
    let checks = bridge.backends.all().map(|(kind, channel)| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            let request = HealthCheckRequest {
                service: kind.grpc_service_name().to_owned(),
            };
            let status = match tokio::time::timeout(READINESS_TIMEOUT, client.check(request)).await {
                Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => "SERVING".to_owned(),
                Ok(Ok(response)) => response.get_ref().status().as_str_name().to_owned(),
                Ok(Err(status)) => format!("UNAVAILABLE: {}", status.message()),
                Err(_) => "UNAVAILABLE: no answer within 2s".to_owned(),
            };
            (kind.name(), status)
        }
    });
    let results = futures::future::join_all(checks).await;
    let ready = results.iter().all(|(_, status)| status == "SERVING");
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "backends": results.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn transcoded(
    State(bridge): State<Arc<Bridge>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    // With tracing on, the request's server span holds its log span.
    let server = tracing::debug_span!(
        target: capsule::trace::TRACE,
        "http.server",
        otel.name = %request.method(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    capsule::trace::adopt(&server, request.headers());
    // The spans follow the request's future wherever it is polled (an
    // entered guard held across `.await` would leak into other requests
    // on the same thread and chain their spans without end).
    let span = server.in_scope(|| {
        tracing::info_span!("rest", method = %request.method(), path = %request.uri().path(), request_id = %request_id, trace_id = capsule::trace::current_trace_id(), client = tracing::field::Empty)
    });
    let response = handle(bridge, client, request, request_id, &server)
        .instrument(span)
        .instrument(server.clone())
        .await;
    let code = response.status().as_u16();
    server.record("http.response.status_code", code);
    if code >= 500 {
        server.record("otel.status_code", "error");
    }
    response
}

async fn handle(
    bridge: Arc<Bridge>,
    peer: SocketAddr,
    request: Request,
    request_id: String,
    server: &tracing::Span,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = capsule::client::forwarded(peer.ip(), &parts.headers, &bridge.config.trusted_proxies);
    tracing::Span::current().record("client", tracing::field::display(client));
    if !bridge.limiter.check(client) {
        return bridge.error(
            &Status::resource_exhausted("too many requests from this address; slow down"),
            &request_id,
        );
    }
    let (route, bound) = match bridge.routes.find(&parts.method, parts.uri.path()) {
        Ok(found) => found,
        Err(miss) => return no_route(&bridge, &parts, miss, &request_id),
    };
    if !server.is_disabled() {
        capsule::trace::rename(server, format!("{} {}", parts.method, route.template.text));
        server.record("http.route", route.template.text.as_str());
    }
    if let Some(status) = edge_check(&bridge.keys, route, &parts.headers).await {
        return bridge.error(&status, &request_id);
    }
    let body = match read_body(&bridge, body, &request_id).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let query = query_of(&parts, route);
    let message = match transcode::build_request(route, &bound, &query, &body, content_type) {
        Ok(message) => message,
        Err(status) => return bridge.error(&status, &request_id),
    };
    let Some(channel) = bridge.backends.for_service(route.method.parent_service().full_name()) else {
        return bridge.error(&Status::unimplemented("no backend serves this API"), &request_id);
    };
    let call = Call {
        route,
        channel,
        message,
        metadata: calls::metadata_from(
            &parts.headers,
            &request_id,
            client,
            bridge.config.client_proof.as_deref(),
        ),
    };
    if route.method.is_server_streaming() {
        let sse = parts
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
        return calls::stream(&bridge, call, sse, &request_id).await;
    }
    let timeout = calls::deadline(&parts.headers, bridge.config.default_timeout);
    // Reads are retried when the backend was unavailable.
    let retries = if parts.method == http::Method::GET { 2 } else { 0 };
    match calls::unary(call, timeout, retries).await {
        Ok(response) => {
            let mut http = Response::new(Body::from(transcode::response_body(route, &response)));
            let headers = http.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert("x-request-id", value);
            }
            http
        }
        Err(status) => bridge.error(&status, &request_id),
    }
}

/// 405 with `Allow` for a path bound to other verbs, 404 for no route.
fn no_route(bridge: &Bridge, parts: &http::request::Parts, miss: transcode::Miss, request_id: &str) -> Response {
    match miss {
        transcode::Miss::WrongVerb(allowed) => {
            let allow = allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
            let status = Status::unimplemented(format!(
                "{} is not allowed on {}; use {allow}",
                parts.method,
                parts.uri.path()
            ));
            let mut response = bridge.error(&status, request_id);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(http::header::ALLOW, value);
            }
            response
        }
        transcode::Miss::NoRoute => {
            let status = Status::not_found(format!("no route for {} {}", parts.method, parts.uri.path()));
            bridge.error(&status, request_id)
        }
    }
}

/// The whole body, up to `GATEWAY_MAX_BODY_BYTES`; a larger one is
/// refused and the connection closed.
async fn read_body(bridge: &Bridge, body: Body, request_id: &str) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, bridge.config.max_body_bytes)
        .await
        .map_err(|_| {
            let status = transcode::bad_request(format!(
                "the body is larger than {} bytes",
                bridge.config.max_body_bytes
            ));
            // The rest of the body is never read, so this connection cannot
            // carry another request: say so, or a client may reuse it.
            let mut response = bridge.error(&status, request_id);
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        })
}

/// The query's fields; for a resumable stream, `Last-Event-ID` fills the
/// resume field the query leaves unset ([`conventions::RESUME_FIELD`]).
fn query_of(parts: &http::request::Parts, route: &Route) -> Vec<(String, String)> {
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if route.method.is_server_streaming()
        && let Some(last) = parts.headers.get("last-event-id").and_then(|v| v.to_str().ok())
        && route
            .method
            .input()
            .get_field_by_name(conventions::RESUME_FIELD)
            .is_some()
        && !query
            .iter()
            .any(|(k, _)| k == conventions::RESUME_FIELD || k == conventions::RESUME_FIELD_JSON)
    {
        query.push((conventions::RESUME_FIELD.to_owned(), last.to_owned()));
    }
    query
}

/// The edge's token check: routes for signed-in users and admins are
/// checked here; public routes pass. The runner API and calls between
/// services are never bridged.
async fn edge_check(keys: &KeySet, route: &Route, headers: &HeaderMap) -> Option<Status> {
    use capsule::auth::Access;
    match route.access {
        Access::Authenticated | Access::Admin => {
            capsule::auth::authorize_access(keys, route.access, route.permission, headers)
                .await
                .err()
        }
        Access::Public => None,
        Access::Runner | Access::Internal | Access::Service | Access::Unspecified => Some(Status::permission_denied(
            "this method is not available through the gateway",
        )),
    }
}

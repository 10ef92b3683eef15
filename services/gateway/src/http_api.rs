//! The gateway's HTTP side: the REST/JSON bridge (every annotated RPC, see
//! [`crate::transcode`]), `/openapi.json`, `/docs` ([`crate::docs`]), `/healthz`, `/readyz`.
//!
//! At the edge: the caller's token is checked for routes that need one
//! (public routes pass) and passed on; `x-request-id` is kept or made, and
//! returned; a deadline comes from `grpc-timeout` or the default; idempotent
//! reads (GET) are retried with backoff on UNAVAILABLE; bodies are limited;
//! CORS is configurable; requests are rate-limited per client address.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use capsule::auth::KeySet;
use capsule::trace::TracedChannel as Channel;
use futures::StreamExt;
use governor::Quota;
use prost_reflect::DynamicMessage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tracing::Instrument;

use crate::{
    backends::Backends,
    codec::DynamicCodec,
    config::{EdgeConfig, cors},
    limit::ClientLimiter,
    transcode::{self, Route, Routes},
};

/// How long `/readyz` waits for each backend's health answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a request needs.
pub struct Bridge {
    pub routes: Routes,
    pub backends: Backends,
    pub keys: Arc<KeySet>,
    pub config: EdgeConfig,
    limiter: ClientLimiter,
    openapi: serde_json::Value,
}

impl Bridge {
    pub fn new(routes: Routes, backends: Backends, keys: Arc<KeySet>, config: EdgeConfig) -> Self {
        let per_second = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(per_second);
        let openapi = crate::openapi::document(&routes);
        Self {
            limiter: ClientLimiter::new(Quota::per_second(per_second).allow_burst(burst)),
            routes,
            backends,
            keys,
            config,
            openapi,
        }
    }

    /// An error as `google.rpc.Status` JSON, with a `google.rpc.RequestInfo`
    /// detail naming the request (as `x-request-id` does) and, with tracing
    /// on, its trace (`servingData`: `trace_id=…`), so a client can quote
    /// them and an operator find every log line and span of it.
    fn error(&self, status: &Status, request_id: &str) -> Response {
        let mut body = transcode::status_json(&self.routes.pool, status);
        if let Some(details) = body.get_mut("details").and_then(serde_json::Value::as_array_mut)
            && !request_id.is_empty()
        {
            let mut info = serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.RequestInfo",
                "requestId": request_id,
            });
            if let Some(trace_id) = capsule::trace::current_trace_id() {
                info["servingData"] = format!("trace_id={trace_id}").into();
            }
            details.push(info);
        }
        let mut response = (transcode::http_status(status.code()), Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        if status.code() == Code::Unauthenticated {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

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
    let mut app = Router::new()
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
    if let Some(apps) = apps {
        // Apps' hosts first: nothing of the API is reachable through them.
        app = app.layer(axum::middleware::from_fn_with_state(apps, to_app));
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Some(tls) = tls {
        tracing::info!(http.addr = %listener.local_addr()?, "gateway listening (REST/JSON over TLS)");
        // Through tap_io, whose streams axum knows how to ask for the
        // client's address.
        let listener =
            axum::serve::ListenerExt::tap_io(capsule::tls::TlsListener::new(listener, tls.rustls()?)?, |_| {});
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        return Ok(());
    }
    tracing::info!(http.addr = %listener.local_addr()?, "gateway listening (REST/JSON)");
    // Small JSON answers go out at once, not after Nagle's wait.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// A request for an app's host goes to the app; any other to the API.
async fn to_app(
    State(apps): State<Arc<crate::apps::Apps>>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str))
        .map(str::to_ascii_lowercase);
    if let Some(host) = host
        && let Some(app) = apps.host_of(&host)
    {
        let app = app.to_owned();
        return crate::apps::proxy::forward(&apps, &app, client, request).await;
    }
    next.run(request).await
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

/// The deadline of a call: `grpc-timeout` (e.g. `5S`, `500m`) or the
/// default, at most ten times the default. Absurd values saturate.
fn deadline(headers: &HeaderMap, default: Duration) -> Duration {
    let Some(value) = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()) else {
        return default;
    };
    let (digits, unit) = value.split_at(value.len().saturating_sub(1));
    let Ok(amount) = digits.parse::<u64>() else {
        return default;
    };
    let parsed = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return default,
    };
    parsed.min(default.saturating_mul(10))
}

fn metadata_from(
    headers: &HeaderMap,
    request_id: &str,
    client: IpAddr,
    proof: Option<&str>,
) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    // With the signature and delivery headers of git hosts' push events.
    for name in [
        "authorization",
        "user-agent",
        "x-hub-signature-256",
        "x-github-delivery",
        "x-github-event",
        "x-gitea-signature",
        "x-gitea-delivery",
        "x-gitea-event",
        "x-gitlab-token",
        "x-gitlab-event",
        "x-gitlab-event-uuid",
    ] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = value.parse()
        {
            metadata.insert(name, value);
        }
    }
    if let Ok(value) = request_id.parse() {
        metadata.insert("x-request-id", value);
    }
    let mut headers = metadata.into_headers();
    capsule::client::vouch(&mut headers, Some(client), proof);
    tonic::metadata::MetadataMap::from_headers(headers)
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
        Err(transcode::Miss::WrongVerb(allowed)) => {
            let allow = allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
            let status = Status::unimplemented(format!(
                "{} is not allowed on {}; use {allow}",
                parts.method,
                parts.uri.path()
            ));
            let mut response = bridge.error(&status, &request_id);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(http::header::ALLOW, value);
            }
            return response;
        }
        Err(transcode::Miss::NoRoute) => {
            let status = Status::not_found(format!("no route for {} {}", parts.method, parts.uri.path()));
            return bridge.error(&status, &request_id);
        }
    };
    if !server.is_disabled() {
        capsule::trace::rename(server, format!("{} {}", parts.method, route.template.text));
        server.record("http.route", route.template.text.as_str());
    }
    if let Some(status) = edge_check(&bridge.keys, route, &parts.headers).await {
        return bridge.error(&status, &request_id);
    }
    let body = match axum::body::to_bytes(body, bridge.config.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            let status = transcode::bad_request(format!(
                "the body is larger than {} bytes",
                bridge.config.max_body_bytes
            ));
            // The rest of the body is never read, so this connection cannot
            // carry another request: say so, or a client may reuse it.
            let mut response = bridge.error(&status, &request_id);
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let streaming = route.method.is_server_streaming();
    if streaming
        && let Some(last) = parts.headers.get("last-event-id").and_then(|v| v.to_str().ok())
        && route.method.input().get_field_by_name("after_sequence").is_some()
        && !query.iter().any(|(k, _)| k == "after_sequence" || k == "afterSequence")
    {
        query.push(("after_sequence".to_owned(), last.to_owned()));
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let message = match transcode::build_request(route, &bound, &query, &body, content_type) {
        Ok(message) => message,
        Err(status) => return bridge.error(&status, &request_id),
    };
    let Some(channel) = bridge.backends.for_service(route.method.parent_service().full_name()) else {
        return bridge.error(&Status::unimplemented("no backend serves this API"), &request_id);
    };
    let metadata = metadata_from(
        &parts.headers,
        &request_id,
        client,
        bridge.config.client_proof.as_deref(),
    );
    if streaming {
        let sse = parts
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
        return stream(&bridge, route, channel, message, metadata, sse, &request_id).await;
    }
    let timeout = deadline(&parts.headers, bridge.config.default_timeout);
    let idempotent = parts.method == http::Method::GET;
    let mut attempt = 0;
    let result = loop {
        let result = unary(route, channel.clone(), message.clone(), metadata.clone(), timeout).await;
        match result {
            Err(status) if idempotent && status.code() == Code::Unavailable && attempt < 2 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * 3u64.pow(attempt))).await;
            }
            other => break other,
        }
    };
    match result {
        Ok(response) => {
            let mut http = Json(transcode::response_json(route, &response)).into_response();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                http.headers_mut().insert("x-request-id", value);
            }
            http
        }
        Err(status) => bridge.error(&status, &request_id),
    }
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

async fn unary(
    route: &Route,
    channel: Channel,
    message: DynamicMessage,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
) -> Result<DynamicMessage, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(format!("the backend is unavailable: {err}")))?;
    let path = http::uri::PathAndQuery::try_from(route.grpc_path()).map_err(|_| Status::internal("bad method path"))?;
    let mut request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
    request.set_timeout(timeout);
    let call = grpc.unary(request, path, DynamicCodec::new(route.method.output()));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(backend_gone(status)),
        Err(_) => Err(Status::deadline_exceeded("the backend did not answer in time")),
    }
}

/// CANCELLED from the channel itself means the backend's connection went
/// away mid-call (the caller of the bridge cancelled nothing): that is the
/// backend being unavailable, and a read may be retried.
fn backend_gone(status: Status) -> Status {
    if status.code() == Code::Cancelled {
        Status::unavailable(format!("the backend went away during the call: {}", status.message()))
    } else {
        status
    }
}

/// A server-streaming RPC as Server-Sent Events (`Accept:
/// text/event-stream`; `id:` is the message's `sequence`, so a client
/// resumes with `Last-Event-ID`) or newline-delimited JSON
/// (`{"result": …}` / `{"error": …}` per line, like grpc-gateway).
async fn stream(
    bridge: &Arc<Bridge>,
    route: &Route,
    channel: Channel,
    message: DynamicMessage,
    metadata: tonic::metadata::MetadataMap,
    sse: bool,
    request_id: &str,
) -> Response {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        return bridge.error(
            &Status::unavailable(format!("the backend is unavailable: {err}")),
            request_id,
        );
    }
    let Ok(path) = http::uri::PathAndQuery::try_from(route.grpc_path()) else {
        return bridge.error(&Status::internal("bad method path"), request_id);
    };
    let request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
    let messages = match grpc
        .server_streaming(request, path, DynamicCodec::new(route.method.output()))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return bridge.error(&backend_gone(status), request_id),
    };
    let pool = bridge.routes.pool.clone();
    let has_sequence = route.method.output().get_field_by_name("sequence").is_some();
    let frames = messages.map(move |item| {
        let frame = match item {
            Ok(message) => {
                let json = transcode::to_json(&message);
                if sse {
                    let id = if has_sequence {
                        message
                            .get_field_by_name("sequence")
                            .and_then(|v| v.as_i64())
                            .map(|seq| format!("id: {seq}\n"))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    format!("{id}data: {json}\n\n")
                } else {
                    format!("{}\n", serde_json::json!({ "result": json }))
                }
            }
            Err(status) => {
                let error = transcode::status_json(&pool, &status);
                if sse {
                    format!("event: error\ndata: {error}\n\n")
                } else {
                    format!("{}\n", serde_json::json!({ "error": error }))
                }
            }
        };
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(frame))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_saturate() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            deadline(&headers, Duration::from_secs(30))
        };
        assert_eq!(with("5S"), Duration::from_secs(5));
        assert_eq!(with("250m"), Duration::from_millis(250));
        assert_eq!(with("18446744073709551615H"), Duration::from_secs(300), "no overflow");
        assert_eq!(with("99999999999999999999999M"), Duration::from_secs(30), "unparsable");
        assert_eq!(with("7x"), Duration::from_secs(30));
        assert_eq!(with(""), Duration::from_secs(30));
        assert_eq!(
            deadline(&HeaderMap::new(), Duration::MAX),
            Duration::MAX,
            "a huge default is no overflow either"
        );
    }
}

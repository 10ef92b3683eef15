//! Traces across the mesh: the spans that make them and the W3C trace
//! context that ties them together, taken from a request's headers by the
//! server that receives it ([`grpc_server_layer`], [`adopt`]) and written
//! into every call a process makes to another ([`Traced`], the client
//! layer of every channel between services).
//!
//! Only spans of target [`TRACE`] are exported, at debug level, so the log
//! filter never turns them on by accident; with tracing off (see
//! [`crate::telemetry`], which turns it on) each costs one disabled
//! callsite check. A call's server span is the parent of its log span,
//! which records the trace id so every log line of the call carries it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::Either;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span that is exported as part of a trace.
pub const TRACE: &str = "capsule::trace";

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the call being served is recorded: tracing is on and its trace
/// was sampled. The spans below a request's own (pool waits, statements,
/// calls to other services, fan-out branches) are built only then: an
/// unsampled trace costs its server span and nothing more.
pub fn sampled() -> bool {
    enabled() && opentelemetry::Context::current().span().span_context().is_sampled()
}

/// Turned on once, by the telemetry that exports the spans.
pub(crate) fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` (a request's server span) continue the trace its caller's
/// `traceparent`/`tracestate` name; a request without them starts one.
pub fn adopt(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace of the call being served, for its log span and its error
/// answers to carry; `None` when tracing is off.
pub fn current_trace_id() -> Option<String> {
    if !enabled() {
        return None;
    }
    // Entering a traced span makes its context the current one, whatever
    // log spans are entered below it.
    let id = opentelemetry::Context::current().span().span_context().trace_id();
    (id != TraceId::INVALID).then(|| id.to_string())
}

/// Renames a span that has started (recording `otel.name` works only
/// before): a server span once it knows its route.
pub fn rename(span: &Span, name: String) {
    span.context().span().update_name(name);
}

/// The current span and trace, to carry to another thread (a pooled
/// connection's); `None` unless the trace is sampled (nothing there would
/// be recorded).
pub fn carry() -> Option<Carried> {
    sampled().then(|| Carried {
        span: Span::current(),
        context: opentelemetry::Context::current(),
    })
}

/// What [`carry`] took: work run with it is part of the same request's
/// log lines and trace.
pub struct Carried {
    span: Span,
    context: opentelemetry::Context,
}

impl Carried {
    pub fn run<T>(self, work: impl FnOnce() -> T) -> T {
        let _trace = self.context.attach();
        self.span.in_scope(work)
    }
}

/// A channel to another service whose every call is a client span,
/// carrying the trace on in `traceparent`.
pub type TracedChannel = Traced<tonic::transport::Channel>;

/// Wraps a channel so its calls are traced.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    Traced { inner: channel }
}

/// The client side of tracing: each call made through it is a client span
/// (the method, the gRPC status of the answer's headers) whose context
/// goes out in `traceparent`. With tracing off the call passes untouched.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for Traced<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if enabled() && !sampled() {
            // Not recorded: the callee still learns the trace and that it
            // is not sampled.
            TraceContextPropagator::new().inject_context(
                &opentelemetry::Context::current(),
                &mut HeadersMut(request.headers_mut()),
            );
            return Either::Left(self.inner.call(request));
        }
        let span = tracing::debug_span!(
            target: TRACE,
            "grpc.client",
            otel.name = Empty,
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = Empty,
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
        );
        if span.is_disabled() {
            return Either::Left(self.inner.call(request));
        }
        name_rpc(&span, request.uri().path());
        let context = span.context();
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(request.headers_mut()));
        let future = self.inner.call(request);
        let recorded = span.clone();
        Either::Right(Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => grpc_code(response.headers()).unwrap_or(0),
                    Err(_) => 14,
                };
                record_status(&recorded, code, false);
                result
            }
            .instrument(span),
        ))
    }
}

/// Names an RPC span after its method path (`/pkg.Service/Method`).
pub fn name_rpc(span: &Span, path: &str) {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    span.record("otel.name", name);
    span.record("rpc.service", service);
    span.record("rpc.method", method);
}

/// The gRPC status in `headers` (a trailers-only answer, or trailers).
pub fn grpc_code(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Records a gRPC status on an RPC span; an error status for the codes
/// that mean the server failed (on the server side) or the call did (on
/// the client side), per OpenTelemetry's gRPC conventions.
pub fn record_status(span: &Span, code: i64, server: bool) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    let failed = if server {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    } else {
        code != 0
    };
    if failed {
        span.record("otel.status_code", "error");
    }
}

/// The server span of every gRPC call a process serves, outside its log
/// span: a layer only when tracing is on.
pub type GrpcServerLayer = tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    GrpcServerSpan,
    (),
    GrpcStatus,
    (),
    GrpcStatus,
    (),
>;

/// [`GrpcServerLayer`] when tracing is on.
pub fn grpc_server_layer() -> Option<GrpcServerLayer> {
    enabled().then(|| {
        tower_http::trace::TraceLayer::new_for_grpc()
            .make_span_with(GrpcServerSpan)
            .on_request(())
            .on_response(GrpcStatus)
            .on_body_chunk(())
            .on_eos(GrpcStatus)
            .on_failure(())
    })
}

/// A gRPC call's server span, continuing its caller's trace.
#[derive(Clone, Copy, Debug)]
pub struct GrpcServerSpan;

impl<B> tower_http::trace::MakeSpan<B> for GrpcServerSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let span = tracing::debug_span!(
            target: TRACE,
            "grpc.server",
            otel.name = Empty,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = Empty,
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
        );
        name_rpc(&span, request.uri().path());
        adopt(&span, request.headers());
        span
    }
}

/// Records the answer's gRPC status on the server span: from the headers
/// of a trailers-only answer, or from the trailers.
#[derive(Clone, Copy, Debug)]
pub struct GrpcStatus;

impl<B> tower_http::trace::OnResponse<B> for GrpcStatus {
    fn on_response(self, response: &Response<B>, _: std::time::Duration, span: &Span) {
        if let Some(code) = grpc_code(response.headers()) {
            record_status(span, code, true);
        }
    }
}

impl tower_http::trace::OnEos for GrpcStatus {
    fn on_eos(self, trailers: Option<&HeaderMap>, _: std::time::Duration, span: &Span) {
        if let Some(code) = trailers.and_then(grpc_code) {
            record_status(span, code, true);
        }
    }
}

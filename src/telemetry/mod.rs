//! Logs, metrics and traces.
//!
//! Logs: `tracing`, filtered by `RUST_LOG` (default `info`), human-readable
//! or JSON when `CAPSULE_LOG_FORMAT=json`. Metrics: one Prometheus recorder
//! per process, rendered at `GET /metrics` on every gRPC port. Traces:
//! OpenTelemetry spans, exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` says where ([`otlp`] reads the standard
//! variables); nothing is made or exported when it is unset.
//!
//! Which spans make a trace, and how its context crosses the mesh, is
//! [`crate::trace`].

mod otlp;

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter::filter_fn, fmt, prelude::*};

use crate::{config::Source, trace::TRACE};
pub use otlp::TraceConfig;

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans not
/// yet exported.
#[must_use = "shut it down before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// Where spans are exported, when they are.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Exports what is queued and stops the exporter. Call it outside the
    /// runtime's worker threads (the export runs on them).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("capsule: the last traces could not be exported: {err}");
        }
    }
}

/// Installs the global log subscriber and, when `source` names an OTLP
/// endpoint, the trace exporter (`service_name` unless `OTEL_SERVICE_NAME`
/// says otherwise). Tracing needs a tokio runtime: call it inside one (or
/// with one entered). Later calls install nothing.
pub fn init(source: &dyn Source, service_name: &str) -> anyhow::Result<Telemetry> {
    let config = TraceConfig::from_source(source, service_name)?;
    let provider = config.as_ref().map(TraceConfig::provider).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CAPSULE_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(
            fmt::layer()
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("capsule"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_level(false)
            .with_target(false)
            .with_filter(filter_fn(|metadata| metadata.is_span() && metadata.target() == TRACE))
    });
    // try_init fails only when a subscriber is already installed.
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        crate::trace::enable();
    }
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
        endpoint: config.map(|config| config.endpoint).filter(|_| installed),
    })
}

/// Logs only, for commands that export no traces. Safe to call more than
/// once.
pub fn init_logging() -> Telemetry {
    init(&|_: &str| None, "capsule").unwrap_or(Telemetry {
        provider: None,
        endpoint: None,
    })
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (a test harness
        // that installs its own); this handle then renders nothing, which is
        // the honest answer.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics`: the Prometheus text of this process.
pub fn metrics_router() -> axum::Router {
    let metrics = metrics_handle();
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(metrics.render())),
    )
}

/// Serves `/metrics` alone on `listener` (`CAPSULE_METRICS_ADDR`), so it
/// need not share a public port, until `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(metrics.addr = %listener.local_addr()?, "serving /metrics");
    axum::serve(listener, metrics_router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

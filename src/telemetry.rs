//! Logs and metrics.
//!
//! Logs: `tracing`, filtered by `RUST_LOG` (default `info`), human-readable
//! or JSON when `CAPSULE_LOG_FORMAT=json`. Metrics: one Prometheus recorder
//! per process, rendered at `GET /metrics` on every gRPC port.

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global log subscriber. Safe to call more than once: later
/// calls do nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CAPSULE_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    // try_init fails only when a subscriber is already installed.
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
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

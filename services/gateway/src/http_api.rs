//! The gateway's HTTP side.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::Backends;

/// How long `/readyz` waits for each backend's health answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, backends: Backends, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(backends);
    tracing::info!(http.addr = %listener.local_addr()?, "gateway listening (REST/JSON)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// 200 when every backend answers SERVING, else 503 naming the ones that
/// do not.
async fn readyz(State(backends): State<Backends>) -> (StatusCode, Json<serde_json::Value>) {
    let checks = backends.all().map(|(kind, channel)| {
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

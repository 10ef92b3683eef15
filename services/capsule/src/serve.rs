//! `capsule serve`: one service in this process, configured from the
//! environment; also the listeners `capsule dev` shares.

use std::net::SocketAddr;

use anyhow::Context;
use capsule::config::{DbConfig, GatewayConfig, Mesh, ServeConfig, ServiceKind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds a listener, naming the variable to change when the address is taken.
pub async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; set {variable} to a free address"))
}

pub async fn serve(kind: ServiceKind, local_runner: bool) -> anyhow::Result<()> {
    if local_runner && kind != ServiceKind::Deploy {
        anyhow::bail!("--runner local is for `capsule serve deploy` only");
    }
    let serve_config = ServeConfig::from_env(kind)?;
    // A service checks calls against the contracts it serves and their
    // imports only.
    if let Some(packages) = kind.served_packages() {
        capsule::proto::serve_only(packages).map_err(anyhow::Error::msg)?;
    }
    let shutdown = capsule::shutdown::on_signal();
    serve_metrics(&serve_config, &shutdown).await?;
    serve_one(kind, &serve_config, local_runner, shutdown).await
}

/// With `CAPSULE_METRICS_ADDR`, serves `/metrics` on a listener of its own
/// (the gRPC ports then do not).
pub async fn serve_metrics(config: &ServeConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_addr {
        let listener = bind(addr, "CAPSULE_METRICS_ADDR").await?;
        tokio::spawn(capsule::telemetry::serve_metrics(listener, shutdown.clone()));
    }
    Ok(())
}

/// Serves one service with its configuration from the environment.
async fn serve_one(
    kind: ServiceKind,
    serve_config: &ServeConfig,
    local_runner: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind(serve_config.grpc_addr, &kind.grpc_addr_variable()).await?;
    match kind {
        ServiceKind::Auth => {
            capsule_auth::serve(listener, DbConfig::from_env(kind)?, serve_config.clone(), shutdown).await
        }
        ServiceKind::Project => {
            let (db, mesh) = (DbConfig::from_env(kind)?, Mesh::from_env()?);
            capsule_project::serve(listener, db, mesh, serve_config.clone(), shutdown).await
        }
        ServiceKind::Deploy => {
            let (db, mesh) = (DbConfig::from_env(kind)?, Mesh::from_env()?);
            let mut config = capsule_deploy::DeployConfig::from_env()?;
            if local_runner && config.runner.is_none() {
                config.runner = Some(capsule_deploy::RunnerConfig::from_env()?);
            }
            capsule_deploy::serve(listener, db, mesh, config, serve_config.clone(), shutdown).await
        }
        ServiceKind::Gateway => {
            let config = GatewayConfig::from_env()?;
            let http = bind(config.http_addr, "GATEWAY_HTTP_ADDR").await?;
            let edge = capsule_gateway::EdgeConfig::from_env()?;
            capsule_gateway::serve(listener, http, config, edge, serve_config.clone(), shutdown).await
        }
    }
}

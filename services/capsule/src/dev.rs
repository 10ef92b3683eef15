//! `capsule dev`: one command from a fresh clone to a running mesh.

use std::time::Duration;

use capsule::config::{DbConfig, GatewayConfig, Mesh, ServeConfig, ServiceKind, Source};
use tokio::task::JoinSet;

use crate::{
    postgres,
    serve::{bind, serve_metrics},
};

/// The environment, falling back to the found server's address for the
/// database host and port.
struct DevSource {
    host: String,
    port: u16,
    internal_secret: String,
    encryption_keys: String,
    /// The apps' PostgreSQL server's admin URL, when it runs.
    apps_database_url: Option<String>,
}

impl Source for DevSource {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = std::env::var(name).ok().filter(|value| !value.is_empty()) {
            return Some(value);
        }
        if name == "CAPSULE_DEV_MAILER" {
            // Development: log outgoing mail (verification and reset links).
            Some("log".to_owned())
        } else if name == "DEPLOY_LOCAL_RUNNER" {
            Some("true".to_owned())
        } else if name == "DEPLOY_RUNNER_SANDBOX" {
            // The sandbox when this machine has one; else a warning in
            // every deployment's log.
            Some("auto".to_owned())
        } else if name == "CAPSULE_INTERNAL_SECRET" {
            Some(self.internal_secret.clone())
        } else if name == "DEPLOY_APPS_DATABASE_URL" {
            self.apps_database_url.clone()
        } else if name == capsule::crypto::KEYS_VARIABLE {
            Some(self.encryption_keys.clone())
        } else if name.ends_with("_DB_HOST") {
            Some(self.host.clone())
        } else if name.ends_with("_DB_PORT") {
            Some(self.port.to_string())
        } else {
            None
        }
    }
}

/// The development admin's email; its password is printed at start.
const DEV_ADMIN_EMAIL: &str = "admin@capsule.dev";

pub async fn run(traces: Option<String>) -> anyhow::Result<()> {
    let project_dir = postgres::project_dir()?;
    let server = postgres::find_or_start(&project_dir).await?;
    // Apps' databases live on a server of their own; without one (no
    // PostgreSQL binaries here), the mesh runs without them.
    let apps_server = match std::env::var("DEPLOY_APPS_DATABASE_URL") {
        Ok(url) if !url.is_empty() => None,
        _ => match postgres::start_apps(&project_dir, &random_hex()?).await {
            Ok(apps) => Some(apps),
            Err(err) => {
                eprintln!("capsule: no PostgreSQL for apps ({err:#}); CreateDatabase is off");
                None
            }
        },
    };
    let source = DevSource {
        host: server.host.clone(),
        port: server.port,
        internal_secret: random_hex()?,
        encryption_keys: dev_keys(&project_dir)?,
        apps_database_url: apps_server.as_ref().map(|apps| apps.admin_url.clone()),
    };

    let mut db_configs = Vec::new();
    for kind in ServiceKind::WITH_DATABASE {
        let config = DbConfig::from_source(kind, &source)?;
        if config.url_override.is_none() {
            postgres::provision(&server.admin_url, &config).await?;
        }
        crate::migrate::apply(&config).await?;
        db_configs.push(config);
    }
    let auth_config = capsule_auth::AuthConfig::from_source(&source)?;
    let admin_password = std::env::var("CAPSULE_DEV_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let admin = capsule_auth::ensure_dev_admin(&db_configs[0], DEV_ADMIN_EMAIL, admin_password).await?;
    let mesh = Mesh::from_source(&source)?;
    let deploy_config = capsule_deploy::DeployConfig::from_source(&source)?;

    let shutdown = capsule::shutdown::on_signal();
    let mut tasks = JoinSet::new();
    let mut lines = Vec::new();
    for config in db_configs {
        let kind = config.service;
        let serve_config = ServeConfig::from_source(kind, &source)?;
        let listener = bind(serve_config.grpc_addr, &kind.grpc_addr_variable()).await?;
        lines.push(format!(
            "  {:<8} gRPC  {:<22} db {}",
            kind.name(),
            listener.local_addr()?.to_string(),
            config.target()
        ));
        let shutdown = shutdown.clone();
        let (auth_config, mesh, deploy_config) = (auth_config.clone(), mesh.clone(), deploy_config.clone());
        tasks.spawn(async move {
            let result = match kind {
                ServiceKind::Auth => {
                    capsule_auth::serve_with(listener, config, auth_config, serve_config, shutdown).await
                }
                ServiceKind::Project => capsule_project::serve(listener, config, mesh, serve_config, shutdown).await,
                ServiceKind::Deploy => {
                    capsule_deploy::serve(listener, config, mesh, deploy_config, serve_config, shutdown).await
                }
                ServiceKind::Gateway => Ok(()),
            };
            (kind, result)
        });
    }
    let gateway_serve = ServeConfig::from_source(ServiceKind::Gateway, &source)?;
    serve_metrics(&gateway_serve, &shutdown).await?;
    let gateway_config = GatewayConfig::from_source(&source)?;
    let mut edge = capsule_gateway::EdgeConfig::from_source(&source)?;
    // The local runner hands the gateway its apps' connections.
    if let Some(runner) = &deploy_config.runner
        && edge.apps.handoff.is_none()
    {
        edge.apps.handoff = Some(runner.handoff_socket.clone());
    }
    let grpc = bind(gateway_serve.grpc_addr, "GATEWAY_GRPC_ADDR").await?;
    let http = bind(gateway_config.http_addr, "GATEWAY_HTTP_ADDR").await?;
    // Where an operator looks: the API page, and the metrics (on their own
    // listener when CAPSULE_METRICS_ADDR says so, else on every gRPC port).
    let http_addr = http.local_addr()?;
    let metrics_at = gateway_serve.metrics_addr.unwrap_or(grpc.local_addr()?);
    lines.insert(
        0,
        format!(
            "  {:<8} gRPC  {:<22} REST http://{}",
            "gateway",
            grpc.local_addr()?.to_string(),
            http.local_addr()?
        ),
    );
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            (
                ServiceKind::Gateway,
                capsule_gateway::serve(grpc, http, gateway_config, edge, gateway_serve, shutdown).await,
            )
        });
    }

    println!(
        "\nCapsule is running. PostgreSQL: {} ({}).\n\n{}\n\nTry:\n  \
         grpcurl -plaintext localhost:50051 list\n  \
         grpcurl -plaintext localhost:50051 describe capsule.auth.v1.AuthService\n  \
         grpcurl -plaintext -d '{{\"service\":\"capsule.project.v1.ProjectService\"}}' localhost:50052 grpc.health.v1.Health/Check\n  \
         curl localhost:8080/readyz\n  \
         curl localhost:50053/metrics\n\n\
         Where to look:\n  \
         API page       http://{http_addr}/docs (the document: http://{http_addr}/openapi.json)\n  \
         Metrics        http://{metrics_at}/metrics (Prometheus text)\n  \
         Dashboard      deploy/observability/capsule-dashboard.json (Grafana) and capsule-alerts.yaml (Prometheus rules)\n  \
         Traces         {}\n\n\
         Apps: a live deployment answers at http://<host label>.localhost:8080 (GATEWAY_APPS_DOMAIN).\n\
         Repositories: https://, ssh:// and git:// URLs; to deploy from a local path, allow its directory:\n  \
         DEPLOY_LOCAL_REPOSITORIES=$HOME/src cargo run -p capsule-cli -- dev\n\n\
         Development admin: {DEV_ADMIN_EMAIL} / {}\n\
         Mail is logged, not sent (verification and reset links appear in the log).\n\n\
         Ctrl-C stops everything{}.\n",
        capsule::config::redact_url(&server.admin_url),
        server.origin,
        lines.join("\n"),
        traces_line(traces.as_deref()).await,
        admin.password,
        if server.started_here.is_some() {
            ", the private PostgreSQL cluster included"
        } else {
            ""
        }
    );

    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((kind, Err(err))) => {
                tracing::error!(service = %kind, error = %format!("{err:#}"), "service stopped with an error; stopping the others");
                shutdown.cancel();
                failure.get_or_insert(err.context(format!("the {kind} service failed")));
            }
            Err(err) => {
                shutdown.cancel();
                failure.get_or_insert(anyhow::anyhow!("a service task failed: {err}"));
            }
        }
    }
    if let Some(data) = apps_server.as_ref().and_then(|apps| apps.started_here.as_ref()) {
        postgres::stop(data).await?;
        eprintln!("capsule: stopped the apps' PostgreSQL cluster");
    }
    if let Some(data) = &server.started_here {
        postgres::stop(data).await?;
        eprintln!("capsule: stopped the private PostgreSQL cluster");
    }
    failure.map_or(Ok(()), Err)
}

/// The development key that seals variables: kept in
/// `.capsule/encryption.key` (0600) so that values stored by one run open
/// in the next, made on the first.
fn dev_keys(project_dir: &std::path::Path) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    let keys = format!(
        "dev:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    );
    postgres::kept_secret(&project_dir.join(".capsule").join("encryption.key"), &keys)
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Where traces go, and whether anything listens there (nothing is
/// started: a collector is the operator's to run).
async fn traces_line(endpoint: Option<&str>) -> String {
    let Some(endpoint) = endpoint else {
        return "off; --otlp exports them to a collector on localhost:4317 (OTEL_EXPORTER_OTLP_ENDPOINT elsewhere)"
            .to_owned();
    };
    let address = url::Url::parse(endpoint)
        .ok()
        .and_then(|url| Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?)));
    let answers = match address {
        Some(address) => tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(address))
            .await
            .is_ok_and(|connected| connected.is_ok()),
        None => false,
    };
    if answers {
        format!("{endpoint} (OTLP/gRPC); the trace id is in every log line and REST error")
    } else {
        format!("{endpoint} (OTLP/gRPC), where nothing answers yet: spans are dropped until a collector listens there")
    }
}

//! Capsule's deploy service: deployments with a lifecycle, runners that
//! execute them, logs that stream.

pub mod config;
mod db;
mod grpc;
mod notify;
mod runner;
mod state;

use std::sync::Arc;

use capsule::{
    auth::KeySet,
    config::{DbConfig, Mesh, ServeConfig, ServiceKind},
    db::Database,
    migrate::MigrationSet,
    proto::{
        deploy::v1::deploy_service_server::DeployServiceServer,
        project::v1::project_service_client::ProjectServiceClient,
    },
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{DeployConfig, RunnerConfig};
pub use grpc::DeployServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/deploy");

/// The deploy database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet =
    MigrationSet::new(ServiceKind::Deploy, &EMBEDDED, capsule::migrate::files::DEPLOY);

/// Serves the deploy service on `listener` until `shutdown` is cancelled,
/// with the local runner when `config.runner` is set.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    mut mesh: Mesh,
    config: DeployConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::new(db_config.clone())?;
    let hub = notify::Hub::start(db_config.connection_url(), shutdown.clone());
    if config.runner.is_some() && mesh.secrets.runner_token.is_none() {
        // The local runner needs a token; nobody else knows this one.
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
        mesh.secrets.runner_token = Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect());
    }
    let projects = ProjectServiceClient::new(
        capsule::tls::endpoint(&mesh.services.project)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .connect_lazy(),
    );
    let api = DeployServiceApi::new(
        db.clone(),
        hub.clone(),
        projects,
        mesh.secrets.internal_secret.clone(),
        config.lease,
    )?;
    let keys: Arc<KeySet> = mesh.key_set()?;

    let runner = match (&config.runner, &mesh.secrets.runner_token) {
        (Some(runner_config), Some(token)) => {
            let addr = listener.local_addr()?;
            let endpoint = format!("http://127.0.0.1:{}", addr.port());
            let runner = runner::LocalRunner::new(&endpoint, token, runner_config.clone(), hub.clone())?;
            Some(tokio::spawn(runner.run(shutdown.clone())))
        }
        _ => None,
    };

    let result = GrpcServer::new(ServiceKind::Deploy)
        .require_access(keys)
        .add_service(DeployServiceServer::new(api).max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES))
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await;
    if let Some(runner) = runner {
        let _ = runner.await;
    }
    result
}

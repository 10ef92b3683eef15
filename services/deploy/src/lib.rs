//! Capsule's deploy service.

mod grpc;

use capsule::{
    config::{DbConfig, ServeConfig, ServiceKind, ServiceUrls},
    db::Database,
    migrate::MigrationSet,
    proto::deploy::v1::deploy_service_server::DeployServiceServer,
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use grpc::DeployServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/deploy");

/// The deploy database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet =
    MigrationSet::new(ServiceKind::Deploy, &EMBEDDED, capsule::migrate::files::DEPLOY);

/// Serves the deploy service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    services: ServiceUrls,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::new(db_config)?;
    let keys = capsule::auth::KeySet::from_auth_service(&services.auth)?;
    GrpcServer::new(ServiceKind::Deploy)
        .require_access(keys)
        .add_service(DeployServiceServer::new(DeployServiceApi::new(db.clone())))
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await
}

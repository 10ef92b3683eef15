//! Capsule's auth service.

mod grpc;

use capsule::{
    config::{DbConfig, ServeConfig, ServiceKind},
    db::Database,
    migrate::MigrationSet,
    proto::auth::v1::auth_service_server::AuthServiceServer,
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use grpc::AuthServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/auth");

/// The auth database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet = MigrationSet::new(ServiceKind::Auth, &EMBEDDED, capsule::migrate::files::AUTH);

/// Serves the auth service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::new(db_config)?;
    GrpcServer::new(ServiceKind::Auth)
        .add_service(AuthServiceServer::new(AuthServiceApi::new(db.clone())))
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await
}

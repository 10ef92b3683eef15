//! Capsule's project service: projects and their settings, owned by users
//! or organisations, and the organisations' members.

mod convert;
mod db;
mod grpc;
mod state;
mod validate;
mod vault;

use capsule::{
    config::{DbConfig, Mesh, ServeConfig, ServiceKind},
    db::Database,
    migrate::MigrationSet,
    proto::{
        auth::v1::auth_service_client::AuthServiceClient, project::v1::project_service_server::ProjectServiceServer,
    },
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use db::explain_reads;
pub use grpc::RETENTION_DAYS;
pub use state::ProjectServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/project");

/// The project database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet =
    MigrationSet::new(ServiceKind::Project, &EMBEDDED, capsule::migrate::files::PROJECT);

/// Serves the project service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    mesh: Mesh,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::new(db_config)?;
    // Invitations are mailed by the auth service, called with the
    // internal secret.
    let auth = match &mesh.secrets.internal_secret {
        Some(secret) => Some((
            AuthServiceClient::new(capsule::tls::channel(&mesh.services.auth)?),
            secret.as_str().into(),
        )),
        None => None,
    };
    let maxima = state::Maxima::from_source(&capsule::config::ProcessEnv)?;
    let keys = mesh.secrets.encryption.clone();
    capsule::db::refuse_unknown_keys(db.clone(), vault::key_ids, keys.clone(), shutdown.clone());
    GrpcServer::new(ServiceKind::Project)
        .require_access(mesh.key_set()?)
        .add_service(
            ProjectServiceServer::new(ProjectServiceApi::new(db.clone(), auth, keys, maxima))
                .max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES),
        )
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await
}

/// Seals every variable's value under the first key of
/// `CAPSULE_ENCRYPTION_KEYS` (`capsule secrets reencrypt`): values written
/// before values were sealed, and those of older keys. How many.
pub async fn reencrypt(db_config: DbConfig, keys: std::sync::Arc<capsule::crypto::Keyring>) -> anyhow::Result<usize> {
    let db = Database::new(db_config)?;
    db.run(move |conn| Ok(vault::reencrypt(conn, &keys))).await?
}

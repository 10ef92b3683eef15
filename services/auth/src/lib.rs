//! Capsule's auth service: accounts, roles, profiles, sessions, email
//! verification, preferences and tokens.

pub mod config;
mod convert;
mod db;
mod grpc;
mod keys;
mod password;
mod state;
mod throttle;
mod validate;

use std::{sync::Arc, time::Duration};

use capsule::{
    auth::KeySet,
    config::{DbConfig, ServeConfig, ServiceKind},
    db::Database,
    migrate::MigrationSet,
    proto::auth::v1::auth_service_server::AuthServiceServer,
    server::GrpcServer,
};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::AuthConfig;
pub use state::AuthServiceApi;

static EMBEDDED: EmbeddedMigrations = embed_migrations!("../../migrations/auth");

/// The auth database's migrations, embedded at build time.
pub static MIGRATIONS: MigrationSet = MigrationSet::new(ServiceKind::Auth, &EMBEDDED, capsule::migrate::files::AUTH);

/// How often the signing keys are reloaded (another replica may rotate)
/// and old sign-in counters forgotten.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Serves the auth service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    db_config: DbConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, db_config, AuthConfig::from_env()?, serve_config, shutdown).await
}

/// [`serve`] with explicit auth settings.
pub async fn serve_with(
    listener: TcpListener,
    db_config: DbConfig,
    config: AuthConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::new(db_config)?;
    let keys = Arc::new(keys::KeyRing::lazy());
    let api = AuthServiceApi::new(db.clone(), keys.clone(), config.clone());
    let verifier = KeySet::with_secrets(
        Arc::new(keys::LocalKeys {
            ring: keys.clone(),
            db: db.clone(),
        }),
        &config.secrets,
    );
    let db_for_keys = db.clone();

    // Keys live in the database: load them once it is migrated (before
    // SERVING), then reload them now and then.
    let ready: capsule::db::ReadyCheck = {
        let (keys, db, config) = (keys.clone(), db.clone(), config.clone());
        Arc::new(move || {
            let (keys, db, config) = (keys.clone(), db.clone(), config.clone());
            Box::pin(async move { keys.reload(&db, &config).await })
        })
    };
    let reloader_stop = shutdown.clone();
    let reloader = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = reloader_stop.cancelled() => return,
                () = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
            }
            if let Err(err) = keys.reload(&db_for_keys, &config).await {
                tracing::warn!(error = %format!("{err:#}"), "cannot reload the signing keys");
            }
            let pruned = db_for_keys
                .run(|conn| db::prune_throttles(conn, chrono::Duration::days(2)))
                .await;
            if let Err(err) = pruned {
                tracing::warn!(error = %err, "cannot forget old sign-in counters");
            }
        }
    });

    let result = GrpcServer::new(ServiceKind::Auth)
        .require_access(verifier)
        .ready_when(ready)
        .add_service(AuthServiceServer::new(api).max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES))
        .serve_with_database(db, &MIGRATIONS, listener, &serve_config, shutdown)
        .await;
    reloader.abort();
    result
}

/// The development admin's credentials.
pub struct DevAdmin {
    pub email: String,
    pub password: String,
}

/// Creates the development admin, or resets its password and role: for
/// `capsule dev` only (a migration would ship it to production). Without a
/// password, a random one is made.
pub async fn ensure_dev_admin(db_config: &DbConfig, email: &str, password: Option<String>) -> anyhow::Result<DevAdmin> {
    let password = match password {
        Some(password) => password,
        None => {
            let mut bytes = [0u8; 12];
            getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        }
    };
    let hash = password::hash(password.clone()).await?;
    let db = Database::new(db_config.clone())?;
    let email_owned = email.to_owned();
    db.run(move |conn| db::upsert_admin(conn, &email_owned, &hash)).await?;
    Ok(DevAdmin {
        email: email.to_owned(),
        password,
    })
}

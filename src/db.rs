//! The database side of a service: its connection pool, its embedded
//! migrations, and the supervisor that keeps its health honest.
//!
//! Blocking diesel work runs on the pool's threads (`interact`) or on
//! `spawn_blocking`, never on a tokio worker.

use std::{sync::Arc, time::Duration};

use deadpool_diesel::postgres::{Manager, Pool, Runtime};
use diesel::{
    Connection, PgConnection, RunQueryDsl,
    migration::{Migration, MigrationSource},
    pg::Pg,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::{config::DbConfig, server::Health};

/// How long a request waits for a pooled connection before it is answered
/// UNAVAILABLE.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a serving service checks that its database still answers.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest pause between two attempts to reach a database that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A service's database: configuration and pool.
#[derive(Clone)]
pub struct Database {
    pub config: Arc<DbConfig>,
    pub pool: Pool,
}

impl Database {
    /// Builds the pool. Connections are opened on first use, so this
    /// succeeds whether or not the database is up.
    pub fn new(config: DbConfig) -> anyhow::Result<Self> {
        let manager = Manager::new(config.connection_url().expose_secret(), Runtime::Tokio1);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(config.connect_timeout.max(Duration::from_secs(1))))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            config: Arc::new(config),
            pool,
        })
    }

    /// Runs `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let conn = self.pool.get().await?;
        conn.interact(|conn| diesel::sql_query("SELECT 1").execute(conn))
            .await
            .map_err(|err| anyhow::anyhow!("the connection thread failed: {err}"))??;
        Ok(())
    }

    /// Opens one connection outside the pool (migrations, admin work).
    pub async fn connect_direct(&self) -> anyhow::Result<PgConnection> {
        let url = self.config.connection_url();
        tokio::task::spawn_blocking(move || PgConnection::establish(url.expose_secret()))
            .await?
            .map_err(Into::into)
    }
}

/// Applies the pending migrations of `migrations` on `conn`, holding the
/// service's advisory lock so replicas starting together apply each one
/// once. Returns the versions applied.
pub fn apply_migrations(
    conn: &mut PgConnection,
    service: crate::config::ServiceKind,
    migrations: &'static EmbeddedMigrations,
) -> anyhow::Result<Vec<String>> {
    let key = migration_lock_key(service);
    diesel::sql_query(format!("SELECT pg_advisory_lock({key})")).execute(conn)?;
    let result = conn
        .run_pending_migrations(Embedded(migrations))
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|err| anyhow::anyhow!("{err}"));
    let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({key})")).execute(conn);
    let applied = result?;
    unlock?;
    Ok(applied)
}

/// A borrowed embedded migration set, usable where diesel wants a source
/// by value.
struct Embedded(&'static EmbeddedMigrations);

impl MigrationSource<Pg> for Embedded {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        MigrationSource::<Pg>::migrations(self.0)
    }
}

/// The advisory lock that serialises a service's migrations: a constant per
/// service, so every replica and every `capsule migrate` agrees.
pub fn migration_lock_key(service: crate::config::ServiceKind) -> i64 {
    // "capsule" in ASCII, then the service's index.
    0x6361_7073_756c_6500 + service as i64
}

/// Brings the database up and keeps the health endpoint honest: retries
/// the connection with backoff (logging what to fix), applies migrations
/// once, reports SERVING, then checks every second and reports NOT_SERVING
/// while the database does not answer. Returns when `shutdown` is
/// cancelled.
pub async fn supervise(
    db: Database,
    migrations: &'static EmbeddedMigrations,
    health: Health,
    shutdown: CancellationToken,
) {
    let service = db.config.service;
    let mut migrated = !db.config.migrate_on_start;
    let mut serving = false;
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        let outcome = if migrated {
            db.ping().await
        } else {
            migrate_once(&db, migrations).await.map(|applied| {
                migrated = true;
                if !applied.is_empty() {
                    tracing::info!(service = %service, versions = ?applied, "applied migrations");
                }
            })
        };
        match outcome {
            Ok(()) => {
                if !serving {
                    tracing::info!(service = %service, db.target = %db.config.target(), "database ready; serving");
                    health.set(true).await;
                    serving = true;
                }
                failures = 0;
                backoff = Duration::from_millis(200);
            }
            Err(err) => {
                if serving {
                    health.set(false).await;
                    serving = false;
                }
                failures += 1;
                // Say it loudly the first time and then every tenth try, so a
                // long outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        service = %service,
                        db.target = %db.config.target(),
                        attempt = failures,
                        retry_in_ms = backoff.as_millis() as u64,
                        error = %format!("{err:#}"),
                        "database unavailable; reporting NOT_SERVING and retrying. Check that PostgreSQL runs there, or set {}",
                        db.config.variables_hint()
                    );
                }
            }
        }
        let pause = if serving { CHECK_INTERVAL } else { backoff };
        if !serving {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn migrate_once(db: &Database, migrations: &'static EmbeddedMigrations) -> anyhow::Result<Vec<String>> {
    let mut conn = db.connect_direct().await?;
    let service = db.config.service;
    tokio::task::spawn_blocking(move || apply_migrations(&mut conn, service, migrations)).await?
}

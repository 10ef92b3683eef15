//! The database side of a service: its connection pool, its embedded
//! migrations, and the supervisor that keeps its health honest.
//!
//! Blocking diesel work runs on the pool's threads (`interact`) or on
//! `spawn_blocking`, never on a tokio worker.

use std::{sync::Arc, time::Duration};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_diesel::{Runtime, postgres::Manager};
use diesel::{Connection, PgConnection, RunQueryDsl};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::{
    config::DbConfig,
    migrate::{self, MigrateError, MigrateOptions, MigrationSet},
    server::Health,
};

/// How long a request waits for a pooled connection before it is answered
/// UNAVAILABLE.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a serving service checks that its database still answers.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest pause between two attempts to reach a database that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Times every statement on every connection of this process (diesel's
/// `Instrumentation`): a latency histogram per statement shape and
/// service, `db_query_duration_seconds`; a warning for statements slower
/// than `<SVC>_DB_SLOW_QUERY_MS` (default 200); the SQL at debug level,
/// bound values only with `CAPSULE_DB_LOG_BINDS=true`.
pub fn install_query_instrumentation() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = diesel::connection::set_default_instrumentation(|| Some(Box::new(QueryTimer::default())));
    });
}

#[derive(Default)]
struct QueryTimer {
    service: &'static str,
    slow: Duration,
    log_binds: bool,
    started: Option<std::time::Instant>,
}

impl diesel::connection::Instrumentation for QueryTimer {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent as Event;
        match event {
            // The URL holds the password: only the application name is read.
            Event::StartEstablishConnection { url, .. } => {
                self.service = crate::config::ServiceKind::ALL
                    .into_iter()
                    .find(|kind| url.contains(&format!("application_name=capsule-{}", kind.name())))
                    .map_or("other", crate::config::ServiceKind::name);
                let variable = format!("{}_DB_SLOW_QUERY_MS", self.service.to_uppercase());
                let slow_ms = std::env::var(variable).ok().and_then(|v| v.parse().ok()).unwrap_or(200);
                self.slow = Duration::from_millis(slow_ms);
                self.log_binds = std::env::var("CAPSULE_DB_LOG_BINDS").is_ok_and(|v| v == "true");
            }
            Event::StartQuery { .. } => self.started = Some(std::time::Instant::now()),
            Event::FinishQuery { query, error, .. } => {
                let Some(started) = self.started.take() else { return };
                let elapsed = started.elapsed();
                let text = query.to_string();
                let (statement, binds) = text.split_once(" -- binds: ").unwrap_or((text.as_str(), ""));
                let shape: String = statement.chars().take(160).collect();
                metrics::histogram!("db_query_duration_seconds", "service" => self.service, "statement" => shape.clone())
                    .record(elapsed.as_secs_f64());
                let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                if elapsed >= self.slow {
                    tracing::warn!(service = self.service, duration_ms, statement = %shape, failed = error.is_some(), "slow query");
                } else if self.log_binds {
                    tracing::debug!(service = self.service, duration_ms, statement = %shape, binds, "query");
                } else {
                    tracing::debug!(service = self.service, duration_ms, statement = %shape, "query");
                }
            }
            _ => {}
        }
    }
}

/// The pool of a service's connections.
pub type Pool = deadpool::managed::Pool<Pooled>;

/// deadpool-diesel's manager opens the connections; handing one out again
/// is checked in place. Its own recycling runs `SELECT 1` on the
/// connection's thread at every checkout: a round trip and two thread
/// hops per call, for a check the next query makes anyway. A connection
/// returned with a broken transaction is dropped here; one whose socket
/// died is dropped by [`Database::run`] when its query fails.
#[derive(Debug)]
pub struct Pooled(Manager);

impl deadpool::managed::Manager for Pooled {
    type Type = <Manager as deadpool::managed::Manager>::Type;
    type Error = <Manager as deadpool::managed::Manager>::Error;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.0.create().await
    }

    async fn recycle(&self, conn: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        // Idle in the pool, so nobody else holds its lock.
        let mut guard = conn
            .try_lock()
            .map_err(|_| RecycleError::message("the connection is still in use or its thread panicked"))?;
        if AnsiTransactionManager::is_broken_transaction_manager(&mut *guard) {
            return Err(RecycleError::message("the connection was left in a broken transaction"));
        }
        Ok(())
    }
}

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
        let statement_timeout_ms = config.statement_timeout.as_millis();
        // Every pooled connection gets the statement timeout, whatever the
        // URL says: a runaway query fails instead of holding a connection.
        let set_timeout =
            deadpool::managed::Hook::async_fn(move |conn: &mut <Pooled as deadpool::managed::Manager>::Type, _| {
                Box::pin(async move {
                    conn.interact(move |conn| {
                        diesel::connection::SimpleConnection::batch_execute(
                            conn,
                            &format!("SET statement_timeout = {statement_timeout_ms}"),
                        )
                    })
                    .await
                    .map_err(|err| deadpool::managed::HookError::message(err.to_string()))?
                    .map_err(|err| deadpool::managed::HookError::message(err.to_string()))
                })
            });
        let pool = Pool::builder(Pooled(manager))
            .post_create(set_timeout)
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

    /// Publishes the pool's size, idle connections and waiters.
    pub fn record_pool_metrics(&self) {
        let status = self.pool.status();
        let service = self.config.service.name();
        #[expect(clippy::cast_precision_loss, reason = "pool sizes are small")]
        {
            metrics::gauge!("db_pool_size", "service" => service).set(status.size as f64);
            metrics::gauge!("db_pool_available", "service" => service).set(status.available as f64);
            metrics::gauge!("db_pool_waiting", "service" => service).set(status.waiting as f64);
            metrics::gauge!("db_pool_max_size", "service" => service).set(status.max_size as f64);
        }
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

/// Brings the database up and keeps the health endpoint honest: retries
/// the connection with backoff (logging what to fix), validates and applies
/// migrations once (or, with `<SVC>_MIGRATE_ON_START=false`, waits until
/// they have been applied), reports SERVING, then checks every second and
/// reports NOT_SERVING while the database does not answer.
///
/// Returns `Ok` when `shutdown` is cancelled, and an error that retrying
/// cannot fix (a migration history that disagrees with this build, a
/// failing migration): the service must not start on it.
pub async fn supervise(
    db: Database,
    migrations: &'static MigrationSet,
    ready: Option<ReadyCheck>,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = db.config.service;
    let mut migrated = false;
    let mut serving = false;
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        let outcome = if migrated {
            db.ping().await
        } else {
            match prepare_schema(&db, migrations).await {
                Ok(()) => match &ready {
                    Some(check) => check().await.map(|()| migrated = true),
                    None => {
                        migrated = true;
                        Ok(())
                    }
                },
                Err(SchemaError::Fatal(err)) => {
                    health.set(false).await;
                    tracing::error!(service = %service, error = %err, "refusing to serve");
                    return Err(err.into());
                }
                Err(SchemaError::Retry(err)) => Err(err),
            }
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
        db.record_pool_metrics();
        let pause = if serving { CHECK_INTERVAL } else { backoff };
        if !serving {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Work a service must finish, once its database is migrated, before it
/// reports SERVING (auth loads its signing keys). Retried until it succeeds.
pub type ReadyCheck =
    std::sync::Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

enum SchemaError {
    /// Retrying cannot fix it.
    Fatal(MigrateError),
    /// The database is unreachable, busy, or not migrated yet.
    Retry(anyhow::Error),
}

/// Applies pending migrations (validating first), or with migrate-on-start
/// off, validates and checks that nothing is pending.
async fn prepare_schema(db: &Database, set: &'static MigrationSet) -> Result<(), SchemaError> {
    let mut conn = db.connect_direct().await.map_err(SchemaError::Retry)?;
    let migrate_on_start = db.config.migrate_on_start;
    let service = db.config.service;
    let latest: f64 = set
        .files
        .last()
        .and_then(|file| {
            file.version
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let outcome = tokio::task::spawn_blocking(move || -> Result<(), MigrateError> {
        if migrate_on_start {
            let applied = migrate::migrate(&mut conn, set, &MigrateOptions::default())?;
            if !applied.is_empty() {
                let versions: Vec<&str> = applied.iter().map(|m| m.version.as_str()).collect();
                tracing::info!(service = %service, versions = ?versions, "applied migrations");
            }
            return Ok(());
        }
        migrate::validate(&mut conn, set)?;
        let pending: Vec<String> = migrate::info(&mut conn, set)?
            .into_iter()
            .filter(|row| row.state == migrate::State::Pending)
            .map(|row| row.version)
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(MigrateError::Other(format!(
                "migrations {} are pending and {}_MIGRATE_ON_START is false: run `capsule migrate {service}` (or the migration job)",
                pending.join(", "),
                service.env_prefix()
            )))
        }
    })
    .await
    .map_err(|err| SchemaError::Retry(err.into()))?;
    match outcome {
        Ok(()) => {
            metrics::gauge!("capsule_migration_version", "service" => service.name()).set(latest);
            metrics::gauge!("capsule_migrations_pending", "service" => service.name()).set(0.0);
            Ok(())
        }
        // Pending migrations with migrate-on-start off wait for the job.
        Err(MigrateError::Other(message)) if !migrate_on_start => Err(SchemaError::Retry(anyhow::anyhow!(message))),
        Err(err) if err.is_fatal() => Err(SchemaError::Fatal(err)),
        Err(err) => Err(SchemaError::Retry(err.into())),
    }
}

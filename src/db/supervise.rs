//! The supervisor that brings a service's database up and keeps its
//! readiness honest.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Database;
use crate::migrate::{self, MigrateError, MigrateOptions, MigrationSet};

/// How often a serving service checks that its database still answers.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest pause between two attempts to reach a database that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the supervisor says whether the service can serve: the server's
/// health endpoint.
pub trait Readiness: Send + Sync + 'static {
    fn report(&self, serving: bool) -> impl Future<Output = ()> + Send;
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
    health: impl Readiness,
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
                    health.report(false).await;
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
                    health.report(true).await;
                    serving = true;
                }
                failures = 0;
                backoff = Duration::from_millis(200);
            }
            Err(err) => {
                if serving {
                    health.report(false).await;
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
    let future = if db.config.migrate_allow_future {
        migrate::Future::Allow
    } else {
        migrate::Future::Refuse
    };
    let outcome = tokio::task::spawn_blocking(move || -> Result<Vec<String>, MigrateError> {
        if migrate_on_start {
            let options = MigrateOptions {
                future,
                ..MigrateOptions::default()
            };
            let applied = migrate::migrate(&mut conn, set, &options)?;
            if !applied.is_empty() {
                let versions: Vec<&str> = applied.iter().map(|m| m.version.as_str()).collect();
                tracing::info!(service = %service, versions = ?versions, "applied migrations");
            }
            return migrate::validate(&mut conn, set, future);
        }
        let ahead = migrate::validate(&mut conn, set, future)?;
        let pending: Vec<String> = migrate::info(&mut conn, set)?
            .into_iter()
            .filter(|row| row.state == migrate::State::Pending)
            .map(|row| row.version)
            .collect();
        if pending.is_empty() {
            Ok(ahead)
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
        Ok(ahead) => {
            if !ahead.is_empty() {
                tracing::warn!(
                    service = %service,
                    versions = ?ahead,
                    "the database holds migrations newer than this build (a rollout in progress?); serving, since every \
                     migration this build knows is applied unchanged"
                );
            }
            metrics::gauge!("capsule_migration_version", "service" => service.name()).set(latest);
            metrics::gauge!("capsule_migrations_pending", "service" => service.name()).set(0.0);
            #[expect(clippy::cast_precision_loss, reason = "a handful of versions")]
            metrics::gauge!("capsule_migrations_ahead", "service" => service.name()).set(ahead.len() as f64);
            Ok(())
        }
        // Pending migrations with migrate-on-start off wait for the job.
        Err(MigrateError::Other(message)) if !migrate_on_start => Err(SchemaError::Retry(anyhow::anyhow!(message))),
        Err(err) if err.is_fatal() => Err(SchemaError::Fatal(err)),
        Err(err) => Err(SchemaError::Retry(err.into())),
    }
}

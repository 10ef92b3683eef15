//! Applying pending migrations.

use std::time::Duration;

use diesel::{Connection, PgConnection, connection::SimpleConnection, migration::Migration};

use super::{
    error::MigrateError,
    history::{applied, ensure_history, record},
    lock::with_lock,
    set::{MigrationFile, MigrationSet},
    statements::split_statements,
    validate::{Future, validate},
};

/// Options for [`migrate`].
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// How long to wait for another process's migration lock.
    pub lock_wait: Duration,
    /// `lock_timeout` for the migration's statements, so a migration waiting
    /// on a busy table fails instead of queueing every query behind it.
    pub statement_lock_timeout: Duration,
    /// Whether a database ahead of this build is migrated (nothing to do
    /// for this build) or refused.
    pub future: Future,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_secs(60),
            statement_lock_timeout: Duration::from_secs(10),
            future: Future::Allow,
        }
    }
}

/// One migration applied (or, in a dry run, that would be).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied1 {
    pub version: String,
    pub description: String,
    pub duration_ms: u64,
    pub statements: Vec<String>,
    pub warnings: Vec<String>,
    pub transactional: bool,
}

/// What every change to the schema starts with: the statements' lock
/// timeout, the service's migration lock, the history table, and a
/// validated history; `work` gets the versions applied so far.
pub(super) fn under_lock<T>(
    conn: &mut PgConnection,
    set: &MigrationSet,
    options: &MigrateOptions,
    future: Future,
    work: impl FnOnce(&mut PgConnection, Vec<String>) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    conn.batch_execute(&format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = 0",
        options.statement_lock_timeout.as_millis()
    ))?;
    with_lock(conn, set.service, options.lock_wait, |conn| {
        ensure_history(conn, set)?;
        validate(conn, set, future)?;
        let done = applied(conn)?.into_iter().map(|row| row.version).collect();
        work(conn, done)
    })
}

/// Applies every pending migration, each in its own transaction, under the
/// lock. Validates first: a history that disagrees with the build is
/// refused before anything runs.
pub fn migrate(
    conn: &mut PgConnection,
    set: &MigrationSet,
    options: &MigrateOptions,
) -> Result<Vec<Applied1>, MigrateError> {
    let runnable = set.runnable()?;
    under_lock(conn, set, options, options.future, |conn, done| {
        let mut report = Vec::new();
        for file in set.files.iter().filter(|file| !done.iter().any(|v| v == file.version)) {
            let migration = &runnable[file.version];
            let start = std::time::Instant::now();
            let run = |conn: &mut PgConnection| -> Result<(), MigrateError> {
                migration
                    .run(conn)
                    .map_err(|err| MigrateError::Other(err.to_string()))?;
                let elapsed = i32::try_from(start.elapsed().as_millis()).unwrap_or(i32::MAX);
                record(
                    conn,
                    file.version,
                    file.description,
                    "migration",
                    file.checksum,
                    elapsed,
                )
            };
            let outcome = if file.run_in_transaction {
                conn.transaction(run)
            } else {
                run(conn)
            };
            if let Err(err) = outcome {
                return Err(diagnose(conn, set, file, err));
            }
            report.push(Applied1 {
                version: file.version.to_owned(),
                description: file.description.to_owned(),
                duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                statements: Vec::new(),
                warnings: Vec::new(),
                transactional: file.run_in_transaction,
            });
        }
        Ok(report)
    })
}

/// Finds which statement of a failed migration fails, by replaying it one
/// statement at a time in a transaction that is rolled back.
fn diagnose(conn: &mut PgConnection, set: &MigrationSet, file: &MigrationFile, original: MigrateError) -> MigrateError {
    let path = format!("migrations/{}/{}/up.sql", set.service, file.name);
    let statements = split_statements(file.up);
    let mut found = None;
    let _ = conn.transaction::<(), diesel::result::Error, _>(|conn| {
        for (index, statement) in statements.iter().enumerate() {
            if let Err(err) = conn.batch_execute(statement) {
                found = Some((index + 1, statement.clone(), err.to_string()));
                break;
            }
        }
        Err(diesel::result::Error::RollbackTransaction)
    });
    match found {
        Some((index, statement, error)) => MigrateError::Failed {
            version: file.version.to_owned(),
            file: path,
            index,
            statement,
            error,
        },
        None => MigrateError::Failed {
            version: file.version.to_owned(),
            file: path,
            index: 0,
            statement: "(the whole file)".to_owned(),
            error: original.to_string(),
        },
    }
}

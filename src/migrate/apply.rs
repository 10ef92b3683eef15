//! Applying pending migrations.

use std::time::Duration;

use diesel::{Connection, PgConnection, connection::SimpleConnection, migration::Migration};

use super::{
    error::{MigrateError, lock_not_available},
    history::{applied, ensure_history, record, set_checksum},
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
    /// How many more times a migration is tried after one of its
    /// statements gave up waiting for a lock (`lock_timeout`); each try is
    /// rolled back first, and they wait longer each time.
    pub lock_retries: u32,
    /// The first pause between tries; it doubles each time (up to 30 s),
    /// and each pause is drawn between half of it and all of it, so
    /// replicas that failed together do not return together.
    pub lock_retry_pause: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_secs(60),
            statement_lock_timeout: Duration::from_secs(10),
            future: Future::Allow,
            lock_retries: 4,
            lock_retry_pause: Duration::from_millis(500),
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
    set_timeouts(conn, options)?;
    with_lock(conn, set.service, options.lock_wait, |conn| {
        ensure_history(conn, set)?;
        validate(conn, set, future)?;
        let rows = applied(conn)?;
        // Checksums of the bytes, as earlier builds recorded them, become
        // checksums of the tokens, so comment edits pass from now on.
        for row in &rows {
            if let Some(file) = set.file(&row.version)
                && row.checksum == file.sha256
            {
                set_checksum(conn, &row.version, &file.checksum())?;
            }
        }
        work(conn, rows.into_iter().map(|row| row.version).collect())
    })
}

/// The statements' lock timeout (and no statement timeout) for the
/// session. Messages in English where the role may choose, so a lock
/// timeout is recognised whatever the server's language.
pub(super) fn set_timeouts(conn: &mut PgConnection, options: &MigrateOptions) -> Result<(), MigrateError> {
    let _ = conn.batch_execute("SET lc_messages = 'C'");
    conn.batch_execute(&format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = 0",
        options.statement_lock_timeout.as_millis()
    ))?;
    Ok(())
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
            let checksum = file.checksum();
            let run = |conn: &mut PgConnection| -> Result<(), MigrateError> {
                migration
                    .run(conn)
                    .map_err(|err| MigrateError::Other(err.to_string()))?;
                let elapsed = i32::try_from(start.elapsed().as_millis()).unwrap_or(i32::MAX);
                record(conn, file.version, file.description, "migration", &checksum, elapsed)
            };
            let mut tries = 1;
            loop {
                let outcome = if file.run_in_transaction {
                    conn.transaction(run)
                } else {
                    run(conn)
                };
                match outcome {
                    Ok(()) => break,
                    // Rolled back: the database is as before, so it can be
                    // tried again once whoever holds the lock is done.
                    Err(err) if file.run_in_transaction && waited_for_lock(&err) && tries <= options.lock_retries => {
                        let pause = retry_pause(options.lock_retry_pause, tries);
                        tracing::warn!(
                            service = %set.service,
                            version = file.version,
                            try_number = tries,
                            tries_left = options.lock_retries + 1 - tries,
                            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                            error = %err,
                            "a statement of the migration gave up waiting for a lock; rolled back, trying again"
                        );
                        std::thread::sleep(pause);
                        tries += 1;
                    }
                    Err(err) if file.run_in_transaction => return Err(diagnose(conn, set, file, err, tries)),
                    Err(err) => {
                        return Err(MigrateError::FailedOutsideTransaction {
                            version: file.version.to_owned(),
                            file: format!("migrations/{}/{}/up.sql", set.service, file.name),
                            error: err.to_string(),
                        });
                    }
                }
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
fn diagnose(
    conn: &mut PgConnection,
    set: &MigrationSet,
    file: &MigrationFile,
    original: MigrateError,
    tries: u32,
) -> MigrateError {
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
            tries,
        },
        None => MigrateError::Failed {
            version: file.version.to_owned(),
            file: path,
            index: 0,
            statement: "(the whole file)".to_owned(),
            error: original.to_string(),
            tries,
        },
    }
}

fn waited_for_lock(err: &MigrateError) -> bool {
    lock_not_available(&err.to_string())
}

/// The pause before try `tries + 1`: `first`, doubled per try up to 30 s,
/// drawn between half of that and all of it.
fn retry_pause(first: Duration, tries: u32) -> Duration {
    let ceiling = first
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(Duration::from_secs(30));
    let mut byte = [0u8; 1];
    let share = if getrandom::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0
    } else {
        0.5
    };
    ceiling.mul_f64(0.5 + share / 2.0)
}

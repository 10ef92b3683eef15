//! The migration harness: diesel_migrations runs the SQL; this module adds
//! what Flyway users rely on.
//!
//! - A history table, `capsule_schema_history`, with a SHA-256 checksum,
//!   the time and the duration of every applied migration.
//! - `validate`: an applied migration whose file changed, a database that
//!   holds versions this build does not know, and a pending migration that
//!   sorts before an applied one are refused, with what to do.
//! - A PostgreSQL advisory lock with a bounded wait, so replicas starting
//!   together apply each migration once; a waiter says who holds it.
//! - Each migration in its own transaction (unless its `metadata.toml` says
//!   `run_in_transaction = false`), so a failing one leaves the database as
//!   it was before it, and the report names the file, the statement and
//!   PostgreSQL's error.
//! - `revert`, `redo`, `baseline`, and a dry run that applies everything in
//!   a transaction, reports statements and risky locks, then rolls back.
//!
//! Every function here is blocking: call it from `spawn_blocking` or a
//! pool's `interact`.

use std::{collections::BTreeMap, fmt, time::Duration};

use chrono::{DateTime, Utc};
use diesel::{
    Connection, PgConnection, QueryableByName, RunQueryDsl,
    connection::SimpleConnection,
    migration::{Migration, MigrationSource},
    pg::Pg,
    sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz},
};
use diesel_migrations::EmbeddedMigrations;

use crate::config::ServiceKind;

/// One migration directory, as read at build time.
#[derive(Debug)]
pub struct MigrationFile {
    /// `V001`: the text before the first `_`, as diesel reads it.
    pub version: &'static str,
    /// The directory name, `V001__create_users_table`.
    pub name: &'static str,
    /// `create users table`.
    pub description: &'static str,
    pub up: &'static str,
    pub down: Option<&'static str>,
    /// SHA-256 of `up.sql`, hex.
    pub checksum: &'static str,
    pub run_in_transaction: bool,
}

/// The migration files of each service, with their checksums.
pub mod files {
    use super::MigrationFile;
    include!(concat!(env!("OUT_DIR"), "/migration_files.rs"));
}

/// A service's migrations: diesel's embedded set (what runs) and the files
/// it was built from (checksums, statements).
pub struct MigrationSet {
    pub service: ServiceKind,
    pub embedded: &'static EmbeddedMigrations,
    pub files: &'static [MigrationFile],
}

impl MigrationSet {
    pub const fn new(
        service: ServiceKind,
        embedded: &'static EmbeddedMigrations,
        files: &'static [MigrationFile],
    ) -> Self {
        Self {
            service,
            embedded,
            files,
        }
    }

    fn file(&self, version: &str) -> Option<&'static MigrationFile> {
        self.files.iter().find(|file| file.version == version)
    }

    /// diesel's migrations by version; fails when the embedded set and the
    /// files disagree (a build from a dirty tree).
    fn runnable(&self) -> Result<BTreeMap<String, Box<dyn Migration<Pg>>>, MigrateError> {
        let migrations = MigrationSource::<Pg>::migrations(self.embedded)
            .map_err(|err| MigrateError::Other(format!("cannot load the embedded migrations: {err}")))?;
        let by_version: BTreeMap<String, Box<dyn Migration<Pg>>> = migrations
            .into_iter()
            .map(|migration| (migration.name().version().to_string(), migration))
            .collect();
        let embedded: Vec<&str> = by_version.keys().map(String::as_str).collect();
        let files: Vec<&str> = self.files.iter().map(|file| file.version).collect();
        if embedded != files {
            return Err(MigrateError::Other(format!(
                "the embedded {} migrations ({embedded:?}) differ from migrations/{} ({files:?}); rebuild",
                self.service, self.service
            )));
        }
        Ok(by_version)
    }
}

/// What went wrong, said so that an operator knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
    #[error(
        "migration {version} failed and was rolled back: the database is as it was before it.\n  file: {file}\n  statement {index}: {statement}\n  PostgreSQL: {error}"
    )]
    Failed {
        version: String,
        file: String,
        index: usize,
        statement: String,
        error: String,
    },
    #[error("the migration lock of {service} is held by {holder}; gave up after {waited_secs} s")]
    LockTimeout {
        service: ServiceKind,
        holder: String,
        waited_secs: u64,
    },
    #[error("{version} has no down.sql, so it cannot be reverted; write a new migration that undoes it instead")]
    NoDown { version: String },
    #[error("unknown version {version}: this build has {known}")]
    UnknownVersion { version: String, known: String },
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("{0}")]
    Other(String),
}

impl MigrateError {
    /// Errors that retrying cannot fix: a service refuses to start on them.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Failed { .. } | Self::Other(_))
    }
}

fn format_problems(problems: &[Problem]) -> String {
    let mut text = String::from("the database's migration history does not match this build:");
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(&problem.to_string());
    }
    text
}

/// A disagreement between the database's history and this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Modified {
        version: String,
        file: String,
        recorded: String,
        embedded: String,
    },
    UnknownToBuild {
        version: String,
        description: String,
    },
    OutOfOrder {
        version: String,
        latest_applied: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modified {
                version,
                file,
                recorded,
                embedded,
            } => write!(
                f,
                "{version} was changed after it was applied: the database recorded checksum {recorded}, {file} now has {embedded}. \
                 Released migrations are never edited: restore the file and add a new migration instead"
            ),
            Self::UnknownToBuild { version, description } => write!(
                f,
                "{version} ({description}) is applied in the database but unknown to this build: the database is ahead of \
                 this binary. Run a build that has {version}, or revert it with that build"
            ),
            Self::OutOfOrder {
                version,
                latest_applied,
            } => write!(
                f,
                "{version} is pending but sorts before {latest_applied}, which is already applied. \
                 Give it a version after {latest_applied}"
            ),
        }
    }
}

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Baseline,
    Pending,
    Modified,
    MissingFromBuild,
    OutOfOrder,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Applied => "applied",
            Self::Baseline => "baseline",
            Self::Pending => "pending",
            Self::Modified => "MODIFIED",
            Self::MissingFromBuild => "MISSING FROM BUILD",
            Self::OutOfOrder => "OUT OF ORDER",
        })
    }
}

/// One row of `info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InfoRow {
    pub service: ServiceKind,
    pub version: String,
    pub description: String,
    pub state: State,
    pub applied_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i32>,
    pub checksum: String,
    pub transactional: bool,
}

impl serde::Serialize for ServiceKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(QueryableByName, Debug, Clone)]
struct Applied {
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Text)]
    description: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    checksum: String,
    #[diesel(sql_type = Timestamptz)]
    installed_on: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    execution_time_ms: i32,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

const HISTORY_TABLE: &str = "capsule_schema_history";

fn history_exists(conn: &mut PgConnection) -> Result<bool, MigrateError> {
    Ok(
        diesel::sql_query(format!("SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL AS flag"))
            .get_result::<Flag>(conn)?
            .flag,
    )
}

/// Creates the history table if needed. A database migrated by plain
/// diesel (`__diesel_schema_migrations`) has its versions adopted.
fn ensure_history(conn: &mut PgConnection, set: &MigrationSet) -> Result<(), MigrateError> {
    if history_exists(conn)? {
        return Ok(());
    }
    conn.batch_execute(&format!(
        "CREATE TABLE {HISTORY_TABLE} (
            installed_rank BIGSERIAL NOT NULL,
            version TEXT PRIMARY KEY,
            description TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('migration', 'baseline')),
            checksum TEXT NOT NULL,
            installed_by TEXT NOT NULL DEFAULT current_user,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            execution_time_ms INTEGER NOT NULL DEFAULT 0
        )"
    ))?;
    let diesel_table = diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS flag")
        .get_result::<Flag>(conn)?
        .flag;
    if diesel_table {
        #[derive(QueryableByName)]
        struct Version {
            #[diesel(sql_type = Text)]
            version: String,
        }
        let versions = diesel::sql_query("SELECT version FROM __diesel_schema_migrations ORDER BY version")
            .load::<Version>(conn)?;
        for Version { version } in versions {
            let (description, checksum) = set
                .file(&version)
                .map_or(("adopted from diesel", ""), |file| (file.description, file.checksum));
            record(conn, &version, description, "migration", checksum, 0)?;
        }
    }
    Ok(())
}

fn record(
    conn: &mut PgConnection,
    version: &str,
    description: &str,
    kind: &str,
    checksum: &str,
    execution_time_ms: i32,
) -> Result<(), MigrateError> {
    diesel::sql_query(format!(
        "INSERT INTO {HISTORY_TABLE} (version, description, kind, checksum, execution_time_ms) VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind::<Text, _>(version)
    .bind::<Text, _>(description)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(checksum)
    .bind::<Integer, _>(execution_time_ms)
    .execute(conn)?;
    Ok(())
}

fn applied(conn: &mut PgConnection) -> Result<Vec<Applied>, MigrateError> {
    if !history_exists(conn)? {
        return Ok(Vec::new());
    }
    Ok(diesel::sql_query(format!(
        "SELECT version, description, kind, checksum, installed_on, execution_time_ms FROM {HISTORY_TABLE} ORDER BY version"
    ))
    .load(conn)?)
}

/// Every version known to the build or the database, with its state.
pub fn info(conn: &mut PgConnection, set: &MigrationSet) -> Result<Vec<InfoRow>, MigrateError> {
    let applied = applied(conn)?;
    let latest_applied = applied.iter().map(|row| row.version.clone()).max();
    let mut rows: Vec<InfoRow> = set
        .files
        .iter()
        .map(|file| {
            let record = applied.iter().find(|row| row.version == file.version);
            let state = match record {
                Some(row) if row.kind == "baseline" => State::Baseline,
                Some(row) if row.checksum != file.checksum => State::Modified,
                Some(_) => State::Applied,
                None if latest_applied.as_deref().is_some_and(|latest| file.version < latest) => State::OutOfOrder,
                None => State::Pending,
            };
            InfoRow {
                service: set.service,
                version: file.version.to_owned(),
                description: file.description.to_owned(),
                state,
                applied_at: record.map(|row| row.installed_on),
                duration_ms: record.map(|row| row.execution_time_ms),
                checksum: file.checksum.to_owned(),
                transactional: file.run_in_transaction,
            }
        })
        .collect();
    for row in applied.iter().filter(|row| set.file(&row.version).is_none()) {
        rows.push(InfoRow {
            service: set.service,
            version: row.version.clone(),
            description: row.description.clone(),
            state: State::MissingFromBuild,
            applied_at: Some(row.installed_on),
            duration_ms: Some(row.execution_time_ms),
            checksum: row.checksum.clone(),
            transactional: true,
        });
    }
    rows.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(rows)
}

/// The disagreements between the database's history and this build.
pub fn validate(conn: &mut PgConnection, set: &MigrationSet) -> Result<(), MigrateError> {
    let rows = info(conn, set)?;
    let latest_applied = rows
        .iter()
        .filter(|row| {
            matches!(
                row.state,
                State::Applied | State::Baseline | State::Modified | State::MissingFromBuild
            )
        })
        .map(|row| row.version.clone())
        .max()
        .unwrap_or_default();
    let recorded = applied(conn)?;
    let problems: Vec<Problem> = rows
        .iter()
        .filter_map(|row| match row.state {
            State::Modified => Some(Problem::Modified {
                version: row.version.clone(),
                file: format!(
                    "migrations/{}/{}/up.sql",
                    set.service,
                    set.file(&row.version).map_or("?", |file| file.name)
                ),
                recorded: recorded
                    .iter()
                    .find(|applied| applied.version == row.version)
                    .map_or_else(String::new, |applied| applied.checksum.clone()),
                embedded: row.checksum.clone(),
            }),
            State::MissingFromBuild => Some(Problem::UnknownToBuild {
                version: row.version.clone(),
                description: row.description.clone(),
            }),
            State::OutOfOrder => Some(Problem::OutOfOrder {
                version: row.version.clone(),
                latest_applied: latest_applied.clone(),
            }),
            _ => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::Invalid(problems))
    }
}

/// Options for [`migrate`].
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// How long to wait for another process's migration lock.
    pub lock_wait: Duration,
    /// `lock_timeout` for the migration's statements, so a migration waiting
    /// on a busy table fails instead of queueing every query behind it.
    pub statement_lock_timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_secs(60),
            statement_lock_timeout: Duration::from_secs(10),
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

/// The advisory lock that serialises a service's migrations: a constant per
/// service, so every replica and every `capsule migrate` agrees.
pub fn lock_key(service: ServiceKind) -> i64 {
    // "capsule" in ASCII, then the service's index.
    0x6361_7073_756c_6500 + service as i64
}

/// Who holds the service's migration lock, for people.
fn lock_holder(conn: &mut PgConnection, service: ServiceKind) -> String {
    #[derive(QueryableByName)]
    struct Holder {
        #[diesel(sql_type = Integer)]
        pid: i32,
        #[diesel(sql_type = Nullable<Text>)]
        application_name: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        client: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        state: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        held_secs: Option<i64>,
    }
    let key = lock_key(service);
    let holder = diesel::sql_query(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.state, \
                extract(epoch FROM now() - a.xact_start)::bigint AS held_secs \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid AND l.objsubid = 1 \
         LIMIT 1",
    )
    .bind::<BigInt, _>(key)
    .get_result::<Holder>(conn);
    match holder {
        Ok(h) => format!(
            "pid {} ({}, from {}, {}{})",
            h.pid,
            h.application_name
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "no application name".to_owned()),
            h.client.unwrap_or_else(|| "a local socket".to_owned()),
            h.state.unwrap_or_else(|| "unknown state".to_owned()),
            h.held_secs.map(|secs| format!(", for {secs} s")).unwrap_or_default()
        ),
        Err(_) => "another session (it has just released it or is not visible to this role)".to_owned(),
    }
}

/// Runs `work` while holding the service's migration lock, waiting at most
/// `wait` for it and saying who holds it meanwhile.
pub fn with_lock<T>(
    conn: &mut PgConnection,
    service: ServiceKind,
    wait: Duration,
    work: impl FnOnce(&mut PgConnection) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    let key = lock_key(service);
    let start = std::time::Instant::now();
    let mut announced = false;
    loop {
        let got = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
            .bind::<BigInt, _>(key)
            .get_result::<Flag>(conn)?
            .flag;
        if got {
            break;
        }
        if start.elapsed() >= wait {
            return Err(MigrateError::LockTimeout {
                service,
                holder: lock_holder(conn, service),
                waited_secs: wait.as_secs(),
            });
        }
        if !announced {
            tracing::info!(service = %service, holder = %lock_holder(conn, service), "waiting for the migration lock");
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = work(conn);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(conn);
    let value = result?;
    unlocked?;
    Ok(value)
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
    conn.batch_execute(&format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = 0",
        options.statement_lock_timeout.as_millis()
    ))?;
    with_lock(conn, set.service, options.lock_wait, |conn| {
        ensure_history(conn, set)?;
        validate(conn, set)?;
        let done: Vec<String> = applied(conn)?.into_iter().map(|row| row.version).collect();
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

/// Applies every pending migration inside one transaction, records what
/// each statement does, then rolls everything back. Migrations that cannot
/// run in a transaction are listed, not run.
pub fn dry_run(conn: &mut PgConnection, set: &MigrationSet) -> Result<Vec<Applied1>, MigrateError> {
    let mut report = Vec::new();
    let result = conn.transaction::<(), MigrateError, _>(|conn| {
        ensure_history(conn, set)?;
        validate(conn, set)?;
        let done: Vec<String> = applied(conn)?.into_iter().map(|row| row.version).collect();
        for file in set.files.iter().filter(|file| !done.iter().any(|v| v == file.version)) {
            let statements = split_statements(file.up);
            let mut warnings = Vec::new();
            let start = std::time::Instant::now();
            if file.run_in_transaction {
                for (index, statement) in statements.iter().enumerate() {
                    let before = exclusive_locks(conn)?;
                    if let Err(err) = conn.batch_execute(statement) {
                        return Err(MigrateError::Failed {
                            version: file.version.to_owned(),
                            file: format!("migrations/{}/{}/up.sql", set.service, file.name),
                            index: index + 1,
                            statement: statement.clone(),
                            error: err.to_string(),
                        });
                    }
                    for table in exclusive_locks(conn)?.into_iter().filter(|table| !before.contains(table)) {
                        if table_has_rows(conn, &table)? {
                            warnings.push(format!(
                                "statement {}: takes an ACCESS EXCLUSIVE lock on {table}, which has rows: reads and writes wait until the migration commits",
                                index + 1
                            ));
                        }
                    }
                    if let Some(table) = index_without_concurrently(statement)
                        && table_has_rows(conn, &table)?
                    {
                        warnings.push(format!(
                            "statement {}: builds an index on {table} without CONCURRENTLY: writes to {table} wait until it is built",
                            index + 1
                        ));
                    }
                }
                record(conn, file.version, file.description, "migration", file.checksum, 0)?;
            } else {
                warnings.push("runs outside a transaction (metadata.toml): not executed by the dry run".to_owned());
            }
            report.push(Applied1 {
                version: file.version.to_owned(),
                description: file.description.to_owned(),
                duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                statements: statements.iter().map(|s| summarize(s)).collect(),
                warnings,
                transactional: file.run_in_transaction,
            });
        }
        Err(MigrateError::Other("dry run".to_owned()))
    });
    match result {
        Err(MigrateError::Other(reason)) if reason == "dry run" => Ok(report),
        Err(err) => Err(err),
        Ok(()) => Ok(report),
    }
}

fn exclusive_locks(conn: &mut PgConnection) -> Result<Vec<String>, MigrateError> {
    #[derive(QueryableByName)]
    struct Table {
        #[diesel(sql_type = Text)]
        name: String,
    }
    Ok(diesel::sql_query(
        "SELECT c.oid::regclass::text AS name FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE l.pid = pg_backend_pid() AND l.mode = 'AccessExclusiveLock' AND c.relkind IN ('r', 'p')",
    )
    .load::<Table>(conn)?
    .into_iter()
    .map(|table| table.name)
    .collect())
}

fn table_has_rows(conn: &mut PgConnection, table: &str) -> Result<bool, MigrateError> {
    let exists = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS flag")
        .bind::<Text, _>(table)
        .get_result::<Flag>(conn)?
        .flag;
    if !exists {
        return Ok(false);
    }
    Ok(
        diesel::sql_query(format!("SELECT EXISTS (SELECT 1 FROM {table}) AS flag"))
            .get_result::<Flag>(conn)?
            .flag,
    )
}

/// The table of a `CREATE [UNIQUE] INDEX` without `CONCURRENTLY`.
fn index_without_concurrently(statement: &str) -> Option<String> {
    let words: Vec<String> = statement
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .flat_map(str::split_whitespace)
        .map(|word| word.to_ascii_lowercase())
        .collect();
    let starts = words.first().is_some_and(|w| w == "create")
        && (words.get(1).is_some_and(|w| w == "index")
            || (words.get(1).is_some_and(|w| w == "unique") && words.get(2).is_some_and(|w| w == "index")));
    if !starts || words.iter().any(|w| w == "concurrently") {
        return None;
    }
    let on = words.iter().position(|w| w == "on")?;
    let mut table = words.get(on + 1)?;
    if table == "only" {
        table = words.get(on + 2)?;
    }
    Some(table.split('(').next().unwrap_or(table).trim_matches('"').to_owned())
}

fn summarize(statement: &str) -> String {
    let line = statement
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line
    }
}

/// Splits SQL into statements on `;`, respecting quotes, comments and
/// dollar-quoted bodies. Comment-only pieces are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|offset| i + 1 + offset);
                if let Some(end) = tag_end.filter(|&end| bytes.get(end) == Some(&b'$')) {
                    let tag = &sql[i..=end];
                    match sql[end + 1..].find(tag) {
                        Some(close) => i = end + 1 + close + tag.len() - 1,
                        None => i = bytes.len(),
                    }
                }
            }
            b';' => {
                statements.push(sql[start..=i].to_owned());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        statements.push(sql[start..].to_owned());
    }
    statements
        .into_iter()
        .map(|statement| statement.trim().to_owned())
        .filter(|statement| {
            statement
                .lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
        })
        .collect()
}

/// Reverts applied migrations, newest first, down to (not including)
/// `to`; without `to`, the newest one only.
pub fn revert(
    conn: &mut PgConnection,
    set: &MigrationSet,
    to: Option<&str>,
    options: &MigrateOptions,
) -> Result<Vec<String>, MigrateError> {
    if let Some(target) = to
        && target != "0"
        && set.file(target).is_none()
    {
        return Err(MigrateError::UnknownVersion {
            version: target.to_owned(),
            known: set.files.iter().map(|file| file.version).collect::<Vec<_>>().join(", "),
        });
    }
    let runnable = set.runnable()?;
    conn.batch_execute(&format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = 0",
        options.statement_lock_timeout.as_millis()
    ))?;
    with_lock(conn, set.service, options.lock_wait, |conn| {
        ensure_history(conn, set)?;
        validate(conn, set)?;
        let mut done: Vec<String> = applied(conn)?.into_iter().map(|row| row.version).collect();
        done.reverse();
        let victims: Vec<String> = match to {
            None => done.into_iter().take(1).collect(),
            Some(target) => done.into_iter().filter(|version| version.as_str() > target).collect(),
        };
        for version in &victims {
            let file = set.file(version).ok_or_else(|| MigrateError::UnknownVersion {
                version: version.clone(),
                known: String::new(),
            })?;
            if file.down.is_none() {
                return Err(MigrateError::NoDown {
                    version: version.clone(),
                });
            }
        }
        for version in &victims {
            let migration = &runnable[version];
            let undo = |conn: &mut PgConnection| -> Result<(), MigrateError> {
                migration
                    .revert(conn)
                    .map_err(|err| MigrateError::Other(format!("reverting {version} failed: {err}")))?;
                diesel::sql_query(format!("DELETE FROM {HISTORY_TABLE} WHERE version = $1"))
                    .bind::<Text, _>(version)
                    .execute(conn)?;
                Ok(())
            };
            conn.transaction(undo)?;
        }
        Ok(victims)
    })
}

/// Records every version up to `version` as applied without running it:
/// adopting a database that already has that schema.
pub fn baseline(conn: &mut PgConnection, set: &MigrationSet, version: &str) -> Result<Vec<String>, MigrateError> {
    if set.file(version).is_none() {
        return Err(MigrateError::UnknownVersion {
            version: version.to_owned(),
            known: set.files.iter().map(|file| file.version).collect::<Vec<_>>().join(", "),
        });
    }
    with_lock(conn, set.service, MigrateOptions::default().lock_wait, |conn| {
        ensure_history(conn, set)?;
        let done: Vec<String> = applied(conn)?.into_iter().map(|row| row.version).collect();
        if !done.is_empty() {
            return Err(MigrateError::Other(format!(
                "the {} database already has a migration history ({}); baseline adopts a database that has none",
                set.service,
                done.join(", ")
            )));
        }
        let mut recorded = Vec::new();
        for file in set.files.iter().filter(|file| file.version <= version) {
            record(conn, file.version, file.description, "baseline", file.checksum, 0)?;
            recorded.push(file.version.to_owned());
        }
        Ok(recorded)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_semicolons_outside_quotes_comments_and_bodies() {
        let sql = "-- header; not a statement\nCREATE TABLE a (x text DEFAULT ';');\n\
                   CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN NEW.x = 'a;b'; RETURN NEW; END; $$ LANGUAGE plpgsql;\n\
                   /* block; comment */ INSERT INTO a VALUES ('it''s; fine');\n-- trailing comment\n";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[1].contains("RETURN NEW; END; $$ LANGUAGE plpgsql;"));
        assert!(statements[2].ends_with("('it''s; fine');"));
    }

    #[test]
    fn index_builds_without_concurrently_are_found() {
        assert_eq!(
            index_without_concurrently("CREATE INDEX idx ON users (email);").as_deref(),
            Some("users")
        );
        assert_eq!(
            index_without_concurrently("create unique index i on only projects(slug);").as_deref(),
            Some("projects")
        );
        assert_eq!(
            index_without_concurrently("CREATE INDEX CONCURRENTLY i ON users (email);"),
            None
        );
        assert_eq!(index_without_concurrently("CREATE TABLE users (id int);"), None);
    }

    /// The append-only guard: every released migration (a line of
    /// `migrations/<svc>/checksums`) must still be in the tree, unchanged,
    /// under the same name; a new migration must be recorded there.
    #[test]
    fn released_migrations_are_never_edited_or_reused() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut problems = Vec::new();
        for (service, files) in [
            ("auth", files::AUTH),
            ("project", files::PROJECT),
            ("deploy", files::DEPLOY),
        ] {
            let lock = std::fs::read_to_string(root.join(service).join("checksums")).unwrap();
            let released: Vec<(&str, &str, &str)> = lock
                .lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .map(|line| {
                    let mut parts = line.split_whitespace();
                    (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
                })
                .collect();
            for (version, checksum, name) in &released {
                match files.iter().find(|file| file.version == *version) {
                    None => problems.push(format!(
                        "migrations/{service}/{name} was released but is gone: restore it (released migrations stay forever)"
                    )),
                    Some(file) if file.name != *name => problems.push(format!(
                        "version {version} of {service} is reused by {} but was released as {name}: \
                         restore {name} and give the new migration the next free version",
                        file.name
                    )),
                    Some(file) if file.checksum != *checksum => problems.push(format!(
                        "migrations/{service}/{name}/up.sql changed after release (recorded {checksum}, now {}): \
                         released migrations are never edited; restore it and add a new migration instead",
                        file.checksum
                    )),
                    Some(_) => {}
                }
            }
            for file in files
                .iter()
                .filter(|file| !released.iter().any(|(v, _, _)| *v == file.version))
            {
                problems.push(format!(
                    "migrations/{service}/{} is not recorded: append this line to migrations/{service}/checksums:\n{} {} {}",
                    file.name, file.version, file.checksum, file.name
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_service_has_its_files_in_order_with_checksums() {
        for files in [files::AUTH, files::PROJECT, files::DEPLOY] {
            assert!(!files.is_empty());
            assert!(files.windows(2).all(|pair| pair[0].version < pair[1].version));
            assert!(files.iter().all(|file| file.checksum.len() == 64));
        }
    }
}

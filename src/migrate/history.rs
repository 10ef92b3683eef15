//! The history table, `capsule_schema_history`, and what it says.

use std::fmt;

use chrono::{DateTime, Utc};
use diesel::{
    PgConnection, QueryableByName, RunQueryDsl,
    connection::SimpleConnection,
    sql_types::{Bool, Integer, Text, Timestamptz},
};

use super::{error::MigrateError, set::MigrationSet};
use crate::config::ServiceKind;

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    /// Applied, with its checksum re-recorded by `repair`.
    Repaired,
    Baseline,
    Pending,
    Modified,
    MissingFromBuild,
    /// Applied by a newer build: after every version this build knows.
    Future,
    OutOfOrder,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Applied => "applied",
            Self::Repaired => "repaired",
            Self::Baseline => "baseline",
            Self::Pending => "pending",
            Self::Modified => "MODIFIED",
            Self::MissingFromBuild => "MISSING FROM BUILD",
            Self::Future => "future",
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
    /// The latest repair of an applied migration, when it is `repaired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
}

/// One `repair`: a person decided that an applied migration's new text
/// does what the old one did, and said why.
#[derive(QueryableByName, Debug, Clone, serde::Serialize)]
pub struct Repair {
    #[diesel(sql_type = Text)]
    pub version: String,
    #[diesel(sql_type = Text)]
    pub old_checksum: String,
    #[diesel(sql_type = Text)]
    pub new_checksum: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// Who ran it, as the command saw it (user@host).
    #[diesel(sql_type = Text)]
    pub operator: String,
    /// The database role it ran as.
    #[diesel(sql_type = Text)]
    pub repaired_by: String,
    #[diesel(sql_type = Timestamptz)]
    pub repaired_on: DateTime<Utc>,
}

impl serde::Serialize for ServiceKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(QueryableByName, Debug, Clone)]
pub(super) struct Applied {
    #[diesel(sql_type = Text)]
    pub(super) version: String,
    #[diesel(sql_type = Text)]
    pub(super) description: String,
    #[diesel(sql_type = Text)]
    pub(super) kind: String,
    #[diesel(sql_type = Text)]
    pub(super) checksum: String,
    #[diesel(sql_type = Timestamptz)]
    pub(super) installed_on: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub(super) execution_time_ms: i32,
}

#[derive(QueryableByName)]
pub(super) struct Flag {
    #[diesel(sql_type = Bool)]
    pub(super) flag: bool,
}

pub(super) const HISTORY_TABLE: &str = "capsule_schema_history";
/// Every `repair`, kept: the history table holds only the latest checksum.
pub(super) const REPAIRS_TABLE: &str = "capsule_schema_repairs";

pub(super) fn history_exists(conn: &mut PgConnection) -> Result<bool, MigrateError> {
    Ok(
        diesel::sql_query(format!("SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL AS flag"))
            .get_result::<Flag>(conn)?
            .flag,
    )
}

/// Creates the history table if needed. A database migrated by plain
/// diesel (`__diesel_schema_migrations`) has its versions adopted.
pub(super) fn ensure_history(conn: &mut PgConnection, set: &MigrationSet) -> Result<(), MigrateError> {
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
                .map_or(("adopted from diesel", String::new()), |file| {
                    (file.description, file.checksum())
                });
            record(conn, &version, description, "migration", &checksum, 0)?;
        }
    }
    Ok(())
}

pub(super) fn record(
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

/// Records `checksum` as the one of `version`.
pub(super) fn set_checksum(conn: &mut PgConnection, version: &str, checksum: &str) -> Result<(), MigrateError> {
    diesel::sql_query(format!("UPDATE {HISTORY_TABLE} SET checksum = $2 WHERE version = $1"))
        .bind::<Text, _>(version)
        .bind::<Text, _>(checksum)
        .execute(conn)?;
    Ok(())
}

/// Every repair, oldest first (none before the first).
pub(super) fn repairs(conn: &mut PgConnection) -> Result<Vec<Repair>, MigrateError> {
    let exists = diesel::sql_query(format!("SELECT to_regclass('{REPAIRS_TABLE}') IS NOT NULL AS flag"))
        .get_result::<Flag>(conn)?
        .flag;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(diesel::sql_query(format!(
        "SELECT version, old_checksum, new_checksum, reason, operator, repaired_by, repaired_on \
         FROM {REPAIRS_TABLE} ORDER BY id"
    ))
    .load(conn)?)
}

pub(super) fn applied(conn: &mut PgConnection) -> Result<Vec<Applied>, MigrateError> {
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
    let repairs = repairs(conn)?;
    let latest_applied = applied.iter().map(|row| row.version.clone()).max();
    let mut rows: Vec<InfoRow> = set
        .files
        .iter()
        .map(|file| {
            let record = applied.iter().find(|row| row.version == file.version);
            // The repair that recorded the checksum the history holds now.
            let repair = record.and_then(|row| {
                repairs
                    .iter()
                    .rev()
                    .find(|repair| repair.version == row.version)
                    .filter(|repair| repair.new_checksum == row.checksum && repair.repaired_on >= row.installed_on)
            });
            let state = match record {
                Some(row) if row.kind == "baseline" => State::Baseline,
                Some(row) if !file.matches(&row.checksum) => State::Modified,
                Some(_) if repair.is_some() => State::Repaired,
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
                checksum: file.checksum(),
                transactional: file.run_in_transaction,
                repair: repair.cloned(),
            }
        })
        .collect();
    let newest_known = set.files.last().map_or("", |file| file.version);
    for row in applied.iter().filter(|row| set.file(&row.version).is_none()) {
        rows.push(InfoRow {
            service: set.service,
            version: row.version.clone(),
            description: row.description.clone(),
            state: if row.version.as_str() > newest_known {
                State::Future
            } else {
                State::MissingFromBuild
            },
            applied_at: Some(row.installed_on),
            duration_ms: Some(row.execution_time_ms),
            checksum: row.checksum.clone(),
            transactional: true,
            repair: None,
        });
    }
    rows.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(rows)
}

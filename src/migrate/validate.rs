//! Checking the database's history against this build.

use diesel::PgConnection;

use super::{
    error::{MigrateError, Problem},
    history::{State, applied, info},
    set::MigrationSet,
};

/// Whether a database holding migrations newer than this build (applied
/// by the next release, in an expand/contract rollout) may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Future {
    /// Served, as long as every migration this build knows is applied
    /// unchanged: the newer ones only added what this build ignores.
    Allow,
    Refuse,
}

/// The disagreements between the database's history and this build; when
/// there are none, the versions the database holds beyond this build
/// (only ever non-empty with [`Future::Allow`]).
pub fn validate(conn: &mut PgConnection, set: &MigrationSet, future: Future) -> Result<Vec<String>, MigrateError> {
    let rows = info(conn, set)?;
    let latest_applied = rows
        .iter()
        .filter(|row| {
            matches!(
                row.state,
                State::Applied
                    | State::Repaired
                    | State::Baseline
                    | State::Modified
                    | State::MissingFromBuild
                    | State::Future
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
            State::Future if future == Future::Refuse => Some(Problem::Ahead {
                version: row.version.clone(),
                description: row.description.clone(),
                service: set.service,
            }),
            State::OutOfOrder => Some(Problem::OutOfOrder {
                version: row.version.clone(),
                latest_applied: latest_applied.clone(),
            }),
            _ => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(rows
            .into_iter()
            .filter(|row| row.state == State::Future)
            .map(|row| row.version)
            .collect())
    } else {
        Err(MigrateError::Invalid(problems))
    }
}

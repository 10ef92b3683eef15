//! Checking the database's history against this build.

use diesel::PgConnection;

use super::{
    error::{MigrateError, Problem},
    history::{State, applied, info},
    set::MigrationSet,
};

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

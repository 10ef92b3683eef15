//! Reverting and baselining.

use diesel::{Connection, PgConnection, RunQueryDsl, sql_types::Text};

use super::{
    apply::{MigrateOptions, under_lock},
    error::MigrateError,
    history::{HISTORY_TABLE, applied, ensure_history, record},
    lock::with_lock,
    set::MigrationSet,
    validate::Future,
};

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
    // Never undo a migration a newer build's migrations may stand on.
    under_lock(conn, set, options, Future::Refuse, |conn, mut done| {
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
            // A migration that cannot run in a transaction (metadata.toml)
            // cannot be undone in one either.
            if set.file(version).is_none_or(|file| file.run_in_transaction) {
                conn.transaction(undo)?;
            } else {
                undo(conn)?;
            }
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
            record(conn, file.version, file.description, "baseline", &file.checksum(), 0)?;
            recorded.push(file.version.to_owned());
        }
        Ok(recorded)
    })
}

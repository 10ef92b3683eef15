//! `repair`: re-recording the checksum of one applied migration after a
//! person decided that its changed text does what the applied one did.

use diesel::{Connection, PgConnection, RunQueryDsl, connection::SimpleConnection, sql_types::Text};

use super::{
    apply::MigrateOptions,
    error::MigrateError,
    history::{REPAIRS_TABLE, Repair, applied, ensure_history, repairs, set_checksum},
    lock::with_lock,
    set::MigrationSet,
};

/// Records the build's checksum for `version`, keeping the old one, the
/// reason and who did it in `capsule_schema_repairs`. One version at a
/// time, with a reason: there is no "repair everything".
pub fn repair(
    conn: &mut PgConnection,
    set: &MigrationSet,
    version: &str,
    reason: &str,
    operator: &str,
    options: &MigrateOptions,
) -> Result<Repair, MigrateError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(MigrateError::Other(
            "repair needs --reason: say why the changed migration does what the applied one did".to_owned(),
        ));
    }
    let file = set.file(version).ok_or_else(|| MigrateError::UnknownVersion {
        version: version.to_owned(),
        known: set.files.iter().map(|file| file.version).collect::<Vec<_>>().join(", "),
    })?;
    with_lock(conn, set.service, options.lock_wait, |conn| {
        ensure_history(conn, set)?;
        let recorded = applied(conn)?
            .into_iter()
            .find(|row| row.version == version)
            .ok_or_else(|| {
                MigrateError::Other(format!(
                    "{version} is not applied to the {} database: there is no checksum to repair",
                    set.service
                ))
            })?;
        if file.matches(&recorded.checksum) {
            return Err(MigrateError::Other(format!(
                "{version}'s recorded checksum already matches migrations/{}/{}/up.sql: nothing to repair",
                set.service, file.name
            )));
        }
        let checksum = file.checksum();
        conn.transaction(|conn| {
            conn.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {REPAIRS_TABLE} (
                    id BIGSERIAL PRIMARY KEY,
                    version TEXT NOT NULL,
                    old_checksum TEXT NOT NULL,
                    new_checksum TEXT NOT NULL,
                    reason TEXT NOT NULL CHECK (reason <> ''),
                    operator TEXT NOT NULL,
                    repaired_by TEXT NOT NULL DEFAULT current_user,
                    repaired_on TIMESTAMPTZ NOT NULL DEFAULT now()
                )"
            ))?;
            diesel::sql_query(format!(
                "INSERT INTO {REPAIRS_TABLE} (version, old_checksum, new_checksum, reason, operator) \
                 VALUES ($1, $2, $3, $4, $5)"
            ))
            .bind::<Text, _>(version)
            .bind::<Text, _>(&recorded.checksum)
            .bind::<Text, _>(&checksum)
            .bind::<Text, _>(reason)
            .bind::<Text, _>(operator)
            .execute(conn)?;
            set_checksum(conn, version, &checksum)
        })?;
        tracing::warn!(
            service = %set.service,
            version,
            old_checksum = %recorded.checksum,
            new_checksum = %checksum,
            reason,
            operator,
            "re-recorded the checksum of an applied migration"
        );
        repairs(conn)?
            .into_iter()
            .rev()
            .find(|repair| repair.version == version)
            .ok_or_else(|| MigrateError::Other("the repair was not recorded".to_owned()))
    })
}

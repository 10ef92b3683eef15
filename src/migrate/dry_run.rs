//! A dry run: everything applied in one transaction, reported, rolled back.

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_types::Text};

use super::{
    apply::{Applied1, MigrateOptions, set_timeouts},
    error::MigrateError,
    history::{Flag, applied, ensure_history, record},
    lock::with_lock,
    set::MigrationSet,
    statements::split_statements,
    validate::{Future, validate},
};

/// Applies every pending migration inside one transaction, records what
/// each statement does, then rolls everything back. Migrations that cannot
/// run in a transaction are listed, not run. It holds the migration lock
/// and runs under the same `lock_timeout` as a real apply, so it waits and
/// fails where one would.
pub fn dry_run(
    conn: &mut PgConnection,
    set: &MigrationSet,
    options: &MigrateOptions,
) -> Result<Vec<Applied1>, MigrateError> {
    set_timeouts(conn, options)?;
    with_lock(conn, set.service, options.lock_wait, |conn| rolled_back(conn, set))
}

fn rolled_back(conn: &mut PgConnection, set: &MigrationSet) -> Result<Vec<Applied1>, MigrateError> {
    let mut report = Vec::new();
    let result = conn.transaction::<(), MigrateError, _>(|conn| {
        ensure_history(conn, set)?;
        validate(conn, set, Future::Allow)?;
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
                            tries: 1,
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
                record(conn, file.version, file.description, "migration", &file.checksum(), 0)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

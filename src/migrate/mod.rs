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
//! - Checksums of the SQL's tokens: comment and layout edits are not
//!   changes; `repair` re-records one changed migration with a reason.
//! - A statement that gives up waiting for a lock (`lock_timeout`) rolls its
//!   migration back, which is tried again after a growing, jittered pause.
//! - `revert`, `redo`, `baseline`, and a dry run that applies everything in
//!   a transaction, reports statements and risky locks, then rolls back.
//!
//! Every function here is blocking: call it from `spawn_blocking` or a
//! pool's `interact`.
//!
//! The parts, lowest first: `checksum`, `set` (the files built in),
//! `statements`, `error`, `history` (the tables), `validate`, `lock`, then
//! what runs: `apply`, `dry_run`, `revert` (and `baseline`), `repair`.

mod apply;
mod checksum;
mod dry_run;
mod error;
mod history;
mod lint;
mod lock;
mod repair;
mod revert;
mod set;
mod statements;
mod validate;

pub use apply::{Applied1, MigrateOptions, migrate};
pub use checksum::checksum;
pub use dry_run::dry_run;
pub use error::{MigrateError, Problem};
pub use history::{InfoRow, Repair, State, info};
pub use lint::{Finding, Rule, last_release, lint};
pub use lock::{lock_key, with_lock};
pub use repair::repair;
pub use revert::{baseline, revert};
pub use set::{MigrationFile, MigrationSet, files};
pub use statements::split_statements;
pub use validate::{Future, validate};

#[cfg(test)]
mod tests {
    use super::*;

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
                    Some(file) if file.checksum() != *checksum => problems.push(format!(
                        "migrations/{service}/{name}/up.sql changed after release (recorded {checksum}, now {}): \
                         released migrations are never edited (comments and layout may change); restore it and \
                         add a new migration instead",
                        file.checksum()
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
                    file.name,
                    file.version,
                    file.checksum(),
                    file.name
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
            assert!(
                files
                    .iter()
                    .all(|file| file.sha256.len() == 64 && file.checksum().len() == 64)
            );
        }
    }
}

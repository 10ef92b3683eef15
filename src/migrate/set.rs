//! A service's migrations as built into the binary.

use std::collections::BTreeMap;

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel_migrations::EmbeddedMigrations;

use super::error::MigrateError;
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
    /// SHA-256 of `up.sql`'s bytes, hex: what builds before checksums
    /// ignored comments recorded, still accepted for them.
    pub sha256: &'static str,
    pub run_in_transaction: bool,
    /// `metadata.toml`, as written (empty when there is none).
    pub metadata: &'static str,
}

impl MigrationFile {
    /// The checksum recorded for it: its SQL's tokens, without comments
    /// and layout ([`super::checksum::checksum`]).
    pub fn checksum(&self) -> String {
        super::checksum::checksum(self.up)
    }

    /// Whether a recorded checksum is this file's, in either form.
    pub fn matches(&self, recorded: &str) -> bool {
        recorded == self.sha256 || recorded == self.checksum()
    }
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

    pub(super) fn file(&self, version: &str) -> Option<&'static MigrationFile> {
        self.files.iter().find(|file| file.version == version)
    }

    /// diesel's migrations by version; fails when the embedded set and the
    /// files disagree (a build from a dirty tree).
    pub(super) fn runnable(&self) -> Result<BTreeMap<String, Box<dyn Migration<Pg>>>, MigrateError> {
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

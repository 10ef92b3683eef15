//! What went wrong, and the disagreements validation finds.

use std::fmt;

use crate::config::ServiceKind;

/// What went wrong, said so that an operator knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
    #[error(
        "migration {version} failed{} and was rolled back: the database is as it was before it.\n  file: {file}\n  statement {index}: {statement}\n  PostgreSQL: {error}",
        tries_note(*.tries)
    )]
    Failed {
        version: String,
        file: String,
        index: usize,
        statement: String,
        error: String,
        /// How many times it was tried (more than once after lock timeouts).
        tries: u32,
    },
    #[error(
        "migration {version} failed outside a transaction (its metadata.toml says run_in_transaction = false), so \
         it was NOT rolled back: the statements before the failing one stay applied and {version} is not recorded.\n  \
         file: {file}\n  PostgreSQL: {error}\n  \
         Check what it left behind before applying again: an index built CONCURRENTLY that failed stays as an \
         INVALID index (see \\d in psql, or pg_index.indisvalid) and must be dropped with DROP INDEX CONCURRENTLY; \
         objects created by earlier statements exist and make a second try fail unless they use IF NOT EXISTS"
    )]
    FailedOutsideTransaction {
        version: String,
        file: String,
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
    /// A migration that still could not get its locks after its retries
    /// is not: the service tries again later.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Failed { error, .. } => !lock_not_available(error),
            Self::Invalid(_) | Self::FailedOutsideTransaction { .. } | Self::Other(_) => true,
            Self::LockTimeout { .. } | Self::NoDown { .. } | Self::UnknownVersion { .. } | Self::Database(_) => false,
        }
    }
}

/// Whether PostgreSQL's message says a statement gave up waiting for a
/// lock (SQLSTATE 55P03: `lock_timeout`, or `NOWAIT`). diesel does not
/// pass SQLSTATE on, so the (English) message decides; the harness asks
/// for English messages where the role may.
pub(super) fn lock_not_available(message: &str) -> bool {
    message.contains("canceling statement due to lock timeout") || message.contains("could not obtain lock on")
}

fn tries_note(tries: u32) -> String {
    if tries > 1 {
        format!(" {tries} times (each time a statement gave up waiting for a lock)")
    } else {
        String::new()
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
    Ahead {
        version: String,
        description: String,
        service: ServiceKind,
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
                "{version} ({description}) is applied in the database but missing from this build, which knows later \
                 versions: a released migration was removed. Restore its folder, or revert it with the build that has it"
            ),
            Self::Ahead {
                version,
                description,
                service,
            } => write!(
                f,
                "{version} ({description}) is applied in the database but newer than this build: the database is ahead \
                 of this binary and {}_MIGRATE_ALLOW_FUTURE is false. Run a build that has {version}, revert it with \
                 that build, or allow a database ahead of its binary",
                service.env_prefix()
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

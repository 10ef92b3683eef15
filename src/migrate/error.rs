//! What went wrong, and the disagreements validation finds.

use std::fmt;

use crate::config::ServiceKind;

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

//! The one mapping of database trouble to gRPC statuses.

use tonic::Status;

/// Why a database call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had (pool timeout, database down).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

impl DbError {
    /// True for a unique-constraint violation, optionally on `constraint`.
    pub fn is_unique_violation(&self, constraint: Option<&str>) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            Self::Query(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
                constraint.is_none_or(|name| info.constraint_name() == Some(name))
            }
            _ => false,
        }
    }
}

/// What PostgreSQL says when a value a client sent does not fit (a column
/// too short, a number out of range, text it cannot store): the handlers
/// validate first, so these are a safety net, answered as the client's
/// mistake rather than the server's.
const REFUSED_VALUES: &[&str] = &[
    "value too long for type",
    "out of range",
    "invalid byte sequence",
    "null character not permitted",
    "unsupported unicode escape sequence",
    "invalid input syntax",
];

/// Whether the error says the connection itself is gone (the server
/// closed it, or a statement could not even be sent): the call may succeed
/// on another connection, and this one must not be used again.
pub(super) fn connection_lost(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        err,
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        )
    )
}

impl From<DbError> for Status {
    /// Unavailable → UNAVAILABLE; a connection that broke or could not
    /// send → UNAVAILABLE; not found → NOT_FOUND; a value or reference the
    /// database refuses → INVALID_ARGUMENT, ALREADY_EXISTS or
    /// FAILED_PRECONDITION (logged as a warning: validation missed it);
    /// anything else is logged once and answered INTERNAL without details.
    fn from(err: DbError) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match err {
            DbError::Query(Error::DatabaseError(kind, info))
                if matches!(
                    kind,
                    DatabaseErrorKind::CheckViolation
                        | DatabaseErrorKind::UniqueViolation
                        | DatabaseErrorKind::ForeignKeyViolation
                        | DatabaseErrorKind::NotNullViolation
                ) || REFUSED_VALUES
                    .iter()
                    .any(|refusal| info.message().to_ascii_lowercase().contains(refusal)) =>
            {
                tracing::warn!(error = %info.message(), "the database refused a value that validation let through");
                match kind {
                    DatabaseErrorKind::UniqueViolation => Status::already_exists("it already exists"),
                    DatabaseErrorKind::ForeignKeyViolation => {
                        Status::failed_precondition("it refers to something that does not exist")
                    }
                    _ => Status::invalid_argument("a value is not allowed here; check the request's fields"),
                }
            }
            DbError::Unavailable(_) | DbError::Query(Error::BrokenTransactionManager) => {
                Status::unavailable("the database is unavailable; retry shortly")
            }
            DbError::Query(ref err) if connection_lost(err) => {
                Status::unavailable("the database is unavailable; retry shortly")
            }
            DbError::Query(Error::NotFound) => Status::not_found("not found"),
            DbError::Query(Error::DatabaseError(DatabaseErrorKind::Unknown, info))
                if info.message().contains("canceling statement due to statement timeout") =>
            {
                Status::deadline_exceeded("the database took too long; retry shortly")
            }
            other => crate::rpc::internal(format_args!("database query failed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    #[test]
    fn values_the_database_refuses_are_the_callers_mistake_and_the_rest_is_internal() {
        use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error};

        struct Info(&'static str);
        impl DatabaseErrorInformation for Info {
            fn message(&self) -> &str {
                self.0
            }
            fn details(&self) -> Option<&str> {
                None
            }
            fn hint(&self) -> Option<&str> {
                None
            }
            fn table_name(&self) -> Option<&str> {
                None
            }
            fn column_name(&self) -> Option<&str> {
                None
            }
            fn constraint_name(&self) -> Option<&str> {
                None
            }
            fn statement_position(&self) -> Option<i32> {
                None
            }
        }
        let code =
            |kind, message| Status::from(DbError::Query(Error::DatabaseError(kind, Box::new(Info(message))))).code();
        use DatabaseErrorKind::{CheckViolation, ForeignKeyViolation, Unknown};
        assert_eq!(code(CheckViolation, "violates check constraint"), Code::InvalidArgument);
        assert_eq!(
            code(ForeignKeyViolation, "violates foreign key"),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(Unknown, "value too long for type character varying(320)"),
            Code::InvalidArgument
        );
        assert_eq!(
            code(Unknown, "invalid byte sequence for encoding \"UTF8\": 0x00"),
            Code::InvalidArgument
        );
        assert_eq!(code(Unknown, "could not serialize access"), Code::Internal);
    }
}

//! The one mapping of database trouble to gRPC statuses, and running
//! blocking diesel work on a pooled connection.

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

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Query(diesel::result::Error::NotFound))
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

impl super::Database {
    /// Runs blocking diesel work on a pooled connection's thread.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<T> + Send + 'static,
        T: Send + 'static,
    {
        use tracing::Instrument;
        let waited = std::time::Instant::now();
        let wait = if crate::trace::sampled() {
            tracing::debug_span!(
                target: crate::trace::TRACE,
                "db.pool.wait",
                db.system.name = "postgresql",
                db.namespace = self.config.service.name(),
            )
        } else {
            tracing::Span::none()
        };
        let conn = self
            .pool
            .get()
            .instrument(wait)
            .await
            .map_err(|err| DbError::Unavailable(err.to_string()))?;
        metrics::histogram!("db_pool_wait_seconds", "service" => self.config.service.name())
            .record(waited.elapsed().as_secs_f64());
        // In a sampled trace, the statements are spans of the caller's request.
        let result = match crate::trace::carry() {
            Some(carried) => conn.interact(move |conn| carried.run(|| work(conn))).await,
            None => conn.interact(work).await,
        };
        let result = result.map_err(|err| DbError::Unavailable(format!("the connection thread failed: {err}")))?;
        // A connection whose server went away (restart, failover, a killed
        // backend) is not handed out again.
        if result.as_ref().is_err_and(connection_lost) {
            drop(deadpool::managed::Object::take(conn));
        }
        result.map_err(DbError::from)
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

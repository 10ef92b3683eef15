//! Counting failed attempts per scope.

use chrono::{DateTime, Duration, Utc};
use diesel::{dsl::now, prelude::*};

use super::schema::login_throttles;

/// How failed attempts on one scope are counted.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    pub max_failures: i32,
    pub window: Duration,
    pub lockout: Duration,
}

/// One counter of failed attempts (an account, an address, or an account
/// from one address) and its rule.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub scope: String,
    pub rule: ThrottleRule,
    /// Counts many people's attempts (an address): a success takes back
    /// one failure rather than starting again from nothing.
    pub shared: bool,
}

/// Why [`take_attempt`] undid its transaction.
enum Refused {
    Locked(DateTime<Utc>),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Refused {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err)
    }
}

/// Counts one attempt, in advance, as a failure on every scope at once —
/// so that N guesses in parallel count as N — unless one of the scopes is
/// locked: then nothing is counted and the answer is when its lock lifts.
/// A scope reaching its maximum is locked for its lockout (the attempt
/// that reached it still runs). Callers give the scopes in one order, so
/// two attempts never wait for each other in a circle.
pub fn take_attempt(conn: &mut PgConnection, throttles: &[Throttle]) -> QueryResult<Result<(), DateTime<Utc>>> {
    use diesel::sql_types::{Double, Integer, Nullable, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Lock {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        locked_until: Option<DateTime<Utc>>,
    }

    let taken = conn.transaction(|conn| {
        for throttle in throttles {
            let counted = diesel::sql_query(
                "INSERT INTO login_throttles AS t (scope, failures, window_started_at, locked_until) \
                 VALUES ($1, 1, now(), CASE WHEN $2 <= 1 THEN now() + $4 * interval '1 second' END) \
                 ON CONFLICT (scope) DO UPDATE SET \
                   failures = CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                   THEN t.failures + 1 ELSE 1 END, \
                   window_started_at = CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                            THEN t.window_started_at ELSE now() END, \
                   locked_until = CASE WHEN (CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                                  THEN t.failures + 1 ELSE 1 END) >= $2 \
                                       THEN now() + $4 * interval '1 second' END \
                 WHERE t.locked_until IS NULL OR t.locked_until <= now()",
            )
            .bind::<Text, _>(&throttle.scope)
            .bind::<Integer, _>(throttle.rule.max_failures)
            .bind::<Double, _>(seconds(throttle.rule.window))
            .bind::<Double, _>(seconds(throttle.rule.lockout))
            .execute(conn)?;
            if counted == 0 {
                let lock: Lock = diesel::sql_query("SELECT locked_until FROM login_throttles WHERE scope = $1")
                    .bind::<Text, _>(&throttle.scope)
                    .get_result(conn)?;
                return Err(Refused::Locked(lock.locked_until.unwrap_or_else(Utc::now)));
            }
        }
        Ok(())
    });
    match taken {
        Ok(()) => Ok(Ok(())),
        Err(Refused::Locked(until)) => Ok(Err(until)),
        Err(Refused::Database(err)) => Err(err),
    }
}

/// The attempt counted by [`take_attempt`] succeeded: a scope of one
/// person starts again from nothing (failures are counted consecutively),
/// a shared one takes back the failure counted in advance.
pub fn attempt_succeeded(conn: &mut PgConnection, throttles: &[Throttle]) -> QueryResult<()> {
    use diesel::sql_types::{Integer, Text};

    let personal: Vec<&str> = throttles
        .iter()
        .filter(|throttle| !throttle.shared)
        .map(|throttle| throttle.scope.as_str())
        .collect();
    diesel::delete(login_throttles::table.filter(login_throttles::scope.eq_any(personal))).execute(conn)?;
    for throttle in throttles.iter().filter(|throttle| throttle.shared) {
        diesel::sql_query(
            "UPDATE login_throttles SET failures = greatest(failures - 1, 0), \
               locked_until = CASE WHEN failures - 1 < $2 THEN NULL ELSE locked_until END \
             WHERE scope = $1",
        )
        .bind::<Text, _>(&throttle.scope)
        .bind::<Integer, _>(throttle.rule.max_failures)
        .execute(conn)?;
    }
    Ok(())
}

/// Forgets counters whose window and lock are both over.
pub fn prune_throttles(conn: &mut PgConnection, older_than: Duration) -> QueryResult<usize> {
    diesel::delete(
        login_throttles::table
            .filter(login_throttles::window_started_at.lt(Utc::now() - older_than))
            .filter(
                login_throttles::locked_until
                    .is_null()
                    .or(login_throttles::locked_until.lt(now)),
            ),
    )
    .execute(conn)
}

fn seconds(duration: Duration) -> f64 {
    duration.as_seconds_f64()
}

//! Registered runners. A runner's token is random (256 bits), so its
//! SHA-256 is all that is kept and all that a lookup needs.

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{deployments, runners};
use crate::lifecycle::State;

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = runners)]
pub struct Runner {
    pub id: Uuid,
    pub name: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

#[derive(Insertable)]
#[diesel(table_name = runners)]
pub struct NewRunner<'a> {
    pub name: &'a str,
    pub token_hash: &'a [u8],
    pub created_by: Option<Uuid>,
}

impl Runner {
    pub fn create(conn: &mut PgConnection, new: &NewRunner<'_>) -> QueryResult<Runner> {
        diesel::insert_into(runners::table)
            .values(new)
            .returning(Runner::as_returning())
            .get_result(conn)
    }

    /// Registers a service's own local runner under `name`, or gives the
    /// existing one a new token (the previous process is gone).
    pub fn register_local(conn: &mut PgConnection, name: &str, token_hash: &[u8]) -> QueryResult<Runner> {
        diesel::insert_into(runners::table)
            .values(&NewRunner {
                name,
                token_hash,
                created_by: None,
            })
            .on_conflict(runners::name)
            .do_update()
            .set(runners::token_hash.eq(token_hash))
            .returning(Runner::as_returning())
            .get_result(conn)
    }

    /// The runner whose token hashes to `token_hash`, noting that it was
    /// seen (at most once a second, to spare the row).
    pub fn by_token(conn: &mut PgConnection, token_hash: &[u8]) -> QueryResult<Option<Uuid>> {
        let found: Option<(Uuid, Option<DateTime<Utc>>)> = runners::table
            .filter(runners::token_hash.eq(token_hash))
            .select((runners::id, runners::last_seen_at))
            .first(conn)
            .optional()?;
        if let Some((id, seen)) = found
            && seen.is_none_or(|seen| Utc::now() - seen > chrono::Duration::seconds(1))
        {
            diesel::update(runners::table.find(id))
                .set(runners::last_seen_at.eq(now))
                .execute(conn)?;
        }
        Ok(found.map(|(id, _)| id))
    }

    /// One page, oldest first, after `(created_at, id)`.
    pub fn list(conn: &mut PgConnection, after: Option<(DateTime<Utc>, Uuid)>, limit: i64) -> QueryResult<Vec<Runner>> {
        let mut query = runners::table
            .select(Runner::as_select())
            .order((runners::created_at.asc(), runners::id.asc()))
            .limit(limit)
            .into_boxed();
        if let Some((time, id)) = after {
            query = query.filter(
                runners::created_at
                    .gt(time)
                    .or(runners::created_at.eq(time).and(runners::id.gt(id))),
            );
        }
        query.load(conn)
    }

    /// Deletes a runner; the deployments it held go back to the queue at
    /// once. False when there is no such runner.
    pub fn delete(conn: &mut PgConnection, id: Uuid) -> QueryResult<bool> {
        conn.transaction(|conn| {
            let deleted = diesel::delete(runners::table.find(id)).execute(conn)? > 0;
            if deleted {
                diesel::update(
                    deployments::table
                        .filter(deployments::runner_id.eq(id.to_string()))
                        .filter(deployments::state.eq_any([State::Building.as_str(), State::Deploying.as_str()])),
                )
                .set(deployments::lease_expires_at.eq(Utc::now() - chrono::Duration::seconds(1)))
                .execute(conn)?;
            }
            Ok(deleted)
        })
    }
}

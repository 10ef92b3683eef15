//! Push to deploy: the branch heads seen, the deliveries taken, the
//! commits deployed.

use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{self, deployments};
use crate::lifecycle::State;

/// Records `sha` as the head of a project's watched branch; true when it
/// is new (first seen, or moved): only one replica gets true for a push.
pub fn saw_head(conn: &mut PgConnection, project_id: Uuid, sha: &str) -> QueryResult<bool> {
    use schema::source_watches;
    let inserted = diesel::insert_into(source_watches::table)
        .values((
            source_watches::project_id.eq(project_id),
            source_watches::last_sha.eq(sha),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if inserted == 1 {
        return Ok(true);
    }
    // Under the row lock: of replicas seeing the same push, one moves it.
    let moved = diesel::update(
        source_watches::table
            .find(project_id)
            .filter(source_watches::last_sha.ne(sha)),
    )
    .set((source_watches::last_sha.eq(sha), source_watches::checked_at.eq(now)))
    .execute(conn)?;
    Ok(moved == 1)
}

/// Takes a push-event delivery once; false when it was taken before.
pub fn take_delivery(conn: &mut PgConnection, project_id: Uuid, delivery_id: &str) -> QueryResult<bool> {
    use schema::push_deliveries;
    let taken = diesel::insert_into(push_deliveries::table)
        .values((
            push_deliveries::project_id.eq(project_id),
            push_deliveries::delivery_id.eq(delivery_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(taken == 1)
}

/// Whether `sha` was deployed (or is being deployed) to the project's
/// `environment` already.
pub fn has_commit(conn: &mut PgConnection, project_id: Uuid, environment: &str, sha: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        deployments::table
            .filter(deployments::project_id.eq(project_id))
            .filter(deployments::commit_sha.eq(sha))
            .filter(deployments::environment.eq(environment))
            .filter(deployments::state.ne_all([State::Failed.as_str(), State::Canceled.as_str()])),
    ))
    .get_result(conn)
}

//! Deployments' egress records, as their runners report them, and the
//! generation of each project's build caches.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*, upsert::excluded};
use uuid::Uuid;

use super::schema::{build_caches, deployment_egress, deployments};
use crate::lifecycle::State;

/// Destinations one deployment's record names one by one; the rest are
/// added together under [`OTHERS`], so a sandbox asking for endless names
/// costs the database one row more, not one each.
pub const MAX_DESTINATIONS: usize = 512;
/// Where the rest are counted.
pub const OTHERS: &str = "(other destinations)";

#[derive(Queryable, Selectable, Insertable, Debug, Clone, PartialEq, Eq)]
#[diesel(table_name = deployment_egress)]
pub struct EgressRow {
    pub deployment_id: Uuid,
    /// `build` or `app`.
    pub phase: String,
    pub host: String,
    pub port: i32,
    pub connections: i64,
    pub bytes_sent: i64,
    pub bytes_received: i64,
    pub refusals: i64,
    pub refusal_reason: String,
    pub failures: i64,
    pub updated_at: DateTime<Utc>,
}

/// Adds `counts` (rows of deployment `id`) to its record, when `runner`
/// holds it, held it to its end or runs a copy of it: whether it did. A report after the
/// deployment went back to the queue is not taken.
pub fn add_egress(conn: &mut PgConnection, id: Uuid, runner: &str, counts: Vec<EgressRow>) -> QueryResult<bool> {
    conn.transaction(|conn| {
        // Locked, so that two reports count the destinations one by one.
        let held = deployments::table
            .find(id)
            .filter(
                deployments::runner_id
                    .eq(runner)
                    .or(super::replicas::runs_a_copy(id, runner)),
            )
            .filter(deployments::state.ne(State::Queued.as_str()))
            .select(deployments::id)
            .for_update()
            .first::<Uuid>(conn)
            .optional()?;
        if held.is_none() {
            return Ok(false);
        }
        let mut known: HashSet<(String, String, i32)> = deployment_egress::table
            .filter(deployment_egress::deployment_id.eq(id))
            .select((
                deployment_egress::phase,
                deployment_egress::host,
                deployment_egress::port,
            ))
            .load(conn)?
            .into_iter()
            .collect();
        for mut row in counts {
            let key = (row.phase.clone(), row.host.clone(), row.port);
            if !known.contains(&key) {
                if known.len() >= MAX_DESTINATIONS {
                    row.host = OTHERS.to_owned();
                    row.port = 0;
                }
                known.insert((row.phase.clone(), row.host.clone(), row.port));
            }
            row.deployment_id = id;
            let insert = diesel::insert_into(deployment_egress::table)
                .values(&row)
                .on_conflict((
                    deployment_egress::deployment_id,
                    deployment_egress::phase,
                    deployment_egress::host,
                    deployment_egress::port,
                ))
                .do_update();
            let added = (
                deployment_egress::connections
                    .eq(deployment_egress::connections + excluded(deployment_egress::connections)),
                deployment_egress::bytes_sent
                    .eq(deployment_egress::bytes_sent + excluded(deployment_egress::bytes_sent)),
                deployment_egress::bytes_received
                    .eq(deployment_egress::bytes_received + excluded(deployment_egress::bytes_received)),
                deployment_egress::refusals.eq(deployment_egress::refusals + excluded(deployment_egress::refusals)),
                deployment_egress::failures.eq(deployment_egress::failures + excluded(deployment_egress::failures)),
                deployment_egress::updated_at.eq(now),
            );
            // The newest reason wins; a report without one keeps the last.
            if row.refusal_reason.is_empty() {
                insert.set(added).execute(conn)?;
            } else {
                insert
                    .set((
                        added,
                        deployment_egress::refusal_reason.eq(excluded(deployment_egress::refusal_reason)),
                    ))
                    .execute(conn)?;
            }
        }
        Ok(true)
    })
}

/// Deployment `id`'s record: the build's destinations first, then the
/// app's, each by host and port.
pub fn egress_of(conn: &mut PgConnection, id: Uuid) -> QueryResult<Vec<EgressRow>> {
    deployment_egress::table
        .filter(deployment_egress::deployment_id.eq(id))
        .order((
            deployment_egress::phase.desc(),
            deployment_egress::host.asc(),
            deployment_egress::port.asc(),
        ))
        .select(EgressRow::as_select())
        .load(conn)
}

/// The generation of `project_id`'s build caches: 0 until first cleared.
pub fn cache_generation(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<i64> {
    build_caches::table
        .find(project_id)
        .select(build_caches::generation)
        .first(conn)
        .optional()
        .map(Option::unwrap_or_default)
}

/// Raises `project_id`'s build cache generation: its new value.
pub fn clear_caches(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<i64> {
    diesel::insert_into(build_caches::table)
        .values((build_caches::project_id.eq(project_id), build_caches::generation.eq(1)))
        .on_conflict(build_caches::project_id)
        .do_update()
        .set((
            build_caches::generation.eq(build_caches::generation + 1),
            build_caches::cleared_at.eq(now),
        ))
        .returning(build_caches::generation)
        .get_result(conn)
}

//! Runners' claims: taking a queued deployment, renewing the lease,
//! holding it, giving it back.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Uuid as SqlUuid},
};
use uuid::Uuid;

use super::schema::{deployments, sandbox_slots};
use crate::lifecycle::State;

use super::{Deployment, logs::append};

/// The states in which a runner holds a deployment (building it, or
/// running it live).
const HELD: [&str; 3] = [
    State::Building.as_str(),
    State::Deploying.as_str(),
    State::Live.as_str(),
];

/// The next deployment to claim, fairly: among the queued ones (and those
/// whose runner's lease ran out) of projects with fewer than
/// `per_project` deployments being built, the oldest of the owner served
/// least recently (never served first; a deployment from before owners were
/// recorded by its age). One owner's long queue thus waits
/// its turn behind each other owner's next deployment, not in front of it.
/// FOR UPDATE SKIP LOCKED: concurrent runners never take the same one.
const NEXT_CLAIM: &str = "\
SELECT d.id FROM deployments d
WHERE (d.state = 'queued' OR (d.state IN ('building', 'deploying') AND d.lease_expires_at < now()))
    AND (SELECT count(*) FROM deployments b
        WHERE b.project_id = d.project_id AND b.state IN ('building', 'deploying')
            AND b.lease_expires_at >= now()) < $1
ORDER BY CASE WHEN d.owner_id IS NULL THEN d.created_at ELSE (SELECT max(s.started_at) FROM deployments s
        WHERE s.owner_id = d.owner_id AND s.started_at IS NOT NULL) END ASC NULLS FIRST,
    d.created_at ASC
LIMIT 1
FOR UPDATE OF d SKIP LOCKED";

#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// A claimed deployment and its project's sandbox slot.
pub struct Claimed {
    pub deployment: Deployment,
    pub sandbox_slot: i32,
    /// A copy of a live deployment to start, not a build.
    pub replica: bool,
    /// A run to make from the deployment's release, not a build.
    pub run: Option<super::runs::Run>,
}

/// Takes the next deployment ([`NEXT_CLAIM`]) for `runner`, with its
/// project's sandbox slot (taken now at the project's first claim); with
/// none to build, a copy of a live one short of replicas.
pub fn claim(
    conn: &mut PgConnection,
    runner: &str,
    lease: chrono::Duration,
    per_project: i64,
    runs: bool,
) -> QueryResult<Option<Claimed>> {
    conn.transaction(|conn| {
        let next: Option<Candidate> = diesel::sql_query(NEXT_CLAIM)
            .bind::<BigInt, _>(per_project)
            .get_result(conn)
            .optional()?;
        let candidate = match next {
            Some(next) => Some(
                deployments::table
                    .find(next.id)
                    .select(Deployment::as_select())
                    .first(conn)?,
            ),
            None => None,
        };
        let Some(candidate) = candidate else {
            // Nothing to build: a run to make, perhaps.
            if let Some((run, deployment)) = runs.then(|| super::runs::claim(conn, runner)).transpose()?.flatten() {
                let sandbox_slot = slot_of(conn, deployment.project_id)?;
                return Ok(Some(Claimed {
                    deployment,
                    sandbox_slot,
                    replica: false,
                    run: Some(run),
                }));
            }
            // Or a copy of a live one to start.
            let Some(deployment) = super::replicas::claim(conn, runner, lease)? else {
                return Ok(None);
            };
            let sandbox_slot = slot_of(conn, deployment.project_id)?;
            return Ok(Some(Claimed {
                deployment,
                sandbox_slot,
                replica: true,
                run: None,
            }));
        };
        let mut lines = Vec::new();
        if let Some(previous) = candidate
            .runner_id
            .as_deref()
            .filter(|_| candidate.state() != State::Queued)
        {
            lines.push((
                "system",
                format!(
                    "{} → queued: runner {previous} stopped renewing its lease",
                    candidate.state
                ),
            ));
        }
        lines.push(("system", format!("queued → building: claimed by runner {runner}")));
        let claimed: Deployment = diesel::update(deployments::table.find(candidate.id))
            .set((
                deployments::state.eq(State::Building.as_str()),
                deployments::runner_id.eq(runner),
                deployments::lease_expires_at.eq(Utc::now() + lease),
                deployments::started_at.eq(candidate.started_at.unwrap_or_else(Utc::now)),
            ))
            .returning(Deployment::as_returning())
            .get_result(conn)?;
        append(conn, claimed.id, &lines, None)?;
        let sandbox_slot = slot_of(conn, claimed.project_id)?;
        Ok(Some(Claimed {
            deployment: claimed,
            sandbox_slot,
            replica: false,
            run: None,
        }))
    })
}

/// Project `project_id`'s sandbox slot, taken now if it has none (looked
/// up first: an insert that conflicts still uses up a number).
fn slot_of(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<i32> {
    let slot = sandbox_slots::table.find(project_id).select(sandbox_slots::slot);
    if let Some(taken) = slot.first(conn).optional()? {
        return Ok(taken);
    }
    diesel::insert_into(sandbox_slots::table)
        .values(sandbox_slots::project_id.eq(project_id))
        .on_conflict_do_nothing()
        .execute(conn)?;
    slot.first(conn)
}

/// Renews `runner`'s lease; `None` when it no longer holds the deployment.
/// The answer says whether the deployment was canceled meanwhile.
pub fn heartbeat(
    conn: &mut PgConnection,
    id: Uuid,
    runner: &str,
    lease: chrono::Duration,
) -> QueryResult<Option<(DateTime<Utc>, bool)>> {
    let expires = Utc::now() + lease;
    let renewed: Option<String> = diesel::update(
        deployments::table
            .find(id)
            .filter(deployments::runner_id.eq(runner))
            .filter(deployments::state.eq_any(HELD)),
    )
    .set(deployments::lease_expires_at.eq(expires))
    .returning(deployments::state)
    .get_result(conn)
    .optional()?;
    // A live one's copy on this runner, which routes follow: renewed
    // while its lease holds; once it ran out (others may have replaced
    // it), the runner stops it.
    if super::replicas::renew(conn, id, runner, lease)?.is_some() {
        return Ok(Some((expires, false)));
    }
    if super::replicas::drop_expired(conn, id, runner)? > 0 {
        return Ok(Some((Utc::now(), true)));
    }
    if renewed.is_some() {
        return Ok(Some((expires, false)));
    }
    // Canceled, or a live one that was replaced or crashed: the runner
    // must stop.
    let canceled = deployments::table
        .find(id)
        .filter(deployments::state.eq_any([
            State::Canceled.as_str(),
            State::Superseded.as_str(),
            State::Crashed.as_str(),
        ]))
        .count()
        .get_result::<i64>(conn)?
        > 0;
    Ok(canceled.then_some((Utc::now(), true)))
}

/// Whether `runner` holds `id` now (building it, running it live, or
/// running a copy of it live).
pub fn holds(conn: &mut PgConnection, id: Uuid, runner: &str) -> QueryResult<Option<Deployment>> {
    deployments::table
        .find(id)
        .filter(
            deployments::runner_id
                .eq(runner)
                .and(deployments::state.eq_any(HELD))
                .or(deployments::state
                    .eq(State::Live.as_str())
                    .and(super::replicas::runs_a_copy(id, runner))),
        )
        .select(Deployment::as_select())
        .first(conn)
        .optional()
}

/// Gives a claimed deployment back to the queue at once (its lease ends
/// now), when the runner cannot be handed what it needs to run it.
pub fn release(conn: &mut PgConnection, id: Uuid, runner: &str) -> QueryResult<usize> {
    diesel::update(
        deployments::table
            .find(id)
            .filter(deployments::runner_id.eq(runner))
            .filter(deployments::state.eq_any([State::Building.as_str(), State::Deploying.as_str()])),
    )
    .set(deployments::lease_expires_at.eq(Utc::now() - chrono::Duration::seconds(1)))
    .execute(conn)
}

//! Runners' claims: taking a queued deployment, renewing the lease,
//! holding it, giving it back.

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::deployments;
use crate::state::State;

use super::{Deployment, logs::append};

/// The states in which a runner holds a deployment (building it, or
/// running it live).
const HELD: [&str; 3] = [
    State::Building.as_str(),
    State::Deploying.as_str(),
    State::Live.as_str(),
];

/// Takes the oldest queued deployment, or one whose runner's lease ran
/// out, for `runner` (FOR UPDATE SKIP LOCKED: concurrent runners never take
/// the same one).
pub fn claim(conn: &mut PgConnection, runner: &str, lease: chrono::Duration) -> QueryResult<Option<Deployment>> {
    conn.transaction(|conn| {
        let candidate = deployments::table
            .filter(
                deployments::state.eq(State::Queued.as_str()).or(deployments::state
                    .eq_any([State::Building.as_str(), State::Deploying.as_str()])
                    .and(deployments::lease_expires_at.lt(now))),
            )
            .order(deployments::created_at.asc())
            .select(Deployment::as_select())
            .for_update()
            .skip_locked()
            .first(conn)
            .optional()?;
        let Some(candidate) = candidate else {
            return Ok(None);
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
        Ok(Some(claimed))
    })
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

/// Whether `runner` holds `id` now (building it, or running it live).
pub fn holds(conn: &mut PgConnection, id: Uuid, runner: &str) -> QueryResult<Option<Deployment>> {
    deployments::table
        .find(id)
        .filter(deployments::runner_id.eq(runner))
        .filter(deployments::state.eq_any(HELD))
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

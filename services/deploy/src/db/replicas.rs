//! Where live deployments run: one row per runner that runs a copy of the
//! app, held under a lease its heartbeats renew. The gateway routes to the
//! rows with an upstream whose lease holds; a live deployment with fewer
//! of those than it asks for is claimed by another runner (or the same one
//! after a restart), which starts its release without a build.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Text, Timestamptz, Uuid as SqlUuid},
};
use uuid::Uuid;

use super::{
    Deployment,
    logs::append,
    schema::{deployments, replicas},
};
use crate::lifecycle::State;

/// The next live deployment short of replicas that `$1` runs no copy of:
/// the one that waited longest. Only a deployment with a kept release
/// (started without a build) and an app to serve.
const NEXT_REPLICA: &str = "\
SELECT d.id FROM deployments d
WHERE d.state = 'live' AND d.artifact_digest IS NOT NULL AND d.upstream <> ''
    AND (SELECT count(*) FROM replicas r
        WHERE r.deployment_id = d.id AND r.lease_expires_at >= now())
        < GREATEST(COALESCE((d.snapshot->>'replicas')::int, 1), 1)
    AND NOT EXISTS (SELECT 1 FROM replicas r
        WHERE r.deployment_id = d.id AND r.runner_id = $1)
ORDER BY d.updated_at ASC
LIMIT 1
FOR UPDATE OF d SKIP LOCKED";

#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Takes a copy of the next live deployment short of replicas for
/// `runner`, starting (no upstream yet) under `lease`.
pub fn claim(conn: &mut PgConnection, runner: &str, lease: chrono::Duration) -> QueryResult<Option<Deployment>> {
    conn.transaction(|conn| {
        // Its attempts that never served and whose time is up: no copy of
        // its runs for them (a starting one renews its lease).
        diesel::delete(
            replicas::table
                .filter(replicas::runner_id.eq(runner))
                .filter(replicas::upstream.eq(""))
                .filter(replicas::lease_expires_at.lt(Utc::now())),
        )
        .execute(conn)?;
        let next: Option<Candidate> = diesel::sql_query(NEXT_REPLICA)
            .bind::<Text, _>(runner)
            .get_result(conn)
            .optional()?;
        let Some(next) = next else { return Ok(None) };
        let expires = Utc::now() + lease;
        diesel::insert_into(replicas::table)
            .values((
                replicas::deployment_id.eq(next.id),
                replicas::runner_id.eq(runner),
                replicas::upstream.eq(""),
                replicas::lease_expires_at.eq(expires),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        append(
            conn,
            next.id,
            &[("system", format!("replica starting on runner {runner}"))],
            None,
        )?;
        deployments::table
            .find(next.id)
            .select(Deployment::as_select())
            .first(conn)
            .optional()
    })
}

/// `runner` serves the live deployment `id` at `upstream` (the runner that
/// built it, or one that started a replica): whether it may.
pub fn serving(
    conn: &mut PgConnection,
    id: Uuid,
    runner: &str,
    upstream: &str,
    lease: chrono::Duration,
) -> QueryResult<bool> {
    let live = deployments::table
        .find(id)
        .filter(deployments::state.eq(State::Live.as_str()))
        .count()
        .get_result::<i64>(conn)?
        > 0;
    if !live {
        return Ok(false);
    }
    super::serve_copy(conn, id, runner, upstream, Utc::now() + lease)?;
    Ok(true)
}

/// Renews `runner`'s copy of the live deployment `id`; when it has one.
pub fn renew(
    conn: &mut PgConnection,
    id: Uuid,
    runner: &str,
    lease: chrono::Duration,
) -> QueryResult<Option<DateTime<Utc>>> {
    let expires = Utc::now() + lease;
    let renewed = diesel::sql_query(
        "UPDATE replicas SET lease_expires_at = $3 WHERE deployment_id = $1 AND runner_id = $2 \
         AND lease_expires_at >= now() AND EXISTS (SELECT 1 FROM deployments d WHERE d.id = $1 AND d.state = 'live')",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(runner)
    .bind::<Timestamptz, _>(expires)
    .execute(conn)?;
    Ok((renewed > 0).then_some(expires))
}

/// `runner`'s copy of `id` whose lease ran out, removed (its runner is told
/// to stop it): how many.
pub fn drop_expired(conn: &mut PgConnection, id: Uuid, runner: &str) -> QueryResult<usize> {
    let gone = diesel::delete(
        replicas::table
            .filter(replicas::deployment_id.eq(id))
            .filter(replicas::runner_id.eq(runner))
            .filter(replicas::lease_expires_at.lt(Utc::now())),
    )
    .execute(conn)?;
    if gone > 0 {
        let line = format!("replica on runner {runner}: its lease ran out; stopped (another may have replaced it)");
        append(conn, id, &[("system", line)], None)?;
    }
    Ok(gone)
}

/// Copies whose lease ran out an hour ago or more: their runners are gone.
pub fn prune_expired(conn: &mut PgConnection) -> QueryResult<usize> {
    diesel::delete(replicas::table.filter(replicas::lease_expires_at.lt(Utc::now() - chrono::Duration::hours(1))))
        .execute(conn)
}

/// How long a copy that did not start keeps its place, so that it is not
/// tried again at once (and its log does not fill with the same failure).
const RETRY_AFTER_SECS: i64 = 30;

/// `runner`'s copy of `id` did not start (`why`): it keeps its place
/// without an upstream (never routed) for [`RETRY_AFTER_SECS`], then any
/// runner may try again.
pub fn failed(conn: &mut PgConnection, id: Uuid, runner: &str, why: &str) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::update(
            replicas::table
                .filter(replicas::deployment_id.eq(id))
                .filter(replicas::runner_id.eq(runner)),
        )
        .set((
            replicas::upstream.eq(""),
            replicas::lease_expires_at.eq(Utc::now() + chrono::Duration::seconds(RETRY_AFTER_SECS)),
        ))
        .execute(conn)?;
        let line = format!("replica on runner {runner} did not start ({why}); tried again in {RETRY_AFTER_SECS} s");
        append(conn, id, &[("system", line)], None)?;
        Ok(())
    })
}

/// `runner` no longer runs a copy of `id` (it stopped, or the copy did not
/// start): another runner may start one at once. `why` goes to the log.
pub fn give_up(conn: &mut PgConnection, id: Uuid, runner: &str, why: &str) -> QueryResult<usize> {
    conn.transaction(|conn| {
        let gone = diesel::delete(
            replicas::table
                .filter(replicas::deployment_id.eq(id))
                .filter(replicas::runner_id.eq(runner)),
        )
        .execute(conn)?;
        if gone > 0 && !why.is_empty() {
            append(
                conn,
                id,
                &[("system", format!("replica on runner {runner}: {why}"))],
                None,
            )?;
        }
        Ok(gone)
    })
}

/// `runner` (re)started and runs nothing: its copies of live deployments
/// are given up and the deployments it was building go back to the queue
/// now, not when their leases run out.
pub fn forget_runner(conn: &mut PgConnection, runner: &str) -> QueryResult<()> {
    conn.transaction(|conn| {
        let copies: Vec<Uuid> = diesel::delete(replicas::table.filter(replicas::runner_id.eq(runner)))
            .returning(replicas::deployment_id)
            .get_results(conn)?;
        for id in copies {
            let line = format!("replica on runner {runner}: gone (the runner restarted)");
            append(conn, id, &[("system", line)], None)?;
        }
        diesel::update(
            deployments::table
                .filter(deployments::runner_id.eq(runner))
                .filter(deployments::state.eq_any([State::Building.as_str(), State::Deploying.as_str()])),
        )
        .set(deployments::lease_expires_at.eq(Utc::now() - chrono::Duration::seconds(1)))
        .execute(conn)?;
        Ok(())
    })
}

/// The rows of one runner's copy of one deployment.
type CopyOf = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Filter<replicas::table, diesel::dsl::Eq<replicas::deployment_id, Uuid>>,
        diesel::dsl::Eq<replicas::runner_id, String>,
    >,
    diesel::dsl::GtEq<replicas::lease_expires_at, diesel::dsl::now>,
>;

/// Whether `runner` has a copy of `id` (an SQL condition).
pub fn runs_a_copy(id: Uuid, runner: &str) -> diesel::dsl::exists<CopyOf> {
    diesel::dsl::exists(
        replicas::table
            .filter(replicas::deployment_id.eq(id))
            .filter(replicas::runner_id.eq(runner.to_owned()))
            .filter(replicas::lease_expires_at.ge(diesel::dsl::now)),
    )
}

/// Releases kept per project and environment besides the live one.
const RELEASES_KEPT: i64 = 5;

/// The releases a deployment may still start from: the live ones, and the
/// newest [`RELEASES_KEPT`] of each project and environment (a rollback
/// may name them).
pub fn releases_in_use(conn: &mut PgConnection) -> QueryResult<std::collections::HashSet<String>> {
    #[derive(QueryableByName)]
    struct Kept {
        #[diesel(sql_type = Text)]
        artifact_digest: String,
    }
    // Releases as before; an uploaded source (its digest in the snapshot)
    // while its deployment is yet to be built, or among the newest.
    let kept: Vec<Kept> = diesel::sql_query(
        "SELECT DISTINCT artifact_digest FROM (SELECT artifact_digest, state, row_number() OVER \
         (PARTITION BY project_id, environment ORDER BY created_at DESC) AS newest FROM deployments \
         WHERE artifact_digest IS NOT NULL) d WHERE state = 'live' OR newest <= $1 \
         UNION SELECT DISTINCT snapshot->>'source_digest' FROM (SELECT snapshot, state, row_number() OVER \
         (PARTITION BY project_id, environment ORDER BY created_at DESC) AS newest FROM deployments \
         WHERE snapshot->>'source_digest' LIKE 'sha256:%') s \
         WHERE state IN ('queued', 'building', 'deploying', 'live') OR newest <= $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(RELEASES_KEPT)
    .load(conn)?;
    Ok(kept.into_iter().map(|kept| kept.artifact_digest).collect())
}

/// Live deployments and where they are served: (host, upstreams, id),
/// each deployment's upstreams in a steady order.
pub fn routes(conn: &mut PgConnection) -> QueryResult<Vec<(String, Vec<String>, Uuid)>> {
    let rows: Vec<(Deployment, String)> = deployments::table
        .inner_join(replicas::table)
        .filter(deployments::state.eq(State::Live.as_str()))
        .filter(deployments::host_label.ne(""))
        .filter(replicas::upstream.ne(""))
        .filter(replicas::lease_expires_at.ge(diesel::dsl::now))
        .order((deployments::id, replicas::runner_id))
        .select((Deployment::as_select(), replicas::upstream))
        .load(conn)?;
    let mut routes: Vec<(String, Vec<String>, Uuid)> = Vec::new();
    for (deployment, upstream) in rows {
        match routes.last_mut() {
            Some((_, upstreams, id)) if *id == deployment.id => upstreams.push(upstream),
            _ => {
                if let Some(host) = deployment.host() {
                    routes.push((host, vec![upstream], deployment.id));
                }
            }
        }
    }
    Ok(routes)
}

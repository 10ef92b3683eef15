//! Runs: one-off commands and cron entries' runs, each from the release of
//! an environment's live deployment — queued, claimed by a runner, ended
//! with an exit code — and the cron entries' last due times.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types::Bool};
use uuid::Uuid;

use super::{
    Deployment,
    logs::{append, append_as},
    schema::{cron_slots, deployments, runs},
};
use crate::lifecycle::State;

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

/// The deployment `id`, when `runner` makes a run of its release now.
pub fn release_of_run(conn: &mut PgConnection, id: Uuid, runner: &str) -> QueryResult<Option<Deployment>> {
    let running = diesel::dsl::exists(
        runs::table
            .filter(runs::deployment_id.eq(id))
            .filter(runs::runner_id.eq(runner))
            .filter(runs::state.eq(RUNNING)),
    );
    deployments::table
        .find(id)
        .filter(running)
        .select(Deployment::as_select())
        .first(conn)
        .optional()
}

/// A queued run that no runner took within this long fails.
const CLAIM_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// A running run whose runner said nothing this long after its time
/// limit fails (its release may take a while to fetch and unpack first).
const REPORT_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = runs)]
pub struct Run {
    pub id: Uuid,
    pub project_id: Uuid,
    pub deployment_id: Uuid,
    pub environment: String,
    pub kind: String,
    pub name: String,
    pub command: String,
    pub state: String,
    pub exit_code: Option<i32>,
    pub status_message: String,
    pub time_limit_secs: i32,
    pub creator_id: Option<Uuid>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The process its lines are marked with.
    pub fn process(&self) -> String {
        format!("run.{}", self.id)
    }

    pub fn ended(&self) -> bool {
        matches!(self.state.as_str(), SUCCEEDED | FAILED)
    }
}

#[derive(Insertable)]
#[diesel(table_name = runs)]
pub struct NewRun<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub deployment_id: Uuid,
    pub environment: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub command: &'a str,
    pub time_limit_secs: i32,
    pub creator_id: Option<Uuid>,
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// The live deployment of an environment whose release a run starts from.
pub fn live_release(conn: &mut PgConnection, project_id: Uuid, environment: &str) -> QueryResult<Option<Deployment>> {
    deployments::table
        .filter(deployments::project_id.eq(project_id))
        .filter(deployments::environment.eq(environment))
        .filter(deployments::state.eq(State::Live.as_str()))
        .order(deployments::created_at.desc())
        .select(Deployment::as_select())
        .first(conn)
        .optional()
}

/// Queues a run, saying so in its deployment's logs; `None` when its
/// project has `max_active` runs queued or running already.
pub fn create(conn: &mut PgConnection, new: &NewRun, max_active: i64) -> QueryResult<Option<Run>> {
    conn.transaction(|conn| {
        // One project's runs are counted one at a time.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7243002))")
            .bind::<diesel::sql_types::Uuid, _>(new.project_id)
            .execute(conn)?;
        let active: i64 = runs::table
            .filter(runs::project_id.eq(new.project_id))
            .filter(runs::state.eq_any([QUEUED, RUNNING]))
            .count()
            .get_result(conn)?;
        if active >= max_active {
            return Ok(None);
        }
        let run: Run = diesel::insert_into(runs::table)
            .values(new)
            .returning(Run::as_returning())
            .get_result(conn)?;
        let line = match new.kind {
            "cron" => format!("cron {}: run {} queued: $ {}", new.name, run.id, new.command),
            _ => format!("run {} queued: $ {}", run.id, new.command),
        };
        append_as(conn, run.deployment_id, &run.process(), &[("system", line)], None)?;
        Ok(Some(run))
    })
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Run>> {
    runs::table.find(id).select(Run::as_select()).first(conn).optional()
}

pub fn list(conn: &mut PgConnection, project_id: Uuid, limit: i64) -> QueryResult<Vec<Run>> {
    runs::table
        .filter(runs::project_id.eq(project_id))
        .order((runs::created_at.desc(), runs::id.desc()))
        .limit(limit)
        .select(Run::as_select())
        .load(conn)
}

/// The next run to claim, fairly: among queued runs of live deployments,
/// the oldest of the project with the fewest runs running.
const NEXT_RUN: &str = "\
SELECT r.id FROM runs r
JOIN deployments d ON d.id = r.deployment_id AND d.state = 'live'
WHERE r.state = 'queued'
ORDER BY (SELECT count(*) FROM runs o WHERE o.project_id = r.project_id AND o.state = 'running') ASC,
    r.created_at ASC
LIMIT 1
FOR UPDATE OF r SKIP LOCKED";

#[derive(QueryableByName)]
struct Next {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Takes the next queued run ([`NEXT_RUN`]) for `runner`.
pub fn claim(conn: &mut PgConnection, runner: &str) -> QueryResult<Option<(Run, Deployment)>> {
    let next: Option<Next> = diesel::sql_query(NEXT_RUN).get_result(conn).optional()?;
    let Some(Next { id }) = next else {
        return Ok(None);
    };
    let run: Run = diesel::update(runs::table.find(id))
        .set((
            runs::state.eq(RUNNING),
            runs::runner_id.eq(runner),
            runs::started_at.eq(Utc::now()),
        ))
        .returning(Run::as_returning())
        .get_result(conn)?;
    let line = format!("run {id} started on runner {runner}");
    append_as(conn, run.deployment_id, &run.process(), &[("system", line)], None)?;
    let deployment = deployments::table
        .find(run.deployment_id)
        .select(Deployment::as_select())
        .first(conn)?;
    Ok(Some((run, deployment)))
}

/// Whether `runner` runs run `id` of `deployment_id` now.
pub fn held(conn: &mut PgConnection, id: Uuid, deployment_id: Uuid, runner: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        runs::table
            .filter(runs::id.eq(id))
            .filter(runs::deployment_id.eq(deployment_id))
            .filter(runs::runner_id.eq(runner))
            .filter(runs::state.eq(RUNNING)),
    ))
    .get_result(conn)
}

/// Ends run `id`, which `runner` runs: SUCCEEDED with exit code 0, else
/// FAILED; `None` when it does not run it.
pub fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    runner: &str,
    exit_code: Option<i32>,
    failure: &str,
) -> QueryResult<Option<Run>> {
    conn.transaction(|conn| {
        let state = if exit_code == Some(0) { SUCCEEDED } else { FAILED };
        let message = match (exit_code, failure) {
            (_, why) if !why.is_empty() => why.to_owned(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, _) => "ended without an exit code".to_owned(),
        };
        let ended: Option<Run> = diesel::update(
            runs::table
                .filter(runs::id.eq(id))
                .filter(runs::runner_id.eq(runner))
                .filter(runs::state.eq(RUNNING)),
        )
        .set((
            runs::state.eq(state),
            runs::exit_code.eq(exit_code),
            runs::status_message.eq(&message),
            runs::finished_at.eq(Utc::now()),
        ))
        .returning(Run::as_returning())
        .get_result(conn)
        .optional()?;
        if let Some(run) = &ended {
            let line = format!("run {id} {state}: {message}");
            append_as(conn, run.deployment_id, &run.process(), &[("system", line)], None)?;
        }
        Ok(ended)
    })
}

/// Fails the runs that cannot end otherwise: queued ones whose deployment
/// is no longer live or that no runner took within 10 minutes, running
/// ones whose runner has not reported a minute after their time limit.
/// Returns how many.
pub fn reap(conn: &mut PgConnection) -> QueryResult<usize> {
    conn.transaction(|conn| {
        let now = Utc::now();
        let stuck: Vec<Run> = runs::table
            .filter(runs::state.eq_any([QUEUED, RUNNING]))
            .select(Run::as_select())
            .for_update()
            .skip_locked()
            .load(conn)?;
        let live: Vec<Uuid> = deployments::table
            .filter(deployments::id.eq_any(stuck.iter().map(|run| run.deployment_id)))
            .filter(deployments::state.eq(State::Live.as_str()))
            .select(deployments::id)
            .load(conn)?;
        let mut reaped = 0;
        for run in stuck {
            let waited = now.signed_duration_since(run.created_at);
            let ran = run.started_at.map(|started| now.signed_duration_since(started));
            let allowed = chrono::TimeDelta::seconds(i64::from(run.time_limit_secs)) + REPORT_WITHIN;
            let why = match run.state.as_str() {
                QUEUED if !live.contains(&run.deployment_id) => {
                    "not started: the release it was to run from is no longer live; run it again"
                }
                QUEUED if waited > CLAIM_WITHIN => "not started: no runner took it within 10 minutes",
                RUNNING if ran.is_some_and(|ran| ran > allowed) => "its runner stopped answering",
                _ => continue,
            };
            diesel::update(runs::table.find(run.id))
                .set((
                    runs::state.eq(FAILED),
                    runs::status_message.eq(why),
                    runs::finished_at.eq(now),
                ))
                .execute(conn)?;
            let line = format!("run {} failed: {why}", run.id);
            append_as(conn, run.deployment_id, &run.process(), &[("system", line)], None)?;
            reaped += 1;
        }
        Ok(reaped)
    })
}

/// Queues the runs of cron entries due at `now`, once per due time: an
/// entry seen for the first time starts at its next due time; a due time
/// that comes while the entry's previous run has not ended is skipped
/// (said in the deployment's logs), and of several due times missed
/// (the service was down) only the latest runs. `schedule_of` reads an
/// entry's schedule (`None`: it never comes). One deploy service at a
/// time does this (an advisory lock). Returns the runs queued.
pub fn schedule_cron(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    time_limit_secs: i32,
    max_active: i64,
    schedule_of: &dyn Fn(&capsule::schedule::ProcessType) -> Option<capsule::schedule::Schedule>,
) -> QueryResult<Vec<Run>> {
    conn.transaction(|conn| {
        let locked: bool =
            diesel::select(diesel::dsl::sql::<Bool>("pg_try_advisory_xact_lock(7243001)")).get_result(conn)?;
        if !locked {
            return Ok(Vec::new());
        }
        let live: Vec<Deployment> = deployments::table
            .filter(deployments::state.eq(State::Live.as_str()))
            .filter(deployments::artifact_digest.is_not_null())
            .order(deployments::created_at.desc())
            .filter(diesel::dsl::sql::<Bool>(
                "jsonb_array_length(COALESCE(snapshot->'process_types', '[]'::jsonb)) > 0",
            ))
            .select(Deployment::as_select())
            .load(conn)?;
        let mut queued = Vec::new();
        for deployment in live {
            for entry in deployment.snapshot().process_types {
                if entry.schedule.is_empty() {
                    continue;
                }
                let Some(schedule) = schedule_of(&entry) else {
                    continue;
                };
                let Some(due) = schedule.latest_at_or_before(now) else {
                    continue;
                };
                let key = (
                    deployment.project_id,
                    deployment.environment.as_str(),
                    entry.name.as_str(),
                );
                let last: Option<DateTime<Utc>> = cron_slots::table
                    .find(key)
                    .select(cron_slots::last_due)
                    .first(conn)
                    .optional()?;
                // First seen: from its next due time on.
                if last.is_some_and(|last| due <= last) {
                    continue;
                }
                diesel::insert_into(cron_slots::table)
                    .values((
                        cron_slots::project_id.eq(key.0),
                        cron_slots::environment.eq(key.1),
                        cron_slots::name.eq(key.2),
                        cron_slots::last_due.eq(due),
                    ))
                    .on_conflict((cron_slots::project_id, cron_slots::environment, cron_slots::name))
                    .do_update()
                    .set(cron_slots::last_due.eq(due))
                    .execute(conn)?;
                if last.is_none() {
                    continue;
                }
                let running: Option<(Uuid, Option<DateTime<Utc>>)> = runs::table
                    .filter(runs::project_id.eq(key.0))
                    .filter(runs::environment.eq(key.1))
                    .filter(runs::name.eq(key.2))
                    .filter(runs::kind.eq("cron"))
                    .filter(runs::state.eq_any([QUEUED, RUNNING]))
                    .select((runs::id, runs::scheduled_for))
                    .first(conn)
                    .optional()?;
                if let Some((running, since)) = running {
                    // Said once per run that outlasts its period, not at
                    // every due time it covers.
                    if since == last {
                        let line = format!(
                            "cron {}: the run due at {} is skipped, and the next ones until run {running} ends",
                            entry.name,
                            due.to_rfc3339()
                        );
                        append(conn, deployment.id, &[("system", line)], None)?;
                    }
                    continue;
                }
                let run = create(
                    conn,
                    &NewRun {
                        id: Uuid::new_v4(),
                        project_id: deployment.project_id,
                        deployment_id: deployment.id,
                        environment: &deployment.environment,
                        kind: "cron",
                        name: &entry.name,
                        command: &entry.command,
                        time_limit_secs,
                        creator_id: None,
                        scheduled_for: Some(due),
                    },
                    max_active,
                )?;
                match run {
                    Some(run) => queued.push(run),
                    None => {
                        let line = format!(
                            "cron {}: the run due at {} is skipped: the project has {max_active} runs queued or \
                             running (DEPLOY_MAX_RUNS_PER_PROJECT)",
                            entry.name,
                            due.to_rfc3339()
                        );
                        append(conn, deployment.id, &[("system", line)], None)?;
                    }
                }
            }
        }
        Ok(queued)
    })
}

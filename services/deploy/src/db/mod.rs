//! Rows and queries of the deploy database. State changes go through
//! [`transition`], which applies [`State::can_move`] under a row lock.

mod claims;
pub mod databases;
pub mod domains;
pub mod egress;
mod logs;
pub mod push;
pub mod replicas;
pub mod runners;
pub mod runs;
pub mod schema;
pub mod webhooks;

use chrono::{DateTime, Utc};
use diesel::{
    dsl::{AsSelect, SqlTypeOf, now},
    pg::Pg,
    prelude::*,
};
use uuid::Uuid;

use crate::lifecycle::State;
use schema::deployments;
use webhooks::Event;

pub use claims::{Claimed, claim, heartbeat, holds, release};
pub use logs::{LogRow, append, append_as, logs_after, process_logs_after, prune_logs};

/// What a deployment runs, copied from the project's settings when it is
/// created. No variables: a runner gets them, as they are then, when it
/// claims the deployment, so no secret value rests in this database.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub build_command: String,
    pub start_command: String,
    pub root_directory: String,
    #[serde(default)]
    pub repository_url: String,
    #[serde(default)]
    pub health_check_path: String,
    #[serde(default)]
    pub release_command: String,
    /// Egress for the build and for the app: deployments from before the
    /// settings existed had both.
    #[serde(default = "on")]
    pub build_egress: bool,
    #[serde(default = "on")]
    pub app_egress: bool,
    /// The sandbox's share; 0: the runner's default.
    #[serde(default)]
    pub memory_mb: u32,
    #[serde(default)]
    pub cpu_millis: u32,
    #[serde(default)]
    pub processes: u32,
    /// Copies of the live app; 0: one.
    #[serde(default)]
    pub replicas: u32,
    /// Workers and cron entries.
    #[serde(default)]
    pub process_types: Vec<capsule::schedule::ProcessType>,
    /// Scale to zero after this long without a request; 0: never.
    #[serde(default)]
    pub idle_timeout_secs: u32,
    /// An uploaded source to build instead of the repository.
    #[serde(default)]
    pub source_digest: String,
}

fn on() -> bool {
    true
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = deployments)]
pub struct Deployment {
    pub id: Uuid,
    pub project_id: Uuid,
    pub creator_id: Uuid,
    pub state: String,
    pub source_ref: String,
    pub environment: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub snapshot: serde_json::Value,
    pub rollback_of: Option<Uuid>,
    pub status_message: String,
    pub exit_code: Option<i32>,
    pub runner_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub owner_id: Option<Uuid>,
    pub commit_sha: String,
    pub commit_message: String,
    pub commit_author: String,
    pub host_label: String,
    /// The release its build made (`sha256:<hex>`), as runners keep it.
    pub artifact_digest: Option<String>,
}

impl Deployment {
    /// The host it is served at: the project's label, or
    /// `<label>--<environment>` outside production (labels never contain
    /// `--`, so these never collide).
    pub fn host(&self) -> Option<String> {
        if self.host_label.is_empty() {
            None
        } else if self.environment == "production" {
            Some(self.host_label.clone())
        } else {
            Some(format!("{}--{}", self.host_label, self.environment))
        }
    }

    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Failed)
    }

    pub fn snapshot(&self) -> Snapshot {
        serde_json::from_value(self.snapshot.clone()).unwrap_or_default()
    }
}

#[derive(Insertable)]
#[diesel(table_name = deployments)]
pub struct NewDeployment {
    pub project_id: Uuid,
    pub creator_id: Uuid,
    pub owner_id: Option<Uuid>,
    pub source_ref: String,
    pub environment: String,
    pub snapshot: serde_json::Value,
    pub rollback_of: Option<Uuid>,
    pub commit_sha: String,
    pub commit_message: String,
    pub commit_author: String,
    pub host_label: String,
    /// A rollback's target's release, to start without a build.
    pub artifact_digest: Option<String>,
}

/// Queues `new`, unless it would open an environment beyond
/// `max_environments` of its project (environments with a deployment
/// queued, being built or live), counted under a lock on the project so
/// that concurrent creations count in turn: `None` then.
pub fn create(conn: &mut PgConnection, new: &NewDeployment, max_environments: i64) -> QueryResult<Option<Deployment>> {
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(new.project_id.as_u64_pair().1.cast_signed())
            .execute(conn)?;
        let open: Vec<String> = deployments::table
            .filter(deployments::project_id.eq(new.project_id))
            .filter(deployments::state.eq_any([
                State::Queued.as_str(),
                State::Building.as_str(),
                State::Deploying.as_str(),
                State::Live.as_str(),
            ]))
            .select(deployments::environment)
            .distinct()
            .load(conn)?;
        if !open.contains(&new.environment) && i64::try_from(open.len()).unwrap_or(i64::MAX) >= max_environments {
            return Ok(None);
        }
        let deployment: Deployment = diesel::insert_into(deployments::table)
            .values(new)
            .returning(Deployment::as_returning())
            .get_result(conn)?;
        append(conn, deployment.id, &[("system", "queued".to_owned())], None)?;
        queue_event(conn, &deployment, Event::Created)?;
        if deployment.rollback_of.is_some() {
            queue_event(conn, &deployment, Event::RolledBack)?;
        }
        Ok(Some(deployment))
    })
}

/// The JSON body of a delivery: the event and the deployment as it was
/// then (no variables, no logs).
fn payload(event: Event, deployment: &Deployment) -> serde_json::Value {
    let id = |id: Option<Uuid>| id.map(|id| id.to_string());
    serde_json::json!({
        "type": event.as_str(),
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "deployment": {
            "id": deployment.id.to_string(),
            "project_id": deployment.project_id.to_string(),
            "environment": deployment.environment,
            "state": deployment.state().as_str(),
            "source_ref": deployment.source_ref,
            "commit_sha": deployment.commit_sha,
            "status_message": deployment.status_message,
            "rollback_of": id(deployment.rollback_of),
            "creator_id": deployment.creator_id.to_string(),
            "url": match (deployment.state(), deployment.host()) {
                (State::Live, Some(host)) => Some(capsule::config::app_url(&host)),
                _ => None,
            },
        },
    })
}

/// Queues `event` about `deployment` for its webhooks, in the caller's
/// transaction.
fn queue_event(conn: &mut PgConnection, deployment: &Deployment, event: Event) -> QueryResult<usize> {
    let about = webhooks::About {
        deployment_id: Some(deployment.id),
        project_id: deployment.project_id,
        owner_id: deployment.owner_id,
    };
    webhooks::enqueue(conn, about, event, payload(event, deployment))
}

/// The deployment by id. Who may see it is the project service's to say
/// (`DeployServiceApi::authorize`).
pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Deployment>> {
    by_id(id).first(conn).optional()
}

/// The statement behind [`find`].
fn by_id<'a>(id: Uuid) -> deployments::BoxedQuery<'a, Pg, SqlTypeOf<AsSelect<Deployment, Pg>>> {
    deployments::table.find(id).select(Deployment::as_select()).into_boxed()
}

/// The plans of the statements behind GetLogs and StreamLogs (the
/// visibility check, a page from the start and one after `late`), with
/// these values bound: what `bench/scale` checks for index use.
pub fn explain_reads(
    conn: &mut PgConnection,
    id: Uuid,
    late: i64,
    limit: i64,
) -> QueryResult<Vec<(&'static str, serde_json::Value)>> {
    use capsule::db::query::explain;
    Ok(vec![
        ("the deployment by id", explain(conn, &by_id(id))?),
        ("GetLogs, first page", explain(conn, &logs::page(id, 0, limit))?),
        ("GetLogs, a late page", explain(conn, &logs::page(id, late, limit))?),
    ])
}

/// A project's deployments, newest first.
pub fn list(
    conn: &mut PgConnection,
    project_id: Uuid,
    state: Option<State>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<Deployment>> {
    let mut query = deployments::table
        .filter(deployments::project_id.eq(project_id))
        .select(Deployment::as_select())
        .order((deployments::created_at.desc(), deployments::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(state) = state {
        query = query.filter(deployments::state.eq(state.as_str()));
    }
    if let Some(cursor) = after {
        query = query.filter(capsule::db::query::older_than("deployments", cursor));
    }
    query.load(conn)
}

/// Why a state change was refused.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    Illegal { from: State },
    NotYourClaim,
}

/// Who asks for a change.
#[derive(Debug, Clone)]
pub enum Actor {
    /// A user (ownership already checked).
    User,
    /// The runner that must hold the claim.
    Runner(String),
}

/// What else to record with a change.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub message: String,
    pub exit_code: Option<i32>,
    /// With LIVE: where the runner serves the app.
    pub upstream: Option<String>,
    /// With DEPLOYING: the release the build made.
    pub artifact_digest: Option<String>,
    /// With DEPLOYING: the commit as the runner fetched it, each part kept
    /// where the deployment has none.
    pub commit: Option<Fetched>,
}

/// A commit as a runner fetched it.
#[derive(Debug, Default, Clone)]
pub struct Fetched {
    pub sha: String,
    pub message: String,
    pub author: String,
}

/// `current`, or `reported` when there is no `current`.
fn kept<'a>(current: &'a String, reported: Option<&'a String>) -> &'a String {
    match reported {
        Some(reported) if current.is_empty() => reported,
        _ => current,
    }
}

/// The one way a deployment changes state: row lock, legality check,
/// claim check for runners, bookkeeping, a system log line, and for LIVE
/// the superseding of the project's previous live deployment.
pub fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    to: State,
    actor: &Actor,
    outcome: &Outcome,
) -> QueryResult<Result<Deployment, Refusal>> {
    conn.transaction(|conn| {
        let Some(current) = deployments::table
            .find(id)
            .select(Deployment::as_select())
            .for_update()
            .first(conn)
            .optional()?
        else {
            return Ok(Err(Refusal::NotFound));
        };
        let from = current.state();
        if let Actor::Runner(runner) = actor
            && current.runner_id.as_deref() != Some(runner.as_str())
        {
            return Ok(Err(Refusal::NotYourClaim));
        }
        if !from.can_move(to) {
            return Ok(Err(Refusal::Illegal { from }));
        }
        if to == State::Live {
            // The previous live one of this project and environment gives
            // way first: at most one is live (a unique index says so too).
            let previous: Vec<Uuid> = deployments::table
                .filter(deployments::project_id.eq(current.project_id))
                .filter(deployments::environment.eq(&current.environment))
                .filter(deployments::state.eq(State::Live.as_str()))
                .filter(deployments::id.ne(id))
                .select(deployments::id)
                .for_update()
                .load(conn)?;
            for old in previous {
                runs_nowhere(conn, old)?;
                diesel::update(deployments::table.find(old))
                    .set((
                        deployments::state.eq(State::Superseded.as_str()),
                        deployments::status_message.eq(format!("superseded by {id}")),
                        deployments::finished_at.eq(now),
                    ))
                    .execute(conn)?;
                append(
                    conn,
                    old,
                    &[("system", format!("live → superseded: {id} is live"))],
                    None,
                )?;
            }
        }
        // Written before the change, so it belongs to the phase it ends.
        let mut line = format!("{} → {}", from.as_str(), to.as_str());
        if !outcome.message.is_empty() {
            line.push_str(&format!(": {}", outcome.message));
        }
        append(conn, id, &[("system", line)], None)?;
        let settled = to.is_settled();
        let updated: Deployment = diesel::update(deployments::table.find(id))
            .set((
                deployments::state.eq(to.as_str()),
                deployments::status_message.eq(&outcome.message),
                deployments::exit_code.eq(outcome.exit_code.or(current.exit_code)),
                deployments::finished_at.eq(if settled { Some(Utc::now()) } else { None }),
                deployments::cancel_requested.eq(to == State::Canceled),
                deployments::upstream.eq(outcome.upstream.clone().unwrap_or_default()),
                deployments::artifact_digest.eq(outcome.artifact_digest.clone().or(current.artifact_digest.clone())),
                deployments::commit_sha.eq(kept(&current.commit_sha, outcome.commit.as_ref().map(|c| &c.sha))),
                deployments::commit_message.eq(kept(
                    &current.commit_message,
                    outcome.commit.as_ref().map(|c| &c.message),
                )),
                deployments::commit_author.eq(kept(&current.commit_author, outcome.commit.as_ref().map(|c| &c.author))),
            ))
            .returning(Deployment::as_returning())
            .get_result(conn)?;
        if let Some(event) = Event::of_state(to) {
            queue_event(conn, &updated, event)?;
        }
        if from == State::Live && to != State::Live {
            runs_nowhere(conn, id)?;
        }
        // Its builder's copy is the first replica, routed in the same
        // instant the previous one stops being (no gap in the table).
        if to == State::Live
            && let (Some(upstream), Some(runner)) = (&outcome.upstream, &current.runner_id)
        {
            let lease = current
                .lease_expires_at
                .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(30));
            serve_copy(conn, id, runner, upstream, lease)?;
        }
        if to.is_final() {
            diesel::update(deployments::table.find(id))
                .set((
                    deployments::runner_id.eq(None::<String>),
                    deployments::lease_expires_at.eq(None::<DateTime<Utc>>),
                ))
                .execute(conn)?;
        }
        Ok(Ok(updated))
    })
}

/// `runner`'s copy of `id` serves at `upstream` until `lease`.
fn serve_copy(
    conn: &mut PgConnection,
    id: Uuid,
    runner: &str,
    upstream: &str,
    lease: DateTime<Utc>,
) -> QueryResult<usize> {
    use schema::replicas as r;
    diesel::insert_into(r::table)
        .values((
            r::deployment_id.eq(id),
            r::runner_id.eq(runner),
            r::upstream.eq(upstream),
            r::lease_expires_at.eq(lease),
        ))
        .on_conflict((r::deployment_id, r::runner_id))
        .do_update()
        .set((r::upstream.eq(upstream), r::lease_expires_at.eq(lease)))
        .execute(conn)
}

/// A deployment that is no longer live runs nowhere: its replicas go.
fn runs_nowhere(conn: &mut PgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(schema::replicas::table.filter(schema::replicas::deployment_id.eq(id))).execute(conn)
}

pub fn state_of(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<State>> {
    Ok(deployments::table
        .find(id)
        .select(deployments::state)
        .first::<String>(conn)
        .optional()?
        .and_then(|state| State::parse(&state)))
}

/// The projects that have a live deployment.
/// How many deployments are in each of `states`, and when the oldest
/// queued one was created.
pub fn active_figures(conn: &mut PgConnection, states: &[State]) -> QueryResult<(Vec<i64>, Option<DateTime<Utc>>)> {
    let counts = states
        .iter()
        .map(|state| {
            deployments::table
                .filter(deployments::state.eq(state.as_str()))
                .count()
                .get_result(conn)
        })
        .collect::<QueryResult<Vec<i64>>>()?;
    let oldest = deployments::table
        .filter(deployments::state.eq(State::Queued.as_str()))
        .select(diesel::dsl::min(deployments::created_at))
        .get_result(conn)?;
    Ok((counts, oldest))
}

pub fn live_projects(conn: &mut PgConnection) -> QueryResult<Vec<(Uuid, Option<Uuid>)>> {
    deployments::table
        .filter(deployments::state.eq(State::Live.as_str()))
        .select((deployments::project_id, deployments::owner_id))
        .distinct()
        .load(conn)
}

/// A project's live deployments.
pub fn live_of(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Vec<Uuid>> {
    deployments::table
        .filter(deployments::project_id.eq(project_id))
        .filter(deployments::state.eq(State::Live.as_str()))
        .select(deployments::id)
        .load(conn)
}

#[cfg(test)]
mod tests {
    use capsule::{config::ServiceKind, testing::TestDatabase};
    use diesel::connection::SimpleConnection;

    use super::*;

    fn new_deployment(conn: &mut PgConnection) -> Deployment {
        create(
            conn,
            &NewDeployment {
                project_id: Uuid::new_v4(),
                creator_id: Uuid::new_v4(),
                owner_id: None,
                source_ref: String::new(),
                environment: "production".to_owned(),
                snapshot: serde_json::json!({}),
                rollback_of: None,
                artifact_digest: None,
                commit_sha: String::new(),
                commit_message: String::new(),
                commit_author: String::new(),
                host_label: String::new(),
            },
            1,
        )
        .unwrap()
        .unwrap()
    }

    fn lines(conn: &mut PgConnection, id: Uuid) -> Vec<LogRow> {
        logs_after(conn, id, 0, 1000).unwrap()
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_with_one_note_and_state_changes_are_kept() {
        let db = TestDatabase::migrated(ServiceKind::Deploy, &crate::MIGRATIONS).await;
        let mut conn = db.connect();
        let deployment = new_deployment(&mut conn);
        let output: Vec<(&str, String)> = (0..5).map(|i| ("stdout", format!("line {i}"))).collect();
        append(&mut conn, deployment.id, &output, Some(4)).unwrap();
        append(&mut conn, deployment.id, &output, Some(4)).unwrap();
        let from_the_runner = [("system", "from the runner".to_owned())];
        append(&mut conn, deployment.id, &from_the_runner, Some(4)).unwrap();
        let state_change = [("system", "building → failed".to_owned())];
        append(&mut conn, deployment.id, &state_change, None).unwrap();
        let kept: Vec<String> = lines(&mut conn, deployment.id)
            .into_iter()
            .map(|row| row.line)
            .collect();
        assert_eq!(
            kept,
            [
                "queued",
                "line 0",
                "line 1",
                "line 2",
                "log limit of 4 lines reached: further output of this deployment is dropped",
                "building → failed",
            ]
        );
    }

    #[tokio::test]
    async fn logs_of_deployments_settled_before_the_cutoff_are_pruned_and_the_deployments_stay() {
        let db = TestDatabase::migrated(ServiceKind::Deploy, &crate::MIGRATIONS).await;
        let mut conn = db.connect();
        let old = new_deployment(&mut conn);
        let recent = new_deployment(&mut conn);
        let live = new_deployment(&mut conn);
        conn.batch_execute(&format!(
            "UPDATE deployments SET state = 'failed', finished_at = now() - interval '40 days' WHERE id = '{}';
             UPDATE deployments SET state = 'failed', finished_at = now() - interval '1 day' WHERE id = '{}';
             UPDATE deployments SET state = 'live', finished_at = now() - interval '40 days' WHERE id = '{}';",
            old.id, recent.id, live.id
        ))
        .unwrap();
        let cutoff = Utc::now() - chrono::Duration::days(30);
        assert_eq!(prune_logs(&mut conn, cutoff, 100).unwrap(), 1);
        assert_eq!(prune_logs(&mut conn, cutoff, 100).unwrap(), 0, "pruned once");
        assert!(lines(&mut conn, old.id).is_empty());
        assert_eq!(lines(&mut conn, recent.id).len(), 1);
        assert_eq!(lines(&mut conn, live.id).len(), 1, "a live deployment keeps its logs");
        assert!(find(&mut conn, old.id).unwrap().is_some(), "the deployment stays");
    }
}

//! Runs: one-off commands from a live release (RunCommand, streamed as
//! they go), the list of a project's runs, and a runner's report of how
//! one ended. Runners take runs with their claims (`grpc/runners.rs`).

use std::{pin::Pin, time::Duration};

use capsule::{
    audit::{Actor as AuditActor, Event as AuditEvent},
    auth::{Caller, Permission},
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations},
};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{line_proto, run_proto},
    db::{self, runs::NewRun},
    notify::Event,
    runners::runner_of,
    state::{DeployServiceApi, STREAM_PAGE},
    validate::check_environment,
};

pub(crate) type RunStream = Pin<Box<dyn Stream<Item = Result<pb::RunCommandResponse, Status>> + Send>>;

/// A run's time limit when the request gives none.
const DEFAULT_TIME_LIMIT: u32 = 600;

/// How often a run's stream looks at the run even without a notification.
const LOOK_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn run_command(
    api: &DeployServiceApi,
    request: Request<pb::RunCommandRequest>,
) -> Result<Response<RunStream>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let actor = AuditActor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let environment = check_environment(&body.environment, &mut violations);
    if body.command.trim().is_empty() {
        violations.add(
            "command",
            "must be a shell command such as \"python manage.py migrate\"",
        );
    }
    if body.command.contains('\0') {
        violations.add("command", "must not contain NUL characters");
    }
    let time_limit = match body.time_limit_seconds {
        0 => DEFAULT_TIME_LIMIT,
        seconds @ 1..=3600 => seconds,
        _ => {
            violations.add("time_limit_seconds", "must be 1 to 3600 (0: 600)");
            DEFAULT_TIME_LIMIT
        }
    };
    violations.check()?;
    let organization = api.check_project(&caller, permission, project_id).await?;
    let wanted = environment.clone();
    let live = api
        .db()
        .run(move |conn| db::runs::live_release(conn, project_id, &wanted))
        .await?
        .filter(|deployment| deployment.artifact_digest.is_some())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "nothing is live in environment {environment:?} with a kept release: deploy it first"
            ))
        })?;
    // A run's stream is a follow stream like a log's: one of the caller's
    // slots, taken before anything is queued, free again when it ends.
    let slot = api.inner.streams.take(caller.user_id)?;
    // Notifications from before the run's first line are not needed.
    let events = api.inner.hub.subscribe();
    let command = body.command;
    let creator = caller.user_id;
    let new_id = Uuid::new_v4();
    let most = api.inner.max_runs_per_project;
    let run = api
        .db()
        .run(move |conn| {
            db::runs::create(
                conn,
                &NewRun {
                    id: new_id,
                    project_id,
                    deployment_id: live.id,
                    environment: &live.environment,
                    kind: "command",
                    name: "",
                    command: &command,
                    time_limit_secs: i32::try_from(time_limit).unwrap_or(i32::MAX),
                    creator_id: Some(creator),
                    scheduled_for: None,
                },
                most,
            )
        })
        .await?
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the project has {most} runs queued or running (DEPLOY_MAX_RUNS_PER_PROJECT): wait for one to end"
            ))
        })?;
    tracing::info!(run.id = %run.id, project.id = %project_id, user.id = %caller.user_id, "run queued");
    api.audit(
        AuditEvent::new(&actor, "run.create", format!("runs/{}", run.id))
            .organization(organization)
            .project(project_id)
            .detail("environment", &run.environment)
            .detail("deployment_id", run.deployment_id.to_string())
            .detail("command", &run.command),
    )
    .await;
    Ok(Response::new(follow(api.clone(), run, events, slot)))
}

/// The run as it is, its lines as they come, and the run as it ended.
fn follow(
    api: DeployServiceApi,
    run: db::runs::Run,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    slot: capsule::rpc::StreamSlot,
) -> RunStream {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let _slot = slot;
        let (id, deployment_id, process) = (run.id, run.deployment_id, run.process());
        let send = |event| {
            let tx = tx.clone();
            async move { tx.send(Ok(pb::RunCommandResponse { event: Some(event) })).await.is_ok() }
        };
        if !send(pb::run_command_response::Event::Run(run_proto(&run))).await {
            return;
        }
        let mut look = tokio::time::interval(LOOK_EVERY);
        // From the run's first line on: none before it is its own.
        let mut last: Option<i64> = None;
        loop {
            // Every line of the run after `last`, then whether it ended.
            loop {
                let (wanted, after) = (process.clone(), last);
                let rows = match api
                    .db()
                    .run(move |conn| db::process_logs_after(conn, deployment_id, &wanted, after, STREAM_PAGE))
                    .await
                {
                    Ok(rows) => rows,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                let full = rows.len() == usize::try_from(STREAM_PAGE).unwrap_or(usize::MAX);
                for row in rows {
                    last = Some(row.sequence);
                    if !send(pb::run_command_response::Event::Line(line_proto(row))).await {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            match api.db().run(move |conn| db::runs::find(conn, id)).await {
                Ok(Some(run)) if run.ended() => {
                    let _ = send(pb::run_command_response::Event::Run(run_proto(&run))).await;
                    return;
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = tx.send(Err(Status::from(err))).await;
                    return;
                }
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = api.inner.hub.stopped() => {
                        let _ = tx.send(Err(Status::unavailable("the service is stopping; see the run with ListRuns"))).await;
                        return;
                    }
                    _ = look.tick() => break,
                    event = events.recv() => match event {
                        Ok(Event::Log(of)) if of == deployment_id => break,
                        Ok(Event::Run(of)) if of == id => break,
                        Ok(Event::Resync) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                        Ok(_) => {}
                    },
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

pub(super) async fn list_runs(
    api: &DeployServiceApi,
    request: Request<pb::ListRunsRequest>,
) -> Result<Response<pb::ListRunsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    violations.check()?;
    api.check_project(&caller, permission, project_id).await?;
    let runs = api
        .db()
        .run(move |conn| db::runs::list(conn, project_id, limit))
        .await?;
    Ok(Response::new(pb::ListRunsResponse {
        runs: runs.iter().map(run_proto).collect(),
    }))
}

pub(super) async fn report_run(
    api: &DeployServiceApi,
    request: Request<pb::ReportRunRequest>,
) -> Result<Response<pb::ReportRunResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("run_id", &body.run_id, &mut violations);
    if body.exit_code.is_none() && body.failure.is_empty() {
        violations.add(
            "exit_code",
            "give exit_code (it exited) or failure (why it did not), or both",
        );
    }
    violations.check()?;
    let ended = api
        .db()
        .run(move |conn| db::runs::finish(conn, id, &runner, body.exit_code, &body.failure))
        .await?;
    match ended {
        Some(_) => Ok(Response::new(pb::ReportRunResponse {})),
        None => Err(Status::permission_denied(
            "this runner does not run this run (it ended, or another runner has it)",
        )),
    }
}

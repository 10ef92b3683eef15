//! The runner API (claims, heartbeats, status and log reports) and the runners' registration.

use capsule::{
    auth::Caller,
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::{
    db::{
        self, Actor, Outcome, Refusal,
        runners::{NewRunner, Runner},
    },
    lifecycle::State,
    notify::Event,
};

use crate::{
    convert::{deployment_proto, runner_proto},
    runners::{new_runner_token, runner_of},
    state::{DeployServiceApi, MAX_APPEND_LINES, MAX_LINE_BYTES, refusal},
};

pub(super) async fn claim_deployment(
    api: &DeployServiceApi,
    request: Request<pb::ClaimDeploymentRequest>,
) -> Result<Response<pb::ClaimDeploymentResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let lease = match body.lease {
        None => api.inner.lease,
        Some(lease) if lease.seconds >= 1 && lease.seconds <= 3600 && lease.nanos >= 0 => {
            chrono::Duration::seconds(lease.seconds) + chrono::Duration::nanoseconds(i64::from(lease.nanos))
        }
        Some(_) => {
            violations.add("lease", "must be between 1 s and 1 h");
            api.inner.lease
        }
    };
    let wait = match body.wait {
        None => Duration::ZERO,
        Some(wait) if (0..=60).contains(&wait.seconds) && wait.nanos >= 0 => {
            Duration::new(wait.seconds.unsigned_abs(), wait.nanos.unsigned_abs())
        }
        Some(_) => {
            violations.add("wait", "must be between 0 and 60 s");
            Duration::ZERO
        }
    };
    violations.check()?;
    if body.fresh {
        let restarted = runner.clone();
        api.inner
            .db
            .run(move |conn| db::replicas::forget_runner(conn, &restarted))
            .await?;
    }
    let claimed = claim_within(api, &runner, lease, wait, !body.no_runs).await?;
    let Some(db::Claimed {
        deployment,
        sandbox_slot,
        replica,
        run,
    }) = claimed
    else {
        return Ok(Response::new(pb::ClaimDeploymentResponse::default()));
    };
    let id = deployment.id;
    let environment = api.environment(deployment.project_id).await;
    if let Some(run) = &run
        && !matches!(environment, Ok(Some(_)))
    {
        let (run_id, claimer) = (run.id, runner.clone());
        let why = "not started: the project's variables could not be read";
        api.inner
            .db
            .run(move |conn| db::runs::finish(conn, run_id, &claimer, None, why))
            .await?;
        return environment.map(|_| Response::new(pb::ClaimDeploymentResponse::default()));
    }
    if replica && !matches!(environment, Ok(Some(_))) {
        // The live deployment stands; this copy waits for a later claim.
        let why = "not started: the project's variables could not be read";
        api.inner
            .db
            .run(move |conn| db::replicas::give_up(conn, id, &runner, why))
            .await?;
        return environment.map(|_| Response::new(pb::ClaimDeploymentResponse::default()));
    }
    let (variables, deploy_key) = match environment {
        Ok(Some(environment)) => (environment.environment_variables, environment.deploy_key),
        Ok(None) => {
            let outcome = Outcome {
                message: "the project no longer exists".to_owned(),
                ..Outcome::default()
            };
            api.change(id, State::Failed, Actor::Runner(runner), outcome).await?;
            return Ok(Response::new(pb::ClaimDeploymentResponse::default()));
        }
        Err(status) => {
            // Back to the queue at once, for a later claim.
            api.inner.db.run(move |conn| db::release(conn, id, &runner)).await?;
            return Err(status);
        }
    };
    let (variables, database_address) = match with_database(api, &deployment, variables, replica || run.is_some()).await
    {
        Ok(prepared) => prepared,
        Err(why) => {
            let outcome = Outcome {
                message: why,
                ..Outcome::default()
            };
            api.change(id, State::Failed, Actor::Runner(runner), outcome).await?;
            return Ok(Response::new(pb::ClaimDeploymentResponse::default()));
        }
    };
    let snapshot = deployment.snapshot();
    let project_id = deployment.project_id;
    let cache_generation = api
        .inner
        .db
        .run(move |conn| db::egress::cache_generation(conn, project_id))
        .await?;
    Ok(Response::new(pb::ClaimDeploymentResponse {
        sandbox_slot: u32::try_from(sandbox_slot).unwrap_or_default(),
        lease_expire_time: deployment.lease_expires_at.map(rpc::timestamp),
        snapshot: Some(pb::DeploymentSnapshot {
            build_command: snapshot.build_command,
            start_command: snapshot.start_command,
            root_directory: snapshot.root_directory,
            repository_url: snapshot.repository_url,
            commit_sha: deployment.commit_sha.clone(),
            health_check_path: snapshot.health_check_path,
            release_command: snapshot.release_command,
            artifact_digest: deployment.artifact_digest.clone().unwrap_or_default(),
            deploy_key,
            build_egress: snapshot.build_egress,
            app_egress: snapshot.app_egress,
            memory_mb: snapshot.memory_mb,
            cpu_millis: snapshot.cpu_millis,
            processes: snapshot.processes,
            process_types: snapshot
                .process_types
                .into_iter()
                .map(capsule::schedule::ProcessType::into_entry)
                .collect(),
            idle_timeout_seconds: snapshot.idle_timeout_secs,
            source_digest: snapshot.source_digest,
            database_address,
            cache_generation: u64::try_from(cache_generation).unwrap_or_default(),
            secret_names: variables
                .iter()
                .filter(|variable| variable.secret)
                .map(|variable| variable.name.clone())
                .collect(),
            environment: variables
                .into_iter()
                .map(|variable| (variable.name, variable.value))
                .collect(),
        }),
        deployment: Some(deployment_proto(&deployment)),
        replica,
        run: run.as_ref().map(crate::convert::run_proto),
    }))
}

/// The variables with the environment's `DATABASE_URL` (secret, over any
/// the project set) and the address its forwarder reaches, when it has a
/// database; before a build whose release command will run, a backup of
/// it (`DEPLOY_BACKUP_BEFORE_RELEASE`). Why the deployment cannot go on,
/// when it cannot.
async fn with_database(
    api: &DeployServiceApi,
    deployment: &db::Deployment,
    mut variables: Vec<capsule::proto::project::v1::EnvironmentVariable>,
    started_from_release: bool,
) -> Result<(Vec<capsule::proto::project::v1::EnvironmentVariable>, String), String> {
    let databases = api.databases();
    let cannot = |status: Status| format!("the environment's database cannot be reached: {}", status.message());
    let Some((url, address)) = databases
        .for_app(deployment.project_id, &deployment.environment)
        .await
        .map_err(cannot)?
    else {
        return Ok((variables, String::new()));
    };
    let releases = !deployment.snapshot().release_command.is_empty();
    if releases && !started_from_release && databases.config().backup_before_release {
        let database = databases
            .find(deployment.project_id, &deployment.environment)
            .await
            .map_err(cannot)?;
        if let Some(database) = database {
            databases
                .backup(&database, crate::databases::Reason::Release)
                .await
                .map_err(|status| format!("the backup before the release command failed: {}", status.message()))?;
        }
    }
    variables.retain(|variable| variable.name != crate::databases::VARIABLE);
    variables.push(capsule::proto::project::v1::EnvironmentVariable {
        name: crate::databases::VARIABLE.to_owned(),
        value: url,
        secret: true,
        update_time: None,
    });
    Ok((variables, address))
}

/// Claims a deployment for `runner`, waiting up to `wait` for one to
/// become claimable: woken by a deployment's change, and every 2 s for
/// leases that ran out. `None` when the wait ends (or the service stops).
async fn claim_within(
    api: &DeployServiceApi,
    runner: &str,
    lease: chrono::Duration,
    wait: Duration,
    runs: bool,
) -> Result<Option<db::Claimed>, Status> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = api.inner.hub.subscribe();
    loop {
        let (claimer, per_project) = (runner.to_owned(), api.inner.max_builds_per_project);
        let claimed = api
            .inner
            .db
            .run(move |conn| db::claim(conn, &claimer, lease, per_project, runs))
            .await?;
        if claimed.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(claimed);
        }
        let retry = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(2)));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = api.inner.hub.stopped() => return Ok(None),
                () = &mut retry => break,
                event = events.recv() => match event {
                    Ok(Event::State(_) | Event::Run(_) | Event::Resync) | Err(RecvError::Lagged(_)) => break,
                    Ok(Event::Log(_) | Event::Domain(_)) => {}
                    Err(RecvError::Closed) => return Ok(None),
                },
            }
        }
    }
}

pub(super) async fn heartbeat(
    api: &DeployServiceApi,
    request: Request<pb::HeartbeatRequest>,
) -> Result<Response<pb::HeartbeatResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let id = rpc::require_id("deployment_id", &body.deployment_id)?;
    let lease = api.inner.lease;
    if body.release {
        let why = "given up (the runner stopped)";
        api.inner
            .db
            .run(move |conn| db::replicas::give_up(conn, id, &runner, why))
            .await?;
        return Ok(Response::new(pb::HeartbeatResponse {
            lease_expire_time: Some(rpc::timestamp(chrono::Utc::now())),
            cancel_requested: true,
        }));
    }
    let renewed = api
        .inner
        .db
        .run(move |conn| db::heartbeat(conn, id, &runner, lease))
        .await?;
    let (expires, cancel_requested) = renewed.ok_or_else(|| refusal(Refusal::NotYourClaim, State::Building))?;
    Ok(Response::new(pb::HeartbeatResponse {
        lease_expire_time: Some(rpc::timestamp(expires)),
        cancel_requested,
    }))
}

pub(super) async fn report_status(
    api: &DeployServiceApi,
    request: Request<pb::ReportStatusRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    let to = match pb::DeploymentState::try_from(body.state)
        .ok()
        .and_then(State::from_proto)
    {
        Some(state @ (State::Deploying | State::Live | State::Failed | State::Crashed)) => state,
        _ => {
            violations.add(
                "state",
                "a runner reports DEPLOYMENT_STATE_DEPLOYING, _LIVE, _FAILED or _CRASHED",
            );
            State::Failed
        }
    };
    if !body.upstream.is_empty() && body.upstream.parse::<std::net::SocketAddr>().is_err() {
        violations.add("upstream", "must be an address such as 127.0.0.1:40123");
    }
    // Its form is the proto's rule.
    if !body.artifact_digest.is_empty() && to != State::Deploying {
        violations.add("artifact_digest", "only with DEPLOYMENT_STATE_DEPLOYING");
    }
    if body.status_message.len() > 1024 {
        violations.add("status_message", "must be at most 1024 bytes");
    }
    // Their sizes are the proto's rule.
    let commit_given = !body.commit_message.is_empty() || !body.commit_author.is_empty() || !body.commit_sha.is_empty();
    if commit_given && to != State::Deploying {
        violations.add("commit_message", "only with DEPLOYMENT_STATE_DEPLOYING");
    }
    violations.check()?;
    let outcome = Outcome {
        message: body.status_message,
        exit_code: body.exit_code,
        upstream: (to == State::Live && !body.upstream.is_empty()).then_some(body.upstream),
        artifact_digest: (!body.artifact_digest.is_empty()).then_some(body.artifact_digest),
        commit: commit_given.then_some(db::Fetched {
            sha: body.commit_sha,
            message: body.commit_message,
            author: body.commit_author,
        }),
    };
    let deployment = api.change(id, to, Actor::Runner(runner), outcome).await?;
    if to == State::Crashed {
        api.roll_back_crashed(&deployment).await;
    }
    Ok(Response::new(deployment_proto(&deployment)))
}

pub(super) async fn report_replica(
    api: &DeployServiceApi,
    request: Request<pb::ReportReplicaRequest>,
) -> Result<Response<pb::ReportReplicaResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    if !body.upstream.is_empty() && body.upstream.parse::<std::net::SocketAddr>().is_err() {
        violations.add("upstream", "must be an address such as 127.0.0.1:40123");
    }
    if body.upstream.is_empty() == body.failure.is_empty() {
        violations.add(
            "upstream",
            "give either upstream (it serves) or failure (it did not start)",
        );
    }
    if body.failure.len() > 1024 {
        violations.add("failure", "must be at most 1024 bytes");
    }
    violations.check()?;
    let lease = api.inner.lease;
    let held = api
        .inner
        .db
        .run(move |conn| {
            if db::holds(conn, id, &runner)?.is_none() {
                return Ok(false);
            }
            match body.failure.as_str() {
                "" => {
                    db::replicas::serving(conn, id, &runner, &body.upstream, lease)?;
                    let line = format!("replica serving on runner {runner}");
                    db::append(conn, id, &[("system", line)], None)?;
                }
                why => {
                    db::replicas::failed(conn, id, &runner, why)?;
                }
            }
            Ok(true)
        })
        .await?;
    if !held {
        return Err(refusal(Refusal::NotYourClaim, State::Live));
    }
    Ok(Response::new(pb::ReportReplicaResponse {}))
}

pub(super) async fn append_logs(
    api: &DeployServiceApi,
    request: Request<pb::AppendLogsRequest>,
) -> Result<Response<pb::AppendLogsResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    if body.entries.len() > MAX_APPEND_LINES {
        violations.add("entries", format!("at most {MAX_APPEND_LINES} lines per call"));
    }
    for (index, entry) in body.entries.iter().enumerate() {
        if entry.text.len() > MAX_LINE_BYTES {
            violations.add(format!("entries[{index}].text"), "must be at most 16 KiB");
        }
        if entry.text.contains('\0') {
            violations.add(format!("entries[{index}].text"), "must not contain NUL characters");
        }
        if entry.process != body.entries[0].process {
            violations.add(
                format!("entries[{index}].process"),
                "must be the same for every line of a call",
            );
        }
        if !matches!(
            pb::LogStream::try_from(entry.stream),
            Ok(pb::LogStream::Stdout | pb::LogStream::Stderr | pb::LogStream::System)
        ) {
            violations.add(
                format!("entries[{index}].stream"),
                "must be LOG_STREAM_STDOUT, _STDERR or _SYSTEM",
            );
        }
    }
    violations.check()?;
    let process = body
        .entries
        .first()
        .map(|entry| entry.process.clone())
        .unwrap_or_default();
    let entries = body.entries;
    let cap = api.inner.max_log_lines;
    let last = api
        .inner
        .db
        .run(move |conn| {
            let allowed = match process.strip_prefix("run.").map(str::parse::<uuid::Uuid>) {
                Some(Ok(run)) => db::runs::held(conn, run, id, &runner)?,
                Some(Err(_)) => false,
                None => db::holds(conn, id, &runner)?.is_some(),
            };
            if !allowed {
                return Ok(None);
            }
            // The runner masks secret values: it alone holds them.
            let lines: Vec<(&str, String)> = entries
                .into_iter()
                .map(|entry| {
                    let stream = match pb::LogStream::try_from(entry.stream) {
                        Ok(pb::LogStream::Stderr) => "stderr",
                        Ok(pb::LogStream::System) => "system",
                        _ => "stdout",
                    };
                    (stream, entry.text)
                })
                .collect();
            db::append_as(conn, id, &process, &lines, Some(cap)).map(Some)
        })
        .await?
        .ok_or_else(|| refusal(Refusal::NotYourClaim, State::Building))?;
    Ok(Response::new(pb::AppendLogsResponse { last_sequence: last }))
}

pub(super) async fn create_runner(
    api: &DeployServiceApi,
    request: Request<pb::CreateRunnerRequest>,
) -> Result<Response<pb::CreateRunnerResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let name = request.into_inner().name;
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if !valid {
        return Err(rpc::invalid_field(
            "name",
            "must be 1 to 128 letters, digits, '.', '_', ':' and '-', such as build-eu-1",
        ));
    }
    let (token, hash) = new_runner_token()?;
    let created = api
        .inner
        .db
        .run(move |conn| {
            Runner::create(
                conn,
                &NewRunner {
                    name: &name,
                    token_hash: &hash,
                    created_by: Some(caller.user_id),
                },
            )
        })
        .await;
    let runner = match created {
        Ok(runner) => runner,
        Err(err) if err.is_unique_violation(None) => {
            return Err(Status::already_exists(
                "a runner of this name exists; choose another name",
            ));
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(runner.id = %runner.id, user.id = %caller.user_id, "runner registered");
    Ok(Response::new(pb::CreateRunnerResponse {
        runner: Some(runner_proto(&runner)),
        token,
    }))
}

pub(super) async fn list_runners(
    api: &DeployServiceApi,
    request: Request<pb::ListRunnersRequest>,
) -> Result<Response<pb::ListRunnersResponse>, Status> {
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    violations.check()?;
    let rows = api
        .inner
        .db
        .run(move |conn| Runner::list(conn, after.map(|t| (t.time, t.id)), limit + 1))
        .await?;
    let next_page_token = rpc::next_page_token(&rows, limit, |row| (row.created_at, row.id));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(Response::new(pb::ListRunnersResponse {
        runners: rows.iter().take(limit).map(runner_proto).collect(),
        next_page_token,
    }))
}

pub(super) async fn delete_runner(
    api: &DeployServiceApi,
    request: Request<pb::DeleteRunnerRequest>,
) -> Result<Response<pb::DeleteRunnerResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let id = rpc::require_id("runner_id", &request.get_ref().runner_id)?;
    if !api.inner.db.run(move |conn| Runner::delete(conn, id)).await? {
        return Err(Status::not_found("no such runner"));
    }
    tracing::info!(runner.id = %id, user.id = %caller.user_id, "runner deleted");
    Ok(Response::new(pb::DeleteRunnerResponse {}))
}

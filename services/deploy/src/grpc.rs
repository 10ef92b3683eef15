//! The `capsule.deploy.v1.DeployService` implementation: parse, authorize,
//! call the domain, convert.

use std::{pin::Pin, sync::Arc, time::Duration};

use capsule::{
    auth::{Caller, INTERNAL_HEADER},
    db::Database,
    proto::{
        deploy::v1::{self as pb, deploy_service_server::DeployService},
        project::v1::{
            DeploymentPlan, GetDeploymentEnvironmentRequest, GetProjectRequest, PrepareDeploymentRequest,
            project_service_client::ProjectServiceClient,
        },
    },
    rpc::{self, FieldViolations, PageToken},
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    config::{DeployConfig, SourceConfig},
    db::{
        self, Actor, Deployment, LogRow, NewDeployment, Outcome, Refusal, Snapshot, Viewer,
        runners::{NewRunner, Runner},
    },
    notify::{Event, Hub},
    runner::source::{Commit, Repository, SourceError},
    state::State,
};

/// At most this many lines per AppendLogs call, and bytes per line.
const MAX_APPEND_LINES: usize = 1000;
const MAX_LINE_BYTES: usize = 16 * 1024;
/// StreamLogs reads the backlog in pages of this many lines.
const STREAM_PAGE: i64 = 500;
/// The deadline of calls to the project service.
const PROJECT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The deploy service's gRPC API.
#[derive(Clone)]
pub struct DeployServiceApi {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    hub: Hub,
    projects: ProjectServiceClient<tonic::transport::Channel>,
    internal_secret: Option<String>,
    lease: chrono::Duration,
    /// Output lines kept per deployment.
    max_log_lines: i64,
    source: SourceConfig,
}

const NOT_FOUND: &str = "no such deployment";

fn viewer(caller: &Caller) -> Viewer {
    Viewer {
        user_id: caller.user_id,
        admin: caller.is_admin(),
    }
}

pub fn deployment_proto(deployment: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: deployment.id.to_string(),
        project_id: deployment.project_id.to_string(),
        creator_id: deployment.creator_id.to_string(),
        state: deployment.state().proto() as i32,
        source_ref: deployment.source_ref.clone(),
        environment: deployment.environment.clone(),
        rollback_of: deployment.rollback_of.map(|id| id.to_string()).unwrap_or_default(),
        status_message: deployment.status_message.clone(),
        exit_code: deployment.exit_code,
        runner_id: deployment.runner_id.clone().unwrap_or_default(),
        create_time: Some(rpc::timestamp(deployment.created_at)),
        update_time: Some(rpc::timestamp(deployment.updated_at)),
        start_time: deployment.started_at.map(rpc::timestamp),
        finish_time: deployment.finished_at.map(rpc::timestamp),
        commit_sha: deployment.commit_sha.clone(),
        commit_message: deployment.commit_message.clone(),
        commit_author: deployment.commit_author.clone(),
        url: match (deployment.state(), deployment.host()) {
            (State::Live, Some(host)) => capsule::config::app_url(&host),
            _ => String::new(),
        },
    }
}

fn stream_of(name: &str) -> pb::LogStream {
    match name {
        "stdout" => pb::LogStream::Stdout,
        "stderr" => pb::LogStream::Stderr,
        _ => pb::LogStream::System,
    }
}

fn line_proto(row: LogRow) -> pb::LogLine {
    pb::LogLine {
        deployment_id: row.deployment_id.to_string(),
        sequence: row.sequence,
        stream: stream_of(&row.stream) as i32,
        text: row.line,
        time: Some(rpc::timestamp(row.created_at)),
        phase: if row.runtime {
            pb::LogPhase::Runtime
        } else {
            pb::LogPhase::Build
        } as i32,
    }
}

fn refusal(refusal: Refusal, to: State) -> Status {
    match refusal {
        Refusal::NotFound => Status::not_found(NOT_FOUND),
        Refusal::Illegal { from } => {
            Status::failed_precondition(format!("a {} deployment cannot become {}", from.as_str(), to.as_str()))
        }
        Refusal::NotYourClaim => Status::permission_denied(
            "this runner does not hold the deployment (another runner claimed it, or the lease ran out); \
             stop working on it",
        ),
    }
}

fn id_field(field: &str, value: &str) -> Result<Uuid, Status> {
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id(field, value, &mut violations);
    violations.check()?;
    Ok(id)
}

fn check_environment(value: &str, violations: &mut FieldViolations) -> String {
    let environment = if value.is_empty() { "production" } else { value };
    let ok = environment.len() <= 63
        && environment
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        violations.add(
            "environment",
            "must be up to 63 lowercase letters, digits and hyphens, such as production",
        );
    }
    environment.to_owned()
}

fn check_source_ref(value: &str, violations: &mut FieldViolations) {
    let ok = value.len() <= 255
        && !value.starts_with(['-', '/'])
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok {
        violations.add(
            "source_ref",
            "must be a branch, tag or commit (letters, digits, '-', '_', '.', '/') of at most 255 characters",
        );
    }
}

/// The registered runner making a runner-API call.
fn runner_of<T>(request: &Request<T>) -> Result<String, Status> {
    Caller::of(request)?
        .runner_id()
        .map(|id| id.to_string())
        .ok_or_else(|| Status::permission_denied("only a registered runner may call the runner API"))
}

fn runner_proto(runner: &Runner) -> pb::Runner {
    pb::Runner {
        id: runner.id.to_string(),
        name: runner.name.clone(),
        creator_id: runner.created_by.map(|id| id.to_string()).unwrap_or_default(),
        create_time: Some(rpc::timestamp(runner.created_at)),
        last_seen_time: runner.last_seen_at.map(rpc::timestamp),
    }
}

/// A new runner token (256 random bits) and the hash that is stored.
pub fn new_runner_token() -> Result<(String, Vec<u8>), Status> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Status::unavailable("no randomness available; retry"))?;
    let token = format!(
        "capsule_runner_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = runner_token_hash(&token);
    Ok((token, hash))
}

pub fn runner_token_hash(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// Runner tokens checked against the registered runners, on every call:
/// a deleted runner is refused at once.
pub struct RegisteredRunners(pub Database);

#[tonic::async_trait]
impl capsule::auth::RunnerVerifier for RegisteredRunners {
    async fn runner(&self, token: &str) -> Result<Option<Uuid>, Status> {
        let hash = runner_token_hash(token);
        Ok(self.0.run(move |conn| Runner::by_token(conn, &hash)).await?)
    }
}

impl DeployServiceApi {
    pub fn new(
        db: Database,
        hub: Hub,
        projects: ProjectServiceClient<tonic::transport::Channel>,
        internal_secret: Option<String>,
        config: &DeployConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                hub,
                projects,
                internal_secret,
                lease: chrono::Duration::from_std(config.lease)?,
                max_log_lines: i64::try_from(config.max_log_lines)?,
                source: config.source.clone(),
            }),
        })
    }

    /// The deployment if the caller may see it; NOT_FOUND otherwise.
    async fn visible(&self, caller: &Caller, id: Uuid) -> Result<Deployment, Status> {
        let viewer = viewer(caller);
        self.inner
            .db
            .run(move |conn| db::find(conn, id, Some(viewer)))
            .await?
            .ok_or_else(|| Status::not_found(NOT_FOUND))
    }

    /// Asks the project service, as the caller, whether the project exists
    /// and the caller may deploy it, and for the settings to snapshot.
    /// A request to the project service on the caller's behalf.
    fn as_caller<T>(caller: &Caller, message: T) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        request.set_timeout(PROJECT_CALL_TIMEOUT);
        let token = caller
            .authorization()
            .parse()
            .map_err(|_| Status::unauthenticated("bad token"))?;
        request.metadata_mut().insert("authorization", token);
        Ok(request)
    }

    /// The project service's answer, in this service's words.
    fn project_status(status: Status) -> Status {
        match status.code() {
            Code::NotFound => Status::not_found("no such project"),
            Code::FailedPrecondition | Code::InvalidArgument | Code::Unauthenticated => status,
            Code::PermissionDenied => {
                tracing::error!(error = %status.message(), "the project service refused this service's credentials");
                Status::internal("internal error")
            }
            _ => Status::unavailable(format!(
                "the project service is unavailable ({}); retry shortly",
                status.message()
            )),
        }
    }

    /// Asks the project service, as the caller, whether the project exists
    /// and the caller may deploy it, and for the settings to snapshot (this
    /// call needs the internal secret).
    async fn prepare(&self, caller: &Caller, project_id: Uuid) -> Result<DeploymentPlan, Status> {
        let mut request = Self::as_caller(
            caller,
            PrepareDeploymentRequest {
                project_id: project_id.to_string(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().prepare_deployment(request).await {
            Ok(plan) => Ok(plan.into_inner()),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// The exact commit `source_ref` names in the project's repository now
    /// (none without a repository). What the user can fix is
    /// INVALID_ARGUMENT naming the field.
    async fn resolve(&self, repository_url: &str, source_ref: &str) -> Result<Commit, Status> {
        if repository_url.is_empty() {
            return Ok(Commit {
                sha: String::new(),
                message: String::new(),
                author: String::new(),
            });
        }
        let repository = Repository::parse(repository_url, &self.inner.source.local_repositories)
            .map_err(|err| rpc::invalid_field("repository_url", &err.to_string()))?;
        repository.resolve(source_ref).await.map_err(|err| match err {
            SourceError::MissingRef { .. } => rpc::invalid_field("source_ref", &err.to_string()),
            other => rpc::invalid_field("repository_url", &other.to_string()),
        })
    }

    /// Queues a deployment of `plan` at `source_ref` (the plan's branch when
    /// empty), resolved to its exact commit now.
    pub(crate) async fn queue(
        &self,
        plan: DeploymentPlan,
        creator_id: Uuid,
        environment: String,
        source_ref: String,
    ) -> Result<Deployment, Status> {
        let project = plan.project.unwrap_or_default();
        let project_id: Uuid = project.id.parse().map_err(|_| Status::internal("internal error"))?;
        let source_ref = if source_ref.is_empty() { plan.branch } else { source_ref };
        let commit = self.resolve(&plan.repository_url, &source_ref).await?;
        let snapshot = Snapshot {
            build_command: plan.build_command,
            start_command: plan.start_command,
            root_directory: plan.root_directory,
            repository_url: plan.repository_url,
            health_check_path: plan.health_check_path,
        };
        let new = NewDeployment {
            project_id,
            creator_id,
            owner_id: project.owner_id.parse().ok(),
            source_ref,
            environment,
            snapshot: serde_json::to_value(&snapshot).map_err(|_| Status::internal("internal error"))?,
            rollback_of: None,
            commit_sha: commit.sha,
            commit_message: commit.message,
            commit_author: commit.author,
            host_label: project.host_label,
        };
        Ok(self.inner.db.run(move |conn| db::create(conn, &new)).await?)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    pub(crate) fn projects(&self) -> ProjectServiceClient<tonic::transport::Channel> {
        self.inner.projects.clone()
    }

    pub(crate) fn source_config(&self) -> &SourceConfig {
        &self.inner.source
    }

    /// Adds the service credential to a request to the project service.
    pub(crate) fn as_service<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        let secret = self.inner.internal_secret.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "deployments are not enabled: set CAPSULE_INTERNAL_SECRET on project and deploy",
            )
        })?;
        request.metadata_mut().insert(
            INTERNAL_HEADER,
            secret.parse().map_err(|_| Status::internal("internal error"))?,
        );
        Ok(())
    }

    /// The project's variables as they are now, for the runner that claimed
    /// one of its deployments: `Ok(None)` when the project is gone.
    async fn environment(
        &self,
        project_id: Uuid,
    ) -> Result<Option<Vec<capsule::proto::project::v1::EnvironmentVariable>>, Status> {
        let mut request = Request::new(GetDeploymentEnvironmentRequest {
            project_id: project_id.to_string(),
        });
        request.set_timeout(PROJECT_CALL_TIMEOUT);
        self.as_service(&mut request)?;
        match self.inner.projects.clone().get_deployment_environment(request).await {
            Ok(environment) => Ok(Some(environment.into_inner().environment_variables)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// Whether the caller may see the project: the project service's call
    /// (NOT_FOUND there is NOT_FOUND here). No settings, no secrets.
    async fn check_project(&self, caller: &Caller, project_id: Uuid) -> Result<(), Status> {
        let request = Self::as_caller(
            caller,
            GetProjectRequest {
                project_id: project_id.to_string(),
            },
        )?;
        match self.inner.projects.clone().get_project(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    async fn change(&self, id: Uuid, to: State, actor: Actor, outcome: Outcome) -> Result<Deployment, Status> {
        self.inner
            .db
            .run(move |conn| db::transition(conn, id, to, &actor, &outcome))
            .await?
            .map_err(|refused| refusal(refused, to))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;
type RouteStream = Pin<Box<dyn Stream<Item = Result<pb::RouteTable, Status>> + Send>>;

#[tonic::async_trait]
impl DeployService for DeployServiceApi {
    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        let environment = check_environment(&body.environment, &mut violations);
        check_source_ref(&body.source_ref, &mut violations);
        violations.check()?;
        let plan = self.prepare(&caller, project_id).await?;
        let deployment = self.queue(plan, caller.user_id, environment, body.source_ref).await?;
        tracing::info!(deployment.id = %deployment.id, project.id = %project_id, user.id = %caller.user_id, "deployment queued");
        Ok(Response::new(deployment_proto(&deployment)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = Caller::of(&request)?;
        let id = id_field("deployment_id", &request.get_ref().deployment_id)?;
        Ok(Response::new(deployment_proto(&self.visible(caller, id).await?)))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
        let after = PageToken::decode(&body.page_token, &mut violations);
        let state = match pb::DeploymentState::try_from(body.state) {
            Ok(state) => State::from_proto(state),
            Err(_) => {
                violations.add("state", "is not a DeploymentState");
                None
            }
        };
        violations.check()?;
        self.check_project(&caller, project_id).await?;
        let rows = self
            .inner
            .db
            .run(move |conn| db::list(conn, project_id, state, after.map(|t| (t.time, t.id)), limit + 1))
            .await?;
        let next_page_token = rpc::next_page_token(&rows, limit, |row| (row.created_at, row.id));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: rows.iter().take(limit).map(deployment_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_deployment(
        &self,
        request: Request<pb::CancelDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = id_field("deployment_id", &request.get_ref().deployment_id)?;
        self.visible(&caller, id).await?;
        let outcome = Outcome {
            message: "canceled by the user".to_owned(),
            ..Outcome::default()
        };
        let deployment = self.change(id, State::Canceled, Actor::User, outcome).await?;
        tracing::info!(deployment.id = %id, user.id = %caller.user_id, "deployment canceled");
        Ok(Response::new(deployment_proto(&deployment)))
    }

    async fn rollback_deployment(
        &self,
        request: Request<pb::RollbackDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = id_field("deployment_id", &request.get_ref().deployment_id)?;
        let earlier = self.visible(&caller, id).await?;
        if !matches!(earlier.state(), State::Live | State::Superseded) {
            return Err(Status::failed_precondition(format!(
                "only a deployment that went live can be rolled back to; this one is {}",
                earlier.state().as_str()
            )));
        }
        // The project must still exist and be the caller's to deploy. The
        // commands are the earlier deployment's; the variables, as for every
        // deployment, are the project's when a runner claims it.
        self.prepare(&caller, earlier.project_id).await?;
        let new = NewDeployment {
            project_id: earlier.project_id,
            creator_id: caller.user_id,
            owner_id: earlier.owner_id,
            source_ref: earlier.source_ref.clone(),
            environment: earlier.environment.clone(),
            snapshot: earlier.snapshot.clone(),
            rollback_of: Some(earlier.id),
            commit_sha: earlier.commit_sha.clone(),
            commit_message: earlier.commit_message.clone(),
            commit_author: earlier.commit_author.clone(),
            host_label: earlier.host_label.clone(),
        };
        let deployment = self.inner.db.run(move |conn| db::create(conn, &new)).await?;
        Ok(Response::new(deployment_proto(&deployment)))
    }

    async fn get_logs(&self, request: Request<pb::GetLogsRequest>) -> Result<Response<pb::GetLogsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
        let limit = rpc::page_size(body.page_size, 100, 1000, &mut violations);
        if body.after_sequence < 0 {
            violations.add("after_sequence", "must be 0 or more");
        }
        violations.check()?;
        self.visible(&caller, id).await?;
        let after = body.after_sequence;
        let rows = self
            .inner
            .db
            .run(move |conn| db::logs_after(conn, id, after, limit + 1))
            .await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_after_sequence = if rows.len() > limit {
            rows[limit - 1].sequence
        } else {
            0
        };
        Ok(Response::new(pb::GetLogsResponse {
            lines: rows.into_iter().take(limit).map(line_proto).collect(),
            next_after_sequence,
        }))
    }

    async fn stream_logs(&self, request: Request<pb::StreamLogsRequest>) -> Result<Response<LogStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
        if body.after_sequence < 0 {
            violations.add("after_sequence", "must be 0 or more");
        }
        violations.check()?;
        self.visible(&caller, id).await?;
        // Subscribe before reading the backlog, so no line falls between.
        let mut events = self.inner.hub.subscribe();
        let hub = self.inner.hub.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let db = self.inner.db.clone();
        let (follow, mut last) = (body.follow, body.after_sequence);
        tokio::spawn(async move {
            // Sends every line after `last`; false when the client is gone.
            let drain = |last: i64| {
                let (db, tx) = (db.clone(), tx.clone());
                async move {
                    let mut last = last;
                    loop {
                        let rows = match db.run(move |conn| db::logs_after(conn, id, last, STREAM_PAGE)).await {
                            Ok(rows) => rows,
                            Err(err) => {
                                let _ = tx.send(Err(Status::from(err))).await;
                                return None;
                            }
                        };
                        let done = rows.len() < usize::try_from(STREAM_PAGE).unwrap_or(usize::MAX);
                        for row in rows {
                            last = row.sequence;
                            if tx.send(Ok(line_proto(row))).await.is_err() {
                                return None;
                            }
                        }
                        if done {
                            return Some(last);
                        }
                    }
                }
            };
            let settled = |db: Database| async move {
                db.run(move |conn| db::state_of(conn, id))
                    .await
                    .map(|state| state.is_none_or(State::is_final))
            };
            let Some(sent) = drain(last).await else { return };
            last = sent;
            if !follow || matches!(settled(db.clone()).await, Ok(true)) {
                return;
            }
            loop {
                let wake = tokio::select! {
                    () = tx.closed() => return,
                    () = hub.stopped() => {
                        let _ = tx
                            .send(Err(Status::unavailable("the service is stopping; resume with after_sequence")))
                            .await;
                        return;
                    }
                    event = events.recv() => event,
                };
                let (read, check_state) = match wake {
                    Ok(Event::Log(event_id)) if event_id == id => (true, false),
                    Ok(Event::State(event_id)) if event_id == id => (true, true),
                    Ok(Event::Resync) | Err(RecvError::Lagged(_)) => (true, true),
                    Ok(_) => (false, false),
                    Err(RecvError::Closed) => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the log feed stopped; resume with after_sequence",
                            )))
                            .await;
                        return;
                    }
                };
                if read {
                    let Some(sent) = drain(last).await else { return };
                    last = sent;
                }
                if check_state && matches!(settled(db.clone()).await, Ok(true)) {
                    // Lines written with the final state change are in.
                    let _ = drain(last).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn claim_deployment(
        &self,
        request: Request<pb::ClaimDeploymentRequest>,
    ) -> Result<Response<pb::ClaimDeploymentResponse>, Status> {
        let runner = runner_of(&request)?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let lease = match body.lease {
            None => self.inner.lease,
            Some(lease) if lease.seconds >= 1 && lease.seconds <= 3600 && lease.nanos >= 0 => {
                chrono::Duration::seconds(lease.seconds) + chrono::Duration::nanoseconds(i64::from(lease.nanos))
            }
            Some(_) => {
                violations.add("lease", "must be between 1 s and 1 h");
                self.inner.lease
            }
        };
        violations.check()?;
        let claimer = runner.clone();
        let claimed = self.inner.db.run(move |conn| db::claim(conn, &claimer, lease)).await?;
        let Some(deployment) = claimed else {
            return Ok(Response::new(pb::ClaimDeploymentResponse::default()));
        };
        let id = deployment.id;
        let variables = match self.environment(deployment.project_id).await {
            Ok(Some(variables)) => variables,
            Ok(None) => {
                let outcome = Outcome {
                    message: "the project no longer exists".to_owned(),
                    ..Outcome::default()
                };
                self.change(id, State::Failed, Actor::Runner(runner), outcome).await?;
                return Ok(Response::new(pb::ClaimDeploymentResponse::default()));
            }
            Err(status) => {
                // Back to the queue at once, for a later claim.
                self.inner.db.run(move |conn| db::release(conn, id, &runner)).await?;
                return Err(status);
            }
        };
        let snapshot = deployment.snapshot();
        Ok(Response::new(pb::ClaimDeploymentResponse {
            lease_expire_time: deployment.lease_expires_at.map(rpc::timestamp),
            snapshot: Some(pb::DeploymentSnapshot {
                build_command: snapshot.build_command,
                start_command: snapshot.start_command,
                root_directory: snapshot.root_directory,
                repository_url: snapshot.repository_url,
                commit_sha: deployment.commit_sha.clone(),
                health_check_path: snapshot.health_check_path,
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
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let runner = runner_of(&request)?;
        let body = request.into_inner();
        let id = id_field("deployment_id", &body.deployment_id)?;
        let lease = self.inner.lease;
        let renewed = self
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

    async fn report_status(
        &self,
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
        if body.status_message.len() > 1024 {
            violations.add("status_message", "must be at most 1024 bytes");
        }
        violations.check()?;
        let outcome = Outcome {
            message: body.status_message,
            exit_code: body.exit_code,
            upstream: (to == State::Live && !body.upstream.is_empty()).then_some(body.upstream),
        };
        let deployment = self.change(id, to, Actor::Runner(runner), outcome).await?;
        Ok(Response::new(deployment_proto(&deployment)))
    }

    async fn append_logs(
        &self,
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
        let entries = body.entries;
        let cap = self.inner.max_log_lines;
        let last = self
            .inner
            .db
            .run(move |conn| {
                if db::holds(conn, id, &runner)?.is_none() {
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
                db::append(conn, id, &lines, Some(cap)).map(Some)
            })
            .await?
            .ok_or_else(|| refusal(Refusal::NotYourClaim, State::Building))?;
        Ok(Response::new(pb::AppendLogsResponse { last_sequence: last }))
    }

    async fn watch_routes(&self, _request: Request<pb::WatchRoutesRequest>) -> Result<Response<RouteStream>, Status> {
        // Subscribe first: no change falls between the table and the feed.
        let mut events = self.inner.hub.subscribe();
        let hub = self.inner.hub.clone();
        let db = self.inner.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let table = match db.run(db::routes).await {
                    Ok(routes) => pb::RouteTable {
                        routes: routes
                            .into_iter()
                            .map(|(host, upstream, id)| pb::Route {
                                host,
                                upstream,
                                deployment_id: id.to_string(),
                            })
                            .collect(),
                    },
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                if last.as_ref() != Some(&table) {
                    if tx.send(Ok(table.clone())).await.is_err() {
                        return;
                    }
                    last = Some(table);
                }
                // The next state change (or a lost one) recomputes the table.
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = hub.stopped() => return,
                        event = events.recv() => match event {
                            Ok(Event::Log(_)) => continue,
                            Ok(Event::State(_) | Event::Resync) | Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn receive_git_push(
        &self,
        request: Request<pb::ReceiveGitPushRequest>,
    ) -> Result<Response<pb::ReceiveGitPushResponse>, Status> {
        crate::push::receive(self, request).await.map(Response::new)
    }

    async fn create_runner(
        &self,
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
        let created = self
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

    async fn list_runners(
        &self,
        request: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
        let after = PageToken::decode(&body.page_token, &mut violations);
        violations.check()?;
        let rows = self
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

    async fn delete_runner(
        &self,
        request: Request<pb::DeleteRunnerRequest>,
    ) -> Result<Response<pb::DeleteRunnerResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = id_field("runner_id", &request.get_ref().runner_id)?;
        if !self.inner.db.run(move |conn| Runner::delete(conn, id)).await? {
            return Err(Status::not_found("no such runner"));
        }
        tracing::info!(runner.id = %id, user.id = %caller.user_id, "runner deleted");
        Ok(Response::new(pb::DeleteRunnerResponse {}))
    }
}

//! The deploy service's state and what its RPCs share: parse, authorize,
//! call the domain, convert.

use std::{pin::Pin, sync::Arc, time::Duration};

use capsule::{
    auth::{Caller, OrgRole, Permission, is_missing_permission},
    db::Database,
    proto::{
        deploy::v1::{self as pb},
        project::v1::{
            CheckOrganizationPermissionRequest, CheckProjectPermissionRequest, DeploymentPlan,
            GetDeploymentEnvironmentRequest, GetProjectRequest, PrepareDeploymentRequest,
            project_service_client::ProjectServiceClient,
        },
    },
    rpc::{self, FieldViolations},
};
use futures::Stream;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use capsule_runner::source::{Commit, Repository, SourceError};

use crate::{
    config::{DeployConfig, SourceConfig},
    db::{self, Actor, Deployment, LogRow, NewDeployment, Outcome, Refusal, Snapshot, runners::Runner},
    notify::Hub,
    state::State,
};

/// At most this many lines per AppendLogs call, and bytes per line.
pub(crate) const MAX_APPEND_LINES: usize = 1000;
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// StreamLogs reads the backlog in pages of this many lines.
pub(crate) const STREAM_PAGE: i64 = 500;
/// The deadline of calls to the project service.
pub(crate) const PROJECT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The deploy service's gRPC API.
#[derive(Clone)]
pub struct DeployServiceApi {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Database,
    pub(crate) hub: Hub,
    pub(crate) projects: ProjectServiceClient<capsule::trace::TracedChannel>,
    /// The token layer's keys: follow streams recheck their callers.
    pub(crate) keys: Arc<capsule::auth::KeySet>,
    /// The keys webhooks' secrets are sealed with.
    pub(crate) encryption: Arc<capsule::crypto::Keyring>,
    pub(crate) internal_secret: Option<String>,
    pub(crate) lease: chrono::Duration,
    /// Output lines kept per deployment.
    pub(crate) max_log_lines: i64,
    /// Deployments of one project built at once, at most.
    pub(crate) max_builds_per_project: i64,
    /// Environments of one project with a deployment queued, building or
    /// live, at most.
    pub(crate) max_environments: i64,
    /// Follow streams open per user in this process, at most.
    pub(crate) streams: Arc<capsule::rpc::StreamLimit>,
    pub(crate) source: SourceConfig,
    /// Where webhooks may be subscribed to.
    pub(crate) webhook_guard: capsule::guard::Guard,
}

pub(crate) const NOT_FOUND: &str = "no such deployment";

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

pub(crate) fn stream_of(name: &str) -> pb::LogStream {
    match name {
        "stdout" => pb::LogStream::Stdout,
        "stderr" => pb::LogStream::Stderr,
        _ => pb::LogStream::System,
    }
}

pub(crate) fn line_proto(row: LogRow) -> pb::LogLine {
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

pub(crate) fn refusal(refusal: Refusal, to: State) -> Status {
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

pub(crate) fn id_field(field: &str, value: &str) -> Result<Uuid, Status> {
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id(field, value, &mut violations);
    violations.check()?;
    Ok(id)
}

pub(crate) fn check_environment(value: &str, violations: &mut FieldViolations) -> String {
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

pub(crate) fn check_source_ref(value: &str, violations: &mut FieldViolations) {
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
pub(crate) fn runner_of<T>(request: &Request<T>) -> Result<String, Status> {
    Caller::of(request)?
        .runner_id()
        .map(|id| id.to_string())
        .ok_or_else(|| Status::permission_denied("only a registered runner may call the runner API"))
}

pub(crate) fn runner_proto(runner: &Runner) -> pb::Runner {
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
    capsule::auth::new_token("capsule_runner_")
}

pub use capsule::auth::token_hash as runner_token_hash;

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
        projects: ProjectServiceClient<capsule::trace::TracedChannel>,
        keys: Arc<capsule::auth::KeySet>,
        encryption: Arc<capsule::crypto::Keyring>,
        internal_secret: Option<String>,
        config: &DeployConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                hub,
                projects,
                keys,
                encryption,
                internal_secret,
                lease: chrono::Duration::from_std(config.lease)?,
                max_log_lines: i64::try_from(config.max_log_lines)?,
                max_builds_per_project: i64::try_from(config.max_builds_per_project)?,
                max_environments: i64::try_from(config.max_environments)?,
                streams: capsule::rpc::StreamLimit::new(config.max_streams_per_user, "DEPLOY_MAX_STREAMS_PER_USER"),
                source: config.source.clone(),
                webhook_guard: capsule::guard::Guard::new(config.webhooks.allowed_networks.clone()),
            }),
        })
    }

    /// The deployment if the caller holds `permission` on its project, as
    /// the project service says now (a removed member is out at once, a
    /// transferred project's old owner too): NOT_FOUND when the caller may
    /// not see the project, PERMISSION_DENIED for a member without the
    /// permission. Admins see every deployment.
    pub(crate) async fn visible(
        &self,
        caller: &Caller,
        permission: Permission,
        id: Uuid,
    ) -> Result<Deployment, Status> {
        let deployment = self.find(id).await?;
        if !caller.is_admin() {
            self.check_deployment(caller, permission, &deployment).await?;
        }
        Ok(deployment)
    }

    /// Whether `caller` may still read deployment `id`, for a stream that
    /// outlives the call that opened it: the credential as the auth
    /// service says now, then the permission as the project service does.
    /// UNAUTHENTICATED or PERMISSION_DENIED when not (a caller who saw the
    /// deployment learns nothing from PERMISSION_DENIED).
    pub(crate) async fn still_visible(&self, caller: &Caller, permission: Permission, id: Uuid) -> Result<(), Status> {
        let now = self.inner.keys.recheck(caller).await?;
        match self.visible(&now, permission, id).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => {
                Err(Status::permission_denied("you may no longer read this deployment"))
            }
            Err(status) => Err(status),
        }
    }

    /// As [`Self::visible`], admins asked about too, with the project's
    /// organisation: what a change's audit event names.
    pub(crate) async fn visible_in(
        &self,
        caller: &Caller,
        permission: Permission,
        id: Uuid,
    ) -> Result<(Deployment, Option<Uuid>), Status> {
        let deployment = self.find(id).await?;
        let organization = self.check_deployment(caller, permission, &deployment).await?;
        Ok((deployment, organization))
    }

    async fn find(&self, id: Uuid) -> Result<Deployment, Status> {
        self.inner
            .db
            .run(move |conn| db::find(conn, id))
            .await?
            .ok_or_else(|| Status::not_found(NOT_FOUND))
    }

    async fn check_deployment(
        &self,
        caller: &Caller,
        permission: Permission,
        deployment: &Deployment,
    ) -> Result<Option<Uuid>, Status> {
        self.check_project(caller, permission, deployment.project_id)
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => Status::not_found(NOT_FOUND),
                _ => status,
            })
    }

    /// Appends an audit event of this service's.
    pub(crate) async fn audit(&self, event: capsule::audit::Event) {
        capsule::audit::append(&self.inner.db, event).await;
    }

    /// A request to the project service on the caller's behalf.
    pub(crate) fn as_caller<T>(caller: &Caller, message: T) -> Result<Request<T>, Status> {
        caller.request(message, PROJECT_CALL_TIMEOUT)
    }

    /// The project service's answer, in this service's words.
    pub(crate) fn project_status(status: Status) -> Status {
        match status.code() {
            Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument | Code::Unauthenticated => status,
            // A member without the permission: the project service's words.
            Code::PermissionDenied if is_missing_permission(&status) => status,
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
    pub(crate) async fn prepare(&self, caller: &Caller, project_id: Uuid) -> Result<DeploymentPlan, Status> {
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
    /// (none without a repository). A reference the repository lacks is
    /// NOT_FOUND; a repository this service cannot use is the project's
    /// state, FAILED_PRECONDITION saying which setting to change.
    pub(crate) async fn resolve(&self, repository_url: &str, source_ref: &str) -> Result<Commit, Status> {
        if repository_url.is_empty() {
            return Ok(Commit {
                sha: String::new(),
                message: String::new(),
                author: String::new(),
            });
        }
        let unusable = |err: SourceError| {
            Status::failed_precondition(format!(
                "the project's repository_url setting: {err}; change it in the project's settings"
            ))
        };
        let repository = Repository::parse(repository_url, &self.inner.source).map_err(unusable)?;
        repository.resolve(source_ref).await.map_err(|err| match err {
            SourceError::MissingRef { .. } => Status::not_found(err.to_string()),
            other => unusable(other),
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
            release_command: plan.release_command,
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
        self.create(new).await
    }

    /// Queues a new deployment, within the project's environments
    /// (`DEPLOY_MAX_ENVIRONMENTS`): RESOURCE_EXHAUSTED naming the limit
    /// when it would open one more.
    pub(crate) async fn create(&self, new: NewDeployment) -> Result<Deployment, Status> {
        let max = self.inner.max_environments;
        let environment = new.environment.clone();
        self.inner
            .db
            .run(move |conn| db::create(conn, &new, max))
            .await?
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "the project already runs {max} environments, the limit (DEPLOY_MAX_ENVIRONMENTS): \
                     deploy {environment:?} when one of the others has no deployment queued, building or live"
                ))
            })
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    pub(crate) fn projects(&self) -> ProjectServiceClient<capsule::trace::TracedChannel> {
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
        capsule::auth::as_service(request, secret)
    }

    /// The project's variables as they are now, for the runner that claimed
    /// one of its deployments: `Ok(None)` when the project is gone.
    pub(crate) async fn environment(
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

    /// Whether the caller holds `permission` on the project: the project
    /// service's call (NOT_FOUND there is NOT_FOUND here, a member's
    /// missing permission is PERMISSION_DENIED). No settings, no secrets.
    pub(crate) async fn check_project(
        &self,
        caller: &Caller,
        permission: Permission,
        project_id: Uuid,
    ) -> Result<Option<Uuid>, Status> {
        if let Some(scope) = &caller.scope {
            scope.require(Some(permission))?;
        }
        if permission == Permission::ProjectRead {
            // GetProject declares project.read itself, and needs no
            // internal secret: reads work on a mesh without one.
            let request = Self::as_caller(
                caller,
                GetProjectRequest {
                    project_id: project_id.to_string(),
                },
            )?;
            return match self.inner.projects.clone().get_project(request).await {
                Ok(project) => Ok(project.get_ref().organization_id.parse().ok()),
                Err(status) => Err(Self::project_status(status)),
            };
        }
        let mut request = Self::as_caller(
            caller,
            CheckProjectPermissionRequest {
                project_id: project_id.to_string(),
                permission: permission.as_str().to_owned(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().check_project_permission(request).await {
            Ok(answer) if answer.get_ref().granted => Ok(answer.get_ref().organization_id.parse().ok()),
            Ok(answer) => {
                Err(permission.denied(OrgRole::from_proto(answer.get_ref().role()).unwrap_or(OrgRole::Viewer)))
            }
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// Whether the caller holds `permission` in the organisation, as the
    /// project service says.
    pub(crate) async fn check_organization(
        &self,
        caller: &Caller,
        permission: Permission,
        organization_id: Uuid,
    ) -> Result<(), Status> {
        if let Some(scope) = &caller.scope {
            scope.require(Some(permission))?;
        }
        let mut request = Self::as_caller(
            caller,
            CheckOrganizationPermissionRequest {
                organization_id: organization_id.to_string(),
                permission: permission.as_str().to_owned(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().check_organization_permission(request).await {
            Ok(answer) => match OrgRole::from_proto(answer.get_ref().role()) {
                Some(role) if role.grants(permission) => Ok(()),
                role => Err(permission.denied(role.unwrap_or(OrgRole::Viewer))),
            },
            Err(status) => Err(Self::project_status(status)),
        }
    }

    pub(crate) async fn change(
        &self,
        id: Uuid,
        to: State,
        actor: Actor,
        outcome: Outcome,
    ) -> Result<Deployment, Status> {
        self.inner
            .db
            .run(move |conn| db::transition(conn, id, to, &actor, &outcome))
            .await?
            .map_err(|refused| refusal(refused, to))
    }
}

pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;
pub(crate) type RouteStream = Pin<Box<dyn Stream<Item = Result<pb::RouteTable, Status>> + Send>>;

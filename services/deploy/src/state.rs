//! The deploy service's state and what its RPCs share: who may see a
//! deployment (asked of the project service, [`crate::projects`]), and the
//! writes every path takes — queueing, creating, changing state through
//! the state machine ([`crate::lifecycle`]).

use std::{pin::Pin, sync::Arc};

use capsule::{
    auth::{Caller, Permission},
    db::Database,
    proto::{
        deploy::v1 as pb,
        project::v1::{DeploymentPlan, project_service_client::ProjectServiceClient},
    },
    rpc,
};
use futures::Stream;
use tonic::{Code, Status};
use uuid::Uuid;

use capsule_runner::{
    remote::Token,
    source::{Commit, Repository, SourceError},
};

use crate::{
    config::{DeployConfig, SourceConfig},
    db::{self, Actor, Deployment, NewDeployment, Outcome, Refusal, Snapshot},
    lifecycle::State,
    notify::Hub,
};

/// At most this many lines per AppendLogs call, and bytes per line.
pub(crate) const MAX_APPEND_LINES: usize = 1000;
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// StreamLogs reads the backlog in pages of this many lines.
pub(crate) const STREAM_PAGE: i64 = 500;

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
    /// Where uploaded releases (and sources) are kept.
    pub(crate) releases_dir: std::path::PathBuf,
    pub(crate) max_upload_bytes: u64,
    /// Output lines kept per deployment.
    pub(crate) max_log_lines: i64,
    /// Deployments of one project built at once, at most.
    pub(crate) max_builds_per_project: i64,
    /// Runs of one project queued or running at once, at most.
    pub(crate) max_runs_per_project: i64,
    /// Environments of one project with a deployment queued, building or
    /// live, at most.
    pub(crate) max_environments: i64,
    /// How soon after going live a crash rolls back; zero: never.
    pub(crate) auto_rollback: chrono::Duration,
    /// Follow streams open per user in this process, at most.
    pub(crate) streams: Arc<capsule::rpc::StreamLimit>,
    pub(crate) source: SourceConfig,
    /// Where webhooks may be subscribed to.
    pub(crate) webhook_guard: capsule::guard::Guard,
    /// Certificates for custom domains.
    pub(crate) acme: Arc<crate::acme::Acme>,
    /// Apps' databases, backups and previews' copies.
    pub(crate) databases: Arc<crate::databases::Databases>,
}

pub(crate) const NOT_FOUND: &str = "no such deployment";

/// The source ref of a deployment of an uploaded directory.
pub(crate) const UPLOADED: &str = "upload";
/// How long CreateDeployment waits for a remote repository's refs.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
                acme: crate::acme::Acme::new(config.acme.clone(), db.clone(), encryption.clone()),
                databases: Arc::new(crate::databases::Databases::new(
                    config.databases.clone(),
                    db.clone(),
                    encryption.clone(),
                )),
                db,
                hub,
                projects,
                keys,
                encryption,
                internal_secret,
                lease: chrono::Duration::from_std(config.lease)?,
                releases_dir: config.releases_dir.clone(),
                max_upload_bytes: config.max_upload_bytes,
                max_log_lines: i64::try_from(config.max_log_lines)?,
                max_builds_per_project: i64::try_from(config.max_builds_per_project)?,
                max_runs_per_project: i64::try_from(config.max_runs_per_project)?,
                max_environments: i64::try_from(config.max_environments)?,
                auto_rollback: chrono::Duration::from_std(config.auto_rollback)?,
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
    pub(crate) async fn authorize(
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
    pub(crate) async fn still_authorized(
        &self,
        caller: &Caller,
        permission: Permission,
        id: Uuid,
    ) -> Result<(), Status> {
        let now = self.inner.keys.recheck(caller).await?;
        match self.authorize(&now, permission, id).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => {
                Err(Status::permission_denied("you may no longer read this deployment"))
            }
            Err(status) => Err(status),
        }
    }

    /// As [`Self::authorize`], admins asked about too, with the project's
    /// organisation: what a change's audit event names.
    pub(crate) async fn authorize_with_organization(
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

    /// The exact commit `source_ref` names in the project's repository now
    /// (none without a repository). A reference the repository lacks is
    /// NOT_FOUND; a repository this service cannot use is the project's
    /// state, FAILED_PRECONDITION saying which setting to change.
    pub(crate) async fn resolve(
        &self,
        project_id: Uuid,
        repository_url: &str,
        source_ref: &str,
    ) -> Result<Commit, Status> {
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
        let resolved = match &repository {
            Repository::Local(path) => Repository::resolve_local(path, source_ref).await,
            // Only the refs: the runner fetches the commit, and reports its
            // subject and author.
            // Its refs are the sandbox's to read: a commit id as given, a
            // branch or tag resolved when the runner fetches it.
            Repository::Remote { url, guard } if url.scheme() == "ssh" => {
                crate::refs::check_address(url, guard).await.map(|()| Commit {
                    sha: if crate::refs::is_commit_id(source_ref) {
                        source_ref.to_ascii_lowercase()
                    } else {
                        String::new()
                    },
                    ..Commit::default()
                })
            }
            Repository::Remote { url, guard } => {
                let credentials = self.token(project_id).await?;
                crate::refs::resolve(url, guard, credentials.as_ref(), source_ref, RESOLVE_TIMEOUT)
                    .await
                    .map(|sha| Commit {
                        sha,
                        message: String::new(),
                        author: String::new(),
                    })
            }
        };
        resolved.map_err(|err| match err {
            SourceError::MissingRef { .. } => Status::not_found(err.to_string()),
            other => unusable(other),
        })
    }

    /// A private repository's token, from the project's variables.
    pub(crate) async fn token(&self, project_id: Uuid) -> Result<Option<Token>, Status> {
        let environment = self.environment(project_id).await?.unwrap_or_default();
        Token::from_variables(
            environment
                .environment_variables
                .iter()
                .map(|variable| (variable.name.as_str(), variable.value.as_str(), variable.secret)),
        )
        .map_err(Status::failed_precondition)
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
        self.queue_from(plan, creator_id, environment, source_ref, None).await
    }

    /// Queues a deployment of an uploaded source (its archive's digest)
    /// instead of the repository.
    pub(crate) async fn queue_upload(
        &self,
        plan: DeploymentPlan,
        creator_id: Uuid,
        environment: String,
        digest: String,
    ) -> Result<Deployment, Status> {
        self.queue_from(plan, creator_id, environment, UPLOADED.to_owned(), Some(digest))
            .await
    }

    async fn queue_from(
        &self,
        plan: DeploymentPlan,
        creator_id: Uuid,
        environment: String,
        source_ref: String,
        upload: Option<String>,
    ) -> Result<Deployment, Status> {
        let project = plan.project.unwrap_or_default();
        let project_id: Uuid = project
            .id
            .parse()
            .map_err(|err| rpc::internal(format_args!("the plan's project id: {err}")))?;
        let source_ref = if source_ref.is_empty() { plan.branch } else { source_ref };
        let commit = match upload {
            Some(_) => self.resolve(project_id, "", &source_ref).await?,
            None => self.resolve(project_id, &plan.repository_url, &source_ref).await?,
        };
        let resources = plan.resources.unwrap_or_default();
        let snapshot = Snapshot {
            build_command: plan.build_command,
            start_command: plan.start_command,
            root_directory: plan.root_directory,
            repository_url: plan.repository_url,
            health_check_path: plan.health_check_path,
            release_command: plan.release_command,
            build_egress: plan.build_egress,
            app_egress: plan.app_egress,
            memory_mb: resources.memory_mb,
            cpu_millis: resources.cpu_millis,
            processes: resources.processes,
            replicas: resources.replicas,
            process_types: capsule::schedule::from_map(&plan.process_types),
            idle_timeout_secs: plan.idle_timeout_seconds,
            source_digest: upload.unwrap_or_default(),
        };
        let new = NewDeployment {
            project_id,
            creator_id,
            owner_id: project.owner_id.parse().ok(),
            source_ref,
            environment,
            snapshot: serde_json::to_value(&snapshot)
                .map_err(|err| rpc::internal(format_args!("a snapshot as JSON: {err}")))?,
            rollback_of: None,
            artifact_digest: None,
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

    pub(crate) fn databases(&self) -> &crate::databases::Databases {
        &self.inner.databases
    }

    pub(crate) fn projects(&self) -> ProjectServiceClient<capsule::trace::TracedChannel> {
        self.inner.projects.clone()
    }

    pub(crate) fn source_config(&self) -> &SourceConfig {
        &self.inner.source
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
pub(crate) type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadBackupResponse, Status>> + Send>>;
pub(crate) type ReleaseStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadReleaseResponse, Status>> + Send>>;
pub(crate) type SourceStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadSourceResponse, Status>> + Send>>;
